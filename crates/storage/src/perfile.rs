//! `LAYOUT files`: each file of OBJECTIVES is its own object, `<PREFIX><relative path>`, as C3
//! (seeds/001) stores a folder: a file the destination already holds with the same size and
//! SHA-256 is never sent again, nothing is deleted there, and no run manifest is written.
//! MAX_UPLOAD_FILES / MAX_DOWNLOAD_FILES are caps, not refusals: the first N (in name order)
//! go now, the rest at the next run, and the report says how many wait.

use std::path::Path;

use ncb_core::atomic::AtomicFile;
use ncb_core::params::Params;
use ncb_core::{Error, IoContext, Result, StageReport};

use crate::backend::{Backend, FileInfo, safe_relative};

/// Only files with one of these extensions (any case), when given.
fn wanted(p: &Params) -> Result<Vec<String>> {
    Ok(p.list("FILE_EXTENSIONS")?
        .iter()
        .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect())
}

fn matches(exts: &[String], name: &str) -> bool {
    exts.is_empty()
        || Path::new(name)
            .extension()
            .is_some_and(|e| exts.iter().any(|x| *x == e.to_string_lossy().to_ascii_lowercase()))
}

fn cap(p: &Params, key: &str) -> Result<usize> {
    Ok(p.u64(key)?.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)))
}

/// Stores the files (`files`: path and name relative to its objective) in each destination.
pub fn upload(
    p: &Params,
    files: Vec<(std::path::PathBuf, String)>,
    dests: &[Box<dyn Backend>],
    prefix: &str,
    report: &mut StageReport,
) -> Result<()> {
    let exts = wanted(p)?;
    let max = cap(p, "MAX_UPLOAD_FILES")?;
    let mut files: Vec<_> = files.into_iter().filter(|(_, n)| matches(&exts, n)).collect();
    files.sort_by(|a, b| a.1.cmp(&b.1));
    let (mut stored, mut there, mut waiting) = (0usize, 0usize, 0usize);
    // Each file is hashed once, whatever the number of destinations.
    let mut infos: Vec<Option<FileInfo>> = vec![None; files.len()];
    for d in dests {
        let mut sent = 0usize;
        for ((path, name), info) in files.iter().zip(infos.iter_mut()) {
            let info = match info {
                Some(i) => i,
                None => {
                    let (size, sha256) = ncb_core::hash::sha256_file(path)?;
                    info.insert(FileInfo { name: name.clone(), size, sha256, from: Vec::new() })
                }
            };
            let key = format!("{prefix}{name}");
            if d.holds(&key, path, info)? {
                there += 1;
                continue;
            }
            if sent >= max {
                waiting += 1;
                continue;
            }
            d.put(path, &key, info).map_err(|e| e.context(&format!("storing {name}")))?;
            sent += 1;
            stored += 1;
        }
        log::info!("{}: {sent} file(s) stored under '{prefix}', the others already there or waiting", d.describe());
    }
    if waiting > 0 {
        report.warn(format!("{waiting} file(s) wait for the next run (MAX_UPLOAD_FILES {max})"));
    }
    report.set("stored", stored);
    report.set("skipped", there);
    report.set("waiting", waiting);
    report.set("files", files.len());
    Ok(())
}

/// Fetches every object under `prefix` into DESTINATION (keys become relative paths), skipping
/// files already there with the same size and SHA-256.
pub fn download(p: &Params, d: &dyn Backend, prefix: &str, report: &mut StageReport) -> Result<()> {
    let dest = p.required_path("DESTINATION")?;
    let exts = wanted(p)?;
    let max = cap(p, "MAX_DOWNLOAD_FILES")?;
    let mut keys: Vec<(String, u64)> = d.sizes(prefix)?.into_iter().collect();
    keys.sort();
    let (mut fetched, mut there, mut waiting, mut refused) = (0usize, 0usize, 0usize, 0usize);
    for (key, size) in keys {
        let rel = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
        if !matches(&exts, &rel) {
            continue;
        }
        if !safe_relative(&rel) {
            report.warn(format!("{key}: not a plain relative name, not fetched"));
            refused += 1;
            continue;
        }
        let local = dest.join(&rel);
        let (_, sha) = d.stat(&key)?.unwrap_or((size, String::new()));
        if local.is_file() {
            let (lsize, lsha) = ncb_core::hash::sha256_file(&local)?;
            if lsize == size && (sha.is_empty() || lsha == sha) {
                there += 1;
                continue;
            }
        }
        if fetched >= max {
            waiting += 1;
            continue;
        }
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).at("cannot create", parent)?;
        }
        if sha.is_empty() {
            // Not stored by us: no SHA-256 to check against; the size is checked.
            let mut input = d.open(&key)?;
            let mut out = AtomicFile::create(&local)?;
            let n = std::io::copy(&mut input, &mut out).at("cannot fetch into", &local)?;
            if n != size {
                return Err(Error::runtime(format!("{key}: {n} bytes fetched, the store lists {size}")));
            }
            out.commit()?;
        } else {
            d.get(&key, &local, &FileInfo { name: rel.clone(), size, sha256: sha, from: Vec::new() })?;
        }
        fetched += 1;
    }
    if waiting > 0 {
        report.warn(format!("{waiting} file(s) wait for the next download (MAX_DOWNLOAD_FILES {max})"));
    }
    report.set("fetched", fetched);
    report.set("skipped", there);
    report.set("waiting", waiting);
    report.set("refused", refused);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn extensions_match_in_any_case() {
        let exts = vec!["jpg".to_owned(), "png".to_owned()];
        assert!(super::matches(&exts, "a/b/IMG_1.JPG"));
        assert!(!super::matches(&exts, "a/b/notes.txt"));
        assert!(super::matches(&[], "anything"));
    }
}
