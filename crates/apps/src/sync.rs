//! `BACKUPS_ROOT/<app>` to a storage destination, with `aws s3 sync`'s meaning: files the
//! destination does not hold (same size and SHA-256) go up, nothing is deleted there. Keys are
//! `<PREFIX or HOSTNAME>/<app>/<file>`. Every upload is checked by the storage backend (the
//! SHA-256 of what was sent, stored as the object's `sha256` metadata on S3).
//!
//! With KEY_FILE, files leave the host encrypted in our format (`<file>.enc` and its
//! `.enc.manifest.json`; `encryption -d` reads them back). A ciphertext differs at every
//! encryption, so what was already stored is known from a local state file
//! (`.sync-state.json`: each file's size and mtime and what its ciphertext was) checked against
//! the destination's copy.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ncb_core::context::General;
use ncb_core::params::Params;
use ncb_core::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use storage::backend::{Backend, FileInfo};

const STATE: &str = ".sync-state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sent {
    size: u64,
    mtime_ns: i128,
    /// The stored files (ciphertext and manifest): key suffix -> (size, sha256).
    stored: BTreeMap<String, (u64, String)>,
}

/// Ok: (the files sent, how many were already there).
pub(crate) fn sync(p: &Params, general: &General, app: &str, dir: &Path, work: &Path) -> Result<(Vec<String>, usize)> {
    let mut p = p.clone();
    let key_file = p.remove("KEY_FILE").and_then(|v| v.into_iter().next());
    let master = key_file.map(|k| encryption::key::load(Path::new(&k))).transpose()?;
    let dests = storage::destinations(&p, general)?;
    let files = local_files(dir)?;
    let (mut sent, mut there) = (Vec::new(), 0usize);
    // Each file is hashed once, whatever the number of destinations.
    let mut infos: Vec<Option<FileInfo>> = vec![None; files.len()];
    for d in &dests {
        let base = format!("{}{app}/", d.prefix);
        match &master {
            None => {
                for ((rel, path), info) in files.iter().zip(infos.iter_mut()) {
                    let info = match info {
                        Some(i) => i,
                        None => {
                            let (size, sha256) = ncb_core::hash::sha256_file(path)?;
                            info.insert(FileInfo { name: rel.clone(), size, sha256, from: Vec::new() })
                        }
                    };
                    let key = format!("{base}{rel}");
                    if d.backend.holds(&key, path, info)? {
                        there += 1;
                        continue;
                    }
                    d.backend.put(path, &key, info).map_err(|e| e.context(&format!("storing {rel}")))?;
                    log::info!("{app}: {rel} stored in {}", d.backend.describe());
                    sent.push(format!("{}/{key}", d.backend.describe()));
                }
            }
            Some(master) => {
                let state_path = dir.join(STATE);
                let mut state: BTreeMap<String, Sent> =
                    std::fs::read(&state_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
                let state_key = |rel: &str| format!("{}\u{0}{rel}", d.backend.describe());
                for (rel, path) in &files {
                    let meta = std::fs::metadata(path).at("cannot stat", path)?;
                    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
                    if let Some(s) = state.get(&state_key(rel))
                        && s.size == meta.len()
                        && s.mtime_ns == mtime_ns
                        && still_stored(d.backend.as_ref(), &base, rel, s)?
                    {
                        there += 1;
                        continue;
                    }
                    let stored = send_encrypted(d.backend.as_ref(), master, &base, rel, path, work)?;
                    log::info!("{app}: {rel} stored encrypted in {}", d.backend.describe());
                    sent.push(format!("{}/{base}{rel}.enc", d.backend.describe()));
                    state.insert(state_key(rel), Sent { size: meta.len(), mtime_ns, stored });
                    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::runtime(e.to_string()))?;
                    ncb_core::atomic::write_file(&state_path, &json, 0o600)?;
                }
            }
        }
    }
    Ok((sent, there))
}

fn still_stored(b: &dyn Backend, base: &str, rel: &str, s: &Sent) -> Result<bool> {
    let dir = rel.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
    for (name, (size, sha)) in &s.stored {
        if b.stat(&format!("{base}{dir}{name}"))?.as_ref() != Some(&(*size, sha.clone())) {
            return Ok(false);
        }
    }
    Ok(!s.stored.is_empty())
}

fn send_encrypted(
    b: &dyn Backend,
    master: &encryption::key::MasterKey,
    base: &str,
    rel: &str,
    path: &Path,
    work: &Path,
) -> Result<BTreeMap<String, (u64, String)>> {
    let out = work.join("encrypted");
    let _ = std::fs::remove_dir_all(&out);
    ncb_core::atomic::ensure_dir(&out, 0o700)?;
    let e = encryption::crypt::encrypt_file(master, path, &out, None, encryption::format::DEFAULT_SEGMENT)?;
    let dir = rel.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
    let mut stored = BTreeMap::new();
    // The ciphertext first, its manifest last: a manifest names a complete file.
    for a in e.parts.iter().chain(std::iter::once(&e.manifest)) {
        let name = a.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let info = FileInfo { name: name.clone(), size: a.bytes, sha256: a.sha256.clone(), from: Vec::new() };
        b.put(&a.path, &format!("{base}{dir}{name}"), &info).map_err(|e| e.context(&format!("storing {rel}")))?;
        stored.insert(name, (a.bytes, a.sha256.clone()));
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(stored)
}

/// The files to sync: every regular file under `dir`, hidden names (state, lock, report) and
/// unfinished temporaries left out; relative paths with `/`.
fn local_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, d)) = stack.pop() {
        for e in std::fs::read_dir(&d).at("cannot list", &d)? {
            let e = e.at("cannot list", &d)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || ncb_core::atomic::is_partial(&e.file_name()) {
                continue;
            }
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let t = e.file_type().at("cannot stat", &e.path())?;
            if t.is_dir() {
                stack.push((r, e.path()));
            } else if t.is_file() {
                out.push((r, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}
