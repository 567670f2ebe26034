//! Browsing runs without restoring them: `backup-runner ls` and `backup-runner find` read only
//! the indexes stored beside file archives (`<archive stem>.ncb-index.jsonl.gz`, encrypted like
//! the data), never the archives. The indexes also tell a selective restore (`restore
//! --include`) which archives of a chain it must fetch.

use std::io::Write;

use encryption::key::MasterKey;
use ncb_archive::index::{self, Entry};
use ncb_core::stage::error_chain;
use ncb_core::{Error, Result};
use serde::Serialize;
use storage::backend::RunManifest;

use crate::readback::{self, Item, Source};

/// One entry of a run, as browsing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub run_id: String,
    pub section: String,
    /// As stored: relative to `/`.
    pub path: String,
    /// `f` file, `d` folder, `l` symlink, `h` hard link, `s` special.
    pub kind: char,
    pub size: u64,
    pub mtime: i64,
}

impl Listed {
    fn of(run: &str, h: &index::Header, e: Entry) -> Listed {
        Listed {
            run_id: run.to_owned(),
            section: h.section.clone(),
            path: e.path,
            kind: e.kind,
            size: e.size,
            mtime: e.mtime,
        }
    }
}

/// The index items of a run, by section.
pub fn index_items(m: &RunManifest) -> Vec<Item> {
    readback::items(m).into_iter().filter(|i| i.name.ends_with(index::SUFFIX)).collect()
}

/// Streams the entries of one index item (checked and decrypted as any stored file).
pub fn read_index(
    src: &Source,
    run: &str,
    item: &Item,
    key: Option<&MasterKey>,
    each: &mut dyn FnMut(&index::Header, Entry) -> Result<()>,
) -> Result<index::Header> {
    readback::with_plaintext(src, run, item, key, &|_| {}, |r| index::read(r, &mut *each))
        .map_err(|e| e.context(&format!("run {run}: index {}", item.name)))
}

/// A path as the user gives it, as indexes hold it: no leading or trailing `/`.
pub fn normalize(p: &str) -> String {
    p.trim_matches('/').to_owned()
}

/// Whether `path` is `under` or inside it (`under` empty: everything).
pub fn is_under(path: &str, under: &str) -> bool {
    under.is_empty() || path == under || (path.starts_with(under) && path.as_bytes().get(under.len()) == Some(&b'/'))
}

fn no_index(run: &str) -> Error {
    Error::runtime(format!(
        "run {run} holds no index of its files (stored before indexes were kept, or by `storage` alone): restore it to look inside"
    ))
}

/// `ls`: the entries of run `wanted` (an id or `latest`) under `under`, in the first
/// destination that holds it, handed one by one to `out`.
pub fn ls(
    sources: &[Source],
    wanted: &str,
    under: &str,
    key: Option<&MasterKey>,
    out: &mut dyn FnMut(Listed) -> Result<()>,
) -> Result<String> {
    let (src, run, manifest) = readback::pick(sources, wanted)?.into_iter().next().ok_or_else(|| no_index(wanted))?;
    let items = index_items(&manifest);
    if items.is_empty() {
        return Err(no_index(&run));
    }
    let under = normalize(under);
    for item in &items {
        read_index(src, &run, item, key, &mut |h, e| {
            if is_under(&e.path, &under) {
                out(Listed::of(&run, h, e))?;
            }
            Ok(())
        })?;
    }
    Ok(run)
}

/// What `find` matches: a glob against the file name when it has no `/`, else against the
/// whole path (with or without its leading `/`).
pub struct Pattern {
    glob: globset::GlobMatcher,
    whole_path: bool,
}

impl Pattern {
    pub fn new(p: &str) -> Result<Pattern> {
        let whole_path = p.contains('/');
        let text = if whole_path { p.trim_start_matches('/') } else { p };
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::usage(format!("pattern '{p}': {e}")))?
            .compile_matcher();
        Ok(Pattern { glob, whole_path })
    }

    pub fn matches(&self, path: &str) -> bool {
        if self.whole_path {
            self.glob.is_match(path)
        } else {
            self.glob.is_match(path.rsplit('/').next().unwrap_or(path))
        }
    }
}

/// `find`: every complete run (newest first) that holds an entry matching `pattern`, each run
/// read from the first destination that holds it; runs without an index are named in the
/// warnings.
pub fn find(
    sources: &[Source],
    pattern: &Pattern,
    key: Option<&MasterKey>,
    out: &mut dyn FnMut(Listed) -> Result<()>,
) -> Result<Vec<String>> {
    let mut runs: Vec<(String, &Source)> = Vec::new();
    for s in sources {
        match s.backend().runs(&s.dest.prefix) {
            Ok(list) => {
                for r in list {
                    if !runs.iter().any(|(x, _)| *x == r) {
                        runs.push((r, s));
                    }
                }
            }
            Err(e) => log::warn!("{}: cannot list runs: {}", s.describe(), error_chain(&e)),
        }
    }
    runs.sort_by(|a, b| b.0.cmp(&a.0));
    let mut warnings = Vec::new();
    for (run, src) in runs {
        let manifest = match storage::manifest_of(src.backend(), &src.dest.prefix, &run) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                warnings.push(format!("run {run}: {}", error_chain(&e)));
                continue;
            }
        };
        let items = index_items(&manifest);
        if items.is_empty() {
            warnings.push(format!("run {run}: no index (not searched)"));
            continue;
        }
        if let Err(e) = readback::authenticate(src, &run, &manifest, key, false) {
            warnings.push(error_chain(&e));
            continue;
        }
        for item in &items {
            read_index(src, &run, item, key, &mut |h, e| {
                if pattern.matches(&e.path) {
                    out(Listed::of(&run, h, e))?;
                }
                Ok(())
            })?;
        }
    }
    Ok(warnings)
}

/// One line of `ls`/`find` output: kind, size, time (UTC), path (with its leading `/`).
pub fn print(l: &Listed, with_run: bool, w: &mut dyn Write) -> std::io::Result<()> {
    let t = chrono::DateTime::from_timestamp(l.mtime, 0).map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    let run = if with_run { format!("{}  ", l.run_id) } else { String::new() };
    writeln!(w, "{run}{}  {:>12}  {}  /{}", l.kind, l.size, t.unwrap_or_default(), l.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_or_whole_paths() {
        let p = Pattern::new("*.conf").unwrap();
        assert!(p.matches("etc/nginx/nginx.conf") && !p.matches("etc/nginx.conf.d/x"));
        let p = Pattern::new("/etc/**/*.conf").unwrap();
        assert!(p.matches("etc/nginx/sites/a.conf") && !p.matches("srv/etc/a.conf"));
        assert!(is_under("srv/www/a", "srv/www") && !is_under("srv/www2", "srv/www") && is_under("x", ""));
        assert_eq!(normalize("/srv/www/"), "srv/www");
    }
}
