//! object-mirror: the off-site worker of Cloud Backup Kit (seeds/004). The application writes
//! a record to `ObjectStorageFiles` for every object it stores (a higher Version when it
//! replaces one) and one to `ObjectStorageDeleteLog` when it deletes one; each pass copies the
//! new records' objects, gzip-compressed (optionally encrypted), to
//! `DESTINATION/<bucket>/<path>/<name without extension>/v<Version>.gzip`, checking each
//! object's SHA-256 against the record's Hash, and applies deletions and version pruning after
//! their grace period. One pass for cron or a conf.json section; `--watch` polls forever.
//! docs/MIRROR.md is the contract with the application.

pub mod db;
pub mod mapping;
pub mod state;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Error, IoContext, Result, StageCtx, StageDef, StageReport};
use serde::Serialize;
use storage::backend::{Backend, FileInfo};

use crate::db::{Db, Record, Url};
use crate::state::{Copy, Delete, Failure, Folder, State};

pub static PARAMS: [ParamSpec; 22] = [
    ParamSpec::new(
        "DATABASE_URL",
        Kind::Str,
        "postgres://user@host:port/db or mysql://user@host:port/db (no password in it)",
    )
    .required(),
    ParamSpec::new("DATABASE_PASSWORD_FILE", Kind::Path, "The database password, one line, in a 0600 file")
        .must_exist(),
    ParamSpec::new("DATABASE_PASSWORD", Kind::Str, "The database password (passed outside argv)").secret(),
    ParamSpec::new("DATABASE_CLIENT", Kind::Str, "The client program (default psql, or mariadb)"),
    ParamSpec::new("SOURCE_BUCKET", Kind::Str, "The application's bucket: the <bucket> of the mapping").required(),
    ParamSpec::new(
        "SOURCE_STORAGE",
        Kind::Str,
        "The Storage value of records fetched straight from SOURCE_BUCKET (others through SignedDownloadUrl)",
    ),
    ParamSpec::new("ENDPOINT_URL", Kind::Str, "S3 endpoint of the source bucket and an s3 DESTINATION"),
    ParamSpec::new("REGION", Kind::Str, "S3 region (default us-east-1)"),
    ParamSpec::new("FORCE_PATH_STYLE", Kind::Bool, "Path-style S3 addressing (default: True with ENDPOINT_URL)"),
    ParamSpec::new("DESTINATION", Kind::Str, "A folder for the copies, or s3 (with BUCKET_NAME and PREFIX)").required(),
    ParamSpec::new("BUCKET_NAME", Kind::Str, "DESTINATION s3: the bucket of the copies"),
    ParamSpec::new("PREFIX", Kind::Str, "DESTINATION s3: a folder in it (default none)"),
    ParamSpec::new("STORAGE_CLASS", Kind::Str, "DESTINATION s3: the copies' storage class"),
    ParamSpec::new("KEY_FILE", Kind::Path, "Encrypt each copy with this key (v<N>.gzip.enc)").must_exist(),
    ParamSpec::new(
        "DELETE_AFTER",
        Kind::Str,
        "Grace period of deletions and superseded versions (default 7d; s, m, h, d)",
    ),
    ParamSpec::new("KEEP_VERSIONS", Kind::Int, "Versions kept per file (default 1: the latest)"),
    ParamSpec::new("POLL_INTERVAL", Kind::Str, "--watch: time between passes (default 60s)"),
    ParamSpec::new("CONCURRENCY", Kind::Int, "Objects copied at once (default 16)"),
    ParamSpec::new(
        "BANDWIDTH_LIMIT",
        Kind::Str,
        "DESTINATION s3: pace the uploads to this rate (20M, 512K: bytes a second)",
    ),
    ParamSpec::new(
        "STATE_FILE",
        Kind::Path,
        "The worker's progress (default /var/lib/nc-backup/object-mirror/<name>.json)",
    ),
    ParamSpec::new("WATCH", Kind::Switch, "Run pass after pass, every POLL_INTERVAL, until stopped"),
    ParamSpec::new("INIT_SCHEMA", Kind::Switch, "Create the two tables in the database, then stop"),
];

pub static STAGE: StageDef = StageDef {
    name: "object-mirror",
    aliases: &["object_mirror", "mirror"],
    legacy_executables: &[],
    about: "Copy every object an application records in ObjectStorageFiles, off-site (Cloud Backup Kit)",
    params: &PARAMS,
    validate,
    run,
};

/// Records read from the database at a time.
const BATCH: usize = 2000;
/// The state is saved at least this often during a pass.
const SAVE_EVERY: Duration = Duration::from_secs(2);
const DEFAULT_STATE_DIR: &str = "/var/lib/nc-backup/object-mirror";

fn span(v: &str) -> std::result::Result<Duration, String> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().map_err(|_| format!("'{v}' is not a duration (30s, 15m, 12h, 7d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{v}': unknown unit '{unit}' (s, m, h, d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: String| problems.push(Problem { key: key.into(), message });
    if let Some(u) = p.str("DATABASE_URL")
        && let Err(e) = Url::parse(u)
    {
        bad("DATABASE_URL", e);
    }
    if p.has("DATABASE_PASSWORD_FILE") && p.has("DATABASE_PASSWORD") {
        bad("DATABASE_PASSWORD_FILE", "give DATABASE_PASSWORD_FILE or DATABASE_PASSWORD, not both".into());
    }
    if let Some(b) = p.str("SOURCE_BUCKET")
        && let Err(e) = mapping::folder(b, "", "x")
    {
        bad("SOURCE_BUCKET", e);
    }
    if p.str("DESTINATION").is_some_and(|d| d.eq_ignore_ascii_case("s3")) {
        if !p.has("BUCKET_NAME") {
            bad("BUCKET_NAME", "is required with DESTINATION s3".into());
        }
    } else if p.str("DESTINATION").is_some_and(|d| !Path::new(d).is_absolute()) {
        bad("DESTINATION", "must be an absolute folder, or s3".into());
    }
    for k in ["DELETE_AFTER", "POLL_INTERVAL"] {
        if let Some(v) = p.str(k)
            && let Err(e) = span(v)
        {
            bad(k, e);
        }
    }
    for (k, max) in [("KEEP_VERSIONS", 1000), ("CONCURRENCY", 64)] {
        match p.u64(k) {
            Ok(Some(n)) if n == 0 || n > max => bad(k, format!("must be 1 to {max}")),
            Err(e) => bad(k, e.to_string()),
            _ => {}
        }
    }
    problems
}

/// Everything a pass needs, opened once.
struct Mirror {
    db: Db,
    bucket: String,
    source_storage: Option<String>,
    source: Option<storage::s3::S3>,
    dest: Dest,
    master: Option<encryption::key::MasterKey>,
    delete_after: Duration,
    keep_versions: usize,
    concurrency: usize,
    state_path: PathBuf,
    report_path: PathBuf,
    tmp: PathBuf,
    http: ureq::Agent,
    stop: Arc<AtomicBool>,
}

enum Dest {
    Local(PathBuf),
    S3 { s3: Box<storage::s3::S3>, prefix: String },
}

impl Dest {
    fn describe(&self) -> String {
        match self {
            Dest::Local(p) => p.display().to_string(),
            Dest::S3 { s3, prefix } => format!("{}/{prefix}", s3.describe()),
        }
    }

    /// Puts a finished copy in place: a local copy appears whole (rename), an S3 copy is
    /// checked by its SHA-256.
    fn store(&self, tmp: &Path, key: &str, bytes: u64, sha256: &str) -> Result<()> {
        match self {
            Dest::Local(root) => {
                let dest = root.join(key);
                let parent = dest.parent().unwrap_or(root);
                std::fs::create_dir_all(parent).at("cannot create", parent)?;
                std::fs::rename(tmp, &dest).at("cannot move the copy to", &dest)?;
                Ok(())
            }
            Dest::S3 { s3, prefix } => {
                let info = FileInfo { name: key.into(), size: bytes, sha256: sha256.into(), from: Vec::new() };
                s3.put(tmp, &format!("{prefix}{key}"), &info).map(drop)
            }
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        match self {
            Dest::Local(root) => {
                let p = root.join(key);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::path("cannot remove", &p, e)),
                }
                // Empty folders go too, up to DESTINATION.
                let mut dir = p.parent();
                while let Some(d) = dir {
                    if d == root || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            }
            Dest::S3 { s3, prefix } => s3.delete_key(&format!("{prefix}{key}")),
        }
    }
}

impl Mirror {
    /// Saves the state once what it records is on disk: a local destination's file system is
    /// synced first (one syncfs for every copy since the last checkpoint, instead of an fsync
    /// per copy); S3 copies are stored when their upload is answered.
    fn checkpoint(&self, st: &State) -> Result<()> {
        if let Dest::Local(root) = &self.dest {
            let dir = std::fs::File::open(root).at("cannot open", root)?;
            rustix::fs::syncfs(&dir).map_err(|e| Error::path("cannot sync", root, e.into()))?;
        }
        st.save(&self.state_path)
    }
}

/// One pass's figures; written as JSON to `<STATE_FILE>.report.json`.
#[derive(Debug, Default, Serialize)]
struct PassReport {
    started: String,
    duration_ms: u64,
    records_read: usize,
    new: usize,
    updated: usize,
    already_stored: usize,
    deleted: usize,
    versions_removed: usize,
    pending_deletes: usize,
    failed: Vec<FailedRecord>,
}

#[derive(Debug, Serialize)]
struct FailedRecord {
    id: i64,
    name: String,
    error: String,
}

fn s3_params(p: &Params, bucket: &str) -> Params {
    let mut s = Params::new();
    s.set("BUCKET_NAME", bucket);
    for k in ["ENDPOINT_URL", "REGION", "FORCE_PATH_STYLE", "STORAGE_CLASS", "BANDWIDTH_LIMIT"] {
        if let Some(v) = p.str(k) {
            s.set(k, v);
        }
    }
    s
}

/// The database, its password from DATABASE_PASSWORD_FILE (0600) or DATABASE_PASSWORD; the
/// client's secret file goes in `secret_dir`.
fn open_db(p: &Params, secret_dir: &Path) -> Result<Db> {
    let url = Url::parse(p.required_str("DATABASE_URL")?).map_err(|e| Error::usage(format!("--DATABASE_URL: {e}")))?;
    let password = match (p.path("DATABASE_PASSWORD_FILE"), p.str("DATABASE_PASSWORD")) {
        (Some(f), _) => {
            ncb_dbdump::check_private(&f, "DATABASE_PASSWORD_FILE")?;
            let t = std::fs::read_to_string(&f).at("cannot read", &f)?;
            Some(t.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, Some(pw)) => Some(pw.to_owned()),
        (None, None) => None,
    };
    Ok(Db::new(url, password, secret_dir, p.str("DATABASE_CLIENT").map(str::to_owned)))
}

fn open(ctx: &StageCtx, p: &Params) -> Result<Mirror> {
    let bucket = p.required_str("SOURCE_BUCKET")?.to_owned();
    let dest_raw = p.required_str("DESTINATION")?;
    let (dest, dest_shown) = if dest_raw.eq_ignore_ascii_case("s3") {
        let b = p.required_str("BUCKET_NAME")?;
        let prefix = p.str("PREFIX").map(|x| x.trim_matches('/')).filter(|x| !x.is_empty()).map(|x| format!("{x}/"));
        let prefix = prefix.unwrap_or_default();
        let shown = format!("s3://{b}/{prefix}");
        (Dest::S3 { s3: Box::new(storage::s3::S3::from_params(&s3_params(p, b))?), prefix }, shown)
    } else {
        let root = PathBuf::from(dest_raw);
        ncb_core::atomic::ensure_dir(&root, 0o700)?;
        (Dest::Local(root.clone()), root.display().to_string())
    };
    let source_storage = p.str("SOURCE_STORAGE").map(str::to_owned);
    let source =
        if source_storage.is_some() { Some(storage::s3::S3::from_params(&s3_params(p, &bucket))?) } else { None };
    let url = Url::parse(p.required_str("DATABASE_URL")?).map_err(|e| Error::usage(format!("--DATABASE_URL: {e}")))?;
    let source_shown = format!("{} {bucket}", url.shown());
    let state_path = p.path("STATE_FILE").unwrap_or_else(|| {
        let id =
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{source_shown}\0{dest_shown}").as_bytes()));
        PathBuf::from(DEFAULT_STATE_DIR).join(format!("{}-{}.json", ncb_core::context::safe_name(&bucket), &id[..12]))
    });
    let state_dir = state_path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    ncb_core::atomic::ensure_dir(&state_dir, 0o700)?;
    let tmp = match &dest {
        Dest::Local(root) => root.join(".object-mirror-tmp"),
        Dest::S3 { .. } => state_dir.join(".object-mirror-tmp"),
    };
    let _ = std::fs::remove_dir_all(&tmp); // what a killed pass was copying
    ncb_core::atomic::ensure_dir(&tmp, 0o700)?;
    let master = p.path("KEY_FILE").map(|k| encryption::key::load(&k)).transpose()?;
    let http = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_recv_body(Some(Duration::from_secs(3600)))
        .http_status_as_error(false)
        .build()
        .into();
    let _ = ctx;
    let mut report_path = state_path.clone().into_os_string();
    report_path.push(".report.json");
    Ok(Mirror {
        db: open_db(p, &state_dir)?,
        bucket,
        source_storage,
        source,
        dest,
        master,
        delete_after: span(p.str("DELETE_AFTER").unwrap_or("7d")).map_err(Error::usage)?,
        keep_versions: usize::try_from(p.u64("KEEP_VERSIONS")?.unwrap_or(1)).unwrap_or(1),
        concurrency: usize::try_from(p.u64("CONCURRENCY")?.unwrap_or(16)).unwrap_or(16),
        state_path,
        report_path: PathBuf::from(report_path),
        tmp,
        http,
        stop: Arc::new(AtomicBool::new(false)),
    })
}

fn run(ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let mut report = StageReport::new(STAGE.name);
    if p.flag("INIT_SCHEMA", false)? {
        let db = open_db(p, &ctx.general.work_dir())?;
        db.init_schema()?;
        log::info!("{}: ObjectStorageFiles and ObjectStorageDeleteLog are there", db.url.shown());
        report.set("schema", "created");
        return Ok(report);
    }
    let m = open(ctx, p)?;
    let source = format!("{} {}", m.db.url.shown(), m.bucket);
    if !p.flag("WATCH", false)? {
        let r = pass(&m, &source)?;
        report.set("new", r.new);
        report.set("updated", r.updated);
        report.set("deleted", r.deleted);
        report.set("failed", r.failed.len());
        report.set("report", m.report_path.display().to_string());
        if !r.failed.is_empty() {
            return Err(Error::runtime(format!(
                "{} record(s) failed (retried next pass), first {} ({}): {}; report {}",
                r.failed.len(),
                r.failed[0].id,
                r.failed[0].name,
                r.failed[0].error,
                m.report_path.display()
            )));
        }
        return Ok(report);
    }
    let interval = span(p.str("POLL_INTERVAL").unwrap_or("60s")).map_err(Error::usage)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&m.stop)).ctx(|| "cannot watch for signals".into())?;
    }
    let mut passes = 0u64;
    while !m.stop.load(Ordering::SeqCst) {
        match pass(&m, &source) {
            Ok(r) if r.failed.is_empty() => {
                log::info!("pass {passes}: {} new, {} updated, {} deleted", r.new, r.updated, r.deleted)
            }
            Ok(r) => {
                log::error!("pass {passes}: {} record(s) failed; report {}", r.failed.len(), m.report_path.display())
            }
            Err(e) => log::error!("pass {passes}: {}", ncb_core::stage::error_chain(&e)),
        }
        passes += 1;
        let until = Instant::now() + interval;
        while !m.stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    log::info!("stopped after {passes} pass(es)");
    report.set("passes", passes);
    Ok(report)
}

/// The object key of a record in SOURCE_BUCKET: Path (without its leading `/`) and Name.
fn source_key(r: &Record) -> String {
    let path = r.path.trim_start_matches('/');
    if path.is_empty() {
        r.name.clone()
    } else if path.ends_with('/') {
        format!("{path}{}", r.name)
    } else {
        format!("{path}/{}", r.name)
    }
}

/// Copies one record's object into a temporary file: streamed, hashed, gzip-compressed,
/// encrypted when KEY_FILE; Ok: (the temporary file, its size and SHA-256).
fn copy(m: &Mirror, r: &Record) -> Result<(PathBuf, u64, String)> {
    let mut input: Box<dyn Read + Send> = match (&m.source, &m.source_storage) {
        (Some(s3), Some(name)) if r.storage.eq_ignore_ascii_case(name) => s3.open(&source_key(r))?,
        _ => {
            let url = r
                .url
                .as_deref()
                .ok_or_else(|| Error::runtime("no SignedDownloadUrl, and Storage is not SOURCE_STORAGE"))?;
            let shown = ncb_core::params::redact_url(url);
            let mut resp = m.http.get(url).call().map_err(|e| Error::runtime(format!("GET {shown}: {e}")))?;
            let status = resp.status().as_u16();
            if status != 200 {
                let body = resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
                let tag = |t: &str| {
                    let open = format!("<{t}>");
                    body.split_once(&open).and_then(|(_, r)| r.split_once("</")).map(|(v, _)| v.trim().to_owned())
                };
                let said = match (tag("Code"), tag("Message")) {
                    (Some(c), Some(msg)) => format!(": {c}: {msg}"),
                    (Some(c), None) => format!(": {c}"),
                    _ => String::new(),
                };
                let why = if matches!(status, 400 | 401 | 403) { " (an expired or refused signed URL)" } else { "" };
                return Err(Error::runtime(format!("GET {shown}: HTTP {status}{said}{why}")));
            }
            Box::new(resp.into_body().into_reader())
        }
    };
    let mut rnd = [0u8; 6];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut rnd)).ctx(|| "no randomness".into())?;
    let tmp = m.tmp.join(format!("{}-{}.part", r.id, hex::encode(rnd)));
    let cleanup = TmpGuard(vec![tmp.clone()]);
    let file = std::fs::File::create(&tmp).at("cannot create", &tmp)?;
    let mut gz = flate2::write::GzEncoder::new(
        ncb_core::hash::HashWriter::new(std::io::BufWriter::with_capacity(64 << 10, file)),
        flate2::Compression::new(6),
    );
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the object", e)),
        };
        sha2::Digest::update(&mut hasher, &buf[..n]);
        gz.write_all(&buf[..n]).at("cannot write", &tmp)?;
    }
    let got = hex::encode(sha2::Digest::finalize(hasher));
    if got != r.hash {
        return Err(Error::runtime(format!("SHA-256 mismatch: the object is {got}, the record says {}", r.hash)));
    }
    let (w, bytes, sha) = gz.finish().at("cannot write", &tmp)?.finish();
    // Not synced one by one: `checkpoint` syncs the file system before the state says stored.
    w.into_inner().map_err(|e| Error::io("cannot write the copy", e.into_error()))?;
    let Some(master) = &m.master else {
        std::mem::forget(cleanup);
        return Ok((tmp, bytes, sha));
    };
    let out = m.tmp.join(format!("{}-{}.enc.d", r.id, hex::encode(rnd)));
    let _out_guard = TmpGuard(vec![out.clone()]);
    std::fs::create_dir(&out).at("cannot create", &out)?;
    let e = encryption::crypt::encrypt_file(master, &tmp, &out, None, encryption::format::DEFAULT_SEGMENT)?;
    let part = e.parts.first().ok_or_else(|| Error::runtime("encryption made no part"))?;
    let enc = m.tmp.join(format!("{}-{}.enc", r.id, hex::encode(rnd)));
    std::fs::rename(&part.path, &enc).at("cannot move", &part.path)?;
    Ok((enc, part.bytes, part.sha256.clone()))
}

/// Removes temporary files and folders when dropped (an error on the way).
struct TmpGuard(Vec<PathBuf>);
impl Drop for TmpGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What to do with a record, decided against the state before copying.
enum Plan {
    Copy { folder: String },
    AlreadyStored,
    Failed(String),
}

fn plan(st: &State, r: &Record, bucket: &str) -> Plan {
    let folder = match mapping::folder(bucket, &r.path, &r.name) {
        Ok(f) => f,
        Err(e) => return Plan::Failed(format!("refused: {e}")),
    };
    if r.hash.len() != 64 || !r.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Plan::Failed(format!("Hash '{}' is not a hex SHA-256", r.hash));
    }
    if let Some(f) = st.files.get(&folder) {
        if f.name != r.name {
            return Plan::Failed(format!(
                "{} maps to {folder}, which holds the copies of {}: names that differ only in their extension share a folder",
                r.name, f.name
            ));
        }
        if f.versions.get(&r.version).is_some_and(|c| c.id == r.id && c.hash == r.hash) {
            return Plan::AlreadyStored;
        }
    }
    Plan::Copy { folder }
}

fn pass(m: &Mirror, source: &str) -> Result<PassReport> {
    let started = Instant::now();
    let mut rep = PassReport { started: chrono::Utc::now().to_rfc3339(), ..Default::default() };
    let mut st = State::load(&m.state_path, source, &m.dest.describe())?;
    // Failed records first (each retried), then the new ones, a batch at a time.
    let retry: Vec<i64> = st.failed.keys().copied().collect();
    for ids in retry.chunks(500) {
        let batch = m.db.records(0, ids.len(), Some(ids))?;
        copy_batch(m, &mut st, &mut rep, batch)?;
    }
    loop {
        let batch = m.db.records(st.high_water, BATCH, None)?;
        let n = batch.len();
        if n == 0 {
            break;
        }
        copy_batch(m, &mut st, &mut rep, batch)?;
        if n < BATCH {
            break;
        }
    }
    apply_deletes(m, &mut st, &mut rep)?;
    prune_versions(m, &mut st, &mut rep)?;
    m.checkpoint(&st)?;
    rep.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let json = serde_json::to_vec_pretty(&rep).map_err(|e| Error::runtime(format!("report: {e}")))?;
    ncb_core::atomic::write_file(&m.report_path, &json, 0o600)?;
    Ok(rep)
}

/// Copies a batch's records, CONCURRENCY at a time; the state is saved as copies land (at
/// most SAVE_EVERY apart) and the high-water mark moves past the batch only when all of it
/// was handled.
fn copy_batch(m: &Mirror, st: &mut State, rep: &mut PassReport, batch: Vec<Record>) -> Result<()> {
    rep.records_read += batch.len();
    let top = batch.iter().map(|r| r.id).max().unwrap_or(0);
    let mut jobs = Vec::new();
    for r in batch {
        match plan(st, &r, &m.bucket) {
            Plan::AlreadyStored => {
                st.failed.remove(&r.id);
                rep.already_stored += 1;
            }
            Plan::Failed(e) => fail(st, rep, &r, e),
            Plan::Copy { folder } => {
                st.folders_of.insert(r.id, folder.clone());
                jobs.push((r, folder));
            }
        }
    }
    let mut saved = Instant::now();
    let (tx, rx) = mpsc::channel::<(Record, String, Result<(String, u64)>)>();
    let queue = Mutex::new(jobs.into_iter());
    std::thread::scope(|s| {
        for _ in 0..m.concurrency {
            let (tx, queue) = (tx.clone(), &queue);
            s.spawn(move || {
                loop {
                    if m.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some((r, folder)) = next else { return };
                    let result = copy(m, &r).and_then(|(tmp, bytes, sha)| {
                        let key = format!("{folder}/{}", mapping::copy_name(r.version, m.master.is_some()));
                        let stored = m.dest.store(&tmp, &key, bytes, &sha);
                        let _ = std::fs::remove_file(&tmp);
                        stored.map(|()| (key, bytes))
                    });
                    if tx.send((r, folder, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (r, folder, result) in rx {
            match result {
                Ok((key, bytes)) => stored(st, rep, &r, &folder, key, bytes),
                Err(e) => fail(st, rep, &r, ncb_core::stage::error_chain(&e)),
            }
            if saved.elapsed() > SAVE_EVERY {
                if let Err(e) = m.checkpoint(st) {
                    log::error!("{e}");
                }
                saved = Instant::now();
            }
        }
    });
    if m.stop.load(Ordering::SeqCst) {
        m.checkpoint(st)?;
        return Err(Error::runtime("stopped by a signal; the next pass goes on"));
    }
    st.high_water = st.high_water.max(top);
    m.checkpoint(st)
}

fn fail(st: &mut State, rep: &mut PassReport, r: &Record, error: String) {
    log::error!("record {} ({}{}): {error}", r.id, r.path, r.name);
    let t = now();
    let f = st.failed.entry(r.id).or_insert(Failure { error: String::new(), attempts: 0, first: t, last: t });
    f.error.clone_from(&error);
    f.attempts += 1;
    f.last = t;
    rep.failed.push(FailedRecord { id: r.id, name: r.name.clone(), error });
}

fn stored(st: &mut State, rep: &mut PassReport, r: &Record, folder: &str, key: String, bytes: u64) {
    let t = now();
    st.failed.remove(&r.id);
    let f = st
        .files
        .entry(folder.to_owned())
        .or_insert_with(|| Folder { name: r.name.clone(), versions: Default::default() });
    let newest = f.versions.keys().next_back().copied();
    if newest.is_none() {
        rep.new += 1;
    } else {
        rep.updated += 1;
    }
    let superseded = newest.filter(|n| *n > r.version).map(|_| t);
    f.versions.insert(
        r.version,
        Copy { id: r.id, hash: r.hash.clone(), key, stored_bytes: bytes, stored_at: t, superseded_at: superseded },
    );
    for (v, c) in f.versions.iter_mut() {
        if *v < r.version && c.superseded_at.is_none() {
            c.superseded_at = Some(t);
        }
    }
    log::info!("record {} stored: {folder} v{}", r.id, r.version);
}

/// Delete-log records: first seen now, applied once DELETE_AFTER has passed since.
fn apply_deletes(m: &Mirror, st: &mut State, rep: &mut PassReport) -> Result<()> {
    let t = now();
    let upto = st.high_water;
    for fid in m.db.deleted()? {
        st.deletes.entry(fid).or_insert(Delete { first_seen: t, upto, done_at: None });
    }
    let index = st.folder_index();
    let due: Vec<i64> = st
        .deletes
        .iter()
        .filter(|(_, d)| d.done_at.is_none() && t - d.first_seen >= grace(m))
        .map(|(id, _)| *id)
        .collect();
    for fid in due {
        let upto = st.deletes[&fid].upto;
        if let Some(folder) = index.get(&fid) {
            if let Some(f) = st.files.get_mut(folder) {
                let going: Vec<i64> = f.versions.iter().filter(|(_, c)| c.id <= upto).map(|(v, _)| *v).collect();
                for v in going {
                    if let Some(c) = f.versions.get(&v) {
                        m.dest.remove(&c.key)?;
                        log::info!(
                            "{} deleted (FileId {fid} in the delete log since {})",
                            c.key,
                            st.deletes[&fid].first_seen
                        );
                        rep.deleted += 1;
                    }
                    f.versions.remove(&v);
                }
                if f.versions.is_empty() {
                    st.files.remove(folder);
                }
            }
            // Records of the deleted file that never copied are not retried any more.
            let stale: Vec<i64> =
                st.failed.keys().copied().filter(|id| *id <= upto && index.get(id) == Some(folder)).collect();
            for id in stale {
                st.failed.remove(&id);
            }
        }
        if let Some(d) = st.deletes.get_mut(&fid) {
            d.done_at = Some(t);
        }
        m.checkpoint(st)?;
    }
    rep.pending_deletes = st.deletes.values().filter(|d| d.done_at.is_none()).count();
    Ok(())
}

fn grace(m: &Mirror) -> i64 {
    i64::try_from(m.delete_after.as_secs()).unwrap_or(i64::MAX)
}

/// Versions beyond KEEP_VERSIONS go once a newer one has been stored for DELETE_AFTER.
fn prune_versions(m: &Mirror, st: &mut State, rep: &mut PassReport) -> Result<()> {
    let t = now();
    let folders: Vec<String> = st.files.keys().cloned().collect();
    for folder in folders {
        let Some(f) = st.files.get_mut(&folder) else { continue };
        let old: Vec<i64> = f
            .versions
            .iter()
            .rev()
            .skip(m.keep_versions)
            .filter(|(_, c)| c.superseded_at.is_some_and(|s| t - s >= grace(m)))
            .map(|(v, _)| *v)
            .collect();
        for v in old {
            if let Some(c) = f.versions.remove(&v) {
                m.dest.remove(&c.key)?;
                log::info!("{} removed: v{v} superseded since {}", c.key, c.superseded_at.unwrap_or(0));
                rep.versions_removed += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(span("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(span("30").unwrap(), Duration::from_secs(30));
        assert_eq!(span("15m").unwrap(), Duration::from_secs(900));
        assert!(span("soon").is_err());
        assert!(span("5w").is_err());
    }

    #[test]
    fn source_keys() {
        let r = |path: &str, name: &str| Record {
            id: 1,
            name: name.into(),
            path: path.into(),
            storage: "s3".into(),
            version: 1,
            hash: String::new(),
            url: None,
        };
        assert_eq!(source_key(&r("/cars/id-1/", "thumbnail.png")), "cars/id-1/thumbnail.png");
        assert_eq!(source_key(&r("cars", "a.png")), "cars/a.png");
        assert_eq!(source_key(&r("", "a.png")), "a.png");
    }
}
