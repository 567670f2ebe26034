//! filesbackup of another host over SSH: the test sshd on 127.0.0.1, a throwaway user whose
//! files are backed up by the remote GNU tar, read back here by GNU tar.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nc_backup_e2e::{Sandbox, Servers, bin, cmd, run};

const USER: &str = "ncbsshfiles";

fn sh(script: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn remote(s: &Servers, sb: &Sandbox, port: &str) -> Command {
    let mut c = cmd(&bin("filesbackup"));
    c.args(["--SSH_HOST", "127.0.0.1", "--SSH_PORT", port, "--SSH_USER", USER, "--SSH_KEY", &s.var("NCB_SSH_KEY")])
        .arg("--SSH_KNOWN_HOSTS")
        .arg(sb.join("known_hosts"));
    c
}

fn only_archive(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[test]
fn remote_files_over_ssh_keep_metadata_and_excludes_and_fail_cleanly() {
    let s = Servers::get();
    if Command::new("id").arg(USER).output().unwrap().status.code() != Some(0) {
        assert!(Command::new("useradd").args(["-M", "-s", "/bin/sh", USER]).status().unwrap().success());
    }
    // Not locked ('!'), or sshd without PAM refuses the key: no password, not a locked account.
    assert!(Command::new("usermod").args(["-p", "*", USER]).status().unwrap().success());
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = sb.join("site");
    let d = t.display();
    sh(&format!(
        "mkdir -p {d}/sub {d}/cache {d}/deep/node_modules && printf 'hello\\n' > {d}/a.txt && head -c 300000 /dev/urandom > {d}/sub/c.bin \
         && echo log > {d}/sub/b.log && echo tmp > {d}/cache/x && echo dep > {d}/deep/node_modules/m.js && echo keep > {d}/deep/k \
         && ln -s a.txt {d}/link && truncate -s 4M {d}/sparse && printf tail >> {d}/sparse \
         && chmod 640 {d}/a.txt && setfattr -n user.note -v 'from the remote host' {d}/a.txt \
         && touch -d '2021-03-04 05:06:07.123456789' {d}/a.txt && chown -R {USER}: {d}"
    ));
    let out_dir = sb.join("out");
    let include = t.display().to_string();
    let excludes = format!("*.log {d}/cache **/node_modules");
    run(remote(&s, &sb, &s.var("NCB_SSH_PORT"))
        .args(["--FILESET_INCLUDE", &include, "--FILESET_EXCLUDE", &excludes])
        .arg("--DESTINATION")
        .arg(&out_dir))
    .expect(0);
    let archives = only_archive(&out_dir);
    assert_eq!(archives.len(), 1, "{archives:?}");
    // GNU tar reads it, with the metadata.
    let back = sb.join("back");
    std::fs::create_dir_all(&back).unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --acls --numeric-owner -xpzf {} -C {}",
        archives[0].display(),
        back.display()
    ));
    let r = back.join(t.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(r.join("a.txt")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(r.join("sub/c.bin")).unwrap(), std::fs::read(t.join("sub/c.bin")).unwrap());
    assert_eq!(std::fs::read(r.join("sparse")).unwrap(), std::fs::read(t.join("sparse")).unwrap());
    let (m0, m1) = (std::fs::metadata(t.join("a.txt")).unwrap(), std::fs::metadata(r.join("a.txt")).unwrap());
    assert_eq!(
        (m1.mode() & 0o7777, m1.uid(), m1.mtime(), m1.mtime_nsec()),
        (0o640, m0.uid(), m0.mtime(), m0.mtime_nsec())
    );
    assert_eq!(std::fs::read_link(r.join("link")).unwrap(), Path::new("a.txt"));
    assert!(
        sh(&format!("getfattr -n user.note --only-values {}", r.join("a.txt").display()))
            .contains("from the remote host")
    );
    assert!(r.join("deep/k").exists());
    for gone in ["sub/b.log", "cache", "deep/node_modules"] {
        assert!(!r.join(gone).exists(), "{gone} was not excluded");
    }

    // ssh refused (nothing listens there): exit 1, no archive left.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let out2 = sb.join("out2");
    let o =
        run(remote(&s, &sb, &closed).args(["--FILESET_INCLUDE", &include]).arg("--DESTINATION").arg(&out2)).expect(1);
    assert!(o.stderr.contains("remote file backup of 127.0.0.1 failed"), "{}", o.stderr);
    assert!(only_archive(&out2).is_empty(), "{:?}", only_archive(&out2));
    // A missing include on the remote host: exit 1, no archive.
    let o = run(remote(&s, &sb, &s.var("NCB_SSH_PORT"))
        .args(["--FILESET_INCLUDE", &format!("{d}/not-there")])
        .arg("--DESTINATION")
        .arg(&out2))
    .expect(1);
    assert!(o.stderr.contains("not-there"), "{}", o.stderr);
    assert!(only_archive(&out2).is_empty());
    // What a remote backup cannot do is a config error.
    let o = run(remote(&s, &sb, &s.var("NCB_SSH_PORT"))
        .args(["--FILESET_INCLUDE", &include, "--FILE_EXTENSIONS", ".jpg", "--DESTINATION"])
        .arg(&out2))
    .expect(2);
    assert!(o.stderr.contains("FILE_EXTENSIONS"), "{}", o.stderr);
}
