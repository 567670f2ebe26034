//! S3 faults between `storage` and a real Garage: a fault-injecting proxy
//! (nc_backup_e2e::faultproxy) answers 5xx, resets connections in the middle of a body, stalls
//! past the client's timeout, or holds a request while the test stops and restarts Garage.
//! Each fault ends either retried to success (exit 0, the object read back by the aws CLI
//! straight from Garage equals the file) or in a clean failure (exit 1 naming what failed, no
//! run manifest, no multipart upload left after the next run at the latest), and then the next
//! run, through a proxy that no longer injects, completes both runs (both manifests,
//! `backup-runner verify --run all --read-data`). These tests restart Garage: every name holds
//! `garage`, so nextest runs them one at a time with the other Garage tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nc_backup_e2e::faultproxy::{Fault, FaultProxy, Rule, RuleId};
use nc_backup_e2e::{Out, Sandbox, Servers, alive, bin, cmd, pseudo_random, repo, run, unique, wait_for};
use serde_json::{Value, json};

/// 20 MiB: four 5 MiB parts with PART_SIZE_MB 5.
const BIG: usize = 20 << 20;

/// Garage through the aws CLI (an independent client, never through the proxy), and the
/// clients under test pointed at a proxy.
struct Garage {
    s: Servers,
    prefix: String,
}

impl Garage {
    fn new(name: &str) -> Self {
        Garage { s: Servers::get(), prefix: unique(name) }
    }

    fn bucket(&self) -> String {
        self.s.var("NCB_S3_BUCKET")
    }

    fn proxy(&self) -> FaultProxy {
        FaultProxy::start(&self.s.var("NCB_S3_ENDPOINT"))
    }

    fn creds(&self, c: &mut Command) {
        c.env("AWS_ACCESS_KEY_ID", self.s.var("NCB_S3_ACCESS_KEY"))
            .env("AWS_SECRET_ACCESS_KEY", self.s.var("NCB_S3_SECRET_KEY"))
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    fn aws(&self, args: &[&str]) -> String {
        let mut c = Command::new("aws");
        c.args(["--endpoint-url", &self.s.var("NCB_S3_ENDPOINT"), "--region", &self.s.var("NCB_S3_REGION")]);
        self.creds(&mut c);
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn list(&self, what: &str, query: &str) -> Vec<String> {
        let bucket = self.bucket();
        let out = self.aws(&[
            "s3api",
            what,
            "--bucket",
            &bucket,
            "--prefix",
            &self.prefix,
            "--query",
            query,
            "--output",
            "text",
        ]);
        let mut v: Vec<String> = out.split_whitespace().filter(|s| *s != "None").map(str::to_owned).collect();
        v.sort();
        v
    }

    /// Every key under this test's prefix.
    fn keys(&self) -> Vec<String> {
        self.list("list-objects-v2", "Contents[].Key")
    }

    /// Multipart uploads still open under this test's prefix.
    fn open_uploads(&self) -> Vec<String> {
        self.list("list-multipart-uploads", "Uploads[].Key")
    }

    fn key(&self, run_id: &str, name: &str) -> String {
        format!("{}/{run_id}/{name}", self.prefix)
    }

    /// Reads a run straight from Garage with the aws CLI: its run manifest is there, and each
    /// of `files` holds the bytes given.
    #[track_caller]
    fn assert_stored(&self, run_id: &str, files: &[(&str, &[u8])], sb: &Sandbox) {
        let dest = sb.join(format!("aws-{}", unique("get")));
        let from = format!("s3://{}/{}/{run_id}/", self.bucket(), self.prefix);
        self.aws(&["s3", "cp", "--recursive", "--quiet", &from, dest.to_str().unwrap()]);
        assert!(dest.join("RUN-MANIFEST.json").is_file(), "{run_id}: no run manifest");
        for (name, bytes) in files {
            assert!(std::fs::read(dest.join(name)).unwrap() == *bytes, "{run_id}/{name} differs in the bucket");
        }
    }

    fn servers_sh(&self, action: &str) {
        let mut c = Command::new("bash");
        c.arg(repo().join("scripts/servers.sh"))
            .arg(action)
            .env("NCB_SERVERS_DIR", std::env::var("NCB_SERVERS_DIR").unwrap_or_else(|_| "/var/tmp/ncb-servers".into()));
        // The Garage started here must outlive this test's process group, which the test
        // runner signals when the test ends.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        assert!(c.status().unwrap().success(), "servers.sh {action}");
    }

    /// Stops Garage, cuts the proxy's connections to it (as a server going down does; Garage
    /// would wait 10 s for a request in flight), and waits until its process is gone, so that
    /// the next start cannot meet the old one.
    fn stop(&self, proxy: &FaultProxy) {
        let pid = Path::new(&self.s.var("NCB_GARAGE_DIR")).join("garage.pid");
        let pid: u32 = std::fs::read_to_string(pid).unwrap().trim().parse().unwrap();
        self.servers_sh("garage-stop");
        proxy.sever();
        assert!(wait_for(Duration::from_secs(20), || !alive(pid)), "Garage ({pid}) did not stop");
    }

    fn start(&self) {
        self.servers_sh("garage-start");
    }

    /// The storage stage, to the bucket through `proxy`, in parts of 5 MiB.
    fn storage(&self, proxy: &FaultProxy, run_id: &str, args: &[&str]) -> Command {
        let mut c = cmd(&bin("storage"));
        self.creds(&mut c);
        c.env("NCB_RUN_ID", run_id)
            .args(["--HOSTNAME", "web1", "--BUCKET_NAME", &self.bucket(), "--REGION", &self.s.var("NCB_S3_REGION")])
            .args(["--ENDPOINT_URL", &proxy.url(), "--PREFIX", &self.prefix, "--PART_SIZE_MB", "5"])
            .args(args);
        c
    }

    fn store(&self, proxy: &FaultProxy, run_id: &str, objectives: &Path) -> Command {
        self.storage(proxy, run_id, &["--DESTINATION", "s3", "--OBJECTIVES", objectives.to_str().unwrap()])
    }

    fn download(&self, proxy: &FaultProxy, run_id: &str, dest: &Path) -> Command {
        let dest = dest.to_str().unwrap();
        self.storage(proxy, "x", &["--download", "--SOURCE", "s3", "--RUN", run_id, "--DESTINATION", dest])
    }

    /// A night's pipeline: filesbackup, encryption, storage to the bucket through `proxy`.
    fn pipeline(&self, sb: &Sandbox, proxy: &FaultProxy, concurrency: &str) -> PathBuf {
        let w = sb.join("work");
        sb.config(&[
            (
                "FILESET",
                json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                    "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
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
                    "OBJECTIVES": w.join("encrypted"), "DESTINATION": "s3", "BUCKET_NAME": self.bucket(),
                    "REGION": self.s.var("NCB_S3_REGION"), "ENDPOINT_URL": proxy.url(), "PREFIX": self.prefix,
                    "PART_SIZE_MB": "5", "UPLOAD_CONCURRENCY": concurrency, "REMOVE_OBJECTIVES": "True"}}),
            ),
        ])
    }

    /// `backup-runner ARGS -c conf` with the credentials; `-r` starts in a new second (run
    /// ids count seconds).
    fn runner(&self, conf: &Path, args: &[&str]) -> Command {
        if args[0] == "-r" {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())));
        }
        let mut c = cmd(&bin("backup-runner"));
        self.creds(&mut c);
        c.args(&args[..1]).arg("-c").arg(conf).args(&args[1..]);
        c
    }
}

impl Drop for Garage {
    /// The test's objects are removed from the shared bucket when it passed (in the background:
    /// the next test need not wait); a failed test's stay for a look.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let mut c = Command::new("aws");
        c.args(["--endpoint-url", &self.s.var("NCB_S3_ENDPOINT"), "--region", &self.s.var("NCB_S3_REGION")]);
        self.creds(&mut c);
        c.args(["s3", "rm", "--recursive", "--quiet", &format!("s3://{}/{}/", self.bucket(), self.prefix)]);
        if let Ok(mut child) = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Runs `c` to its end, which must come within `limit` (else it is killed and the test fails).
fn run_within(c: &mut Command, limit: Duration) -> (Out, Duration) {
    let t = Instant::now();
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => (Out::from(out.unwrap()), t.elapsed()),
        Err(_) => {
            nc_backup_e2e::signal(pid, "KILL");
            panic!("{c:?} still running after {limit:?}: a stall must end");
        }
    }
}

/// How many of the requests the proxy saw match a method and hold `part`.
fn count(proxy: &FaultProxy, method: &str, part: &str) -> usize {
    proxy.seen().iter().filter(|s| s.method == method && s.target.contains(part)).count()
}

#[track_caller]
fn assert_injected(proxy: &FaultProxy, rules: &[(&str, RuleId, u64)]) {
    for (what, id, n) in rules {
        assert_eq!(proxy.injected(*id), *n, "{what}: requests seen:\n{:#?}", proxy.seen());
    }
}

/// Files to store: one uploaded in parts, one small.
fn objectives(sb: &Sandbox) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let big = pseudo_random(BIG, 11);
    let small = pseudo_random(64 << 10, 12);
    sb.write("enc/big.bin", &big);
    sb.write("enc/small.bin", &small);
    (sb.join("enc"), big, small)
}

/// 5xx answers on every kind of request a store and a download make, each retried by the
/// SDK to success; the object read back by the aws CLI is the file.
#[test]
fn garage_5xx_answers_are_retried_to_success() {
    let g = Garage::new("ncbf5xx");
    let sb = Sandbox::new();
    let (enc, big, small) = objectives(&sb);
    let proxy = g.proxy();
    let rules = [
        ("listing open uploads", proxy.add(Rule::new(Fault::Status(503)).method("GET").target("?uploads")), 1),
        ("listing the run", proxy.add(Rule::new(Fault::Status(500)).method("GET").target("list-type=2")), 1),
        ("create multipart", proxy.add(Rule::new(Fault::Status(500)).method("POST").target("?uploads")), 1),
        ("part 2, twice", proxy.add(Rule::new(Fault::Status(503)).method("PUT").target("partNumber=2").times(2)), 2),
        ("complete multipart", proxy.add(Rule::new(Fault::Status(500)).method("POST").target("uploadId=")), 1),
        ("small object", proxy.add(Rule::new(Fault::Status(500)).method("PUT").target("small.bin")), 1),
        ("run manifest", proxy.add(Rule::new(Fault::Status(503)).method("PUT").target("RUN-MANIFEST.json")), 1),
    ];
    let r1 = "20261201T010000Z-f5xx";
    let out = run(g.store(&proxy, r1, &enc).args(["--UPLOAD_CONCURRENCY", "2"])).expect(0);
    assert_eq!(out.json()["data"]["stored"], 2, "{}", out.stdout);
    assert_injected(&proxy, &rules);
    g.assert_stored(r1, &[("big.bin", &big), ("small.bin", &small)], &sb);
    assert_eq!(g.open_uploads(), Vec::<String>::new());

    // Downloading: the run manifest and the ranged GETs answered 5xx first.
    let rules = [
        ("manifest", proxy.add(Rule::new(Fault::Status(500)).method("GET").target("RUN-MANIFEST.json")), 1),
        ("ranges of big.bin", proxy.add(Rule::new(Fault::Status(503)).method("GET").target("big.bin").times(3)), 3),
        ("small.bin", proxy.add(Rule::new(Fault::Status(500)).method("GET").target("small.bin")), 1),
    ];
    run(&mut g.download(&proxy, r1, &sb.join("down"))).expect(0);
    assert_injected(&proxy, &rules);
    assert!(std::fs::read(sb.join("down/big.bin")).unwrap() == big);
    assert!(std::fs::read(sb.join("down/small.bin")).unwrap() == small);
}

/// Connections reset in the middle of request bodies (parts, a small object) and of an answer
/// body (a listing): each retried to success.
#[test]
fn garage_connection_reset_mid_upload_is_retried_to_success() {
    let g = Garage::new("ncbfrst");
    let sb = Sandbox::new();
    let (enc, big, small) = objectives(&sb);
    let proxy = g.proxy();
    let put = |target: &str, k: u64| Rule::new(Fault::ResetRequestBody(k)).method("PUT").target(target);
    let rules = [
        ("part 2 after 1 MiB, twice", proxy.add(put("partNumber=2", 1 << 20).times(2)), 2),
        ("part 4 after 1 byte", proxy.add(put("partNumber=4", 1)), 1),
        ("small object after 1000 bytes", proxy.add(put("small.bin", 1000)), 1),
        (
            "listing the run, its answer after 50 bytes",
            proxy.add(Rule::new(Fault::ResetResponseBody(50)).method("GET").target("list-type=2")),
            1,
        ),
    ];
    let r1 = "20261201T010000Z-frst";
    run(g.store(&proxy, r1, &enc).args(["--UPLOAD_CONCURRENCY", "2"])).expect(0);
    assert_injected(&proxy, &rules);
    g.assert_stored(r1, &[("big.bin", &big), ("small.bin", &small)], &sb);
    assert_eq!(g.open_uploads(), Vec::<String>::new());
}

/// A download whose body is cut by a reset fails cleanly (exit 1 naming the object, nothing
/// delivered); the next download gets the bytes.
#[test]
fn garage_connection_reset_mid_download_fails_cleanly_then_the_next_download_succeeds() {
    let g = Garage::new("ncbfdl");
    let sb = Sandbox::new();
    let (enc, big, small) = objectives(&sb);
    let proxy = g.proxy();
    let r1 = "20261201T010000Z-fdlr";
    run(g.store(&proxy, r1, &enc).args(["--UPLOAD_CONCURRENCY", "2"])).expect(0);
    let id = proxy.add(Rule::new(Fault::ResetResponseBody(256 << 10)).method("GET").target("big.bin").nth(2));
    let down = sb.join("down");
    let out = run(&mut g.download(&proxy, r1, &down)).expect(1);
    assert_eq!(proxy.injected(id), 1);
    let named = format!("download of {}: streaming error", g.key(r1, "big.bin"));
    assert!(out.stderr.contains(&named) && out.stderr.contains("Connection reset by peer"), "{}", out.stderr);
    let left: Vec<_> =
        std::fs::read_dir(&down).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed download left {left:?}");
    run(&mut g.download(&proxy, r1, &down)).expect(0);
    assert!(std::fs::read(down.join("big.bin")).unwrap() == big);
    assert!(std::fs::read(down.join("small.bin")).unwrap() == small);
}

/// A server that stops answering: with NCB_S3_ATTEMPT_TIMEOUT 2 s the stalled attempts (a part
/// never passed on, a listing's answer held after its head) are
/// given up and retried to success; a download whose body stalls is ended by the SDK's
/// stalled-stream protection and fails cleanly; nothing hangs.
#[test]
fn garage_stall_past_the_timeout_is_retried_or_fails_cleanly() {
    let g = Garage::new("ncbfstl");
    let sb = Sandbox::new();
    let (enc, big, small) = objectives(&sb);
    let proxy = g.proxy();
    let rules = [
        ("part 3", proxy.add(Rule::new(Fault::Stall).method("PUT").target("partNumber=3")), 1),
        (
            "listing the run, after its answer's head",
            proxy.add(Rule::new(Fault::StallResponseBody(0)).method("GET").target("list-type=2")),
            1,
        ),
    ];
    let r1 = "20261201T010000Z-fstl";
    let mut c = g.store(&proxy, r1, &enc);
    c.args(["--UPLOAD_CONCURRENCY", "2"]).env("NCB_S3_ATTEMPT_TIMEOUT", "2");
    let (out, took) = run_within(&mut c, Duration::from_secs(60));
    out.expect(0);
    assert_injected(&proxy, &rules);
    assert!(took >= Duration::from_secs(4), "two stalls of 2 s passed in {took:?}");
    g.assert_stored(r1, &[("big.bin", &big)], &sb);
    assert_eq!(g.open_uploads(), Vec::<String>::new());

    // The body of a ranged GET stops after 256 KiB.
    let id = proxy.add(Rule::new(Fault::StallResponseBody(256 << 10)).method("GET").target("big.bin"));
    let down = sb.join("down");
    let (out, took) = run_within(&mut g.download(&proxy, r1, &down), Duration::from_secs(60));
    let out = out.expect(1);
    assert_eq!(proxy.injected(id), 1);
    let named = format!("download of {}: streaming error: minimum throughput", g.key(r1, "big.bin"));
    assert!(out.stderr.contains(&named), "{named} not said:\n{}", out.stderr);
    assert!(took < Duration::from_secs(30), "a stalled download took {took:?}");
    assert!(!down.join("big.bin").exists());
    run(&mut g.download(&proxy, r1, &down)).expect(0);
    assert!(std::fs::read(down.join("big.bin")).unwrap() == big);
    assert!(std::fs::read(down.join("small.bin")).unwrap() == small);
}

/// Garage stopped and started again in the middle of a multipart upload (created, part 1
/// stored, part 2 in flight: 1 MiB of it passed on, the rest held by the proxy meanwhile): the
/// client's connection is reset, the SDK sends part 2 again to the new Garage, and the upload
/// completes with the right bytes and nothing left open.
#[test]
fn garage_restarted_mid_multipart_is_retried_to_success() {
    let g = Garage::new("ncbfrsr");
    let sb = Sandbox::new();
    let (enc, big, _) = objectives(&sb);
    let proxy = g.proxy();
    let id = proxy.add(Rule::new(Fault::PauseRequestBody(1 << 20)).method("PUT").target("partNumber=2"));
    let r1 = "20261201T010000Z-frsr";
    let mut c = g.store(&proxy, r1, &enc);
    let child = c.args(["--UPLOAD_CONCURRENCY", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(proxy.wait_paused(Duration::from_secs(60)), "part 2 never came: {:#?}", proxy.seen());
    assert_eq!(g.open_uploads(), [g.key(r1, "big.bin")]);
    g.stop(&proxy);
    g.start();
    proxy.release();
    let out = Out::from(child.wait_with_output().unwrap()).expect(0);
    assert_eq!(proxy.injected(id), 1);
    let sent = count(&proxy, "PUT", "partNumber=2");
    assert!(sent >= 2, "part 2 not sent again after the restart: {:#?}\n{}", proxy.seen(), out.stderr);
    g.assert_stored(r1, &[("big.bin", &big)], &sb);
    assert_eq!(g.open_uploads(), Vec::<String>::new());
}

/// CompleteMultipartUpload done by Garage, its answer lost (the connection reset after 20
/// bytes of it): the SDK retries, and Garage answers NoSuchUpload (the upload is complete, so
/// gone). Storage recognises its completed object (size and the composite CRC-32C of the
/// parts it sent): the run succeeds, the object whole, no upload left open.
#[test]
fn garage_complete_multipart_answer_lost_is_recognised_as_done() {
    let g = Garage::new("ncbfcmp");
    let sb = Sandbox::new();
    let (enc, big, small) = objectives(&sb);
    let proxy = g.proxy();
    let id = proxy.add(Rule::new(Fault::ResetResponseBody(20)).method("POST").target("uploadId="));
    let r1 = "20261201T010000Z-fcmp";
    let out = run(g.store(&proxy, r1, &enc).args(["--UPLOAD_CONCURRENCY", "2", "-v"])).expect(0);
    assert_eq!(proxy.injected(id), 1);
    assert!(out.stderr.contains("its completion's answer was lost"), "{}", out.stderr);
    g.assert_stored(r1, &[("big.bin", &big), ("small.bin", &small)], &sb);
    assert_eq!(g.open_uploads(), Vec::<String>::new());
}

fn recovered(report: &Value) -> Vec<(String, String)> {
    report["recovered"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| (r["run_id"].as_str().unwrap().to_owned(), r["outcome"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The encrypted archive of a night (filesbackup's, encrypted), as stored.
fn archive_key(g: &Garage, night: &str) -> String {
    g.key(night, &format!("testhost_FILESET_{night}.tar.gz.enc"))
}

/// A night's data: a large file (the encrypted archive goes up in parts) and a small one.
fn night_data(sb: &Sandbox) {
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    sb.write("data/big.bin", &pseudo_random(BIG, 21));
    sb.write("data/night.txt", b"night 1\n");
}

/// After a night that failed cleanly (exit 1, no run manifest): the next night, through a
/// proxy that injects nothing, completes the failed run under its own id, then its own; both
/// manifests are in the bucket, no upload is left open, and both runs verify with every byte
/// read back and decrypted.
fn next_night_completes_both(g: &Garage, sb: &Sandbox, conf: &Path, night1: &str) {
    std::fs::write(sb.join("data/night.txt"), b"night 2\n").unwrap();
    let report = run(&mut g.runner(conf, &["-r", "--json"])).expect(0).json();
    assert_eq!(recovered(&report), [(night1.to_owned(), "completed".to_owned())], "{report:#}");
    let night2 = report["run_id"].as_str().unwrap();
    let keys = g.keys();
    for night in [night1, night2] {
        assert!(keys.contains(&g.key(night, "RUN-MANIFEST.json")), "{night} incomplete: {keys:#?}");
    }
    assert_eq!(g.open_uploads(), Vec::<String>::new());
    let out = run(&mut g.runner(conf, &["verify", "--run", "all", "--read-data"])).expect(0);
    for night in [night1, night2] {
        assert!(out.stdout.contains(night), "{night} not verified:\n{}", out.stdout);
    }
}

/// A part answered 500 on every attempt (3, set by AWS_MAX_ATTEMPTS, for less backoff to wait):
/// the night fails cleanly (exit 1 naming the section, the object and the error; no run
/// manifest). Its abort is refused (403), so the upload stays open until the next night, which
/// aborts it and completes both nights.
#[test]
fn garage_persistent_5xx_fails_cleanly_then_the_next_night_completes_both() {
    let g = Garage::new("ncbfp5");
    let sb = Sandbox::new();
    night_data(&sb);
    let proxy = g.proxy();
    let conf = g.pipeline(&sb, &proxy, "2");
    let part = proxy.add(Rule::new(Fault::Status(500)).method("PUT").target("partNumber=3").always());
    let abort = proxy.add(Rule::new(Fault::Status(403)).method("DELETE").target("uploadId="));
    let out = run(g.runner(&conf, &["-r", "--json"]).env("AWS_MAX_ATTEMPTS", "3")).expect(1);
    let night1 = out.json()["run_id"].as_str().unwrap().to_owned();
    assert_eq!(proxy.injected(part), 3, "3 attempts: {:#?}", proxy.seen());
    assert_eq!(proxy.injected(abort), 1);
    let archive = archive_key(&g, &night1);
    for what in ["STORAGE", &format!("upload of a part of {archive}: InternalError"), "could not abort"] {
        assert!(out.stderr.contains(what), "{what} not named:\n{}", out.stderr);
    }
    assert!(!g.keys().iter().any(|k| k.ends_with("RUN-MANIFEST.json")), "a failed night has a manifest");
    assert_eq!(g.open_uploads(), [archive], "the upload whose abort was refused");
    proxy.clear();
    next_night_completes_both(&g, &sb, &conf, &night1);
}

/// Garage stopped in the middle of a multipart upload, and down for every retry (3 attempts,
/// set by AWS_MAX_ATTEMPTS): the night fails cleanly (exit 1 naming the object and the
/// connection error, no run manifest). Garage is back before the upload is aborted, so nothing
/// stays open; the next night, with the default attempts, completes both.
#[test]
fn garage_stopped_mid_multipart_fails_cleanly_then_the_next_night_completes_both() {
    let g = Garage::new("ncbfdown");
    let sb = Sandbox::new();
    night_data(&sb);
    let proxy = g.proxy();
    let conf = g.pipeline(&sb, &proxy, "1");
    proxy.add(Rule::new(Fault::Pause).method("PUT").target("partNumber=2"));
    proxy.add(Rule::new(Fault::Pause).method("DELETE").target("uploadId="));
    // Three attempts per request (AWS_MAX_ATTEMPTS) instead of 5: less backoff to wait.
    let mut c = g.runner(&conf, &["-r", "--json"]);
    c.env("AWS_MAX_ATTEMPTS", "3");
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(proxy.wait_paused(Duration::from_secs(60)), "part 2 never came: {:#?}", proxy.seen());
    g.stop(&proxy);
    proxy.release();
    // Every attempt at part 2 failed; the abort comes: Garage is back for it.
    let aborting = proxy.wait_paused(Duration::from_secs(90));
    g.start();
    assert!(aborting, "no abort after the part failed: {:#?}", proxy.seen());
    proxy.release();
    let out = Out::from(child.wait_with_output().unwrap()).expect(1);
    let night1 = out.json()["run_id"].as_str().unwrap().to_owned();
    assert_eq!(count(&proxy, "PUT", "partNumber=2"), 3, "3 attempts: {:#?}", proxy.seen());
    let archive = archive_key(&g, &night1);
    for what in ["STORAGE", &format!("upload of a part of {archive}: dispatch failure"), "Connection reset by peer"] {
        assert!(out.stderr.contains(what), "{what} not named:\n{}", out.stderr);
    }
    assert!(!g.keys().iter().any(|k| k.ends_with("RUN-MANIFEST.json")), "a failed night has a manifest");
    assert_eq!(g.open_uploads(), Vec::<String>::new(), "the abort did not go through");
    proxy.clear();
    next_night_completes_both(&g, &sb, &conf, &night1);
}

/// A run id of `mins` minutes ago (recent: never "incomplete and old").
fn recent_id(mins: u32, tag: &str) -> String {
    let t = run(Command::new("date").args(["-u", "-d", &format!("-{mins} min"), "+%Y%m%dT%H%M%SZ"])).expect(0);
    format!("{}-{tag}", t.stdout.trim())
}

/// Retention cut off in the middle of deleting a run from the bucket (its batch delete refused
/// after the deletion mark was written and the run manifest deleted): the night still succeeds
/// with a warning, the run is no backup any more, and the next retention finishes deleting it.
#[test]
fn garage_retention_cut_off_mid_deletion_is_finished_by_the_next_one() {
    let g = Garage::new("ncbfdel");
    let sb = Sandbox::new();
    sb.write("enc/a.bin", &pseudo_random(64 << 10, 21));
    sb.write("enc/b.bin", &pseudo_random(64 << 10, 22));
    let enc = sb.join("enc");
    let proxy = g.proxy();
    let (r1, r2, r3) = (recent_id(3, "d001"), recent_id(2, "d002"), recent_id(1, "d003"));
    run(&mut g.store(&proxy, &r1, &enc)).expect(0);
    run(&mut g.store(&proxy, &r2, &enc)).expect(0);
    let cut = proxy.add(Rule::new(Fault::Status(403)).method("POST").target("?delete"));
    let out = run(g.store(&proxy, &r2, &enc).args(["--KEEP_LAST", "1"])).expect(0);
    assert_injected(&proxy, &[("batch delete", cut, 1)]);
    assert!(out.stderr.contains("retention not applied"), "{}", out.stderr);
    let keys = g.keys();
    assert!(keys.contains(&g.key(&r1, "RUN-DELETING")) && keys.contains(&g.key(&r1, "a.bin")), "{keys:#?}");
    assert!(!keys.contains(&g.key(&r1, "RUN-MANIFEST.json")), "{keys:#?}");

    let out = run(g.store(&proxy, &r3, &enc).args(["--KEEP_LAST", "2"])).expect(0);
    assert!(out.stderr.contains("its deletion was interrupted"), "{}", out.stderr);
    let left: Vec<String> = g.keys().into_iter().filter(|k| k.contains(&r1)).collect();
    assert!(left.is_empty(), "left of the deleted run: {left:?}");
    g.assert_stored(&r2, &[("a.bin", &pseudo_random(64 << 10, 21))], &sb);
    g.assert_stored(&r3, &[("b.bin", &pseudo_random(64 << 10, 22))], &sb);
}

/// Append-only credentials (issue 16): the host may put and get, not delete. Garage cannot
/// express that (its write permission includes deletes), so the policy is enforced by the
/// proxy in front of it: every DeleteObject / DeleteObjects answers 403 AccessDenied, as the
/// documented IAM policy makes S3 answer. Two nights store; a prune through those credentials
/// fails and deletes nothing; the trusted host's prune (its own credentials) does it.
#[test]
fn garage_append_only_credentials_store_nightly_and_only_the_trusted_host_prunes() {
    let g = Garage::new("ncbappend");
    let proxy = g.proxy();
    proxy.add(Rule::new(Fault::Status(403)).method("DELETE").always());
    proxy.add(Rule::new(Fault::Status(403)).method("POST").target("?delete").always());
    let sb = Sandbox::new();
    sb.write("data/a.txt", b"night one\n");
    let conf_for = |endpoint: &str, extra: Value, name: &str| {
        let w = sb.join("work");
        let mut storage = json!({"OBJECTIVES": w.join("files"), "DESTINATION": "s3", "BUCKET_NAME": g.bucket(),
            "ENDPOINT_URL": endpoint, "REGION": g.s.var("NCB_S3_REGION"), "PREFIX": g.prefix, "REMOVE_OBJECTIVES": "True"});
        for (k, v) in extra.as_object().unwrap() {
            storage[k] = v.clone();
        }
        let text = json!({
            "GENERAL": sb.general(),
            "FILES": {"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}},
            "STORAGE": {"ACTION": "execute", "NAME": "storage", "PARAMETERS": storage},
        });
        sb.config_text(name, &text.to_string())
    };
    let host = conf_for(&proxy.url(), json!({"APPEND_ONLY": "True"}), "host.json");
    let runner = |conf: &Path, args: &[&str]| {
        let mut c = cmd(&bin("backup-runner"));
        c.args(args).arg("-c").arg(conf);
        g.creds(&mut c);
        run(&mut c)
    };
    // Retention on an append-only host is a config error, before anything runs.
    let bad = conf_for(&proxy.url(), json!({"APPEND_ONLY": "True", "KEEP_LAST": "1"}), "bad.json");
    let o = runner(&bad, &["--check"]).expect(2);
    assert!(o.stderr.contains("KEEP_LAST") && o.stderr.contains("trusted host"), "{}", o.stderr);
    runner(&host, &["-r"]).expect(0);
    std::thread::sleep(Duration::from_millis(1100));
    sb.write("data/a.txt", b"night two\n");
    runner(&host, &["-r"]).expect(0);
    let manifests = |g: &Garage| g.keys().into_iter().filter(|k| k.ends_with("RUN-MANIFEST.json")).count();
    assert_eq!(manifests(&g), 2);
    // A delete with the host's credentials is refused; nothing is gone.
    let host_prune = conf_for(&proxy.url(), json!({"KEEP_LAST": "1"}), "host-prune.json");
    let o = runner(&host_prune, &["prune"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("AccessDenied"), "{}", o.stderr);
    assert_eq!(manifests(&g), 2, "a refused delete removed a run");
    // The trusted host prunes (straight to the store, its own credentials).
    let trusted = conf_for(&g.s.var("NCB_S3_ENDPOINT"), json!({"KEEP_LAST": "1"}), "trusted.json");
    runner(&trusted, &["prune"]).expect(0);
    assert_eq!(manifests(&g), 1);
}

/// BANDWIDTH_LIMIT (issue 17): 100 MB to Garage at 20 MiB/s takes the time that rate gives,
/// within 10%.
#[test]
fn garage_bandwidth_limit_paces_a_100_mb_upload_within_10_percent() {
    let g = Garage::new("ncbbw");
    let sb = Sandbox::new();
    sb.write("enc/big.bin", &pseudo_random(100 << 20, 8));
    let rate = 20u64 << 20;
    let mut c = cmd(&bin("storage"));
    c.env("NCB_RUN_ID", "20261201T000000Z-00bw")
        .args(["--DESTINATION", "s3", "--BUCKET_NAME", &g.bucket(), "--ENDPOINT_URL", &g.s.var("NCB_S3_ENDPOINT")])
        .args([
            "--REGION",
            &g.s.var("NCB_S3_REGION"),
            "--PREFIX",
            &g.prefix,
            "--BANDWIDTH_LIMIT",
            "20M",
            "--HOSTNAME",
            "h",
        ])
        .arg("--OBJECTIVES")
        .arg(sb.join("enc"));
    g.creds(&mut c);
    let t = Instant::now();
    run(&mut c).expect(0);
    let secs = t.elapsed().as_secs_f64();
    let measured = (100u64 << 20) as f64 / secs;
    let ratio = measured / rate as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "100 MiB in {secs:.2} s: {:.1} MiB/s for a 20 MiB/s limit",
        measured / (1 << 20) as f64
    );
}
