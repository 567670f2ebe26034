//! Paths longer than the kernel takes in one call (PATH_MAX, 4096 bytes): GNU tar archives
//! them, so we do too. A long path is reached through folders opened one stretch at a time,
//! each stretch named relative to the folder before it (`/proc/self/fd/N/rest`, which the
//! kernel resolves through the open folder); short paths are used as they are.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Bytes of a path the kernel surely takes in one call.
const STRETCH: usize = 3000;

/// A path usable in one system call, and the folders it goes through (kept open while the
/// path is used).
#[derive(Debug)]
pub struct Short {
    pub path: PathBuf,
    _dirs: Vec<File>,
}

impl Short {
    pub fn of(p: &Path) -> io::Result<Short> {
        if p.as_os_str().len() < STRETCH {
            return Ok(Short { path: p.to_path_buf(), _dirs: Vec::new() });
        }
        let parts: Vec<Component> = p.components().collect();
        let Some((last, parents)) = parts.split_last() else {
            return Ok(Short { path: p.to_path_buf(), _dirs: Vec::new() });
        };
        let mut dirs: Vec<File> = Vec::new();
        let mut cur = PathBuf::new();
        for c in parents {
            if cur.as_os_str().len() + c.as_os_str().len() + 1 >= STRETCH {
                let base = dirs.last().map(fd_path);
                let full = match base {
                    Some(b) => b.join(&cur),
                    None => cur.clone(),
                };
                dirs.push(open_dir(&full)?);
                cur = PathBuf::new();
            }
            cur.push(c.as_os_str());
        }
        cur.push(last.as_os_str());
        let path = match dirs.last() {
            Some(d) => fd_path(d).join(cur),
            None => cur,
        };
        Ok(Short { path, _dirs: dirs })
    }
}

fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f)))
}

/// Opens a folder without following a symlink at its end (one in the middle was archived as
/// a link, never walked through).
fn open_dir(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_past_path_max_is_reached() {
        let d = tempfile::tempdir().unwrap();
        let mut deep = d.path().to_path_buf();
        // 40 folders of 200 bytes: about 8,000 bytes, twice PATH_MAX.
        for i in 0..40 {
            let name = format!("{i:03}{}", "d".repeat(197));
            let s = Short::of(&deep).unwrap();
            std::fs::create_dir(s.path.join(&name)).unwrap();
            deep.push(name);
        }
        assert!(deep.as_os_str().len() > 8000);
        assert!(std::fs::create_dir(deep.join("x")).is_err(), "the kernel took a path past PATH_MAX");
        let s = Short::of(&deep.join("f")).unwrap();
        assert!(s.path.as_os_str().len() < 4096);
        std::fs::write(&s.path, b"deep").unwrap();
        let s = Short::of(&deep.join("f")).unwrap();
        assert_eq!(std::fs::read(&s.path).unwrap(), b"deep");
    }
}
