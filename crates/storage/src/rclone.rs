//! Every cloud rclone knows (OneDrive, Google Drive, Azure Blob, GCS, SFTP, …) through the
//! `rclone` program: RCLONE_REMOTE is an rclone path such as `onedrive:backups`, a connection
//! string (`:sftp,host=…:/backups`) or a local folder. Uploads are checked by reading the
//! stored file's SHA-256 back (rclone hashes remotely when the backend can, else downloads),
//! downloads by hashing what arrives.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ncb_core::hash::{HashWriter, sha256_file};
use ncb_core::{Error, Result};

use crate::backend::{Backend, DELETING_MARK, FileInfo, RUN_MANIFEST, deleting_mark_text};

#[derive(Debug, Clone)]
pub struct Rclone {
    remote: String,
    config: Option<std::path::PathBuf>,
    /// BANDWIDTH_LIMIT in bytes a second, given to rclone as --bwlimit.
    bwlimit: Option<u64>,
}

impl Rclone {
    pub fn new(remote: &str, config: Option<std::path::PathBuf>) -> Self {
        Rclone { remote: remote.trim_end_matches('/').to_owned(), config, bwlimit: None }
    }

    /// Uploads paced by rclone's own --bwlimit.
    pub fn with_bwlimit(mut self, rate: Option<u64>) -> Self {
        self.bwlimit = rate;
        self
    }

    fn path(&self, key: &str) -> String {
        if self.remote.ends_with(':') { format!("{}{key}", self.remote) } else { format!("{}/{key}", self.remote) }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("rclone");
        if let Some(conf) = &self.config {
            c.arg("--config").arg(conf);
        }
        c.args(["--retries", "3", "--low-level-retries", "10", "--contimeout", "15s"]);
        if let Some(b) = self.bwlimit {
            c.arg("--bwlimit").arg(format!("{}k", (b / 1024).max(1)));
        }
        c.args(args);
        // A killed storage takes its rclone with it: no upload goes on unattended.
        ncb_core::sys::dies_with_parent(&mut c, ncb_core::sys::SIGTERM);
        c
    }

    /// Runs rclone; Ok(None) when it says the file or folder does not exist.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let mut c = self.cmd(args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| Error::runtime(format!("cannot run rclone: {e} (install Debian's rclone package)")))?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).map_err(|e| Error::io("rclone", e))?;
        }
        let out = child.wait_with_output().map_err(|e| Error::io("rclone", e))?;
        if out.status.success() {
            return Ok(Some(out.stdout));
        }
        let err = String::from_utf8_lossy(&out.stderr).replace(&self.remote, &masked(&self.remote));
        // rclone's exit codes 3 and 4: directory or file not found.
        if out.status.code() == Some(3) || out.status.code() == Some(4) {
            return Ok(None);
        }
        let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
        Err(Error::runtime(format!(
            "rclone {} failed: {}",
            args.first().unwrap_or(&""),
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )))
    }

    fn list(&self, key: &str, recursive: bool) -> Result<Vec<serde_json::Value>> {
        let p = self.path(key);
        let ps = masked(&p);
        let mut args = vec!["lsjson", p.as_str()];
        if recursive {
            args.push("-R");
        }
        match self.run(&args, None)? {
            None => Ok(Vec::new()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| Error::runtime(format!("rclone lsjson {ps}: {e}"))),
        }
    }
}

impl Backend for Rclone {
    fn describe(&self) -> String {
        format!("rclone {}", masked(&self.remote))
    }

    fn stat(&self, key: &str) -> Result<Option<(u64, String)>> {
        let p = self.path(key);
        let ps = masked(&p);
        let Some(out) = self.run(&["lsjson", "--hash", "--hash-type", "sha256", &p], None)? else { return Ok(None) };
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&out).map_err(|e| Error::runtime(format!("rclone lsjson {ps}: {e}")))?;
        let Some(i) = items.first() else { return Ok(None) };
        let size = i["Size"].as_u64().unwrap_or(0);
        match i["Hashes"]["sha256"].as_str().filter(|h| !h.is_empty()) {
            Some(sha) => Ok(Some((size, sha.to_owned()))),
            // The backend has no SHA-256 (sftp with rclone 1.60, …): read the file back.
            None => self.hash_remote(key).map(Some),
        }
    }

    fn put(&self, local: &Path, key: &str, info: &FileInfo) -> Result<String> {
        let p = self.path(key);
        let ps = masked(&p);
        // The upload is checked against the local file's SHA-256: hashed first when not known.
        let sha256 = if info.sha256.is_empty() { sha256_file(local)?.1 } else { info.sha256.clone() };
        let src = local.display().to_string();
        self.run(&["copyto", &src, &p], None)?
            .ok_or_else(|| Error::runtime(format!("rclone copyto {ps}: not found")))?;
        match self.stat(key)? {
            Some((size, sha)) if size == info.size && sha == sha256 => Ok(sha256),
            Some((size, sha)) => Err(Error::runtime(format!("{ps}: stored copy differs ({size} bytes, sha256 {sha})"))),
            None => Err(Error::runtime(format!("{ps}: missing right after the upload"))),
        }
    }

    fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(key);
        let ps = masked(&p);
        self.run(&["rcat", &p], Some(bytes))?
            .map(|_| ())
            .ok_or_else(|| Error::runtime(format!("rclone rcat {ps}: not found")))
    }

    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(&["cat", &self.path(key)], None)
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.path(key);
        let mut child = self
            .cmd(&["cat", &p])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::runtime(format!("cannot run rclone: {e}")))?;
        let out = child.stdout.take().ok_or_else(|| Error::runtime("rclone: no output pipe"))?;
        // rclone's messages are read as they come (a full pipe would stall it).
        let errs = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        Ok(Box::new(CatReader { child, out, errs, raw: self.remote.clone(), what: masked(&p) }))
    }

    fn sizes(&self, prefix: &str) -> Result<std::collections::HashMap<String, u64>> {
        Ok(self
            .list(prefix, true)?
            .iter()
            .filter(|i| !i["IsDir"].as_bool().unwrap_or(false))
            .filter_map(|i| Some((format!("{prefix}{}", i["Path"].as_str()?), i["Size"].as_u64()?)))
            .collect())
    }

    fn runs(&self, prefix: &str) -> Result<Vec<String>> {
        let mut runs: Vec<String> = self
            .list(prefix.trim_end_matches('/'), false)?
            .iter()
            .filter(|i| i["IsDir"].as_bool().unwrap_or(false))
            .filter_map(|i| i["Name"].as_str().map(str::to_owned))
            .filter(|n| crate::retention::run_time(n).is_some())
            .collect();
        runs.sort();
        Ok(runs)
    }

    fn delete_run(&self, prefix: &str, run_id: &str) -> Result<()> {
        let run = format!("{prefix}{run_id}");
        self.put_bytes(&format!("{run}/{DELETING_MARK}"), &deleting_mark_text())?;
        // The manifest first (the run is then visibly incomplete), the mark last.
        self.run(&["deletefile", &self.path(&format!("{run}/{RUN_MANIFEST}"))], None)?;
        self.run(&["delete", "--exclude", &format!("/{DELETING_MARK}"), &self.path(&run)], None)?;
        self.run(&["purge", &self.path(&run)], None)?;
        Ok(())
    }
}

/// A connection string as messages show it: values of secret-looking options (`pass=`,
/// `token=`, `key=`…) masked.
fn masked(remote: &str) -> String {
    remote
        .split(',')
        .map(|opt| match opt.split_once('=') {
            Some((k, v)) if ncb_core::params::looks_secret(k) || k.contains("pass") || k.contains("token") => {
                let tail = v.find(':').map(|i| &v[i..]).unwrap_or("");
                format!("{k}=****{tail}")
            }
            _ => opt.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Rclone {
    /// Size and SHA-256 of a stored file, streamed through `rclone cat` (memory stays flat).
    fn hash_remote(&self, key: &str) -> Result<(u64, String)> {
        let p = self.path(key);
        let ps = masked(&p);
        let mut child = self
            .cmd(&["cat", &p])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::runtime(format!("cannot run rclone: {e}")))?;
        let mut h = HashWriter::new(std::io::sink());
        if let Some(mut o) = child.stdout.take() {
            std::io::copy(&mut o, &mut h).map_err(|e| Error::io(format!("reading {ps} back"), e))?;
        }
        let status = child.wait().map_err(|e| Error::io("rclone", e))?;
        if !status.success() {
            return Err(Error::runtime(format!("rclone cat {ps} failed")));
        }
        let (_, n, sha) = h.finish();
        Ok((n, sha))
    }
}

/// `rclone cat`'s output; at its end, rclone's own exit status decides.
struct CatReader {
    child: std::process::Child,
    out: std::process::ChildStdout,
    errs: Option<std::thread::JoinHandle<String>>,
    /// The remote as given, masked wherever rclone's messages quote it.
    raw: String,
    what: String,
}

impl Read for CatReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let err = self.errs.take().and_then(|h| h.join().ok()).unwrap_or_default();
            let status = self.child.wait()?;
            if !status.success() {
                let err = err.trim().replace(&self.raw, &masked(&self.raw));
                return Err(std::io::Error::other(format!("rclone cat {} failed: {err}", self.what)));
            }
        }
        Ok(n)
    }
}

impl Drop for CatReader {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_in_connection_strings_are_masked() {
        assert_eq!(super::masked(":sftp,host=h,user=u,pass=abc123:/srv"), ":sftp,host=h,user=u,pass=****:/srv");
        assert_eq!(super::masked("onedrive:backups"), "onedrive:backups");
    }
}
