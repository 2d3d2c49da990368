//! `rustronaut-gateway`: parses flags and wires the library together.
//!
//! Threads: Pingora owns one runtime per listener; a separate thread runs a small Tokio
//! runtime with the admin server, the snapshot reloader and the active health checks.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{ArgGroup, Parser};
use rustronaut_contract::deploy::{self, flags};
use rustronaut_contract::eval::DecisionIds;
use rustronaut_contract::identity::cache::TokenCache;
use rustronaut_gateway::admin::{self, AdminState};
use rustronaut_gateway::balance::Health;
use rustronaut_gateway::jwks::{self, Fetcher, RemoteJwks};
use rustronaut_gateway::kube_source::{self, ObjectRef};
use rustronaut_gateway::metrics::Metrics;
use rustronaut_gateway::proxy::Shared;
use rustronaut_gateway::ratelimit::RateLimiter;
use rustronaut_gateway::reload::{Polled, ReloadError, Reloader, Store};
use rustronaut_gateway::telemetry::Telemetry;
use rustronaut_gateway::{health, server};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Command-line flags; each can also come from the environment variable named.
#[derive(Debug, Parser)]
#[command(name = "rustronaut-gateway", version, about = "Rustronaut gateway")]
#[command(group(ArgGroup::new("source").required(true).args(["snapshot", "config_from"])))]
struct Args {
    /// Snapshot file (JSON), polled for changes. Exactly one of --snapshot and --config-from.
    #[arg(long, env = "RUSTRONAUT_SNAPSHOT")]
    snapshot: Option<PathBuf>,
    /// Secret NAMESPACE/NAME holding the snapshot under the key `snapshot.json`, watched
    /// through the Kubernetes API (in-cluster ServiceAccount, or KUBECONFIG outside).
    #[arg(long = flags::long(flags::CONFIG_FROM), env = "RUSTRONAUT_CONFIG_FROM")]
    config_from: Option<ObjectRef>,
    /// ConfigMap NAMESPACE/NAME where this pod reports the config version it loaded
    /// (`data[POD_NAME]`), read by the operator for the Gateway's status.
    #[arg(long = flags::long(flags::REPORT_STATUS), env = "RUSTRONAUT_REPORT_STATUS")]
    report_status: Option<ObjectRef>,
    /// This pod's name (the Downward API's metadata.name); required by --report-status.
    #[arg(long, env = deploy::POD_NAME_ENV)]
    pod_name: Option<String>,
    /// Most header fields in one request (more: 431).
    #[arg(long, env = "RUSTRONAUT_MAX_HEADERS", default_value_t = 100)]
    max_headers: usize,
    /// Most bytes of header names and values in one request (more: 431).
    #[arg(long, env = "RUSTRONAUT_MAX_HEADER_BYTES", default_value_t = 65536)]
    max_header_bytes: usize,
    /// Time a client has to send a whole request head, from accept (HTTP/1) or from the
    /// first byte of a later request on a kept-alive connection; then 408 and closed.
    /// 10 s: nginx's client_header_timeout is 60 s, but no real client trickles a head.
    #[arg(long, env = "RUSTRONAUT_HEADER_TIMEOUT_MS", default_value_t = 10000)]
    header_timeout_ms: u64,
    /// Time an idle keep-alive connection waits for its next request before it is closed
    /// (HTTP/1 and HTTP/2). 60 s, Pingora's own HTTP/1 default.
    #[arg(long, env = "RUSTRONAUT_KEEPALIVE_TIMEOUT_MS", default_value_t = 60000)]
    keepalive_timeout_ms: u64,
    /// Largest request body forwarded, in bytes: a larger Content-Length gets 413 before
    /// anything is forwarded, a chunked body that grows past it is cut off.
    #[arg(long, env = "RUSTRONAUT_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: u64,
    /// Forward client headers whose name contains `_` to upstreams. Off by default (as in
    /// nginx): CGI/WSGI/PHP servers read `X_Api_Key` as `X-Api-Key`, so an upstream could act
    /// on a header the gateway never looked at. Names that read as the gateway's own
    /// `x-rustronaut-*` headers are dropped either way.
    #[arg(long, env = "RUSTRONAUT_ALLOW_UNDERSCORE_HEADERS")]
    allow_underscore_headers: bool,
    /// Traces: one span per request (docs/gateway.md, Tracing).
    #[command(flatten)]
    otlp: rustronaut_otlp::Otlp,
    /// Admin listener (/healthz, /readyz, /metrics).
    #[arg(
        long = flags::long(flags::ADMIN_LISTEN),
        env = "RUSTRONAUT_ADMIN_LISTEN",
        default_value_t = SocketAddr::from(([0, 0, 0, 0], deploy::ADMIN_PORT))
    )]
    admin_listen: SocketAddr,
    /// Address the snapshot's listeners bind to (their ports come from the snapshot).
    #[arg(long, env = "RUSTRONAUT_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// How often the snapshot file is checked for changes, in milliseconds.
    #[arg(long, env = "RUSTRONAUT_POLL_INTERVAL_MS", default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Accept loopback upstream addresses (127.0.0.0/8, ::1) in an edge snapshot. For tests
    /// and local development only, where every upstream runs on the host's loopback: in a
    /// cluster an edge gateway's loopback is its own pod (admin port, own listeners). A
    /// sidecar's snapshot (`sidecar: true`) may always name them.
    #[arg(long, env = "RUSTRONAUT_ALLOW_LOOPBACK_UPSTREAMS")]
    allow_loopback_upstreams: bool,
    /// Worker threads per listener.
    #[arg(long = flags::long(flags::THREADS), env = "RUSTRONAUT_THREADS", default_value_t = 2)]
    threads: usize,
    /// Upstream connect timeout, in milliseconds.
    #[arg(long, env = "RUSTRONAUT_CONNECT_TIMEOUT_MS", default_value_t = 3000)]
    connect_timeout_ms: u64,
    /// How long an upstream address stays out of rotation after a connect failure, seconds.
    #[arg(long, env = "RUSTRONAUT_EJECT_SECONDS", default_value_t = 10)]
    eject_seconds: u64,
    /// Most upstream addresses tried per request (only connect failures are retried).
    #[arg(long, env = "RUSTRONAUT_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: usize,
    /// Verified JWTs kept in the cache.
    #[arg(long, env = "RUSTRONAUT_TOKEN_CACHE_SIZE", default_value_t = TokenCache::DEFAULT_CAPACITY)]
    token_cache_size: usize,
    /// Extra CA certificates (PEM) trusted for remote JWKS endpoints and OIDC providers, besides
    /// the OS store.
    #[arg(long, env = "RUSTRONAUT_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Seconds between SIGTERM and the listeners closing: readiness reports draining at
    /// once and HTTP/1 answers close their connections, while load balancers and
    /// kube-proxy take the pod out (a second SIGTERM cuts it short; 0 closes at once).
    #[arg(
        long = flags::long(flags::DRAIN_DELAY_SECONDS),
        env = "RUSTRONAUT_DRAIN_DELAY_SECONDS",
        default_value_t = 5
    )]
    drain_delay_seconds: u64,
    /// Seconds given to requests in flight once the listeners are closed.
    #[arg(long, env = "RUSTRONAUT_GRACE_PERIOD_SECONDS", default_value_t = 5)]
    grace_period_seconds: u64,
    /// Time a new L4 connection has to send its PROXY header and ClientHello, or to complete
    /// its TLS handshake, in milliseconds.
    #[arg(
        long,
        env = "RUSTRONAUT_L4_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    l4_handshake_timeout_ms: u64,
    /// A UDP flow silent in both directions this long ends, in milliseconds.
    #[arg(long, env = "RUSTRONAUT_UDP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    udp_idle_timeout_ms: u64,
    /// Copy buffer per direction of a spliced L4 TCP connection, in bytes.
    #[arg(
        long,
        env = "RUSTRONAUT_L4_COPY_BUFFER_BYTES",
        default_value_t = 65_536
    )]
    l4_copy_buffer_bytes: usize,
    /// A spliced L4 TCP connection silent in both directions this long is closed, in
    /// milliseconds.
    #[arg(
        long,
        env = "RUSTRONAUT_L4_IDLE_TIMEOUT_MS",
        default_value_t = 3_600_000
    )]
    l4_idle_timeout_ms: u64,
    /// Most TCP connections open at once per TCP or TLSPassthrough port; more are closed on
    /// accept (logged and counted as refused, reason ConnectionLimit).
    #[arg(long, env = "RUSTRONAUT_L4_MAX_CONNECTIONS", default_value_t = 20_000)]
    l4_max_connections: usize,
    /// Most TCP connections open at once per client (IPv4 address, IPv6 /64) per TCP or
    /// TLSPassthrough port, so one host cannot take the whole --l4-max-connections; more are
    /// closed at once (logged and counted as refused, reason ClientConnectionLimit).
    #[arg(
        long,
        env = "RUSTRONAUT_L4_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 512
    )]
    l4_max_connections_per_client: usize,
    /// Most UDP flows per UDP listener; new flows beyond it are dropped.
    #[arg(long, env = "RUSTRONAUT_UDP_MAX_FLOWS", default_value_t = 10_000)]
    udp_max_flows: usize,
    /// Most UDP flows per client (IPv4 address, IPv6 /64) per UDP listener, so one host
    /// cannot fill the flow table; its new flows beyond it are dropped.
    #[arg(
        long,
        env = "RUSTRONAUT_UDP_MAX_FLOWS_PER_CLIENT",
        default_value_t = 256
    )]
    udp_max_flows_per_client: usize,
    /// The tunnel hub's stream endpoint (HOST:PORT, resolved at each connection), through
    /// which site upstreams of TCP and TLSPassthrough Resources are reached.
    #[arg(
        long = flags::long(flags::TUNNEL_STREAM),
        env = "RUSTRONAUT_TUNNEL_STREAM",
        requires = "tunnel_token_file"
    )]
    tunnel_stream: Option<String>,
    /// File holding the bearer token for the hub's stream endpoint (first non-empty line;
    /// re-read when it changes).
    #[arg(
        long = flags::long(flags::TUNNEL_TOKEN_FILE),
        env = "RUSTRONAUT_TUNNEL_TOKEN_FILE",
        requires = "tunnel_stream"
    )]
    tunnel_token_file: Option<PathBuf>,
    /// Seconds the proxy runtimes may take to stop after the grace period.
    #[arg(
        long,
        env = "RUSTRONAUT_SHUTDOWN_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    shutdown_timeout_seconds: u64,
}

#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOC: rustronaut_alloc_count::Counting = rustronaut_alloc_count::Counting;

/// mimalloc instead of glibc's malloc: a proxy allocates and frees many small, short-lived
/// objects per request (headers, the request state), and in a profile of `make
/// bench-gateway` glibc's malloc, free and their consolidation took about 11 % of the
/// gateway's CPU. Measured in docs/benchmarks.md (issue 19). The counting build keeps the
/// system allocator it counts.
#[cfg(not(feature = "count-allocs"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    #[cfg(feature = "count-allocs")]
    rustronaut_alloc_count::report_from_env();
    // Held to the end of main: dropping it writes the lines still pending.
    let _log = rustronaut_gateway::logs::init(rustronaut_gateway::logs::queue_bytes(args.threads))
        .context("starting the log thread")?;
    // One crypto provider for the whole process (ring), installed before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let store = Arc::new(Store::default());
    let remote = Arc::new(RemoteJwks::default());
    let fetcher = Fetcher::new(
        args.jwks_ca_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .as_deref(),
    )?;
    let metrics = Arc::new(Metrics::new());
    let health_state = Arc::new(Health::default());
    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        metrics: metrics.clone(),
        listening: Default::default(),
        draining: Default::default(),
    });

    // The admin runtime: admin server, reloader, health checks.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rustronaut-admin")
        .enable_all()
        .build()
        .context("failed to start the admin runtime")?;
    let (versions_tx, versions_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let mut first = Some(first_tx);
    let mut applied = move |result: Result<Polled, ReloadError>| match result {
        Ok(Polled::Applied(version)) => {
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            versions_tx.send_replace(Some(version));
        }
        Ok(Polled::Unchanged) => {}
        Err(e) => {
            tracing::error!(error = %e, "snapshot not applied; the last good snapshot keeps serving")
        }
    };
    let needs_client = args.config_from.is_some() || args.report_status.is_some();
    let client = if needs_client {
        Some(runtime.block_on(kube_source::client())?)
    } else {
        None
    };
    let source = match (&args.snapshot, &args.config_from, &client) {
        (Some(path), _, _) => {
            let mut reloader = Reloader::new(path.clone(), store.clone(), metrics.clone())
                .allow_loopback_upstreams(args.allow_loopback_upstreams);
            let poll = Duration::from_millis(args.poll_interval_ms.max(50));
            runtime.spawn(async move {
                loop {
                    applied(reloader.poll());
                    tokio::time::sleep(poll).await;
                }
            });
            path.display().to_string()
        }
        (None, Some(secret), Some(client)) => {
            let origin = format!("Secret {secret}");
            let mut reloader = Reloader::for_source(origin.clone(), store.clone(), metrics.clone())
                .allow_loopback_upstreams(args.allow_loopback_upstreams);
            let (tx, mut rx) = tokio::sync::mpsc::channel(4);
            runtime.spawn(kube_source::watch_secret(
                client.clone(),
                secret.clone(),
                tx,
            ));
            runtime.spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    applied(reloader.offer(bytes));
                }
            });
            origin
        }
        _ => anyhow::bail!("one of --snapshot and --config-from is required"),
    };
    if let (Some(cm), Some(client)) = (&args.report_status, &client) {
        let pod = args
            .pod_name
            .clone()
            .context("--report-status needs the pod name (POD_NAME or --pod-name)")?;
        runtime.spawn(kube_source::report_status(
            client.clone(),
            cm.clone(),
            pod,
            versions_rx,
        ));
    }
    runtime.spawn(health::run(
        store.clone(),
        health_state.clone(),
        metrics.clone(),
    ));
    // OIDC discovery and token exchange trust the same roots as remote JWKS.
    let oidc = Arc::new(rustronaut_gateway::oidc::Oidc::new(fetcher.clone()));
    // Workload identity: the cluster's ServiceAccount issuer, through the same client as
    // --config-from (fails closed without one).
    runtime.spawn(rustronaut_gateway::service_accounts::run(
        store.clone(),
        remote.clone(),
        client.clone(),
        metrics.clone(),
    ));
    runtime.spawn(jwks::run(
        store.clone(),
        remote.clone(),
        fetcher,
        metrics.clone(),
    ));
    let admin_addr = args.admin_listen;
    let admin_task = {
        let state = admin_state.clone();
        let mut stop = stop_rx.clone();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = admin::serve(admin_addr, state, shutdown).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        })
    };
    tracing::info!(admin = %admin_addr, source = %source, "waiting for a valid snapshot");
    first_rx
        .recv()
        .context("the reloader stopped before a snapshot was loaded")?;
    let first = store
        .current()
        .context("no snapshot after the first load")?;

    // The OTLP exporter's blocking HTTP client must be built outside any Tokio runtime.
    let telemetry = match Telemetry::otlp(&args.otlp).context("OTLP export")? {
        Some(t) => {
            tracing::info!(
                endpoint = args.otlp.endpoint.as_deref().unwrap_or_default(),
                "exporting request spans over OTLP/HTTP"
            );
            Some(Arc::new(t))
        }
        None => None,
    };
    let nonce = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let tunnel = match (&args.tunnel_stream, &args.tunnel_token_file) {
        (Some(hub), Some(token)) => Some(Arc::new(rustronaut_gateway::tunnel::TunnelClient::new(
            hub.clone(),
            token.clone(),
            // Opening includes the hub asking the connector, which dials the target.
            Duration::from_millis(args.connect_timeout_ms).max(Duration::from_secs(10)),
        ))),
        _ => None,
    };
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics,
        limiter: RateLimiter::default(),
        health: health_state,
        inflight: Default::default(),
        cache: TokenCache::new(args.token_cache_size.max(1)).context("token cache")?,
        ids: DecisionIds::new(nonce),
        remote,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        eject_for: Duration::from_secs(args.eject_seconds),
        max_attempts: args.max_attempts.max(1),
        telemetry: telemetry.clone(),
        header_limits: rustronaut_gateway::framing::Limits {
            max_headers: args.max_headers.max(1),
            max_header_bytes: args.max_header_bytes.max(1024),
            max_body_bytes: args.max_body_bytes,
        },
        allow_underscore_headers: args.allow_underscore_headers,
        tunnel,
        oidc,
        draining: admin_state.draining.clone(),
    });
    let opts = server::ServerOptions {
        bind: args.bind_address,
        threads: args.threads,
        grace_period_seconds: args.grace_period_seconds,
        shutdown_timeout_seconds: args.shutdown_timeout_seconds,
        l4: rustronaut_gateway::l4::L4Options {
            handshake_timeout: Duration::from_millis(args.l4_handshake_timeout_ms.max(1)),
            udp_idle_timeout: Duration::from_millis(args.udp_idle_timeout_ms.max(10)),
            udp_max_flows: args.udp_max_flows.max(1),
            udp_max_flows_per_client: args.udp_max_flows_per_client.max(1),
            copy_buffer: args.l4_copy_buffer_bytes.clamp(1024, 1 << 20),
            idle_timeout: Duration::from_millis(args.l4_idle_timeout_ms.max(10)),
            max_connections: args.l4_max_connections.max(1),
            max_connections_per_client: args.l4_max_connections_per_client.max(1),
            ..Default::default()
        },
        downstream: rustronaut_gateway::downstream::Deadlines {
            header: Duration::from_millis(args.header_timeout_ms.max(10)),
            keepalive: Duration::from_millis(args.keepalive_timeout_ms.max(1000)),
        },
    };
    let mut pingora = server::build(&first, &shared, &opts)?;
    drop(first);
    // Every port is bound and listening: a connection from now on waits in the backlog for
    // the accept loops `run` starts, so the gateway may be reported ready.
    admin_state.listening.store(true, Ordering::Relaxed);
    pingora.bootstrap();
    tracing::info!("serving");
    // Blocks until SIGTERM/SIGINT, the drain delay and the graceful shutdown complete
    // (server::DrainThenStop: readiness turns false at the signal, the listeners close later).
    pingora.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(server::DrainThenStop {
            delay: Duration::from_secs(args.drain_delay_seconds),
            draining: admin_state.draining.clone(),
        }),
    });

    admin_state.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = runtime.block_on(admin_task);
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(t) = &telemetry {
        t.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}
