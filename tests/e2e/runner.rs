//! backup-runner with real child processes.

use std::path::Path;
use std::time::{Duration, Instant};

use nc_backup_e2e::{Sandbox, alive, bin, cmd, fixture, run, wait_for};
use serde_json::json;

fn runner(sb: &Sandbox, conf: &Path) -> std::process::Command {
    let mut c = cmd(&bin("backup-runner"));
    c.arg("-r").arg("-c").arg(conf).arg("--json").env("RECORD", sb.join("rec"));
    std::fs::create_dir_all(sb.join("rec")).unwrap();
    c
}

fn script(extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"ACTION": "execute", "NAME": "tests", "EXECUTABLE": fixture("record.sh")});
    if let serde_json::Value::Object(m) = extra {
        s.as_object_mut().unwrap().extend(m);
    }
    s
}

fn read(sb: &Sandbox, rel: &str) -> String {
    std::fs::read_to_string(sb.join(rel)).unwrap_or_default()
}

#[test]
fn sections_run_in_file_order_with_exact_argv() {
    let sb = Sandbox::new();
    let conf = sb.config(&[
        ("ZETA", script(json!({"PARAMETERS": {"OBJECTIVES": "/a /b", "REMOVE_OBJECTIVES": true, "FILE_SIZE": 10}}))),
        ("ALPHA", script(json!({"PARAMETERS": {"DEST": "{WORK_FOLDER}/{HOSTNAME}/x", "LIST": ["a b", "c"], "DB_PASSWORD": "hunter2"}}))),
        ("MIDDLE", script(json!({"EXECUTE_WITH": "sh"}))),
    ]);
    let out = run(&mut runner(&sb, &conf)).expect(0);
    assert_eq!(read(&sb, "rec/order"), "ZETA\nALPHA\nMIDDLE\n");
    let w = sb.join("work").display().to_string();
    let l = sb.join("log").display().to_string();
    let h = sb.path().display().to_string();
    let general = format!("--HOSTNAME\ntesthost\n--WORK_FOLDER\n{w}\n--HOME_FOLDER\n{h}\n--LOG_FOLDER\n{l}\n");
    assert_eq!(
        read(&sb, "rec/ZETA.argv"),
        format!("{general}--OBJECTIVES\n/a /b\n--REMOVE_OBJECTIVES\nTrue\n--FILE_SIZE\n10\n")
    );
    assert_eq!(read(&sb, "rec/ALPHA.argv"), format!("{general}--DEST\n{w}/testhost/x\n--LIST\n[\"a b\",\"c\"]\n"));
    // The secret is not in argv: it travels in the environment.
    assert!(read(&sb, "rec/ALPHA.env").contains("NCB_PARAM_DB_PASSWORD=hunter2"));
    let env = read(&sb, "rec/MIDDLE.env");
    let run_id = out.json()["run_id"].as_str().unwrap().to_owned();
    assert!(env.contains(&format!("NCB_RUN_ID={run_id}")), "{env}");
    assert!(env.contains("NCB_SECTION=MIDDLE"));
    // The report lists every section, and was written to the log folder; stderr went to the log.
    let report = out.json();
    let names: Vec<&str> = report["sections"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ZETA", "ALPHA", "MIDDLE"]);
    assert_eq!(report["status"], "ok");
    assert!(sb.join(format!("log/run-{run_id}.json")).is_file());
    let log = std::fs::read_to_string(sb.join("log/nc-backup.log")).unwrap();
    assert!(log.contains("[ALPHA] progress line from ALPHA"), "{log}");
    assert!(!log.contains("hunter2"));
}

#[test]
fn load_and_execute_give_the_same_report() {
    let sb = Sandbox::new();
    sb.write("data/a", &[1u8; 1000]);
    sb.write("data/sub/b", &[2u8; 24]);
    let data = sb.join("data");
    let conf = sb.config(&[
        ("LOADED", json!({"ACTION": "load", "FROM": "tools", "FILENAME": "size_calculation", "CLASS": "SizeCalculation", "PARAMETERS": {"OBJECTIVES": data}})),
        ("EXECUTED", json!({"ACTION": "execute", "NAME": "size-calc", "PARAMETERS": {"OBJECTIVES": data}})),
    ]);
    let report = run(&mut runner(&sb, &conf)).expect(0).json();
    let s = report["sections"].as_array().unwrap();
    assert_eq!(s[0]["action"], "load");
    assert_eq!(s[1]["action"], "execute");
    for sec in s {
        assert_eq!(sec["data"]["files"], 2, "{sec}");
        assert_eq!(sec["data"]["bytes"], 1024, "{sec}");
    }
}

#[test]
fn failing_section_stops_the_run_and_is_named() {
    let sb = Sandbox::new();
    let conf = sb.config(&[("FIRST", script(json!({}))), ("BROKEN", script(json!({}))), ("LAST", script(json!({})))]);
    sb.write("rec/BROKEN.fail", b"");
    let out = run(&mut runner(&sb, &conf)).expect(1);
    assert_eq!(read(&sb, "rec/order"), "FIRST\nBROKEN\n");
    assert!(out.stderr.contains("BROKEN"), "{}", out.stderr);
    assert!(out.stderr.contains("BROKEN was told to fail"), "stderr tail missing: {}", out.stderr);
    let r = out.json();
    assert_eq!(r["status"], "failed");
    assert_eq!(r["sections"][1]["exit_code"], 3);
    assert_eq!(r["sections"][2]["status"], "skipped");
}

#[test]
fn on_failure_continue_goes_on_but_the_run_still_fails() {
    let sb = Sandbox::new();
    let conf = sb.config(&[("BROKEN", script(json!({"ON_FAILURE": "continue"}))), ("LAST", script(json!({})))]);
    sb.write("rec/BROKEN.fail", b"");
    let out = run(&mut runner(&sb, &conf)).expect(1);
    assert_eq!(read(&sb, "rec/order"), "BROKEN\nLAST\n");
    let r = out.json();
    assert_eq!(r["sections"][1]["status"], "ok");
    assert_eq!(r["status"], "failed");
}

#[test]
fn timeout_kills_the_child_and_its_children() {
    let sb = Sandbox::new();
    let conf = sb.config(&[("SLOW", script(json!({"TIMEOUT": 1}))), ("NEXT", script(json!({})))]);
    sb.write("rec/SLOW.sleep", b"");
    let t = Instant::now();
    let out = run(&mut runner(&sb, &conf)).expect(1);
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let grandchild: u32 = read(&sb, "rec/SLOW.grandchild").trim().parse().unwrap();
    assert!(wait_for(Duration::from_secs(5), || !alive(grandchild)), "grandchild {grandchild} survived");
    let r = out.json();
    assert_eq!(r["sections"][0]["status"], "timeout");
    assert!(out.stderr.contains("TIMEOUT"), "{}", out.stderr);
    assert_eq!(read(&sb, "rec/order"), "SLOW\n");
}

#[test]
fn a_second_run_is_refused_and_a_killed_run_does_not_block() {
    let sb = Sandbox::new();
    let conf = sb.config(&[("HOLD", script(json!({})))]);
    sb.write("rec/HOLD.sleep", b"");
    let mut first =
        runner(&sb, &conf).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    assert!(wait_for(Duration::from_secs(10), || sb.join("rec/HOLD.pid").exists()));
    let second = run(&mut runner(&sb, &conf)).expect(1);
    assert!(second.stderr.contains("another run is in progress in WORK_FOLDER"), "{}", second.stderr);
    assert!(second.stderr.contains(&format!("pid {}", first.id())), "{}", second.stderr);
    // kill -9 the runner: its lock must not outlive it.
    first.kill().unwrap();
    first.wait().unwrap();
    let pid = read(&sb, "rec/HOLD.pid").trim().to_owned();
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
    std::fs::remove_file(sb.join("rec/HOLD.sleep")).unwrap();
    run(&mut runner(&sb, &conf)).expect(0);
}

#[test]
fn sigterm_reaches_the_running_child_and_the_run_reports_it() {
    let sb = Sandbox::new();
    let conf = sb.config(&[("HOLD", script(json!({}))), ("AFTER", script(json!({})))]);
    sb.write("rec/HOLD.sleep", b"");
    let child =
        runner(&sb, &conf).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    assert!(wait_for(Duration::from_secs(10), || sb.join("rec/HOLD.pid").exists()));
    std::thread::sleep(Duration::from_millis(200));
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = nc_backup_e2e::Out::from(child.wait_with_output().unwrap()).expect(1);
    assert_eq!(read(&sb, "rec/HOLD.term"), "got TERM\n");
    let r = out.json();
    assert_eq!(r["status"], "interrupted");
    assert_eq!(r["sections"][0]["status"], "interrupted");
    assert_eq!(r["sections"][1]["status"], "skipped");
    assert!(out.stderr.contains("SIGTERM"), "{}", out.stderr);
}

#[test]
fn dry_run_prints_the_plan_without_secrets() {
    let sb = Sandbox::new();
    let secrets = ["hunter2", "tok-123456", "s3cr3t-key", "pa55word"];
    let conf = sb.config(&[
        ("S1", script(json!({"PARAMETERS": {"DB_PASSWORD": secrets[0], "API_TOKEN": secrets[1]}}))),
        ("S2", script(json!({"PARAMETERS": {"AWS_SECRET_ACCESS_KEY": secrets[2], "WEBHOOK_TOKEN": format!("https://user:{}@example.invalid/hook", secrets[3])}}))),
        ("SIZE", json!({"ACTION": "load", "NAME": "size-calc", "PARAMETERS": {"OBJECTIVES": "/etc"}})),
    ]);
    let out = run(cmd(&bin("backup-runner")).args(["--dry-run", "-c"]).arg(&conf)).expect(0);
    for s in secrets {
        assert!(!out.stdout.contains(s) && !out.stderr.contains(s), "secret {s} printed:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("NCB_PARAM_DB_PASSWORD=****"), "{}", out.stdout);
    assert!(out.stdout.contains(&fixture("record.sh").display().to_string()));
    assert!(out.stdout.contains("[3] SIZE (load size-calc)"), "{}", out.stdout);
    assert!(!sb.join("rec").exists() && !sb.join("work").exists(), "dry run ran something");
}

/// GENERAL NICE and IONICE: every stage runs under them (issue 17).
#[test]
fn nice_and_ionice_apply_to_every_stage() {
    let sb = Sandbox::new();
    let script = sb.write(
        "prio.sh",
        format!(
            "#!/bin/sh\ncut -d' ' -f19 /proc/$$/stat > {}\nionice -p $$ > {}\n",
            sb.join("nice").display(),
            sb.join("ionice").display()
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut general = sb.general();
    general["NICE"] = "7".into();
    general["IONICE"] = "idle".into();
    let text =
        serde_json::json!({"GENERAL": general, "PRIO": {"ACTION": "execute", "NAME": "prio", "EXECUTABLE": script}});
    let conf = sb.config_text("conf.json", &text.to_string());
    run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&conf)).expect(0);
    assert_eq!(std::fs::read_to_string(sb.join("nice")).unwrap().trim(), "7");
    assert!(std::fs::read_to_string(sb.join("ionice")).unwrap().contains("idle"));
    let sd = run(cmd(&bin("backup-runner")).args(["schedule", "--systemd", "-c"]).arg(&conf));
    let _ = sd;
    general_bad(&sb, "NICE", "42", "0 to 19");
    general_bad(&sb, "IONICE", "realtime", "idle, best-effort");
}

fn general_bad(sb: &Sandbox, key: &str, value: &str, want: &str) {
    let mut general = sb.general();
    general[key] = value.into();
    let conf = sb.config_text("bad.json", &serde_json::json!({"GENERAL": general}).to_string());
    let o = run(cmd(&bin("backup-runner")).args(["--check", "-c"]).arg(&conf)).expect(2);
    assert!(o.stderr.contains(key) && o.stderr.contains(want), "{}", o.stderr);
}

/// A WORK_FOLDER or LOG_FOLDER another user can write to is refused, and a link planted where
/// the log goes is never followed (issue 17).
#[test]
fn folders_others_can_write_and_a_planted_log_link_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let conf = sb.config(&[("JOB", json!({"ACTION": "execute", "NAME": "t", "EXECUTABLE": "/bin/true"}))]);
    for (dir, mode, key) in [("work", 0o777, "WORK_FOLDER"), ("log", 0o775, "LOG_FOLDER")] {
        std::fs::create_dir_all(sb.join("work")).unwrap();
        std::fs::create_dir_all(sb.join("log")).unwrap();
        std::fs::set_permissions(sb.join("work"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(sb.join("log"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(sb.join(dir), std::fs::Permissions::from_mode(mode)).unwrap();
        let o = run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&conf)).expect(2);
        assert!(o.stderr.contains(key) && o.stderr.contains("writable by group or others"), "{}", o.stderr);
    }
    std::fs::set_permissions(sb.join("log"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = sb.write("victim.txt", b"untouched\n");
    std::os::unix::fs::symlink(&victim, sb.join("log/nc-backup.log")).unwrap();
    let o = run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&conf)).expect(2);
    assert!(o.stderr.contains("symbolic link"), "{}", o.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched\n");
}
