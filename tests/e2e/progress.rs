//! Progress under the runner: on a terminal (a pseudo-terminal made by script(1)),
//! `backup-runner -r` draws each running stage's bar with bytes, rate and ETA (a database
//! dump, whose size is known only at its end: bytes and rate); under cron (no
//! terminal) and with -q it draws nothing, and the log never holds a bar.

use std::path::Path;
use std::process::Command;

use nc_backup_e2e::{Sandbox, Servers, bin, cmd, pseudo_random, run};
use serde_json::json;

use crate::db::{make_mysql_db, my_creds};

fn pipeline(sb: &Sandbox) -> std::path::PathBuf {
    let s = Servers::get();
    let db = make_mysql_db(&s);
    let creds = my_creds(sb, &s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    sb.write("data/big.bin", &pseudo_random(24 << 20, 3));
    sb.write("data/small.txt", b"small\n");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    let w = sb.join("work");
    sb.config(&[
        (
            "FILES",
            json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "MYSQL",
            json!({"ACTION": "execute", "NAME": "mysql-dump", "PARAMETERS": {
                "CREDENTIAL_PATH": creds, "MY_INSTANCES": s.var("NCB_MYSQL_PORT"), "HOST": "127.0.0.1",
                "DATABASES": db, "DESTINATION": w.join("files")}}),
        ),
        (
            "ENCRYPTION",
            json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "OBJECTIVES": w.join("files"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": sb.join("backups"),
                "REMOVE_OBJECTIVES": "True"}}),
        ),
    ])
}

/// What the terminal showed while `backup-runner ARGS -c CONF` ran under a pseudo-terminal.
fn on_a_terminal(conf: &Path, args: &str) -> String {
    let line = format!("{} {args} -c {}", bin("backup-runner").display(), conf.display());
    let out = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("TERM", "xterm")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

fn log_text(sb: &Sandbox) -> String {
    std::fs::read_dir(sb.join("log")).unwrap().flatten().map(|e| std::fs::read_to_string(e.path()).unwrap()).collect()
}

#[test]
fn the_running_stage_draws_bytes_rate_and_eta_on_a_terminal_and_nothing_elsewhere() {
    let sb = Sandbox::new();
    let conf = pipeline(&sb);

    let shown = on_a_terminal(&conf, "-r");
    // Each redraw returns to the line's start; the bars are the stages', labelled by section.
    let frames: Vec<&str> = shown.split('\r').collect();
    let bar = |section: &str, what: &str| {
        frames.iter().any(|f| f.starts_with(&format!("[{section}] {what}")) && f.contains("100%") && f.contains("/s"))
    };
    assert!(bar("FILES", "archive "), "{shown:?}");
    assert!(bar("ENCRYPTION", "encrypt "), "{shown:?}");
    assert!(bar("STORAGE", "store local"), "{shown:?}");
    // A dump's size is known only at its end: its bytes and rate.
    assert!(frames.iter().any(|f| f.starts_with("[MYSQL] dump ") && f.contains("/s")), "{shown:?}");
    // filesbackup's total is known (estimated beside the archiving): a percentage and an ETA
    // or the time it took, not a bare counter.
    assert!(
        frames.iter().any(|f| f.starts_with("[FILES] archive") && f.contains(" / 24.0 MiB") && f.contains("in 0:")),
        "{shown:?}"
    );
    // script(1)'s terminal has no size here: 80 columns assumed, and no bar wraps (a wrapped line
    // leaves its first part behind at every redraw).
    for f in frames.iter().filter(|f| f.starts_with('[')) {
        let visible = f.split("\x1b[K").next().unwrap();
        assert!(visible.chars().count() <= 79, "{} columns: {visible:?}", visible.chars().count());
    }
    // The stage's own lines still reach the terminal, on lines of their own.
    assert!(shown.contains("backup-runner: [FILES] ok in"), "{shown:?}");
    let log = log_text(&sb);
    assert!(log.contains("[FILES] ok in"), "{log}");
    for trace in ["NCB-PROGRESS", "\x1b[K", "ETA", "/s  in"] {
        assert!(!log.contains(trace), "{trace:?} in the log:\n{log}");
    }

    // -q on a terminal, and no terminal at all (cron): no bar.
    let quiet = on_a_terminal(&conf, "-r -q");
    assert!(!quiet.contains('%') && !quiet.contains("\x1b[K"), "{quiet:?}");
    let piped = run(cmd(&bin("backup-runner")).args(["-r", "-v", "-c"]).arg(&conf)).expect(0);
    assert!(piped.stderr.contains("[FILES] ok in"), "{}", piped.stderr);
    assert!(!piped.stderr.contains('\r') && !piped.stderr.contains("NCB-PROGRESS"), "{:?}", piped.stderr);
}
