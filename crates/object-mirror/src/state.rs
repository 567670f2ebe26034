//! The worker's own progress, in a local JSON file (STATE_FILE, 0600, written atomically), so
//! the database user needs no write privilege: which records are done (everything up to
//! `high_water`, the failed ones listed to be retried), which copies exist, when a delete-log
//! record was first seen and when a version was superseded (the clocks of the grace periods).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ncb_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "ncb-object-mirror-state 1";

/// A stored copy of one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// The record's Id.
    pub id: i64,
    /// The object's SHA-256 (the record's Hash, checked).
    pub hash: String,
    /// The copy's key, relative to DESTINATION.
    pub key: String,
    /// Bytes stored (gzip, encrypted when KEY_FILE).
    pub stored_bytes: u64,
    pub stored_at: i64,
    /// When a newer version was safely stored (the version's grace period starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<i64>,
}

/// A file's versions, by Version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folder {
    pub name: String,
    pub versions: BTreeMap<i64, Copy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
    pub attempts: u32,
    pub first: i64,
    pub last: i64,
}

/// A delete-log record: its grace period runs from `first_seen`; the copies of records up to
/// `upto` (the newest record known then) go, a version uploaded later stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub first_seen: i64,
    pub upto: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    /// The source and destination this state belongs to: a state is never applied to another.
    pub source: String,
    pub destination: String,
    /// Every record with an Id up to this one is stored, superseded, or in `failed`.
    pub high_water: i64,
    pub files: BTreeMap<String, Folder>,
    pub failed: BTreeMap<i64, Failure>,
    pub deletes: BTreeMap<i64, Delete>,
    /// Records that map to a folder, by Id (also those superseded before being fetched).
    #[serde(default)]
    pub folders_of: BTreeMap<i64, String>,
}

impl State {
    pub fn new(source: &str, destination: &str) -> Self {
        State {
            format: FORMAT.into(),
            source: source.into(),
            destination: destination.into(),
            high_water: 0,
            files: BTreeMap::new(),
            failed: BTreeMap::new(),
            deletes: BTreeMap::new(),
            folders_of: BTreeMap::new(),
        }
    }

    /// Reads the state; a missing one is new. A damaged one, or one of another source or
    /// destination, is an error: starting over would re-copy everything and restart every
    /// grace period, so the user decides (move it away to start over).
    pub fn load(path: &Path, source: &str, destination: &str) -> Result<Self> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new(source, destination)),
            Err(e) => return Err(Error::path("cannot read the state", path, e)),
        };
        let s: State = serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, file)).map_err(|e| {
            Error::runtime(format!(
                "the state {} is damaged ({e}); move it away to start over (every object is then copied again)",
                path.display()
            ))
        })?;
        if s.format != FORMAT {
            return Err(Error::runtime(format!("the state {} is not a {FORMAT}", path.display())));
        }
        if s.source != source || s.destination != destination {
            return Err(Error::usage(format!(
                "the state {} belongs to {} -> {}, not {source} -> {destination}: give each mirror its own STATE_FILE",
                path.display(),
                s.source,
                s.destination
            )));
        }
        Ok(s)
    }

    /// Replaces the state file atomically, streamed (a state of 100,000 files is never held
    /// twice in memory).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            ncb_core::atomic::ensure_dir(dir, 0o700)?;
        }
        let mut out = ncb_core::atomic::AtomicFile::create_mode(path, 0o600)?;
        {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, &mut out);
            serde_json::to_writer(&mut w, self).map_err(|e| Error::runtime(format!("state: {e}")))?;
            std::io::Write::flush(&mut w).map_err(|e| Error::path("cannot write", path, e))?;
        }
        out.commit().map(drop)
    }

    /// The folder each stored record's copy is in, by Id.
    pub fn folder_index(&self) -> HashMap<i64, String> {
        let mut m: HashMap<i64, String> = self.folders_of.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (f, folder) in &self.files {
            for c in folder.versions.values() {
                m.insert(c.id, f.clone());
            }
        }
        m
    }
}
