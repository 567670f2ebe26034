//! The application's two tables, read through the database's own client (`psql` or
//! `mariadb`/`mysql`), as our dump stages do: the password reaches it in a 0600 file (PGPASSFILE
//! or an option file), never argv. Every text column is selected hex-encoded, so no value
//! (tabs, newlines, backslashes, the word NULL) can be mistaken for the output's framing.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use ncb_core::{Error, IoContext, Result};
use ncb_dbdump::SecretFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MySql,
}

/// `postgres://user@host:port/db` or `mysql://user@host:port/db` (also `postgresql://`,
/// `mariadb://`); a password in it is refused.
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    pub engine: Engine,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.shown())
    }
}

impl Url {
    pub fn parse(s: &str) -> std::result::Result<Url, String> {
        let (scheme, rest) =
            s.split_once("://").ok_or("must be postgres://user@host:port/db or mysql://user@host:port/db")?;
        let engine = match scheme {
            "postgres" | "postgresql" => Engine::Postgres,
            "mysql" | "mariadb" => Engine::MySql,
            other => return Err(format!("'{other}://' is not postgres:// or mysql://")),
        };
        let (auth, hostpart) = rest.rsplit_once('@').ok_or("names no user (user@host)")?;
        if auth.contains(':') {
            return Err(
                "holds a password: give it in DATABASE_PASSWORD_FILE (0600) or the environment, never in the URL"
                    .into(),
            );
        }
        let (hostport, database) = hostpart.split_once('/').ok_or("names no database (…/db)")?;
        let database = database.split(['?', '#']).next().unwrap_or("");
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("port '{p}' is not a number"))?),
            None => (hostport, if engine == Engine::Postgres { 5432 } else { 3306 }),
        };
        let plain = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !plain(auth) || !plain(host) || !plain(database) {
            return Err("user, host and database must be plain names (letters, digits, '.', '_', '-')".into());
        }
        Ok(Url { engine, user: auth.into(), host: host.into(), port, database: database.into() })
    }

    /// The URL as logs and state show it (it holds no secret).
    pub fn shown(&self) -> String {
        let scheme = if self.engine == Engine::Postgres { "postgres" } else { "mysql" };
        format!("{scheme}://{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }
}

/// One row of ObjectStorageFiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub storage: String,
    pub version: i64,
    pub hash: String,
    pub url: Option<String>,
}

/// A connection's settings and the secret file the client reads.
pub struct Db {
    pub url: Url,
    password: Option<String>,
    secret_dir: std::path::PathBuf,
    client: Option<String>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (password hidden)", self.url.shown())
    }
}

fn unhex(field: &str, what: &str) -> Result<Option<String>> {
    if field == "\\N" || field == "NULL" {
        return Ok(None);
    }
    let bytes = hex::decode(field).map_err(|e| Error::runtime(format!("the database sent a bad {what}: {e}")))?;
    String::from_utf8(bytes).map(Some).map_err(|_| Error::runtime(format!("{what} is not UTF-8")))
}

impl Db {
    pub fn new(url: Url, password: Option<String>, secret_dir: &Path, client: Option<String>) -> Self {
        Db { url, password, secret_dir: secret_dir.to_path_buf(), client }
    }

    /// Runs one statement; Ok: its output's lines, each split at tabs. Lines are handed to
    /// `each` as they come (a large table is never held whole).
    fn query(&self, sql: &str, each: &mut dyn FnMut(Vec<&str>) -> Result<()>) -> Result<()> {
        let u = &self.url;
        let (mut cmd, _secret) = match u.engine {
            Engine::Postgres => {
                let mut c = Command::new(self.client.as_deref().unwrap_or("psql"));
                c.args(["-X", "-q", "-A", "-t", "-F", "\t", "-P", "null=\\N", "-v", "ON_ERROR_STOP=1"])
                    .args(["-h", &u.host, "-p", &u.port.to_string()])
                    .args(["-U", &u.user, "-d", &u.database, "-c", sql])
                    .env("PGCONNECT_TIMEOUT", "10")
                    .env_remove("PGPASSWORD");
                let secret = match &self.password {
                    Some(pw) => {
                        let esc = pw.replace('\\', "\\\\").replace(':', "\\:");
                        let f = SecretFile::create(&self.secret_dir, "pgpass", format!("*:*:*:*:{esc}\n").as_bytes())?;
                        c.env("PGPASSFILE", f.path());
                        Some(f)
                    }
                    None => None,
                };
                (c, secret)
            }
            Engine::MySql => {
                let creds = mysql_dump::Creds {
                    user: Some(u.user.clone()),
                    password: self.password.clone(),
                    host: Some(u.host.clone()),
                    port: Some(u64::from(u.port)),
                    ..Default::default()
                };
                let f = SecretFile::create(&self.secret_dir, "my", creds.option_file().as_bytes())?;
                let mut c = Command::new(self.client.as_deref().unwrap_or("mariadb"));
                c.arg(format!("--defaults-extra-file={}", f.path().display()))
                    .args(["--protocol=TCP", "--connect-timeout=10", "-B", "-N", "--skip-column-names"])
                    .args(["--default-character-set=utf8mb4", "-e", sql, &u.database])
                    .env_remove("MYSQL_PWD");
                (c, Some(f))
            }
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let program = format!("{:?}", cmd.get_program());
        let mut child =
            cmd.spawn().map_err(|e| Error::runtime(format!("cannot run {program} (the database client): {e}")))?;
        let mut stderr = child.stderr.take();
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.take(64 * 1024).read_to_string(&mut s);
            }
            s
        });
        let mut result = Ok(());
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines() {
                let line = line.ctx(|| format!("reading {program}'s output"))?;
                if line.is_empty() {
                    continue;
                }
                if let Err(e) = each(line.split('\t').collect()) {
                    result = Err(e);
                    let _ = child.kill();
                    break;
                }
            }
        }
        let status = child.wait().ctx(|| format!("waiting for {program}"))?;
        let err = err_thread.join().unwrap_or_default();
        result?;
        if !status.success() {
            return Err(Error::runtime(format!(
                "{} {}: {}",
                u.shown(),
                if err.is_empty() { status.to_string() } else { String::new() },
                err.trim()
            )));
        }
        Ok(())
    }

    fn quote(&self, ident: &str) -> String {
        match self.url.engine {
            Engine::Postgres => format!("\"{ident}\""),
            Engine::MySql => format!("`{ident}`"),
        }
    }

    fn hex(&self, col: &str) -> String {
        let c = self.quote(col);
        match self.url.engine {
            Engine::Postgres => format!("encode(convert_to({c}, 'UTF8'), 'hex')"),
            Engine::MySql => format!("HEX({c})"),
        }
    }

    /// Records with `Id > after`, in Id order, at most `limit`; or exactly the Ids of `only`.
    pub fn records(&self, after: i64, limit: usize, only: Option<&[i64]>) -> Result<Vec<Record>> {
        let cols = format!(
            "{}, {}, {}, {}, {}, {}, {}",
            self.quote("Id"),
            self.hex("Name"),
            self.hex("Path"),
            self.hex("Storage"),
            self.quote("Version"),
            self.hex("Hash"),
            self.hex("SignedDownloadUrl")
        );
        let filter = match only {
            Some(ids) => {
                let list: Vec<String> = ids.iter().map(i64::to_string).collect();
                format!("{} IN ({})", self.quote("Id"), list.join(","))
            }
            None => format!("{} > {after}", self.quote("Id")),
        };
        let sql = format!(
            "SELECT {cols} FROM {} WHERE {filter} ORDER BY {} LIMIT {limit}",
            self.quote("ObjectStorageFiles"),
            self.quote("Id")
        );
        let mut out = Vec::new();
        self.query(&sql, &mut |f| {
            if f.len() != 7 {
                return Err(Error::runtime(format!("the database sent a row of {} columns, not 7", f.len())));
            }
            let num = |s: &str, what: &str| {
                s.trim().parse::<i64>().map_err(|_| Error::runtime(format!("{what} '{s}' is not a number")))
            };
            let id = num(f[0], "Id")?;
            let text = |i: usize, what: &str| -> Result<String> {
                unhex(f[i], what)?.ok_or_else(|| Error::runtime(format!("record {id}: {what} is NULL")))
            };
            out.push(Record {
                id,
                name: text(1, "Name")?,
                path: unhex(f[2], "Path")?.unwrap_or_default(),
                storage: unhex(f[3], "Storage")?.unwrap_or_default(),
                version: num(f[4], "Version")?,
                hash: text(5, "Hash")?.trim().to_ascii_lowercase(),
                url: unhex(f[6], "SignedDownloadUrl")?.filter(|u| !u.is_empty()),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Every FileId of the delete log.
    pub fn deleted(&self) -> Result<Vec<i64>> {
        let sql = format!("SELECT DISTINCT {} FROM {}", self.quote("FileId"), self.quote("ObjectStorageDeleteLog"));
        let mut out = Vec::new();
        self.query(&sql, &mut |f| {
            let id = f[0].trim();
            if id != "\\N" && id != "NULL" {
                out.push(id.parse::<i64>().map_err(|_| Error::runtime(format!("FileId '{id}' is not a number")))?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Creates the two tables (`--init-schema`), when they are not there.
    pub fn init_schema(&self) -> Result<()> {
        let sql = match self.url.engine {
            Engine::Postgres => SCHEMA_POSTGRES,
            Engine::MySql => SCHEMA_MYSQL,
        };
        self.query(sql, &mut |_| Ok(()))
    }
}

pub const SCHEMA_POSTGRES: &str = r#"CREATE TABLE IF NOT EXISTS "ObjectStorageFiles" (
  "Id" bigserial PRIMARY KEY,
  "Name" text NOT NULL,
  "Path" text NOT NULL DEFAULT '',
  "Storage" text NOT NULL DEFAULT 's3',
  "Version" bigint NOT NULL DEFAULT 1,
  "Hash" char(64) NOT NULL,
  "SignedDownloadUrl" text
);
CREATE TABLE IF NOT EXISTS "ObjectStorageDeleteLog" (
  "Id" bigserial PRIMARY KEY,
  "FileId" bigint NOT NULL
);"#;

pub const SCHEMA_MYSQL: &str = "CREATE TABLE IF NOT EXISTS ObjectStorageFiles (
  Id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  Name VARCHAR(1024) NOT NULL,
  Path VARCHAR(1024) NOT NULL DEFAULT '',
  Storage VARCHAR(64) NOT NULL DEFAULT 's3',
  Version BIGINT NOT NULL DEFAULT 1,
  Hash CHAR(64) NOT NULL,
  SignedDownloadUrl TEXT NULL
) CHARACTER SET utf8mb4;
CREATE TABLE IF NOT EXISTS ObjectStorageDeleteLog (
  Id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  FileId BIGINT NOT NULL
) CHARACTER SET utf8mb4;";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("postgres://mirror@db.example:6432/shop").unwrap();
        assert_eq!((u.engine, u.port, u.database.as_str()), (Engine::Postgres, 6432, "shop"));
        assert_eq!(Url::parse("mysql://m@127.0.0.1/app").unwrap().port, 3306);
        assert!(Url::parse("postgres://u:secret@h/db").unwrap_err().contains("password"));
        assert!(Url::parse("sqlite:///x").is_err());
        assert!(Url::parse("postgres://h/db").is_err());
        assert!(Url::parse("postgres://u@h/db;drop").is_err());
        assert!(!format!("{u:?}").is_empty());
    }

    #[test]
    fn hex_fields_cannot_be_confused_with_framing() {
        assert_eq!(unhex("\\N", "x").unwrap(), None);
        assert_eq!(unhex("NULL", "x").unwrap(), None);
        assert_eq!(unhex("", "x").unwrap().as_deref(), Some(""));
        assert_eq!(unhex(&hex::encode("a\tb\nNULL"), "x").unwrap().as_deref(), Some("a\tb\nNULL"));
    }
}
