//! `backup-runner --check`: broken configs give exit 2 and name the section and key; every
//! config shipped in conf/ is parsed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nc_backup_e2e::{Out, Sandbox, bin, cmd, fixture, repo, run};
use serde_json::json;

const G: &str = r#""GENERAL": {"HOSTNAME": "h", "WORK_FOLDER": "/tmp/ncb-check-w", "LOG_FOLDER": "/tmp/ncb-check-l"}"#;

fn size(params: &str) -> String {
    format!(
        r#""SIZE": {{"ACTION": "load", "FROM": "tools", "FILENAME": "size_calculation", "CLASS": "SizeCalculation", "PARAMETERS": {params}}}"#
    )
}

/// (what is broken, config text, every fragment the error must contain)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let rec = fixture("record.sh").display().to_string();
    vec![
        (
            "JSON syntax",
            "{\n  \"GENERAL\": {\n    \"HOSTNAME\": \"h\",\n  }\n}".into(),
            vec!["invalid JSON", "line 4, column 3"],
        ),
        ("not an object", "[1, 2]".into(), vec!["JSON object"]),
        ("empty file", String::new(), vec!["invalid JSON", "line 1"]),
        (
            "no GENERAL",
            r#"{"S": {"ACTION": "load", "NAME": "size-calc"}}"#.into(),
            vec!["GENERAL", "missing mandatory section"],
        ),
        ("GENERAL not object", r#"{"GENERAL": "x"}"#.into(), vec!["section GENERAL", "must be an object"]),
        (
            "GENERAL missing key",
            r#"{"GENERAL": {"HOSTNAME": "h", "LOG_FOLDER": "/l"}}"#.into(),
            vec!["section GENERAL, key WORK_FOLDER", "missing"],
        ),
        (
            "GENERAL unknown key",
            r#"{"GENERAL": {"HOSTNAME": "h", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l", "HOSTNAM": "x"}}"#.into(),
            vec!["section GENERAL, key HOSTNAM", "unknown key"],
        ),
        (
            "GENERAL bad value",
            r#"{"GENERAL": {"HOSTNAME": {"a": 1}, "WORK_FOLDER": "/w", "LOG_FOLDER": "/l"}}"#.into(),
            vec!["section GENERAL, key HOSTNAME", "object"],
        ),
        (
            "section not object",
            format!(r#"{{{G}, "FILES": "filesbackup"}}"#),
            vec!["section FILES", "must be an object"],
        ),
        (
            "missing ACTION",
            format!(r#"{{{G}, "S": {{"NAME": "size-calc"}}}}"#),
            vec!["section S, key ACTION", "missing ACTION"],
        ),
        (
            "unknown ACTION",
            format!(r#"{{{G}, "S": {{"ACTION": "run", "NAME": "size-calc"}}}}"#),
            vec!["section S, key ACTION", "unknown action 'run'"],
        ),
        (
            "unknown stage",
            format!(r#"{{{G}, "S": {{"ACTION": "execute", "NAME": "fliesbackup"}}}}"#),
            vec!["section S, key NAME", "unknown stage 'fliesbackup'", "size-calc"],
        ),
        (
            "execute without NAME",
            format!(r#"{{{G}, "S": {{"ACTION": "execute"}}}}"#),
            vec!["section S, key NAME", "needs NAME"],
        ),
        (
            "unknown plugin",
            format!(r#"{{{G}, "S": {{"ACTION": "load", "FROM": "tools", "FILENAME": "size_calc", "CLASS": "X"}}}}"#),
            vec!["section S, key FILENAME", "unknown plugin", "tools/size_calculation/SizeCalculation"],
        ),
        (
            "load without plugin",
            format!(r#"{{{G}, "S": {{"ACTION": "load"}}}}"#),
            vec!["section S, key FILENAME", "tools/size_calculation/SizeCalculation"],
        ),
        (
            "unknown section key",
            format!(r#"{{{G}, "S": {{"ACTION": "load", "NAME": "size-calc", "OBJECTIVES": "/etc"}}}}"#),
            vec!["section S, key OBJECTIVES", "belong inside PARAMETERS"],
        ),
        (
            "PARAMETERS not object",
            format!(r#"{{{G}, "S": {{"ACTION": "load", "NAME": "size-calc", "PARAMETERS": "x"}}}}"#),
            vec!["section S, key PARAMETERS", "must be an object"],
        ),
        (
            "null parameter",
            format!(r#"{{{G}, {}}}"#, size(r#"{"OBJECTIVES": null}"#)),
            vec!["section SIZE, key PARAMETERS.OBJECTIVES", "null"],
        ),
        (
            "unknown parameter",
            format!(r#"{{{G}, {}}}"#, size(r#"{"OBJECTIVES": "/etc", "OBJECTIVE": "/x"}"#)),
            vec!["section SIZE, key PARAMETERS.OBJECTIVE", "unknown parameter", "did you mean OBJECTIVES"],
        ),
        (
            "missing parameter",
            format!(r#"{{{G}, {}}}"#, size("{}")),
            vec!["section SIZE, key PARAMETERS.OBJECTIVES", "missing required"],
        ),
        (
            "bad list",
            format!(r#"{{{G}, {}}}"#, size(r#"{"OBJECTIVES": "[\"/etc\""}"#)),
            vec!["section SIZE, key PARAMETERS.OBJECTIVES", "JSON array"],
        ),
        (
            "unknown placeholder",
            format!(r#"{{{G}, {}}}"#, size(r#"{"OBJECTIVES": "/x/{HOST}"}"#)),
            vec!["section SIZE, key PARAMETERS.OBJECTIVES", "unknown placeholder {HOST}"],
        ),
        (
            "bad SCHEDULE",
            r#"{"GENERAL": {"HOSTNAME": "h", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l", "SCHEDULE": "0 25 * * *"}}"#
                .into(),
            vec!["section GENERAL, key SCHEDULE", "hour '25'"],
        ),
        (
            "bad NOTIFY",
            format!(r#"{{{G}, "NOTIFY": {{"WEBHOOK_URL": "ftp://example.invalid/x", "RETRY": 1}}}}"#),
            vec!["section NOTIFY, key WEBHOOK_URL", "http", "section NOTIFY, key RETRY", "unknown key"],
        ),
        (
            "bad TIMEOUT",
            format!(
                r#"{{{G}, "S": {{"ACTION": "execute", "NAME": "size-calc", "TIMEOUT": "soon", "PARAMETERS": {{"OBJECTIVES": "/etc"}}}}}}"#
            ),
            vec!["section S, key TIMEOUT", "not a duration"],
        ),
        (
            "TIMEOUT on load",
            format!(
                r#"{{{G}, "S": {{"ACTION": "load", "NAME": "size-calc", "TIMEOUT": 5, "PARAMETERS": {{"OBJECTIVES": "/etc"}}}}}}"#
            ),
            vec!["section S, key TIMEOUT", "execute only"],
        ),
        (
            "bad ON_FAILURE",
            format!(
                r#"{{{G}, "S": {{"ACTION": "load", "NAME": "size-calc", "ON_FAILURE": "ignore", "PARAMETERS": {{"OBJECTIVES": "/etc"}}}}}}"#
            ),
            vec!["section S, key ON_FAILURE", "'ignore'"],
        ),
        (
            "missing program",
            format!(r#"{{{G}, "S": {{"ACTION": "execute", "NAME": "mine", "EXECUTABLE": "nope.sh"}}}}"#),
            vec!["section S, key EXECUTABLE", "'nope.sh' not found"],
        ),
        (
            "missing interpreter",
            format!(
                r#"{{{G}, "S": {{"ACTION": "execute", "NAME": "mine", "EXECUTABLE": "{rec}", "EXECUTE_WITH": "no-such-interp"}}}}"#
            ),
            vec!["section S, key EXECUTE_WITH", "no-such-interp"],
        ),
        (
            "stage not built",
            format!(r#"{{{G}, "S": {{"ACTION": "execute", "NAME": "no-such-stage-xyz"}}}}"#),
            vec!["section S, key NAME", "unknown stage"],
        ),
        // Issue 12: what -r would otherwise do wrong, unattended.
        (
            "two sections of one name",
            format!(r#"{{{G}, {}, {}}}"#, size(r#"{"OBJECTIVES": "/etc"}"#), size(r#"{"OBJECTIVES": "/usr"}"#)),
            vec!["section SIZE: duplicate section name"],
        ),
        (
            "repeated parameter",
            format!(r#"{{{G}, {}}}"#, size(r#"{"OBJECTIVES": "/etc", "OBJECTIVES": "/usr"}"#)),
            vec!["section SIZE, key PARAMETERS.OBJECTIVES: duplicate key"],
        ),
        (
            "repeated section key",
            format!(
                r#"{{{G}, "S": {{"ACTION": "load", "NAME": "size-calc", "ACTION": "load", "PARAMETERS": {{"OBJECTIVES": "/etc"}}}}}}"#
            ),
            vec!["section S, key ACTION: duplicate key"],
        ),
        (
            "repeated GENERAL key",
            format!(
                r#"{{"GENERAL": {{"HOSTNAME": "a", "HOSTNAME": "b", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l"}}, {}}}"#,
                size(r#"{"OBJECTIVES": "/etc"}"#)
            ),
            vec!["section GENERAL, key HOSTNAME: duplicate key"],
        ),
        (
            "GENERAL list",
            format!(
                r#"{{"GENERAL": {{"HOSTNAME": "h", "WORK_FOLDER": ["/w"], "LOG_FOLDER": "/l"}}, {}}}"#,
                size(r#"{"OBJECTIVES": "/etc"}"#)
            ),
            vec!["section GENERAL, key WORK_FOLDER: must be a string, not a list"],
        ),
        (
            "GENERAL boolean and null",
            format!(
                r#"{{"GENERAL": {{"HOSTNAME": "h", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l", "LOCAL_BACKUP": true, "HOME_FOLDER": null}}, {}}}"#,
                size(r#"{"OBJECTIVES": "/etc"}"#)
            ),
            vec![
                "section GENERAL, key LOCAL_BACKUP: must be a string, not a boolean",
                "section GENERAL, key HOME_FOLDER: must be a string, not null",
            ],
        ),
        (
            "HOSTNAME a number",
            format!(
                r#"{{"GENERAL": {{"HOSTNAME": 12, "WORK_FOLDER": "/w", "LOG_FOLDER": "/l"}}, {}}}"#,
                size(r#"{"OBJECTIVES": "/etc"}"#)
            ),
            vec!["section GENERAL, key HOSTNAME: must be a string, not a number"],
        ),
        (
            "HOSTNAME with a control character",
            format!(
                r#"{{"GENERAL": {{"HOSTNAME": "web1\u0000", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l"}}, {}}}"#,
                size(r#"{"OBJECTIVES": "/etc"}"#)
            ),
            vec!["section GENERAL, key HOSTNAME: contains a"],
        ),
        (
            "HOSTNAME of two lines",
            format!(
                r#"{{"GENERAL": {{"HOSTNAME": "web1\nweb2", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l"}}, {}}}"#,
                size(r#"{"OBJECTIVES": "/etc"}"#)
            ),
            vec!["section GENERAL, key HOSTNAME: contains a control character"],
        ),
        (
            "empty section name",
            format!(
                r#"{{{G}, "": {{"ACTION": "load", "NAME": "size-calc", "PARAMETERS": {{"OBJECTIVES": "/etc"}}}}}}"#
            ),
            vec![r#"section "": a section needs a name"#],
        ),
        ("nothing to run", format!(r#"{{{G}, "NOTIFY": {{"RETRIES": 1}}, "_comment": "x"}}"#), vec!["nothing to run"]),
        (
            "empty FILESET_INCLUDE",
            format!(
                r#"{{{G}, "F": {{"ACTION": "load", "NAME": "filesbackup", "PARAMETERS": {{"FILESET_INCLUDE": ""}}}},
                  "G": {{"ACTION": "load", "NAME": "filesbackup", "PARAMETERS": {{"FILESET_INCLUDE": []}}}}}}"#
            ),
            vec![
                "section F, key PARAMETERS.FILESET_INCLUDE: is empty",
                "section G, key PARAMETERS.FILESET_INCLUDE: is empty",
                "ALLOW_EMPTY",
            ],
        ),
        (
            "URL password to a program",
            format!(
                r#"{{{G}, "S": {{"ACTION": "execute", "NAME": "mine", "EXECUTABLE": "{rec}", "PARAMETERS": {{"REPO": "https://backup:hunter2@git.example/r"}}}}}}"#
            ),
            vec!["section S, key PARAMETERS.REPO", "https://backup:****@git.example/r", "REPO_PASSWORD"],
        ),
    ]
}

#[test]
fn broken_configs_are_named_and_exit_2() {
    let sb = Sandbox::new();
    let cases = cases();
    assert!(cases.len() >= 20);
    for (what, text, needles) in cases {
        let conf = sb.config_text("conf.json", &text);
        let out = run(cmd(&bin("backup-runner")).arg("--check").arg("-c").arg(&conf));
        assert_eq!(out.code, 2, "{what}: exit code\n{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{what}: panic\n{}", out.stderr);
        for n in needles {
            assert!(out.stderr.contains(n), "{what}: error lacks {n:?}:\n{}", out.stderr);
        }
        assert!(!out.stderr.contains("hunter2"), "{what}: a password in the error:\n{}", out.stderr);
        // -r validates first too: nothing runs, same exit code.
        let out = run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf));
        assert_eq!(out.code, 2, "{what}: -r exit code\n{}", out.stderr);
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let sb = Sandbox::new();
    let conf = sb.config_text(
        "conf.json",
        &format!(
            r#"{{{G}, "A": {{"ACTION": "jump"}}, "B": {{"ACTION": "execute", "NAME": "nope"}}, {}}}"#,
            size(r#"{"OBJECTIVE": "/x"}"#)
        ),
    );
    let out = run(cmd(&bin("backup-runner")).arg("--check").arg("-c").arg(&conf));
    assert_eq!(out.code, 2);
    for n in ["section A, key ACTION", "section B, key NAME", "section SIZE, key PARAMETERS.OBJECTIVE"] {
        assert!(out.stderr.contains(n), "missing {n}:\n{}", out.stderr);
    }
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let out = run(cmd(&bin("backup-runner")).args(["--check", "-c", "/nonexistent/conf.json"]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot read /nonexistent/conf.json"), "{}", out.stderr);
}

/// Every config shipped in conf/ parses. Their paths point at a server's files (conf.json)
/// or at what scripts/demo.sh creates (demo.json, run whole by the pipeline test), so only
/// missing paths (and stages this build lacks) may be reported.
#[test]
fn every_shipped_config_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("conf")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "json") {
            continue;
        }
        seen += 1;
        let out = run(cmd(&bin("backup-runner")).arg("--check").arg("-c").arg(&p));
        assert!(
            !out.stderr.contains("invalid JSON") && !out.stderr.contains("panicked"),
            "{}: {}",
            p.display(),
            out.stderr
        );
        for line in out.stderr.lines().filter(|l| l.contains(": section ")) {
            assert!(
                line.contains("does not exist") || line.contains("not available in this build"),
                "{}: unexpected problem: {line}",
                p.display()
            );
        }
    }
    assert!(seen >= 2, "conf/ holds {seen} configs");
}

fn check(conf: &Path) -> Out {
    run(cmd(&bin("backup-runner")).arg("--check").arg("-c").arg(conf))
}

/// `--check` exits 2 with every fragment in its error, and `-r` refuses the config too.
#[track_caller]
fn refused(conf: &Path, needles: &[&str]) {
    let out = check(conf).expect(2);
    for n in needles {
        assert!(out.stderr.contains(n), "error lacks {n:?}:\n{}", out.stderr);
    }
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(conf)).expect(2);
}

fn private(p: &Path, mode: u32) -> &Path {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A LOG_FOLDER naming the config (or another file that is no log) would get the run's log
/// appended: the config would then no longer parse, and the next night would not run.
#[test]
fn a_log_folder_that_is_not_a_log_is_refused() {
    let sb = Sandbox::new();
    let conf = sb.join("conf.json");
    let text = |log: &Path| {
        let mut general = sb.general();
        general["LOG_FOLDER"] = json!(log);
        json!({"GENERAL": general, "SIZE": {"ACTION": "load", "NAME": "size-calc", "PARAMETERS": {"OBJECTIVES": sb.path()}}})
            .to_string()
    };
    sb.config_text("conf.json", &text(&conf));
    let before = std::fs::read(&conf).unwrap();
    refused(&conf, &["section GENERAL, key LOG_FOLDER", "is the config file itself"]);
    assert_eq!(std::fs::read(&conf).unwrap(), before, "the run wrote into its config");
    // The config through a symbolic link named like a log.
    let link = sb.join("backup.log");
    std::os::unix::fs::symlink(&conf, &link).unwrap();
    sb.config_text("conf.json", &text(&link));
    refused(&conf, &["section GENERAL, key LOG_FOLDER", "is the config file itself"]);
    let other = sb.write("other.json", br#"{"GENERAL": {}}"#);
    sb.config_text("conf.json", &text(&other));
    refused(&conf, &["section GENERAL, key LOG_FOLDER", "is a JSON file"]);
    let binary = sb.write("data.log", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0, 0]);
    sb.config_text("conf.json", &text(&binary));
    refused(&conf, &["section GENERAL, key LOG_FOLDER", "not a text file"]);
    // A log file that is one is fine, and gets the log.
    let log = sb.write("nc.log", b"2026-01-01 04:00:00 INFO  [backup-runner] an earlier run\n");
    sb.config_text("conf.json", &text(&log));
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf)).expect(0);
    assert!(std::fs::read_to_string(&log).unwrap().lines().count() > 1);
}

/// `_…`, COMMENT and DESCRIPTION are notes wherever they are: never a flag of a program, never
/// an unknown parameter of a stage.
#[test]
fn notes_reach_no_stage() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("rec")).unwrap();
    let conf = sb.config_text(
        "conf.json",
        &json!({
            "_comment": "nightly",
            "GENERAL": sb.general(),
            "NOTIFY": {"COMMENT": "none yet", "_on_call": "ops"},
            "MINE": {"ACTION": "execute", "NAME": "tests", "EXECUTABLE": fixture("record.sh"), "DESCRIPTION": "ours",
                "PARAMETERS": {"_comment": "A is the answer", "COMMENT": "x", "Description": "y", "A": "42"}},
            "SIZE": {"ACTION": "load", "NAME": "size-calc", "_comment": "how big",
                "PARAMETERS": {"OBJECTIVES": sb.path(), "_comment": "all of it"}},
        })
        .to_string(),
    );
    check(&conf).expect(0);
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).env("RECORD", sb.join("rec"))).expect(0);
    let argv = std::fs::read_to_string(sb.join("rec/MINE.argv")).unwrap();
    assert!(argv.contains("--A\n42\n"), "{argv}");
    for note in ["_comment", "COMMENT", "Description", "A is the answer"] {
        assert!(!argv.contains(note), "{note} reached the program:\n{argv}");
    }
}

#[test]
fn a_program_without_execute_bit_needs_execute_with() {
    let sb = Sandbox::new();
    let prog = sb.write("mine.sh", b"#!/bin/sh\nexit 0\n");
    private(&prog, 0o644);
    let section = |with: Option<&str>| {
        let mut s = json!({"ACTION": "execute", "NAME": "mine", "EXECUTABLE": "mine.sh"});
        if let Some(w) = with {
            s["EXECUTE_WITH"] = json!(w);
        }
        s
    };
    let conf = sb.config(&[("MINE", section(None))]);
    refused(&conf, &["section MINE, key EXECUTABLE", "is not executable (mode 0644)", "EXECUTE_WITH"]);
    check(&sb.config(&[("MINE", section(Some("sh")))])).expect(0);
    private(&prog, 0o755);
    check(&sb.config(&[("MINE", section(None))])).expect(0);
}

/// The key file rules of the encryption stage, at --check, for encryption and storage alike.
#[test]
fn key_files_are_checked_before_the_night() {
    let sb = Sandbox::new();
    let key = sb.join("key");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(&key)).expect(0);
    let config = |key: &Path| {
        sb.config(&[
            (
                "ENC",
                json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                    "KEY_FILE": key, "OBJECTIVES": sb.join("in"), "DESTINATION": sb.join("enc")}}),
            ),
            (
                "STORE",
                json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                    "KEY_FILE": key, "OBJECTIVES": sb.join("enc"), "DESTINATION": "local", "PATH": sb.join("store")}}),
            ),
        ])
    };
    check(&config(&key)).expect(0);
    private(&key, 0o644);
    refused(
        &config(&key),
        &["section ENC, key PARAMETERS.KEY_FILE", "section STORE, key PARAMETERS.KEY_FILE", "chmod 600"],
    );
    let hex = std::fs::read_to_string(&key).unwrap();
    let commented = sb.write("commented", format!("{hex}# made for web1, 2026-01-01\n").as_bytes());
    refused(
        &config(private(&commented, 0o600)),
        &["section ENC, key PARAMETERS.KEY_FILE", "section STORE, key PARAMETERS.KEY_FILE", "followed by more lines"],
    );
    let short = sb.write("short", b"12345");
    refused(&config(private(&short, 0o600)), &["holds 5 bytes", "64 hexadecimal digits", "32 raw bytes"]);
}

/// A password in a URL under a key that is not secret: in the environment for a built-in stage
/// (which reads NCB_PARAM_<KEY>), never in argv; refused for a user program (covered above).
#[test]
fn url_passwords_stay_out_of_argv() {
    let sb = Sandbox::new();
    sb.write("data/kept.txt", b"kept");
    sb.write("data/secret.txt", b"left out");
    let conf = sb.config(&[(
        "FILES",
        json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
            "FILESET_INCLUDE": sb.join("data"), "DESTINATION": sb.join("out"),
            "FILESET_EXCLUDE": "https://mirror:hunter2@example.invalid/x secret.txt"}}),
    )]);
    let plan = run(cmd(&bin("backup-runner")).arg("--dry-run").arg("-c").arg(&conf)).expect(0).stdout;
    assert!(plan.contains("NCB_PARAM_FILESET_EXCLUDE=****") && !plan.contains("hunter2"), "{plan}");
    assert!(!plan.contains("--FILESET_EXCLUDE"), "{plan}");
    // The stage got the value all the same: secret.txt is left out.
    run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf)).expect(0);
    let archive = std::fs::read_dir(sb.join("out")).unwrap().next().unwrap().unwrap().path();
    let list = std::process::Command::new("tar").arg("tzf").arg(&archive).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("data/kept.txt") && !list.contains("secret.txt"), "{list}");
}
