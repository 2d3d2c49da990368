//! Builds the Pingora server: one [`crate::listener::HttpListener`] (the gateway's own
//! accept loop, a background service) per HTTP or HTTPS listener of the first snapshot, in
//! front of a Pingora proxy, TLS settings from [`crate::tls`]; one [`crate::l4::L4Service`]
//! (a background service with its own runtime) per TCP, UDP or TLSPassthrough port. TLSPassthrough
//! listeners with distinct hostnames may share a port: they share one service, which routes
//! by SNI across them.

use crate::l4::{Kind, L4Service};
use crate::proxy::{GatewayProxy, ListenerInfo, Shared};
use crate::state::Compiled;
use crate::tls::{DynamicClientVerifier, HandshakeCallback, SniResolver};
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use rustronaut_contract::snapshot::ListenerProtocol;
use std::net::IpAddr;
use std::sync::Arc;

/// Why the server could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The snapshot has no listener, so there is nothing to bind.
    #[error("the snapshot has no listener")]
    NoListener,
    /// An L4 port could not be bound.
    #[error("{protocol} port {port}: {source}")]
    Bind {
        /// Protocol.
        protocol: &'static str,
        /// Port.
        port: u16,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS settings could not be created.
    #[error("listener {listener}: {reason}")]
    Tls {
        /// Listener.
        listener: String,
        /// Cause.
        reason: String,
    },
}

/// Process settings for Pingora.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address every listener binds to.
    pub bind: IpAddr,
    /// Worker threads per listener.
    pub threads: usize,
    /// Seconds to keep serving after SIGTERM before closing listeners.
    pub grace_period_seconds: u64,
    /// Seconds to wait for in-flight requests after that.
    pub shutdown_timeout_seconds: u64,
    /// Bounds of the L4 listeners.
    pub l4: crate::l4::L4Options,
    /// Request-head and keep-alive deadlines of HTTP(S) clients.
    pub downstream: crate::downstream::Deadlines,
}

/// Whether the listeners' runtimes are tokio's multi-thread scheduler (Pingora's default)
/// rather than one current-thread runtime per worker.
///
/// With one worker there is nothing to steal from, and the multi-thread scheduler still
/// pays its machinery at every wake-up, which on a single worker is per request once
/// requests stop arriving in batches. Measured with `--threads 1` (issue 19,
/// docs/benchmarks.md, three rounds): CPU per request 39.1 -> 34.8 µs at the gateway's
/// maximum and 57.1 -> 48.0 µs at a fixed 14,350 req/s, maximum 25,519 -> 28,710 req/s,
/// almost all of it kernel time (user-space instructions per request -0.6 %); bare Pingora
/// gains less (28.1 -> 27.8 and 42.3 -> 40.2 µs). With more than one worker the listeners'
/// accept loops (`crate::listener`) spawn each connection with `tokio::spawn`, and only
/// stealing spreads them over the workers: a current-thread runtime would keep them all on
/// the accepting one.
pub fn work_stealing(threads: usize) -> bool {
    threads > 1
}

/// Above how many seconds Pingora's timeouts use tokio's timer rather than its own
/// (`pingora_timeout::fast_timeout`), given whether the workers steal work.
///
/// Pingora's own timer is one shared wheel per process with a clock thread that wakes every
/// 10 ms; it exists so that the workers of one multi-thread runtime do not all queue on
/// tokio's timer, which in tokio 1.x is one wheel behind one mutex per runtime. Without
/// stealing every worker is a runtime of its own, with a timer of its own that no other
/// thread locks, so that reason is gone, and what is left is the price: each upstream read
/// that waits (every request waits for its response) registered a timer through a
/// read-write lock, a `BTreeMap` keyed by `u128` and two `Arc`s, and every timeout read the
/// clock to check on the clock thread. Measured with `--threads 1` (issue 19,
/// docs/benchmarks.md): 78,074 -> 76,513 user-space instructions per request, and the
/// clock thread never starts. `Some(0)`: every timeout of a second or more goes to tokio
/// (shorter ones, which the gateway does not set, stay on Pingora's timer); `None` keeps
/// Pingora's default when the workers steal.
pub fn fast_timeout_threshold(stealing: bool) -> Option<u64> {
    (!stealing)
        .then_some(0)
        .or(ServerConf::default().fast_timeout_to_tokio_threshold_seconds)
}

/// A Pingora server with every listener of `first`, each port bound now (a port in use
/// fails start-up).
pub fn build(
    first: &Compiled,
    shared: &Arc<Shared>,
    opts: &ServerOptions,
) -> Result<Server, ServerError> {
    let stealing = work_stealing(opts.threads);
    let conf = ServerConf {
        threads: opts.threads.max(1),
        work_stealing: stealing,
        fast_timeout_to_tokio_threshold_seconds: fast_timeout_threshold(stealing),
        grace_period_seconds: Some(opts.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(opts.shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(None::<pingora::server::configuration::Opt>, conf);
    let conf = server.configuration.clone();
    let mut any = false;
    let mut l4_bound: Vec<(Kind, u16)> = Vec::new();
    for l in &first.snapshot.listeners {
        let https = match l.protocol {
            ListenerProtocol::Http => false,
            ListenerProtocol::Https => true,
            other => {
                let Some(kind) = Kind::of(other) else {
                    continue;
                };
                if l4_bound.contains(&(kind, l.port)) {
                    continue;
                }
                l4_bound.push((kind, l.port));
                let addr = std::net::SocketAddr::new(opts.bind, l.port);
                let svc = L4Service::bind(kind, addr, shared.clone(), opts.l4.clone()).map_err(
                    |source| ServerError::Bind {
                        protocol: kind.label(),
                        port: l.port,
                        source,
                    },
                )?;
                let mut bg = background_service(&format!("{} {}", kind.label(), l.port), svc);
                bg.threads = Some(opts.threads.max(1));
                tracing::info!(listener = %l.name, %addr, protocol = kind.label(), "listener bound");
                server.add_service(bg);
                any = true;
                continue;
            }
        };
        let info = ListenerInfo {
            name: l.name.clone(),
            port: l.port,
            https,
        };
        let proxy = GatewayProxy::new(info, shared.clone());
        let mut app = pingora::proxy::http_proxy(&conf, proxy);
        // HTTP/2 connections idle this long are closed too (HTTP/1 ones by HeadDeadline).
        let mut http = pingora::apps::HttpServerOptions::default();
        http.h2_idle_timeout = Some(opts.downstream.keepalive);
        app.server_options = Some(http);
        let app = crate::downstream::HeadDeadline::new(app, opts.downstream, &l.name);
        let addr = std::net::SocketAddr::new(opts.bind, l.port);
        let tls = if https {
            let tls_err = |reason: String| ServerError::Tls {
                listener: l.name.clone(),
                reason,
            };
            let mut settings = TlsSettings::with_callbacks(Box::new(HandshakeCallback))
                .map_err(|e| tls_err(e.to_string()))?;
            settings.set_cert_resolver(Arc::new(SniResolver::new(shared.store.clone(), &l.name)));
            // Always installed: it asks for a certificate only while the current snapshot
            // says so for this listener.
            settings.set_client_cert_verifier(Arc::new(DynamicClientVerifier::new(
                shared.store.clone(),
                &l.name,
            )));
            settings.enable_h2();
            Some(crate::listener::Tls::new(
                settings.build(),
                opts.l4.handshake_timeout,
            ))
        } else {
            None
        };
        // The gateway's own accept loop: see crate::listener for why.
        let listener = crate::listener::bind(addr).map_err(|source| ServerError::Bind {
            protocol: if https { "HTTPS" } else { "HTTP" },
            port: l.port,
            source,
        })?;
        // Reads a PROXY header first while the current snapshot asks for one.
        let proxy = crate::listener::ProxyProtocol::new(
            shared.store.clone(),
            opts.l4.handshake_timeout,
            &l.name,
        );
        let svc = crate::listener::HttpListener::new(app, listener, l.port, tls, proxy);
        let mut bg = background_service(&format!("listener {}", l.name), svc);
        bg.threads = Some(opts.threads.max(1));
        tracing::info!(listener = %l.name, %addr, https, "listener bound");
        server.add_service(bg);
        any = true;
    }
    if !any {
        return Err(ServerError::NoListener);
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::{ServerConf, fast_timeout_threshold, work_stealing};

    /// Tokio's timer where each worker is a runtime of its own; Pingora's own where workers
    /// share one runtime (and so one tokio timer wheel behind one lock).
    #[test]
    fn timeouts_use_tokio_only_where_each_worker_has_its_own_timer() {
        assert_eq!(fast_timeout_threshold(false), Some(0));
        let pingora = ServerConf::default().fast_timeout_to_tokio_threshold_seconds;
        assert_eq!(fast_timeout_threshold(true), pingora);
        assert_ne!(pingora, Some(0));
    }

    /// One worker (the sidecar's `--threads 1`; 0 is taken as 1) runs on a current-thread
    /// runtime; more keep the multi-thread scheduler, which alone spreads the connections the
    /// accept loops spawn over the workers.
    #[test]
    fn only_more_than_one_worker_steals() {
        assert!(!work_stealing(0));
        assert!(!work_stealing(1));
        assert!(work_stealing(2));
        assert!(work_stealing(8));
    }
}
