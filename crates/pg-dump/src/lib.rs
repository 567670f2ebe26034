//! pg-dump: one pg_dump per database into `DESTINATION/PREFIX_FOLDER/<db>_<UTC time>.<ext>`,
//! written atomically: plain SQL compressed by the parallel compressor (`.sql.gz`), custom
//! format as pg_dump writes it (`.dump`, for pg_restore), or directory format (`.dir`, local
//! only). GLOBALS adds `pg_dumpall --globals-only`. The password reaches pg_dump through a
//! 0600 passfile (PGPASSFILE) locally, and on stdin over SSH or in a container — never argv.

use std::path::{Path, PathBuf};

use ncb_archive::encoder::{FORMAT_PARAM, LEVEL_PARAM};
use ncb_archive::{Format, Settings};
use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Artifact, IoContext, Result, StageCtx, StageDef, StageReport};
use ncb_dbdump::{SecretFile, Transport};

pub static PARAMS: [ParamSpec; 22] = [
    ParamSpec::new("HOST", Kind::Str, "Server host (default: the local socket)"),
    ParamSpec::new("PORT", Kind::Int, "Server port (default 5432)"),
    ParamSpec::new("USER", Kind::Str, "PostgreSQL role (default: the OS user)"),
    ParamSpec::new("PASSWORD", Kind::Str, "Password (passed outside argv)").secret(),
    ParamSpec::new("PASSFILE", Kind::Path, "A pgpass file to use (mode 0600; local dumps)").must_exist(),
    ParamSpec::new(
        "DATABASES",
        Kind::List,
        "Databases to dump, or all (default): every database that accepts connections, templates excepted",
    ),
    ParamSpec::new(
        "FORMAT",
        Kind::Choice(&["custom", "plain", "directory"]),
        "custom (default, for pg_restore), plain (SQL, compressed) or directory (local only)",
    ),
    ParamSpec::new("GLOBALS", Kind::Bool, "Also dump roles and tablespaces (pg_dumpall --globals-only)"),
    ParamSpec::new("DESTINATION", Kind::Path, "Folder for the dumps (default WORK_FOLDER)"),
    ParamSpec::new("PREFIX_FOLDER", Kind::Str, "Subfolder of DESTINATION for the dumps"),
    ParamSpec::new("PG_DUMP_BINARY", Kind::Str, "pg_dump program (default pg_dump)"),
    ParamSpec::new("PSQL_BINARY", Kind::Str, "psql program (default psql)"),
    ParamSpec::new("PG_DUMPALL_BINARY", Kind::Str, "pg_dumpall program (default pg_dumpall)"),
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
    name: "pg-dump",
    aliases: &["pg_dump", "postgres", "postgresql", "pg_backup"],
    legacy_executables: &["pg_dump.py"],
    about: "Dump PostgreSQL databases, one file each",
    params: &PARAMS,
    validate,
    run,
};

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    let remote = match Transport::from_params(p) {
        Ok(t) => !t.is_local(),
        Err(e) => {
            problems.push(Problem { key: "SSH_HOST".into(), message: e.to_string() });
            false
        }
    };
    if remote && p.str("FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("directory")) {
        problems.push(Problem { key: "FORMAT".into(), message: "directory format is for local dumps only".into() });
    }
    if remote && p.has("PASSFILE") {
        problems.push(Problem {
            key: "PASSFILE".into(),
            message: "remote dumps take PASSWORD (sent on stdin), not a passfile".into(),
        });
    }
    if let Some(f) = p.path("PASSFILE")
        && let Err(e) = ncb_dbdump::check_private(&f, "passfile")
    {
        problems.push(Problem { key: "PASSFILE".into(), message: e.to_string() });
    }
    problems
}

struct Conn<'a> {
    transport: &'a Transport,
    common: Vec<String>,
    password: Option<String>,
    /// Local: a passfile (ours, removed on drop, or the user's).
    passfile: Option<PathBuf>,
    _own: Option<SecretFile>,
    label: String,
}

impl Conn<'_> {
    fn command(&self, program: &str, args: &[String]) -> std::process::Command {
        let mut all = self.common.clone();
        all.extend_from_slice(args);
        let prelude = if self.password.is_some() && !self.transport.is_local() {
            "IFS= read -r PGPASSWORD; export PGPASSWORD; "
        } else {
            ""
        };
        let mut c = self.transport.command(program, &all, prelude);
        if let Some(f) = &self.passfile {
            c.env("PGPASSFILE", f);
        }
        c
    }
    fn stdin(&self) -> Vec<u8> {
        match (&self.password, self.transport.is_local()) {
            (Some(pw), false) => format!("{pw}\n").into_bytes(),
            _ => Vec::new(),
        }
    }
}

/// A pgpass line for this server (any database and user), escaped.
fn pgpass_line(host: Option<&str>, port: Option<u64>, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let host = host.map_or("*".to_owned(), esc);
    let port = port.map_or("*".to_owned(), |p| p.to_string());
    format!("{host}:{port}:*:*:{}\n", esc(password))
}

/// `--dbname=` as a connection string holding only the database name, quoted: a database
/// named like `host=elsewhere` or `postgresql://…` cannot redirect the dump.
fn dbname_arg(db: &str) -> String {
    format!("--dbname=dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn run(ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let mut report = StageReport::new(STAGE.name);
    let transport = Transport::from_params(p)?;
    let format = p.choice("FORMAT", &["custom", "plain", "directory"], "custom")?;
    let settings = Settings::from_params(p)?;
    let mut common = vec!["--no-password".to_owned()];
    if let Some(h) = p.str("HOST") {
        common.push(format!("--host={h}"));
    }
    if let Some(port) = p.u64("PORT")? {
        common.push(format!("--port={port}"));
    }
    if let Some(u) = p.str("USER") {
        common.push(format!("--username={u}"));
    }
    let password = p.get("PASSWORD").map(str::to_owned);
    if let Some(pw) = &password {
        ncb_dbdump::check_password(pw)?;
    }
    let (passfile, own) = match (&password, p.path("PASSFILE"), transport.is_local()) {
        (Some(pw), _, true) => {
            let line = pgpass_line(p.str("HOST"), p.u64("PORT")?, pw);
            let f = SecretFile::create(&ctx.general.work_dir(), "pg-dump-pgpass", line.as_bytes())?;
            (Some(f.path().to_path_buf()), Some(f))
        }
        (None, Some(file), true) => (Some(file), None),
        _ => (None, None),
    };
    let label = format!(
        "{}{}",
        p.str("HOST").unwrap_or("the local server"),
        p.u64("PORT")?.map(|x| format!(":{x}")).unwrap_or_default()
    );
    let label = if transport.is_local() { label } else { format!("{label} via {}", transport.place()) };
    let conn = Conn { transport: &transport, common, password, passfile, _own: own, label };
    let dest = ncb_dbdump::dump_folder(p, ctx)?;
    let result = dump_all(ctx, p, &conn, &dest, &format, settings, &mut report);
    if let Err(e) = result {
        // A directory-format dump goes whole, its folder too.
        let dirs: Vec<PathBuf> = report
            .artifacts
            .iter()
            .filter_map(|a| {
                a.path.parent().filter(|d| d.extension().is_some_and(|x| x == "dir")).map(Path::to_path_buf)
            })
            .collect();
        report.discard_artifacts();
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
        return Err(e);
    }
    Ok(report)
}

fn dump_all(
    ctx: &StageCtx,
    p: &Params,
    c: &Conn,
    dest: &Path,
    format: &str,
    settings: Settings,
    report: &mut StageReport,
) -> Result<()> {
    let pg_dump = p.str("PG_DUMP_BINARY").unwrap_or("pg_dump");
    let wanted = p.list("DATABASES")?;
    let databases: Vec<String> = if wanted.is_empty() || wanted.iter().any(|d| d.eq_ignore_ascii_case("all")) {
        let sql = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1";
        let args = vec!["--dbname=postgres".into(), "-At".into(), "-c".into(), sql.into()];
        let out = ncb_dbdump::capture(
            c.command(p.str("PSQL_BINARY").unwrap_or("psql"), &args),
            c.stdin(),
            &format!("listing databases on {}", c.label),
        )?;
        out.lines().map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned).collect()
    } else {
        wanted
    };
    let stamp = ctx.name_stamp();
    let mut dumped = Vec::new();
    for db in &databases {
        let what = format!("dump of database {db} on {}", c.label);
        let stem = format!("{}_{stamp}", ncb_dbdump::file_stem(db));
        if format == "directory" {
            let dir = dest.join(format!("{stem}.dir"));
            report.artifacts.extend(dump_directory(c, pg_dump, db, &dir, &what)?);
            dumped.push(serde_json::json!({"database": db, "dir": dir}));
            continue;
        }
        let (flag, file, s) = match format {
            "plain" => ("--format=plain", dest.join(format!("{stem}.sql{}", settings.format.suffix())), settings),
            _ => ("--format=custom", dest.join(format!("{stem}.dump")), Settings { format: Format::None, ..settings }),
        };
        let args = vec![flag.to_owned(), dbname_arg(db)];
        let (artifact, raw) = ncb_dbdump::dump_to_file(c.command(pg_dump, &args), c.stdin(), s, &file, &what)?;
        log::info!("{db}: {raw} bytes from pg_dump -> {} ({} bytes)", artifact.path.display(), artifact.bytes);
        dumped.push(serde_json::json!({"database": db, "dump_bytes": raw, "file": artifact.path}));
        report.artifacts.push(artifact);
    }
    if p.flag("GLOBALS", false)? {
        let file = dest.join(format!("globals_{stamp}.sql{}", settings.format.suffix()));
        let args = vec!["--globals-only".to_owned()];
        let bin = p.str("PG_DUMPALL_BINARY").unwrap_or("pg_dumpall");
        let (artifact, _) = ncb_dbdump::dump_to_file(
            c.command(bin, &args),
            c.stdin(),
            settings,
            &file,
            &format!("pg_dumpall --globals-only on {}", c.label),
        )?;
        report.artifacts.push(artifact);
    }
    report.set("databases", dumped);
    Ok(())
}

/// `pg_dump -Fd` into a hidden folder, renamed into place when complete.
fn dump_directory(c: &Conn, pg_dump: &str, db: &str, dir: &Path, what: &str) -> Result<Vec<Artifact>> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.with_file_name(format!(".{name}{}{}", ncb_core::atomic::PARTIAL_MARK, std::process::id()));
    let args = vec!["--format=directory".to_owned(), format!("--file={}", tmp.display()), dbname_arg(db)];
    if let Err(e) = ncb_dbdump::capture(c.command(pg_dump, &args), c.stdin(), what) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut artifacts = Vec::new();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&tmp).at("cannot list", &tmp)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for f in &names {
        std::fs::File::open(f).and_then(|h| h.sync_all()).at("cannot sync", f)?;
    }
    std::fs::rename(&tmp, dir).at("cannot rename into place", dir)?;
    ncb_core::atomic::sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
    for f in names {
        let path = dir.join(f.file_name().unwrap_or_default());
        artifacts.push(Artifact::from_file(&path)?);
    }
    Ok(artifacts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_escaping() {
        assert_eq!(pgpass_line(None, None, r"a:b\c"), "*:*:*:*:a\\:b\\\\c\n");
        assert_eq!(pgpass_line(Some("db:1"), Some(5432), "p"), "db\\:1:5432:*:*:p\n");
        assert_eq!(dbname_arg("x' host=evil"), "--dbname=dbname='x\\' host=evil'");
    }
}
