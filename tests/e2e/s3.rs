//! storage to a real S3 store (Garage, started by scripts/servers.sh), read back by an
//! independent client (the aws CLI). One test, in sequence: it stops and restarts Garage.

use std::process::{Command, Stdio};
use std::time::Duration;

use nc_backup_e2e::{Out, Sandbox, Servers, bin, cmd, pseudo_random, repo, run, unique, wait_for};

struct S3Env {
    s: Servers,
    prefix: String,
}

impl S3Env {
    fn storage(&self, run_id: &str, args: &[&str]) -> Command {
        self.storage_in(&self.s.var("NCB_S3_BUCKET"), run_id, args)
    }

    fn storage_in(&self, bucket: &str, run_id: &str, args: &[&str]) -> Command {
        let mut c = cmd(&bin("storage"));
        c.env("NCB_RUN_ID", run_id)
            .env("AWS_ACCESS_KEY_ID", self.s.var("NCB_S3_ACCESS_KEY"))
            .env("AWS_SECRET_ACCESS_KEY", self.s.var("NCB_S3_SECRET_KEY"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["--HOSTNAME", "web1", "--BUCKET_NAME", bucket, "--REGION", &self.s.var("NCB_S3_REGION")])
            .args(["--ENDPOINT_URL", &self.s.var("NCB_S3_ENDPOINT"), "--PREFIX", &self.prefix])
            .args(args);
        c
    }

    /// The aws CLI, as an independent reader.
    fn aws(&self, args: &[&str]) -> String {
        nc_backup_e2e::aws(&self.s, args)
    }

    fn keys(&self) -> Vec<String> {
        let out = self.aws(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &self.s.var("NCB_S3_BUCKET"),
            "--prefix",
            &self.prefix,
            "--query",
            "Contents[].Key",
            "--output",
            "text",
        ]);
        let mut k: Vec<String> = out.split_whitespace().filter(|s| *s != "None").map(str::to_owned).collect();
        k.sort();
        k
    }

    fn open_uploads(&self) -> usize {
        let out = self.aws(&[
            "s3api",
            "list-multipart-uploads",
            "--bucket",
            &self.s.var("NCB_S3_BUCKET"),
            "--prefix",
            &self.prefix,
            "--query",
            "Uploads[].UploadId",
            "--output",
            "text",
        ]);
        out.split_whitespace().filter(|s| *s != "None").count()
    }

    fn garage(&self, action: &str) {
        let ok = Command::new("bash")
            .arg(repo().join("scripts/servers.sh"))
            .arg(action)
            .env("NCB_SERVERS_DIR", std::env::var("NCB_SERVERS_DIR").unwrap_or_else(|_| "/var/tmp/ncb-servers".into()))
            .status()
            .unwrap()
            .success();
        assert!(ok, "servers.sh {action}");
    }
}

fn sha256(bytes: &[u8]) -> String {
    let mut c = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), bytes).unwrap();
    String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn s3_store_multipart_readback_idempotence_download_retention_and_faults() {
    let env = S3Env { s: Servers::get(), prefix: unique("ncbs3") };
    let sb = Sandbox::new();
    let big_data = pseudo_random(21 << 20, 3);
    sb.write("enc/small.bin", b"small file");
    sb.write("enc/big.bin", &big_data);
    let objectives = sb.join("enc").display().to_string();
    let r1 = "20261120T010000Z-aaaa";
    let store = |run_id: &str, extra: &[&str]| -> Out {
        let mut c = env.storage(
            run_id,
            &["--DESTINATION", "s3", "--OBJECTIVES", &objectives, "--PART_SIZE_MB", "5", "--UPLOAD_CONCURRENCY", "2"],
        );
        c.args(extra);
        run(&mut c)
    };
    let first = store(r1, &[]).expect(0).json();
    assert_eq!(first["data"]["stored"], 2);
    let p = &env.prefix;
    assert_eq!(
        env.keys(),
        [format!("{p}/{r1}/RUN-MANIFEST.json"), format!("{p}/{r1}/big.bin"), format!("{p}/{r1}/small.bin")]
    );
    // An independent client reads the same bytes back.
    env.aws(&[
        "s3",
        "cp",
        &format!("s3://{}/{p}/{r1}/big.bin", env.s.var("NCB_S3_BUCKET")),
        sb.join("aws-big").to_str().unwrap(),
    ]);
    assert_eq!(sha256(&std::fs::read(sb.join("aws-big")).unwrap()), sha256(&big_data));
    assert_eq!(env.open_uploads(), 0);
    // Again: nothing is uploaded twice.
    let again = store(r1, &[]).expect(0).json();
    assert_eq!((again["data"]["stored"].as_u64(), again["data"]["skipped"].as_u64()), (Some(0), Some(2)));
    // Download, checked against the run manifest.
    run(&mut env.storage("x", &["--download", "--SOURCE", "s3", "--DESTINATION", sb.join("down").to_str().unwrap()]))
        .expect(0);
    assert!(std::fs::read(sb.join("down/big.bin")).unwrap() == big_data);

    // Wrong credentials and a missing bucket: exit 1, nothing that looks like a run.
    let r2 = "20261121T010000Z-bbbb";
    let out = run(env
        .storage(r2, &["--DESTINATION", "s3", "--OBJECTIVES", &objectives])
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64)))
    .expect(1);
    assert!(out.stderr.contains("s3://") && out.stderr.contains("Invalid signature"), "{}", out.stderr);
    let out = run(&mut env.storage_in("no-such-bucket-ncb", r2, &["--DESTINATION", "s3", "--OBJECTIVES", &objectives]))
        .expect(1);
    assert!(out.stderr.contains("NoSuchBucket") || out.stderr.contains("no-such-bucket-ncb"), "{}", out.stderr);
    assert!(!env.keys().iter().any(|k| k.contains(r2)), "a failed run left objects");

    // Garage stopped in the middle of a multipart upload: the run fails without a manifest;
    // the next run aborts the orphan upload and completes.
    // A file large enough (640 MiB, one 5 MiB part at a time: seconds of upload) to be caught
    // mid-upload for sure.
    std::fs::create_dir_all(sb.join("slow")).unwrap();
    let block = pseudo_random(1 << 20, 5);
    let mut f = std::io::BufWriter::new(std::fs::File::create(sb.join("slow/huge.bin")).unwrap());
    for i in 0..640u32 {
        std::io::Write::write_all(&mut f, &i.to_le_bytes()).unwrap();
        std::io::Write::write_all(&mut f, &block[4..]).unwrap();
    }
    drop(f);
    let slow = sb.join("slow").display().to_string();
    let args = ["--DESTINATION", "s3", "--OBJECTIVES", &slow, "--PART_SIZE_MB", "5", "--UPLOAD_CONCURRENCY", "1"];
    let child = env.storage(r2, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for(Duration::from_secs(30), || env.open_uploads() > 0), "no multipart upload started");
    env.garage("garage-stop");
    let out = Out::from(child.wait_with_output().unwrap());
    env.garage("garage-start");
    let out = out.expect(1);
    assert!(out.stderr.contains("huge.bin"), "{}", out.stderr);
    assert!(!env.keys().contains(&format!("{p}/{r2}/RUN-MANIFEST.json")), "a failed run has a manifest");
    assert!(env.open_uploads() > 0, "the interrupted upload should still be open on the server");
    // The next run aborts the orphan and completes.
    run(&mut env.storage(r2, &["--DESTINATION", "s3", "--OBJECTIVES", &slow, "--PART_SIZE_MB", "16"])).expect(0);
    assert_eq!(env.open_uploads(), 0, "orphan multipart upload left");
    assert!(env.keys().contains(&format!("{p}/{r2}/RUN-MANIFEST.json")));

    // Data survived the restart; retention keeps the newest run only.
    store("20261122T010000Z-cccc", &["--KEEP_LAST", "1"]).expect(0);
    let runs: std::collections::BTreeSet<String> =
        env.keys().iter().filter_map(|k| k.split('/').nth(1).map(str::to_owned)).collect();
    assert_eq!(runs.into_iter().collect::<Vec<_>>(), ["20261122T010000Z-cccc"]);
}

/// Garage ignores storage classes; moto keeps them: STORAGE_CLASS reaches the server for the
/// data, the run manifest stays in STANDARD, read back by the aws CLI.
#[test]
fn storage_class_reaches_the_server() {
    let s = Servers::get();
    let endpoint = s.var("NCB_MOTO_ENDPOINT");
    let aws = |args: &[&str]| nc_backup_e2e::moto_aws(&endpoint, args);
    let bucket = unique("ncbclass").replace('_', "-");
    aws(&["s3api", "create-bucket", "--bucket", &bucket]);
    let sb = Sandbox::new();
    sb.write("enc/small.bin", b"small");
    sb.write("enc/big.bin", &pseudo_random(11 << 20, 9));
    let run_id = "20261122T010000Z-dddd";
    let mut c = cmd(&bin("storage"));
    c.env("NCB_RUN_ID", run_id)
        .env("AWS_ACCESS_KEY_ID", "moto")
        .env("AWS_SECRET_ACCESS_KEY", "moto")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c.args([
        "--HOSTNAME",
        "web1",
        "--DESTINATION",
        "s3",
        "--BUCKET_NAME",
        &bucket,
        "--ENDPOINT_URL",
        &endpoint,
        "--STORAGE_CLASS",
        "STANDARD_IA",
        "--PART_SIZE_MB",
        "5",
    ]);
    c.arg("--OBJECTIVES").arg(sb.join("enc"));
    run(&mut c).expect(0);
    // The data in STORAGE_CLASS (a single upload and a multipart one); the run manifest always
    // in STANDARD (listed as such; HeadObject reports no class for STANDARD).
    for (key, want) in [("small.bin", "STANDARD_IA"), ("big.bin", "STANDARD_IA"), ("RUN-MANIFEST.json", "None")] {
        let class = aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            &format!("web1/{run_id}/{key}"),
            "--query",
            "StorageClass",
            "--output",
            "text",
        ]);
        assert_eq!(class.trim(), want, "{key}");
    }
    let listed = aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        &bucket,
        "--query",
        "Contents[?ends_with(Key, 'RUN-MANIFEST.json')].StorageClass",
        "--output",
        "text",
    ]);
    assert_eq!(listed.trim(), "STANDARD");
}
