//! `surge`: the operator's command line. It talks to an ingress's HTTP API (`SURGE_URL`,
//! `SURGE_API_KEY`): submit a job, list, show, replay and cancel jobs, list, pause, resume
//! and trigger recurring jobs, list, pause and resume job kinds, print shell completions. Errors are the ingress's JSON error, and the exit code tells their class.

use std::io::Write;
use std::time::Duration;

use clap::{CommandFactory, Parser};

mod client;
mod commands;
mod kinds;
mod output;
mod schedules;

use client::{CliError, Client};
use commands::Command;

const EXAMPLES: &str = "\
Examples:
  export SURGE_URL=http://127.0.0.1:8080 SURGE_API_KEY=…
  surge submit echo '{\"hello\": \"world\"}' --wait
  surge jobs list --status dead --since 2h
  surge jobs list --kind thumbnail --json | jq .id
  surge jobs show 0193…
  surge jobs replay 0193…
  surge jobs replay --kind thumbnail --since 2026-12-07T10:00:00Z
  surge jobs cancel 0193…
  surge schedules list
  surge schedules pause nightly_report      # also: resume, trigger
  surge kinds list                          # paused kinds: until when, by whom, why
  surge kinds pause thumbnail --for 15m --reason 'target deploy'
  surge kinds resume thumbnail
  surge completions bash > /etc/bash_completion.d/surge

Exit codes:
  0 done   1 unexpected answer   2 bad command line   3 refused by the ingress (4xx)
  4 not found (404)   5 API key missing or wrong (401)
  6 ingress or its broker/database unavailable (5xx, no connection, timeout)
  7 the job finished but did not succeed (submit --wait)";

/// Surge's command line: operate an ingress over its HTTP API.
#[derive(Debug, Parser)]
#[command(name = "surge", version, after_help = EXAMPLES)]
struct Cli {
    /// The ingress's address.
    #[arg(
        long,
        global = true,
        env = "SURGE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API key, when the ingress has `--api-keys` (sent as `Authorization: Bearer`).
    #[arg(long, global = true, env = "SURGE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Longest wait for one answer, in seconds.
    #[arg(long, global = true, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

fn main() {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "surge", &mut std::io::stdout());
        return;
    }
    let code = match run(cli) {
        Ok(()) => 0,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "surge: {error}");
            error.exit_code()
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unexpected(format!("cannot start: {e}")))?;
    let client = Client::new(&cli.url, cli.api_key, Duration::from_secs(cli.timeout_secs))?;
    runtime.block_on(commands::run(&client, cli.command, &mut std::io::stdout()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
