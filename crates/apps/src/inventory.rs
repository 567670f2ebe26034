//! The inventory: `GET API_URL[?environment=ENVIRONMENT]` answers
//! `[{"name": "project_1", "frequency": "daily"}, …]` (seeds/002). The whole answer is checked
//! before anything is done with it: one bad entry refuses it all, so a broken or hostile API
//! never half-changes the schedule.

use std::io::Read;

use ncb_core::{Error, Result};
use serde_json::Value;

use crate::config::{AppsConfig, check_app_name};

/// An app and its cron schedule (`@daily`, or a five-field expression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub schedule: String,
}

/// The most the inventory may answer.
const MAX_BODY: u64 = 8 << 20;

/// The cron schedule of a frequency: daily, weekly, monthly, hourly, yearly (with or without
/// `@`), or a cron expression that `valid_cron` accepts.
pub fn schedule_of(
    frequency: &str,
    valid_cron: &dyn Fn(&str) -> std::result::Result<(), String>,
) -> std::result::Result<String, String> {
    let f = frequency.trim();
    let named = f.strip_prefix('@').unwrap_or(f).to_ascii_lowercase();
    match named.as_str() {
        "hourly" | "daily" | "weekly" | "monthly" | "yearly" | "annually" => Ok(format!("@{named}")),
        _ if f.split_whitespace().count() == 5 => {
            valid_cron(f).map(|()| f.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        _ => Err(format!(
            "frequency '{}' is not hourly, daily, weekly, monthly, yearly or a cron expression",
            f.escape_debug()
        )),
    }
}

/// Parses and checks an inventory answer.
pub fn parse(body: &[u8], valid_cron: &dyn Fn(&str) -> std::result::Result<(), String>) -> Result<Vec<App>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let head: String =
            String::from_utf8_lossy(&body[..body.len().min(80)]).chars().filter(|c| !c.is_control()).collect();
        Error::runtime(format!("the inventory's answer is not JSON ({e}); it begins: {head:?}"))
    })?;
    let Value::Array(items) = v else {
        return Err(Error::runtime("the inventory's answer is not a JSON list of {\"name\", \"frequency\"}"));
    };
    let mut apps: Vec<App> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| item.get(k).and_then(Value::as_str);
        let (Some(name), Some(freq)) = (field("name"), field("frequency")) else {
            return Err(Error::runtime(format!(
                "the inventory's entry {i} has no \"name\" and \"frequency\" strings: {}",
                truncate(&item.to_string())
            )));
        };
        check_app_name(name).map_err(|e| Error::runtime(format!("the inventory's entry {i}: {e}")))?;
        let schedule = schedule_of(freq, valid_cron)
            .map_err(|e| Error::runtime(format!("the inventory's entry {i} ({name}): {e}")))?;
        if apps.iter().any(|a| a.name == name) {
            return Err(Error::runtime(format!("the inventory names {name} twice")));
        }
        apps.push(App { name: name.to_owned(), schedule });
    }
    Ok(apps)
}

fn truncate(s: &str) -> String {
    if s.len() <= 120 { s.to_owned() } else { format!("{}…", &s[..s.floor_char_boundary(120)]) }
}

/// Asks the inventory. The token travels in a header, never in the URL or a log.
pub fn fetch(c: &AppsConfig, valid_cron: &dyn Fn(&str) -> std::result::Result<(), String>) -> Result<Vec<App>> {
    let api = c.api_url.as_deref().ok_or_else(|| Error::config(format!("{}: API_URL is not set", c.path.display())))?;
    let token = match &c.token_file {
        Some(p) => Some(crate::read_secret(p, "TOKEN_FILE")?),
        None => None,
    };
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(c.api_timeout)).http_status_as_error(false).build().into();
    let mut req = agent.get(api).header("Accept", "application/json");
    if let Some(env) = &c.environment {
        req = req.query("environment", env);
    }
    if let Some(t) = &token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let shown = crate::redact(api);
    let mut resp = req.call().map_err(|e| Error::runtime(format!("the inventory {shown} cannot be reached: {e}")))?;
    if !resp.status().is_success() {
        return Err(Error::runtime(format!("the inventory {shown} answered HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| Error::runtime(format!("the inventory {shown}: reading its answer: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(Error::runtime(format!("the inventory {shown} answered more than {} MiB", MAX_BODY >> 20)));
    }
    parse(&body, valid_cron).map_err(|e| e.context(&format!("inventory {shown}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_cron(_: &str) -> std::result::Result<(), String> {
        Ok(())
    }

    #[test]
    fn the_seeds_answer_is_read() {
        let apps = parse(
            br#"[{"name": "project_1", "frequency": "daily"}, {"name": "project_2", "frequency": "weekly"}]"#,
            &any_cron,
        )
        .unwrap();
        assert_eq!(apps[0], App { name: "project_1".into(), schedule: "@daily".into() });
        assert_eq!(apps[1].schedule, "@weekly");
        assert_eq!(parse(b"[]", &any_cron).unwrap(), vec![]);
        assert_eq!(schedule_of("@Monthly", &any_cron).unwrap(), "@monthly");
        assert_eq!(schedule_of("30  2 * * 1", &any_cron).unwrap(), "30 2 * * 1");
    }

    #[test]
    fn a_bad_entry_refuses_the_whole_answer() {
        for (body, want) in [
            (&b"<html>oops</html>"[..], "not JSON"),
            (br#"{"apps": []}"#, "not a JSON list"),
            (
                br#"[{"name": "ok", "frequency": "daily"}, {"name": "../x", "frequency": "daily"}]"#,
                "not a plain app name",
            ),
            (br#"[{"name": "a b", "frequency": "daily"}]"#, "not a plain app name"),
            (br#"[{"name": "", "frequency": "daily"}]"#, "not a plain app name"),
            (br#"[{"name": "x", "frequency": "fortnightly"}]"#, "frequency"),
            (br#"[{"name": "x"}]"#, "no \"name\" and \"frequency\""),
            (br#"[{"name": "x", "frequency": "daily"}, {"name": "x", "frequency": "daily"}]"#, "twice"),
        ] {
            let e = parse(body, &any_cron).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
        }
    }
}
