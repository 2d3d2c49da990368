//! Deadlines on the client side of HTTP/1 connections that Pingora 0.9 does not give:
//! the whole request head must arrive within `--header-timeout-ms` (slowloris), and a
//! keep-alive connection waiting for its next request is closed after
//! `--keepalive-timeout-ms`.
//!
//! Why a wrapper: Pingora reads the head in `HttpSession::read_request`
//! (pingora-core 0.9.1 `src/protocols/http/v1/server.rs`), and every read there gets its own
//! timeout (the 60 s keep-alive timeout the `ServerApp` blanket impl sets in
//! `src/apps/mod.rs`, else `read_timeout`), so a client that sends one byte every 59 s keeps
//! a connection and its buffer forever (pingora issue #447). `read_request` runs inside
//! `HttpProxy::process_new_http` together with the whole proxying of the request, so a
//! timeout around that call would cut slow uploads and slow upstreams too. [`HeadDeadline`]
//! therefore stands where the blanket impl stands: for HTTP/1 it reads the head itself,
//! under one deadline, and hands the bytes to the session as its *pipelined prefix*
//! (`ServerSession::set_pipelined_prefix`, which `read_request` parses before reading the
//! socket again), then lets the proxy serve the request as usual.
//!
//! ```text
//!  accept (TLS done) -> ALPN h2? -> Pingora's own HTTP/2 path (h2_idle_timeout set)
//!                    -> HTTP/1: wait for a first byte   (header timeout; on a reused
//!                                                        connection: keep-alive timeout)
//!                               read until the empty line ends the head (header timeout
//!                                                        from the first byte)
//!                               -> HttpProxy::process_new_http(session with prefix)
//!                               -> reusable? loop
//! ```
//!
//! On a missed deadline with part of a head received, the client gets `408` and the
//! connection is closed; an idle connection is closed without a word (as Pingora does).
//!
//! Memory of idle connections: a connection waiting for its first byte (new, or kept alive
//! between requests) holds no head buffer. The first read of each head goes into a scratch
//! buffer of the worker thread ([`read_first`]); only bytes that arrived are copied into a
//! buffer of the connection's own. A readiness wait cannot be had through Pingora's
//! `Stream` (a `Box<dyn IO>`), and a one-byte read first would add a system call to every
//! request; the copy costs a `memcpy` of the head's first segment. Issue 19: 4 KiB of the
//! ~18 KiB each of 10,000 idle connections held (docs/benchmarks.md).

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Capacity of a connection's head buffer, and most bytes of its first read.
const HEAD_BUFFER: usize = 4096;

thread_local! {
    /// [`read_first`]'s scratch buffer: used only within one poll, never across an await.
    static SCRATCH: RefCell<[u8; HEAD_BUFFER]> = const { RefCell::new([0; HEAD_BUFFER]) };
}

/// The first read of a head: waits for bytes without holding a buffer of the connection's
/// own (each poll reads into the thread's [`SCRATCH`]), then returns what arrived in a
/// buffer of [`HEAD_BUFFER`] capacity; an empty buffer, unallocated, at end of stream.
async fn read_first<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<BytesMut> {
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(BytesMut::new())),
                Poll::Ready(Ok(())) => {
                    let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
                    buf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(buf))
                }
            }
        })
    })
    .await
}

/// Most head bytes read here; past this the session's parser takes over and refuses the
/// request (Pingora's own limit is 1 MiB, the gateway's `--max-header-bytes` is lower).
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// Downstream connection deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Time from accept (or from the first byte on a reused connection) to the end of the
    /// request head.
    pub header: Duration,
    /// Time a keep-alive connection may wait for the first byte of its next request.
    pub keepalive: Duration,
}

/// What reading a head produced.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete head (and whatever followed it in the same reads), and what
    /// [`check_head`] says of its line breaks.
    Complete(BytesMut, Result<(), &'static str>),
    /// The client closed, or sent nothing before the idle deadline.
    Idle,
    /// Part of a head, then the deadline.
    TimedOut,
    /// The bytes read so far exceed [`MAX_HEAD_BYTES`] or the socket failed after some
    /// bytes: given to the session's parser, which answers or closes.
    Handover(BytesMut),
}

/// Where the head in `buf` ends: the index just past the empty line that closes it (CRLF
/// CRLF, or a bare-LF form, which [`check_head`] then refuses). A false end (a head that
/// only looks complete) only means the parser reads the rest under Pingora's per-read
/// timeout.
///
/// One pass over the line feeds (`memchr`): the first one followed by LF or CR LF ends the
/// head, which is the earliest end of either form. With [`check_head`], the specification
/// of [`HeadScan`], which does both in one pass as the bytes arrive (and is checked against
/// the two in tests and by the fuzz target `request_head`).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) => Some(i + 3),
        _ => None,
    })
}

/// Line breaks Pingora's parser (httparse) accepts but the gateway refuses with 400, on a
/// head up to and including its empty line: a bare LF (RFC 9112 §2.2 lets a recipient
/// accept it, but an upstream or a second proxy that does not would split the message
/// elsewhere), and obs-fold, a field line continued on a line starting with a space or tab
/// (RFC 9112 §5.2: a server must refuse it or replace it; refusing is the safe one).
pub fn check_head(head: &[u8]) -> Result<(), &'static str> {
    for i in memchr::memchr_iter(b'\n', head) {
        line_break(head, i)?;
    }
    Ok(())
}

const BARE_LF: &str = "bare LF line ending";

/// [`check_head`]'s test of the line feed at `i` of `head`.
fn line_break(head: &[u8], i: usize) -> Result<(), &'static str> {
    if i == 0 || head[i - 1] != b'\r' {
        return Err(BARE_LF);
    }
    // The request line is never folded; a line after it starting with SP or HT
    // continues the previous field.
    if matches!(head.get(i + 1), Some(b' ' | b'\t')) {
        return Err("obs-fold header continuation line");
    }
    Ok(())
}

/// [`head_end`] and [`check_head`] in one pass over the line feeds, fed the head's bytes as
/// they arrive. The two passes made a `memchr` call per line of every head, twice: about
/// 600 instructions per request in those calls; one pass saves about 220 in all (issue 19,
/// callgrind, docs/benchmarks.md).
///
/// Each call searches only the new bytes and the two before them (the longest end marker
/// being three bytes, and a line feed's test needing the byte after it), so a head sent in
/// many tiny segments does not cost quadratic time; a line feed seen again is tested again,
/// which changes nothing.
#[derive(Debug, Default)]
pub struct HeadScan {
    scanned: usize,
    refused: Option<&'static str>,
}

impl HeadScan {
    /// Scans `buf`, the head so far (what earlier calls saw, then the new bytes): where the
    /// head ends once it is complete, as [`head_end`] of the whole; [`HeadScan::verdict`]
    /// then says what [`check_head`] says of the head up to that end.
    pub fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        let from = self.scanned.saturating_sub(2);
        self.scanned = buf.len();
        for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| i + from) {
            let end = match buf.get(i + 1..) {
                Some([b'\n', ..]) => Some(i + 2),
                Some([b'\r', b'\n', ..]) => Some(i + 3),
                _ => None,
            };
            // Within the head the next byte is tested too; past the head's last line feed
            // there is none of the head's (the `\n\n` end: the second LF is the last).
            if self.refused.is_none() {
                self.refused = line_break(&buf[..end.unwrap_or(buf.len())], i).err();
            }
            if let Some(end) = end {
                if self.refused.is_none() && end == i + 2 {
                    self.refused = Some(BARE_LF);
                }
                return Some(end);
            }
        }
        None
    }

    /// [`check_head`] of the head [`HeadScan::feed`] found the end of.
    pub fn verdict(&self) -> Result<(), &'static str> {
        self.refused.map_or(Ok(()), Err)
    }
}

/// Reads one request head from `stream`. `timer` is set to the deadline of the first byte;
/// once bytes came and the head is not complete with them, it is moved to `header` after
/// that first byte (or left where it is, when `from_call`: then the first-byte deadline
/// is already the head's).
///
/// The timer is the connection's, reused for every head it reads: a `Sleep` made and
/// dropped per request took the runtime's handle, and a lock on the timer wheel to take
/// the entry out again, on every request (issue 19). Moving a registered timer later,
/// as each next request's keep-alive deadline does, is one atomic update in tokio
/// (`TimerEntry::reset` extends in place); a head that completes in its first read
/// never touches the timer, nor reads the clock, again.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    mut timer: Pin<&mut Sleep>,
    header: Duration,
    from_call: bool,
) -> Head {
    let mut buf = BytesMut::new();
    let mut scan = HeadScan::default();
    loop {
        let read = {
            let read = async {
                if buf.is_empty() {
                    buf = read_first(stream).await?;
                    Ok(buf.len())
                } else {
                    stream.read_buf(&mut buf).await
                }
            };
            tokio::pin!(read);
            // The read first, as `tokio::time::timeout` does: bytes that are already there
            // are taken even at the deadline, and a ready read never registers the timer.
            std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
            })
            .await
        };
        match read {
            None if buf.is_empty() => return Head::Idle,
            None => return Head::TimedOut,
            Some(Ok(0) | Err(_)) if buf.is_empty() => return Head::Idle,
            Some(Ok(0) | Err(_)) => return Head::Handover(buf),
            Some(Ok(n)) => {
                if scan.feed(&buf).is_some() {
                    return Head::Complete(buf, scan.verdict());
                }
                if buf.len() == n && !from_call {
                    timer.as_mut().reset(Instant::now() + header);
                }
                if buf.len() > MAX_HEAD_BYTES {
                    return Head::Handover(buf);
                }
            }
        }
    }
}

/// A Pingora HTTP app (the gateway's `HttpProxy`) with [`Deadlines`] on its HTTP/1
/// connections; see the module docs.
pub struct HeadDeadline<A> {
    inner: Arc<A>,
    deadlines: Deadlines,
    /// The listener's name, for the log lines of refusals made here.
    listener: String,
}

impl<A> HeadDeadline<A> {
    /// Wraps `inner`, the app of `listener`.
    pub fn new(inner: A, deadlines: Deadlines, listener: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(inner),
            deadlines,
            listener: listener.into(),
        }
    }
}

impl<A> HeadDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Serves an HTTP/1 connection: reads each head under [`Deadlines`], then lets the
    /// wrapped app serve the request; loops while the connection is kept alive. Called by
    /// [`crate::listener`]'s accept loop: directly for plain HTTP, through
    /// [`ServerApp::process_new`] (which sends h2 to Pingora's path) after TLS.
    pub async fn serve_http1(
        &self,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let d = self.deadlines;
        let keepalive_secs = d.keepalive.as_secs().max(1);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        // The connection's one deadline timer (see `read_head`): the whole first head's
        // deadline now, each later request's keep-alive deadline when it starts waiting.
        let timer = tokio::time::sleep(d.header);
        tokio::pin!(timer);
        loop {
            if *shutdown.borrow() && !first {
                return None;
            }
            if !first {
                timer.as_mut().reset(Instant::now() + d.keepalive);
            }
            let buf = match read_head(&mut stream, timer.as_mut(), d.header, first).await {
                Head::Complete(b, verdict) => {
                    if let Err(why) = verdict {
                        tracing::info!(
                            target: "rustronaut::decision",
                            listener = %self.listener,
                            decision = "-",
                            reason = "MalformedRequest",
                            detail = why,
                            status = 400,
                            "request"
                        );
                        let _ = stream.write_all(MALFORMED_RESPONSE).await;
                        let _ = stream.shutdown().await;
                        return None;
                    }
                    b
                }
                Head::Handover(b) => b,
                Head::Idle => return None,
                Head::TimedOut => {
                    tracing::info!(
                        target: "rustronaut::decision",
                        listener = %self.listener,
                        decision = "-",
                        reason = "HeaderTimeout",
                        detail = "request head not complete in time",
                        status = 408,
                        "request"
                    );
                    let _ = stream.write_all(TIMEOUT_RESPONSE).await;
                    let _ = stream.shutdown().await;
                    return None;
                }
            };
            first = false;
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            // The head is already here; Pingora's own per-read keep-alive timeout only
            // matters for a head the check above took for complete too early.
            session.set_keepalive(if *shutdown.borrow() {
                None
            } else {
                Some(keepalive_secs)
            });
            session.set_pipelined_prefix(buf);
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (s, persistent) = reused.consume();
            stream = s;
            settings = persistent;
        }
    }
}

const MALFORMED_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"status\":400,\"error\":\"bad request\"}";

const TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

#[async_trait]
impl<A> ServerApp for HeadDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 (and h2c, which the gateway does not enable) keeps Pingora's path: a
        // HEADERS frame is read whole by the h2 codec, and idle connections are closed by
        // `h2_idle_timeout`.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.inner.as_ref()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_empty_line_ends_a_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\n\r\nbody"), Some(26));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
    }

    /// The one-pass search finds the same end as searching each form separately and taking
    /// the earlier one, on every head of up to 8 bytes over `\r`, `\n`, ` ` and `a`.
    #[test]
    fn head_end_agrees_with_searching_each_form() {
        fn reference(buf: &[u8]) -> Option<usize> {
            let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
            let crlf = buf.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
            match (lf, crlf) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        let heads = small_heads();
        assert_eq!(heads.len(), (0..=8).map(|l| 4usize.pow(l)).sum::<usize>());
        for buf in heads {
            assert_eq!(head_end(&buf), reference(&buf), "{buf:?}");
        }
    }

    /// Every byte string of up to 8 bytes over `\r`, `\n`, ` ` and `a`: the bytes a head's
    /// line breaks are made of, and one other.
    fn small_heads() -> Vec<Vec<u8>> {
        let alphabet = *b"\r\n a";
        let mut heads = Vec::new();
        for len in 0..=8u32 {
            for mut n in 0..4usize.pow(len) {
                heads.push(
                    (0..len)
                        .map(|_| {
                            let b = alphabet[n % 4];
                            n /= 4;
                            b
                        })
                        .collect(),
                );
            }
        }
        heads
    }

    /// The one-pass scan says what its specification says: on every head of up to 8 bytes
    /// over `\r`, `\n`, ` ` and `a`, fed whole and cut into two reads at every point, its
    /// end is [`head_end`]'s and its verdict [`check_head`]'s on the head up to that end.
    #[test]
    fn the_one_pass_scan_agrees_with_head_end_and_check_head() {
        let mut refused = 0;
        for buf in small_heads() {
            let end = head_end(&buf);
            let verdict = end.map(|e| check_head(&buf[..e]));
            refused += usize::from(matches!(verdict, Some(Err(_))));
            for cut in 0..=buf.len() {
                let mut scan = HeadScan::default();
                let got = match scan.feed(&buf[..cut]) {
                    Some(e) => Some(e),
                    None => scan.feed(&buf),
                };
                assert_eq!(got, end, "{buf:?} cut at {cut}");
                assert_eq!(got.map(|_| scan.verdict()), verdict, "{buf:?} cut at {cut}");
            }
        }
        assert!(refused > 1000, "the alphabet reaches refusals: {refused}");
    }

    #[test]
    fn bare_lf_and_obs_fold_are_refused() {
        assert_eq!(check_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        for bad in [
            &b"GET / HTTP/1.1\nHost: a\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
        ] {
            assert!(
                check_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(MALFORMED_RESPONSE.split(|b| *b == b'{').count(), 2);
        let body =
            &MALFORMED_RESPONSE[MALFORMED_RESPONSE.iter().position(|b| *b == b'{').unwrap()..];
        assert_eq!(body.len(), 36, "Content-Length must match");
    }

    // Real time, short deadlines: tokio's paused clock needs its test-util feature, which
    // would rebuild every tokio dependant for the tests.
    const MS: Duration = Duration::from_millis(1);

    /// [`read_head`] with a timer of its own, set `first_byte` from now.
    async fn read_head_in<S: AsyncRead + Unpin>(
        stream: &mut S,
        first_byte: Duration,
        header: Duration,
        from_call: bool,
    ) -> Head {
        let timer = tokio::time::sleep(first_byte);
        tokio::pin!(timer);
        read_head(stream, timer.as_mut(), header, from_call).await
    }

    /// One timer serves every head of a connection, as `serve_http1` uses it: moved later
    /// for the next request after it was registered (polled while waiting) and after it
    /// was not, it fires at the new deadline, not at the one it was made with.
    #[tokio::test]
    async fn a_reused_timer_keeps_the_deadline_it_was_moved_to() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (mut client, mut server) = tokio::io::duplex(256);
        let timer = tokio::time::sleep(100 * MS);
        tokio::pin!(timer);
        // A head already there: the timer is never polled.
        client.write_all(head).await.unwrap();
        let got = read_head(&mut server, timer.as_mut(), 100 * MS, true).await;
        assert_eq!(got, Head::Complete(BytesMut::from(&head[..]), Ok(())));
        // A head that comes after a wait: the timer is registered while the read waits.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(30 * MS).await;
            client.write_all(head).await.unwrap();
            client
        });
        timer.as_mut().reset(Instant::now() + 100 * MS);
        let got = read_head(&mut server, timer.as_mut(), 100 * MS, false).await;
        assert_eq!(got, Head::Complete(BytesMut::from(&head[..]), Ok(())));
        let client = writer.await.unwrap();
        // Moved later (extended in place); silence: idle at the new deadline.
        let started = Instant::now();
        timer.as_mut().reset(started + 400 * MS);
        let got = read_head(&mut server, timer.as_mut(), 100 * MS, false).await;
        assert_eq!(got, Head::Idle);
        let took = started.elapsed();
        assert!(took >= 400 * MS && took < 800 * MS, "{took:?}");
        drop(client);
    }

    /// After the first bytes of a head on a reused connection, the header deadline runs
    /// from them, even when the keep-alive deadline the timer held was later.
    #[tokio::test]
    async fn a_reused_connection_head_started_late_gets_the_header_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(2000 * MS).await;
            drop(client);
        });
        let started = Instant::now();
        let got = read_head_in(&mut server, 5000 * MS, 200 * MS, false).await;
        assert_eq!(got, Head::TimedOut);
        let took = started.elapsed();
        assert!(took >= 200 * MS && took < 1000 * MS, "{took:?}");
        writer.abort();
    }

    #[tokio::test]
    async fn the_first_read_returns_what_arrived_in_a_buffer_of_its_own() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HT").await.unwrap();
        let got = read_first(&mut server).await.unwrap();
        assert_eq!(&got[..], b"GET / HT");
        assert_eq!(got.capacity(), HEAD_BUFFER);
        // The scratch buffer is not what was returned: a second connection's bytes do not
        // show through the first one's buffer.
        let (mut other, mut other_server) = tokio::io::duplex(64);
        other.write_all(b"POST").await.unwrap();
        assert_eq!(&read_first(&mut other_server).await.unwrap()[..], b"POST");
        assert_eq!(&got[..], b"GET / HT");
        // End of stream: nothing allocated.
        drop(client);
        let eof = read_first(&mut server).await.unwrap();
        assert!(eof.is_empty());
        assert_eq!(eof.capacity(), 0);
    }

    #[tokio::test]
    async fn an_end_marker_split_across_reads_is_found() {
        for split in 1..4 {
            let (mut client, mut server) = tokio::io::duplex(64);
            let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
            let at = head.len() - split;
            let writer = tokio::spawn(async move {
                client.write_all(&head[..at]).await.unwrap();
                tokio::time::sleep(20 * MS).await;
                client.write_all(&head[at..]).await.unwrap();
                client
            });
            let got = read_head_in(&mut server, 500 * MS, 500 * MS, true).await;
            assert_eq!(
                got,
                Head::Complete(BytesMut::from(&head[..]), Ok(())),
                "split {split}"
            );
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_trickled_head_misses_its_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: a\r\n".iter() {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(20 * MS).await;
            }
        });
        let started = Instant::now();
        let head = read_head_in(&mut server, 300 * MS, 300 * MS, true).await;
        assert_eq!(head, Head::TimedOut);
        let took = started.elapsed();
        assert!(took >= 300 * MS && took < 600 * MS, "{took:?}");
        writer.abort();
    }

    #[tokio::test]
    async fn a_reused_connection_gets_the_keepalive_timeout_then_the_header_one() {
        let (mut client, mut server) = tokio::io::duplex(64);
        // Silent: closed at the keep-alive timeout, without a 408.
        let started = Instant::now();
        let head = read_head_in(&mut server, 200 * MS, 100 * MS, false).await;
        assert_eq!(head, Head::Idle);
        assert!(started.elapsed() >= 200 * MS);
        // A head that starts after longer than the header timeout, but completes within
        // the header timeout of its first byte, is read.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(300 * MS).await;
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(50 * MS).await;
            client.write_all(b"Host: a\r\n\r\n").await.unwrap();
            client
        });
        let head = read_head_in(&mut server, 1000 * MS, 250 * MS, false).await;
        assert_eq!(
            head,
            Head::Complete(
                BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]),
                Ok(())
            )
        );
        drop(writer.await.unwrap());
    }
}
