//! Runs in archive storage classes, on moto (it keeps and reports storage classes and models
//! RestoreObject; Garage ignores classes): data in GLACIER, manifests in STANDARD; `runs` and
//! `verify` work from the manifests and the listing; `verify --read-data` and `restore` name
//! the objects to thaw; `restore --thaw` thaws them; the restore then brings the bytes back;
//! retention works on such runs; a run stored with its manifest archived (older versions) is
//! thawed whole; a thaw in progress is neither asked for twice nor read.

use std::path::Path;
use std::process::Command;

use nc_backup_e2e::{Sandbox, Servers, bin, cmd, pseudo_random, run, unique};

pub(crate) struct Moto {
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
}

impl Moto {
    fn new() -> Self {
        let s = Servers::get();
        let m = Moto { endpoint: s.var("NCB_MOTO_ENDPOINT"), bucket: unique("ncbthaw").replace('_', "-") };
        m.aws(&["s3api", "create-bucket", "--bucket", &m.bucket]);
        m
    }

    pub(crate) fn aws(&self, args: &[&str]) -> String {
        nc_backup_e2e::moto_aws(&self.endpoint, args)
    }

    /// Every object under `prefix` with its storage class, as the listing reports it.
    fn classes(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.aws(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &self.bucket,
            "--prefix",
            prefix,
            "--query",
            "Contents[].[Key,StorageClass]",
            "--output",
            "text",
        ]);
        let mut v: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, c)| (k.trim().to_owned(), c.trim().to_owned()))
            .collect();
        v.sort();
        v
    }

    /// HeadObject's Restore header (`None` when there is none).
    fn restore_header(&self, key: &str) -> String {
        let out = self.aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &self.bucket,
            "--key",
            key,
            "--query",
            "Restore",
            "--output",
            "text",
        ]);
        out.trim().to_owned()
    }

    fn runner(&self) -> Command {
        let mut c = cmd(&bin("backup-runner"));
        c.env("AWS_ACCESS_KEY_ID", "moto")
            .env("AWS_SECRET_ACCESS_KEY", "moto")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }
}

/// Files, a tar of them, encrypted in 1 MiB parts, stored to moto with STORAGE_CLASS GLACIER.
fn config(sb: &Sandbox, m: &Moto, prefix: &str, storage_extra: &[(&str, &str)]) -> std::path::PathBuf {
    let w = sb.join("work");
    let mut storage = serde_json::json!({
        "OBJECTIVES": w.join("encrypted"), "DESTINATION": "s3", "BUCKET_NAME": m.bucket,
        "ENDPOINT_URL": m.endpoint, "PREFIX": prefix, "STORAGE_CLASS": "GLACIER",
        "PART_SIZE_MB": "5", "REMOVE_OBJECTIVES": "True"});
    for (k, v) in storage_extra {
        storage[*k] = serde_json::Value::from(*v);
    }
    sb.config(&[
        (
            "FILESET",
            serde_json::json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "ENCRYPTION",
            serde_json::json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "FILE_SIZE": "1", "OBJECTIVES": w.join("files"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        ("STORAGE", serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": storage})),
    ])
}

fn write_data(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("etc/app.conf".to_owned(), b"key = value\n".to_vec()),
        ("var/blob.bin".to_owned(), pseudo_random(3 << 20, 11)),
        ("var/small.txt".to_owned(), b"small".to_vec()),
    ];
    for (rel, bytes) in &files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    files
}

#[test]
fn glacier_run_listed_verified_thawed_and_restored_on_moto() {
    let m = Moto::new();
    // moto's default: a restore is done at once.
    moto_api(&m.endpoint, "unset-transition", r#"{"model_name": "s3::keyrestore"}"#);
    let sb = Sandbox::new();
    let files = write_data(&sb.join("data"));
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    let prefix = unique("ncbglacier");
    let conf = config(&sb, &m, &prefix, &[]);
    let report = run(m.runner().arg("-r").arg("-c").arg(&conf).arg("--json")).expect(0).json();
    let run1 = report["run_id"].as_str().unwrap().to_owned();

    // Read back by the aws CLI: the data parts in GLACIER, both manifests in STANDARD.
    let classes = m.classes(&format!("{prefix}/{run1}/"));
    let is_manifest = |k: &str| k.ends_with("/RUN-MANIFEST.json") || k.ends_with(".enc.manifest.json");
    let data: Vec<String> = classes.iter().filter(|(k, _)| !is_manifest(k)).map(|(k, _)| k.clone()).collect();
    assert!(data.len() >= 3, "expected several 1 MiB parts: {classes:?}");
    for (k, c) in &classes {
        assert_eq!(c, if is_manifest(k) { "STANDARD" } else { "GLACIER" }, "{k}");
    }
    assert!(classes.iter().any(|(k, _)| k.ends_with("/RUN-MANIFEST.json")), "{classes:?}");
    assert!(classes.iter().any(|(k, _)| k.ends_with(".enc.manifest.json")), "{classes:?}");

    // runs and verify (sizes) need only the manifests and a listing.
    let runs = run(m.runner().arg("runs").arg("-c").arg(&conf).arg("--json")).expect(0).json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0]["run_id"].as_str(), runs[0]["complete"].as_bool()), (Some(run1.as_str()), Some(true)));
    let v = run(m.runner().arg("verify").arg("-c").arg(&conf)).expect(0);
    assert!(v.stdout.contains(&format!("OK  s3://{}", m.bucket)), "{}", v.stdout);

    // verify --read-data: exit 1, every object to thaw named with its class, none read.
    let v = run(m.runner().arg("verify").arg("-c").arg(&conf).arg("--read-data")).expect(1);
    for k in &data {
        assert!(v.stdout.contains(&format!("{k} (GLACIER, not thawed): must be thawed")), "{k}:\n{}", v.stdout);
    }
    assert!(v.stdout.contains("--thaw DAYS") && !v.stdout.contains("InvalidObjectState"), "{}", v.stdout);
    let vj = run(m.runner().arg("verify").arg("-c").arg(&conf).arg("--read-data").arg("--json")).expect(1).json();
    assert_eq!(vj[0]["read_items"], 0, "{vj}");

    // restore: exit 1 naming the objects, before anything is read; the folder stays empty.
    let to = sb.join("restored");
    let r = run(m.runner().arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to)).expect(1);
    for k in &data {
        assert!(r.stderr.contains(&format!("{k} (GLACIER, not thawed)")), "{k}:\n{}", r.stderr);
    }
    assert!(r.stderr.contains(&format!("{} object(s) must be thawed", data.len())), "{}", r.stderr);
    assert!(!r.stderr.contains("InvalidObjectState"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&to).unwrap().count(), 0, "a refused restore left files");

    // restore --thaw 1: a RestoreObject per archived object, nothing restored, exit 0.
    let t = run(m.runner().arg("restore").arg("-c").arg(&conf).args(["--thaw", "1"])).expect(0);
    assert!(
        t.stdout.contains(&format!("{} object(s) thawing", data.len()))
            && t.stdout.contains("run the same restore without --thaw")
            && t.stdout.contains("GLACIER: 3-5 h"),
        "{}",
        t.stdout
    );
    for k in &data {
        let h = m.restore_header(k);
        assert!(h.contains("ongoing-request="), "{k}: Restore header {h}");
    }
    let manifest = format!("{prefix}/{run1}/RUN-MANIFEST.json");
    assert_eq!(m.restore_header(&manifest), "None", "a STANDARD manifest was thawed");
    // moto 5.2.5 completes a restore at once (ongoing-request="false"): nothing left to thaw.
    let again = run(m.runner().arg("restore").arg("-c").arg(&conf).args(["--thaw", "1", "--json"])).expect(0).json();
    assert_eq!((again["requested"].as_u64(), again["readable"].as_u64()), (Some(0), Some(data.len() as u64)));
    let e = run(m.runner().arg("restore").arg("-c").arg(&conf).args(["--thaw", "0"])).expect(2);
    assert!(e.stderr.contains("--thaw"), "{}", e.stderr);

    // Thawed: verify reads and decrypts everything; the restore brings the bytes back.
    let vj = run(m.runner().arg("verify").arg("-c").arg(&conf).arg("--read-data").arg("--json")).expect(0).json();
    // The files archive and its index.
    assert_eq!(vj[0]["decrypted"], 2, "{vj}");
    let out = run(m.runner().arg("restore").arg("-c").arg(&conf).arg("--to").arg(&to).arg("--json")).expect(0);
    assert_eq!(out.json()["run_id"].as_str(), Some(run1.as_str()));
    let restored = to.join(sb.join("data").strip_prefix("/").unwrap());
    for (rel, bytes) in &files {
        assert!(std::fs::read(restored.join(rel)).unwrap() == *bytes, "{rel} differs");
    }

    // A second run with KEEP_LAST 1: retention reads the STANDARD manifests and prunes run 1.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let conf2 = config(&sb, &m, &prefix, &[("KEEP_LAST", "1")]);
    let report = run(m.runner().arg("-r").arg("-c").arg(&conf2).arg("--json")).expect(0).json();
    let run2 = report["run_id"].as_str().unwrap().to_owned();
    assert_ne!(run1, run2);
    let left = m.classes(&format!("{prefix}/"));
    assert!(left.iter().all(|(k, _)| k.starts_with(&format!("{prefix}/{run2}/"))), "run 1 not pruned: {left:?}");
    assert!(left.iter().any(|(k, c)| k.ends_with("RUN-MANIFEST.json") && c == "STANDARD"), "{left:?}");

    // A run stored with its manifest archived too (as older versions did): `runs` says why it
    // cannot read it; `restore --run ID --thaw` thaws the whole run; then it reads again.
    let manifest2 = format!("s3://{}/{prefix}/{run2}/RUN-MANIFEST.json", m.bucket);
    m.aws(&["s3", "cp", &manifest2, &manifest2, "--storage-class", "GLACIER"]);
    let r = run(m.runner().arg("runs").arg("-c").arg(&conf2)).expect(1);
    assert!(r.stderr.contains("InvalidObjectState") && r.stderr.contains("--thaw DAYS"), "{}", r.stderr);
    let t = run(m.runner().arg("restore").arg("-c").arg(&conf2).args(["--run", &run2, "--thaw", "2", "--json"]))
        .expect(0)
        .json();
    let archived2 = m.classes(&format!("{prefix}/{run2}/")).iter().filter(|(_, c)| c == "GLACIER").count();
    assert_eq!(t["requested"].as_u64(), Some(archived2 as u64), "{t}");
    assert!(m.restore_header(&format!("{prefix}/{run2}/RUN-MANIFEST.json")).contains("ongoing-request="));
    let runs = run(m.runner().arg("runs").arg("-c").arg(&conf2).arg("--json")).expect(0).json();
    assert_eq!(runs[0]["run_id"].as_str(), Some(run2.as_str()), "{runs}");
    let to2 = sb.join("restored2");
    run(m.runner().arg("restore").arg("-c").arg(&conf2).arg("--to").arg(&to2)).expect(0);
    let restored = to2.join(sb.join("data").strip_prefix("/").unwrap());
    for (rel, bytes) in &files {
        assert!(std::fs::read(restored.join(rel)).unwrap() == *bytes, "{rel} differs (run 2)");
    }

    // A thaw that takes a while: moto's state manager moves a restore one step once an object
    // has been read 3 times (a HEAD counts 2), so two HEADs after RestoreObject see it in progress.
    let slow = SlowThaw::set(&m.endpoint, 3);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let report = run(m.runner().arg("-r").arg("-c").arg(&conf2).arg("--json")).expect(0).json();
    let run3 = report["run_id"].as_str().unwrap().to_owned();
    let frozen3 = m.classes(&format!("{prefix}/{run3}/")).iter().filter(|(_, c)| c == "GLACIER").count();
    let thaw = || run(m.runner().arg("restore").arg("-c").arg(&conf2).args(["--thaw", "1", "--json"])).expect(0).json();
    let t = thaw();
    assert_eq!((t["run_id"].as_str(), t["requested"].as_u64()), (Some(run3.as_str()), Some(frozen3 as u64)), "{t}");
    // Asked again while in progress: nothing asked twice.
    let t = thaw();
    assert_eq!((t["requested"].as_u64(), t["in_progress"].as_u64()), (Some(0), Some(frozen3 as u64)), "{t}");
    let to3 = sb.join("restored3");
    let r = run(m.runner().arg("restore").arg("-c").arg(&conf2).arg("--to").arg(&to3)).expect(1);
    assert!(r.stderr.contains("(GLACIER, thawing in progress)"), "{}", r.stderr);
    // Thawed now.
    run(m.runner().arg("restore").arg("-c").arg(&conf2).arg("--to").arg(&to3)).expect(0);
    drop(slow);
    let restored = to3.join(sb.join("data").strip_prefix("/").unwrap());
    for (rel, bytes) in &files {
        assert!(std::fs::read(restored.join(rel)).unwrap() == *bytes, "{rel} differs (run 3)");
    }
}

/// moto's state manager (`/moto-api/state-manager`): restores move one step (not restored, in
/// progress, restored) once an object has been read `reads` times; back to immediate on drop.
struct SlowThaw<'a> {
    endpoint: &'a str,
}

impl<'a> SlowThaw<'a> {
    fn set(endpoint: &'a str, reads: u32) -> Self {
        let t = format!(
            r#"{{"model_name": "s3::keyrestore", "transition": {{"progression": "manual", "times": {reads}}}}}"#
        );
        moto_api(endpoint, "set-transition", &t);
        SlowThaw { endpoint }
    }
}

impl Drop for SlowThaw<'_> {
    fn drop(&mut self) {
        moto_api(self.endpoint, "unset-transition", r#"{"model_name": "s3::keyrestore"}"#);
    }
}

fn moto_api(endpoint: &str, call: &str, body: &str) {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST /moto-api/state-manager/{call} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')), "moto {call}: {answer}");
}

/// PART_SIZE_MB and UPLOAD_CONCURRENCY out of range: refused (exit 2) before anything is
/// stored, naming the parameter and its range.
#[test]
fn s3_part_size_and_concurrency_out_of_range_are_refused() {
    let m = Moto::new();
    let sb = Sandbox::new();
    sb.write("enc/a.bin", b"a");
    for (key, value, range) in
        [("PART_SIZE_MB", "4", "5 to 512"), ("PART_SIZE_MB", "513", "5 to 512"), ("UPLOAD_CONCURRENCY", "0", "1 to 16")]
    {
        let mut c = cmd(&bin("storage"));
        c.env("NCB_RUN_ID", "20261122T010000Z-eeee")
            .env("AWS_ACCESS_KEY_ID", "moto")
            .env("AWS_SECRET_ACCESS_KEY", "moto")
            .args(["--HOSTNAME", "web1", "--DESTINATION", "s3", "--BUCKET_NAME", &m.bucket])
            .args(["--ENDPOINT_URL", &m.endpoint, &format!("--{key}"), value])
            .arg("--OBJECTIVES")
            .arg(sb.join("enc"));
        let out = run(&mut c).expect(2);
        // Refused by the stage's checks (as `--check` does), naming the flag.
        let said = format!("--{key} (--{}): {value} is out of range: {range}", key.to_lowercase().replace('_', "-"));
        assert!(
            out.stderr.contains(&said),
            "{said} not said:
{}",
            out.stderr
        );
    }
    assert!(m.classes("").is_empty(), "something was stored");
}

/// S3 Object Lock (issue 16), on moto, which implements it: every object of a run is locked,
/// retention keeps a locked run and says until when; a bucket without lock support (Garage)
/// is refused at --check.
#[test]
fn object_lock_on_moto_keeps_locked_runs_and_garage_is_refused_at_check() {
    let s = Servers::get();
    let endpoint = s.var("NCB_MOTO_ENDPOINT");
    let bucket = unique("ncblock").replace('_', "-");
    let m = Moto { endpoint: endpoint.clone(), bucket: bucket.clone() };
    m.aws(&["s3api", "create-bucket", "--bucket", &bucket, "--object-lock-enabled-for-bucket"]);
    let sb = Sandbox::new();
    sb.write("enc/a.bin", b"locked bytes");
    let store = |run_id: &str, extra: &[&str]| {
        let mut c = cmd(&bin("storage"));
        c.env("NCB_RUN_ID", run_id)
            .env("AWS_ACCESS_KEY_ID", "moto")
            .env("AWS_SECRET_ACCESS_KEY", "moto")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args([
                "--DESTINATION",
                "s3",
                "--BUCKET_NAME",
                &bucket,
                "--ENDPOINT_URL",
                &endpoint,
                "--REGION",
                "us-east-1",
            ])
            .args(["--HOSTNAME", "web1", "--OBJECT_LOCK_DAYS", "1", "--OBJECT_LOCK_MODE", "GOVERNANCE"])
            .arg("--OBJECTIVES")
            .arg(sb.join("enc"))
            .args(extra);
        run(&mut c)
    };
    let r1 = "20261130T000000Z-0001";
    store(r1, &[]).expect(0);
    for key in [format!("web1/{r1}/a.bin"), format!("web1/{r1}/RUN-MANIFEST.json")] {
        let mode = m.aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            &key,
            "--query",
            "[ObjectLockMode,ObjectLockRetainUntilDate]",
            "--output",
            "text",
        ]);
        assert!(mode.starts_with("GOVERNANCE"), "{key}: {mode}");
    }
    // A newer run with KEEP_LAST 1: retention would delete the first; it is locked: kept, said.
    let r2 = "20261201T000000Z-0002";
    let out = store(r2, &["--KEEP_LAST", "1"]).expect(0);
    assert!(
        out.stdout.contains("object-locked until") || out.stderr.contains("object-locked until"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let listed = m.aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        &bucket,
        "--prefix",
        &format!("web1/{r1}/"),
        "--query",
        "Contents[].Key",
        "--output",
        "text",
    ]);
    assert!(listed.contains("RUN-MANIFEST.json"), "the locked run was deleted: {listed}");

    // Garage implements no Object Lock: a config asking for it fails --check, naming the key.
    let conf = sb.config(&[(
        "STORAGE",
        serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": sb.join("enc"), "DESTINATION": "s3", "BUCKET_NAME": s.var("NCB_S3_BUCKET"),
            "ENDPOINT_URL": s.var("NCB_S3_ENDPOINT"), "REGION": s.var("NCB_S3_REGION"), "OBJECT_LOCK_DAYS": "30"}}),
    )]);
    let mut c = cmd(&bin("backup-runner"));
    c.args(["--check", "-c"])
        .arg(&conf)
        .env("AWS_ACCESS_KEY_ID", s.var("NCB_S3_ACCESS_KEY"))
        .env("AWS_SECRET_ACCESS_KEY", s.var("NCB_S3_SECRET_KEY"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let o = run(&mut c).expect(2);
    assert!(o.stderr.contains("OBJECT_LOCK_DAYS") && o.stderr.contains("Object Lock"), "{}", o.stderr);
}
