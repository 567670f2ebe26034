//! Config front-ends for the YAML files of the neighbouring tools, each in its own module,
//! each translating into the one internal model, a conf.json document, so that every command
//! (`-r`, `--check`, `--dry-run`, `runs`, `verify`, `restore`, `schedule`) works on them
//! unchanged and `backup-runner convert` can print what they mean.
//!
//! - [`c3`]: seeds/001, C3 (`input:`, `target:`, `job:` — a folder's files with an extension
//!   filter, each its own object in an S3 bucket and storage class, never uploaded twice);
//! - [`projects`]: seeds/000 (`PROJECTS:` — projects, each with file and database backups on
//!   several cron intervals, uploaded to several storages, locally, over SSH or in a container).
//!
//! A YAML file is recognised by its name (`.yaml`, `.yml`) and its top-level keys.

pub mod c3;
pub mod projects;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::ConfigProblem;

/// `--job PROJECT/N`: which job of a multi-job YAML file this invocation is about.
pub static SELECTED_JOB: OnceLock<String> = OnceLock::new();

/// One runnable job of a YAML file: its id, its conf.json, its cron intervals.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub conf: serde_json::Value,
    pub intervals: Vec<String>,
    /// Secrets of the conf, by JSON pointer, masked when the conf is printed.
    pub secrets: Vec<String>,
}

pub fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// One step of a key path: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn path_text(path: &[Seg]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The line (1-based) of a key path in block-style YAML: each key is looked for below its
/// parent, deeper indented; each index counts the parent's `- ` items.
pub fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut parent_col: Option<usize> = None;
    // Content column and text of a line after any `- ` markers.
    let body = |l: &str| {
        let mut col = l.len() - l.trim_start().len();
        let mut rest = l.trim_start();
        while let Some(r) = rest.strip_prefix("- ") {
            col += 2 + (r.len() - r.trim_start().len());
            rest = r.trim_start();
        }
        (col, rest.to_owned())
    };
    // Inside a flow collection (`[a, b]`, `{K: v}`) every step stays on that line.
    let mut flow = false;
    for seg in path {
        if flow {
            continue;
        }
        if parent_col.is_some() {
            let l = lines.get(start).copied().unwrap_or("");
            let after = l.split_once(':').map_or("", |(_, r)| r).trim_start();
            if after.starts_with('[')
                || after.starts_with('{')
                || l.trim_start().trim_start_matches("- ").starts_with('{')
            {
                flow = true;
                continue;
            }
        }
        match seg {
            Seg::Key(k) => {
                let mut found = None;
                for (i, l) in lines.iter().enumerate().skip(start) {
                    let t = l.trim_start();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let (col, rest) = body(l);
                    if i > start && parent_col.is_some_and(|p| l.len() - t.len() <= p && !t.starts_with("- ")) {
                        break;
                    }
                    let key = rest.split(':').next().unwrap_or("").trim().trim_matches(['"', '\'']);
                    if key == k && rest.contains(':') && parent_col.is_none_or(|p| col > p || i == start) {
                        found = Some((i, col));
                        break;
                    }
                }
                let (i, col) = found?;
                start = i;
                parent_col = Some(col);
            }
            Seg::Index(n) => {
                let mut seen = 0usize;
                let mut item_col = None;
                let mut found = None;
                for (i, l) in lines.iter().enumerate().skip(start + 1) {
                    let t = l.trim_start();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let indent = l.len() - t.len();
                    if parent_col.is_some_and(|p| indent < p) || (parent_col == Some(indent) && !t.starts_with("- ")) {
                        break;
                    }
                    if t.starts_with("- ") || t == "-" {
                        if item_col.is_none() {
                            item_col = Some(indent);
                        }
                        if item_col == Some(indent) {
                            if seen == *n {
                                found = Some((i, indent));
                                break;
                            }
                            seen += 1;
                        }
                    }
                }
                let (i, col) = found?;
                start = i;
                parent_col = Some(col);
            }
        }
    }
    Some(start + 1)
}

/// A problem at a key path, with its line when it can be found.
pub fn problem(text: &str, path: &[Seg], message: impl Into<String>) -> ConfigProblem {
    let at = path_text(path);
    let message = message.into();
    match locate(text, path) {
        Some(line) => ConfigProblem::new(None, Some(&format!("{at} (line {line})")), message),
        None => ConfigProblem::new(None, Some(&at), message),
    }
}

/// Parses the YAML text; a syntax error (a tab, bad indentation) names its line and column.
pub fn parse(text: &str) -> Result<yaml_serde::Value, Vec<ConfigProblem>> {
    yaml_serde::from_str(text).map_err(|e| {
        let at = e.location().map(|l| format!(" (line {}, column {})", l.line(), l.column())).unwrap_or_default();
        vec![ConfigProblem::new(None, None, format!("invalid YAML{at}: {e}"))]
    })
}

/// The `.env` beside a YAML config (seeds/000 keeps storage credentials there): its
/// variables, when it exists; it must be 0600.
pub fn dotenv_beside(config: &Path) -> Result<Vec<(String, String)>, ConfigProblem> {
    let path: PathBuf = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(".env");
    if !path.exists() {
        return Ok(Vec::new());
    }
    ncb_dbdump::check_private(&path, "the .env beside the config")
        .map_err(|e| ConfigProblem::new(None, None, e.to_string()))?;
    let iter = dotenvy::from_path_iter(&path)
        .map_err(|e| ConfigProblem::new(None, None, format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for item in iter {
        out.push(item.map_err(|e| ConfigProblem::new(None, None, format!("{}: {e}", path.display())))?);
    }
    Ok(out)
}

/// Every job of a YAML config, recognised by its top-level keys.
pub fn jobs(path: &Path, text: &str) -> Result<Vec<Job>, Vec<ConfigProblem>> {
    let root = parse(text)?;
    let env = dotenv_beside(path).map_err(|e| vec![e])?;
    match &root {
        yaml_serde::Value::Mapping(m) if m.contains_key("PROJECTS") => projects::jobs(path, text, &root, &env),
        yaml_serde::Value::Mapping(m) if m.contains_key("input") || m.contains_key("target") => {
            c3::jobs(path, text, &root)
        }
        _ => Err(vec![ConfigProblem::new(
            None,
            None,
            "a YAML config must have PROJECTS (seeds/000) or input/target/job (C3, seeds/001) at the top; see docs/YAML.md",
        )]),
    }
}

/// The conf.json text of the job this invocation is about (`--job`, or the only one).
pub fn selected(path: &Path, text: &str) -> Result<String, Vec<ConfigProblem>> {
    let jobs = jobs(path, text)?;
    let job = match (SELECTED_JOB.get(), jobs.len()) {
        (Some(id), _) => jobs.iter().find(|j| &j.id == id).ok_or_else(|| {
            let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            vec![ConfigProblem::new(None, None, format!("no job {id} (jobs: {})", ids.join(", ")))]
        })?,
        (None, 1) => &jobs[0],
        (None, _) => {
            let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            return Err(vec![ConfigProblem::new(
                None,
                None,
                format!("{} holds {} jobs: give --job (one of {})", path.display(), jobs.len(), ids.join(", ")),
            )]);
        }
    };
    Ok(job.conf.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "PROJECTS:\n  - NAME: one\n    BACKUPS:\n      - FILE_BACKUP:\n          FILE_PATH: /a\n  - NAME: two\n    BACKUPS:\n      - DB_BACKUPS:\n          DB_INFO:\n            PORT: x\n";

    #[test]
    fn key_paths_find_their_lines() {
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(locate(DOC, &[k("PROJECTS")]), Some(1));
        assert_eq!(locate(DOC, &[k("PROJECTS"), Seg::Index(1), k("NAME")]), Some(6));
        assert_eq!(
            locate(
                DOC,
                &[k("PROJECTS"), Seg::Index(1), k("BACKUPS"), Seg::Index(0), k("DB_BACKUPS"), k("DB_INFO"), k("PORT")]
            ),
            Some(10)
        );
        assert_eq!(
            locate(DOC, &[k("PROJECTS"), Seg::Index(0), k("BACKUPS"), Seg::Index(0), k("FILE_BACKUP"), k("FILE_PATH")]),
            Some(5)
        );
        assert_eq!(path_text(&[k("PROJECTS"), Seg::Index(1), k("NAME")]), "PROJECTS[1].NAME");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("PROJECTS:\n\t- NAME: x\n").unwrap_err();
        assert!(e[0].message.contains("line 2"), "{}", e[0].message);
    }
}
