//! INCREMENTAL: a full archive, then archives of only what changed since the run before,
//! written in GNU tar's incremental format (every folder a dumpdir entry that lists what it
//! holds), so `tar --incremental -x` of the full archive and then of each increment rebuilds
//! the tree, removals included.
//!
//! What the last run saw is its snapshot, in STATE_FOLDER (default /var/lib/nc-backup), one
//! per host and section: `<HOSTNAME>_<SECTION>.snap`, and the one before it `….prev.snap`
//! (the base of a run that is written again: a section re-run by the next night's recovery).
//! A run is a full one when there is no snapshot, when it is damaged, when the fileset
//! (FILESET_INCLUDE, FILESET_EXCLUDE, FOLLOW_SYMLINKS, ONE_FILE_SYSTEM) changed, when FULL_EVERY
//! says so, or when backup-runner found the snapshot's run not complete in a destination
//! (`NCB_BASE_MISSING`); each but the first with a warning.

use std::path::{Path, PathBuf};

use chrono::{Datelike, Weekday};
use ncb_archive::snapshot::{Header, Reader};
use ncb_core::params::Params;
use ncb_core::{Error, Result, StageCtx, StageReport};
use sha2::{Digest, Sha256};

/// Where snapshots are kept when STATE_FOLDER is not set.
pub const STATE_FOLDER_DEFAULT: &str = "/var/lib/nc-backup";

/// FULL_EVERY: after how many runs, or on which weekday, the next archive is a full one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullEvery {
    Runs(u32),
    Weekday(Weekday),
}

impl FullEvery {
    pub fn parse(s: &str) -> std::result::Result<FullEvery, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u32>() {
            return if n >= 1 { Ok(FullEvery::Runs(n)) } else { Err(format!("'{t}': a number of runs is at least 1")) };
        }
        t.parse::<Weekday>().map(FullEvery::Weekday).map_err(|_| {
            format!("'{t}' is neither a number of runs (7: a full archive, then 6 increments) nor a weekday (sunday)")
        })
    }
}

/// FULL_EVERY, default 7 runs.
pub fn full_every(p: &Params) -> Result<FullEvery> {
    p.str("FULL_EVERY")
        .map_or(Ok(FullEvery::Runs(7)), FullEvery::parse)
        .map_err(|e| Error::usage(format!("--FULL_EVERY: {e}")))
}

/// The snapshot of a host's section, and the one before it.
pub fn state_paths(state_folder: Option<PathBuf>, hostname: &str, section: &str) -> (PathBuf, PathBuf) {
    let dir = state_folder.unwrap_or_else(|| PathBuf::from(STATE_FOLDER_DEFAULT));
    let stem = format!("{}_{}", ncb_core::context::safe_name(hostname), ncb_core::context::safe_name(section));
    (dir.join(format!("{stem}.snap")), dir.join(format!("{stem}.prev.snap")))
}

/// The snapshot tonight's run `run_id` builds on: the current one, unless it is this very run's
/// own (the section run again), then the one before. None when there is none; an error when
/// the one to use cannot be read.
pub fn base_snapshot(paths: &(PathBuf, PathBuf), run_id: &str) -> Result<Option<(Header, Reader)>> {
    for p in [&paths.0, &paths.1] {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        // Opening checks the whole file against its hash, once.
        let (h, reader) = Reader::open(p)?;
        if h.run_id != run_id {
            return Ok(Some((h, reader)));
        }
    }
    Ok(None)
}

/// What identifies a fileset: another one starts a new chain.
pub fn fileset_digest(p: &Params) -> Result<String> {
    let roots: Vec<String> = p
        .paths("FILESET_INCLUDE")?
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()).display().to_string())
        .collect();
    let what = serde_json::json!({
        "include": roots,
        "exclude": p.list("FILESET_EXCLUDE")?,
        "follow_symlinks": p.flag("FOLLOW_SYMLINKS", false)?,
        "one_file_system": p.flag("ONE_FILE_SYSTEM", false)?,
    });
    Ok(hex::encode(Sha256::digest(what.to_string().as_bytes())))
}

/// Removes what a killed run left of its snapshot (`.NAME.partial-*` beside it).
pub fn sweep_temporaries(snap: &Path) {
    let (Some(dir), Some(name)) = (snap.parent(), snap.file_name()) else { return };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Tonight's archive: full, or an increment on the snapshot's run.
#[derive(Debug)]
pub struct Plan {
    pub level: u32,
    pub full_run: String,
    pub base_run: Option<String>,
    pub before: Option<Reader>,
    /// The current snapshot is this run's own (the section made again): it is replaced and
    /// the one before it kept.
    pub replaces_own: bool,
}

/// Decides between a full archive and an increment, warning in `report` why a full one is made
/// when an increment was possible.
pub fn plan(ctx: &StageCtx, p: &Params, paths: &(PathBuf, PathBuf), report: &mut StageReport) -> Result<Plan> {
    // The current snapshot is this very run's own when the section is made again: it is then
    // replaced, and the one before (its base) stays.
    let own = |chosen: bool| !chosen && std::fs::symlink_metadata(&paths.0).is_ok();
    let full =
        |replaces_own| Plan { level: 0, full_run: ctx.run_id.clone(), base_run: None, before: None, replaces_own };
    let digest = fileset_digest(p)?;
    let (header, reader) = match base_snapshot(paths, &ctx.run_id) {
        Ok(Some(x)) => x,
        Ok(None) => {
            report.warn(format!(
                "no snapshot of an earlier run in {} (the first incremental run, or the state was lost): a full archive",
                paths.0.display()
            ));
            return Ok(full(own(false)));
        }
        Err(e) => {
            report.warn(format!("{}: a full archive", ncb_core::stage::error_chain(&e)));
            return Ok(full(false));
        }
    };
    let replaces_own = own(reader.path() == paths.0);
    let why_full = if header.fileset != digest {
        Some(format!(
            "the fileset changed since run {} (FILESET_INCLUDE, FILESET_EXCLUDE or their options)",
            header.run_id
        ))
    } else if let Some(why) = &ctx.base_missing {
        Some(why.clone())
    } else {
        match full_every(p)? {
            FullEvery::Runs(n) if header.level + 1 >= n => {
                log::info!("FULL_EVERY {n}: run {} was level {}: a full archive", header.run_id, header.level);
                return Ok(full(replaces_own));
            }
            FullEvery::Weekday(w) if full_due_on(w, &header.full_run) => {
                log::info!("FULL_EVERY {w}: a full archive");
                return Ok(full(replaces_own));
            }
            _ => None,
        }
    };
    if let Some(why) = why_full {
        report.warn(format!("{why}: a full archive instead of an increment"));
        return Ok(full(replaces_own));
    }
    Ok(Plan {
        level: header.level + 1,
        full_run: header.full_run.clone(),
        base_run: Some(header.run_id.clone()),
        before: Some(reader),
        replaces_own,
    })
}

/// Whether today (local time) is `w` and the chain's full archive was made before today.
fn full_due_on(w: Weekday, full_run: &str) -> bool {
    let today = chrono::Local::now().date_naive();
    if today.weekday() != w {
        return false;
    }
    let made = full_run
        .get(..16)
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ").ok())
        .map(|t| t.and_utc().with_timezone(&chrono::Local).date_naive());
    made.is_none_or(|d| d < today)
}

/// Where tonight's snapshot goes, and what it says of itself.
pub fn header(ctx: &StageCtx, p: &Params, plan: &Plan, failed: Vec<String>) -> Result<Header> {
    Ok(Header {
        format: "ncb-snapshot".into(),
        version: 1,
        run_id: ctx.run_id.clone(),
        level: plan.level,
        full_run: plan.full_run.clone(),
        base_run: plan.base_run.clone(),
        fileset: fileset_digest(p)?,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        failed,
    })
}

/// The state folder, made 0700 when missing.
pub fn ensure_state_folder(paths: &(PathBuf, PathBuf)) -> Result<()> {
    let dir = paths.0.parent().unwrap_or(Path::new("/"));
    ncb_core::atomic::ensure_dir(dir, 0o700)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_every_reads_runs_and_weekdays() {
        assert_eq!(FullEvery::parse("7"), Ok(FullEvery::Runs(7)));
        assert_eq!(FullEvery::parse("Sunday"), Ok(FullEvery::Weekday(Weekday::Sun)));
        assert_eq!(FullEvery::parse("mon"), Ok(FullEvery::Weekday(Weekday::Mon)));
        assert!(FullEvery::parse("0").unwrap_err().contains("at least 1"));
        assert!(FullEvery::parse("fortnight").unwrap_err().contains("weekday"));
    }
}
