//! One app's backup (`backup-runner apps backup NAME`).
//!
//! 1. `APPS_ROOT/NAME/.env` gives the database (exit 2 when a key is missing);
//! 2. mysql-dump or pg-dump, in-process, dumps it into a private work folder; the finished
//!    dump is renamed to `BACKUPS_ROOT/NAME/<unix time>.sql.gz` (never a partial file there);
//! 3. the media folders are archived (filesbackup) and POSTed to the backup server, or kept
//!    under `BACKUPS_ROOT/NAME/media/` for SYNC;
//! 4. SYNC stores every file of `BACKUPS_ROOT/NAME` the destination does not already hold;
//! 5. local retention keeps the newest KEEP_LOCAL dumps (and media archives), only after a
//!    successful sync, so nothing leaves the host before it is stored elsewhere;
//! 6. the report goes to `BACKUPS_ROOT/NAME/.last-report.json`.
//!
//! A failed step is reported and makes the exit 1; steps after a failed dump do not run,
//! a failed media step does not stop the sync of the dump.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use ncb_core::context::{General, StageCtx};
use ncb_core::params::Params;
use ncb_core::{Error, IoContext, Result, StageDef};
use serde::Serialize;

use crate::config::{AppsConfig, MediaTarget, check_app_name};
use crate::dotenv::{self, Engine};

/// The name of a dump: `<unix time>.sql.gz`.
pub const DUMP_SUFFIX: &str = ".sql.gz";
/// The name of a media archive kept for SYNC: `media/<unix time>.tar.gz`.
pub const MEDIA_SUFFIX: &str = ".tar.gz";
pub const REPORT: &str = ".last-report.json";
/// Private scratch space of the runs, under BACKUPS_ROOT (same file system: renames are atomic).
pub const WORK: &str = ".work";

#[derive(Debug, Default, Serialize)]
pub struct AppReport {
    pub app: String,
    pub started: String,
    pub duration_ms: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<String>,
    pub dump_bytes: u64,
    /// What happened to the media: "posted to …", "kept for sync", "no media folder", "skipped".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    pub media_bytes: u64,
    pub synced: Vec<String>,
    pub already_stored: usize,
    pub removed_local: Vec<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl AppReport {
    fn fail(&mut self, step: &str, e: &Error) {
        let msg = format!("{step}: {}", ncb_core::stage::error_chain(e));
        log::error!("{}: {msg}", self.app);
        self.errors.push(msg);
    }
}

/// Backs up one app. Err: the app or config is wrong before anything was made (exit 2), or the
/// app is already being backed up; otherwise the report says what failed (`ok` false: exit 1).
pub fn backup(c: &AppsConfig, name: &str) -> Result<AppReport> {
    check_app_name(name).map_err(Error::usage)?;
    let started = Instant::now();
    let mut report = AppReport { app: name.to_owned(), started: Utc::now().to_rfc3339(), ..Default::default() };
    let app_root = c.apps_root.join(name);
    if !app_root.is_dir() {
        return Err(Error::config(format!("{}: no such app folder (APPS_ROOT/{name})", app_root.display())));
    }
    let o = c.app(name);
    let env_file = app_root.join(o.env_file.as_deref().unwrap_or(".env"));
    let db = dotenv::database(&env_file)?;

    let dir = c.app_backups(name);
    ncb_core::atomic::ensure_dir(&c.backups_root, 0o755)?;
    ncb_core::atomic::ensure_dir(&dir, 0o700)?;
    let _lock = lock(&dir)?;
    let work = c.backups_root.join(WORK).join(name);
    let _ = std::fs::remove_dir_all(&work); // what a killed run left
    ncb_core::atomic::ensure_dir(&c.backups_root.join(WORK), 0o700)?;
    ncb_core::atomic::ensure_dir(&work, 0o700)?;
    let now = Utc::now();
    let general = General {
        hostname: c.hostname.clone(),
        work_folder: Some(work.clone()),
        log_folder: None,
        home_folder: None,
        local_backup: None,
    };
    let run_id = ncb_core::context::new_run_id(now);

    // 2. the database
    match dump(c, &db, &general, &run_id, &work) {
        Ok(file) => match place(&file, &dir, now.timestamp(), DUMP_SUFFIX) {
            Ok((path, bytes)) => {
                log::info!("{name}: {:?} dumped into {} ({bytes} bytes)", db.engine, path.display());
                report.dump = Some(path.display().to_string());
                report.dump_bytes = bytes;
            }
            Err(e) => report.fail("dump", &e),
        },
        Err(e) => report.fail("dump", &e),
    }

    // 3. the media
    if report.errors.is_empty() {
        if o.skip_media || matches!(c.media.target, MediaTarget::None) {
            report.media = Some("skipped".into());
        } else {
            match crate::media::backup(c, name, &app_root, &general, &run_id, &work, &dir, now.timestamp()) {
                Ok((what, bytes, warning)) => {
                    report.media = Some(what);
                    report.media_bytes = bytes;
                    report.warnings.extend(warning);
                }
                Err(e) => report.fail("media", &e),
            }
        }
    }

    // 4. the sync; 5. local retention after it
    if report.dump.is_some() {
        let synced = match (&c.sync, o.skip_sync) {
            (Some(p), false) => match crate::sync::sync(p, &general, name, &dir, &work) {
                Ok((up, there)) => {
                    report.synced = up;
                    report.already_stored = there;
                    true
                }
                Err(e) => {
                    report.fail("sync", &e);
                    false
                }
            },
            _ => true,
        };
        if synced {
            match retention(&dir, c.keep_local(name)) {
                Ok(removed) => report.removed_local = removed,
                Err(e) => report.fail("local retention", &e),
            }
        } else {
            report.warnings.push("local retention skipped: the sync failed, every local file is kept".into());
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    report.ok = report.errors.is_empty();
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::runtime(format!("report: {e}")))?;
    ncb_core::atomic::write_file(&dir.join(REPORT), &json, 0o600)?;
    Ok(report)
}

/// One run per app at a time.
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at("cannot open the lock", &path)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        Error::runtime(format!("{}: another backup of this app is running (lock {})", dir.display(), path.display()))
    })?;
    Ok(f)
}

fn dump(c: &AppsConfig, db: &dotenv::Database, general: &General, run_id: &str, work: &Path) -> Result<PathBuf> {
    let (def, mut p): (&StageDef, Params) = match db.engine {
        Engine::MySql => (&mysql_dump::STAGE, Params::new()),
        Engine::Postgres => {
            let mut p = Params::new();
            p.set("FORMAT", "plain");
            (&pg_dump::STAGE, p)
        }
    };
    p.set("HOST", db.host.as_str());
    p.set("PORT", db.port.as_str());
    p.set("USER", db.username.as_str());
    p.set("PASSWORD", db.password.as_str());
    p.set("DATABASES", db.database.as_str());
    let out = work.join("dump");
    p.set("DESTINATION", out.display().to_string());
    if let Some(l) = &c.compression_level {
        p.set("COMPRESSION_LEVEL", l.as_str());
    }
    let problems = def.check(&p);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Error::config(list.join("; ")));
    }
    let ctx = StageCtx::new(general.clone(), run_id.to_owned(), "DATABASE".into());
    let r = def.execute(&ctx, &p)?;
    let mut dumps: Vec<PathBuf> =
        r.artifacts.iter().map(|a| a.path.clone()).filter(|a| a.to_string_lossy().ends_with(DUMP_SUFFIX)).collect();
    match (dumps.pop(), dumps.is_empty()) {
        (Some(d), true) => Ok(d),
        _ => Err(Error::runtime(format!("{} made no single .sql.gz dump of {}", def.name, db.database))),
    }
}

/// Moves a finished file to `dir/<time><suffix>` (a later second when that name is taken)
/// without ever replacing one; returns its path and size.
pub(crate) fn place(file: &Path, dir: &Path, time: i64, suffix: &str) -> Result<(PathBuf, u64)> {
    let bytes = std::fs::metadata(file).at("cannot stat", file)?.len();
    for t in time..time + 60 {
        let dest = dir.join(format!("{t}{suffix}"));
        match ncb_core::sys::rename_noreplace(file, &dest) {
            Ok(()) => {
                ncb_core::atomic::sync_dir(dir)?;
                return Ok((dest, bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::path("cannot move the finished file to", &dest, e)),
        }
    }
    Err(Error::runtime(format!("{}: 60 files named after the coming minute already", dir.display())))
}

/// `<digits><suffix>` files of `dir`, oldest first.
pub fn stamped(dir: &Path, suffix: &str) -> Vec<(i64, PathBuf)> {
    let mut out: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let t = n.strip_suffix(suffix)?.parse::<i64>().ok()?;
            e.file_type().ok()?.is_file().then(|| (t, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Keeps the newest `keep` dumps and media archives.
fn retention(dir: &Path, keep: usize) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (folder, suffix) in [(dir.to_path_buf(), DUMP_SUFFIX), (dir.join("media"), MEDIA_SUFFIX)] {
        let files = stamped(&folder, suffix);
        let extra = files.len().saturating_sub(keep);
        for (_, f) in files.into_iter().take(extra) {
            std::fs::remove_file(&f).at("cannot remove", &f)?;
            removed.push(f.display().to_string());
        }
    }
    Ok(removed)
}
