//! The privileged reader: filesbackup started with `--privileged-reader` by a user that is not
//! root, so it can read every file (other users', root's 0600 ones) while everything it writes
//! is written as that user, not as root.
//!
//! It gets there one of two ways, and ends in the same state either way:
//! - **capability**: the reader binary carries the file capability `cap_dac_read_search=ep`
//!   (`setcap`; the Debian package installs `/usr/libexec/nc-backup/filesbackup-reader` so,
//!   mode 0750 root:nc-backup). It starts as the user with that one capability.
//! - **sudo**: `sudo -n <reader> --privileged-reader …` as sudoers.sample allows. It starts as
//!   root; before anything else (one thread, nothing read yet) it becomes the user sudo names
//!   (SUDO_UID, SUDO_GID, SUDO_USER: set by sudo, not by the caller) keeping only
//!   CAP_DAC_READ_SEARCH, and drops every other capability from its bounding set.
//!
//! The end state, checked before the stage starts: real, effective and saved uid and gid are the
//! user's; permitted and effective capabilities are exactly {CAP_DAC_READ_SEARCH}; inheritable
//! and ambient are empty; no_new_privs is set (nothing it runs can gain privilege). The
//! capability lets it read and search; it grants no write: archives, indexes, incremental state
//! and logs are the user's files.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use caps::{CapSet, Capability, CapsHashSet};

/// What [`enter`] established, for the stage's log.
pub static STATE: OnceLock<String> = OnceLock::new();

/// The flag, first on the command line, that asks for the reader's state.
pub const FLAG: &str = "--privileged-reader";

/// Where the Debian package installs the reader.
pub const DEFAULT_PATH: &str = "/usr/libexec/nc-backup/filesbackup-reader";

/// Whether this process is a reader binary: its file name starts with `filesbackup-reader`.
pub fn is_reader_binary() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().starts_with("filesbackup-reader")))
        .unwrap_or(false)
}

/// Enters the reader's state (see the module). `Err` is a usage problem: the message says what
/// to fix.
pub fn enter() -> Result<String, String> {
    let exe = std::env::current_exe().map_or_else(|_| "filesbackup".to_owned(), |p| p.display().to_string());
    let (_, euid, _) = resuid();
    let route = if euid == 0 {
        become_sudo_user()?;
        "sudo"
    } else {
        "capability"
    };
    let want: CapsHashSet = [Capability::CAP_DAC_READ_SEARCH].into_iter().collect();
    if !caps::has_cap(None, CapSet::Permitted, Capability::CAP_DAC_READ_SEARCH).unwrap_or(false) {
        return Err(format!(
            "{FLAG}: {exe} does not hold CAP_DAC_READ_SEARCH, so files of other users would be skipped: as root run `setcap cap_dac_read_search=ep {exe}` (the nc-backup package does it for {DEFAULT_PATH}; the file system must keep extended attributes and not be mounted nosuid), or use FILES_READER sudo"
        ));
    }
    let fail = |what: &str, e: caps::errors::CapsError| format!("{FLAG}: cannot {what}: {e}");
    caps::set(None, CapSet::Effective, &CapsHashSet::new()).map_err(|e| fail("clear the effective set", e))?;
    caps::set(None, CapSet::Permitted, &want).map_err(|e| fail("narrow the permitted set", e))?;
    caps::set(None, CapSet::Effective, &want).map_err(|e| fail("raise CAP_DAC_READ_SEARCH", e))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| fail("clear the inheritable set", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clear the ambient set", e))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("{FLAG}: cannot set no_new_privs: {}", std::io::Error::last_os_error()));
    }
    // Executing a binary with file capabilities cleared the parent-death signal the runner set:
    // armed again, so a killed runner still takes its reader with it.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) };
    // Checked, not assumed: any difference is a refusal to go on.
    let (r, e, s) = resuid();
    let (rg, eg, sg) = resgid();
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| fail("read the permitted set", e))?;
    let effective = caps::read(None, CapSet::Effective).map_err(|e| fail("read the effective set", e))?;
    let inheritable = caps::read(None, CapSet::Inheritable).map_err(|e| fail("read the inheritable set", e))?;
    let ambient = caps::read(None, CapSet::Ambient).map_err(|e| fail("read the ambient set", e))?;
    // Through sudo the bounding set was emptied too (a file capability cannot: no CAP_SETPCAP).
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| fail("read the bounding set", e))?;
    let bounding_ok = route != "sudo" || bounding.iter().all(|c| *c == Capability::CAP_DAC_READ_SEARCH);
    // SAFETY: prctl with integer arguments only.
    let no_new_privs = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
    let ids_ok = r != 0 && e != 0 && s != 0 && r == e && e == s && rg == eg && eg == sg;
    let caps_ok = permitted == want && effective == want && inheritable.is_empty() && ambient.is_empty();
    if !(ids_ok && caps_ok && bounding_ok && no_new_privs) {
        return Err(format!(
            "{FLAG}: the reader's state is not the one expected (uids {r}/{e}/{s}, gids {rg}/{eg}/{sg}, permitted {permitted:?}, effective {effective:?}, inheritable {inheritable:?}, ambient {ambient:?}, bounding {bounding:?}, no_new_privs {no_new_privs})"
        ));
    }
    watch_runner();
    Ok(format!("reading files as uid {e} gid {eg} with CAP_DAC_READ_SEARCH only ({route})"))
}

/// Under backup-runner, the reader stops when the runner is gone. Through sudo its parent is
/// sudo, which outlives a killed runner (and an exec of sudo or of a binary with capabilities
/// clears the parent-death signal the runner asked for): without this, a reader would go on
/// writing into WORK_FOLDER beside the next run.
fn watch_runner() {
    let Some(pid) = std::env::var(ncb_core::context::env::RUNNER_PID).ok().and_then(|p| p.parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    let gone = move || {
        // SAFETY: signal 0 only checks that the process exists; getppid cannot fail.
        let (r, ppid) = unsafe { (libc::kill(pid, 0), libc::getppid()) };
        // The runner gone, or our parent (sudo, killed by the runner's TIMEOUT) gone.
        (r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)) || ppid != parent
    };
    if gone() {
        eprintln!("filesbackup: error: backup-runner (pid {pid}) is gone: nothing read");
        std::process::exit(1);
    }
    std::thread::spawn(move || {
        while !gone() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // Nobody reads our stderr any more (sudo stops relaying it when the runner's pipe
        // closes), so a blocking write, or exit()'s flush, could hang here for ever: one
        // non-blocking attempt to say why, then _exit. The archive stays under its temporary
        // name, which nothing takes for a complete one.
        let msg = format!(
            "filesbackup: error: backup-runner (pid {pid}) or the reader's parent is gone: stopped, the archive unfinished\n"
        );
        // SAFETY: fcntl/write on fd 2 with a valid buffer; _exit ends the process at once.
        unsafe {
            let flags = libc::fcntl(2, libc::F_GETFL);
            libc::fcntl(2, libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(1);
        }
    });
}

/// Root through sudo: become SUDO_USER, keep only the permitted set (to narrow it next).
fn become_sudo_user() -> Result<(), String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let not_for_root = || {
        format!(
            "{FLAG} is for a user that is not root (through sudo, or with CAP_DAC_READ_SEARCH on the binary); root reads every file without it"
        )
    };
    let (Some(uid), Some(gid), Some(user)) = (var("SUDO_UID"), var("SUDO_GID"), var("SUDO_USER")) else {
        return Err(not_for_root());
    };
    let (Ok(uid), Ok(gid)) = (uid.parse::<libc::uid_t>(), gid.parse::<libc::gid_t>()) else {
        return Err(format!("{FLAG}: SUDO_UID/SUDO_GID are not numbers"));
    };
    if uid == 0 {
        return Err(not_for_root());
    }
    let os = |what: &str| format!("{FLAG}: {what}: {}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(user).map_err(|_| format!("{FLAG}: SUDO_USER holds a NUL byte"))?;
    // SAFETY: getpwnam returns a pointer into static storage, read at once; one thread here.
    let pw_uid = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() { None } else { Some((*pw).pw_uid) }
    };
    if pw_uid != Some(uid) {
        return Err(format!("{FLAG}: SUDO_USER does not name the user of SUDO_UID {uid}"));
    }
    // SAFETY: plain system calls on integers and a valid C string; no other thread runs yet.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(os("cannot keep capabilities across the uid change"));
        }
        if libc::initgroups(name.as_ptr(), gid) != 0 {
            return Err(os("cannot set the user's groups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(os("cannot change group"));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(os("cannot change user"));
        }
    }
    // The permitted set survived (KEEPCAPS); CAP_SETPCAP in it lets us empty the bounding set.
    caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(|e| format!("{FLAG}: cannot raise CAP_SETPCAP: {e}"))?;
    for cap in caps::all() {
        if cap != Capability::CAP_DAC_READ_SEARCH && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("{FLAG}: cannot drop {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

fn resuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

fn resgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// Whether `path` carries a file capability that permits CAP_DAC_READ_SEARCH (the
/// `security.capability` attribute `setcap` writes: a little-endian magic word, then permitted
/// and inheritable words, low 32 bits first).
pub fn has_read_capability(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut buf = [0u8; 32];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe { libc::getxattr(c.as_ptr(), c"security.capability".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) { Ok(false) } else { Err(e) };
    }
    if n < 8 {
        return Ok(false);
    }
    let permitted_low = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Ok(permitted_low & (1 << 2) != 0)
}
