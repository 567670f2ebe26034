//! What a stage is ([`StageDef`]) and the `main` every stage binary shares ([`stage_main`]).

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::context::{GENERAL_PARAMS, General, StageCtx, env, new_run_id};
use crate::error::{Error, ExitStatus, Result};
use crate::params::{self, Kind, ParamSpec, Params, Problem};
use crate::report::StageReport;

/// A pipeline stage: its name, its parameters and its entry point. The binary's `main.rs`
/// passes it to [`stage_main`]; the runner calls `run` in-process for ACTION `load`.
#[derive(Debug)]
pub struct StageDef {
    /// Binary name, and the canonical NAME in a config.
    pub name: &'static str,
    /// Other NAMEs that select this stage (nc-backup-py's `mysql_backup`, ...).
    pub aliases: &'static [&'static str],
    /// nc-backup-py script names (EXECUTABLE) that mean this built-in stage.
    pub legacy_executables: &'static [&'static str],
    pub about: &'static str,
    pub params: &'static [ParamSpec],
    /// Checks between parameters that the table cannot express; no side effects.
    pub validate: fn(&Params) -> Vec<Problem>,
    pub run: fn(&StageCtx, &Params) -> Result<StageReport>,
}

impl StageDef {
    /// Every parameter the stage accepts: GENERAL's, then its own.
    pub fn all_params(&self) -> Vec<&'static ParamSpec> {
        GENERAL_PARAMS.iter().chain(self.params).collect()
    }

    /// Table checks plus the stage's own.
    pub fn check(&self, p: &Params) -> Vec<Problem> {
        let mut problems = params::check(&self.all_params(), p);
        if problems.is_empty() {
            problems.extend((self.validate)(p));
        }
        problems
    }

    pub fn is_secret(&self, key: &str) -> bool {
        self.params.iter().any(|s| s.key == key && s.secret)
    }

    /// Runs the stage on already-checked parameters: placeholders expanded, report filled in.
    pub fn execute(&self, ctx: &StageCtx, p: &Params) -> Result<StageReport> {
        let started = Instant::now();
        let expanded = expand_params(p, ctx)?;
        let mut report = (self.run)(ctx, &expanded)?;
        report.stage = self.name.to_owned();
        report.section.clone_from(&ctx.section);
        report.run_id.clone_from(&ctx.run_id);
        report.duration_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        Ok(report)
    }
}

/// A `validate` for stages with nothing to check beyond their table.
pub fn no_extra_checks(_: &Params) -> Vec<Problem> {
    Vec::new()
}

/// Replaces placeholders in every value.
pub fn expand_params(p: &Params, ctx: &StageCtx) -> Result<Params> {
    let vars = ctx.vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = Params::new();
    for (key, values) in p.iter() {
        for v in values {
            let e = params::expand(v, &vars).map_err(|e| Error::usage(format!("--{key}: {e}")))?;
            out.push(key, e);
        }
    }
    Ok(out)
}

/// The clap command of a stage: every parameter under both spellings.
pub fn command(def: &StageDef) -> Command {
    let mut cmd = Command::new(def.name)
        .about(def.about)
        .version(env!("CARGO_PKG_VERSION"))
        .after_help("Values: booleans are True/False (any case); lists are space-separated or a JSON array.\nExit codes: 0 success, 1 runtime failure, 2 usage or config error.")
        .arg(Arg::new("VERBOSE").long("verbose").short('v').action(ArgAction::SetTrue).help("Show debug messages"))
        .arg(Arg::new("QUIET").long("quiet").short('q').action(ArgAction::SetTrue).help("Show only warnings and errors"))
        .arg(Arg::new("GENERATE_MAN").long("generate-man").action(ArgAction::SetTrue).hide(true))
        .arg(Arg::new("GENERATE_COMPLETION").long("generate-completion").value_name("SHELL").hide(true));
    for (i, spec) in def.all_params().into_iter().enumerate() {
        let heading = if i < GENERAL_PARAMS.len() { "GENERAL (passed by backup-runner)" } else { "Parameters" };
        cmd = cmd.arg(param_arg(spec).help_heading(heading));
    }
    cmd
}

fn param_arg(spec: &ParamSpec) -> Arg {
    let mut help = spec.help.to_owned();
    if spec.required {
        help.push_str(" [required]");
    }
    if spec.kind == Kind::Ignored {
        help.push_str(" [accepted for nc-backup-py, ignored]");
    }
    let mut arg = Arg::new(spec.key).long(spec.key).visible_alias(spec.kebab()).help(help);
    if let Some(c) = spec.short {
        arg = arg.short(c);
    }
    match spec.kind {
        Kind::Switch => arg.action(ArgAction::SetTrue),
        Kind::Paths | Kind::List => arg.action(ArgAction::Append).value_name("LIST"),
        Kind::Bool => arg.action(ArgAction::Set).value_name("True|False"),
        Kind::Int => arg.action(ArgAction::Set).value_name("N"),
        Kind::Path => arg.action(ArgAction::Set).value_name("PATH"),
        _ => arg.action(ArgAction::Set).value_name("VALUE"),
    }
}

fn params_from_matches(def: &StageDef, m: &ArgMatches) -> Params {
    let mut p = Params::new();
    for spec in def.all_params() {
        if spec.kind == Kind::Switch {
            if m.get_flag(spec.key) {
                p.set(spec.key, "True");
            }
        } else if let Some(vals) = m.get_many::<String>(spec.key) {
            for v in vals {
                p.push(spec.key, v.clone());
            }
        }
    }
    // Secrets arrive in the environment from the runner, never in argv.
    for spec in def.all_params() {
        if !p.has(spec.key)
            && let Ok(v) = std::env::var(format!("{}{}", env::PARAM_PREFIX, spec.key))
        {
            p.set(spec.key, v);
        }
    }
    p
}

/// The whole life of a stage binary: parse, check, log set-up, run, report, exit code.
pub fn stage_main(def: &StageDef) -> ExitCode {
    stage_main_from(def, std::env::args_os().collect()).into()
}

pub fn stage_main_from(def: &StageDef, argv: Vec<OsString>) -> ExitStatus {
    let mut cmd = command(def);
    let m = match cmd.try_get_matches_from_mut(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitStatus::Usage } else { ExitStatus::Success };
        }
    };
    if m.get_flag("GENERATE_MAN") || m.contains_id("GENERATE_COMPLETION") {
        return generate(cmd, &m);
    }
    let params = params_from_matches(def, &m);
    let problems = def.check(&params);
    if !problems.is_empty() {
        for p in &problems {
            let _ = writeln!(
                std::io::stderr(),
                "{}: error: --{} (--{}): {}",
                def.name,
                p.key,
                params::kebab(&p.key),
                p.message
            );
        }
        return ExitStatus::Usage;
    }
    let general = General::from_params(&params);
    let log_file = if std::env::var_os(env::LOG_CAPTURED).is_some() { None } else { general.log_file() };
    if let Err(e) = crate::logging::init(def.name, log_file.as_deref(), m.get_flag("VERBOSE"), m.get_flag("QUIET")) {
        let _ = writeln!(std::io::stderr(), "{}: error: {e:#}", def.name);
        return ExitStatus::Failure;
    }
    let run_id = std::env::var(env::RUN_ID).unwrap_or_else(|_| new_run_id(chrono::Utc::now()));
    let section = std::env::var(env::SECTION).unwrap_or_else(|_| def.name.to_owned());
    let mut ctx = StageCtx::new(general, run_id, section);
    ctx.earlier_failed = std::env::var_os(env::EARLIER_FAILED).is_some_and(|v| v == "1");
    ctx.base_missing = std::env::var(env::BASE_MISSING).ok().filter(|v| !v.is_empty());
    if let Some(path) = std::env::var_os(env::LINEAGE) {
        match crate::lineage::Lineage::read(std::path::Path::new(&path)) {
            Ok(l) => ctx.lineage = l,
            Err(e) => log::warn!("{e}"),
        }
    }
    match def.execute(&ctx, &params) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{}", report.to_line()).and_then(|()| out.flush()).is_err() {
                return ExitStatus::Failure;
            }
            ExitStatus::Success
        }
        Err(e) => {
            log::error!("{}", error_chain(&e));
            e.exit_status()
        }
    }
}

/// "message: cause: cause".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.ends_with(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

fn generate(mut cmd: Command, m: &ArgMatches) -> ExitStatus {
    let mut out = std::io::stdout().lock();
    if m.get_flag("GENERATE_MAN") {
        return match clap_mangen::Man::new(cmd).render(&mut out) {
            Ok(()) => ExitStatus::Success,
            Err(_) => ExitStatus::Failure,
        };
    }
    let shell = m.get_one::<String>("GENERATE_COMPLETION").map(String::as_str).unwrap_or("bash");
    let Ok(shell) = shell.parse::<clap_complete::Shell>() else {
        let _ = writeln!(std::io::stderr(), "error: unknown shell '{shell}' (bash, zsh, fish, elvish, powershell)");
        return ExitStatus::Usage;
    };
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    ExitStatus::Success
}
