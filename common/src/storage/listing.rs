//! Listing jobs for operators (`GET /jobs`): by status, kind and time, newest first, one
//! page at a time; and job counts per kind and status (the dashboard).
//!
//! Every job is one row of `jobs`. Finished jobs (`succeeded`, `dead`, `cancelled`) are
//! ordered by the time they finished, jobs not finished yet (`scheduled`, `queued`,
//! `running`, `retrying`, `waiting`) by their last change: the same column, since a
//! finished row's last change is its finish. Jobs refused at the ingress are never listed.
//!
//! Pages are keyset pages: a [`Cursor`] is the (time, job id) of the last job shown, and the
//! next page starts strictly below it, so pages neither repeat nor skip a job however many
//! come in between, and reading page 1,000 costs what page 1 does. Every filter matches an
//! index of migration `20261208000000_jobs.sql` whose columns are the equality
//! filters, then the time, then the id: the database reads the index range backwards and
//! stops after one page. [`Storage::explain_listing`] shows the plan (the tests assert
//! it names the index, on both databases).

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};
use uuid::Uuid;

use super::lifecycle::Stage;
use super::{JobStatus, Storage, StorageError};

/// Most jobs one page may hold.
pub const MAX_PAGE: u32 = 500;

/// Which jobs a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Finished with this outcome.
    Finished(JobStatus),
    /// Not finished, at this stage.
    Pending(Stage),
}

impl StatusFilter {
    /// Every status a job can have, as the API names them.
    pub const NAMES: [&'static str; 8] = [
        "scheduled",
        "queued",
        "running",
        "retrying",
        "waiting",
        "succeeded",
        "dead",
        "cancelled",
    ];

    /// The filter for a status name, if it is one of [`StatusFilter::NAMES`].
    pub fn parse(name: &str) -> Option<StatusFilter> {
        if let Some(status) = JobStatus::parse(name) {
            return Some(StatusFilter::Finished(status));
        }
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == name)
            .map(StatusFilter::Pending)
    }
}

/// Where the next page starts: just below this (time, job id). Opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last listed job's time (finished, or last changed), µs since the epoch.
    pub at_us: i64,
    /// The last listed job's id.
    pub job_id: Uuid,
}

impl Cursor {
    /// The cursor as sent to clients: 48 hex digits (the time, then the id).
    pub fn encode(&self) -> String {
        format!("{:016x}{}", self.at_us, self.job_id.simple())
    }

    /// The cursor [`Cursor::encode`] made, or `None` for anything else.
    pub fn decode(text: &str) -> Option<Cursor> {
        if text.len() != 48 || !text.is_ascii() {
            return None;
        }
        let (at, id) = text.split_at(16);
        let at_us = u64::from_str_radix(at, 16).ok()?;
        let job_id = Uuid::try_parse(id).ok()?;
        Some(Cursor {
            at_us: i64::try_from(at_us).ok()?,
            job_id,
        })
    }
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only jobs with this status; `None`: every finished job.
    pub status: Option<StatusFilter>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs that finished (or, not finished, last changed) at or after this time, µs
    /// since the epoch.
    pub since_us: Option<i64>,
    /// Most jobs on the page (1 to [`MAX_PAGE`]; clamped).
    pub limit: u32,
    /// Start below this cursor (the previous page's [`JobPage::next`]).
    pub after: Option<Cursor>,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            status: None,
            kind: None,
            since_us: None,
            limit: 50,
            after: None,
        }
    }
}

/// One job in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedJob {
    /// The job.
    pub job_id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its status (one of [`StatusFilter::NAMES`]).
    pub status: String,
    /// Attempts made (finished) or the attempt running or next (not finished).
    pub attempts: u32,
    /// The last error, if any.
    pub error: Option<String>,
    /// When it finished (or, not finished, last changed), µs since the epoch.
    pub at_us: i64,
    /// When the ingress accepted it (finished jobs only), µs since the epoch.
    pub enqueued_at_us: Option<i64>,
    /// Whether `POST /jobs/{id}/replay` can publish it again (dead, with its body kept).
    pub replayable: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<ListedJob>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// How many jobs of one kind have one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCount {
    /// The kind.
    pub kind: String,
    /// The status.
    pub status: String,
    /// How many jobs.
    pub count: u64,
}

/// A parameter of a listing statement.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Int(i64),
}

/// A statement text and its parameters, in order.
struct Statement {
    sql: String,
    params: Vec<Param>,
}

impl Statement {
    fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut query = sqlx::query(&self.sql);
        for param in &self.params {
            query = match param {
                Param::Text(text) => query.bind(text.clone()),
                Param::Int(int) => query.bind(*int),
            };
        }
        query
    }
}

/// Builds `WHERE` conditions with numbered placeholders (`$1`, `$2`, …; SQLite reads them
/// too, and with a handful of parameters their lookup costs nothing).
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Conditions {
    fn next(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }

    fn push(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "TRUE".to_owned()
        } else {
            self.clauses.join(" AND ")
        }
    }
}

impl Storage {
    /// One page of jobs matching `filter`, newest first (see the module docs).
    pub async fn list_jobs(&self, filter: &ListFilter) -> Result<JobPage, StorageError> {
        let limit = filter.limit.clamp(1, MAX_PAGE) as usize;
        let rows = listing_statement(filter, limit as u32 + 1)
            .query()
            .fetch_all(self.pool())
            .await?;
        let mut jobs = rows
            .iter()
            .map(listed)
            .collect::<Result<Vec<ListedJob>, StorageError>>()?;
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(cursor_of)
        } else {
            None
        };
        Ok(JobPage { jobs, next })
    }

    /// The database's plan for [`Storage::list_jobs`] with `filter`, one line per step:
    /// `EXPLAIN` on PostgreSQL, `EXPLAIN QUERY PLAN` on SQLite. For tests and measurements.
    pub async fn explain_listing(&self, filter: &ListFilter) -> Result<String, StorageError> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let mut statement = listing_statement(filter, limit + 1);
        let sqlite = self.sqlite;
        statement.sql = if sqlite {
            format!("EXPLAIN QUERY PLAN {}", statement.sql)
        } else {
            format!("EXPLAIN {}", statement.sql)
        };
        let rows = statement.query().fetch_all(self.pool()).await?;
        let column = if sqlite { "detail" } else { "QUERY PLAN" };
        let lines = rows
            .iter()
            .map(|row| row.try_get::<String, _>(column))
            .collect::<Result<Vec<String>, sqlx::Error>>()?;
        Ok(lines.join("\n"))
    }

    /// How many jobs of each kind have each status (refused jobs aside). Reads every
    /// row's index entry (no filter narrows it): callers cache it.
    pub async fn counts_by_kind(&self) -> Result<Vec<KindCount>, StorageError> {
        let rows = sqlx::query(
            "SELECT kind, state AS status, COUNT(*) AS n FROM jobs WHERE state <> 'refused' \
             GROUP BY kind, state",
        )
        .fetch_all(self.pool())
        .await?;
        let mut counts = rows
            .iter()
            .map(|row| {
                let n: i64 = row.try_get("n")?;
                Ok(KindCount {
                    kind: row.try_get("kind")?,
                    status: row.try_get("status")?,
                    count: super::from_db(n),
                })
            })
            .collect::<Result<Vec<KindCount>, StorageError>>()?;
        counts.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.status.cmp(&b.status)));
        Ok(counts)
    }
}

/// The listing statement for `filter`, fetching at most `rows` rows.
fn listing_statement(filter: &ListFilter, rows: u32) -> Statement {
    let mut conditions = Conditions::default();
    // The time a job is listed by: its last change, which for a finished job is its finish
    // (the column of the state indexes); with no status, the finish time itself (the
    // column of the indexes of finished jobs).
    let (select, at) = match filter.status {
        Some(StatusFilter::Pending(stage)) => {
            let status = conditions.next(Param::Text(stage.as_str().to_owned()));
            conditions.push(format!("s.state = {status}"));
            (PENDING, "s.updated_at_us")
        }
        Some(StatusFilter::Finished(status)) => {
            let status = conditions.next(Param::Text(status.as_str().to_owned()));
            conditions.push(format!("s.state = {status}"));
            (FINISHED, "s.updated_at_us")
        }
        None => {
            conditions.push("s.finished_at_us IS NOT NULL".to_owned());
            (FINISHED, "s.finished_at_us")
        }
    };
    if let Some(kind) = &filter.kind {
        let kind = conditions.next(Param::Text(kind.clone()));
        conditions.push(format!("s.kind = {kind}"));
    }
    if let Some(since) = filter.since_us {
        let since = conditions.next(Param::Int(since));
        conditions.push(format!("{at} >= {since}"));
    }
    if let Some(after) = &filter.after {
        let at_us = conditions.next(Param::Int(after.at_us));
        let id = conditions.next(Param::Text(after.job_id.to_string()));
        conditions.push(format!("({at}, s.job_id) < ({at_us}, {id})"));
    }
    let limit = conditions.next(Param::Int(i64::from(rows)));
    Statement {
        sql: format!(
            "{select} WHERE {} ORDER BY {at} DESC, s.job_id DESC LIMIT {limit}",
            conditions.sql()
        ),
        params: conditions.params,
    }
}

/// The columns of a finished job's listing row.
const FINISHED: &str = "SELECT s.job_id, s.kind, s.state AS status, s.error, s.attempts, \
     s.finished_at_us AS at_us, s.enqueued_at_us, \
     CAST(CASE WHEN s.state = 'dead' AND s.job IS NOT NULL THEN 1 ELSE 0 END AS BIGINT) \
     AS replayable FROM jobs s";

/// The columns of an unfinished job's listing row.
const PENDING: &str = "SELECT s.job_id, s.kind, s.state AS status, s.error, s.attempts, \
     s.updated_at_us AS at_us, CAST(NULL AS BIGINT) AS enqueued_at_us, \
     CAST(0 AS BIGINT) AS replayable FROM jobs s";

fn cursor_of(job: &ListedJob) -> Cursor {
    Cursor {
        at_us: job.at_us,
        job_id: job.job_id,
    }
}

fn listed(row: &AnyRow) -> Result<ListedJob, StorageError> {
    let job_id: String = row.try_get("job_id")?;
    let id = Uuid::parse_str(&job_id).map_err(|e| StorageError::Corrupt {
        job_id: job_id.clone(),
        message: e.to_string(),
    })?;
    let attempts: i64 = row.try_get("attempts")?;
    let replayable: i64 = row.try_get("replayable")?;
    Ok(ListedJob {
        job_id: id,
        kind: row.try_get("kind")?,
        status: row.try_get("status")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        error: row.try_get("error")?,
        at_us: row.try_get("at_us")?,
        enqueued_at_us: row.try_get("enqueued_at_us")?,
        replayable: replayable != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let cursor = Cursor {
            at_us: 1_764_000_000_000_000,
            job_id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "zz", &"0".repeat(47), &"g".repeat(48), &"é".repeat(24)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        // A time beyond i64 is refused, not wrapped.
        assert_eq!(
            Cursor::decode(&format!("{}{}", "f".repeat(16), "0".repeat(32))),
            None
        );
    }

    #[test]
    fn every_status_name_parses_to_its_filter() {
        for name in StatusFilter::NAMES {
            assert!(StatusFilter::parse(name).is_some(), "{name}");
        }
        // Every stage and every outcome has a name in the list.
        assert_eq!(StatusFilter::NAMES.len(), Stage::ALL.len() + 3);
        assert_eq!(StatusFilter::parse("failed"), None);
    }
}
