//! Full metadata: extended attributes (user.*, security.capability), POSIX ACLs (access and
//! default), nanosecond modification times and sparse files, written as GNU tar writes them
//! with `--xattrs --acls --sparse`, and brought back both by `tar --xattrs --acls -x` and by
//! `backup-runner restore`. Set with the real tools (setfattr, setfacl, setcap, truncate).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nc_backup_e2e::{Sandbox, bin, cmd, run};
use serde_json::json;

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tree: a file with a user xattr, an access ACL and a nanosecond time; a folder with a
/// default ACL; a binary with a file capability; a 64 MiB file with two small data regions.
fn make(data: &Path) {
    let d = data.display();
    sh(&format!(
        "mkdir -p {d}/shared
         printf 'hello\\n' > {d}/f
         setfattr -n user.color -v blue {d}/f
         setfacl -m u:daemon:r--,g:99:rw- {d}/f
         touch -d '2020-01-02 03:04:05.123456789' {d}/f
         setfacl -d -m u:daemon:rwx {d}/shared
         cp /bin/true {d}/ping
         setcap cap_net_raw+ep {d}/ping
         truncate -s 64M {d}/sparse
         printf 'start' | dd of={d}/sparse conv=notrunc status=none
         printf 'middle' | dd of={d}/sparse bs=1 seek=33554432 conv=notrunc status=none"
    ));
}

/// What the tools say of each entry, to compare a restored tree with the original.
fn describe(root: &Path) -> Vec<String> {
    let r = root.display();
    vec![
        sh(&format!("cd {r} && getfattr -d -m user. f")),
        sh(&format!("cd {r} && getfacl -cp f shared")),
        sh(&format!("cd {r} && getcap ping")),
        sh(&format!("cd {r} && stat -c '%y %s %n' f sparse")),
        sh(&format!("cd {r} && sha256sum f sparse ping")),
    ]
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn xattrs_acls_capabilities_ns_times_and_sparse_files_come_back_by_gnu_tar_and_by_us() {
    let sb = Sandbox::new();
    let data = sb.join("data");
    make(&data);
    let want = describe(&data);
    assert!(want[2].contains("cap_net_raw"), "setcap did not take: {want:?}");
    assert!(allocated(&data.join("sparse")) < 1 << 20, "the file system did not keep the holes");

    let w = sb.join("work");
    let conf = sb.config(&[
        (
            "FILES",
            json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
            "FILESET_INCLUDE": data, "DESTINATION": w.join("files")}}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": w.join("files"), "DESTINATION": "local", "PATH": sb.join("store")}}),
        ),
    ]);
    let out = run(cmd(&bin("backup-runner")).args(["-r", "--json", "-c"]).arg(&conf)).expect(0);
    let run_id = out.json()["run_id"].as_str().unwrap().to_owned();
    let archive: PathBuf = sb.join(format!("store/testhost/{run_id}/testhost_FILES_{run_id}.tar.gz"));
    // The sparse file is stored as its data only.
    assert!(std::fs::metadata(&archive).unwrap().len() < 1 << 20);
    let rel = data.strip_prefix("/").unwrap();

    // GNU tar, as an operator restores by hand.
    let by_tar = sb.join("by-tar");
    std::fs::create_dir(&by_tar).unwrap();
    sh(&format!("tar --xattrs --xattrs-include='*' --acls -xzf {} -C {}", archive.display(), by_tar.display()));
    assert_eq!(describe(&by_tar.join(rel)), want, "GNU tar");
    assert!(allocated(&by_tar.join(rel).join("sparse")) < 1 << 20, "GNU tar filled the holes");

    // backup-runner restore.
    let ours = sb.join("ours");
    run(cmd(&bin("backup-runner")).args(["restore", "-c"]).arg(&conf).arg("--to").arg(&ours)).expect(0);
    assert_eq!(describe(&ours.join(rel)), want, "backup-runner restore");
    assert!(allocated(&ours.join(rel).join("sparse")) < 1 << 20, "our restore filled the holes");

    // And an archive GNU tar made (text ACLs beside the raw ones, its own sparse format) is
    // restored by us with the same metadata: stored by `storage` alone, restored whole.
    let gnu = sb.join("gnu/made-by-gnu.tar.gz");
    std::fs::create_dir_all(gnu.parent().unwrap()).unwrap();
    sh(&format!("tar --xattrs --acls --sparse -czf {} -C / {}", gnu.display(), rel.display()));
    run(cmd(&bin("storage"))
        .env("NCB_RUN_ID", "20261201T000000Z-9a11")
        .args(["--HOSTNAME", "testhost", "--DESTINATION", "local", "--PATH"])
        .arg(sb.join("store2"))
        .arg("--OBJECTIVES")
        .arg(sb.join("gnu")))
    .expect(0);
    let conf2 = sb.config_text(
        "conf2.json",
        &json!({"GENERAL": sb.general(), "STORAGE": {"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": sb.join("gnu"), "DESTINATION": "local", "PATH": sb.join("store2")}}})
        .to_string(),
    );
    let from_gnu = sb.join("from-gnu");
    run(cmd(&bin("backup-runner")).args(["restore", "-c"]).arg(&conf2).arg("--to").arg(&from_gnu)).expect(0);
    assert_eq!(describe(&from_gnu.join(rel)), want, "backup-runner restore of GNU tar's archive");
    assert!(allocated(&from_gnu.join(rel).join("sparse")) < 1 << 20);
}
