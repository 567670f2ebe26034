//! `backup-runner schedule`: crontab entries tagged with the config, for a throwaway user.

use std::process::Command;

use nc_backup_e2e::{Sandbox, bin, cmd, run};

const USER: &str = "ncbcrontest";

fn crontab_l() -> String {
    let out = Command::new("crontab").args(["-u", USER, "-l"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_is_idempotent_leaves_other_entries_and_removes_cleanly() {
    if Command::new("id").arg(USER).output().unwrap().status.code() != Some(0) {
        assert!(Command::new("useradd").args(["-M", "-s", "/usr/sbin/nologin", USER]).status().unwrap().success());
    }
    let unrelated = "0 1 * * * /bin/true # someone else's job\n";
    let mut c = Command::new("crontab").args(["-u", USER, "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), unrelated.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());

    let sb = Sandbox::new();
    let mut general = sb.general();
    general["SCHEDULE"] = serde_json::json!(["30 2 * * *", "@weekly"]);
    let dir = sb.join("50% conf");
    std::fs::create_dir(&dir).unwrap();
    let conf = dir.join("conf.json");
    std::fs::write(&conf, serde_json::json!({"GENERAL": general}).to_string()).unwrap();
    let sched =
        |action: &str| run(cmd(&bin("backup-runner")).args(["schedule", action, "--user", USER, "-c"]).arg(&conf));

    sched("install").expect(0);
    let out = sched("install").expect(0);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let tab = crontab_l();
    assert!(tab.starts_with(unrelated), "{tab}");
    let ours: Vec<&str> = tab.lines().filter(|l| l.contains("# nc-backup: ")).collect();
    assert_eq!(ours.len(), 2, "installing twice duplicated entries:\n{tab}");
    assert!(ours[0].starts_with("30 2 * * * ") && ours[1].starts_with("@weekly "), "{tab}");
    assert!(ours[0].contains("50\\% conf/conf.json") && ours[0].contains(" -r -c "), "% not escaped:\n{tab}");
    assert_eq!(sched("list").expect(0).stdout.lines().count(), 2);

    let systemd = run(cmd(&bin("backup-runner")).args(["schedule", "--systemd", "-c"]).arg(&conf)).expect(0).stdout;
    assert!(
        systemd.contains("OnCalendar=*-*-* 2:30:00")
            && systemd.contains("OnCalendar=weekly")
            && systemd.contains("ExecStart="),
        "{systemd}"
    );

    assert!(sched("remove").expect(0).stdout.contains("removed 2"));
    assert_eq!(crontab_l(), unrelated);
}

#[test]
fn schedule_without_a_schedule_is_a_config_error() {
    let sb = Sandbox::new();
    let conf = sb.config(&[]);
    let out = run(cmd(&bin("backup-runner")).args(["schedule", "install", "-c"]).arg(&conf)).expect(2);
    assert!(out.stderr.contains("no SCHEDULE"), "{}", out.stderr);
}
