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
        let tmp = dir.join(format!(".{}{}{}", name.to_string_lossy(), PARTIAL_MARK, std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .at("cannot create output in", dir)?;
        Ok(AtomicFile { dest: dest.to_path_buf(), tmp, file: Some(file), written: 0, issued: 0 })
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

    /// Makes the output durable and visible under its final name.
    pub fn commit(mut self) -> Result<PathBuf> {
        let mut file = self.file.take().expect("AtomicFile committed twice");
        file.flush().at("cannot write", &self.tmp)?;
        file.sync_all().at("cannot sync", &self.tmp)?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).at("cannot rename into place", &self.dest)?;
        sync_dir(parent_dir(&self.dest))?;
        Ok(std::mem::take(&mut self.dest))
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

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
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
    fn partial_names() {
        assert!(is_partial(".x.tar.gz.partial-12".as_ref()));
        assert!(!is_partial("x.tar.gz".as_ref()));
    }
}
