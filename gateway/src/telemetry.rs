//! Tracing: one server span per request, exported over OTLP/HTTP when an endpoint is set
//! (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! ```text
//!  request_filter           start: W3C traceparent of the client (if any) is the parent
//!  upstream_request_filter  inject: the upstream gets a traceparent naming this span
//!  logging                  finish: resource, decision, reason, policy/rule, decision id,
//!                           status, upstream as attributes; error status on 5xx
//! ```
//!
//! Why spans are started and finished by hand instead of through `tracing` spans: a request
//! crosses Pingora phases as separate async calls with only the per-request context in
//! common, so the span travels in that context. Why the decision id is a span attribute: it
//! is what a 401/403 body shows the user, so support can go from a complaint to the trace.
//! Why OTLP over HTTP with a blocking client on the SDK's own export thread: it keeps the
//! exporter off the proxy runtimes and needs no TLS stack of its own (collectors usually
//! run as a local agent or sidecar; plain `http://` only, refused otherwise).
//! Without an endpoint nothing is started: no cost on the request path.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::HashMap;

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an `http://` URL.
    #[error("OTLP endpoint {0:?} must be an http:// URL (a local collector or agent)")]
    Endpoint(String),
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The OTLP/HTTP traces URL of a base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` means it
/// (the signal path `/v1/traces` appended).
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let rest = endpoint
        .strip_prefix("http://")
        .filter(|r| !r.is_empty() && !r.starts_with('/'))
        .ok_or_else(|| TelemetryError::Endpoint(endpoint.to_string()))?;
    if rest.chars().any(char::is_whitespace) {
        return Err(TelemetryError::Endpoint(endpoint.to_string()));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

/// The request headers a trace context is read from.
struct Headers<'a>(&'a HashMap<&'static str, String>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().copied().collect()
    }
}

struct Out(Vec<(String, String)>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// The request tracer; cheap to share.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// What a finished request span records.
#[derive(Debug, Default)]
pub struct SpanFacts<'a> {
    /// `namespace/name` of the routed Resource.
    pub resource: Option<&'a str>,
    /// Allow, Deny, or `-`.
    pub decision: &'a str,
    /// Reason code.
    pub reason: &'a str,
    /// Deciding policy and rule.
    pub policy: Option<&'a str>,
    /// Deciding rule.
    pub rule: Option<&'a str>,
    /// Decision id.
    pub decision_id: &'a str,
    /// HTTP status sent (0 when none).
    pub status: u16,
    /// Upstream address used.
    pub upstream: Option<&'a str>,
    /// Listener name.
    pub listener: &'a str,
}

/// The headers of the W3C trace context (`traceparent`, `tracestate`).
pub const CONTEXT_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

impl Telemetry {
    /// Spans exported in batches to the OTLP/HTTP collector at `endpoint` (base URL).
    pub fn otlp(endpoint: &str) -> Result<Self, TelemetryError> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("rustronaut-gateway")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("rustronaut-gateway");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Starts the server span of a request; `header` reads the request's trace-context
    /// headers, so a caller's trace continues through the gateway.
    pub fn start(&self, method: &str, header: impl Fn(&str) -> Option<String>) -> Context {
        let carried: HashMap<&'static str, String> = CONTEXT_HEADERS
            .iter()
            .filter_map(|h| header(h).map(|v| (*h, v)))
            .collect();
        let parent = self.propagator.extract(&Headers(&carried));
        let span = self
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// The trace-context headers naming `cx`'s span, for the upstream request.
    pub fn inject(&self, cx: &Context) -> Vec<(String, String)> {
        let mut out = Out(Vec::new());
        self.propagator.inject_context(cx, &mut out);
        out.0
    }

    /// Records `facts` on the span of `cx` and ends it.
    pub fn finish(cx: &Context, facts: &SpanFacts<'_>) {
        let span = cx.span();
        let mut attrs = vec![
            KeyValue::new("rustronaut.listener", facts.listener.to_string()),
            KeyValue::new("rustronaut.decision", facts.decision.to_string()),
            KeyValue::new("rustronaut.reason", facts.reason.to_string()),
            KeyValue::new("rustronaut.decision_id", facts.decision_id.to_string()),
            KeyValue::new("http.response.status_code", i64::from(facts.status)),
        ];
        let optional = [
            ("rustronaut.resource", facts.resource),
            ("rustronaut.policy", facts.policy),
            ("rustronaut.rule", facts.rule),
            ("server.address", facts.upstream),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                attrs.push(KeyValue::new(k, v.to_string()));
            }
        }
        span.set_attributes(attrs);
        if facts.status >= 500 || facts.status == 0 {
            span.set_status(Status::error(format!("status {}", facts.status)));
        }
        span.end();
    }

    /// Exports what is buffered and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_and_refuses_other_schemes() {
        assert_eq!(
            traces_url("http://otel-collector:4318").unwrap(),
            "http://otel-collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        for bad in [
            "https://c:4318",
            "otel:4318",
            "http://",
            "http:///x",
            "http://a b",
        ] {
            assert!(traces_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_client_trace_continues_through_the_gateway() {
        // No exporter is contacted: spans stay in the batch buffer and are dropped.
        let t = Telemetry::otlp("http://127.0.0.1:9").unwrap();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = t.start("GET", |h| (h == "traceparent").then(|| parent.to_string()));
        let injected = t.inject(&cx);
        let tp = injected
            .iter()
            .find(|(k, _)| k == "traceparent")
            .map(|(_, v)| v.clone())
            .unwrap();
        // Same trace, a new span id (this gateway's span), sampled.
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
        assert!(tp.ends_with("-01"), "{tp}");
        // Without a parent, a new trace is started.
        let cx = t.start("GET", |_| None);
        let tp2 = t.inject(&cx);
        assert!(!tp2[0].1.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        Telemetry::finish(
            &cx,
            &SpanFacts {
                decision: "Allow",
                status: 200,
                ..Default::default()
            },
        );
    }
}
