//! `surge schedules …`: the config file's recurring jobs (`GET /schedules`,
//! `POST /schedules/{name}/pause|resume|trigger`).

use std::io::Write;

use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use crate::client::{CliError, Client};
use crate::output::{print_json, text, write_line};

/// `surge schedules …`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule: its pattern, zone, kind, whether paused, next tick and last job.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a schedule's ticks on every ingress replica until it is resumed.
    Pause {
        /// The schedule's name (`[schedules.NAME]` in the config file).
        name: String,
    },
    /// Let a paused schedule tick again, from now on (its paused ticks are not caught up).
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Run one job of the schedule now, besides its ticks (also while paused).
    Trigger {
        /// The schedule's name.
        name: String,
    },
}

/// Runs `command`, printing to `out`.
pub async fn run(
    client: &Client,
    command: SchedulesCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (action, name) = match command {
        SchedulesCommand::List { json } => return list(client, json, out).await,
        SchedulesCommand::Pause { name } => ("pause", name),
        SchedulesCommand::Resume { name } => ("resume", name),
        SchedulesCommand::Trigger { name } => ("trigger", name),
    };
    let path = format!("/schedules/{}/{action}", segment(&name)?);
    let (_, answer) = client.send(Method::POST, &path, &[], None, &[]).await?;
    print_json(out, &answer)
}

async fn list(client: &Client, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let (_, answer) = client
        .send(Method::GET, "/schedules", &[], None, &[])
        .await?;
    let schedules = answer["schedules"]
        .as_array()
        .ok_or_else(|| CliError::Unexpected("a schedule list without `schedules`".into()))?;
    if json {
        for schedule in schedules {
            write_line(out, &schedule.to_string())?;
        }
        return Ok(());
    }
    write_line(
        out,
        &row([
            "NAME",
            "CRON",
            "TIMEZONE",
            "KIND",
            "STATE",
            "NEXT TICK",
            "LAST JOB",
        ]),
    )?;
    for s in schedules {
        let state = if s["paused"] == Value::Bool(true) {
            "paused"
        } else {
            "running"
        };
        let last = match &s["last_job"] {
            Value::Object(job) => format!(
                "{} {}{}",
                job.get("status").map(text).unwrap_or_default(),
                job.get("id").map(text).unwrap_or_default(),
                if job.get("triggered") == Some(&Value::Bool(true)) {
                    " (triggered)"
                } else {
                    ""
                }
            ),
            _ => "-".to_owned(),
        };
        let next = text(&s["next_tick"]);
        write_line(
            out,
            &row([
                text(&s["name"]),
                text(&s["cron"]),
                text(&s["timezone"]),
                text(&s["kind"]),
                state.to_owned(),
                if next.is_empty() {
                    "-".to_owned()
                } else {
                    next
                },
                last,
            ]),
        )?;
    }
    Ok(())
}

/// A schedule name as one path segment: the config file's rule (a-z, 0-9, `_`, `-`, `.`),
/// checked here so nothing else is sent.
fn segment(name: &str) -> Result<&str, CliError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
        && !name.starts_with(['_', '-', '.']);
    if ok {
        Ok(name)
    } else {
        Err(CliError::Usage(format!(
            "{name:?} is not a schedule name (1 to 64 of a-z, 0-9, '_', '-', '.')"
        )))
    }
}

fn row<S: AsRef<str>>(cells: [S; 7]) -> String {
    let widths = [20, 16, 16, 12, 8, 21, 0];
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
    fn names_are_checked_before_anything_is_sent() {
        assert_eq!(segment("nightly_report").unwrap(), "nightly_report");
        for bad in ["", "Nightly", "../jobs", "a/b", "_x", &"a".repeat(65)] {
            assert!(matches!(segment(bad), Err(CliError::Usage(_))), "{bad:?}");
        }
    }
}
