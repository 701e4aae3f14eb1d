//! Logs and traces: structured JSON (or pretty) logs through `tracing`, and, when an OTLP
//! endpoint is configured, the same spans exported over OTLP/gRPC.
//!
//! Owns the subscriber set-up and the W3C `traceparent` carried in pub/sub payloads so a
//! delivery on another instance joins its publish's trace. Without an endpoint no exporter
//! exists and the traceparent helpers return `None` without touching span internals.
//! Secrets never reach a log line because nothing logs them: tokens, API keys and
//! `Authorization` values are not fields of any span or event, and the config is never
//! logged whole.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Whether spans are exported; checked before any trace-context work on hot paths.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (at process exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("roomcast: trace exporter shutdown: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime (the gRPC exporter
/// needs it). Fails if the filter does not parse or the exporter cannot be built.
pub fn init(config: &Config, node_id: &str) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(&config.log).map_err(|e| format!("ROOMCAST_LOG: {e}"))?;
    let fmt_layer = match config.log_format {
        // The whole span list, not just the innermost span: a line logged inside a nested
        // span (a Redis call, a publish) still carries the request id or client id.
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_target(false)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_target(false).boxed(),
    };
    let mut provider = None;
    let otel_layer = match config.otlp() {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("ROOMCAST_OTLP_ENDPOINT: {e}"))?;
            let resource = Resource::builder()
                .with_service_name("roomcast")
                .with_attributes([
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    KeyValue::new("service.instance.id", node_id.to_string()),
                ])
                .build();
            let sdk = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = sdk.tracer("roomcast");
            provider = Some(sdk);
            EXPORTING.store(true, Ordering::Release);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(Telemetry { provider })
}

/// The current span's W3C `traceparent`, when spans are exported.
pub fn current_traceparent() -> Option<String> {
    if !EXPORTING.load(Ordering::Acquire) {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span named by `traceparent` (if it parses).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(sc) = parse_traceparent(traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(sc));
    }
}

/// Whether spans are exported (callers skip building trace context otherwise).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zz-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn no_traceparent_without_an_exporter() {
        let _span = tracing::info_span!("x").entered();
        assert_eq!(current_traceparent(), None);
    }
}
