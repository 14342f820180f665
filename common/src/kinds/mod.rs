//! Job kinds: names in a registry, each with a handler that validates a payload (at the
//! ingress, before anything is published) and runs a job (in the worker).
//!
//! Three ways a kind gets into a [`KindRegistry`]:
//! - the five built-in examples ([`builtin`]: `sleep`, `hash`, `echo`, `flaky`, `poison`);
//! - Rust code: a team's own worker binary registers a [`Kind`] of its own
//!   ([`KindRegistryBuilder::register`]), or a plain async function ([`handler_fn`]);
//! - the configuration file ([`file`](mod@file)): `[kinds.NAME]` with a `url` is an HTTP kind
//!   ([`http`]), each job POSTed to an existing service, with flow control protecting it.
//!
//! The ingress and the workers build the same registry (same flags, same file), so a job
//! the ingress accepted is one a worker can run. During a rolling deploy a worker may get
//! a kind it does not know yet: it hands the job back to wait for a worker that does (see
//! the worker's runner), it never dead-letters it.

pub mod builtin;
pub mod file;
pub mod flow_store;
pub mod http;
pub mod pause;
pub mod schema;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::job::{InvalidJob, Job};
use crate::retry::RetryPolicy;

pub use crate::job::{is_valid_kind_name, MAX_KIND_NAME_LEN};

/// Why an attempt did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Another attempt may succeed (a timeout, a busy dependency): retry with backoff, or
    /// after `retry_after` when the target said when (HTTP `Retry-After`).
    #[error("retryable: {message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// When to try again, if the failure said (else the retry policy decides).
        retry_after: Option<Duration>,
    },
    /// No attempt will succeed (bad payload, a 4xx from the target): dead-letter now.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The job was not attempted (its target's circuit is open, its concurrency cap is
    /// full): hand it back to the broker to come again after `after`, without consuming
    /// an attempt.
    #[error("deferred: {reason}")]
    Deferred {
        /// Why, for logs and metrics.
        reason: String,
        /// How long it waits in the broker.
        after: Duration,
    },
}

impl JobError {
    /// A retryable failure, retried after the policy's backoff.
    pub fn retryable(message: impl Into<String>) -> JobError {
        JobError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent failure: the job dies now.
    pub fn permanent(message: impl Into<String>) -> JobError {
        JobError::Permanent(message.into())
    }
}

/// A job kind: how its payload is checked and how its job is run.
///
/// `validate` runs at the ingress (a payload it rejects gets 422 and nothing is
/// published) and again in the worker before `run` (a message may have been written by
/// someone else). `run` is called once per attempt; a panic in it ends the job `dead` with
/// the panic message, it is never redelivered in a loop.
#[async_trait]
pub trait Kind: Send + Sync + 'static {
    /// Checks a payload. The error names the field at fault (`payload.…`).
    fn validate(&self, payload: &Value) -> Result<(), InvalidJob>;

    /// Runs attempt `attempt` (1-based) of `job`, whose payload passed [`Kind::validate`].
    async fn run(&self, job: &Job, attempt: u32) -> Result<Value, JobError>;

    /// One line for humans (OpenAPI, the dashboard).
    fn description(&self) -> String {
        String::new()
    }

    /// The payload's JSON Schema, for the OpenAPI document (`{}`: any JSON value).
    fn payload_schema(&self) -> Value {
        Value::Object(Default::default())
    }

    /// An example payload, for the OpenAPI document.
    fn example(&self) -> Option<Value> {
        None
    }

    /// Where the outcome of this kind's jobs is POSTed when a job names no
    /// `callback_url` of its own (HTTP kinds: `callback_url` in the configuration file).
    fn callback_url(&self) -> Option<String> {
        None
    }

    /// Where a job's fairness key comes from when its request names none (HTTP kinds:
    /// `key_from` in the configuration file); `None`: the job is a group of its own.
    fn key_from(&self) -> Option<&crate::job::KeySource> {
        None
    }

    /// This process's flow-control state for the kind, for the dashboard (HTTP kinds:
    /// adaptive limit, requests in flight, circuit); `None` for kinds without any.
    fn flow(&self) -> Option<Value> {
        None
    }

    /// The retry policy (attempts, backoff bounds) for this kind's jobs, given the
    /// worker's own: a kind may override any part of it.
    fn retry_policy(&self, worker: RetryPolicy) -> RetryPolicy {
        worker
    }

    /// What sort of kind this is, for `GET /kinds`: `http` (declared in the configuration
    /// file), `builtin` (the examples) or `code` (registered in Rust, the default).
    fn kind_type(&self) -> &'static str {
        "code"
    }

    /// Sets up what the kind shares with other replicas before a worker takes its first
    /// job (HTTP kinds: record `concurrency` and write the slot rows, refused when other
    /// replicas use another value). Nothing by default.
    async fn prepare(&self) -> Result<(), http::HttpKindError> {
        Ok(())
    }
}

/// A registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two kinds with one name.
    #[error("job kind {0:?} is registered twice")]
    Duplicate(String),
    /// A name that cannot travel (empty, too long, odd characters).
    #[error(
        "job kind name {0:?} is not valid: use 1 to {MAX_KIND_NAME_LEN} characters \
         from a-z, 0-9, '_', '-' and '.', starting with a letter or digit"
    )]
    BadName(String),
}

/// The kinds a process knows, by name. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct KindRegistry {
    kinds: Arc<BTreeMap<String, Arc<dyn Kind>>>,
    callbacks: crate::job::CallbackPolicy,
    pauses: Option<Arc<pause::KindPauses>>,
}

impl std::fmt::Debug for KindRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl KindRegistry {
    /// Starts a registry with nothing in it.
    pub fn builder() -> KindRegistryBuilder {
        KindRegistryBuilder::default()
    }

    /// Only the five built-in example kinds.
    pub fn builtin() -> KindRegistry {
        KindRegistry::builder().with_builtins().build()
    }

    /// Which `callback_url`s jobs may carry, and where callbacks may be delivered (by
    /// default: none while callbacks cannot be signed, public addresses only).
    pub fn callback_policy(&self) -> &crate::job::CallbackPolicy {
        &self.callbacks
    }

    /// This process's cache of paused kinds, when its kinds are pausable
    /// ([`KindRegistryBuilder::with_pauses`]).
    pub fn pauses(&self) -> Option<&Arc<pause::KindPauses>> {
        self.pauses.as_ref()
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.get(name)
    }

    /// Runs every kind's [`Kind::prepare`], stopping at the first refusal.
    pub async fn prepare(&self) -> Result<(), http::HttpKindError> {
        for kind in self.kinds.values() {
            kind.prepare().await?;
        }
        Ok(())
    }

    /// Every kind's name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// The flow-control state of every kind that has one, as `{"name": {...}}`; `null`
    /// when none has.
    pub fn flows(&self) -> Value {
        let flows: serde_json::Map<String, Value> = self
            .iter()
            .filter_map(|(name, kind)| Some((name.to_owned(), kind.flow()?)))
            .collect();
        if flows.is_empty() {
            Value::Null
        } else {
            Value::Object(flows)
        }
    }

    /// Every kind, by name, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Kind>)> {
        self.kinds.iter().map(|(name, kind)| (name.as_str(), kind))
    }

    /// Checks `payload` for the kind `name`: 422-ready errors naming `kind` (unknown) or
    /// the payload field at fault.
    pub fn validate(&self, name: &str, payload: &Value) -> Result<(), InvalidJob> {
        let kind = self.get(name).ok_or_else(|| {
            if builtin::BuiltinKind::ALL.iter().any(|k| k.as_str() == name) {
                return InvalidJob::new(
                    "kind",
                    format!(
                        "{name:?} is a built-in example kind, off on this server: the operator \
                         turns the examples on with --builtin-kinds true (SURGE_BUILTIN_KINDS) \
                         or builtin_kinds = true in the config file"
                    ),
                );
            }
            let known: Vec<&str> = self.names().collect();
            InvalidJob::new(
                "kind",
                format!(
                    "unknown job kind {name:?}; expected one of {}",
                    known.join(", ")
                ),
            )
        })?;
        kind.validate(payload)
    }
}

/// Builds a [`KindRegistry`].
#[derive(Default)]
pub struct KindRegistryBuilder {
    kinds: BTreeMap<String, Arc<dyn Kind>>,
    errors: Vec<RegistryError>,
    callbacks: crate::job::CallbackPolicy,
    pauses: Option<Arc<pause::KindPauses>>,
}

impl crate::job::KindRules for KindRegistry {
    fn validate(&self, kind: &str, payload: &Value) -> Result<(), InvalidJob> {
        KindRegistry::validate(self, kind, payload)
    }

    fn key_from(&self, kind: &str) -> Option<&crate::job::KeySource> {
        self.get(kind)?.key_from()
    }

    fn callback_url(&self, kind: &str) -> Option<String> {
        self.get(kind)?.callback_url()
    }

    fn callback_policy(&self) -> &crate::job::CallbackPolicy {
        KindRegistry::callback_policy(self)
    }
}

impl KindRegistryBuilder {
    /// Adds `kind` as `name`. A duplicate or invalid name is reported by
    /// [`KindRegistryBuilder::try_build`] (and makes [`KindRegistryBuilder::build`] keep
    /// the first registration).
    pub fn register(mut self, name: impl Into<String>, kind: impl Kind) -> Self {
        self.insert(name.into(), Arc::new(kind));
        self
    }

    /// Adds an already shared kind.
    pub fn register_arc(mut self, name: impl Into<String>, kind: Arc<dyn Kind>) -> Self {
        self.insert(name.into(), kind);
        self
    }

    /// Adds what the configuration file declares: the built-in kinds when it turned them
    /// on (`builtin_kinds = true`; absent counts as off here: a process decides the
    /// default, see [`crate::config::KindsArgs::registry`]), and its HTTP kinds. `store`
    /// (the results database every replica shares, [`crate::storage::Storage`]) holds the
    /// HTTP kinds' cross-replica concurrency and rate state.
    pub fn with_config(
        mut self,
        config: &file::SurgeConfig,
        store: &(impl flow_store::FlowStore + Clone + 'static),
    ) -> Result<Self, http::HttpKindError> {
        if config.builtin_kinds == Some(true) {
            self = self.with_builtins();
        }
        for kind in &config.http_kinds {
            let name = kind.name.clone();
            let mut http = http::HttpKind::new(kind.clone(), store.clone())?;
            if let Some(pauses) = &self.pauses {
                http = http.with_pauses(pauses.clone());
            }
            self.insert(name, Arc::new(http));
        }
        Ok(self)
    }

    /// Makes every kind pausable (see [`pause`]): a paused kind's jobs are deferred, and
    /// HTTP kinds added after this call record the pauses their targets ask for. Call it
    /// before [`KindRegistryBuilder::with_config`].
    pub fn with_pauses(mut self, pauses: Arc<pause::KindPauses>) -> Self {
        self.pauses = Some(pauses);
        self
    }

    /// Sets which `callback_url`s the registry's jobs may carry (see
    /// [`KindRegistry::callback_policy`]).
    pub fn with_callback_policy(mut self, policy: crate::job::CallbackPolicy) -> Self {
        self.callbacks = policy;
        self
    }

    /// Adds the five built-in example kinds.
    pub fn with_builtins(mut self) -> Self {
        for (name, kind) in builtin::kinds() {
            self.insert(name.to_owned(), kind);
        }
        self
    }

    fn insert(&mut self, name: String, kind: Arc<dyn Kind>) {
        use std::collections::btree_map::Entry;
        if !is_valid_kind_name(&name) {
            self.errors.push(RegistryError::BadName(name));
            return;
        }
        match self.kinds.entry(name) {
            Entry::Occupied(taken) => self
                .errors
                .push(RegistryError::Duplicate(taken.key().clone())),
            Entry::Vacant(free) => {
                free.insert(kind);
            }
        }
    }

    /// The registry, or the first problem met while registering.
    pub fn try_build(mut self) -> Result<KindRegistry, RegistryError> {
        match std::mem::take(&mut self.errors).into_iter().next() {
            Some(error) => Err(error),
            None => Ok(self.finish()),
        }
    }

    /// The registry, ignoring bad registrations (each is logged).
    pub fn build(self) -> KindRegistry {
        for error in &self.errors {
            tracing::error!(%error, "job kind not registered");
        }
        self.finish()
    }

    fn finish(self) -> KindRegistry {
        let kinds = match &self.pauses {
            None => self.kinds,
            Some(pauses) => self
                .kinds
                .into_iter()
                .map(|(name, kind)| {
                    let pausable = pause::PausableKind::new(name.clone(), kind, pauses.clone());
                    (name, Arc::new(pausable) as Arc<dyn Kind>)
                })
                .collect(),
        };
        KindRegistry {
            kinds: Arc::new(kinds),
            callbacks: self.callbacks,
            pauses: self.pauses,
        }
    }
}

/// A [`Kind`] made of an async function (any payload accepted, unless a JSON Schema is
/// given with [`FnKind::with_schema`]).
pub struct FnKind<F> {
    run: F,
    schema: Option<schema::PayloadSchema>,
    description: String,
    retry: Option<RetryPolicy>,
}

/// A kind running `run(job, attempt)` for each attempt. See [`FnKind`].
pub fn handler_fn<F, Fut>(run: F) -> FnKind<F>
where
    F: Fn(Job, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
{
    FnKind {
        run,
        schema: None,
        description: String::new(),
        retry: None,
    }
}

impl<F> FnKind<F> {
    /// Checks payloads against this JSON Schema (at the ingress and in the worker).
    pub fn with_schema(mut self, schema: schema::PayloadSchema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// A line for humans (OpenAPI).
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// This kind's own retry policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

#[async_trait]
impl<F, Fut> Kind for FnKind<F>
where
    F: Fn(Job, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
{
    fn validate(&self, payload: &Value) -> Result<(), InvalidJob> {
        match &self.schema {
            Some(schema) => schema.validate(payload),
            None => Ok(()),
        }
    }

    async fn run(&self, job: &Job, attempt: u32) -> Result<Value, JobError> {
        (self.run)(job.clone(), attempt).await
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn payload_schema(&self) -> Value {
        self.schema
            .as_ref()
            .map(|s| s.document().clone())
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    fn retry_policy(&self, worker: RetryPolicy) -> RetryPolicy {
        self.retry.unwrap_or(worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked() {
        for good in ["echo", "thumbnail", "a", "img.resize-v2", "9lives"] {
            assert!(is_valid_kind_name(good), "{good}");
        }
        let long = "a".repeat(MAX_KIND_NAME_LEN + 1);
        for bad in ["", "Echo", "-x", "a b", "é", long.as_str(), "x/y"] {
            assert!(!is_valid_kind_name(bad), "{bad}");
        }
    }

    #[test]
    fn duplicates_and_bad_names_are_refused() {
        let dup = KindRegistry::builder()
            .with_builtins()
            .register("echo", handler_fn(|_, _| async { Ok(json!(1)) }))
            .try_build();
        assert_eq!(dup.unwrap_err(), RegistryError::Duplicate("echo".into()));
        let bad = KindRegistry::builder()
            .register("Bad Name", handler_fn(|_, _| async { Ok(json!(1)) }))
            .try_build();
        assert!(matches!(bad, Err(RegistryError::BadName(_))));
    }

    #[tokio::test]
    async fn a_function_kind_runs_and_validates_by_schema() {
        let schema = schema::PayloadSchema::compile(
            "kinds.greet.schema",
            json!({"type": "object", "required": ["name"]}),
        )
        .unwrap();
        let registry = KindRegistry::builder()
            .register(
                "greet",
                handler_fn(|job: Job, _| async move { Ok(json!({"hello": job.payload["name"]})) })
                    .with_schema(schema),
            )
            .try_build()
            .unwrap();
        let err = registry.validate("greet", &json!({})).unwrap_err();
        assert_eq!(err.field, "payload.name");
        assert_eq!(
            registry.validate("nope", &json!({})).unwrap_err().field,
            "kind"
        );
        let job = Job::new("greet", json!({"name": "ada"}), None);
        let kind = registry.get("greet").unwrap();
        assert_eq!(kind.run(&job, 1).await, Ok(json!({"hello": "ada"})));
    }
}
