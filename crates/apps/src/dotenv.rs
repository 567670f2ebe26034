//! An app's database settings from its `.env`, read by dotenvy's rules (comments, single and
//! double quotes, `export`, escapes in double quotes, `${VAR}` references to earlier lines or
//! the environment). Nothing is put into our own environment.

use std::collections::BTreeMap;
use std::path::Path;

use ncb_core::{Error, Result};

/// Which dump stage an app's DB_CONNECTION means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MySql,
    Postgres,
}

/// The database an app's `.env` names. The password is kept out of Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct Database {
    pub engine: Engine,
    pub host: String,
    pub port: String,
    pub database: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}@{}:{}/{} (password hidden)", self.engine, self.username, self.host, self.port, self.database)
    }
}

/// Every variable of the file, in the file's rules.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>> {
    let iter = dotenvy::from_path_iter(path).map_err(|e| match e {
        dotenvy::Error::Io(io) => Error::path("cannot read the app's .env", path, io),
        other => Error::config(format!("{}: {other}", path.display())),
    })?;
    let mut vars = BTreeMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        vars.insert(k, v);
    }
    Ok(vars)
}

/// The database settings of an app's `.env`; a missing key is an error naming the file and
/// the key (exit 2: the app's configuration is wrong, not the run).
pub fn database(path: &Path) -> Result<Database> {
    let vars = read(path)?;
    let get = |k: &str| -> Result<String> {
        vars.get(k).cloned().ok_or_else(|| Error::config(format!("{}: {k} is not set", path.display())))
    };
    let connection = get("DB_CONNECTION")?;
    let engine = match connection.to_ascii_lowercase().as_str() {
        "mysql" | "mariadb" => Engine::MySql,
        "pgsql" | "postgres" | "postgresql" => Engine::Postgres,
        other => {
            return Err(Error::config(format!(
                "{}: DB_CONNECTION '{other}' is not mysql, mariadb or pgsql",
                path.display()
            )));
        }
    };
    let db = Database {
        engine,
        host: get("DB_HOST")?,
        port: get("DB_PORT")?,
        database: get("DB_DATABASE")?,
        username: get("DB_USERNAME")?,
        password: get("DB_PASSWORD")?,
    };
    if db.port.parse::<u16>().is_err() {
        return Err(Error::config(format!("{}: DB_PORT '{}' is not a port number", path.display(), db.port)));
    }
    for (k, v) in [("DB_HOST", &db.host), ("DB_DATABASE", &db.database), ("DB_USERNAME", &db.username)] {
        if v.is_empty() || v.chars().any(char::is_control) {
            return Err(Error::config(format!("{}: {k} is empty or holds control characters", path.display())));
        }
    }
    ncb_dbdump::check_password(&db.password)
        .map_err(|e| Error::config(format!("{}: DB_PASSWORD: {e}", path.display())))?;
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".env");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn laravel_env_rules() {
        let (_d, p) = env(concat!(
            "# Laravel\n",
            "APP_NAME=\"Shop Front\"\n",
            "export DB_CONNECTION=mysql\n",
            "DB_HOST=127.0.0.1 # the local server\n",
            "DB_PORT=3306\n",
            "DB_DATABASE='shop_db'\n",
            "APP_USER=shop\n",
            "DB_USERNAME=${APP_USER}\n",
            "DB_PASSWORD=\"p@ss \\\"quoted\\\" #not a comment\"\n",
        ));
        let vars = read(&p).unwrap();
        assert_eq!(vars["APP_NAME"], "Shop Front");
        let db = database(&p).unwrap();
        assert_eq!(db.engine, Engine::MySql);
        assert_eq!((db.host.as_str(), db.port.as_str(), db.database.as_str()), ("127.0.0.1", "3306", "shop_db"));
        assert_eq!(db.username, "shop");
        assert_eq!(db.password, "p@ss \"quoted\" #not a comment");
        assert!(!format!("{db:?}").contains("p@ss"));
    }

    #[test]
    fn references_and_a_missing_key() {
        let (_d, p) =
            env("DB_CONNECTION=pgsql\nDB_HOST=db\nDB_PORT=5432\nBASE=app\nDB_DATABASE=${BASE}_prod\nDB_USERNAME=u\n");
        let e = database(&p).unwrap_err();
        assert!(e.to_string().contains(".env: DB_PASSWORD is not set"), "{e}");
        assert_eq!(e.exit_status(), ncb_core::ExitStatus::Usage);
        assert_eq!(read(&p).unwrap()["DB_DATABASE"], "app_prod");
    }

    #[test]
    fn an_unknown_connection_is_named() {
        let (_d, p) = env("DB_CONNECTION=sqlite\n");
        assert!(database(&p).unwrap_err().to_string().contains("DB_CONNECTION 'sqlite'"));
    }
}
