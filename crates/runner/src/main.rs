//! backup-runner: walks conf.json in file order and runs each section.

mod apps;
mod browse;
mod config;
mod daemon;
mod exec;
mod lock;
mod notify;
mod plan;
mod prune;
mod readback;
mod recover;
mod registry;
mod report;
mod restore;
mod run;
mod schedule;
mod verify;
mod yaml;

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
        .arg(Arg::new("config").short('c').long("config").value_name("CONF.JSON").help("The config file (conf.json, or a seeds/000 config.yaml)").global(true))
        .arg(
            Arg::new("identity")
                .long("identity")
                .value_name("FILE")
                .global(true)
                .action(ArgAction::Append)
                .help("An identity (private key, 0600) for runs encrypted for recipients (verify, restore, ls, find)"),
        )
        .arg(
            Arg::new("signer")
                .long("signer")
                .value_name("FILE.pub")
                .global(true)
                .action(ArgAction::Append)
                .help("A host's verifying key: run manifests must carry its valid signature (verify, restore)"),
        )
        .arg(
            Arg::new("job")
                .long("job")
                .value_name("PROJECT/N")
                .global(true)
                .help("The job of a YAML config with several (PROJECT/N: the Nth backup of PROJECT)"),
        )
        .subcommand(
            Command::new("c3")
                .about("C3's command line (seeds/001): schedule the upload (-n) or download (-d) job of its config.yaml")
                .arg(Arg::new("new").short('n').long("new").action(ArgAction::SetTrue).help("Schedule the upload job (job.runtime.at)"))
                .arg(Arg::new("download").short('d').long("download").action(ArgAction::SetTrue).help("Schedule the download job"))
                .arg(Arg::new("file").short('f').long("config-file").value_name("CONFIG_FILE").default_value("config.yaml").help("C3's config (default ./config.yaml)"))
                .arg(Arg::new("run").long("run").value_parser(["upload", "download"]).help("Run a job now (what the crontab lines run)"))
                .arg(Arg::new("user").long("user").short('u').value_name("USER").help("Whose crontab (default: yours)")),
        )
        .subcommand(
            Command::new("convert")
                .about("Print the conf.json of each job of a YAML config (secrets masked)"),
        )
        .subcommand(apps::command())
        .subcommand(
            Command::new("schedule")
                .about("Install, list or remove the crontab entries of GENERAL SCHEDULE, or print systemd units")
                .arg(
                    Arg::new("action")
                        .value_parser(["install", "sync", "list", "remove"])
                        .help("What to do with this config's crontab entries (sync: add the missing, remove the stale)"),
                )
                .arg(
                    Arg::new("dry-run")
                        .long("dry-run")
                        .action(ArgAction::SetTrue)
                        .help("sync: print what would be added and removed; change nothing"),
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
        .subcommand(
            Command::new("runs")
                .about("List the runs in every destination of the config's storage sections")
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("ls")
                .about("List what a run holds under a path, reading only its files' index (no archive is downloaded)")
                .arg(run_arg("The run: an id or latest (default)"))
                .arg(Arg::new("path").value_name("PATH").help("Only what is at or under this path (as backed up: /etc/nginx)"))
                .arg(key_arg())
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("find")
                .about("Every run that holds a match of PATTERN, newest first, from the runs' indexes")
                .arg(
                    Arg::new("pattern")
                        .value_name("PATTERN")
                        .required(true)
                        .help("A glob: against file names (nginx.conf, *.sql), or whole paths when it has a / (/etc/**/*.conf)"),
                )
                .arg(key_arg())
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("verify")
                .about("Check runs against their run manifests; exit 1 naming any missing or damaged file")
                .arg(run_arg("The run to check: an id, latest (default) or all"))
                .arg(Arg::new("read-data").long("read-data").action(ArgAction::SetTrue).help(
                    "Read every file back and hash it; decrypt and authenticate encrypted ones when the key is at hand",
                ))
                .arg(
                    Arg::new("read-data-subset")
                        .long("read-data-subset")
                        .value_name("N%")
                        .conflicts_with("read-data")
                        .help("As --read-data, for a random N% of the files"),
                )
                .arg(key_arg())
                .arg(unsigned_arg())
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("restore")
                .about("Download, verify, decrypt and unpack a run into a folder, in one pass")
                .arg(run_arg("The run to restore: an id or latest (default)"))
                .arg(
                    Arg::new("to")
                        .long("to")
                        .value_name("DIR")
                        .required_unless_present("thaw")
                        .help("The folder to restore into (created if missing; must be empty unless --force)"),
                )
                .arg(
                    Arg::new("thaw")
                        .long("thaw")
                        .value_name("DAYS")
                        .value_parser(clap::value_parser!(u32).range(1..=365))
                        .help("Restore nothing: ask the store to thaw the run's objects in GLACIER or DEEP_ARCHIVE for DAYS days (1-365); run the same restore without --thaw once they are readable"),
                )
                .arg(
                    Arg::new("only")
                        .long("only")
                        .value_name("SECTION")
                        .action(ArgAction::Append)
                        .help("Restore only what this config section backed up (repeatable)"),
                )
                .arg(
                    Arg::new("include")
                        .long("include")
                        .value_name("PATH_OR_GLOB")
                        .action(ArgAction::Append)
                        .help("Restore only these files and folders of the file archives (repeatable; a path as backed up, or a glob as for find); fetches only the archives that hold them"),
                )
                .arg(
                    Arg::new("keep-going")
                        .long("keep-going")
                        .action(ArgAction::SetTrue)
                        .help("A damaged or missing part costs only the file it belongs to: everything else is restored, and exit 1 names what was not"),
                )
                .arg(
                    Arg::new("force")
                        .long("force")
                        .action(ArgAction::SetTrue)
                        .help("Restore into a folder that is not empty: folders merged, files replaced"),
                )
                .arg(key_arg())
                .arg(unsigned_arg())
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("prune")
                .about("Apply the retention (KEEP_*) of the config's storage sections without making a backup")
                .arg(
                    Arg::new("dry-run")
                        .long("dry-run")
                        .action(ArgAction::SetTrue)
                        .help("List what would be deleted, delete nothing"),
                )
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("daemon")
                .about("Run configs on their GENERAL SCHEDULE without cron: one process for several configs")
                .arg(
                    Arg::new("configs")
                        .value_name("CONF.JSON")
                        .action(ArgAction::Append)
                        .help("More configs (besides -c)"),
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
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Show progress on stderr even when not on a terminal"),
        )
        .arg(
            Arg::new("quiet")
                .short('q')
                .long("quiet")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Only warnings and errors on stderr (the default when not on a terminal, as under cron)"),
        )
        .arg(Arg::new("generate-man").long("generate-man").action(ArgAction::SetTrue).hide(true))
        .arg(Arg::new("generate-completion").long("generate-completion").value_name("SHELL").hide(true))
}

fn json_arg() -> Arg {
    Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print the result as JSON on stdout")
}

fn run_arg(help: &'static str) -> Arg {
    Arg::new("run").long("run").value_name("ID|latest").help(help)
}

fn unsigned_arg() -> Arg {
    Arg::new("allow-unsigned")
        .long("allow-unsigned")
        .action(ArgAction::SetTrue)
        .help("Accept a run manifest without MAC for a run with encrypted files (stored by `storage` without KEY_FILE)")
}

fn key_arg() -> Arg {
    Arg::new("key-file")
        .long("key-file")
        .value_name("PATH")
        .help("The encryption key file (default: KEY_FILE of the config's encryption section)")
}

/// The start time of a new run, in a later second than the last run of this WORK_FOLDER (its
/// lock file names it): run ids sort by time only to the second, and an increment must sort
/// after its base. A last run in this second, or up to 10 s ahead (a clock stepped back a
/// little), is waited for; further ahead, the clock was set back and is not waited for (said).
fn distinct_start(work: &Path) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    let Some(last) = last_run_stamp(work) else { return now };
    let next = last + chrono::Duration::seconds(1);
    let wait = next.signed_duration_since(now);
    if wait > chrono::Duration::zero() && wait <= chrono::Duration::seconds(11) {
        std::thread::sleep(wait.to_std().unwrap_or_default());
        return chrono::Utc::now().max(next);
    }
    if wait > chrono::Duration::zero() {
        eprintln!(
            "backup-runner: warning: the last run of {} started at {last}, after this clock's now ({now}): run ids will sort before it",
            work.display()
        );
    }
    now
}

/// The second the last run of WORK_FOLDER started, from its lock file
/// (`pid N, run <RUN_ID> of <config>`).
fn last_run_stamp(work: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let holder = std::fs::read_to_string(lock::lock_path(work)).ok()?;
    let stamp = holder.split_once(", run ")?.1.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc())
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
    if m.get_flag("quiet") {
        ncb_core::progress::suppress();
    }
    if m.get_flag("generate-man") {
        return status(clap_mangen_render(cmd)).into();
    }
    if let Some(shell) = m.get_one::<String>("generate-completion") {
        return status(completion(cmd, shell)).into();
    }
    if let Some(files) = m.get_many::<String>("identity") {
        let mut ids = Vec::new();
        for f in files {
            match encryption::pke::load_identity(Path::new(f)) {
                Ok(i) => ids.push(i),
                Err(e) => {
                    eprintln!("backup-runner: error: --identity: {e}");
                    return e.exit_status().into();
                }
            }
        }
        let _ = readback::IDENTITIES.set(ids);
    }
    if let Some(files) = m.get_many::<String>("signer") {
        let mut keys = Vec::new();
        for f in files {
            match encryption::sign::load_verify(Path::new(f)) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    eprintln!("backup-runner: error: --signer: {e}");
                    return e.exit_status().into();
                }
            }
        }
        let _ = readback::SIGNERS.set(keys);
    }
    if let Some(j) = m.get_one::<String>("job") {
        let _ = yaml::SELECTED_JOB.set(j.clone());
    }
    if let Some(path) = m.get_one::<String>("config").map(PathBuf::from)
        && yaml::is_yaml(&path)
        && let Err(e) = dotenv_reexec(&path)
    {
        eprintln!("backup-runner: error: {e}");
        return ExitStatus::Usage.into();
    }
    let sub = match m.subcommand() {
        Some(("runs", sm)) => Some(runs_main(&m, sm)),
        Some(("ls", sm)) => Some(ls_main(&m, sm)),
        Some(("find", sm)) => Some(find_main(&m, sm)),
        Some(("verify", sm)) => Some(verify_main(&m, sm)),
        Some(("restore", sm)) => Some(restore_main(&m, sm)),
        Some(("daemon", sm)) => Some(daemon_main(&m, sm).map(|()| ExitStatus::Success)),
        Some(("prune", sm)) => Some(prune_main(&m, sm)),
        Some(("apps", sm)) => Some(apps::main(&m, sm)),
        Some(("convert", _)) => Some(convert_main(&m)),
        Some(("c3", sm)) => Some(c3_main(&m, sm)),
        _ => None,
    };
    if let Some(r) = sub {
        return match r {
            Ok(s) => s.into(),
            Err(e) => {
                eprintln!("backup-runner: error: {}", ncb_core::stage::error_chain(&e));
                e.exit_status().into()
            }
        };
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

/// A YAML config's `.env` (seeds/000 keeps storage credentials there, 0600) reaches every
/// stage and this process's own S3 clients: the runner starts itself again with its variables
/// added to the environment (those already set win), once.
fn dotenv_reexec(config: &Path) -> Result<(), String> {
    const DONE: &str = "NCB_DOTENV_LOADED";
    if std::env::var_os(DONE).is_some() {
        return Ok(());
    }
    let vars = yaml::dotenv_beside(config).map_err(|e| e.to_string())?;
    let add: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| std::env::var_os(k).is_none()).collect();
    if add.is_empty() {
        return Ok(());
    }
    let err = restart(&[], &add, DONE);
    Err(format!("cannot start again with the .env beside {}: {err}", config.display()))
}

/// Replaces this process with backup-runner started again with the same arguments, under the
/// `wrapper` command (nice, ionice) and with `envs` added, `marker` set so that it happens
/// once. Returns only on failure.
fn restart(wrapper: &[String], envs: &[(String, String)], marker: &str) -> std::io::Error {
    let me = match std::env::current_exe() {
        Ok(m) => m,
        Err(e) => return e,
    };
    let mut c = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(&me);
            c
        }
        None => std::process::Command::new(&me),
    };
    c.args(std::env::args_os().skip(1)).envs(envs.iter().map(|(k, v)| (k, v))).env(marker, "1");
    std::os::unix::process::CommandExt::exec(&mut c)
}

/// `c3 -n|-d [-f config.yaml]`: C3's command line. `-n` and `-d` put the upload and download
/// jobs in the crontab at job.runtime.at (replacing their earlier lines); `--run` runs one now.
fn c3_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let path = PathBuf::from(sm.get_one::<String>("file").map_or("config.yaml", String::as_str));
    let text = std::fs::read_to_string(&path).at("cannot read", &path)?;
    let root = match yaml::parse(&text) {
        Ok(r) => r,
        Err(problems) => {
            report_problems(&path, &problems);
            return Err(Error::config(format!("{}: fix the config first", path.display())));
        }
    };
    let c = match yaml::c3::read(&path, &text, &root) {
        Ok(c) => c,
        Err(problems) => {
            report_problems(&path, &problems);
            return Err(Error::config(format!("{}: fix the config first", path.display())));
        }
    };
    ncb_core::logging::init("backup-runner c3", None, m.get_flag("verbose"), m.get_flag("quiet"))?;
    if let Some(job) = sm.get_one::<String>("run") {
        let mut p = ncb_core::params::Params::new();
        for (k, v) in yaml::c3::storage_params(&c) {
            match v {
                serde_json::Value::Array(a) => {
                    p.set(&k, a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
                }
                other => p.set(&k, other.as_str().unwrap_or_default()),
            }
        }
        if job == "download" {
            p.set("DOWNLOAD", "True");
            p.set("SOURCE", "s3");
            p.set("DESTINATION", c.input.clone());
            if let Some(n) = c.max_download {
                p.set("MAX_DOWNLOAD_FILES", n.to_string());
            }
        } else {
            p.set("OBJECTIVES", c.input.clone());
            if let Some(n) = c.max_upload {
                p.set("MAX_UPLOAD_FILES", n.to_string());
            }
        }
        let problems = storage::STAGE.check(&p);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(Error::config(list.join("; ")));
        }
        let general =
            ncb_core::context::General { hostname: ncb_core::context::system_hostname(), ..Default::default() };
        let ctx =
            ncb_core::StageCtx::new(general, new_run_id(chrono::Utc::now()), format!("C3_{}", job.to_uppercase()));
        let report = storage::STAGE.execute(&ctx, &p)?;
        print_json(&report);
        return Ok(ExitStatus::Success);
    }
    let (new, download) = (sm.get_flag("new"), sm.get_flag("download"));
    if !new && !download {
        return Err(Error::usage("c3 needs -n (upload job), -d (download job) or --run"));
    }
    let conf = path.canonicalize().at("cannot resolve", &path)?;
    let runner =
        std::env::current_exe().and_then(|e| e.canonicalize()).ctx(|| "cannot find backup-runner's own path".into())?;
    let q = |p: &Path| ncb_core::params::shell_quote(&p.display().to_string()).replace('%', "\\%");
    let user = sm.get_one::<String>("user").map(String::as_str);
    for (on, job) in [(new, "upload"), (download, "download")] {
        if !on {
            continue;
        }
        let tag = format!("# nc-backup c3 {job}: {}", conf.display()).replace('%', "\\%");
        let line = format!("{} {} -q c3 --run {job} -f {} {tag}", c.schedule, q(&runner), q(&conf));
        print_sync(schedule::reconcile(user, &[line], &|l: &str| l.ends_with(&tag), false)?, false);
    }
    Ok(ExitStatus::Success)
}

/// `convert`: each job of a YAML config as the conf.json it runs, secrets masked.
fn convert_main(m: &ArgMatches) -> Result<ExitStatus, Error> {
    let path = config_path(m)?;
    if !yaml::is_yaml(&path) {
        return Err(Error::usage(format!("{}: convert reads a YAML config (.yaml, .yml)", path.display())));
    }
    let text = std::fs::read_to_string(&path).at("cannot read", &path)?;
    let jobs = match yaml::jobs(&path, &text) {
        Ok(j) => j,
        Err(problems) => {
            report_problems(&path, &problems);
            return Err(Error::config(format!("{}: fix the config first", path.display())));
        }
    };
    let mut out = std::io::stdout().lock();
    for j in jobs {
        let mut conf = j.conf.clone();
        for ptr in &j.secrets {
            if let Some(v) = conf.pointer_mut(ptr) {
                *v = serde_json::Value::String("****".into());
                eprintln!(
                    "backup-runner: job {}: {ptr} masked: put the secret in a 0600 file (PASSFILE / CREDENTIAL_PATH)",
                    j.id
                );
            }
        }
        let _ = writeln!(out, "// job {}: runs at {}", j.id, j.intervals.join(", "));
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&conf).unwrap_or_default());
    }
    Ok(ExitStatus::Success)
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
    if yaml::is_yaml(&path) {
        return schedule_yaml(&path, sm);
    }
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
        let _ = write!(
            out,
            "{}",
            schedule::systemd_units(
                &schedules,
                &runner,
                &conf,
                user,
                (config.general("NICE"), config.general("IONICE")),
                config.general("FILES_READER").and_then(|m| config::files_reader_mode(m).ok().flatten()),
            )
        );
        return Ok(());
    }
    match sm.get_one::<String>("action").map(String::as_str) {
        Some("sync") => {
            let wanted = schedule::cron_lines(&schedules, &runner, &conf);
            let t = schedule::tag(&conf);
            print_sync(
                schedule::reconcile(user, &wanted, &|l: &str| l.ends_with(&t), sm.get_flag("dry-run"))?,
                sm.get_flag("dry-run"),
            );
        }
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

fn print_sync((added, removed): (Vec<String>, Vec<String>), dry: bool) {
    let mut out = std::io::stdout().lock();
    for l in &removed {
        let _ = writeln!(out, "- {l}");
    }
    for l in &added {
        let _ = writeln!(out, "+ {l}");
    }
    let _ = match (added.len() + removed.len(), dry) {
        (0, _) => writeln!(out, "crontab already in line"),
        (_, true) => writeln!(out, "dry run: {} to add, {} to remove; crontab not changed", added.len(), removed.len()),
        _ => writeln!(out, "{} added, {} removed", added.len(), removed.len()),
    };
}

/// `schedule` for a YAML config: one crontab line per job and interval.
fn schedule_yaml(path: &Path, sm: &ArgMatches) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).at("cannot read", path)?;
    let jobs = match yaml::jobs(path, &text) {
        Ok(j) => j,
        Err(problems) => {
            report_problems(path, &problems);
            return Err(Error::config(format!("{}: fix the config first", path.display())));
        }
    };
    let conf = path.canonicalize().at("cannot resolve", path)?;
    let runner =
        std::env::current_exe().and_then(|e| e.canonicalize()).ctx(|| "cannot find backup-runner's own path".into())?;
    let user = sm.get_one::<String>("user").map(String::as_str);
    let ids: Vec<(String, Vec<String>)> = jobs.iter().map(|j| (j.id.clone(), j.intervals.clone())).collect();
    let wanted = schedule::job_lines(&ids, &runner, &conf);
    let mine = |l: &str| schedule::is_job_line(l, &conf);
    let dry = sm.get_flag("dry-run");
    match sm.get_one::<String>("action").map(String::as_str) {
        Some("sync" | "install") => print_sync(schedule::reconcile(user, &wanted, &mine, dry)?, dry),
        Some("list") => {
            let mut out = std::io::stdout().lock();
            for l in schedule::read_crontab(user)?.lines().filter(|l| mine(l)) {
                let _ = writeln!(out, "{l}");
            }
        }
        Some("remove") => print_sync(schedule::reconcile(user, &[], &mine, dry)?, dry),
        _ => return Err(Error::usage("schedule needs sync, install, list or remove")),
    }
    Ok(())
}

/// The config for runs/verify/restore, with logging to stderr (and LOG_FOLDER).
fn load_config(m: &ArgMatches, who: &str) -> Result<config::Config, Error> {
    let path = config_path(m)?;
    let config = match config::load(&path) {
        Ok((c, problems)) if problems.is_empty() => c,
        Ok((_, problems)) | Err(problems) => {
            report_problems(&path, &problems);
            return Err(Error::config(format!("{}: fix the config first", path.display())));
        }
    };
    let quiet = m.get_flag("quiet");
    ncb_core::logging::init(who, None, m.get_flag("verbose"), quiet)?;
    Ok(config)
}

fn print_json(v: &impl serde::Serialize) {
    let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn master_key(config: &config::Config, sm: &ArgMatches) -> Result<Option<encryption::key::MasterKey>, Error> {
    let given = sm.get_one::<String>("key-file").map(PathBuf::from);
    match readback::key_file(config, given.as_deref())? {
        Some(k) => encryption::key::load(&k).map(Some),
        None => Ok(None),
    }
}

fn runs_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let config = load_config(m, "backup-runner runs")?;
    let (list, failed) = verify::runs(&readback::sources(&config)?)?;
    if sm.get_flag("json") {
        print_json(&list);
    } else {
        let _ = verify::print_runs(&list, &mut std::io::stdout().lock());
    }
    Ok(if failed { ExitStatus::Failure } else { ExitStatus::Success })
}

/// The archives' indexes in WORK_FOLDER wait for storage only while their run is pending (a
/// journal): the others go, with the encrypted copies a killed storage left.
fn sweep_indexes(work: &std::path::Path) {
    let pending = ncb_core::journal::pending_runs(work);
    let dir = work.join(filesbackup::INDEX_DIR);
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !pending.iter().any(|r| name.contains(r.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(&dir);
    for e in std::fs::read_dir(work).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".ncb-index-enc-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What `ls` and `find` print: a line per entry as it comes, or one JSON array at the end.
struct Listing {
    json: bool,
    with_run: bool,
    all: Vec<browse::Listed>,
    n: u64,
}

impl Listing {
    fn new(json: bool, with_run: bool) -> Self {
        Listing { json, with_run, all: Vec::new(), n: 0 }
    }

    fn add(&mut self, l: browse::Listed) -> Result<(), Error> {
        self.n += 1;
        if self.json {
            self.all.push(l);
            return Ok(());
        }
        browse::print(&l, self.with_run, &mut std::io::stdout().lock()).map_err(|e| Error::io("stdout", e))
    }

    /// Prints the JSON array when asked for; how many entries there were.
    fn finish(self) -> u64 {
        if self.json {
            print_json(&self.all);
        }
        self.n
    }
}

fn ls_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let config = load_config(m, "backup-runner ls")?;
    let key = master_key(&config, sm)?;
    let wanted = sm.get_one::<String>("run").map_or("latest", String::as_str);
    let under = sm.get_one::<String>("path").map_or("", String::as_str);
    let mut out = Listing::new(sm.get_flag("json"), false);
    let run = browse::ls(&readback::sources(&config)?, wanted, under, key.as_ref(), &mut |l| out.add(l))?;
    let n = out.finish();
    if n == 0 && !under.is_empty() {
        log::error!("run {run} holds nothing at or under {under}");
        return Ok(ExitStatus::Failure);
    }
    Ok(ExitStatus::Success)
}

fn find_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let config = load_config(m, "backup-runner find")?;
    let key = master_key(&config, sm)?;
    let pattern = browse::Pattern::new(sm.get_one::<String>("pattern").map_or("", String::as_str))?;
    let mut out = Listing::new(sm.get_flag("json"), true);
    let warnings = browse::find(&readback::sources(&config)?, &pattern, key.as_ref(), &mut |l| out.add(l))?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let n = out.finish();
    Ok(if n == 0 { ExitStatus::Failure } else { ExitStatus::Success })
}

fn verify_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let config = load_config(m, "backup-runner verify")?;
    let read = match (sm.get_flag("read-data"), sm.get_one::<String>("read-data-subset")) {
        (true, _) => verify::ReadData::All,
        (false, Some(p)) => verify::ReadData::Subset(verify::ReadData::parse_subset(p)?),
        (false, None) => verify::ReadData::None,
    };
    let key = if read == verify::ReadData::None { None } else { master_key(&config, sm)? };
    let wanted = sm.get_one::<String>("run").map_or("latest", String::as_str);
    let verdicts =
        verify::verify(&readback::sources(&config)?, wanted, read, key.as_ref(), sm.get_flag("allow-unsigned"))?;
    if sm.get_flag("json") {
        print_json(&verdicts);
    } else if m.get_flag("quiet") {
        // From cron: silence unless something is wrong.
        let bad: Vec<_> = verdicts.iter().filter(|v| !v.problems.is_empty()).cloned().collect();
        let _ = verify::print_verdicts(&bad, &mut std::io::stdout().lock());
    } else {
        let _ = verify::print_verdicts(&verdicts, &mut std::io::stdout().lock());
    }
    let bad = verdicts.iter().filter(|v| !v.problems.is_empty()).count();
    if bad > 0 {
        log::error!("verify: {bad} of {} run check(s) found problems", verdicts.len());
        return Ok(ExitStatus::Failure);
    }
    Ok(ExitStatus::Success)
}

fn restore_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let config = load_config(m, "backup-runner restore")?;
    if let Some(&days) = sm.get_one::<u32>("thaw") {
        let run = sm.get_one::<String>("run").map_or("latest", String::as_str);
        let only: Vec<String> = sm.get_many::<String>("only").map(|v| v.cloned().collect()).unwrap_or_default();
        let t = restore::thaw(&readback::sources(&config)?, run, &only, days)?;
        if sm.get_flag("json") {
            print_json(&t);
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{}", t.message());
        }
        return Ok(ExitStatus::Success);
    }
    let opts = restore::Options {
        run: sm.get_one::<String>("run").cloned().unwrap_or_else(|| "latest".into()),
        to: sm.get_one::<String>("to").map(PathBuf::from).ok_or_else(|| Error::usage("restore needs --to DIR"))?,
        only: sm.get_many::<String>("only").map(|v| v.cloned().collect()).unwrap_or_default(),
        include: sm.get_many::<String>("include").map(|v| v.cloned().collect()).unwrap_or_default(),
        keep_going: sm.get_flag("keep-going"),
        force: sm.get_flag("force"),
        allow_unsigned: sm.get_flag("allow-unsigned"),
    };
    let key = master_key(&config, sm)?;
    let s = restore::restore(&readback::sources(&config)?, key.as_ref(), &opts)?;
    if sm.get_flag("json") {
        print_json(&s);
    }
    log::info!(
        "restored run {} from {} into {}: {} files ({}), {} folders, {} links, {} special",
        s.run_id,
        s.destination,
        s.to.display(),
        s.unpacked.files,
        ncb_core::progress::human(s.unpacked.bytes as f64),
        s.unpacked.dirs,
        s.unpacked.links,
        s.unpacked.special
    );
    for w in &s.unpacked.warnings {
        log::warn!("{w}");
    }
    if !s.unpacked.refused.is_empty() {
        for r in &s.unpacked.refused {
            log::error!("not restored: {r}");
        }
        log::error!(
            "{} archive entr{} refused (everything else is restored in {})",
            s.unpacked.refused.len(),
            if s.unpacked.refused.len() == 1 { "y was" } else { "ies were" },
            s.to.display()
        );
        return Ok(ExitStatus::Failure);
    }
    Ok(ExitStatus::Success)
}

fn prune_main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let config = load_config(m, "backup-runner prune")?;
    let dry = sm.get_flag("dry-run");
    let reports = prune::prune(&config, dry)?;
    if sm.get_flag("json") {
        let all: serde_json::Map<String, serde_json::Value> =
            reports.iter().map(|(section, r)| (section.clone(), serde_json::Value::Object(r.data.clone()))).collect();
        print_json(&all);
        return Ok(ExitStatus::Success);
    }
    let mut out = std::io::stdout().lock();
    for (section, r) in &reports {
        let list = |k: &str| -> Vec<String> {
            r.data
                .get(k)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        for d in list(if dry { "would_delete" } else { "deleted" }) {
            let _ = writeln!(out, "[{section}] {} {d}", if dry { "would delete" } else { "deleted" });
        }
        for k in list("kept") {
            let _ = writeln!(out, "[{section}] keep {k}");
        }
        for w in &r.warnings {
            let _ = writeln!(out, "[{section}] warning: {w}");
        }
    }
    Ok(ExitStatus::Success)
}

fn daemon_main(m: &ArgMatches, sm: &ArgMatches) -> Result<(), Error> {
    let mut configs: Vec<PathBuf> = m.get_one::<String>("config").map(PathBuf::from).into_iter().collect();
    configs.extend(sm.get_many::<String>("configs").into_iter().flatten().map(PathBuf::from));
    let quiet = m.get_flag("quiet");
    ncb_core::logging::init("backup-runner daemon", None, m.get_flag("verbose"), quiet)?;
    let signal = run::watch_signals().ctx(|| "cannot install signal handlers".into())?;
    daemon::run(&configs, &signal)
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
    let started = distinct_start(&plan::general_of(&config).work_dir());
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
    // GENERAL NICE / IONICE: the whole run (this process, every stage it starts, in-process
    // sections) under nice(1) and ionice(1), by starting again under them, once.
    let prio = config::priority(config.general("NICE"), config.general("IONICE")).map_err(Error::config)?;
    if !prio.is_empty() && std::env::var_os("NCB_PRIORITY_APPLIED").is_none() {
        let err = restart(&prio, &[], "NCB_PRIORITY_APPLIED");
        return Err(Error::runtime(format!("cannot start under {}: {err}", prio.join(" "))));
    }

    let general = plan::general_of(&config);
    let work = general.work_dir();
    create_private_dir(&work)?;
    ncb_core::sys::check_trusted_dir(&work, "WORK_FOLDER")?;
    if let Some(dir) = general.log_dir() {
        std::fs::create_dir_all(&dir).at("cannot create the log folder", &dir)?;
        ncb_core::sys::check_trusted_dir(&dir, "LOG_FOLDER")?;
    }
    let quiet = m.get_flag("quiet") || (!m.get_flag("verbose") && !std::io::stderr().is_terminal());
    ncb_core::logging::init("backup-runner", general.log_file().as_deref(), m.get_flag("verbose"), quiet)?;
    // Between distinct_start and the lock, another run of this WORK_FOLDER may have started (in
    // our second or later) and ended: ours would not sort after it.
    let previous = last_run_stamp(&work);
    let _lock = lock::acquire(&work, &config.path, &run_id)?;
    if previous.is_some_and(|p| ncb_core::context::stamp(p) >= ncb_core::context::stamp(started)) {
        return Err(Error::runtime(format!(
            "another run of WORK_FOLDER {} started while {run_id} was being planned: {} was not started (start it again)",
            work.display(),
            path.display()
        )));
    }
    let signal = run::watch_signals().ctx(|| "cannot install signal handlers".into())?;
    log::info!("run {run_id} of {} on {}: {} section(s)", path.display(), general.hostname, steps.len());

    config.notify.started();
    for stale in ncb_core::sys::sweep_secrets(&work) {
        log::warn!("removed {stale} from WORK_FOLDER: a secret left by a stage that was killed");
    }
    // What a killed runner was writing: the lineage it handed its stages (its journal keeps
    // the same record), and the temporaries of its journal and lineage files. Under the lock,
    // none of them is anyone's any more.
    for (dir, all) in [(work.clone(), false), (work.join(ncb_core::journal::DIR), true)] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let temporary = ncb_core::atomic::is_partial(&e.file_name()) && (all || name.contains("ncb-"));
            if name.starts_with(".ncb-lineage-") || temporary {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    sweep_indexes(&work);
    let mut journal = ncb_core::journal::Journal::new(&run_id, &config.path, started);
    let mut report = match recover::recover_all(&config, &work, &signal) {
        Ok(recovered) => {
            let walk = run::Walk { work: &work, journal: &mut journal, completing: false };
            let mut report = run::run_all(&config, &steps, started, &signal, walk);
            report.recovered = recovered;
            report
        }
        // Earlier runs' files may still be in the shared folders: tonight's sections would
        // take them for their own. Nothing runs.
        Err(e) => run::not_run(
            &config,
            &run_id,
            started,
            &steps,
            &format!(
                "the files of an earlier unfinished run could not be cleared from the work folders, so no section was run: {}",
                ncb_core::stage::error_chain(&e)
            ),
        ),
    };
    sweep_indexes(&work);
    report.tally();
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let mut report_path = None;
    if let Some(dir) = general.log_dir() {
        let dest = dir.join(format!("run-{run_id}.json"));
        match ncb_core::atomic::write_file(&dest, json.as_bytes(), 0o640) {
            Ok(()) => report_path = Some(dest),
            Err(e) => log::error!("cannot write the run report: {}", ncb_core::stage::error_chain(&e)),
        }
    }
    let log_file = general.log_file();
    let first_failure = report.failures().first().map(|f| format!("{} failed", f.name));
    config.notify.finished(
        !report.failed(),
        &run_id,
        &json,
        report_path.as_deref(),
        &notify::Finish {
            hostname: &general.hostname,
            log_file: log_file.as_deref(),
            summary: first_failure.as_deref(),
        },
    );
    if m.get_flag("json") {
        let _ = writeln!(std::io::stdout().lock(), "{json}");
    }
    let failures = report.failures();
    if !report.failed() {
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
    for r in report.recovered.iter().filter(|r| r.outcome.is_failure()) {
        log::error!("earlier run {}: {}", r.run_id, r.detail);
    }
    let names: Vec<&str> = failures.iter().map(|f| f.name.as_str()).collect();
    if names.is_empty() {
        log::error!("run {run_id}: its sections succeeded, but an earlier run is still not complete (see above)");
    } else {
        log::error!("run {run_id} {:?}: section(s) {}", report.status, names.join(", "));
    }
    Ok(ExitStatus::Failure)
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).at("cannot create WORK_FOLDER", dir)
}
