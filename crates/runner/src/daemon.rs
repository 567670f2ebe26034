//! `backup-runner daemon`: a scheduler for hosts without cron. One process for several
//! configs; each config runs (as `backup-runner -r -c CONF`, a child process) in the minutes
//! its GENERAL SCHEDULE names, local time. A config whose previous run is still going is not
//! started again (and the run lock would refuse it anyway). SIGTERM, SIGINT or SIGHUP stop
//! the daemon: running backups get the signal too and are waited for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{Local, Timelike};

use ncb_core::{Error, IoContext, Result, sys};

use crate::schedule::{self, Cron};

pub struct Job {
    pub config: PathBuf,
    pub crons: Vec<Cron>,
    child: Option<Child>,
}

impl Job {
    pub fn load(path: &Path) -> Result<Job> {
        let (config, problems) = crate::config::load(path).map_err(|p| problems_error(path, &p))?;
        if !problems.is_empty() {
            return Err(problems_error(path, &problems));
        }
        let raw = config.general("SCHEDULE").ok_or_else(|| {
            Error::config(format!("{}: GENERAL has no SCHEDULE for the daemon to follow", path.display()))
        })?;
        let crons = schedule::parse_list(raw)
            .and_then(|l| l.iter().map(|e| Cron::parse(e)).collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::config(format!("{}: GENERAL.SCHEDULE: {e}", path.display())))?;
        let config = path.canonicalize().at("cannot resolve", path)?;
        Ok(Job { config, crons, child: None })
    }

    fn due(&self, t: &chrono::DateTime<Local>) -> bool {
        self.crons.iter().any(|c| c.matches(&t.date_naive(), t.hour(), t.minute()))
    }

    /// Collects the finished run, if any; true while one is still going.
    fn running(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else { return false };
        match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                let how = match status.code() {
                    Some(0) => "ok".to_owned(),
                    Some(n) => format!("failed (exit {n})"),
                    None => "killed".to_owned(),
                };
                log::info!("run of {} ended: {how}", self.config.display());
                self.child = None;
                false
            }
            Err(e) => {
                log::error!("cannot wait for the run of {}: {e}", self.config.display());
                self.child = None;
                false
            }
        }
    }

    fn start(&mut self, runner: &Path) {
        if self.running() {
            log::warn!("{}: the previous run is still going; this one is skipped", self.config.display());
            return;
        }
        log::info!("starting a run of {}", self.config.display());
        match Command::new(runner)
            .arg("-r")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(c) => self.child = Some(c),
            Err(e) => log::error!("cannot start {} for {}: {e}", runner.display(), self.config.display()),
        }
    }
}

fn problems_error(path: &Path, problems: &[crate::config::ConfigProblem]) -> Error {
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Error::config(format!("{}: {}", path.display(), all.join("; ")))
}

pub fn run(configs: &[PathBuf], signal: &Arc<AtomicUsize>) -> Result<()> {
    if configs.is_empty() {
        return Err(Error::usage("daemon needs at least one config (-c CONF.JSON, or several as arguments)"));
    }
    let mut jobs = configs.iter().map(|c| Job::load(c)).collect::<Result<Vec<_>>>()?;
    let runner = std::env::current_exe().ctx(|| "cannot find backup-runner's own path".into())?;
    log::info!("daemon started for {} config(s)", jobs.len());
    for j in jobs.iter_mut().filter(|j| j.crons.iter().any(|c| c.at_start)) {
        j.start(&runner);
    }
    // Minutes are counted in UTC (never ambiguous), each matched in local time: an hour the
    // clock skips is not run, an hour it repeats is run twice, as with cron. A minute that
    // began before the daemon started is not run.
    let epoch_minute = || chrono::Utc::now().timestamp().div_euclid(60);
    let mut last = epoch_minute();
    while signal.load(Ordering::SeqCst) == 0 {
        let now = epoch_minute();
        // A clock stepped back: wait for it to catch up. Forward: at most 5 missed minutes run.
        if now > last {
            for m in (last + 1).max(now - 4)..=now {
                if let Some(t) = chrono::DateTime::from_timestamp(m * 60, 0) {
                    let local = t.with_timezone(&Local);
                    for j in jobs.iter_mut().filter(|j| j.due(&local)) {
                        j.start(&runner);
                    }
                }
            }
            last = now;
        }
        for j in jobs.iter_mut() {
            j.running();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let sig = i32::try_from(signal.load(Ordering::SeqCst)).unwrap_or(sys::SIGTERM);
    log::info!("daemon stopping on {}", sys::signal_name(sig));
    for j in jobs.iter_mut() {
        if let Some(c) = j.child.as_mut() {
            let _ = sys::kill_pid(c.id(), sig);
            let _ = c.wait();
            log::info!("run of {} stopped", j.config.display());
        }
    }
    Ok(())
}
