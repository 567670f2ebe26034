//! Retention that cannot destroy: only complete, authenticated runs count and go; the newest
//! complete run always stays; nothing goes after a night that stored nothing or failed;
//! `backup-runner prune` applies the same rules without a backup.

use std::path::Path;
use std::process::Command;

use nc_backup_e2e::{Out, Sandbox, bin, cmd, fixture, run};
use serde_json::json;

fn storage(sb: &Sandbox, run_id: &str, objectives: &Path, extra: &[&str]) -> Out {
    let mut c = cmd(&bin("storage"));
    c.env("NCB_RUN_ID", run_id)
        .args(["--HOSTNAME", "web1", "--DESTINATION", "local"])
        .arg("--PATH")
        .arg(sb.join("store"))
        .arg("--OBJECTIVES")
        .arg(objectives)
        .args(extra);
    run(&mut c)
}

fn stored(sb: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sb.join("store/web1"))
        .map(|e| e.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Two complete runs of an encrypted-looking objective, signed with the sandbox's key.
fn two_signed_runs(sb: &Sandbox) -> [&'static str; 2] {
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key"))).expect(0);
    sb.write("enc/files.tar.gz.enc.000", &[1u8; 3000]);
    sb.write("enc/files.tar.gz.enc.manifest.json", b"{}");
    let key = sb.join("key");
    let k = key.to_str().unwrap();
    let runs = ["20261101T000000Z-0001", "20261102T000000Z-0002"];
    for r in runs {
        storage(sb, r, &sb.join("enc"), &["--KEY_FILE", k]).expect(0);
    }
    runs
}

#[test]
fn an_empty_store_fails_and_deletes_nothing_unless_allowed() {
    let sb = Sandbox::new();
    let runs = two_signed_runs(&sb);
    std::fs::create_dir_all(sb.join("empty")).unwrap();
    // Only a killed stage's temporary: still nothing to store.
    sb.write("empty/.files.tar.gz.enc.000.partial-77-1", b"half");
    let out = storage(&sb, "20261103T000000Z-0003", &sb.join("empty"), &["--KEEP_LAST", "1"]).expect(1);
    assert!(out.stderr.contains("nothing to store") && out.stderr.contains("no run was deleted"), "{}", out.stderr);
    assert_eq!(stored(&sb), runs, "an empty night deleted or stored runs");
    let out = storage(&sb, "20261103T000000Z-0003", &sb.join("empty"), &["--KEEP_LAST", "1", "--ALLOW_EMPTY", "True"])
        .expect(0);
    assert!(out.stderr.contains("retention not applied"), "{}", out.stderr);
    assert_eq!(stored(&sb), runs);
    // A storage section without OBJECTIVES is a usage error, before anything is touched.
    let mut c = cmd(&bin("storage"));
    c.args(["--HOSTNAME", "web1", "--DESTINATION", "local", "--KEEP_LAST", "1"]).arg("--PATH").arg(sb.join("store"));
    let out = run(&mut c).expect(2);
    assert!(out.stderr.contains("--OBJECTIVES"), "{}", out.stderr);
    assert_eq!(stored(&sb), runs);
}

#[test]
fn runs_that_are_not_authenticated_are_never_counted_nor_deleted() {
    let sb = Sandbox::new();
    let [older, newer] = two_signed_runs(&sb);
    // The newer run's manifest is altered (its MAC no longer matches), a third one is forged
    // without a MAC: neither may push the older, good run out.
    let m = sb.join(format!("store/web1/{newer}/RUN-MANIFEST.json"));
    let text = std::fs::read_to_string(&m).unwrap().replace("3000", "3001");
    std::fs::write(&m, text).unwrap();
    let forged = "20261103T000000Z-0003";
    let mut unsigned: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.join(format!("store/web1/{older}/RUN-MANIFEST.json"))).unwrap())
            .unwrap();
    unsigned.as_object_mut().unwrap().remove("mac");
    unsigned["run_id"] = json!(forged);
    sb.write(&format!("store/web1/{forged}/RUN-MANIFEST.json"), unsigned.to_string().as_bytes());
    let conf = sb.config(&[(
        "STORAGE",
        json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": sb.join("enc"), "DESTINATION": "local", "PATH": sb.join("store"), "PREFIX": "web1",
            "KEY_FILE": sb.join("key"), "KEEP_LAST": "1"}}),
    )]);
    let out = run(cmd(&bin("backup-runner")).args(["prune", "-c"]).arg(&conf)).expect(0);
    assert_eq!(stored(&sb), [older, newer, forged], "{}", out.stdout);
    assert!(out.stdout.contains(&format!("keep local {}: {older}", sb.join("store").display())), "{}", out.stdout);
    assert!(out.stdout.contains("MAC does not match") && out.stdout.contains("carries no MAC"), "{}", out.stdout);
}

#[test]
fn prune_keeps_the_newest_run_and_spares_runs_still_pending() {
    let sb = Sandbox::new();
    let [older, newer] = two_signed_runs(&sb);
    // Two incomplete runs, both older than REMOVE_INCOMPLETE_AFTER: one is still pending here
    // (its journal is in WORK_FOLDER: the next night completes it), the other abandoned.
    let (pending, abandoned) = ("20261001T000000Z-000a", "20261002T000000Z-000b");
    sb.write(&format!("store/web1/{pending}/files.tar.gz.enc.000"), b"part");
    sb.write(&format!("store/web1/{abandoned}/files.tar.gz.enc.000"), b"part");
    sb.write(&format!("work/.ncb-journal/{pending}.json"), b"{}");
    let conf = sb.config(&[(
        "STORAGE",
        json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": sb.join("enc"), "DESTINATION": "local", "PATH": sb.join("store"), "PREFIX": "web1",
            "KEY_FILE": sb.join("key"), "KEEP_WITHIN": "1h"}}),
    )]);
    let all = [pending, abandoned, older, newer];
    let dry = run(cmd(&bin("backup-runner")).args(["prune", "--dry-run", "--json", "-c"]).arg(&conf)).expect(0);
    let would: Vec<String> = dry.json()["STORAGE"]["would_delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().rsplit(": ").next().unwrap().to_owned())
        .collect();
    assert_eq!(would, [older, abandoned]);
    assert_eq!(stored(&sb), all, "--dry-run deleted");
    run(cmd(&bin("backup-runner")).args(["prune", "-c"]).arg(&conf)).expect(0);
    assert_eq!(stored(&sb), [pending, newer]);
    // Nothing but the newest is within 1h of the newest; it stays however the rules read.
    run(cmd(&bin("backup-runner")).args(["prune", "-c"]).arg(&conf)).expect(0);
    assert_eq!(stored(&sb), [pending, newer]);
}

#[test]
fn a_night_with_a_failed_section_deletes_no_run() {
    let sb = Sandbox::new();
    let runs = two_signed_runs(&sb);
    let rec = sb.join("rec");
    sb.write("rec/DUMP.fail", b"");
    let conf = sb.config(&[
        (
            "DUMP",
            json!({"ACTION": "execute", "NAME": "tests", "EXECUTABLE": fixture("record.sh"), "ON_FAILURE": "continue"}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": sb.join("enc"), "DESTINATION": "local", "PATH": sb.join("store"), "PREFIX": "web1",
                "KEY_FILE": sb.join("key"), "KEEP_LAST": "1"}}),
        ),
    ]);
    let out = run(cmd(&bin("backup-runner")).args(["-r", "--json", "-c"]).arg(&conf).env("RECORD", &rec)).expect(1);
    let report = out.json();
    let tonight = report["run_id"].as_str().unwrap();
    assert_eq!(report["sections"][1]["status"], "ok", "{report:#}");
    let warnings = report["sections"][1]["warnings"].to_string();
    assert!(warnings.contains("retention deletes nothing"), "{warnings}");
    assert_eq!(stored(&sb), [runs[0], runs[1], tonight]);
}

/// Retention killed (SIGKILL, injected by strace at one exact unlink) in the middle of deleting
/// a run: the run is marked as being deleted, never counted as a backup, shown as such by
/// `runs` and `verify`, and the next retention finishes it whatever its age.
#[test]
fn retention_killed_mid_deletion_is_finished_by_the_next_one() {
    let sb = Sandbox::new();
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key"))).expect(0);
    for i in 0..4 {
        sb.write(&format!("enc/files.tar.gz.enc.00{i}"), &[i as u8; 3000]);
    }
    sb.write("enc/files.tar.gz.enc.manifest.json", b"{}");
    let key = sb.join("key");
    let k = key.to_str().unwrap();
    // Recent runs: "incomplete and old" cannot be why the next retention deletes it.
    let id = |mins: i64| {
        let t = run(Command::new("date").args(["-u", "-d", &format!("-{mins} min"), "+%Y%m%dT%H%M%SZ"])).expect(0);
        format!("{}-000{mins}", t.stdout.trim())
    };
    let (older, newer, third) = (id(3), id(2), id(1));
    storage(&sb, &older, &sb.join("enc"), &["--KEY_FILE", k]).expect(0);
    storage(&sb, &newer, &sb.join("enc"), &["--KEY_FILE", k]).expect(0);
    let doomed = sb.join(format!("store/web1/{older}"));
    let mut c = Command::new("strace");
    c.args(["-f", "-o", "/dev/null", "-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:signal=KILL", "-P"])
        .arg(doomed.join("files.tar.gz.enc.002"))
        .arg(bin("storage"))
        .env("NCB_RUN_ID", &newer)
        .args(["--HOSTNAME", "web1", "--DESTINATION", "local", "--KEY_FILE", k, "--KEEP_LAST", "1"])
        .arg("--PATH")
        .arg(sb.join("store"))
        .arg("--OBJECTIVES")
        .arg(sb.join("enc"));
    let out = run(&mut c);
    assert_ne!(out.code, 0, "not killed: {}", out.stderr);
    assert!(doomed.join("RUN-DELETING").is_file() && doomed.join("files.tar.gz.enc.002").is_file(), "killed too late");
    assert!(!doomed.join("RUN-MANIFEST.json").exists(), "the run manifest outlived the start of the deletion");

    let conf = sb.config(&[(
        "STORAGE",
        json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": sb.join("enc"), "DESTINATION": "local", "PATH": sb.join("store"), "PREFIX": "web1",
            "KEY_FILE": sb.join("key"), "KEEP_LAST": "2"}}),
    )]);
    let list = run(cmd(&bin("backup-runner")).args(["runs", "--json", "-c"]).arg(&conf)).expect(0).json();
    let half = list.as_array().unwrap().iter().find(|r| r["run_id"] == older.as_str()).unwrap().clone();
    assert_eq!((half["complete"].as_bool(), half["deleting"].as_bool()), (Some(false), Some(true)), "{list:#}");
    let v = run(cmd(&bin("backup-runner")).args(["verify", "--run", "all", "-c"]).arg(&conf)).expect(0);
    assert!(v.stdout.contains("being deleted"), "{}", v.stdout);

    // The next store keeps 2 runs: the half-deleted one is not one of them, and it goes.
    let out = storage(&sb, &third, &sb.join("enc"), &["--KEY_FILE", k, "--KEEP_LAST", "2"]).expect(0);
    let deleted = out.json()["data"]["deleted"].to_string();
    assert!(deleted.contains(&older), "{}", out.stdout);
    assert!(out.stderr.contains("its deletion was interrupted"), "{}", out.stderr);
    assert_eq!(stored(&sb), [newer, third]);
}
