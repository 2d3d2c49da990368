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
//! The export itself (endpoint, TLS to the collector, the standard `OTEL_EXPORTER_OTLP_*`
//! variables, a blocking client on the SDK's own export thread, off the proxy runtimes) is
//! [`rustronaut_otlp`]'s, shared with the operator and the tunnel.
//! Without an endpoint nothing is started: no cost on the request path.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::HashMap;

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
    /// Spans exported in batches as `otlp` says; None without an endpoint. Call outside
    /// any Tokio runtime.
    pub fn otlp(otlp: &rustronaut_otlp::Otlp) -> Result<Option<Self>, rustronaut_otlp::OtlpError> {
        let Some(provider) = otlp.provider("rustronaut-gateway")? else {
            return Ok(None);
        };
        let tracer = provider.tracer("rustronaut-gateway");
        Ok(Some(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
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
    fn a_client_trace_continues_through_the_gateway() {
        // No exporter is contacted: spans stay in the batch buffer and are dropped.
        let t = Telemetry::otlp(&rustronaut_otlp::Otlp::endpoint("http://127.0.0.1:9"))
            .unwrap()
            .unwrap();
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
