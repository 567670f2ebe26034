//! The few system calls std does not wrap. The only `unsafe` of the workspace lives here.
#![allow(unsafe_code)]

use std::io;

/// Sends `sig` to every process of the process group `pgid`.
pub fn kill_group(pgid: u32, sig: i32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: killpg has no memory-safety preconditions; it only takes integers.
    let r = unsafe { libc::killpg(pgid, sig) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// True when a process with this pid exists (signal 0 probe).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the permission/existence check.
    let r = unsafe { libc::kill(pid, 0) };
    let exists = r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // A zombie (dead, not yet reaped: its parent died and init here does not reap) is gone.
    exists && !is_zombie(pid)
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

/// "SIGTERM" for 15.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

/// Starts writeback of a byte range of `file` without waiting (Linux `sync_file_range`).
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return;
    };
    // SAFETY: the fd is owned by `file` and open for the whole call; the call only hints.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Waits until a range is on disk, then drops it from the page cache: a backup's outputs
/// should not evict the server's working set.
pub fn finish_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return;
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: as above; both calls are advisory and take only integers.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, flags);
        libc::posix_fadvise(file.as_raw_fd(), off, n, libc::POSIX_FADV_DONTNEED);
    }
}

/// Renames `from` to `to` unless `to` exists (Linux `renameat2(RENAME_NOREPLACE)`); on file
/// systems without it, checks then renames.
pub fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOSYS) {
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        return std::fs::rename(from, to);
    }
    Err(e)
}

fn c_path(p: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Sets access and modification time of `path` itself, never of what a symlink points at.
pub fn set_times_nofollow(path: &std::path::Path, secs: u64, nanos: u32) -> io::Result<()> {
    let c = c_path(path)?;
    let secs = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    let ns = libc::c_long::from(nanos.min(999_999_999));
    let ts = [libc::timespec { tv_sec: secs, tv_nsec: ns }, libc::timespec { tv_sec: secs, tv_nsec: ns }];
    // SAFETY: c is a valid NUL-terminated path and ts two valid timespecs, both outliving the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The special files `mknod` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Char,
    Block,
}

/// Creates a fifo or device node (permission bits only from `mode`).
pub fn mknod(path: &std::path::Path, kind: Special, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = c_path(path)?;
    let fmt = match kind {
        Special::Fifo => libc::S_IFIFO,
        Special::Char => libc::S_IFCHR,
        Special::Block => libc::S_IFBLK,
    };
    let dev = libc::makedev(major, minor);
    // SAFETY: c is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), fmt | (mode & 0o777) as libc::mode_t, dev) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sends `sig` to the process `pid`.
pub fn kill_pid(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory-safety preconditions; it only takes integers.
    let r = unsafe { libc::kill(pid, sig) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The name mark of files that hold a secret for one process: `.ncb-secret-<PID>-<what>`.
pub const SECRET_MARK: &str = ".ncb-secret-";

/// The name of a secret file of this process (`what` must be unique within it).
pub fn secret_name(what: &str) -> String {
    format!("{SECRET_MARK}{}-{what}", std::process::id())
}

/// Removes secret files in `dir` that no process holds any more (killed before it could remove
/// them); returns their names. A process holds its secret file locked (flock) while it uses
/// it; a file nobody has locked is stale once its process is gone or it is over a minute old
/// (its pid may have been reused).
pub fn sweep_secrets(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SECRET_MARK) else { continue };
        let Ok(file) = std::fs::File::open(e.path()) else { continue };
        if file.try_lock().is_err() {
            continue;
        }
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let old = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if pid.is_some_and(process_alive) && !old {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// The child `cmd` starts gets `sig` when this process dies (even by SIGKILL), so no stage or
/// dump runs on after a killed runner. Set from the thread that lives as long as the child
/// must (the kernel's parent-death signal follows the spawning thread).
pub fn dies_with_parent(cmd: &mut std::process::Command, sig: i32) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || die_with_parent(sig, parent));
    }
}

/// In the child, before exec: `sig` when the parent dies; exits at once if the parent is
/// already gone (`parent` is the pid it had when it spawned us).
fn die_with_parent(sig: i32, parent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid take no pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::c_ulong::try_from(sig).unwrap_or(15), 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            libc::_exit(128 + sig);
        }
    }
    Ok(())
}

/// Refuses a folder we write our work or logs into when another user could change what is in
/// it: the folder writable by group or others, or owned by someone else than root or us; or
/// an ancestor writable by others without the sticky bit (they could swap the folder).
pub fn check_trusted_dir(dir: &std::path::Path, what: &str) -> crate::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = euid();
    let m = std::fs::metadata(dir).map_err(|e| crate::Error::path(&format!("cannot check {what}"), dir, e))?;
    if m.uid() != me && m.uid() != 0 {
        return Err(crate::Error::config(format!(
            "{what} {} belongs to user {}: another user controls what is in it; use a folder of root's or this user's",
            dir.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(crate::Error::config(format!(
            "{what} {} is writable by group or others (mode {:04o}): they could plant files or links there; run chmod go-w {} or use another folder",
            dir.display(),
            m.mode() & 0o7777,
            dir.display()
        )));
    }
    let mut up = std::fs::canonicalize(dir).ok().and_then(|d| d.parent().map(std::path::Path::to_path_buf));
    while let Some(a) = up {
        if let Ok(am) = std::fs::metadata(&a)
            && am.mode() & 0o002 != 0
            && am.mode() & 0o1000 == 0
        {
            return Err(crate::Error::config(format!(
                "{what} {} is inside {}, which anyone may write to without the sticky bit: the folder could be swapped",
                dir.display(),
                a.display()
            )));
        }
        up = a.parent().map(std::path::Path::to_path_buf);
    }
    Ok(())
}

/// Refuses a secret file (`what`: "key file", "credentials file", "identity file"…) that group
/// or others may access, naming it and the fix (exit 2).
pub fn check_private(path: &std::path::Path, what: &str) -> crate::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path).map_err(|e| crate::Error::path(what, path, e))?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(crate::Error::usage(format!(
            "{what} {} is accessible by group or others (mode {mode:04o}): run chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Columns of the terminal `fd` is (None when it is not one).
pub fn terminal_columns(fd: i32) -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the winsize we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}
