//! Before tonight's sections: the runs that did not walk every section (killed, stopped by a
//! failure, a signal, a full disk, an unreachable destination) are completed under their own
//! run id, or their leftovers are set aside; never mixed into tonight's inputs, never deleted
//! while they are the only copy.
//!
//! For every journal left in WORK_FOLDER (oldest run first):
//! 1. the section a run was in when it stopped is cleaned: what it left in its DESTINATION
//!    that was not there when it started (temporaries, half a set of outputs) is removed;
//!    but when it had already removed one of its inputs (REMOVE_OBJECTIVES runs only after
//!    every output is durable), its outputs are whole and are adopted as its artifacts;
//! 2. every run's files are moved out of the shared folders into `.ncb-aside/<RUN_ID>/`;
//! 3. one run at a time, its files go back into place, are checked (size and SHA-256
//!    against the journal), and the sections it had not finished run again under its run id
//!    (source sections excepted: tonight's run reads live data afresh). Completed, its journal
//!    is closed; failing again, its files go back aside for the next night.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ncb_core::journal::{self, ASIDE, Journal, Moved, SectionState};
use ncb_core::stage::error_chain;
use ncb_core::{Artifact, Error, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::report::SectionReport;
use crate::run::{Walk, run_all};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every section it had not finished ran now, successfully.
    Completed,
    /// Completed, but a section failed (ON_FAILURE continue).
    CompletedWithErrors,
    /// It could not be completed tonight: its files wait in `.ncb-aside` for the next run.
    Pending,
    /// It had finished no section: what it left was removed, there is nothing to complete.
    Abandoned,
    /// Its files are not what it made (or its journal is unreadable): kept aside for a person.
    Damaged,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::CompletedWithErrors | Outcome::Pending | Outcome::Damaged)
    }
}

/// What this run did with one earlier run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    pub run_id: String,
    pub outcome: Outcome,
    pub detail: String,
    /// Unfinished outputs removed (relative to their DESTINATION) and secrets swept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleaned: Vec<String>,
    /// The sections the completion ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<SectionReport>,
}

impl Recovery {
    fn new(run_id: &str, outcome: Outcome, detail: impl Into<String>) -> Self {
        Recovery {
            run_id: run_id.to_owned(),
            outcome,
            detail: detail.into(),
            cleaned: Vec::new(),
            sections: Vec::new(),
        }
    }
}

/// Completes or sets aside every unfinished run in `work`. Called under the run lock.
pub fn recover_all(config: &Config, work: &Path, signal: &Arc<AtomicUsize>) -> Vec<Recovery> {
    let mut out = Vec::new();
    let mut journals = Vec::new();
    for (path, j) in journal::list(work) {
        match j {
            Ok(j) => journals.push((j, Vec::new())),
            Err(e) => out.push(unreadable(work, &path, &e)),
        }
    }
    for (j, cleaned) in &mut journals {
        match clean_interrupted(j, work) {
            Ok(c) => *cleaned = c,
            Err(e) => log::error!("run {}: {}", j.run_id, error_chain(&e)),
        }
    }
    for (j, _) in &mut journals {
        if let Err(e) = set_aside(j, work) {
            log::error!("run {}: cannot set its files aside: {}", j.run_id, error_chain(&e));
        }
    }
    for (j, cleaned) in journals {
        if signal.load(Ordering::SeqCst) != 0 {
            out.push(Recovery::new(&j.run_id, Outcome::Pending, "not tried: this run was interrupted"));
            continue;
        }
        let mut r = complete(config, work, j, signal);
        r.cleaned.splice(0..0, cleaned);
        log_outcome(&r);
        out.push(r);
    }
    out
}

fn log_outcome(r: &Recovery) {
    let msg =
        format!("earlier run {} {}: {}", r.run_id, serde_json::to_string(&r.outcome).unwrap_or_default(), r.detail);
    if r.outcome.is_failure() {
        log::error!("{msg}");
    } else {
        log::warn!("{msg}");
    }
    for c in &r.cleaned {
        log::warn!("earlier run {}: removed {c}", r.run_id);
    }
}

/// A journal that cannot be read is moved aside (never deleted) and reported.
fn unreadable(work: &Path, path: &Path, e: &Error) -> Recovery {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let to = work.join(ASIDE).join("unreadable-journals").join(&name);
    let detail = match journal::move_file(path, &to) {
        Ok(()) => format!("{}; moved to {} for a person to look at", error_chain(e), to.display()),
        Err(m) => format!("{}; and it cannot be moved aside: {}", error_chain(e), error_chain(&m)),
    };
    Recovery::new(name.trim_end_matches(".json"), Outcome::Damaged, detail)
}

/// Cleans the sections that did not end well (see the module doc, step 1). Their snapshot is
/// dropped afterwards, so no later night cleans the same folder against it again.
fn clean_interrupted(j: &mut Journal, work: &Path) -> Result<Vec<String>> {
    let mut cleaned = Vec::new();
    for i in 0..j.sections.len() {
        let e = &j.sections[i];
        let (Some(dest), Some(before)) = (e.dest.clone(), e.dest_before.clone()) else { continue };
        if !matches!(e.status, SectionState::Started | SectionState::Failed) {
            continue;
        }
        let Some(now) = journal::snapshot(&dest, usize::MAX) else { continue };
        let before: std::collections::HashSet<&String> = before.iter().collect();
        let new: Vec<&String> = now.iter().filter(|n| !before.contains(n)).collect();
        let inputs_gone = e.remove_objectives && e.objectives.iter().any(|o| std::fs::symlink_metadata(o).is_err());
        let mut adopted = Vec::new();
        // Deepest first, so folders are emptied before they are looked at.
        for rel in new.iter().rev() {
            let path = dest.join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let partial = path.file_name().is_some_and(ncb_core::atomic::is_partial);
            if meta.is_dir() {
                if std::fs::remove_dir(&path).is_ok() {
                    cleaned.push(format!("{}/ (empty folder)", path.display()));
                }
            } else if inputs_gone && !partial && meta.is_file() {
                let (bytes, sha256) = ncb_core::hash::sha256_file(&path)?;
                adopted.push(Artifact { path, bytes, sha256 });
            } else {
                std::fs::remove_file(&path).map_err(|err| Error::path("cannot remove", &path, err))?;
                cleaned.push(path.display().to_string());
            }
        }
        let e = &mut j.sections[i];
        if inputs_gone {
            log::warn!(
                "run {}: section {} had made every output before it stopped (it had removed an input): {} file(s) adopted",
                j.run_id,
                e.name,
                adopted.len()
            );
            adopted.reverse();
            e.status = SectionState::Ok;
            let made: Vec<PathBuf> = adopted.iter().map(|a| a.path.clone()).collect();
            e.artifacts = adopted;
            let (name, stage, objectives) = (e.name.clone(), e.stage.clone(), e.objectives.clone());
            e.dest_before = None;
            j.lineage.record(&name, &stage, &objectives, &made);
        } else {
            e.status = SectionState::Failed;
            e.dest_before = None;
        }
        j.save(work)?;
    }
    Ok(cleaned)
}

/// The files of `j`'s finished sections that its later finished sections did not consume:
/// what a completion starts from.
fn live_artifacts(j: &Journal) -> Vec<Artifact> {
    let mut out = Vec::new();
    for (i, s) in j.sections.iter().enumerate().filter(|(_, s)| s.status == SectionState::Ok) {
        for a in &s.artifacts {
            let consumed = j.sections[i + 1..].iter().any(|later| {
                later.status == SectionState::Ok
                    && later.remove_objectives
                    && later.objectives.iter().any(|o| a.path.starts_with(o))
            });
            if !consumed {
                out.push(a.clone());
            }
        }
    }
    out
}

/// Moves the run's live files out of the shared folders. The journal records each move before
/// it is made, so a kill in between loses track of nothing.
fn set_aside(j: &mut Journal, work: &Path) -> Result<()> {
    let base = work.join(ASIDE).join(&j.run_id);
    for a in live_artifacts(j) {
        if std::fs::symlink_metadata(&a.path).is_err() || j.aside.iter().any(|m| m.from == a.path) {
            continue;
        }
        let name = a.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let to = base.join(j.aside.len().to_string()).join(name);
        j.aside.push(Moved { from: a.path.clone(), to: to.clone() });
        j.save(work)?;
        journal::move_file(&a.path, &to)?;
    }
    Ok(())
}

/// Puts the run's files back where it made them. A place taken by another file is a conflict:
/// nothing is overwritten.
fn put_back(j: &mut Journal, work: &Path) -> Result<()> {
    for m in &j.aside {
        let here = std::fs::symlink_metadata(&m.to).is_ok();
        let there = std::fs::symlink_metadata(&m.from).is_ok();
        match (here, there) {
            (true, false) => journal::move_file(&m.to, &m.from)?,
            (true, true) => {
                return Err(Error::runtime(format!(
                    "cannot put {} back: {} is taken by another file",
                    m.to.display(),
                    m.from.display()
                )));
            }
            // Moved back earlier, or the move was recorded but never made.
            (false, _) => {}
        }
    }
    j.aside.clear();
    j.save(work)
}

/// Every live file present, with the size and SHA-256 the journal recorded.
fn check_intact(j: &Journal) -> std::result::Result<(), String> {
    for a in live_artifacts(j) {
        match ncb_core::hash::sha256_file(&a.path) {
            Err(_) => return Err(format!("{} is missing", a.path.display())),
            Ok((bytes, sha)) if bytes != a.bytes || sha != a.sha256 => {
                return Err(format!(
                    "{} changed since the run made it ({bytes} bytes, expected {})",
                    a.path.display(),
                    a.bytes
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn complete(config: &Config, work: &Path, mut j: Journal, signal: &Arc<AtomicUsize>) -> Recovery {
    let run_id = j.run_id.clone();
    if !j.sections.iter().any(|s| s.status == SectionState::Ok) {
        return match Journal::close(work, &run_id) {
            Ok(()) => Recovery::new(&run_id, Outcome::Abandoned, "it had finished no section: nothing to complete"),
            Err(e) => Recovery::new(&run_id, Outcome::Pending, error_chain(&e)),
        };
    }
    if let Err(e) = put_back(&mut j, work) {
        return Recovery::new(&run_id, Outcome::Pending, format!("{}; its files stay aside", error_chain(&e)));
    }
    if let Err(why) = check_intact(&j) {
        return damaged(work, j, &why);
    }
    let started = chrono::DateTime::parse_from_rfc3339(&j.started)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    let steps = match crate::plan::plan(config, &run_id, started) {
        Ok(s) => s,
        Err(p) => {
            let msg = p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return pending(work, j, &format!("the config does not plan for it: {msg}"), Vec::new());
        }
    };
    j.attempts += 1;
    log::warn!("completing earlier run {run_id} (attempt {}): it stopped before its last section", j.attempts);
    let report = run_all(config, &steps, started, signal, Walk { work, journal: &mut j, completing: true });
    let ran: Vec<SectionReport> = report.sections.clone();
    let closed = !Journal::path(work, &run_id).exists();
    if closed {
        let (outcome, detail) = if report.failed() {
            (Outcome::CompletedWithErrors, "completed, but a section failed (see its sections)".to_owned())
        } else {
            (Outcome::Completed, format!("completed: {}", summary(&ran)))
        };
        return Recovery { sections: ran, ..Recovery::new(&run_id, outcome, detail) };
    }
    let why = report
        .failures()
        .iter()
        .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("failed")))
        .collect::<Vec<_>>()
        .join("; ");
    pending(work, j, &why, ran)
}

fn summary(sections: &[SectionReport]) -> String {
    let ran: Vec<&str> =
        sections.iter().filter(|s| s.status == crate::report::Status::Ok).map(|s| s.name.as_str()).collect();
    format!("ran {}", if ran.is_empty() { "nothing".to_owned() } else { ran.join(", ") })
}

/// A completion that failed: the section it stopped in is cleaned and the run's files go
/// back aside, so tonight's sections find the shared folders as they expect them.
fn pending(work: &Path, mut j: Journal, why: &str, sections: Vec<SectionReport>) -> Recovery {
    let mut r = Recovery { sections, ..Recovery::new(&j.run_id, Outcome::Pending, why) };
    match clean_interrupted(&mut j, work) {
        Ok(c) => r.cleaned = c,
        Err(e) => r.detail.push_str(&format!("; cleaning failed: {}", error_chain(&e))),
    }
    match set_aside(&mut j, work) {
        Ok(()) => r
            .detail
            .push_str(&format!("; its files wait in {} for the next run", work.join(ASIDE).join(&j.run_id).display())),
        Err(e) => r.detail.push_str(&format!("; cannot set its files aside: {}", error_chain(&e))),
    }
    r
}

/// Leftovers that are not what the run made: kept aside with the journal, for a person; the
/// run is not tried again.
fn damaged(work: &Path, mut j: Journal, why: &str) -> Recovery {
    let run_id = j.run_id.clone();
    let mut detail = format!("{why}: not completed");
    if let Err(e) = set_aside(&mut j, work) {
        detail.push_str(&format!("; cannot set its files aside: {}", error_chain(&e)));
        return Recovery::new(&run_id, Outcome::Damaged, detail);
    }
    let keep = work.join(ASIDE).join(&run_id).join("journal.json");
    match journal::move_file(&Journal::path(work, &run_id), &keep) {
        Ok(()) => detail
            .push_str(&format!("; its files and journal are kept in {}", work.join(ASIDE).join(&run_id).display())),
        Err(e) => detail.push_str(&format!("; cannot move its journal aside: {}", error_chain(&e))),
    }
    Recovery::new(&run_id, Outcome::Damaged, detail)
}
