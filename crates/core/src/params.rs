//! Stage parameters: one table of [`ParamSpec`]s per stage drives the command line (both
//! spellings, `--KEY_FILE` and `--key-file`), `--help`, the runner's `--check` and the typed
//! accessors. A config section and a command line both become a [`Params`] and go through the
//! same [`check`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// What a parameter's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Str,
    /// One path.
    Path,
    /// A list of paths: a space-separated string or a JSON array; repeated flags append.
    Paths,
    /// A list of words (same syntax as `Paths`).
    List,
    /// "True"/"False" (any case), also yes/no, on/off, 1/0.
    Bool,
    /// A flag without a value (`-d`).
    Switch,
    /// A whole number >= 0.
    Int,
    /// One of a fixed set of words (compared case-insensitively).
    Choice(&'static [&'static str]),
    /// Accepted for compatibility with nc-backup-py and ignored with a notice.
    Ignored,
}

/// One parameter of a stage.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Canonical, nc-backup-py spelling: `KEY_FILE`.
    pub key: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// The path(s) must exist before the run (checked by `--check`).
    pub must_exist: bool,
    /// Never printed, never passed in argv (the runner passes it in the environment).
    pub secret: bool,
    pub short: Option<char>,
    pub help: &'static str,
}

impl ParamSpec {
    pub const fn new(key: &'static str, kind: Kind, help: &'static str) -> Self {
        ParamSpec { key, kind, required: false, must_exist: false, secret: false, short: None, help }
    }
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub const fn must_exist(mut self) -> Self {
        self.must_exist = true;
        self
    }
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
    pub const fn short(mut self, c: char) -> Self {
        self.short = Some(c);
        self
    }
    /// `--key-file` for `KEY_FILE`.
    pub fn kebab(&self) -> String {
        kebab(self.key)
    }
}

/// `key-file` -> `KEY_FILE`; `KEY_FILE` stays.
pub fn canonical_key(k: &str) -> String {
    k.trim_start_matches('-').replace('-', "_").to_ascii_uppercase()
}

/// `KEY_FILE` -> `key-file`.
pub fn kebab(k: &str) -> String {
    k.replace('_', "-").to_ascii_lowercase()
}

/// True when a key names a secret by convention (for programs whose specs we do not know).
pub fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    let file_like = ["_FILE", "_PATH", "_DIR", "_FOLDER"].iter().any(|s| k.ends_with(s));
    if file_like {
        return false;
    }
    ["PASSWORD", "PASSWD", "PASSPHRASE", "PWD", "SECRET", "TOKEN", "ACCESS_KEY", "PRIVATE_KEY", "API_KEY", "CREDENTIAL"]
        .iter()
        .any(|w| k.contains(w))
        || k == "PASS"
        || k.ends_with("_PASS")
        || k == "KEY"
        || k.ends_with("_KEY")
}

/// Keys starting with `_`, and keys named COMMENT or DESCRIPTION (any case), are notes for
/// people: a config may hold them at any level, and they never reach a stage.
pub fn is_note(key: &str) -> bool {
    key.starts_with('_') || key.eq_ignore_ascii_case("COMMENT") || key.eq_ignore_ascii_case("DESCRIPTION")
}

/// Where the passwords of URLs (`scheme://user:PASSWORD@host/...`) are in `v`, as byte ranges;
/// every URL in the value counts (lists hold several).
pub fn url_passwords(v: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = v[from..].find("://") {
        let start = from + i + 3;
        let rest = &v[start..];
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | ']') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            out.push(start + colon + 1..start + at);
        }
        from = start + end;
    }
    out
}

/// True when `v` holds a URL with a password in it.
pub fn has_url_password(v: &str) -> bool {
    !url_passwords(v).is_empty()
}

/// A URL as logs show it: scheme and host only. Paths and queries are often the secret
/// themselves (a healthchecks UUID, a Slack hook token, a signed URL's signature).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "<url>".into() };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{host}/…")
}

/// A parameter problem found by [`check`]: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The values a stage was given, by canonical key. Repeated keys keep every value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, Vec<String>>,
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }
    /// Replaces the value of `key` (any spelling).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values.insert(canonical_key(key), vec![value.into()]);
    }
    /// Adds one more value to `key` (any spelling).
    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.values.entry(canonical_key(key)).or_default().push(value.into());
    }
    pub fn remove(&mut self, key: &str) -> Option<Vec<String>> {
        self.values.remove(&canonical_key(key))
    }
    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(|v| v.last()).map(String::as_str)
    }
    /// A non-empty text value.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|s| !s.trim().is_empty())
    }
    pub fn required_str(&self, key: &str) -> Result<&str> {
        self.str(key).ok_or_else(|| missing(key))
    }
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.str(key).map(PathBuf::from)
    }
    pub fn required_path(&self, key: &str) -> Result<PathBuf> {
        self.path(key).ok_or_else(|| missing(key))
    }
    /// Every word of every value of `key`: space-separated text or JSON arrays.
    pub fn list(&self, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for raw in self.values.get(key).into_iter().flatten() {
            out.extend(parse_list(raw).map_err(|e| Error::usage(format!("--{key}: {e}")))?);
        }
        Ok(out)
    }
    pub fn paths(&self, key: &str) -> Result<Vec<PathBuf>> {
        Ok(self.list(key)?.into_iter().map(PathBuf::from).collect())
    }
    /// A boolean; `default` when absent or empty.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => parse_bool(v)
                .ok_or_else(|| Error::usage(format!("--{key}: '{v}' is not a boolean (use True or False)"))),
        }
    }
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.str(key)
            .map(|v| v.trim().parse::<u64>().map_err(|_| Error::usage(format!("--{key}: '{v}' is not a whole number"))))
            .transpose()
    }
    /// A choice, lower-cased, checked against `allowed`.
    pub fn choice(&self, key: &str, allowed: &[&str], default: &str) -> Result<String> {
        let v = self.str(key).unwrap_or(default).trim().to_ascii_lowercase();
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(&v)) {
            Ok(v)
        } else {
            Err(Error::usage(format!("--{key}: '{v}' is not one of {}", allowed.join(", "))))
        }
    }
}

fn missing(key: &str) -> Error {
    Error::usage(format!("missing required parameter --{key} (--{})", kebab(key)))
}

/// "True"/"False" in any case, and the usual synonyms.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A JSON array of strings (`["a b", "c"]`) or space-separated words.
pub fn parse_list(raw: &str) -> std::result::Result<Vec<String>, String> {
    let t = raw.trim();
    if !t.starts_with('[') {
        return Ok(t.split_whitespace().map(str::to_owned).collect());
    }
    let items: Vec<serde_json::Value> = serde_json::from_str(t).map_err(|e| format!("not a valid JSON array: {e}"))?;
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("list items must be strings, found {other}")),
        })
        .collect()
}

/// A config value as the one command-line argument a stage receives: strings as they are,
/// booleans as True/False (nc-backup-py spelling), numbers as text, arrays as JSON text.
pub fn json_to_arg(v: &serde_json::Value) -> std::result::Result<String, String> {
    use serde_json::Value;
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(if *b { "True" } else { "False" }.to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(items) => {
            if items.iter().all(|i| i.is_string() || i.is_number()) {
                Ok(v.to_string())
            } else {
                Err("a list may hold only strings and numbers".to_owned())
            }
        }
        Value::Null => Err("null is not a value; remove the key or give a string".to_owned()),
        Value::Object(_) => Err("an object is not a parameter value".to_owned()),
    }
}

/// Checks `params` against `specs`; every problem at once.
pub fn check(specs: &[&ParamSpec], params: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    for key in params.keys() {
        if !specs.iter().any(|s| s.key == key) && !is_note(key) {
            let mut message = "unknown parameter".to_owned();
            if let Some(near) = nearest(key, specs) {
                message.push_str(&format!(" (did you mean {near}?)"));
            }
            problems.push(Problem { key: key.to_owned(), message });
        }
    }
    for spec in specs {
        let present = params.str(spec.key).is_some() || (spec.kind == Kind::Switch && params.has(spec.key));
        if !present {
            if spec.required {
                problems.push(Problem { key: spec.key.to_owned(), message: "missing required parameter".into() });
            }
            continue;
        }
        if let Err(message) = check_value(spec, params) {
            problems.push(Problem { key: spec.key.to_owned(), message });
        }
    }
    problems
}

fn check_value(spec: &ParamSpec, params: &Params) -> std::result::Result<(), String> {
    let strip = |e: Error| e.to_string().split_once(": ").map(|(_, m)| m.to_owned()).unwrap_or_default();
    match spec.kind {
        Kind::Bool | Kind::Switch => params.flag(spec.key, false).map(|_| ()).map_err(strip),
        Kind::Int => params.u64(spec.key).map(|_| ()).map_err(strip),
        Kind::Choice(allowed) => params.choice(spec.key, allowed, "").map(|_| ()).map_err(strip),
        Kind::Path if spec.must_exist => exists(params.path(spec.key).into_iter()),
        Kind::Paths | Kind::List => {
            let items = params.list(spec.key).map_err(strip)?;
            if spec.must_exist { exists(items.into_iter().map(PathBuf::from)) } else { Ok(()) }
        }
        _ => Ok(()),
    }
}

fn exists(paths: impl Iterator<Item = PathBuf>) -> std::result::Result<(), String> {
    let missing: Vec<String> =
        paths.filter(|p| std::fs::symlink_metadata(p).is_err()).map(|p| p.display().to_string()).collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("does not exist: {}", missing.join(", "))) }
}

fn nearest<'a>(key: &str, specs: &[&'a ParamSpec]) -> Option<&'a str> {
    specs
        .iter()
        .map(|s| (edit_distance(key, s.key), s.key))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// POSIX shell single-quoting: the word as it is when it is safe, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Values usable as `{NAME}` placeholders.
pub type Vars<'a> = [(&'a str, &'a str)];

/// Replaces `{HOSTNAME}`-style placeholders. A `{UPPER_CASE}` word that is not in `vars` is
/// an error; other braces are left alone.
pub fn expand(value: &str, vars: &Vars) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name_len = after.find('}').filter(|&n| n > 0 && is_placeholder_name(&after[..n]));
        match name_len {
            Some(n) => {
                let name = &after[..n];
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        let known: Vec<String> = vars.iter().map(|(k, _)| format!("{{{k}}}")).collect();
                        return Err(format!("unknown placeholder {{{name}}} (known: {})", known.join(" ")));
                    }
                }
                rest = &after[n + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_placeholder_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(canonical_key("--key-file"), "KEY_FILE");
        assert_eq!(canonical_key("KEY_FILE"), "KEY_FILE");
        assert_eq!(kebab("FILESET_INCLUDE"), "fileset-include");
    }

    #[test]
    fn booleans_any_case() {
        for t in ["True", "TRUE", "true", "yes", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["False", "fAlSe", "no", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn lists_space_or_json() {
        assert_eq!(parse_list(" /etc  /var/www ").unwrap(), ["/etc", "/var/www"]);
        assert_eq!(parse_list(r#"["/a b", "/c"]"#).unwrap(), ["/a b", "/c"]);
        assert!(parse_list("[1, {}]").is_err());
        assert!(parse_list("[oops").unwrap_err().contains("JSON array"));
    }

    #[test]
    fn repeated_values_append() {
        let mut p = Params::new();
        p.push("fileset-include", "/a /b");
        p.push("FILESET_INCLUDE", r#"["/c d"]"#);
        assert_eq!(p.list("FILESET_INCLUDE").unwrap(), ["/a", "/b", "/c d"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn placeholders() {
        let vars = [("HOSTNAME", "web1"), ("RUN_ID", "r1")];
        assert_eq!(expand("/b/{HOSTNAME}/{RUN_ID}", &vars).unwrap(), "/b/web1/r1");
        assert_eq!(expand("{not a placeholder} {}", &vars).unwrap(), "{not a placeholder} {}");
        assert!(expand("{NOPE}", &vars).unwrap_err().contains("{NOPE}"));
    }

    #[test]
    fn check_reports_every_problem() {
        static SPECS: [ParamSpec; 3] = [
            ParamSpec::new("OBJECTIVES", Kind::Paths, "").required(),
            ParamSpec::new("REMOVE_OBJECTIVES", Kind::Bool, ""),
            ParamSpec::new("FILE_SIZE", Kind::Int, ""),
        ];
        let specs: Vec<&ParamSpec> = SPECS.iter().collect();
        let mut p = Params::new();
        p.set("REMOVE_OBJECTIVES", "perhaps");
        p.set("FILE_SIZE", "-1");
        p.set("OBJECTIVE", "/x");
        let problems = check(&specs, &p);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["OBJECTIVE", "OBJECTIVES", "REMOVE_OBJECTIVES", "FILE_SIZE"]);
        assert!(problems[0].message.contains("did you mean OBJECTIVES"));
    }

    #[test]
    fn secrets_by_name() {
        assert!(looks_secret("DB_PASSWORD"));
        assert!(looks_secret("GPG_PASSPHRASE") && looks_secret("DB_PWD"));
        assert!(looks_secret("AWS_SECRET_ACCESS_KEY"));
        assert!(!looks_secret("KEY_FILE"));
        assert!(!looks_secret("CREDENTIAL_PATH"));
    }

    #[test]
    fn notes_are_not_parameters() {
        static SPECS: [ParamSpec; 1] = [ParamSpec::new("OBJECTIVES", Kind::Paths, "")];
        let mut p = Params::new();
        p.set("OBJECTIVES", "/x");
        p.set("_comment", "why");
        p.set("DESCRIPTION", "what");
        assert!(check(&[&SPECS[0]], &p).is_empty());
        assert!(is_note("_x") && is_note("Comment") && is_note("DESCRIPTION") && !is_note("OBJECTIVES"));
    }

    #[test]
    fn url_passwords_are_found() {
        let v = "https://u:pw@h/x";
        assert_eq!(url_passwords(v).into_iter().map(|r| &v[r]).collect::<Vec<_>>(), ["pw"]);
        let list = r#"["s3://a:one@h", "/x", "ftp://b:two@h:21/p"]"#;
        assert_eq!(url_passwords(list).into_iter().map(|r| &list[r]).collect::<Vec<_>>(), ["one", "two"]);
        for clean in ["https://u@h/x", "https://h/x@y", "/plain", "https://h:443/p", "https://u:@h/"] {
            assert!(!has_url_password(clean), "{clean}");
        }
    }

    #[test]
    fn json_values_become_args() {
        use serde_json::json;
        assert_eq!(json_to_arg(&json!(true)).unwrap(), "True");
        assert_eq!(json_to_arg(&json!(10)).unwrap(), "10");
        assert_eq!(json_to_arg(&json!(["a b", "c"])).unwrap(), r#"["a b","c"]"#);
        assert!(json_to_arg(&json!({"a": 1})).is_err());
    }
}
