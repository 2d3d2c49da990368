//! The admin listener: `/healthz` (the process is up), `/readyz` (a valid snapshot is being
//! served, every listener is bound, and the gateway is not shutting down), `/metrics`
//! (Prometheus text format).
//!
//! It runs on its own small Tokio runtime, apart from Pingora's, so probes and scrapes
//! still answer while the proxy runtimes are saturated.

use crate::metrics::Metrics;
use crate::reload::Store;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why the admin server stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("failed to bind admin listener {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("admin server failed: {0}")]
    Serve(std::io::Error),
}

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// Serving state.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the first snapshot's listeners are bound (`server::build`). The admin
    /// listener answers from start-up and the snapshot loads before the data ports are
    /// bound: without this a probe in between saw 200 while connections to the gateway's
    /// ports were still refused (seen under valgrind, where the gap is seconds).
    pub listening: AtomicBool,
    /// Set when shutdown begins (SIGTERM), so load balancers stop sending traffic while the
    /// listeners still accept (`server::DrainThenStop`).
    pub draining: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
    }
    match s.store.current() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid snapshot loaded\n".to_string(),
        ),
        Some(_) if !s.listening.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "listeners not bound yet\n".to_string(),
        ),
        Some(c) => (StatusCode::OK, format!("ready {}\n", c.version)),
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin endpoints on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(AdminError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Compiled;
    use rustronaut_contract::snapshot::Snapshot;

    fn status(s: &Arc<AdminState>) -> (StatusCode, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(readyz(State(s.clone()))).into_response();
        let code = r.status();
        let body = rt
            .block_on(axum::body::to_bytes(r.into_body(), 1024))
            .unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Ready only with a snapshot, every listener bound, and no shutdown under way; each
    /// answer says which is missing.
    #[test]
    fn ready_needs_a_snapshot_and_bound_listeners_and_no_drain() {
        let s = Arc::new(AdminState {
            store: Arc::new(Store::default()),
            metrics: Arc::new(Metrics::new()),
            listening: AtomicBool::new(false),
            draining: Arc::new(AtomicBool::new(false)),
        });
        assert_eq!(
            status(&s),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no valid snapshot loaded\n".into()
            )
        );
        let snapshot =
            Snapshot::load(include_bytes!("../examples/standalone/snapshot.json")).unwrap();
        let compiled = Arc::new(Compiled::build(snapshot).unwrap());
        let version = compiled.version.clone();
        s.store.swap(compiled);
        assert_eq!(
            status(&s),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "listeners not bound yet\n".into()
            )
        );
        s.listening.store(true, Ordering::Relaxed);
        assert_eq!(status(&s), (StatusCode::OK, format!("ready {version}\n")));
        s.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            status(&s),
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        );
    }
}
