//! WireGuard's UDP socket, with segmentation offload: many datagrams per system call.
//!
//! Sending one datagram per `sendto` made the tunnel's throughput a matter of system calls
//! and wake-ups, not of cryptography (a profile of `make bench-tunnel` had ChaCha20-Poly1305
//! at 8-12 % of each end's CPU, the socket path and scheduler at most of the rest). Linux has
//! two offloads for exactly this, the ones wireguard-go uses on its sockets:
//!
//! - **UDP GSO** (`UDP_SEGMENT`, Linux 4.18): one `sendmsg` carries up to 64 datagrams of one
//!   size to one destination, laid end to end (the last may be shorter); the kernel, or the
//!   NIC, cuts them apart. [`Outbox`] collects what a link produces into such batches.
//! - **UDP GRO** (`UDP_GRO`, Linux 5.0): one `recvmsg` returns several datagrams of one flow
//!   end to end, with their size (`stride`). On a veth pair (a pod's interface) a GSO batch
//!   crosses as one packet and arrives whole.
//!
//! Both are optional: where the kernel or the device refuses GSO (`EIO`, `EINVAL`), the socket
//! falls back to one datagram per call for good, and logs it once; without GRO every
//! `recvmsg` returns one datagram, which is what the rest of the code expects anyway. What
//! is on the wire does not change: the same datagrams, the same sizes.
//!
//! Everything is safe code over `nix`'s `sendmsg` / `recvmsg` on the tokio socket's
//! descriptor; readiness comes from tokio (`async_io`).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams in one GSO batch (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO batch: the payload of one maximal UDP datagram over IPv6, less a
/// margin for IPv4's larger header.
pub const MAX_BATCH_BYTES: usize = 65_000;

/// A run of datagrams to one destination, all `segment` bytes long but the last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Batch {
    to: SocketAddr,
    start: usize,
    end: usize,
    segment: usize,
    /// The last datagram was shorter than `segment`: nothing more may join.
    closed: bool,
}

impl Batch {
    fn count(&self) -> usize {
        (self.end - self.start).div_ceil(self.segment)
    }
}

/// Datagrams waiting to be sent, grouped into GSO batches as they are pushed.
///
/// One contiguous buffer, reused from one send to the next: pushing a datagram copies it
/// once and allocates nothing once the buffer has grown.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Initialised bytes, of which the first `used` are datagrams: writing in place needs
    /// no zeroing once the buffer has grown.
    buf: Vec<u8>,
    used: usize,
    batches: Vec<Batch>,
}

impl Outbox {
    /// Appends a datagram for `to`; it joins the last batch when the offload allows.
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        let len = datagram.len();
        if len == 0 {
            return;
        }
        let start = self.used;
        if self.buf.len() < start + len {
            self.buf.resize(start + len, 0);
        }
        self.buf[start..start + len].copy_from_slice(datagram);
        self.commit(to, start, len);
    }

    /// Records the datagram at `buf[start..start + len]`, in a batch the offload allows.
    fn commit(&mut self, to: SocketAddr, start: usize, len: usize) {
        self.used = start + len;
        if let Some(b) = self.batches.last_mut()
            && b.to == to
            && !b.closed
            && len <= b.segment
            && b.count() < MAX_SEGMENTS
            && b.end - b.start + len <= MAX_BATCH_BYTES
        {
            b.end += len;
            b.closed = len < b.segment;
            return;
        }
        self.batches.push(Batch {
            to,
            start,
            end: start + len,
            segment: len,
            closed: false,
        });
    }

    /// Appends a datagram that `write` produces in place: it gets `room` bytes and returns
    /// where in them the datagram is (offset, length), or `None` for nothing to send. Saves
    /// the copy [`Outbox::push`] makes. Returns whether a datagram was added.
    pub fn push_with(
        &mut self,
        to: SocketAddr,
        room: usize,
        write: impl FnOnce(&mut [u8]) -> Option<(usize, usize)>,
    ) -> bool {
        let start = self.used;
        if self.buf.len() < start + room {
            self.buf.resize(start + room, 0);
        }
        let Some((offset, len)) = write(&mut self.buf[start..start + room]) else {
            return false;
        };
        if len == 0 || offset + len > room {
            return false;
        }
        if offset != 0 {
            self.buf
                .copy_within(start + offset..start + offset + len, start);
        }
        self.commit(to, start, len);
        true
    }

    /// No datagram waiting.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.batches.iter().map(Batch::count).sum()
    }

    /// Forgets everything. Keeps the buffer's memory for the next burst, up to a bound, so a
    /// link that once sent a large burst does not hold it while idle.
    pub fn clear(&mut self) {
        self.used = 0;
        self.batches.clear();
        if self.buf.len() > 4 * MAX_BATCH_BYTES {
            self.buf.truncate(MAX_BATCH_BYTES);
            self.buf.shrink_to_fit();
        }
    }

    /// The datagrams one by one, in order, with their destinations.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.batches.iter().flat_map(move |b| {
            self.buf[b.start..b.end]
                .chunks(b.segment)
                .map(move |d| (d, b.to))
        })
    }

    /// The batches: (bytes laid end to end, segment size, destination).
    fn batches(&self) -> impl Iterator<Item = (&[u8], usize, SocketAddr)> + '_ {
        self.batches
            .iter()
            .map(move |b| (&self.buf[b.start..b.end], b.segment, b.to))
    }
}

/// One receive: `len` bytes from `from`, datagrams of `stride` bytes laid end to end (the
/// last may be shorter); `stride == len` for a single datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// Size of each datagram but the last.
    pub stride: usize,
}

/// WireGuard's UDP socket: tokio's, plus the offload state.
#[derive(Debug)]
pub struct Socket {
    inner: UdpSocket,
    gso: AtomicBool,
}

/// Socket buffer size asked for (the kernel caps it at net.core.rmem_max / wmem_max): bursts
/// of a full TCP window must not overflow the default.
const SOCKET_BUFFER: usize = 4 << 20;

impl Socket {
    /// Wraps a bound socket: larger buffers, GRO on, GSO tried on first use. Failures only
    /// cost throughput, so they are logged, not returned.
    pub fn new(inner: UdpSocket) -> Self {
        let s = socket2::SockRef::from(&inner);
        if let Err(e) = s
            .set_recv_buffer_size(SOCKET_BUFFER)
            .and_then(|_| s.set_send_buffer_size(SOCKET_BUFFER))
        {
            tracing::debug!(error = %e, "could not enlarge UDP socket buffers");
        }
        if let Err(e) = setsockopt(&inner, sockopt::UdpGroSegment, &true) {
            tracing::debug!(error = %e, "UDP GRO unavailable; one datagram per receive");
        }
        Self {
            inner,
            gso: AtomicBool::new(true),
        }
    }

    /// Turns GSO off (tests of the fallback; a device known not to support it).
    pub fn disable_gso(&self) {
        self.gso.store(false, Ordering::Relaxed);
    }

    /// Whether batches still go out with GSO (it turns off for good on the first refusal).
    pub fn gso_active(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Whether this socket is IPv6 (IPv4 destinations then go as mapped addresses).
    pub fn is_ipv6(&self) -> bool {
        self.inner.local_addr().is_ok_and(|a| a.is_ipv6())
    }

    /// Sends one datagram.
    pub async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.inner.send_to(datagram, self.for_socket(to)).await
    }

    /// Receives into `buf`: one datagram, or several of one flow when GRO coalesced them.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let fd = self.inner.as_raw_fd();
        self.inner
            .async_io(Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!(i32);
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<SockaddrStorage>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )?;
                let from = msg
                    .address
                    .as_ref()
                    .and_then(sockaddr)
                    .ok_or_else(|| io::Error::other("datagram without a source address"))?;
                let mut stride = msg.bytes;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::UdpGroSegments(s) = c
                            && s > 0
                        {
                            stride = s as usize;
                        }
                    }
                }
                Ok(Received {
                    len: msg.bytes,
                    from: canonical(from),
                    stride: stride.max(1),
                })
            })
            .await
    }

    /// Sends everything in `outbox` (a batch per call where GSO works), then empties it.
    /// Returns the first error; the rest is still attempted (WireGuard's timers retransmit
    /// what matters, TCP inside the tunnel the rest).
    pub async fn send_outbox(&self, outbox: &mut Outbox) -> io::Result<()> {
        let mut first_error = None;
        for (bytes, segment, to) in outbox.batches() {
            let to = self.for_socket(to);
            let r = if bytes.len() > segment && self.gso.load(Ordering::Relaxed) {
                match self.send_gso(bytes, segment, to).await {
                    Err(e) if gso_unsupported(&e) => {
                        self.gso.store(false, Ordering::Relaxed);
                        tracing::info!(error = %e, "UDP GSO refused here; sending one datagram per call");
                        self.send_each(bytes, segment, to).await
                    }
                    other => other,
                }
            } else {
                self.send_each(bytes, segment, to).await
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        outbox.clear();
        first_error.map_or(Ok(()), Err)
    }

    async fn send_each(&self, bytes: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
        let mut first_error = None;
        for d in bytes.chunks(segment) {
            if let Err(e) = self.inner.send_to(d, to).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn send_gso(&self, bytes: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
        let fd = self.inner.as_raw_fd();
        let addr = SockaddrStorage::from(to);
        let size = u16::try_from(segment).map_err(|_| io::Error::other("segment too large"))?;
        let sent = self
            .inner
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(bytes)];
                let cmsg = [ControlMessage::UdpGsoSegments(&size)];
                Ok(sendmsg(
                    fd,
                    &iov,
                    &cmsg,
                    MsgFlags::MSG_DONTWAIT,
                    Some(&addr),
                )?)
            })
            .await?;
        if sent != bytes.len() {
            return Err(io::Error::other("short GSO send"));
        }
        Ok(())
    }

    fn for_socket(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.is_ipv6() => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        }
    }
}

/// Errors that mean "no GSO on this path" rather than "this datagram failed".
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno) if libc_errno == nix::errno::Errno::EIO as i32
            || libc_errno == nix::errno::Errno::EINVAL as i32
            || libc_errno == nix::errno::Errno::ENOPROTOOPT as i32
            || libc_errno == nix::errno::Errno::EOPNOTSUPP as i32
    )
}

fn sockaddr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// An address with IPv4-mapped IPv6 turned into IPv4, as links store endpoints.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn equal_datagrams_to_one_destination_form_one_batch_closed_by_a_shorter_one() {
        let mut o = Outbox::default();
        for _ in 0..3 {
            o.push(addr(1), &[7; 100]);
        }
        o.push(addr(1), &[8; 40]);
        // Closed by the short one: the next starts a new batch even at the same size.
        o.push(addr(1), &[9; 40]);
        let batches: Vec<_> = o.batches().map(|(b, s, to)| (b.len(), s, to)).collect();
        assert_eq!(batches, vec![(340, 100, addr(1)), (40, 40, addr(1))]);
        assert_eq!(o.len(), 5);
        let sizes: Vec<_> = o.datagrams().map(|(d, _)| (d.len(), d[0])).collect();
        assert_eq!(sizes, vec![(100, 7), (100, 7), (100, 7), (40, 8), (40, 9)]);
    }

    #[test]
    fn a_larger_datagram_or_another_destination_starts_a_new_batch() {
        let mut o = Outbox::default();
        o.push(addr(1), &[1; 50]);
        o.push(addr(1), &[2; 60]);
        o.push(addr(2), &[3; 60]);
        o.push(addr(2), &[4; 60]);
        let batches: Vec<_> = o.batches().map(|(b, s, to)| (b.len(), s, to)).collect();
        assert_eq!(
            batches,
            vec![(50, 50, addr(1)), (60, 60, addr(1)), (120, 60, addr(2))]
        );
        let order: Vec<_> = o.datagrams().map(|(d, to)| (d[0], to.port())).collect();
        assert_eq!(order, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
    }

    #[test]
    fn datagrams_written_in_place_batch_like_copied_ones() {
        let mut o = Outbox::default();
        assert!(o.push_with(addr(1), 64, |b| {
            b[..10].fill(1);
            Some((0, 10))
        }));
        // Written at an offset: moved to where the batch continues.
        assert!(o.push_with(addr(1), 64, |b| {
            b[5..15].fill(2);
            Some((5, 10))
        }));
        assert!(!o.push_with(addr(1), 64, |_| None), "nothing to send");
        assert!(
            !o.push_with(addr(1), 8, |_| Some((4, 8))),
            "out of its room"
        );
        o.push(addr(1), &[3; 10]);
        let batches: Vec<_> = o.batches().map(|(b, s, _)| (b.to_vec(), s)).collect();
        let mut expected = vec![1; 10];
        expected.extend([2; 10]);
        expected.extend([3; 10]);
        assert_eq!(batches, vec![(expected, 10)]);
        // After a send, the buffer is reused from the start.
        o.clear();
        o.push(addr(2), &[4; 3]);
        assert_eq!(
            o.datagrams().map(|(d, _)| d.to_vec()).collect::<Vec<_>>(),
            vec![vec![4; 3]]
        );
    }

    #[test]
    fn batches_respect_the_kernels_limits() {
        let mut o = Outbox::default();
        for _ in 0..(MAX_SEGMENTS + 1) {
            o.push(addr(1), &[0; 10]);
        }
        let counts: Vec<_> = o.batches().map(|(b, s, _)| b.len() / s).collect();
        assert_eq!(counts, vec![MAX_SEGMENTS, 1]);
        o.clear();
        assert!(o.is_empty());
        for _ in 0..50 {
            o.push(addr(1), &[0; 1452]);
        }
        for (b, _, _) in o.batches() {
            assert!(b.len() <= MAX_BATCH_BYTES, "{}", b.len());
        }
        assert_eq!(o.len(), 50);
        o.push(addr(1), &[]);
        assert_eq!(o.len(), 50, "an empty datagram is not sent");
    }

    /// Real sockets on loopback: a GSO batch arrives as the same datagrams, whether the
    /// receiver gets them coalesced (GRO) or one by one, and the fallback without GSO sends
    /// the same bytes.
    #[tokio::test]
    async fn a_batch_crosses_loopback_as_the_same_datagrams() {
        for gso in [true, false] {
            let rx = Socket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let tx = Socket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            if !gso {
                tx.disable_gso();
            }
            let to = rx.local_addr().unwrap();
            let mut o = Outbox::default();
            let mut sent = Vec::new();
            for i in 0..20u8 {
                let len = if i == 19 { 300 } else { 1000 };
                sent.push(vec![i; len]);
                o.push(to, &sent[i as usize]);
            }
            tx.send_outbox(&mut o).await.unwrap();
            assert!(o.is_empty());
            assert_eq!(
                tx.gso_active(),
                gso,
                "loopback takes GSO (Linux 4.18 and later)"
            );
            let mut got = Vec::new();
            let mut coalesced = false;
            let mut buf = vec![0; 65_536];
            while got.len() < sent.len() {
                let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut buf))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
                assert_eq!(r.from, tx.local_addr().unwrap());
                coalesced |= r.len > r.stride;
                got.extend(buf[..r.len].chunks(r.stride).map(<[u8]>::to_vec));
            }
            assert_eq!(got, sent, "gso {gso}");
            // A GSO batch reaches a GRO socket on loopback whole; single sends may also be
            // coalesced by GRO, so only the first case is certain.
            if gso {
                assert!(coalesced, "the batch arrived coalesced (UDP GRO)");
            }
        }
    }
}
