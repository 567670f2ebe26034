//! The run journal: what one run of backup-runner has done so far, kept in
//! `WORK_FOLDER/.ncb-journal/<RUN_ID>.json` from its start until it has walked every section.
//! A journal still there when the next run starts belongs to a run that was killed or stopped
//! (by a failure, a signal, a full disk): the next run completes it or sets its leftovers
//! aside, never mixing them into its own inputs. Written atomically after every change.
//!
//! The format (docs/CONFIG.md "The run journal"):
//! ```json
//! {"format": "ncb-journal", "version": 1, "run_id": "…", "config": "/etc/…/conf.json",
//!  "started": "2026-12-01T03:00:00Z", "pid": 1234, "attempts": 1,
//!  "sections": [{"name": "FILESET", "stage": "filesbackup", "status": "ok",
//!                "dest": "/work/files", "dest_before": ["old.tar.gz"],
//!                "objectives": [], "remove_objectives": false,
//!                "artifacts": [{"path": "/work/files/x.tar.gz", "bytes": 1, "sha256": "…"}]}],
//!  "lineage": {…}, "aside": [{"from": "/work/encrypted/a.enc.000", "to": "/work/.ncb-aside/…"}]}
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::lineage::Lineage;
use crate::report::Artifact;

/// The folder of journals, inside WORK_FOLDER.
pub const DIR: &str = ".ncb-journal";
/// Where leftovers of unfinished runs wait, inside WORK_FOLDER: `.ncb-aside/<RUN_ID>/<n>/<name>`.
pub const ASIDE: &str = ".ncb-aside";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionState {
    /// Started and not known to have ended (killed, or still going).
    Started,
    Ok,
    Failed,
    /// Not run by a completion (a source section: tonight's run reads its data afresh).
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    pub name: String,
    pub stage: String,
    pub status: SectionState,
    /// The folder the section writes into (DESTINATION of a built-in stage), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<PathBuf>,
    /// Files under `dest` (relative paths) before the section started: anything else found
    /// there after a kill is the section's own unfinished output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_before: Option<Vec<String>>,
    #[serde(default)]
    pub objectives: Vec<PathBuf>,
    #[serde(default)]
    pub remove_objectives: bool,
    /// The files under OBJECTIVES when the section started (REMOVE_OBJECTIVES only): one of
    /// them gone means the section had made every output durable (stages remove inputs only
    /// then). `None` when there were too many to list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_before: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// The order in which the sections of this run started (a completion starts some again).
    #[serde(default)]
    pub seq: u64,
    /// The process group of the stage's program, while it runs: a runner killed with SIGKILL
    /// cannot stop what that program started; the next run does (same boot only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    /// Recovery has cleaned up after this section (once: later nights find other runs' files
    /// in the same folders, and this run's own files set aside).
    #[serde(default)]
    pub settled: bool,
}

/// A file moved out of the shared folders, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub from: PathBuf,
    pub to: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format: String,
    pub version: u8,
    pub run_id: String,
    pub config: PathBuf,
    pub started: String,
    pub pid: u32,
    /// How many runs have tried to complete this one (1: only itself).
    pub attempts: u32,
    pub sections: Vec<SectionEntry>,
    #[serde(default)]
    pub lineage: Lineage,
    /// Leftovers set aside: they go back into place before the next attempt.
    #[serde(default)]
    pub aside: Vec<Moved>,
    /// The kernel's boot id when the run started: process groups recorded in the journal
    /// mean something only in the same boot.
    #[serde(default)]
    pub boot_id: String,
    /// Why the run cannot be completed without a person, when recovery found out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

impl Journal {
    pub fn new(run_id: &str, config: &Path, started: chrono::DateTime<chrono::Utc>) -> Self {
        Journal {
            format: "ncb-journal".into(),
            version: 1,
            run_id: run_id.to_owned(),
            config: config.to_path_buf(),
            // Milliseconds: runs started within one second still complete in their order.
            started: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            pid: std::process::id(),
            attempts: 1,
            sections: Vec::new(),
            lineage: Lineage::default(),
            aside: Vec::new(),
            boot_id: boot_id(),
            damaged: None,
        }
    }

    /// The next start sequence number.
    pub fn next_seq(&self) -> u64 {
        self.sections.iter().map(|s| s.seq).max().unwrap_or(0) + 1
    }

    /// The section the run stopped in: the last one started, when it did not end well.
    pub fn stopped_in(&self) -> Option<usize> {
        let (i, e) = self.sections.iter().enumerate().max_by_key(|(_, e)| e.seq)?;
        (matches!(e.status, SectionState::Started | SectionState::Failed) && !e.settled).then_some(i)
    }

    pub fn path(work: &Path, run_id: &str) -> PathBuf {
        work.join(DIR).join(format!("{run_id}.json"))
    }

    pub fn section(&self, name: &str) -> Option<&SectionEntry> {
        self.sections.iter().find(|s| s.name == name)
    }

    pub fn section_mut(&mut self, name: &str) -> Option<&mut SectionEntry> {
        self.sections.iter_mut().find(|s| s.name == name)
    }

    /// Records (or replaces) a section's entry.
    pub fn put(&mut self, entry: SectionEntry) {
        match self.section_mut(&entry.name) {
            Some(e) => *e = entry,
            None => self.sections.push(entry),
        }
    }

    /// Writes the journal atomically (0600).
    pub fn save(&self, work: &Path) -> Result<()> {
        let dir = work.join(DIR);
        crate::atomic::ensure_dir(&dir, 0o700)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::runtime(format!("run journal: {e}")))?;
        crate::atomic::write_file(&Self::path(work, &self.run_id), &json, 0o600)
    }

    pub fn load(path: &Path) -> Result<Journal> {
        let bytes = std::fs::read(path).at("cannot read run journal", path)?;
        let j: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| Error::runtime(format!("run journal {}: {e}", path.display())))?;
        if j.format != "ncb-journal" || j.version != 1 {
            return Err(Error::runtime(format!("run journal {}: unsupported format", path.display())));
        }
        Ok(j)
    }

    /// Removes the journal: the run has walked every section.
    pub fn close(work: &Path, run_id: &str) -> Result<()> {
        let p = Self::path(work, run_id);
        match std::fs::remove_file(&p) {
            Ok(()) => crate::atomic::sync_dir(&work.join(DIR)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::path("cannot remove run journal", &p, e)),
        }
    }
}

/// The journals in WORK_FOLDER, oldest run first. Unreadable ones are returned as errors
/// beside their path, so the caller can report them.
pub fn list(work: &Path) -> Vec<(PathBuf, Result<Journal>)> {
    let dir = work.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !crate::atomic::is_partial(p.as_os_str()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    let mut all: Vec<(PathBuf, Result<Journal>)> = paths.into_iter().map(|p| (p.clone(), Journal::load(&p))).collect();
    // Oldest first: by start time (an unreadable journal first, by name).
    all.sort_by(|(pa, a), (pb, b)| {
        let key = |j: &Result<Journal>| j.as_ref().map(|j| j.started.clone()).unwrap_or_default();
        key(a).cmp(&key(b)).then_with(|| pa.cmp(pb))
    });
    all
}

/// This boot's id (empty when the kernel does not say).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Run ids with a journal in WORK_FOLDER: runs not finished yet, which retention must not
/// take for abandoned.
pub fn pending_runs(work: &Path) -> Vec<String> {
    let dir = work.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(str::to_owned))
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// Every file under `dir` (relative paths, sorted), skipping the runner's own `.ncb-*` and
/// `.backup-runner*` entries at every depth; `None` past `limit` entries (or when `dir`
/// cannot be read).
pub fn snapshot(dir: &Path, limit: usize) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => return Some(Vec::new()),
            Err(_) => return None,
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_runner_own(&name) {
                continue;
            }
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push((e.path(), r.clone())),
                _ => {}
            }
            out.push(r);
            if out.len() > limit {
                return None;
            }
        }
    }
    out.sort();
    Some(out)
}

/// The runner's own files in WORK_FOLDER (journals, lock, lineage, aside): never a stage's
/// input or output.
pub fn is_runner_own(name: &str) -> bool {
    name.starts_with(".ncb-") || name.starts_with(".backup-runner")
}

/// Moves a file, across file systems when it must (copy, fsync, then remove the original).
/// Resumable: when `to` already holds the same bytes (a move cut short after its copy), the
/// original is simply removed.
pub fn move_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        crate::atomic::ensure_dir(parent, 0o700)?;
    }
    if std::fs::symlink_metadata(to).is_ok() {
        let same =
            crate::hash::sha256_file(from).ok().zip(crate::hash::sha256_file(to).ok()).is_some_and(|(a, b)| a == b);
        if !same {
            return Err(Error::runtime(format!(
                "cannot move {} to {}: a different file is there",
                from.display(),
                to.display()
            )));
        }
        std::fs::remove_file(from).at("cannot remove", from)?;
    } else {
        match std::fs::rename(from, to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut src = std::fs::File::open(from).at("cannot open", from)?;
                let mut out = crate::atomic::AtomicFile::create(to)?;
                std::io::copy(&mut src, &mut out).at("cannot copy", from)?;
                out.commit()?;
                std::fs::remove_file(from).at("cannot remove", from)?;
            }
            Err(e) => return Err(Error::path(&format!("cannot move to {}:", to.display()), from, e)),
        }
    }
    for dir in [to.parent(), from.parent()].into_iter().flatten() {
        crate::atomic::sync_dir(dir)?;
    }
    Ok(())
}

/// Every regular file under `paths` (files themselves, folders walked), absolute, sorted;
/// unfinished temporaries and the runner's own files left out; `None` past `limit`.
pub fn files_under(paths: &[PathBuf], limit: usize) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                for rel in snapshot(p, limit)? {
                    let full = p.join(&rel);
                    let name = full.file_name().unwrap_or_default();
                    if !crate::atomic::is_partial(name) && std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_file()) {
                        out.push(full);
                    }
                }
            }
            Ok(m) if m.is_file() => out.push(p.clone()),
            _ => {}
        }
        if out.len() > limit {
            return None;
        }
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_listed_loaded_closed() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::new("20261201T030000Z-abcd", Path::new("/etc/conf.json"), chrono::Utc::now());
        j.put(SectionEntry {
            name: "FILESET".into(),
            stage: "filesbackup".into(),
            status: SectionState::Started,
            dest: Some(d.path().join("files")),
            dest_before: Some(vec![]),
            objectives: vec![],
            remove_objectives: false,
            artifacts: vec![],
            inputs_before: None,
            seq: 1,
            pgid: None,
            settled: false,
        });
        j.save(d.path()).unwrap();
        j.section_mut("FILESET").unwrap().status = SectionState::Ok;
        j.save(d.path()).unwrap();
        let all = list(d.path());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.as_ref().unwrap(), &j);
        assert_eq!(pending_runs(d.path()), ["20261201T030000Z-abcd"]);
        Journal::close(d.path(), &j.run_id).unwrap();
        assert!(list(d.path()).is_empty());
    }

    #[test]
    fn snapshots_skip_the_runner_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join(DIR)).unwrap();
        std::fs::write(d.path().join(".backup-runner.lock"), b"").unwrap();
        std::fs::create_dir_all(d.path().join("a/.ncb-aside")).unwrap();
        assert_eq!(snapshot(d.path(), 100).unwrap(), ["a", "a/b", "a/b/f"]);
        assert_eq!(snapshot(d.path(), 2), None);
        assert_eq!(snapshot(&d.path().join("missing"), 10).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_move_cut_short_after_its_copy_resumes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("x/b"));
        std::fs::write(&a, b"data").unwrap();
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&b, b"data").unwrap();
        move_file(&a, &b).unwrap();
        assert!(!a.exists() && std::fs::read(&b).unwrap() == b"data");
        std::fs::write(&a, b"other").unwrap();
        assert!(move_file(&a, &b).is_err(), "a different file was overwritten or dropped");
        assert_eq!(std::fs::read(&a).unwrap(), b"other");
    }
}
