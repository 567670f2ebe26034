//! From a parsed config to a plan: for every section, what exactly runs (the stage or
//! program, its argv, its environment) and with which parameters. `--check`, `--dry-run`
//! and `-r` all go through here, so what is checked is what is shown is what runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ncb_core::StageDef;
use ncb_core::context::{GENERAL_PARAMS, General, env, placeholder_vars};
use ncb_core::params::{self, Params, looks_secret, shell_quote};

use crate::config::{Action, Config, ConfigProblem, OnFailure, RawSection, ReaderMode};
use crate::registry;

/// What a section runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// A built-in stage binary, spawned.
    Stage { def: &'static StageDef, program: Option<PathBuf> },
    /// A built-in stage, called in-process.
    Load { def: &'static StageDef, label: String },
    /// Any other program (a user's script), optionally through an interpreter.
    External { program: PathBuf, interpreter: Option<String> },
}

#[derive(Debug, Clone)]
pub struct Step {
    pub section: String,
    pub target: Target,
    /// Parameters with placeholders expanded: GENERAL keys first, then PARAMETERS.
    pub args: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub on_failure: OnFailure,
    /// A filesbackup section of a run that is not root, with GENERAL FILES_READER: the
    /// privileged reader (see filesbackup::privilege) runs in its place.
    pub reader: Option<(ReaderMode, PathBuf)>,
}

impl Step {
    pub fn action(&self) -> &'static str {
        match self.target {
            Target::Load { .. } => "load",
            _ => "execute",
        }
    }

    /// The stage name or program path, for reports.
    pub fn target_name(&self) -> String {
        match &self.target {
            Target::Stage { def, .. } | Target::Load { def, .. } => def.name.to_owned(),
            Target::External { program, .. } => program.display().to_string(),
        }
    }

    fn is_secret(&self, key: &str) -> bool {
        let spec_secret = match &self.target {
            Target::Stage { def, .. } | Target::Load { def, .. } => def.is_secret(&params::canonical_key(key)),
            Target::External { .. } => false,
        };
        spec_secret || looks_secret(key)
    }

    /// What stays out of argv: secret keys, and for built-in stages (which read
    /// `NCB_PARAM_<KEY>` for any of their parameters) any value holding a URL password. A user
    /// program would not know to look there: `--check` refuses those instead.
    fn is_hidden(&self, key: &str, value: &str) -> bool {
        self.is_secret(key) || (!matches!(self.target, Target::External { .. }) && params::has_url_password(value))
    }

    /// Secret parameters, which travel in the environment (`NCB_PARAM_KEY`), never in argv.
    pub fn secret_env(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(k, v)| self.is_hidden(k, v))
            .map(|(k, v)| (format!("{}{}", env::PARAM_PREFIX, params::canonical_key(k)), v.clone()))
            .collect()
    }

    /// argv after the program: `--KEY value` for every non-secret parameter.
    pub fn flags(&self) -> Vec<String> {
        self.args
            .iter()
            .filter(|(k, v)| !self.is_hidden(k, v))
            .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
            .collect()
    }

    /// The parameters as a stage receives them.
    pub fn params(&self) -> Params {
        let mut p = Params::new();
        for (k, v) in &self.args {
            p.set(k, v.clone());
        }
        p
    }

    /// The program and arguments, interpreter first.
    pub fn argv(&self) -> Option<(PathBuf, Vec<String>)> {
        match &self.target {
            Target::Stage { .. } if self.reader.is_some() => {
                let (mode, reader) = self.reader.clone()?;
                let mut args = vec![filesbackup::privilege::FLAG.to_owned()];
                args.extend(self.flags());
                if mode == ReaderMode::Capability {
                    return Some((reader, args));
                }
                // sudo resets the environment: the runner's variables and the secrets are named
                // (sudoers.sample's env_keep allows NCB_*); unset ones are not passed.
                let mut keep: Vec<String> = env::ALL.iter().map(|s| (*s).to_owned()).collect();
                keep.extend(self.secret_env().into_iter().map(|(k, _)| k));
                let mut sudo = vec!["-n".to_owned(), format!("--preserve-env={}", keep.join(",")), "--".to_owned()];
                sudo.push(reader.display().to_string());
                sudo.extend(args);
                Some((PathBuf::from("sudo"), sudo))
            }
            Target::Stage { program, .. } => program.clone().map(|p| (p, self.flags())),
            Target::External { program, interpreter: Some(i) } => {
                let mut a = vec![program.display().to_string()];
                a.extend(self.flags());
                Some((PathBuf::from(i), a))
            }
            Target::External { program, interpreter: None } => Some((program.clone(), self.flags())),
            Target::Load { .. } => None,
        }
    }
}

/// The context values placeholders expand to.
pub fn general_of(config: &Config) -> General {
    let mut p = Params::new();
    for (k, v) in &config.general {
        p.set(k, v.clone());
    }
    General::from_params(&p)
}

/// Resolves every section. `Err` holds every problem found, across all sections.
pub fn plan(
    config: &Config,
    run_id: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Step>, Vec<ConfigProblem>> {
    let general = general_of(config);
    let vars = placeholder_vars(&general, run_id, started);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut problems = Vec::new();
    if config.declared_sections == 0 {
        problems.push(ConfigProblem::new(
            None,
            None,
            "nothing to run: the config has no section besides GENERAL and NOTIFY",
        ));
    }
    if let Some(log) = general.log_file()
        && let Err(e) = ncb_core::context::check_log_file(&log, Some(&config.path))
    {
        problems.push(ConfigProblem::new(Some("GENERAL"), Some("LOG_FOLDER"), e));
    }
    let reader = files_reader(config, &mut problems);
    let mut steps = Vec::new();
    for s in &config.sections {
        let before = problems.len();
        let target = resolve(config, s, &mut problems);
        let mut args = Vec::new();
        for (k, _) in GENERAL_PARAMS.iter().map(|g| (g.key, ())) {
            if let Some(v) = config.general(k) {
                push_expanded(&mut args, &s.name, "GENERAL", k, v, &vars, &mut problems);
            }
        }
        for (k, v) in &s.params {
            args.retain(|(a, _)| a != k);
            push_expanded(&mut args, &s.name, "PARAMETERS", k, v, &vars, &mut problems);
        }
        if let Some(target) = target {
            inherit_key_file(&target, &mut args, &steps);
            let mut step = Step {
                section: s.name.clone(),
                target,
                args,
                timeout: s.timeout,
                on_failure: s.on_failure,
                reader: None,
            };
            check_step(&step, s, &mut problems);
            if let Some(r) = &reader {
                step.reader = use_reader(&step, r, &mut problems);
            }
            check_work_folder_kept(&step, &general, &mut problems);
            if problems.len() == before {
                steps.push(step);
            }
        }
    }
    if problems.is_empty() { Ok(steps) } else { Err(problems) }
}

/// GENERAL FILES_READER and FILES_READER_PATH, checked: the reader is there, carries its
/// capability (capability) or sudo is (sudo). Whoever runs `--check`, the same answer.
fn files_reader(config: &Config, problems: &mut Vec<ConfigProblem>) -> Option<(ReaderMode, PathBuf)> {
    let mode = crate::config::files_reader_mode(config.general("FILES_READER")?).ok()??;
    let path = PathBuf::from(config.general("FILES_READER_PATH").unwrap_or(filesbackup::privilege::DEFAULT_PATH));
    let key = if config.general("FILES_READER_PATH").is_some() { "FILES_READER_PATH" } else { "FILES_READER" };
    let mut problem = |msg: String| problems.push(ConfigProblem::new(Some("GENERAL"), Some(key), msg));
    if !path.is_file() {
        problem(format!(
            "the privileged reader {} is not there (the nc-backup package installs it; by hand: install -m 0750 -g <run's group> filesbackup there{})",
            path.display(),
            if mode == ReaderMode::Capability { ", then setcap cap_dac_read_search=ep it" } else { "" }
        ));
        return None;
    }
    match mode {
        ReaderMode::Capability => match filesbackup::privilege::has_read_capability(&path) {
            Ok(true) => {}
            Ok(false) => problem(format!(
                "{} carries no CAP_DAC_READ_SEARCH: as root, setcap cap_dac_read_search=ep {} (or use FILES_READER sudo)",
                path.display(),
                path.display()
            )),
            Err(e) => problem(format!("cannot read the capabilities of {}: {e}", path.display())),
        },
        ReaderMode::Sudo if which("sudo").is_none() => {
            problem("FILES_READER sudo: sudo is not installed (or not on PATH)".to_owned());
        }
        ReaderMode::Sudo => {
            if let Err(e) = root_alone_can_replace(&path) {
                problem(format!("FILES_READER sudo runs {} as root: {e}", path.display()));
            }
        }
    }
    Some((mode, path))
}

/// A program sudo runs as root must be root's, and so must every folder above it, none writable
/// by others (a sticky folder such as /tmp excepted): whoever could replace it would be root.
fn root_alone_can_replace(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve it: {e}"))?;
    let mut at = Some(real.as_path());
    let mut file = true;
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let open = m.mode() & 0o022 != 0 && (file || m.mode() & 0o1000 == 0);
        if m.uid() != 0 || open {
            return Err(format!(
                "{} is not root's alone (owner uid {}, mode {:04o}): chown root: and chmod go-w it",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
        file = false;
        at = p.parent();
    }
    Ok(())
}

/// The reader for a filesbackup section run as a user that is not root; a loaded one cannot
/// use it (it would run inside backup-runner, which holds no privilege).
fn use_reader(
    step: &Step,
    r: &(ReaderMode, PathBuf),
    problems: &mut Vec<ConfigProblem>,
) -> Option<(ReaderMode, PathBuf)> {
    match &step.target {
        Target::Stage { def, .. } if def.name == "filesbackup" => (ncb_core::sys::euid() != 0).then(|| r.clone()),
        Target::Load { def, .. } if def.name == "filesbackup" => {
            problems.push(ConfigProblem::new(
                Some(&step.section),
                Some("ACTION"),
                "GENERAL FILES_READER needs ACTION execute here: a loaded filesbackup runs inside backup-runner, which holds no privilege",
            ));
            None
        }
        _ => None,
    }
}

/// A storage section without KEY_FILE gets the one of the encryption section before it, to
/// authenticate the run manifest with.
fn inherit_key_file(target: &Target, args: &mut Vec<(String, String)>, earlier: &[Step]) {
    let is =
        |t: &Target, name: &str| matches!(t, Target::Stage { def, .. } | Target::Load { def, .. } if def.name == name);
    if !is(target, "storage") || args.iter().any(|(k, _)| params::canonical_key(k) == "KEY_FILE") {
        return;
    }
    let key = earlier.iter().rev().filter(|s| is(&s.target, "encryption")).find_map(|s| {
        let p = s.params();
        (!p.flag("DECRYPT", false).unwrap_or(false)).then(|| p.str("KEY_FILE").map(str::to_owned)).flatten()
    });
    if let Some(k) = key {
        args.push(("KEY_FILE".to_owned(), k));
    }
}

fn push_expanded(
    args: &mut Vec<(String, String)>,
    section: &str,
    origin: &str,
    key: &str,
    value: &str,
    vars: &[(&str, &str)],
    problems: &mut Vec<ConfigProblem>,
) {
    match params::expand(value, vars) {
        Ok(v) => args.push((key.to_owned(), v)),
        Err(e) => {
            let (sec, k) =
                if origin == "GENERAL" { ("GENERAL", key.to_owned()) } else { (section, format!("PARAMETERS.{key}")) };
            problems.push(ConfigProblem::new(Some(sec), Some(&k), e));
        }
    }
}

/// REMOVE_OBJECTIVES of an objective that holds WORK_FOLDER would delete the run's journals,
/// lock and set-aside files with it (storage removes only what it stored: it may).
fn check_work_folder_kept(step: &Step, general: &General, problems: &mut Vec<ConfigProblem>) {
    let p = step.params();
    let storage = matches!(&step.target, Target::Stage { def, .. } | Target::Load { def, .. } if def.name == "storage");
    if storage || !p.flag("REMOVE_OBJECTIVES", false).unwrap_or(false) {
        return;
    }
    let work = std::path::absolute(general.work_dir()).unwrap_or_else(|_| general.work_dir());
    for o in p.paths("OBJECTIVES").unwrap_or_default() {
        let o = std::path::absolute(&o).unwrap_or(o);
        if work.starts_with(&o) {
            problems.push(ConfigProblem::new(
                Some(&step.section),
                Some("PARAMETERS.OBJECTIVES"),
                format!(
                    "{} holds WORK_FOLDER {}: REMOVE_OBJECTIVES would delete the run journals and lock with it (give the folders inside it)",
                    o.display(),
                    work.display()
                ),
            ));
        }
    }
}

/// Table and stage checks of a built-in stage's parameters, and the program's presence.
fn check_step(step: &Step, s: &RawSection, problems: &mut Vec<ConfigProblem>) {
    let def = match &step.target {
        Target::Stage { def, program } => {
            if program.is_none() {
                problems.push(ConfigProblem::new(
                    Some(&s.name),
                    Some("NAME"),
                    format!("stage binary '{}' not found beside backup-runner or on PATH", def.name),
                ));
            }
            *def
        }
        Target::Load { def, .. } => {
            if s.timeout.is_some() {
                problems.push(ConfigProblem::new(
                    Some(&s.name),
                    Some("TIMEOUT"),
                    "TIMEOUT applies to ACTION execute only (a loaded stage runs in-process)",
                ));
            }
            *def
        }
        Target::External { .. } => return check_external_args(step, s, problems),
    };
    let found = def.check(&step.params());
    let key_file_ok = !found.iter().any(|p| p.key == "KEY_FILE");
    for p in found {
        problems.push(ConfigProblem::new(Some(&s.name), Some(&format!("PARAMETERS.{}", p.key)), p.message));
    }
    // storage authenticates the run manifest with KEY_FILE: the same key rules as encryption
    // (a KEY_FILE it inherits is checked in the encryption section).
    if def.name == "storage"
        && key_file_ok
        && s.params.iter().any(|(k, _)| params::canonical_key(k) == "KEY_FILE")
        && let Some(path) = step.params().path("KEY_FILE")
    {
        let found = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!("does not exist: {}", path.display())),
            _ => encryption::key::load(&path).err().map(|e| e.to_string()),
        };
        if let Some(message) = found {
            problems.push(ConfigProblem::new(Some(&s.name), Some("PARAMETERS.KEY_FILE"), message));
        }
    }
}

/// A user program gets its parameters in argv, which every user of the machine can read: a
/// password in a URL there is refused (secret keys travel in the environment instead).
fn check_external_args(step: &Step, s: &RawSection, problems: &mut Vec<ConfigProblem>) {
    for (k, v) in &step.args {
        if step.is_secret(k) || !params::has_url_password(v) {
            continue;
        }
        let (section, key) = if s.params.iter().any(|(p, _)| p == k) {
            (s.name.as_str(), format!("PARAMETERS.{k}"))
        } else {
            ("GENERAL", k.clone())
        };
        problems.push(ConfigProblem::new(
            Some(section),
            Some(&key),
            format!(
                "holds a password in a URL ({}), which would reach the program's argv, readable by every user: put the password in a key whose name marks it secret, e.g. {}_PASSWORD, or in a file",
                mask_url_password(v),
                params::canonical_key(k)
            ),
        ));
    }
}

fn resolve(config: &Config, s: &RawSection, problems: &mut Vec<ConfigProblem>) -> Option<Target> {
    let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(Some(&s.name), Some(key), msg));
    match s.action {
        Action::Load => {
            if let Some(file) = &s.filename {
                return match registry::find_plugin(s.from.as_deref(), file, s.class.as_deref()) {
                    Some(p) => {
                        Some(Target::Load { def: p.def, label: format!("{}/{}/{}", p.from, p.filename, p.class) })
                    }
                    None => {
                        problem(
                            "FILENAME",
                            format!(
                                "unknown plugin {}/{}/{} (known: {})",
                                s.from.as_deref().unwrap_or("-"),
                                file,
                                s.class.as_deref().unwrap_or("-"),
                                registry::plugin_names()
                            ),
                        );
                        None
                    }
                };
            }
            let Some(name) = &s.stage_name else {
                problem(
                    "FILENAME",
                    format!(
                        "ACTION load needs FROM/FILENAME/CLASS (known: {}) or the NAME of a built-in stage",
                        registry::plugin_names()
                    ),
                );
                return None;
            };
            match registry::find_stage(name) {
                Some(registry::Known { def: Some(def), .. }) => Some(Target::Load { def, label: def.name.to_owned() }),
                Some(k) => {
                    problem("NAME", format!("stage '{}' is not available in this build", k.name));
                    None
                }
                None => {
                    problem(
                        "NAME",
                        format!(
                            "unknown stage '{name}' (plugins: {}; stages: {})",
                            registry::plugin_names(),
                            registry::stage_names()
                        ),
                    );
                    None
                }
            }
        }
        Action::Execute => {
            let known = s.stage_name.as_deref().and_then(registry::find_stage);
            let legacy = |k: &registry::Known, exe: &str| {
                k.def.is_some_and(|d| d.legacy_executables.contains(&exe))
                    || exe == format!("{}.py", k.name.replace('-', "_"))
            };
            match (&s.executable, known) {
                (Some(exe), Some(k)) if legacy(&k, exe) => builtin(k, &mut problem),
                (Some(exe), _) => external(config, s, exe, &mut problem),
                (None, Some(k)) => builtin(k, &mut problem),
                (None, None) => {
                    let msg = match &s.stage_name {
                        Some(n) => format!(
                            "unknown stage '{n}' (built-in stages: {}); to run your own program set EXECUTABLE (and EXECUTE_WITH)",
                            registry::stage_names()
                        ),
                        None => "ACTION execute needs NAME (a built-in stage) or EXECUTABLE (a program)".to_owned(),
                    };
                    problem("NAME", msg);
                    None
                }
            }
        }
    }
}

fn builtin(k: registry::Known, problem: &mut impl FnMut(&str, String)) -> Option<Target> {
    match k.def {
        Some(def) => Some(Target::Stage { def, program: find_program(def.name) }),
        None => {
            problem("NAME", format!("stage '{}' is not available in this build", k.name));
            None
        }
    }
}

fn external(config: &Config, s: &RawSection, exe: &str, problem: &mut impl FnMut(&str, String)) -> Option<Target> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if Path::new(exe).is_absolute() {
        candidates.push(PathBuf::from(exe));
    } else {
        let name = s.stage_name.as_deref().unwrap_or("");
        let mut bases: Vec<PathBuf> = config.general("HOME_FOLDER").map(PathBuf::from).into_iter().collect();
        bases.push(config.dir().to_path_buf());
        for b in bases {
            if !name.is_empty() {
                candidates.push(b.join(name).join(exe));
            }
            candidates.push(b.join(exe));
        }
    }
    let Some(program) = candidates.iter().find(|c| c.is_file()).cloned() else {
        let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        problem("EXECUTABLE", format!("program '{exe}' not found (looked for {})", tried.join(", ")));
        return None;
    };
    let interpreter = match s.execute_with.as_deref() {
        None => {
            if let Err(e) = check_executable(&program) {
                problem("EXECUTABLE", e);
                return None;
            }
            None
        }
        Some(w) => match find_interpreter(w) {
            Some(i) => Some(i),
            None => {
                problem("EXECUTE_WITH", format!("interpreter '{w}' not found on PATH"));
                return None;
            }
        },
    };
    Some(Target::External { program, interpreter })
}

/// A program run without EXECUTE_WITH must carry an execute bit the runner's user can use.
fn check_executable(program: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(program).map_err(|e| format!("cannot read {}: {e}", program.display()))?;
    let mode = meta.mode();
    let euid = ncb_core::sys::euid();
    let runnable = if euid == 0 {
        mode & 0o111 != 0
    } else if meta.uid() == euid {
        mode & 0o100 != 0
    } else {
        mode & 0o011 != 0
    };
    if runnable {
        return Ok(());
    }
    Err(format!(
        "program {} is not executable (mode {:04o}): chmod +x it, or set EXECUTE_WITH to its interpreter (bash, python)",
        program.display(),
        mode & 0o7777
    ))
}

/// `python` falls back to `python3` on systems that ship only the latter.
fn find_interpreter(w: &str) -> Option<String> {
    if Path::new(w).is_absolute() {
        return Path::new(w).is_file().then(|| w.to_owned());
    }
    if which(w).is_some() {
        return Some(w.to_owned());
    }
    (w == "python").then(|| which("python3").map(|_| "python3".to_owned())).flatten()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

/// A stage binary: beside backup-runner first, then on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(name)));
    beside.filter(|p| p.is_file()).or_else(|| which(name))
}

/// `https://user:pass@host` -> `https://user:****@host`, for every URL in the value.
pub fn mask_url_password(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut last = 0;
    for r in params::url_passwords(v) {
        out.push_str(&v[last..r.start]);
        out.push_str("****");
        last = r.end;
    }
    out.push_str(&v[last..]);
    out
}

/// The command line of a step as a shell would take it, secrets masked.
pub fn display(step: &Step) -> String {
    let mut parts: Vec<String> = step.secret_env().iter().map(|(k, _)| format!("{k}=****")).collect();
    match step.argv() {
        Some((prog, args)) => {
            parts.push(shell_quote(&prog.display().to_string()));
            parts.extend(args.iter().map(|a| shell_quote(&mask_url_password(a))));
        }
        None => {
            let label = match &step.target {
                Target::Load { label, .. } => label.clone(),
                _ => step.target_name(),
            };
            parts.push(format!("(in-process {label})"));
            parts.extend(step.flags().iter().map(|a| shell_quote(&mask_url_password(a))));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords() {
        assert_eq!(mask_url_password("https://u:p@h/x"), "https://u:****@h/x");
        assert_eq!(mask_url_password("https://h/x@y"), "https://h/x@y");
        assert_eq!(mask_url_password("/plain"), "/plain");
        assert_eq!(mask_url_password("s3://a:b@h ftp://c:d@i/"), "s3://a:****@h ftp://c:****@i/");
    }

    /// A built-in stage reads any of its parameters from `NCB_PARAM_<KEY>`: a value holding a
    /// URL password goes there, not into argv.
    #[test]
    fn url_passwords_reach_built_in_stages_outside_argv() {
        let step = Step {
            reader: None,
            section: "S".into(),
            target: Target::Stage { def: &storage::STAGE, program: Some(PathBuf::from("/bin/storage")) },
            args: vec![
                ("ENDPOINT_URL".into(), "https://user:hunter2@s3.example".into()),
                ("BUCKET_NAME".into(), "b".into()),
            ],
            timeout: None,
            on_failure: OnFailure::Stop,
        };
        assert_eq!(step.flags(), ["--BUCKET_NAME", "b"]);
        assert_eq!(step.secret_env(), [("NCB_PARAM_ENDPOINT_URL".into(), "https://user:hunter2@s3.example".into())]);
        let shown = display(&step);
        assert!(shown.contains("NCB_PARAM_ENDPOINT_URL=****") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn programs_without_an_execute_bit_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("backup.sh");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_executable(&prog).unwrap_err();
        assert!(e.contains("not executable (mode 0644)") && e.contains("EXECUTE_WITH"), "{e}");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_executable(&prog), Ok(()));
    }
}
