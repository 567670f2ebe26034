//! One run per WORK_FOLDER at a time: an flock on `WORK_FOLDER/.backup-runner.lock`. It
//! guards what runs share (the work folders, the run journals), so two configs, or one config
//! reached through a copy or a link, never run side by side on the same WORK_FOLDER. The kernel
//! drops the lock when the last holder dies, even by SIGKILL, so a stale lock never blocks the
//! next run. Stages die with the runner (a parent-death signal, see exec.rs), so none runs
//! on unlocked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ncb_core::{Error, IoContext, Result};

/// Held for the whole run; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// The lock file of a work folder.
pub fn lock_path(work: &Path) -> PathBuf {
    work.join(".backup-runner.lock")
}

/// Takes the lock or fails at once, naming the holder.
pub fn acquire(work: &Path, config: &Path, run_id: &str) -> Result<RunLock> {
    let path = lock_path(work);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .at("cannot open lock file", &path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::runtime(format!(
                "another run is in progress in WORK_FOLDER {} ({}; lock file {}); {} was not started",
                work.display(),
                holder.trim(),
                path.display(),
                config.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(Error::path("cannot lock", &path, e)),
    }
    file.set_len(0).at("cannot write lock file", &path)?;
    file.rewind().at("cannot write lock file", &path)?;
    writeln!(file, "pid {}, run {run_id} of {}", std::process::id(), config.display())
        .at("cannot write lock file", &path)?;
    log::debug!("holding lock {}", path.display());
    Ok(RunLock { _file: file })
}
