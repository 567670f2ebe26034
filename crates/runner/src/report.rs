//! The run report: every section's outcome, written to the log folder as
//! `run-<RUN_ID>.json` and printed with `--json`.

use serde::{Deserialize, Serialize};

use ncb_core::Artifact;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Timeout,
    Interrupted,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionReport {
    pub name: String,
    pub action: String,
    pub target: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub host: String,
    pub config: String,
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    pub status: Status,
    pub sections: Vec<SectionReport>,
    pub artifacts: usize,
    pub bytes: u64,
    pub warnings: usize,
    /// Earlier runs left unfinished, and what this run did with them (before its own sections).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<crate::recover::Recovery>,
}

impl RunReport {
    pub fn tally(&mut self) {
        self.artifacts = self.sections.iter().map(|s| s.artifacts.len()).sum();
        self.bytes = self.sections.iter().flat_map(|s| &s.artifacts).map(|a| a.bytes).sum();
        self.warnings = self.sections.iter().map(|s| s.warnings.len()).sum();
        let failed = |st: Status| self.sections.iter().any(|s| s.status == st);
        let recovery_failed = self.recovered.iter().any(|r| r.outcome.is_failure());
        self.status = if failed(Status::Interrupted) {
            Status::Interrupted
        } else if failed(Status::Failed) || failed(Status::Timeout) || recovery_failed {
            Status::Failed
        } else {
            Status::Ok
        };
    }

    /// The sections that did not succeed, for the closing message.
    pub fn failures(&self) -> Vec<&SectionReport> {
        self.sections.iter().filter(|s| !matches!(s.status, Status::Ok | Status::Skipped)).collect()
    }

    /// Whether anything failed: a section, or the completion of an earlier run.
    pub fn failed(&self) -> bool {
        !matches!(self.status, Status::Ok)
    }
}
