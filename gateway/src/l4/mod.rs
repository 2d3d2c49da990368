//! L4 listeners: TCP (plain or TLS-terminated), TLSPassthrough (routed by SNI, never
//! terminated) and UDP (per-flow datagram proxy).
//!
//! ```text
//!  accept (one Pingora background service per bound port, own runtime)
//!    -> current snapshot (per connection / flow; a reload applies to the next one)
//!    -> PROXY v1/v2 header, when clientIPDetection.proxyProtocol (TCP-based; bounded)
//!    -> TCP+TLS: handshake with the snapshot's rustls config (SNI cert, client cert)
//!       TLSPassthrough: peek the ClientHello (bounded size and time) for the SNI
//!    -> decide: Resource by port (TCP, UDP) or SNI (passthrough); identity from the client
//!       certificate (tenant providers) else anonymous with the client IP; evaluate
//!       (no method, no path; host = SNI, port = listener port)
//!    -> Deny: close, log + count | Allow: balancer pick (health honoured), connect
//!       (connect failures eject and retry) or open a site stream through the tunnel hub
//!       (crate::tunnel), then splice bytes both ways
//! ```
//!
//! Why tokio tasks inside Pingora background services rather than Pingora's `ServerApp`:
//! Pingora has no UDP at all, and its TCP `ServerApp` would give TLSPassthrough nothing
//! (it must not terminate) while its TLS acceptor cannot run the L4 decision between the
//! handshake and the first byte the way one code path for all three kinds can. A background
//! service still gets Pingora's runtime per service, the worker thread count and the
//! graceful shutdown signal (stop accepting at SIGTERM, runtimes dropped after the
//! shutdown timeout), so L4 and HTTP listeners stop together.
//!
//! Listeners are bound from the first snapshot, like the HTTP ones: a listener added later
//! needs a restart (the reloader warns). What a bound port serves is read from the current
//! snapshot per connection, so TLS on a TCP listener, its certificates and client CAs,
//! Resources, upstreams and Policies all follow reloads without one.

mod clients;
mod stream;
mod tcp;
pub(crate) use tcp::{Early, read_proxy_header};
mod udp;

use clients::{ClientSlot, PerClient};
pub use stream::{LastActivity, Prefixed, Watched};

use crate::authn::{self, Credentials, NoRemote};
use crate::metrics::{DecisionLabels, L4Labels};
use crate::pipeline::{Env, IdentitySummary, Record, identity_summary, limit_key};
use crate::proxy::Shared;
use crate::state::Compiled;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::CertificateDer;
use rustronaut_contract::Identity;
use rustronaut_contract::eval::{Effect, Request, evaluate};
use rustronaut_contract::snapshot::{ListenerProtocol, LoadBalancing, ResourceProtocol};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Bounds of the L4 listeners.
#[derive(Debug, Clone)]
pub struct L4Options {
    /// Time a new TCP connection has to send its PROXY header, ClientHello (passthrough) or
    /// to complete its TLS handshake (TCP with TLS); slower clients are closed.
    pub handshake_timeout: Duration,
    /// Most bytes read while looking for a ClientHello's SNI.
    pub max_client_hello: usize,
    /// A UDP flow without a datagram in either direction for this long ends.
    pub udp_idle_timeout: Duration,
    /// Most UDP flows (allowed or denied) per listener; datagrams of new flows beyond it are
    /// dropped.
    pub udp_max_flows: usize,
    /// Most UDP flows per client (IPv4 address, IPv6 /64) per listener, so one host cannot
    /// fill the flow table; datagrams of its new flows beyond it are dropped until one of
    /// its flows idles out.
    pub udp_max_flows_per_client: usize,
    /// Copy buffer per direction of a spliced TCP connection. tokio's default is 8 KiB, a
    /// read and a write system call per 8 KiB; larger buffers cost memory per connection
    /// and save system calls on bulk transfers (measured in docs/benchmarks.md).
    pub copy_buffer: usize,
    /// A spliced TCP connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Most TCP connections open at once per L4 port; more are closed on accept.
    pub max_connections: usize,
    /// Most TCP connections open at once per client (IPv4 address, IPv6 /64; the PROXY
    /// header's source where the listener takes one) per L4 port; more are closed at once.
    pub max_connections_per_client: usize,
}

impl Default for L4Options {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_client_hello: 32 * 1024,
            udp_idle_timeout: Duration::from_secs(60),
            udp_max_flows: 10_000,
            udp_max_flows_per_client: 256,
            copy_buffer: 64 * 1024,
            idle_timeout: Duration::from_secs(3600),
            max_connections: 20_000,
            max_connections_per_client: 512,
        }
    }
}

/// The kind of an L4 port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP, plain or TLS-terminated.
    Tcp,
    /// TLS routed by SNI.
    Passthrough,
    /// UDP.
    Udp,
}

impl Kind {
    /// The kind serving `protocol`, if it is an L4 one.
    pub fn of(protocol: ListenerProtocol) -> Option<Self> {
        match protocol {
            ListenerProtocol::Tcp => Some(Self::Tcp),
            ListenerProtocol::TlsPassthrough => Some(Self::Passthrough),
            ListenerProtocol::Udp => Some(Self::Udp),
            ListenerProtocol::Http | ListenerProtocol::Https => None,
        }
    }

    fn listener_protocol(self) -> ListenerProtocol {
        match self {
            Self::Tcp => ListenerProtocol::Tcp,
            Self::Passthrough => ListenerProtocol::TlsPassthrough,
            Self::Udp => ListenerProtocol::Udp,
        }
    }

    fn resource_protocol(self) -> ResourceProtocol {
        match self {
            Self::Tcp => ResourceProtocol::Tcp,
            Self::Passthrough => ResourceProtocol::TlsPassthrough,
            Self::Udp => ResourceProtocol::Udp,
        }
    }

    /// Label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Passthrough => "TLSPassthrough",
            Self::Udp => "UDP",
        }
    }
}

/// The names of the current snapshot's listeners of `kind` on `port` (several only for
/// TLSPassthrough listeners with distinct hostnames sharing a port).
pub fn listeners_on(c: &Compiled, kind: Kind, port: u16) -> Vec<&str> {
    c.snapshot
        .listeners
        .iter()
        .filter(|l| l.port == port && l.protocol == kind.listener_protocol())
        .map(|l| l.name.as_str())
        .collect()
}

/// What a connection or flow presented.
#[derive(Debug)]
pub struct L4Facts<'a> {
    /// Kind of the port.
    pub kind: Kind,
    /// Listeners on the port (see [`listeners_on`]).
    pub listeners: &'a [&'a str],
    /// Listener port.
    pub port: u16,
    /// TLS SNI (passthrough, or TCP with TLS), lower-case without trailing dot.
    pub sni: Option<&'a str>,
    /// Client address: the peer, or the PROXY header's source.
    pub client_ip: IpAddr,
    /// Verified client certificate chain, leaf first (TCP with TLS).
    pub client_chain: Option<&'a [CertificateDer<'static>]>,
}

/// Where an allowed connection goes.
#[derive(Debug)]
pub struct L4Forward {
    /// Index of the Resource in the snapshot.
    pub resource: usize,
    /// The identity that was allowed.
    pub identity: Identity,
    /// The key a ConsistentHash Resource balances on.
    pub hash_key: Option<String>,
}

/// The decision on one connection or flow.
#[derive(Debug)]
pub struct L4Verdict {
    /// `Some` when allowed.
    pub forward: Option<L4Forward>,
    /// What to log.
    pub record: Record,
}

fn refused(mut record: Record, reason: &'static str, detail: Option<String>) -> L4Verdict {
    record.reason = reason;
    record.detail = detail;
    if record.effect.is_empty() {
        record.effect = "-";
    }
    L4Verdict {
        forward: None,
        record,
    }
}

/// Decides one connection or flow: the same evaluator as HTTP, with no method and no path.
/// Pure, like [`crate::pipeline::decide`].
pub fn decide(c: &Compiled, facts: &L4Facts<'_>, env: &Env<'_>) -> L4Verdict {
    let mut record = Record {
        identity: IdentitySummary::Static("anonymous"),
        decision_id: env.ids.next_id(),
        client_ip: Some(facts.client_ip),
        ..Record::default()
    };
    let found = match facts.kind {
        Kind::Passthrough => {
            let Some(sni) = facts.sni else {
                return refused(record, "MissingSNI", None);
            };
            c.resource_for_sni(facts.listeners, sni)
        }
        Kind::Tcp | Kind::Udp => facts
            .listeners
            .iter()
            .find_map(|l| c.resource_for_port(facts.kind.resource_protocol(), l, facts.port)),
    };
    let Some((ri, resource)) = found else {
        let detail = facts
            .sni
            .map_or_else(|| format!("port {}", facts.port), |s| format!("SNI {s}"));
        return refused(record, "NoRoute", Some(format!("no resource for {detail}")));
    };
    record.resource = Some(c.labels(ri).qualified.clone());

    let now_secs = env
        .now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = c
        .tenants
        .get(&resource.tenant)
        .unwrap_or(&crate::state::NO_AUTH);
    // No headers on L4: only a client certificate can be a credential.
    let no_headers = |_: &str| crate::authn::HeaderValues::new();
    let creds = Credentials {
        header: &no_headers,
        client_chain: facts.client_chain,
    };
    let identity = match authn::authenticate(
        auth,
        &creds,
        facts.client_ip,
        now_secs,
        env.cache,
        &NoRemote,
    ) {
        Ok(id) => id,
        Err(e) => {
            record.effect = "Deny";
            return refused(record, "InvalidCredentials", Some(e.to_string()));
        }
    };
    record.identity = identity_summary(&identity);

    let mut request = Request::new(&resource.namespace, &resource.name, &identity).port(facts.port);
    if let Some(sni) = facts.sni {
        request = request.host(sni);
    }
    let mut decision = evaluate(&c.policies, &request, env.now, record.decision_id.clone());
    record.note(&mut decision);
    if decision.effect == Effect::Deny {
        record.effect = "Deny";
        return L4Verdict {
            forward: None,
            record,
        };
    }
    record.effect = "Allow";
    let hash_key = match resource.load_balancing {
        LoadBalancing::ConsistentHash { hash_key } => {
            Some(limit_key(&identity, facts.client_ip, hash_key))
        }
        _ => None,
    };
    L4Verdict {
        forward: Some(L4Forward {
            resource: ri,
            identity,
            hash_key,
        }),
        record,
    }
}

/// The client address as policies see it (IPv4-mapped IPv6 as IPv4).
pub fn canonical(ip: IpAddr) -> IpAddr {
    rustronaut_contract::cidr::canonical_ip(ip)
}

/// Logs one decision line and counts it.
pub(crate) fn record(
    shared: &Shared,
    kind: Kind,
    port: u16,
    peer: SocketAddr,
    record: &Record,
    upstream: Option<String>,
) {
    let m = &shared.metrics;
    if record.effect == "Allow" || record.effect == "Deny" {
        m.decisions
            .get_or_create(&DecisionLabels {
                effect: record.effect,
                reason: record.reason,
            })
            .inc();
    }
    m.l4_connections
        .get_or_create(&L4Labels {
            protocol: kind.label(),
            resource: record.resource.as_deref().unwrap_or("-").to_string(),
            result: match record.effect {
                "Allow" if upstream.is_some() => "allowed",
                "Allow" => "unreachable",
                "Deny" => "denied",
                _ => "refused",
            },
        })
        .inc();
    tracing::info!(
        target: "rustronaut::decision",
        protocol = kind.label(),
        port,
        peer = %peer,
        resource = record.resource.as_deref().unwrap_or("-"),
        identity = %record.identity,
        client_ip = %record.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        decision = record.effect,
        reason = record.reason,
        policy = %crate::logs::OrDash(record.policy.as_ref()),
        rule = record.policy_rule.as_deref().unwrap_or("-"),
        decision_id = %record.decision_id,
        upstream = upstream.as_deref().unwrap_or("-"),
        detail = record.detail.as_deref().unwrap_or(""),
        dry_run = record.dry_run.as_deref().unwrap_or("-"),
        "connection"
    );
}

/// A bound socket, waiting for its service to start on a Pingora runtime.
#[derive(Debug)]
enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// One L4 port as a Pingora background service.
#[derive(Debug)]
pub struct L4Service {
    kind: Kind,
    port: u16,
    shared: Arc<Shared>,
    opts: L4Options,
    socket: Mutex<Option<Bound>>,
}

impl L4Service {
    /// Binds `addr` now, so a port in use fails start-up rather than a later task.
    pub fn bind(
        kind: Kind,
        addr: SocketAddr,
        shared: Arc<Shared>,
        opts: L4Options,
    ) -> std::io::Result<Self> {
        let socket = match kind {
            Kind::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Bound::Udp(s)
            }
            Kind::Tcp | Kind::Passthrough => {
                let s = std::net::TcpListener::bind(addr)?;
                s.set_nonblocking(true)?;
                Bound::Tcp(s)
            }
        };
        Ok(Self {
            kind,
            port: addr.port(),
            shared,
            opts,
            socket: Mutex::new(Some(socket)),
        })
    }
}

#[async_trait]
impl BackgroundService for L4Service {
    async fn start(&self, shutdown: ShutdownWatch) {
        let bound = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take();
        let result = match bound {
            Some(Bound::Tcp(l)) => match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tcp::serve(
                        l,
                        self.kind,
                        self.port,
                        self.shared.clone(),
                        self.opts.clone(),
                        shutdown,
                    )
                    .await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Some(Bound::Udp(s)) => match tokio::net::UdpSocket::from_std(s) {
                Ok(s) => {
                    udp::serve(
                        Arc::new(s),
                        self.port,
                        self.shared.clone(),
                        self.opts.clone(),
                        shutdown,
                    )
                    .await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(port = self.port, protocol = self.kind.label(), error = %e, "L4 listener failed");
        }
    }
}
