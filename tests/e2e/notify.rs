//! NOTIFY: pings, webhook and commands, received by an HTTP listener on 127.0.0.1.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use nc_backup_e2e::{Sandbox, bin, cmd, fixture, run};
use serde_json::json;

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server: records every request, answers with the queued statuses
/// (then 200).
struct Listener {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Listener {
    fn start(statuses: &[u16]) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(statuses.iter().copied().collect::<VecDeque<u16>>()));
        let (s, q) = (Arc::clone(&seen), Arc::clone(&queue));
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                s.lock().unwrap().push(Request { method, path, body });
                let code = q.lock().unwrap().pop_front().unwrap_or(200);
                let _ = write!(stream, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Listener { port, seen }
    }
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn notify_conf(sb: &Sandbox, l: &Listener, fail: bool, extra: serde_json::Value) -> std::path::PathBuf {
    let mut notify = json!({
        "PING_START_URL": l.url("/start"), "PING_SUCCESS_URL": l.url("/ok"), "PING_FAILURE_URL": l.url("/fail"),
        "WEBHOOK_URL": l.url("/hook"),
        "ON_SUCCESS": format!("echo \"$NCB_RUN_STATUS $NCB_REPORT\" > {}", sb.join("on-success").display()),
        "ON_FAILURE": format!("echo \"$NCB_RUN_STATUS $NCB_REPORT\" > {}", sb.join("on-failure").display()),
        "RETRIES": 2, "TIMEOUT": "5s"
    });
    notify.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let section = json!({"ACTION": "execute", "NAME": "tests", "EXECUTABLE": fixture("record.sh")});
    if fail {
        sb.write("rec/JOB.fail", b"");
    }
    std::fs::create_dir_all(sb.join("rec")).unwrap();
    sb.config(&[("JOB", section), ("NOTIFY", notify)])
}

#[test]
fn a_good_run_pings_start_and_success_posts_the_report_and_runs_on_success() {
    let sb = Sandbox::new();
    let l = Listener::start(&[]);
    let conf = notify_conf(&sb, &l, false, json!({}));
    let out =
        run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).arg("--json").env("RECORD", sb.join("rec")))
            .expect(0);
    let run_id = out.json()["run_id"].as_str().unwrap().to_owned();
    let reqs = l.requests();
    let paths: Vec<(&str, &str)> = reqs.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(paths, [("GET", "/start"), ("GET", "/ok"), ("POST", "/hook")]);
    let posted: serde_json::Value = serde_json::from_slice(&reqs[2].body).unwrap();
    assert_eq!(posted["run_id"], run_id.as_str());
    assert_eq!(posted["status"], "ok");
    let line = std::fs::read_to_string(sb.join("on-success")).unwrap();
    assert_eq!(line.trim(), format!("ok {}", sb.join(format!("log/run-{run_id}.json")).display()));
    assert!(!sb.join("on-failure").exists());
}

#[test]
fn a_failed_run_pings_failure_and_runs_on_failure() {
    let sb = Sandbox::new();
    let l = Listener::start(&[]);
    let conf = notify_conf(&sb, &l, true, json!({}));
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).env("RECORD", sb.join("rec"))).expect(1);
    let paths: Vec<String> = l.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/start", "/fail", "/hook"]);
    assert!(std::fs::read_to_string(sb.join("on-failure")).unwrap().starts_with("failed "));
}

#[test]
fn notification_failures_are_retried_then_logged_and_never_change_the_status() {
    let sb = Sandbox::new();
    // The webhook answers 500 twice, then 200: three attempts, within RETRIES 2.
    let l = Listener::start(&[200, 200, 500, 500]);
    let conf = notify_conf(&sb, &l, false, json!({}));
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).env("RECORD", sb.join("rec"))).expect(0);
    assert_eq!(l.requests().iter().filter(|r| r.path == "/hook").count(), 3);
    // Nothing listens: the run is still a success, and the log says what failed.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sb = Sandbox::new();
    let conf =
        notify_conf(&sb, &l, false, json!({"WEBHOOK_URL": format!("http://127.0.0.1:{closed}/hook"), "RETRIES": 1}));
    let out = run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).env("RECORD", sb.join("rec"))).expect(0);
    assert!(out.stderr.contains("webhook") && out.stderr.contains("failed after 2 attempts"), "{}", out.stderr);
    assert!(!out.stderr.contains("/hook"), "the URL path (often a token) reached the log: {}", out.stderr);
}
