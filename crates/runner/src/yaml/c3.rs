//! C3's config.yaml (seeds/001): `input` (path, file-extensions), `target` (max-uploaded-file,
//! max-download-file, provider.aws region / bucket-name / storage-policy) and `job`
//! (job-description, runtime.at [{second}, {minute}, {hour}]). It becomes one job, `upload`: a
//! storage section with LAYOUT files (each file its own object, never sent twice) from
//! input.path to the bucket's root; `backup-runner c3 -d` schedules the download the same way.
//! An S3-compatible endpoint comes from AWS_ENDPOINT_URL (the AWS SDKs' variable).

use std::path::Path;

use serde_json::{Value as J, json};
use yaml_serde::Value as Y;

use super::{Job, Seg, problem};
use crate::config::ConfigProblem;

/// C3's storage policies (the S3 storage classes it lists); passed through as given.
pub const POLICIES: [&str; 8] = [
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
];

/// What C3's config says, checked.
#[derive(Debug, Clone)]
pub struct C3 {
    pub input: String,
    pub extensions: Vec<String>,
    pub max_upload: Option<u64>,
    pub max_download: Option<u64>,
    pub region: String,
    pub bucket: String,
    pub policy: String,
    pub schedule: String,
    pub description: Option<String>,
}

fn k(s: &str) -> Seg {
    Seg::Key(s.into())
}

fn scalar(v: &Y) -> Option<String> {
    match v {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn read(config: &Path, text: &str, root: &Y) -> Result<C3, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut bad = |path: &[Seg], m: String| problems.push(problem(text, path, m));
    let check_keys = |v: &Y, path: &[Seg], allowed: &[&str], bad: &mut dyn FnMut(&[Seg], String)| match v {
        Y::Mapping(m) => {
            for key in m.keys() {
                let name = key.as_str().unwrap_or("?");
                if !allowed.contains(&name) {
                    let mut p = path.to_vec();
                    p.push(k(name));
                    bad(&p, format!("unknown key (known: {})", allowed.join(", ")));
                }
            }
        }
        _ => bad(path, "must be a mapping".into()),
    };
    check_keys(root, &[], &["input", "target", "job"], &mut bad);
    let get = |path: &[&str]| -> Option<&Y> {
        let mut v = root;
        for p in path {
            v = v.get(*p)?;
        }
        Some(v)
    };
    let segs = |path: &[&str]| path.iter().map(|p| k(p)).collect::<Vec<_>>();
    if let Some(v) = get(&["input"]) {
        check_keys(v, &segs(&["input"]), &["path", "file-extensions"], &mut bad);
    }
    if let Some(v) = get(&["target"]) {
        check_keys(v, &segs(&["target"]), &["max-uploaded-file", "max-download-file", "provider"], &mut bad);
    }
    if let Some(v) = get(&["target", "provider"]) {
        check_keys(v, &segs(&["target", "provider"]), &["aws"], &mut bad);
    }
    if let Some(v) = get(&["target", "provider", "aws"]) {
        check_keys(
            v,
            &segs(&["target", "provider", "aws"]),
            &["region", "bucket-name", "storage-policy", "storage-class"],
            &mut bad,
        );
    }
    if let Some(v) = get(&["job"]) {
        check_keys(v, &segs(&["job"]), &["job-description", "runtime"], &mut bad);
    }
    let text_at = |path: &[&str], bad: &mut dyn FnMut(&[Seg], String)| -> Option<String> {
        match get(path) {
            Some(v) => match scalar(v) {
                Some(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                _ => {
                    bad(&segs(path), "must be a non-empty string".into());
                    None
                }
            },
            None => {
                bad(&segs(path), "is missing".into());
                None
            }
        }
    };
    let input = text_at(&["input", "path"], &mut bad);
    let region = text_at(&["target", "provider", "aws", "region"], &mut bad);
    let bucket = text_at(&["target", "provider", "aws", "bucket-name"], &mut bad);
    let policy = match get(&["target", "provider", "aws", "storage-policy"])
        .or_else(|| get(&["target", "provider", "aws", "storage-class"]))
    {
        Some(v) => match scalar(v) {
            Some(p) if POLICIES.contains(&p.as_str()) => p,
            other => {
                bad(
                    &segs(&["target", "provider", "aws", "storage-policy"]),
                    format!(
                        "{:?} is not one of {} (case matters, as in C3)",
                        other.unwrap_or_default(),
                        POLICIES.join(", ")
                    ),
                );
                String::new()
            }
        },
        None => "STANDARD".into(),
    };
    let mut extensions = Vec::new();
    match get(&["input", "file-extensions"]) {
        None | Some(Y::Null) => {}
        Some(Y::Sequence(items)) => {
            for (i, x) in items.iter().enumerate() {
                match scalar(x) {
                    Some(e) if e.starts_with('.') && e.len() > 1 => extensions.push(e),
                    _ => bad(
                        &[k("input"), k("file-extensions"), Seg::Index(i)],
                        "must be an extension like '.jpg'".into(),
                    ),
                }
            }
        }
        Some(_) => bad(&segs(&["input", "file-extensions"]), "must be a list like ['.jpg', '.png']".into()),
    }
    let cap = |key: &str, bad: &mut dyn FnMut(&[Seg], String)| -> Option<u64> {
        match get(&["target", key]) {
            None | Some(Y::Null) => None,
            Some(Y::String(s)) if s == "None" => None,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(n),
                _ => {
                    bad(&segs(&["target", key]), "must be a whole number above 0, or empty (no limit)".into());
                    None
                }
            },
        }
    };
    let max_upload = cap("max-uploaded-file", &mut bad);
    let max_download = cap("max-download-file", &mut bad);
    // job.runtime.at: a list of one-key mappings (second, minute, hour), C3's schedule.
    let (mut minute, mut hour) = (None, None);
    match get(&["job", "runtime", "at"]) {
        Some(Y::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = [k("job"), k("runtime"), k("at"), Seg::Index(i)];
                let Y::Mapping(m) = item else {
                    bad(&p, "must be second: N, minute: N or hour: N".into());
                    continue;
                };
                for (key, v) in m {
                    let n = v.as_u64();
                    match (key.as_str(), n) {
                        (Some("second"), Some(s)) if s < 60 => {}
                        (Some("minute"), Some(m)) if m < 60 => minute = Some(m),
                        (Some("hour"), Some(h)) if h < 24 => hour = Some(h),
                        (Some(name @ ("second" | "minute" | "hour")), _) => {
                            let mut pp = p.to_vec();
                            pp.push(k(name));
                            bad(&pp, "is out of range".into());
                        }
                        (name, _) => {
                            let mut pp = p.to_vec();
                            pp.push(k(name.unwrap_or("?")));
                            bad(&pp, "unknown key (known: second, minute, hour)".into());
                        }
                    }
                }
            }
        }
        None => bad(&segs(&["job", "runtime", "at"]), "is missing".into()),
        Some(_) => {
            bad(&segs(&["job", "runtime", "at"]), "must be a list: [{second: 1}, {minute: 10}, {hour: 2}]".into())
        }
    }
    let schedule = match (minute, hour) {
        (Some(m), Some(h)) => format!("{m} {h} * * *"),
        (Some(m), None) => format!("{m} * * * *"),
        (None, Some(h)) => format!("0 {h} * * *"),
        (None, None) => "@daily".into(),
    };
    let description = get(&["job", "job-description"]).and_then(scalar);
    if !problems.is_empty() {
        return Err(problems);
    }
    let input = input.unwrap_or_default();
    let dir = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let abs = if Path::new(&input).is_absolute() { input } else { dir.join(&input).display().to_string() };
    Ok(C3 {
        input: abs,
        extensions,
        max_upload,
        max_download,
        region: region.unwrap_or_default(),
        bucket: bucket.unwrap_or_default(),
        policy,
        schedule,
        description,
    })
}

/// The storage parameters of C3's bucket, for uploads and downloads.
pub fn storage_params(c: &C3) -> serde_json::Map<String, J> {
    let mut p = serde_json::Map::new();
    p.insert("DESTINATION".into(), "s3".into());
    p.insert("BUCKET_NAME".into(), c.bucket.clone().into());
    p.insert("REGION".into(), c.region.clone().into());
    p.insert("STORAGE_CLASS".into(), c.policy.clone().into());
    p.insert("LAYOUT".into(), "files".into());
    p.insert("PREFIX".into(), "/".into());
    if let Some(e) = std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty()) {
        p.insert("ENDPOINT_URL".into(), e.into());
    }
    if !c.extensions.is_empty() {
        p.insert("FILE_EXTENSIONS".into(), J::Array(c.extensions.iter().cloned().map(J::String).collect()));
    }
    p
}

pub fn jobs(config: &Path, text: &str, root: &Y) -> Result<Vec<Job>, Vec<ConfigProblem>> {
    let c = read(config, text, root)?;
    let work_base = std::env::var("NC_BACKUP_WORK_FOLDER").unwrap_or_else(|_| "/var/tmp/nc-backup/c3".into());
    let log = std::env::var("NC_BACKUP_LOG_FOLDER").unwrap_or_else(|_| "/var/log/nc-backup".into());
    let mut params = storage_params(&c);
    params.insert("OBJECTIVES".into(), c.input.clone().into());
    if let Some(n) = c.max_upload {
        params.insert("MAX_UPLOAD_FILES".into(), n.to_string().into());
    }
    let conf = json!({
        "GENERAL": {"HOSTNAME": ncb_core::context::system_hostname(), "WORK_FOLDER": format!("{work_base}/{}", c.bucket),
                    "LOG_FOLDER": log, "_FROM": format!("{} (C3) {}", config.display(), c.description.clone().unwrap_or_default())},
        "UPLOAD": {"ACTION": "execute", "NAME": "storage", "PARAMETERS": params},
    });
    Ok(vec![Job { id: "upload".into(), conf, intervals: vec![c.schedule.clone()], secrets: Vec::new() }])
}
