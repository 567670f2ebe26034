//! The logger that `stage_main` and the runner install: human-readable lines on stderr and,
//! when LOG_FOLDER is set, appended to the log file (created 0640). Libraries only use `log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::error::{IoContext, Result};

#[derive(Debug)]
struct Logger {
    name: String,
    file: Option<Mutex<File>>,
    stderr_level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= LevelFilter::Debug
    }

    fn log(&self, r: &Record) {
        if r.level() <= self.stderr_level {
            let prefix = match r.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            let mut err = std::io::stderr().lock();
            crate::progress::clear_line(&mut err);
            let _ = writeln!(err, "{}: {prefix}{}", self.name, r.args());
        }
        if let Some(f) = &self.file
            && r.level() <= Level::Info
            && let Ok(mut f) = f.lock()
        {
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
            let _ = writeln!(f, "{now} {:<5} [{}] {}", r.level(), self.name, r.args());
        }
    }

    fn flush(&self) {}
}

/// Opens (creating folders as needed) the log file for appending. A symbolic link there is
/// never followed (one planted in a shared log folder would make us append elsewhere), and a
/// file someone else owns is refused (they would read what we log).
pub fn open_log(path: &Path) -> Result<File> {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).at("cannot create log folder", dir)?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            return Err(crate::Error::usage(format!(
                "the log file {} is a symbolic link: refused (it would make us write where it points)",
                path.display()
            )));
        }
        let me = crate::sys::euid();
        if m.uid() != me && m.uid() != 0 {
            return Err(crate::Error::usage(format!(
                "the log file {} belongs to user {}, not to this one: refused",
                path.display(),
                m.uid()
            )));
        }
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at("cannot open log file", path)
}

/// Installs the logger once per process. `verbose` shows debug lines on stderr; `quiet`
/// shows only warnings and errors there.
pub fn init(name: &str, log_file: Option<&Path>, verbose: bool, quiet: bool) -> Result<()> {
    let file = log_file.map(open_log).transpose()?.map(Mutex::new);
    let stderr_level = if verbose {
        LevelFilter::Debug
    } else if quiet {
        LevelFilter::Warn
    } else {
        LevelFilter::Info
    };
    let logger = Logger { name: name.to_owned(), file, stderr_level };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
    Ok(())
}
