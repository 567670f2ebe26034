//! ncb-core: what every nc-backup stage shares, so that no two stages write it twice.
//!
//! - [`params`]: parameter tables, both flag spellings, values, placeholders, checks
//! - [`context`]: the GENERAL section, run ids, the stage context
//! - [`report`]: the stage report (one JSON line on stdout)
//! - [`error`]: the error type and exit codes (0 ok, 1 runtime, 2 usage/config)
//! - [`stage`]: `StageDef` and `stage_main`, which every stage's `main.rs` calls
//! - [`atomic`]: outputs written under a temporary name, fsynced, renamed
//! - [`journal`]: the run journal in WORK_FOLDER, which lets the next run complete a killed one
//! - [`progress`]: progress bars on a terminal, silence elsewhere
//! - [`logging`], [`hash`], [`sys`]

pub mod atomic;
pub mod context;
pub mod error;
pub mod hash;
pub mod journal;
pub mod lineage;
pub mod logging;
pub mod params;
pub mod pipe;
pub mod progress;
pub mod report;
pub mod stage;
pub mod sys;

pub use context::{General, StageCtx};
pub use error::{Error, ExitStatus, IoContext, Result};
pub use params::{Kind, ParamSpec, Params, Problem};
pub use report::{Artifact, StageReport};
pub use stage::{StageDef, stage_main};
