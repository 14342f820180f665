//! `tracing` set-up: `RUST_LOG` filtering (default `info`), text or JSON lines on stderr;
//! and, with `--otlp-endpoint`, span export ([`crate::otlp`]).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (tests, or an embedding program): keep the existing one.
    let _ = result;
}

/// [`init`] from the binary's flags, and OTLP export as `service` when `--otlp-endpoint` is
/// set. An endpoint the binary cannot serve (built without the `otlp` feature, not a URL) is
/// an error at start-up, not a silent nothing.
pub fn init_with(
    args: &crate::config::TelemetryArgs,
    service: &str,
) -> Result<(), crate::otlp::OtlpError> {
    init(args.log_format);
    match &args.otlp_endpoint {
        Some(endpoint) => crate::otlp::init(endpoint, service),
        None => Ok(()),
    }
}
