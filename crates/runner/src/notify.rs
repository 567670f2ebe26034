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
const KEYS: [&str; 11] = [
    "PING_START_URL",
    "PING_SUCCESS_URL",
    "PING_FAILURE_URL",
    "WEBHOOK_URL",
    "ON_SUCCESS",
    "ON_FAILURE",
    "RETRIES",
    "TIMEOUT",
    "ZABBIX_SERVER",
    "ZABBIX_HOST",
    "ZABBIX_KEY",
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
    /// zabbix_sender's protocol to a trapper item: `host:port` (default port 10051).
    pub zabbix_server: Option<String>,
    pub zabbix_host: Option<String>,
    pub zabbix_key: Option<String>,
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
            "ZABBIX_SERVER" => match text {
                Some(t) if !t.contains('/') => {
                    n.zabbix_server = Some(if t.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                        t
                    } else {
                        format!("{t}:10051")
                    })
                }
                _ => bad("must be host or host:port of the Zabbix server (or proxy) trapper".into()),
            },
            "ZABBIX_HOST" => {
                n.zabbix_host = text.or_else(|| {
                    bad("must be the host name as Zabbix knows it".into());
                    None
                })
            }
            "ZABBIX_KEY" => {
                n.zabbix_key = text.or_else(|| {
                    bad("must be the trapper item's key".into());
                    None
                })
            }
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

    /// A POST of plain text, retried as `send`.
    fn send_text(&self, what: &str, url: &str, body: &[u8]) {
        let agent = self.agent();
        let shown = redact(url);
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << (attempt - 1).min(4)));
            }
            match agent.post(url).header("Content-Type", "text/plain; charset=utf-8").send(body) {
                Ok(r) if r.status().is_success() => return,
                Ok(r) if r.status().is_client_error() => {
                    return log::error!("{what} {shown} failed: HTTP {} (not retried)", r.status());
                }
                Ok(r) => {
                    log::warn!("{what} {shown}: HTTP {} (attempt {} of {})", r.status(), attempt + 1, self.retries + 1)
                }
                Err(e) => log::warn!("{what} {shown}: {e} (attempt {} of {})", attempt + 1, self.retries + 1),
            }
        }
        log::error!("{what} {shown} failed after {} attempts; the backup's status is unchanged", self.retries + 1);
    }

    /// zabbix_sender's protocol: `ZBXD\x01`, the JSON's length (u64 LE), then
    /// `{"request":"sender data","data":[{"host","key","value"}…]}`; the answer must say
    /// `"response":"success"` with `failed: 0`.
    fn zabbix(&self, server: &str, host: &str, items: &[(String, String)]) {
        let data: Vec<Value> =
            items.iter().map(|(k, v)| serde_json::json!({"host": host, "key": k, "value": v})).collect();
        let payload = serde_json::json!({"request": "sender data", "data": data}).to_string();
        let mut frame = b"ZBXD\x01".to_vec();
        frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        frame.extend_from_slice(payload.as_bytes());
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << (attempt - 1).min(4)));
            }
            match zabbix_exchange(server, &frame, self.timeout) {
                Ok(answer) if answer.contains("\"success\"") && answer.contains("failed: 0") => {
                    return log::debug!("zabbix {server}: {answer}");
                }
                Ok(answer) => {
                    return log::error!(
                        "zabbix {server} refused the values for host {host}: {answer} (check the host name and the trapper items)"
                    );
                }
                Err(e) => log::warn!("zabbix {server}: {e} (attempt {} of {})", attempt + 1, self.retries + 1),
            }
        }
        log::error!("zabbix {server} failed after {} attempts; the backup's status is unchanged", self.retries + 1);
    }

    pub fn started(&self) {
        if let Some(u) = &self.ping_start {
            self.send("start ping", u, None);
        }
    }

    /// After the run: pings (POSTing the exit status and the tail of the log, as healthchecks
    /// shows them), webhook, Zabbix, command. `report` is the run report's JSON and path.
    pub fn finished(&self, ok: bool, run_id: &str, report_json: &str, report_path: Option<&Path>, ctx: &Finish<'_>) {
        let ping = if ok { &self.ping_success } else { &self.ping_failure };
        if let Some(u) = ping {
            let mut body = format!("exit status {}\nrun {run_id}\n", if ok { 0 } else { 1 });
            if let Some(tail) = ctx.log_file.and_then(log_tail) {
                body.push('\n');
                body.push_str(&tail);
            }
            self.send_text(if ok { "success ping" } else { "failure ping" }, u, body.as_bytes());
        }
        if let Some(server) = &self.zabbix_server {
            let host = self.zabbix_host.clone().unwrap_or_else(|| ctx.hostname.to_owned());
            let key = self.zabbix_key.clone().unwrap_or_else(|| "nc-backup.status".into());
            let summary = format!(
                "{} run {run_id}{}",
                if ok { "ok" } else { "FAILED" },
                ctx.summary.map(|m| format!(": {m}")).unwrap_or_default()
            );
            let items =
                [(key.clone(), if ok { "0".to_owned() } else { "1".to_owned() }), (format!("{key}.message"), summary)];
            self.zabbix(server, &host, &items);
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

/// What `finished` tells beyond the report: this host's name (Zabbix), the log to quote,
/// a one-line summary of what failed.
#[derive(Debug, Default)]
pub struct Finish<'a> {
    pub hostname: &'a str,
    pub log_file: Option<&'a Path>,
    pub summary: Option<&'a str>,
}

/// The last 100 lines (at most 10 KiB) of the log.
fn log_tail(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(10 * 1024))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(100).max(usize::from(len > 10 * 1024));
    Some(lines[skip.min(lines.len())..].join("\n"))
}

fn zabbix_exchange(server: &str, frame: &[u8], timeout: Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr =
        server.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other(format!("{server}: no address")))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(frame)?;
    let mut head = [0u8; 13];
    s.read_exact(&mut head)?;
    if &head[..4] != b"ZBXD" {
        return Err(std::io::Error::other("not a Zabbix answer"));
    }
    let n = u64::from_le_bytes(head[5..13].try_into().unwrap_or([0; 8]));
    if n > 1 << 20 {
        return Err(std::io::Error::other("a Zabbix answer over 1 MiB"));
    }
    let mut body = vec![0u8; usize::try_from(n).unwrap_or(0)];
    s.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

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
