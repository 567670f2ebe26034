//! `backup-runner -r`: runs the planned steps in order, stops at the first failure (unless
//! ON_FAILURE continue), and records everything in the run report.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ncb_core::context::env;
use ncb_core::journal::{Journal, SectionEntry, SectionState};
use ncb_core::lineage::Lineage;
use ncb_core::stage::error_chain;
use ncb_core::{StageCtx, StageReport, sys};

use crate::config::{Config, OnFailure};
use crate::exec::{self, End};
use crate::plan::{Step, Target, general_of};
use crate::report::{RunReport, SectionReport, Status};

/// Registers SIGINT, SIGTERM and SIGHUP: each sets the returned cell to its number.
pub fn watch_signals() -> std::io::Result<Arc<AtomicUsize>> {
    let cell = Arc::new(AtomicUsize::new(0));
    for sig in [sys::SIGINT, sys::SIGTERM, sys::SIGHUP] {
        let n = usize::try_from(sig).unwrap_or(15);
        signal_hook::flag::register_usize(sig, Arc::clone(&cell), n)?;
    }
    Ok(cell)
}

/// How a walk over the steps keeps its journal, and whether it completes an earlier run.
pub struct Walk<'a> {
    pub work: &'a std::path::Path,
    pub journal: &'a mut Journal,
    /// Completing an earlier run: sections it finished are not run again, source sections
    /// (which read live data) are not run at all, and OBJECTIVES are narrowed to what exists.
    pub completing: bool,
}

/// Walks the steps in order. The journal is saved before and after every section; it is
/// closed (removed) once every section was walked, and kept when the run stopped early, for
/// the next run to complete.
pub fn run_all(
    config: &Config,
    steps: &[Step],
    started: chrono::DateTime<chrono::Utc>,
    signal: &Arc<AtomicUsize>,
    walk: Walk,
) -> RunReport {
    let clock = Instant::now();
    let general = general_of(config);
    let run_id = walk.journal.run_id.clone();
    let mut report = RunReport {
        run_id: run_id.clone(),
        host: general.hostname.clone(),
        config: config.path.display().to_string(),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished: String::new(),
        duration_ms: 0,
        status: Status::Ok,
        sections: Vec::new(),
        artifacts: 0,
        bytes: 0,
        warnings: 0,
        recovered: Vec::new(),
    };
    let mut stopped = false;
    // A completion of a run that had a failed or unfinished section never applies retention:
    // the run it stores may lack that section's data (a database that was down).
    let mut earlier_failed = walk.completing && walk.journal.sections.iter().any(|e| e.status != SectionState::Ok);
    let mut any_failed = false;
    let mut lineage = walk.journal.lineage.clone();
    let lineage_file = walk.work.join(format!(".ncb-lineage-{run_id}.json"));
    for (i, step) in steps.iter().enumerate() {
        if signal.load(Ordering::SeqCst) != 0 {
            stopped = true;
        }
        if stopped {
            report.sections.push(skipped(step));
            continue;
        }
        let step = if walk.completing {
            match completion_step(walk.journal, step) {
                Ok(s) => s,
                Err(note) => {
                    log::info!("[{}] {note}", step.section);
                    report.sections.push(SectionReport { warnings: vec![note], ..skipped(step) });
                    continue;
                }
            }
        } else {
            step.clone()
        };
        let step = &step;
        log::info!("[{}] section {}/{}: {} {}", step.section, i + 1, steps.len(), step.action(), step.target_name());
        if let Err(e) = journal_start(walk.journal, walk.work, step) {
            let mut s = skipped(step);
            fail(&mut s, Status::Failed, format!("cannot write the run journal: {}", error_chain(&e)));
            log_outcome(&s);
            report.sections.push(s);
            stopped = true;
            continue;
        }
        let mut ctx = StageCtx::new(general.clone(), run_id.clone(), step.section.clone());
        ctx.lineage = lineage.clone();
        ctx.earlier_failed = earlier_failed;
        ctx.base_missing = base_missing(config, step, &general, &run_id);
        let json = serde_json::to_vec(&lineage).unwrap_or_default();
        let lineage_env = match ncb_core::atomic::write_file(&lineage_file, &json, 0o600) {
            Ok(()) => Some(&lineage_file),
            Err(e) => {
                log::warn!("cannot write the run's lineage: {}", error_chain(&e));
                None
            }
        };
        let (journal, work) = (&mut *walk.journal, walk.work);
        let mut on_spawn = |pgid: u32| {
            if let Some(e) = journal.section_mut(&step.section) {
                e.pgid = Some(pgid);
            }
            if let Err(e) = journal.save(work) {
                log::warn!("cannot write the run journal: {}", error_chain(&e));
            }
        };
        let mut s = run_step(step, &ctx, config, signal, lineage_env.map(|p| p.as_path()), &mut on_spawn);
        log_outcome(&s);
        if s.status == Status::Ok {
            let objectives = step.params().paths("OBJECTIVES").unwrap_or_default();
            let made: Vec<_> = s.artifacts.iter().map(|a| a.path.clone()).collect();
            lineage.record(&step.section, &step.target_name(), &objectives, &made);
            if let Some(t) = lineage.sections.last_mut() {
                t.base = s.data.get("base_run").and_then(|v| v.as_str()).map(str::to_owned);
                t.index = s.data.get("index").and_then(|v| v.as_str()).map(std::path::PathBuf::from);
            }
        }
        if let Err(e) = journal_end(walk.journal, walk.work, &s, &lineage) {
            let msg = format!("cannot write the run journal: {}", error_chain(&e));
            log::error!("[{}] {msg}", step.section);
            if s.status == Status::Ok {
                fail(&mut s, Status::Failed, msg);
            }
        }
        let failed = s.status != Status::Ok;
        earlier_failed |= failed;
        any_failed |= failed;
        let interrupted = s.status == Status::Interrupted || signal.load(Ordering::SeqCst) != 0;
        report.sections.push(s);
        if interrupted || (failed && step.on_failure == OnFailure::Stop) {
            stopped = true;
        }
    }
    let _ = std::fs::remove_file(&lineage_file);
    let sig = signal.load(Ordering::SeqCst);
    if sig != 0 && report.sections.iter().all(|s| s.status != Status::Interrupted) {
        // The signal came between sections or during an in-process one: record it.
        let name = sys::signal_name(i32::try_from(sig).unwrap_or(sys::SIGTERM));
        report.sections.push(SectionReport {
            status: Status::Interrupted,
            error: Some(format!("interrupted by {name}; the following sections were not run")),
            ..skipped_named("(run)")
        });
        stopped = true;
    }
    if !stopped && !any_failed && !walk.completing {
        // Every section was walked, and succeeded: nothing is left for a later run to
        // complete. A section that failed under ON_FAILURE continue keeps the journal: what
        // it did not store is stored by the next run (a completion's journal is closed by
        // recovery, which checks that the run was stored).
        if let Err(e) = Journal::close(walk.work, &run_id) {
            log::error!("{}", error_chain(&e));
        }
    }
    report.finished = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    report.duration_ms = ms(clock);
    report.tally();
    report
}

/// The report of a run whose sections could not start (recovery of an earlier run failed).
pub fn not_run(
    config: &Config,
    run_id: &str,
    started: chrono::DateTime<chrono::Utc>,
    steps: &[Step],
    why: &str,
) -> RunReport {
    log::error!("{why}");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut sections =
        vec![SectionReport { status: Status::Failed, error: Some(why.to_owned()), ..skipped_named("(recovery)") }];
    sections.extend(steps.iter().map(skipped));
    RunReport {
        run_id: run_id.to_owned(),
        host: general_of(config).hostname,
        config: config.path.display().to_string(),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished: now,
        duration_ms: 0,
        status: Status::Failed,
        sections,
        artifacts: 0,
        bytes: 0,
        warnings: 0,
        recovered: Vec::new(),
    }
}

/// The step as a completion runs it, or why it is not run.
fn completion_step(journal: &Journal, step: &Step) -> Result<Step, String> {
    if journal.section(&step.section).is_some_and(|e| e.status == SectionState::Ok) {
        return Err("finished by the run itself".into());
    }
    let params = step.params();
    if !params.has("OBJECTIVES") {
        return Err("not run again: it reads live data, which tonight's run backs up".into());
    }
    let objectives = params.paths("OBJECTIVES").unwrap_or_default();
    let present: Vec<String> =
        objectives.iter().filter(|o| std::fs::symlink_metadata(o).is_ok()).map(|o| o.display().to_string()).collect();
    if present.is_empty() {
        return Err("nothing of the run is left in its OBJECTIVES".into());
    }
    let mut out = step.clone();
    if present.len() < objectives.len() {
        // As the config writes lists: space-separated, a JSON array only when a path has a space.
        let list = if present.iter().any(|p| p.contains(char::is_whitespace)) {
            serde_json::to_string(&present).unwrap_or_default()
        } else {
            present.join(" ")
        };
        for (k, v) in &mut out.args {
            if ncb_core::params::canonical_key(k) == "OBJECTIVES" {
                v.clone_from(&list);
            }
        }
    }
    Ok(out)
}

/// The folder a built-in stage writes its outputs into.
pub fn dest_of(step: &Step) -> Option<std::path::PathBuf> {
    let (Target::Stage { def, .. } | Target::Load { def, .. }) = &step.target else { return None };
    if !matches!(def.name, "filesbackup" | "mysql-dump" | "pg-dump" | "compression" | "encryption") {
        return None;
    }
    step.params().path("DESTINATION")
}

/// Entries a snapshot of a destination may hold before it is not taken (a folder that big is
/// not a work folder; a kill there is then cleaned by the stage's own temporaries only).
const SNAPSHOT_LIMIT: usize = 100_000;

fn journal_start(journal: &mut Journal, work: &std::path::Path, step: &Step) -> ncb_core::Result<()> {
    let params = step.params();
    let dest = dest_of(step);
    let dest_before = dest.as_deref().and_then(|d| ncb_core::journal::snapshot(d, SNAPSHOT_LIMIT));
    let objectives = params.paths("OBJECTIVES").unwrap_or_default();
    let remove_objectives = params.flag("REMOVE_OBJECTIVES", false).unwrap_or(false);
    let inputs_before =
        if remove_objectives { ncb_core::journal::files_under(&objectives, SNAPSHOT_LIMIT) } else { Some(Vec::new()) };
    let seq = journal.next_seq();
    journal.put(SectionEntry {
        name: step.section.clone(),
        stage: step.target_name(),
        status: SectionState::Started,
        dest,
        dest_before,
        objectives,
        remove_objectives,
        inputs_before,
        artifacts: Vec::new(),
        seq,
        pgid: None,
        settled: false,
    });
    journal.save(work)
}

fn journal_end(
    journal: &mut Journal,
    work: &std::path::Path,
    s: &SectionReport,
    lineage: &Lineage,
) -> ncb_core::Result<()> {
    if let Some(e) = journal.section_mut(&s.name) {
        e.status = if s.status == Status::Ok { SectionState::Ok } else { SectionState::Failed };
        e.artifacts.clone_from(&s.artifacts);
        e.pgid = None;
    }
    journal.lineage = lineage.clone();
    journal.save(work)
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}

fn skipped_named(name: &str) -> SectionReport {
    SectionReport {
        name: name.to_owned(),
        action: String::new(),
        target: String::new(),
        status: Status::Skipped,
        exit_code: None,
        duration_ms: 0,
        artifacts: Vec::new(),
        warnings: Vec::new(),
        error: None,
        data: Default::default(),
    }
}

fn skipped(step: &Step) -> SectionReport {
    SectionReport { action: step.action().into(), target: step.target_name(), ..skipped_named(&step.section) }
}

fn log_outcome(s: &SectionReport) {
    let secs = s.duration_ms as f64 / 1000.0;
    match s.status {
        Status::Ok => {
            let bytes: u64 = s.artifacts.iter().map(|a| a.bytes).sum();
            log::info!(
                "[{}] ok in {secs:.1}s: {} artifacts, {bytes} bytes, {} warnings",
                s.name,
                s.artifacts.len(),
                s.warnings.len()
            );
        }
        _ => log::error!("[{}] {:?} after {secs:.1}s: {}", s.name, s.status, s.error.as_deref().unwrap_or("")),
    }
}

fn run_step(
    step: &Step,
    ctx: &StageCtx,
    config: &Config,
    signal: &Arc<AtomicUsize>,
    lineage: Option<&std::path::Path>,
    on_spawn: &mut dyn FnMut(u32),
) -> SectionReport {
    let clock = Instant::now();
    let mut s = skipped(step);
    match &step.target {
        Target::Load { def, .. } => {
            let params = step.params();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| def.execute(ctx, &params)));
            match result {
                Ok(Ok(r)) => fill(&mut s, r),
                Ok(Err(e)) => fail(&mut s, Status::Failed, error_chain(&e)),
                Err(_) => {
                    fail(&mut s, Status::Failed, format!("stage {} panicked (a bug: please report it)", def.name))
                }
            }
        }
        Target::Stage { .. } | Target::External { .. } => {
            let Some((program, args)) = step.argv() else {
                fail(&mut s, Status::Failed, format!("stage binary '{}' not found", step.target_name()));
                return s;
            };
            let mut envs = vec![
                (env::RUN_ID.to_owned(), ctx.run_id.clone()),
                (env::SECTION.to_owned(), step.section.clone()),
                (env::LOG_CAPTURED.to_owned(), "1".to_owned()),
                (env::RUNNER_PID.to_owned(), std::process::id().to_string()),
                ("NCB_CONFIG".to_owned(), config.path.display().to_string()),
            ];
            if let Some(l) = lineage {
                envs.push((env::LINEAGE.to_owned(), l.display().to_string()));
            }
            if ncb_core::progress::on_terminal() {
                envs.push((env::PROGRESS.to_owned(), "relay".to_owned()));
            }
            if ctx.earlier_failed {
                envs.push((env::EARLIER_FAILED.to_owned(), "1".to_owned()));
            }
            if let Some(why) = &ctx.base_missing {
                envs.push((env::BASE_MISSING.to_owned(), why.clone()));
            }
            envs.extend(step.secret_env());
            match exec::run(&step.section, &program, &args, &envs, step.timeout, signal, on_spawn) {
                Err(e) => fail(&mut s, Status::Failed, format!("cannot start {}: {e}", program.display())),
                Ok(out) => {
                    let tail = out.stderr_tail.join("\n");
                    let with_tail = |m: String| {
                        if tail.is_empty() { m } else { format!("{m}:\n{tail}") }
                    };
                    match out.end {
                        End::Exited(0) => match (out.report, &step.target) {
                            (Some(r), _) => fill(&mut s, r),
                            (None, Target::External { .. }) => {
                                s.status = Status::Ok;
                                s.exit_code = Some(0);
                            }
                            (None, _) => {
                                fail(&mut s, Status::Failed, "stage exited 0 without its report on stdout".into())
                            }
                        },
                        End::Exited(c) => {
                            s.exit_code = Some(c);
                            fail(
                                &mut s,
                                Status::Failed,
                                with_tail(format!("{} exited with code {c}", step.target_name())),
                            );
                        }
                        End::Signalled(sig) => fail(
                            &mut s,
                            Status::Failed,
                            with_tail(format!("{} was killed by {}", step.target_name(), sys::signal_name(sig))),
                        ),
                        End::TimedOut => {
                            let t = step.timeout.map_or(0, |t| t.as_secs());
                            fail(
                                &mut s,
                                Status::Timeout,
                                format!("TIMEOUT of {t}s reached: the stage and its process group were killed"),
                            );
                        }
                        End::Interrupted(sig) => {
                            fail(&mut s, Status::Interrupted, format!("interrupted by {}", sys::signal_name(sig)))
                        }
                    }
                }
            }
        }
    }
    s.duration_ms = ms(clock);
    s
}

/// For an INCREMENTAL filesbackup section: why tonight must not build on the run its snapshot
/// names (not complete, or not authenticated, in a destination of the config). None when it
/// may, or when there is nothing to check (no snapshot, no storage section).
fn base_missing(config: &Config, step: &Step, general: &ncb_core::General, run_id: &str) -> Option<String> {
    if !crate::readback::is_stage(step, "filesbackup") {
        return None;
    }
    let p = step.params();
    if !p.flag("INCREMENTAL", false).unwrap_or(false) {
        return None;
    }
    let paths = filesbackup::incremental::state_paths(p.path("STATE_FOLDER"), &general.hostname, &step.section);
    let Ok(Some((snap, _))) = filesbackup::incremental::base_snapshot(&paths, run_id) else { return None };
    let base = &snap.run_id;
    let sources = crate::readback::sources(config).ok()?;
    let key = match crate::readback::key_file(config, None) {
        Ok(Some(k)) => match encryption::key::load(&k) {
            Ok(k) => Some(k),
            Err(e) => return Some(format!("cannot check run {base}, the base of this increment: {}", error_chain(&e))),
        },
        _ => None,
    };
    for s in &sources {
        match storage::manifest_of(s.backend(), &s.dest.prefix, base) {
            Ok(Some(m)) => {
                if let Some(k) = &key
                    && m.authenticity(k) == storage::backend::Authenticity::Invalid
                {
                    return Some(format!(
                        "run {base}, the base of this increment, fails its authentication in {}",
                        s.describe()
                    ));
                }
            }
            Ok(None) => {
                return Some(format!("run {base}, the base of this increment, is not complete in {}", s.describe()));
            }
            Err(e) => {
                return Some(format!(
                    "cannot check run {base}, the base of this increment, in {}: {}",
                    s.describe(),
                    error_chain(&e)
                ));
            }
        }
    }
    None
}

fn fill(s: &mut SectionReport, r: StageReport) {
    s.status = Status::Ok;
    s.exit_code = Some(0);
    s.artifacts = r.artifacts;
    s.warnings = r.warnings;
    s.data = r.data;
}

fn fail(s: &mut SectionReport, status: Status, error: String) {
    s.status = status;
    s.error = Some(error);
}
