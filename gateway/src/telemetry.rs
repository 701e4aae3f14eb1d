//! Logging: structured JSON (or pretty, for a terminal) through `tracing`.
//!
//! Owns the subscriber set-up. Secrets never reach a log line because nothing logs them:
//! tokens, API keys and `Authorization` values are not fields of any span or event, and the
//! config is never logged whole.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. Fails if the filter does not parse.
pub fn init(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log).map_err(|e| format!("ROOMCAST_LOG: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
    };
    result.map_err(|e| e.to_string())
}
