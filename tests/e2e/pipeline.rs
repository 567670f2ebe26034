//! The whole pipeline through backup-runner, as conf/demo.json runs it, restored by hand
//! with `encryption -d` and GNU tar.

use std::process::Command;

use nc_backup_e2e::{Sandbox, bin, cmd, repo, run};

#[test]
fn files_compression_encryption_then_restore_by_hand() {
    let sb = Sandbox::new();
    sb.write("data/docs/a.txt", b"alpha\n");
    sb.write("data/docs/b.txt", &b"beta ".repeat(400_000));
    sb.write("data/skip.tmp", b"no");
    std::os::unix::fs::symlink("docs/a.txt", sb.join("data/link")).unwrap();
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    // conf/demo.json with its folder moved into the sandbox.
    let demo = std::fs::read_to_string(repo().join("conf/demo.json")).unwrap();
    let conf = sb.config_text("conf.json", &demo.replace("/tmp/nc-backup-demo", &sb.path().display().to_string()));
    let out = run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).arg("--json")).expect(0);
    let report = out.json();
    let run_id = report["run_id"].as_str().unwrap();
    let statuses: Vec<&str> =
        report["sections"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ok", "ok", "ok", "ok", "ok"]);
    let stored = sb.join(format!("backups/demo-host/{run_id}"));
    assert!(stored.join("files.tar.gz.enc.manifest.json").is_file() && stored.join("RUN-MANIFEST.json").is_file());
    for gone in ["work/files", "work/compressed", "work/encrypted"] {
        assert!(!sb.join(gone).exists(), "REMOVE_OBJECTIVES left {gone}");
    }
    assert_eq!(report["sections"][4]["data"]["files"], std::fs::read_dir(&stored).unwrap().count());

    let restore = sb.join("restore");
    run(cmd(&bin("storage"))
        .args(["--download", "--PREFIX", "demo-host"])
        .arg("--PATH")
        .arg(sb.join("backups"))
        .arg("--DESTINATION")
        .arg(restore.join("fetched")))
    .expect(0);
    run(cmd(&bin("encryption"))
        .arg("-d")
        .arg("--KEY_FILE")
        .arg(sb.join("key_file"))
        .arg("--OBJECTIVES")
        .arg(restore.join("fetched/files"))
        .arg("--DESTINATION")
        .arg(&restore))
    .expect(0);
    let sh = |s: String| assert!(Command::new("sh").arg("-c").arg(&s).status().unwrap().success(), "{s}");
    let r = restore.display();
    sh(format!("tar -xzf {r}/files.tar.gz -C {r} && tar -xzf {r}/files/*.tar.gz -C {r}"));
    let restored = restore.join(sb.join("data").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("docs/b.txt")).unwrap(), b"beta ".repeat(400_000));
    assert_eq!(std::fs::read_link(restored.join("link")).unwrap(), std::path::Path::new("docs/a.txt"));
    assert!(!restored.join("skip.tmp").exists(), "exclude ignored");
}
