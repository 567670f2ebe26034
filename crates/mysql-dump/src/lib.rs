//! mysql-dump: one consistent dump per database (`--single-transaction --routines --triggers
//! --events`; without `--events` where the user lacks the EVENT privilege, with a warning
//! saying what to grant, as for routines), streamed through the parallel compressor into
//! `DESTINATION/PREFIX_FOLDER/<db>_<UTC time>.sql.gz`, written atomically. Locally, over SSH
//! or in a container. Credentials reach mysqldump only through an option file given as its
//! first option: a 0600 file in WORK_FOLDER locally (removed after), `/dev/stdin` remotely.

mod creds;

use std::path::{Path, PathBuf};

use ncb_archive::Settings;
use ncb_archive::encoder::{FORMAT_PARAM, LEVEL_PARAM};
use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Artifact, Error, IoContext, Result, StageCtx, StageDef, StageReport};
use ncb_dbdump::{SecretFile, Transport};

pub use creds::Creds;

pub static PARAMS: [ParamSpec; 28] = [
    ParamSpec::new(
        "CREDENTIAL_PATH",
        Kind::Path,
        "Credentials: a my.cnf-style file ([client] user=, password=) or one line user:password; mode 0600",
    )
    .must_exist(),
    ParamSpec::new("USER", Kind::Str, "MySQL user (overrides CREDENTIAL_PATH)"),
    ParamSpec::new("PASSWORD", Kind::Str, "MySQL password (overrides CREDENTIAL_PATH; passed outside argv)").secret(),
    ParamSpec::new("HOST", Kind::Str, "Server host (default: the local socket)"),
    ParamSpec::new("PORT", Kind::Int, "Server port"),
    ParamSpec::new("SOCKET", Kind::Path, "Server socket"),
    ParamSpec::new("DATABASES", Kind::List, "Databases to dump, or all (default): every one but the system schemas"),
    ParamSpec::new("DESTINATION", Kind::Path, "Folder for the dumps (default WORK_FOLDER)"),
    ParamSpec::new("PREFIX_FOLDER", Kind::Str, "Subfolder of DESTINATION for the dumps (nc-backup-py: mydump)"),
    ParamSpec::new("MYSQL_DUMP_BINARY", Kind::Str, "mysqldump program (default mysqldump)"),
    ParamSpec::new("MYSQL_BINARY", Kind::Str, "mysql client program (default mysql)"),
    ParamSpec::new("MY_INSTANCES", Kind::List, "Ports of the local instances to dump (when PORT is not set)"),
    ParamSpec::new(
        "EVENTS",
        Kind::Choice(&["auto", "true", "false"]),
        "Dump scheduled events: True, False, or auto (default): where the user lacks the EVENT privilege, without them and with a warning",
    ),
    ParamSpec::new(
        "BINLOG_PATH",
        Kind::Path,
        "Folder of the binary logs: flush them, then copy the closed ones (local servers)",
    ),
    ParamSpec::new("BINLOG_FILE_PREFIX", Kind::Str, "Binary log name prefix (default mysql-bin)"),
    ParamSpec::new("CONF_PATH", Kind::Ignored, "nc-backup-py: the server's my.cnf"),
    ParamSpec::new("DATA_DIR", Kind::Ignored, "nc-backup-py: the server's data folder"),
    ParamSpec::new("LOG", Kind::Ignored, "nc-backup-py: the server's error log"),
    ParamSpec::new("TAR_COMMAND", Kind::Ignored, "nc-backup-py: tar command line"),
    ncb_dbdump::SSH_HOST,
    ncb_dbdump::SSH_USER,
    ncb_dbdump::SSH_PORT,
    ncb_dbdump::SSH_KEY,
    ncb_dbdump::SSH_KNOWN_HOSTS,
    ncb_dbdump::DOCKER_CONTAINER,
    ncb_dbdump::CONTAINER_CLI,
    FORMAT_PARAM,
    LEVEL_PARAM,
];

pub static STAGE: StageDef = StageDef {
    name: "mysql-dump",
    aliases: &["mysql_backup", "mysql_dump", "mysqldump", "mysql", "mariadb"],
    legacy_executables: &["mysql_dump.py"],
    about: "Dump MySQL/MariaDB databases, one compressed file each",
    params: &PARAMS,
    validate,
    run,
};

const SYSTEM_SCHEMAS: [&str; 4] = ["information_schema", "performance_schema", "mysql", "sys"];

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Err(e) = Transport::from_params(p) {
        problems.push(Problem { key: "SSH_HOST".into(), message: e.to_string() });
    }
    problems.extend(Settings::check(p));
    if p.has("BINLOG_PATH") && (p.has("SSH_HOST") || p.has("DOCKER_CONTAINER")) {
        problems.push(Problem {
            key: "BINLOG_PATH".into(),
            message: "binary logs are copied from local servers only".into(),
        });
    }
    if let Some(c) = p.path("CREDENTIAL_PATH")
        && let Err(e) = Creds::from_file(&c)
    {
        problems.push(Problem { key: "CREDENTIAL_PATH".into(), message: e.to_string() });
    }
    problems
}

/// How to reach one server.
struct Server<'a> {
    transport: &'a Transport,
    creds: Creds,
    /// Local: the option file (removed on drop). Remote: None, the options go on stdin.
    file: Option<SecretFile>,
    dump_bin: String,
    client_bin: String,
    label: String,
}

impl Server<'_> {
    fn defaults_arg(&self) -> String {
        match &self.file {
            Some(f) => format!("--defaults-extra-file={}", f.path().display()),
            None => "--defaults-extra-file=/dev/stdin".into(),
        }
    }
    fn stdin(&self) -> Vec<u8> {
        if self.file.is_some() { Vec::new() } else { self.creds.option_file().into_bytes() }
    }
    fn query(&self, sql: &str, what: &str) -> Result<String> {
        let args = vec![self.defaults_arg(), "-N".into(), "-B".into(), "-e".into(), sql.into()];
        ncb_dbdump::capture(self.transport.command(&self.client_bin, &args, ""), self.stdin(), what)
    }

    /// Whether the user may read the events of `db`, as `mysqldump --events` does (`SHOW
    /// EVENTS`, which needs the EVENT privilege). Any other failure says yes: mysqldump then
    /// reports the real problem.
    fn can_read_events(&self, db: &str) -> bool {
        match self.query(&format!("SHOW EVENTS FROM {}", quote_ident(db)), &format!("checking events of {db}")) {
            Ok(_) => true,
            Err(e) => !e.to_string().contains("Access denied"),
        }
    }

    /// The account the server knows the user as, quoted for GRANT: `'backup'@'localhost'`.
    fn account(&self) -> String {
        let current = self.query("SELECT CURRENT_USER()", "reading the current user").unwrap_or_default();
        match current.trim().rsplit_once('@') {
            Some((user, host)) => format!("{}@{}", quote_string(user), quote_string(host)),
            None => "<user>".into(),
        }
    }
}

/// A database name in SQL: `name`, with backquotes doubled.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal in SQL: 'text', with quotes and backslashes escaped.
fn quote_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn dump_binary(p: &Params, report: &mut StageReport) -> String {
    let b = p.str("MYSQL_DUMP_BINARY").unwrap_or("mysqldump").to_owned();
    let path = Path::new(&b);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name == "mysql" || name == "mariadb" {
        let fixed = path.with_file_name(if name == "mysql" { "mysqldump" } else { "mariadb-dump" });
        report.warn(format!(
            "MYSQL_DUMP_BINARY {b} is the mysql client (as in nc-backup-py's sample); using {}",
            fixed.display()
        ));
        return fixed.display().to_string();
    }
    b
}

fn run(ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let mut report = StageReport::new(STAGE.name);
    let transport = Transport::from_params(p)?;
    let settings = Settings::from_params(p)?;
    for k in ["CONF_PATH", "DATA_DIR", "LOG", "TAR_COMMAND"] {
        if p.has(k) {
            log::info!("{k} is accepted for nc-backup-py and not used");
        }
    }
    let mut base = match p.path("CREDENTIAL_PATH") {
        Some(c) => Creds::from_file(&c)?,
        None => Creds::default(),
    };
    base.override_with(p)?;
    if let Some(pw) = &base.password {
        ncb_dbdump::check_password(pw)?;
    }
    let ports: Vec<Option<u64>> = match (base.port, p.list("MY_INSTANCES")?) {
        (None, list) if !list.is_empty() => list
            .iter()
            .map(|s| {
                s.parse::<u64>().map(Some).map_err(|_| Error::usage(format!("--MY_INSTANCES: '{s}' is not a port")))
            })
            .collect::<Result<_>>()?,
        (port, _) => vec![port],
    };
    let dest = ncb_dbdump::dump_folder(p, ctx)?;
    let dump_bin = dump_binary(p, &mut report);
    let client_bin = p.str("MYSQL_BINARY").unwrap_or("mysql").to_owned();
    let result = (|| -> Result<()> {
        for port in &ports {
            let mut creds = base.clone();
            creds.port = *port;
            let file = if transport.is_local() {
                Some(SecretFile::create(&ctx.general.work_dir(), "mysql-dump-options", creds.option_file().as_bytes())?)
            } else {
                None
            };
            let label = match (&creds.host, port) {
                (Some(h), Some(pt)) => format!("{h}:{pt}"),
                (Some(h), None) => h.clone(),
                (None, Some(pt)) => format!("port {pt}"),
                (None, None) => "the local server".into(),
            };
            let label = if transport.is_local() { label } else { format!("{label} via {}", transport.place()) };
            let server = Server {
                transport: &transport,
                creds,
                file,
                dump_bin: dump_bin.clone(),
                client_bin: client_bin.clone(),
                label,
            };
            let suffix =
                if ports.len() > 1 { port.map(|p| format!("_{p}")).unwrap_or_default() } else { String::new() };
            dump_server(ctx, p, &server, &dest, &suffix, settings, &mut report)?;
        }
        if let Some(binlogs) = p.path("BINLOG_PATH") {
            let mut creds = base.clone();
            creds.port = ports.first().copied().flatten();
            copy_binlogs(p, &binlogs, &dest, &creds, ctx, &client_bin, &mut report)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Never half-succeed: the dumps of this run go with the failure.
        report.discard_artifacts();
        return Err(e);
    }
    Ok(report)
}

fn dump_server(
    ctx: &StageCtx,
    p: &Params,
    s: &Server,
    dest: &Path,
    suffix: &str,
    settings: Settings,
    report: &mut StageReport,
) -> Result<()> {
    let wanted = p.list("DATABASES")?;
    let databases: Vec<String> = if wanted.is_empty() || wanted.iter().any(|d| d.eq_ignore_ascii_case("all")) {
        let out = s.query("SHOW DATABASES", &format!("listing databases on {}", s.label))?;
        out.lines().map(str::trim).filter(|d| !d.is_empty() && !SYSTEM_SCHEMAS.contains(d)).map(str::to_owned).collect()
    } else {
        wanted
    };
    if databases.is_empty() {
        report.warn(format!("no database to dump on {}", s.label));
        return Ok(());
    }
    let stamp = ctx.name_stamp();
    let ext = format!(".sql{}", settings.format.suffix());
    let events = p.choice("EVENTS", &["auto", "true", "false"], "auto")?;
    let mut dumped = Vec::new();
    let mut without_events = Vec::new();
    for db in &databases {
        let file = dest.join(format!("{}{suffix}_{stamp}{ext}", ncb_dbdump::file_stem(db)));
        let with_events = match events.as_str() {
            "true" => true,
            "false" => false,
            _ => s.can_read_events(db),
        };
        if events == "auto" && !with_events {
            without_events.push(db.clone());
        }
        let mut args = vec![
            s.defaults_arg(),
            "--single-transaction".into(),
            "--routines".into(),
            "--triggers".into(),
            "--hex-blob".into(),
            "--quick".into(),
            "--default-character-set=utf8mb4".into(),
        ];
        if with_events {
            args.insert(4, "--events".into());
        }
        args.extend(["--".into(), db.clone()]);
        let what = format!("dump of database {db} on {}", s.label);
        let (artifact, raw) =
            ncb_dbdump::dump_to_file(s.transport.command(&s.dump_bin, &args, ""), s.stdin(), settings, &file, &what)?;
        log::info!("{db}: {raw} bytes of SQL -> {} ({} bytes)", artifact.path.display(), artifact.bytes);
        dumped.push(serde_json::json!({"database": db, "sql_bytes": raw, "file": artifact.path}));
        report.artifacts.push(artifact);
    }
    if !without_events.is_empty() {
        let account = s.account();
        let grants: Vec<String> =
            without_events.iter().map(|db| format!("GRANT EVENT ON {}.* TO {account}", quote_ident(db))).collect();
        report.warn(format!(
            "the user lacks the EVENT privilege on {} on {}: dumped without their scheduled events; grant it with: {} (or set EVENTS False to leave events out without this warning)",
            without_events.join(", "),
            s.label,
            grants.join("; ")
        ));
    }
    // mysqldump leaves routines out, silently, when the user cannot read mysql.proc.
    if s.query("SELECT COUNT(*) FROM mysql.proc", &format!("checking routine access on {}", s.label)).is_err() {
        report.warn(format!(
            "the user cannot read mysql.proc on {}: mysqldump silently leaves stored routines out of the dumps; grant it with: GRANT SELECT ON mysql.proc TO <user>",
            s.label
        ));
    }
    let mut all = report.data.remove("databases").and_then(|v| v.as_array().cloned()).unwrap_or_default();
    all.extend(dumped);
    report.set("databases", all);
    Ok(())
}

/// Flushes the binary logs and copies every closed one (all but the newest).
fn copy_binlogs(
    p: &Params,
    dir: &Path,
    dest: &Path,
    creds: &Creds,
    ctx: &StageCtx,
    client: &str,
    report: &mut StageReport,
) -> Result<()> {
    let prefix = p.str("BINLOG_FILE_PREFIX").unwrap_or("mysql-bin");
    let file = SecretFile::create(&ctx.general.work_dir(), "mysql-dump-options", creds.option_file().as_bytes())?;
    let args =
        vec![format!("--defaults-extra-file={}", file.path().display()), "-e".into(), "FLUSH BINARY LOGS".into()];
    ncb_dbdump::capture(Transport::Local.command(client, &args, ""), Vec::new(), "FLUSH BINARY LOGS")?;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .at("cannot list BINLOG_PATH", dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|f| {
            let n = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|num| !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    logs.sort();
    logs.pop(); // the newest is the one the server now writes to
    let out = dest.join("binlogs");
    ncb_core::atomic::ensure_dir(&out, 0o700)?;
    for log in &logs {
        let name = log.file_name().unwrap_or_default();
        let target = out.join(name);
        report.artifacts.push(copy_file(log, &target)?);
    }
    log::info!("copied {} closed binary log(s) to {}", logs.len(), out.display());
    report.set("binlogs", logs.len());
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<Artifact> {
    let mut src = std::fs::File::open(from).at("cannot open", from)?;
    let mut out = ncb_core::hash::HashWriter::new(ncb_core::atomic::AtomicFile::create(to)?);
    std::io::copy(&mut src, &mut out).at("cannot copy", from)?;
    let (file, bytes, sha256) = out.finish();
    Ok(Artifact { path: file.commit()?, bytes, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_sql() {
        assert_eq!(quote_ident("shop"), "`shop`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_string("o'k\\"), "'o\\'k\\\\'");
    }

    #[test]
    fn events_is_true_false_or_auto() {
        let mut p = Params::new();
        for ok in ["True", "false", "AUTO"] {
            p.set("EVENTS", ok);
            assert_eq!(STAGE.check(&p), [], "{ok}");
        }
        p.set("EVENTS", "sometimes");
        let found = STAGE.check(&p);
        assert!(found.len() == 1 && found[0].key == "EVENTS", "{found:?}");
    }
}
