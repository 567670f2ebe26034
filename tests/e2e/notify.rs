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
    assert_eq!(paths, [("GET", "/start"), ("POST", "/ok"), ("POST", "/hook")]);
    // The success ping carries the exit status and the tail of the log, as healthchecks shows them.
    let ping = String::from_utf8_lossy(&reqs[1].body).into_owned();
    assert!(ping.starts_with(&format!("exit status 0\nrun {run_id}\n")), "{ping}");
    assert!(ping.contains(&run_id) && ping.lines().count() > 3, "no log tail in the ping: {ping}");
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
    let reqs = l.requests();
    let paths: Vec<String> = reqs.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/start", "/fail", "/hook"]);
    let ping = String::from_utf8_lossy(&reqs[1].body).into_owned();
    assert!(ping.starts_with("exit status 1\n") && ping.contains("JOB"), "{ping}");
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

/// A Zabbix trapper (zabbix_sender's protocol) on 127.0.0.1: it receives the run's status and
/// message items, and answers as a Zabbix server does.
#[test]
fn zabbix_trapper_receives_the_status_and_the_message() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let g = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { return };
            let mut head = [0u8; 13];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head[..5], b"ZBXD\x01");
            let n = u64::from_le_bytes(head[5..13].try_into().unwrap()) as usize;
            let mut body = vec![0u8; n];
            s.read_exact(&mut body).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let count = v["data"].as_array().map_or(0, Vec::len);
            g.lock().unwrap().push(v);
            let answer = format!(
                r#"{{"response":"success","info":"processed: {count}; failed: 0; total: {count}; seconds spent: 0.000055"}}"#
            );
            let mut frame = b"ZBXD\x01".to_vec();
            frame.extend_from_slice(&(answer.len() as u64).to_le_bytes());
            frame.extend_from_slice(answer.as_bytes());
            s.write_all(&frame).unwrap();
        }
    });
    for fail in [false, true] {
        let sb = Sandbox::new();
        let web = Listener::start(&[]);
        let conf = notify_conf(
            &sb,
            &web,
            fail,
            json!({"ZABBIX_SERVER": format!("127.0.0.1:{port}"), "ZABBIX_KEY": "backup.nightly"}),
        );
        run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).env("RECORD", sb.join("rec"))).expect(if fail {
            1
        } else {
            0
        });
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    for (v, (status, word)) in got.iter().zip([("0", "ok run "), ("1", "FAILED run ")]) {
        assert_eq!(v["request"], "sender data");
        let data = v["data"].as_array().unwrap();
        assert_eq!(
            (data[0]["host"].as_str(), data[0]["key"].as_str(), data[0]["value"].as_str()),
            (Some("testhost"), Some("backup.nightly"), Some(status))
        );
        assert_eq!(data[1]["key"], "backup.nightly.message");
        assert!(data[1]["value"].as_str().unwrap().starts_with(word), "{v}");
    }
    assert!(got[1]["data"][1]["value"].as_str().unwrap().contains("JOB failed"), "{got:?}");
}
