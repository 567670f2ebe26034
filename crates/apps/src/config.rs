//! The apps config (`apps.json`, docs/APPS.md): where the inventory is, where the apps and
//! their backups live, and where the backups go. Every problem is reported with its key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ncb_core::params::{Params, json_to_arg};
use serde_json::{Map, Value};

pub const DEFAULT_APPS_ROOT: &str = "/srv/users/serverpilot/apps";
pub const DEFAULT_BACKUPS_ROOT: &str = "/opt/backups";
pub const DEFAULT_MEDIA_PATH: &str = "storage/app/public";
pub const DEFAULT_KEEP_LOCAL: usize = 7;

const KEYS: [&str; 15] = [
    "API_URL",
    "TOKEN_FILE",
    "ENVIRONMENT",
    "API_TIMEOUT",
    "APPS_ROOT",
    "BACKUPS_ROOT",
    "KEEP_LOCAL",
    "HOSTNAME",
    "CRONTAB_USER",
    "LOG_FOLDER",
    "COMPRESSION_LEVEL",
    "SYNC",
    "MEDIA",
    "NOTIFY",
    "APPS",
];
const MEDIA_KEYS: [&str; 5] = ["PATHS", "DESTINATION", "URL", "TOKEN_FILE", "ATTEMPTS"];
const APP_KEYS: [&str; 5] = ["ENV_FILE", "MEDIA_PATHS", "KEEP_LOCAL", "SKIP_MEDIA", "SKIP_SYNC"];

/// A problem of the config: the key path (`SYNC.BUCKET_NAME`, `APPS.shop.KEEP_LOCAL`) and what
/// is wrong with it.
pub use ncb_core::params::Problem;

/// Where an app's media archive goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaTarget {
    /// POSTed to a backup server (the seed's way), with a bearer token from a 0600 file.
    Http { url: String, token_file: Option<PathBuf>, attempts: u32 },
    /// Kept under `BACKUPS_ROOT/<app>/media/` and stored by SYNC with the dumps.
    Sync,
    /// No media backup.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub paths: Vec<String>,
    pub target: MediaTarget,
}

/// Per-app settings (APPS.<name>).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Override {
    pub env_file: Option<String>,
    pub media_paths: Option<Vec<String>>,
    pub keep_local: Option<usize>,
    pub skip_media: bool,
    pub skip_sync: bool,
}

#[derive(Debug, Clone)]
pub struct AppsConfig {
    pub path: PathBuf,
    pub api_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub environment: Option<String>,
    pub api_timeout: Duration,
    pub apps_root: PathBuf,
    pub backups_root: PathBuf,
    pub keep_local: usize,
    pub hostname: String,
    pub crontab_user: Option<String>,
    pub log_folder: Option<PathBuf>,
    pub compression_level: Option<String>,
    /// The storage parameters of SYNC (DESTINATION, BUCKET_NAME, PREFIX, KEY_FILE, …).
    pub sync: Option<Params>,
    pub media: Media,
    pub notify: Map<String, Value>,
    pub apps: BTreeMap<String, Override>,
}

impl AppsConfig {
    pub fn app(&self, name: &str) -> Override {
        self.apps.get(name).cloned().unwrap_or_default()
    }

    /// `BACKUPS_ROOT/<app>`.
    pub fn app_backups(&self, name: &str) -> PathBuf {
        self.backups_root.join(name)
    }

    pub fn keep_local(&self, name: &str) -> usize {
        self.app(name).keep_local.unwrap_or(self.keep_local)
    }

    pub fn media_paths(&self, name: &str) -> Vec<String> {
        self.app(name).media_paths.unwrap_or_else(|| self.media.paths.clone())
    }
}

/// Whether `name` is a plain app name: a folder name under APPS_ROOT and BACKUPS_ROOT, a word
/// in a crontab line. Letters, digits, `.`, `_`, `-`; not starting with `.` or `-`; at most 100.
pub fn check_app_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a plain app name (letters, digits, '.', '_', '-'; not starting with '.' or '-')",
            name.escape_debug()
        ))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn count(v: &Value) -> Result<usize, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| "must be a whole number, at least 1".into())
}

fn flag(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => ncb_core::params::parse_bool(s).ok_or_else(|| "must be true or false".into()),
        _ => Err("must be true or false".into()),
    }
}

fn paths(v: &Value) -> Result<Vec<String>, String> {
    let list: Vec<String> = match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(a) => {
            a.iter().map(|x| text(x).ok_or("must be a list of folder names")).collect::<Result<_, _>>()?
        }
        _ => return Err("must be a list of folders relative to the app's root".into()),
    };
    for p in &list {
        let rel = Path::new(p);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("'{p}' must be a folder inside the app's root (relative, without '..')"));
        }
    }
    Ok(list)
}

fn url(v: &Value) -> Result<String, String> {
    match text(v) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(u),
        _ => Err("must be an http:// or https:// URL".into()),
    }
}

/// Reads and checks the apps config. Err: every problem found.
pub fn load(path: &Path) -> Result<AppsConfig, Vec<Problem>> {
    let bad = |key: &str, message: String| Problem {
        key: if key.is_empty() { "file".into() } else { key.to_owned() },
        message,
    };
    let raw = std::fs::read(path).map_err(|e| vec![bad("", format!("cannot read: {e}"))])?;
    let root: Value = serde_json::from_slice(&raw).map_err(|e| vec![bad("", format!("not valid JSON: {e}"))])?;
    let Value::Object(top) = root else {
        return Err(vec![bad("", "must be a JSON object of settings (see docs/APPS.md)".into())]);
    };
    let mut problems = Vec::new();
    let mut c = AppsConfig {
        path: path.to_path_buf(),
        api_url: None,
        token_file: None,
        environment: None,
        api_timeout: Duration::from_secs(30),
        apps_root: PathBuf::from(DEFAULT_APPS_ROOT),
        backups_root: PathBuf::from(DEFAULT_BACKUPS_ROOT),
        keep_local: DEFAULT_KEEP_LOCAL,
        hostname: ncb_core::context::system_hostname(),
        crontab_user: None,
        log_folder: None,
        compression_level: None,
        sync: None,
        media: Media { paths: vec![DEFAULT_MEDIA_PATH.into()], target: MediaTarget::None },
        notify: Map::new(),
        apps: BTreeMap::new(),
    };
    for (k, v) in &top {
        if k.starts_with('_') {
            continue;
        }
        let mut problem = |m: String| problems.push(bad(k, m));
        let abs = |v: &Value| match text(v) {
            Some(p) if Path::new(&p).is_absolute() => Ok(PathBuf::from(p)),
            _ => Err("must be an absolute path".to_owned()),
        };
        match k.as_str() {
            "API_URL" => url(v).map(|u| c.api_url = Some(u)).unwrap_or_else(problem),
            "TOKEN_FILE" => abs(v).map(|p| c.token_file = Some(p)).unwrap_or_else(problem),
            "ENVIRONMENT" => match text(v) {
                Some(e) => c.environment = Some(e),
                None => problem("must be a name".into()),
            },
            "API_TIMEOUT" => match v.as_u64() {
                Some(s) if (1..=600).contains(&s) => c.api_timeout = Duration::from_secs(s),
                _ => problem("must be seconds, 1 to 600".into()),
            },
            "APPS_ROOT" => abs(v).map(|p| c.apps_root = p).unwrap_or_else(problem),
            "BACKUPS_ROOT" => abs(v).map(|p| c.backups_root = p).unwrap_or_else(problem),
            "LOG_FOLDER" => abs(v).map(|p| c.log_folder = Some(p)).unwrap_or_else(problem),
            "KEEP_LOCAL" => count(v).map(|n| c.keep_local = n).unwrap_or_else(problem),
            "HOSTNAME" => match text(v) {
                Some(h) => c.hostname = h,
                None => problem("must be a name".into()),
            },
            "CRONTAB_USER" => match text(v) {
                Some(u) => c.crontab_user = Some(u),
                None => problem("must be a user name".into()),
            },
            "COMPRESSION_LEVEL" => match v.as_u64() {
                Some(l) if (1..=9).contains(&l) => c.compression_level = Some(l.to_string()),
                _ => problem("must be 1 to 9".into()),
            },
            "SYNC" => match v {
                Value::Object(m) => c.sync = sync_params(m, &mut problems),
                _ => problem("must be an object of storage settings (DESTINATION, BUCKET_NAME, …)".into()),
            },
            "MEDIA" => match v {
                Value::Object(m) => c.media = media(m, &mut problems),
                _ => problem("must be an object (PATHS, DESTINATION, URL, TOKEN_FILE)".into()),
            },
            "NOTIFY" => match v {
                Value::Object(m) => c.notify = m.clone(),
                _ => problem("must be an object (see docs/CONFIG.md, NOTIFY)".into()),
            },
            "APPS" => match v {
                Value::Object(m) => {
                    for (name, body) in m {
                        let key = format!("APPS.{name}");
                        if let Err(e) = check_app_name(name) {
                            problems.push(bad(&key, e));
                        } else if let Value::Object(b) = body {
                            c.apps.insert(name.clone(), app_override(&key, b, &mut problems));
                        } else {
                            problems.push(bad(&key, "must be an object of settings".into()));
                        }
                    }
                }
                _ => problem("must be an object: app name -> settings".into()),
            },
            _ => problem(format!("unknown key (known: {})", KEYS.join(", "))),
        }
    }
    if matches!(c.media.target, MediaTarget::Sync) && c.sync.is_none() {
        problems.push(bad("MEDIA.DESTINATION", "is sync, but there is no SYNC section".into()));
    }
    if problems.is_empty() { Ok(c) } else { Err(problems) }
}

fn sync_params(m: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<Params> {
    let mut p = Params::new();
    for (k, v) in m {
        if k.starts_with('_') {
            continue;
        }
        let key = ncb_core::params::canonical_key(k);
        if matches!(key.as_str(), "OBJECTIVES" | "REMOVE_OBJECTIVES") {
            problems.push(Problem {
                key: format!("SYNC.{k}"),
                message: "is not a SYNC setting: SYNC stores BACKUPS_ROOT/<app>".into(),
            });
            continue;
        }
        if key != "KEY_FILE" && !storage::STAGE.params.iter().any(|s| s.key == key) {
            problems.push(Problem {
                key: format!("SYNC.{k}"),
                message: "unknown key (SYNC takes the storage stage's keys, and KEY_FILE)".into(),
            });
            continue;
        }
        match json_to_arg(v) {
            Ok(a) => p.set(&key, a),
            Err(e) => problems.push(Problem { key: format!("SYNC.{k}"), message: e }),
        }
    }
    match p.str("DESTINATION").map(str::to_ascii_lowercase).as_deref() {
        Some("s3" | "local" | "rclone") => {}
        _ => problems
            .push(Problem { key: "SYNC.DESTINATION".into(), message: "must be one of s3, local, rclone".into() }),
    }
    Some(p)
}

fn media(m: &Map<String, Value>, problems: &mut Vec<Problem>) -> Media {
    let mut out = Media { paths: vec![DEFAULT_MEDIA_PATH.into()], target: MediaTarget::None };
    let (mut dest, mut url_, mut token, mut attempts) = (None, None, None, 5u32);
    for (k, v) in m {
        if k.starts_with('_') {
            continue;
        }
        let key = format!("MEDIA.{k}");
        let mut problem = |message: String| problems.push(Problem { key: key.clone(), message });
        match k.as_str() {
            "PATHS" => paths(v).map(|p| out.paths = p).unwrap_or_else(problem),
            "DESTINATION" => match text(v).map(|s| s.to_ascii_lowercase()).as_deref() {
                Some(d @ ("http" | "sync" | "none")) => dest = Some(d.to_owned()),
                _ => problem("must be http, sync or none".into()),
            },
            "URL" => url(v).map(|u| url_ = Some(u)).unwrap_or_else(problem),
            "TOKEN_FILE" => match text(v) {
                Some(p) if Path::new(&p).is_absolute() => token = Some(PathBuf::from(p)),
                _ => problem("must be an absolute path".into()),
            },
            "ATTEMPTS" => match v.as_u64() {
                Some(n) if (1..=20).contains(&n) => attempts = n as u32,
                _ => problem("must be 1 to 20".into()),
            },
            _ => problem(format!("unknown key (known: {})", MEDIA_KEYS.join(", "))),
        }
    }
    let dest = dest.unwrap_or_else(|| if url_.is_some() { "http".into() } else { "none".into() });
    out.target = match dest.as_str() {
        "http" => match url_ {
            Some(url) => MediaTarget::Http { url, token_file: token, attempts },
            None => {
                problems.push(Problem { key: "MEDIA.URL".into(), message: "is required for DESTINATION http".into() });
                MediaTarget::None
            }
        },
        "sync" => MediaTarget::Sync,
        _ => MediaTarget::None,
    };
    out
}

fn app_override(key: &str, b: &Map<String, Value>, problems: &mut Vec<Problem>) -> Override {
    let mut o = Override::default();
    for (k, v) in b {
        if k.starts_with('_') {
            continue;
        }
        let key = format!("{key}.{k}");
        let mut problem = |message: String| problems.push(Problem { key: key.clone(), message });
        match k.as_str() {
            "ENV_FILE" => match paths(v) {
                Ok(p) if p.len() == 1 => o.env_file = p.into_iter().next(),
                Ok(_) => problem("must be one file inside the app's root".into()),
                Err(e) => problem(e),
            },
            "MEDIA_PATHS" => paths(v).map(|p| o.media_paths = Some(p)).unwrap_or_else(problem),
            "KEEP_LOCAL" => count(v).map(|n| o.keep_local = Some(n)).unwrap_or_else(problem),
            "SKIP_MEDIA" => flag(v).map(|f| o.skip_media = f).unwrap_or_else(problem),
            "SKIP_SYNC" => flag(v).map(|f| o.skip_sync = f).unwrap_or_else(problem),
            _ => problem(format!("unknown key (known: {})", APP_KEYS.join(", "))),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<AppsConfig, Vec<Problem>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("apps.json");
        std::fs::write(&p, text).unwrap();
        load(&p)
    }

    #[test]
    fn defaults_are_the_seeds_layout() {
        let c = load_text(r#"{"API_URL": "http://127.0.0.1:1/apps"}"#).unwrap();
        assert_eq!(c.apps_root, Path::new(DEFAULT_APPS_ROOT));
        assert_eq!(c.backups_root, Path::new(DEFAULT_BACKUPS_ROOT));
        assert_eq!(c.media_paths("x"), vec![DEFAULT_MEDIA_PATH.to_owned()]);
        assert_eq!(c.media.target, MediaTarget::None);
    }

    #[test]
    fn every_problem_is_named_by_its_key_path() {
        let e = load_text(
            r#"{"API_URL": "ftp://x", "KEEP_LOCAL": 0, "BOGUS": 1, "SYNC": {"DESTINATION": "tape", "OBJECTIVES": "/x"},
                "MEDIA": {"PATHS": ["../etc"], "DESTINATION": "sync"},
                "APPS": {"../evil": {}, "shop": {"KEEP_LOCAL": "many", "COLOUR": 1}}}"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "API_URL",
            "KEEP_LOCAL",
            "BOGUS",
            "SYNC.DESTINATION",
            "SYNC.OBJECTIVES",
            "MEDIA.PATHS",
            "APPS.../evil",
            "APPS.shop.KEEP_LOCAL",
            "APPS.shop.COLOUR",
        ] {
            assert!(keys.contains(&k), "{k} not reported: {e:?}");
        }
    }

    #[test]
    fn app_names_must_be_plain() {
        for ok in ["shop", "project_1", "a.b-c"] {
            assert!(check_app_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a b", ".hidden", "-rf", "a/b", "x\n", "é"] {
            assert!(check_app_name(bad).is_err(), "{bad:?}");
        }
    }
}
