//! Which runs to keep: restic's `forget` semantics, over complete runs only.
//!
//! - KEEP_LAST n: the n most recent runs.
//! - KEEP_HOURLY n: for each of the last n hours that have runs, the most recent run of that
//!   hour; likewise KEEP_DAILY (days), KEEP_WEEKLY (ISO weeks), KEEP_MONTHLY, KEEP_YEARLY.
//! - KEEP_WITHIN d: every run within `d` (`2y5m7d3h`) of the newest run (not of now).
//! - A run is kept when any rule keeps it; the others go. With no rule set, nothing goes.
//! - The newest run and the run just made are always kept, whatever the rules say.
//!
//! The caller passes complete, authenticated runs only: an incomplete run never counts
//! towards a rule (it could push a good run out) and is never deleted by these rules.
//! Times are in UTC, read from the run id (`YYYYMMDDTHHMMSSZ-xxxx`).

use chrono::{DateTime, Datelike, Months, NaiveDateTime, TimeDelta, Timelike, Utc};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    pub within: Option<Span>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// A duration as restic writes it: years, months, days and hours (`1y6m`, `7d`, `36h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Span {
    pub fn parse(s: &str) -> Result<Span, String> {
        let bad = || format!("'{s}' is not a duration like 7d, 36h, 2y5m7d3h (y, m, d, h)");
        let mut span = Span::default();
        let mut num = String::new();
        let mut any = false;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num.parse().map_err(|_| bad())?;
            num.clear();
            any = true;
            match c {
                'y' => span.years += n,
                'm' => span.months += n,
                'd' => span.days += n,
                'h' => span.hours += n,
                _ => return Err(bad()),
            }
        }
        if !num.is_empty() || !any {
            return Err(bad());
        }
        Ok(span)
    }

    /// `t` moved back by this span (the earliest time still within it).
    pub fn before(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years.saturating_mul(12).saturating_add(self.months);
        let t = t.checked_sub_months(Months::new(months)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let back = TimeDelta::days(i64::from(self.days)) + TimeDelta::hours(i64::from(self.hours));
        t.checked_sub_signed(back).unwrap_or(DateTime::<Utc>::MIN_UTC)
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

type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32);

/// Decides for every complete run (ids that are not run ids are kept, untouched). The newest
/// run and `current` are never removed.
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
    let rules: [(usize, &'static str, Bucket); 5] = [
        (policy.hourly, "hourly", |t| (t.year(), t.ordinal(), t.hour())),
        (policy.daily, "daily", |t| (t.year(), t.ordinal(), 0)),
        (policy.weekly, "weekly", |t| (t.iso_week().year(), t.iso_week().week(), 0)),
        (policy.monthly, "monthly", |t| (t.year(), t.month(), 0)),
        (policy.yearly, "yearly", |t| (t.year(), 0, 0)),
    ];
    for (n, why, bucket) in rules {
        let mut seen: Vec<(i32, u32, u32)> = Vec::new();
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
    if let (Some(span), Some((newest, _))) = (policy.within, dated.first()) {
        let since = span.before(*newest);
        for (i, (t, _)) in dated.iter().enumerate() {
            if *t >= since {
                out[i].keep = true;
                out[i].reasons.push("within");
            }
        }
    }
    if let Some(newest) = out.first_mut() {
        if !newest.keep {
            newest.reasons.push("newest complete run");
        }
        newest.keep = true;
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
        // Rules that would keep nothing still keep the newest complete run.
        let d =
            decide(&runs, Policy { within: Some(Span { hours: 0, ..Default::default() }), ..Default::default() }, None);
        assert_eq!(kept(&d), ["20260102T000000"]);
        let strange = vec!["notes".to_owned()];
        assert!(decide(&strange, Policy { last: 1, ..Default::default() }, None)[0].keep);
    }

    #[test]
    fn hourly_yearly_and_within() {
        let runs = ids(&[
            "20240601T000000Z",
            "20250101T010000Z",
            "20260101T010000Z",
            "20260101T013000Z",
            "20260101T020000Z",
            "20260103T020000Z",
        ]);
        let d = decide(&runs, Policy { hourly: 2, ..Default::default() }, None);
        assert_eq!(kept(&d), ["20260101T020000", "20260103T020000"]);
        let d = decide(&runs, Policy { yearly: 3, ..Default::default() }, None);
        assert_eq!(kept(&d), ["20240601T000000", "20250101T010000", "20260103T020000"]);
        // Within 2d of the newest run (01-03 02:00): from 01-01 02:00 on; 1y2d1h: from
        // 2025-01-01 01:00 on, that run included.
        let d = decide(&runs, Policy { within: Some(Span::parse("2d").unwrap()), ..Default::default() }, None);
        assert_eq!(kept(&d), ["20260101T020000", "20260103T020000"]);
        let d = decide(&runs, Policy { within: Some(Span::parse("1y2d1h").unwrap()), ..Default::default() }, None);
        assert_eq!(
            kept(&d),
            ["20250101T010000", "20260101T010000", "20260101T013000", "20260101T020000", "20260103T020000"]
        );
    }

    #[test]
    fn spans_parse_as_restic_writes_them() {
        assert_eq!(Span::parse("2y5m7d3h").unwrap(), Span { years: 2, months: 5, days: 7, hours: 3 });
        assert_eq!(Span::parse("36h").unwrap(), Span { hours: 36, ..Default::default() });
        for bad in ["", "7", "d", "7w", "1.5d", "-1d"] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
    }
}
