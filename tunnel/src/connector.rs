//! The connector: runs at a remote site, keeps a tunnel to every hub replica, and forwards the
//! hubs' streams to the targets the site allows.
//!
//! ```text
//!  hub replica A ◀──WireGuard/UDP──▶ Link A ─┐  forwarder port: ForwardRequest → allow? → OS socket
//!  hub replica B ◀──WireGuard/UDP──▶ Link B ─┤  control client: hello/ping → targets (allow list)
//!                                            └─▶ targets at the site (TCP connect / UDP socket)
//! ```
//!
//! Each replica gets its own UDP socket, link, forwarder and control channel, so replicas are
//! fully independent: one replica down (or restarting, or with an older configuration) never
//! affects streams through another. A stream is checked against the allow list of the replica
//! that asked for it, and against the site's optional local ceiling; until a replica's list has
//! arrived, everything it asks for is denied. The list of a replica survives reconnects (the
//! last list received stays in force until the next one replaces it).
//!
//! UDP flows arrive framed (`len u16 | datagram`) on a tunnel TCP stream; the forwarder sends
//! each datagram from its own connected UDP socket and frames the answers back. That costs
//! head-of-line blocking under loss but keeps one code path, one allow-list check per flow and
//! one flow per socket (so answers can only come from the target). Idle flows end after
//! [`UDP_IDLE_TIMEOUT`].
//!
//! A target name is resolved here, once per stream, and only the resolved addresses inside
//! the site's networks (the advertised CIDRs the hub sends with the list, see
//! [`crate::allow::Networks`]) are dialled; those very addresses are the ones connected to,
//! so nothing is resolved twice. A name that resolves only outside them (`localhost`, a name
//! an attacker points at 169.254.169.254) is refused as `denied_by_site`, logged and counted
//! (`names_resolved_outside_total`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional_with_sizes};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admin::{self, PeerStatus, StatusSource};
use crate::allow::{AllowList, Host, Networks, Protocol};
use crate::backoff::{Backoff, jitter_seed};
use crate::config::{ConfigError, ConnectorConfig, ValidConnector, ValidHubPeer};
use crate::control::{self, TargetSet};
use crate::engine::{self, Datagram, Initiator, LinkHandle};
use crate::keys::{self, KeyError, PrivateKey};
use crate::link::{COPY_BUFFER, Link, LinkConfig, TunnelStream};
use crate::proto::{self, ForwardRequest, Response, Status};
use crate::udp;

/// A UDP flow with no datagram either way for this long ends.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for the hub's forward request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors that stop the connector.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The private key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A socket could not be bound.
    #[error("failed to bind a UDP socket: {0}")]
    Bind(std::io::Error),
    /// The admin endpoint failed.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// What one hub replica allows, as last received.
#[derive(Debug, Default)]
struct HubPolicy {
    generation: Option<u64>,
    allow: AllowList,
    /// Where target names may resolve to.
    networks: Networks,
}

struct HubState {
    cfg: ValidHubPeer,
    link: LinkHandle,
    policy: ArcSwap<HubPolicy>,
    /// Forward requests refused because the name resolved only outside the networks.
    names_outside: AtomicU64,
}

/// Decides a forward request: `None` when allowed, or the refusal.
pub fn decide(
    hub: Option<&AllowList>,
    local: Option<&AllowList>,
    req: &ForwardRequest,
) -> Option<Response> {
    let target = format!("{}/{}:{}", req.protocol, req.host, req.port);
    let Some(hub) = hub else {
        return Some(Response::new(
            Status::DeniedBySite,
            "the connector has not received its allow list from this hub yet",
        ));
    };
    if !hub.permits(req.protocol, &req.host, req.port) {
        return Some(Response::new(
            Status::DeniedBySite,
            format!("{target} is not in the connector's allow list"),
        ));
    }
    if local.is_some_and(|l| !l.permits(req.protocol, &req.host, req.port)) {
        return Some(Response::new(
            Status::DeniedBySite,
            format!("{target} is outside the site's local_allowed_targets"),
        ));
    }
    None
}

/// A running connector.
pub struct Connector {
    cfg: ValidConnector,
    key: PrivateKey,
    admin: Option<tokio::net::TcpListener>,
}

impl Connector {
    /// Validates the configuration, loads the key and binds the admin endpoint.
    pub async fn new(raw: ConnectorConfig) -> Result<Self, ConnectorError> {
        let cfg = raw.validate()?;
        let key = keys::load_private_key(&raw.private_key_file)?;
        let admin = match raw.admin_listen {
            Some(a) => Some(admin::bind(a).await?),
            None => None,
        };
        Ok(Self { cfg, key, admin })
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        let Connector { cfg, key, admin } = self;
        tracing::info!(public_key = %key.public_key(), hubs = cfg.hubs.len(), tunnel_address = %cfg.raw.tunnel_address, "connector starting");
        let cfg = Arc::new(cfg);
        let mut hubs = Vec::new();
        for hub in &cfg.hubs {
            hubs.push(start_hub(&cfg, &key, hub, shutdown.clone()).await?);
        }
        let hubs = Arc::new(hubs);
        let admin_task = admin.map(|l| {
            let source: Arc<dyn StatusSource> = Arc::new(ConnectorStatus {
                public_key: key.public_key().to_string(),
                hubs: hubs.clone(),
            });
            tokio::spawn(admin::serve(l, source))
        });
        shutdown.cancelled().await;
        tracing::info!("connector shutting down");
        if let Some(t) = admin_task {
            t.abort();
        }
        Ok(())
    }
}

/// Binds a UDP socket for one hub: dual-stack where possible.
async fn bind_udp() -> Result<UdpSocket, ConnectorError> {
    match UdpSocket::bind(SocketAddr::from(([0u16; 8], 0))).await {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .map_err(ConnectorError::Bind),
    }
}

async fn start_hub(
    cfg: &Arc<ValidConnector>,
    key: &PrivateKey,
    hub: &ValidHubPeer,
    shutdown: CancellationToken,
) -> Result<Arc<HubState>, ConnectorError> {
    let socket = Arc::new(udp::Socket::new(bind_udp().await?));
    let mut link = Link::new(LinkConfig {
        private_key: key.clone(),
        peer_key: hub.public_key,
        local_ip: cfg.raw.tunnel_address,
        peer_ip: hub.tunnel_address,
        keepalive: cfg.keepalive,
        index: (jitter_seed() as u32) & 0x00ff_ffff,
        rate_limiter: None,
        endpoint: None,
    })
    .expect("validated: one address family");
    let (accept_tx, mut accept) = mpsc::channel(64);
    link.listen(cfg.raw.forward_port, accept_tx);
    // One reader, one link: the reader waits for room (at most 64 receives of 64 KiB).
    let (dg_tx, dg_rx) = engine::datagram_queue(64, usize::MAX);
    let handle = engine::spawn(
        link,
        socket.clone(),
        dg_rx,
        Some(Initiator {
            endpoint: hub.endpoint.clone(),
            dead_peer_timeout: cfg.dead_peer_timeout,
        }),
        hub.endpoint.clone(),
    );
    let state = Arc::new(HubState {
        cfg: hub.clone(),
        link: handle,
        policy: ArcSwap::from_pointee(HubPolicy::default()),
        names_outside: AtomicU64::new(0),
    });

    // Datagrams from the socket to the link.
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let received = tokio::select! {
                r = socket.recv(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            if dg_tx
                .send(Datagram {
                    data: buf[..received.len].to_vec(),
                    from: received.from,
                    stride: received.stride,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });

    // The forwarder.
    let (st, c, stop) = (state.clone(), cfg.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = accept.recv() => match s { Some(s) => s, None => break },
                _ = stop.cancelled() => break,
            };
            let (st, c, stop) = (st.clone(), c.clone(), stop.clone());
            // One span per forwarded stream, for its whole life (exported with
            // --otlp-endpoint): which hub, which target, the status answered.
            let span = tracing::info_span!(
                "forward",
                hub = st.cfg.endpoint.as_str(),
                target = tracing::field::Empty,
                status = tracing::field::Empty,
            );
            tokio::spawn(
                async move {
                    tokio::select! {
                        _ = forward(stream, &st, &c) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                .instrument(span),
            );
        }
    });

    // The control channel.
    let (st, c) = (state.clone(), cfg.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = run_control(&st, &c) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    Ok(state)
}

async fn run_control(hub: &HubState, cfg: &ValidConnector) {
    let mut backoff = Backoff::new(Duration::from_millis(500), cfg.control_interval);
    let name = hub.cfg.endpoint.as_str();
    loop {
        match hub
            .link
            .connect(cfg.raw.control_port, cfg.connect_timeout)
            .await
        {
            Ok(stream) => {
                let started = tokio::time::Instant::now();
                let r = control::run_client(stream, cfg.control_interval, |set: TargetSet| {
                    let networks = Networks::parse(&set.advertised_cidrs)
                        .map_err(|(i, e)| format!("advertised CIDR {i}: {e}"));
                    let allow = AllowList::compile(&set.targets)
                        .map_err(|(i, e)| format!("target {i}: {e}"));
                    match (allow, networks) {
                        (Ok(allow), Ok(networks)) => {
                            tracing::info!(
                                hub = name,
                                generation = set.generation,
                                targets = allow.len(),
                                networks = %networks,
                                "allow list received"
                            );
                            hub.policy.store(Arc::new(HubPolicy {
                                generation: Some(set.generation),
                                allow,
                                networks,
                            }));
                        }
                        (Err(e), _) | (_, Err(e)) => tracing::error!(
                            hub = name,
                            generation = set.generation,
                            "allow list rejected ({e}); keeping the previous one"
                        ),
                    }
                })
                .await;
                if let Err(e) = r {
                    tracing::info!(hub = name, error = %e, "control channel ended");
                }
                if started.elapsed() > cfg.control_interval {
                    backoff.reset();
                }
            }
            Err(e) => tracing::debug!(hub = name, error = %e, "control channel not reachable yet"),
        }
        tokio::time::sleep(backoff.next_delay(jitter_seed())).await;
    }
}

async fn answer(stream: &mut TunnelStream, r: &Response) {
    tracing::Span::current().record("status", tracing::field::display(r.status));
    let _ = stream.write_all(&r.encode()).await;
    let _ = stream.shutdown().await;
}

/// Serves one forward request from a hub.
async fn forward(mut stream: TunnelStream, hub: &HubState, cfg: &ValidConnector) {
    let read = proto::io::read_message(
        &mut stream,
        proto::MAX_FORWARD_REQUEST,
        ForwardRequest::decode,
    );
    let (req, rest) = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            answer(
                &mut stream,
                &Response::new(Status::BadRequest, e.to_string()),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let target = format!("{}/{}:{}", req.protocol, req.host, req.port);
    tracing::Span::current().record("target", target.as_str());
    let name = hub.cfg.endpoint.as_str();
    let policy = hub.policy.load();
    let hub_list = policy.generation.map(|_| &policy.allow);
    if let Some(refusal) = decide(hub_list, cfg.local_allow.as_ref(), &req) {
        tracing::warn!(
            hub = name,
            target,
            "refused a target the allow list does not admit"
        );
        answer(&mut stream, &refusal).await;
        return;
    }
    let addrs = match resolve_within(&req.host, req.port, &policy.networks).await {
        Ok(a) => a,
        Err(r) => {
            if r.status == Status::DeniedBySite {
                hub.names_outside.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    hub = name,
                    target,
                    message = r.message,
                    "refused a target name that resolves outside the site's networks"
                );
            }
            answer(&mut stream, &r).await;
            return;
        }
    };
    match req.protocol {
        Protocol::Tcp => {
            let mut tcp = match connect_tcp(&addrs, cfg.connect_timeout).await {
                Ok(t) => t,
                Err(r) => {
                    tracing::info!(hub = name, target, status = %r.status, message = r.message, "target not reachable");
                    answer(&mut stream, &r).await;
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            tracing::Span::current().record("status", tracing::field::display(Status::Ok));
            if stream
                .write_all(&Response::new(Status::Ok, "").encode())
                .await
                .is_err()
                || tcp.write_all(&rest).await.is_err()
            {
                return;
            }
            tracing::debug!(hub = name, target, "forwarding");
            if let Err(e) =
                copy_bidirectional_with_sizes(&mut stream, &mut tcp, COPY_BUFFER, COPY_BUFFER).await
            {
                tracing::debug!(hub = name, target, error = %e, "stream ended with an error");
            }
        }
        Protocol::Udp => {
            let socket = match udp_socket(addrs[0]).await {
                Ok(s) => s,
                Err(e) => {
                    answer(
                        &mut stream,
                        &Response::new(Status::TargetUnreachable, e.to_string()),
                    )
                    .await;
                    return;
                }
            };
            tracing::Span::current().record("status", tracing::field::display(Status::Ok));
            if stream
                .write_all(&Response::new(Status::Ok, "").encode())
                .await
                .is_err()
            {
                return;
            }
            tracing::debug!(hub = name, target, "forwarding UDP flow");
            relay_udp(stream, socket, rest).await;
        }
    }
}

/// The addresses a stream to `host:port` may be dialled at: an address as is (the allow list
/// matched it as an address), a name resolved once and kept only where `networks` admit the
/// result. A name resolving only outside them is `DeniedBySite`.
pub async fn resolve_within(
    host: &Host,
    port: u16,
    networks: &Networks,
) -> Result<Vec<SocketAddr>, Response> {
    let addrs = resolve(host, port)
        .await
        .map_err(|m| Response::new(Status::TargetUnreachable, m))?;
    if matches!(host, Host::Ip(_)) {
        return Ok(addrs);
    }
    let (inside, outside): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.into_iter().partition(|a| networks.admits(a.ip()));
    if inside.is_empty() {
        let resolved: Vec<String> = outside.iter().map(|a| a.ip().to_string()).collect();
        return Err(Response::new(
            Status::DeniedBySite,
            format!(
                "{host} resolves to {}, outside the site's advertised CIDRs ({networks})",
                resolved.join(", ")
            ),
        ));
    }
    Ok(inside)
}

async fn resolve(host: &Host, port: u16) -> Result<Vec<SocketAddr>, String> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(addrs)) => {
                    let v: Vec<SocketAddr> = addrs.collect();
                    if v.is_empty() {
                        Err(format!("{name} has no addresses"))
                    } else {
                        Ok(v)
                    }
                }
                Ok(Err(e)) => Err(format!("failed to resolve {name}: {e}")),
                Err(_) => Err(format!("timed out resolving {name}")),
            }
        }
    }
}

async fn connect_tcp(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Response> {
    let mut last = Response::new(Status::TargetUnreachable, "no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => {
                last = Response::new(Status::TargetUnreachable, format!("connect to {addr}: {e}"))
            }
            Err(_) => {
                last = Response::new(
                    Status::Timeout,
                    format!("connect to {addr}: no answer within {timeout:?}"),
                )
            }
        }
    }
    Err(last)
}

async fn udp_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match target.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Carries framed datagrams between a tunnel stream and a connected UDP socket.
async fn relay_udp(stream: TunnelStream, socket: UdpSocket, mut pending: Vec<u8>) {
    let (mut r, mut w) = tokio::io::split(stream);
    let socket = Arc::new(socket);
    let rx_socket = socket.clone();
    let to_tunnel = async move {
        let mut buf = vec![0u8; proto::MAX_DATAGRAM];
        let mut frame = Vec::with_capacity(proto::MAX_DATAGRAM + 2);
        loop {
            let n = match tokio::time::timeout(UDP_IDLE_TIMEOUT, rx_socket.recv(&mut buf)).await {
                Ok(Ok(n)) => n,
                // ICMP errors (port unreachable) surface here; the flow stays open, as with
                // any UDP socket, until it idles out.
                Ok(Err(_)) => continue,
                Err(_) => return,
            };
            frame.clear();
            if proto::encode_datagram(&buf[..n], &mut frame).is_err()
                || w.write_all(&frame).await.is_err()
            {
                return;
            }
        }
    };
    let to_target = async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            while let Some((range, used)) = proto::decode_datagram(&pending) {
                let _ = socket.send(&pending[range]).await;
                pending.drain(..used);
            }
            let n = match tokio::time::timeout(UDP_IDLE_TIMEOUT, r.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::select! {
        _ = to_tunnel => {}
        _ = to_target => {}
    }
}

struct ConnectorStatus {
    public_key: String,
    hubs: Arc<Vec<Arc<HubState>>>,
}

impl StatusSource for ConnectorStatus {
    fn status(&self) -> admin::Status {
        let peers = self
            .hubs
            .iter()
            .map(|h| {
                let s = h.link.stats();
                PeerStatus {
                    name: h.cfg.endpoint.clone(),
                    public_key: h.cfg.public_key.to_string(),
                    tunnel_address: h.cfg.tunnel_address.to_string(),
                    connected: s.connected(),
                    last_handshake_unix: s.since_handshake.and_then(|d| {
                        std::time::SystemTime::now()
                            .checked_sub(d)?
                            .duration_since(std::time::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    endpoint: s.endpoint.map(|e| e.to_string()),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_rejected: s.rx_rejected,
                    streams: s.streams,
                    targets_generation: h.policy.load().generation,
                }
            })
            .collect();
        admin::Status {
            role: "connector",
            public_key: self.public_key.clone(),
            peers,
            counters: vec![admin::Counter {
                name: "names_resolved_outside_total",
                help: "forward requests refused because the target name resolved only outside the site's advertised CIDRs",
                label: "hub",
                values: self
                    .hubs
                    .iter()
                    .map(|h| {
                        let n = h.names_outside.load(Ordering::Relaxed);
                        (h.cfg.endpoint.clone(), n)
                    })
                    .collect(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allow::{PortRange, Target};

    fn list(cidr: &str, port: u16) -> AllowList {
        AllowList::compile(&[Target {
            cidr: Some(cidr.into()),
            host: None,
            ports: vec![PortRange::single(port)],
            protocol: Protocol::Tcp,
        }])
        .unwrap()
    }

    fn req(host: &str, port: u16) -> ForwardRequest {
        ForwardRequest {
            protocol: Protocol::Tcp,
            host: Host::parse(host).unwrap(),
            port,
        }
    }

    #[tokio::test]
    async fn a_name_is_dialled_only_at_addresses_inside_the_sites_networks() {
        let nets = |l: &[&str]| {
            Networks::parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let localhost = Host::parse("localhost").unwrap();
        // `localhost` resolves to loopback: outside 10.1.0.0/16, and not covered by a
        // network that merely includes everything.
        for outside in [
            nets(&["10.1.0.0/16"]),
            nets(&["0.0.0.0/0", "::/0"]),
            nets(&[]),
        ] {
            let r = resolve_within(&localhost, 80, &outside).await.unwrap_err();
            assert_eq!(r.status, Status::DeniedBySite, "{outside}");
            assert!(
                r.message.contains("outside the site's advertised CIDRs"),
                "{}",
                r.message
            );
        }
        // A network naming loopback explicitly admits it, and only the admitted addresses
        // are returned (these are the ones dialled: no second resolution).
        let addrs = resolve_within(&localhost, 80, &nets(&["127.0.0.1/32"]))
            .await
            .unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip() == IpAddr::from([127, 0, 0, 1]) && a.port() == 80)
        );
        // Addresses are decided by the allow list's CIDR rules, not by the networks.
        let ip = Host::parse("192.0.2.1").unwrap();
        assert_eq!(
            resolve_within(&ip, 80, &nets(&[])).await.unwrap(),
            vec![SocketAddr::from(([192, 0, 2, 1], 80))]
        );
    }

    #[test]
    fn default_deny_until_the_list_arrives_and_local_ceiling_applies() {
        let hub = list("10.0.0.0/8", 22);
        let local = list("10.1.0.0/16", 22);
        let denied = |r: Option<Response>| r.map(|r| r.status) == Some(Status::DeniedBySite);
        assert!(denied(decide(None, None, &req("10.1.0.1", 22))));
        assert!(decide(Some(&hub), None, &req("10.1.0.1", 22)).is_none());
        assert!(denied(decide(Some(&hub), None, &req("10.1.0.1", 23))));
        assert!(denied(decide(Some(&hub), None, &req("192.168.0.1", 22))));
        assert!(decide(Some(&hub), Some(&local), &req("10.1.0.1", 22)).is_none());
        let r = decide(Some(&hub), Some(&local), &req("10.2.0.1", 22)).unwrap();
        assert!(r.message.contains("local_allowed_targets"), "{}", r.message);
    }
}
