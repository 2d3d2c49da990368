//! The task that owns one [`Link`]: feeds it datagrams and commands, runs its timers, sends
//! what it produces, and (on the connector) keeps the tunnel up.
//!
//! One task per peer keeps each link single-writer: no locks, and a busy site does not stall
//! another site's packets. The task wakes on a datagram, a command, a poke from a stream
//! ([`crate::link::TunnelStream`]), WireGuard's 250 ms timer, or smoltcp's next deadline.
//!
//! As initiator (the connector), the task also reconnects: when the hub has been silent for
//! the dead-peer timeout, or boringtun gave up on the session, it resolves the hub's endpoint
//! again and starts a fresh handshake, spacing attempts with [`Backoff`]. A restarted hub has
//! forgotten every session, and only a new handshake from the connector can restore it.
//! Roaming needs nothing extra here: every authenticated datagram updates the peer's endpoint.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{Backoff, jitter_seed};
use crate::link::{LinkError, LinkStats, Received, TunnelStream};

pub use crate::link::Link;

/// WireGuard's timer granularity (boringtun's device uses the same).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Datagrams handled per wake-up before the stack runs.
const BATCH: usize = 128;

/// A datagram for a link.
#[derive(Debug)]
pub struct Datagram {
    /// Bytes.
    pub data: Vec<u8>,
    /// Sender.
    pub from: SocketAddr,
}

/// Requests to a link task.
#[derive(Debug)]
pub enum Command {
    /// Open a tunnel TCP connection to the peer's `port`.
    Connect {
        /// Port on the peer's tunnel address.
        port: u16,
        /// How long to wait for the peer.
        timeout: Duration,
        /// Where the stream (or error) goes.
        reply: oneshot::Sender<Result<TunnelStream, LinkError>>,
    },
}

/// Makes the link task keep the tunnel up (the connector's side).
#[derive(Debug, Clone)]
pub struct Initiator {
    /// `host:port` of the peer, resolved before every fresh handshake.
    pub endpoint: String,
    /// Silence after which a fresh handshake starts.
    pub dead_peer_timeout: Duration,
}

/// A handle to a running link task.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<LinkStats>,
}

impl LinkHandle {
    /// Opens a tunnel TCP connection to the peer's `port`.
    pub async fn connect(&self, port: u16, timeout: Duration) -> Result<TunnelStream, LinkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Connect {
                port,
                timeout,
                reply,
            })
            .await
            .map_err(|_| LinkError::Closed)?;
        rx.await.map_err(|_| LinkError::Closed)?
    }

    /// The latest counters (refreshed every 250 ms).
    pub fn stats(&self) -> LinkStats {
        self.stats.borrow().clone()
    }
}

/// Starts the task for `link`. Datagrams arrive on `datagrams`; replies go out of `socket`.
/// The task ends when every [`LinkHandle`] clone is dropped.
pub fn spawn(
    link: Link,
    socket: Arc<UdpSocket>,
    datagrams: mpsc::Receiver<Datagram>,
    initiator: Option<Initiator>,
    name: String,
) -> LinkHandle {
    let (commands_tx, commands) = mpsc::channel(64);
    let (stats_tx, stats) = watch::channel(link.stats());
    tokio::spawn(run(
        link, socket, datagrams, commands, stats_tx, initiator, name,
    ));
    LinkHandle {
        commands: commands_tx,
        stats,
    }
}

/// Socket buffer size asked for on WireGuard UDP sockets (the kernel caps it at
/// net.core.rmem_max / wmem_max): bursts of a full TCP window must not overflow the default.
const UDP_BUFFER: usize = 4 << 20;

/// Enlarges a UDP socket's buffers; failures only cost throughput, so they are logged.
pub fn tune_udp_socket(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(UDP_BUFFER)
        .and_then(|_| s.set_send_buffer_size(UDP_BUFFER))
    {
        tracing::debug!(error = %e, "could not enlarge UDP socket buffers");
    }
}

/// An address with IPv4-mapped IPv6 turned into IPv4, as links store endpoints.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An address a socket of the given family can send to (IPv4 as mapped IPv6 on a dual-stack
/// IPv6 socket).
fn for_socket(addr: SocketAddr, socket_v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if socket_v6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

async fn send_all(link: &mut Link, socket: &UdpSocket, v6: bool, name: &str) {
    for (data, to) in link.drain_outgoing() {
        let to = for_socket(to, v6);
        if let Err(e) = socket.send_to(&data, to).await {
            // Transient (no route while an address changes, buffer full): WireGuard's timers
            // retransmit what matters.
            tracing::debug!(peer = name, %to, error = %e, "failed to send a datagram");
        }
    }
}

async fn resolve(endpoint: &str) -> Option<SocketAddr> {
    let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(endpoint));
    match lookup.await {
        Ok(Ok(mut addrs)) => addrs.next(),
        Ok(Err(e)) => {
            tracing::warn!(endpoint, error = %e, "failed to resolve hub endpoint");
            None
        }
        Err(_) => {
            tracing::warn!(endpoint, "timed out resolving hub endpoint");
            None
        }
    }
}

struct Reconnect {
    cfg: Initiator,
    backoff: Backoff,
    next_attempt: Instant,
    up: bool,
}

async fn run(
    mut link: Link,
    socket: Arc<UdpSocket>,
    mut datagrams: mpsc::Receiver<Datagram>,
    mut commands: mpsc::Receiver<Command>,
    stats: watch::Sender<LinkStats>,
    initiator: Option<Initiator>,
    name: String,
) {
    let wake = link.waker();
    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let mut timer = tokio::time::interval(TIMER_TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconnect = initiator.map(|cfg| Reconnect {
        cfg,
        backoff: Backoff::reconnect(),
        next_attempt: Instant::now(),
        up: false,
    });
    let mut ingress_open = true;
    loop {
        link.poll();
        send_all(&mut link, &socket, v6, &name).await;
        let delay = link.poll_delay().unwrap_or(TIMER_TICK).min(TIMER_TICK);
        tokio::select! {
            biased;
            d = datagrams.recv(), if ingress_open => match d {
                Some(d) => {
                    handle_datagram(&mut link, d, &name);
                    for _ in 1..BATCH {
                        match datagrams.try_recv() {
                            Ok(d) => handle_datagram(&mut link, d, &name),
                            Err(_) => break,
                        }
                    }
                }
                None => ingress_open = false,
            },
            c = commands.recv() => match c {
                Some(Command::Connect { port, timeout, reply }) => link.connect(port, timeout, reply),
                None => break,
            },
            _ = wake.notified() => {}
            _ = timer.tick() => {
                let alive = link.update_timers();
                if let Some(r) = reconnect.as_mut() {
                    keep_up(&mut link, r, alive, &name).await;
                }
                stats.send_replace(link.stats());
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::debug!(peer = name, "link stopped");
    link.abort_all();
    send_all(&mut link, &socket, v6, &name).await;
}

fn handle_datagram(link: &mut Link, d: Datagram, name: &str) {
    let before = link.endpoint();
    match link.receive_datagram(d.from, &d.data) {
        Received::Authenticated if before != Some(d.from) => {
            tracing::info!(peer = name, endpoint = %d.from, "peer endpoint changed");
        }
        Received::Rejected(reason) => {
            tracing::debug!(peer = name, from = %d.from, reason = reason.as_str(), "dropped a datagram");
        }
        _ => {}
    }
}

async fn keep_up(link: &mut Link, r: &mut Reconnect, session_alive: bool, name: &str) {
    let now = Instant::now();
    let heard = link
        .last_authenticated()
        .is_some_and(|t| now.duration_since(t) < r.cfg.dead_peer_timeout);
    let up = session_alive && heard && link.stats().connected();
    if up != r.up {
        r.up = up;
        if up {
            tracing::info!(peer = name, endpoint = ?link.endpoint(), "tunnel up");
            r.backoff.reset();
        } else {
            tracing::warn!(peer = name, "tunnel down; reconnecting");
        }
    }
    if up || now < r.next_attempt {
        return;
    }
    if let Some(addr) = resolve(&r.cfg.endpoint).await {
        if link.endpoint() != Some(addr) {
            link.set_endpoint(addr);
        }
        link.initiate(true);
    }
    let delay = r.backoff.next_delay(jitter_seed());
    tracing::debug!(
        peer = name,
        ?delay,
        attempt = r.backoff.attempts(),
        "handshake sent; next attempt after delay"
    );
    r.next_attempt = now + delay;
}
