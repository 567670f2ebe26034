//! filesbackup and compression, read back by GNU tar.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nc_backup_e2e::{Out, Sandbox, bin, cmd, run, wait_for};

fn sh(script: &str) {
    let ok = Command::new("sh").arg("-c").arg(script).status().unwrap().success();
    assert!(ok, "{script}");
}

/// Deterministic, moderately compressible bytes.
fn text_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let words: [&[u8]; 8] = [b"backup ", b"restore ", b"server ", b"tar ", b"gzip ", b"\n", b"0x1f8b ", b"nc "];
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize]);
        out.extend_from_slice(format!("{} ", x % 10007).as_bytes());
    }
    out.truncate(n);
    out
}

/// A tree with every kind of entry filesbackup must keep.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/empty")).unwrap();
    std::fs::write(root.join("dir/zero"), b"").unwrap();
    std::fs::write(root.join("dir/small.txt"), b"hello\n").unwrap();
    std::fs::write(root.join("dir/big.bin"), text_bytes(3 << 20, 7)).unwrap();
    std::fs::write(root.join("script.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("script.sh"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(root.join("secret"), b"s").unwrap();
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("dir/small.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    // Targets kept byte for byte, not normalised.
    std::os::unix::fs::symlink("./dir//small.txt", root.join("odd-link")).unwrap();
    std::os::unix::fs::symlink("dir/.", root.join("dot-link")).unwrap();
    std::fs::hard_link(root.join("dir/small.txt"), root.join("hard")).unwrap();
    let long = root.join("l".repeat(120)).join("m".repeat(120)).join("n".repeat(100));
    std::fs::create_dir_all(&long).unwrap();
    std::fs::write(long.join("deep-file-with-a-long-name.txt"), b"deep").unwrap();
    std::os::unix::fs::symlink("t".repeat(150), root.join("long-target-link")).unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9-latin1")), b"non-utf8 name").unwrap();
    let r = root.display();
    sh(&format!(
        "mkfifo {r}/fifo && chown 1234:2345 {r}/dir/small.txt && chown nobody:nogroup {r}/secret \
         && touch -h -d '2001-02-03 04:05:06' {r}/dir/zero {r}/rel-link {r}/dir/empty"
    ));
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    content: Vec<u8>,
}

/// Every entry below `root`, by relative path (bytes), with its metadata and content.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, content) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else if ft.is_symlink() {
                ("link", std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
            } else if ft.is_file() {
                ("file", std::fs::read(&p).unwrap())
            } else {
                ("special", Vec::new())
            };
            let mtime = if ft.is_dir() { 0 } else { m.mtime() };
            let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            out.insert(rel, Entry { kind, mode: m.mode(), uid: m.uid(), gid: m.gid(), mtime, content });
        }
    }
    out
}

fn filesbackup(args: &[&OsStr]) -> Out {
    run(cmd(&bin("filesbackup")).args(args).arg("--HOSTNAME").arg("testhost"))
}

fn only_archive(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn gnu_tar_restores_every_kind_of_entry_with_its_metadata() {
    let sb = Sandbox::new();
    let src = sb.join("src");
    make_tree(&src);
    let dest = sb.join("out");
    let out =
        filesbackup(&[OsStr::new("--FILESET_INCLUDE"), src.as_os_str(), OsStr::new("--DESTINATION"), dest.as_os_str()])
            .expect(0);
    let report = out.json();
    let archive = only_archive(&dest);
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    // HOST_SECTION_<RUN_ID>: a time, and a random suffix so that runs never share a name.
    let stem = name.strip_prefix("testhost_filesbackup_").and_then(|n| n.strip_suffix(".tar.gz")).unwrap_or("");
    assert!(stem.len() == 21 && stem.as_bytes()[15] == b'Z' && stem.as_bytes()[16] == b'-', "{name}");
    // The report's sha256 and size are the file's.
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(report["artifacts"][0]["bytes"], bytes.len());
    let sha = Command::new("sha256sum").arg(&archive).output().unwrap();
    assert!(String::from_utf8_lossy(&sha.stdout).starts_with(report["artifacts"][0]["sha256"].as_str().unwrap()));
    assert!(report["warnings"].as_array().unwrap().is_empty(), "{report}");

    // gzip -t accepts the multi-member stream; GNU tar lists names relative to /.
    assert!(Command::new("gzip").arg("-t").arg(&archive).status().unwrap().success());
    let list = Command::new("tar").arg("-tvzf").arg(&archive).output().unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    let rel = src.strip_prefix("/").unwrap().display().to_string();
    assert!(list.contains(&format!("{rel}/dir/small.txt")), "{list}");
    assert!(list.contains("nobody/nogroup"), "owner names missing:\n{list}");
    assert!(list.contains("1234/2345"), "numeric owner missing:\n{list}");

    let restore = sb.join("restore");
    std::fs::create_dir(&restore).unwrap();
    let x =
        Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&restore).arg("--numeric-owner").output().unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    let restored = restore.join(&rel);
    assert_eq!(snapshot(&restored), snapshot(&src));
    // The hard link is a hard link again.
    let a = std::fs::metadata(restored.join("hard")).unwrap();
    let b = std::fs::metadata(restored.join("dir/small.txt")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert!(std::fs::symlink_metadata(restored.join("fifo")).unwrap().file_type().is_fifo());
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn include_exclude_and_extension_filters() {
    let sb = Sandbox::new();
    let s = sb.join("site");
    for f in [
        "a.log",
        "b.txt",
        "img/x.JPG",
        "img/y.png",
        "img/z.gif",
        "app/node_modules/m/i.js",
        "app/src/main.js",
        "cache/c.txt",
        "tmp/t.txt",
        "var/w1/cache/k.txt",
        "var/w1/keep.txt",
    ] {
        sb.write(&format!("site/{f}"), b"x");
    }
    let other = sb.write("other.txt", b"o");
    let list = |extra: &[&str]| -> Vec<String> {
        let dest = sb.join(format!("out-{}", extra.len()));
        let _ = std::fs::remove_dir_all(&dest);
        let mut args: Vec<&OsStr> =
            vec![OsStr::new("--DESTINATION"), dest.as_os_str(), OsStr::new("--FILESET_INCLUDE")];
        let inc = format!(r#"["{}", "{}"]"#, s.display(), other.display());
        args.push(OsStr::new(&inc));
        args.extend(extra.iter().map(OsStr::new));
        filesbackup(&args).expect(0);
        let o = Command::new("tar").arg("-tzf").arg(only_archive(&dest)).output().unwrap();
        let prefix = format!("{}/", sb.path().strip_prefix("/").unwrap().display());
        let mut names: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim_start_matches(&prefix).trim_end_matches('/').to_owned())
            .filter(|l| !l.ends_with("site"))
            .collect();
        names.sort();
        names
    };
    let all = list(&[]);
    assert!(
        all.contains(&"site/app/node_modules/m/i.js".to_owned()) && all.contains(&"other.txt".to_owned()),
        "{all:?}"
    );
    let excl = format!("*.log **/node_modules {}/cache {}/var/*/cache tmp", s.display(), s.display());
    let got = list(&["--FILESET_EXCLUDE", &excl]);
    let want = [
        "other.txt",
        "site/app",
        "site/app/src",
        "site/app/src/main.js",
        "site/b.txt",
        "site/img",
        "site/img/x.JPG",
        "site/img/y.png",
        "site/img/z.gif",
        "site/var",
        "site/var/w1",
        "site/var/w1/keep.txt",
    ];
    assert_eq!(got, want);
    let got = list(&["--FILE_EXTENSIONS", ".jpg png", "--FILESET_EXCLUDE", "nothing"]);
    assert_eq!(got, ["site/img/x.JPG", "site/img/y.png"]);
}

#[test]
fn missing_include_is_an_error_naming_it_unless_ignored() {
    let sb = Sandbox::new();
    let dest = sb.join("out");
    let out = filesbackup(&[
        OsStr::new("--FILESET_INCLUDE"),
        OsStr::new("/nonexistent/abc /etc/hostname"),
        OsStr::new("--DESTINATION"),
        dest.as_os_str(),
    ])
    .expect(2);
    assert!(out.stderr.contains("/nonexistent/abc"), "{}", out.stderr);
    assert!(!dest.exists());
    let out = filesbackup(&[
        OsStr::new("--FILESET_INCLUDE"),
        OsStr::new("/nonexistent/abc /etc/hostname"),
        OsStr::new("--DESTINATION"),
        dest.as_os_str(),
        OsStr::new("--IGNORE_MISSING"),
        OsStr::new("True"),
    ])
    .expect(0);
    assert!(out.json()["warnings"][0].as_str().unwrap().contains("/nonexistent/abc"));
}

/// Runs as `nobody`, where root would read anything.
#[test]
fn unreadable_file_is_a_warning_and_strict_makes_it_fatal() {
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.write("src/ok.txt", b"fine");
    let locked = sb.write("src/locked.txt", b"root only");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dest = sb.join("out");
    std::fs::create_dir(&dest).unwrap();
    sh(&format!("chown nobody:nogroup {}", dest.display()));
    let as_nobody = |strict: &str| {
        let mut c = cmd(Path::new("/usr/bin/setpriv"));
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]).arg(bin("filesbackup"));
        c.arg("--FILESET_INCLUDE").arg(sb.join("src")).arg("--DESTINATION").arg(&dest).args(["--STRICT", strict]);
        run(&mut c)
    };
    let out = as_nobody("False").expect(0);
    let w = out.json()["warnings"].to_string();
    assert!(w.contains("locked.txt") && w.contains("Permission denied"), "{w}");
    let archive = only_archive(&dest);
    let o = Command::new("tar").arg("-tzf").arg(&archive).output().unwrap();
    let names = String::from_utf8_lossy(&o.stdout);
    assert!(names.contains("ok.txt") && !names.contains("locked.txt"), "{names}");
    std::fs::remove_file(archive).unwrap();
    let out = as_nobody("True").expect(1);
    assert!(out.stderr.contains("locked.txt"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "a failed backup left a file");
}

#[test]
fn vanished_and_changing_files_are_warnings() {
    let sb = Sandbox::new();
    let big = sb.write("src/a_big", &text_bytes(48 << 20, 3));
    sb.write("src/z_victim", b"going away");
    let dest = sb.join("out");
    std::fs::create_dir(&dest).unwrap();
    let child = cmd(&bin("filesbackup"))
        .arg("--FILESET_INCLUDE")
        .arg(sb.join("src"))
        .arg("--DESTINATION")
        .arg(&dest)
        .args(["--COMPRESSION_LEVEL", "9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Freeze it once compressed bytes come out: it has opened a_big (48 MiB) and is still
    // reading it, before z_victim.
    let started = || std::fs::read_dir(&dest).unwrap().any(|e| e.unwrap().metadata().unwrap().len() > 0);
    assert!(wait_for(Duration::from_secs(20), started));
    sh(&format!("kill -STOP {}", child.id()));
    std::fs::remove_file(sb.join("src/z_victim")).unwrap();
    std::fs::OpenOptions::new().append(true).open(&big).unwrap();
    sh(&format!("touch -d '2030-01-01' {}", big.display()));
    sh(&format!("kill -CONT {}", child.id()));
    let out = Out::from(child.wait_with_output().unwrap()).expect(0);
    let w = out.json()["warnings"].to_string();
    assert!(w.contains("z_victim") && w.contains("vanished"), "{w}");
    assert!(w.contains("a_big") && w.contains("changed as we read it"), "{w}");
    let archive = only_archive(&dest);
    assert!(Command::new("tar").arg("-tzf").arg(&archive).stdout(Stdio::null()).status().unwrap().success());
}

#[test]
fn killed_mid_write_leaves_nothing_that_looks_complete() {
    let sb = Sandbox::new();
    sb.write("src/big", &text_bytes(64 << 20, 5));
    let dest = sb.join("out");
    std::fs::create_dir(&dest).unwrap();
    let mut child = cmd(&bin("filesbackup"))
        .arg("--FILESET_INCLUDE")
        .arg(sb.join("src"))
        .arg("--DESTINATION")
        .arg(&dest)
        .args(["--COMPRESSION_LEVEL", "9"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || std::fs::read_dir(&dest).unwrap().count() > 0));
    child.kill().unwrap();
    child.wait().unwrap();
    for e in std::fs::read_dir(&dest).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(n.starts_with('.') && n.contains(".partial-"), "looks complete: {n}");
    }
}

#[test]
fn disk_full_fails_with_exit_1_and_no_archive() {
    let sb = Sandbox::new();
    sh(&format!("mkdir -p {0}/src && head -c 6000000 /dev/urandom > {0}/src/data", sb.path().display()));
    let small = sb.join("small");
    std::fs::create_dir(&small).unwrap();
    sh(&format!("mount -t tmpfs -o size=1m tmpfs {}", small.display()));
    let out = filesbackup(&[
        OsStr::new("--FILESET_INCLUDE"),
        sb.join("src").as_os_str(),
        OsStr::new("--DESTINATION"),
        small.as_os_str(),
    ]);
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().map(|e| e.unwrap().file_name()).collect();
    sh(&format!("umount {}", small.display()));
    let out = out.expect(1);
    assert!(out.stderr.contains("No space left"), "{}", out.stderr);
    assert!(left.is_empty(), "left behind: {left:?}");
    // A destination that cannot be created is a runtime failure too.
    let blocked = sb.write("file", b"");
    let out = filesbackup(&[
        OsStr::new("--FILESET_INCLUDE"),
        sb.join("src").as_os_str(),
        OsStr::new("--DESTINATION"),
        blocked.join("sub").as_os_str(),
    ])
    .expect(1);
    assert!(out.stderr.contains("cannot create folder"), "{}", out.stderr);
}

#[test]
fn compression_makes_one_archive_per_objective_and_removes_inputs_after() {
    let sb = Sandbox::new();
    sb.write("work/files/a.txt", b"alpha");
    sb.write("work/mydump/db.sql", &text_bytes(100_000, 9));
    let dest = sb.join("work/compressed");
    let objectives = format!("{} {}", sb.join("work/files").display(), sb.join("work/mydump").display());
    for (format, suffix, tar_flag) in
        [("zstd", ".tar.zst", "--zstd"), ("none", ".tar", "-a"), ("gzip", ".tar.gz", "-z")]
    {
        let remove = if format == "gzip" { "True" } else { "False" };
        let out = run(cmd(&bin("compression"))
            .args(["--OBJECTIVES", &objectives, "--COMPRESSION_FORMAT", format, "--REMOVE_OBJECTIVES", remove])
            .arg("--DESTINATION")
            .arg(&dest))
        .expect(0);
        assert_eq!(out.json()["artifacts"].as_array().unwrap().len(), 2);
        for name in ["files", "mydump"] {
            let archive = dest.join(format!("{name}{suffix}"));
            let x = sb.join(format!("x-{format}"));
            std::fs::create_dir_all(&x).unwrap();
            let ok = Command::new("tar")
                .arg(tar_flag)
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&x)
                .status()
                .unwrap()
                .success();
            assert!(ok, "{format} {name}");
        }
        assert_eq!(std::fs::read(sb.join(format!("x-{format}/mydump/db.sql"))).unwrap(), text_bytes(100_000, 9));
    }
    assert!(!sb.join("work/files").exists() && !sb.join("work/mydump").exists(), "inputs not removed");
    // A missing objective fails before anything is written or removed.
    sb.write("work/again/x", b"x");
    let objectives = format!("{} {}", sb.join("work/again").display(), sb.join("work/none").display());
    let out = run(cmd(&bin("compression"))
        .args(["--OBJECTIVES", &objectives, "--REMOVE_OBJECTIVES", "True"])
        .arg("--DESTINATION")
        .arg(sb.join("c2")))
    .expect(1);
    assert!(out.stderr.contains("work/none"), "{}", out.stderr);
    assert!(sb.join("work/again/x").exists() && !sb.join("c2/again.tar.gz").exists());
    // DESTINATION inside an objective is refused.
    let out = run(cmd(&bin("compression"))
        .arg("--OBJECTIVES")
        .arg(sb.join("work"))
        .arg("--DESTINATION")
        .arg(sb.join("work/c")))
    .expect(2);
    assert!(out.stderr.contains("inside objective"), "{}", out.stderr);
}

#[test]
fn follow_symlinks_survives_a_loop() {
    let sb = Sandbox::new();
    sb.write("src/a/file", b"x");
    std::os::unix::fs::symlink("..", sb.join("src/a/up")).unwrap();
    std::os::unix::fs::symlink("../a", sb.join("src/a/again")).unwrap();
    let dest = sb.join("out");
    let out = filesbackup(&[
        OsStr::new("--FILESET_INCLUDE"),
        sb.join("src").as_os_str(),
        OsStr::new("--DESTINATION"),
        dest.as_os_str(),
        OsStr::new("--FOLLOW_SYMLINKS"),
        OsStr::new("True"),
    ])
    .expect(0);
    assert!(out.json()["warnings"].to_string().contains("file system loop"), "{}", out.stdout);
    let o = Command::new("tar").arg("-tzf").arg(only_archive(&dest)).output().unwrap();
    let names = String::from_utf8_lossy(&o.stdout);
    assert_eq!(names.lines().filter(|l| l.ends_with("/file")).count(), 1, "{names}");
}

#[test]
fn a_backup_never_replaces_an_earlier_one() {
    // An earlier archive under the very name this run will use (same host, section, run id).
    let sb = Sandbox::new();
    sb.write("src/f", b"new");
    let dest = sb.join("out");
    std::fs::create_dir(&dest).unwrap();
    let run_id = "20261122T040000Z-3fa9";
    std::fs::write(dest.join(format!("testhost_filesbackup_{run_id}.tar.gz")), b"earlier backup").unwrap();
    let src = sb.join("src");
    let out = run(cmd(&bin("filesbackup"))
        .env("NCB_RUN_ID", run_id)
        .args(["--HOSTNAME", "testhost", "--FILESET_INCLUDE"])
        .arg(&src)
        .arg("--DESTINATION")
        .arg(&dest))
    .expect(1);
    assert!(out.stderr.contains("File exists"), "{}", out.stderr);
    for e in std::fs::read_dir(&dest).unwrap() {
        let e = e.unwrap();
        assert_eq!(std::fs::read(e.path()).unwrap(), b"earlier backup", "{:?} was replaced or added", e.file_name());
    }
}

#[test]
fn two_backups_in_the_same_second_get_two_names() {
    let sb = Sandbox::new();
    sb.write("src/f", b"x");
    let (src, dest) = (sb.join("src"), sb.join("out"));
    let args = [OsStr::new("--FILESET_INCLUDE"), src.as_os_str(), OsStr::new("--DESTINATION"), dest.as_os_str()];
    let children: Vec<_> = (0..2)
        .map(|_| {
            cmd(&bin("filesbackup"))
                .args(args)
                .args(["--HOSTNAME", "testhost"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        Out::from(c.wait_with_output().unwrap()).expect(0);
    }
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 2);
}

#[test]
fn paths_deeper_than_path_max_are_archived_as_gnu_tar_does() {
    let sb = Sandbox::new();
    let src = sb.join("src");
    // 30 folders of 200 bytes: a file about 6,100 bytes deep, past PATH_MAX (4,096).
    let seg = "d".repeat(200);
    let script = format!(
        "set -e; cd {}; mkdir -p src; cd src; for i in $(seq 1 30); do mkdir {seg}; cd {seg}; done; printf deep > f",
        sb.path().display()
    );
    let st = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let dest = sb.join("out");
    let out =
        filesbackup(&[OsStr::new("--FILESET_INCLUDE"), src.as_os_str(), OsStr::new("--DESTINATION"), dest.as_os_str()])
            .expect(0);
    assert!(!out.stderr.contains("cannot read"), "{}", out.stderr);
    let archive = only_archive(&dest);
    let listing = Command::new("tar").arg("-tzf").arg(&archive).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let deepest = listing.lines().map(str::len).max().unwrap_or(0);
    assert!(deepest > 6000, "the deep file is missing from the archive (longest name {deepest})");
    // GNU tar reads it back, byte for byte.
    let got = Command::new("tar").arg("-xzOf").arg(&archive).args(["--wildcards", "*/f"]).output().unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(got.stdout, b"deep");
}
