//! A progress bar on stderr, drawn only when stderr is a terminal: silent under cron, in
//! logs and in pipes. Cheap to update from several threads; redrawn at most 8 times a second.
//!
//! Under `backup-runner -r` a stage's stderr is a pipe into the runner's log. When the runner
//! itself is on a terminal it sets `NCB_PROGRESS=relay` for its children: their bars then
//! travel as [`RELAY_PREFIX`] lines (4 a second at most) that the runner draws on its terminal
//! (see [`relayed`]) and never logs.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Starts a progress line a stage relays to the runner: `PREFIX done total elapsed_ms label`,
/// tab-separated.
pub const RELAY_PREFIX: &str = "\x1eNCB-PROGRESS\t";

/// Set by `-q`: no bar even on a terminal.
static SUPPRESSED: AtomicBool = AtomicBool::new(false);
/// A bar's line is on the terminal, not ended: a log line first clears it.
static LINE_OPEN: AtomicBool = AtomicBool::new(false);

/// No bars from this process (the runner's `-q`).
pub fn suppress() {
    SUPPRESSED.store(true, Ordering::Relaxed);
}

/// Whether bars are drawn on this process's stderr: a terminal, and not turned off.
pub fn on_terminal() -> bool {
    !SUPPRESSED.load(Ordering::Relaxed)
        && std::env::var_os("NCB_NO_PROGRESS").is_none()
        && std::io::stderr().is_terminal()
}

/// Clears a bar's unfinished line before other text goes to stderr (the logger calls it).
pub fn clear_line(err: &mut impl Write) {
    if LINE_OPEN.swap(false, Ordering::Relaxed) {
        let _ = err.write_all(b"\r\x1b[K");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Draw,
    Relay,
}

#[derive(Debug)]
pub struct Progress {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    last: Mutex<Option<Instant>>,
    mode: Mode,
}

impl Progress {
    /// A bar for `total` bytes (0: unknown, a counter is shown).
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let mode = if on_terminal() {
            Mode::Draw
        } else if std::env::var_os(crate::context::env::PROGRESS).is_some_and(|v| v == "relay") {
            Mode::Relay
        } else {
            Mode::Off
        };
        Self::with(label, total, mode)
    }

    /// A bar that is never drawn.
    pub fn hidden() -> Self {
        Self::with("", 0, Mode::Off)
    }

    fn with(label: impl Into<String>, total: u64, mode: Mode) -> Self {
        Progress {
            label: label.into(),
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            last: Mutex::new(None),
            mode,
        }
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.mode == Mode::Off {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else { return };
        let now = Instant::now();
        let every = if self.mode == Mode::Relay { 250 } else { 125 };
        if last.is_some_and(|l| now.duration_since(l) < Duration::from_millis(every)) {
            return;
        }
        *last = Some(now);
        self.draw(done, now);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Whether anything is drawn or relayed: work done only for the bar can be skipped if not.
    pub fn shown(&self) -> bool {
        self.mode != Mode::Off
    }

    /// The total, once known (a bar started as a counter becomes a bar with an ETA).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn draw(&self, done: u64, now: Instant) {
        let elapsed = now.duration_since(self.started);
        let mut err = std::io::stderr().lock();
        let _ = match self.mode {
            Mode::Off => Ok(()),
            Mode::Draw => {
                LINE_OPEN.store(true, Ordering::Relaxed);
                let total = self.total.load(Ordering::Relaxed);
                write!(err, "\r{}\x1b[K", render_within(&self.label, done, total, elapsed, line_width()))
            }
            Mode::Relay => writeln!(
                err,
                "{RELAY_PREFIX}{done}\t{}\t{}\t{}",
                self.total.load(Ordering::Relaxed),
                elapsed.as_millis(),
                self.label.replace(['\t', '\n', '\r'], " ")
            ),
        };
    }

    /// Draws the final state and ends the line.
    pub fn finish(&self) {
        match self.mode {
            Mode::Off => {}
            Mode::Draw => {
                self.draw(self.done(), Instant::now());
                LINE_OPEN.store(false, Ordering::Relaxed);
                let _ = std::io::stderr().lock().write_all(b"\n");
            }
            Mode::Relay => self.draw(self.done(), Instant::now()),
        }
    }
}

/// `label [####      ]  42% 1.2 GiB / 3.0 GiB  85.0 MiB/s  ETA 0:23` (a counter and a rate
/// when the total is unknown) in at most `width` characters: a line that wrapped would leave its first part
/// behind at every redraw. The figures are kept; the label is shortened first (to 12
/// characters at least), then the bar goes.
pub fn render_within(label: &str, done: u64, total: u64, elapsed: Duration, width: usize) -> String {
    let (bar, figures) = parts(done, total, elapsed);
    let count = |s: &str| s.chars().count();
    for bar in [bar.as_str(), ""] {
        let fixed = count(bar) + 1 + count(&figures);
        if count(label) + fixed <= width {
            return format!("{label}{bar} {figures}");
        }
        if fixed + 12 <= width {
            let keep: String = label.chars().take(width - fixed - 1).collect();
            return format!("{keep}~{bar} {figures}");
        }
    }
    figures.chars().take(width).collect()
}

/// The bar (` [###   ]`, empty when the total is unknown) and the figures after it.
fn parts(done: u64, total: u64, elapsed: Duration) -> (String, String) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let per_sec = done as f64 / secs;
    let rate = format!("{}/s", human(per_sec));
    if total == 0 {
        return (String::new(), format!("{}  {rate}", human(done as f64)));
    }
    let frac = (done as f64 / total as f64).clamp(0.0, 1.0);
    let width = 30;
    let fill = (frac * width as f64).round() as usize;
    let eta = if done >= total {
        format!("in {}", clock(secs))
    } else if per_sec >= 1.0 {
        format!("ETA {}", clock((total - done) as f64 / per_sec))
    } else {
        "ETA --:--".to_owned()
    };
    let bar = format!(" [{}{}]", "#".repeat(fill), " ".repeat(width - fill));
    let figures = format!("{:>3.0}% {} / {}  {rate}  {eta}", frac * 100.0, human(done as f64), human(total as f64));
    (bar, figures)
}

/// 83.2 -> "1:23", 3725 -> "1:02:05".
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A bar a stage relayed (a [`RELAY_PREFIX`] line): `(label, done, total, elapsed)`.
pub fn relayed(line: &str) -> Option<(String, u64, u64, Duration)> {
    let rest = line.strip_prefix(RELAY_PREFIX)?;
    let mut f = rest.splitn(4, '\t');
    let done = f.next()?.parse().ok()?;
    let total = f.next()?.parse().ok()?;
    let ms = f.next()?.parse().ok()?;
    Some((f.next().unwrap_or("").to_owned(), done, total, Duration::from_millis(ms)))
}

/// The runner's side of relayed bars: one line on its terminal, redrawn in place.
pub fn draw_relayed(text: &str) {
    let mut err = std::io::stderr().lock();
    LINE_OPEN.store(true, Ordering::Relaxed);
    let _ = write!(err, "\r{text}\x1b[K");
}

/// What a bar's line may hold: the columns of the terminal on stderr but one (80 when it
/// cannot be asked).
pub fn line_width() -> usize {
    crate::sys::terminal_columns(2).unwrap_or(80).saturating_sub(1).max(20)
}

/// Ends a relayed bar's line, leaving its last state on the terminal.
pub fn end_relayed() {
    if LINE_OPEN.swap(false, Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(b"\n");
    }
}

/// 1536 -> "1.5 KiB".
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} {}", units[u]) } else { format!("{v:.1} {}", units[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_without_a_terminal() {
        let p = Progress::with("x", 10, Mode::Off);
        p.add(3);
        p.add(4);
        assert_eq!(p.done(), 7);
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(12.0), "12 B");
    }

    #[test]
    fn long_lines_keep_their_figures_and_shorten_the_label_then_drop_the_bar() {
        let label = format!("[FILES] archive {}.tar.gz", "x".repeat(60));
        let t = Duration::from_secs(4);
        let whole = render_within(&label, 512 << 20, 1 << 30, t, usize::MAX);
        assert_eq!(render_within(&label, 512 << 20, 1 << 30, t, 500), whole);
        let cut = render_within(&label, 512 << 20, 1 << 30, t, 100);
        assert_eq!(cut.chars().count(), 100, "{cut}");
        assert!(cut.starts_with("[FILES] archive xx") && cut.contains("~ [###") && cut.ends_with("ETA 0:04"), "{cut}");
        let narrow = render_within(&label, 512 << 20, 1 << 30, t, 79);
        assert!(narrow.starts_with("[FILES] archive xx") && narrow.contains("~  50%"), "{narrow}");
        assert!(!narrow.contains('#') && narrow.ends_with("ETA 0:04") && narrow.chars().count() == 79, "{narrow}");
        let counter = render_within(&label, 3 << 20, 0, t, 40);
        assert!(counter.ends_with("3.0 MiB  768.0 KiB/s") && counter.chars().count() <= 40, "{counter}");
    }

    #[test]
    fn renders_rate_and_eta_and_parses_relayed_lines() {
        let line = render_within("files", 512 << 20, 1 << 30, Duration::from_secs(4), usize::MAX);
        assert!(line.contains(" 50% 512.0 MiB / 1.0 GiB  128.0 MiB/s  ETA 0:04"), "{line}");
        assert!(render_within("x", 10, 10, Duration::from_secs(75), usize::MAX).ends_with("in 1:15"));
        assert_eq!(clock(3725.0), "1:02:05");
        let l = format!("{RELAY_PREFIX}5\t10\t1500\tencrypt a.tar.gz");
        assert_eq!(relayed(&l), Some(("encrypt a.tar.gz".to_owned(), 5, 10, Duration::from_millis(1500))));
        assert_eq!(relayed("an ordinary line"), None);
    }
}
