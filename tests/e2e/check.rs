//! `backup-runner --check`: broken configs give exit 2 and name the section and key; every
//! config shipped in conf/ is parsed.

use nc_backup_e2e::{Sandbox, bin, cmd, fixture, repo, run};

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
