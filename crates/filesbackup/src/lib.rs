//! filesbackup: FILESET_INCLUDE minus FILESET_EXCLUDE into one `.tar.gz`, stored relative to
//! `/` as `tar czCf / …` does, so `tar xzf X -C /` restores in place and `-C DIR` elsewhere.

use std::path::PathBuf;

pub mod incremental;
pub mod privilege;
pub mod remote;

use ncb_archive::encoder::{FORMAT_PARAM, LEVEL_PARAM};
use ncb_archive::{Exclude, Options, Root, Settings};
use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Result, StageCtx, StageDef, StageReport};

pub static PARAMS: [ParamSpec; 20] = [
    ParamSpec::new("FILESET_INCLUDE", Kind::Paths, "Files and folders to back up [required unless ALLOW_EMPTY]"),
    ParamSpec::new(
        "FILESET_EXCLUDE",
        Kind::List,
        "Paths (and all below), names or glob patterns (*.log, **/node_modules, /var/www/*/cache) to leave out",
    ),
    ParamSpec::new(
        "FILE_EXTENSIONS",
        Kind::List,
        "Only files with these extensions (.jpg .png); folders are then not stored",
    ),
    ParamSpec::new("DESTINATION", Kind::Path, "Folder for the archive (default WORK_FOLDER/files)"),
    ParamSpec::new("FOLLOW_SYMLINKS", Kind::Bool, "Archive what links point to instead of the links (default False)"),
    ParamSpec::new("ONE_FILE_SYSTEM", Kind::Bool, "Do not descend into other file systems (default False)"),
    ParamSpec::new(
        "STRICT",
        Kind::Bool,
        "A file that cannot be read, vanishes or changes fails the backup (default False: a warning)",
    ),
    ParamSpec::new(
        "IGNORE_MISSING",
        Kind::Bool,
        "An include path that does not exist is a warning (default False: an error)",
    ),
    ParamSpec::new(
        "ALLOW_EMPTY",
        Kind::Bool,
        "An empty FILESET_INCLUDE makes an empty archive (default False: an error)",
    ),
    ParamSpec::new(
        "INCREMENTAL",
        Kind::Bool,
        "A full archive, then archives of only what changed since the run before, in GNU tar's incremental format (default False)",
    ),
    ParamSpec::new(
        "FULL_EVERY",
        Kind::Str,
        "INCREMENTAL: a full archive every this many runs (default 7), or on this weekday (sunday)",
    ),
    ParamSpec::new(
        "STATE_FOLDER",
        Kind::Path,
        "INCREMENTAL: where what the last run saw is kept; must outlive WORK_FOLDER (default /var/lib/nc-backup)",
    ),
    FORMAT_PARAM,
    LEVEL_PARAM,
    ParamSpec::new("TAR_COMMAND", Kind::Ignored, "nc-backup-py's tar command line"),
    ncb_dbdump::SSH_HOST,
    ncb_dbdump::SSH_USER,
    ncb_dbdump::SSH_PORT,
    ncb_dbdump::SSH_KEY,
    ncb_dbdump::SSH_KNOWN_HOSTS,
];

/// Where, in WORK_FOLDER, archives' indexes wait for storage (`<stem>.ncb-index.jsonl.gz`).
pub const INDEX_DIR: &str = ".ncb-index";

pub static STAGE: StageDef = StageDef {
    name: "filesbackup",
    aliases: &["files", "files_backup", "files-backup", "fileset"],
    legacy_executables: &["filesbackup.py"],
    about: "Back up FILESET_INCLUDE minus FILESET_EXCLUDE into one tar.gz",
    params: &PARAMS,
    validate,
    run,
};

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    problems.extend(Settings::check(p));
    if let Err(message) = check_not_empty(p) {
        problems.push(Problem { key: "FILESET_INCLUDE".into(), message });
    }
    if p.flag("INCREMENTAL", false).unwrap_or(false) {
        if let Err(e) = incremental::full_every(p) {
            problems.push(Problem { key: "FULL_EVERY".into(), message: e.to_string().replace("--FULL_EVERY: ", "") });
        }
        if !p.list("FILE_EXTENSIONS").unwrap_or_default().is_empty() {
            problems.push(Problem {
                key: "INCREMENTAL".into(),
                message: "cannot be combined with FILE_EXTENSIONS (an increment lists whole folders)".into(),
            });
        }
    } else {
        for key in ["FULL_EVERY", "STATE_FOLDER"] {
            if p.has(key) {
                problems.push(Problem { key: key.into(), message: "has no effect without INCREMENTAL True".into() });
            }
        }
    }
    let remote = p.has("SSH_HOST");
    if remote {
        for key in ["FILE_EXTENSIONS", "INCREMENTAL"] {
            if p.has(key) && (key != "INCREMENTAL" || p.flag(key, false).unwrap_or(false)) {
                problems.push(Problem {
                    key: key.into(),
                    message: "is not available for a remote file backup (SSH_HOST)".into(),
                });
            }
        }
    } else {
        for key in ["SSH_USER", "SSH_PORT", "SSH_KEY", "SSH_KNOWN_HOSTS"] {
            if p.has(key) {
                problems.push(Problem { key: key.into(), message: "has no effect without SSH_HOST".into() });
            }
        }
    }
    // Remote includes are checked by the remote tar (a missing one fails the run).
    if !remote && !p.flag("IGNORE_MISSING", false).unwrap_or(false) {
        let missing: Vec<String> = p
            .paths("FILESET_INCLUDE")
            .unwrap_or_default()
            .into_iter()
            .filter(|i| std::fs::symlink_metadata(i).is_err())
            .map(|i| i.display().to_string())
            .collect();
        if !missing.is_empty() {
            problems.push(Problem {
                key: "FILESET_INCLUDE".into(),
                message: format!("does not exist: {} (IGNORE_MISSING True to allow)", missing.join(", ")),
            });
        }
    }
    problems
}

/// An empty FILESET_INCLUDE (absent, "" or []) would back up nothing, night after night,
/// without failing: an error unless ALLOW_EMPTY says it is meant.
fn check_not_empty(p: &Params) -> std::result::Result<(), String> {
    if p.flag("ALLOW_EMPTY", false).unwrap_or(false) || !p.list("FILESET_INCLUDE").unwrap_or_default().is_empty() {
        return Ok(());
    }
    let what = if p.has("FILESET_INCLUDE") { "is empty" } else { "missing required parameter" };
    Err(format!("{what}: nothing would be backed up (ALLOW_EMPTY True if an empty archive is meant)"))
}

/// Reads the options shared with `compression`.
pub fn options(p: &Params) -> Result<Options> {
    Ok(Options {
        excludes: p.list("FILESET_EXCLUDE")?.iter().map(|s| Exclude::parse(s)).collect(),
        extensions: p
            .list("FILE_EXTENSIONS")?
            .iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect(),
        follow_symlinks: p.flag("FOLLOW_SYMLINKS", false)?,
        one_file_system: p.flag("ONE_FILE_SYSTEM", false)?,
        strict: p.flag("STRICT", false)?,
        ignore_missing: p.flag("IGNORE_MISSING", false)?,
        compression: Settings::from_params(p)?,
        replace_existing: false,
        skip_temporaries: false,
    })
}

fn run(ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    check_not_empty(p).map_err(|e| ncb_core::Error::usage(format!("--FILESET_INCLUDE: {e}")))?;
    let opts = options(p)?;
    if let Some(state) = privilege::STATE.get() {
        log::info!("{state}");
    }
    if p.has("TAR_COMMAND") {
        log::info!("TAR_COMMAND is ignored: archives are written in-process");
    }
    let dest_dir = p.path("DESTINATION").unwrap_or_else(|| ctx.general.work_dir().join("files"));
    ncb_core::atomic::ensure_dir(&dest_dir, 0o700)?;
    let roots = p.paths("FILESET_INCLUDE")?.iter().map(|i| Root::from_slash(i)).collect::<Result<Vec<_>>>()?;
    let name = format!("{}.tar{}", ctx.artifact_stem(), opts.compression.format.suffix());
    let dest: PathBuf = dest_dir.join(name);
    let mut report = StageReport::new(STAGE.name);
    let incremental = p.flag("INCREMENTAL", false)?;
    if p.has("SSH_HOST") {
        let (artifact, bytes_in) = remote::archive(p, opts.compression, &dest)?;
        log::info!(
            "{}: {bytes_in} bytes of tar from {}, {} bytes out",
            artifact.path.display(),
            p.str("SSH_HOST").unwrap_or(""),
            artifact.bytes
        );
        report.set("bytes_in", bytes_in);
        report.set("remote", p.str("SSH_HOST").unwrap_or("").to_owned());
        report.artifacts.push(artifact);
        return Ok(report);
    }
    // Under backup-runner (a WORK_FOLDER), the archive's index goes beside it for storage.
    let mut index = match &ctx.general.work_folder {
        Some(w) => {
            let dir = w.join(INDEX_DIR);
            ncb_core::atomic::ensure_dir(&dir, 0o700)?;
            let header = ncb_archive::index::Header {
                format: "ncb-index".into(),
                version: 1,
                run_id: ctx.run_id.clone(),
                section: ctx.section.clone(),
                archive: dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            let path = dir.join(format!("{}{}", ctx.artifact_stem(), ncb_archive::index::SUFFIX));
            Some(ncb_archive::index::Writer::create(&path, &header)?)
        }
        None => None,
    };
    let (artifact, stats) = if incremental {
        archive_incremental(ctx, p, &roots, &opts, &dest, &mut report, index.as_mut())?
    } else {
        ncb_archive::write_archive_with(&roots, &opts, &dest, &mut report, None, index.as_mut())?
    };
    if let Some(i) = index {
        report.set("index", i.finish()?.display().to_string());
    }
    log::info!(
        "{}: {} files, {} folders, {} links, {} bytes in, {} bytes out",
        artifact.path.display(),
        stats.files,
        stats.dirs,
        stats.symlinks + stats.hardlinks,
        stats.bytes,
        artifact.bytes
    );
    report.set("files", stats.files);
    report.set("dirs", stats.dirs);
    report.set("symlinks", stats.symlinks);
    report.set("hardlinks", stats.hardlinks);
    report.set("special", stats.special);
    report.set("skipped", stats.skipped);
    report.set("bytes_in", stats.bytes);
    report.artifacts.push(artifact);
    Ok(report)
}

/// The archive of an INCREMENTAL section: full or an increment on the run before (see
/// [`incremental`]), and tonight's snapshot, put in place only once the archive is.
fn archive_incremental(
    ctx: &StageCtx,
    p: &Params,
    roots: &[Root],
    opts: &Options,
    dest: &std::path::Path,
    report: &mut StageReport,
    index: Option<&mut ncb_archive::index::Writer>,
) -> Result<(ncb_core::Artifact, ncb_archive::Stats)> {
    let paths = incremental::state_paths(p.path("STATE_FOLDER"), &ctx.general.hostname, &ctx.section);
    incremental::ensure_state_folder(&paths)?;
    incremental::sweep_temporaries(&paths.0);
    let mut plan = incremental::plan(ctx, p, &paths, report)?;
    let mut inc = ncb_archive::Incremental {
        before: plan.before.take(),
        after: ncb_archive::snapshot::Writer::create(&paths.0)?,
        failed: Vec::new(),
    };
    let (artifact, stats) = ncb_archive::write_archive_with(roots, opts, dest, report, Some(&mut inc), index)?;
    // Only now that the archive is in place: the snapshot it replaces stays as the base of a
    // run of this section made again, unless it is this run's own (made again: the one
    // before it is still the base).
    let header = incremental::header(ctx, p, &plan, std::mem::take(&mut inc.failed))?;
    inc.after.finish(&header, if plan.replaces_own { None } else { Some(&paths.1) })?;
    match &plan.base_run {
        Some(base) => log::info!(
            "level {} increment on run {base} (chain of {}): {} entries unchanged left out",
            plan.level,
            plan.full_run,
            stats.unchanged
        ),
        None => log::info!("full archive (level 0); snapshot {}", paths.0.display()),
    }
    report.set("level", plan.level);
    report.set("full_run", plan.full_run.clone());
    if let Some(base) = &plan.base_run {
        report.set("base_run", base.clone());
    }
    report.set("unchanged", stats.unchanged);
    Ok((artifact, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(include: Option<&str>, allow_empty: Option<&str>) -> Params {
        let mut p = Params::new();
        if let Some(i) = include {
            p.set("FILESET_INCLUDE", i);
        }
        if let Some(a) = allow_empty {
            p.set("ALLOW_EMPTY", a);
        }
        p
    }

    #[test]
    fn an_empty_include_is_an_error_unless_allowed() {
        for (include, why) in
            [(Some(""), "is empty"), (Some("[]"), "is empty"), (Some("  "), "is empty"), (None, "missing")]
        {
            let found = STAGE.check(&params(include, None));
            assert!(
                found.len() == 1 && found[0].key == "FILESET_INCLUDE" && found[0].message.contains(why),
                "{include:?}: {found:?}"
            );
            assert!(found[0].message.contains("ALLOW_EMPTY"), "{found:?}");
            assert_eq!(STAGE.check(&params(include, Some("True"))), [], "{include:?}");
        }
        assert_eq!(STAGE.check(&params(Some("/"), None)), []);
    }

    #[test]
    fn an_empty_include_fails_the_run_and_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ctx = StageCtx::new(ncb_core::General::default(), "r1".into(), "FILES".into());
        let mut p = params(Some("[]"), None);
        p.set("DESTINATION", d.path().join("out").display().to_string());
        let e = STAGE.execute(&ctx, &p).unwrap_err();
        assert_eq!(e.exit_status(), ncb_core::ExitStatus::Usage);
        assert!(e.to_string().contains("FILESET_INCLUDE") && e.to_string().contains("ALLOW_EMPTY"), "{e}");
        assert!(!d.path().join("out").exists());
        p.set("ALLOW_EMPTY", "True");
        let report = STAGE.execute(&ctx, &p).unwrap();
        assert_eq!(report.artifacts.len(), 1);
        assert_eq!(report.data["files"], 0);
    }
}
