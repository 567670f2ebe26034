//! conf.json: nc-backup-py's format, read strictly. Sections keep their file order.
//! Loading never stops at the first problem: every problem found is returned, each naming
//! its section and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// One thing wrong with a config, located by section and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub section: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(section: Option<&str>, key: Option<&str>, message: impl Into<String>) -> Self {
        ConfigProblem { section: section.map(str::to_owned), key: key.map(str::to_owned), message: message.into() }
    }
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.section, &self.key) {
            (Some(s), Some(k)) => write!(f, "section {s}, key {k}: {}", self.message),
            (Some(s), None) => write!(f, "section {s}: {}", self.message),
            (None, Some(k)) => write!(f, "key {k}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Execute,
    Load,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    #[default]
    Stop,
    Continue,
}

/// A section as written, before its stage or program is resolved.
#[derive(Debug, Clone)]
pub struct RawSection {
    pub name: String,
    pub action: Action,
    pub stage_name: Option<String>,
    pub executable: Option<String>,
    pub execute_with: Option<String>,
    pub from: Option<String>,
    pub filename: Option<String>,
    pub class: Option<String>,
    /// PARAMETERS in file order, each as the one string a stage receives.
    pub params: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// GENERAL keys (strings) in file order.
    pub general: Vec<(String, String)>,
    pub sections: Vec<RawSection>,
    /// The NOTIFY section (reserved name, like GENERAL).
    pub notify: crate::notify::Notify,
    /// How many sections the file declares besides GENERAL and NOTIFY (with problems or not).
    pub declared_sections: usize,
}

/// Keys of GENERAL: (key, required).
pub const GENERAL_KEYS: [(&str, bool); 10] = [
    ("HOSTNAME", true),
    ("WORK_FOLDER", true),
    ("LOG_FOLDER", true),
    ("HOME_FOLDER", false),
    ("LOCAL_BACKUP", false),
    ("SCHEDULE", false),
    ("NICE", false),
    ("IONICE", false),
    ("FILES_READER", false),
    ("FILES_READER_PATH", false),
];

/// How filesbackup sections read files when the run is not root (GENERAL FILES_READER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderMode {
    /// The reader binary holds CAP_DAC_READ_SEARCH (setcap).
    Capability,
    /// The reader runs through `sudo -n`, then drops to the user keeping only that capability.
    Sudo,
}

/// GENERAL FILES_READER: `capability`, `sudo`, or `none` (the default: read as the run's user).
pub fn files_reader_mode(v: &str) -> std::result::Result<Option<ReaderMode>, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "capability" | "cap" => Ok(Some(ReaderMode::Capability)),
        "sudo" => Ok(Some(ReaderMode::Sudo)),
        _ => Err(format!("'{v}' is not capability, sudo or none")),
    }
}

/// GENERAL NICE (0 to 19) and IONICE (`idle`, or `best-effort` with an optional level 0-7 as
/// `best-effort:7`): the arguments of nice(1) and ionice(1) the run is started under.
pub fn priority(nice: Option<&str>, ionice: Option<&str>) -> std::result::Result<Vec<String>, String> {
    let mut argv = Vec::new();
    if let Some(n) = nice {
        let v: u8 = n.trim().parse().ok().filter(|v| *v <= 19).ok_or_else(|| format!("NICE '{n}' is not 0 to 19"))?;
        argv.extend(["nice".to_owned(), "-n".to_owned(), v.to_string()]);
    }
    if let Some(i) = ionice {
        argv.push("ionice".into());
        match i.trim().to_ascii_lowercase().split_once(':') {
            None if i.trim().eq_ignore_ascii_case("idle") => argv.extend(["-c".to_owned(), "3".to_owned()]),
            None if i.trim().eq_ignore_ascii_case("best-effort") => argv.extend(["-c".to_owned(), "2".to_owned()]),
            Some(("best-effort", level)) if level.parse::<u8>().is_ok_and(|l| l <= 7) => {
                argv.extend(["-c".to_owned(), "2".to_owned(), "-n".to_owned(), level.to_owned()])
            }
            _ => return Err(format!("IONICE '{i}' is not idle, best-effort or best-effort:0-7")),
        }
    }
    Ok(argv)
}

const SECTION_KEYS: [&str; 10] = [
    "ACTION",
    "NAME",
    "EXECUTABLE",
    "EXECUTE_WITH",
    "FROM",
    "FILENAME",
    "CLASS",
    "PARAMETERS",
    "TIMEOUT",
    "ON_FAILURE",
];

impl Config {
    pub fn general(&self, key: &str) -> Option<&str> {
        self.general.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.trim().is_empty())
    }

    /// The folder relative paths in the config are tried against (after HOME_FOLDER).
    pub fn dir(&self) -> &Path {
        self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
    }
}

/// A config and the problems found in it. Sections with problems are left out of `sections`
/// so that the rest can still be checked; a config is usable only without problems.
pub type Parsed = (Config, Vec<ConfigProblem>);

/// Reads and parses a config. `Err` when nothing could be parsed (unreadable, bad JSON).
pub fn load(path: &Path) -> Result<Parsed, Vec<ConfigProblem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigProblem::new(None, None, format!("cannot read {}: {e}", path.display()))])?;
    if crate::yaml::is_yaml(path) {
        // A neighbouring tool's YAML: translated to the conf.json it means (crates/runner/src/yaml).
        return parse(path, &crate::yaml::selected(path, &text)?);
    }
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Parsed, Vec<ConfigProblem>> {
    let (root, duplicates) = json::parse(text).map_err(|e| {
        vec![ConfigProblem::new(None, None, format!("invalid JSON at line {}, column {}: {e}", e.line(), e.column()))]
    })?;
    let Value::Object(root) = root else {
        return Err(vec![ConfigProblem::new(None, None, "the config must be a JSON object of sections")]);
    };
    let mut problems: Vec<ConfigProblem> = duplicates.iter().filter_map(|d| duplicate_problem(d)).collect();
    let general = match root.get("GENERAL") {
        None => {
            problems.push(ConfigProblem::new(Some("GENERAL"), None, "missing mandatory section GENERAL"));
            Vec::new()
        }
        Some(Value::Object(g)) => parse_general(g, &mut problems),
        Some(_) => {
            problems.push(ConfigProblem::new(Some("GENERAL"), None, "must be an object"));
            Vec::new()
        }
    };
    let mut sections = Vec::new();
    let mut notify = crate::notify::Notify::default();
    let mut declared_sections = 0;
    for (name, value) in root.iter().filter(|(k, _)| k.as_str() != "GENERAL") {
        if is_note(name) {
            continue;
        }
        if name == crate::notify::SECTION {
            match value {
                Value::Object(body) => notify = crate::notify::parse(&without_notes(body), &mut problems),
                _ => problems.push(ConfigProblem::new(Some(name), None, "must be an object")),
            }
            continue;
        }
        declared_sections += 1;
        if name.trim().is_empty() {
            problems.push(ConfigProblem::new(Some(&format!("{name:?}")), None, "a section needs a name"));
            continue;
        }
        match value {
            Value::Object(body) => {
                if let Some(s) = parse_section(name, body, &mut problems) {
                    sections.push(s);
                }
            }
            _ => problems.push(ConfigProblem::new(Some(name), None, "a section must be an object")),
        }
    }
    Ok((Config { path: path.to_path_buf(), general, sections, notify, declared_sections }, problems))
}

/// A key repeated in one JSON object, as a problem; None inside notes.
fn duplicate_problem(path: &[String]) -> Option<ConfigProblem> {
    if path.iter().any(|k| is_note(k)) {
        return None;
    }
    match path {
        [] => None,
        [section] => Some(ConfigProblem::new(Some(section), None, "duplicate section name")),
        [section, key @ ..] => Some(ConfigProblem::new(Some(section), Some(&key.join(".")), "duplicate key")),
    }
}

/// Keys starting with `_` or named COMMENT/DESCRIPTION are notes for people.
fn is_note(key: &str) -> bool {
    ncb_core::params::is_note(key)
}

fn without_notes(body: &Map<String, Value>) -> Map<String, Value> {
    body.iter().filter(|(k, _)| !is_note(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A NUL cannot be passed in an argument: the run would fail to start the stage.
fn check_nul(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        Err("contains a NUL character, which no program argument can hold".into())
    } else {
        Ok(())
    }
}

/// A GENERAL value: a string (a number is taken as text); SCHEDULE may be a list of strings.
fn general_value(k: &str, v: &Value) -> Result<String, String> {
    let found = match v {
        Value::String(s) => {
            check_nul(s)?;
            if k == "HOSTNAME"
                && let Some(c) = s.chars().find(|c| c.is_control())
            {
                return Err(format!("contains a control character ({:?}); a host name is one line of text", c));
            }
            return Ok(s.clone());
        }
        Value::Number(n) if k != "HOSTNAME" => return Ok(n.to_string()),
        Value::Array(_) if k == "SCHEDULE" => return ncb_core::params::json_to_arg(v),
        Value::Number(_) => "a number",
        Value::Array(_) => "a list",
        Value::Bool(_) => "a boolean",
        Value::Object(_) => "an object",
        Value::Null => "null",
    };
    Err(format!("must be a string, not {found}"))
}

fn parse_general(g: &Map<String, Value>, problems: &mut Vec<ConfigProblem>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in g {
        if is_note(k) {
            continue;
        }
        if !GENERAL_KEYS.iter().any(|(key, _)| key == k) {
            let known: Vec<&str> = GENERAL_KEYS.iter().map(|(k, _)| *k).collect();
            problems.push(ConfigProblem::new(
                Some("GENERAL"),
                Some(k),
                format!("unknown key (known: {})", known.join(", ")),
            ));
            continue;
        }
        match general_value(k, v) {
            Ok(s) => {
                if k == "SCHEDULE"
                    && let Err(e) = crate::schedule::parse_list(&s)
                {
                    problems.push(ConfigProblem::new(Some("GENERAL"), Some(k), e));
                }
                if k == "NICE"
                    && let Err(e) = priority(Some(&s), None)
                {
                    problems.push(ConfigProblem::new(Some("GENERAL"), Some(k), e));
                }
                if k == "IONICE"
                    && let Err(e) = priority(None, Some(&s))
                {
                    problems.push(ConfigProblem::new(Some("GENERAL"), Some(k), e));
                }
                if k == "FILES_READER"
                    && let Err(e) = files_reader_mode(&s)
                {
                    problems.push(ConfigProblem::new(Some("GENERAL"), Some(k), e));
                }
                if k == "FILES_READER_PATH" && !std::path::Path::new(&s).is_absolute() {
                    problems.push(ConfigProblem::new(
                        Some("GENERAL"),
                        Some(k),
                        format!("'{s}' is not an absolute path"),
                    ));
                }
                out.push((k.clone(), s));
            }
            Err(e) => problems.push(ConfigProblem::new(Some("GENERAL"), Some(k), e)),
        }
    }
    for (key, required) in GENERAL_KEYS {
        let present = out.iter().any(|(k, v)| k == key && !v.trim().is_empty());
        let refused = problems.iter().any(|p| p.section.as_deref() == Some("GENERAL") && p.key.as_deref() == Some(key));
        if required && !present && !refused {
            problems.push(ConfigProblem::new(Some("GENERAL"), Some(key), "missing mandatory key"));
        }
    }
    out
}

fn text(name: &str, body: &Map<String, Value>, key: &str, problems: &mut Vec<ConfigProblem>) -> Option<String> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            problems.push(ConfigProblem::new(Some(name), Some(key), "must be a string"));
            None
        }
    }
}

fn parse_section(name: &str, body: &Map<String, Value>, problems: &mut Vec<ConfigProblem>) -> Option<RawSection> {
    let before = problems.len();
    for k in body.keys() {
        if !SECTION_KEYS.contains(&k.as_str()) && !is_note(k) {
            let hint = if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                " (stage parameters belong inside PARAMETERS)"
            } else {
                ""
            };
            problems.push(ConfigProblem::new(
                Some(name),
                Some(k),
                format!("unknown section key{hint}; known: {}", SECTION_KEYS.join(", ")),
            ));
        }
    }
    let action = match text(name, body, "ACTION", problems).map(|a| a.to_ascii_lowercase()) {
        Some(a) if a == "execute" => Some(Action::Execute),
        Some(a) if a == "load" => Some(Action::Load),
        Some(a) => {
            problems.push(ConfigProblem::new(
                Some(name),
                Some("ACTION"),
                format!("unknown action '{a}' (expected execute or load)"),
            ));
            None
        }
        None => {
            problems.push(ConfigProblem::new(Some(name), Some("ACTION"), "missing ACTION (execute or load)"));
            None
        }
    };
    let params = match body.get("PARAMETERS") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(p)) => p
            .iter()
            .filter(|(k, _)| !is_note(k))
            .filter_map(|(k, v)| match ncb_core::params::json_to_arg(v).and_then(|s| check_nul(&s).map(|()| s)) {
                Ok(s) => Some((k.clone(), s)),
                Err(e) => {
                    problems.push(ConfigProblem::new(Some(name), Some(&format!("PARAMETERS.{k}")), e));
                    None
                }
            })
            .collect(),
        Some(_) => {
            problems.push(ConfigProblem::new(Some(name), Some("PARAMETERS"), "must be an object of KEY: value"));
            Vec::new()
        }
    };
    let timeout = match body.get("TIMEOUT") {
        None | Some(Value::Null) => None,
        Some(v) => match parse_duration(v) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(ConfigProblem::new(Some(name), Some("TIMEOUT"), e));
                None
            }
        },
    };
    let on_failure = match text(name, body, "ON_FAILURE", problems).map(|a| a.to_ascii_lowercase()) {
        None => OnFailure::Stop,
        Some(v) if v == "stop" => OnFailure::Stop,
        Some(v) if v == "continue" => OnFailure::Continue,
        Some(v) => {
            problems.push(ConfigProblem::new(Some(name), Some("ON_FAILURE"), format!("'{v}' is not stop or continue")));
            OnFailure::Stop
        }
    };
    let section = RawSection {
        name: name.to_owned(),
        action: action?,
        stage_name: text(name, body, "NAME", problems),
        executable: text(name, body, "EXECUTABLE", problems),
        execute_with: text(name, body, "EXECUTE_WITH", problems),
        from: text(name, body, "FROM", problems),
        filename: text(name, body, "FILENAME", problems),
        class: text(name, body, "CLASS", problems),
        params,
        timeout,
        on_failure,
    };
    (problems.len() == before).then_some(section)
}

/// JSON read into the same [`Value`] serde_json builds (objects in file order, a repeated key
/// keeping its first place and its last value), recording every repeated key with its path,
/// which serde_json alone would drop without a word.
mod json {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    /// The document and the paths of the repeated keys (`["STORAGE"]`, `["S", "PARAMETERS", "K"]`).
    pub fn parse(text: &str) -> serde_json::Result<(Value, Vec<Vec<String>>)> {
        let mut duplicates = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        let value = Node { path: Vec::new(), duplicates: &mut duplicates }.deserialize(&mut de)?;
        de.end()?;
        Ok((value, duplicates))
    }

    struct Node<'a> {
        path: Vec<String>,
        duplicates: &'a mut Vec<Vec<String>>,
    }

    impl Node<'_> {
        fn child(&mut self, key: String) -> Node<'_> {
            let mut path = self.path.clone();
            path.push(key);
            Node { path, duplicates: self.duplicates }
        }
    }

    impl<'de> DeserializeSeed<'de> for Node<'_> {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Node<'_> {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(v) = seq.next_element_seed(self.child(items.len().to_string()))? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(self.child(key.clone()))?;
                if out.contains_key(&key) {
                    let mut path = self.path.clone();
                    path.push(key.clone());
                    self.duplicates.push(path);
                }
                out.insert(key, value);
            }
            Ok(Value::Object(out))
        }
    }
}

/// `3600`, `"90"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"`.
pub fn parse_duration(v: &Value) -> Result<Duration, String> {
    let bad = || format!("'{v}' is not a duration (seconds, or e.g. 30s, 5m, 2h, 1h30m)");
    if let Some(n) = v.as_u64() {
        return if n > 0 { Ok(Duration::from_secs(n)) } else { Err(bad()) };
    }
    let s = v.as_str().ok_or_else(bad)?.trim();
    if let Ok(n) = s.parse::<u64>() {
        return if n > 0 { Ok(Duration::from_secs(n)) } else { Err(bad()) };
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|x| x.checked_add(total)).ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&json!(5)).unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration(&json!("1h30m")).unwrap(), Duration::from_secs(5400));
        assert!(parse_duration(&json!("soon")).is_err());
        assert!(parse_duration(&json!(0)).is_err());
        assert!(parse_duration(&json!("99999999999999999999h")).is_err());
        assert!(parse_duration(&json!("9999999999999999d")).is_err());
    }

    #[test]
    fn keeps_file_order_and_reports_all() {
        let (c, problems) = parse(
            Path::new("c.json"),
            r#"{"GENERAL":{"HOSTNAME":"h","WORK_FOLDER":"/w","LOG_FOLDER":"/l"},
            "Z":{"ACTION":"load","FROM":"tools"},"A":{"ACTION":"execute","NAME":"x"}}"#,
        )
        .unwrap();
        assert!(problems.is_empty());
        let names: Vec<&str> = c.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Z", "A"]);
        let (_, e) = parse(Path::new("c.json"), r#"{"X":{"ACTION":"run","OBJECTIVES":"/a"}}"#).unwrap();
        assert_eq!(e.len(), 3, "{e:?}");
    }

    const G: &str = r#""GENERAL":{"HOSTNAME":"h","WORK_FOLDER":"/w","LOG_FOLDER":"/l"}"#;

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new("c.json"), text) {
            Ok((_, p)) | Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn repeated_keys_are_reported_where_they_are() {
        let p = problems(&format!(
            r#"{{{G}, "STORAGE": {{"ACTION": "load", "NAME": "size-calc", "ACTION": "load",
                "PARAMETERS": {{"OBJECTIVES": "/a", "OBJECTIVES": "/b"}}}},
              "STORAGE": {{"ACTION": "load", "NAME": "size-calc"}},
              "GENERAL": {{"HOSTNAME": "h", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l", "LOG_FOLDER": "/m"}}}}"#
        ));
        for want in [
            "section STORAGE, key ACTION: duplicate key",
            "section STORAGE, key PARAMETERS.OBJECTIVES: duplicate key",
            "section STORAGE: duplicate section name",
            "section GENERAL: duplicate section name",
            "section GENERAL, key LOG_FOLDER: duplicate key",
        ] {
            assert!(p.iter().any(|l| l == want), "no {want:?} in {p:#?}");
        }
        assert_eq!(p.len(), 5, "{p:#?}");
        // Notes may repeat: they are ignored anyway.
        let p = problems(&format!(
            r#"{{"_c": 1, "_c": 2, {G}, "S": {{"_note": "a", "_note": "b", "ACTION": "load", "NAME": "size-calc",
                "PARAMETERS": {{"OBJECTIVES": "/a", "COMMENT": "x", "COMMENT": "y"}}}}}}"#
        ));
        assert!(p.is_empty(), "{p:#?}");
    }

    #[test]
    fn general_values_must_be_text() {
        for (value, found) in [("[\"a\"]", "a list"), ("true", "a boolean"), ("{}", "an object"), ("null", "null")] {
            let p =
                problems(&format!(r#"{{"GENERAL": {{"HOSTNAME": "h", "WORK_FOLDER": {value}, "LOG_FOLDER": "/l"}}}}"#));
            assert!(p.contains(&format!("section GENERAL, key WORK_FOLDER: must be a string, not {found}")), "{p:#?}");
        }
        let p = problems(r#"{"GENERAL": {"HOSTNAME": 7, "WORK_FOLDER": 1, "LOG_FOLDER": "/l"}}"#);
        assert_eq!(p, ["section GENERAL, key HOSTNAME: must be a string, not a number"]);
        for bad in [r"web\u0000", r"web\n1", r"w\teb"] {
            let p = problems(&format!(
                r#"{{"GENERAL": {{"HOSTNAME": "{bad}", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l"}}}}"#
            ));
            assert!(p.len() == 1 && p[0].starts_with("section GENERAL, key HOSTNAME: contains a"), "{bad}: {p:#?}");
        }
        let (c, p) = parse(
            Path::new("c.json"),
            r#"{"GENERAL": {"HOSTNAME": "h", "WORK_FOLDER": "/w", "LOG_FOLDER": "/l", "SCHEDULE": ["@daily"]}}"#,
        )
        .unwrap();
        assert!(p.is_empty() && c.general("SCHEDULE") == Some(r#"["@daily"]"#), "{p:?}");
    }

    #[test]
    fn empty_section_names_are_refused() {
        let p = problems(&format!(r#"{{{G}, "": {{"ACTION": "load", "NAME": "size-calc"}}}}"#));
        assert_eq!(p, [r#"section "": a section needs a name"#]);
    }

    #[test]
    fn notes_are_ignored_at_every_level() {
        let (c, p) = parse(
            Path::new("c.json"),
            &format!(
                r#"{{"_comment": [1], "DESCRIPTION": {{}}, {G},
                  "NOTIFY": {{"_why": null, "COMMENT": 5, "RETRIES": 1}},
                  "S": {{"ACTION": "execute", "NAME": "size-calc", "description": "x", "_": {{"a": null}},
                    "PARAMETERS": {{"_comment": "about OBJECTIVES", "OBJECTIVES": "/a", "Comment": null}}}}}}"#
            ),
        )
        .unwrap();
        assert!(p.is_empty(), "{p:#?}");
        assert_eq!(c.declared_sections, 1);
        assert_eq!(c.sections[0].params, [("OBJECTIVES".to_owned(), "/a".to_owned())]);
        assert_eq!(c.notify.retries, 1);
    }

    #[test]
    fn nul_in_a_parameter_is_refused() {
        let p = problems(&format!(
            r#"{{{G}, "S": {{"ACTION": "load", "NAME": "size-calc", "PARAMETERS": {{"OBJECTIVES": "/a\u0000b"}}}}}}"#
        ));
        assert!(p.len() == 1 && p[0].starts_with("section S, key PARAMETERS.OBJECTIVES: contains a NUL"), "{p:#?}");
    }
}
