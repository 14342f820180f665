//! `surge kinds …`: the job kinds and their pauses (`GET /kinds`,
//! `POST /kinds/{name}/pause|resume`).

use std::io::Write;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{CliError, Client};
use crate::output::{print_json, text, write_line};

/// `surge kinds …`.
#[derive(Debug, Subcommand)]
pub enum KindsCommand {
    /// Every kind: its type, and whether it is paused (until when, by whom, why).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hold a kind's jobs in the broker on every worker (no attempt used) until resumed or
    /// for a while.
    Pause {
        /// The kind's name.
        name: String,
        /// How long: a duration like 90s, 15m, 2h, 3d (at most 30d); default: until resumed.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Why, shown with the pause (at most 200 characters).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Dispatch a paused kind's jobs again, whoever paused it (its target or an operator).
    Resume {
        /// The kind's name.
        name: String,
    },
}

/// Runs `command`, printing to `out`.
pub async fn run(
    client: &Client,
    command: KindsCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (path, body) = match command {
        KindsCommand::List { json } => return list(client, json, out).await,
        KindsCommand::Pause { name, for_, reason } => {
            let mut body = Map::new();
            if let Some(duration) = for_ {
                body.insert("for_s".into(), json!(seconds(&duration)?));
            }
            if let Some(reason) = reason {
                body.insert("reason".into(), json!(reason));
            }
            (
                format!("/kinds/{}/pause", segment(&name)?),
                Some(Value::Object(body)),
            )
        }
        KindsCommand::Resume { name } => (format!("/kinds/{}/resume", segment(&name)?), None),
    };
    let (_, answer) = client
        .send(Method::POST, &path, &[], body.as_ref(), &[])
        .await?;
    print_json(out, &answer)
}

async fn list(client: &Client, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let (_, answer) = client.send(Method::GET, "/kinds", &[], None, &[]).await?;
    let kinds = answer["kinds"]
        .as_array()
        .ok_or_else(|| CliError::Unexpected("a kind list without `kinds`".into()))?;
    if json {
        for kind in kinds {
            write_line(out, &kind.to_string())?;
        }
        return Ok(());
    }
    write_line(
        out,
        &row(["NAME", "TYPE", "STATE", "UNTIL", "BY", "REASON"]),
    )?;
    for k in kinds {
        let paused = &k["paused"];
        let cells = if paused.is_object() {
            let until = text(&paused["until"]);
            [
                text(&k["name"]),
                text(&k["type"]),
                "paused".to_owned(),
                if until.is_empty() {
                    "resumed".to_owned()
                } else {
                    until
                },
                text(&paused["source"]),
                text(&paused["reason"]),
            ]
        } else {
            [
                text(&k["name"]),
                text(&k["type"]),
                "running".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ]
        };
        write_line(out, &row(cells))?;
    }
    Ok(())
}

/// `--for`: `N[smhd]` as seconds, 1 s or more (the ingress checks the upper bound).
fn seconds(text: &str) -> Result<u64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--for {text:?}: use a duration like 90s, 15m, 2h or 3d (omit --for to pause until resumed)"
        ))
    };
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(0) | None => Err(bad()),
        Some(secs) => Ok(secs),
    }
}

/// A kind name as one path segment (1 to 64 of a-z, 0-9, `_`, `-`, `.`, starting with a
/// letter or digit), checked here so nothing else is sent.
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
            "{name:?} is not a kind name (1 to 64 of a-z, 0-9, '_', '-', '.')"
        )))
    }
}

fn row<S: AsRef<str>>(cells: [S; 6]) -> String {
    let widths = [20, 8, 8, 28, 9, 0];
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
    fn durations_and_names_are_checked_before_anything_is_sent() {
        assert_eq!(seconds("90s").unwrap(), 90);
        assert_eq!(seconds("15m").unwrap(), 900);
        assert_eq!(seconds("2h").unwrap(), 7200);
        assert_eq!(seconds("3d").unwrap(), 259_200);
        for bad in ["", "0s", "10", "5w", "-3m", "m", "99999999999999999999d"] {
            assert!(matches!(seconds(bad), Err(CliError::Usage(_))), "{bad:?}");
        }
        assert_eq!(segment("thumbnail").unwrap(), "thumbnail");
        for bad in ["", "Thumb", "../jobs", "a/b", "-x", &"a".repeat(65)] {
            assert!(matches!(segment(bad), Err(CliError::Usage(_))), "{bad:?}");
        }
    }
}
