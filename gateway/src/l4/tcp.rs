//! TCP-based L4 ports: plain TCP, TLS-terminated TCP and TLSPassthrough.

use super::{
    Kind, L4Facts, L4Options, LastActivity, PerClient, Prefixed, Watched, canonical, decide,
    listeners_on, record,
};
use crate::balance::Pick;
use crate::pipeline::{Env, IdentitySummary, Record};
use crate::proxy::Shared;
use crate::state::{Compiled, L4_RULE};
use crate::tunnel::Protocol;
use pingora::server::ShutdownWatch;
use rustls::pki_types::CertificateDer;
use rustronaut_contract::identity::client_ip::{ClientIpError, ProxyHeader, parse_proxy_header};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, copy_bidirectional_with_sizes,
};
use tokio::net::{TcpListener, TcpStream};

/// Longest PROXY header accepted: a v2 header with the largest TLV block it can announce.
const MAX_PROXY_HEADER: usize = 16 + u16::MAX as usize;

/// Accepts until shutdown; each connection runs in its own task.
pub(super) async fn serve(
    listener: TcpListener,
    kind: Kind,
    port: u16,
    shared: Arc<Shared>,
    opts: L4Options,
    mut shutdown: ShutdownWatch,
) {
    tracing::info!(port, protocol = kind.label(), "L4 listener serving");
    // Connections open at once on this port, handshakes included: beyond it new ones are
    // closed at once rather than left to exhaust descriptors and memory.
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    // And per client, so one host cannot take all of them (see `handle`).
    let per_client = PerClient::new(opts.max_connections_per_client);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        drop(stream);
                        let ip = canonical(peer.ip());
                        let d = format!("{} connections open", opts.max_connections);
                        refuse_early(&shared, kind, port, peer, ip, "ConnectionLimit", d);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let opts = opts.clone();
                    let per_client = per_client.clone();
                    // On any worker of the port, not only the accepting one (no worker
                    // steals work: crate::server::WORK_STEALING).
                    pingora_runtime::current_handle().spawn(async move {
                        handle(stream, peer, kind, port, &shared, &opts, &per_client).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                tracing::info!(port, protocol = kind.label(), "L4 listener stops accepting");
                return;
            }
        }
    }
}

/// Why a connection ended before its decision.
pub(crate) enum Early {
    /// Closed before sending a byte: a TCP health probe of a load balancer, most likely;
    /// not worth a log line or a count.
    Silent,
    /// Anything else: logged and counted as refused.
    Bad(String),
}

impl From<String> for Early {
    fn from(s: String) -> Self {
        Self::Bad(s)
    }
}

/// Logs and counts a connection refused before any decision (bad PROXY header, handshake).
fn refuse_early(
    shared: &Shared,
    kind: Kind,
    port: u16,
    peer: SocketAddr,
    client_ip: IpAddr,
    reason: &'static str,
    detail: impl Into<Early>,
) {
    let Early::Bad(detail) = detail.into() else {
        tracing::debug!(protocol = kind.label(), port, peer = %peer, "closed before sending anything");
        return;
    };
    let r = Record {
        identity: IdentitySummary::Static("anonymous"),
        client_ip: Some(client_ip),
        effect: "-",
        reason,
        decision_id: shared.ids.next_id(),
        detail: Some(detail),
        ..Record::default()
    };
    record(shared, kind, port, peer, &r, None);
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    port: u16,
    shared: &Shared,
    opts: &L4Options,
    per_client: &Arc<PerClient>,
) {
    let Some(state) = shared.store.current() else {
        return;
    };
    let names = listeners_on(&state, kind, port);
    let mut client_ip = canonical(peer.ip());
    if names.is_empty() {
        refuse_early(
            shared,
            kind,
            port,
            peer,
            client_ip,
            "NoListener",
            "the listener is no longer in the snapshot".to_string(),
        );
        return;
    }
    let deadline = tokio::time::Instant::now() + opts.handshake_timeout;
    // Bytes read from the client and not yet forwarded.
    let mut buf = Vec::new();
    if state.snapshot.client_ip_detection.proxy_protocol {
        // Only a listed load balancer may say who the client is: a connection from any other
        // peer is refused before its first byte is read, header or not.
        if !state.trusted_peers.contains(client_ip) {
            let r = "UntrustedProxyPeer";
            let d = format!("peer {client_ip} is not in clientIPDetection.trustedPeerCIDRs");
            return refuse_early(shared, kind, port, peer, client_ip, r, d);
        }
        let header =
            tokio::time::timeout_at(deadline, read_proxy_header(&mut stream, &mut buf)).await;
        match header {
            Ok(Ok(h)) => {
                if let Some(src) = h.source {
                    client_ip = canonical(src.ip());
                }
                buf.drain(..h.length);
            }
            Ok(Err(e)) => {
                let r = "InvalidProxyProtocol";
                return refuse_early(shared, kind, port, peer, client_ip, r, e);
            }
            Err(_) => {
                let d = "no complete PROXY header in time".to_string();
                let r = "InvalidProxyProtocol";
                return refuse_early(shared, kind, port, peer, client_ip, r, d);
            }
        }
    }
    // The per-client cap, on the client address policies see: the peer, or the PROXY
    // header's source (counting the load balancer in front would cap all its clients
    // together). Held until the connection ends, handshake included.
    let Some(_client_slot) = per_client.try_acquire(client_ip) else {
        let d = format!("{} connections open from this client", per_client.max());
        return refuse_early(
            shared,
            kind,
            port,
            peer,
            client_ip,
            "ClientConnectionLimit",
            d,
        );
    };
    let env = Env {
        now: SystemTime::now(),
        instant: Instant::now(),
        cache: &shared.cache,
        ids: &shared.ids,
        limiter: &shared.limiter,
        remote: &shared.remote,
    };
    match kind {
        Kind::Passthrough => {
            let hello = tokio::time::timeout_at(
                deadline,
                read_client_hello(&mut stream, &mut buf, opts.max_client_hello),
            )
            .await
            .unwrap_or_else(|_| Err("no complete ClientHello in time".to_string().into()));
            let sni = match hello {
                Ok(sni) => sni,
                Err(e) => {
                    let r = "InvalidClientHello";
                    return refuse_early(shared, kind, port, peer, client_ip, r, e);
                }
            };
            let facts = L4Facts {
                kind,
                listeners: &names,
                port,
                sni: sni.as_deref(),
                client_ip,
                client_chain: None,
            };
            let verdict = decide(&state, &facts, &env);
            forward(
                shared, opts, &state, kind, port, peer, verdict, stream, &buf,
            )
            .await;
        }
        Kind::Tcp => {
            let Some(config) = names.iter().find_map(|n| state.tcp_tls.get(*n)).cloned() else {
                let facts = L4Facts {
                    kind,
                    listeners: &names,
                    port,
                    sni: None,
                    client_ip,
                    client_chain: None,
                };
                let verdict = decide(&state, &facts, &env);
                forward(
                    shared, opts, &state, kind, port, peer, verdict, stream, &buf,
                )
                .await;
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let io = Prefixed::new(std::mem::take(&mut buf), stream);
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let r = "TlsHandshakeFailed";
                    return refuse_early(shared, kind, port, peer, client_ip, r, e.to_string());
                }
                Err(_) => {
                    let d = "TLS handshake not completed in time".to_string();
                    let r = "TlsHandshakeFailed";
                    return refuse_early(shared, kind, port, peer, client_ip, r, d);
                }
            };
            let (_, conn) = tls.get_ref();
            let sni = conn
                .server_name()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
            let chain: Option<Vec<CertificateDer<'static>>> =
                conn.peer_certificates().map(<[_]>::to_vec);
            let facts = L4Facts {
                kind,
                listeners: &names,
                port,
                sni: sni.as_deref(),
                client_ip,
                client_chain: chain.as_deref(),
            };
            let verdict = decide(&state, &facts, &env);
            forward(shared, opts, &state, kind, port, peer, verdict, tls, &[]).await;
        }
        Kind::Udp => {}
    }
}

/// Where an allowed connection went.
enum Upstream {
    /// A Service address (counted in flight for least-connections).
    Addr(SocketAddr),
    /// A host at a site, through the tunnel hub.
    Site(String),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => a.fmt(f),
            Self::Site(s) => f.write_str(s),
        }
    }
}

/// Carries out a verdict: close on deny; on allow connect (retrying other addresses after
/// connect failures), send `early` (bytes already read), then splice.
#[allow(clippy::too_many_arguments)]
async fn forward<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    opts: &L4Options,
    state: &Compiled,
    kind: Kind,
    port: u16,
    peer: SocketAddr,
    verdict: super::L4Verdict,
    mut client: C,
    early: &[u8],
) {
    let mut rec = verdict.record;
    let Some(f) = verdict.forward else {
        // Denied or unroutable: closed without a byte sent either way.
        record(shared, kind, port, peer, &rec, None);
        return;
    };
    let (mut upstream, target, from_upstream) =
        match connect(shared, state, f.resource, port, f.hash_key.as_deref()).await {
            Ok(c) => c,
            Err(detail) => {
                rec.detail = Some(detail);
                record(shared, kind, port, peer, &rec, None);
                return;
            }
        };
    record(shared, kind, port, peer, &rec, Some(target.to_string()));
    if let Upstream::Addr(a) = target {
        shared.inflight.start(a);
    }
    let started = Instant::now();
    let result = async {
        if !from_upstream.is_empty() {
            client.write_all(&from_upstream).await?;
        }
        if !early.is_empty() {
            upstream.write_all(early).await?;
        }
        let size = opts.copy_buffer;
        let activity = LastActivity::new();
        let mut c = Watched::new(&mut client, activity.clone());
        let mut u = Watched::new(&mut upstream, activity.clone());
        tokio::select! {
            r = copy_bidirectional_with_sizes(&mut c, &mut u, size, size) => r,
            _ = activity.idle(opts.idle_timeout) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("idle for {:?}", opts.idle_timeout),
            )),
        }
    }
    .await;
    if let Upstream::Addr(a) = target {
        shared.inflight.end(a);
    }
    let (up, down) = result.as_ref().map_or((0, 0), |(a, b)| (*a, *b));
    tracing::debug!(
        protocol = kind.label(),
        port,
        peer = %peer,
        upstream = %target,
        decision_id = %rec.decision_id,
        bytes_up = up + early.len() as u64,
        bytes_down = down + from_upstream.len() as u64,
        seconds = started.elapsed().as_secs_f64(),
        error = %result.err().map(|e| e.to_string()).unwrap_or_default(),
        "connection closed"
    );
}

/// Connects to a target of the Resource's balancer: a Service address (a failed connect
/// ejects it and another is tried, up to `max_attempts`) or a site through the tunnel hub
/// (tried once: the hub and the connector already know whether the site is reachable).
/// Returns the stream, where it goes, and bytes the hub delivered with its answer.
async fn connect(
    shared: &Shared,
    state: &Compiled,
    resource: usize,
    port: u16,
    hash_key: Option<&str>,
) -> Result<(TcpStream, Upstream, Vec<u8>), String> {
    let balancer = state
        .balancer(resource, L4_RULE, port)
        .ok_or("no upstream")?;
    let mut tried = Vec::new();
    let mut site_tried = false;
    let mut last_error = String::from("no upstream address");
    for _ in 0..shared.max_attempts {
        let Some(pick) = balancer.pick_target(
            &shared.health,
            &tried,
            &shared.inflight,
            hash_key,
            site_tried,
        ) else {
            break;
        };
        let addr = match pick {
            Pick::Addr(addr) => addr,
            Pick::Site(site) => {
                site_tried = true;
                let label = format!("site:{}/{}:{}", site.site, site.host, site.port);
                let Some(tunnel) = &shared.tunnel else {
                    last_error = format!("{label}: no --tunnel-stream configured");
                    tracing::warn!(upstream = %label, "site upstream without --tunnel-stream");
                    continue;
                };
                match tunnel
                    .open(&site.site, Protocol::Tcp, &site.host, site.port)
                    .await
                {
                    Ok((stream, early)) => return Ok((stream, Upstream::Site(label), early)),
                    Err(e) => {
                        tracing::warn!(upstream = %label, error = %e, "site upstream not opened");
                        last_error = format!("{label}: {e}");
                        continue;
                    }
                }
            }
        };
        tried.push(addr);
        match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, Upstream::Addr(addr), Vec::new()));
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %addr, error = %e, "upstream connect failed; ejected");
                last_error = format!("{addr}: {e}");
            }
            Err(_) => {
                tracing::warn!(upstream = %addr, "upstream connect timed out; ejected");
                last_error = format!("{addr}: connect timed out");
            }
        }
        shared.health.eject(addr, shared.eject_for);
        shared.metrics.ejections.inc();
    }
    Err(last_error)
}

/// Reads until `buf` starts with a complete PROXY header (every byte after it stays in
/// `buf`); at most [`MAX_PROXY_HEADER`] bytes. Also the HTTP and HTTPS listeners' reader
/// (`crate::listener::ProxyProtocol`).
pub(crate) async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<ProxyHeader, Early> {
    loop {
        match parse_proxy_header(buf) {
            Ok(h) => return Ok(h),
            Err(ClientIpError::Incomplete) if buf.len() < MAX_PROXY_HEADER => {}
            Err(e) => return Err(e.to_string().into()),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 && buf.is_empty() {
            return Err(Early::Silent);
        }
        if n == 0 {
            return Err("connection closed inside the PROXY header"
                .to_string()
                .into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until `buf` holds a whole ClientHello (parsed by rustls, never answered) and
/// returns its SNI, lower-case without a trailing dot. Every byte read stays in `buf`, to be
/// forwarded as it came.
async fn read_client_hello(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Option<String>, Early> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < buf.len() {
            let mut rest = &buf[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(e) => return Err(format!("not a TLS ClientHello: {e}").into()),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted
                    .client_hello()
                    .server_name()
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase()));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}").into()),
        }
        if buf.len() >= max {
            return Err(format!("ClientHello larger than {max} bytes").into());
        }
        let mut chunk = [0u8; 4096];
        let room = chunk.len().min(max - buf.len());
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 && buf.is_empty() {
            return Err(Early::Silent);
        }
        if n == 0 {
            return Err("connection closed before a complete ClientHello"
                .to_string()
                .into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
