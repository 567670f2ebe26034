//! Application backups from an inventory: what Backopper (seeds/002) does, on our stages.
//!
//! - [`inventory`]: the list of apps from an HTTP API, checked whole before use;
//! - [`dotenv`]: an app's database settings from its `.env`;
//! - [`backup`]: one app's night: its database dumped through mysql-dump / pg-dump (the
//!   password never in argv) into `BACKUPS_ROOT/<app>/<unix time>.sql.gz`, its media archived
//!   and POSTed to a backup server (or kept for SYNC), `BACKUPS_ROOT/<app>` synced to a storage
//!   destination (new or changed files only, optionally encrypted), local retention, a report.
//!
//! The crontab side (`apps sync`) and notifications live in backup-runner, which owns them.

pub mod backup;
pub mod config;
pub mod dotenv;
pub mod inventory;
mod media;
mod sync;

use std::path::Path;

use ncb_core::{Error, Result};

pub use backup::{AppReport, backup};
pub use config::{AppsConfig, load};

/// A secret from a file that only its owner may read (a bearer token): trimmed, not empty.
pub fn read_secret(path: &Path, what: &str) -> Result<String> {
    ncb_dbdump::check_private(path, what)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::path(&format!("cannot read {what}"), path, e))?;
    let t = text.trim();
    if t.is_empty() || t.chars().any(char::is_control) {
        return Err(Error::config(format!("{what} {} must hold one line, the token", path.display())));
    }
    Ok(t.to_owned())
}

pub use ncb_core::params::redact_url as redact;
