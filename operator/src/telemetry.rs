//! Traces: one span per reconcile and per status pass, exported over OTLP/HTTP when an
//! endpoint is set (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! ```text
//! reconciling object   kube-runtime's span: object.ref, object.reason (what woke it:
//!   |                  "object updated", "related object updated: Policy.v1alpha1.../ns/p",
//!   |                  "bulk reconcile requested", ...): the change that caused the reconcile
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
//! Why OTLP over HTTP with a blocking client on the SDK's own export thread: the same reason
//! as the gateway's (gateway/src/telemetry.rs): no tokio runtime is needed on the export
//! thread, and collectors run as a local agent or sidecar (plain `http://` only).
//! Without an endpoint nothing is started.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

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
/// the tracer to give the `tracing-opentelemetry` layer.
pub fn otlp(endpoint: &str) -> Result<(SdkTracerProvider, SdkTracer), TelemetryError> {
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("rustronaut-operator")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("rustronaut-operator");
    Ok((provider, tracer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_to_an_http_base() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        for bad in [
            "https://c:4318",
            "collector:4318",
            "http://",
            "http:///x",
            "http://a b",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
