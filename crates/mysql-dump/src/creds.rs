//! MySQL credentials: from CREDENTIAL_PATH and the parameters, into an option file.

use std::path::Path;

use ncb_core::params::Params;
use ncb_core::{Error, IoContext, Result};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Creds {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Option<String>,
    pub port: Option<u64>,
    pub socket: Option<String>,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("host", &self.host)
            .finish()
    }
}

impl Creds {
    /// A my.cnf-style file (`[client]` or `[mysqldump]` section, or none) or one line
    /// `user:password`. Refused when group or others may read it.
    pub fn from_file(path: &Path) -> Result<Self> {
        ncb_dbdump::check_private(path, "credentials file")?;
        let text = std::fs::read_to_string(path).at("cannot read credentials file", path)?;
        Self::parse(&text).map_err(|e| Error::usage(format!("credentials file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
            .collect();
        let mut c = Creds::default();
        if let [one] = lines.as_slice()
            && !one.contains('=')
            && !one.starts_with('[')
        {
            let (u, pw) = one.split_once(':').ok_or("expected user:password or key=value lines")?;
            c.user = Some(u.to_owned());
            c.password = Some(pw.to_owned());
            return Ok(c);
        }
        let mut section = String::new();
        for (n, l) in lines.into_iter().enumerate() {
            if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.trim().to_ascii_lowercase();
                continue;
            }
            if !(section.is_empty() || section == "client" || section == "mysqldump" || section == "mysql") {
                continue;
            }
            // Never quote the line: it may hold a password.
            let (k, v) = l.split_once('=').ok_or_else(|| format!("entry {} is not key=value", n + 1))?;
            let v = unquote(v.trim());
            match k.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "user" => c.user = Some(v),
                "password" => c.password = Some(v),
                "host" => c.host = Some(v),
                "port" => c.port = Some(v.parse().map_err(|_| format!("port '{v}' is not a number"))?),
                "socket" => c.socket = Some(v),
                _ => {}
            }
        }
        Ok(c)
    }

    pub fn override_with(&mut self, p: &Params) -> Result<()> {
        if let Some(v) = p.str("USER") {
            self.user = Some(v.to_owned());
        }
        if let Some(v) = p.get("PASSWORD") {
            self.password = Some(v.to_owned());
        }
        if let Some(v) = p.str("HOST") {
            self.host = Some(v.to_owned());
        }
        if let Some(v) = p.u64("PORT")? {
            self.port = Some(v);
        }
        if let Some(v) = p.str("SOCKET") {
            self.socket = Some(v.to_owned());
        }
        Ok(())
    }

    /// The `[client]` option file mysqldump and mysql read (values quoted and escaped).
    pub fn option_file(&self) -> String {
        let mut s = String::from("[client]\n");
        let mut put =
            |k: &str, v: &str| s.push_str(&format!("{k}=\"{}\"\n", v.replace('\\', "\\\\").replace('"', "\\\"")));
        if let Some(v) = &self.user {
            put("user", v);
        }
        if let Some(v) = &self.password {
            put("password", v);
        }
        if let Some(v) = &self.host {
            put("host", v);
        }
        if let Some(v) = self.port {
            put("port", &v.to_string());
        }
        if let Some(v) = &self.socket {
            put("socket", v);
        }
        s
    }
}

fn unquote(v: &str) -> String {
    let q = v.len() >= 2 && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')));
    if q { v[1..v.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\") } else { v.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let c =
            Creds::parse("[client]\nuser = backup\npassword=\"p\\\"w\"\nport=3307\n[mysqld]\nuser=mysql\n").unwrap();
        assert_eq!((c.user.as_deref(), c.password.as_deref(), c.port), (Some("backup"), Some("p\"w"), Some(3307)));
        let c = Creds::parse("backup:s3cret:x\n").unwrap();
        assert_eq!((c.user.as_deref(), c.password.as_deref()), (Some("backup"), Some("s3cret:x")));
        assert!(Creds::parse("nonsense").is_err());
    }

    #[test]
    fn option_file_escapes_and_debug_hides_the_password() {
        let c = Creds { user: Some("u".into()), password: Some("a\"b\\c".into()), ..Default::default() };
        assert_eq!(c.option_file(), "[client]\nuser=\"u\"\npassword=\"a\\\"b\\\\c\"\n");
        assert!(!format!("{c:?}").contains("a\"b"));
        assert_eq!(Creds::parse(&c.option_file()).unwrap(), c);
    }
}
