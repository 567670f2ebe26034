//! Where runs are stored. Layout, the same for every backend:
//!
//! ```text
//! <PREFIX><RUN_ID>/<file>            every file of the run, by its path relative to its objective
//! <PREFIX><RUN_ID>/RUN-MANIFEST.json written last: a run without it is incomplete
//! <PREFIX><RUN_ID>/RUN-DELETING      written first when retention deletes the run, removed
//!                                    last: a run that has it is finished off by the next retention
//! ```
//! PREFIX defaults to `<HOSTNAME>/`. A backend stores and fetches whole files, verified by
//! size and SHA-256.

use std::io::Read;
use std::path::{Path, PathBuf};

use ncb_core::atomic::AtomicFile;
use ncb_core::hash::{CheckedReader, HashWriter, sha256_file};
use ncb_core::progress::Progress;
use ncb_core::{Artifact, Error, IoContext, Result};
use serde::{Deserialize, Serialize};

pub const RUN_MANIFEST: &str = "RUN-MANIFEST.json";
/// The mark of a run whose deletion has begun (see [`Backend::delete_run`]).
pub const DELETING_MARK: &str = "RUN-DELETING";

/// What the deletion mark says to whoever finds it.
pub fn deleting_mark_text() -> Vec<u8> {
    format!(
        "retention began deleting this run at {}; if this is still here, the deletion was \
         interrupted and the next retention (storage with KEEP_*, or backup-runner prune) finishes it\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
    .into_bytes()
}

/// Size and SHA-256 of a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// The config sections this file's data comes from (when stored by backup-runner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// A section of the run that read data from outside it (files, a database), and the names of
/// the files it made: restore unpacks these wherever they turn up, even inside an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub stage: String,
    pub artifacts: Vec<String>,
    /// The run whose archive of this section these artifacts are an increment on: restoring
    /// them needs that run's first (and its base's, down to a full archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// The manifest of one run in one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    pub format: String,
    pub version: u8,
    pub run_id: String,
    pub host: String,
    pub created: String,
    pub files: Vec<FileInfo>,
    /// The run's source sections by name (when stored by backup-runner).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sources: std::collections::BTreeMap<String, Source>,
    /// HMAC-SHA256 of the manifest without this field (compact JSON), under a key derived from
    /// the encryption key, when storage had it: ties every file's size and SHA-256 to the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Ed25519 signature by the host's signing key (storage SIGNING_KEY) of the manifest
    /// without `mac` and `signature`: checked with the public key alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    pub key_id: String,
    pub ed25519: String,
}

/// What a signature check says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// Signed by this trusted key (its id).
    Valid(String),
    Unsigned,
    /// Signed by a key none of the trusted ones is (its id).
    UnknownSigner(String),
    Invalid,
}

/// The HKDF purpose of the run manifest's MAC.
const MAC_PURPOSE: &str = "ncb run manifest v1";

/// Whether a run manifest is authenticated by the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    Valid,
    /// Stored without a key (or by a version without MACs).
    Unsigned,
    Invalid,
}

impl RunManifest {
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = RunManifest { mac: None, signature: None, ..self.clone() };
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// Signs with the host's Ed25519 key (after the MAC, which it does not cover).
    pub fn sign_ed25519(&mut self, key: &encryption::sign::SigningKey) {
        self.signature = Some(ManifestSignature { key_id: key.id(), ed25519: key.sign(&self.signed_bytes()) });
    }

    /// The signature checked against the trusted public keys.
    pub fn signed_by(&self, trusted: &[encryption::sign::VerifyKey]) -> Signed {
        let Some(s) = &self.signature else { return Signed::Unsigned };
        match trusted.iter().find(|k| k.id() == s.key_id) {
            None => Signed::UnknownSigner(s.key_id.clone()),
            Some(k) if k.verify(&self.signed_bytes(), &s.ed25519) => Signed::Valid(s.key_id.clone()),
            Some(_) => Signed::Invalid,
        }
    }

    /// Sets the MAC under `key`.
    pub fn sign(&mut self, key: &encryption::key::MasterKey) {
        self.mac = None;
        self.mac = Some(key.mac(MAC_PURPOSE, &self.signed_bytes()));
    }

    pub fn authenticity(&self, key: &encryption::key::MasterKey) -> Authenticity {
        match &self.mac {
            None => Authenticity::Unsigned,
            Some(m) if key.verify_mac(MAC_PURPOSE, &self.signed_bytes(), m) => Authenticity::Valid,
            Some(_) => Authenticity::Invalid,
        }
    }

    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let m: RunManifest = serde_json::from_slice(bytes).map_err(|e| format!("not a run manifest: {e}"))?;
        if m.format != "ncb-run" || m.version != 1 {
            return Err(format!("unsupported run manifest {} v{}", m.format, m.version));
        }
        if let Some(f) = m.files.iter().find(|f| !safe_relative(&f.name)) {
            return Err(format!("file name '{}' is not a plain relative path", f.name));
        }
        Ok(m)
    }
}

/// Whether `bytes` bytes hashing to `sha256` are the file `info` describes (a SHA-256 not yet
/// known matches any).
pub fn same_file(info: &FileInfo, bytes: u64, sha256: &str) -> bool {
    bytes == info.size && (info.sha256.is_empty() || info.sha256 == sha256)
}

/// A relative path without `..`, root or empty components.
pub fn safe_relative(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('/') && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Whether an object kept in an archive storage class (GLACIER, DEEP_ARCHIVE) can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Thaw {
    /// Not restored: it cannot be read until it is thawed.
    Frozen,
    /// A restore is under way (hours).
    Thawing,
    /// A temporary copy can be read, until this date (as the store gives it).
    Thawed { until: String },
}

impl Thaw {
    pub fn readable(&self) -> bool {
        matches!(self, Thaw::Thawed { .. })
    }
}

/// An object kept in an archive storage class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Archived {
    pub key: String,
    pub class: String,
    pub thaw: Thaw,
}

impl std::fmt::Display for Archived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.thaw {
            Thaw::Frozen => write!(f, "{} ({}, not thawed)", self.key, self.class),
            Thaw::Thawing => write!(f, "{} ({}, thawing in progress)", self.key, self.class),
            Thaw::Thawed { until } if until.is_empty() => write!(f, "{} ({}, thawed)", self.key, self.class),
            Thaw::Thawed { until } => write!(f, "{} ({}, thawed until {until})", self.key, self.class),
        }
    }
}

/// What every destination does.
pub trait Backend: Send + Sync {
    /// For messages: "local /backups".
    fn describe(&self) -> String;
    /// Size and SHA-256 of a stored file, when it is there.
    fn stat(&self, key: &str) -> Result<Option<(u64, String)>>;
    /// Stores `local` under `key`, reading it once; the SHA-256 of the bytes stored, which
    /// must be `info.sha256` when that is known (not empty).
    fn put(&self, local: &Path, key: &str, info: &FileInfo) -> Result<String>;
    /// Stores many files (their SHA-256s, in order), counting stored bytes on `bar`; backends
    /// that can, do it concurrently.
    fn put_all(&self, items: &[(PathBuf, String, FileInfo)], bar: &Progress) -> Result<Vec<String>> {
        items
            .iter()
            .map(|(path, key, info)| {
                let sha = self.put(path, key, info)?;
                bar.add(info.size);
                Ok(sha)
            })
            .collect()
    }
    /// Whether `key` holds exactly `local` (size and `info.sha256`, which is known).
    fn holds(&self, key: &str, _local: &Path, info: &FileInfo) -> Result<bool> {
        Ok(self.stat(key)?.is_some_and(|(size, sha)| size == info.size && sha == info.sha256))
    }
    /// Sizes of the files stored under `prefix`, by key.
    fn sizes(&self, prefix: &str) -> Result<std::collections::HashMap<String, u64>>;
    /// Small files (manifests).
    fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<()>;
    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Fetches `key` into `dest` (written atomically), checking size and SHA-256.
    fn get(&self, key: &str, dest: &Path, info: &FileInfo) -> Result<Artifact> {
        let mut input = self.open_checked(key, info)?;
        let mut out = AtomicFile::create(dest)?;
        std::io::copy(&mut input, &mut out)
            .map_err(|e| Error::io(format!("cannot fetch {key} into {}", dest.display()), e))?;
        Ok(Artifact { path: out.commit()?, bytes: info.size, sha256: info.sha256.clone() })
    }
    /// Fetches many files; backends that can, do it concurrently.
    fn get_all(&self, items: &[(String, PathBuf, FileInfo)]) -> Result<Vec<Artifact>> {
        items.iter().map(|(key, dest, info)| self.get(key, dest, info)).collect()
    }
    /// Streams `key` (no check: see [`Backend::open_checked`]).
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Streams `key`; reading it to its end fails unless its size and SHA-256 are `info`'s.
    fn open_checked(&self, key: &str, info: &FileInfo) -> Result<CheckedReader<Box<dyn Read + Send>>> {
        Ok(CheckedReader::new(self.open(key)?, info.size, &info.sha256, format!("{}: {key}", self.describe())))
    }
    /// The run ids under `prefix` (complete or not).
    fn runs(&self, prefix: &str) -> Result<Vec<String>>;
    /// Deletes a whole run, so that an interruption at any moment leaves it finishable:
    /// [`DELETING_MARK`] is written first, then the run manifest goes (the run is visibly
    /// incomplete), then every other file, and the mark last.
    fn delete_run(&self, prefix: &str, run_id: &str) -> Result<()>;
    /// Until when a run's objects are locked (S3 Object Lock), when that is in the future:
    /// retention does not try to delete it before.
    fn locked_until(&self, _prefix: &str, _run_id: &str) -> Result<Option<String>> {
        Ok(None)
    }
    /// Whether the deletion of `run_id` has begun and was not finished.
    fn being_deleted(&self, prefix: &str, run_id: &str) -> Result<bool> {
        Ok(self.get_bytes(&format!("{prefix}{run_id}/{DELETING_MARK}"))?.is_some())
    }
    /// Removes what a killed store left unfinished under `run` (a folder's `.partial-`
    /// temporaries); how many. Stores whose objects appear whole or not at all have none.
    fn discard_unfinished(&self, _run: &str) -> Result<usize> {
        Ok(0)
    }
    /// The objects under `prefix` kept in an archive storage class, which cannot be read until
    /// thawed, each with its thaw state. None where there are no such classes (local, rclone).
    fn archived(&self, _prefix: &str) -> Result<Vec<Archived>> {
        Ok(Vec::new())
    }
    /// Asks for readable copies of archived objects for `days` days (it takes hours); the state
    /// of each afterwards, in order.
    fn thaw(&self, keys: &[String], _days: u32) -> Result<Vec<Thaw>> {
        match keys.first() {
            None => Ok(Vec::new()),
            Some(k) => Err(Error::runtime(format!("{}: {k}: nothing to thaw here", self.describe()))),
        }
    }
}

/// A folder on this machine (or a mounted one).
#[derive(Debug, Clone)]
pub struct Local {
    pub root: PathBuf,
}

impl Local {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

impl Backend for Local {
    fn describe(&self) -> String {
        format!("local {}", self.root.display())
    }

    fn stat(&self, key: &str) -> Result<Option<(u64, String)>> {
        let p = self.path(key);
        if !p.is_file() {
            return Ok(None);
        }
        sha256_file(&p).map(Some)
    }

    fn put(&self, local: &Path, key: &str, info: &FileInfo) -> Result<String> {
        let dest = self.path(key);
        ncb_core::atomic::ensure_dir(dest.parent().unwrap_or(&self.root), 0o700)?;
        let mut src = std::fs::File::open(local).at("cannot open", local)?;
        let mut out = HashWriter::new(AtomicFile::create(&dest)?);
        std::io::copy(&mut src, &mut out).at("cannot copy", local)?;
        let (file, bytes, sha) = out.finish();
        if !same_file(info, bytes, &sha) {
            return Err(Error::runtime(format!(
                "{} changed while it was stored ({bytes} bytes, sha256 {sha}; expected {} bytes, {})",
                local.display(),
                info.size,
                info.sha256
            )));
        }
        file.commit()?;
        Ok(sha)
    }

    fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let dest = self.path(key);
        ncb_core::atomic::ensure_dir(dest.parent().unwrap_or(&self.root), 0o700)?;
        ncb_core::atomic::write_file(&dest, bytes, 0o600)
    }

    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::path("cannot read", &p, e)),
        }
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.path(key);
        Ok(Box::new(std::fs::File::open(&p).at("cannot open", &p)?))
    }

    fn sizes(&self, prefix: &str) -> Result<std::collections::HashMap<String, u64>> {
        let mut out = std::collections::HashMap::new();
        let mut stack = vec![self.path(prefix)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                match e.metadata() {
                    Ok(m) if m.is_dir() => stack.push(p),
                    Ok(m) => {
                        if let Ok(rel) = p.strip_prefix(&self.root) {
                            out.insert(rel.to_string_lossy().into_owned(), m.len());
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(out)
    }

    fn runs(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.path(prefix);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::path("cannot list", &dir, e)),
        };
        let mut runs: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| crate::retention::run_time(n).is_some())
            .collect();
        runs.sort();
        Ok(runs)
    }

    fn discard_unfinished(&self, run: &str) -> Result<usize> {
        let dir = self.path(run);
        let mut n = 0;
        for rel in ncb_core::journal::snapshot(&dir, usize::MAX).unwrap_or_default() {
            let p = dir.join(&rel);
            if p.file_name().is_some_and(ncb_core::atomic::is_partial) && p.is_file() {
                std::fs::remove_file(&p).at("cannot remove", &p)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn delete_run(&self, prefix: &str, run_id: &str) -> Result<()> {
        let dir = self.path(&format!("{prefix}{run_id}"));
        let mark = dir.join(DELETING_MARK);
        ncb_core::atomic::write_file(&mark, &deleting_mark_text(), 0o600)?;
        // The manifest goes first: a half-deleted run is then visibly incomplete.
        match std::fs::remove_file(dir.join(RUN_MANIFEST)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::path("cannot delete", &dir.join(RUN_MANIFEST), e));
            }
            _ => {}
        }
        for e in std::fs::read_dir(&dir).at("cannot list", &dir)? {
            let e = e.at("cannot list", &dir)?;
            if e.file_name() == DELETING_MARK {
                continue;
            }
            let p = e.path();
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match gone {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::path("cannot delete", &p, e)),
                _ => {}
            }
        }
        std::fs::remove_file(&mark).at("cannot delete", &mark)?;
        std::fs::remove_dir(&dir).at("cannot delete", &dir)
    }
}
