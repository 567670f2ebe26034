//! INCREMENTAL file backups: a full archive, then only what changed, in GNU tar's incremental
//! format. Each night's tree comes back byte for byte through `backup-runner restore` (the
//! chain applied in order) and through GNU tar by hand; an increment is never built or stored
//! on a base that is not complete; retention keeps whole chains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nc_backup_e2e::{Sandbox, bin, cmd, pseudo_random, run};
use serde_json::{Value, json};

fn pipeline(sb: &Sandbox, files_extra: Value, keep_last: &str) -> PathBuf {
    let w = sb.join("work");
    let mut files = json!({"FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files"),
        "INCREMENTAL": "True", "STATE_FOLDER": sb.join("state")});
    for (k, v) in files_extra.as_object().unwrap() {
        files[k] = v.clone();
    }
    sb.config(&[
        ("FILES", json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": files})),
        (
            "ENCRYPTION",
            json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "OBJECTIVES": w.join("files"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": sb.join("store"),
                "REMOVE_OBJECTIVES": "True", "KEEP_LAST": keep_last}}),
        ),
    ])
}

fn setup(sb: &Sandbox) {
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    sb.write("data/big.bin", &pseudo_random(3 << 20, 5));
    sb.write("data/docs/a.txt", b"alpha\n");
    sb.write("data/docs/b.txt", b"bravo\n");
    sb.write("data/old/dir/x.txt", b"x\n");
    std::os::unix::fs::symlink("docs/a.txt", sb.join("data/link")).unwrap();
}

/// Every entry under `dir`: relative name -> content, link target or "dir".
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.is_dir() {
                stack.push(p.clone());
                b"dir".to_vec()
            } else if m.file_type().is_symlink() {
                [b"-> ".as_slice(), std::fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes()].concat()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(rel, v);
        }
    }
    out
}

/// One night: its run id and the FILES section's report data.
fn night(conf: &Path) -> (String, Value) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())));
    let out = run(cmd(&bin("backup-runner")).args(["-r", "--json", "-c"]).arg(conf)).expect(0);
    let r = out.json();
    let files = r["sections"].as_array().unwrap().iter().find(|s| s["name"] == "FILES").unwrap().clone();
    (r["run_id"].as_str().unwrap().to_owned(), files)
}

fn stored_runs(sb: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sb.join("store/testhost"))
        .map(|e| e.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn run_bytes(sb: &Sandbox, run_id: &str) -> u64 {
    std::fs::read_dir(sb.join(format!("store/testhost/{run_id}")))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn restored(sb: &Sandbox, conf: &Path, run_id: &str) -> BTreeMap<String, Vec<u8>> {
    let to = sb.join(format!("restore-{run_id}"));
    run(cmd(&bin("backup-runner")).args(["restore", "-c"]).arg(conf).args(["--run", run_id, "--to"]).arg(&to))
        .expect(0);
    tree(&to.join(sb.join("data").strip_prefix("/").unwrap()))
}

fn data(d: &Value, key: &str) -> Value {
    d["data"][key].clone()
}

#[test]
fn increments_restore_each_night_byte_for_byte_by_us_and_by_gnu_tar() {
    let sb = Sandbox::new();
    setup(&sb);
    let conf = pipeline(&sb, json!({}), "1");
    let (n1, f1) = night(&conf);
    assert_eq!((data(&f1, "level"), data(&f1, "base_run")), (json!(0), Value::Null), "{f1:#}");
    assert!(f1["warnings"].to_string().contains("no snapshot of an earlier run"), "{f1:#}");
    let t1 = tree(&sb.join("data"));

    // Night 2: one file changed, one added, one removed, a folder removed, a link retargeted.
    sb.write("data/docs/a.txt", b"alpha, edited\n");
    sb.write("data/docs/new.txt", b"new\n");
    std::fs::remove_file(sb.join("data/docs/b.txt")).unwrap();
    std::fs::remove_dir_all(sb.join("data/old")).unwrap();
    std::fs::remove_file(sb.join("data/link")).unwrap();
    std::os::unix::fs::symlink("docs/new.txt", sb.join("data/link")).unwrap();
    let (n2, f2) = night(&conf);
    assert_eq!((data(&f2, "level"), data(&f2, "base_run")), (json!(1), json!(n1)), "{f2:#}");
    assert_eq!(data(&f2, "unchanged"), json!(1), "big.bin is left out: {f2:#}");
    let t2 = tree(&sb.join("data"));

    // Night 3: nothing changed but a file's content, same size and time (the ctime tells).
    let a = sb.join("data/docs/a.txt");
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, b"ALPHA, EDITED\n").unwrap();
    std::fs::File::options().write(true).open(&a).unwrap().set_modified(mtime).unwrap();
    let (n3, f3) = night(&conf);
    assert_eq!((data(&f3, "level"), data(&f3, "base_run"), data(&f3, "files")), (json!(2), json!(n2), json!(1)));
    let t3 = tree(&sb.join("data"));

    // The increments cost what changed, not what exists.
    let (b1, b2, b3) = (run_bytes(&sb, &n1), run_bytes(&sb, &n2), run_bytes(&sb, &n3));
    assert!(b1 > 3 << 20 && b2 < 64 << 10 && b3 < 64 << 10, "{b1} {b2} {b3}");
    // KEEP_LAST 1 keeps the chain the last run needs.
    assert_eq!(stored_runs(&sb), [n1.clone(), n2.clone(), n3.clone()]);

    // backup-runner restores each night as it was.
    assert_eq!(restored(&sb, &conf, &n3), t3);
    assert_eq!(restored(&sb, &conf, &n2), t2);
    assert_eq!(restored(&sb, &conf, &n1), t1);
    let v =
        run(cmd(&bin("backup-runner")).args(["verify", "--run", "latest", "--read-data", "--json", "-c"]).arg(&conf))
            .expect(0);
    let verified: Vec<String> =
        v.json().as_array().unwrap().iter().map(|x| x["run_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(verified, [n1.clone(), n2.clone(), n3.clone()], "verify checks the whole chain");

    // By hand: download, decrypt, then GNU tar --incremental, full first.
    let by_hand = sb.join("by-hand");
    std::fs::create_dir(&by_hand).unwrap();
    for r in [&n1, &n2, &n3] {
        let dl = sb.join(format!("dl-{r}"));
        run(cmd(&bin("storage"))
            .args(["--download", "--SOURCE", "local", "--PREFIX", "testhost", "--RUN", r, "--PATH"])
            .arg(sb.join("store"))
            .arg("--DESTINATION")
            .arg(&dl))
        .expect(0);
        let name = format!("testhost_FILES_{r}.tar.gz");
        run(cmd(&bin("encryption"))
            .arg("-d")
            .arg("--KEY_FILE")
            .arg(sb.join("key_file"))
            .arg("--OBJECTIVES")
            .arg(dl.join(&name))
            .arg("--DESTINATION")
            .arg(sb.join(format!("plain-{r}.tar.gz"))))
        .expect(0);
        let st = Command::new("tar")
            .args(["--incremental", "-x", "-z", "-f"])
            .arg(sb.join(format!("plain-{r}.tar.gz")))
            .arg("-C")
            .arg(&by_hand)
            .status()
            .unwrap();
        assert!(st.success(), "GNU tar -G -x of {name}");
    }
    assert_eq!(tree(&by_hand.join(sb.join("data").strip_prefix("/").unwrap())), t3, "GNU tar rebuilt another tree");
}

#[test]
fn an_increment_is_never_built_or_stored_on_a_base_that_is_not_complete() {
    let sb = Sandbox::new();
    setup(&sb);
    let conf = pipeline(&sb, json!({}), "5");
    let (n1, _) = night(&conf);
    // The base run is lost from the destination: the next night is a full one, and says why.
    std::fs::remove_file(sb.join(format!("store/testhost/{n1}/RUN-MANIFEST.json"))).unwrap();
    sb.write("data/docs/a.txt", b"changed\n");
    let (n2, f2) = night(&conf);
    assert_eq!(data(&f2, "level"), json!(0), "{f2:#}");
    let warned = f2["warnings"].to_string();
    assert!(warned.contains(&n1) && warned.contains("not complete"), "{warned}");
    assert_eq!(restored(&sb, &conf, &n2), tree(&sb.join("data")));

    // The base vanishes between filesbackup and storage: storage refuses the increment; the
    // night fails loudly, and the next one stores a full archive.
    let script = sb.write(
        "lose-base.sh",
        format!("#!/bin/sh\nrm -rf '{}'\n", sb.join(format!("store/testhost/{n2}")).display()).as_bytes(),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    let mut v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    let storage = v.remove("STORAGE").unwrap();
    v.insert("LOSE".into(), json!({"ACTION": "execute", "NAME": "lose", "EXECUTABLE": script}));
    v.insert("STORAGE".into(), storage);
    let lossy = sb.config_text("lossy.json", &serde_json::to_string_pretty(&v).unwrap());
    sb.write("data/docs/a.txt", b"changed again\n");
    let out = run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&lossy)).expect(1);
    assert!(out.stderr.contains(&format!("an increment of FILES on run {n2}")), "{}", out.stderr);
    let (n4, f4) = night(&conf);
    assert_eq!(data(&f4, "level"), json!(0), "{f4:#}");
    assert_eq!(restored(&sb, &conf, &n4), tree(&sb.join("data")));
}

#[test]
fn full_every_a_changed_fileset_and_a_damaged_snapshot_start_new_chains_that_retention_keeps_whole() {
    let sb = Sandbox::new();
    setup(&sb);
    let conf = pipeline(&sb, json!({"FULL_EVERY": "2"}), "1");
    let (n1, f1) = night(&conf);
    let (n2, f2) = night(&conf);
    assert_eq!((data(&f1, "level"), data(&f2, "level")), (json!(0), json!(1)));
    assert_eq!(stored_runs(&sb), [n1.clone(), n2.clone()], "KEEP_LAST 1 keeps the base of the kept run");
    // FULL_EVERY 2: a new full archive; the old chain is no longer needed and goes.
    let (n3, f3) = night(&conf);
    assert_eq!(data(&f3, "level"), json!(0));
    assert_eq!(stored_runs(&sb), std::slice::from_ref(&n3));

    // A damaged snapshot: a full archive, with a warning, never a wrong increment.
    let snap = sb.join("state/testhost_FILES.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    let (_, f4) = night(&conf);
    assert_eq!(data(&f4, "level"), json!(0));
    assert!(f4["warnings"].to_string().contains("damaged snapshot"), "{f4:#}");

    // Another fileset (an exclude added): a full archive, with a warning.
    let conf = pipeline(&sb, json!({"FULL_EVERY": "2", "FILESET_EXCLUDE": "*.bin"}), "1");
    let (n5, f5) = night(&conf);
    assert_eq!(data(&f5, "level"), json!(0));
    assert!(f5["warnings"].to_string().contains("fileset changed"), "{f5:#}");
    assert!(!restored(&sb, &conf, &n5).contains_key("big.bin"));
}

#[test]
fn incremental_settings_are_checked() {
    let sb = Sandbox::new();
    setup(&sb);
    for (extra, key, says) in [
        (json!({"FULL_EVERY": "fortnight"}), "FULL_EVERY", "weekday"),
        (json!({"FILE_EXTENSIONS": ".txt"}), "INCREMENTAL", "FILE_EXTENSIONS"),
        (json!({"INCREMENTAL": "False", "FULL_EVERY": "7"}), "FULL_EVERY", "without INCREMENTAL"),
    ] {
        let conf = pipeline(&sb, extra, "1");
        let out = run(cmd(&bin("backup-runner")).args(["--check", "-c"]).arg(&conf)).expect(2);
        assert!(out.stderr.contains(key) && out.stderr.contains(says), "{}", out.stderr);
    }
}

fn runner_json(conf: &Path, args: &[&str]) -> Value {
    run(cmd(&bin("backup-runner")).args(&args[..1]).arg("-c").arg(conf).args(&args[1..]).arg("--json")).expect(0).json()
}

fn paths(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_owned()).collect()
}

/// `ls`, `find` and `restore --include` read the indexes stored beside the archives: browsing
/// downloads no archive, and a selective restore fetches only the archives of the chain that
/// hold what it asks for.
#[test]
fn browsing_and_selective_restore_read_only_what_they_need() {
    let sb = Sandbox::new();
    setup(&sb);
    let conf = pipeline(&sb, json!({}), "5");
    let data = sb.join("data");
    let stored = |rel: &str| format!("{}/{rel}", data.strip_prefix("/").unwrap().display());
    let (n1, _) = night(&conf);
    sb.write("data/docs/new.txt", b"new in night 2\n");
    std::fs::remove_file(sb.join("data/docs/b.txt")).unwrap();
    let (n2, _) = night(&conf);
    sb.write("data/docs/a.txt", b"alpha, night 3\n");
    let (n3, _) = night(&conf);

    // ls: the tree as of the run, whatever archive of the chain holds each entry.
    let all = paths(&runner_json(&conf, &["ls", "--run", &n3]));
    for want in ["big.bin", "docs", "docs/a.txt", "docs/new.txt", "link"] {
        assert!(all.contains(&stored(want)), "{want} missing from ls: {all:?}");
    }
    assert!(!all.contains(&stored("docs/b.txt")), "a removed file is listed: {all:?}");
    let docs = paths(&runner_json(&conf, &["ls", "--run", &n1, &format!("/{}", stored("docs"))]));
    assert_eq!(docs, [stored("docs"), stored("docs/a.txt"), stored("docs/b.txt")]);
    // ls of a path the run does not hold fails.
    let out = run(cmd(&bin("backup-runner")).args(["ls", "-c"]).arg(&conf).arg("/nowhere")).expect(1);
    assert!(out.stderr.contains("holds nothing"), "{}", out.stderr);

    // find: every run holding a match, newest first.
    let found = runner_json(&conf, &["find", "b.txt"]);
    let runs: Vec<&str> = found.as_array().unwrap().iter().map(|e| e["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs, [n1.as_str()], "b.txt was removed in night 2: {found:#}");
    let found = runner_json(&conf, &["find", &format!("/{}", stored("docs/*.txt"))]);
    assert_eq!(found.as_array().unwrap().len(), 2 + 2 + 2, "{found:#}");
    assert_eq!(found[0]["run_id"], json!(n3));

    // restore --include: docs/new.txt was stored by night 2 only; night 3's restore of it
    // fetches night 2's small archive, not night 1's full one.
    let to = sb.join("sel-new");
    let s = run(cmd(&bin("backup-runner"))
        .args(["restore", "--json", "--run", &n3, "--include", &format!("/{}", stored("docs/new.txt")), "-c"])
        .arg(&conf)
        .arg("--to")
        .arg(&to))
    .expect(0)
    .json();
    assert!(s["stored_bytes"].as_u64().unwrap() < 64 << 10, "{s:#}");
    assert_eq!(
        tree(&to),
        BTreeMap::from([(stored("docs/new.txt"), b"new in night 2\n".to_vec()),])
            .into_iter()
            .chain(ancestors(&stored("docs/new.txt")))
            .collect::<BTreeMap<_, _>>()
    );
    // A folder and a glob: each entry from the newest archive that holds it.
    let to = sb.join("sel-docs");
    run(cmd(&bin("backup-runner"))
        .args(["restore", "--run", &n3, "--include", &stored("docs"), "--include", "*.bin", "-c"])
        .arg(&conf)
        .arg("--to")
        .arg(&to))
    .expect(0);
    let got = tree(&to.join(data.strip_prefix("/").unwrap()));
    let want: BTreeMap<String, Vec<u8>> =
        tree(&data).into_iter().filter(|(k, _)| k.starts_with("docs") || k == "big.bin").collect();
    assert!(got == want, "{:?} != {:?}", got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    // Nothing matches: a usage error, nothing restored.
    let out = run(cmd(&bin("backup-runner"))
        .args(["restore", "--run", &n3, "--include", "/nowhere", "-c"])
        .arg(&conf)
        .arg("--to")
        .arg(sb.join("sel-none")))
    .expect(2);
    assert!(out.stderr.contains("holds nothing that matches"), "{}", out.stderr);
    // A whole restore never unpacks the indexes themselves.
    let to = sb.join("whole");
    run(cmd(&bin("backup-runner")).args(["restore", "--run", &n3, "-c"]).arg(&conf).arg("--to").arg(&to)).expect(0);
    let top: Vec<String> =
        std::fs::read_dir(&to).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(top, [stored("").split('/').next().unwrap().to_owned()], "{top:?}");
    assert_eq!(n2.len(), n3.len());
}

/// The folders above `rel`, as `tree` lists them.
fn ancestors(rel: &str) -> Vec<(String, Vec<u8>)> {
    let p = Path::new(rel);
    p.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .map(|a| (a.display().to_string(), b"dir".to_vec()))
        .collect()
}

/// `restore --keep-going`: a damaged part costs only the archive it belongs to; everything
/// else is restored, and exit 1 names what was not. Without it, nothing is restored.
#[test]
fn keep_going_restores_everything_but_the_damaged_archive() {
    let sb = Sandbox::new();
    setup(&sb);
    sb.write("other/o.bin", &pseudo_random(2 << 20, 9));
    let w = sb.join("work");
    let conf = sb.config(&[
        (
            "FILES",
            json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
            "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "OTHER",
            json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
            "FILESET_INCLUDE": sb.join("other"), "DESTINATION": w.join("files")}}),
        ),
        (
            "ENCRYPTION",
            json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
            "KEY_FILE": sb.join("key_file"), "OBJECTIVES": w.join("files"), "FILE_SIZE": "1",
            "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": sb.join("store"),
            "REMOVE_OBJECTIVES": "True"}}),
        ),
    ]);
    let (run_id, _) = night(&conf);
    // One byte flipped in the middle of OTHER's second part.
    let part = sb.join(format!("store/testhost/{run_id}/testhost_OTHER_{run_id}.tar.gz.enc.001"));
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&part, &bytes).unwrap();
    let restore = |to: &Path, extra: &[&str]| {
        run(cmd(&bin("backup-runner")).args(["restore", "--json", "-c"]).arg(&conf).arg("--to").arg(to).args(extra))
    };
    let strict = sb.join("strict");
    let out = restore(&strict, &[]).expect(1);
    assert!(out.stderr.contains("OTHER"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&strict).unwrap().count(), 0, "a failed restore left files");
    let to = sb.join("kept");
    let out = restore(&to, &["--keep-going"]).expect(1);
    let s = out.json();
    assert_eq!(s["failed_items"], json!([format!("testhost_OTHER_{run_id}.tar.gz")]), "{s:#}");
    assert!(out.stderr.contains("not restored") && out.stderr.contains("OTHER"), "{}", out.stderr);
    assert_eq!(tree(&to.join(sb.join("data").strip_prefix("/").unwrap())), tree(&sb.join("data")));
    // Of the damaged archive, nothing that was not authenticated: o.bin spans the damage.
    assert!(!to.join(sb.join("other/o.bin").strip_prefix("/").unwrap()).exists());
}

/// A section made again under the same run id (the next night's recovery re-runs an
/// interrupted one) builds on the same base, however many times it is made.
#[test]
fn a_section_made_again_under_its_run_id_keeps_its_base() {
    let sb = Sandbox::new();
    setup(&sb);
    let made = std::cell::Cell::new(0);
    let files = |run_id: &str| -> Value {
        made.set(made.get() + 1);
        run(cmd(&bin("filesbackup"))
            .env("NCB_RUN_ID", run_id)
            .env("NCB_SECTION", "FILES")
            .args(["--HOSTNAME", "testhost", "--INCREMENTAL", "True", "--FILESET_INCLUDE"])
            .arg(sb.join("data"))
            .arg("--STATE_FOLDER")
            .arg(sb.join("state"))
            .arg("--DESTINATION")
            .arg(sb.join(format!("out-{}", made.get()))))
        .expect(0)
        .json()
    };
    let r1 = "20261201T010000Z-0001";
    let r2 = "20261202T010000Z-0002";
    assert_eq!(files(r1)["data"]["level"], json!(0));
    for _ in 0..3 {
        let again = files(r2);
        assert_eq!(
            (again["data"]["level"].clone(), again["data"]["base_run"].clone()),
            (json!(1), json!(r1)),
            "{again:#}"
        );
    }
}
