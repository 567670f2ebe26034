//! `backup-runner prune`: the retention of every storage section of a config applied to its
//! destinations, without making a backup. Under the run lock, so it never races a run's own
//! retention; runs still pending in WORK_FOLDER are never taken for abandoned.

use ncb_core::{Error, Result, StageReport};

use crate::config::Config;
use crate::readback::{is_stage, steps};

/// One report per storage section with KEEP_* rules; an error when there is none.
pub fn prune(config: &Config, dry: bool) -> Result<Vec<(String, StageReport)>> {
    let general = crate::plan::general_of(config);
    let work = general.work_dir();
    ncb_core::atomic::ensure_dir(&work, 0o700)?;
    let _lock = crate::lock::acquire(&work, &config.path, "prune")?;
    let pending = ncb_core::journal::pending_runs(&work);
    let mut out = Vec::new();
    for step in steps(config)?.into_iter().filter(|s| is_stage(s, "storage")) {
        let p = step.params();
        if p.flag("DOWNLOAD", false)? {
            continue;
        }
        match storage::prune(&p, &general, pending.clone(), dry) {
            Ok(r) => out.push((step.section.clone(), r)),
            Err(e) if e.exit_status() == ncb_core::ExitStatus::Usage => {
                log::info!("[{}] {e}", step.section);
            }
            Err(e) => return Err(e.context(&format!("section {}", step.section))),
        }
    }
    if out.is_empty() {
        return Err(Error::config(format!(
            "{}: no storage section with a KEEP_* rule: nothing to prune",
            config.path.display()
        )));
    }
    Ok(out)
}
