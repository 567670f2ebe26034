//! An app's media: its media folders archived by filesbackup (tar.gz, paths relative to `/`,
//! what GNU tar reads), then POSTed to the backup server or kept for SYNC.
//!
//! The POST: `Authorization: Bearer <TOKEN_FILE>`, `Content-Type: application/gzip`,
//! `Content-Length`, `X-Backup-App`, `X-Backup-Name`, `X-Content-SHA256`. A 2xx answer is
//! success; when its body is JSON with `sha256` or `size`, they must match what was sent.
//! Transport errors, 408, 429 and 5xx are retried with backoff (1, 2, 4 … 30 s) up to ATTEMPTS;
//! other 4xx are not (the server refused it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ncb_core::context::{General, StageCtx};
use ncb_core::params::Params;
use ncb_core::{Error, IoContext, Result};

use crate::backup::{MEDIA_SUFFIX, place};
use crate::config::{AppsConfig, MediaTarget};

/// Archives and delivers the media; Ok: (what happened, bytes, a warning).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backup(
    c: &AppsConfig,
    name: &str,
    app_root: &Path,
    general: &General,
    run_id: &str,
    work: &Path,
    dir: &Path,
    time: i64,
) -> Result<(String, u64, Option<String>)> {
    let folders: Vec<PathBuf> = c.media_paths(name).iter().map(|p| app_root.join(p)).collect();
    let present: Vec<&PathBuf> = folders.iter().filter(|f| f.is_dir()).collect();
    if present.is_empty() {
        let shown: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
        let w = format!("no media folder ({}): no media archive", shown.join(", "));
        log::warn!("{name}: {w}");
        return Ok(("no media folder".into(), 0, Some(w)));
    }
    let mut p = Params::new();
    for f in &present {
        p.push("FILESET_INCLUDE", f.display().to_string());
    }
    p.set("DESTINATION", work.join("media").display().to_string());
    if let Some(l) = &c.compression_level {
        p.set("COMPRESSION_LEVEL", l.as_str());
    }
    let problems = filesbackup::STAGE.check(&p);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Error::config(list.join("; ")));
    }
    let ctx = StageCtx::new(general.clone(), run_id.to_owned(), "MEDIA".into());
    let r = filesbackup::STAGE.execute(&ctx, &p)?;
    let archive = r
        .artifacts
        .iter()
        .find(|a| a.path.to_string_lossy().ends_with(MEDIA_SUFFIX))
        .ok_or_else(|| Error::runtime("filesbackup made no media archive"))?
        .clone();
    match &c.media.target {
        MediaTarget::Http { url, token_file, attempts } => {
            let token = token_file.as_deref().map(|t| crate::read_secret(t, "MEDIA.TOKEN_FILE")).transpose()?;
            let file_name = format!("{name}-{time}{MEDIA_SUFFIX}");
            post(url, token.as_deref(), name, &file_name, &archive, *attempts)?;
            log::info!("{name}: media archive ({} bytes) posted to {}", archive.bytes, crate::redact(url));
            Ok((format!("posted to {}", crate::redact(url)), archive.bytes, None))
        }
        MediaTarget::Sync => {
            let media = dir.join("media");
            ncb_core::atomic::ensure_dir(&media, 0o700)?;
            let (path, bytes) = place(&archive.path, &media, time, MEDIA_SUFFIX)?;
            Ok((format!("kept as {} for sync", path.display()), bytes, None))
        }
        MediaTarget::None => Ok(("skipped".into(), 0, None)),
    }
}

fn post(
    url: &str,
    token: Option<&str>,
    app: &str,
    file_name: &str,
    a: &ncb_core::Artifact,
    attempts: u32,
) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into();
    let shown = crate::redact(url);
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            let wait = Duration::from_secs((1u64 << (attempt - 2)).min(30));
            log::warn!("{app}: media POST to {shown}: {last}; attempt {attempt} of {attempts} in {}s", wait.as_secs());
            std::thread::sleep(wait);
        }
        let file = std::fs::File::open(&a.path).at("cannot open", &a.path)?;
        let mut req = agent
            .post(url)
            .header("Content-Type", "application/gzip")
            .header("Content-Length", &a.bytes.to_string())
            .header("X-Backup-App", app)
            .header("X-Backup-Name", file_name)
            .header("X-Content-SHA256", &a.sha256);
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = match req.send(ureq::SendBody::from_owned_reader(file)) {
            Ok(r) => r,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let status = resp.status();
        let body = resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
        if status.is_success() {
            return check_answer(&body, a).map_err(|e| Error::runtime(format!("media POST to {shown}: {e}")));
        }
        last = format!("HTTP {status}");
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            return Err(Error::runtime(format!("media POST to {shown} was refused: {last} (not retried)")));
        }
    }
    Err(Error::runtime(format!("media POST to {shown} failed after {attempts} attempts: {last}")))
}

/// A JSON answer that names what the server received must name what was sent.
fn check_answer(body: &str, a: &ncb_core::Artifact) -> std::result::Result<(), String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return Ok(()) };
    if let Some(sha) = v.get("sha256").and_then(|s| s.as_str())
        && !sha.eq_ignore_ascii_case(&a.sha256)
    {
        return Err(format!("the server received sha256 {sha}, we sent {}", a.sha256));
    }
    if let Some(size) = v.get("size").and_then(serde_json::Value::as_u64)
        && size != a.bytes
    {
        return Err(format!("the server received {size} bytes, we sent {}", a.bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_must_name_what_was_sent() {
        let a = ncb_core::Artifact { path: "/x".into(), bytes: 10, sha256: "ab".repeat(32) };
        assert!(super::check_answer("OK", &a).is_ok());
        assert!(super::check_answer(&format!(r#"{{"sha256": "{}", "size": 10}}"#, "AB".repeat(32)), &a).is_ok());
        assert!(super::check_answer(r#"{"size": 9}"#, &a).unwrap_err().contains("received 9 bytes"));
        assert!(super::check_answer(r#"{"sha256": "00"}"#, &a).unwrap_err().contains("sha256 00"));
    }
}
