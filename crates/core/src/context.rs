//! The GENERAL section every stage receives, the run id, and the context a stage runs in.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::params::{Kind, ParamSpec, Params};

/// The keys of GENERAL that reach every stage as flags.
pub static GENERAL_PARAMS: [ParamSpec; 5] = [
    ParamSpec::new("HOSTNAME", Kind::Str, "Name of this server, used in artifact names and reports"),
    ParamSpec::new("WORK_FOLDER", Kind::Path, "Folder for temporary work files"),
    ParamSpec::new("HOME_FOLDER", Kind::Path, "Install folder (nc-backup-py); external scripts are looked up under it"),
    ParamSpec::new("LOG_FOLDER", Kind::Path, "Log folder, or a log file path (ending in .log)"),
    ParamSpec::new("LOCAL_BACKUP", Kind::Path, "Folder that keeps a local copy of each backup"),
];

/// Environment variables the runner sets for its children.
pub mod env {
    /// The run id shared by every stage of one run.
    pub const RUN_ID: &str = "NCB_RUN_ID";
    /// The config section a stage runs for.
    pub const SECTION: &str = "NCB_SECTION";
    /// Set when the runner captures the stage's stderr into the log itself.
    pub const LOG_CAPTURED: &str = "NCB_LOG_CAPTURED";
    /// The run's lineage so far (a JSON file in WORK_FOLDER; see [`crate::lineage`]).
    pub const LINEAGE: &str = "NCB_LINEAGE";
    /// `NCB_PARAM_<KEY>`: a secret parameter, passed outside argv.
    pub const PARAM_PREFIX: &str = "NCB_PARAM_";
    /// Set to 1 when an earlier section of the run failed (ON_FAILURE continue): retention
    /// then deletes nothing.
    pub const EARLIER_FAILED: &str = "NCB_EARLIER_FAILED";
    /// Why an incremental section must not build on its base run (see
    /// [`StageCtx::base_missing`](crate::StageCtx)).
    pub const BASE_MISSING: &str = "NCB_BASE_MISSING";
    /// `relay`: the runner draws the stage's progress on its terminal; the stage sends it as
    /// [`crate::progress::RELAY_PREFIX`] lines on stderr.
    pub const PROGRESS: &str = "NCB_PROGRESS";
    /// The runner's pid: a stage that outlives it (the privileged reader, whose parent-death
    /// signal an exec through sudo cleared) stops.
    pub const RUNNER_PID: &str = "NCB_RUNNER_PID";
    /// Every variable above a stage may receive (sudo passes exactly these on).
    pub const ALL: [&str; 9] =
        [RUN_ID, SECTION, LOG_CAPTURED, LINEAGE, EARLIER_FAILED, BASE_MISSING, PROGRESS, RUNNER_PID, "NCB_CONFIG"];
}

/// The GENERAL section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct General {
    pub hostname: String,
    pub work_folder: Option<PathBuf>,
    pub home_folder: Option<PathBuf>,
    pub log_folder: Option<PathBuf>,
    pub local_backup: Option<PathBuf>,
}

impl General {
    pub fn from_params(p: &Params) -> Self {
        General {
            hostname: p.str("HOSTNAME").map(str::to_owned).unwrap_or_else(system_hostname),
            work_folder: p.path("WORK_FOLDER"),
            home_folder: p.path("HOME_FOLDER"),
            log_folder: p.path("LOG_FOLDER"),
            local_backup: p.path("LOCAL_BACKUP"),
        }
    }

    /// The log file: LOG_FOLDER itself when it names a file (an existing file, or a name
    /// ending in `.log`), else `LOG_FOLDER/nc-backup.log`.
    pub fn log_file(&self) -> Option<PathBuf> {
        self.log_folder.as_deref().map(log_file_of)
    }

    /// The folder that holds the log file (and run reports).
    pub fn log_dir(&self) -> Option<PathBuf> {
        self.log_file().and_then(|f| f.parent().map(Path::to_path_buf))
    }

    /// The work folder, or the system temp folder when none is set.
    pub fn work_dir(&self) -> PathBuf {
        self.work_folder.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// LOG_FOLDER may be a folder or a file path, as in nc-backup-py.
pub fn log_file_of(log_folder: &Path) -> PathBuf {
    let is_file = log_folder.is_file()
        || (!log_folder.is_dir()
            && !log_folder.as_os_str().to_string_lossy().ends_with('/')
            && log_folder.extension().is_some_and(|e| e == "log"));
    if is_file { log_folder.to_path_buf() } else { log_folder.join("nc-backup.log") }
}

/// Why the run must not append its log to `log_file`, when it already exists and is not a
/// log: the config itself (same file, by device and inode), a JSON document, or not text.
pub fn check_log_file(log_file: &Path, config: Option<&Path>) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(log_file) else {
        return Ok(());
    };
    if !meta.is_file() {
        return Ok(());
    }
    let shown = log_file.display();
    if let Some(c) = config.and_then(|c| std::fs::metadata(c).ok())
        && (c.dev(), c.ino()) == (meta.dev(), meta.ino())
    {
        return Err(format!("the log file {shown} is the config file itself: the run would append its log to it"));
    }
    const HEAD: u64 = 1 << 20;
    let mut head = Vec::new();
    std::fs::File::open(log_file)
        .and_then(|f| f.take(HEAD).read_to_end(&mut head))
        .map_err(|e| format!("cannot read the log file {shown}: {e}"))?;
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{' | b'['))
        && meta.len() <= HEAD
        && serde_json::from_slice::<serde::de::IgnoredAny>(&head).is_ok()
    {
        return Err(format!(
            "the log file {shown} is a JSON file, not a log: the run would append its log to it (give a folder or a .log file)"
        ));
    }
    if !looks_like_text(&head) {
        return Err(format!(
            "the log file {shown} is not a text file, not a log: the run would append its log to it (give a folder or a .log file)"
        ));
    }
    Ok(())
}

/// No NUL byte, and at most one character in ten unprintable (or not UTF-8).
fn looks_like_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    let text = String::from_utf8_lossy(head);
    let (mut all, mut odd) = (0usize, 0usize);
    for c in text.chars() {
        all += 1;
        if c == char::REPLACEMENT_CHARACTER || (c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c' | '\x1b')) {
            odd += 1;
        }
    }
    odd * 10 <= all
}

/// This machine's host name (used when HOSTNAME is not set).
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A new run id: UTC time, sortable, plus a few random hex digits: `20261122T040000Z-3fa9`.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let nanos = u64::from(now.timestamp_subsec_nanos());
    let mix = (nanos ^ u64::from(std::process::id()).rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%SZ"), (mix >> 48) & 0xffff)
}

/// UTC time in artifact names: `20261122T040000Z`.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// A name safe in a file name and an object key: `[A-Za-z0-9._-]`, others become `-`.
pub fn safe_name(s: &str) -> String {
    let out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if out.is_empty() || out.starts_with('.') { format!("x{out}") } else { out }
}

/// What a stage knows about the run it is part of.
#[derive(Debug, Clone)]
pub struct StageCtx {
    pub general: General,
    pub run_id: String,
    /// The config section (or the stage name when run by hand).
    pub section: String,
    pub started: DateTime<Utc>,
    /// What earlier sections of the run made (empty when run by hand).
    pub lineage: crate::lineage::Lineage,
    /// An earlier section of this run failed (the run goes on under ON_FAILURE continue).
    pub earlier_failed: bool,
    /// Why the base run of an incremental section is not to be built on (backup-runner did
    /// not find it complete in every destination): the section then makes a full archive.
    pub base_missing: Option<String>,
}

impl StageCtx {
    pub fn new(general: General, run_id: String, section: String) -> Self {
        StageCtx {
            general,
            run_id,
            section,
            started: Utc::now(),
            lineage: Default::default(),
            earlier_failed: false,
            base_missing: None,
        }
    }

    /// `HOST_SECTION_20261122T040000Z-3fa9`: the stem of this stage's artifact names.
    pub fn artifact_stem(&self) -> String {
        format!("{}_{}_{}", safe_name(&self.general.hostname), safe_name(&self.section), self.name_stamp())
    }

    /// The time part of artifact names: the run id (a time and a random suffix, so two runs
    /// in the same second never make the same name), or the stage's start time when the run
    /// id is not one.
    pub fn name_stamp(&self) -> String {
        let is_run_id = self.run_id.len() == 21
            && self.run_id.as_bytes()[16] == b'-'
            && chrono::NaiveDateTime::parse_from_str(&self.run_id[..16], "%Y%m%dT%H%M%SZ").is_ok()
            && self.run_id[17..].bytes().all(|b| b.is_ascii_hexdigit());
        if is_run_id { self.run_id.clone() } else { stamp(self.started) }
    }

    /// Values for `{NAME}` placeholders.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        placeholder_vars(&self.general, &self.run_id, self.started)
    }
}

/// The placeholder table shared by the runner and standalone stages.
pub fn placeholder_vars(g: &General, run_id: &str, t: DateTime<Utc>) -> Vec<(&'static str, String)> {
    let p = |o: &Option<PathBuf>| o.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    vec![
        ("HOSTNAME", g.hostname.clone()),
        ("WORK_FOLDER", p(&g.work_folder)),
        ("HOME_FOLDER", p(&g.home_folder)),
        ("LOG_FOLDER", p(&g.log_folder)),
        ("LOCAL_BACKUP", p(&g.local_backup)),
        ("RUN_ID", run_id.to_owned()),
        ("DATE", t.format("%Y-%m-%d").to_string()),
        ("TIME", t.format("%H%M%S").to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_folder_or_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(log_file_of(d.path()), d.path().join("nc-backup.log"));
        let f = d.path().join("log/ncbackup.log");
        assert_eq!(log_file_of(&f), f);
        let plain = d.path().join("logs");
        assert_eq!(log_file_of(&plain), plain.join("nc-backup.log"));
    }

    #[test]
    fn log_files_that_are_not_logs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("conf.json");
        std::fs::write(&conf, "{\"GENERAL\": {}}\n").unwrap();
        let e = check_log_file(&conf, Some(&conf)).unwrap_err();
        assert!(e.contains("the config file itself"), "{e}");
        // The same file by another name (a symbolic link) is still the config.
        let link = d.path().join("l.log");
        std::os::unix::fs::symlink(&conf, &link).unwrap();
        assert!(check_log_file(&link, Some(&conf)).unwrap_err().contains("config file itself"));
        // Some other JSON file, or a binary one.
        let other = d.path().join("other.json");
        std::fs::write(&other, "[1, 2]").unwrap();
        assert!(check_log_file(&other, Some(&conf)).unwrap_err().contains("JSON file"));
        let bin = d.path().join("data.log");
        std::fs::write(&bin, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]).unwrap();
        assert!(check_log_file(&bin, None).unwrap_err().contains("not a text file"));
        // A log, a missing file and a folder are fine.
        let log = d.path().join("nc.log");
        std::fs::write(&log, "2026-01-01 04:00:00 INFO  [backup-runner] run started\n").unwrap();
        assert_eq!(check_log_file(&log, Some(&conf)), Ok(()));
        assert_eq!(check_log_file(&d.path().join("new.log"), Some(&conf)), Ok(()));
        assert_eq!(check_log_file(d.path(), Some(&conf)), Ok(()));
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = new_run_id("2026-01-02T03:04:05Z".parse().unwrap());
        let b = new_run_id("2026-01-02T03:04:06Z".parse().unwrap());
        assert!(a.starts_with("20260102T030405Z-") && a < b, "{a} {b}");
    }
}
