//! storage: puts a run's files into each destination under `<PREFIX><RUN_ID>/`, skipping files
//! already there with the same size and SHA-256, and writes the run manifest last, so a run
//! without it is visibly incomplete; fetches a run back (`--download`), checking every file;
//! applies retention (KEEP_LAST/HOURLY/DAILY/WEEKLY/MONTHLY/YEARLY/WITHIN, restic semantics)
//! to complete, authenticated runs only, never deleting the newest one, and never after a run
//! that failed or stored nothing.
//!
//! Destinations: local folders (DESTINATION local, and GENERAL LOCAL_BACKUP), S3 or any
//! S3-compatible store (DESTINATION s3), and every cloud rclone knows (DESTINATION rclone).

pub mod backend;
pub mod perfile;
pub mod rclone;
pub mod retention;
pub mod s3;

use std::path::{Path, PathBuf};

use ncb_core::context::safe_name;
use ncb_core::hash::sha256_file;
use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Error, IoContext, Result, StageCtx, StageDef, StageReport};

use backend::{Backend, FileInfo, Local, RUN_MANIFEST, RunManifest};
use retention::Policy;

pub static PARAMS: [ParamSpec; 39] = [
    ParamSpec::new(
        "DESTINATION",
        Kind::List,
        "Where to store: local, s3, rclone (several allowed); with --download, the folder to fetch into",
    ),
    ParamSpec::new("PATH", Kind::Path, "DESTINATION local: the folder runs are stored in"),
    ParamSpec::new("PREFIX", Kind::Str, "Folder of this host's runs in each destination (default <HOSTNAME>/)"),
    ParamSpec::new("OBJECTIVES", Kind::Paths, "Files, or folders whose files (all levels) to store"),
    ParamSpec::new(
        "REMOVE_OBJECTIVES",
        Kind::Bool,
        "Delete the inputs once every destination holds them and its run manifest",
    ),
    ParamSpec::new(
        "MAX_UPLOAD_FILES",
        Kind::Int,
        "Refuse a run of more files than this (LAYOUT files: store at most this many now, the rest next run)",
    ),
    ParamSpec::new(
        "LAYOUT",
        Kind::Choice(&["runs", "files"]),
        "runs (default): a run folder with its manifest; files: each file its own object under PREFIX, never sent twice (C3)",
    ),
    ParamSpec::new("FILE_EXTENSIONS", Kind::List, "LAYOUT files: only files with these extensions (.jpg .png)"),
    ParamSpec::new(
        "BANDWIDTH_LIMIT",
        Kind::Str,
        "Pace uploads to this rate (20M, 512K: bytes a second; s3 paced here, rclone by its --bwlimit)",
    ),
    ParamSpec::new(
        "APPEND_ONLY",
        Kind::Bool,
        "This host's credentials may put and get but not delete: no retention here (run backup-runner prune from a trusted host)",
    ),
    ParamSpec::new(
        "OBJECT_LOCK_DAYS",
        Kind::Int,
        "s3: lock every object of a run for this many days (S3 Object Lock; the bucket must have it enabled)",
    ),
    ParamSpec::new(
        "OBJECT_LOCK_MODE",
        Kind::Choice(&["GOVERNANCE", "COMPLIANCE"]),
        "s3: GOVERNANCE (default: privileged users may lift it) or COMPLIANCE (nobody can, not even the account root)",
    ),
    ParamSpec::new(
        "SIGNING_KEY",
        Kind::Path,
        "Sign each run manifest with this host signing key (Ed25519, encryption --generate-signing-key; mode 0600)",
    )
    .must_exist(),
    ParamSpec::new(
        "ALLOW_EMPTY",
        Kind::Bool,
        "No file in OBJECTIVES is not an error: nothing is stored and retention does not run (default False)",
    ),
    ParamSpec::new(
        "KEY_FILE",
        Kind::Path,
        "The encryption key: the run manifest is authenticated with it (backup-runner passes the encryption section's)",
    ),
    ParamSpec::new("UPLOAD_COMMAND", Kind::Ignored, "nc-backup-py: the aws cli command"),
    ParamSpec::new("KEEP_LAST", Kind::Int, "Retention: keep the N most recent complete runs"),
    ParamSpec::new("KEEP_HOURLY", Kind::Int, "Retention: keep the newest run of each of the last N hours with runs"),
    ParamSpec::new("KEEP_DAILY", Kind::Int, "Retention: keep the newest run of each of the last N days with runs"),
    ParamSpec::new("KEEP_WEEKLY", Kind::Int, "Retention: likewise for ISO weeks"),
    ParamSpec::new("KEEP_MONTHLY", Kind::Int, "Retention: likewise for months"),
    ParamSpec::new("KEEP_YEARLY", Kind::Int, "Retention: likewise for years"),
    ParamSpec::new(
        "KEEP_WITHIN",
        Kind::Str,
        "Retention: keep every run within this duration (2y5m7d3h) of the newest run",
    ),
    ParamSpec::new(
        "REMOVE_INCOMPLETE_AFTER",
        Kind::Str,
        "Retention: incomplete runs older than this (default 7d) are deleted, unless their run is still pending here",
    ),
    ParamSpec::new("DRY_RUN", Kind::Bool, "Retention: list what would be deleted, delete nothing"),
    ParamSpec::new("DOWNLOAD", Kind::Switch, "Fetch a run back instead of storing"),
    ParamSpec::new(
        "SOURCE",
        Kind::Choice(&["local", "s3", "rclone"]),
        "--download: the destination kind to fetch from (default local)",
    ),
    ParamSpec::new("RUN", Kind::Str, "--download: a run id, or latest (default): the newest complete run"),
    ParamSpec::new(
        "MAX_DOWNLOAD_FILES",
        Kind::Int,
        "--download: refuse a run of more files than this (LAYOUT files: fetch at most this many now)",
    ),
    ParamSpec::new(
        "RCLONE_REMOTE",
        Kind::Str,
        "rclone: where runs go, as rclone names it (onedrive:backups, :sftp,host=h:/backups, /mnt/x)",
    ),
    ParamSpec::new("RCLONE_CONFIG", Kind::Path, "rclone: its config file (default: rclone's)").must_exist(),
    ParamSpec::new("BUCKET_NAME", Kind::Str, "s3: the bucket"),
    ParamSpec::new("REGION", Kind::Str, "s3: the region (default us-east-1)"),
    ParamSpec::new(
        "ENDPOINT_URL",
        Kind::Str,
        "s3: endpoint of an S3-compatible store (Garage, MinIO, Ceph, R2, Wasabi, Aliyun OSS)",
    ),
    ParamSpec::new(
        "FORCE_PATH_STYLE",
        Kind::Bool,
        "s3: bucket in the path, not the host name (default True with ENDPOINT_URL)",
    ),
    ParamSpec::new(
        "STORAGE_CLASS",
        Kind::Choice(s3::STORAGE_CLASSES),
        "s3: storage class of every object (default: the bucket's)",
    ),
    ParamSpec::new(
        "REQUEST_CHECKSUM_CALCULATION",
        Kind::Choice(&["when_required", "when_supported"]),
        "s3: when_required (default): our SHA-256 sent up front; when_supported: the SDK's streamed trailer checksums too (AWS; Garage 2.5 rejects them)",
    ),
    ParamSpec::new("PART_SIZE_MB", Kind::Int, "s3: multipart part size, 5-512 (default 8); larger files go multipart"),
    ParamSpec::new(
        "UPLOAD_CONCURRENCY",
        Kind::Int,
        "s3: parts in flight per file, 1-16 (default 4; memory: this many parts)",
    ),
];

pub static STAGE: StageDef = StageDef {
    name: "storage",
    aliases: &["store", "upload"],
    legacy_executables: &["storage.py"],
    about: "Store a run's files in destinations, fetch them back, apply retention",
    params: &PARAMS,
    validate,
    run,
};

const KINDS: [&str; 3] = ["local", "s3", "rclone"];

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, m: String| problems.push(Problem { key: key.into(), message: m });
    if p.flag("DOWNLOAD", false).unwrap_or(false) {
        if p.str("DESTINATION").is_none() {
            bad("DESTINATION", "--download needs the folder to fetch into".into());
        }
        if p.str("PATH").is_none() && p.str("SOURCE").is_none_or(|s| s.eq_ignore_ascii_case("local")) {
            bad("PATH", "--download from local needs the folder runs are stored in".into());
        }
        return problems;
    }
    if p.str("OBJECTIVES").is_none() {
        bad("OBJECTIVES", "missing required parameter (the folder or files to store)".into());
    }
    for key in ["KEEP_WITHIN", "REMOVE_INCOMPLETE_AFTER"] {
        if let Some(v) = p.str(key)
            && let Err(e) = retention::Span::parse(v)
        {
            bad(key, e);
        }
    }
    let kinds = p.list("DESTINATION").unwrap_or_default();
    if kinds.iter().any(|k| k.eq_ignore_ascii_case("s3")) {
        for pr in s3::validate(p) {
            bad(&pr.key, pr.message);
        }
        // Object Lock is a property of the bucket: asked of it now (at --check), not found
        // missing in the middle of a night.
        if p.u64("OBJECT_LOCK_DAYS").ok().flatten().is_some_and(|d| d > 0)
            && p.has("BUCKET_NAME")
            && let Err(e) = s3::S3::from_params(p)
        {
            bad("OBJECT_LOCK_DAYS", e.to_string().replace("OBJECT_LOCK_DAYS: ", ""));
        }
    } else if p.has("OBJECT_LOCK_DAYS") {
        bad("OBJECT_LOCK_DAYS", "applies to DESTINATION s3 only".into());
    }
    if kinds.is_empty() {
        bad("DESTINATION", "missing required parameter (local)".into());
    }
    for k in &kinds {
        match k.to_ascii_lowercase().as_str() {
            "local" if p.str("PATH").is_none() => {
                bad("PATH", "DESTINATION local needs PATH, the folder to store runs in".into())
            }
            "local" => {}
            "s3" if p.str("BUCKET_NAME").is_none() => bad("BUCKET_NAME", "DESTINATION s3 needs BUCKET_NAME".into()),
            "s3" => {}
            "rclone" if p.str("RCLONE_REMOTE").is_none() => {
                bad("RCLONE_REMOTE", "DESTINATION rclone needs RCLONE_REMOTE".into())
            }
            "rclone" => {}
            other => bad("DESTINATION", format!("unknown destination '{other}' (known: {})", KINDS.join(", "))),
        }
    }
    if let Some(v) = p.str("BANDWIDTH_LIMIT")
        && let Err(e) = s3::parse_rate(v)
    {
        bad("BANDWIDTH_LIMIT", e);
    }
    if p.flag("APPEND_ONLY", false).unwrap_or(false) {
        for key in [
            "KEEP_LAST",
            "KEEP_HOURLY",
            "KEEP_DAILY",
            "KEEP_WEEKLY",
            "KEEP_MONTHLY",
            "KEEP_YEARLY",
            "KEEP_WITHIN",
            "REMOVE_INCOMPLETE_AFTER",
        ] {
            if p.has(key) {
                bad(
                    key,
                    "retention deletes runs, which APPEND_ONLY credentials cannot: give the KEEP rules to `backup-runner prune` on a trusted host".into(),
                );
            }
        }
    }
    let files_layout = p.str("LAYOUT").is_some_and(|l| l.eq_ignore_ascii_case("files"));
    if files_layout {
        for key in [
            "REMOVE_OBJECTIVES",
            "KEEP_LAST",
            "KEEP_DAILY",
            "KEEP_WEEKLY",
            "KEEP_MONTHLY",
            "KEEP_YEARLY",
            "KEEP_HOURLY",
            "KEEP_WITHIN",
        ] {
            if p.has(key) {
                bad(key, "is not available with LAYOUT files (each file is kept; nothing is deleted)".into());
            }
        }
    } else if p.has("FILE_EXTENSIONS") {
        bad("FILE_EXTENSIONS", "needs LAYOUT files".into());
    }
    // PREFIX `/`: the root of the destination (LAYOUT files).
    if let Some(prefix) = p.str("PREFIX")
        && !prefix.trim_matches('/').is_empty()
        && !prefix.trim_end_matches('/').split('/').all(|c| !c.is_empty() && c != "." && c != "..")
    {
        bad("PREFIX", format!("'{prefix}' is not a plain relative folder"));
    }
    problems
}

fn prefix(p: &Params, ctx: &StageCtx) -> String {
    prefix_for(p, &ctx.general)
}

/// The folder of this host's runs in a destination: PREFIX, or `<HOSTNAME>/`.
pub fn prefix_for(p: &Params, general: &ncb_core::context::General) -> String {
    let raw = p.str("PREFIX").map(str::to_owned).unwrap_or_else(|| safe_name(&general.hostname));
    let t = raw.trim_matches('/');
    if t.is_empty() { String::new() } else { format!("{t}/") }
}

fn policy(p: &Params) -> Result<Policy> {
    let n = |k: &str| -> Result<usize> { Ok(usize::try_from(p.u64(k)?.unwrap_or(0)).unwrap_or(usize::MAX)) };
    let within = p
        .str("KEEP_WITHIN")
        .map(|v| retention::Span::parse(v).map_err(|e| Error::usage(format!("--KEEP_WITHIN: {e}"))))
        .transpose()?;
    Ok(Policy {
        last: n("KEEP_LAST")?,
        hourly: n("KEEP_HOURLY")?,
        daily: n("KEEP_DAILY")?,
        weekly: n("KEEP_WEEKLY")?,
        monthly: n("KEEP_MONTHLY")?,
        yearly: n("KEEP_YEARLY")?,
        within,
    })
}

/// How old an incomplete run must be before retention deletes it.
fn incomplete_after(p: &Params) -> Result<retention::Span> {
    retention::Span::parse(p.str("REMOVE_INCOMPLETE_AFTER").unwrap_or("7d"))
        .map_err(|e| Error::usage(format!("--REMOVE_INCOMPLETE_AFTER: {e}")))
}

fn backends(p: &Params, ctx: &StageCtx) -> Result<Vec<Box<dyn Backend>>> {
    let mut out: Vec<Box<dyn Backend>> = Vec::new();
    for k in p.list("DESTINATION")? {
        match k.to_ascii_lowercase().as_str() {
            "local" => out.push(Box::new(Local { root: p.required_path("PATH")? })),
            "rclone" => out.push(Box::new(
                rclone::Rclone::new(p.required_str("RCLONE_REMOTE")?, p.path("RCLONE_CONFIG"))
                    .with_bwlimit(p.str("BANDWIDTH_LIMIT").and_then(|v| s3::parse_rate(v).ok())),
            )),
            "s3" => {
                let s3 = s3::S3::from_params(p)?;
                s3.abort_stale(&prefix(p, ctx))?;
                out.push(Box::new(s3));
            }
            other => return Err(Error::usage(format!("destination {other} is not available in this build yet"))),
        }
    }
    if let Some(lb) = &ctx.general.local_backup {
        out.push(Box::new(Local { root: lb.clone() }));
    }
    Ok(out)
}

fn run(ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let mut report = StageReport::new(STAGE.name);
    if p.has("UPLOAD_COMMAND") {
        log::info!("UPLOAD_COMMAND is ignored: files are stored in-process");
    }
    let prefix = prefix(p, ctx);
    let files_layout = p.choice("LAYOUT", &["runs", "files"], "runs")? == "files";
    if p.flag("DOWNLOAD", false)? {
        let source = p.choice("SOURCE", &["local", "s3", "rclone"], "local")?;
        if files_layout {
            let backend: Box<dyn Backend> = match source.as_str() {
                "s3" => Box::new(s3::S3::from_params(p)?),
                "rclone" => Box::new(rclone::Rclone::new(p.required_str("RCLONE_REMOTE")?, p.path("RCLONE_CONFIG"))),
                _ => Box::new(Local { root: p.required_path("PATH")? }),
            };
            perfile::download(p, backend.as_ref(), &prefix, &mut report)?;
            return Ok(report);
        }
        if source == "s3" {
            download(p, &s3::S3::from_params(p)?, &prefix, &mut report)?;
        } else if source == "rclone" {
            download(
                p,
                &rclone::Rclone::new(p.required_str("RCLONE_REMOTE")?, p.path("RCLONE_CONFIG")),
                &prefix,
                &mut report,
            )?;
        } else {
            download(p, &Local { root: p.required_path("PATH")? }, &prefix, &mut report)?;
        }
        return Ok(report);
    }
    let files = collect(p)?;
    if files_layout {
        let dests = backends(p, ctx)?;
        perfile::upload(p, files, &dests, &prefix, &mut report)?;
        return Ok(report);
    }
    if files.is_empty() {
        let objectives: Vec<String> = p.paths("OBJECTIVES")?.iter().map(|o| o.display().to_string()).collect();
        if !p.flag("ALLOW_EMPTY", false)? {
            return Err(Error::runtime(format!(
                "nothing to store: OBJECTIVES ({}) hold no file (an earlier section made nothing?); nothing was stored and no run was deleted (set ALLOW_EMPTY True if an empty run is normal here)",
                objectives.join(" ")
            )));
        }
        report.warn(format!(
            "OBJECTIVES ({}) hold no file: nothing stored, retention not applied (ALLOW_EMPTY)",
            objectives.join(" ")
        ));
        report.set("files", 0);
        report.set("bytes", 0);
        return Ok(report);
    }
    let dests = backends(p, ctx)?;
    if let Some(max) = p.u64("MAX_UPLOAD_FILES")?
        && files.len() as u64 > max
    {
        return Err(Error::runtime(format!("{} files to store exceed MAX_UPLOAD_FILES {max}", files.len())));
    }
    // Each source is read once by the first destination, which hashes what it stores; the
    // others check their copy against that SHA-256.
    let mut infos: Vec<(PathBuf, FileInfo)> = Vec::with_capacity(files.len());
    for (path, name) in files {
        let size = std::fs::metadata(&path).at("cannot stat", &path)?.len();
        let from = ctx.lineage.origins_of(&path);
        infos.push((path, FileInfo { name, size, sha256: String::new(), from }));
    }
    let key = p.path("KEY_FILE").map(|k| encryption::key::load(&k)).transpose()?;
    let signing = p.path("SIGNING_KEY").map(|k| encryption::sign::load_signing(&k)).transpose()?;
    let objectives = infos.len();
    let _encrypted_indexes = add_indexes(ctx, &mut infos, key.as_ref(), &mut report)?;
    for d in &dests {
        store_run(d.as_ref(), ctx, &prefix, &mut infos, key.as_ref(), signing.as_ref(), &mut report)?;
    }
    if p.flag("REMOVE_OBJECTIVES", false)? && objectives > 0 {
        remove_stored(p, &infos[..objectives])?;
    }
    let pol = policy(p)?;
    if !pol.is_empty() {
        if ctx.earlier_failed {
            report.warn("an earlier section of this run failed: retention deletes nothing tonight");
        } else {
            let rules = Rules {
                policy: pol,
                current: Some(&ctx.run_id),
                key: key.as_ref(),
                incomplete_after: incomplete_after(p)?,
                pending: ctx.general.work_folder.as_deref().map(ncb_core::journal::pending_runs).unwrap_or_default(),
                dry: p.flag("DRY_RUN", false)?,
            };
            for d in &dests {
                // The run is stored: a retention that fails (an unreadable listing, a delete
                // refused) is a warning, never a failed night.
                if let Err(e) = apply_retention(d.as_ref(), &prefix, &rules, &mut report) {
                    report.warn(format!(
                        "{}: retention not applied: {}",
                        d.describe(),
                        ncb_core::stage::error_chain(&e)
                    ));
                }
            }
        }
    }
    report.set("files", infos.len());
    report.set("bytes", infos.iter().map(|(_, i)| i.size).sum::<u64>());
    Ok(report)
}

/// REMOVE_OBJECTIVES: the files stored, encryption manifests first (a kill then leaves parts
/// without their manifest, never a manifest without its parts), then the folders they leave
/// empty. Nothing that was not stored is removed (OBJECTIVES may hold the runner's files).
fn remove_stored(p: &Params, infos: &[(PathBuf, FileInfo)]) -> Result<()> {
    let manifests_first = infos.iter().filter(|(_, i)| i.name.ends_with(encryption::manifest::SUFFIX));
    let then_parts = infos.iter().filter(|(_, i)| !i.name.ends_with(encryption::manifest::SUFFIX));
    for (path, _) in manifests_first.chain(then_parts) {
        ncb_core::atomic::remove_input(path)?;
    }
    for obj in p.paths("OBJECTIVES")? {
        remove_empty_folders(&obj);
    }
    Ok(())
}

/// A folder removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Adds to the run the indexes of the file archives it stores (written by filesbackup under
/// backup-runner), encrypted like the data with KEY_FILE: browsing and selective restores
/// read only them. Without KEY_FILE they are stored as they are, unless the run holds
/// encrypted files (a plain index would show the names the encryption hides): then none.
fn add_indexes(
    ctx: &StageCtx,
    infos: &mut Vec<(PathBuf, FileInfo)>,
    key: Option<&encryption::key::MasterKey>,
    report: &mut StageReport,
) -> Result<Option<TempDir>> {
    let wanted: Vec<(String, PathBuf)> = ctx
        .lineage
        .sections
        .iter()
        .filter(|s| infos.iter().any(|(_, i)| i.from.contains(&s.name)))
        .filter_map(|s| Some((s.name.clone(), s.index.clone()?)))
        .filter(|(_, p)| p.is_file())
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let encrypted = infos.iter().any(|(_, i)| i.name.ends_with(encryption::manifest::SUFFIX));
    let Some(key) = key else {
        if encrypted {
            report.warn("no KEY_FILE in this storage section: the archives' indexes are not stored (they would show the names the encryption hides)");
            return Ok(None);
        }
        for (section, path) in wanted {
            let size = std::fs::metadata(&path).at("cannot stat", &path)?.len();
            let name = file_name(&path);
            infos.push((path, FileInfo { name, size, sha256: String::new(), from: vec![section] }));
        }
        return Ok(None);
    };
    let tmp = TempDir(ctx.general.work_dir().join(format!(".ncb-index-enc-{}-{}", ctx.run_id, std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    ncb_core::atomic::ensure_dir(&tmp.0, 0o700)?;
    for (section, path) in wanted {
        let e = encryption::crypt::encrypt_file(key, &path, &tmp.0, None, encryption::format::DEFAULT_SEGMENT)?;
        for a in e.parts.iter().chain(std::iter::once(&e.manifest)) {
            let info = FileInfo {
                name: file_name(&a.path),
                size: a.bytes,
                sha256: a.sha256.clone(),
                from: vec![section.clone()],
            };
            infos.push((a.path.clone(), info));
        }
    }
    Ok(Some(tmp))
}

/// Removes `dir` and the folders under it that are empty (deepest first); others stay.
fn remove_empty_folders(dir: &Path) {
    let Some(rels) = ncb_core::journal::snapshot(dir, 100_000) else { return };
    for rel in rels.iter().rev() {
        let _ = std::fs::remove_dir(dir.join(rel));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Every regular file of the objectives, with its name in the run (relative to the objective's
/// parent for folders, its own name for files). Unfinished `.partial-` files are left out.
fn collect(p: &Params) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for obj in p.paths("OBJECTIVES")? {
        let meta = std::fs::metadata(&obj).at("objective", &obj)?;
        if meta.is_file() {
            out.push((obj.clone(), file_name(&obj)));
            continue;
        }
        let mut stack = vec![(obj.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .at("cannot list", &dir)?
                .collect::<std::io::Result<_>>()
                .at("cannot list", &dir)?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                // A killed stage's temporary, the runner's journals, lock and set-aside files
                // (OBJECTIVES may be WORK_FOLDER itself) are never part of a run.
                if ncb_core::atomic::is_partial(&e.file_name()) || ncb_core::journal::is_runner_own(&name) {
                    continue;
                }
                let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let t = e.file_type().at("cannot stat", &e.path())?;
                if t.is_dir() {
                    stack.push((e.path(), r));
                } else if t.is_file() {
                    out.push((e.path(), r));
                }
            }
        }
    }
    let mut names: Vec<&str> = out.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::usage(format!("two objectives hold a file named {}", w[0])));
    }
    if let Some((_, n)) = out.iter().find(|(_, n)| n == RUN_MANIFEST) {
        return Err(Error::usage(format!("{n} is reserved for the run manifest")));
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn store_run(
    d: &dyn Backend,
    ctx: &StageCtx,
    prefix: &str,
    infos: &mut [(PathBuf, FileInfo)],
    key: Option<&encryption::key::MasterKey>,
    signing: Option<&encryption::sign::SigningKey>,
    report: &mut StageReport,
) -> Result<()> {
    let run = format!("{prefix}{}/", ctx.run_id);
    // An increment is never stored where its base is not complete: it could not be restored.
    for s in ctx.lineage.sections.iter().filter(|s| infos.iter().any(|(_, i)| i.from.contains(&s.name))) {
        let Some(base) = &s.base else { continue };
        if !matches!(standing(d, prefix, base, key)?, Standing::Complete(_)) {
            return Err(Error::runtime(format!(
                "{}: run {} holds an increment of {} on run {base}, which is not complete (or not authenticated) here: not stored (the next run makes a full archive)",
                d.describe(),
                ctx.run_id,
                s.name
            )));
        }
    }
    // A store of this run killed earlier left its temporaries: they go (this run is ours).
    let discarded = d.discard_unfinished(&run)?;
    if discarded > 0 {
        log::info!(
            "{}: removed {discarded} unfinished file(s) of an earlier attempt at run {}",
            d.describe(),
            ctx.run_id
        );
    }
    // One listing tells which files may already be there; only those are checked one by one.
    let present = d.sizes(&run)?;
    let mut todo = Vec::new();
    let mut skipped = 0;
    for (i, (path, info)) in infos.iter_mut().enumerate() {
        let key = format!("{run}{}", info.name);
        if present.get(&key) == Some(&info.size) {
            if info.sha256.is_empty() {
                info.sha256 = sha256_file(path)?.1;
            }
            if d.holds(&key, path, info)? {
                skipped += 1;
                continue;
            }
        }
        todo.push((i, (path.clone(), key, info.clone())));
    }
    let items: Vec<_> = todo.iter().map(|(_, item)| item.clone()).collect();
    let bar = ncb_core::progress::Progress::new(
        format!("store {}", d.describe()),
        items.iter().map(|(_, _, i)| i.size).sum(),
    );
    let shas = d
        .put_all(&items, &bar)
        .map_err(|e| Error::runtime(format!("{}: {}", d.describe(), ncb_core::stage::error_chain(&e))))?;
    bar.finish();
    for ((i, _), sha) in todo.iter().zip(shas) {
        infos[*i].1.sha256 = sha;
    }
    let stored = todo.len();
    let mut manifest = RunManifest {
        format: "ncb-run".into(),
        version: 1,
        run_id: ctx.run_id.clone(),
        host: ctx.general.hostname.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        files: infos.iter().map(|(_, i)| i.clone()).collect(),
        mac: None,
        signature: None,
        sources: ctx
            .lineage
            .sources()
            .into_iter()
            .map(|(s, artifacts)| {
                (s.name.clone(), backend::Source { stage: s.stage.clone(), artifacts, base: s.base.clone() })
            })
            .collect(),
    };
    if let Some(k) = key {
        manifest.sign(k);
    }
    if let Some(sk) = signing {
        manifest.sign_ed25519(sk);
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::runtime(format!("run manifest: {e}")))?;
    d.put_bytes(&format!("{run}{RUN_MANIFEST}"), &json)?;
    log::info!(
        "{}: run {} stored ({stored} files written, {skipped} already there), manifest last",
        d.describe(),
        ctx.run_id
    );
    report.set("stored", stored);
    report.set("skipped", skipped);
    Ok(())
}

/// A destination of a storage section, opened to read runs back (runs, verify, restore).
pub struct Destination {
    pub backend: Box<dyn Backend>,
    pub prefix: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} prefix '{}'", self.backend.describe(), self.prefix)
    }
}

/// Every destination a storage section names, GENERAL LOCAL_BACKUP last; nothing is changed.
pub fn destinations(p: &Params, general: &ncb_core::context::General) -> Result<Vec<Destination>> {
    let prefix = prefix_for(p, general);
    let mut out = Vec::new();
    for k in p.list("DESTINATION")? {
        let backend: Box<dyn Backend> = match k.to_ascii_lowercase().as_str() {
            "local" => Box::new(Local { root: p.required_path("PATH")? }),
            "rclone" => Box::new(rclone::Rclone::new(p.required_str("RCLONE_REMOTE")?, p.path("RCLONE_CONFIG"))),
            "s3" => Box::new(s3::S3::from_params(p)?),
            other => return Err(Error::usage(format!("unknown destination '{other}'"))),
        };
        out.push(Destination { backend, prefix: prefix.clone() });
    }
    if let Some(lb) = &general.local_backup {
        out.push(Destination { backend: Box::new(Local { root: lb.clone() }), prefix });
    }
    Ok(out)
}

/// The run manifest of `run`, when the run is complete.
pub fn manifest_of(d: &dyn Backend, prefix: &str, run: &str) -> Result<Option<RunManifest>> {
    match d.get_bytes(&format!("{prefix}{run}/{RUN_MANIFEST}"))? {
        None => Ok(None),
        Some(b) => {
            RunManifest::parse(&b).map(Some).map_err(|e| Error::runtime(format!("{}: run {run}: {e}", d.describe())))
        }
    }
}

fn download(p: &Params, d: &dyn Backend, prefix: &str, report: &mut StageReport) -> Result<()> {
    let dest = p.required_path("DESTINATION")?;
    let (run, manifest) = find_run(d, prefix, p.str("RUN").unwrap_or("latest"))?;
    if let Some(max) = p.u64("MAX_DOWNLOAD_FILES")?
        && manifest.files.len() as u64 > max
    {
        return Err(Error::runtime(format!(
            "run {run} has {} files, over MAX_DOWNLOAD_FILES {max}",
            manifest.files.len()
        )));
    }
    let mut items = Vec::new();
    for f in &manifest.files {
        let target = dest.join(&f.name);
        ncb_core::atomic::ensure_dir(target.parent().unwrap_or(&dest), 0o700)?;
        items.push((format!("{prefix}{run}/{}", f.name), target, f.clone()));
    }
    report.artifacts.extend(d.get_all(&items)?);
    log::info!("{}: fetched run {run} ({} files) into {}", d.describe(), manifest.files.len(), dest.display());
    report.set("run", run);
    Ok(())
}

/// A complete run by id, or `latest`: the newest complete one. Errors say whether the run is
/// missing or incomplete.
pub fn find_run(d: &dyn Backend, prefix: &str, wanted: &str) -> Result<(String, RunManifest)> {
    let runs = d.runs(prefix)?;
    if wanted == "latest" {
        for r in runs.iter().rev() {
            if let Some(m) = manifest_of(d, prefix, r)? {
                return Ok((r.clone(), m));
            }
        }
        return Err(Error::runtime(format!("{}: no complete run under {prefix}", d.describe())));
    }
    let m = manifest_of(d, prefix, wanted)?.ok_or_else(|| {
        let why = if runs.iter().any(|r| r == wanted) { "is incomplete (no run manifest)" } else { "does not exist" };
        Error::runtime(format!("{}: run {wanted} {why}", d.describe()))
    })?;
    Ok((wanted.to_owned(), m))
}

/// What retention needs besides the destination.
#[derive(Debug)]
pub struct Rules<'a> {
    pub policy: Policy,
    /// The run just stored: always kept.
    pub current: Option<&'a str>,
    /// The encryption key: run manifests are authenticated with it.
    pub key: Option<&'a encryption::key::MasterKey>,
    pub incomplete_after: retention::Span,
    /// Runs still pending in WORK_FOLDER (a journal there): never deleted.
    pub pending: Vec<String>,
    pub dry: bool,
}

/// A stored run as retention sees it.
enum Standing {
    /// With the runs it builds on (the bases of its incremental sections).
    Complete(Vec<String>),
    Incomplete,
    /// Manifest present but not authenticated: never counted, never deleted.
    Doubtful(String),
}

fn standing(d: &dyn Backend, prefix: &str, run: &str, key: Option<&encryption::key::MasterKey>) -> Result<Standing> {
    let Some(bytes) = d.get_bytes(&format!("{prefix}{run}/{RUN_MANIFEST}"))? else {
        return Ok(Standing::Incomplete);
    };
    let m = match RunManifest::parse(&bytes) {
        Ok(m) => m,
        Err(e) => return Ok(Standing::Doubtful(e)),
    };
    let bases: Vec<String> = m.sources.values().filter_map(|s| s.base.clone()).collect();
    let Some(k) = key else { return Ok(Standing::Complete(bases)) };
    let encrypted = m.files.iter().any(|f| f.name.ends_with(encryption::manifest::SUFFIX));
    Ok(match m.authenticity(k) {
        backend::Authenticity::Valid => Standing::Complete(bases),
        backend::Authenticity::Unsigned if !encrypted => Standing::Complete(bases),
        backend::Authenticity::Unsigned => Standing::Doubtful("its run manifest carries no MAC".into()),
        backend::Authenticity::Invalid => Standing::Doubtful("its run manifest's MAC does not match the key".into()),
    })
}

/// Applies retention to one destination: first the runs whose deletion an earlier retention
/// began and did not finish (killed, cut off), then the rules over complete, authenticated runs
/// (the newest always kept), then incomplete runs past their age that no run here still owns.
pub fn apply_retention(d: &dyn Backend, prefix: &str, rules: &Rules, report: &mut StageReport) -> Result<()> {
    let runs = d.runs(prefix)?;
    let mut complete = Vec::new();
    let mut stale = Vec::new();
    let mut interrupted = Vec::new();
    let mut bases = std::collections::HashMap::new();
    let now = chrono::Utc::now();
    for r in &runs {
        match standing(d, prefix, r, rules.key)? {
            Standing::Complete(b) => {
                complete.push(r.clone());
                bases.insert(r.clone(), b);
            }
            Standing::Doubtful(why) => report.warn(format!(
                "{}: run {r} is not authenticated ({why}); retention neither counts nor deletes it",
                d.describe()
            )),
            Standing::Incomplete if Some(r.as_str()) != rules.current && d.being_deleted(prefix, r)? => {
                interrupted.push(r.clone());
            }
            Standing::Incomplete => {
                let owned = Some(r.as_str()) == rules.current || rules.pending.contains(r);
                let old = retention::run_time(r).is_some_and(|t| t < rules.incomplete_after.before(now));
                if !owned && old {
                    stale.push(r.clone());
                } else if !owned {
                    report.warn(format!(
                        "{}: run {r} is incomplete (no run manifest); left alone until it is older",
                        d.describe()
                    ));
                }
            }
        }
    }
    let mut decisions = retention::decide(&complete, rules.policy, rules.current);
    keep_chains(&mut decisions, &bases);
    let mut removed = Vec::new();
    let doomed = decisions.iter().filter(|d| !d.keep).map(|d| (d.run_id.clone(), "by the KEEP rules"));
    let finish = interrupted.into_iter().map(|r| (r, "its deletion was interrupted: finished"));
    for (run, why) in finish.chain(doomed).chain(stale.into_iter().map(|r| (r, "incomplete and old"))) {
        if let Some(until) = d.locked_until(prefix, &run)? {
            report.warn(format!(
                "{}: run {run} would go ({why}) but is object-locked until {until}: kept; it becomes deletable then",
                d.describe()
            ));
            continue;
        }
        if rules.dry {
            log::info!("{}: would delete run {run} ({why}; DRY_RUN)", d.describe());
        } else {
            d.delete_run(prefix, &run)?;
            log::info!("{}: deleted run {run} ({why})", d.describe());
        }
        removed.push(run);
    }
    let kept = decisions.iter().filter(|d| d.keep).map(|d| format!("{} ({})", d.run_id, d.reasons.join(", ")));
    append(report, if rules.dry { "would_delete" } else { "deleted" }, removed.into_iter(), &d.describe());
    append(report, "kept", kept, &d.describe());
    Ok(())
}

/// A kept run keeps every run it builds on (its incremental sections' bases, and theirs, down
/// to the full archives): deleting one would leave the kept run unrestorable.
fn keep_chains(decisions: &mut [retention::Decision], bases: &std::collections::HashMap<String, Vec<String>>) {
    let mut todo: Vec<String> = decisions.iter().filter(|d| d.keep).map(|d| d.run_id.clone()).collect();
    while let Some(run) = todo.pop() {
        for base in bases.get(&run).into_iter().flatten() {
            if let Some(d) = decisions.iter_mut().find(|d| &d.run_id == base) {
                if !d.keep {
                    d.keep = true;
                    todo.push(base.clone());
                }
                if !d.reasons.contains(&"base of a kept increment") {
                    d.reasons.push("base of a kept increment");
                }
            }
        }
    }
}

/// Adds `items` to the list `key` of the report, each tagged with its destination.
fn append(report: &mut StageReport, key: &str, items: impl Iterator<Item = String>, dest: &str) {
    let mut list = match report.data.remove(key) {
        Some(serde_json::Value::Array(a)) => a,
        _ => Vec::new(),
    };
    list.extend(items.map(|i| serde_json::Value::String(format!("{dest}: {i}"))));
    report.set(key, list);
}

/// `backup-runner prune`: a storage section's retention applied to its destinations without
/// storing anything. Fails when no KEEP_* rule is set.
pub fn prune(p: &Params, general: &ncb_core::context::General, pending: Vec<String>, dry: bool) -> Result<StageReport> {
    let pol = policy(p)?;
    if pol.is_empty() {
        return Err(Error::usage("no KEEP_* rule in this storage section: nothing to prune"));
    }
    let key = p.path("KEY_FILE").map(|k| encryption::key::load(&k)).transpose()?;
    let rules =
        Rules { policy: pol, current: None, key: key.as_ref(), incomplete_after: incomplete_after(p)?, pending, dry };
    let mut report = StageReport::new(STAGE.name);
    for dest in destinations(p, general)? {
        apply_retention(dest.backend.as_ref(), &dest.prefix, &rules, &mut report)
            .map_err(|e| e.context(&dest.backend.describe()))?;
    }
    Ok(report)
}
