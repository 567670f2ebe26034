//! The one error type of every stage, and the exit codes it maps to.
//!
//! Rules: libraries return `Error`; only `main` (through [`crate::stage_main`]) turns it into
//! an exit code. `Usage` and `Config` are the user's to fix (exit 2); everything else is a
//! runtime failure (exit 1). Messages name the file, section, key or part that is wrong.

use std::fmt;
use std::io;
use std::path::Path;

/// Process exit status: the only values a stage or the runner ever exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the work was done.
    Success,
    /// 1: a runtime failure (I/O, a child failed, a server refused, interrupted).
    Failure,
    /// 2: a usage or configuration error; nothing was attempted.
    Usage,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s.code())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line: unknown flag, missing required flag, bad value.
    #[error("{0}")]
    Usage(String),
    /// Bad configuration: the message names the section and key.
    #[error("{0}")]
    Config(String),
    /// An I/O failure, with what was being done.
    #[error("{msg}: {source}")]
    Io {
        msg: String,
        #[source]
        source: io::Error,
    },
    /// Any other runtime failure.
    #[error("{0}")]
    Runtime(String),
    /// Stopped by a signal.
    #[error("interrupted by {0}")]
    Interrupted(String),
}

impl Error {
    pub fn usage(msg: impl fmt::Display) -> Self {
        Error::Usage(msg.to_string())
    }
    pub fn config(msg: impl fmt::Display) -> Self {
        Error::Config(msg.to_string())
    }
    pub fn runtime(msg: impl fmt::Display) -> Self {
        Error::Runtime(msg.to_string())
    }
    pub fn io(msg: impl fmt::Display, source: io::Error) -> Self {
        Error::Io { msg: msg.to_string(), source }
    }
    /// An I/O error about one path: "`what` `path`: cause".
    pub fn path(what: &str, path: &Path, source: io::Error) -> Self {
        Error::io(format!("{what} {}", path.display()), source)
    }

    /// The same error, its message prefixed with `what` (the kind, and so the exit code, kept).
    pub fn context(self, what: &str) -> Self {
        match self {
            Error::Usage(m) => Error::Usage(format!("{what}: {m}")),
            Error::Config(m) => Error::Config(format!("{what}: {m}")),
            Error::Io { msg, source } => Error::Io { msg: format!("{what}: {msg}"), source },
            Error::Runtime(m) => Error::Runtime(format!("{what}: {m}")),
            Error::Interrupted(m) => Error::Interrupted(m),
        }
    }

    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Usage(_) | Error::Config(_) => ExitStatus::Usage,
            _ => ExitStatus::Failure,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what was being done" to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
    fn at(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
    fn at(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::path(what, path, e))
    }
}
