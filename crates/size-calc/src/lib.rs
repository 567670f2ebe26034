//! size-calc: how many files and bytes the OBJECTIVES hold. nc-backup-py's
//! `tools/size_calculation.py` (`SizeCalculation`), usable as a `load` plugin and as a binary.
//! Symbolic links are counted as entries, never followed.

use std::path::{Path, PathBuf};

use ncb_core::params::{Kind, ParamSpec, Params};
use ncb_core::{Error, IoContext, Result, StageCtx, StageDef, StageReport};

pub static PARAMS: [ParamSpec; 1] =
    [ParamSpec::new("OBJECTIVES", Kind::Paths, "Files or folders to measure").required()];

pub static STAGE: StageDef = StageDef {
    name: "size-calc",
    aliases: &["size_calculation", "size-calculation"],
    legacy_executables: &["size_calculation.py"],
    about: "Count the files and bytes of OBJECTIVES",
    params: &PARAMS,
    validate: ncb_core::stage::no_extra_checks,
    run,
};

/// Totals for one objective.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

fn run(_ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let objectives = p.paths("OBJECTIVES")?;
    let mut report = StageReport::new(STAGE.name);
    let mut all = Totals::default();
    let mut per = serde_json::Map::new();
    for obj in &objectives {
        // As nc-backup-py's walk: a folder an earlier section removed (storage with
        // REMOVE_OBJECTIVES, in conf.json's order) measures 0, with a warning.
        if std::fs::symlink_metadata(obj).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            report.warn(format!("{} does not exist (removed by an earlier section?): counted as 0", obj.display()));
            per.insert(obj.display().to_string(), serde_json::json!({"files": 0, "bytes": 0}));
            continue;
        }
        let t = measure(obj, &mut report)?;
        all.files += t.files;
        all.dirs += t.dirs;
        all.bytes += t.bytes;
        per.insert(obj.display().to_string(), serde_json::json!({"files": t.files, "bytes": t.bytes}));
        log::info!("{}: {} files, {}", obj.display(), t.files, human_bytes(t.bytes));
    }
    report.set("files", all.files);
    report.set("dirs", all.dirs);
    report.set("bytes", all.bytes);
    report.set("objectives", per);
    Ok(report)
}

/// Walks `root` without following links. A missing root is an error; an unreadable folder
/// below it is a warning.
pub fn measure(root: &Path, report: &mut StageReport) -> Result<Totals> {
    let meta = std::fs::symlink_metadata(root).at("objective", root)?;
    let mut t = Totals::default();
    if !meta.is_dir() {
        t.files = 1;
        t.bytes = meta.len();
        return Ok(t);
    }
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        t.dirs += 1;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                report.warn(format!("cannot read folder {}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::path("cannot list", &dir, e))?;
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => {
                    t.files += 1;
                    t.bytes += m.len();
                }
                Err(e) => report.warn(format!("cannot stat {}: {e}", entry.path().display())),
            }
        }
    }
    Ok(t)
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_and_bytes_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/one"), b"12345").unwrap();
        std::fs::write(d.path().join("a/b/two"), vec![0u8; 1000]).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("a/link")).unwrap();
        let mut r = StageReport::new("t");
        let t = measure(&d.path().join("a"), &mut r).unwrap();
        let link_len = std::fs::symlink_metadata(d.path().join("a/link")).unwrap().len();
        assert_eq!(t, Totals { files: 3, dirs: 2, bytes: 1005 + link_len });
    }

    #[test]
    fn missing_objective_names_it() {
        let mut r = StageReport::new("t");
        let e = measure(Path::new("/nonexistent/xyz"), &mut r).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/xyz"), "{e}");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
