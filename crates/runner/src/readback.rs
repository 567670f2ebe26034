//! Reading runs back from the destinations of a config's storage sections: what `runs`,
//! `verify` and `restore` share. A run is read through its run manifest: every file is
//! streamed and checked against the size and SHA-256 the manifest gives, and encrypted files
//! (their parts and encryption manifest) are joined and decrypted as one stream.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use encryption::crypt;
use encryption::key::MasterKey;
use encryption::manifest::{self, Manifest};
use ncb_core::pipe::pipe;
use ncb_core::stage::error_chain;
use ncb_core::{Error, Result};
use storage::backend::{Archived, Backend, FileInfo, RunManifest};

use crate::config::Config;
use crate::plan::{self, Step, Target};

/// One destination of one storage section.
pub struct Source {
    pub section: String,
    pub dest: storage::Destination,
}

impl Source {
    pub fn describe(&self) -> String {
        format!("{} ({}, {})", self.dest.backend.describe(), self.section, self.prefix_shown())
    }
    fn prefix_shown(&self) -> String {
        if self.dest.prefix.is_empty() { "no prefix".into() } else { format!("prefix {}", self.dest.prefix) }
    }
    pub fn key(&self, run: &str, name: &str) -> String {
        format!("{}{run}/{name}", self.dest.prefix)
    }
    pub fn backend(&self) -> &dyn Backend {
        self.dest.backend.as_ref()
    }
}

pub(crate) fn steps(config: &Config) -> Result<Vec<Step>> {
    plan::plan(config, "restore", chrono::Utc::now()).map_err(|problems| {
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Error::config(format!("{}: {}", config.path.display(), all.join("; ")))
    })
}

pub(crate) fn is_stage(step: &Step, name: &str) -> bool {
    matches!(&step.target, Target::Stage { def, .. } | Target::Load { def, .. } if def.name == name)
}

/// Every destination of every storage section that stores (not `--download`), in config
/// order, each once.
pub fn sources(config: &Config) -> Result<Vec<Source>> {
    let general = plan::general_of(config);
    let mut out: Vec<Source> = Vec::new();
    for step in steps(config)?.into_iter().filter(|s| is_stage(s, "storage")) {
        let p = step.params();
        if p.flag("DOWNLOAD", false)? {
            continue;
        }
        for dest in storage::destinations(&p, &general)? {
            let seen = out
                .iter()
                .any(|s| s.dest.backend.describe() == dest.backend.describe() && s.dest.prefix == dest.prefix);
            if !seen {
                out.push(Source { section: step.section.clone(), dest });
            }
        }
    }
    if out.is_empty() {
        return Err(Error::config(format!(
            "{}: no storage section, so no destination to read runs from",
            config.path.display()
        )));
    }
    Ok(out)
}

/// The key file: `--key-file`, else KEY_FILE of the config's first encryption section.
pub fn key_file(config: &Config, given: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(k) = given {
        return Ok(Some(k.to_path_buf()));
    }
    for step in steps(config)?.into_iter().filter(|s| is_stage(s, "encryption")) {
        if let Some(k) = step.params().path("KEY_FILE") {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// What a run holds, file by file: plain files, and encrypted ones (parts + manifest).
#[derive(Debug, Clone)]
pub enum Content {
    Plain(FileInfo),
    Encrypted {
        /// The encryption manifest as stored.
        manifest: FileInfo,
        parts: Vec<FileInfo>,
    },
}

/// One logical file of a run: its name once decrypted, its content, its origins.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    pub content: Content,
    pub from: Vec<String>,
}

impl Item {
    pub fn stored(&self) -> Vec<&FileInfo> {
        match &self.content {
            Content::Plain(f) => vec![f],
            Content::Encrypted { manifest, parts } => std::iter::once(manifest).chain(parts).collect(),
        }
    }
    pub fn stored_bytes(&self) -> u64 {
        self.stored().iter().map(|f| f.size).sum()
    }
}

/// `x.enc` and `x.enc.000`: the name `x.enc` of the stream they belong to.
fn stream_of(name: &str) -> Option<&str> {
    if name.ends_with(".enc") {
        return Some(name);
    }
    let (base, n) = name.rsplit_once('.')?;
    (base.ends_with(".enc") && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// Groups a run's files into items, in the manifest's order.
pub fn items(m: &RunManifest) -> Vec<Item> {
    let mut streams: BTreeMap<String, (Option<FileInfo>, Vec<FileInfo>)> = BTreeMap::new();
    let mut order: Vec<(String, bool)> = Vec::new();
    for f in &m.files {
        let (key, is_manifest) = match f.name.strip_suffix(manifest::SUFFIX) {
            Some(s) if s.ends_with(".enc") => (s.to_owned(), true),
            _ => match stream_of(&f.name) {
                Some(s) => (s.to_owned(), false),
                None => {
                    order.push((f.name.clone(), false));
                    continue;
                }
            },
        };
        let e = streams.entry(key.clone()).or_insert_with(|| {
            order.push((key.clone(), true));
            (None, Vec::new())
        });
        if is_manifest { e.0 = Some(f.clone()) } else { e.1.push(f.clone()) }
    }
    // Parts without their encryption manifest are not taken for ours (a user's own `x.enc`):
    // they are placed as stored (`encryption -d --REQUIRE_MANIFEST False` decrypts them by hand).
    let orphans: Vec<String> = streams.iter().filter(|(_, (m, _))| m.is_none()).map(|(k, _)| k.clone()).collect();
    for k in orphans {
        if let Some((_, parts)) = streams.remove(&k) {
            let at = order.iter().position(|(o, _)| *o == k).unwrap_or(order.len());
            order.splice(at..(at + 1).min(order.len()), parts.into_iter().map(|p| (p.name, false)));
        }
    }
    let plain: BTreeMap<&str, &FileInfo> = m.files.iter().map(|f| (f.name.as_str(), f)).collect();
    order
        .into_iter()
        .filter_map(|(key, enc)| {
            if !enc {
                let f = plain.get(key.as_str())?;
                return Some(Item { name: key.clone(), content: Content::Plain((*f).clone()), from: f.from.clone() });
            }
            let (man, mut parts) = streams.remove(&key)?;
            let man = man?;
            parts.sort_by(|a, b| a.name.cmp(&b.name));
            let from = std::iter::once(&man)
                .chain(&parts)
                .find(|f| !f.from.is_empty())
                .map(|f| f.from.clone())
                .unwrap_or_default();
            let name = key.strip_suffix(".enc").unwrap_or(&key).to_owned();
            Some(Item { name, content: Content::Encrypted { manifest: man, parts }, from })
        })
        .collect()
}

fn folder_of(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(d, _)| d)
}

fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() { name.to_owned() } else { format!("{folder}/{name}") }
}

/// Reads and checks an item's encryption manifest; the parts it names, each of which the run
/// manifest must list with the same size and SHA-256.
pub fn encryption_manifest(
    src: &Source,
    run: &str,
    item_name: &str,
    man: &FileInfo,
    parts: &[FileInfo],
) -> Result<Manifest> {
    if man.size > manifest::MAX_LEN {
        return Err(Error::runtime(format!("{}: too large to be an encryption manifest", man.name)));
    }
    let mut bytes = Vec::new();
    src.backend()
        .open_checked(&src.key(run, &man.name), man)?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::runtime(e.to_string()))?;
    let m = Manifest::parse(&bytes).map_err(|e| Error::runtime(format!("{}: {e}", man.name)))?;
    let folder = folder_of(&man.name);
    for p in &m.parts {
        let stored = parts.iter().find(|f| f.name == join(folder, &p.name)).ok_or_else(|| {
            Error::runtime(format!("{item_name}: part {} is in its encryption manifest but not in the run", p.name))
        })?;
        if stored.size != p.size || stored.sha256 != p.sha256 {
            return Err(Error::runtime(format!(
                "{item_name}: part {} differs between the run manifest and the encryption manifest",
                p.name
            )));
        }
    }
    if let Some(extra) = parts.iter().find(|f| !m.parts.iter().any(|p| join(folder, &p.name) == f.name)) {
        return Err(Error::runtime(format!("{item_name}: {} is not in its encryption manifest", extra.name)));
    }
    Ok(m)
}

/// `--signer`: the hosts' verifying keys run manifests must be signed by.
pub static SIGNERS: std::sync::OnceLock<Vec<encryption::sign::VerifyKey>> = std::sync::OnceLock::new();

/// `--identity`: identities (private keys) for runs encrypted for recipients.
pub static IDENTITIES: std::sync::OnceLock<Vec<encryption::pke::Identity>> = std::sync::OnceLock::new();

/// Streams an item's plaintext (decrypted when encrypted) into `consume`, every byte checked:
/// plain files against the run manifest, encrypted ones part by part and as a whole against
/// their encryption manifest, and authenticated. `count` sees the stored bytes as they are read.
pub fn with_plaintext<T>(
    src: &Source,
    run: &str,
    item: &Item,
    key: Option<&MasterKey>,
    count: &(dyn Fn(u64) + Sync),
    consume: impl FnOnce(&mut (dyn Read + Send)) -> Result<T>,
) -> Result<T> {
    match &item.content {
        Content::Plain(f) => {
            let reader = src.backend().open_checked(&src.key(run, &f.name), f)?;
            let mut counted = Counted { inner: reader, count };
            let out = consume(&mut counted)?;
            // Whatever the consumer left unread is read now, so the check covers every byte.
            counted.inner.finish().map_err(|e| Error::runtime(e.to_string()))?;
            Ok(out)
        }
        Content::Encrypted { manifest: man, parts } => {
            let ids: &[encryption::pke::Identity] = IDENTITIES.get().map_or(&[], Vec::as_slice);
            if key.is_none() && ids.is_empty() {
                return Err(Error::config(format!(
                    "{} is encrypted: give --key-file (or KEY_FILE in the config's encryption section), or --identity for runs made for recipients",
                    item.name
                )));
            }
            let opening = crypt::Opening::Either(key, ids);
            let m = Some(encryption_manifest(src, run, &item.name, man, parts)?);
            let names: Vec<String> = parts.iter().map(|f| f.name.clone()).collect();
            let open = |i: usize| -> Result<Box<dyn Read + Send + '_>> {
                let f = &parts[i];
                let r = src.backend().open_checked(&src.key(run, &f.name), f)?;
                Ok(Box::new(Counted { inner: r, count }))
            };
            let (writer, mut reader) = pipe(4);
            std::thread::scope(|s| {
                let dec = s.spawn(|| {
                    crypt::decrypt_stream_with(opening, &names, m.as_ref(), &open, writer, Path::new(&item.name))
                        .and_then(|(w, _, _)| w.finish().map_err(|e| Error::io(&item.name, e)))
                });
                let consumed = consume(&mut reader).and_then(|out| {
                    std::io::copy(&mut reader, &mut std::io::sink())
                        .map_err(|e| Error::runtime(format!("{}: {e}", item.name)))?;
                    Ok(out)
                });
                drop(reader);
                let decrypted = dec.join().map_err(|_| Error::runtime("decryption thread panicked"))?;
                // The consumer stopped first when decryption could not write: its error is
                // the cause. Otherwise decryption's is (the consumer only saw the stream cut).
                let consumer_stopped = |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe);
                match (decrypted, consumed) {
                    (Ok(()), r) => r,
                    (Err(d), Err(c)) if consumer_stopped(&d) => Err(c),
                    (Err(d), _) => Err(Error::runtime(format!("{}: {}", item.name, error_chain(&d)))),
                }
            })
        }
    }
}

/// The objects of `items` (stored files of run `run`) kept in an archive storage class, each
/// with its thaw state: none where the store has no such classes.
pub fn archived(src: &Source, run: &str, items: &[&Item]) -> Result<Vec<Archived>> {
    let all = src.backend().archived(&src.key(run, ""))?;
    if all.is_empty() {
        return Ok(all);
    }
    let needed: std::collections::HashSet<String> =
        items.iter().flat_map(|i| i.stored()).map(|f| src.key(run, &f.name)).collect();
    Ok(all.into_iter().filter(|a| needed.contains(&a.key)).collect())
}

/// Those of `items` that cannot be read now: archived and not thawed (or still thawing).
pub fn frozen(src: &Source, run: &str, items: &[&Item]) -> Result<Vec<Archived>> {
    Ok(archived(src, run, items)?.into_iter().filter(|a| !a.thaw.readable()).collect())
}

/// What to do about objects that must be thawed first.
pub fn thaw_hint(run: &str) -> String {
    format!(
        "`backup-runner restore -c CONF --run {run} --thaw DAYS` asks for readable copies for DAYS days; restore (or verify --read-data) once they are thawed ({})",
        storage::s3::THAW_TIMES
    )
}

/// Counts the bytes read through it.
pub struct Counted<'a, R> {
    pub inner: R,
    pub count: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.count)(n as u64);
        Ok(n)
    }
}

/// Checks a run manifest's MAC when the key is at hand: `Err` when it fails (altered, or
/// written with another key). A manifest without a MAC is refused when the run holds
/// encrypted files (backup-runner signs those: its MAC was removed) unless `allow_unsigned`
/// (a run stored by `storage` alone, without KEY_FILE); otherwise allowed with a warning.
pub fn authenticate(
    src: &Source,
    run: &str,
    m: &RunManifest,
    key: Option<&MasterKey>,
    allow_unsigned: bool,
) -> Result<()> {
    use storage::backend::{Authenticity, Signed};
    let signers: &[encryption::sign::VerifyKey] = SIGNERS.get().map_or(&[], Vec::as_slice);
    if signers.is_empty() {
        if let Some(sig) = &m.signature {
            log::info!(
                "{}: run {run} is signed by host key {}: give --signer with its .pub to check it",
                src.describe(),
                sig.key_id
            );
        }
    } else {
        match m.signed_by(signers) {
            Signed::Valid(id) => log::debug!("{}: run {run}: signature by host key {id} checked", src.describe()),
            Signed::Unsigned if allow_unsigned => {
                log::warn!("{}: run {run} is not signed (allowed by --allow-unsigned)", src.describe())
            }
            Signed::Unsigned => {
                return Err(Error::runtime(format!(
                    "{}: the run manifest of run {run} is not signed, and --signer asks for a signed one: its signature was removed, or the host stored it without SIGNING_KEY (then give --allow-unsigned)",
                    src.describe()
                )));
            }
            Signed::UnknownSigner(id) => {
                return Err(Error::runtime(format!(
                    "{}: run {run} is signed by host key {id}, which is not one of the --signer keys",
                    src.describe()
                )));
            }
            Signed::Invalid => {
                return Err(Error::runtime(format!(
                    "{}: the run manifest of run {run} fails its signature check: it was altered after the host signed it",
                    src.describe()
                )));
            }
        }
    }
    let Some(key) = key else { return Ok(()) };
    match m.authenticity(key) {
        Authenticity::Valid => Ok(()),
        Authenticity::Unsigned
            if !allow_unsigned && items(m).iter().any(|i| matches!(i.content, Content::Encrypted { .. })) =>
        {
            Err(Error::runtime(format!(
                "{}: the run manifest of run {run} has no MAC although the run holds encrypted files: removed from it, or the run was stored by `storage` without KEY_FILE (then give --allow-unsigned)",
                src.describe()
            )))
        }
        Authenticity::Unsigned => {
            log::warn!(
                "{}: the run manifest of run {run} is not authenticated (stored without KEY_FILE): files are checked against it, encrypted ones are authenticated",
                src.describe()
            );
            Ok(())
        }
        Authenticity::Invalid => Err(Error::runtime(format!(
            "{}: the run manifest of run {run} fails its authentication: altered, or written with another key",
            src.describe()
        ))),
    }
}

/// A complete run in the first source that has it (`latest`: each source's newest complete
/// run, the newest of those). Every source's answer is logged.
pub fn pick<'a>(sources: &'a [Source], wanted: &str) -> Result<Vec<(&'a Source, String, RunManifest)>> {
    let mut found = Vec::new();
    let mut why = Vec::new();
    for s in sources {
        match storage::find_run(s.backend(), &s.dest.prefix, wanted) {
            Ok((run, m)) => found.push((s, run, m)),
            Err(e) => why.push(format!("{}: {}", s.describe(), error_chain(&e))),
        }
    }
    if found.is_empty() {
        return Err(Error::runtime(format!("no destination holds run {wanted} complete: {}", why.join("; "))));
    }
    for w in &why {
        log::warn!("{w}");
    }
    if wanted == "latest" {
        // Newest first; sources in config order for the same run.
        found.sort_by(|a, b| b.1.cmp(&a.1));
        let newest = found[0].1.clone();
        found.retain(|f| f.1 == newest);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FileInfo {
        FileInfo { name: name.into(), size: 1, sha256: "0".repeat(64), from: vec![] }
    }

    #[test]
    fn files_group_into_items() {
        let m = RunManifest {
            format: "ncb-run".into(),
            version: 1,
            run_id: "r".into(),
            host: "h".into(),
            created: String::new(),
            files: vec![
                f("files.tar.gz.enc.000"),
                f("files.tar.gz.enc.001"),
                f("files.tar.gz.enc.manifest.json"),
                f("mysql/db.sql.gz"),
                f("one.dump.enc"),
                f("one.dump.enc.manifest.json"),
                f("own.enc"),
                f("notes.enc.txt"),
            ],
            sources: Default::default(),
            mac: None,
            signature: None,
        };
        let items = items(&m);
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["files.tar.gz", "mysql/db.sql.gz", "one.dump", "own.enc", "notes.enc.txt"]);
        match &items[0].content {
            Content::Encrypted { manifest, parts } => {
                assert_eq!(manifest.name, "files.tar.gz.enc.manifest.json");
                assert_eq!(parts.len(), 2);
            }
            Content::Plain(_) => panic!("encrypted expected"),
        }
        assert!(matches!(items[3].content, Content::Plain(_)) && matches!(items[4].content, Content::Plain(_)));
    }
}
