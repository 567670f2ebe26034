//! storage into local folders: run layout, idempotence, manifest last, download, retention.

use std::path::Path;

use nc_backup_e2e::{Out, Sandbox, bin, cmd, run};

fn storage(run_id: &str, args: &[&str], extra: &[(&str, &Path)]) -> Out {
    let mut c = cmd(&bin("storage"));
    c.env("NCB_RUN_ID", run_id).args(["--HOSTNAME", "web1"]).args(args);
    for (k, v) in extra {
        c.arg(k).arg(v);
    }
    run(&mut c)
}

#[test]
fn store_again_download_and_detect_damage() {
    let sb = Sandbox::new();
    sb.write("enc/files.tar.gz.enc.000", &[1u8; 5000]);
    sb.write("enc/files.tar.gz.enc.manifest.json", b"{}");
    sb.write("enc/sub/db.dump", b"dump");
    sb.write("enc/.x.partial-1", b"unfinished");
    let id = "20261122T040000Z-abcd";
    let store = |lb: bool| {
        let mut extra = vec![("--OBJECTIVES", sb.join("enc")), ("--PATH", sb.join("store"))];
        if lb {
            extra.push(("--LOCAL_BACKUP", sb.join("local")));
        }
        let extra: Vec<(&str, &Path)> = extra.iter().map(|(k, v)| (*k, v.as_path())).collect();
        storage(id, &["--DESTINATION", "local"], &extra)
    };
    let first = store(true).expect(0).json();
    assert_eq!(first["data"]["stored"], 3);
    let run_dir = sb.join(format!("store/web1/{id}"));
    for f in ["files.tar.gz.enc.000", "sub/db.dump", "RUN-MANIFEST.json"] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    assert!(!run_dir.join(".x.partial-1").exists(), "an unfinished file was stored");
    assert!(sb.join(format!("local/web1/{id}/RUN-MANIFEST.json")).is_file(), "LOCAL_BACKUP copy missing");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("RUN-MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(m["files"].as_array().unwrap().len(), 3);
    // A re-run of the same run stores nothing twice.
    let again = store(false).expect(0).json();
    assert_eq!((again["data"]["stored"].as_u64(), again["data"]["skipped"].as_u64()), (Some(0), Some(3)));

    let back = sb.join("back");
    storage(
        "20261122T050000Z-ffff",
        &["--download", "--RUN", "latest"],
        &[("--PATH", &sb.join("store")), ("--DESTINATION", &back)],
    )
    .expect(0);
    assert_eq!(std::fs::read(back.join("sub/db.dump")).unwrap(), b"dump");
    assert_eq!(std::fs::read(back.join("files.tar.gz.enc.000")).unwrap(), vec![1u8; 5000]);

    // One flipped byte in the store: the download names the file and does not deliver it.
    let stored = run_dir.join("files.tar.gz.enc.000");
    let mut b = std::fs::read(&stored).unwrap();
    b[10] ^= 1;
    std::fs::write(&stored, b).unwrap();
    let back2 = sb.join("back2");
    let out = storage("x", &["--download"], &[("--PATH", &sb.join("store")), ("--DESTINATION", &back2)]).expect(1);
    assert!(out.stderr.contains("files.tar.gz.enc.000") && out.stderr.contains("damaged"), "{}", out.stderr);
    assert!(!back2.join("files.tar.gz.enc.000").exists());
}

#[test]
fn a_run_without_its_manifest_is_incomplete() {
    let sb = Sandbox::new();
    sb.write("store/web1/20261101T000000Z-aaaa/part", b"x");
    let out = storage(
        "x",
        &["--download", "--RUN", "20261101T000000Z-aaaa"],
        &[("--PATH", &sb.join("store")), ("--DESTINATION", &sb.join("b"))],
    )
    .expect(1);
    assert!(out.stderr.contains("incomplete"), "{}", out.stderr);
    let out =
        storage("x", &["--download"], &[("--PATH", &sb.join("store")), ("--DESTINATION", &sb.join("b"))]).expect(1);
    assert!(out.stderr.contains("no complete run"), "{}", out.stderr);
}

#[test]
fn retention_keeps_what_the_rules_say_and_never_the_current_run() {
    let sb = Sandbox::new();
    let runs = [
        "20261101T010000Z-0001",
        "20261101T230000Z-0002",
        "20261102T120000Z-0003",
        "20261103T080000Z-0004",
        "20261103T200000Z-0005",
    ];
    for r in runs {
        sb.write(&format!("store/web1/{r}/f"), b"x");
        sb.write(
            &format!("store/web1/{r}/RUN-MANIFEST.json"),
            format!(r#"{{"format":"ncb-run","version":1,"run_id":"{r}","host":"web1","created":"x","files":[]}}"#)
                .as_bytes(),
        );
    }
    sb.write("store/web1/20261030T000000Z-0000/f", b"incomplete, and older than REMOVE_INCOMPLETE_AFTER");
    sb.write("data/new", b"n");
    let current = "20261104T000000Z-0006";
    let args = ["--DESTINATION", "local", "--KEEP_LAST", "1", "--KEEP_DAILY", "2"];
    let extra = [("--PATH", sb.join("store")), ("--OBJECTIVES", sb.join("data"))];
    let extra: Vec<(&str, &Path)> = extra.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let dry = storage(current, &[&args[..], &["--DRY_RUN", "True"]].concat(), &extra).expect(0).json();
    let would: Vec<&str> =
        dry["data"]["would_delete"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // last 1 = the current run; daily 2 = the newest of 11-04 (current) and of 11-03 (0005);
    // and the incomplete run of 10-30, older than 7 days.
    assert_eq!(would.len(), 5, "{would:?}");
    assert!(sb.join("store/web1/20261101T010000Z-0001").exists(), "DRY_RUN deleted");
    storage(current, &args, &extra).expect(0);
    let mut left: Vec<String> = std::fs::read_dir(sb.join("store/web1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["20261103T200000Z-0005", current]);
}

/// DESTINATION rclone, to an SFTP remote served by the test sshd on 127.0.0.1.
#[test]
fn rclone_over_sftp_stores_skips_downloads_and_prunes() {
    let s = nc_backup_e2e::Servers::get();
    let sb = Sandbox::new();
    sb.write("enc/a.bin", &[7u8; 300_000]);
    sb.write("enc/sub/b.txt", b"bee");
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=root,key_file={}:{}",
        s.var("NCB_SSH_PORT"),
        s.var("NCB_SSH_KEY"),
        sb.join("remote").display()
    );
    let store = |run_id: &str, extra: &[&str]| {
        let mut args = vec!["--DESTINATION", "rclone", "--RCLONE_REMOTE", remote.as_str()];
        args.extend_from_slice(extra);
        storage(run_id, &args, &[("--OBJECTIVES", &sb.join("enc"))])
    };
    let r1 = "20261120T000000Z-1111";
    assert_eq!(store(r1, &[]).expect(0).json()["data"]["stored"], 2);
    assert!(sb.join(format!("remote/web1/{r1}/RUN-MANIFEST.json")).is_file());
    assert_eq!(std::fs::read(sb.join(format!("remote/web1/{r1}/sub/b.txt"))).unwrap(), b"bee");
    assert_eq!(store(r1, &[]).expect(0).json()["data"]["skipped"], 2);
    let back = sb.join("back");
    storage("x", &["--download", "--SOURCE", "rclone", "--RCLONE_REMOTE", &remote], &[("--DESTINATION", &back)])
        .expect(0);
    assert_eq!(std::fs::read(back.join("a.bin")).unwrap(), vec![7u8; 300_000]);
    store("20261121T000000Z-2222", &["--KEEP_LAST", "1"]).expect(0);
    let left: Vec<String> = std::fs::read_dir(sb.join("remote/web1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["20261121T000000Z-2222"]);
}

/// The rclone upload of a storage killed with SIGKILL dies with it (a parent-death signal,
/// besides the broken pipes of its output): no upload goes on unattended after its storage is
/// gone.
#[test]
fn rclone_dies_with_a_killed_storage() {
    let s = nc_backup_e2e::Servers::get();
    let sb = Sandbox::new();
    // Slowed down (RCLONE_BWLIMIT) so that the upload is still going when storage is killed.
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    sb.write("enc/big.bin", &big);
    drop(big);
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=root,key_file={}:{}",
        s.var("NCB_SSH_PORT"),
        s.var("NCB_SSH_KEY"),
        sb.join("remote").display()
    );
    let mut child = cmd(&bin("storage"))
        .env("NCB_RUN_ID", "20261201T000000Z-dead")
        .env("RCLONE_BWLIMIT", "1M")
        .args(["--HOSTNAME", "web1", "--DESTINATION", "rclone", "--RCLONE_REMOTE", &remote, "--OBJECTIVES"])
        .arg(sb.join("enc"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let parent = child.id();
    let rclones = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit(')').next().unwrap_or("");
                let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let copying = cmdline.split(|b| *b == 0).any(|a| a == b"copyto");
                stat.contains("(rclone)") && ppid == Some(parent) && copying
            })
            .collect()
    };
    let mut uploading = Vec::new();
    assert!(
        nc_backup_e2e::wait_for(std::time::Duration::from_secs(30), || {
            uploading = rclones();
            !uploading.is_empty()
        }),
        "storage never started its upload with rclone copyto"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    for pid in uploading {
        assert!(
            nc_backup_e2e::wait_for(std::time::Duration::from_secs(2), || !nc_backup_e2e::alive(pid)),
            "rclone {pid} outlived its storage"
        );
    }
}
