//! Files of another host, over OpenSSH (SSH_HOST, SSH_USER, SSH_PORT, SSH_KEY,
//! SSH_KNOWN_HOSTS, as the dump stages take them): the remote host runs GNU tar on the
//! includes and excludes, with owners as numbers, modes, times, xattrs, ACLs and holes; the
//! stream is compressed here, in the same `.tar.gz` layout (paths relative to `/`) as a local
//! archive, and written atomically: a failure (ssh refused, a missing include, tar's fatal
//! errors) leaves no archive.

use std::path::Path;

use ncb_archive::Settings;
use ncb_core::params::{Params, shell_quote};
use ncb_core::{Artifact, Error, Result};
use ncb_dbdump::Transport;

/// GNU tar's options for our FILESET_EXCLUDE: names and globs match at any depth (tar's
/// default, unanchored), a pattern starting with `/` from the root (anchored, the `/` dropped
/// as tar stores names without it), a leading `**/` is implied.
pub fn exclude_args(excludes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for e in excludes {
        let e = e.trim_end_matches('/');
        if let Some(abs) = e.strip_prefix('/') {
            out.push("--anchored".into());
            out.push(format!("--exclude={abs}"));
            out.push("--no-anchored".into());
        } else {
            out.push(format!("--exclude={}", e.trim_start_matches("**/")));
        }
    }
    out
}

/// The shell line the remote host runs: GNU tar to stdout. Its exit 1 ("some files changed
/// while being read") is a warning unless STRICT, as for a local archive.
pub fn remote_script(p: &Params) -> Result<String> {
    let mut args: Vec<String> = vec![
        "--create".into(),
        "--file=-".into(),
        "--directory=/".into(),
        "--format=posix".into(),
        "--numeric-owner".into(),
        "--xattrs".into(),
        "--xattrs-include=*".into(),
        "--acls".into(),
        "--sparse".into(),
    ];
    if p.flag("ONE_FILE_SYSTEM", false)? {
        args.push("--one-file-system".into());
    }
    if p.flag("FOLLOW_SYMLINKS", false)? {
        args.push("--dereference".into());
    }
    if p.flag("IGNORE_MISSING", false)? {
        args.push("--ignore-failed-read".into());
    }
    args.extend(exclude_args(&p.list("FILESET_EXCLUDE")?));
    args.push("--".into());
    for i in p.list("FILESET_INCLUDE")? {
        let rel = i.trim_start_matches('/').trim_end_matches('/');
        args.push(if rel.is_empty() { ".".into() } else { rel.to_owned() });
    }
    let tar: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let strict = p.flag("STRICT", false)?;
    let changed = if strict {
        "exit 1"
    } else {
        "echo 'filesbackup: tar: some files changed while they were read (exit 1); the archive holds what was read' >&2; exit 0"
    };
    Ok(format!("LC_ALL=C tar {}; s=$?; if [ $s -eq 1 ]; then {changed}; fi; exit $s", tar.join(" ")))
}

/// Archives the remote includes into `dest`.
pub fn archive(p: &Params, settings: Settings, dest: &Path) -> Result<(Artifact, u64)> {
    let transport = Transport::from_params(p)?;
    let Transport::Ssh { host, .. } = &transport else {
        return Err(Error::usage("a remote file backup needs SSH_HOST"));
    };
    let what = format!("remote file backup of {host}");
    let cmd = transport.command("sh", &["-c".into(), remote_script(p)?], "");
    ncb_dbdump::dump_to_file(cmd, Vec::new(), settings, dest, &what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_become_tar_patterns() {
        let ex = |v: &[&str]| exclude_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(ex(&["*.log"]), ["--exclude=*.log"]);
        assert_eq!(ex(&["**/node_modules"]), ["--exclude=node_modules"]);
        assert_eq!(ex(&["/var/www/*/cache/"]), ["--anchored", "--exclude=var/www/*/cache", "--no-anchored"]);
    }

    #[test]
    fn the_remote_line_quotes_every_path() {
        let mut p = Params::new();
        p.set("FILESET_INCLUDE", "[\"/srv/a b\", \"/etc/it's\"]");
        let s = remote_script(&p).unwrap();
        assert!(s.contains("-- 'srv/a b' 'etc/it'\\''s'"), "{s}");
        assert!(s.starts_with("LC_ALL=C tar --create --file=- --directory=/"), "{s}");
    }
}
