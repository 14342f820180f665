//! The subcommands: each is one or a few calls of the ingress's HTTP API, printed as a
//! table or as JSON.

use std::io::Write;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::client::{CliError, Client};
use crate::output::{print_json, text, write_line};

/// Seconds one `GET /jobs/{id}?wait=` may hold the request (below every ingress's bound).
const WAIT_STEP_SECS: u64 = 30;
/// Jobs per page when listing (the API's maximum).
const PAGE: u32 = 500;

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit one job: `surge submit KIND [PAYLOAD]` (PAYLOAD is JSON, `-` reads it from
    /// standard input; default `{}`). Prints the job's id.
    Submit(SubmitArgs),
    /// List, show, replay and cancel jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// List the config file's recurring jobs; pause, resume or trigger one.
    #[command(subcommand)]
    Schedules(crate::schedules::SchedulesCommand),
    /// List the job kinds and their pauses; pause or resume one for every worker.
    #[command(subcommand)]
    Kinds(crate::kinds::KindsCommand),
    /// Print a completion script for SHELL (bash, zsh, fish, powershell, elvish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `surge submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job's kind.
    kind: String,
    /// The payload as JSON; `-` reads it from standard input.
    payload: Option<String>,
    /// The job's key (its fairness group and Kafka partition key).
    #[arg(long)]
    key: Option<String>,
    /// Run it no earlier than this many milliseconds from now.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Makes a retry of this command safe: the same key and job give the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the job to finish and print its outcome; exit 7 unless it succeeded.
    #[arg(long)]
    wait: bool,
}

/// `surge jobs …`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Every job matching the filters, newest first, all pages.
    List(ListArgs),
    /// One job's status, result or error.
    Show {
        /// The job's id.
        id: String,
    },
    /// Publish dead jobs again: one by id, or those matching `--kind` / `--since`.
    Replay(ReplayArgs),
    /// Cancel a job that has not finished.
    Cancel {
        /// The job's id.
        id: String,
    },
}

/// `surge jobs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this status (scheduled, queued, running, retrying, waiting, succeeded, dead,
    /// cancelled); default: every finished job.
    #[arg(long)]
    status: Option<String>,
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs finished (or changed) at or after this: RFC 3339, or a duration ago
    /// (`90s`, `15m`, `2h`, `3d`).
    #[arg(long)]
    since: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Jobs asked for per request (every page is listed whatever the size).
    #[arg(long, hide = true, default_value_t = PAGE, value_parser = clap::value_parser!(u32).range(1..=500))]
    page_size: u32,
}

/// `surge jobs replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A dead job's id; without it, the dead jobs matching the filters.
    #[arg(conflicts_with_all = ["kind", "since", "max"], required_unless_present_any = ["kind", "since"])]
    id: Option<String>,
    /// Only dead jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs that died at or after this: RFC 3339, or a duration ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Most jobs to replay in this call (1 to 1000, newest deaths first).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max: u32,
}

/// Runs `command`, printing to `out`.
pub async fn run(client: &Client, command: Command, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        Command::Submit(args) => submit(client, args, out).await,
        Command::Jobs(JobsCommand::List(args)) => list(client, args, out).await,
        Command::Jobs(JobsCommand::Show { id }) => one_job(client, Method::GET, &id, out).await,
        Command::Jobs(JobsCommand::Replay(args)) => replay(client, args, out).await,
        Command::Jobs(JobsCommand::Cancel { id }) => {
            one_job(client, Method::DELETE, &id, out).await
        }
        Command::Schedules(command) => crate::schedules::run(client, command, out).await,
        Command::Kinds(command) => crate::kinds::run(client, command, out).await,
        Command::Completions { .. } => Ok(()),
    }
}

/// `method /jobs/{id}`, the answer printed as JSON.
async fn one_job(
    client: &Client,
    method: Method,
    id: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let path = format!("/jobs/{}", segment(id)?);
    let (_, job) = client.send(method, &path, &[], None, &[]).await?;
    print_json(out, &job)
}

async fn submit(client: &Client, args: SubmitArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let payload = match args.payload.as_deref() {
        None => json!({}),
        Some("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| CliError::Usage(format!("cannot read the payload: {e}")))?;
            parse_payload(&text)?
        }
        Some(text) => parse_payload(text)?,
    };
    let mut body = json!({ "kind": args.kind, "payload": payload });
    if let Some(key) = args.key {
        body["key"] = json!(key);
    }
    if let Some(delay) = args.delay_ms {
        body["delay_ms"] = json!(delay);
    }
    let headers: Vec<(&str, String)> = args
        .idempotency_key
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    let (_, accepted) = client
        .send(Method::POST, "/jobs", &[], Some(&body), &headers)
        .await?;
    let id = accepted["id"]
        .as_str()
        .ok_or_else(|| CliError::Unexpected("202 without an id".into()))?
        .to_owned();
    if !args.wait {
        return write_line(out, &id);
    }
    loop {
        let (_, job) = client
            .send(
                Method::GET,
                &format!("/jobs/{id}"),
                &[("wait", WAIT_STEP_SECS.to_string())],
                None,
                &[],
            )
            .await?;
        let status = job["status"].as_str().unwrap_or("").to_owned();
        if matches!(status.as_str(), "succeeded" | "dead" | "cancelled") {
            print_json(out, &job)?;
            return if status == "succeeded" {
                Ok(())
            } else {
                Err(CliError::JobFailed { id, status })
            };
        }
    }
}

async fn list(client: &Client, args: ListArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut query = vec![("limit", args.page_size.to_string())];
    if let Some(status) = args.status {
        query.push(("status", status));
    }
    if let Some(kind) = args.kind {
        query.push(("kind", kind));
    }
    if let Some(since) = args.since {
        query.push(("since", since_time(&since)?));
    }
    let mut cursor: Option<String> = None;
    let mut header = !args.json;
    loop {
        let mut page_query = query.clone();
        if let Some(cursor) = cursor.take() {
            page_query.push(("cursor", cursor));
        }
        let (_, page) = client
            .send(Method::GET, "/jobs", &page_query, None, &[])
            .await?;
        let jobs = page["jobs"]
            .as_array()
            .ok_or_else(|| CliError::Unexpected("a job list without `jobs`".into()))?;
        if std::mem::take(&mut header) {
            write_line(
                out,
                &row(["ID", "KIND", "STATUS", "ATTEMPTS", "AT", "ERROR"]),
            )?;
        }
        for job in jobs {
            if args.json {
                write_line(out, &job.to_string())?;
            } else {
                write_line(
                    out,
                    &row([
                        text(&job["id"]),
                        text(&job["kind"]),
                        text(&job["status"]),
                        job["attempts"].to_string(),
                        text(&job["at"]),
                        shorten(&text(&job["error"]), 60),
                    ]),
                )?;
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}

async fn replay(client: &Client, args: ReplayArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(id) = args.id {
        let (_, job) = client
            .send(
                Method::POST,
                &format!("/jobs/{}/replay", segment(&id)?),
                &[],
                None,
                &[],
            )
            .await?;
        return print_json(out, &job);
    }
    let mut query = vec![("max", args.max.to_string())];
    if let Some(kind) = args.kind {
        query.push(("kind", kind));
    }
    if let Some(since) = args.since {
        query.push(("since", since_time(&since)?));
    }
    let (_, report) = client
        .send(Method::POST, "/jobs/replay", &query, None, &[])
        .await?;
    let replayed = report["replayed"].as_u64().unwrap_or(0);
    write_line(out, &format!("replayed {replayed} dead job(s)"))?;
    if replayed == u64::from(args.max) {
        write_line(out, "more may match: run the command again")?;
    }
    Ok(())
}

fn parse_payload(text: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("PAYLOAD is not JSON: {e}")))
}

/// A job id as one path segment: anything but a UUID is refused here, not sent.
fn segment(id: &str) -> Result<&str, CliError> {
    let ok = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(id)
    } else {
        Err(CliError::Usage(format!("{id:?} is not a job id (a UUID)")))
    }
}

/// `--since`: RFC 3339 as is, or `N[smhd]` ago as RFC 3339.
pub fn since_time(text: &str) -> Result<String, CliError> {
    if time::OffsetDateTime::parse(text, &Rfc3339).is_ok() {
        return Ok(text.to_owned());
    }
    let bad = || {
        CliError::Usage(format!(
            "--since {text:?}: use an RFC 3339 time (2026-12-07T10:00:00Z) or a duration ago (90s, 15m, 2h, 3d)"
        ))
    };
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let at = time::OffsetDateTime::now_utc()
        .checked_sub(time::Duration::seconds(seconds))
        .ok_or_else(bad)?;
    at.format(&Rfc3339).map_err(|_| bad())
}

fn shorten(text: &str, most: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > most {
        format!("{}…", line.chars().take(most - 1).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn row<S: AsRef<str>>(cells: [S; 6]) -> String {
    let widths = [36, 16, 10, 8, 27, 0];
    cells
        .iter()
        .zip(widths)
        .map(|(cell, width)| format!("{:<width$}", cell.as_ref()))
        .collect::<Vec<_>>()
        .join("  ")
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations_and_names_bad_ones() {
        assert_eq!(
            since_time("2026-12-07T10:00:00Z").unwrap(),
            "2026-12-07T10:00:00Z"
        );
        let two_hours_ago =
            time::OffsetDateTime::parse(&since_time("2h").unwrap(), &Rfc3339).unwrap();
        let age = time::OffsetDateTime::now_utc() - two_hours_ago;
        assert!((age.whole_seconds() - 7200).abs() < 60, "{age}");
        for bad in ["yesterday", "2x", "", "h", "99999999999999999d"] {
            let err = since_time(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn ids_are_checked_before_anything_is_sent() {
        assert!(segment("0193a6c4-0000-7000-8000-000000000000").is_ok());
        for bad in ["../metrics", "x", "0193a6c4-0000-7000-8000-00000000000/"] {
            assert!(segment(bad).is_err(), "{bad}");
        }
    }
}
