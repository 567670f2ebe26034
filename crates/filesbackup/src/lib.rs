//! filesbackup: FILESET_INCLUDE minus FILESET_EXCLUDE into one `.tar.gz`, stored relative to
//! `/` as `tar czCf / …` does, so `tar xzf X -C /` restores in place and `-C DIR` elsewhere.

use std::path::PathBuf;

use ncb_archive::encoder::{FORMAT_PARAM, LEVEL_PARAM};
use ncb_archive::{Exclude, Options, Root, Settings};
use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Result, StageCtx, StageDef, StageReport};

pub static PARAMS: [ParamSpec; 11] = [
    ParamSpec::new("FILESET_INCLUDE", Kind::Paths, "Files and folders to back up").required(),
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
    FORMAT_PARAM,
    LEVEL_PARAM,
    ParamSpec::new("TAR_COMMAND", Kind::Ignored, "nc-backup-py's tar command line"),
];

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
    if !p.flag("IGNORE_MISSING", false).unwrap_or(false) {
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
    let opts = options(p)?;
    if p.has("TAR_COMMAND") {
        log::info!("TAR_COMMAND is ignored: archives are written in-process");
    }
    let dest_dir = p.path("DESTINATION").unwrap_or_else(|| ctx.general.work_dir().join("files"));
    ncb_core::atomic::ensure_dir(&dest_dir, 0o700)?;
    let roots = p.paths("FILESET_INCLUDE")?.iter().map(|i| Root::from_slash(i)).collect::<Result<Vec<_>>>()?;
    let name = format!("{}.tar{}", ctx.artifact_stem(), opts.compression.format.suffix());
    let dest: PathBuf = dest_dir.join(name);
    let mut report = StageReport::new(STAGE.name);
    let (artifact, stats) = ncb_archive::write_archive(&roots, &opts, &dest, &mut report)?;
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
