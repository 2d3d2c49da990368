//! Site upstreams: streams opened through the tunnel hub's stream endpoint (docs/tunnel.md,
//! "Gateways and the stream endpoint").
//!
//! ```text
//!  gateway --TCP--> hub stream endpoint:  "RTNO" | 1 | protocol | port | token_len | site_len
//!                                          | host_len | token | site | host
//!          <------  "RTNR" | status | message_len | message, then the payload both ways
//! ```
//!
//! Why the gateway speaks this itself instead of calling `rustronaut_tunnel::client::open`:
//! the tunnel crate is one crate with the hub and the connector, so depending on it would
//! put boringtun, smoltcp and the hub's HTTP server into the gateway's dependency graph for
//! a header of a dozen bytes plus the token, site and host. The wire format is pinned to the
//! tunnel crate's own encoder and decoder byte for byte by a test (the tunnel crate is a
//! dev-dependency only), and `gateway/tests/l4.rs` runs a real hub and connector. Moving both
//! sides into one small shared crate is the cleaner end state; it waits for the tunnel
//! crate's current changes.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPEN_MAGIC: &[u8; 4] = b"RTNO";
const RESPONSE_MAGIC: &[u8; 4] = b"RTNR";
const VERSION: u8 = 1;
/// Longest token the hub accepts.
const MAX_TOKEN: usize = 1024;

/// The statuses of the hub's answer, by wire code.
const STATUSES: [&str; 10] = [
    "ok",
    "unauthorized",
    "bad_request",
    "unknown_site",
    "site_unavailable",
    "denied_by_hub",
    "denied_by_site",
    "target_unreachable",
    "timeout",
    "internal",
];

/// Transport of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TCP byte stream.
    Tcp,
    /// UDP datagrams, framed `len u16 BE | datagram` on the stream.
    Udp,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A field the hub would refuse (empty or too long).
    #[error("invalid stream request: {0}")]
    Request(&'static str),
    /// The token file could not be read or holds no token.
    #[error("tunnel token file {path}: {reason}")]
    Token {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The hub could not be reached or the connection broke.
    #[error("tunnel hub {hub}: {source}")]
    Io {
        /// The stream endpoint.
        hub: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not an answer of the hub's protocol.
    #[error("tunnel hub answered something else: {0}")]
    Protocol(&'static str),
    /// The hub (or the connector behind it) refused.
    #[error("tunnel hub refused ({status}): {message}")]
    Refused {
        /// Status name, as in `rustronaut_tunnel_hub_stream_requests_total{status}`.
        status: &'static str,
        /// The hub's detail.
        message: String,
    },
    /// No answer in time.
    #[error("no answer from the tunnel hub within {0:?}")]
    Timeout(Duration),
}

/// Encodes an open request.
pub fn encode_open(
    token: &str,
    site: &str,
    protocol: Protocol,
    host: &str,
    port: u16,
) -> Result<Vec<u8>, TunnelError> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(TunnelError::Request("token length"));
    }
    if site.is_empty() || site.len() > 255 {
        return Err(TunnelError::Request("site length"));
    }
    if host.is_empty() || host.len() > 255 {
        return Err(TunnelError::Request("host length"));
    }
    if port == 0 {
        return Err(TunnelError::Request("port 0"));
    }
    let mut out = Vec::with_capacity(12 + token.len() + site.len() + host.len());
    out.extend_from_slice(OPEN_MAGIC);
    out.push(VERSION);
    out.push(match protocol {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
    });
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&(token.len() as u16).to_be_bytes());
    out.push(site.len() as u8);
    out.push(host.len() as u8);
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(site.as_bytes());
    out.extend_from_slice(host.as_bytes());
    Ok(out)
}

/// Decodes the hub's answer at the start of `buf`: `Ok(None)` means read more; otherwise
/// `(status name, message, bytes used)`.
#[allow(clippy::type_complexity)]
pub fn decode_response(buf: &[u8]) -> Result<Option<(&'static str, String, usize)>, TunnelError> {
    let n = buf.len().min(4);
    if buf[..n] != RESPONSE_MAGIC[..n] {
        return Err(TunnelError::Protocol("bad magic"));
    }
    if buf.len() < 6 {
        return Ok(None);
    }
    let status = STATUSES
        .get(buf[4] as usize)
        .copied()
        .ok_or(TunnelError::Protocol("unknown status"))?;
    let len = buf[5] as usize;
    if buf.len() < 6 + len {
        return Ok(None);
    }
    let message = String::from_utf8_lossy(&buf[6..6 + len]).into_owned();
    Ok(Some((status, message, 6 + len)))
}

/// The gateway's client of one hub stream endpoint (`--tunnel-stream`), with the token from
/// `--tunnel-token-file`.
#[derive(Debug)]
pub struct TunnelClient {
    hub: String,
    token_file: PathBuf,
    /// The token with the file's modification time it was read at: the file is re-read
    /// when that changes, so a rotated token (a new Secret mounted) is used without a
    /// restart.
    token: Mutex<Option<(SystemTime, String)>>,
    timeout: Duration,
}

impl TunnelClient {
    /// A client of `hub` (`HOST:PORT`, resolved at each open so a Service name works). The
    /// token is read now only to warn early: a token file that is missing or empty at
    /// start-up (a Secret the operator has not filled yet) must not keep the gateway from
    /// serving everything else, so each open reads it again until it is there.
    pub fn new(hub: String, token_file: PathBuf, timeout: Duration) -> Self {
        let c = Self {
            hub,
            token_file,
            token: Mutex::new(None),
            timeout,
        };
        if let Err(e) = c.token() {
            tracing::warn!(error = %e, "site upstreams will fail until the token is readable");
        }
        c
    }

    /// The first non-empty, non-comment line of the token file (the format the hub reads).
    fn token(&self) -> Result<String, TunnelError> {
        let err = |reason: String| TunnelError::Token {
            path: self.token_file.clone(),
            reason,
        };
        let modified = std::fs::metadata(&self.token_file)
            .and_then(|m| m.modified())
            .map_err(|e| err(e.to_string()))?;
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, token)) = cached.as_ref()
            && *at == modified
        {
            return Ok(token.clone());
        }
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| err(e.to_string()))?;
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| err("no token in the file".into()))?
            .to_string();
        *cached = Some((modified, token.clone()));
        Ok(token)
    }

    /// Opens a stream to `host:port` at `site`; returns the connection, now carrying the
    /// payload, and payload bytes that arrived with the answer (to deliver first).
    pub async fn open(
        &self,
        site: &str,
        protocol: Protocol,
        host: &str,
        port: u16,
    ) -> Result<(TcpStream, Vec<u8>), TunnelError> {
        let request = encode_open(&self.token()?, site, protocol, host, port)?;
        let io = |source| TunnelError::Io {
            hub: self.hub.clone(),
            source,
        };
        let work = async {
            let mut stream = TcpStream::connect(self.hub.as_str()).await.map_err(io)?;
            let _ = stream.set_nodelay(true);
            stream.write_all(&request).await.map_err(io)?;
            let mut buf = Vec::with_capacity(64);
            loop {
                if let Some((status, message, used)) = decode_response(&buf)? {
                    if status != "ok" {
                        return Err(TunnelError::Refused { status, message });
                    }
                    buf.drain(..used);
                    return Ok((stream, buf));
                }
                let mut chunk = [0u8; 512];
                let n = stream.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    return Err(TunnelError::Protocol("closed before answering"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| TunnelError::Timeout(self.timeout))?
    }
}

/// A Pingora L4 connector that opens an HTTP upstream connection as a site stream through
/// the hub, for HTTP rules with site upstreams. Pingora pools upstream connections by peer
/// hash: the proxy gives site peers a `group_key` derived from (site, host, port)
/// ([`site_group_key`]), so a pooled connection to one site target is never reused for
/// another or for a Service.
#[derive(Debug)]
pub struct SiteConnect {
    /// The hub client.
    pub client: std::sync::Arc<TunnelClient>,
    /// Site name.
    pub site: String,
    /// Host at the site.
    pub host: String,
    /// Port at the site.
    pub port: u16,
}

#[async_trait::async_trait]
impl pingora::connectors::L4Connect for SiteConnect {
    async fn connect(
        &self,
        _addr: &pingora::protocols::l4::socket::SocketAddr,
    ) -> pingora::Result<pingora::protocols::l4::stream::Stream> {
        match self
            .client
            .open(&self.site, Protocol::Tcp, &self.host, self.port)
            .await
        {
            Ok((tcp, early)) => {
                let mut stream = pingora::protocols::l4::stream::Stream::from(tcp);
                stream.rewind(&early);
                Ok(stream)
            }
            Err(e) => Err(pingora::Error::explain(
                pingora::ErrorType::ConnectError,
                format!("site {}/{}:{}: {e}", self.site, self.host, self.port),
            )),
        }
    }
}

/// The connection-pool group of a site target (never 0, the group of Service peers).
pub fn site_group_key(site: &str, host: &str, port: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in site
        .bytes()
        .chain([0xff])
        .chain(host.bytes())
        .chain([0xff])
        .chain(port.to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_tunnel::allow::{Host, Protocol as TProtocol};
    use rustronaut_tunnel::proto::{OpenRequest, Response, Status};

    #[test]
    fn open_requests_are_the_tunnel_crates_bytes() {
        for (protocol, theirs, host) in [
            (Protocol::Tcp, TProtocol::Tcp, "10.0.0.7"),
            (Protocol::Udp, TProtocol::Udp, "db.internal.example"),
        ] {
            let ours = encode_open("token-0123456789abcdef", "dc-1", protocol, host, 5432).unwrap();
            let req = OpenRequest {
                token: "token-0123456789abcdef".into(),
                site: "dc-1".into(),
                protocol: theirs,
                host: Host::parse(host).unwrap(),
                port: 5432,
            };
            assert_eq!(ours, req.encode().unwrap());
            let (decoded, used) = OpenRequest::decode(&ours).unwrap().unwrap();
            assert_eq!((decoded, used), (req, ours.len()));
        }
    }

    #[test]
    fn every_hub_status_decodes_by_its_name() {
        for code in 0..10u8 {
            let status = Status::from_code(code).unwrap();
            let mut bytes = Response::new(status, "why").encode();
            bytes.extend_from_slice(b"payload");
            let (name, message, used) = decode_response(&bytes).unwrap().unwrap();
            assert_eq!(name, status.as_str());
            assert_eq!(message, "why");
            assert_eq!(&bytes[used..], b"payload");
            assert!(decode_response(&bytes[..used - 1]).unwrap().is_none());
        }
        assert!(decode_response(b"HTTP/1.1 400").is_err());
    }
}
