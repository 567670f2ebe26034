//! `backup-runner daemon`: one process runs several configs on their GENERAL SCHEDULE, never
//! two runs of one config at once, and passes a stop signal on to the backups it runs. Real
//! time: it waits for two minute boundaries (about 1-2 minutes).

use std::process::Stdio;
use std::time::Duration;

use nc_backup_e2e::{Sandbox, alive, bin, cmd, fixture, wait_for};
use serde_json::json;

fn lines(p: &std::path::Path) -> usize {
    std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn daemon_runs_several_configs_on_schedule_without_overlap() {
    let sb = Sandbox::new();
    let rec = sb.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let conf = |name: &str, section: &str| {
        let mut general = sb.general();
        general["SCHEDULE"] = json!("* * * * *");
        general["WORK_FOLDER"] = json!(sb.join(format!("work-{name}")));
        let body = json!({"GENERAL": general, section: {"ACTION": "execute", "NAME": "tests", "EXECUTABLE": fixture("record.sh")}});
        sb.config_text(&format!("{name}.json"), &body.to_string())
    };
    let (a, b) = (conf("a", "SLOW"), conf("b", "QUICK"));
    // SLOW's first run lasts until it is stopped: the next minute must not start another.
    std::fs::write(rec.join("SLOW.sleep"), "").unwrap();
    let log = std::fs::File::create(sb.join("daemon.log")).unwrap();
    let mut daemon = cmd(&bin("backup-runner"))
        .arg("daemon")
        .arg("-c")
        .arg(&a)
        .arg(&b)
        .env("RECORD", &rec)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon_log = || std::fs::read_to_string(sb.join("daemon.log")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(75), || lines(&rec.join("order")) >= 2 && rec.join("SLOW.pid").exists()),
        "both configs should run at the first minute boundary:\n{}",
        daemon_log()
    );
    assert!(
        wait_for(Duration::from_secs(75), || std::fs::read_to_string(rec.join("order"))
            .unwrap_or_default()
            .matches("QUICK")
            .count()
            >= 2),
        "QUICK should run again at the next minute:\n{}",
        daemon_log()
    );
    let order = std::fs::read_to_string(rec.join("order")).unwrap();
    assert_eq!(order.matches("SLOW").count(), 1, "SLOW started while its run was going:\n{order}");
    assert!(daemon_log().contains("still going"), "{}", daemon_log());
    // Stopping the daemon stops the backup it runs, and waits for it.
    nc_backup_e2e::signal(daemon.id(), "TERM");
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit {status:?}:\n{}", daemon_log());
    assert!(rec.join("SLOW.term").exists(), "the running backup did not get the stop signal");
    let pid: u32 = std::fs::read_to_string(rec.join("SLOW.pid")).unwrap().trim().parse().unwrap();
    assert!(wait_for(Duration::from_secs(5), || !alive(pid)), "backup still running after the daemon stopped");
}

#[test]
fn daemon_refuses_a_config_without_schedule() {
    let sb = Sandbox::new();
    let conf = sb.config(&[]);
    let out = nc_backup_e2e::run(cmd(&bin("backup-runner")).arg("daemon").arg("-c").arg(&conf)).expect(2);
    assert!(out.stderr.contains("GENERAL has no SCHEDULE"), "{}", out.stderr);
}
