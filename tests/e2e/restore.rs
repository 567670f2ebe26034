//! `backup-runner runs | verify | restore`: real files and a real MariaDB dump backed up
//! through the whole pipeline (filesbackup, mysql-dump, compression, encryption in parts) to a
//! local folder and to Garage, then restored into an empty folder and compared: content and
//! metadata, the dump loaded back into MariaDB. verify catches a deleted and a flipped part;
//! restore falls back to the next destination, and writes nothing outside its folder.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nc_backup_e2e::{Out, Sandbox, Servers, aws, bin, cmd, run, unique};

use crate::db::{make_mysql_db, my_admin, my_creds, mysql_restore_matches};

/// backup-runner with the S3 credentials in its environment (the standard AWS chain).
fn runner(s: &Servers) -> Command {
    let mut c = cmd(&bin("backup-runner"));
    c.env("AWS_ACCESS_KEY_ID", s.var("NCB_S3_ACCESS_KEY"))
        .env("AWS_SECRET_ACCESS_KEY", s.var("NCB_S3_SECRET_KEY"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Files with the metadata a restore must bring back.
fn make_data(root: &Path) {
    let w = |rel: &str, bytes: &[u8], mode: u32, mtime: i64| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(mtime).unwrap());
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
    };
    w("etc/app.conf", b"key = value\n", 0o640, 1_600_000_000);
    w("etc/secret.key", b"not really\n", 0o600, 1_600_000_100);
    w("bin/tool.sh", b"#!/bin/sh\necho hi\n", 0o755, 1_600_000_200);
    let mut big = Vec::with_capacity(3 << 20);
    let mut x = 7u32;
    for _ in 0..(3 << 20) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.push((x % 251) as u8);
    }
    w("var/data/blob.bin", &big, 0o644, 1_600_000_300);
    std::fs::create_dir_all(root.join("var/empty")).unwrap();
    std::os::unix::fs::symlink("../etc/app.conf", root.join("bin/conf-link")).unwrap();
    std::fs::hard_link(root.join("etc/app.conf"), root.join("etc/app.conf.hard")).unwrap();
}

/// Every entry under `a` is under `b` with the same type, mode, mtime, content or target.
pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0;
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let (ma, mb) = (std::fs::symlink_metadata(a.join(&r)).unwrap(), std::fs::symlink_metadata(b.join(&r)));
            let mb = mb.unwrap_or_else(|e| panic!("{} not restored: {e}", r.display()));
            assert_eq!(ma.file_type(), mb.file_type(), "{}: type", r.display());
            seen += 1;
            if ma.file_type().is_symlink() {
                assert_eq!(std::fs::read_link(a.join(&r)).unwrap(), std::fs::read_link(b.join(&r)).unwrap());
                continue;
            }
            assert_eq!(ma.mode(), mb.mode(), "{}: mode", r.display());
            assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{}: owner", r.display());
            if ma.is_dir() {
                stack.push(r);
                continue;
            }
            assert_eq!(ma.mtime(), mb.mtime(), "{}: mtime", r.display());
            assert_eq!(
                std::fs::read(a.join(&r)).unwrap(),
                std::fs::read(b.join(&r)).unwrap(),
                "{}: content",
                r.display()
            );
        }
    }
    assert!(seen >= 10, "compared only {seen} entries");
}

/// The pipeline a server would run: files and a database, compressed, encrypted in 1 MiB
/// parts, stored in a local folder and in Garage.
fn backup_config(sb: &Sandbox, s: &Servers, db: &str, prefix: &str) -> PathBuf {
    let creds = my_creds(sb, s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    let w = sb.join("work");
    sb.config(&[
        (
            "FILESET",
            serde_json::json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "DBSBACKUP",
            serde_json::json!({"ACTION": "execute", "NAME": "mysql_backup", "PARAMETERS": {
                "CREDENTIAL_PATH": creds, "MY_INSTANCES": s.var("NCB_MYSQL_PORT"), "HOST": "127.0.0.1",
                "DATABASES": db, "DESTINATION": w.join("mysql")}}),
        ),
        (
            "COMPRESSION",
            serde_json::json!({"ACTION": "execute", "NAME": "compression", "PARAMETERS": {
                "OBJECTIVES": w.join("files"), "DESTINATION": w.join("compressed"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "ENCRYPTION",
            serde_json::json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "FILE_SIZE": "1",
                "OBJECTIVES": format!("{} {}", w.join("compressed").display(), w.join("mysql").display()),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("encrypted"), "DESTINATION": ["local", "s3"], "PATH": sb.join("backups"),
                "BUCKET_NAME": s.var("NCB_S3_BUCKET"), "REGION": s.var("NCB_S3_REGION"),
                "ENDPOINT_URL": s.var("NCB_S3_ENDPOINT"), "PREFIX": prefix, "REMOVE_OBJECTIVES": "True"}}),
        ),
    ])
}

fn dump_in(dir: &Path, db: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{db}_")))
        .collect();
    assert_eq!(found.len(), 1, "dump of {db} in {}: {found:?}", dir.display());
    found[0].clone()
}

#[test]
fn garage_restore_round_trip_verify_faults_and_fallback() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let db = make_mysql_db(&s);
    make_data(&sb.join("data"));
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    let prefix = unique("ncbrestore");
    let conf = backup_config(&sb, &s, &db, &prefix);
    let report = run(runner(&s).arg("-r").arg("-c").arg(&conf).arg("--json")).expect(0).json();
    let run_id = report["run_id"].as_str().unwrap().to_owned();

    // runs: the run, complete, in both destinations.
    let runs = run(runner(&s).arg("runs").arg("-c").arg(&conf).arg("--json")).expect(0).json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["run_id"] == run_id.as_str() && r["complete"] == true), "{runs:?}");

    // Restore everything from the first destination (local) into an empty folder.
    let to = sb.join("restored");
    let out = run(runner(&s).arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to).arg("--json")).expect(0);
    assert!(out.json()["destination"].as_str().unwrap().starts_with("local "), "{}", out.stdout);
    let data_in = to.join(sb.join("data").strip_prefix("/").unwrap());
    assert_same_tree(&sb.join("data"), &data_in);
    let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(data_in.join("etc/app.conf")), ino(data_in.join("etc/app.conf.hard")), "hard link lost");
    assert!(!to.join("files").exists(), "compression's folder of archives left behind");
    let dump = dump_in(&to, &db);
    assert!(dump.extension().unwrap() == "sql", "dump not decompressed: {}", dump.display());
    let gz = sb.join("dump.sql.gz");
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -c {} > {}", dump.display(), gz.display()))
            .status()
            .unwrap()
            .success()
    );
    mysql_restore_matches(&s, &db, &gz, true);
    let leftovers: Vec<_> = std::fs::read_dir(&to).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!leftovers.iter().any(|n| n.to_string_lossy().starts_with(".ncb-restore")), "{leftovers:?}");

    // A non-empty folder is refused (exit 2); --only restores one section's data alone.
    let e = run(runner(&s).arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to)).expect(2);
    assert!(e.stderr.contains("not empty") && e.stderr.contains("--force"), "{}", e.stderr);
    let only = sb.join("only-db");
    run(runner(&s).arg("restore").arg("-c").arg(&conf).args(["--only", "DBSBACKUP", "--to"]).arg(&only)).expect(0);
    let names: Vec<String> =
        std::fs::read_dir(&only).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with(&format!("{db}_")) && names[0].ends_with(".sql"), "{names:?}");
    let bad = run(runner(&s).arg("restore").arg("-c").arg(&conf).args(["--only", "NOPE", "--to"]).arg(sb.join("x")))
        .expect(2);
    assert!(bad.stderr.contains("--only NOPE") && bad.stderr.contains("DBSBACKUP"), "{}", bad.stderr);

    // verify --read-data: every part read back and decrypted, in both destinations (the files
    // archive, its index, the dump).
    let v = run(runner(&s).arg("verify").arg("-c").arg(&conf).arg("--read-data").arg("--json")).expect(0).json();
    assert!(v.as_array().unwrap().iter().all(|x| x["decrypted"] == 3 && x["problems"].as_array().unwrap().is_empty()));

    // A random share: half of the three files (rounded up) read back in each destination.
    let v = run(runner(&s).arg("verify").arg("-c").arg(&conf).args([
        "--read-data-subset",
        "50%",
        "--run",
        "all",
        "--json",
    ]))
    .expect(0)
    .json();
    assert!(v.as_array().unwrap().iter().all(|x| x["read_items"] == 2 && x["items"] == 3), "{v}");
    let e = run(runner(&s).arg("verify").arg("-c").arg(&conf).args(["--read-data-subset", "0%"])).expect(2);
    assert!(e.stderr.contains("--read-data-subset"), "{}", e.stderr);

    // One flipped byte in a local part: sizes still agree, the read-back names the part.
    let local_run = sb.join(format!("backups/{prefix}/{run_id}"));
    let part = local_run.join("files.tar.gz.enc.001");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&part, &bytes).unwrap();
    run(runner(&s).arg("verify").arg("-c").arg(&conf)).expect(0);
    let quiet_ok = run(runner(&s).args(["-q", "verify", "-c"]).arg(&conf)).expect(0);
    assert_eq!((quiet_ok.stdout.as_str(), quiet_ok.stderr.as_str()), ("", ""), "-q verify is not silent");
    let v = run(runner(&s).arg("verify").arg("-c").arg(&conf).arg("--read-data")).expect(1);
    let quiet_bad = run(runner(&s).args(["-q", "verify", "-c"]).arg(&conf).arg("--read-data")).expect(1);
    assert!(quiet_bad.stdout.contains("FAILED  local") && !quiet_bad.stdout.contains("OK  s3"), "{}", quiet_bad.stdout);
    assert!(v.stdout.contains("FAILED  local") && v.stdout.contains("files.tar.gz.enc.001"), "{}", v.stdout);
    assert!(v.stdout.contains("OK  s3"), "{}", v.stdout);
    // Without the key, the flip is still found by hashing.
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    doc.as_object_mut().unwrap().remove("ENCRYPTION");
    let nokey = sb.config_text("nokey.json", &doc.to_string());
    let v = run(runner(&s).arg("verify").arg("-c").arg(&nokey).arg("--read-data")).expect(1);
    assert!(v.stdout.contains("files.tar.gz.enc.001") && v.stdout.contains("damaged"), "{}", v.stdout);
    // Restoring encrypted files without the key: a config error (exit 2) before any download.
    let e = run(runner(&s).arg("restore").arg("-c").arg(&nokey).arg("--to").arg(sb.join("nokey"))).expect(2);
    assert!(e.stderr.contains("--key-file"), "{}", e.stderr);

    // restore: the local copy fails its check, the S3 copy is restored instead.
    let to2 = sb.join("restored2");
    let out = run(runner(&s).arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to2).arg("--json")).expect(0);
    assert!(out.stderr.contains("files.tar.gz.enc.001"), "{}", out.stderr);
    assert!(out.json()["destination"].as_str().unwrap().starts_with("s3://"), "{}", out.stdout);
    assert_same_tree(&sb.join("data"), &to2.join(sb.join("data").strip_prefix("/").unwrap()));

    // A part deleted from the bucket: verify names it; with both copies bad, restore fails
    // and leaves its folder empty.
    let key = format!("{prefix}/{run_id}/files.tar.gz.enc.002");
    aws(&s, &["s3", "rm", &format!("s3://{}/{key}", s.var("NCB_S3_BUCKET"))]);
    let v = run(runner(&s).arg("verify").arg("-c").arg(&conf)).expect(1);
    assert!(v.stdout.contains("files.tar.gz.enc.002: missing"), "{}", v.stdout);
    let to3 = sb.join("restored3");
    let out = run(runner(&s).arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to3)).expect(1);
    assert!(out.stderr.contains("failed from every destination"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&to3).unwrap().count(), 0, "a failed restore left files");
    my_admin(&s, &format!("DROP DATABASE {db}"));
}

/// The run manifest carries a MAC under the encryption key: altered in the bucket, it is
/// refused by verify and restore.
#[test]
fn an_altered_run_manifest_is_refused() {
    let sb = Sandbox::new();
    sb.write("data/a.txt", b"alpha\n");
    sb.write("data/notes/b.txt", b"beta\n");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    let w = sb.join("work");
    let conf = sb.config(&[
        (
            "FILESET",
            serde_json::json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "ENCRYPTION",
            serde_json::json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "OBJECTIVES": w.join("files"), "DESTINATION": w.join("enc"),
                "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("enc"), "DESTINATION": "local", "PATH": sb.join("backups")}}),
        ),
    ]);
    let report = run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).arg("--json")).expect(0).json();
    let run_id = report["run_id"].as_str().unwrap();
    let mpath = sb.join(format!("backups/testhost/{run_id}/RUN-MANIFEST.json"));
    let text = std::fs::read_to_string(&mpath).unwrap();
    assert!(text.contains("\"mac\""), "no MAC in the run manifest:\n{text}");
    let v = run(cmd(&bin("backup-runner")).arg("verify").arg("-c").arg(&conf).arg("--read-data")).expect(0);
    assert!(v.stdout.contains("authenticated by the key"), "{}", v.stdout);
    // One field changed, the file otherwise intact.
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["host"] = serde_json::json!("elsewhere");
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let v = run(cmd(&bin("backup-runner")).arg("verify").arg("-c").arg(&conf).arg("--read-data")).expect(1);
    assert!(v.stdout.contains("fails its authentication"), "{}", v.stdout);
    let out =
        run(cmd(&bin("backup-runner")).arg("restore").arg("-c").arg(&conf).arg("--to").arg(sb.join("r"))).expect(1);
    assert!(out.stderr.contains("fails its authentication"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(sb.join("r")).unwrap().count(), 0);
    // The MAC removed: refused too, unless the run is declared stored without a key.
    m.as_object_mut().unwrap().remove("mac");
    m["host"] = serde_json::json!("testhost");
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let restore = |extra: &[&str]| {
        run(cmd(&bin("backup-runner")).arg("restore").arg("-c").arg(&conf).args(extra).arg("--to").arg(sb.join("r")))
    };
    let out = restore(&[]).expect(1);
    assert!(out.stderr.contains("has no MAC"), "{}", out.stderr);
    restore(&["--allow-unsigned"]).expect(0);
    let restored = sb.join("r").join(sb.join("data/notes/b.txt").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored).unwrap(), b"beta\n");
}

/// A tar.gz crafted to escape: `../`, an absolute name, an outward symlink and a file written
/// through it, a hard link out. Stored as a run, restored: nothing lands outside the folder.
#[test]
fn restore_of_a_hostile_archive_writes_nothing_outside() {
    let sb = Sandbox::new();
    let outside = sb.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let evil = sb.join("evil");
    std::fs::create_dir_all(evil.join("src/sub")).unwrap();
    std::fs::write(evil.join("src/ok.txt"), "fine").unwrap();
    let script = format!(
        r#"set -e
cd {evil}
printf 'x' > esc.txt
printf 'abs' > abs.txt
ln -s {outside} out
printf 'through' > through.txt
tar --format=gnu -cf a.tar -C src ok.txt
tar --format=gnu -rf a.tar --transform 's,^esc.txt$,../escape.txt,' esc.txt
tar --format=gnu -rf a.tar -P --transform 's,^abs.txt$,{outside}/abs.txt,' abs.txt
tar --format=gnu -rf a.tar out
tar --format=gnu -rf a.tar --transform 's,^through.txt$,out/through.txt,' through.txt
mkdir -p store && gzip -c a.tar > store/evil.tar.gz"#,
        evil = evil.display(),
        outside = outside.display()
    );
    let st = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let listing = Command::new("tar").arg("-tvzf").arg(evil.join("store/evil.tar.gz")).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("../escape.txt") && listing.contains("out ->"), "{listing}");
    let conf = sb.config(&[(
        "STORAGE",
        serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": evil.join("store"), "DESTINATION": "local", "PATH": sb.join("backups")}}),
    )]);
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf)).expect(0);
    let to = sb.join("to");
    let out: Out = run(cmd(&bin("backup-runner")).arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to)).expect(1);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "written outside: {}", out.stderr);
    assert!(!sb.path().join("escape.txt").exists());
    assert!(out.stderr.contains("../escape.txt") && out.stderr.contains("refused"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(to.join("ok.txt")).unwrap(), "fine");
    // The absolute name comes back inside, its leading / dropped.
    assert_eq!(std::fs::read_to_string(to.join(outside.strip_prefix("/").unwrap()).join("abs.txt")).unwrap(), "abs");
    // out/through.txt made `out` a real folder, so the outward symlink was refused.
    assert!(std::fs::symlink_metadata(to.join("out")).unwrap().is_dir());

    // A folder others may write to (no sticky bit) on the way is refused before anything runs.
    let shared = sb.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out =
        run(cmd(&bin("backup-runner")).arg("restore").arg("-c").arg(&conf).arg("--to").arg(shared.join("r"))).expect(2);
    assert!(out.stderr.contains("writable by others"), "{}", out.stderr);
    assert!(!shared.join("r").exists(), "created before the check");
}

#[test]
fn one_entry_that_cannot_be_created_costs_that_entry_only() {
    let sb = Sandbox::new();
    let src = sb.join("src");
    std::fs::create_dir_all(src.join("store")).unwrap();
    std::fs::write(src.join("ok.txt"), "fine").unwrap();
    std::fs::write(src.join("long.txt"), "too long a name").unwrap();
    // A name of 300 bytes in one component: no Linux file system takes it (ENAMETOOLONG).
    let long = "n".repeat(300);
    let script = format!(
        r#"set -e
cd {src}
tar --format=gnu -cf a.tar --transform 's,^long.txt$,{long},' long.txt ok.txt
gzip -c a.tar > store/files.tar.gz
printf 'plain dump\n' > store/db.sql
printf 'compressed dump\n' | gzip -c > store/db.sql.gz"#,
        src = src.display()
    );
    let st = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let conf = sb.config(&[(
        "STORAGE",
        serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": src.join("store"), "DESTINATION": "local", "PATH": sb.join("backups")}}),
    )]);
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf)).expect(0);
    let to = sb.join("to");
    let out = run(cmd(&bin("backup-runner")).arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to)).expect(1);
    assert!(out.stderr.contains(&long) && out.stderr.contains("File name too long"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(to.join("ok.txt")).unwrap(), "fine");
    // db.sql beside db.sql.gz: both come back, the compressed one as it was stored.
    assert_eq!(std::fs::read_to_string(to.join("db.sql")).unwrap(), "plain dump\n");
    let gz = Command::new("gzip").arg("-dc").arg(to.join("db.sql.gz")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&gz.stdout), "compressed dump\n");
}
