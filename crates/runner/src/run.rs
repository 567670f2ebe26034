//! `backup-runner -r`: runs the planned steps in order, stops at the first failure (unless
//! ON_FAILURE continue), and records everything in the run report.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ncb_core::context::env;
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

pub fn run_all(
    config: &Config,
    steps: &[Step],
    run_id: &str,
    started: chrono::DateTime<chrono::Utc>,
    signal: &Arc<AtomicUsize>,
) -> RunReport {
    let clock = Instant::now();
    let general = general_of(config);
    let mut report = RunReport {
        run_id: run_id.to_owned(),
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
    };
    let mut stopped = false;
    let mut lineage = Lineage::default();
    let lineage_file = general.work_dir().join(format!(".ncb-lineage-{run_id}.json"));
    for (i, step) in steps.iter().enumerate() {
        if stopped {
            report.sections.push(skipped(step));
            continue;
        }
        log::info!("[{}] section {}/{}: {} {}", step.section, i + 1, steps.len(), step.action(), step.target_name());
        let mut ctx = StageCtx::new(general.clone(), run_id.to_owned(), step.section.clone());
        ctx.lineage = lineage.clone();
        let json = serde_json::to_vec(&lineage).unwrap_or_default();
        let lineage_env = match ncb_core::atomic::write_file(&lineage_file, &json, 0o600) {
            Ok(()) => Some(&lineage_file),
            Err(e) => {
                log::warn!("cannot write the run's lineage: {}", error_chain(&e));
                None
            }
        };
        let s = run_step(step, &ctx, config, signal, lineage_env.map(|p| p.as_path()));
        log_outcome(&s);
        if s.status == Status::Ok {
            let objectives = step.params().paths("OBJECTIVES").unwrap_or_default();
            let made: Vec<_> = s.artifacts.iter().map(|a| a.path.clone()).collect();
            lineage.record(&step.section, &step.target_name(), &objectives, &made);
        }
        let failed = s.status != Status::Ok;
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
    }
    report.finished = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    report.duration_ms = ms(clock);
    report.tally();
    report
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
                ("NCB_CONFIG".to_owned(), config.path.display().to_string()),
            ];
            if let Some(l) = lineage {
                envs.push((env::LINEAGE.to_owned(), l.display().to_string()));
            }
            envs.extend(step.secret_env());
            match exec::run(&step.section, &program, &args, &envs, step.timeout, signal) {
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
