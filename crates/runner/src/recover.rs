//! Before tonight's sections: the runs that did not walk every section well (killed, stopped
//! by a failure, a signal, a full disk, an unreachable destination) are completed under their
//! own run id, or their leftovers are set aside; never mixed into tonight's inputs, never
//! deleted while they are the only copy.
//!
//! For every journal left in WORK_FOLDER (oldest run first):
//! 0. what a killed runner's stage started (its process group) is stopped, in the same boot;
//! 1. the section a run stopped in is cleaned: what it left in its DESTINATION that was not
//!    there when it started (temporaries, half a set of outputs) is removed, since its inputs
//!    are all still there; but when one of its inputs is gone (REMOVE_OBJECTIVES removes
//!    inputs only after every output is durable), its outputs are whole: they are adopted as
//!    its artifacts and the removal of its inputs is finished;
//! 2. every run's files are moved out of the shared folders into `.ncb-aside/<RUN_ID>/`;
//!    if anything in steps 1-2 fails, no run is completed and tonight's sections do not run;
//! 3. one run of this config at a time, its files go back into place, are checked (size and
//!    SHA-256 against the journal), and the sections it had not finished run again under its
//!    run id (source sections excepted: tonight's run reads live data afresh). It is completed
//!    when its storage sections all succeeded; else its files go back aside for the next night.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ncb_core::journal::{self, ASIDE, Journal, Moved, SectionState};
use ncb_core::stage::error_chain;
use ncb_core::{Artifact, Error, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::plan::{Step, Target};
use crate::report::SectionReport;
use crate::run::{Walk, run_all};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every section it had not finished ran now, and its run is stored.
    Completed,
    /// It could not be completed tonight: its files wait in `.ncb-aside` for the next run.
    Pending,
    /// It belongs to another config sharing this WORK_FOLDER: its files wait aside for that
    /// config's next run.
    Deferred,
    /// It had finished no section: what it left was removed, there is nothing to complete.
    Abandoned,
    /// Its files are not what it made, the config no longer reads them, or its journal is
    /// unreadable: everything is kept aside for a person.
    Damaged,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Pending | Outcome::Damaged)
    }
}

/// What this run did with one earlier run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    pub run_id: String,
    pub outcome: Outcome,
    pub detail: String,
    /// Unfinished outputs removed.
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

/// Completes or sets aside every unfinished run in `work`. Called under the run lock. An
/// error means the shared folders could not be cleared of earlier runs' files: tonight's
/// sections must not run.
pub fn recover_all(config: &Config, work: &Path, signal: &Arc<AtomicUsize>) -> Result<Vec<Recovery>> {
    let mut out = Vec::new();
    let mut journals = Vec::new();
    for (path, j) in journal::list(work) {
        match j {
            Ok(j) => journals.push((j, Vec::new())),
            Err(e) => out.push(unreadable(work, &path, &e)?),
        }
    }
    for (j, _) in &journals {
        stop_leftover_groups(j);
    }
    for (j, cleaned) in &mut journals {
        *cleaned = clean_interrupted(j, work).map_err(|e| e.context(&format!("earlier run {}", j.run_id)))?;
    }
    for (j, _) in &mut journals {
        set_aside(j, work).map_err(|e| e.context(&format!("earlier run {}: cannot set its files aside", j.run_id)))?;
    }
    let ours = canonical(&config.path);
    for (j, cleaned) in journals {
        let mut r = if canonical(&j.config) != ours {
            Recovery::new(
                &j.run_id,
                Outcome::Deferred,
                format!("it is a run of {}: its files wait aside for that config's next run", j.config.display()),
            )
        } else if signal.load(Ordering::SeqCst) != 0 {
            Recovery::new(&j.run_id, Outcome::Pending, "not tried: this run was interrupted")
        } else {
            complete(config, work, j, signal)
        };
        r.cleaned.splice(0..0, cleaned);
        log_outcome(&r);
        out.push(r);
    }
    Ok(out)
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
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
fn unreadable(work: &Path, path: &Path, e: &Error) -> Result<Recovery> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let to = work.join(ASIDE).join("unreadable-journals").join(&name);
    journal::move_file(path, &to)?;
    let detail = format!("{}; moved to {} for a person to look at", error_chain(e), to.display());
    Ok(Recovery::new(name.trim_end_matches(".json"), Outcome::Damaged, detail))
}

/// The process groups a killed runner's stages left running (same boot only: a group id of
/// another boot names someone else), stopped before their files are touched.
fn stop_leftover_groups(j: &Journal) {
    if j.boot_id.is_empty() || j.boot_id != journal::boot_id() {
        return;
    }
    for e in j.sections.iter().filter(|e| e.status == SectionState::Started) {
        let Some(pgid) = e.pgid else { continue };
        if ncb_core::sys::kill_group(pgid, ncb_core::sys::SIGKILL).is_ok() {
            log::warn!(
                "earlier run {}: stopped what section {} had left running (process group {pgid})",
                j.run_id,
                e.name
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// Cleans the section the run stopped in (see the module doc, step 1). Its snapshot is
/// dropped afterwards, so no later night cleans the same folder against it again.
fn clean_interrupted(j: &mut Journal, work: &Path) -> Result<Vec<String>> {
    let Some(i) = j.stopped_in() else { return Ok(Vec::new()) };
    let e = j.sections[i].clone();
    let inputs_gone = match (&e.inputs_before, e.remove_objectives) {
        (_, false) => false,
        (Some(list), true) => list.iter().any(|p| std::fs::symlink_metadata(p).is_err()),
        (None, true) => {
            // Too many inputs to have listed: whether the outputs are whole cannot be told.
            j.damaged = Some(format!(
                "section {} stopped while its inputs were too many to track: nothing was removed",
                e.name
            ));
            j.sections[i].dest_before = None;
            j.sections[i].settled = true;
            j.save(work)?;
            return Ok(Vec::new());
        }
    };
    let mut cleaned = Vec::new();
    let mut adopted = Vec::new();
    if let (Some(dest), Some(before)) = (&e.dest, &e.dest_before) {
        let now = journal::snapshot(dest, usize::MAX).unwrap_or_default();
        let before: std::collections::HashSet<&String> = before.iter().collect();
        // Files other sections of the run made are never this section's leftovers.
        let others: std::collections::HashSet<&PathBuf> =
            j.sections.iter().filter(|s| s.name != e.name).flat_map(|s| s.artifacts.iter().map(|a| &a.path)).collect();
        // Deepest first, so folders are emptied before they are looked at.
        for rel in now.iter().filter(|n| !before.contains(n)).rev() {
            let path = dest.join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if others.contains(&path) {
                continue;
            }
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
    }
    if inputs_gone {
        // The stage had begun removing its inputs: finish it, as it would have.
        for p in e.inputs_before.iter().flatten() {
            if std::fs::symlink_metadata(p).is_ok() {
                ncb_core::atomic::remove_input(p)?;
                cleaned.push(format!("{} (an input of {}, consumed)", p.display(), e.name));
            }
        }
        for o in &e.objectives {
            remove_empty_tree(o);
        }
        adopted.reverse();
        log::warn!(
            "run {}: section {} had made every output before it stopped (it had removed an input): {} file(s) adopted",
            j.run_id,
            e.name,
            adopted.len()
        );
        let made: Vec<PathBuf> = adopted.iter().map(|a| a.path.clone()).collect();
        j.lineage.record(&e.name, &e.stage, &e.objectives, &made);
        let entry = &mut j.sections[i];
        entry.status = SectionState::Ok;
        entry.artifacts = adopted;
    } else {
        j.sections[i].status = SectionState::Failed;
    }
    j.sections[i].dest_before = None;
    j.sections[i].pgid = None;
    j.sections[i].settled = true;
    j.save(work)?;
    Ok(cleaned)
}

/// Removes the empty folders of a tree (an objective whose files were all consumed).
fn remove_empty_tree(dir: &Path) {
    let Some(rels) = journal::snapshot(dir, 100_000) else { return };
    for rel in rels.iter().rev() {
        let _ = std::fs::remove_dir(dir.join(rel));
    }
    let _ = std::fs::remove_dir(dir);
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
/// it is made, so a kill in between loses track of nothing (and the move resumes).
fn set_aside(j: &mut Journal, work: &Path) -> Result<()> {
    let base = work.join(ASIDE).join(&j.run_id);
    for a in live_artifacts(j) {
        let recorded = j.aside.iter().find(|m| m.from == a.path).cloned();
        if std::fs::symlink_metadata(&a.path).is_err() {
            continue;
        }
        let to = match recorded {
            // Already aside: a file now at its old place is another run's, unless it is the
            // very same bytes (a move across file systems cut short after its copy).
            Some(m) if std::fs::symlink_metadata(&m.to).is_ok() => {
                let same = ncb_core::hash::sha256_file(&a.path).ok() == Some((a.bytes, a.sha256.clone()));
                if !same {
                    continue;
                }
                m.to
            }
            Some(m) => m.to,
            None => {
                let name = a.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let to = base.join(j.aside.len().to_string()).join(name);
                j.aside.push(Moved { from: a.path.clone(), to: to.clone() });
                j.save(work)?;
                to
            }
        };
        journal::move_file(&a.path, &to)?;
    }
    Ok(())
}

/// Puts the run's files back where it made them. A place taken by a different file is a
/// conflict: nothing is overwritten.
fn put_back(j: &mut Journal, work: &Path) -> Result<()> {
    for m in &j.aside {
        if std::fs::symlink_metadata(&m.to).is_ok() {
            journal::move_file(&m.to, &m.from)?;
        }
        // Else moved back earlier, or the move was recorded but never made.
    }
    // Their folders, now empty (one that is not stays).
    for m in &j.aside {
        if let Some(d) = m.to.parent() {
            let _ = std::fs::remove_dir(d);
        }
    }
    let _ = std::fs::remove_dir(work.join(ASIDE).join(&j.run_id));
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

fn is_storage(step: &Step) -> bool {
    matches!(&step.target, Target::Stage { def, .. } | Target::Load { def, .. } if def.name == "storage")
}

fn complete(config: &Config, work: &Path, mut j: Journal, signal: &Arc<AtomicUsize>) -> Recovery {
    let run_id = j.run_id.clone();
    if let Some(why) = j.damaged.clone() {
        return damaged(work, j, &why);
    }
    if !j.sections.iter().any(|s| s.status == SectionState::Ok) {
        return match Journal::close(work, &run_id) {
            Ok(()) => Recovery::new(&run_id, Outcome::Abandoned, "it had finished no section: nothing to complete"),
            Err(e) => Recovery::new(&run_id, Outcome::Pending, error_chain(&e)),
        };
    }
    if let Err(e) = put_back(&mut j, work) {
        return pending(work, j, &error_chain(&e), Vec::new());
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
    if report.failed() {
        let why = report
            .failures()
            .iter()
            .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("failed")))
            .collect::<Vec<_>>()
            .join("; ");
        return pending(work, j, &why, ran);
    }
    // Stored when every storage section of the plan has finished for this run.
    let unstored: Vec<&str> = steps
        .iter()
        .filter(|s| is_storage(s))
        .filter(|s| !j.section(&s.section).is_some_and(|e| e.status == SectionState::Ok))
        .map(|s| s.section.as_str())
        .collect();
    let left: Vec<Artifact> = live_artifacts(&j).into_iter().filter(|a| a.path.exists()).collect();
    if !unstored.is_empty() && !left.is_empty() {
        let why = format!(
            "the config no longer reads its files ({} not run: nothing of the run in its OBJECTIVES)",
            unstored.join(", ")
        );
        return Recovery { sections: ran, ..damaged(work, j, &why) };
    }
    let not_run: Vec<&str> =
        j.sections.iter().filter(|e| e.status != SectionState::Ok).map(|e| e.name.as_str()).collect();
    let detail = if not_run.is_empty() {
        format!("completed: {}", summary(&ran))
    } else {
        format!(
            "completed without {} (it had failed; tonight's run backs it up): {}",
            not_run.join(", "),
            summary(&ran)
        )
    };
    match Journal::close(work, &run_id) {
        Ok(()) => Recovery { sections: ran, ..Recovery::new(&run_id, Outcome::Completed, detail) },
        Err(e) => Recovery { sections: ran, ..Recovery::new(&run_id, Outcome::Pending, error_chain(&e)) },
    }
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

/// Leftovers that are not what the run made, or that the config no longer reads: kept aside
/// with the journal, for a person; the run is not tried again.
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
