//! backup-runner: walks conf.json in file order and runs each section.

mod config;
mod exec;
mod lock;
mod notify;
mod plan;
mod registry;
mod report;
mod run;
mod schedule;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use ncb_core::context::new_run_id;
use ncb_core::{Error, ExitStatus, IoContext};

use crate::config::ConfigProblem;

fn cli() -> Command {
    Command::new("backup-runner")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run the sections of an nc-backup conf.json in order")
        .after_help("Exit codes: 0 success, 1 runtime failure, 2 usage or config error.")
        .arg(Arg::new("config").short('c').long("config").value_name("CONF.JSON").help("The config file").global(true))
        .subcommand(
            Command::new("schedule")
                .about("Install, list or remove the crontab entries of GENERAL SCHEDULE, or print systemd units")
                .arg(
                    Arg::new("action")
                        .value_parser(["install", "list", "remove"])
                        .help("What to do with this config's crontab entries"),
                )
                .arg(
                    Arg::new("user")
                        .long("user")
                        .short('u')
                        .value_name("USER")
                        .help("Whose crontab (default: the current user's)"),
                )
                .arg(
                    Arg::new("systemd")
                        .long("systemd")
                        .action(ArgAction::SetTrue)
                        .help("Print a systemd service and timer pair instead"),
                ),
        )
        .arg(Arg::new("run").short('r').long("run").action(ArgAction::SetTrue).help("Run every section in order"))
        .arg(
            Arg::new("check")
                .long("check")
                .action(ArgAction::SetTrue)
                .help("Validate the config, run nothing; every problem is reported"),
        )
        .arg(
            Arg::new("dry-run")
                .long("dry-run")
                .action(ArgAction::SetTrue)
                .help("Print each section and the exact command it would run (secrets masked)"),
        )
        .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print the run report as JSON on stdout"))
        .arg(
            Arg::new("verbose")
                .short('v')
                .long("verbose")
                .action(ArgAction::SetTrue)
                .help("Show progress on stderr even when not on a terminal"),
        )
        .arg(
            Arg::new("quiet")
                .short('q')
                .long("quiet")
                .action(ArgAction::SetTrue)
                .help("Only warnings and errors on stderr (the default when not on a terminal, as under cron)"),
        )
        .arg(Arg::new("generate-man").long("generate-man").action(ArgAction::SetTrue).hide(true))
        .arg(Arg::new("generate-completion").long("generate-completion").value_name("SHELL").hide(true))
}

fn main() -> ExitCode {
    let mut cmd = cli();
    let m = match cmd.try_get_matches_from_mut(std::env::args_os()) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitStatus::Usage } else { ExitStatus::Success }.into();
        }
    };
    if m.get_flag("generate-man") {
        return status(clap_mangen_render(cmd)).into();
    }
    if let Some(shell) = m.get_one::<String>("generate-completion") {
        return status(completion(cmd, shell)).into();
    }
    if let Some(sm) = m.subcommand_matches("schedule") {
        return match schedule_main(&m, sm) {
            Ok(()) => ExitStatus::Success.into(),
            Err(e) => {
                eprintln!("backup-runner: error: {}", ncb_core::stage::error_chain(&e));
                e.exit_status().into()
            }
        };
    }
    match real_main(&m) {
        Ok(s) => s.into(),
        Err(e) => {
            eprintln!("backup-runner: error: {}", ncb_core::stage::error_chain(&e));
            e.exit_status().into()
        }
    }
}

fn status(r: Result<(), Error>) -> ExitStatus {
    match r {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            eprintln!("backup-runner: error: {e}");
            e.exit_status()
        }
    }
}

fn clap_mangen_render(cmd: Command) -> Result<(), Error> {
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).ctx(|| "cannot write man page".into())
}

fn completion(mut cmd: Command, shell: &str) -> Result<(), Error> {
    let shell: clap_complete::Shell = shell.parse().map_err(|_| Error::usage(format!("unknown shell '{shell}'")))?;
    clap_complete::generate(shell, &mut cmd, "backup-runner", &mut std::io::stdout());
    Ok(())
}

fn report_problems(path: &Path, problems: &[ConfigProblem]) -> ExitStatus {
    let mut err = std::io::stderr().lock();
    for p in problems {
        let _ = writeln!(err, "{}: {p}", path.display());
    }
    let _ = writeln!(err, "{}: {} problem(s); nothing was run", path.display(), problems.len());
    ExitStatus::Usage
}

fn config_path(m: &ArgMatches) -> Result<PathBuf, Error> {
    m.get_one::<String>("config").map(PathBuf::from).ok_or_else(|| Error::usage("missing -c CONF.JSON"))
}

fn schedule_main(m: &ArgMatches, sm: &ArgMatches) -> Result<(), Error> {
    let path = config_path(m)?;
    let config = match config::load(&path) {
        Ok((c, problems)) if problems.is_empty() => c,
        Ok((_, problems)) | Err(problems) => {
            report_problems(&path, &problems);
            return Err(Error::config(format!("{}: fix the config first", path.display())));
        }
    };
    let raw = config
        .general("SCHEDULE")
        .ok_or_else(|| Error::config(format!("{}: GENERAL has no SCHEDULE", path.display())))?;
    let schedules = schedule::parse_list(raw).map_err(|e| Error::config(format!("GENERAL.SCHEDULE: {e}")))?;
    let conf = path.canonicalize().at("cannot resolve", &path)?;
    let runner =
        std::env::current_exe().and_then(|e| e.canonicalize()).ctx(|| "cannot find backup-runner's own path".into())?;
    let user = sm.get_one::<String>("user").map(String::as_str);
    let mut out = std::io::stdout().lock();
    if sm.get_flag("systemd") {
        let _ = write!(out, "{}", schedule::systemd_units(&schedules, &runner, &conf, user));
        return Ok(());
    }
    match sm.get_one::<String>("action").map(String::as_str) {
        Some("install") => {
            for l in schedule::install(user, &schedule::cron_lines(&schedules, &runner, &conf), &conf)? {
                let _ = writeln!(out, "{l}");
            }
        }
        Some("list") => {
            for l in schedule::list(user, &conf)? {
                let _ = writeln!(out, "{l}");
            }
        }
        Some("remove") => {
            let n = schedule::remove(user, &conf)?;
            let _ = writeln!(out, "removed {n} crontab entr{} of {}", if n == 1 { "y" } else { "ies" }, conf.display());
        }
        _ => return Err(Error::usage("schedule needs install, list or remove (or --systemd)")),
    }
    Ok(())
}

fn real_main(m: &ArgMatches) -> Result<ExitStatus, Error> {
    let path = config_path(m)?;
    let (run, check, dry) = (m.get_flag("run"), m.get_flag("check"), m.get_flag("dry-run"));
    if !(run || check || dry) {
        return Err(Error::usage(
            "nothing to do: give -r to run the config, --check to validate it or --dry-run to see the plan",
        ));
    }
    let (config, mut problems) = match config::load(&path) {
        Ok(c) => c,
        Err(problems) => return Ok(report_problems(&path, &problems)),
    };
    let started = chrono::Utc::now();
    let run_id = new_run_id(started);
    let steps = match plan::plan(&config, &run_id, started) {
        Ok(s) => s,
        Err(p) => {
            problems.extend(p);
            Vec::new()
        }
    };
    if !problems.is_empty() {
        return Ok(report_problems(&path, &problems));
    }
    let mut out = std::io::stdout().lock();
    if check {
        let _ = writeln!(out, "{}: OK, {} section(s)", path.display(), steps.len());
        return Ok(ExitStatus::Success);
    }
    if dry {
        let _ = writeln!(out, "# plan for {} (run id {run_id})", path.display());
        for (i, s) in steps.iter().enumerate() {
            let t = s.timeout.map(|t| format!(", timeout {}s", t.as_secs())).unwrap_or_default();
            let _ = writeln!(
                out,
                "[{}] {} ({} {}{t})\n    {}",
                i + 1,
                s.section,
                s.action(),
                s.target_name(),
                plan::display(s)
            );
        }
        return Ok(ExitStatus::Success);
    }
    drop(out);

    let general = plan::general_of(&config);
    let work = general.work_dir();
    create_private_dir(&work)?;
    let quiet = m.get_flag("quiet") || (!m.get_flag("verbose") && !std::io::stderr().is_terminal());
    ncb_core::logging::init("backup-runner", general.log_file().as_deref(), m.get_flag("verbose"), quiet)?;
    let _lock = lock::acquire(&work, &config.path, &run_id)?;
    let signal = run::watch_signals().ctx(|| "cannot install signal handlers".into())?;
    log::info!("run {run_id} of {} on {}: {} section(s)", path.display(), general.hostname, steps.len());

    config.notify.started();
    let report = run::run_all(&config, &steps, &run_id, started, &signal);
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let mut report_path = None;
    if let Some(dir) = general.log_dir() {
        let dest = dir.join(format!("run-{run_id}.json"));
        match ncb_core::atomic::write_file(&dest, json.as_bytes(), 0o640) {
            Ok(()) => report_path = Some(dest),
            Err(e) => log::error!("cannot write the run report: {}", ncb_core::stage::error_chain(&e)),
        }
    }
    config.notify.finished(report.failures().is_empty(), &run_id, &json, report_path.as_deref());
    if m.get_flag("json") {
        let _ = writeln!(std::io::stdout().lock(), "{json}");
    }
    let failures = report.failures();
    if failures.is_empty() {
        log::info!(
            "run {run_id} ok: {} artifacts, {} bytes, {} warnings",
            report.artifacts,
            report.bytes,
            report.warnings
        );
        return Ok(ExitStatus::Success);
    }
    for f in &failures {
        log::error!(
            "section {} {}: {}",
            f.name,
            format!("{:?}", f.status).to_lowercase(),
            f.error.as_deref().unwrap_or("")
        );
    }
    let names: Vec<&str> = failures.iter().map(|f| f.name.as_str()).collect();
    log::error!("run {run_id} {:?}: section(s) {}", report.status, names.join(", "));
    Ok(ExitStatus::Failure)
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).at("cannot create WORK_FOLDER", dir)
}
