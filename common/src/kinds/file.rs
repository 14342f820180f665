//! The configuration file (`--config FILE` / `SURGE_CONFIG`, TOML), read by the ingress
//! and the workers alike at start-up.
//!
//! ```toml
//! builtin_kinds = true   # the five example kinds (sleep, hash, echo, flaky, poison);
//!                        # absent: on with the memory broker only
//! callback_allow = ["hooks.internal", "10.20.0.0/16"]   # internal callback receivers
//!
//! [kinds.thumbnail]
//! url = "http://127.0.0.1:9000/thumbnail"
//! concurrency = 200
//! rate = 500
//! timeout_ms = 30000
//! max_attempts = 5
//! [kinds.thumbnail.headers]
//! Authorization = "Bearer ${THUMBNAIL_TOKEN}"
//! [kinds.thumbnail.schema]
//! type = "object"
//! required = ["image"]
//!
//! [schedules.nightly_report]   # a recurring job (see crate::recurring)
//! cron = "0 3 * * *"
//! timezone = "Europe/Berlin"
//! kind = "report"
//! ```
//!
//! Every error names the key at fault (`kinds.thumbnail.concurrency: …`), and is reported
//! at start-up, never at the first job. Unknown keys are errors too (a typo must not
//! silently fall back to a default).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::http::config::{HttpKindConfig, HttpKindFile};
use super::{builtin::BuiltinKind, is_valid_kind_name, MAX_KIND_NAME_LEN};
use crate::netpolicy::AllowEntry;

/// A configuration file problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `kinds.thumbnail.url` (empty for the whole file).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl From<crate::recurring::InvalidSchedule> for ConfigError {
    fn from(error: crate::recurring::InvalidSchedule) -> ConfigError {
        ConfigError::new(error.key, error.message)
    }
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// It could not be read.
    #[error("reading the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It was read, and is wrong.
    #[error("configuration file {path}: {error}")]
    Invalid {
        /// The file.
        path: String,
        /// The key at fault and why.
        error: ConfigError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    builtin_kinds: Option<bool>,
    #[serde(default)]
    callback_allow: Vec<String>,
    #[serde(default)]
    kinds: BTreeMap<String, HttpKindFile>,
    #[serde(default)]
    schedules: BTreeMap<String, crate::recurring::ScheduleFile>,
}

/// What the configuration file says.
#[derive(Debug, Clone, Default)]
pub struct SurgeConfig {
    /// Whether the five built-in example kinds (`sleep`, `hash`, `echo`, `flaky`,
    /// `poison`) are registered. `None` (the key absent) leaves it to the process: on with
    /// the memory broker (the embedded demo), off with a durable broker, so a production
    /// setup does not accept 10-minute sleeps or poison jobs from any client by default.
    pub builtin_kinds: Option<bool>,
    /// The HTTP kinds, by name.
    pub http_kinds: Vec<HttpKindConfig>,
    /// Internal receivers outcome callbacks may reach, next to public addresses (added to
    /// `--callback-allow`; see [`crate::netpolicy`]).
    pub callback_allow: Vec<AllowEntry>,
    /// Recurring jobs (`[schedules.NAME]`, see [`crate::recurring`]): their patterns,
    /// zones and windows checked; their kinds are checked against the registry by the
    /// ingress ([`crate::config::KindsArgs::schedules`]).
    pub schedules: Vec<crate::recurring::Schedule>,
}

impl SurgeConfig {
    /// Reads and checks the file at `path`, `${VAR}`s from the process environment.
    pub fn load(path: &Path) -> Result<SurgeConfig, ConfigFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: shown.clone(),
            source,
        })?;
        SurgeConfig::parse(&text, &|var| std::env::var(var).ok())
            .map_err(|error| ConfigFileError::Invalid { path: shown, error })
    }

    /// Checks `text` (TOML), resolving `${VAR}`s with `env`.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SurgeConfig, ConfigError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not valid TOML: {e}")))?;
        let shape: FileShape = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." { String::new() } else { key };
                ConfigError::new(key, e.into_inner().to_string())
            })?;
        let mut http_kinds = Vec::with_capacity(shape.kinds.len());
        for (name, file) in shape.kinds {
            if !is_valid_kind_name(&name) {
                return Err(ConfigError::new(
                    format!("kinds.{name}"),
                    format!(
                        "not a valid kind name: use 1 to {MAX_KIND_NAME_LEN} characters from \
                         a-z, 0-9, '_', '-' and '.', starting with a letter or digit"
                    ),
                ));
            }
            if shape.builtin_kinds != Some(false)
                && BuiltinKind::ALL.iter().any(|k| k.as_str() == name)
            {
                return Err(ConfigError::new(
                    format!("kinds.{name}"),
                    "is a built-in kind's name: pick another, or set builtin_kinds = false",
                ));
            }
            http_kinds.push(HttpKindConfig::check(&name, file, env)?);
        }
        let callback_allow = shape
            .callback_allow
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                entry
                    .parse()
                    .map_err(|e| ConfigError::new(format!("callback_allow[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let schedules = shape
            .schedules
            .into_iter()
            .map(|(name, file)| crate::recurring::Schedule::check(&name, file))
            .collect::<Result<_, _>>()?;
        Ok(SurgeConfig {
            builtin_kinds: shape.builtin_kinds,
            http_kinds,
            callback_allow,
            schedules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn callback_allow_reads_and_names_a_bad_entry() {
        let config = SurgeConfig::parse(
            r#"callback_allow = ["hooks.internal", "10.20.0.0/16"]"#,
            &no_env,
        )
        .unwrap();
        assert_eq!(
            config.callback_allow,
            vec![
                AllowEntry::Host("hooks.internal".into()),
                AllowEntry::Net("10.20.0.0/16".parse().unwrap()),
            ]
        );
        let error = SurgeConfig::parse(
            r#"callback_allow = ["ok.internal", "10.0.0.0/99"]"#,
            &no_env,
        )
        .unwrap_err();
        assert_eq!(error.key, "callback_allow[1]");
        assert!(SurgeConfig::parse("", &no_env)
            .unwrap()
            .callback_allow
            .is_empty());
    }

    #[test]
    fn the_issue_example_reads() {
        let config = SurgeConfig::parse(
            r#"
            [kinds.thumbnail]
            url = "http://127.0.0.1:9000/thumbnail"
            concurrency = 200
            rate = 500
            timeout_ms = 30000
            max_attempts = 5
            [kinds.thumbnail.schema]
            type = "object"
            required = ["image"]
            "#,
            &no_env,
        )
        .unwrap();
        assert_eq!(config.builtin_kinds, None);
        let kind = &config.http_kinds[0];
        assert_eq!(
            (kind.name.as_str(), kind.concurrency, kind.rate),
            ("thumbnail", 200, Some(500.0))
        );
        assert!(kind.schema.is_some());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[kinds.t]\nurl = \"http://x/\"\nconcurency = 3",
                "kinds.t.concurency",
            ),
            (
                "[kinds.t]\nurl = \"http://x/\"\nconcurrency = \"many\"",
                "kinds.t.concurrency",
            ),
            ("[kinds.t]\nconcurrency = 3", "kinds.t"),
            ("[kinds.Bad]\nurl = \"http://x/\"", "kinds.Bad"),
            ("[kinds.echo]\nurl = \"http://x/\"", "kinds.echo"),
            ("kinds = 3", "kinds"),
            ("surprise = 1", "surprise"),
            ("[kinds.t", ""),
        ];
        for (text, key) in cases {
            let err = SurgeConfig::parse(text, &no_env).unwrap_err();
            assert_eq!(err.key, key, "{text:?} → {err}");
        }
        // With the built-ins off, their names are free.
        let own = SurgeConfig::parse(
            "builtin_kinds = false\n[kinds.echo]\nurl = \"http://x/\"",
            &no_env,
        )
        .unwrap();
        assert_eq!(own.builtin_kinds, Some(false));
    }
}
