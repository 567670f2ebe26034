//! GENERAL SCHEDULE: cron expressions, validated, installed into a crontab under lines tagged
//! with the config's path (as Backopper tags its lines), or printed as a systemd service and
//! timer pair.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use ncb_core::{Error, Result};

const SPECIALS: [&str; 8] =
    ["@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];
const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The schedules of a GENERAL SCHEDULE value: one expression, several separated by `;`, or
/// a JSON array.
pub fn parse_list(raw: &str) -> std::result::Result<Vec<String>, String> {
    let items: Vec<String> = if raw.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw).map_err(|e| format!("not a JSON array of strings: {e}"))?
    } else {
        raw.split(';').map(str::to_owned).collect()
    };
    let items: Vec<String> =
        items.iter().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err("no schedule given".into());
    }
    for s in &items {
        validate(s)?;
    }
    Ok(items)
}

/// Checks one cron expression: a `@special` or five fields.
pub fn validate(expr: &str) -> std::result::Result<(), String> {
    Cron::parse(expr).map(|_| ())
}

/// A parsed cron expression: the minutes, hours, days, months and weekdays it fires on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month or day of week starting with `*` (see `matches`).
    days_any: bool,
    weekdays_any: bool,
    /// `@reboot`: when the daemon starts.
    pub at_start: bool,
}

impl Cron {
    pub fn parse(expr: &str) -> std::result::Result<Cron, String> {
        let expanded = match expr {
            "@reboot" => return Ok(Cron { at_start: true, ..Cron::parse("0 0 1 1 *").map(|c| c.never())? }),
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e if e.starts_with('@') => return Err(format!("'{expr}' is not one of {}", SPECIALS.join(" "))),
            e => e,
        };
        let fields: Vec<&str> = expanded.split(' ').collect();
        if fields.len() != 5 {
            return Err(format!(
                "'{expr}' has {} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or is one of {}",
                fields.len(),
                SPECIALS.join(" ")
            ));
        }
        let specs: [(&str, u32, u32, &[&str]); 5] = [
            ("minute", 0, 59, &[]),
            ("hour", 0, 23, &[]),
            ("day of month", 1, 31, &[]),
            ("month", 1, 12, &MONTHS),
            ("day of week", 0, 7, &DAYS),
        ];
        let mut sets = [0u64; 5];
        for (i, (f, (what, lo, hi, names))) in fields.iter().zip(specs).enumerate() {
            sets[i] = field(f, lo, hi, names).map_err(|e| format!("'{expr}': {what} '{f}': {e}"))?;
        }
        // Sunday is 0 and 7.
        if sets[4] & (1 << 7) != 0 {
            sets[4] |= 1;
        }
        Ok(Cron {
            minutes: sets[0],
            hours: sets[1],
            days: sets[2],
            months: sets[3],
            weekdays: sets[4],
            // As cron: a field starting with `*` (`*/2` too) does not restrict the day.
            days_any: fields[2].starts_with('*'),
            weekdays_any: fields[4].starts_with('*'),
            at_start: false,
        })
    }

    fn never(mut self) -> Self {
        self.minutes = 0;
        self
    }

    /// Whether it fires in the minute of `t`.
    pub fn matches(&self, t: &impl chrono::Datelike, hour: u32, minute: u32) -> bool {
        let bit = |set: u64, v: u32| set & (1u64 << v) != 0;
        let day = bit(self.days, t.day());
        let weekday = bit(self.weekdays, t.weekday().num_days_from_sunday());
        // As Vixie cron: both day fields must match when either starts with `*`; when both
        // are restricted, either one does.
        let day_ok = if self.days_any || self.weekdays_any { day && weekday } else { day || weekday };
        bit(self.minutes, minute) && bit(self.hours, hour) && bit(self.months, t.month()) && day_ok
    }
}

/// The values one field stands for, as a bit set.
fn field(f: &str, lo: u32, hi: u32, names: &[&str]) -> std::result::Result<u64, String> {
    let mut set = 0u64;
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let step = match step {
            None => 1,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n >= 1 && n <= hi => n,
                _ => return Err(format!("step '{s}' is not between 1 and {hi}")),
            },
        };
        let value = |v: &str| -> std::result::Result<u32, String> {
            let idx = names.iter().position(|n| n.eq_ignore_ascii_case(v));
            let n = match idx {
                Some(i) => u32::try_from(i).unwrap_or(0) + if names.len() == 12 { 1 } else { 0 },
                None => v.parse::<u32>().map_err(|_| format!("'{v}' is not a number"))?,
            };
            if n < lo || n > hi { Err(format!("{n} is out of range {lo}-{hi}")) } else { Ok(n) }
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else {
            match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (value(a)?, value(b)?);
                    if a > b {
                        return Err(format!("range {a}-{b} runs backwards"));
                    }
                    (a, b)
                }
                // `5/15` means from 5 to the end, every 15.
                None if step > 1 => (value(range)?, hi),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            }
        };
        let mut v = a;
        while v <= b {
            set |= 1u64 << v;
            v += step;
        }
    }
    Ok(set)
}

/// The marker that tags this config's lines.
/// Cron turns every bare `%` of a line, comments included, into a newline: it is escaped.
pub fn tag(config: &Path) -> String {
    format!("# nc-backup: {}", config.display()).replace('%', "\\%")
}

/// Crontab lines for the schedules: `%` escaped (cron turns a bare `%` into a newline).
pub fn cron_lines(schedules: &[String], runner: &Path, config: &Path) -> Vec<String> {
    let q = |p: &Path| ncb_core::params::shell_quote(&p.display().to_string()).replace('%', "\\%");
    schedules.iter().map(|s| format!("{s} {} -r -c {} {}", q(runner), q(config), tag(config))).collect()
}

fn crontab(user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new("crontab");
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    c.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        c.spawn().map_err(|e| Error::runtime(format!("cannot run crontab: {e} (install Debian's cron package)")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| Error::io("crontab", e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::io("crontab", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        if args == ["-l"] && stderr.contains("no crontab for") {
            return Ok(String::new());
        }
        return Err(Error::runtime(format!("crontab {}: {stderr}", args.join(" "))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The whole crontab (empty when there is none).
pub fn read_crontab(user: Option<&str>) -> Result<String> {
    crontab(user, &["-l"], None)
}

/// Brings the lines `is_mine` selects in line with `wanted`: stale ones removed, missing ones
/// added (at the end), every other line untouched and in place. Writes nothing when nothing
/// changes or `dry`. Returns (added, removed).
pub fn reconcile(
    user: Option<&str>,
    wanted: &[String],
    is_mine: &dyn Fn(&str) -> bool,
    dry: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let current = read_crontab(user)?;
    let mut lines: Vec<String> = Vec::new();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for l in current.lines() {
        if is_mine(l) && (!wanted.iter().any(|w| w == l) || lines.iter().any(|k| k == l)) {
            removed.push(l.to_owned());
        } else {
            lines.push(l.to_owned());
        }
    }
    for w in wanted {
        if !lines.contains(w) {
            lines.push(w.clone());
            added.push(w.clone());
        }
    }
    if !(dry || added.is_empty() && removed.is_empty()) {
        write_crontab(user, &(lines.join("\n") + "\n"))?;
    }
    Ok((added, removed))
}

/// The tag of a YAML job's lines.
pub fn job_tag(config: &Path, job: &str) -> String {
    format!("# nc-backup job {job}: {}", config.display()).replace('%', "\\%")
}

/// Whether a crontab line is one of a YAML config's job lines.
pub fn is_job_line(line: &str, config: &Path) -> bool {
    let end = format!(": {}", config.display()).replace('%', "\\%");
    line.ends_with(&end) && line.contains(" # nc-backup job ")
}

/// The crontab lines of YAML jobs: one per interval.
pub fn job_lines(jobs: &[(String, Vec<String>)], runner: &Path, config: &Path) -> Vec<String> {
    let q = |p: &Path| ncb_core::params::shell_quote(&p.display().to_string()).replace('%', "\\%");
    let mut out = Vec::new();
    for (id, intervals) in jobs {
        for i in intervals {
            out.push(format!(
                "{i} {} -q -r -c {} --job {} {}",
                q(runner),
                q(config),
                ncb_core::params::shell_quote(id),
                job_tag(config, id)
            ));
        }
    }
    out
}

/// Replaces the whole crontab.
pub fn write_crontab(user: Option<&str>, text: &str) -> Result<()> {
    crontab(user, &["-"], Some(text)).map(drop)
}

/// The current crontab without this config's lines, and those lines.
fn split(current: &str, config: &Path) -> (Vec<String>, Vec<String>) {
    let t = tag(config);
    current.lines().map(str::to_owned).partition(|l| !l.ends_with(&t))
}

/// Installs (replacing this config's earlier lines; others stay) and returns the new lines.
pub fn install(user: Option<&str>, lines: &[String], config: &Path) -> Result<Vec<String>> {
    let (mut keep, _) = split(&crontab(user, &["-l"], None)?, config);
    keep.extend(lines.iter().cloned());
    crontab(user, &["-"], Some(&(keep.join("\n") + "\n")))?;
    Ok(lines.to_vec())
}

pub fn list(user: Option<&str>, config: &Path) -> Result<Vec<String>> {
    Ok(split(&crontab(user, &["-l"], None)?, config).1)
}

/// Removes this config's lines; returns how many went.
pub fn remove(user: Option<&str>, config: &Path) -> Result<usize> {
    let (keep, mine) = split(&crontab(user, &["-l"], None)?, config);
    if !mine.is_empty() {
        crontab(user, &["-"], Some(&(keep.join("\n") + "\n")))?;
    }
    Ok(mine.len())
}

/// systemd's OnCalendar= for a cron expression.
pub fn on_calendar(expr: &str) -> String {
    match expr {
        "@yearly" | "@annually" => return "yearly".into(),
        "@monthly" => return "monthly".into(),
        "@weekly" => return "weekly".into(),
        "@daily" | "@midnight" => return "daily".into(),
        "@hourly" => return "hourly".into(),
        _ => {}
    }
    let f: Vec<&str> = expr.split(' ').collect();
    if f.len() != 5 {
        return expr.to_owned();
    }
    let conv = |s: &str| -> String {
        s.split(',')
            .map(|p| match p.split_once('/') {
                Some(("*", step)) => format!("0/{step}"),
                Some((r, step)) => format!("{}/{step}", r.split('-').next().unwrap_or("0")),
                None => p.replace('-', ".."),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let dow = if f[4] == "*" {
        String::new()
    } else {
        let day = |d: &str| -> String {
            let names = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            d.parse::<usize>().ok().and_then(|n| names.get(n).map(|s| (*s).to_owned())).unwrap_or_else(|| {
                let mut c = d.chars();
                c.next()
                    .map(|h| h.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase())
                    .unwrap_or_default()
            })
        };
        let v: Vec<String> = f[4].split(',').map(|p| p.split('-').map(day).collect::<Vec<_>>().join("..")).collect();
        format!("{} ", v.join(","))
    };
    format!("{dow}*-{}-{} {}:{}:00", conv(f[3]), conv(f[2]), conv(f[1]), conv(f[0]))
}

/// A service and timer pair running this config on its schedules.
pub fn systemd_units(
    schedules: &[String],
    runner: &Path,
    config: &Path,
    user: Option<&str>,
    priority: (Option<&str>, Option<&str>),
    reader: Option<crate::config::ReaderMode>,
) -> String {
    let name = config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "conf".into());
    let mut s = format!(
        "# /etc/systemd/system/nc-backup-{name}.service\n[Unit]\nDescription=nc-backup run of {c}\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nType=oneshot\nExecStart={r} -r -c {c}\n",
        c = config.display(),
        r = runner.display()
    );
    if let Some(u) = user {
        s.push_str(&format!("User={u}\n"));
        // FILES_READER capability (docs/PRIVILEGE.md): the reader's one capability bounds the
        // unit, and no_new_privs stays off so its file capability is granted.
        if u != "root" && reader == Some(crate::config::ReaderMode::Capability) {
            s.push_str("CapabilityBoundingSet=CAP_DAC_READ_SEARCH\nNoNewPrivileges=no\n");
        }
    }
    let nice = priority.0.unwrap_or("10");
    let io = match priority.1.map(|i| i.trim().to_ascii_lowercase()) {
        Some(i) if i.starts_with("best-effort") => match i.split_once(':') {
            Some((_, l)) => format!("IOSchedulingClass=best-effort\nIOSchedulingPriority={l}"),
            None => "IOSchedulingClass=best-effort".to_owned(),
        },
        _ => "IOSchedulingClass=idle".to_owned(),
    };
    s.push_str(&format!("Nice={nice}\n{io}\n\n# /etc/systemd/system/nc-backup-{name}.timer\n[Unit]\nDescription=nc-backup schedule of {}\n\n[Timer]\n", config.display()));
    for e in schedules.iter().filter(|e| *e != "@reboot") {
        s.push_str(&format!("OnCalendar={}\n", on_calendar(e)));
    }
    if schedules.iter().any(|e| e == "@reboot") {
        s.push_str("OnBootSec=5min\n");
    }
    s.push_str(&format!("Persistent=true\n\n[Install]\nWantedBy=timers.target\n# enable with: systemctl enable --now nc-backup-{name}.timer\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_matching() {
        use chrono::NaiveDate;
        let t = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(); // a Monday
        let m = |e: &str, h, min| Cron::parse(e).unwrap().matches(&t, h, min);
        assert!(m("* * * * *", 13, 7));
        assert!(m("*/15 * * * *", 4, 45) && !m("*/15 * * * *", 4, 46));
        assert!(m("30 4 * * 1-5", 4, 30) && !m("30 4 * * sat,sun", 4, 30));
        assert!(m("0 0 23 * *", 0, 0) && !m("0 0 24 * *", 0, 0));
        // Both day fields restricted: either one fires.
        assert!(m("0 0 1 * mon", 0, 0));
        // `*/2` leaves the day unrestricted: Mondays only, and the 23rd is odd.
        assert!(m("0 0 */2 * 1", 0, 0) && !m("0 0 */2 * 2", 0, 0));
        assert!(m("@daily", 0, 0) && !m("@daily", 0, 1));
        assert!(m("@hourly", 17, 0) && m("0 0 * * 1", 0, 0) && !m("@weekly", 0, 0));
        assert!(m("5/20 * * nov *", 1, 45) && !m("5/20 * * dec *", 1, 45));
        let sunday = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        assert!(Cron::parse("0 3 * * 7").unwrap().matches(&sunday, 3, 0));
        let r = Cron::parse("@reboot").unwrap();
        assert!(r.at_start && !r.matches(&t, 0, 0));
    }

    #[test]
    fn cron_expressions() {
        for ok in ["0 3 * * *", "*/15 * * * *", "30 2 1-15 jan,jul mon-fri", "0 0 * * 7", "@daily", "5,35 */2 * * 1-5"]
        {
            assert!(validate(ok).is_ok(), "{ok}: {:?}", validate(ok));
        }
        for bad in
            ["61 * * * *", "* * *", "@sometimes", "0 24 * * *", "0 0 0 * *", "*/0 * * * *", "5-1 * * * *", "x * * * *"]
        {
            assert!(validate(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_list("0 3 * * *; @hourly").unwrap(), ["0 3 * * *", "@hourly"]);
        assert_eq!(parse_list(r#"["0 3 * * *"]"#).unwrap(), ["0 3 * * *"]);
    }

    #[test]
    fn lines_are_tagged_and_percent_escaped() {
        let l =
            cron_lines(&["0 3 * * *".into()], Path::new("/usr/local/bin/backup-runner"), Path::new("/etc/nc/50%.json"));
        assert_eq!(
            l,
            ["0 3 * * * /usr/local/bin/backup-runner -r -c /etc/nc/50\\%.json # nc-backup: /etc/nc/50\\%.json"]
        );
    }

    #[test]
    fn a_unit_for_the_capability_reader_keeps_its_capability_alone() {
        use crate::config::ReaderMode;
        let unit = |user, reader| {
            systemd_units(
                &["0 3 * * *".to_owned()],
                Path::new("/usr/bin/backup-runner"),
                Path::new("/etc/nc-backup/a.json"),
                user,
                (None, None),
                reader,
            )
        };
        let cap = unit(Some("nc-backup"), Some(ReaderMode::Capability));
        assert!(
            cap.contains("User=nc-backup\nCapabilityBoundingSet=CAP_DAC_READ_SEARCH\nNoNewPrivileges=no\n"),
            "{cap}"
        );
        for other in [
            unit(Some("nc-backup"), Some(ReaderMode::Sudo)),
            unit(Some("root"), Some(ReaderMode::Capability)),
            unit(None, None),
        ] {
            assert!(!other.contains("CapabilityBoundingSet"), "{other}");
        }
    }

    #[test]
    fn systemd_calendar() {
        assert_eq!(on_calendar("0 3 * * *"), "*-*-* 3:0:00");
        assert_eq!(on_calendar("*/15 * * * 1-5"), "Mon..Fri *-*-* *:0/15:00");
        assert_eq!(on_calendar("@weekly"), "weekly");
    }
}
