//! Where each artifact of a run came from. The runner records, after every section, the files
//! it made and the sections their data comes from (a section whose OBJECTIVES hold an earlier
//! section's files inherits that section's origins; one that reads nothing of the run is its
//! own origin). Stages get it through [`StageCtx`](crate::StageCtx); storage writes it into the
//! run manifest, so `restore --only SECTION` and nested archives can be traced back without
//! this machine.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One file a section made, and the sections its data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traced {
    pub path: PathBuf,
    pub from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionTrace {
    pub name: String,
    pub stage: String,
    pub artifacts: Vec<Traced>,
    /// The run this section's archive is an increment on (filesbackup INCREMENTAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The index of this section's archive (filesbackup under backup-runner), stored beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub sections: Vec<SectionTrace>,
}

impl Lineage {
    /// Records a finished section. Each artifact inherits the origins of the earlier artifacts
    /// at or under `objectives`, narrowed by name where names tell (compression makes
    /// `files.tar.gz` of the folder `files`, encryption `x.enc.000` of `x`); with none, the
    /// section is the origin.
    pub fn record(&mut self, name: &str, stage: &str, objectives: &[PathBuf], artifacts: &[PathBuf]) {
        let earlier: Vec<&Traced> = self.sections.iter().flat_map(|s| &s.artifacts).collect();
        let starts = |a: &Path, b: &Path| match (a.file_name(), b.file_name()) {
            (Some(a), Some(b)) => a.as_encoded_bytes().starts_with(b.as_encoded_bytes()),
            _ => false,
        };
        let traced = artifacts
            .iter()
            .map(|a| {
                let named_objs: Vec<&PathBuf> = objectives.iter().filter(|o| starts(a, o)).collect();
                let objs: Vec<&PathBuf> = if named_objs.is_empty() { objectives.iter().collect() } else { named_objs };
                let mut cands: Vec<&Traced> =
                    earlier.iter().copied().filter(|t| objs.iter().any(|o| t.path.starts_with(o))).collect();
                let named: Vec<&Traced> = cands.iter().copied().filter(|t| starts(a, &t.path)).collect();
                if !named.is_empty() {
                    cands = named;
                }
                let mut from: Vec<String> = Vec::new();
                for f in cands.iter().flat_map(|t| &t.from) {
                    if !from.contains(f) {
                        from.push(f.clone());
                    }
                }
                if from.is_empty() {
                    from.push(name.to_owned());
                }
                Traced { path: a.clone(), from }
            })
            .collect();
        self.sections.push(SectionTrace {
            name: name.to_owned(),
            stage: stage.to_owned(),
            artifacts: traced,
            base: None,
            index: None,
        });
    }

    /// The origins of a file: by its path, else by its file name when that is unique.
    pub fn origins_of(&self, path: &Path) -> Vec<String> {
        let all = || self.sections.iter().flat_map(|s| &s.artifacts);
        if let Some(t) = all().find(|t| t.path == path) {
            return t.from.clone();
        }
        let named: Vec<&Traced> = all().filter(|t| t.path.file_name() == path.file_name()).collect();
        match named.as_slice() {
            [one] => one.from.clone(),
            _ => Vec::new(),
        }
    }

    /// The sections that are their own origin (they read data from outside the run), with
    /// the file names of what they made.
    pub fn sources(&self) -> Vec<(&SectionTrace, Vec<String>)> {
        self.sections
            .iter()
            .filter(|s| s.artifacts.iter().any(|a| a.from.len() == 1 && a.from[0] == s.name))
            .map(|s| {
                let names = s
                    .artifacts
                    .iter()
                    .filter_map(|a| a.path.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                (s, names)
            })
            .collect()
    }

    pub fn read(path: &Path) -> crate::Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::path("cannot read the run's lineage", path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| crate::Error::runtime(format!("{}: not a run lineage: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_flow_through_objectives() {
        let mut l = Lineage::default();
        l.record("FILES", "filesbackup", &[], &["/w/files/h_FILES_T.tar.gz".into()]);
        l.record("DB", "mysql-dump", &[], &["/w/mysql/db_T.sql.gz".into()]);
        l.record("COMP", "compression", &["/w/files".into()], &["/w/comp/files.tar.gz".into()]);
        l.record(
            "ENC",
            "encryption",
            &["/w/comp".into(), "/w/mysql".into()],
            &["/w/enc/files.tar.gz.enc".into(), "/w/enc/db_T.sql.gz.enc.000".into()],
        );
        l.record("ALL", "compression", &["/w/enc".into()], &["/w/out/enc.tar.gz".into()]);
        assert_eq!(l.origins_of(Path::new("/w/comp/files.tar.gz")), vec!["FILES"]);
        assert_eq!(l.origins_of(Path::new("/w/enc/files.tar.gz.enc")), vec!["FILES"]);
        assert_eq!(l.origins_of(Path::new("/w/enc/db_T.sql.gz.enc.000")), vec!["DB"]);
        assert_eq!(l.origins_of(Path::new("/w/out/enc.tar.gz")), vec!["FILES", "DB"]);
        assert_eq!(l.origins_of(Path::new("/elsewhere/db_T.sql.gz")), vec!["DB"]);
        let sources: Vec<&str> = l.sources().iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(sources, vec!["FILES", "DB"]);
    }
}
