//! Traces: one span per reconcile and per status pass, exported over OTLP/HTTP when an
//! endpoint is set (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! ```text
//! reconciling object   kube-runtime's span: object.ref, object.reason (what woke it:
//!   |                  "object updated", "related object updated: StatefulSet.v1.apps/ns/n",
//!   |                  "bulk reconcile requested", or "unknown" for the operator's own
//!   |                  targeted wake-ups through `reconcile_on`, which kube-runtime cannot
//!   |                  name): the change that caused the reconcile
//!   └─ reconcile       ours, for the whole reconcile: kind, object, outcome; the warnings
//!                      logged inside it are its events
//! pass                 a status pass of Resources and Policies: kind, resync
//! ```
//!
//! Why through `tracing` (the `tracing-opentelemetry` layer) instead of the OpenTelemetry API
//! by hand as the gateway does: the operator's work already runs in `tracing` spans, and the
//! cause of a reconcile is only known to kube-runtime's span, which our span is a child of.
//! Only spans of this crate and kube-runtime's controller at INFO are exported: the kube
//! client's per-request spans would flood a collector with every watch event.
//! The export itself (endpoint, TLS to the collector, the standard `OTEL_EXPORTER_OTLP_*`
//! variables) is [`rustronaut_otlp`]'s, shared with the gateway and the tunnel.
//! Without an endpoint nothing is started.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Whether a span is exported: this crate's and kube-runtime's controller spans at INFO or
/// above (the reconcile, its cause, the status passes), nothing of the kube client.
pub fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("rustronaut_operator")
        || meta.target().starts_with("kube_runtime::controller");
    ours && *meta.level() <= tracing::Level::INFO
}

/// The span of one reconcile of `object` (`namespace/name`) of `kind`. Created synchronously
/// where kube-runtime calls the reconciler, so its parent is kube-runtime's span of the
/// trigger (`object.reason`), even though the reconcile itself runs later.
pub fn reconcile_span(kind: &'static str, object: &str) -> tracing::Span {
    tracing::info_span!("reconcile", kind, object, outcome = tracing::field::Empty)
}

/// Records how a reconcile ended on its span: `ok`, or the error's metric label.
pub fn record_outcome<T>(span: &tracing::Span, result: &Result<T, crate::error::Error>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    span.record("outcome", outcome);
}

/// The tracer provider (keep it: dropping or shutting it down flushes the last batch) and
/// the tracer to give the `tracing-opentelemetry` layer; None without an endpoint.
pub fn otlp(
    otlp: &rustronaut_otlp::Otlp,
) -> Result<Option<(SdkTracerProvider, SdkTracer)>, rustronaut_otlp::OtlpError> {
    Ok(otlp.provider("rustronaut-operator")?.map(|provider| {
        let tracer = provider.tracer("rustronaut-operator");
        (provider, tracer)
    }))
}
