//! One WireGuard peer with its own userspace TCP/IP stack: the synchronous core of both ends.
//!
//! ```text
//!   UDP datagrams ──▶ Tunn::decapsulate ──▶ IP packets ──▶ smoltcp Interface ──▶ TCP sockets
//!   UDP datagrams ◀── Tunn::encapsulate ◀── IP packets ◀──         (poll)      ◀── TunnelStream
//!                                                                                 (AsyncRead/Write
//!                                                                                  for tokio tasks)
//! ```
//!
//! A `Link` is a point-to-point network of two addresses: ours and the peer's. Packets that
//! arrive through the tunnel from any other source address are dropped (WireGuard's
//! cryptokey routing, with a single allowed IP), so a site can never speak for another site.
//! There is no routing table and no TUN device; each link runs in one task (see
//! [`crate::engine`]) that owns it, so nothing here locks.
//!
//! Applications see a tunnel TCP connection as a [`TunnelStream`]. Data moves through bounded
//! channels: the link only reads from a smoltcp socket when the application's channel has
//! room, and only takes from the application's channel when the socket's send buffer has room,
//! so a slow reader closes the TCP window end to end instead of filling memory. Every
//! application-side operation pokes a shared `Notify` so the link task runs again.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use bytes::{Buf, Bytes};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::keys::{PrivateKey, PublicKey};
use crate::udp::Outbox;

/// Inner MTU: WireGuard's default, so a data packet fits a 1500-byte path over IPv4 or IPv6.
pub const MTU: usize = 1420;
/// Scratch buffer size for boringtun: large enough for any UDP datagram.
const SCRATCH: usize = 65_536;
/// Smallest buffer given to boringtun's `decapsulate`: room for a handshake answer or a
/// cookie reply written instead of a packet.
const MIN_DECAPSULATE_BUFFER: usize = 256;
/// What encryption adds to a packet: WireGuard's data header (16 bytes) and tag (16), with
/// room to spare for padding.
const ENCAPSULATE_OVERHEAD: usize = 64;
/// TCP buffer sizes per tunnel connection (each way): the window one stream may have in
/// flight. Under load the round trip through both userspace stacks is close to 1 ms, so
/// 256 KiB held one stream to ~2.4 Gbit/s (0.93-0.95x a wireguard-go pair, whose kernel TCP
/// autotunes its window); 512 KiB carried 2.9-3.1 (1.18x), 1 MiB no more than that
/// (docs/benchmarks-tunnel.md). Memory is committed only as it is used: an idle connection
/// costs nothing, a full one 1 MiB plus its channels.
const TCP_BUFFER: usize = 512 * 1024;
/// Largest chunk handed between a socket and its application. Large chunks mean few
/// hand-overs (each may wake the other task) per megabyte; see [`COPY_BUFFER`].
const CHUNK: usize = 64 * 1024;
/// Chunks queued per direction between a socket and its application (with [`CHUNK`], at most
/// 512 KiB per direction, the same as the TCP buffers).
const CHANNEL_DEPTH: usize = 8;
/// Buffer size for copying between a [`TunnelStream`] and an OS socket
/// (`copy_bidirectional_with_sizes`): tokio's default of 8 KiB would cut every transfer
/// into eighths of a [`CHUNK`].
pub const COPY_BUFFER: usize = CHUNK;
/// IP packets queued from the tunnel before the stack runs; more are dropped (TCP recovers).
const MAX_RX_QUEUE: usize = 4096;
/// Idle tunnel connections are probed this often, so dead ones are noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// A tunnel connection with unacknowledged data for this long is aborted.
const TCP_TIMEOUT: Duration = Duration::from_secs(60);
/// Listening sockets kept ready per listener: smoltcp has no accept queue, a SYN finds a
/// socket in `Listen` state or is refused.
const LISTEN_BACKLOG: usize = 8;

/// Errors of a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer refused the tunnel connection (nothing listening) or reset it.
    #[error("the peer refused the connection to port {0} inside the tunnel")]
    Refused(u16),
    /// No answer in time (tunnel down, or the peer is not running).
    #[error("no answer from the peer within {0:?} (is its tunnel up?)")]
    Timeout(Duration),
    /// No local port left for a new connection.
    #[error("no free local port for a new tunnel connection")]
    NoPorts,
    /// The link task has stopped.
    #[error("the tunnel to this peer is shutting down")]
    Closed,
    /// Addresses of different families.
    #[error("tunnel addresses must be of one family")]
    AddressFamily,
}

/// How a link is set up.
#[derive(Clone)]
pub struct LinkConfig {
    /// Our key.
    pub private_key: PrivateKey,
    /// The peer's key.
    pub peer_key: PublicKey,
    /// Our tunnel address.
    pub local_ip: IpAddr,
    /// The peer's tunnel address (the only source accepted from it).
    pub peer_ip: IpAddr,
    /// Persistent keepalive in seconds.
    pub keepalive: Option<u16>,
    /// 24-bit index, unique per peer of one endpoint (session indexes derive from it).
    pub index: u32,
    /// A rate limiter shared by all peers of one UDP endpoint (the hub's); `None` gives the
    /// link its own.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Where the peer is, if known (the connector knows; the hub learns).
    pub endpoint: Option<SocketAddr>,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("private_key", &self.private_key)
            .field("peer_key", &self.peer_key)
            .field("local_ip", &self.local_ip)
            .field("peer_ip", &self.peer_ip)
            .field("keepalive", &self.keepalive)
            .field("index", &self.index)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Counters and times of one link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    /// Time since the current session's handshake, if there is a session.
    pub since_handshake: Option<Duration>,
    /// Inner bytes sent (boringtun's count).
    pub tx_bytes: u64,
    /// Inner bytes received.
    pub rx_bytes: u64,
    /// Datagrams received that authenticated.
    pub rx_datagrams: u64,
    /// Datagrams received that did not (malformed, replayed, wrong key, ...).
    pub rx_rejected: u64,
    /// Inner packets dropped: wrong source address, or queue full.
    pub rx_dropped_packets: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Open tunnel connections.
    pub streams: usize,
    /// The peer's current UDP endpoint.
    pub endpoint: Option<SocketAddr>,
}

impl LinkStats {
    /// WireGuard's notion of "up": a handshake within the last 180 s (REJECT_AFTER_TIME).
    pub fn connected(&self) -> bool {
        self.since_handshake
            .is_some_and(|d| d < Duration::from_secs(180))
    }
}

/// What a received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// It authenticated (handshake, keepalive or data).
    Authenticated,
    /// It was answered with a cookie (we are under load); not authenticated.
    Cookie,
    /// It was dropped.
    Rejected(RejectReason),
}

/// Why a datagram was dropped (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a WireGuard message, or wrong length.
    Malformed,
    /// MAC or AEAD check failed, or the key is wrong.
    Unauthenticated,
    /// A replayed counter or handshake timestamp.
    Replay,
    /// No session for the index.
    NoSession,
    /// Handshake rate limit.
    UnderLoad,
    /// Anything else boringtun reports.
    Other,
}

impl RejectReason {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::Replay => "replay",
            RejectReason::NoSession => "no_session",
            RejectReason::UnderLoad => "under_load",
            RejectReason::Other => "other",
        }
    }

    fn from_error(e: &WireGuardError) -> Self {
        use WireGuardError::*;
        match e {
            IncorrectPacketLength | InvalidPacket | WrongPacketType | UnexpectedPacket => {
                Self::Malformed
            }
            WrongKey | InvalidMac | InvalidAeadTag | WrongIndex => Self::Unauthenticated,
            InvalidCounter | DuplicateCounter | WrongTai64nTimestamp => Self::Replay,
            NoCurrentSession => Self::NoSession,
            UnderLoad => Self::UnderLoad,
            _ => Self::Other,
        }
    }
}

/// A TCP connection through the tunnel, for tokio code.
pub struct TunnelStream {
    rx: mpsc::Receiver<Bytes>,
    read_buf: Bytes,
    tx: PollSender<Bytes>,
    wake: Arc<Notify>,
    peer: SocketAddr,
}

impl TunnelStream {
    /// The remote end (tunnel address and port).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read_buf.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => {
                    self.read_buf = chunk;
                    // The link stops reading its socket only when this channel is full: wake
                    // it when that slot frees, not for every chunk (each wake-up may be a
                    // switch to another thread).
                    if self.rx.len() + 1 >= self.rx.max_capacity() {
                        self.wake.notify_one();
                    }
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.read_buf.len().min(buf.remaining());
        buf.put_slice(&self.read_buf[..n]);
        self.read_buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let broken =
            || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "tunnel connection closed");
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(broken()));
        }
        let n = data.len().min(CHUNK);
        self.tx
            .send_item(Bytes::copy_from_slice(&data[..n]))
            .map_err(|_| broken())?;
        self.wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tx.close();
        self.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// The link's half of a stream.
struct Pipe {
    from_app: mpsc::Receiver<Bytes>,
    pending: Option<Bytes>,
    app_write_closed: bool,
    to_app: Option<mpsc::Sender<Bytes>>,
}

enum Phase {
    Connecting {
        reply: Option<oneshot::Sender<Result<TunnelStream, LinkError>>>,
        deadline: Instant,
        timeout: Duration,
        port: u16,
    },
    Listening {
        listener: usize,
    },
    Open(Pipe),
}

struct Stream {
    handle: SocketHandle,
    local_port: u16,
    /// Opened by us (its local port came from `used_ports`).
    client: bool,
    phase: Phase,
}

struct Listener {
    port: u16,
    accept: mpsc::Sender<TunnelStream>,
}

/// The virtual network device between smoltcp and boringtun: two packet queues, and the
/// buffers of packets already encrypted, kept for the next ones (no allocation per packet
/// sent once the stack is warm).
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    rx_spare: Vec<Vec<u8>>,
}

/// Packet buffers kept for reuse per direction, at most: enough for a busy stream, while an
/// idle link of a hub with many sites holds at most 2 x 64 x 1.4 KiB (~180 KiB) of them.
const SPARE_BUFFERS: usize = 64;

struct RxToken<'a> {
    packet: Vec<u8>,
    spare: &'a mut Vec<Vec<u8>>,
}
struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    spare: &'a mut Vec<Vec<u8>>,
}

impl smoltcp::phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.packet);
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(self.packet);
        }
        r
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = self.spare.pop().unwrap_or_default();
        packet.clear();
        packet.resize(len, 0);
        let r = f(&mut packet);
        self.tx.push_back(packet);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        let rx = RxToken {
            packet,
            spare: &mut self.rx_spare,
        };
        let tx = TxToken {
            tx: &mut self.tx,
            spare: &mut self.spare,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            spare: &mut self.spare,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // WireGuard authenticates every packet end to end: a corrupted packet never gets
        // here, so checksums are computed for the peer's sake but not verified.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = Checksum::Tx;
        sums.udp = Checksum::Tx;
        sums.icmpv4 = Checksum::Tx;
        sums.icmpv6 = Checksum::Tx;
        caps.checksum = sums;
        caps
    }
}

/// One WireGuard peer and its TCP/IP stack.
pub struct Link {
    tunn: Tunn,
    iface: Interface,
    device: Queues,
    sockets: SocketSet<'static>,
    streams: Vec<Stream>,
    listeners: Vec<Listener>,
    used_ports: HashSet<u16>,
    next_port: u16,
    local_ip: IpAddr,
    peer_ip: IpAddr,
    #[cfg_attr(not(test), allow(dead_code))]
    peer_key: PublicKey,
    endpoint: Option<SocketAddr>,
    outbox: Outbox,
    scratch: Vec<u8>,
    wake: Arc<Notify>,
    epoch: Instant,
    last_authenticated: Option<Instant>,
    stats: LinkStats,
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    // The seed randomises TCP initial sequence numbers and ports; if the OS RNG failed we
    // would still run, but it does not fail on Linux.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

impl Link {
    /// A link; nothing is sent until [`Link::initiate`] or the peer's first packet.
    pub fn new(cfg: LinkConfig) -> Result<Self, LinkError> {
        if cfg.local_ip.is_ipv4() != cfg.peer_ip.is_ipv4() {
            return Err(LinkError::AddressFamily);
        }
        let tunn = Tunn::new(
            cfg.private_key.to_x25519(),
            cfg.peer_key.to_x25519(),
            None,
            cfg.keepalive,
            cfg.index & 0x00ff_ffff,
            cfg.rate_limiter,
        );
        let mut device = Queues::default();
        let mut config = Config::new(HardwareAddress::Ip);
        let seed = random_u64();
        config.random_seed = seed;
        let epoch = Instant::now();
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        let local: IpAddress = cfg.local_ip.into();
        let prefix = if cfg.local_ip.is_ipv4() { 32 } else { 128 };
        iface.update_ip_addrs(|addrs| {
            // Capacity is at least one address in every smoltcp build.
            let _ = addrs.push(IpCidr::new(local, prefix));
        });
        match cfg.local_ip {
            IpAddr::V4(v4) => {
                let _ = iface.routes_mut().add_default_ipv4_route(v4);
            }
            IpAddr::V6(v6) => {
                let _ = iface.routes_mut().add_default_ipv6_route(v6);
            }
        }
        Ok(Self {
            tunn,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            streams: Vec::new(),
            listeners: Vec::new(),
            used_ports: HashSet::new(),
            next_port: 49152 + (seed % 16384) as u16,
            local_ip: cfg.local_ip,
            peer_ip: cfg.peer_ip,
            peer_key: cfg.peer_key,
            endpoint: cfg.endpoint,
            outbox: Outbox::default(),
            scratch: vec![0; SCRATCH],
            wake: Arc::new(Notify::new()),
            epoch,
            last_authenticated: None,
            stats: LinkStats {
                endpoint: cfg.endpoint,
                ..LinkStats::default()
            },
        })
    }

    /// The notifier application-side stream operations poke; the link task waits on it.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Our tunnel address.
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// The peer's tunnel address.
    pub fn peer_ip(&self) -> IpAddr {
        self.peer_ip
    }

    /// The peer's UDP endpoint, if known.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets the peer's UDP endpoint (the connector, after resolving a hub's name).
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    /// When the last authenticated datagram arrived.
    pub fn last_authenticated(&self) -> Option<Instant> {
        self.last_authenticated
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Datagrams to send, batched for the socket ([`crate::udp::Socket::send_outbox`]
    /// empties it).
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Datagrams to send, one by one: (bytes, destination). Empties the outbox.
    pub fn drain_outgoing(&mut self) -> impl Iterator<Item = (Vec<u8>, SocketAddr)> + use<> {
        let datagrams: Vec<_> = self
            .outbox
            .datagrams()
            .map(|(d, to)| (d.to_vec(), to))
            .collect();
        self.outbox.clear();
        datagrams.into_iter()
    }

    fn send_to_peer(&mut self, packet: &[u8]) {
        if let Some(ep) = self.endpoint {
            self.outbox.push(ep, packet);
            self.stats.tx_datagrams += 1;
        }
    }

    /// Starts a handshake now (`force` even if one is in progress).
    pub fn initiate(&mut self, force: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if let TunnResult::WriteToNetwork(p) =
            self.tunn.format_handshake_initiation(&mut scratch, force)
        {
            self.send_to_peer(p);
        }
        self.scratch = scratch;
    }

    /// Feeds one datagram from the network.
    pub fn receive_datagram(&mut self, from: SocketAddr, datagram: &[u8]) -> Received {
        let mut scratch = std::mem::take(&mut self.scratch);
        // A data packet is decrypted straight into a packet buffer for the stack (no copy
        // from a scratch buffer); anything else boringtun writes there is small.
        let mut buf = self.device.rx_spare.pop().unwrap_or_default();
        let need = datagram.len().max(MIN_DECAPSULATE_BUFFER);
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let base = buf.as_ptr() as usize;
        // The decrypted packet: (source, offset in `buf`, length).
        let mut inner = None;
        let outcome = match self.tunn.decapsulate(Some(from.ip()), datagram, &mut buf) {
            TunnResult::WriteToNetwork(p) => {
                if p.first() == Some(&3) {
                    // A cookie reply from the rate limiter: the sender is not authenticated
                    // and must not become the peer's endpoint.
                    self.outbox.push(from, p);
                    Received::Cookie
                } else {
                    self.endpoint = Some(from);
                    self.send_to_peer(p);
                    Received::Authenticated
                }
            }
            TunnResult::WriteToTunnelV4(p, src) => {
                inner = Some((IpAddr::V4(src), p.as_ptr() as usize - base, p.len()));
                Received::Authenticated
            }
            TunnResult::WriteToTunnelV6(p, src) => {
                inner = Some((IpAddr::V6(src), p.as_ptr() as usize - base, p.len()));
                Received::Authenticated
            }
            TunnResult::Done => {
                if datagram.first() == Some(&3) {
                    // A cookie reply to our handshake: authentic (MAC'd) but says nothing
                    // about where the peer is.
                    Received::Cookie
                } else {
                    Received::Authenticated
                }
            }
            TunnResult::Err(e) => Received::Rejected(RejectReason::from_error(&e)),
        };
        match inner {
            Some((src, offset, len)) => self.accept_packet(src, buf, offset, len),
            None => self.device.rx_spare.push(buf),
        }
        if outcome == Received::Authenticated {
            self.endpoint = Some(from);
            self.last_authenticated = Some(Instant::now());
            self.stats.rx_datagrams += 1;
            // Packets queued while there was no session go out now.
            while let TunnResult::WriteToNetwork(p) = self.tunn.decapsulate(None, &[], &mut scratch)
            {
                self.send_to_peer(p);
            }
        } else if matches!(outcome, Received::Rejected(_)) {
            self.stats.rx_rejected += 1;
        }
        self.scratch = scratch;
        outcome
    }

    /// Queues the packet at `buf[offset..offset + len]` for the stack, if it is from the
    /// peer's address and the queue has room; the buffer goes back to the pool otherwise.
    fn accept_packet(&mut self, src: IpAddr, mut buf: Vec<u8>, offset: usize, len: usize) {
        if src != self.peer_ip || self.device.rx.len() >= MAX_RX_QUEUE {
            self.stats.rx_dropped_packets += 1;
            if self.device.rx_spare.len() < SPARE_BUFFERS {
                self.device.rx_spare.push(buf);
            }
            return;
        }
        if offset != 0 {
            buf.copy_within(offset..offset + len, 0);
        }
        buf.truncate(len);
        self.device.rx.push_back(buf);
    }

    /// Runs WireGuard's timers (call every ~250 ms). Returns `false` when the session has
    /// expired (no handshake for too long): the initiator should back off and retry.
    pub fn update_timers(&mut self) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        let alive = match self.tunn.update_timers(&mut scratch) {
            TunnResult::WriteToNetwork(p) => {
                self.send_to_peer(p);
                true
            }
            TunnResult::Err(WireGuardError::ConnectionExpired) => false,
            _ => true,
        };
        self.scratch = scratch;
        alive
    }

    /// Accepts tunnel connections to `port` on our address; each arrives on `accept`.
    pub fn listen(&mut self, port: u16, accept: mpsc::Sender<TunnelStream>) {
        self.listeners.push(Listener { port, accept });
        let listener = self.listeners.len() - 1;
        for _ in 0..LISTEN_BACKLOG {
            self.add_listen_socket(listener);
        }
    }

    fn new_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        s.set_nagle_enabled(false);
        // Without congestion control smoltcp sends a whole window at once; the burst overflows
        // UDP socket buffers on the way and every loss costs a retransmission timeout.
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_keep_alive(Some(TCP_KEEPALIVE.into()));
        s.set_timeout(Some(TCP_TIMEOUT.into()));
        s
    }

    fn add_listen_socket(&mut self, listener: usize) {
        let port = self.listeners[listener].port;
        let mut s = Self::new_socket();
        let local = smoltcp::wire::IpListenEndpoint {
            addr: Some(self.local_ip.into()),
            port,
        };
        if s.listen(local).is_err() {
            return;
        }
        let handle = self.sockets.add(s);
        self.streams.push(Stream {
            handle,
            local_port: port,
            client: false,
            phase: Phase::Listening { listener },
        });
    }

    /// Opens a tunnel connection to the peer's `port`; the answer arrives on `reply`.
    pub fn connect(
        &mut self,
        port: u16,
        timeout: Duration,
        reply: oneshot::Sender<Result<TunnelStream, LinkError>>,
    ) {
        let Some(local_port) = self.pick_port() else {
            let _ = reply.send(Err(LinkError::NoPorts));
            return;
        };
        let mut s = Self::new_socket();
        let remote = (IpAddress::from(self.peer_ip), port);
        let local = smoltcp::wire::IpListenEndpoint {
            addr: Some(self.local_ip.into()),
            port: local_port,
        };
        if s.connect(self.iface.context(), remote, local).is_err() {
            let _ = reply.send(Err(LinkError::Refused(port)));
            return;
        }
        let handle = self.sockets.add(s);
        self.used_ports.insert(local_port);
        self.streams.push(Stream {
            handle,
            local_port,
            client: true,
            phase: Phase::Connecting {
                reply: Some(reply),
                deadline: Instant::now() + timeout,
                timeout,
                port,
            },
        });
    }

    fn pick_port(&mut self) -> Option<u16> {
        for _ in 0..16384 {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
            if !self.used_ports.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    /// Runs the TCP/IP stack and moves data between sockets and applications until nothing
    /// moves; outgoing packets are encrypted into the outbox.
    pub fn poll(&mut self) {
        for _ in 0..64 {
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let moved = self.pump();
            self.flush_device();
            if !moved && self.device.rx.is_empty() {
                break;
            }
        }
    }

    fn flush_device(&mut self) {
        if self.device.tx.is_empty() {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(packet) = self.device.tx.pop_front() {
            match self.endpoint {
                // Encrypted straight into the outbox: no copy from a scratch buffer.
                Some(ep) => {
                    let tunn = &mut self.tunn;
                    let room = (packet.len() + ENCAPSULATE_OVERHEAD).max(MIN_DECAPSULATE_BUFFER);
                    let sent = self.outbox.push_with(ep, room, |dst| {
                        let base = dst.as_ptr() as usize;
                        match tunn.encapsulate(&packet, dst) {
                            TunnResult::WriteToNetwork(p) => {
                                Some((p.as_ptr() as usize - base, p.len()))
                            }
                            _ => None,
                        }
                    });
                    if sent {
                        self.stats.tx_datagrams += 1;
                    }
                }
                // Nowhere to send yet; boringtun still keeps its timers (and queues the
                // packet if there is no session).
                None => {
                    let _ = self.tunn.encapsulate(&packet, &mut scratch);
                }
            }
            if self.device.spare.len() < SPARE_BUFFERS {
                self.device.spare.push(packet);
            }
        }
        self.scratch = scratch;
    }

    /// How long until the stack needs to run again, at most.
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Moves data for every stream; returns whether anything moved.
    fn pump(&mut self) -> bool {
        let mut moved = false;
        let mut refill = Vec::new();
        let mut i = 0;
        while i < self.streams.len() {
            let (keep, m) = self.pump_one(i, &mut refill);
            moved |= m;
            if keep {
                i += 1;
            } else {
                let s = self.streams.swap_remove(i);
                self.sockets.remove(s.handle);
                if s.client {
                    self.used_ports.remove(&s.local_port);
                }
            }
        }
        for listener in refill {
            self.add_listen_socket(listener);
            moved = true;
        }
        self.stats.streams = self
            .streams
            .iter()
            .filter(|s| matches!(s.phase, Phase::Open(_)))
            .count();
        moved
    }

    /// Returns (keep the stream, something moved).
    fn pump_one(&mut self, i: usize, refill: &mut Vec<usize>) -> (bool, bool) {
        let peer_ip = self.peer_ip;
        let stream = &mut self.streams[i];
        let sock = self.sockets.get_mut::<tcp::Socket>(stream.handle);
        let state = sock.state();
        match &mut stream.phase {
            Phase::Listening { listener } => {
                let listener = *listener;
                match state {
                    tcp::State::Listen | tcp::State::SynReceived => (true, false),
                    tcp::State::Established | tcp::State::CloseWait => {
                        refill.push(listener);
                        let remote = sock
                            .remote_endpoint()
                            .map(|e| SocketAddr::new(e.addr.into(), e.port))
                            .unwrap_or(SocketAddr::new(peer_ip, 0));
                        let (pipe, ts) = new_pipe(&self.wake, remote);
                        if self.listeners[listener].accept.try_send(ts).is_err() {
                            // Nobody accepting, or a flood: refuse rather than queue.
                            sock.abort();
                            return (false, true);
                        }
                        stream.phase = Phase::Open(pipe);
                        (true, true)
                    }
                    _ => {
                        refill.push(listener);
                        (false, true)
                    }
                }
            }
            Phase::Connecting {
                deadline,
                timeout,
                port,
                reply,
            } => {
                let (port, timeout, deadline) = (*port, *timeout, *deadline);
                let Some(r) = reply.as_ref() else {
                    return (false, true);
                };
                if r.is_closed() {
                    // The requester gave up.
                    sock.abort();
                    return (false, true);
                }
                match state {
                    tcp::State::Established | tcp::State::CloseWait => {
                        let (pipe, ts) = new_pipe(&self.wake, SocketAddr::new(peer_ip, port));
                        let sent = reply.take().map(|r| r.send(Ok(ts)).is_ok());
                        if sent != Some(true) {
                            sock.abort();
                            return (false, true);
                        }
                        stream.phase = Phase::Open(pipe);
                        (true, true)
                    }
                    tcp::State::SynSent if Instant::now() < deadline => (true, false),
                    tcp::State::SynSent => {
                        sock.abort();
                        if let Some(r) = reply.take() {
                            let _ = r.send(Err(LinkError::Timeout(timeout)));
                        }
                        (false, true)
                    }
                    _ => {
                        if let Some(r) = reply.take() {
                            let _ = r.send(Err(LinkError::Refused(port)));
                        }
                        (false, true)
                    }
                }
            }
            Phase::Open(pipe) => pump_pipe(sock, pipe),
        }
    }

    /// Counters, with boringtun's.
    pub fn stats(&self) -> LinkStats {
        let (since, tx, rx, _, _) = self.tunn.stats();
        LinkStats {
            since_handshake: since,
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
            endpoint: self.endpoint,
            ..self.stats.clone()
        }
    }

    #[cfg(test)]
    pub(crate) fn peer_key_for_tests(&self) -> PublicKey {
        self.peer_key
    }

    #[cfg(test)]
    pub(crate) fn device_for_tests(&mut self) -> &mut VecDeque<Vec<u8>> {
        &mut self.device.tx
    }

    /// Aborts every connection (the peer is being removed).
    pub fn abort_all(&mut self) {
        for s in &self.streams {
            self.sockets.get_mut::<tcp::Socket>(s.handle).abort();
        }
        self.poll();
    }
}

fn new_pipe(wake: &Arc<Notify>, peer: SocketAddr) -> (Pipe, TunnelStream) {
    let (to_app, rx) = mpsc::channel(CHANNEL_DEPTH);
    let (tx, from_app) = mpsc::channel(CHANNEL_DEPTH);
    (
        Pipe {
            from_app,
            pending: None,
            app_write_closed: false,
            to_app: Some(to_app),
        },
        TunnelStream {
            rx,
            read_buf: Bytes::new(),
            tx: PollSender::new(tx),
            wake: wake.clone(),
            peer,
        },
    )
}

/// Moves data of one open stream; returns (keep, moved).
fn pump_pipe(sock: &mut tcp::Socket<'_>, pipe: &mut Pipe) -> (bool, bool) {
    let mut moved = false;
    // Application to tunnel.
    loop {
        if pipe.pending.is_none() && !pipe.app_write_closed {
            match pipe.from_app.try_recv() {
                Ok(b) => pipe.pending = Some(b),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    pipe.app_write_closed = true;
                    sock.close();
                    moved = true;
                }
            }
        }
        let Some(chunk) = pipe.pending.as_mut() else {
            break;
        };
        if !sock.may_send() {
            if !sock.is_open() {
                pipe.pending = None;
            }
            break;
        }
        let n = sock.send_slice(chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        chunk.advance(n);
        if chunk.is_empty() {
            pipe.pending = None;
        }
        moved = true;
    }
    // Tunnel to application.
    match &pipe.to_app {
        Some(tx) => {
            let mut done = false;
            while sock.can_recv() {
                match tx.try_reserve() {
                    Ok(permit) => {
                        let data = sock
                            .recv(|b| {
                                let n = b.len().min(CHUNK);
                                (n, Bytes::copy_from_slice(&b[..n]))
                            })
                            .unwrap_or_default();
                        permit.send(data);
                        moved = true;
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        done = true;
                        break;
                    }
                }
            }
            // The peer finished sending (FIN or reset) and all is delivered: end of stream.
            done |= !sock.may_recv() && sock.recv_queue() == 0;
            if done {
                pipe.to_app = None;
                moved = true;
            }
        }
        None => {
            // Nobody reads any more: discard, so the peer is not stalled by a full window.
            while sock.can_recv() {
                let _ = sock.recv(|b| (b.len(), ()));
                moved = true;
            }
        }
    }
    if matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) && pipe.to_app.is_none() {
        // Closed both ways (or reset) and everything received was handed over: the
        // application has seen end of stream; its writes now fail.
        return (false, true);
    }
    (true, moved)
}

/// Two links wired together in memory, for tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct Pair {
        pub a: Link,
        pub b: Link,
        pub addr_a: SocketAddr,
        pub addr_b: SocketAddr,
    }

    impl Pair {
        /// `a` (10.0.0.1, knows b's endpoint) and `b` (10.0.0.2, learns a's).
        pub fn new(
            b_limiter: Option<Arc<RateLimiter>>,
            b_key: Option<PrivateKey>,
            b_index: u32,
        ) -> Self {
            let ka = PrivateKey::generate().unwrap();
            let kb = b_key.unwrap_or_else(|| PrivateKey::generate().unwrap());
            let addr_a: SocketAddr = "192.0.2.1:40000".parse().unwrap();
            let addr_b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
            let a = Link::new(LinkConfig {
                private_key: ka.clone(),
                peer_key: kb.public_key(),
                local_ip: "10.0.0.1".parse().unwrap(),
                peer_ip: "10.0.0.2".parse().unwrap(),
                keepalive: Some(25),
                index: 7,
                rate_limiter: None,
                endpoint: Some(addr_b),
            })
            .unwrap();
            let b = Link::new(LinkConfig {
                private_key: kb,
                peer_key: ka.public_key(),
                local_ip: "10.0.0.2".parse().unwrap(),
                peer_ip: "10.0.0.1".parse().unwrap(),
                keepalive: None,
                index: b_index,
                rate_limiter: b_limiter,
                endpoint: None,
            })
            .unwrap();
            Self {
                a,
                b,
                addr_a,
                addr_b,
            }
        }

        /// Moves datagrams both ways until quiet; returns the datagrams sent by `a`.
        pub fn shuttle(&mut self) -> Vec<Vec<u8>> {
            let mut sent_by_a = Vec::new();
            for _ in 0..1000 {
                self.a.poll();
                self.b.poll();
                let from_a: Vec<_> = self.a.drain_outgoing().collect();
                let from_b: Vec<_> = self.b.drain_outgoing().collect();
                if from_a.is_empty() && from_b.is_empty() {
                    break;
                }
                for (d, to) in from_a {
                    assert_eq!(to, self.addr_b);
                    self.b.receive_datagram(self.addr_a, &d);
                    sent_by_a.push(d);
                }
                for (d, to) in from_b {
                    assert_eq!(to, self.addr_a);
                    self.a.receive_datagram(self.addr_b, &d);
                }
            }
            sent_by_a
        }

        /// Handshake from `a`.
        pub fn handshake(&mut self) {
            self.a.initiate(false);
            self.shuttle();
            assert!(self.a.stats().connected() && self.b.stats().connected());
        }

        /// Echoes `data` through a tunnel TCP connection from `a` to a listener on `b`.
        pub async fn echo(&mut self, port: u16, data: Vec<u8>) -> Vec<u8> {
            let (acc_tx, mut acc_rx) = mpsc::channel(4);
            self.b.listen(port, acc_tx);
            let (tx, rx) = oneshot::channel();
            self.a.connect(port, Duration::from_secs(5), tx);
            let server = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = acc_rx.recv().await.unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
            });
            let client = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = rx.await.unwrap().unwrap();
                let (mut r, mut w) = tokio::io::split(&mut s);
                let writer = async {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut out = Vec::new();
                let reader = r.read_to_end(&mut out);
                let (_, n) = tokio::join!(writer, reader);
                n.unwrap();
                out
            });
            let deadline = Instant::now() + Duration::from_secs(30);
            while !(client.is_finished() && server.is_finished()) {
                assert!(Instant::now() < deadline, "echo did not finish");
                self.shuttle();
                tokio::task::yield_now().await;
            }
            server.await.unwrap();
            client.await.unwrap()
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64*).
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Pair, Rng};
    use super::*;

    #[tokio::test]
    async fn two_links_carry_a_tcp_stream_both_ways() {
        let mut p = Pair::new(None, None, 9);
        p.handshake();
        let data = Rng(1).bytes(1 << 20);
        let back = p.echo(4101, data.clone()).await;
        assert_eq!(back.len(), data.len());
        assert!(back == data);
        let (sa, sb) = (p.a.stats(), p.b.stats());
        assert!(
            sa.tx_bytes > 1 << 20 && sb.rx_bytes > 1 << 20,
            "{sa:?} {sb:?}"
        );
        assert_eq!(sb.endpoint, Some(p.addr_a));
    }

    #[tokio::test]
    async fn malformed_replayed_and_forged_packets_are_dropped_and_the_tunnel_keeps_working() {
        let mut p = Pair::new(None, None, 9);
        p.handshake();
        let sent = p.shuttle();
        assert!(sent.is_empty());
        // Capture a real data datagram by sending something.
        let _ = p.echo(80, b"first".to_vec()).await;
        let mut captured = Vec::new();
        let _ = p.a.drain_outgoing().count();
        p.a.device.tx.push_back(vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        p.a.flush_device();
        captured.extend(p.a.drain_outgoing().map(|(d, _)| d));
        assert_eq!(captured.len(), 1);
        let data = captured.remove(0);
        assert_eq!(
            p.b.receive_datagram(p.addr_a, &data),
            Received::Authenticated
        );
        // Replay.
        assert_eq!(
            p.b.receive_datagram(p.addr_a, &data),
            Received::Rejected(RejectReason::Replay)
        );
        // Bit flip in the ciphertext of a fresh packet.
        p.a.device.tx.push_back(vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        p.a.flush_device();
        let fresh: Vec<_> = p.a.drain_outgoing().collect();
        let mut flipped = fresh[0].0.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            p.b.receive_datagram(p.addr_a, &flipped),
            Received::Rejected(RejectReason::Unauthenticated)
        );
        // Garbage.
        assert_eq!(
            p.b.receive_datagram(p.addr_a, b"hello"),
            Received::Rejected(RejectReason::Malformed)
        );
        // A replayed datagram from another address does not move the endpoint.
        let attacker: SocketAddr = "203.0.113.9:1".parse().unwrap();
        p.b.receive_datagram(attacker, &data);
        assert_eq!(p.b.endpoint(), Some(p.addr_a));
        // A packet with a forged inner source address is authenticated but dropped.
        let dropped = p.b.stats().rx_dropped_packets;
        p.a.device.tx.push_back(vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 9, 9, 9, 10, 0, 0, 2,
        ]);
        p.a.flush_device();
        let forged: Vec<_> = p.a.drain_outgoing().collect();
        p.b.receive_datagram(p.addr_a, &forged[0].0);
        assert_eq!(p.b.stats().rx_dropped_packets, dropped + 1);
        // Still works.
        assert_eq!(p.echo(81, b"second".to_vec()).await, b"second");
        assert!(p.b.stats().rx_rejected >= 3);
    }

    #[tokio::test]
    async fn roaming_peer_moves_the_endpoint() {
        let mut p = Pair::new(None, None, 9);
        p.handshake();
        p.addr_a = "198.51.100.20:50000".parse().unwrap();
        assert_eq!(p.echo(82, b"roamed".to_vec()).await, b"roamed");
        assert_eq!(p.b.endpoint(), Some(p.addr_a));
    }

    #[tokio::test]
    async fn connect_is_refused_without_a_listener_and_times_out_without_a_peer() {
        let mut p = Pair::new(None, None, 9);
        p.handshake();
        let (tx, mut rx) = oneshot::channel();
        p.a.connect(9999, Duration::from_secs(5), tx);
        p.shuttle();
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err(),
            LinkError::Refused(9999)
        );

        let (tx, mut rx) = oneshot::channel();
        p.a.connect(9999, Duration::from_millis(50), tx);
        p.a.poll();
        let _ = p.a.drain_outgoing().count(); // lost: the peer never sees the SYN
        std::thread::sleep(Duration::from_millis(60));
        p.a.poll();
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err(),
            LinkError::Timeout(Duration::from_millis(50))
        );
    }

    #[test]
    fn mixed_address_families_are_refused() {
        let k = PrivateKey::generate().unwrap();
        let r = Link::new(LinkConfig {
            private_key: k.clone(),
            peer_key: k.public_key(),
            local_ip: "10.0.0.1".parse().unwrap(),
            peer_ip: "fd00::1".parse().unwrap(),
            keepalive: None,
            index: 1,
            rate_limiter: None,
            endpoint: None,
        });
        assert_eq!(r.err(), Some(LinkError::AddressFamily));
    }
}
