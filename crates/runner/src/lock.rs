//! One run per config at a time: an flock on a lock file in WORK_FOLDER, named after the
//! config's path. The kernel drops the lock when the holder dies, even by SIGKILL, so a stale
//! lock never blocks the next run.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ncb_core::{Error, IoContext, Result};
use sha2::{Digest, Sha256};

/// Held for the whole run; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// The lock file of a config: `WORK_FOLDER/.backup-runner-<hash of the config path>.lock`.
pub fn lock_path(work: &Path, config: &Path) -> PathBuf {
    let canon = config.canonicalize().unwrap_or_else(|_| config.to_path_buf());
    let h = hex::encode(Sha256::digest(canon.as_os_str().as_encoded_bytes()));
    work.join(format!(".backup-runner-{}.lock", &h[..16]))
}

/// Takes the lock or fails at once, naming the holder.
pub fn acquire(work: &Path, config: &Path, run_id: &str) -> Result<RunLock> {
    let path = lock_path(work, config);
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
                "another run of {} is in progress ({}); lock file {}",
                config.display(),
                holder.trim(),
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(Error::path("cannot lock", &path, e)),
    }
    file.set_len(0).at("cannot write lock file", &path)?;
    file.rewind().at("cannot write lock file", &path)?;
    writeln!(file, "pid {}, run {run_id}", std::process::id()).at("cannot write lock file", &path)?;
    log::debug!("holding lock {}", path.display());
    Ok(RunLock { _file: file })
}
