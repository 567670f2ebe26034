//! `backup-runner apps sync|list|backup`: Backopper's (seeds/002) inventory-driven app
//! backups (crates/apps), with the crontab and notifications backup-runner owns.
//!
//! Each app gets one crontab line, tagged with the app and the apps config:
//! `@daily /usr/bin/backup-runner apps backup shop -c /etc/nc-backup/apps.json # nc-backup app shop: /etc/nc-backup/apps.json`

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use ncb_apps::config::{AppsConfig, check_app_name};
use ncb_core::{Error, ExitStatus, IoContext};

use crate::schedule;

pub fn command() -> Command {
    Command::new("apps")
        .about("Application backups from an inventory (docs/APPS.md): sync the crontab, list, back up one app")
        .subcommand_required(true)
        .subcommand(
            Command::new("sync")
                .about("Fetch the inventory and bring the crontab in line: one line per app, stale lines removed")
                .arg(
                    Arg::new("dry-run")
                        .long("dry-run")
                        .action(ArgAction::SetTrue)
                        .help("Print what would be added and removed; change nothing"),
                )
                .arg(user_arg()),
        )
        .subcommand(Command::new("list").about("Each scheduled app, its schedule and its last backup").arg(user_arg()))
        .subcommand(
            Command::new("backup")
                .about("Back up one app now: its database, its media, the sync, local retention")
                .arg(Arg::new("name").required(true).value_name("APP")),
        )
}

fn user_arg() -> Arg {
    Arg::new("user")
        .long("user")
        .short('u')
        .value_name("USER")
        .help("Whose crontab (default: CRONTAB_USER, else yours)")
}

pub fn main(m: &ArgMatches, sm: &ArgMatches) -> Result<ExitStatus, Error> {
    let path = m.get_one::<String>("config").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("apps.json"));
    let c = match ncb_apps::load(&path) {
        Ok(c) => c,
        Err(problems) => {
            let mut err = std::io::stderr().lock();
            for p in &problems {
                let _ = writeln!(err, "{}: {p}", path.display());
            }
            return Err(Error::config(format!("{}: {} problem(s); nothing was done", path.display(), problems.len())));
        }
    };
    let mut problems = Vec::new();
    let notify = crate::notify::parse(&c.notify, &mut problems);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Error::config(format!("{}: {}", path.display(), list.join("; "))));
    }
    match sm.subcommand() {
        Some(("sync", s)) => {
            ncb_core::logging::init("backup-runner apps", None, m.get_flag("verbose"), m.get_flag("quiet"))?;
            sync(&c, user(&c, s), s.get_flag("dry-run"))
        }
        Some(("list", s)) => list(&c, user(&c, s)),
        Some(("backup", s)) => {
            let name = s.get_one::<String>("name").map(String::as_str).unwrap_or_default();
            let log = c.log_folder.as_deref().map(ncb_core::context::log_file_of);
            ncb_core::logging::init(
                &format!("backup-runner apps {name}"),
                log.as_deref(),
                m.get_flag("verbose"),
                m.get_flag("quiet"),
            )?;
            backup(&c, name, &notify)
        }
        _ => Err(Error::usage("apps needs sync, list or backup")),
    }
}

fn user<'a>(c: &'a AppsConfig, s: &'a ArgMatches) -> Option<&'a str> {
    s.get_one::<String>("user").map(String::as_str).or(c.crontab_user.as_deref())
}

fn conf_path(c: &AppsConfig) -> Result<PathBuf, Error> {
    c.path.canonicalize().at("cannot resolve", &c.path)
}

/// The tag that ends an app's crontab line (`%` escaped: cron turns it into a newline).
fn tag(conf: &Path, app: &str) -> String {
    format!("# nc-backup app {app}: {}", conf.display()).replace('%', "\\%")
}

/// The app a crontab line of this config is for.
fn app_of(line: &str, conf: &Path) -> Option<String> {
    let end = format!(": {}", conf.display()).replace('%', "\\%");
    let rest = line.strip_suffix(&end)?;
    let (_, app) = rest.rsplit_once(" # nc-backup app ")?;
    check_app_name(app).is_ok().then(|| app.to_owned())
}

fn line_for(schedule: &str, runner: &Path, conf: &Path, app: &str) -> String {
    let q = |p: &Path| ncb_core::params::shell_quote(&p.display().to_string()).replace('%', "\\%");
    format!("{schedule} {} -q apps backup {app} -c {} {}", q(runner), q(conf), tag(conf, app))
}

fn sync(c: &AppsConfig, user: Option<&str>, dry: bool) -> Result<ExitStatus, Error> {
    let conf = conf_path(c)?;
    let runner =
        std::env::current_exe().and_then(|e| e.canonicalize()).ctx(|| "cannot find backup-runner's own path".into())?;
    // The whole inventory is checked before the crontab is read: a bad answer changes nothing.
    let apps = ncb_apps::inventory::fetch(c, &schedule::validate)?;
    let want: Vec<String> = apps.iter().map(|a| line_for(&a.schedule, &runner, &conf, &a.name)).collect();
    let current = schedule::read_crontab(user)?;
    let mut lines: Vec<String> = Vec::new();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for l in current.lines() {
        if app_of(l, &conf).is_some() && (!want.iter().any(|w| w == l) || lines.iter().any(|k| k == l)) {
            removed.push(l.to_owned());
        } else {
            lines.push(l.to_owned());
        }
    }
    for w in &want {
        if !lines.contains(w) {
            lines.push(w.clone());
            added.push(w.clone());
        }
    }
    let mut out = std::io::stdout().lock();
    for l in &removed {
        let _ = writeln!(out, "- {l}");
    }
    for l in &added {
        let _ = writeln!(out, "+ {l}");
    }
    let who = user.map_or_else(|| "the current user's".to_owned(), |u| format!("{u}'s"));
    if added.is_empty() && removed.is_empty() {
        let _ = writeln!(out, "{} app(s) in the inventory; {who} crontab already in line", apps.len());
    } else if dry {
        let _ =
            writeln!(out, "dry run: {} to add, {} to remove; {who} crontab not changed", added.len(), removed.len());
    } else {
        schedule::write_crontab(user, &(lines.join("\n") + "\n"))?;
        let _ = writeln!(out, "{} added, {} removed in {who} crontab", added.len(), removed.len());
    }
    Ok(ExitStatus::Success)
}

fn list(c: &AppsConfig, user: Option<&str>) -> Result<ExitStatus, Error> {
    let conf = conf_path(c)?;
    let tab = schedule::read_crontab(user)?;
    let mut rows: Vec<(String, String)> = Vec::new();
    for l in tab.lines() {
        if let Some(app) = app_of(l, &conf) {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let n = if l.starts_with('@') { 1 } else { 5 };
            rows.push((app, fields.iter().take(n).copied().collect::<Vec<_>>().join(" ")));
        }
    }
    // Apps with backups but no crontab line any more.
    if let Ok(entries) = std::fs::read_dir(&c.backups_root) {
        let mut extra: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| check_app_name(n).is_ok() && !rows.iter().any(|(a, _)| a == n))
            .collect();
        extra.sort();
        rows.extend(extra.into_iter().map(|a| (a, "(not scheduled)".to_owned())));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<24} {:<16} {:<22} last report", "app", "schedule", "last dump");
    for (app, sched) in rows {
        let dir = c.app_backups(&app);
        let last = ncb_apps::backup::stamped(&dir, ncb_apps::backup::DUMP_SUFFIX)
            .last()
            .and_then(|(t, _)| chrono::DateTime::from_timestamp(*t, 0))
            .map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
        let report = std::fs::read(dir.join(ncb_apps::backup::REPORT))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map_or_else(
                || "-".to_owned(),
                |r| {
                    let when = r["started"].as_str().unwrap_or("?").to_owned();
                    if r["ok"].as_bool() == Some(true) {
                        format!("ok ({when})")
                    } else {
                        let first = r["errors"][0].as_str().unwrap_or("?");
                        format!("FAILED ({when}): {first}")
                    }
                },
            );
        let _ = writeln!(out, "{app:<24} {sched:<16} {last:<22} {report}");
    }
    Ok(ExitStatus::Success)
}

fn backup(c: &AppsConfig, name: &str, notify: &crate::notify::Notify) -> Result<ExitStatus, Error> {
    notify.started();
    let report = match ncb_apps::backup(c, name) {
        Ok(r) => r,
        Err(e) => {
            let json = serde_json::json!({"app": name, "ok": false, "errors": [ncb_core::stage::error_chain(&e)]});
            notify.finished(
                false,
                name,
                &json.to_string(),
                None,
                &crate::notify::Finish {
                    hostname: &c.hostname,
                    log_file: c.log_folder.as_deref().map(ncb_core::context::log_file_of).as_deref(),
                    summary: None,
                },
            );
            return Err(e);
        }
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let path = c.app_backups(name).join(ncb_apps::backup::REPORT);
    let log = c.log_folder.as_deref().map(ncb_core::context::log_file_of);
    let first = report.errors.first().cloned();
    notify.finished(
        report.ok,
        name,
        &json,
        Some(&path),
        &crate::notify::Finish { hostname: &c.hostname, log_file: log.as_deref(), summary: first.as_deref() },
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{name}: {} (dump {} bytes, {} file(s) synced, {} already stored, {} old file(s) removed); report {}",
        if report.ok { "ok" } else { "FAILED" },
        report.dump_bytes,
        report.synced.len(),
        report.already_stored,
        report.removed_local.len(),
        path.display()
    );
    for e in &report.errors {
        eprintln!("backup-runner: {name}: {e}");
    }
    Ok(if report.ok { ExitStatus::Success } else { ExitStatus::Failure })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_app_and_config() {
        let conf = Path::new("/etc/nc backup/50% apps.json");
        let l = line_for("@daily", Path::new("/usr/bin/backup-runner"), conf, "project_1");
        assert!(
            l.starts_with(
                "@daily /usr/bin/backup-runner -q apps backup project_1 -c '/etc/nc backup/50\\% apps.json' "
            ),
            "{l}"
        );
        assert_eq!(app_of(&l, conf).as_deref(), Some("project_1"));
        assert_eq!(app_of(&l, Path::new("/etc/other.json")), None);
        assert_eq!(app_of("@daily /bin/backup.sh project_1 # project_1", conf), None);
    }
}
