//! Which runs to keep: restic's `forget` semantics.
//!
//! - KEEP_LAST n: the n most recent runs.
//! - KEEP_DAILY n: for each of the last n days that have runs, the most recent run of that day;
//!   likewise KEEP_WEEKLY (ISO weeks) and KEEP_MONTHLY.
//! - A run is kept when any rule keeps it; the others go. With no rule set, nothing goes.
//! - The run just made is always kept, whatever the rules say.
//!
//! Days, weeks and months are in UTC, read from the run id (`YYYYMMDDTHHMMSSZ-xxxx`).

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// The time a run id names, if it is one.
pub fn run_time(run_id: &str) -> Option<DateTime<Utc>> {
    let stamp = run_id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc())
}

/// One run's fate and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub run_id: String,
    pub keep: bool,
    pub reasons: Vec<&'static str>,
}

/// Decides for every run (ids that are not run ids are kept, untouched). `current` is never
/// removed.
pub fn decide(runs: &[String], policy: Policy, current: Option<&str>) -> Vec<Decision> {
    let mut dated: Vec<(DateTime<Utc>, &String)> = runs.iter().filter_map(|r| run_time(r).map(|t| (t, r))).collect();
    // Newest first; ties broken by id so the order is total.
    dated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1)));
    let mut out: Vec<Decision> = dated
        .iter()
        .map(|(_, r)| Decision { run_id: (*r).clone(), keep: policy.is_empty(), reasons: Vec::new() })
        .collect();
    for (i, d) in out.iter_mut().enumerate() {
        if i < policy.last {
            d.keep = true;
            d.reasons.push("last");
        }
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32);
    let rules: [(usize, &'static str, Bucket); 3] = [
        (policy.daily, "daily", |t| (t.year(), t.ordinal())),
        (policy.weekly, "weekly", |t| (t.iso_week().year(), t.iso_week().week())),
        (policy.monthly, "monthly", |t| (t.year(), t.month())),
    ];
    for (n, why, bucket) in rules {
        let mut seen: Vec<(i32, u32)> = Vec::new();
        for (i, (t, _)) in dated.iter().enumerate() {
            if seen.len() >= n {
                break;
            }
            let b = bucket(t);
            if !seen.contains(&b) {
                seen.push(b);
                out[i].keep = true;
                out[i].reasons.push(why);
            }
        }
    }
    for d in out.iter_mut().filter(|d| Some(d.run_id.as_str()) == current) {
        if !d.keep {
            d.reasons.push("current run");
        }
        d.keep = true;
    }
    for r in runs.iter().filter(|r| run_time(r).is_none()) {
        out.push(Decision { run_id: r.clone(), keep: true, reasons: vec!["not a run id"] });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| format!("{s}-abcd")).collect()
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        let mut k: Vec<&str> = d.iter().filter(|d| d.keep).map(|d| &d.run_id[..15]).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn keep_last_and_daily_like_restic() {
        let runs =
            ids(&["20260101T010000Z", "20260101T230000Z", "20260102T120000Z", "20260103T080000Z", "20260103T200000Z"]);
        let d = decide(&runs, Policy { last: 1, daily: 2, ..Default::default() }, None);
        // last: 01-03 20:00; daily 2: newest of 01-03 (20:00) and of 01-02.
        assert_eq!(kept(&d), ["20260102T120000", "20260103T200000"]);
    }

    #[test]
    fn weekly_and_monthly_buckets() {
        // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
        let runs = ids(&["20251231T000000Z", "20260104T000000Z", "20260105T000000Z", "20260201T000000Z"]);
        let d = decide(&runs, Policy { weekly: 2, ..Default::default() }, None);
        assert_eq!(kept(&d), ["20260105T000000", "20260201T000000"]);
        let d = decide(&runs, Policy { monthly: 3, ..Default::default() }, None);
        assert_eq!(kept(&d), ["20251231T000000", "20260105T000000", "20260201T000000"]);
    }

    #[test]
    fn no_policy_keeps_all_and_the_current_run_always_stays() {
        let runs = ids(&["20260101T000000Z", "20260102T000000Z"]);
        assert!(decide(&runs, Policy::default(), None).iter().all(|d| d.keep));
        let d = decide(&runs, Policy { last: 1, ..Default::default() }, Some("20260101T000000Z-abcd"));
        assert!(d.iter().all(|d| d.keep), "{d:?}");
        let strange = vec!["notes".to_owned()];
        assert!(decide(&strange, Policy { last: 1, ..Default::default() }, None)[0].keep);
    }
}
