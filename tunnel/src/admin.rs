//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/status`
//! (JSON).
//!
//! Read-only, no request bodies, GET and HEAD only, and the port belongs on the pod network
//! for Prometheus and the operator, not on a public Service. Rendering is a pure function of a
//! status snapshot ([`render_metrics`]), so it is tested without a socket.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;

/// Errors of the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listener could not be bound.
    #[error("failed to listen on {addr} for the admin endpoint: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// One peer (a site on the hub, a hub replica on the connector) as reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    /// Site name, or the hub's endpoint.
    pub name: String,
    /// The peer's public key.
    pub public_key: String,
    /// The peer's tunnel address.
    pub tunnel_address: String,
    /// A handshake within the last 180 s.
    pub connected: bool,
    /// Unix time of the last handshake, if any.
    pub last_handshake_unix: Option<u64>,
    /// The peer's UDP endpoint, if known.
    pub endpoint: Option<String>,
    /// Inner bytes received from the peer.
    pub rx_bytes: u64,
    /// Inner bytes sent to the peer.
    pub tx_bytes: u64,
    /// Datagrams dropped (failed authentication, replays, malformed).
    pub rx_rejected: u64,
    /// Open tunnel connections.
    pub streams: usize,
    /// Generation of the allow list (sent by the hub / received by the connector).
    pub targets_generation: Option<u64>,
}

/// A snapshot of everything the endpoint reports.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Status {
    /// `hub` or `connector`.
    pub role: &'static str,
    /// Our public key.
    pub public_key: String,
    /// The peers.
    pub peers: Vec<PeerStatus>,
    /// Named counters (label value -> count), e.g. stream requests by outcome.
    pub counters: Vec<Counter>,
}

/// A counter family with one label.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Counter {
    /// Metric name without prefix, e.g. `stream_requests_total`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Label name.
    pub label: &'static str,
    /// (label value, count).
    pub values: Vec<(String, u64)>,
}

/// Produces snapshots for the endpoint.
pub trait StatusSource: Send + Sync + 'static {
    /// The current status.
    fn status(&self) -> Status;
    /// Whether the process is healthy (for /healthz).
    fn healthy(&self) -> bool {
        true
    }
    /// Whether it should be sent new work (for /readyz): healthy, and not draining after
    /// SIGTERM (a hub keeps serving for its drain delay with this false, `crate::hub`).
    fn ready(&self) -> bool {
        self.healthy()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// (name, type, help, value of a peer).
type Gauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerStatus) -> Option<f64>,
);

/// Renders the Prometheus text exposition format.
pub fn render_metrics(status: &Status) -> String {
    let mut out = String::new();
    let prefix = format!("rustronaut_tunnel_{}", status.role);
    let peer_label = if status.role == "hub" { "site" } else { "hub" };
    let gauges: [Gauge; 7] = [
        (
            "peer_connected",
            "gauge",
            "1 if a handshake happened in the last 180 seconds",
            |p| Some(if p.connected { 1.0 } else { 0.0 }),
        ),
        (
            "peer_last_handshake_seconds",
            "gauge",
            "unix time of the last handshake",
            |p| p.last_handshake_unix.map(|t| t as f64),
        ),
        (
            "peer_receive_bytes_total",
            "counter",
            "bytes received through the tunnel",
            |p| Some(p.rx_bytes as f64),
        ),
        (
            "peer_transmit_bytes_total",
            "counter",
            "bytes sent through the tunnel",
            |p| Some(p.tx_bytes as f64),
        ),
        (
            "peer_rejected_datagrams_total",
            "counter",
            "datagrams dropped: unauthenticated, replayed or malformed",
            |p| Some(p.rx_rejected as f64),
        ),
        ("peer_streams", "gauge", "open tunnel connections", |p| {
            Some(p.streams as f64)
        }),
        (
            "peer_targets_generation",
            "gauge",
            "generation of the allow list",
            |p| p.targets_generation.map(|g| g as f64),
        ),
    ];
    for (name, kind, help, get) in gauges {
        let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
        let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
        for p in &status.peers {
            if let Some(v) = get(p) {
                let _ = writeln!(
                    out,
                    "{prefix}_{name}{{{peer_label}=\"{}\"}} {v}",
                    escape_label(&p.name)
                );
            }
        }
    }
    for c in &status.counters {
        let _ = writeln!(out, "# HELP {prefix}_{} {}", c.name, c.help);
        let _ = writeln!(out, "# TYPE {prefix}_{} counter", c.name);
        for (label, v) in &c.values {
            let _ = writeln!(
                out,
                "{prefix}_{}{{{}=\"{}\"}} {v}",
                c.name,
                c.label,
                escape_label(label)
            );
        }
    }
    out
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Answers one request.
pub fn handle(source: &dyn StatusSource, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(&source.status()),
        ),
        "/healthz" => {
            if source.healthy() {
                respond(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "unhealthy\n".into(),
                )
            }
        }
        "/readyz" => {
            if source.ready() {
                respond(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/status" => {
            let body = serde_json::to_string_pretty(&source.status()).unwrap_or_default();
            respond(StatusCode::OK, "application/json", body)
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Binds the endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, source: Arc<dyn StatusSource>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = handle(source.as_ref(), req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Status, bool);
    impl StatusSource for Fixed {
        fn status(&self) -> Status {
            self.0.clone()
        }
        fn healthy(&self) -> bool {
            self.1
        }
    }

    fn status() -> Status {
        Status {
            role: "hub",
            public_key: "k".into(),
            peers: vec![PeerStatus {
                name: "dc\"1".into(),
                public_key: "p".into(),
                tunnel_address: "100.96.1.1".into(),
                connected: true,
                last_handshake_unix: Some(1_700_000_000),
                endpoint: Some("198.51.100.7:40000".into()),
                rx_bytes: 10,
                tx_bytes: 20,
                rx_rejected: 3,
                streams: 2,
                targets_generation: None,
            }],
            counters: vec![Counter {
                name: "stream_requests_total",
                help: "stream requests by outcome",
                label: "status",
                values: vec![("ok".into(), 5), ("unauthorized".into(), 1)],
            }],
        }
    }

    #[test]
    fn metrics_text_is_prometheus_format() {
        let text = render_metrics(&status());
        for line in [
            "# TYPE rustronaut_tunnel_hub_peer_connected gauge",
            "rustronaut_tunnel_hub_peer_connected{site=\"dc\\\"1\"} 1",
            "rustronaut_tunnel_hub_peer_last_handshake_seconds{site=\"dc\\\"1\"} 1700000000",
            "rustronaut_tunnel_hub_peer_receive_bytes_total{site=\"dc\\\"1\"} 10",
            "rustronaut_tunnel_hub_peer_transmit_bytes_total{site=\"dc\\\"1\"} 20",
            "rustronaut_tunnel_hub_peer_rejected_datagrams_total{site=\"dc\\\"1\"} 3",
            "rustronaut_tunnel_hub_stream_requests_total{status=\"unauthorized\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("targets_generation{"));
    }

    #[test]
    fn routes() {
        let up = Fixed(status(), true);
        assert_eq!(
            handle(&up, &Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            handle(&up, &Method::GET, "/status").status(),
            StatusCode::OK
        );
        assert_eq!(
            handle(&up, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            handle(&up, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let down = Fixed(status(), false);
        assert_eq!(
            handle(&down, &Method::GET, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Readiness follows health unless the source says otherwise.
        assert_eq!(
            handle(&up, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        assert_eq!(
            handle(&down, &Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// (metric, type, label names) of a text exposition.
    fn families(text: &str) -> std::collections::BTreeSet<(String, String, Vec<String>)> {
        let types: std::collections::BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, rest) = l.split_once('{').unwrap();
                let label = rest.split_once("=\"").unwrap().0.to_string();
                let kind = types.get(name).copied().unwrap_or("untyped").to_string();
                (name.to_string(), kind, vec![label])
            })
            .collect()
    }

    /// Rows `| \`prefix...\` | type | \`label\` | ... |` of docs/observability.md.
    fn documented(prefix: &str) -> std::collections::BTreeSet<(String, String, Vec<String>)> {
        let page = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
        std::fs::read_to_string(page)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!("| `{prefix}")))
            .map(|l| {
                let c: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    c[1].trim_matches('`').to_string(),
                    c[2].to_string(),
                    vec![c[3].trim_matches('`').to_string()],
                )
            })
            .collect()
    }

    #[test]
    fn peer_metrics_are_the_documented_ones_labelled_by_configured_peer_only() {
        for (role, label) in [("hub", "site"), ("connector", "hub")] {
            let mut s = status();
            s.role = role;
            s.counters.clear();
            s.peers[0].targets_generation = Some(3);
            let encoded = families(&render_metrics(&s));
            assert_eq!(
                encoded,
                documented(&format!("rustronaut_tunnel_{role}_peer_")),
                "docs/observability.md, {role}"
            );
            // One label, the configured peer's name: never its endpoint address.
            assert!(encoded.iter().all(|(_, _, l)| l == &[label]));
            assert!(!render_metrics(&s).contains("198.51.100.7"));
        }
    }
}
