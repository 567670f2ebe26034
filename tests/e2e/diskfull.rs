//! Faults of the places a night writes to, caused for real: a size-limited tmpfs as
//! WORK_FOLDER, or as the local store, fills in the middle of a night; Garage is down for a
//! whole night. The night fails (exit 1) naming the section and the cause, stores nothing that
//! looks complete, and once the room (or the store) is back the next night completes or
//! abandons it, as it should, with no hand work; every stored run is then verified with every
//! part read back and decrypted, and restored.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nc_backup_e2e::{Out, Sandbox, Servers, bin, cmd, repo, run, unique};
use serde_json::{Value, json};

/// A tmpfs of `mib` MiB mounted on a folder (we are root), unmounted when dropped.
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} (the end-to-end tests run as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir: dir.to_path_buf() }
    }

    /// Makes room: the same tmpfs, its files kept, grown to `mib` MiB.
    pub(crate) fn grow(&self, mib: u32) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Waits for the next second: run ids (and so the order of runs) count whole seconds.
fn next_second() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())) + Duration::from_millis(5));
}

/// `backup-runner -r --json`, in a second of its own, with the S3 credentials at hand.
pub(crate) fn night(conf: &Path) -> Out {
    next_second();
    run(s3_env(cmd(&bin("backup-runner"))).arg("-r").arg("-c").arg(conf).arg("--json"))
}

/// backup-runner's `runs`, `verify`, `restore`…
pub(crate) fn sub(conf: &Path, args: &[&str]) -> Out {
    run(s3_env(cmd(&bin("backup-runner"))).args(&args[..1]).arg("-c").arg(conf).args(&args[1..]))
}

fn s3_env(mut c: Command) -> Command {
    if let Ok(text) = std::fs::read_to_string(
        Path::new(&std::env::var("NCB_SERVERS_DIR").unwrap_or_else(|_| "/var/tmp/ncb-servers".into())).join("env"),
    ) {
        for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
            match k {
                "NCB_S3_ACCESS_KEY" => c.env("AWS_ACCESS_KEY_ID", v),
                "NCB_S3_SECRET_KEY" => c.env("AWS_SECRET_ACCESS_KEY", v),
                _ => continue,
            };
        }
    }
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

pub(crate) fn run_id(out: &Out) -> String {
    out.json()["run_id"].as_str().unwrap().to_owned()
}

/// The complete runs of every destination of the config, oldest first, and the incomplete ones.
pub(crate) fn stored_runs(conf: &Path) -> (Vec<String>, Vec<String>) {
    let list = sub(conf, &["runs", "--json"]).expect(0).json();
    let (mut complete, mut incomplete) = (Vec::new(), Vec::new());
    for r in list.as_array().unwrap() {
        let id = r["run_id"].as_str().unwrap().to_owned();
        if r["complete"].as_bool() == Some(true) { complete.push(id) } else { incomplete.push(id) }
    }
    for v in [&mut complete, &mut incomplete] {
        v.sort();
        v.dedup();
    }
    (complete, incomplete)
}

pub(crate) fn recovered(report: &Value) -> Vec<(String, String)> {
    report["recovered"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| (r["run_id"].as_str().unwrap().to_owned(), r["outcome"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Files that look complete in `dir`: anything but hidden `.partial-` temporaries.
pub(crate) fn complete_looking(dir: &Path) -> Vec<PathBuf> {
    walk(dir).into_iter().filter(|p| !(name(p).starts_with('.') && name(p).contains(".partial-"))).collect()
}

/// Incompressible bytes, so that sizes on disk are known in advance.
pub(crate) fn random_file(path: &Path, mib: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("head")
        .args(["-c", &format!("{}", mib << 20), "/dev/urandom"])
        .stdout(std::fs::File::create(path).unwrap())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// The night's marker in the data, as a restore of `run` gives it back, with the big file's bytes.
fn restored(sb: &Sandbox, conf: &Path, run: &str) -> (String, Vec<u8>) {
    let to = sb.join(format!("restore-{run}"));
    sub(conf, &["restore", "--run", run, "--to", to.to_str().unwrap()]).expect(0);
    let data = to.join(sb.join("data").strip_prefix("/").unwrap());
    (std::fs::read_to_string(data.join("night.txt")).unwrap(), std::fs::read(data.join("big.bin")).unwrap())
}

/// nc-backup-py's layout: files, compressed and encrypted in WORK_FOLDER, stored in `store`.
fn pipeline(sb: &Sandbox, store: Value) -> PathBuf {
    let w = sb.join("work");
    let mut storage = json!({"OBJECTIVES": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"});
    storage.as_object_mut().unwrap().extend(store.as_object().unwrap().clone());
    sb.config(&[
        (
            "FILESET",
            json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "COMPRESSION",
            json!({"ACTION": "execute", "NAME": "compression", "PARAMETERS": {
                "OBJECTIVES": w.join("files"), "DESTINATION": w.join("compressed"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "ENCRYPTION",
            json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "FILE_SIZE": "4", "OBJECTIVES": w.join("compressed"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        ("STORAGE", json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": storage})),
    ])
}

fn local(sb: &Sandbox) -> Value {
    json!({"DESTINATION": "local", "PATH": sb.join("store")})
}

fn setup(sb: &Sandbox, big_mib: usize) {
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    sb.write("data/night.txt", b"night 1\n");
    random_file(&sb.join("data/big.bin"), big_mib);
}

/// The failed night: exit 1, the section named with the cause, in stderr and in its report.
#[track_caller]
fn assert_failed_in(out: &Out, section: &str, cause: &str) {
    assert!(out.stderr.contains(section) && out.stderr.contains(cause), "{section} / {cause}:\n{}", out.stderr);
    let report = out.json();
    let s = report["sections"].as_array().unwrap().iter().find(|s| s["name"] == section).unwrap();
    assert_eq!(s["status"], "failed", "{report:#}");
    assert!(s["error"].as_str().unwrap_or("").contains(cause), "{report:#}");
}

/// Nothing of either night is left in WORK_FOLDER: no shared folder holds a file, no journal,
/// nothing aside, no secret.
#[track_caller]
fn assert_work_clean(sb: &Sandbox) {
    let w = sb.join("work");
    let left: Vec<PathBuf> = walk(&w).into_iter().filter(|p| name(p) != ".backup-runner.lock").collect();
    assert!(left.is_empty(), "left in WORK_FOLDER: {left:?}");
}

/// Night 2 after a night 1 that failed: exit 0, night 1 `outcome`, the stored runs as they
/// should be, every run verified with its data read back, and restored as it was backed up.
fn next_night(sb: &Sandbox, conf: &Path, night1: &str, outcome: &str) -> String {
    std::fs::write(sb.join("data/night.txt"), b"night 2\n").unwrap();
    let out = night(conf).expect(0);
    let report = out.json();
    assert_eq!(recovered(&report), [(night1.to_owned(), outcome.to_owned())], "{report:#}");
    let night2 = run_id(&out);
    let (complete, incomplete) = stored_runs(conf);
    assert!(incomplete.is_empty(), "incomplete runs stored: {incomplete:?}");
    let big = std::fs::read(sb.join("data/big.bin")).unwrap();
    if outcome == "completed" {
        assert_eq!(complete, [night1.to_owned(), night2.clone()]);
        assert_eq!(restored(sb, conf, night1), ("night 1\n".to_owned(), big.clone()));
    } else {
        assert_eq!(complete, std::slice::from_ref(&night2));
    }
    sub(conf, &["verify", "--run", "all", "--read-data"]).expect(0);
    assert_eq!(restored(sb, conf, &night2), ("night 2\n".to_owned(), big));
    night2
}

#[test]
fn work_folder_full_in_filesbackup_fails_the_night_and_the_next_starts_clean() {
    let sb = Sandbox::new();
    setup(&sb, 24);
    // 16 MiB of WORK_FOLDER for a 24 MiB archive: the first section fills it.
    let work = Tmpfs::mount(&sb.join("work"), 16);
    let conf = pipeline(&sb, local(&sb));
    let out = night(&conf).expect(1);
    let night1 = run_id(&out);
    assert_failed_in(&out, "FILESET", "No space left");
    let looks_done = complete_looking(&sb.join("work/files"));
    assert!(looks_done.is_empty(), "the failed archive looks complete: {looks_done:?}");
    assert!(!sb.join("store").exists(), "a night that failed in its first section stored something");
    assert!(sb.join(format!("work/.ncb-journal/{night1}.json")).is_file(), "no journal kept for the failed night");
    // Room made: night 1 had finished no section, there is nothing to complete.
    work.grow(96);
    next_night(&sb, &conf, &night1, "abandoned");
    assert_work_clean(&sb);
}

#[test]
fn work_folder_full_in_compression_the_next_night_completes_the_run() {
    let sb = Sandbox::new();
    setup(&sb, 20);
    // The 20 MiB archive fits in 32 MiB; compression's second copy does not.
    let work = Tmpfs::mount(&sb.join("work"), 32);
    let conf = pipeline(&sb, local(&sb));
    let out = night(&conf).expect(1);
    let night1 = run_id(&out);
    assert_failed_in(&out, "COMPRESSION", "No space left");
    assert_eq!(out.json()["sections"][0]["status"], "ok");
    let looks_done = complete_looking(&sb.join("work/compressed"));
    assert!(looks_done.is_empty(), "the failed compression left files that look complete: {looks_done:?}");
    assert_eq!(
        complete_looking(&sb.join("work/files")).len(),
        1,
        "filesbackup's archive, compression's input, is gone"
    );
    assert!(!sb.join("store").exists());
    work.grow(128);
    next_night(&sb, &conf, &night1, "completed");
    assert_work_clean(&sb);
}

#[test]
fn store_full_during_storage_the_next_night_stores_both_runs() {
    let sb = Sandbox::new();
    setup(&sb, 16);
    // A 48 MiB store holding a 40 MiB filler: the 16 MiB run does not fit; without the filler
    // both runs do.
    let _store = Tmpfs::mount(&sb.join("store"), 48);
    random_file(&sb.join("store/filler"), 40);
    let conf = pipeline(&sb, local(&sb));
    let out = night(&conf).expect(1);
    let night1 = run_id(&out);
    assert_failed_in(&out, "STORAGE", "No space left");
    assert!(
        out.stderr.contains(&sb.join("store").display().to_string()),
        "the destination is not named:\n{}",
        out.stderr
    );
    let run_dir = sb.join(format!("store/testhost/{night1}"));
    assert!(!run_dir.join("RUN-MANIFEST.json").exists(), "a run that did not fit has a run manifest");
    let (complete, _) = stored_runs(&conf);
    assert!(complete.is_empty(), "{complete:?}");
    // The run waits in WORK_FOLDER, encrypted, for the next night.
    assert!(!complete_looking(&sb.join("work/encrypted")).is_empty(), "the run's encrypted files are gone");
    std::fs::remove_file(sb.join("store/filler")).unwrap();
    next_night(&sb, &conf, &night1, "completed");
    let partial: Vec<PathBuf> = walk(&sb.join("store")).into_iter().filter(|p| name(p).contains(".partial-")).collect();
    assert!(partial.is_empty(), "temporaries left in the store: {partial:?}");
    assert_work_clean(&sb);
}

/// Starts or stops the shared Garage (scripts/servers.sh); a stopped one is started again
/// when the guard goes, whatever happened.
struct Garage {
    down: bool,
}

impl Garage {
    fn set(&mut self, action: &str) {
        let ok = Command::new("bash")
            .arg(repo().join("scripts/servers.sh"))
            .arg(action)
            .env("NCB_SERVERS_DIR", std::env::var("NCB_SERVERS_DIR").unwrap_or_else(|_| "/var/tmp/ncb-servers".into()))
            .status()
            .unwrap()
            .success();
        assert!(ok, "servers.sh {action}");
        self.down = action == "garage-stop";
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if self.down {
            self.set("garage-start");
        }
    }
}

#[test]
fn garage_down_for_a_whole_night_the_next_night_stores_both_runs() {
    let s = Servers::get();
    let sb = Sandbox::new();
    setup(&sb, 6);
    let prefix = unique("ncbdown");
    let bucket = s.var("NCB_S3_BUCKET");
    let conf = pipeline(
        &sb,
        json!({"DESTINATION": "s3", "BUCKET_NAME": bucket, "REGION": s.var("NCB_S3_REGION"),
               "ENDPOINT_URL": s.var("NCB_S3_ENDPOINT"), "PREFIX": prefix}),
    );
    let mut garage = Garage { down: false };
    garage.set("garage-stop");
    let out = night(&conf).expect(1);
    let night1 = run_id(&out);
    assert_failed_in(&out, "STORAGE", &format!("s3://{bucket}"));
    garage.set("garage-start");
    let (complete, _) = stored_runs(&conf);
    assert!(!complete.contains(&night1), "a night that could not reach its store has a run manifest");
    next_night(&sb, &conf, &night1, "completed");
    assert_work_clean(&sb);
}
