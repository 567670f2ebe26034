//! A progress bar on stderr, drawn only when stderr is a terminal: silent under cron, in
//! logs and in pipes. Cheap to update from several threads; redrawn at most 8 times a second.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last: Mutex<Option<Instant>>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` bytes (0: unknown, a counter is shown).
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Self::with(label, total, std::io::stderr().is_terminal() && std::env::var_os("NCB_NO_PROGRESS").is_none())
    }

    /// A bar that is never drawn.
    pub fn hidden() -> Self {
        Self::with("", 0, false)
    }

    fn with(label: impl Into<String>, total: u64, enabled: bool) -> Self {
        Progress {
            label: label.into(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            last: Mutex::new(None),
            enabled,
        }
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else { return };
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < Duration::from_millis(125)) {
            return;
        }
        *last = Some(now);
        self.draw(done, now);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn draw(&self, done: u64, now: Instant) {
        let secs = now.duration_since(self.started).as_secs_f64().max(0.001);
        let rate = format!("{}/s", human(done as f64 / secs));
        let line = if self.total > 0 {
            let frac = (done as f64 / self.total as f64).clamp(0.0, 1.0);
            let width = 30;
            let fill = (frac * width as f64).round() as usize;
            format!(
                "\r{} [{}{}] {:>3.0}% {} / {}  {rate}   ",
                self.label,
                "#".repeat(fill),
                " ".repeat(width - fill),
                frac * 100.0,
                human(done as f64),
                human(self.total as f64)
            )
        } else {
            format!("\r{} {}  {rate}   ", self.label, human(done as f64))
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// Draws the final state and ends the line.
    pub fn finish(&self) {
        if self.enabled {
            self.draw(self.done(), Instant::now());
            let _ = std::io::stderr().lock().write_all(b"\n");
        }
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
        let p = Progress::with("x", 10, false);
        p.add(3);
        p.add(4);
        assert_eq!(p.done(), 7);
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(12.0), "12 B");
    }
}
