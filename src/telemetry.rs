//! OpenTelemetry tracing (issue 14): a span per decision (`ext_authz.check`), child spans for the
//! stages that do I/O (`jwks.fetch`, `consent.lookup`, `audit.commit`), exported over OTLP/gRPC.
//!
//! The decision span joins the partner request's trace: its parent is the W3C `traceparent` (and
//! `tracestate`) of the request scp-pep decides, so a trace shows the proxy, scp-pep and the
//! upstream as one request. The trace id is also written into the decision log line and the
//! audit record (`trace_id`) — from the exported span when tracing is on, else from the request's
//! `traceparent` — so an audit record leads to its trace and back. A trace id is a random
//! identifier chosen by the client or the proxy, never personal data; span attributes carry the
//! decision id, tenant, integration, route template and code, never a path, header value, token
//! or person id.
//!
//! Spans of target [`TARGET`] go to the OTLP exporter only (a per-layer filter keeps them out of
//! the JSON process log). Sampling: parent-based (a sampled `traceparent` is always recorded)
//! over a trace-id ratio (`[tracing] sample_ratio`) for requests that bring none.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span exported to OpenTelemetry.
pub const TARGET: &str = "scp_pep::trace";

/// `[tracing]`: OpenTelemetry export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint of a collector, e.g. `http://otel-collector:4317`; empty = tracing off.
    pub otlp_endpoint: String,
    /// Share of traces recorded for requests without a sampled `traceparent`, 0.0–1.0.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Seconds one export may take.
    pub export_timeout_s: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            sample_ratio: 0.01,
            service_name: "scp-pep".into(),
            export_timeout_s: 5,
        }
    }
}

/// Builds the OTLP exporter and tracer provider of `cfg`; `None` when tracing is off. Must run
/// inside a tokio runtime (the gRPC exporter's channel). Errors: an invalid endpoint or ratio.
pub fn provider(cfg: &TracingConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    if cfg.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&cfg.sample_ratio),
        "tracing.sample_ratio must be between 0 and 1, not {}",
        cfg.sample_ratio
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.otlp_endpoint.clone())
        .with_timeout(Duration::from_secs(cfg.export_timeout_s.max(1)))
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()?;
    // The batch processor on tokio: the gRPC exporter's channel needs the runtime (the default
    // thread-based processor exports without one and loses every span).
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Some(provider))
}

/// The `tracing` layer exporting [`TARGET`] spans through `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("scp-pep"))
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO),
        )
}

struct HeaderMapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for HeaderMapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Creates a span with `make`, as a child of the trace named by `headers` (`traceparent`,
/// `tracestate`; lower-case names), and returns it with the trace id to record: the span's when
/// it is exported (sampled), else the one the request carries, else `None` (32 lower-case hex
/// digits).
/// The parent is current while the span is created, so sampling (parent-based) sees it.
pub fn in_trace(
    headers: &HashMap<String, String>,
    make: impl FnOnce() -> tracing::Span,
) -> (tracing::Span, Option<String>) {
    use opentelemetry::trace::TraceContextExt as _;
    let span = if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderMapExtractor(headers));
        let _attached = parent.attach();
        make()
    } else {
        make()
    };
    let sc = span.context().span().span_context().clone();
    let id = if sc.is_valid() && sc.is_sampled() {
        Some(sc.trace_id().to_string())
    } else {
        headers.get("traceparent").and_then(|v| trace_id_of(v))
    };
    (span, id)
}

/// The trace id of a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`), if it is well
/// formed and not all zeros.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags, ..]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some(trace.to_ascii_lowercase())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (tracing): the trace id is read only from a well-formed `traceparent`.
    #[test]
    fn traceparent_is_parsed_strictly() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        assert_eq!(
            trace_id_of(&format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase())).as_deref(),
            Some(id)
        );
        for bad in [
            "",
            "00-0000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }

    /// Without an exporter, the request's own trace id is recorded.
    #[test]
    fn trace_id_falls_back_to_the_request() {
        let mut h = HashMap::new();
        let make = || tracing::info_span!(target: "scp_pep::trace", "t");
        assert_eq!(in_trace(&h, make).1, None);
        h.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        assert_eq!(
            in_trace(&h, make).1.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
