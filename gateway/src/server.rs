//! Builds the Pingora server: for each HTTP or HTTPS listener of the first snapshot, one
//! [`crate::listener::HttpListener`] per worker (a background service of one thread, in
//! front of a Pingora proxy of its own; the first runs the gateway's own accept loop:
//! [`WORK_STEALING`] says why), TLS settings from [`crate::tls`]; one [`crate::l4::L4Service`]
//! (a background service with its own runtime) per TCP, UDP or TLSPassthrough port. TLSPassthrough
//! listeners with distinct hostnames may share a port: they share one service, which routes
//! by SNI across them.

use crate::l4::{Kind, L4Service};
use crate::proxy::{GatewayProxy, ListenerInfo, Shared};
use crate::state::Compiled;
use crate::tls::{DynamicClientVerifier, HandshakeCallback, SniResolver};
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use rustronaut_contract::snapshot::ListenerProtocol;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

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
    /// Seconds given to requests in flight once the listeners are closed.
    pub grace_period_seconds: u64,
    /// Seconds to wait for in-flight requests after that.
    pub shutdown_timeout_seconds: u64,
    /// Bounds of the L4 listeners.
    pub l4: crate::l4::L4Options,
    /// Request-head and keep-alive deadlines of HTTP(S) clients.
    pub downstream: crate::downstream::Deadlines,
}

/// Every worker thread is a tokio current-thread runtime of its own; none steals work from
/// another (`ServerConf::work_stealing` off).
///
/// An HTTP(S) listener with `--threads N` is N background services of one worker each,
/// every one with its own Pingora proxy, so its own upstream keep-alive pool; the first
/// accepts on the port and hands each connection to the worker serving the fewest
/// ([`crate::listener::Workers`]). nginx's worker model: a connection, the upstream
/// connections its requests reuse and the tasks that watch those while idle all stay on
/// one worker. Why not one service of N workers:
/// - with work stealing (tokio's multi-thread scheduler, Pingora's default), every wake-up
///   pays the scheduler's machinery and tasks migrate between workers; with `--threads 1`
///   that machinery alone cost 39.1 -> 34.8 µs per request at the maximum (issue 19);
/// - without it (Pingora's `NoStealRuntime`), the accept loop's `tokio::spawn` keeps every
///   connection on the accepting worker, and spreading them (`pingora_runtime::
///   current_handle()`, a random worker) does not keep a request's upstream work local:
///   Pingora's connector spawns the watcher of each released upstream connection on a
///   random worker too (`TransportConnector::release_stream`), and the pool is shared by
///   the workers, so most reuses woke another thread. Measured with two workers at a fixed
///   18,300 req/s: 50.6 µs of CPU per request against 42.1 with stealing (docs/benchmarks.md).
///
/// Measured with two workers on two cores shared with the load generator and the upstream
/// (`THREADS=2 LATENCY_ONLY=1 gateway/bench/run.sh`, docs/benchmarks.md, issue 19), against
/// the multi-thread scheduler in the same run: 36,400 -> 48,300 req/s at the maximum, 31.8
/// -> 24.4 µs of CPU per request; 40.1 -> 34.9 µs at a fixed 24,100 req/s; an idle gateway
/// wakes 5 times a second instead of 103 (Pingora's timer thread, below, never starts).
/// With one worker nothing changes. Each worker accepting on the socket itself, the first
/// version of this, measured as well as one worker: the first awake took every connection.
///
/// What it costs: a busy connection is not moved off its worker (the hand-over counts
/// connections, not their requests). L4 ports keep one service of N workers: their
/// connections are spread over the workers as they are accepted ([`crate::l4`]), as they
/// share their limits and have no pool.
pub const WORK_STEALING: bool = false;

/// Timeouts of a second or more (every timeout the gateway sets) use tokio's timer rather
/// than Pingora's own (`pingora_timeout::fast_timeout`).
///
/// Pingora's own timer is one shared wheel per process with a clock thread that wakes every
/// 10 ms; it exists so that the workers of one multi-thread runtime do not all queue on
/// tokio's timer, which in tokio 1.x is one wheel behind one mutex per runtime. Here every
/// worker is a runtime of its own ([`WORK_STEALING`]), with a timer of its own that no other
/// thread locks, so that reason is gone, and what is left is the price: each upstream read
/// that waits (every request waits for its response) registered a timer through a
/// read-write lock, a `BTreeMap` keyed by `u128` and two `Arc`s, and every timeout read the
/// clock to check on the clock thread. Measured with `--threads 1` (issue 19,
/// docs/benchmarks.md): 78,074 -> 76,513 user-space instructions per request, and the
/// clock thread never starts. Shorter timeouts, which the gateway does not set, stay on
/// Pingora's timer.
pub const FAST_TIMEOUT_TO_TOKIO_SECONDS: u64 = 0;

/// How the gateway stops, as [`pingora::server::Server::run`]'s shutdown signal.
///
/// Pingora's own (`UnixShutdownSignalWatch`) closes every listener the moment SIGTERM
/// arrives. In Kubernetes that is too early: the kubelet sends SIGTERM while the endpoint
/// controllers and every node's kube-proxy (or an external load balancer) are still taking
/// the pod out, which takes a second or more, and a connection sent to a closed port in
/// that window is refused: every rollout of an edge gateway failed requests. So, as
/// Envoy's drain and the usual `preStop` sleep do:
///
/// ```text
///  SIGTERM -> draining: /readyz 503, listeners still accept, every HTTP/1 answer closes its
///             connection (clients reconnect, to another pod once the endpoints moved)
///          -> after the drain delay (or at a second SIGTERM): Pingora's graceful stop:
///             listeners close, requests in flight get the grace period, then the
///             runtimes the shutdown timeout
///  SIGINT  -> fast stop, as Pingora's; SIGQUIT -> Pingora's graceful upgrade, as before
/// ```
///
/// `terminationGracePeriodSeconds` must cover drain delay + grace period + shutdown
/// timeout (5 + 5 + 10 s by default, Kubernetes gives 30).
pub struct DrainThenStop {
    /// Time the listeners keep accepting after SIGTERM.
    pub delay: Duration,
    /// Set at SIGTERM; readiness and the proxy read it ([`crate::proxy::Shared::draining`]).
    pub draining: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainThenStop {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot listen for shutdown signals; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
        }
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_delay_ms = self.delay.as_millis() as u64,
            "SIGTERM: draining, listeners close after the drain delay"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = term.recv() => tracing::info!("second SIGTERM: the drain delay is cut short"),
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("listeners close; requests in flight get the grace period");
        ShutdownSignal::GracefulTerminate
    }
}

/// A Pingora server with every listener of `first`, each port bound now (a port in use
/// fails start-up).
pub fn build(
    first: &Compiled,
    shared: &Arc<Shared>,
    opts: &ServerOptions,
) -> Result<Server, ServerError> {
    let conf = ServerConf {
        threads: opts.threads.max(1),
        work_stealing: WORK_STEALING,
        fast_timeout_to_tokio_threshold_seconds: Some(FAST_TIMEOUT_TO_TOKIO_SECONDS),
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
            Some(Arc::new(crate::listener::Tls::new(
                settings.build(),
                opts.l4.handshake_timeout,
            )))
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
        let proxy = Arc::new(crate::listener::ProxyProtocol::new(
            shared.store.clone(),
            opts.l4.handshake_timeout,
            &l.name,
        ));
        let workers = opts.threads.max(1);
        let apps = (0..workers)
            .map(|_| {
                let proxy = GatewayProxy::new(info.clone(), shared.clone());
                let mut app = pingora::proxy::http_proxy(&conf, proxy);
                // HTTP/2 connections idle this long are closed too (HTTP/1 ones by
                // HeadDeadline).
                let mut http = pingora::apps::HttpServerOptions::default();
                http.h2_idle_timeout = Some(opts.downstream.keepalive);
                app.server_options = Some(http);
                crate::downstream::HeadDeadline::new(app, opts.downstream, &l.name)
            })
            .collect();
        let set = crate::listener::Workers::new(apps);
        let mut listener = Some(listener);
        for worker in 0..workers {
            let svc = crate::listener::HttpListener::new(
                set.clone(),
                worker,
                listener.take(),
                l.port,
                tls.clone(),
                proxy.clone(),
            );
            let mut bg = background_service(&format!("{} {worker}", l.name), svc);
            bg.threads = Some(1);
            server.add_service(bg);
        }
        tracing::info!(listener = %l.name, %addr, https, workers, "listener bound");
        any = true;
    }
    if !any {
        return Err(ServerError::NoListener);
    }
    Ok(server)
}
