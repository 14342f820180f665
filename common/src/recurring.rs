//! Recurring jobs: the `[schedules.NAME]` tables of the configuration file, and when each
//! schedule ticks.
//!
//! ```toml
//! [schedules.nightly_report]
//! cron = "0 3 * * *"          # five fields (minute hour day month weekday), @daily…, or "@every 30s"
//! timezone = "Europe/Berlin"  # IANA zone the pattern is read in; default UTC
//! kind = "report"             # a kind this ingress knows; the payload is checked against it at start-up
//! payload = { scope = "all" }
//! catch_up = "1h"             # ticks missed while no ingress ran are run if at most this old; default: skipped
//! ```
//!
//! A tick is an instant (µs since the epoch, always a whole second). Cron patterns are
//! evaluated by croner in the schedule's zone with the OCPS daylight-saving rules: a
//! fixed-time pattern (one minute of one hour, like `30 2 * * *`) whose time is skipped
//! when the clocks go forward ticks once, at the first instant after the gap (03:00), and
//! whose time repeats when they go back ticks once, at the first of the two; a pattern
//! with a wildcard or step in its minute or hour (`*/15 * * * *`) ticks on real instants,
//! both times in a repeated hour, none in a skipped one. `@every` periods are counted from
//! the Unix epoch, so every replica computes the same instants.
//!
//! A tick's job has an id derived from the schedule's name and the tick ([`Schedule::job_id`],
//! UUIDv5): whichever replica computes it, the job is the same job, and the unique row
//! per schedule and tick in the database (`surge_common::storage::recurring`) makes a
//! second one impossible by construction.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// A schedule the configuration file declares wrongly, naming the key at fault (the
/// configuration file's reader reports it as its own error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSchedule {
    /// Dotted path of the key, e.g. `schedules.nightly.cron`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl InvalidSchedule {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> InvalidSchedule {
        InvalidSchedule {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Longest `catch_up` window: a week of missed ticks at most (bounds the work after a long
/// outage and the rows kept per schedule).
pub const MAX_CATCH_UP: Duration = Duration::from_secs(7 * 86_400);
/// Shortest `@every` period (ticks are whole seconds).
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// Longest `@every` period.
pub const MAX_EVERY: Duration = Duration::from_secs(31 * 86_400);
/// Longest schedule name (the same rule as a kind's name).
pub const MAX_SCHEDULE_NAME_LEN: usize = 64;

/// The namespace of tick job ids (UUIDv5 of `name`, NUL, tick).
const JOB_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a8e_5b7d_4e0a_9c3f_1d2e_8a4b_7c60);

/// One `[schedules.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    kind: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    catch_up: Option<String>,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A cron pattern read in a time zone.
    Cron {
        /// The parsed pattern.
        cron: Box<Cron>,
        /// The zone.
        zone: TimeZone,
    },
    /// `@every PERIOD`: every multiple of the period since the Unix epoch.
    Every {
        /// The period, in µs.
        period_us: i64,
    },
}

/// A checked schedule: what to run and when.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name (the table's key).
    pub name: String,
    /// The pattern as written (`0 3 * * *`, `@every 30s`).
    pub cron: String,
    /// The zone's IANA name as written (`UTC` by default).
    pub timezone: String,
    /// When it ticks.
    pub cadence: Cadence,
    /// The kind of its jobs.
    pub kind: String,
    /// Their payload (`{}` by default).
    pub payload: Value,
    /// How old a missed tick may be and still run; `None`: missed ticks are skipped.
    pub catch_up: Option<Duration>,
}

impl Schedule {
    /// Checks one table; every error names its key (`schedules.NAME.cron`, …). The kind is
    /// checked later, against the registry of the process ([`crate::config::KindsArgs`]).
    pub fn check(name: &str, file: ScheduleFile) -> Result<Schedule, InvalidSchedule> {
        let key = |field: &str| format!("schedules.{name}.{field}");
        if !crate::job::is_valid_kind_name(name) || name.len() > MAX_SCHEDULE_NAME_LEN {
            return Err(InvalidSchedule::new(
                format!("schedules.{name}"),
                format!(
                    "not a valid schedule name: use 1 to {MAX_SCHEDULE_NAME_LEN} characters \
                     from a-z, 0-9, '_', '-' and '.', starting with a letter or digit"
                ),
            ));
        }
        let timezone = file.timezone.unwrap_or_else(|| "UTC".to_owned());
        let zone = TimeZone::get(&timezone).map_err(|_| {
            InvalidSchedule::new(
                key("timezone"),
                format!(
                    "unknown time zone {timezone:?}: use an IANA name like Europe/Berlin or UTC"
                ),
            )
        })?;
        let cadence =
            parse_cadence(&file.cron, zone).map_err(|m| InvalidSchedule::new(key("cron"), m))?;
        let catch_up = match file.catch_up.as_deref() {
            None => None,
            Some(text) => {
                let window =
                    parse_duration(text).map_err(|m| InvalidSchedule::new(key("catch_up"), m))?;
                if window > MAX_CATCH_UP {
                    return Err(InvalidSchedule::new(
                        key("catch_up"),
                        format!("at most {} days", MAX_CATCH_UP.as_secs() / 86_400),
                    ));
                }
                (!window.is_zero()).then_some(window)
            }
        };
        let payload = file
            .payload
            .unwrap_or_else(|| Value::Object(Default::default()));
        let schedule = Schedule {
            name: name.to_owned(),
            cron: file.cron.trim().to_owned(),
            timezone,
            cadence,
            kind: file.kind,
            payload,
            catch_up,
        };
        if schedule
            .next_tick_after(crate::clock::now_micros())
            .is_none()
        {
            return Err(InvalidSchedule::new(key("cron"), "never ticks"));
        }
        Ok(schedule)
    }

    /// The first tick strictly after `after_us`, if the pattern ever ticks again.
    pub fn next_tick_after(&self, after_us: i64) -> Option<i64> {
        match &self.cadence {
            Cadence::Every { period_us } => after_us
                .div_euclid(*period_us)
                .checked_add(1)?
                .checked_mul(*period_us),
            Cadence::Cron { cron, zone } => {
                // Ticks are whole seconds: one at `after_us`'s own second is not after it.
                let seconds = after_us.div_euclid(1_000_000);
                let start = Timestamp::from_second(seconds).ok()?.to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&start, false).ok()?;
                next.timestamp().as_microsecond().into()
            }
        }
    }

    /// The ticks in `(after_us, until_us]`, oldest first, at most `limit`.
    pub fn ticks_between(&self, after_us: i64, until_us: i64, limit: usize) -> Vec<i64> {
        let mut ticks = Vec::new();
        let mut cursor = after_us;
        while ticks.len() < limit {
            match self.next_tick_after(cursor) {
                Some(tick) if tick <= until_us => {
                    ticks.push(tick);
                    cursor = tick;
                }
                _ => break,
            }
        }
        ticks
    }

    /// The id of the job of the tick at `tick_us`: the same on every replica.
    pub fn job_id(&self, tick_us: i64) -> Uuid {
        Uuid::new_v5(
            &JOB_ID_NAMESPACE,
            format!("{}\0{tick_us}", self.name).as_bytes(),
        )
    }

    /// The id of a job triggered by hand at `at_us` (distinct from every tick's).
    pub fn trigger_id(&self, at_us: i64) -> Uuid {
        Uuid::new_v5(
            &JOB_ID_NAMESPACE,
            format!("{}\0trigger\0{at_us}", self.name).as_bytes(),
        )
    }
}

/// A cron pattern (five fields, or a nickname like `@daily`) or `@every PERIOD`.
fn parse_cadence(text: &str, zone: TimeZone) -> Result<Cadence, String> {
    let text = text.trim();
    if let Some(period) = text.strip_prefix("@every") {
        let period = parse_duration(period.trim())?;
        if period < MIN_EVERY || period > MAX_EVERY {
            return Err(format!(
                "@every takes a period from {} s to {} days",
                MIN_EVERY.as_secs(),
                MAX_EVERY.as_secs() / 86_400
            ));
        }
        let period_us = i64::try_from(period.as_micros()).map_err(|_| "period too long")?;
        return Ok(Cadence::Every { period_us });
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| {
            format!(
                "not a cron pattern ({e}): use five fields (minute hour day-of-month month \
                 day-of-week) like \"0 3 * * *\", a nickname like @daily, or \"@every 30s\""
            )
        })?;
    Ok(Cadence::Cron {
        cron: Box::new(cron),
        zone,
    })
}

/// A duration written as whole numbers with units, like `30s`, `15m`, `1h30m`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration: write whole numbers with units s, m, h, d, like 30s, 15m, 1h30m")
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, zone: &str) -> Schedule {
        let file: ScheduleFile = toml::from_str(&format!(
            "cron = {cron:?}\ntimezone = {zone:?}\nkind = \"echo\""
        ))
        .unwrap();
        Schedule::check("s", file).unwrap()
    }

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_microsecond()
    }

    fn shown(ticks: &[i64]) -> Vec<String> {
        ticks
            .iter()
            .map(|t| Timestamp::from_microsecond(*t).unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_fixed_time_in_the_skipped_hour_ticks_once_right_after_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let ticks = s.ticks_between(at("2026-03-27T12:00:00Z"), at("2026-03-31T12:00:00Z"), 10);
        assert_eq!(
            shown(&ticks),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // the gap's end, 03:00 CEST: once
                "2026-03-30T00:30:00Z", // 02:30 CEST
                "2026-03-31T00:30:00Z",
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_repeated_hour_ticks_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let ticks = s.ticks_between(at("2026-10-23T12:00:00Z"), at("2026-10-26T12:00:00Z"), 10);
        assert_eq!(
            shown(&ticks),
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // the first 02:30 (CEST) only
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
    }

    #[test]
    fn an_interval_pattern_follows_real_time_across_both_transitions() {
        // Every hour on the hour: 23 ticks on the short day, 25 on the long one.
        let s = schedule("0 * * * *", "Europe/Berlin");
        let spring = s.ticks_between(at("2026-03-28T23:00:00Z"), at("2026-03-29T22:00:00Z"), 100);
        assert_eq!(spring.len(), 23, "{:?}", shown(&spring));
        let autumn = s.ticks_between(at("2026-10-24T22:00:00Z"), at("2026-10-25T23:00:00Z"), 100);
        assert_eq!(autumn.len(), 25, "{:?}", shown(&autumn));
        assert!(autumn.windows(2).all(|w| w[1] - w[0] == 3_600_000_000));
    }

    #[test]
    fn utc_is_the_default_and_every_counts_from_the_epoch() {
        let file: ScheduleFile = toml::from_str("cron = \"0 3 * * *\"\nkind = \"echo\"").unwrap();
        let s = Schedule::check("n", file).unwrap();
        assert_eq!(s.timezone, "UTC");
        assert_eq!(
            shown(&[s.next_tick_after(at("2026-12-07T03:00:00Z")).unwrap()]),
            ["2026-12-08T03:00:00Z"]
        );
        let every = schedule("@every 30s", "UTC");
        let ticks =
            every.ticks_between(at("2026-12-07T10:00:10.5Z"), at("2026-12-07T10:01:30Z"), 10);
        assert_eq!(
            shown(&ticks),
            [
                "2026-12-07T10:00:30Z",
                "2026-12-07T10:01:00Z",
                "2026-12-07T10:01:30Z"
            ]
        );
        assert_eq!(
            every.ticks_between(0, i64::MAX, 4).len(),
            4,
            "bounded by the limit"
        );
    }

    #[test]
    fn job_ids_are_the_same_for_a_tick_and_differ_between_ticks_and_schedules() {
        let a = schedule("@every 1s", "UTC");
        let mut b = a.clone();
        b.name = "t".into();
        assert_eq!(a.job_id(1_000_000), a.clone().job_id(1_000_000));
        assert_ne!(a.job_id(1_000_000), a.job_id(2_000_000));
        assert_ne!(a.job_id(1_000_000), b.job_id(1_000_000));
        assert_ne!(a.job_id(1_000_000), a.trigger_id(1_000_000));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("cron = \"0 3 * *\"\nkind = \"e\"", "schedules.s.cron"),
            ("cron = \"0 0 3 * * *\"\nkind = \"e\"", "schedules.s.cron"),
            ("cron = \"0 0 31 2 *\"\nkind = \"e\"", "schedules.s.cron"),
            ("cron = \"@every 0s\"\nkind = \"e\"", "schedules.s.cron"),
            ("cron = \"@every soon\"\nkind = \"e\"", "schedules.s.cron"),
            (
                "cron = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\nkind = \"e\"",
                "schedules.s.timezone",
            ),
            (
                "cron = \"0 3 * * *\"\nkind = \"e\"\ncatch_up = \"1 hour\"",
                "schedules.s.catch_up",
            ),
            (
                "cron = \"0 3 * * *\"\nkind = \"e\"\ncatch_up = \"30d\"",
                "schedules.s.catch_up",
            ),
        ];
        for (text, key) in cases {
            let file: ScheduleFile = toml::from_str(text).unwrap();
            let error = Schedule::check("s", file).unwrap_err();
            assert_eq!(error.key, key, "{text:?} → {error}");
        }
        let file: ScheduleFile = toml::from_str("cron = \"@hourly\"\nkind = \"e\"").unwrap();
        assert_eq!(
            Schedule::check("Bad Name", file).unwrap_err().key,
            "schedules.Bad Name"
        );
    }

    #[test]
    fn durations_read_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "30", "h", "1.5h", "-1s", "1w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
