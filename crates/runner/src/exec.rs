//! Runs one child: its own process group, stderr into the log (and the error when it fails),
//! the stage report read from stdout, TIMEOUT and signals delivered to the whole group.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ncb_core::StageReport;
use ncb_core::progress;
use ncb_core::sys;

/// How long a process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// Lines of the child's stderr kept for the error message.
const TAIL_LINES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Interrupted(i32),
}

#[derive(Debug)]
pub struct ChildOutcome {
    pub end: End,
    pub report: Option<StageReport>,
    pub stderr_tail: Vec<String>,
}

enum Line {
    Out(String),
    Err(String),
    Eof,
}

/// Spawns `program args` in a new process group and waits for it, forwarding any signal
/// recorded in `signal` (a signal number, 0 for none) to the group.
pub fn run(
    section: &str,
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    timeout: Option<Duration>,
    signal: &Arc<AtomicUsize>,
    on_spawn: &mut dyn FnMut(u32),
) -> std::io::Result<ChildOutcome> {
    let mut cmd = Command::new(program);
    // Relayed bars only when this runner draws them (run.rs sets it then): not inherited.
    cmd.env_remove(ncb_core::context::env::PROGRESS);
    cmd.args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // A killed runner takes its stage with it: no stage runs on beside the next run.
    sys::dies_with_parent(&mut cmd, sys::SIGTERM);
    let mut child = cmd.spawn()?;
    let pgid = child.id();
    on_spawn(pgid);
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        spawn_reader(out, tx.clone(), Line::Out);
    }
    if let Some(err) = child.stderr.take() {
        spawn_reader(err, tx.clone(), Line::Err);
    }
    drop(tx);

    let started = Instant::now();
    let mut lines = Collector::new(section);
    let mut killed: Option<(End, Instant)> = None;
    let status = loop {
        lines.drain(&rx, Duration::from_millis(50));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        match killed {
            None => {
                let sig = signal.load(Ordering::SeqCst);
                if sig != 0 {
                    let sig = i32::try_from(sig).unwrap_or(sys::SIGTERM);
                    log::warn!("[{section}] {} received: stopping the stage", sys::signal_name(sig));
                    let _ = sys::kill_group(pgid, sig);
                    killed = Some((End::Interrupted(sig), Instant::now()));
                } else if timeout.is_some_and(|t| started.elapsed() >= t) {
                    log::error!(
                        "[{section}] TIMEOUT of {}s reached: stopping the stage",
                        timeout.map_or(0, |t| t.as_secs())
                    );
                    let _ = sys::kill_group(pgid, sys::SIGTERM);
                    killed = Some((End::TimedOut, Instant::now()));
                }
            }
            Some((_, at)) if at.elapsed() >= KILL_GRACE => {
                let _ = sys::kill_group(pgid, sys::SIGKILL);
            }
            Some(_) => {}
        }
    };
    // The child is gone; its group may still hold members (and our pipes) after a kill.
    if killed.is_some() {
        let _ = sys::kill_group(pgid, sys::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while lines.open_streams > 0 && Instant::now() < deadline {
        lines.drain(&rx, Duration::from_millis(50));
    }
    let end = match killed {
        Some((end, _)) => end,
        None => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(c), _) => End::Exited(c),
            (None, Some(s)) => End::Signalled(s),
            (None, None) => End::Exited(-1),
        },
    };
    progress::end_relayed();
    Ok(ChildOutcome { end, report: lines.report, stderr_tail: lines.tail })
}

fn spawn_reader<R: Read + Send + 'static>(r: R, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // Lines are cut at 64 KiB: a child printing without newlines cannot grow memory.
            match (&mut reader).take(64 << 10).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send(wrap(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Line::Eof);
    });
}

struct Collector<'a> {
    section: &'a str,
    report: Option<StageReport>,
    tail: Vec<String>,
    open_streams: usize,
}

impl<'a> Collector<'a> {
    fn new(section: &'a str) -> Self {
        Collector { section, report: None, tail: Vec::new(), open_streams: 2 }
    }

    fn drain(&mut self, rx: &mpsc::Receiver<Line>, wait: Duration) {
        let mut next = rx.recv_timeout(wait).ok();
        while let Some(line) = next {
            self.take(line);
            next = rx.try_recv().ok();
        }
    }

    fn take(&mut self, line: Line) {
        match line {
            Line::Eof => self.open_streams = self.open_streams.saturating_sub(1),
            Line::Out(l) => match serde_json::from_str::<StageReport>(&l) {
                Ok(r) if l.starts_with('{') => self.report = Some(r),
                _ if l.is_empty() => {}
                _ => log::info!("[{}] {l}", self.section),
            },
            Line::Err(l) => {
                if l.is_empty() {
                    return;
                }
                // A relayed progress bar: drawn on the runner's terminal, never logged.
                if let Some((label, done, total, elapsed)) = progress::relayed(&l) {
                    if progress::on_terminal() {
                        let label = format!("[{}] {label}", self.section);
                        let width = progress::line_width();
                        progress::draw_relayed(&progress::render_within(&label, done, total, elapsed, width));
                    }
                    return;
                }
                // Errors reach the user once, in the section's failure message (with this tail).
                if l.to_ascii_lowercase().contains("warning") {
                    log::warn!("[{}] {l}", self.section);
                } else {
                    log::info!("[{}] {l}", self.section);
                }
                if self.tail.len() == TAIL_LINES {
                    self.tail.remove(0);
                }
                self.tail.push(l);
            }
        }
    }
}
