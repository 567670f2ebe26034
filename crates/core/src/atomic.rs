//! Outputs that appear whole or not at all: write under a hidden temporary name in the same
//! folder, fsync, rename, fsync the folder. Dropped before `commit`, the temporary is removed;
//! a process killed mid-write leaves only a `.NAME.partial-PID` file, which no stage takes for
//! a finished output (see [`is_partial`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Marker in the name of every unfinished output.
pub const PARTIAL_MARK: &str = ".partial-";

/// True for names of unfinished outputs (ours, or a killed run's).
pub fn is_partial(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.starts_with('.') && n.contains(PARTIAL_MARK)
}

/// Writeback window: data is pushed to disk while the output is still being written, so the
/// final fsync waits for little, and at most two windows of an output sit dirty in memory.
const WINDOW: u64 = 8 << 20;

#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    written: u64,
    issued: u64,
}

impl AtomicFile {
    /// A new output that becomes `dest` on commit; mode 0600 until then and after.
    pub fn create(dest: &Path) -> Result<Self> {
        Self::create_mode(dest, 0o600)
    }

    pub fn create_mode(dest: &Path, mode: u32) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::runtime(format!("output path {} has no file name", dest.display())))?;
        let dir = parent_dir(dest);
        // A fresh name, created exclusively and never through a symlink: a file or link
        // planted in a shared folder is never opened, truncated or followed.
        let mut attempt = 0;
        loop {
            let tmp = dir.join(format!(
                ".{}{}{}-{}",
                name.to_string_lossy(),
                PARTIAL_MARK,
                std::process::id(),
                unique_suffix()
            ));
            match OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(&tmp) {
                Ok(file) => {
                    return Ok(AtomicFile { dest: dest.to_path_buf(), tmp, file: Some(file), written: 0, issued: 0 });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
                Err(e) => return Err(Error::path("cannot create output in", dir, e)),
            }
        }
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// Metadata of the temporary file (its inode is the output's).
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        match &self.file {
            Some(f) => f.metadata(),
            None => Err(io::Error::other("AtomicFile already committed")),
        }
    }

    /// Makes the output durable and visible under its final name, replacing a file there.
    pub fn commit(self) -> Result<PathBuf> {
        self.finish(true)
    }

    /// As [`commit`](Self::commit), but fails (and keeps nothing) when `dest` already exists:
    /// for outputs that must never overwrite an earlier backup.
    pub fn commit_new(self) -> Result<PathBuf> {
        self.finish(false)
    }

    fn finish(mut self, replace: bool) -> Result<PathBuf> {
        let Some(mut file) = self.file.take() else {
            return Err(Error::runtime("output committed twice"));
        };
        let tmp = std::mem::take(&mut self.tmp);
        let dest = std::mem::take(&mut self.dest);
        let durable = file.flush().and_then(|()| file.sync_all()).at("cannot write", &tmp);
        drop(file);
        let renamed = durable.and_then(|()| {
            if replace { fs::rename(&tmp, &dest) } else { crate::sys::rename_noreplace(&tmp, &dest) }
                .at("cannot rename into place", &dest)
        });
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = sync_dir(parent_dir(&dest)) {
            // Not durable: it must not stay behind looking complete.
            let _ = fs::remove_file(&dest);
            return Err(e);
        }
        Ok(dest)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file().write(buf)?;
        self.written += n as u64;
        while self.written >= self.issued + WINDOW {
            let Some(f) = self.file.as_ref() else { break };
            crate::sys::start_writeback(f, self.issued, WINDOW);
            self.issued += WINDOW;
            if self.issued >= 2 * WINDOW {
                crate::sys::finish_writeback(f, self.issued - 2 * WINDOW, WINDOW);
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:x}{:x}", N.fetch_add(1, Ordering::Relaxed), nanos)
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Commits many outputs at once: each is fsynced and renamed, then each folder is fsynced
/// once (not once per file). On an error, the outputs not yet renamed are removed.
pub fn commit_all(files: Vec<AtomicFile>) -> Result<Vec<PathBuf>> {
    let mut done = Vec::with_capacity(files.len());
    let mut dirs: Vec<PathBuf> = Vec::new();
    for mut f in files {
        let Some(mut file) = f.file.take() else { continue };
        let (tmp, dest) = (std::mem::take(&mut f.tmp), std::mem::take(&mut f.dest));
        let r = file
            .flush()
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&tmp, &dest))
            .at("cannot commit", &dest);
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let dir = parent_dir(&dest).to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
        done.push(dest);
    }
    for d in &dirs {
        sync_dir(d)?;
    }
    Ok(done)
}

/// fsync a folder, so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at("cannot sync folder", dir)
}

/// Creates a folder (and its parents) with `mode` when it does not exist yet.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir).at("cannot create folder", dir)
}

/// Removes an input once the outputs made from it are durable.
pub fn remove_input(p: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(p).at("cannot stat", p)?;
    if meta.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) }.at("cannot remove", p)
}

/// Writes a small file atomically.
pub fn write_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create_mode(dest, mode)?;
    f.write_all(bytes).at("cannot write", dest)?;
    f.commit().map(|_| ())
}

/// Writes a small file atomically, failing if `dest` exists.
pub fn write_new_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create_mode(dest, mode)?;
    f.write_all(bytes).at("cannot write", dest)?;
    f.commit_new().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.tar.gz");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "dropped output left a file");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"whole");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn commit_new_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("backup.tar.gz");
        write_file(&dest, b"first", 0o600).unwrap();
        let e = write_new_file(&dest, b"second", 0o600).unwrap_err();
        assert!(e.to_string().contains("cannot rename into place"), "{e}");
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "temporary left behind");
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let f = AtomicFile::create(&d.path().join("out")).unwrap();
        // Whatever name a temporary gets, it is created exclusively: the victim is untouched.
        drop(f);
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn partial_names() {
        assert!(is_partial(".x.tar.gz.partial-12".as_ref()));
        assert!(!is_partial("x.tar.gz".as_ref()));
    }
}
