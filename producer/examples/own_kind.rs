//! A team's own Surge with a job kind written in Rust: `word_count` counts the words of
//! `payload.text`.
//!
//! One program, two roles, built with the same kinds so the ingress accepts exactly what
//! the workers run (`--config` kinds, if given, are added to both):
//!
//! ```text
//! cargo run -p surge-producer --example own_kind -- ingress --broker rabbitmq
//! cargo run -p surge-producer --example own_kind -- worker  --broker rabbitmq
//! curl -s localhost:8080/jobs -H 'content-type: application/json' \
//!      -d '{"kind": "word_count", "payload": {"text": "to be or not to be"}}'
//! ```
//!
//! With `ingress --broker memory` (the default) the ingress runs embedded workers with the
//! same kinds, no second process needed. Retries, dead letters, acks after the result is
//! committed: the same as for every other kind (the handler only says whether a failure is
//! worth retrying: [`JobError`]).

use serde_json::{json, Value};
use surge_common::job::Job;
use surge_common::kinds::schema::PayloadSchema;
use surge_common::kinds::{handler_fn, JobError, KindRegistry, KindRegistryBuilder};

/// The kinds this team adds: give the same to the ingress and the workers.
pub fn kinds() -> KindRegistryBuilder {
    let schema = PayloadSchema::compile(
        "word_count",
        json!({
            "type": "object",
            "required": ["text"],
            "additionalProperties": false,
            "properties": {"text": {"type": "string", "maxLength": 100000}}
        }),
    )
    .expect("the schema above is valid");
    KindRegistry::builder().register(
        "word_count",
        handler_fn(word_count)
            .with_schema(schema)
            .with_description("Counts the words of `text`."),
    )
}

/// The handler: validated payload in, result out. `Err(JobError::retryable(..))` for a
/// failure another attempt may fix, `Err(JobError::permanent(..))` for one it will not.
async fn word_count(job: Job, _attempt: u32) -> Result<Value, JobError> {
    let text = job.payload["text"]
        .as_str()
        .ok_or_else(|| JobError::permanent("payload.text must be a string"))?;
    Ok(json!({ "words": text.split_whitespace().count() }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser;
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_else(|| "own_kind".into());
    let role = argv.next();
    let flags = std::iter::once(program).chain(argv);
    match role.as_deref() {
        Some("ingress") => {
            let args = surge_producer::config::ProducerArgs::parse_from(flags);
            surge_common::telemetry::init_with(&args.telemetry, "own-kind-ingress")?;
            surge_producer::Ingress::build_with_kinds(&args, kinds())
                .await?
                .run_until_stopped(surge_common::shutdown::signal())
                .await?;
        }
        Some("worker") => {
            let args = surge_worker::config::WorkerArgs::parse_from(flags);
            surge_common::telemetry::init_with(&args.telemetry, "own-kind-worker")?;
            surge_worker::WorkerService::build_with_kinds(&args, kinds())
                .await?
                .run_until_stopped(surge_common::shutdown::signal())
                .await?;
        }
        _ => anyhow::bail!("usage: own_kind ingress|worker [the binary's flags]"),
    }
    Ok(())
}
