//! The NOTIFY section: what a run tells the outside world. A healthchecks-style ping when the
//! run starts and when it ends (success or failure URL), a webhook that receives the JSON run
//! report, and commands run on success or failure with the report's path in the environment.
//! Every attempt is bounded (count and time); a failed notification is logged and never
//! changes the backup's own status.
//!
//! ```json
//! "NOTIFY": {
//!   "PING_START_URL": "https://hc-ping.com/UUID/start",
//!   "PING_SUCCESS_URL": "https://hc-ping.com/UUID",
//!   "PING_FAILURE_URL": "https://hc-ping.com/UUID/fail",
//!   "WEBHOOK_URL": "https://example.com/hooks/backup",
//!   "ON_SUCCESS": "logger backup ok",
//!   "ON_FAILURE": "mail -s 'backup failed' ops@example.com < \"$NCB_REPORT\"",
//!   "RETRIES": 3, "TIMEOUT": "10s"
//! }
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::config::ConfigProblem;

pub const SECTION: &str = "NOTIFY";
const KEYS: [&str; 8] = [
    "PING_START_URL",
    "PING_SUCCESS_URL",
    "PING_FAILURE_URL",
    "WEBHOOK_URL",
    "ON_SUCCESS",
    "ON_FAILURE",
    "RETRIES",
    "TIMEOUT",
];
/// Commands get this long before they are killed.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Default)]
pub struct Notify {
    pub ping_start: Option<String>,
    pub ping_success: Option<String>,
    pub ping_failure: Option<String>,
    pub webhook: Option<String>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub retries: u32,
    pub timeout: Duration,
}

/// Reads the NOTIFY section; every problem is reported.
pub fn parse(body: &Map<String, Value>, problems: &mut Vec<ConfigProblem>) -> Notify {
    let mut n = Notify { retries: 3, timeout: Duration::from_secs(10), ..Default::default() };
    for (k, v) in body {
        if k.starts_with('_') {
            continue;
        }
        let mut bad = |m: String| problems.push(ConfigProblem::new(Some(SECTION), Some(k), m));
        let text = match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(num) => Some(num.to_string()),
            _ => None,
        };
        let url = |t: &Option<String>, bad: &mut dyn FnMut(String)| match t {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.clone()),
            _ => {
                bad("must be an http:// or https:// URL".into());
                None
            }
        };
        match k.as_str() {
            "PING_START_URL" => n.ping_start = url(&text, &mut bad),
            "PING_SUCCESS_URL" => n.ping_success = url(&text, &mut bad),
            "PING_FAILURE_URL" => n.ping_failure = url(&text, &mut bad),
            "WEBHOOK_URL" => n.webhook = url(&text, &mut bad),
            "ON_SUCCESS" => {
                n.on_success = text.or_else(|| {
                    bad("must be a command".into());
                    None
                })
            }
            "ON_FAILURE" => {
                n.on_failure = text.or_else(|| {
                    bad("must be a command".into());
                    None
                })
            }
            "RETRIES" => match text.as_deref().and_then(|t| t.parse::<u32>().ok()).filter(|r| *r <= 10) {
                Some(r) => n.retries = r,
                None => bad("must be a whole number from 0 to 10".into()),
            },
            "TIMEOUT" => match crate::config::parse_duration(v) {
                Ok(d) if d <= Duration::from_secs(300) => n.timeout = d,
                Ok(_) => bad("at most 300s".into()),
                Err(e) => bad(e),
            },
            _ => bad(format!("unknown key (known: {})", KEYS.join(", "))),
        }
    }
    n
}

impl Notify {
    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder().timeout_global(Some(self.timeout)).http_status_as_error(false).build().into()
    }

    /// One request, retried with backoff (1 s, 2 s, 4 s…) on errors and 5xx, within
    /// `retries + 1` attempts.
    fn send(&self, what: &str, url: &str, body: Option<&[u8]>) {
        let agent = self.agent();
        let shown = redact(url);
        let started = Instant::now();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << (attempt - 1).min(4)));
            }
            let result = match body {
                Some(b) => agent.post(url).header("Content-Type", "application/json").send(b),
                None => agent.get(url).call(),
            };
            match result {
                Ok(r) if r.status().is_success() => {
                    log::debug!("{what} {shown}: {}", r.status());
                    return;
                }
                Ok(r) if r.status().is_client_error() => {
                    log::error!("{what} {shown} failed: HTTP {} (not retried)", r.status());
                    return;
                }
                Ok(r) => {
                    log::warn!("{what} {shown}: HTTP {} (attempt {} of {})", r.status(), attempt + 1, self.retries + 1)
                }
                Err(e) => log::warn!("{what} {shown}: {e} (attempt {} of {})", attempt + 1, self.retries + 1),
            }
        }
        log::error!(
            "{what} {shown} failed after {} attempts in {:.1}s; the backup's status is unchanged",
            self.retries + 1,
            started.elapsed().as_secs_f64()
        );
    }

    pub fn started(&self) {
        if let Some(u) = &self.ping_start {
            self.send("start ping", u, None);
        }
    }

    /// After the run: pings, webhook, command. `report` is the run report's JSON and path.
    pub fn finished(&self, ok: bool, run_id: &str, report_json: &str, report_path: Option<&Path>) {
        let ping = if ok { &self.ping_success } else { &self.ping_failure };
        if let Some(u) = ping {
            self.send(if ok { "success ping" } else { "failure ping" }, u, None);
        }
        if let Some(u) = &self.webhook {
            self.send("webhook", u, Some(report_json.as_bytes()));
        }
        let command = if ok { &self.on_success } else { &self.on_failure };
        if let Some(c) = command {
            run_command(c, ok, run_id, report_path);
        }
    }
}

use ncb_core::params::redact_url as redact;

fn run_command(c: &str, ok: bool, run_id: &str, report: Option<&Path>) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(c)
        .stdin(Stdio::null())
        .env("NCB_RUN_ID", run_id)
        .env("NCB_RUN_STATUS", if ok { "ok" } else { "failed" });
    if let Some(r) = report {
        cmd.env("NCB_REPORT", r);
    }
    let label = if ok { "ON_SUCCESS" } else { "ON_FAILURE" };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return log::error!("{label} command could not start: {e}"),
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return,
            Ok(Some(s)) => return log::error!("{label} command failed ({s}); the backup's status is unchanged"),
            Ok(None) if started.elapsed() > COMMAND_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return log::error!("{label} command ran over {}s and was killed", COMMAND_LIMIT.as_secs());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return log::error!("{label} command: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_in_logs_keep_only_the_host() {
        assert_eq!(super::redact("https://hc-ping.com/3f1a-uuid/fail"), "https://hc-ping.com/…");
        assert_eq!(super::redact("https://user:pw@hooks.example/T0/B1/xyz?k=v"), "https://hooks.example/…");
    }
}
