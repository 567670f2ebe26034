//! Least privilege end to end: the nightly run as an unprivileged user (the package's
//! `nc-backup`; here `ncbpriv`), backing up files of root and of another user through the
//! privileged reader — by file capability and by sudo with sudoers.sample's own rule — with a
//! MariaDB dump, encryption, local storage and an incremental second night; restored by root
//! byte for byte with owners and modes; nothing the run wrote belongs to root. And the refusals:
//! a reader without its capability, sudo without the rule, a loaded filesbackup, the reader
//! started by root, the reader asked to write where its user may not.

use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use nc_backup_e2e::{Out, Sandbox, Servers, bin, cmd, pseudo_random, run};
use serde_json::{Value, json};

use crate::db::{make_mysql_db, my_creds};
use crate::restore::assert_same_tree;
use crate::yaml::ensure_user;

/// Stands for the package's `nc-backup` user.
const USER: &str = "ncbpriv";
/// Owns files the run must read without being able to.
const OTHER: &str = "ncbother";

fn ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let o = Command::new("id").arg(flag).arg(user).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The command run as USER, with its own HOME.
fn as_user(program: &Path, home: &Path) -> Command {
    let (uid, gid) = ids(USER);
    let mut c = cmd(program);
    std::os::unix::process::CommandExt::uid(&mut c, uid);
    std::os::unix::process::CommandExt::gid(&mut c, gid);
    c.env("HOME", home);
    c
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Data of three owners: world-readable, root's private files, another user's private folder.
fn make_data(data: &Path) {
    let (ou, og) = ids(OTHER);
    let w = |rel: &str, bytes: &[u8], m: u32, owner: Option<(u32, u32)>| {
        let p = data.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        mode(&p, m);
        if let Some((u, g)) = owner {
            chown(&p, Some(u), Some(g)).unwrap();
        }
    };
    w("pub/readme.txt", b"for everyone\n", 0o644, None);
    w("pub/readme2.txt", b"also for everyone\n", 0o644, None);
    w("pub/big.bin", &pseudo_random(3 << 20, 7), 0o644, None);
    w("etc/shadow", b"root:$y$j9T$secret:19000:0:99999:7:::\n", 0o640, None);
    w("rootonly/secret.key", &pseudo_random(4096, 8), 0o600, None);
    w("other/notes.txt", b"another user's notes\n", 0o600, Some((ou, og)));
    w("other/sub/deep.txt", b"deeper\n", 0o640, Some((ou, og)));
    std::os::unix::fs::symlink("pub/readme.txt", data.join("link")).unwrap();
    mode(&data.join("rootonly"), 0o700);
    mode(&data.join("other/sub"), 0o700);
    chown(data.join("other/sub"), Some(ou), Some(og)).unwrap();
    mode(&data.join("other"), 0o700);
    chown(data.join("other"), Some(ou), Some(og)).unwrap();
}

/// The reader: a copy of filesbackup, 0750 root:USER's group, with the capability or not.
fn install_reader(dir: &Path, with_cap: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    mode(dir, 0o755);
    let reader = dir.join("filesbackup-reader");
    std::fs::copy(bin("filesbackup"), &reader).unwrap();
    chown(&reader, Some(0), Some(ids(USER).1)).unwrap();
    mode(&reader, 0o750);
    if with_cap {
        let out = Command::new("setcap").arg("cap_dac_read_search=ep").arg(&reader).output().unwrap();
        assert!(out.status.success(), "setcap: {}", String::from_utf8_lossy(&out.stderr));
    }
    reader
}

/// sudoers.sample itself, for USER and this reader, in /etc/sudoers.d while the test runs.
struct SudoRule(PathBuf);

impl SudoRule {
    fn install(reader: &Path) -> Self {
        let sample = std::fs::read_to_string(nc_backup_e2e::repo().join("sudoers.sample")).unwrap();
        // One alias name per test process: tests running side by side each add a rule, and
        // sudo refuses an alias defined twice.
        let alias = format!("NCB_READER_{}", std::process::id());
        let text = sample
            .replace("/usr/libexec/nc-backup/filesbackup-reader", &reader.display().to_string())
            .replace("nc-backup ALL", &format!("{USER} ALL"))
            .replace("NCB_READER", &alias);
        assert!(text.contains(&format!("{USER} ALL = (root) NOPASSWD: {alias}")), "{text}");
        assert!(text.contains(&format!("{alias} = {} --privileged-reader *", reader.display())), "{text}");
        let path = PathBuf::from(format!("/etc/sudoers.d/ncb-e2e-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        mode(&path, 0o440);
        let check = Command::new("visudo").arg("-cf").arg(&path).output().unwrap();
        assert!(check.status.success(), "visudo: {}", String::from_utf8_lossy(&check.stderr));
        SudoRule(path)
    }
}

impl Drop for SudoRule {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Setup {
    sb: Sandbox,
    home: PathBuf,
    data: PathBuf,
    reader: PathBuf,
}

fn setup(with_cap: bool) -> Setup {
    ensure_user(USER, "/usr/sbin/nologin");
    ensure_user(OTHER, "/usr/sbin/nologin");
    let sb = Sandbox::new();
    mode(sb.path(), 0o755);
    let home = sb.join("home");
    std::fs::create_dir(&home).unwrap();
    let (uid, gid) = ids(USER);
    chown(&home, Some(uid), Some(gid)).unwrap();
    mode(&home, 0o700);
    let data = sb.join("data");
    make_data(&data);
    let reader = install_reader(&sb.join("reader"), with_cap);
    run(as_user(&bin("encryption"), &home).arg("--generate-key").arg(home.join("key_file"))).expect(0);
    Setup { sb, home, data, reader }
}

fn general(st: &Setup, reader_mode: &str) -> Value {
    json!({"HOSTNAME": "fleet1", "WORK_FOLDER": st.home.join("work"), "LOG_FOLDER": st.home.join("log"),
        "FILES_READER": reader_mode, "FILES_READER_PATH": st.reader})
}

fn write_config(st: &Setup, general: Value, sections: &[(&str, Value)]) -> PathBuf {
    let mut doc = serde_json::Map::new();
    doc.insert("GENERAL".into(), general);
    for (name, body) in sections {
        doc.insert((*name).into(), body.clone());
    }
    let path = st.home.join("conf.json");
    std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(doc)).unwrap()).unwrap();
    let (uid, gid) = ids(USER);
    chown(&path, Some(uid), Some(gid)).unwrap();
    mode(&path, 0o600);
    path
}

/// The nightly job: files (incremental) and a MariaDB dump, encrypted, stored locally.
fn nightly(st: &Setup, s: &Servers, reader_mode: &str, db: &str) -> PathBuf {
    let creds = my_creds(&st.sb, s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    let mine = st.home.join("mysql.credentials");
    std::fs::rename(&creds, &mine).unwrap();
    let (uid, gid) = ids(USER);
    chown(&mine, Some(uid), Some(gid)).unwrap();
    let w = st.home.join("work");
    write_config(
        st,
        general(st, reader_mode),
        &[
            (
                "FILES",
                json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                    "FILESET_INCLUDE": st.data, "DESTINATION": w.join("files"),
                    "INCREMENTAL": "True", "STATE_FOLDER": st.home.join("state")}}),
            ),
            (
                "MYSQL",
                json!({"ACTION": "execute", "NAME": "mysql-dump", "PARAMETERS": {
                    "CREDENTIAL_PATH": mine, "MY_INSTANCES": s.var("NCB_MYSQL_PORT"), "HOST": "127.0.0.1",
                    "DATABASES": db, "DESTINATION": w.join("mysql")}}),
            ),
            (
                "ENCRYPTION",
                json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                    "KEY_FILE": st.home.join("key_file"), "FILE_SIZE": "1",
                    "OBJECTIVES": format!("{} {}", w.join("files").display(), w.join("mysql").display()),
                    "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
            ),
            (
                "STORAGE",
                json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                    "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": st.home.join("backups"),
                    "REMOVE_OBJECTIVES": "True", "KEEP_LAST": "5"}}),
            ),
            (
                "SIZE",
                json!({"ACTION": "load", "NAME": "size-calc", "PARAMETERS": {"OBJECTIVES": st.home.join("backups")}}),
            ),
        ],
    )
}

/// Every entry under `dir`, with its metadata.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m));
        }
    }
    out
}

/// Two nights as USER, then root restores the latest and finds the data, owners and modes as
/// they are; nothing in the sandbox that the runs wrote is root's.
fn nightly_as_the_unprivileged_user(reader_mode: &str) {
    let s = Servers::get();
    let st = setup(reader_mode == "capability");
    let _rule = (reader_mode == "sudo").then(|| SudoRule::install(&st.reader));
    let db = make_mysql_db(&s);
    let conf = nightly(&st, &s, reader_mode, &db);
    let started = SystemTime::now() - std::time::Duration::from_secs(2);
    let (uid, _) = ids(USER);

    run(as_user(&bin("backup-runner"), &st.home).arg("--check").arg("-c").arg(&conf)).expect(0);
    let dry = run(as_user(&bin("backup-runner"), &st.home).arg("--dry-run").arg("-c").arg(&conf)).expect(0);
    let shown = format!("{} --privileged-reader", st.reader.display());
    assert!(dry.stdout.contains(&shown), "{}", dry.stdout);
    if reader_mode == "sudo" {
        assert!(dry.stdout.contains("sudo -n --preserve-env=NCB_RUN_ID,"), "{}", dry.stdout);
    }

    let mut runs = Vec::new();
    for night in 0..2 {
        if night == 1 {
            // What changed by day, in every owner's files: the increment must carry it.
            std::fs::write(st.data.join("other/notes.txt"), b"another user's notes, edited\n").unwrap();
            std::fs::write(st.data.join("rootonly/new.key"), pseudo_random(999, 9)).unwrap();
            mode(&st.data.join("rootonly/new.key"), 0o600);
            std::fs::remove_file(st.data.join("pub/readme2.txt")).unwrap();
        }
        let out = run(as_user(&bin("backup-runner"), &st.home).arg("-r").arg("-c").arg(&conf).arg("--json")).expect(0);
        let report = out.json();
        let files = &report["sections"][0];
        assert_eq!(files["status"], "ok", "{report:#}");
        let warnings = files["warnings"].to_string();
        assert!(!warnings.contains("cannot read"), "the reader missed files: {report:#}");
        assert_eq!(files["data"]["skipped"], json!(0), "{files:#}");
        let base = if night == 0 { Value::Null } else { json!(runs[0]) };
        assert_eq!((&files["data"]["level"], &files["data"]["base_run"]), (&json!(night), &base), "{files:#}");
        runs.push(report["run_id"].as_str().unwrap().to_owned());
    }
    // The second night built on the first: an increment, so the lineage reached the reader.
    let log =
        walk(&st.home.join("log")).into_iter().map(|(p, _)| std::fs::read_to_string(p).unwrap()).collect::<String>();
    assert!(
        log.contains(&format!("reading files as uid {uid} ")) && log.contains(&format!("only ({reader_mode})")),
        "{log}"
    );
    let listed = run(cmd(&bin("backup-runner")).args(["runs", "--json", "-c"]).arg(&conf)).expect(0).json();
    let text = listed.to_string();
    assert!(text.contains(&runs[0]) && text.contains(&runs[1]), "{text}");

    // Everything the runs wrote is USER's; nothing in the sandbox the runs touched is root's.
    let mine = walk(&st.home);
    assert!(mine.len() > 10, "{mine:?}");
    for (p, m) in &mine {
        assert_eq!(m.uid(), uid, "{} is not {USER}'s", p.display());
    }
    for (p, m) in walk(st.sb.path()) {
        if p.starts_with(&st.data) || p.starts_with(st.sb.join("reader")) {
            continue;
        }
        let newer = m.modified().is_ok_and(|t| t > started);
        assert!(!(newer && m.uid() == 0), "{} written as root during the runs", p.display());
    }

    // Root restores the latest night: the chain, every owner's files, byte for byte.
    let to = st.sb.join("restored");
    // (The latest: the two nights ran within seconds, and the second still sorts after the first.)
    let out =
        run(cmd(&bin("backup-runner")).args(["restore", "--json", "-c"]).arg(&conf).arg("--to").arg(&to)).expect(0);
    assert!(out.stdout.contains(&runs[1]), "{}", out.stdout);
    assert_same_tree(&st.data, &to.join(st.data.strip_prefix("/").unwrap()));
    let dumps =
        walk(&to).into_iter().filter(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with(&db)).count();
    assert!(dumps >= 1, "no dump of {db} restored");
}

#[test]
fn nightly_as_an_unprivileged_user_reads_every_file_with_the_capability_reader() {
    nightly_as_the_unprivileged_user("capability");
}

#[test]
fn nightly_as_an_unprivileged_user_reads_every_file_through_sudo_and_sudoers_sample() {
    nightly_as_the_unprivileged_user("sudo");
}

fn files_only(st: &Setup, general: Value, action: &str, dest: &Path) -> PathBuf {
    write_config(
        st,
        general,
        &[(
            "FILES",
            json!({"ACTION": action, "NAME": "filesbackup", "PARAMETERS": {"FILESET_INCLUDE": st.data, "DESTINATION": dest}}),
        )],
    )
}

fn runner_as_user(st: &Setup, args: &[&str], conf: &Path) -> Out {
    run(as_user(&bin("backup-runner"), &st.home).args(args).arg("-c").arg(conf))
}

#[test]
fn privileged_reader_refusals() {
    let st = setup(false);
    let dest = st.home.join("work/files");

    // No reader: the run goes on, and says which files it could not read and what to do.
    let mut g = general(&st, "none");
    g.as_object_mut().unwrap().remove("FILES_READER_PATH");
    let conf = files_only(&st, g, "execute", &dest);
    let out = runner_as_user(&st, &["-r", "--json"], &conf).expect(0);
    let warnings = out.json()["sections"][0]["warnings"].to_string();
    assert!(warnings.contains("rootonly: cannot read") && warnings.contains("GENERAL FILES_READER"), "{warnings}");

    // A reader without its capability: --check and -r refuse before anything runs, with the fix.
    let conf = files_only(&st, general(&st, "capability"), "execute", &dest);
    for args in [&["--check"][..], &["-r"][..]] {
        let out = runner_as_user(&st, args, &conf).expect(2);
        assert!(
            out.stderr.contains("FILES_READER_PATH")
                && out.stderr.contains(&format!("setcap cap_dac_read_search=ep {}", st.reader.display())),
            "{}",
            out.stderr
        );
    }
    // Started by hand without it, the reader says the same and reads nothing.
    let out = run(as_user(&st.reader, &st.home)
        .args(["--privileged-reader", "--HOSTNAME", "h", "--FILESET_INCLUDE"])
        .arg(&st.data)
        .arg("--DESTINATION")
        .arg(&dest))
    .expect(2);
    assert!(out.stderr.contains("does not hold CAP_DAC_READ_SEARCH"), "{}", out.stderr);

    // sudo without the rule: the run fails loudly (sudo never prompts), nothing is stored.
    let refused = st.home.join("work/refused");
    let conf = files_only(&st, general(&st, "sudo"), "execute", &refused);
    let out = runner_as_user(&st, &["-r"], &conf).expect(1);
    assert!(out.stderr.contains("[FILES]") && out.stderr.contains("sudo: a password is required"), "{}", out.stderr);
    let left = std::fs::read_dir(&refused).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "something was left in {}", refused.display());

    // Values GENERAL does not know: exit 2, naming the key.
    for (key, value, says) in [
        ("FILES_READER", "maybe", "not capability, sudo or none"),
        ("FILES_READER_PATH", "reader", "not an absolute path"),
    ] {
        let mut g = general(&st, "capability");
        g[key] = json!(value);
        let conf = files_only(&st, g, "execute", &refused);
        let out = runner_as_user(&st, &["--check"], &conf).expect(2);
        assert!(
            out.stderr.contains("GENERAL") && out.stderr.contains(key) && out.stderr.contains(says),
            "{}",
            out.stderr
        );
    }

    // A reader the user could replace, named in a sudo rule, would be root for the asking.
    let mine = st.home.join("filesbackup-reader");
    std::fs::copy(&st.reader, &mine).unwrap();
    let mut g = general(&st, "sudo");
    g["FILES_READER_PATH"] = json!(mine);
    let conf = files_only(&st, g, "execute", &refused);
    let out = runner_as_user(&st, &["--check"], &conf).expect(2);
    assert!(out.stderr.contains("FILES_READER_PATH") && out.stderr.contains("is not root's alone"), "{}", out.stderr);

    // The reader binary is never plain filesbackup, and an argument that merely starts like the
    // flag (sudoers joins arguments with spaces before matching) is refused, not run as root.
    for args in [&["--HOSTNAME", "h"][..], &["--privileged-reader --HOSTNAME", "h"][..]] {
        let out = run(cmd(&st.reader).args(args)).expect(2);
        assert!(out.stderr.contains("takes --privileged-reader as its first argument, alone"), "{}", out.stderr);
    }
    let out = run(cmd(&bin("filesbackup")).args(["--privileged-reader=x", "--HOSTNAME", "h"])).expect(2);
    assert!(out.stderr.contains("first argument, alone"), "{}", out.stderr);

    // A loaded filesbackup would run inside backup-runner, which holds no privilege.
    let conf = files_only(&st, general(&st, "sudo"), "load", &dest);
    let out = runner_as_user(&st, &["--check"], &conf).expect(2);
    assert!(out.stderr.contains("FILES") && out.stderr.contains("ACTION execute"), "{}", out.stderr);

    // Root needs no reader and the reader is not for root.
    let out = run(cmd(&st.reader)
        .args(["--privileged-reader", "--HOSTNAME", "h", "--FILESET_INCLUDE"])
        .arg(&st.data)
        .arg("--DESTINATION")
        .arg(st.sb.join("root-out")))
    .expect(2);
    assert!(out.stderr.contains("is for a user that is not root"), "{}", out.stderr);
    assert!(!st.sb.join("root-out").exists());

    // With its capability the reader reads everything, and writes nowhere its user may not.
    let reader = install_reader(&st.sb.join("reader-cap"), true);
    let closed = st.sb.join("closed");
    std::fs::create_dir(&closed).unwrap();
    mode(&closed, 0o755);
    let out = run(as_user(&reader, &st.home)
        .args(["--privileged-reader", "--HOSTNAME", "h", "--FILESET_INCLUDE"])
        .arg(&st.data)
        .arg("--DESTINATION")
        .arg(closed.join("files")))
    .expect(1);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&closed).unwrap().count(), 0, "the reader wrote as root");
    let out = run(as_user(&reader, &st.home)
        .args(["--privileged-reader", "--HOSTNAME", "h", "--FILESET_INCLUDE"])
        .arg(&st.data)
        .arg("--DESTINATION")
        .arg(&dest))
    .expect(0);
    let artifact = PathBuf::from(out.json()["artifacts"][0]["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&artifact).unwrap().uid(), ids(USER).0);
    let listing = Command::new("tar").arg("tzf").arg(&artifact).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("rootonly/secret.key") && listing.contains("other/sub/deep.txt"), "{listing}");
}

/// Pids of processes whose argv[0] is `program`.
fn pids_of(program: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).next().is_some_and(|a0| a0 == program.as_bytes()))
        })
        .filter(|pid| nc_backup_e2e::alive(*pid))
        .collect()
}

/// SIGKILL to the runner mid-archive: the reader (behind sudo, whose exec cleared the
/// parent-death signal) stops within a second, leaves nothing that looks like an archive, and
/// the next night runs.
#[test]
fn a_killed_runner_takes_its_reader_behind_sudo_with_it() {
    let st = setup(false);
    let _rule = SudoRule::install(&st.reader);
    let chunk = pseudo_random(32 << 20, 11);
    for i in 0..10 {
        std::fs::create_dir_all(st.data.join("bulk")).unwrap();
        std::fs::write(st.data.join(format!("bulk/{i}.bin")), &chunk).unwrap();
    }
    let w = st.home.join("work");
    let dest = w.join("files");
    let conf = write_config(
        &st,
        general(&st, "sudo"),
        &[
            (
                "FILES",
                json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {"FILESET_INCLUDE": st.data, "DESTINATION": dest}}),
            ),
            (
                "ENCRYPTION",
                json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                    "KEY_FILE": st.home.join("key_file"), "OBJECTIVES": dest,
                    "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
            ),
            (
                "STORAGE",
                json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                    "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": st.home.join("backups"),
                    "REMOVE_OBJECTIVES": "True"}}),
            ),
        ],
    );
    let mut runner = as_user(&bin("backup-runner"), &st.home)
        .args(["-r", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reader = st.reader.display().to_string();
    let mut found = Vec::new();
    assert!(
        nc_backup_e2e::wait_for(std::time::Duration::from_secs(20), || {
            found = pids_of(&reader);
            !found.is_empty()
        }),
        "the reader never started"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        found.iter().all(|p| nc_backup_e2e::alive(*p)),
        "the reader ended before the runner was killed: data too small"
    );
    runner.kill().unwrap();
    runner.wait().unwrap();
    let stopped = nc_backup_e2e::wait_for(std::time::Duration::from_secs(3), || {
        found.iter().all(|p| !nc_backup_e2e::alive(*p))
            && pids_of("sudo").iter().all(|p| {
                !std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&reader))
            })
    });
    let state = |p: &u32| {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        format!("{status}\n{}", String::from_utf8_lossy(&env).replace('\0', " "))
    };
    assert!(
        stopped,
        "the reader {found:?} outlived its killed runner: {:?}",
        found.iter().map(state).collect::<Vec<_>>()
    );
    let complete: Vec<_> = std::fs::read_dir(&dest)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| !(n.to_string_lossy().starts_with('.') && n.to_string_lossy().contains(".partial-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(complete.is_empty(), "left what looks like an archive: {complete:?}");

    // The night after, with no hand work: the killed night is settled (it had finished no
    // section), this one is stored whole and reads back.
    let out = runner_as_user(&st, &["-r", "--json"], &conf).expect(0);
    let report = out.json();
    let settled: Vec<&str> =
        report["recovered"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(settled, ["abandoned"], "{report:#}");
    let run_id = report["run_id"].as_str().unwrap();
    let verified = runner_as_user(&st, &["verify", "--read-data", "--run", run_id], &conf).expect(0);
    assert!(verified.stdout.contains(run_id), "{}", verified.stdout);
}
