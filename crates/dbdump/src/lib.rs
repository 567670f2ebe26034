//! ncb-dbdump: what the database stages share.
//!
//! - [`Transport`]: where the dump program runs — here, on a host over OpenSSH, or in a
//!   container (`docker`/`podman exec -i`). Secrets reach the program on its stdin, never in
//!   argv or environment variables another user could read, and are never stored remotely.
//! - [`dump_to_file`]: a child's stdout streamed through the parallel compressor into an
//!   atomic, hashed output; a child that exits non-zero leaves no file.
//! - [`SecretFile`]: a 0600 file in WORK_FOLDER removed when dropped (local option files).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ncb_archive::{Compressor, Settings};
use ncb_core::atomic::AtomicFile;
use ncb_core::hash::HashWriter;
use ncb_core::params::{Kind, ParamSpec, Params, shell_quote};
use ncb_core::{Artifact, Error, IoContext, Result};

/// The transport parameters both database stages accept.
pub const SSH_HOST: ParamSpec =
    ParamSpec::new("SSH_HOST", Kind::Str, "Run the dump on this host over OpenSSH (BatchMode)");
pub const SSH_USER: ParamSpec = ParamSpec::new("SSH_USER", Kind::Str, "SSH user (default: ssh's)");
pub const SSH_PORT: ParamSpec = ParamSpec::new("SSH_PORT", Kind::Int, "SSH port (default: ssh's)");
pub const SSH_KEY: ParamSpec = ParamSpec::new("SSH_KEY", Kind::Path, "SSH private key (IdentitiesOnly)").must_exist();
pub const SSH_KNOWN_HOSTS: ParamSpec = ParamSpec::new(
    "SSH_KNOWN_HOSTS",
    Kind::Path,
    "known_hosts file to use; a new host's key is then recorded on first contact (accept-new)",
);
pub const DOCKER_CONTAINER: ParamSpec =
    ParamSpec::new("DOCKER_CONTAINER", Kind::Str, "Run the dump inside this container (exec -i)");
pub const CONTAINER_CLI: ParamSpec =
    ParamSpec::new("CONTAINER_CLI", Kind::Choice(&["docker", "podman"]), "docker (default) or podman");

/// Where the dump program runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Local,
    Ssh { host: String, user: Option<String>, port: Option<u64>, key: Option<PathBuf>, known_hosts: Option<PathBuf> },
    Container { cli: String, name: String },
}

impl Transport {
    pub fn from_params(p: &Params) -> Result<Self> {
        match (p.str("SSH_HOST"), p.str("DOCKER_CONTAINER")) {
            (Some(_), Some(_)) => Err(Error::usage("SSH_HOST and DOCKER_CONTAINER cannot be combined")),
            (Some(host), None) => Ok(Transport::Ssh {
                host: host.to_owned(),
                user: p.str("SSH_USER").map(str::to_owned),
                port: p.u64("SSH_PORT")?,
                key: p.path("SSH_KEY"),
                known_hosts: p.path("SSH_KNOWN_HOSTS"),
            }),
            (None, Some(name)) => Ok(Transport::Container {
                cli: p.choice("CONTAINER_CLI", &["docker", "podman"], "docker")?,
                name: name.to_owned(),
            }),
            (None, None) => Ok(Transport::Local),
        }
    }

    pub fn is_local(&self) -> bool {
        *self == Transport::Local
    }

    /// Where a failure happened, for messages: "127.0.0.1 (ssh)", "container db1".
    pub fn place(&self) -> String {
        match self {
            Transport::Local => "this host".into(),
            Transport::Ssh { host, .. } => format!("{host} (ssh)"),
            Transport::Container { name, cli } => format!("container {name} ({cli})"),
        }
    }

    /// A command that runs `script` (a POSIX shell command line, arguments already quoted)
    /// or, locally, `program args` directly.
    pub fn command(&self, program: &str, args: &[String], prelude: &str) -> Command {
        match self {
            Transport::Local => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Transport::Ssh { host, user, port, key, known_hosts } => {
                let mut c = Command::new("ssh");
                c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=30"]);
                if let Some(p) = port {
                    c.arg("-p").arg(p.to_string());
                }
                if let Some(k) = key {
                    c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
                }
                if let Some(kh) = known_hosts {
                    c.arg("-o").arg(format!("UserKnownHostsFile={}", kh.display()));
                    c.args(["-o", "StrictHostKeyChecking=accept-new"]);
                }
                if let Some(u) = user {
                    c.arg("-l").arg(u);
                }
                c.arg("--").arg(host).arg(remote_line(program, args, prelude));
                c
            }
            Transport::Container { cli, name } => {
                let mut c = Command::new(cli);
                c.args(["exec", "-i", name, "sh", "-c"]).arg(remote_line(program, args, prelude));
                c
            }
        }
    }
}

/// `prelude exec 'program' 'arg'…`: one program, no pipe, so its exit status is the
/// transport's.
fn remote_line(program: &str, args: &[String], prelude: &str) -> String {
    let mut s = String::from(prelude);
    s.push_str("exec ");
    s.push_str(&shell_quote(program));
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

/// DESTINATION (default WORK_FOLDER) / PREFIX_FOLDER, created 0700.
pub fn dump_folder(p: &Params, ctx: &ncb_core::StageCtx) -> Result<PathBuf> {
    let dest = p.path("DESTINATION").unwrap_or_else(|| ctx.general.work_dir());
    let dest = match p.str("PREFIX_FOLDER") {
        Some(sub) => dest.join(sub),
        None => dest,
    };
    ncb_core::atomic::ensure_dir(&dest, 0o700)?;
    Ok(dest)
}

/// A 0600 file holding a secret, removed when dropped (also on errors and panics), and held
/// locked while it lives: a file nobody holds is one a killed stage left, which the next run
/// (or stage) removes.
#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
    _held: std::fs::File,
}

impl SecretFile {
    pub fn create(dir: &Path, stem: &str, content: &[u8]) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        ncb_core::atomic::ensure_dir(dir, 0o700)?;
        for stale in ncb_core::sys::sweep_secrets(dir) {
            log::info!("removed {stale}, left by a killed stage");
        }
        let mut rnd = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut rnd))
            .at("cannot read", Path::new("/dev/urandom"))?;
        let name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        // Named for its process: if we are killed, the next run (or stage) removes it.
        let path = dir.join(ncb_core::sys::secret_name(&format!("{stem}-{name}")));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at("cannot create credentials file", &path)?;
        f.lock().at("cannot lock", &path)?;
        f.write_all(content).at("cannot write", &path)?;
        Ok(SecretFile { path, _held: f })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A password that would break out of an option file, a pgpass line or a `read` line.
pub fn check_password(pw: &str) -> Result<()> {
    if pw.contains(['\n', '\r', '\0']) {
        return Err(Error::usage("the password contains a line break or NUL, which cannot be passed safely"));
    }
    Ok(())
}

/// A file name for a database: the name itself when it is safe in a file name, else its safe
/// form plus a short hash, so that two databases never share a dump file.
pub fn file_stem(db: &str) -> String {
    let safe = ncb_core::context::safe_name(db);
    if safe == db {
        return safe;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in db.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{safe}-{:08x}", h >> 32)
}

/// Refuses a credentials file that group or others may access.
pub use ncb_core::sys::check_private;

/// Feeds `stdin` to the child on a thread (so a large payload cannot deadlock), then closes it.
fn feed(child: &mut Child, stdin: Vec<u8>) -> Option<std::thread::JoinHandle<()>> {
    let mut pipe = child.stdin.take()?;
    Some(std::thread::spawn(move || {
        let _ = pipe.write_all(&stdin);
    }))
}

/// Collects the child's stderr (the last 64 KiB) on a thread.
fn collect_stderr(child: &mut Child) -> Option<std::thread::JoinHandle<String>> {
    let mut err = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = err.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 128 << 10 {
                buf.drain(..buf.len() - (64 << 10));
            }
        }
        String::from_utf8_lossy(&buf).trim().to_owned()
    }))
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Child> {
    // Children never inherit the runner's secret parameters.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with(ncb_core::context::env::PARAM_PREFIX) {
            cmd.env_remove(k);
        }
    }
    // A killed stage takes its dump client with it.
    ncb_core::sys::dies_with_parent(cmd, ncb_core::sys::SIGTERM);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::runtime(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))
}

fn failure(what: &str, status: std::process::ExitStatus, stderr: &str) -> Error {
    let how = match status.code() {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_owned(),
    };
    let tail: Vec<&str> = stderr.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
    Error::runtime(format!("{what} failed ({how}): {}", tail.join(" | ")))
}

/// Runs `cmd` with `stdin`, and returns its stdout (small outputs: listings, queries).
pub fn capture(mut cmd: Command, stdin: Vec<u8>, what: &str) -> Result<String> {
    let mut child = spawn(&mut cmd, what)?;
    let feeder = feed(&mut child, stdin);
    let errs = collect_stderr(&mut child);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let mut raw = Vec::new();
        let read = o.read_to_end(&mut raw);
        out = String::from_utf8_lossy(&raw).into_owned();
        if let Err(e) = read {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io(format!("{what}: cannot read output"), e));
        }
    }
    let status = child.wait().map_err(|e| Error::io(what, e))?;
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stderr = errs.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(failure(what, status, &stderr));
    }
    Ok(out)
}

/// Streams `cmd`'s stdout, compressed, into `dest` (atomically). The file appears only when
/// the child exited 0 and every byte is durable; otherwise the error names `what` and quotes
/// the child's stderr.
pub fn dump_to_file(
    mut cmd: Command,
    stdin: Vec<u8>,
    settings: Settings,
    dest: &Path,
    what: &str,
) -> Result<(Artifact, u64)> {
    let mut child = spawn(&mut cmd, what)?;
    let feeder = feed(&mut child, stdin);
    let errs = collect_stderr(&mut child);
    let out = AtomicFile::create(dest)?;
    let mut comp = Compressor::new(settings, HashWriter::new(out)).at("cannot start compressor for", dest)?;
    let mut raw = 0u64;
    // The dump's size is not known before it ends: a counter and a rate, no ETA.
    let bar = ncb_core::progress::Progress::new(
        format!("dump {}", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
        0,
    );
    let copied = match child.stdout.take() {
        Some(mut o) => copy_counting(&mut o, &mut comp, &mut raw, &bar),
        None => Ok(()),
    };
    bar.finish();
    if copied.is_err() {
        // Our side failed (disk full...): stop the child, whose SIGPIPE would hide the cause.
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| Error::io(what, e))?;
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stderr = errs.and_then(|h| h.join().ok()).unwrap_or_default();
    copied.map_err(|e| Error::io(format!("{what}: cannot write {}", dest.display()), e))?;
    if !status.success() {
        return Err(failure(what, status, &stderr));
    }
    if !stderr.is_empty() {
        for l in stderr.lines().filter(|l| !l.trim().is_empty()).take(20) {
            log::info!("{what}: {l}");
        }
    }
    let sink = comp.finish().map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    let (file, bytes, sha256) = sink.finish();
    let path = file.commit_new()?;
    Ok((Artifact { path, bytes, sha256 }, raw))
}

fn copy_counting(
    r: &mut impl Read,
    w: &mut impl Write,
    n: &mut u64,
    bar: &ncb_core::progress::Progress,
) -> io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        *n += k as u64;
        bar.add(k as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_lines_are_quoted() {
        assert_eq!(remote_line("mysqldump", &["--x=a b".into(), "db".into()], ""), "exec mysqldump '--x=a b' db");
    }

    #[test]
    fn a_failing_child_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("x.sql.gz");
        let mut c = Command::new("sh");
        c.args(["-c", "echo partial; echo boom >&2; exit 3"]);
        let s = Settings { format: ncb_archive::Format::Gzip, level: 6, threads: 2 };
        let e = dump_to_file(c, Vec::new(), s, &dest, "dump of db").unwrap_err().to_string();
        assert!(e.contains("dump of db failed (exit code 3): boom"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn stdin_reaches_the_child() {
        let mut c = Command::new("sh");
        c.args(["-c", "read -r x; echo got:$x"]);
        assert_eq!(capture(c, b"secret\n".to_vec(), "t").unwrap().trim(), "got:secret");
    }
}
