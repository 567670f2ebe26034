//! The night after: a run that failed, was killed or found nothing never blocks, pollutes or
//! destroys the next one. Each test makes one night go wrong for real (a destination that
//! cannot be written, kill -9 mid-stage, a killed runner), then runs the next night with no
//! hand work and checks that both nights' data are stored, verified and restorable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nc_backup_e2e::{Out, Sandbox, alive, bin, cmd, fixture, run, wait_for};
use serde_json::{Value, json};

/// nc-backup-py's layout: every section shares fixed folders in WORK_FOLDER.
fn pipeline(sb: &Sandbox, store: &Path) -> PathBuf {
    let w = sb.join("work");
    sb.config(&[
        (
            "FILESET",
            json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "COMPRESSION",
            json!({"ACTION": "execute", "NAME": "compression", "PARAMETERS": {
                "OBJECTIVES": w.join("files"), "DESTINATION": w.join("compressed"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "ENCRYPTION",
            json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "FILE_SIZE": "1", "OBJECTIVES": w.join("compressed"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": store,
                "REMOVE_OBJECTIVES": "True", "KEEP_LAST": "5"}}),
        ),
    ])
}

fn setup(sb: &Sandbox) {
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    sb.write("data/night.txt", b"night 1\n");
    sb.write("data/docs/a.txt", &b"alpha ".repeat(50_000));
}

/// Waits for the next second: run ids (and so the order of runs) count whole seconds.
fn next_second() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())) + Duration::from_millis(5));
}

fn runner(conf: &Path) -> Command {
    next_second();
    let mut c = cmd(&bin("backup-runner"));
    c.arg("-r").arg("-c").arg(conf).arg("--json");
    c
}

fn sub(conf: &Path, args: &[&str]) -> Out {
    run(cmd(&bin("backup-runner")).args(&args[..1]).arg("-c").arg(conf).args(&args[1..]))
}

/// The complete runs the config's destinations hold, oldest first.
fn complete_runs(conf: &Path) -> Vec<String> {
    let list = sub(conf, &["runs", "--json"]).expect(0).json();
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["complete"].as_bool() == Some(true))
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Restores `run` and returns the folder holding the data as it was backed up.
fn restore(sb: &Sandbox, conf: &Path, run: &str) -> PathBuf {
    let to = sb.join(format!("restore-{run}"));
    sub(conf, &["restore", "--run", run, "--to", to.to_str().unwrap()]).expect(0);
    to.join(sb.join("data").strip_prefix("/").unwrap())
}

/// Nothing of an earlier run is left in WORK_FOLDER's shared folders, aside, or pending.
fn assert_work_clean(sb: &Sandbox) {
    let top: Vec<String> = std::fs::read_dir(sb.join("work"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ncb-lineage-") || n.starts_with(".ncb-secret-"))
        .collect();
    assert!(top.is_empty(), "left in WORK_FOLDER: {top:?}");
    for d in ["files", "compressed", "encrypted", ".ncb-journal"] {
        let p = sb.join("work").join(d);
        let left: Vec<_> =
            std::fs::read_dir(&p).map(|e| e.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{} still holds {left:?}", p.display());
    }
    let aside = sb.join("work/.ncb-aside");
    let files = walk(&aside);
    assert!(files.is_empty(), "set aside and never taken back: {files:?}");
    let folders: Vec<_> =
        std::fs::read_dir(&aside).map(|e| e.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(folders.is_empty(), "folders left aside: {folders:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn recovered(report: &Value) -> Vec<(String, String)> {
    report["recovered"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| (r["run_id"].as_str().unwrap().to_owned(), r["outcome"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Night 2 after a night 1 that went wrong: succeeds with no hand work, both nights stored,
/// verified with every part decrypted, and night 1 restores as it was.
fn next_night_completes_both(sb: &Sandbox, conf: &Path, night1: &str, outcome: &str) {
    std::fs::write(sb.join("data/night.txt"), b"night 2\n").unwrap();
    let out = run(&mut runner(conf)).expect(0);
    let report = out.json();
    assert_eq!(recovered(&report), [(night1.to_owned(), outcome.to_owned())], "{report:#}");
    let night2 = report["run_id"].as_str().unwrap().to_owned();
    let runs = complete_runs(conf);
    if outcome == "completed" {
        assert_eq!(runs, [night1.to_owned(), night2.clone()]);
        assert_eq!(std::fs::read(restore(sb, conf, night1).join("night.txt")).unwrap(), b"night 1\n");
    } else {
        assert_eq!(runs, std::slice::from_ref(&night2));
    }
    sub(conf, &["verify", "--run", "all", "--read-data"]).expect(0);
    let n2 = restore(sb, conf, &night2);
    assert_eq!(std::fs::read(n2.join("night.txt")).unwrap(), b"night 2\n");
    let names: Vec<String> = walk(&n2).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".partial-")), "a temporary was backed up: {names:?}");
    assert_work_clean(sb);
}

#[test]
fn a_destination_down_for_a_night_is_stored_the_next_night() {
    let sb = Sandbox::new();
    setup(&sb);
    // Night 1: the destination is under a regular file, so storage cannot write it.
    sb.write("blocker", b"a file, not a folder");
    let conf = pipeline(&sb, &sb.join("blocker/store"));
    let out = run(&mut runner(&conf)).expect(1);
    let night1 = out.json()["run_id"].as_str().unwrap().to_owned();
    assert!(out.stderr.contains("STORAGE"), "{}", out.stderr);
    assert!(sb.join(format!("work/.ncb-journal/{night1}.json")).is_file(), "no journal kept for the failed run");
    // Night 2: the destination is back (the config fixed); the stranded run is stored first.
    let conf = pipeline(&sb, &sb.join("store"));
    next_night_completes_both(&sb, &conf, &night1, "completed");
}

#[test]
fn a_destination_down_two_nights_keeps_both_runs_aside_until_it_is_back() {
    let sb = Sandbox::new();
    setup(&sb);
    sb.write("blocker", b"x");
    let bad = pipeline(&sb, &sb.join("blocker/store"));
    let night1 = run(&mut runner(&bad)).expect(1).json()["run_id"].as_str().unwrap().to_owned();
    std::fs::write(sb.join("data/night.txt"), b"night 2\n").unwrap();
    let report = run(&mut runner(&bad)).expect(1).json();
    let night2 = report["run_id"].as_str().unwrap().to_owned();
    assert_eq!(recovered(&report), [(night1.clone(), "pending".to_owned())], "{report:#}");
    // Both nights wait: night 1 aside, night 2 in place; tonight's encryption was not blocked.
    assert!(!walk(&sb.join(format!("work/.ncb-aside/{night1}"))).is_empty());
    assert_eq!(report["sections"][2]["status"], "ok", "encryption blocked by leftovers: {report:#}");
    std::fs::write(sb.join("data/night.txt"), b"night 3\n").unwrap();
    let good = pipeline(&sb, &sb.join("store"));
    let report = run(&mut runner(&good)).expect(0).json();
    let night3 = report["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        recovered(&report),
        [(night1.clone(), "completed".to_owned()), (night2.clone(), "completed".to_owned())],
        "{report:#}"
    );
    assert_eq!(complete_runs(&good), [night1.clone(), night2.clone(), night3.clone()]);
    sub(&good, &["verify", "--run", "all", "--read-data"]).expect(0);
    for (run, text) in [(&night1, "night 1\n"), (&night2, "night 2\n"), (&night3, "night 3\n")] {
        assert_eq!(std::fs::read(restore(&sb, &good, run).join("night.txt")).unwrap(), text.as_bytes(), "{run}");
    }
    assert_work_clean(&sb);
}

/// Starts a night in its own process group and SIGKILLs the group once `cond` holds.
fn kill_night_when(conf: &Path, what: &str, mut cond: impl FnMut() -> bool) -> String {
    let mut c = runner(conf);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut child: Child = c.spawn().unwrap();
    let hit = wait_for(Duration::from_secs(60), &mut cond);
    let pgid = child.id();
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
    let _ = child.wait();
    assert!(hit, "the night ended before {what}");
    // The run id of the killed night: its journal's name.
    let journals: Vec<String> = std::fs::read_dir(conf.parent().unwrap().join("work/.ncb-journal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".json").to_owned())
        .collect();
    let listing = walk(&conf.parent().unwrap().join("work"));
    assert_eq!(journals.len(), 1, "{journals:?} in {listing:?}");
    journals[0].clone()
}

fn random_file(sb: &Sandbox, rel: &str, mib: usize) {
    let p = sb.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let ok = Command::new("head")
        .args(["-c", &format!("{}", mib << 20), "/dev/urandom"])
        .stdout(std::fs::File::create(&p).unwrap())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn has(dir: &Path, pred: impl Fn(&str) -> bool) -> bool {
    walk(dir).iter().any(|p| pred(&p.file_name().unwrap().to_string_lossy()))
}

#[test]
fn killed_in_filesbackup_its_temporary_is_never_backed_up() {
    let sb = Sandbox::new();
    setup(&sb);
    random_file(&sb, "data/big.bin", 96);
    let conf = pipeline(&sb, &sb.join("store"));
    let files = sb.join("work/files");
    let night1 = kill_night_when(&conf, "filesbackup wrote", || has(&files, |n| n.contains(".partial-")));
    std::fs::remove_file(sb.join("data/big.bin")).unwrap();
    // Nothing of night 1 was finished: there is nothing to complete, its temporary goes.
    next_night_completes_both(&sb, &conf, &night1, "abandoned");
}

#[test]
fn killed_in_encryption_the_run_is_encrypted_again_and_stored() {
    let sb = Sandbox::new();
    setup(&sb);
    random_file(&sb, "data/big.bin", 64);
    let conf = pipeline(&sb, &sb.join("store"));
    let enc = sb.join("work/encrypted");
    // Some parts committed, others not yet: half an encryption.
    let night1 = kill_night_when(&conf, "encryption wrote parts", || has(&enc, |n| n.ends_with(".enc.005")));
    assert!(!has(&enc, |n| n.ends_with(".manifest.json")), "killed too late");
    next_night_completes_both(&sb, &conf, &night1, "completed");
}

#[test]
fn killed_in_storage_the_run_is_stored_the_next_night() {
    let sb = Sandbox::new();
    setup(&sb);
    random_file(&sb, "data/big.bin", 64);
    let conf = pipeline(&sb, &sb.join("store"));
    let store = sb.join("store");
    let night1 = kill_night_when(&conf, "storage wrote", || has(&store, |n| n.contains(".enc.0")));
    // A copy cut short in the destination (as a kill mid-file leaves it).
    let run_dir = store.join(format!("testhost/{night1}"));
    std::fs::write(run_dir.join(".files.tar.gz.enc.001.partial-4194305-1"), b"half").unwrap();
    next_night_completes_both(&sb, &conf, &night1, "completed");
    assert!(!has(&store, |n| n.contains(".partial-")), "a temporary stays in the destination");
}

/// A night run under strace, which SIGKILLs whichever process unlinks `path` as it does
/// (fault injection at one exact step); the night must fail.
fn night_killed_at_unlink(conf: &Path, path: &Path) -> Out {
    let mut c = Command::new("strace");
    c.args(["-f", "-o", "/dev/null", "-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:signal=KILL", "-P"])
        .arg(path)
        .arg(bin("backup-runner"))
        .args(["-r", "--json", "-c"])
        .arg(conf)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    next_second();
    run(&mut c).expect(1)
}

/// A section run as a program: the recording fixture (sleeps when told to).
fn script_section() -> Value {
    json!({"ACTION": "execute", "NAME": "tests", "EXECUTABLE": fixture("record.sh")})
}

#[test]
fn one_work_folder_one_run_even_through_a_copy_of_the_config() {
    let sb = Sandbox::new();
    let rec = sb.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(rec.join("SLOW.sleep"), b"").unwrap();
    let conf = sb.config(&[("SLOW", script_section())]);
    let copy = sb.join("copy.json");
    std::fs::copy(&conf, &copy).unwrap();
    let mut first = runner(&conf).env("RECORD", &rec).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for(Duration::from_secs(20), || rec.join("SLOW.pid").is_file()));
    let out = run(runner(&copy).env("RECORD", &rec)).expect(1);
    assert!(out.stderr.contains("another run is in progress in WORK_FOLDER"), "{}", out.stderr);
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn a_killed_runner_takes_its_stage_with_it() {
    let sb = Sandbox::new();
    let rec = sb.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(rec.join("SLOW.sleep"), b"").unwrap();
    let conf = sb.config(&[("SLOW", script_section())]);
    let mut child = runner(&conf).env("RECORD", &rec).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for(Duration::from_secs(20), || rec.join("SLOW.pid").is_file()));
    let stage: u32 = std::fs::read_to_string(rec.join("SLOW.pid")).unwrap().trim().parse().unwrap();
    // SIGKILL to the runner alone: its stage is in a process group of its own.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_for(Duration::from_secs(10), || !alive(stage)), "the stage {stage} runs on without its runner");
    assert!(rec.join("SLOW.term").is_file(), "the stage was not sent SIGTERM");
    // What the stage started (its own child) outlived it; the next night stops it first.
    let grandchild: u32 = std::fs::read_to_string(rec.join("SLOW.grandchild")).unwrap().trim().parse().unwrap();
    assert!(alive(grandchild), "test is void: the stage's child died with it");
    std::fs::remove_file(rec.join("SLOW.sleep")).unwrap();
    let report = run(runner(&conf).env("RECORD", &rec)).expect(0).json();
    assert_eq!(recovered(&report).len(), 1, "{report:#}");
    assert_eq!(recovered(&report)[0].1, "abandoned");
    assert!(wait_for(Duration::from_secs(5), || !alive(grandchild)), "the killed night's process {grandchild} runs on");
}

#[test]
fn a_secret_left_by_a_killed_stage_is_gone_after_the_next_run() {
    let sb = Sandbox::new();
    sb.write("data/a", b"a");
    // A dump killed by SIGKILL leaves its option file; pid 2^22+1 is beyond pid_max's default.
    let stale = sb.write("work/.ncb-secret-4194305-mysql-dump-options-00ff", b"[client]\npassword=hunter2\n");
    // A secret in use: its process holds it locked (and is alive).
    let live = sb.write(&format!("work/.ncb-secret-{}-other-00ff", std::process::id()), b"x");
    let held = std::fs::File::open(&live).unwrap();
    held.lock().unwrap();
    // A secret of a process that is gone, whose pid was reused by a live one: nobody holds it.
    let reused = sb.write(&format!("work/.ncb-secret-{}-reused-00ff", std::process::id()), b"x");
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&reused).unwrap().set_modified(old).unwrap();
    // What a runner killed while writing its journal and lineage leaves.
    let journal_tmp = sb.write("work/.ncb-journal/.20261201T000000Z-abcd.json.partial-4194305-1a", b"{");
    let lineage_tmp = sb.write("work/..ncb-lineage-20261201T000000Z-abcd.json.partial-4194305-1b", b"{");
    let conf = sb.config(&[(
        "FILESET",
        json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
            "FILESET_INCLUDE": sb.join("data"), "DESTINATION": sb.join("work/files")}}),
    )]);
    run(&mut runner(&conf)).expect(0);
    assert!(!journal_tmp.exists() && !lineage_tmp.exists(), "a killed runner's temporaries stay");
    assert!(!stale.exists(), "the killed stage's secret is still on disk");
    assert!(!reused.exists(), "a secret nobody holds survived because its pid was reused");
    assert!(live.exists(), "a secret in use was removed");
    drop(held);
}

#[test]
fn a_sigterm_in_storage_stops_the_night_and_the_next_one_stores_it() {
    let sb = Sandbox::new();
    setup(&sb);
    random_file(&sb, "data/big.bin", 64);
    let conf = pipeline(&sb, &sb.join("store"));
    let store = sb.join("store");
    let mut c = runner(&conf);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    assert!(wait_for(Duration::from_secs(60), || has(&store, |n| n.contains(".enc.0"))), "storage never started");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = Out::from(child.wait_with_output().unwrap()).expect(1);
    let report = out.json();
    assert_eq!(report["status"], "interrupted", "{report:#}");
    let night1 = report["run_id"].as_str().unwrap().to_owned();
    assert!(
        !sb.join(format!("store/testhost/{night1}/RUN-MANIFEST.json")).exists(),
        "an interrupted run looks complete"
    );
    next_night_completes_both(&sb, &conf, &night1, "completed");
}

#[test]
fn a_dump_killed_mid_run_leaves_no_secret_after_the_next_night() {
    let s = nc_backup_e2e::Servers::get();
    let sb = Sandbox::new();
    let db = crate::db::make_mysql_db(&s);
    // Enough rows for mysqldump to take a few seconds.
    crate::db::my_admin(
        &s,
        &format!(
            "USE {db}; INSERT INTO items(name, price, note) SELECT CONCAT('bulk', seq), seq % 100, REPEAT('y', 200) FROM seq_1_to_300000"
        ),
    );
    let creds = crate::db::my_creds(&sb, &s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    let work = sb.join("work");
    let conf = sb.config(&[(
        "DBSBACKUP",
        json!({"ACTION": "execute", "NAME": "mysql-dump", "PARAMETERS": {
            "CREDENTIAL_PATH": creds, "HOST": "127.0.0.1", "PORT": s.var("NCB_MYSQL_PORT"),
            "DATABASES": db, "DESTINATION": &work, "PREFIX_FOLDER": "mydump"}}),
    )]);
    let secrets = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|e| e.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<String>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|n: &String| n.starts_with(".ncb-secret-"))
            .collect()
    };
    let mydump = work.join("mydump");
    let night1 = kill_night_when(&conf, "the dump was under way", || {
        !secrets(&work).is_empty() && has(&mydump, |n| n.contains(".partial-"))
    });
    assert!(wait_for(Duration::from_secs(5), || !secrets(&work).is_empty()), "no option file to sweep: test is void");
    assert_eq!(secrets(&work).len(), 1, "the killed dump left its option file: {:?}", secrets(&work));
    let report = run(&mut runner(&conf)).expect(0).json();
    assert_eq!(recovered(&report), [(night1, "abandoned".to_owned())], "{report:#}");
    assert!(secrets(&work).is_empty(), "a secret is still in WORK_FOLDER: {:?}", secrets(&work));
    let dumps: Vec<_> = walk(&mydump);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    assert!(!dumps[0].to_string_lossy().contains(".partial-"), "{dumps:?}");
}

// ---- The night after, in the corners a review found ----

fn section(name: &str, params: Value) -> Value {
    json!({"ACTION": "execute", "NAME": name, "PARAMETERS": params})
}

fn files_section(sb: &Sandbox, dest: &str) -> Value {
    section("filesbackup", json!({"FILESET_INCLUDE": sb.join("data"), "DESTINATION": sb.join("work").join(dest)}))
}

fn tail_sections(sb: &Sandbox, objectives: &str, store: &Path) -> Vec<(&'static str, Value)> {
    let w = sb.join("work");
    let objectives: Vec<String> = objectives.split(' ').map(|o| w.join(o).display().to_string()).collect();
    vec![
        (
            "COMPRESSION",
            section(
                "compression",
                json!({"OBJECTIVES": objectives.join(" "), "DESTINATION": w.join("compressed"), "REMOVE_OBJECTIVES": "True"}),
            ),
        ),
        (
            "ENCRYPTION",
            section(
                "encryption",
                json!({"KEY_FILE": sb.join("key_file"), "FILE_SIZE": "1", "OBJECTIVES": w.join("compressed"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}),
            ),
        ),
        (
            "STORAGE",
            section(
                "storage",
                json!({"OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": store,
                "REMOVE_OBJECTIVES": "True", "KEEP_LAST": "5"}),
            ),
        ),
    ]
}

/// A mysql-dump section into WORK_FOLDER/mydump with the credentials in `creds`.
fn dump_section(sb: &Sandbox, s: &nc_backup_e2e::Servers, db: &str, creds: &Path, extra: Value) -> Value {
    let mut v = section(
        "mysql-dump",
        json!({"CREDENTIAL_PATH": creds, "HOST": "127.0.0.1", "PORT": s.var("NCB_MYSQL_PORT"), "DATABASES": db,
            "DESTINATION": sb.join("work"), "PREFIX_FOLDER": "mydump"}),
    );
    if let Value::Object(m) = extra {
        v.as_object_mut().unwrap().extend(m);
    }
    v
}

fn set_creds(path: &Path, password: &str) {
    std::fs::write(path, format!("[client]\nuser=ncbadmin\npassword={password}\n")).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(path).unwrap().permissions(), 0o600);
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[test]
fn a_dump_failing_under_continue_never_costs_the_files_made_after_it() {
    let s = nc_backup_e2e::Servers::get();
    let sb = Sandbox::new();
    setup(&sb);
    let db = crate::db::make_mysql_db(&s);
    let creds = sb.join("mysql.credentials");
    set_creds(&creds, "wrong-password");
    sb.write("blocker", b"x");
    let build = |store: &Path| {
        let mut all = vec![
            ("FILESET", files_section(&sb, "files")),
            ("DBSBACKUP", dump_section(&sb, &s, &db, &creds, json!({"ON_FAILURE": "continue"}))),
        ];
        all.extend(tail_sections(&sb, "files", store));
        sb.config(&all)
    };
    // Night 1: the dump fails (and the night goes on), then the destination is unreachable.
    let conf = build(&sb.join("blocker/store"));
    let night1 = run(&mut runner(&conf)).expect(1).json()["run_id"].as_str().unwrap().to_owned();
    assert!(has(&sb.join("work/encrypted"), |n| n.ends_with(".enc.000")));
    // Night 2: the destination is back (the dump still fails): night 1's parts are stored.
    std::fs::write(sb.join("data/night.txt"), b"night 2\n").unwrap();
    let conf = build(&sb.join("store"));
    let report = run(&mut runner(&conf)).expect(1).json();
    assert_eq!(recovered(&report), [(night1.clone(), "completed".to_owned())], "{report:#}");
    let detail = report["recovered"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("without DBSBACKUP"), "{detail}");
    let night2 = report["run_id"].as_str().unwrap().to_owned();
    assert_eq!(complete_runs(&conf), [night1.clone(), night2]);
    sub(&conf, &["verify", "--run", "all", "--read-data"]).expect(0);
    assert_eq!(std::fs::read(restore(&sb, &conf, &night1).join("night.txt")).unwrap(), b"night 1\n");
}

#[test]
fn a_completed_night_without_its_dump_never_costs_the_last_good_run() {
    let s = nc_backup_e2e::Servers::get();
    let sb = Sandbox::new();
    setup(&sb);
    let db = crate::db::make_mysql_db(&s);
    let creds = sb.join("mysql.credentials");
    set_creds(&creds, &s.var("NCB_MYSQL_PASSWORD"));
    let mut all =
        vec![("FILESET", files_section(&sb, "files")), ("DBSBACKUP", dump_section(&sb, &s, &db, &creds, json!({})))];
    let mut tail = tail_sections(&sb, "files mydump", &sb.join("store"));
    tail[2].1["PARAMETERS"]["KEEP_LAST"] = json!("1");
    all.extend(tail);
    let conf = sb.config(&all);
    // Night 0 stores everything; KEEP_LAST 1 keeps only the newest complete run.
    let night0 = run(&mut runner(&conf)).expect(0).json()["run_id"].as_str().unwrap().to_owned();
    // Nights 1 and 2: the database refuses the backup user; each stops at the dump.
    set_creds(&creds, "wrong-password");
    let night1 = run(&mut runner(&conf)).expect(1).json()["run_id"].as_str().unwrap().to_owned();
    let report = run(&mut runner(&conf)).expect(1).json();
    // Night 1 is completed without its dump, and stored; its retention did not run: night 0,
    // the last run with the database, is still there.
    assert_eq!(recovered(&report), [(night1.clone(), "completed".to_owned())], "{report:#}");
    assert_eq!(complete_runs(&conf), [night0.clone(), night1]);
    sub(&conf, &["verify", "--run", "all", "--read-data"]).expect(0);
    let n0 = sb.join("restore-night0");
    sub(&conf, &["restore", "--run", &night0, "--only", "DBSBACKUP", "--to", n0.to_str().unwrap()]).expect(0);
    assert!(!walk(&n0).is_empty(), "night 0's dump is gone");
}

#[test]
fn killed_while_removing_its_inputs_the_section_is_adopted_and_finished() {
    let sb = Sandbox::new();
    setup(&sb);
    sb.write("other/o.txt", b"the other folder\n");
    let other =
        section("filesbackup", json!({"FILESET_INCLUDE": sb.join("other"), "DESTINATION": sb.join("work/other")}));
    let mut all = vec![("FILESET", files_section(&sb, "files")), ("OTHER", other)];
    all.extend(tail_sections(&sb, "files other", &sb.join("store")));
    let conf = sb.config(&all);
    // Encryption removes its inputs one by one once every output is durable: kill it as it
    // removes the second (strace injects SIGKILL into that very unlink).
    let second = sb.join("work/compressed/other.tar.gz");
    let out = night_killed_at_unlink(&conf, &second);
    let night1 = out.json()["run_id"].as_str().unwrap().to_owned();
    assert!(out.stderr.contains("ENCRYPTION") && out.stderr.contains("SIGKILL"), "{}", out.stderr);
    assert!(!sb.join("work/compressed/files.tar.gz").exists() && second.exists(), "killed at the wrong moment");
    std::fs::write(sb.join("data/night.txt"), b"night 2\n").unwrap();
    let report = run(&mut runner(&conf)).expect(0).json();
    assert_eq!(recovered(&report), [(night1.clone(), "completed".to_owned())], "{report:#}");
    let cleaned = report["recovered"][0]["cleaned"].to_string();
    assert!(cleaned.contains("other.tar.gz"), "the consumed input was not removed: {cleaned}");
    assert_work_clean(&sb);
    sub(&conf, &["verify", "--run", "all", "--read-data"]).expect(0);
    let n1 = restore(&sb, &conf, &night1);
    assert_eq!(std::fs::read(n1.join("night.txt")).unwrap(), b"night 1\n");
    let o = sb.join(format!("restore-{night1}")).join(sb.join("other/o.txt").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(o).unwrap(), b"the other folder\n");
}

#[test]
fn a_storage_failing_under_continue_is_stored_the_next_night() {
    let sb = Sandbox::new();
    setup(&sb);
    sb.write("blocker", b"x");
    let build = |store: &Path| {
        let mut all = vec![("FILESET", files_section(&sb, "files"))];
        let mut tail = tail_sections(&sb, "files", store);
        tail[2].1.as_object_mut().unwrap().insert("ON_FAILURE".into(), json!("continue"));
        all.extend(tail);
        all.push((
            "SIZE",
            json!({"ACTION": "load", "NAME": "size-calc", "PARAMETERS": {"OBJECTIVES": sb.join("work/encrypted")}}),
        ));
        sb.config(&all)
    };
    let conf = build(&sb.join("blocker/store"));
    let report = run(&mut runner(&conf)).expect(1).json();
    assert_eq!(report["sections"][4]["status"], "ok", "{report:#}");
    let night1 = report["run_id"].as_str().unwrap().to_owned();
    let conf = build(&sb.join("store"));
    next_night_completes_both(&sb, &conf, &night1, "completed");
}

#[test]
fn a_run_of_another_config_sharing_the_work_folder_is_left_to_it() {
    let sb = Sandbox::new();
    setup(&sb);
    sb.write("blocker", b"x");
    let x = pipeline(&sb, &sb.join("blocker/store"));
    let xrun = run(&mut runner(&x)).expect(1).json()["run_id"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&x)
        .unwrap()
        .replace(&sb.join("blocker/store").display().to_string(), &sb.join("ystore").display().to_string());
    let y = sb.config_text("y.json", &text);
    let report = run(&mut runner(&y)).expect(0).json();
    assert_eq!(recovered(&report), [(xrun.clone(), "deferred".to_owned())], "{report:#}");
    assert_eq!(complete_runs(&y), [report["run_id"].as_str().unwrap().to_owned()], "Y stored X's run");
    // X's own next night (its destination back) completes it.
    let text = std::fs::read_to_string(&x)
        .unwrap()
        .replace(&sb.join("blocker/store").display().to_string(), &sb.join("xstore").display().to_string());
    std::fs::write(&x, text).unwrap();
    let report = run(&mut runner(&x)).expect(0).json();
    assert_eq!(recovered(&report), [(xrun.clone(), "completed".to_owned())], "{report:#}");
    assert!(complete_runs(&x).contains(&xrun));
}

#[test]
fn storing_the_work_folder_itself_takes_and_removes_nothing_of_the_runner() {
    let sb = Sandbox::new();
    setup(&sb);
    let w = sb.join("work");
    let conf = sb.config(&[
        ("FILESET", section("filesbackup", json!({"FILESET_INCLUDE": sb.join("data"), "DESTINATION": &w}))),
        ("STORAGE", section("storage", json!({"OBJECTIVES": &w, "DESTINATION": "local", "PATH": sb.join("store"), "REMOVE_OBJECTIVES": "True"}))),
    ]);
    let report = run(&mut runner(&conf)).expect(0).json();
    let id = report["run_id"].as_str().unwrap();
    let stored: Vec<String> = walk(&sb.join(format!("store/testhost/{id}")))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The archive, its index and the run manifest; nothing of the runner's.
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored.iter().any(|n| n.ends_with(".ncb-index.jsonl.gz")), "{stored:?}");
    assert!(stored.iter().all(|n| !n.starts_with('.')), "the runner's files were stored: {stored:?}");
    assert!(w.join(".backup-runner.lock").exists(), "REMOVE_OBJECTIVES removed the run lock");
    // A compression asked to remove the work folder itself is refused before anything runs.
    let bad = sb.config(&[(
        "COMPRESSION",
        section(
            "compression",
            json!({"OBJECTIVES": sb.path(), "DESTINATION": sb.join("elsewhere/c"), "REMOVE_OBJECTIVES": "True"}),
        ),
    )]);
    let out = run(cmd(&bin("backup-runner")).args(["--check", "-c"]).arg(&bad)).expect(2);
    assert!(out.stderr.contains("holds WORK_FOLDER"), "{}", out.stderr);
}

#[test]
fn storage_removes_an_encryption_manifest_before_its_parts() {
    let sb = Sandbox::new();
    setup(&sb);
    random_file(&sb, "data/big.bin", 3);
    let conf = pipeline(&sb, &sb.join("store"));
    // Kill storage as it removes the first part of the stored run from WORK_FOLDER.
    let part = sb.join("work/encrypted/files.tar.gz.enc.000");
    let out = night_killed_at_unlink(&conf, &part);
    let night1 = out.json()["run_id"].as_str().unwrap().to_owned();
    assert!(out.stderr.contains("STORAGE") && out.stderr.contains("SIGKILL"), "{}", out.stderr);
    // The manifest went first: parts without their manifest, never a manifest without parts.
    assert!(part.exists(), "killed at the wrong moment");
    assert!(!sb.join("work/encrypted/files.tar.gz.enc.manifest.json").exists(), "the manifest outlived its parts");
    next_night_completes_both(&sb, &conf, &night1, "completed");
}
