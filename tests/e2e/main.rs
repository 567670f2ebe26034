//! End-to-end tests: the built binaries, run as a user runs them.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod apps;
mod check;
mod classes;
mod cli;
mod crypto;
mod daemon;
mod db;
mod dbfaults;
mod diskfull;
mod files;
mod incremental;
mod metadata;
mod mirror;
mod nights;
mod notify;
mod pipeline;
mod remote_files;
mod restore;
mod retention;
mod runner;
mod s3;
mod s3_faults;
mod schedule;
mod storage;
mod yaml;
