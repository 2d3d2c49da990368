//! The hub: terminates WireGuard from site connectors and opens streams to their sites for
//! gateways.
//!
//! ```text
//!              UDP :51820                                 per site (one task each)
//!  connectors ───────────▶ ingress ── classify ──▶ Link (boringtun Tunn + smoltcp) ◀─┐
//!                          (one task: MAC check,      │ control port: allow list   │ Connect
//!                           rate limit, key/index     ▼ pushed to the connector     │ (site's
//!                           lookup)                                                 │ forwarder)
//!  gateways ──TCP :4200──▶ stream endpoint: token check, hub allow list, ───────────┘
//!                          forward request, then splice bytes
//!  Prometheus, operator ──▶ admin :9090 (/metrics, /healthz, /status)
//! ```
//!
//! Sites live in an immutable routing snapshot ([`ArcSwap`]) that only the reload task
//! replaces; the packet path and the stream endpoint read it without locks. A configuration
//! change that adds or removes sites, or changes a site's key or address, restarts only those
//! sites' links; a change of allowed targets is applied in place and pushed to the connector,
//! and other sites' tunnels never notice.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;
use tokio::io::{AsyncWriteExt, copy_bidirectional_with_sizes};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admin::{self, Counter, PeerStatus, StatusSource};
use crate::allow::{AllowList, Host};
use crate::auth::{AuthError, Tokens};
use crate::config::{self, ConfigError, HubConfig, ValidHub, ValidSite};
use crate::control::{self, TargetSet};
use crate::engine::{self, Datagram, DatagramSender, LinkHandle};
use crate::keys::{self, KeyError, PrivateKey, PublicKey};
use crate::link::{COPY_BUFFER, Link, LinkConfig, RejectReason};
use crate::proto::{self, ForwardRequest, OpenRequest, Response, Status};
use crate::udp;

/// Handshakes per second the hub answers before demanding cookies (boringtun's default
/// for its device, doubled because the per-peer check counts each handshake again).
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// Time allowed for a gateway's request header.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a tunnel connection to a connector.
const TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the connector's answer (it may spend its own connect timeout).
const FORWARD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the configuration and token files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long gateway streams in flight may finish after shutdown before they are ended.
const STREAM_GRACE: Duration = Duration::from_secs(2);
/// Messages (a datagram, or a coalesced run of them) queued per site before the ingress drops.
const SITE_QUEUE: usize = 1024;
/// Bytes queued per site before the ingress drops: about 1,000 full-size datagrams, the bound
/// the queue had when a message was one datagram.
const SITE_QUEUE_BYTES: usize = 1536 * 1024;

/// Errors that stop the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The private key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The token file could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A listener could not be bound.
    #[error("failed to bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The admin endpoint failed.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// Where the ingress sends a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A handshake initiation from this key.
    Key(PublicKey),
    /// A message for the session index (upper 24 bits: the site's link index).
    Index(u32),
    /// Answer with the cookie reply of this length (written into the reply buffer).
    Reply(usize),
    /// Drop it.
    Drop(RejectReason),
}

/// The hub's packet entry point: checks MACs and the handshake rate limit, and finds which
/// site a datagram belongs to. Synchronous and free of I/O, so it is fuzzed directly.
pub struct Ingress {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
}

impl Ingress {
    /// The entry point for a hub with this key.
    pub fn new(key: &PrivateKey) -> Self {
        let private = key.to_x25519();
        let public = x25519::PublicKey::from(&private);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Self {
            private,
            public,
            limiter,
        }
    }

    /// The rate limiter every site's tunnel shares.
    pub fn limiter(&self) -> Arc<RateLimiter> {
        self.limiter.clone()
    }

    /// Resets the handshake counter; call once a second.
    pub fn reset_rate_limit(&self) {
        self.limiter.reset_count();
    }

    /// Classifies one datagram. `reply` must hold at least 64 bytes (a cookie reply).
    pub fn classify(&self, from: IpAddr, datagram: &[u8], reply: &mut [u8]) -> Verdict {
        match self.limiter.verify_packet(Some(from), datagram, reply) {
            Ok(Packet::HandshakeInit(p)) => {
                match parse_handshake_anon(&self.private, &self.public, &p) {
                    Ok(half) => Verdict::Key(PublicKey::from(half.peer_static_public)),
                    Err(_) => Verdict::Drop(RejectReason::Unauthenticated),
                }
            }
            Ok(Packet::HandshakeResponse(p)) => Verdict::Index(p.receiver_idx >> 8),
            Ok(Packet::PacketCookieReply(p)) => Verdict::Index(p.receiver_idx >> 8),
            Ok(Packet::PacketData(p)) => Verdict::Index(p.receiver_idx >> 8),
            Err(TunnResult::WriteToNetwork(cookie)) => Verdict::Reply(cookie.len()),
            Err(TunnResult::Err(e)) => Verdict::Drop(match e {
                boringtun::noise::errors::WireGuardError::InvalidMac => {
                    RejectReason::Unauthenticated
                }
                boringtun::noise::errors::WireGuardError::UnderLoad => RejectReason::UnderLoad,
                _ => RejectReason::Malformed,
            }),
            Err(_) => Verdict::Drop(RejectReason::Other),
        }
    }
}

/// One site at run time.
struct Site {
    cfg: ValidSite,
    index: u32,
    link: LinkHandle,
    datagrams: DatagramSender,
    targets: watch::Sender<TargetSet>,
    allow: ArcSwap<AllowList>,
    removed: CancellationToken,
}

#[derive(Default)]
struct Routes {
    by_key: HashMap<PublicKey, Arc<Site>>,
    by_index: HashMap<u32, Arc<Site>>,
    by_name: HashMap<String, Arc<Site>>,
}

/// Counters of the hub.
#[derive(Default)]
struct Counters {
    requests: [AtomicU64; 10],
    unknown_peer: AtomicU64,
    ingress_dropped: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

const STATUSES: [Status; 10] = [
    Status::Ok,
    Status::Unauthorized,
    Status::BadRequest,
    Status::UnknownSite,
    Status::SiteUnavailable,
    Status::DeniedByHub,
    Status::DeniedBySite,
    Status::TargetUnreachable,
    Status::Timeout,
    Status::Internal,
];

struct Shared {
    key: PrivateKey,
    socket: Arc<udp::Socket>,
    routes: ArcSwap<Routes>,
    tokens: ArcSwap<Tokens>,
    counters: Counters,
    control_port: u16,
    tunnel_address: IpAddr,
    limiter: Arc<RateLimiter>,
    next_index: AtomicU64,
    /// Set at shutdown while the hub still serves through its drain delay (`/readyz` fails).
    draining: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn count(&self, status: Status) {
        self.counters.requests[status.code() as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn start_site(&self, cfg: &ValidSite) -> Arc<Site> {
        let index = (self.next_index.fetch_add(1, Ordering::Relaxed) as u32) & 0x00ff_ffff;
        let mut link = Link::new(LinkConfig {
            private_key: self.key.clone(),
            peer_key: cfg.public_key,
            local_ip: self.tunnel_address,
            peer_ip: cfg.tunnel_address,
            keepalive: None,
            index,
            rate_limiter: Some(self.limiter.clone()),
            endpoint: None,
        })
        .expect("validated: one address family");
        let (accept_tx, mut accept) = mpsc::channel(4);
        link.listen(self.control_port, accept_tx);
        let (targets, _) = watch::channel(TargetSet {
            generation: 1,
            targets: cfg.targets.clone(),
            advertised_cidrs: cfg.advertised_cidrs.clone(),
        });
        let (dg_tx, dg_rx) = engine::datagram_queue(SITE_QUEUE, SITE_QUEUE_BYTES);
        let handle = engine::spawn(link, self.socket.clone(), dg_rx, None, cfg.name.clone());
        let removed = CancellationToken::new();
        let site = Arc::new(Site {
            cfg: cfg.clone(),
            index,
            link: handle,
            datagrams: dg_tx,
            targets,
            allow: ArcSwap::from_pointee(cfg.allow.clone()),
            removed: removed.clone(),
        });
        let targets_rx = site.targets.subscribe();
        let name = cfg.name.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    s = accept.recv() => match s { Some(s) => s, None => break },
                    _ = removed.cancelled() => break,
                };
                let rx = targets_rx.clone();
                let name = name.clone();
                let removed = removed.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        r = control::serve(stream, rx) => match r {
                            Ok(()) => tracing::debug!(site = name, "control channel closed"),
                            Err(e) => tracing::info!(site = name, error = %e, "control channel ended"),
                        },
                        _ = removed.cancelled() => {}
                    }
                });
            }
        });
        tracing::info!(site = cfg.name, public_key = %cfg.public_key, tunnel_address = %cfg.tunnel_address, "site configured");
        site
    }

    /// Applies a validated configuration: restarts only what changed.
    fn apply(&self, hub: &ValidHub) {
        let old = self.routes.load();
        let mut routes = Routes::default();
        for cfg in &hub.sites {
            let names = cfg.targets.iter().any(|t| {
                t.host
                    .as_deref()
                    .is_some_and(|h| !matches!(Host::parse(h), Ok(Host::Ip(_))))
            });
            if names && cfg.advertised_cidrs.is_empty() {
                tracing::warn!(
                    site = cfg.name,
                    "the site allows target names but has no advertised_cidrs: its connector dials a name only at addresses inside them, so no name is reachable"
                );
            }
            let reuse = old.by_name.get(&cfg.name).filter(|s| {
                s.cfg.public_key == cfg.public_key
                    && s.cfg.tunnel_address == cfg.tunnel_address
                    && s.cfg.forward_port == cfg.forward_port
            });
            let site = match reuse {
                Some(site) => {
                    let changed = {
                        let t = site.targets.borrow();
                        t.targets != cfg.targets || t.advertised_cidrs != cfg.advertised_cidrs
                    };
                    if changed {
                        site.allow.store(Arc::new(cfg.allow.clone()));
                        site.targets.send_modify(|t| {
                            t.generation += 1;
                            t.targets = cfg.targets.clone();
                            t.advertised_cidrs = cfg.advertised_cidrs.clone();
                        });
                        tracing::info!(
                            site = cfg.name,
                            generation = site.targets.borrow().generation,
                            "allowed targets changed"
                        );
                    }
                    site.clone()
                }
                None => self.start_site(cfg),
            };
            routes.by_key.insert(site.cfg.public_key, site.clone());
            routes.by_index.insert(site.index, site.clone());
            routes.by_name.insert(site.cfg.name.clone(), site);
        }
        for (name, site) in &old.by_name {
            let kept = routes
                .by_name
                .get(name)
                .is_some_and(|s| Arc::ptr_eq(s, site));
            if !kept {
                tracing::info!(site = name, "site removed or replaced; closing its tunnel");
                site.removed.cancel();
            }
        }
        self.routes.store(Arc::new(routes));
    }
}

/// Binds the UDP endpoint: dual-stack where the host has IPv6, IPv4 otherwise.
async fn bind_udp(port: u16) -> Result<UdpSocket, HubError> {
    let v6 = SocketAddr::from(([0u16; 8], port));
    match UdpSocket::bind(v6).await {
        Ok(s) => Ok(s),
        Err(_) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], port));
            UdpSocket::bind(v4).await.map_err(|source| HubError::Bind {
                what: "the WireGuard UDP port",
                addr: v4,
                source,
            })
        }
    }
}

fn read_if_changed(path: &Path, last: &mut Option<Vec<u8>>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if last.as_ref() != Some(&bytes) => {
            *last = Some(bytes.clone());
            Some(bytes)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "failed to re-read file; keeping the last good version");
            None
        }
    }
}

/// A running hub.
pub struct Hub {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    raw: HubConfig,
    stream: TcpListener,
    admin: TcpListener,
    ingress: Ingress,
}

impl Hub {
    /// Loads the configuration file, the key and the tokens, and binds every port.
    pub async fn from_file(path: &Path) -> Result<Self, HubError> {
        let raw: HubConfig = config::load_file(path)?;
        let mut hub = Self::new(raw).await?;
        hub.config_path = Some(path.to_owned());
        Ok(hub)
    }

    /// Same, from a configuration value (no reloads of the configuration; tokens still are).
    pub async fn new(raw: HubConfig) -> Result<Self, HubError> {
        let valid = raw.validate()?;
        let key = if raw.private_key_group_readable {
            keys::load_private_key_group_readable(&raw.private_key_file)?
        } else {
            keys::load_private_key(&raw.private_key_file)?
        };
        let tokens = Tokens::load(&raw.token_file)?;
        let socket = Arc::new(udp::Socket::new(bind_udp(raw.listen_port).await?));
        let stream = TcpListener::bind(raw.stream_listen)
            .await
            .map_err(|source| HubError::Bind {
                what: "the stream endpoint",
                addr: raw.stream_listen,
                source,
            })?;
        let admin = admin::bind(raw.admin_listen).await?;
        let ingress = Ingress::new(&key);
        let shared = Arc::new(Shared {
            key: key.clone(),
            socket,
            routes: ArcSwap::from_pointee(Routes::default()),
            tokens: ArcSwap::from_pointee(tokens),
            counters: Counters::default(),
            control_port: raw.control_port,
            tunnel_address: raw.tunnel_address,
            limiter: ingress.limiter(),
            draining: Default::default(),
            next_index: AtomicU64::new(u64::from(
                crate::backoff::jitter_seed() as u32 & 0x00ff_ffff,
            )),
        });
        tracing::info!(public_key = %key.public_key(), listen_port = raw.listen_port, stream = %raw.stream_listen, admin = %raw.admin_listen, "hub starting");
        shared.apply(&valid);
        Ok(Self {
            shared,
            config_path: None,
            raw,
            stream,
            admin,
            ingress,
        })
    }

    /// The hub's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.key.public_key()
    }

    /// Runs until `shutdown` is cancelled, and `drain` after it: the kubelet's SIGTERM comes
    /// while the endpoints and kube-proxy still send this replica's stream Service new
    /// gateway connections, which a closed port would refuse (a site request failing with
    /// it). So `/readyz` fails at once and every port keeps serving for `drain`; then the
    /// tasks stop and streams in flight get [`STREAM_GRACE`].
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) {
        let Hub {
            shared,
            config_path,
            raw,
            stream,
            admin,
            ingress,
        } = self;
        let source: Arc<dyn StatusSource> = Arc::new(HubStatus(shared.clone()));
        let streams: StreamTasks = Arc::default();
        let tasks = [
            tokio::spawn(run_ingress(shared.clone(), ingress)),
            tokio::spawn(run_stream_endpoint(shared.clone(), stream, streams.clone())),
            tokio::spawn(admin::serve(admin, source)),
            tokio::spawn(run_reloader(shared.clone(), config_path, raw)),
        ];
        shutdown.cancelled().await;
        if !drain.is_zero() {
            shared.draining.store(true, Ordering::Relaxed);
            tracing::info!(
                drain_delay_s = drain.as_secs(),
                "hub draining: not ready, still serving"
            );
            tokio::time::sleep(drain).await;
        }
        tracing::info!("hub shutting down");
        for t in &tasks {
            t.abort();
        }
        // Streams in flight get a moment to finish, then are ended, and both are awaited:
        // each stream's span closes here, before the caller flushes the trace exporter (a
        // stream still running when the runtime is dropped would close its span after the
        // flush, and the span would be lost).
        let mut streams = std::mem::take(&mut *streams.lock().unwrap_or_else(|p| p.into_inner()));
        let finished = tokio::time::timeout(STREAM_GRACE, async {
            while streams.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            streams.abort_all();
            while streams.join_next().await.is_some() {}
        }
        for site in shared.routes.load().by_name.values() {
            site.removed.cancel();
        }
        shared.routes.store(Arc::new(Routes::default()));
    }
}

/// Reads the WireGuard port and hands each datagram to its site's link task. A receive may
/// carry several datagrams of one sender (UDP GRO, [`crate::udp`]); each is classified on
/// its own, and consecutive ones for the same site travel to it as one message.
async fn run_ingress(shared: Arc<Shared>, ingress: Ingress) {
    let mut buf = vec![0u8; 65_536];
    let mut reply = [0u8; 256];
    let mut reset = tokio::time::interval(Duration::from_secs(1));
    loop {
        let received = tokio::select! {
            r = shared.socket.recv(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            },
            _ = reset.tick() => {
                ingress.reset_rate_limit();
                continue;
            }
        };
        let from = received.from;
        let routes = shared.routes.load();
        // The run of datagrams for one site being collected: (site, start, end).
        let mut run: Option<(&Arc<Site>, usize, usize)> = None;
        let mut start = 0;
        while start < received.len {
            let end = (start + received.stride).min(received.len);
            let datagram = &buf[start..end];
            let site = match ingress.classify(from.ip(), datagram, &mut reply) {
                Verdict::Key(key) => routes.by_key.get(&key).or_else(|| {
                    tracing::debug!(%from, public_key = %key, "handshake from an unknown key");
                    None
                }),
                Verdict::Index(idx) => routes.by_index.get(&idx),
                Verdict::Reply(len) => {
                    let _ = shared.socket.send_to(&reply[..len], from).await;
                    start = end;
                    continue;
                }
                Verdict::Drop(reason) => {
                    tracing::trace!(%from, reason = reason.as_str(), "dropped a datagram");
                    shared
                        .counters
                        .ingress_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    start = end;
                    continue;
                }
            };
            let Some(site) = site else {
                shared.counters.unknown_peer.fetch_add(1, Ordering::Relaxed);
                start = end;
                continue;
            };
            run = match run {
                Some((s, a, b)) if Arc::ptr_eq(s, site) && b == start => Some((s, a, end)),
                other => {
                    if let Some((s, a, b)) = other {
                        deliver(&shared, s, &buf[a..b], from, received.stride);
                    }
                    Some((site, start, end))
                }
            };
            start = end;
        }
        if let Some((s, a, b)) = run {
            deliver(&shared, s, &buf[a..b], from, received.stride);
        }
    }
}

/// Queues datagrams (`stride` bytes each but the last) for a site's link; a full queue drops
/// them (counted), as a full socket buffer would.
fn deliver(shared: &Shared, site: &Site, data: &[u8], from: SocketAddr, stride: usize) {
    let d = Datagram {
        data: data.to_vec(),
        from,
        stride,
    };
    if let Err(d) = site.datagrams.try_send(d) {
        let lost = d.datagrams().count();
        shared
            .counters
            .ingress_dropped
            .fetch_add(lost as u64, Ordering::Relaxed);
    }
}

/// The gateway streams in flight, so that shutdown can end them before it returns.
type StreamTasks = Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>;

async fn run_stream_endpoint(shared: Arc<Shared>, listener: TcpListener, streams: StreamTasks) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "stream endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        // One span per gateway stream, for its whole life (exported with --otlp-endpoint):
        // which site and target, and how it ended (the same status the metrics count).
        let span = tracing::info_span!(
            "stream",
            %peer,
            site = tracing::field::Empty,
            target = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let mut set = streams.lock().unwrap_or_else(|p| p.into_inner());
        // Reap what has finished, so the set holds only streams in flight.
        while set.try_join_next().is_some() {}
        set.spawn(
            async move {
                let status = handle_gateway(&shared, tcp, peer).await;
                tracing::Span::current().record("status", tracing::field::display(status));
                shared.count(status);
            }
            .instrument(span),
        );
    }
}

async fn reject(tcp: &mut TcpStream, status: Status, message: impl Into<String>) -> Status {
    let r = Response::new(status, message);
    let _ = tcp.write_all(&r.encode()).await;
    let _ = tcp.shutdown().await;
    status
}

/// Serves one gateway connection; returns the outcome for the metrics.
async fn handle_gateway(shared: &Shared, mut tcp: TcpStream, peer: SocketAddr) -> Status {
    let read = proto::io::read_message(&mut tcp, proto::MAX_OPEN_REQUEST, OpenRequest::decode);
    let (req, rest) = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => return reject(&mut tcp, Status::Timeout, "no complete request in time").await,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "bad stream request");
            return reject(&mut tcp, Status::BadRequest, e.to_string()).await;
        }
        Ok(Ok(x)) => x,
    };
    if !shared.tokens.load().verify(&req.token) {
        tracing::warn!(%peer, "stream request with an invalid token");
        return reject(&mut tcp, Status::Unauthorized, "invalid token").await;
    }
    let target = format!("{}/{}:{}", req.protocol, req.host, req.port);
    let span = tracing::Span::current();
    span.record("site", req.site.as_str());
    span.record("target", target.as_str());
    let Some(site) = shared.routes.load().by_name.get(&req.site).cloned() else {
        return reject(
            &mut tcp,
            Status::UnknownSite,
            format!("no site {:?}", req.site),
        )
        .await;
    };
    if !site.allow.load().permits(req.protocol, &req.host, req.port) {
        tracing::info!(%peer, site = req.site, target, "denied by the hub's allow list");
        return reject(
            &mut tcp,
            Status::DeniedByHub,
            format!("{target} is not an allowed target of site {}", req.site),
        )
        .await;
    }
    let mut tunnel = match site
        .link
        .connect(site.cfg.forward_port, TUNNEL_CONNECT_TIMEOUT)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, site = req.site, error = %e, "site unavailable");
            return reject(
                &mut tcp,
                Status::SiteUnavailable,
                format!("site {}: {e}", req.site),
            )
            .await;
        }
    };
    let forward = ForwardRequest {
        protocol: req.protocol,
        host: req.host.clone(),
        port: req.port,
    };
    let header = match forward.encode() {
        Ok(h) => h,
        Err(e) => return reject(&mut tcp, Status::BadRequest, e.to_string()).await,
    };
    if tunnel.write_all(&header).await.is_err() {
        return reject(
            &mut tcp,
            Status::SiteUnavailable,
            "the tunnel connection closed",
        )
        .await;
    }
    let read = proto::io::read_message(&mut tunnel, proto::MAX_RESPONSE, Response::decode);
    let (resp, early) = match tokio::time::timeout(FORWARD_RESPONSE_TIMEOUT, read).await {
        Err(_) => {
            return reject(
                &mut tcp,
                Status::Timeout,
                "the connector did not answer in time",
            )
            .await;
        }
        Ok(Err(e)) => {
            return reject(&mut tcp, Status::SiteUnavailable, format!("connector: {e}")).await;
        }
        Ok(Ok(x)) => x,
    };
    if resp.status != Status::Ok {
        tracing::info!(%peer, site = req.site, target, status = %resp.status, message = resp.message, "connector refused");
        return reject(&mut tcp, resp.status, resp.message).await;
    }
    if tcp
        .write_all(&Response::new(Status::Ok, "").encode())
        .await
        .is_err()
        || tcp.write_all(&early).await.is_err()
        || tunnel.write_all(&rest).await.is_err()
    {
        return Status::Ok;
    }
    tracing::debug!(%peer, site = req.site, target, "stream open");
    tokio::select! {
        r = copy_bidirectional_with_sizes(&mut tcp, &mut tunnel, COPY_BUFFER, COPY_BUFFER) => {
            if let Err(e) = r {
                tracing::debug!(%peer, site = req.site, error = %e, "stream ended with an error");
            }
        }
        _ = site.removed.cancelled() => {}
    }
    Status::Ok
}

async fn run_reloader(shared: Arc<Shared>, config_path: Option<PathBuf>, mut raw: HubConfig) {
    let mut last_config = config_path.as_deref().and_then(|p| std::fs::read(p).ok());
    let mut last_tokens = std::fs::read(&raw.token_file).ok();
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        tick.tick().await;
        if let Some(path) = &config_path
            && read_if_changed(path, &mut last_config).is_some()
        {
            match config::load_file::<HubConfig>(path).and_then(|c| c.validate().map(|v| (c, v))) {
                Ok((new, valid)) => {
                    let restart_needed = new.listen_port != raw.listen_port
                        || new.private_key_file != raw.private_key_file
                        || new.private_key_group_readable != raw.private_key_group_readable
                        || new.tunnel_address != raw.tunnel_address
                        || new.control_port != raw.control_port
                        || new.stream_listen != raw.stream_listen
                        || new.admin_listen != raw.admin_listen;
                    if restart_needed {
                        tracing::warn!(
                            "listen ports, key file, tunnel address or control port changed: these take effect at the next restart"
                        );
                    }
                    if new.token_file != raw.token_file {
                        last_tokens = None;
                    }
                    shared.apply(&valid);
                    raw = HubConfig {
                        sites: new.sites,
                        token_file: new.token_file,
                        ..raw
                    };
                    shared.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(sites = valid.sites.len(), "configuration reloaded");
                }
                Err(e) => {
                    shared
                        .counters
                        .reloads_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "configuration rejected; keeping the last good one");
                }
            }
        }
        if let Some(bytes) = read_if_changed(&raw.token_file, &mut last_tokens) {
            match Tokens::parse(&String::from_utf8_lossy(&bytes), &raw.token_file) {
                Ok(t) => {
                    shared.tokens.store(Arc::new(t));
                    tracing::info!("gateway tokens reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "token file rejected; keeping the last good tokens")
                }
            }
        }
    }
}

struct HubStatus(Arc<Shared>);

fn unix_secs_ago(d: Duration) -> Option<u64> {
    SystemTime::now()
        .checked_sub(d)?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

impl StatusSource for HubStatus {
    fn ready(&self) -> bool {
        !self.0.draining.load(Ordering::Relaxed)
    }

    fn status(&self) -> admin::Status {
        let routes = self.0.routes.load();
        let mut names: Vec<&String> = routes.by_name.keys().collect();
        names.sort();
        let peers = names
            .into_iter()
            .map(|name| {
                let site = &routes.by_name[name];
                let s = site.link.stats();
                PeerStatus {
                    name: name.clone(),
                    public_key: site.cfg.public_key.to_string(),
                    tunnel_address: site.cfg.tunnel_address.to_string(),
                    connected: s.connected(),
                    last_handshake_unix: s.since_handshake.and_then(unix_secs_ago),
                    endpoint: s.endpoint.map(|e| e.to_string()),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_rejected: s.rx_rejected,
                    streams: s.streams,
                    targets_generation: Some(site.targets.borrow().generation),
                }
            })
            .collect();
        let c = &self.0.counters;
        admin::Status {
            role: "hub",
            public_key: self.0.key.public_key().to_string(),
            peers,
            counters: vec![
                Counter {
                    name: "stream_requests_total",
                    help: "gateway stream requests by outcome",
                    label: "status",
                    values: STATUSES
                        .iter()
                        .map(|s| {
                            (
                                s.as_str().to_owned(),
                                c.requests[s.code() as usize].load(Ordering::Relaxed),
                            )
                        })
                        .collect(),
                },
                Counter {
                    name: "ingress_dropped_datagrams_total",
                    help: "datagrams dropped before reaching a site",
                    label: "reason",
                    values: vec![
                        (
                            "unknown_peer".into(),
                            c.unknown_peer.load(Ordering::Relaxed),
                        ),
                        ("invalid".into(), c.ingress_dropped.load(Ordering::Relaxed)),
                    ],
                },
                Counter {
                    name: "config_reloads_total",
                    help: "configuration reloads by result",
                    label: "result",
                    values: vec![
                        ("ok".into(), c.reloads_ok.load(Ordering::Relaxed)),
                        ("rejected".into(), c.reloads_failed.load(Ordering::Relaxed)),
                    ],
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Received;
    use crate::link::testing::{Pair, Rng};

    const SITE_INDEX: u32 = 42;

    /// The hub's packet path for one site: classify, then hand to the site's link.
    fn entry(
        ingress: &Ingress,
        site: &mut Link,
        site_key: PublicKey,
        from: SocketAddr,
        dg: &[u8],
    ) -> Option<Received> {
        let mut reply = [0u8; 256];
        match ingress.classify(from.ip(), dg, &mut reply) {
            Verdict::Key(k) if k == site_key => Some(site.receive_datagram(from, dg)),
            Verdict::Index(i) if i == SITE_INDEX => Some(site.receive_datagram(from, dg)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn thousands_of_hostile_datagrams_do_not_hurt_the_tunnel() {
        let hub_key = PrivateKey::generate().unwrap();
        let ingress = Ingress::new(&hub_key);
        // `a` is the connector, `b` the hub's link for its site.
        let mut p = Pair::new(Some(ingress.limiter()), Some(hub_key), SITE_INDEX);
        let site_key = p.b.peer_key_for_tests();

        // A real handshake through the entry point.
        p.a.initiate(false);
        let init: Vec<_> = p.a.drain_outgoing().map(|(d, _)| d).collect();
        assert_eq!(
            entry(&ingress, &mut p.b, site_key, p.addr_a, &init[0]),
            Some(Received::Authenticated)
        );
        p.shuttle();
        assert!(p.a.stats().connected() && p.b.stats().connected());
        let mut samples = init;
        let _ = p.echo(4101, b"warm".to_vec()).await;
        // Capture a data packet.
        p.a.device_for_tests().push_back(vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        p.a.poll();
        let data: Vec<_> = p.a.drain_outgoing().map(|(d, _)| d).collect();
        assert_eq!(
            entry(&ingress, &mut p.b, site_key, p.addr_a, &data[0]),
            Some(Received::Authenticated)
        );
        samples.extend(data);

        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let attacker: SocketAddr = "203.0.113.66:4444".parse().unwrap();
        let mut reached_link = 0;
        for i in 0..6000u32 {
            let dg = match i % 5 {
                0 => {
                    let n = (rng.next() % 200) as usize;
                    rng.bytes(n)
                }
                1 => {
                    // Well-formed type and length, random content.
                    let (ty, len) = [
                        (1u8, 148usize),
                        (2, 92),
                        (3, 64),
                        (4, 32 + (rng.next() % 1400) as usize),
                    ][(rng.next() % 4) as usize];
                    let mut d = rng.bytes(len);
                    d[..4].copy_from_slice(&[ty, 0, 0, 0]);
                    if ty != 1 {
                        // Aim at the site's session indexes.
                        let idx = (SITE_INDEX << 8) | (rng.next() as u32 & 0xff);
                        let off = if ty == 2 { 8 } else { 4 };
                        d[off..off + 4].copy_from_slice(&idx.to_le_bytes());
                    }
                    d
                }
                2 => {
                    let mut d = samples[(rng.next() as usize) % samples.len()].clone();
                    for _ in 0..1 + rng.next() % 3 {
                        let at = (rng.next() as usize) % d.len();
                        d[at] ^= 1 << (rng.next() % 8);
                    }
                    d
                }
                3 => samples[(rng.next() as usize) % samples.len()].clone(),
                _ => {
                    let mut d = samples[(rng.next() as usize) % samples.len()].clone();
                    d.truncate((rng.next() as usize) % d.len());
                    d
                }
            };
            let from = if i % 2 == 0 { attacker } else { p.addr_a };
            if let Some(r) = entry(&ingress, &mut p.b, site_key, from, &dg) {
                reached_link += 1;
                assert_ne!(
                    r,
                    Received::Authenticated,
                    "hostile datagram {i} authenticated: {dg:?}"
                );
            }
            if i % 300 == 0 {
                p.b.poll();
                let _ = p.b.drain_outgoing().count();
                ingress.reset_rate_limit();
            }
        }
        assert!(
            reached_link > 1000,
            "only {reached_link} datagrams reached the link"
        );
        // The attacker never became the endpoint, and the tunnel still carries data.
        assert_eq!(p.b.endpoint(), Some(p.addr_a));
        assert_eq!(p.echo(4102, b"still here".to_vec()).await, b"still here");
    }

    #[test]
    fn unknown_keys_and_garbage_never_reach_a_site() {
        let hub_key = PrivateKey::generate().unwrap();
        let ingress = Ingress::new(&hub_key);
        let from: IpAddr = "192.0.2.1".parse().unwrap();
        let mut reply = [0u8; 256];
        assert_eq!(
            ingress.classify(from, b"", &mut reply),
            Verdict::Drop(RejectReason::Malformed)
        );
        assert_eq!(
            ingress.classify(from, &[1; 148], &mut reply),
            Verdict::Drop(RejectReason::Malformed)
        );
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert_eq!(
            ingress.classify(from, &init, &mut reply),
            Verdict::Drop(RejectReason::Unauthenticated)
        );
        // A real initiation from a key the hub does not know is classified by its key, which
        // the routing table then does not find.
        let stranger = PrivateKey::generate().unwrap();
        let mut t = boringtun::noise::Tunn::new(
            stranger.to_x25519(),
            hub_key.public_key().to_x25519(),
            None,
            None,
            1,
            None,
        );
        let mut buf = [0u8; 256];
        let TunnResult::WriteToNetwork(hs) = t.format_handshake_initiation(&mut buf, false) else {
            panic!("no initiation")
        };
        assert_eq!(
            ingress.classify(from, hs, &mut reply),
            Verdict::Key(stranger.public_key())
        );
    }
}
