//! compression: each of OBJECTIVES (a folder or a file) becomes `DESTINATION/<name>.tar.gz`,
//! stored under its own name as `tar czf name.tar.gz -C parent name` does.
//! REMOVE_OBJECTIVES deletes the inputs only after every output is durable.

use std::path::{Path, PathBuf};

use ncb_archive::encoder::{FORMAT_PARAM, LEVEL_PARAM};
use ncb_archive::{Options, Root, Settings};
use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Error, Result, StageCtx, StageDef, StageReport};

pub static PARAMS: [ParamSpec; 5] = [
    ParamSpec::new("OBJECTIVES", Kind::Paths, "Folders or files to compress, one archive each").required(),
    ParamSpec::new("DESTINATION", Kind::Path, "Folder for the archives").required(),
    ParamSpec::new("REMOVE_OBJECTIVES", Kind::Bool, "Delete the inputs once the archives are durable (default False)"),
    FORMAT_PARAM,
    LEVEL_PARAM,
];

pub static STAGE: StageDef = StageDef {
    name: "compression",
    aliases: &["compress"],
    legacy_executables: &["compression.py"],
    about: "Compress each of OBJECTIVES into DESTINATION/<name>.tar.gz",
    params: &PARAMS,
    validate,
    run,
};

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    problems.extend(Settings::check(p));
    if let Err(e) = plan(p) {
        problems.push(Problem { key: "OBJECTIVES".into(), message: e.to_string() });
    }
    problems
}

/// (objective, output) pairs; names must not collide and DESTINATION must not lie inside an
/// objective (REMOVE_OBJECTIVES would delete the archives).
fn plan(p: &Params) -> Result<Vec<(Root, PathBuf)>> {
    let dest = std::path::absolute(p.required_path("DESTINATION")?)
        .map_err(|e| Error::usage(format!("--DESTINATION: {e}")))?;
    let suffix = Settings::from_params(p)?.format.suffix();
    let mut out: Vec<(Root, PathBuf)> = Vec::new();
    for obj in p.paths("OBJECTIVES")? {
        let root = Root::from_parent(&obj)?;
        if dest.starts_with(&root.path) {
            return Err(Error::usage(format!(
                "DESTINATION {} is inside objective {}",
                dest.display(),
                root.path.display()
            )));
        }
        let file = dest.join(format!("{}.tar{suffix}", root.name.display()));
        if let Some((other, _)) = out.iter().find(|(_, f)| *f == file) {
            return Err(Error::usage(format!(
                "{} and {} would both become {}",
                other.path.display(),
                root.path.display(),
                file.display()
            )));
        }
        out.push((root, file));
    }
    Ok(out)
}

fn run(_ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let jobs = plan(p)?;
    let opts = Options {
        excludes: Vec::new(),
        extensions: Vec::new(),
        follow_symlinks: false,
        one_file_system: false,
        strict: false,
        ignore_missing: false,
        compression: Settings::from_params(p)?,
        replace_existing: true,
        // A killed stage's hidden temporary in a work folder is never part of a backup.
        skip_temporaries: true,
    };
    let remove = p.flag("REMOVE_OBJECTIVES", false)?;
    // Inputs about to be deleted must be archived whole: an unreadable, vanished or changing
    // file is then fatal, not a warning.
    let opts = Options { strict: remove, ..opts };
    if let Some((_, first)) = jobs.first() {
        ncb_core::atomic::ensure_dir(first.parent().unwrap_or(Path::new(".")), 0o700)?;
    }
    for (root, _) in &jobs {
        if std::fs::symlink_metadata(&root.path).is_err() {
            return Err(Error::runtime(format!("objective {} does not exist", root.path.display())));
        }
    }
    let mut report = StageReport::new(STAGE.name);
    let mut bytes_in = 0;
    for (root, file) in &jobs {
        match ncb_archive::write_archive(std::slice::from_ref(root), &opts, file, &mut report) {
            Ok((artifact, stats)) => {
                log::info!(
                    "{} -> {}: {} bytes in, {} bytes out",
                    root.path.display(),
                    artifact.path.display(),
                    stats.bytes,
                    artifact.bytes
                );
                bytes_in += stats.bytes;
                report.artifacts.push(artifact);
            }
            Err(e) => {
                // A failed run leaves no archive that could pass for its output.
                report.discard_artifacts();
                return Err(e);
            }
        }
    }
    // Only now is every archive durable (fsynced and renamed): the inputs may go.
    if remove {
        for (root, _) in &jobs {
            ncb_core::atomic::remove_input(&root.path)?;
            log::info!("removed {}", root.path.display());
        }
    }
    report.set("bytes_in", bytes_in);
    Ok(report)
}
