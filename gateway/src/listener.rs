//! HTTP and HTTPS listeners: the gateway's own accept loop, in front of [`HeadDeadline`]
//! and Pingora's `HttpProxy`.
//!
//! ```text
//!  accept (on the port's first worker; see [`Workers`])
//!    -> handed to the worker serving the fewest connections: one Pingora background
//!       service of one thread per worker (`--threads`), each with its own HttpProxy
//!    -> Pingora l4 Stream with its socket digest (client address), TCP_NODELAY
//!    HTTP:  -> the PROXY header, when the snapshot asks for one ([`ProxyProtocol`])
//!           -> [`Connection`] (writes buffered, a buffer made on the first write)
//!           -> HeadDeadline::serve_http1 (head deadlines, then HttpProxy per request)
//!    HTTPS: -> [`Tls::accept`], boxed while it runs: the PROXY header (as above), then
//!              the TLS handshake over a [`Connection`] (Pingora's rustls acceptor: SNI
//!              certificates, client certificates, ALPN), both within
//!              `--l4-handshake-timeout-ms`
//!           -> HeadDeadline::process_new (h2 by ALPN to Pingora's HTTP/2 path, else
//!              serve_http1 as above)
//! ```
//!
//! Why not Pingora's listening service: memory per connection (issue 19,
//! docs/benchmarks.md). Pingora 0.9's `Service::run_endpoint` spawns each accepted
//! connection as a task whose future holds, inline, the state of the transport handshake
//! (the rustls acceptor, its timeout) for the connection's whole life: heaptrack measured
//! 8.8 KiB per task. Its `UninitializedStream::handshake` also gives every connection its
//! 1,460-byte write buffer at accept, and by default a 64 KiB read buffer. On a plain
//! listener, 10,000 idle connections held 186 MB, of which those were 103 MB. Here the task
//! holds only what serving needs: an HTTPS connection's handshake runs in a future of its
//! own, boxed, freed when the handshake is done; the write buffer exists from a
//! connection's first write; under TLS there is no read buffer (rustls reads the socket
//! itself and keeps 4 KiB of its own while idle; the 64 KiB one cost about 16 KiB resident
//! per idle HTTPS connection and bought no measurable CPU on 60 MB uploads). Measured with
//! 10,000 idle HTTPS connections: 33 KiB each before, 16.7 KiB now (nginx: 14.4 KiB), most
//! of it the read buffer; the boxed handshake saves less than its 8.8 KiB, as a future is
//! only resident where it was written.
//!
//! Why one accept loop that hands connections over, rather than every worker accepting on
//! the socket: then each worker's runtime polls the socket, and the first awake takes every
//! connection of a burst (sixteen connections opened together all went to one worker of
//! two, `connections_are_spread_over_the_workers`); nginx spreads them with an accept mutex
//! or `SO_REUSEPORT`. Handing over costs one wake-up of the chosen worker per connection,
//! not per request, and the choice sees how many connections each worker serves.
//!
//! What stays as Pingora does it: graceful shutdown (background services, as
//! [`crate::l4`]'s: accepting stops at Pingora's shutdown signal, which the gateway sends
//! at the end of SIGTERM's drain delay, `server::DrainThenStop`; requests in flight keep
//! the grace period and the runtime's shutdown timeout), the client address (the socket digest
//! Pingora's listener sets; a PROXY header's source replaces it), `TCP_NODELAY` on every
//! connection, `SO_REUSEADDR` and a backlog of 65,535 (Pingora's `LISTENER_BACKLOG`), the
//! write buffering (vectored writes included: a response head and a small body leave in
//! one `write`; without it, two writes, and Nagle's algorithm could hold the second), and
//! the TLS stack itself (Pingora's rustls `Acceptor`, built from the same `TlsSettings`
//! with the gateway's handshake callback, SNI resolver and client certificate verifier:
//! crate::tls). What changes for HTTPS: the handshake, PROXY header included, must end
//! within `--l4-handshake-timeout-ms` (10 s) where Pingora gave every connection 60 s.

use crate::downstream::HeadDeadline;
use crate::reload::Store;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Pingora's listen backlog (pingora-core 0.9.1 `src/listeners/l4.rs`).
const BACKLOG: i32 = 65535;

/// Bytes of a connection's write buffer: Pingora's `DEFAULT_L4_WRITE_BUFFER_SIZE`, one
/// Ethernet MSS.
const WRITE_BUFFER: usize = pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE;

/// Binds `addr` for an HTTP(S) listener now (so a port in use fails start-up, as the L4
/// listeners do): `SO_REUSEADDR`, backlog 65,535, non-blocking.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// PROXY protocol (v1 or v2) in front of an HTTP or HTTPS listener, while the current
/// snapshot sets `clientIPDetection.proxyProtocol`. A connection must come from a peer in
/// `clientIPDetection.trustedPeerCIDRs` (the load balancer: any other is closed before a
/// byte is read, as HAProxy refuses a PROXY header from a source it does not accept it
/// from) and start with a header, read by the L4 listeners' bounded reader
/// ([`crate::l4::read_proxy_header`]) within `--l4-handshake-timeout-ms`. Its source
/// becomes the connection's peer address (the socket digest Pingora's session reads), so
/// the client address of every request on the connection; the bytes after it are put back
/// for the TLS handshake or the first request head. A refused connection is closed
/// unanswered, with a decision line (`UntrustedProxyPeer`, `InvalidProxyProtocol`), as on
/// L4 listeners.
///
/// Plain HTTP listeners take it since they run on this accept loop (Pingora 0.9's own
/// listener has a hook before TLS only).
pub struct ProxyProtocol {
    store: Arc<Store>,
    timeout: Duration,
    /// The listener's name, for the decision lines of refusals.
    listener: String,
}

impl ProxyProtocol {
    /// A hook reading the setting from `store` on each connection, giving clients `timeout`
    /// to send the header.
    pub fn new(store: Arc<Store>, timeout: Duration, listener: impl Into<String>) -> Self {
        Self {
            store,
            timeout,
            listener: listener.into(),
        }
    }

    /// The connection's client address: `peer`, or the PROXY header's source when the
    /// current snapshot asks for one (then also the stream's peer address). `None` when the
    /// connection is refused (logged, unless it closed before sending a byte: a load
    /// balancer's TCP health check).
    pub async fn accept(&self, stream: &mut L4Stream, peer: SocketAddr) -> Option<SocketAddr> {
        match self
            .store
            .current()
            .filter(|s| s.snapshot.client_ip_detection.proxy_protocol)
        {
            None => Some(peer),
            // Boxed: the reader's state (its 4 KiB read chunk) then lives only while the
            // header is read, not in every connection's task for the connection's life.
            Some(state) => Box::pin(self.read_header(&state, stream, peer)).await,
        }
    }

    async fn read_header(
        &self,
        state: &crate::state::Compiled,
        stream: &mut L4Stream,
        peer: SocketAddr,
    ) -> Option<SocketAddr> {
        let refuse = |reason: &'static str, detail: String| {
            tracing::info!(
                target: "rustronaut::decision",
                listener = %self.listener,
                peer = %peer,
                client_ip = %peer.ip(),
                decision = "-",
                reason,
                detail,
                status = 0,
                "connection"
            );
            None
        };
        let ip = crate::l4::canonical(peer.ip());
        if !state.trusted_peers.contains(ip) {
            let detail = format!("peer {ip} is not in clientIPDetection.trustedPeerCIDRs");
            return refuse("UntrustedProxyPeer", detail);
        }
        let mut buf = Vec::new();
        let header =
            tokio::time::timeout(self.timeout, crate::l4::read_proxy_header(stream, &mut buf))
                .await;
        let header = match header {
            Ok(Ok(h)) => h,
            Ok(Err(crate::l4::Early::Silent)) => {
                tracing::debug!(listener = %self.listener, %peer, "closed before sending anything");
                return None;
            }
            Ok(Err(crate::l4::Early::Bad(detail))) => {
                return refuse("InvalidProxyProtocol", detail);
            }
            Err(_) => {
                let detail = "no complete PROXY header in time".to_string();
                return refuse("InvalidProxyProtocol", detail);
            }
        };
        if buf.len() > header.length {
            stream.rewind(&buf[header.length..]);
        }
        let Some(src) = header.source else {
            // LOCAL, UNKNOWN: the load balancer speaks for itself.
            return Some(peer);
        };
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(src)));
        stream.set_socket_digest(digest);
        Some(src)
    }
}

/// What an HTTPS listener does between accept and its first request.
pub struct Tls {
    /// Pingora's rustls acceptor, from the listener's `TlsSettings` (crate::server).
    acceptor: pingora::listeners::tls::Acceptor,
    /// For the PROXY header and the handshake together.
    handshake_timeout: Duration,
}

impl Tls {
    /// Handshakes with `acceptor` (built from the listener's settings), after the PROXY
    /// header when the snapshot asks for one, both within `handshake_timeout`.
    pub fn new(acceptor: pingora::listeners::tls::Acceptor, handshake_timeout: Duration) -> Self {
        Self {
            acceptor,
            handshake_timeout,
        }
    }

    /// The accepted socket as a TLS stream, or `None` (logged) when the PROXY header or
    /// the handshake failed or did not end in time. The caller boxes this future: its
    /// state (the acceptor's, rustls's handshake) then lives only while it runs.
    pub async fn accept(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        proxy: &ProxyProtocol,
    ) -> Option<Stream> {
        let mut l4 = l4_stream(tcp, peer);
        let handshake = async {
            proxy.accept(&mut l4, peer).await?;
            Some(self.acceptor.tls_handshake(Connection::new(l4)).await)
        };
        match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Some(Ok(tls))) => Some(Box::new(tls)),
            Ok(None) => None,
            Ok(Some(Err(e))) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not done in time");
                None
            }
        }
    }
}

/// The workers of one HTTP or HTTPS port: each a Pingora background service of one thread
/// (a tokio current-thread runtime) with a proxy of its own, so an upstream keep-alive pool
/// of its own (`crate::server::WORK_STEALING` says why).
pub struct Workers<A> {
    slots: Vec<Slot<A>>,
}

struct Slot<A> {
    app: Arc<HeadDeadline<A>>,
    /// The worker's runtime, set when its service starts.
    handle: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Connections the worker serves now.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl<A> Workers<A> {
    /// One worker per app.
    pub fn new(apps: Vec<HeadDeadline<A>>) -> Arc<Self> {
        Arc::new(Self {
            slots: apps
                .into_iter()
                .map(|app| Slot {
                    app: Arc::new(app),
                    handle: std::sync::OnceLock::new(),
                    open: Arc::default(),
                })
                .collect(),
        })
    }

    /// The started worker that serves the fewest connections (the first of them on a tie),
    /// with its runtime, or `None` when none has started.
    fn least_busy(&self) -> Option<(&Slot<A>, &tokio::runtime::Handle)> {
        use std::sync::atomic::Ordering;
        self.slots
            .iter()
            .filter_map(|s| Some((s, s.handle.get()?)))
            .min_by_key(|(s, _)| s.open.load(Ordering::Relaxed))
    }
}

/// Counts a connection as open on its worker while the connection's task lives.
struct OpenGuard(Arc<std::sync::atomic::AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One worker of an HTTP or HTTPS port as a Pingora background service (of one thread);
/// the first also runs the port's accept loop, which hands each connection to the worker
/// serving the fewest ([`Workers`]).
pub struct HttpListener<A> {
    workers: Arc<Workers<A>>,
    /// Which of `workers` this one is.
    index: usize,
    port: u16,
    /// The first worker's: the listening socket.
    listener: Mutex<Option<std::net::TcpListener>>,
    /// `Some` on an HTTPS port.
    tls: Option<Arc<Tls>>,
    /// The PROXY header, while the snapshot asks for one.
    proxy: Arc<ProxyProtocol>,
}

impl<A> HttpListener<A> {
    /// Worker `index` of `workers`; the one given `listener` (from [`bind`]) accepts on it
    /// once its service starts. HTTPS with `tls`; each connection through `proxy` first.
    pub fn new(
        workers: Arc<Workers<A>>,
        index: usize,
        listener: Option<std::net::TcpListener>,
        port: u16,
        tls: Option<Arc<Tls>>,
        proxy: Arc<ProxyProtocol>,
    ) -> Self {
        Self {
            workers,
            index,
            port,
            listener: Mutex::new(listener),
            tls,
            proxy,
        }
    }
}

#[async_trait]
impl<A> BackgroundService for HttpListener<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = self.workers.slots[self.index]
            .handle
            .set(tokio::runtime::Handle::current());
        let taken = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(listener) = taken else {
            // A worker that does not accept: its runtime serves what it is handed.
            let _ = shutdown.changed().await;
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(port = self.port, error = %e, "HTTP listener failed");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // This worker has started: the choice is never empty.
                        let Some((slot, handle)) = self.workers.least_busy() else { continue };
                        let open = OpenGuard::new(&slot.open);
                        let app = slot.app.clone();
                        let tls = self.tls.clone();
                        let proxy = self.proxy.clone();
                        let shutdown = shutdown.clone();
                        handle.spawn(async move {
                            let _open = open;
                            match tls {
                                None => {
                                    let mut l4 = l4_stream(tcp, peer);
                                    let Some(client) = proxy.accept(&mut l4, peer).await else {
                                        return;
                                    };
                                    let stream = Box::new(Connection::plain(l4, client));
                                    app.serve_http1(stream, &shutdown).await;
                                }
                                Some(tls) => {
                                    // Boxed, so this task does not carry the handshake's
                                    // state for the connection's life (module docs).
                                    let Some(stream) =
                                        Box::pin(tls.accept(tcp, peer, &proxy)).await
                                    else {
                                        return;
                                    };
                                    ServerApp::process_new(&app, stream, &shutdown).await;
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(port = self.port, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => {
                    tracing::info!(port = self.port, "HTTP listener stops accepting");
                    break;
                }
            }
        }
        for slot in &self.workers.slots {
            ServerApp::cleanup(slot.app.as_ref()).await;
        }
    }
}

/// An accepted socket as Pingora's session expects it: an l4 `Stream` whose socket digest
/// knows the peer (the client address of the decision), with `TCP_NODELAY`.
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    let mut l4: L4Stream = tcp.into();
    // As Pingora's listener does for every accepted stream (`apply_stream_settings`): what
    // is written leaves at a flush, so Nagle's algorithm would only hold back the tail of a
    // response (1 MiB responses took ~28 % more CPU with it on: docs/benchmarks.md).
    if let Err(e) = l4.set_nodelay() {
        tracing::debug!(error = %e, "TCP_NODELAY on a client connection");
    }
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    // A new digest: its cell is empty.
    let _ = digest.peer_addr.set(Some(PingoraAddr::from(peer)));
    l4.set_socket_digest(digest);
    l4
}

/// A client connection: Pingora's unbuffered l4 stream with a write buffer of
/// [`WRITE_BUFFER`] bytes, made on the first write and kept for the connection's life (a
/// buffer per response would be an allocation per request). Writes smaller than the buffer
/// are gathered until a flush or until the next would not fit; larger ones go straight
/// through once the buffer is out, as tokio's `BufWriter` does. Reads are not buffered
/// (the head goes into [`HeadDeadline`]'s buffer, bodies into Pingora's).
#[derive(Debug)]
pub struct Connection {
    inner: L4Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// The peer and its text, made once for a plain connection's requests. `None` under
    /// TLS: the session's stream is then the TLS stream, which the proxy never finds this
    /// through (and a PROXY header may name another peer than the accepted socket's).
    peer: Option<crate::proxy::PeerValue>,
}

impl Connection {
    /// The socket under a TLS stream.
    fn new(inner: L4Stream) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            peer: None,
        }
    }

    /// A plain-HTTP connection from `peer`, with the peer's text made once.
    fn plain(inner: L4Stream, peer: SocketAddr) -> Self {
        Self {
            peer: Some(crate::proxy::PeerValue::new(peer.ip())),
            ..Self::new(inner)
        }
    }

    /// The connection's peer, with its text ([`crate::proxy::PeerValue`]); `None` under TLS.
    pub fn peer(&self) -> Option<&crate::proxy::PeerValue> {
        self.peer.as_ref()
    }

    /// Writes out what is buffered; the buffer keeps its capacity.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        if data.len() >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(WRITE_BUFFER);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// Pingora writes bodies with `write_all_buf`, which gathers a chunked body's size line,
    /// data and CRLF into one vectored write when the stream says it can take one.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs.iter().map(|b| b.len()).fold(0, usize::saturating_add);
        if this.buf.len().saturating_add(total) > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        if total >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(WRITE_BUFFER);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Connection {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            tracing::debug!(error = %e, "shutting a client connection down");
        }
    }
}

impl UniqueID for Connection {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Connection {}

impl GetTimingDigest for Connection {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Connection {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Connection {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Connection {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair: the gateway's side as a [`Connection`], the client's as tokio's.
    async fn pair() -> (Connection, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (tcp, peer) = accepted.unwrap();
        (
            Connection::plain(l4_stream(tcp, peer), peer),
            client.unwrap(),
        )
    }

    #[tokio::test]
    async fn the_peer_address_is_in_the_socket_digest() {
        let (conn, client) = pair().await;
        let digest = conn.get_socket_digest().unwrap();
        let peer = digest.peer_addr().unwrap().as_inet().copied();
        assert_eq!(peer, Some(client.local_addr().unwrap()));
    }

    /// What the proxy does with a session's stream (`request_filter`): the boxed stream is
    /// found to be a [`Connection`], whose peer text is the client's address.
    #[tokio::test]
    async fn the_session_stream_gives_the_peers_text() {
        let (conn, client) = pair().await;
        let stream: Stream = Box::new(conn);
        let conn = (*stream).as_any().downcast_ref::<Connection>().unwrap();
        let client = client.local_addr().unwrap().ip();
        let peer = conn.peer().unwrap();
        assert_eq!(peer.ip, client);
        assert_eq!(peer.value, client.to_string());
    }

    #[tokio::test]
    async fn small_writes_wait_for_a_flush_and_leave_together() {
        let (mut conn, mut client) = pair().await;
        assert_eq!(conn.buf.capacity(), 0, "no buffer before the first write");
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        conn.write_all(b"Content-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        assert_eq!(conn.buf.capacity(), WRITE_BUFFER);
        let mut got = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(100), client.read(&mut got)).await;
        assert!(early.is_err(), "nothing is sent before a flush");
        conn.flush().await.unwrap();
        let want = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut all = vec![0u8; want.len()];
        client.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..], want);
        assert!(conn.buf.is_empty());
        assert_eq!(conn.buf.capacity(), WRITE_BUFFER, "the buffer is kept");
    }

    #[tokio::test]
    async fn vectored_writes_are_gathered_or_passed_through_in_order() {
        use std::io::IoSlice;
        let (mut conn, mut client) = pair().await;
        assert!(conn.is_write_vectored());
        let large = vec![b'x'; 3 * WRITE_BUFFER];
        let writer = async {
            // Small: into the buffer whole.
            let n = conn
                .write_vectored(&[
                    IoSlice::new(b"5\r\n"),
                    IoSlice::new(b"hello"),
                    IoSlice::new(b"\r\n"),
                ])
                .await
                .unwrap();
            assert_eq!(n, 10);
            assert_eq!(conn.buf.len(), 10);
            // Large: the buffer goes out first, then the slices straight through.
            let mut bufs = vec![IoSlice::new(b"c00\r\n"), IoSlice::new(&large)];
            let mut rest: &mut [IoSlice<'_>] = &mut bufs;
            let mut left = 5 + large.len();
            while left > 0 {
                let n = conn.write_vectored(rest).await.unwrap();
                left -= n;
                IoSlice::advance_slices(&mut rest, n);
            }
            AsyncWriteExt::shutdown(&mut conn).await.unwrap();
        };
        let reader = async {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        };
        let ((), all) = tokio::join!(writer, reader);
        let mut want = b"5\r\nhello\r\nc00\r\n".to_vec();
        want.extend_from_slice(&large);
        assert!(all == want, "{} bytes, want {}", all.len(), want.len());
    }

    #[tokio::test]
    async fn writes_keep_their_order_across_the_buffer_size() {
        let (mut conn, mut client) = pair().await;
        let small = vec![b'a'; 1000];
        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let writer = async {
            conn.write_all(&small).await.unwrap();
            conn.write_all(&large).await.unwrap();
            conn.write_all(b"end").await.unwrap();
            AsyncWriteExt::shutdown(&mut conn).await.unwrap();
        };
        let reader = async {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        };
        let ((), all) = tokio::join!(writer, reader);
        let mut want = small.clone();
        want.extend_from_slice(&large);
        want.extend_from_slice(b"end");
        assert_eq!(all.len(), want.len());
        assert!(all == want, "bytes reordered or lost");
    }
}
