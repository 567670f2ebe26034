//! Support for the end-to-end tests: the built binaries, a temporary sandbox per test, and
//! commands run with a cleared environment so that the host cannot leak in.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod faultproxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// target/debug (or the profile folder) holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let dir = if deps.ends_with("deps") { deps.parent().unwrap() } else { deps };
    dir.to_path_buf()
}

/// A built binary of the workspace; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.is_file(), "{} not built: run `cargo build --workspace` first", p.display());
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// A command with a minimal, known environment.
pub fn cmd(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null());
    c
}

/// What a finished command gave.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn from(o: Output) -> Self {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn run(c: &mut Command) -> Out {
    Out::from(c.output().unwrap())
}

/// A temporary folder with `work/`, `log/` and helpers to write configs into it.
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("ncb-test-").tempdir().unwrap();
        Sandbox { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }
    /// A GENERAL section pointing into the sandbox.
    pub fn general(&self) -> serde_json::Value {
        serde_json::json!({
            "HOSTNAME": "testhost",
            "WORK_FOLDER": self.join("work"),
            "HOME_FOLDER": self.path(),
            "LOG_FOLDER": self.join("log"),
        })
    }
    /// Writes `text` as a config file and returns its path.
    pub fn config_text(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Writes a config of GENERAL plus `sections` (in the given order).
    pub fn config(&self, sections: &[(&str, serde_json::Value)]) -> PathBuf {
        let mut text = format!("{{\n\"GENERAL\": {}", self.general());
        for (name, body) in sections {
            text.push_str(&format!(",\n{}: {body}", serde_json::Value::from(*name)));
        }
        text.push_str("\n}\n");
        self.config_text("conf.json", &text)
    }
    pub fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// `n` incompressible bytes (xorshift), the same for the same seed.
pub fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

/// Waits until `cond` holds, up to `limit`; false when it never did.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// True when a process with this pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// The test servers started by scripts/servers.sh (MariaDB, PostgreSQL, sshd, a podman
/// container). A test that needs them fails when they are not running: it never skips.
#[derive(Debug, Clone)]
pub struct Servers {
    vars: std::collections::HashMap<String, String>,
}

impl Servers {
    pub fn get() -> Self {
        let dir = std::env::var("NCB_SERVERS_DIR").unwrap_or_else(|_| "/var/tmp/ncb-servers".into());
        let text = std::fs::read_to_string(Path::new(&dir).join("env")).unwrap_or_else(|e| {
            panic!("test servers are not running ({dir}/env: {e}): start them with scripts/servers.sh start, or run scripts/test.sh")
        });
        let vars = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Servers { vars }
    }
    pub fn var(&self, k: &str) -> String {
        self.vars.get(k).cloned().unwrap_or_else(|| panic!("{k} missing from the servers' env file"))
    }
}

/// A name unique to this test process and call, for databases and containers.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), nanos % 100_000)
}

/// Sends a signal (`TERM`, `KILL`, `STOP`…) to a process with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The aws CLI against the test Garage, as an independent reader of what we stored.
pub fn aws(s: &Servers, args: &[&str]) -> String {
    let (key, secret) = (s.var("NCB_S3_ACCESS_KEY"), s.var("NCB_S3_SECRET_KEY"));
    aws_at(&s.var("NCB_S3_ENDPOINT"), &s.var("NCB_S3_REGION"), (&key, &secret), args)
}

/// The aws CLI against the test moto server (which keeps storage classes and thaws).
pub fn moto_aws(endpoint: &str, args: &[&str]) -> String {
    aws_at(endpoint, "us-east-1", ("moto", "moto"), args)
}

/// The aws CLI against `endpoint` with these credentials; its stdout, or a failed test.
pub fn aws_at(endpoint: &str, region: &str, (key, secret): (&str, &str), args: &[&str]) -> String {
    let out = Command::new("aws")
        .args(["--endpoint-url", endpoint, "--region", region])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
