//! seeds/000's config.yaml: `PROJECTS[]` with `NAME` and `BACKUPS[]`, each backup a
//! `FILE_BACKUP` (FILE_PATH, INTERVALS, UPLOAD_TO [{STORAGE_NAME, PATH}], SSH {USERNAME,
//! IP_ADDRESS}) or `DB_BACKUPS` (DB_INFO {USERNAME, PASSWORD, PORT, NAME, HOST}, DOCKER
//! {CONTAINER_NAME}, INTERVALS, UPLOAD_TO, SSH). A backup's body may be a mapping or, as the
//! seed's README writes it, a list of one-key mappings. Each backup becomes one job,
//! `<NAME>/<n>` (n counts the project's BACKUPS from 1): a conf.json of a dump or file section
//! and one storage section per UPLOAD_TO entry. Storage settings and credentials come from the
//! `.env` beside the config (docs/YAML.md lists its keys).

use std::path::Path;

use serde_json::{Value as J, json};
use yaml_serde::Value as Y;

use super::{Job, Seg, problem};
use crate::config::ConfigProblem;

const FILE_KEYS: [&str; 4] = ["FILE_PATH", "INTERVALS", "UPLOAD_TO", "SSH"];
const DB_KEYS: [&str; 5] = ["DB_INFO", "DOCKER", "INTERVALS", "UPLOAD_TO", "SSH"];
const DB_INFO_KEYS: [&str; 7] = ["USERNAME", "PASSWORD", "PASSWORD_FILE", "PORT", "NAME", "HOST", "TYPE"];

struct Ctx<'a> {
    text: &'a str,
    env: &'a [(String, String)],
    problems: Vec<ConfigProblem>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn bad(&mut self, path: &[Seg], msg: impl Into<String>) {
        self.problems.push(problem(self.text, path, msg));
    }

    fn env(&self, k: &str) -> Option<String> {
        self.env.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty())
    }
}

fn with(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

fn key(path: &[Seg], k: &str) -> Vec<Seg> {
    with(path, Seg::Key(k.into()))
}

/// A scalar as text (strings, numbers); None for anything else.
fn scalar(v: &Y) -> Option<String> {
    match v {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping, or a list of one-key mappings merged into one (the seed's README style).
fn body(c: &mut Ctx, v: &Y, path: &[Seg], allowed: &[&str]) -> Option<yaml_serde::Mapping> {
    let mut out = yaml_serde::Mapping::new();
    let mut add = |c: &mut Ctx, m: &yaml_serde::Mapping, path: &[Seg]| {
        for (k, v) in m {
            let Some(k) = k.as_str() else {
                c.bad(path, "keys must be names");
                continue;
            };
            if !allowed.contains(&k) {
                c.bad(&key(path, k), format!("unknown key (known: {})", allowed.join(", ")));
            } else if out.contains_key(k) {
                c.bad(&key(path, k), "given twice");
            } else {
                out.insert(Y::String(k.into()), v.clone());
            }
        }
    };
    match v {
        Y::Mapping(m) => add(c, m, path),
        Y::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Y::Mapping(m) => add(c, m, &with(path, Seg::Index(i))),
                    _ => c.bad(&with(path, Seg::Index(i)), "must be a KEY: value mapping"),
                }
            }
        }
        Y::Null => {}
        _ => {
            c.bad(path, "must be a mapping of settings");
            return None;
        }
    }
    Some(out)
}

fn strings(c: &mut Ctx, v: Option<&Y>, path: &[Seg]) -> Vec<String> {
    match v {
        None | Some(Y::Null) => Vec::new(),
        Some(Y::Sequence(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, x)| {
                let s = scalar(x);
                if s.is_none() {
                    c.bad(&with(path, Seg::Index(i)), "must be a string");
                }
                s
            })
            .collect(),
        Some(x) => match scalar(x) {
            Some(s) => vec![s],
            None => {
                c.bad(path, "must be a string or a list of strings");
                Vec::new()
            }
        },
    }
}

fn sub(c: &mut Ctx, m: &yaml_serde::Mapping, path: &[Seg], k: &str, allowed: &[&str]) -> Option<yaml_serde::Mapping> {
    let v = m.get(k)?;
    body(c, v, &key(path, k), allowed)
}

fn text_of(c: &mut Ctx, m: &yaml_serde::Mapping, path: &[Seg], k: &str, required: bool) -> Option<String> {
    match m.get(k) {
        Some(v) => match scalar(v) {
            Some(s) if !s.trim().is_empty() => Some(s),
            _ => {
                c.bad(&key(path, k), "must be a non-empty string");
                None
            }
        },
        None if required => {
            c.bad(path, format!("{k} is missing"));
            None
        }
        None => None,
    }
}

/// SSH {USERNAME, IP_ADDRESS} → the transport parameters (port, key, known hosts from .env).
fn ssh(c: &mut Ctx, m: &yaml_serde::Mapping, path: &[Seg], params: &mut serde_json::Map<String, J>) {
    let Some(s) = sub(c, m, path, "SSH", &["USERNAME", "IP_ADDRESS"]) else { return };
    let p = key(path, "SSH");
    if let Some(host) = text_of(c, &s, &p, "IP_ADDRESS", true) {
        params.insert("SSH_HOST".into(), host.into());
    }
    if let Some(u) = text_of(c, &s, &p, "USERNAME", false) {
        params.insert("SSH_USER".into(), u.into());
    }
    for k in ["SSH_PORT", "SSH_KEY", "SSH_KNOWN_HOSTS"] {
        if let Some(v) = c.env(k) {
            params.insert(k.into(), v.into());
        }
    }
}

/// One storage section per UPLOAD_TO entry.
fn uploads(c: &mut Ctx, m: &yaml_serde::Mapping, path: &[Seg], objectives: &str) -> Vec<(String, J)> {
    let p = key(path, "UPLOAD_TO");
    let items = match m.get("UPLOAD_TO") {
        Some(Y::Sequence(items)) if !items.is_empty() => items.clone(),
        Some(_) => {
            c.bad(&p, "must be a list of {STORAGE_NAME, PATH}");
            return Vec::new();
        }
        None => {
            c.bad(path, "UPLOAD_TO is missing: the backup would go nowhere");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let n = items.len();
    for (i, item) in items.iter().enumerate() {
        let ip = with(&p, Seg::Index(i));
        let Some(b) = body(c, item, &ip, &["STORAGE_NAME", "PATH"]) else { continue };
        let (Some(name), path_) = (text_of(c, &b, &ip, "STORAGE_NAME", true), text_of(c, &b, &ip, "PATH", false))
        else {
            continue;
        };
        let dest_path = path_.clone().unwrap_or_default().trim_matches('/').to_owned();
        let mut params = serde_json::Map::new();
        params.insert("OBJECTIVES".into(), objectives.into());
        if i + 1 == n {
            params.insert("REMOVE_OBJECTIVES".into(), "True".into());
        }
        match name.to_ascii_uppercase().as_str() {
            "S3" => {
                params.insert("DESTINATION".into(), "s3".into());
                match c.env("S3_BUCKET_NAME").or_else(|| c.env("BUCKET_NAME")) {
                    Some(b) => {
                        params.insert("BUCKET_NAME".into(), b.into());
                    }
                    None => c.bad(&key(&ip, "STORAGE_NAME"), "S3 needs S3_BUCKET_NAME in the .env beside the config"),
                }
                if let Some(r) = c.env("AWS_REGION").or_else(|| c.env("AWS_DEFAULT_REGION")) {
                    params.insert("REGION".into(), r.into());
                }
                if let Some(e) = c.env("S3_ENDPOINT_URL") {
                    params.insert("ENDPOINT_URL".into(), e.into());
                }
                if let Some(sc) = c.env("S3_STORAGE_CLASS") {
                    params.insert("STORAGE_CLASS".into(), sc.into());
                }
                params.insert("PREFIX".into(), dest_path.into());
            }
            "ONEDRIVE" => {
                let remote = c.env("ONEDRIVE_REMOTE").unwrap_or_else(|| "onedrive".into());
                params.insert("DESTINATION".into(), "rclone".into());
                let rpath = path_.as_deref().unwrap_or("").trim_end_matches('/');
                params.insert("RCLONE_REMOTE".into(), format!("{remote}:{rpath}").into());
                params.insert("PREFIX".into(), "".into());
                if let Some(rc) = c.env("RCLONE_CONFIG") {
                    params.insert("RCLONE_CONFIG".into(), rc.into());
                }
            }
            "LOCAL" => {
                params.insert("DESTINATION".into(), "local".into());
                params.insert("PATH".into(), format!("/{dest_path}").into());
                params.insert("PREFIX".into(), "".into());
            }
            other => {
                c.bad(&key(&ip, "STORAGE_NAME"), format!("'{other}' is not S3, ONEDRIVE or LOCAL"));
                continue;
            }
        }
        out.push((
            format!("UPLOAD_{}_{}", i + 1, name.to_ascii_uppercase()),
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": params}),
        ));
    }
    out
}

fn intervals(c: &mut Ctx, m: &yaml_serde::Mapping, path: &[Seg]) -> Vec<String> {
    let p = key(path, "INTERVALS");
    let list = strings(c, m.get("INTERVALS"), &p);
    if list.is_empty() {
        c.bad(path, "INTERVALS is missing: the backup would never run");
    }
    for (i, expr) in list.iter().enumerate() {
        if let Err(e) = crate::schedule::validate(expr) {
            c.bad(&with(&p, Seg::Index(i)), format!("'{expr}': {e}"));
        }
    }
    list
}

pub fn jobs(config: &Path, text: &str, root: &Y, env: &[(String, String)]) -> Result<Vec<Job>, Vec<ConfigProblem>> {
    let mut c = Ctx { text, env, problems: Vec::new(), warnings: Vec::new() };
    let mut jobs = Vec::new();
    let top = [Seg::Key("PROJECTS".into())];
    if let Y::Mapping(m) = root {
        for (k, _) in m {
            if k.as_str() != Some("PROJECTS") {
                let name = k.as_str().unwrap_or("?").to_owned();
                c.bad(&[Seg::Key(name)], "unknown key (a seeds/000 config has PROJECTS only)");
            }
        }
    }
    let projects = match root.get("PROJECTS") {
        Some(Y::Sequence(p)) => p.clone(),
        _ => {
            c.bad(&top, "must be a list of projects (- NAME: …)");
            return Err(c.problems);
        }
    };
    let hostname = ncb_core::context::system_hostname();
    let work_base = c.env("NC_BACKUP_WORK_FOLDER").unwrap_or_else(|| "/var/tmp/nc-backup/yaml".into());
    let log = c.env("NC_BACKUP_LOG_FOLDER").unwrap_or_else(|| "/var/log/nc-backup".into());
    let key_file = c.env("NC_BACKUP_KEY_FILE");
    for (pi, project) in projects.iter().enumerate() {
        let pp = with(&top, Seg::Index(pi));
        let Some(pm) = body(&mut c, project, &pp, &["NAME", "BACKUPS"]) else { continue };
        let Some(name) = text_of(&mut c, &pm, &pp, "NAME", true) else { continue };
        if !name.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)) || name.starts_with(['.', '-']) {
            c.bad(&key(&pp, "NAME"), format!("'{name}' is not a plain name (letters, digits, '.', '_', '-')"));
            continue;
        }
        let bp = key(&pp, "BACKUPS");
        let backups = match pm.get("BACKUPS") {
            Some(Y::Sequence(b)) => b.clone(),
            _ => {
                c.bad(&bp, "must be a list of FILE_BACKUP / DB_BACKUPS");
                continue;
            }
        };
        for (bi, backup) in backups.iter().enumerate() {
            let ip = with(&bp, Seg::Index(bi));
            let Y::Mapping(bm) = backup else {
                c.bad(&ip, "must be FILE_BACKUP: or DB_BACKUPS:");
                continue;
            };
            let id = format!("{name}/{}", bi + 1);
            let work = format!("{work_base}/{name}-{}", bi + 1);
            let out = format!("{work}/out");
            let mut sections: Vec<(String, J)> = Vec::new();
            let mut secrets = Vec::new();
            let (kind, v) = match bm.iter().next() {
                Some((k, v)) if bm.len() == 1 => (k.as_str().unwrap_or("").to_owned(), v),
                _ => {
                    c.bad(&ip, "must hold exactly one of FILE_BACKUP, DB_BACKUPS");
                    continue;
                }
            };
            let kp = key(&ip, &kind);
            let body_m = match kind.as_str() {
                "FILE_BACKUP" => body(&mut c, v, &kp, &FILE_KEYS),
                "DB_BACKUPS" => body(&mut c, v, &kp, &DB_KEYS),
                other => {
                    c.bad(&kp, format!("'{other}' is not FILE_BACKUP or DB_BACKUPS"));
                    None
                }
            };
            let Some(b) = body_m else { continue };
            let every = intervals(&mut c, &b, &kp);
            if kind == "FILE_BACKUP" {
                let paths = strings(&mut c, b.get("FILE_PATH"), &key(&kp, "FILE_PATH"));
                if paths.is_empty() {
                    c.bad(&kp, "FILE_PATH is missing: nothing to back up");
                }
                let mut params = serde_json::Map::new();
                params.insert("FILESET_INCLUDE".into(), J::Array(paths.into_iter().map(J::String).collect()));
                params.insert("DESTINATION".into(), out.clone().into());
                ssh(&mut c, &b, &kp, &mut params);
                sections
                    .push(("FILES".into(), json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": params})));
            } else {
                let ip2 = key(&kp, "DB_INFO");
                let Some(info) = sub(&mut c, &b, &kp, "DB_INFO", &DB_INFO_KEYS) else {
                    c.bad(&kp, "DB_INFO is missing");
                    continue;
                };
                let port = text_of(&mut c, &info, &ip2, "PORT", false);
                let engine = match text_of(&mut c, &info, &ip2, "TYPE", false).map(|t| t.to_ascii_lowercase()) {
                    Some(t) if t == "postgres" || t == "postgresql" => "pg-dump",
                    Some(t) if t == "mysql" || t == "mariadb" => "mysql-dump",
                    Some(t) => {
                        c.bad(&key(&ip2, "TYPE"), format!("'{t}' is not postgres or mysql"));
                        "pg-dump"
                    }
                    None if port.as_deref() == Some("3306") => "mysql-dump",
                    None => "pg-dump",
                };
                let mut params = serde_json::Map::new();
                for (yk, pk) in [("HOST", "HOST"), ("USERNAME", "USER"), ("NAME", "DATABASES")] {
                    if let Some(v) = text_of(&mut c, &info, &ip2, yk, yk == "NAME") {
                        params.insert(pk.into(), v.into());
                    }
                }
                if let Some(p) = &port {
                    if p.parse::<u16>().is_err() {
                        c.bad(&key(&ip2, "PORT"), format!("'{p}' is not a port number"));
                    }
                    params.insert("PORT".into(), p.clone().into());
                }
                match (
                    text_of(&mut c, &info, &ip2, "PASSWORD", false),
                    text_of(&mut c, &info, &ip2, "PASSWORD_FILE", false),
                ) {
                    (Some(_), Some(_)) => c.bad(&ip2, "give PASSWORD or PASSWORD_FILE, not both"),
                    (Some(pw), None) => {
                        c.warnings.push(format!(
                            "{}: {} holds a PASSWORD: it never reaches argv, but a 0600 PASSWORD_FILE keeps it out of the config",
                            config.display(),
                            super::path_text(&ip2)
                        ));
                        params.insert("PASSWORD".into(), pw.into());
                        secrets.push("/DATABASE/PARAMETERS/PASSWORD".to_owned());
                    }
                    (None, Some(f)) => match ncb_dbdump::check_private(Path::new(&f), "PASSWORD_FILE").and_then(|()| {
                        std::fs::read_to_string(&f).map_err(|e| ncb_core::Error::path("cannot read", Path::new(&f), e))
                    }) {
                        Ok(pw) => {
                            params.insert("PASSWORD".into(), pw.trim_end_matches(['\n', '\r']).to_owned().into());
                            secrets.push("/DATABASE/PARAMETERS/PASSWORD".to_owned());
                        }
                        Err(e) => c.bad(&key(&ip2, "PASSWORD_FILE"), e.to_string()),
                    },
                    (None, None) => {}
                }
                params.insert("DESTINATION".into(), out.clone().into());
                if let Some(d) = sub(&mut c, &b, &kp, "DOCKER", &["CONTAINER_NAME"])
                    && let Some(n) = text_of(&mut c, &d, &key(&kp, "DOCKER"), "CONTAINER_NAME", true)
                {
                    params.insert("DOCKER_CONTAINER".into(), n.into());
                    let cli = c
                        .env("CONTAINER_CLI")
                        .unwrap_or_else(|| if which("docker") { "docker".into() } else { "podman".into() });
                    params.insert("CONTAINER_CLI".into(), cli.into());
                }
                ssh(&mut c, &b, &kp, &mut params);
                sections.push(("DATABASE".into(), json!({"ACTION": "execute", "NAME": engine, "PARAMETERS": params})));
            }
            let mut objectives = out.clone();
            if let Some(k) = &key_file {
                let enc = format!("{work}/encrypted");
                sections.push((
                    "ENCRYPTION".into(),
                    json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                        "KEY_FILE": k, "OBJECTIVES": out, "DESTINATION": enc, "REMOVE_OBJECTIVES": "True"}}),
                ));
                objectives = enc;
            }
            sections.extend(uploads(&mut c, &b, &kp, &objectives));
            let mut conf = serde_json::Map::new();
            conf.insert(
                "GENERAL".into(),
                json!({"HOSTNAME": hostname, "WORK_FOLDER": work, "LOG_FOLDER": log,
                       "_FROM": format!("{} job {id}", config.display())}),
            );
            for (k, v) in sections {
                conf.insert(k, v);
            }
            jobs.push(Job { id, conf: J::Object(conf), intervals: every, secrets });
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    for w in &c.warnings {
        log::warn!("{w}");
    }
    Ok(jobs)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
