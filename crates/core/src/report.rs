//! The stage report: the one JSON line a stage prints on stdout when it succeeds.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::hash::sha256_file;

/// One file a stage produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl Artifact {
    /// Hashes the file at `path` (use when the bytes were not hashed while written).
    pub fn from_file(path: &Path) -> Result<Self> {
        let (bytes, sha256) = sha256_file(path)?;
        Ok(Artifact { path: path.to_path_buf(), bytes, sha256 })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    pub section: String,
    pub run_id: String,
    pub duration_ms: u64,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Stage-specific figures (file counts, sizes, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl StageReport {
    pub fn new(stage: &str) -> Self {
        StageReport { stage: stage.to_owned(), ..Default::default() }
    }
    /// Records a warning (and logs it).
    pub fn warn(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        log::warn!("{msg}");
        self.warnings.push(msg);
    }
    pub fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.data.insert(key.to_owned(), value.into());
    }
    /// Removes every artifact this stage made: a failed stage leaves no output behind.
    pub fn discard_artifacts(&mut self) {
        for a in self.artifacts.drain(..) {
            let _ = std::fs::remove_file(&a.path);
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.bytes).sum()
    }
    /// One JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"report: {e}\"}}"))
    }
}
