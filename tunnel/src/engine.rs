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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{Backoff, jitter_seed};
use crate::link::{LinkError, LinkStats, Received, TunnelStream};
use crate::udp;

pub use crate::link::Link;

/// WireGuard's timer granularity (boringtun's device uses the same).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Datagrams handled per wake-up before the stack runs (a few more when the last message
/// carried a coalesced run).
const BATCH: usize = 128;

/// Datagrams for a link from one sender: one, or several laid end to end when the socket
/// received them coalesced (UDP GRO, see [`crate::udp`]), each `stride` bytes but the last.
#[derive(Debug)]
pub struct Datagram {
    /// Bytes.
    pub data: Vec<u8>,
    /// Sender.
    pub from: SocketAddr,
    /// Size of each datagram in `data` but the last (`data.len()` for a single one).
    pub stride: usize,
}

impl Datagram {
    /// A single datagram.
    pub fn single(data: Vec<u8>, from: SocketAddr) -> Self {
        let stride = data.len().max(1);
        Self { data, from, stride }
    }

    /// The datagrams one by one.
    pub fn datagrams(&self) -> std::slice::Chunks<'_, u8> {
        self.data.chunks(self.stride.max(1))
    }
}

/// The queue from a socket's reader to one link task: bounded in messages and, because one
/// message may carry a coalesced run of up to 64 datagrams, in bytes (a flood aimed at one
/// site's index must not queue 64 times what it did when a message was one datagram).
pub fn datagram_queue(max_messages: usize, max_bytes: usize) -> (DatagramSender, DatagramReceiver) {
    let (tx, rx) = mpsc::channel(max_messages);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        DatagramSender {
            tx,
            queued: queued.clone(),
            max_bytes,
        },
        DatagramReceiver { rx, queued },
    )
}

/// The reader's end of [`datagram_queue`].
#[derive(Debug, Clone)]
pub struct DatagramSender {
    tx: mpsc::Sender<Datagram>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl DatagramSender {
    /// Queues `d` if there is room in messages and bytes; gives it back otherwise.
    pub fn try_send(&self, d: Datagram) -> Result<(), Datagram> {
        let len = d.data.len();
        if self.queued.load(Ordering::Relaxed) + len > self.max_bytes {
            return Err(d);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.try_send(d).map_err(|e| {
            let d = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            self.queued.fetch_sub(d.data.len(), Ordering::Relaxed);
            d
        })
    }

    /// Queues `d`, waiting for a free message slot (a reader with one link, which may push
    /// back on its socket); the byte bound holds through the message bound.
    pub async fn send(&self, d: Datagram) -> Result<(), Datagram> {
        let len = d.data.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.send(d).await.map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            e.0
        })
    }
}

/// The link task's end of [`datagram_queue`].
#[derive(Debug)]
pub struct DatagramReceiver {
    rx: mpsc::Receiver<Datagram>,
    queued: Arc<AtomicUsize>,
}

impl DatagramReceiver {
    fn taken(&self, d: Option<Datagram>) -> Option<Datagram> {
        if let Some(d) = &d {
            self.queued.fetch_sub(d.data.len(), Ordering::Relaxed);
        }
        d
    }

    async fn recv(&mut self) -> Option<Datagram> {
        let d = self.rx.recv().await;
        self.taken(d)
    }

    fn try_recv(&mut self) -> Option<Datagram> {
        let d = self.rx.try_recv().ok();
        self.taken(d)
    }
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
    socket: Arc<udp::Socket>,
    datagrams: DatagramReceiver,
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

pub use crate::udp::canonical;

async fn send_all(link: &mut Link, socket: &udp::Socket, name: &str) {
    if link.outbox().is_empty() {
        return;
    }
    if let Err(e) = socket.send_outbox(link.outbox()).await {
        // Transient (no route while an address changes, buffer full): WireGuard's timers
        // retransmit what matters, TCP inside the tunnel the rest.
        tracing::debug!(peer = name, error = %e, "failed to send datagrams");
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
    socket: Arc<udp::Socket>,
    mut datagrams: DatagramReceiver,
    mut commands: mpsc::Receiver<Command>,
    stats: watch::Sender<LinkStats>,
    initiator: Option<Initiator>,
    name: String,
) {
    let wake = link.waker();
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
        send_all(&mut link, &socket, &name).await;
        let delay = link.poll_delay().unwrap_or(TIMER_TICK).min(TIMER_TICK);
        tokio::select! {
            biased;
            d = datagrams.recv(), if ingress_open => match d {
                Some(d) => {
                    let mut handled = handle_datagram(&mut link, d, &name);
                    while handled < BATCH {
                        match datagrams.try_recv() {
                            Some(d) => handled += handle_datagram(&mut link, d, &name),
                            None => break,
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
    send_all(&mut link, &socket, &name).await;
}

/// Feeds the link; returns how many datagrams that was.
fn handle_datagram(link: &mut Link, d: Datagram, name: &str) -> usize {
    let mut count = 0;
    for datagram in d.datagrams() {
        count += 1;
        let before = link.endpoint();
        match link.receive_datagram(d.from, datagram) {
            Received::Authenticated if before != Some(d.from) => {
                tracing::info!(peer = name, endpoint = %d.from, "peer endpoint changed");
            }
            Received::Rejected(reason) => {
                tracing::debug!(peer = name, from = %d.from, reason = reason.as_str(), "dropped a datagram");
            }
            _ => {}
        }
    }
    count
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: usize, stride: usize) -> Datagram {
        Datagram {
            data: vec![0; n * stride],
            from: SocketAddr::from(([127, 0, 0, 1], 1)),
            stride,
        }
    }

    /// A coalesced run counts by its bytes: a queue of many message slots still holds no
    /// more than its byte bound, and room comes back as the link takes messages.
    #[tokio::test]
    async fn the_datagram_queue_is_bounded_in_bytes_as_well_as_messages() {
        let (tx, mut rx) = datagram_queue(1024, 3000);
        tx.try_send(run(1, 1000)).unwrap();
        tx.try_send(run(2, 1000)).unwrap();
        let refused = tx.try_send(run(1, 1000)).unwrap_err();
        assert_eq!(refused.datagrams().count(), 1);
        assert_eq!(rx.recv().await.unwrap().datagrams().count(), 1);
        tx.try_send(run(1, 1000)).unwrap();
        assert_eq!(rx.try_recv().unwrap().datagrams().count(), 2);
        assert_eq!(rx.try_recv().unwrap().datagrams().count(), 1);
        assert!(rx.try_recv().is_none());
        // Bounded in messages too.
        let (tx, _rx) = datagram_queue(2, usize::MAX);
        tx.try_send(run(1, 10)).unwrap();
        tx.try_send(run(1, 10)).unwrap();
        assert!(tx.try_send(run(1, 10)).is_err());
    }

    /// Two link tasks over real UDP sockets on loopback (GSO and GRO on), a stream of 8 MiB
    /// from a writer to a reader that takes it in small, slow bites: the window closes and
    /// reopens end to end many times, and every byte arrives in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_gets_every_byte_through_two_link_tasks() {
        use crate::keys::PrivateKey;
        use crate::link::LinkConfig;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let sa = Arc::new(udp::Socket::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        ));
        let sb = Arc::new(udp::Socket::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        ));
        let (ka, kb) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        // `a` (10.0.0.1) knows where `b` (10.0.0.2) is; `b` learns `a` from its handshake.
        let link = |own: &PrivateKey, peer: &PrivateKey, index: u32, endpoint| {
            let ip = |i: u32| std::net::IpAddr::from([10, 0, 0, i as u8]);
            Link::new(LinkConfig {
                private_key: own.clone(),
                peer_key: peer.public_key(),
                local_ip: ip(index),
                peer_ip: ip(3 - index),
                keepalive: None,
                index,
                rate_limiter: None,
                endpoint,
            })
            .unwrap()
        };
        let a = link(&ka, &kb, 1, Some(sb.local_addr().unwrap()));
        let mut b = link(&kb, &ka, 2, None);
        let (accept_tx, mut accept) = mpsc::channel(1);
        b.listen(9000, accept_tx);
        let b_addr = sb.local_addr().unwrap().to_string();
        let mut handles = Vec::new();
        for (link, socket, initiator) in [(a, sa, true), (b, sb, false)] {
            let (tx, rx) = datagram_queue(64, usize::MAX);
            let reader = socket.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 65_536];
                while let Ok(r) = reader.recv(&mut buf).await {
                    let d = Datagram {
                        data: buf[..r.len].to_vec(),
                        from: r.from,
                        stride: r.stride,
                    };
                    if tx.send(d).await.is_err() {
                        break;
                    }
                }
            });
            let init = initiator.then(|| Initiator {
                endpoint: b_addr.clone(),
                dead_peer_timeout: Duration::from_secs(30),
            });
            handles.push(spawn(link, socket, rx, init, "test".into()));
        }
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
        let expected = data.clone();
        let client = handles[0].clone();
        let writer = tokio::spawn(async move {
            let mut s = loop {
                match client.connect(9000, Duration::from_secs(5)).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            // Keep the stream until the reader has everything.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        let reader = async {
            let mut s = accept.recv().await.unwrap();
            let mut got = Vec::with_capacity(expected.len());
            let mut bite = [0u8; 4096];
            loop {
                let n = s.read(&mut bite).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&bite[..n]);
                if got.len() % (256 * 1024) < n {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            s.shutdown().await.unwrap();
            got
        };
        let got = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the transfer finishes");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrive in order");
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_run_splits_into_its_datagrams_the_last_one_shorter() {
        let d = Datagram {
            data: (0..25u8).collect(),
            from: SocketAddr::from(([127, 0, 0, 1], 1)),
            stride: 10,
        };
        let sizes: Vec<_> = d.datagrams().map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        assert_eq!(
            Datagram::single(vec![1, 2, 3], d.from).datagrams().count(),
            1
        );
    }
}
