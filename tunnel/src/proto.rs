//! Wire formats: pure encoders and decoders, no I/O (the async readers in [`io`] wrap them).
//!
//! ```text
//!  gateway ──TCP──▶ hub stream endpoint         hub ──smoltcp TCP in WireGuard──▶ connector forwarder
//!    OpenRequest  (token, site, proto, host, port)   ForwardRequest (proto, host, port)
//!    ◀── Response (status, message)                  ◀── Response (status, message)
//!    then raw bytes (TCP) or UDP frames, spliced end to end
//! ```
//!
//! Open request, gateway to hub (all integers big-endian):
//! `"RTNO" | version=1 | proto u8 (1 TCP, 2 UDP) | port u16 | token_len u16 | site_len u8 |
//! host_len u8 | token | site | host`.
//! Forward request, hub to connector: `"RTNF" | version=1 | proto u8 | port u16 | host_len u8 |
//! host`. Response, either way back: `"RTNR" | status u8 | message_len u8 | message (UTF-8)`.
//! After an `Ok` response the stream carries the payload: the TCP byte stream, or for UDP a
//! sequence of frames `len u16 | datagram` in both directions.
//!
//! Why binary headers rather than text lines: fixed lengths up front mean a decoder never
//! scans for delimiters, bounds every allocation before it happens (the whole header is at most
//! [`MAX_OPEN_REQUEST`] bytes) and cannot be confused by a host or token containing a newline.
//! The magic strings make a stray client (an HTTP probe, a TLS hello) fail on the first bytes.
//!
//! The control channel (connector to the hub's control port, inside the tunnel) carries
//! [`ControlMessage`]s as JSON, each prefixed by its length as u32; see [`encode_control`].

use serde::{Deserialize, Serialize};

use crate::allow::{AllowError, Host, Protocol, Target};

/// Protocol version carried in requests.
pub const VERSION: u8 = 1;
const OPEN_MAGIC: &[u8; 4] = b"RTNO";
const FORWARD_MAGIC: &[u8; 4] = b"RTNF";
const RESPONSE_MAGIC: &[u8; 4] = b"RTNR";
/// Longest accepted gateway token.
pub const MAX_TOKEN: usize = 1024;
/// Longest open request.
pub const MAX_OPEN_REQUEST: usize = 4 + 1 + 1 + 2 + 2 + 1 + 1 + MAX_TOKEN + 255 + 255;
/// Longest forward request.
pub const MAX_FORWARD_REQUEST: usize = 4 + 1 + 1 + 2 + 1 + 255;
/// Longest response.
pub const MAX_RESPONSE: usize = 4 + 1 + 1 + 255;
/// Longest control message.
pub const MAX_CONTROL: usize = 1 << 20;
/// Longest UDP datagram in a frame.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Errors in wire data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The magic bytes are wrong: not a client of this protocol.
    #[error("not a rustronaut tunnel request (bad magic bytes)")]
    BadMagic,
    /// A version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    Version(u8),
    /// An unknown protocol number.
    #[error("unknown transport protocol {0}")]
    Protocol(u8),
    /// Port 0.
    #[error("port 0 is not a valid target port")]
    Port,
    /// A field length is out of bounds.
    #[error("{0} has an invalid length")]
    Length(&'static str),
    /// A text field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// The site name is not a DNS label.
    #[error("invalid site name {0:?}")]
    Site(String),
    /// The host is not an address or DNS name.
    #[error(transparent)]
    Host(#[from] AllowError),
    /// An unknown status code.
    #[error("unknown status code {0}")]
    Status(u8),
    /// A control message that is not valid JSON for its type.
    #[error("invalid control message: {0}")]
    Control(String),
}

/// Result of decoding from a buffer that may hold only part of a message.
pub type Decoded<T> = Result<Option<(T, usize)>, ProtoError>;

fn proto_to_u8(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
    }
}

fn proto_from_u8(b: u8) -> Result<Protocol, ProtoError> {
    match b {
        1 => Ok(Protocol::Tcp),
        2 => Ok(Protocol::Udp),
        other => Err(ProtoError::Protocol(other)),
    }
}

fn check_magic(buf: &[u8], magic: &[u8; 4]) -> Result<(), ProtoError> {
    let n = buf.len().min(4);
    if buf[..n] != magic[..n] {
        return Err(ProtoError::BadMagic);
    }
    Ok(())
}

fn text<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, ProtoError> {
    std::str::from_utf8(bytes).map_err(|_| ProtoError::Utf8(what))
}

/// A gateway's request to the hub.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenRequest {
    /// Bearer token.
    pub token: String,
    /// Site name.
    pub site: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Target host at the site.
    pub host: Host,
    /// Target port.
    pub port: u16,
}

impl std::fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRequest")
            .field("token", &"<redacted>")
            .field("site", &self.site)
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

impl OpenRequest {
    /// Encodes; fails if a field is too long.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let host = self.host.to_string();
        if self.token.is_empty() || self.token.len() > MAX_TOKEN {
            return Err(ProtoError::Length("token"));
        }
        if !crate::config::is_site_name(&self.site) {
            return Err(ProtoError::Site(self.site.clone()));
        }
        if host.len() > 255 {
            return Err(ProtoError::Length("host"));
        }
        if self.port == 0 {
            return Err(ProtoError::Port);
        }
        let mut out = Vec::with_capacity(12 + self.token.len() + self.site.len() + host.len());
        out.extend_from_slice(OPEN_MAGIC);
        out.push(VERSION);
        out.push(proto_to_u8(self.protocol));
        out.extend_from_slice(&self.port.to_be_bytes());
        out.extend_from_slice(&(self.token.len() as u16).to_be_bytes());
        out.push(self.site.len() as u8);
        out.push(host.len() as u8);
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(self.site.as_bytes());
        out.extend_from_slice(host.as_bytes());
        Ok(out)
    }

    /// Decodes from the start of `buf`; `Ok(None)` means more bytes are needed.
    pub fn decode(buf: &[u8]) -> Decoded<Self> {
        check_magic(buf, OPEN_MAGIC)?;
        if buf.len() >= 5 && buf[4] != VERSION {
            return Err(ProtoError::Version(buf[4]));
        }
        if buf.len() < 12 {
            return Ok(None);
        }
        let protocol = proto_from_u8(buf[5])?;
        let port = u16::from_be_bytes([buf[6], buf[7]]);
        let token_len = u16::from_be_bytes([buf[8], buf[9]]) as usize;
        let site_len = buf[10] as usize;
        let host_len = buf[11] as usize;
        if token_len == 0 || token_len > MAX_TOKEN {
            return Err(ProtoError::Length("token"));
        }
        if site_len == 0 {
            return Err(ProtoError::Length("site"));
        }
        if host_len == 0 {
            return Err(ProtoError::Length("host"));
        }
        if port == 0 {
            return Err(ProtoError::Port);
        }
        let total = 12 + token_len + site_len + host_len;
        if buf.len() < total {
            return Ok(None);
        }
        let token = text(&buf[12..12 + token_len], "token")?;
        let site = text(&buf[12 + token_len..12 + token_len + site_len], "site")?;
        if !crate::config::is_site_name(site) {
            return Err(ProtoError::Site(site.to_owned()));
        }
        let host = Host::parse(text(&buf[12 + token_len + site_len..total], "host")?)?;
        Ok(Some((
            Self {
                token: token.to_owned(),
                site: site.to_owned(),
                protocol,
                host,
                port,
            },
            total,
        )))
    }
}

/// The hub's request to a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Target host.
    pub host: Host,
    /// Target port.
    pub port: u16,
}

impl ForwardRequest {
    /// Encodes; fails if the host is too long or the port is 0.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let host = self.host.to_string();
        if host.is_empty() || host.len() > 255 {
            return Err(ProtoError::Length("host"));
        }
        if self.port == 0 {
            return Err(ProtoError::Port);
        }
        let mut out = Vec::with_capacity(9 + host.len());
        out.extend_from_slice(FORWARD_MAGIC);
        out.push(VERSION);
        out.push(proto_to_u8(self.protocol));
        out.extend_from_slice(&self.port.to_be_bytes());
        out.push(host.len() as u8);
        out.extend_from_slice(host.as_bytes());
        Ok(out)
    }

    /// Decodes from the start of `buf`; `Ok(None)` means more bytes are needed.
    pub fn decode(buf: &[u8]) -> Decoded<Self> {
        check_magic(buf, FORWARD_MAGIC)?;
        if buf.len() >= 5 && buf[4] != VERSION {
            return Err(ProtoError::Version(buf[4]));
        }
        if buf.len() < 9 {
            return Ok(None);
        }
        let protocol = proto_from_u8(buf[5])?;
        let port = u16::from_be_bytes([buf[6], buf[7]]);
        if port == 0 {
            return Err(ProtoError::Port);
        }
        let host_len = buf[8] as usize;
        if host_len == 0 {
            return Err(ProtoError::Length("host"));
        }
        if buf.len() < 9 + host_len {
            return Ok(None);
        }
        let host = Host::parse(text(&buf[9..9 + host_len], "host")?)?;
        Ok(Some((
            Self {
                protocol,
                host,
                port,
            },
            9 + host_len,
        )))
    }
}

/// Outcome of an open or forward request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The stream is open; payload follows.
    Ok,
    /// The gateway's token was missing or wrong.
    Unauthorized,
    /// The request could not be decoded.
    BadRequest,
    /// The hub has no such site.
    UnknownSite,
    /// The site's tunnel is down, or the connector did not answer.
    SiteUnavailable,
    /// The hub's allow list for the site does not admit the target.
    DeniedByHub,
    /// The connector's allow list does not admit the target.
    DeniedBySite,
    /// The connector could not resolve or reach the target.
    TargetUnreachable,
    /// A step took too long.
    Timeout,
    /// Anything else.
    Internal,
}

impl Status {
    const ALL: [Status; 10] = [
        Status::Ok,
        Status::Unauthorized,
        Status::BadRequest,
        Status::UnknownSite,
        Status::SiteUnavailable,
        Status::DeniedByHub,
        Status::DeniedBySite,
        Status::TargetUnreachable,
        Status::Timeout,
        Status::Internal,
    ];

    /// Wire code.
    pub fn code(self) -> u8 {
        Self::ALL.iter().position(|s| *s == self).expect("listed") as u8
    }

    /// From a wire code.
    pub fn from_code(code: u8) -> Result<Self, ProtoError> {
        Self::ALL
            .get(code as usize)
            .copied()
            .ok_or(ProtoError::Status(code))
    }

    /// A stable name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unauthorized => "unauthorized",
            Status::BadRequest => "bad_request",
            Status::UnknownSite => "unknown_site",
            Status::SiteUnavailable => "site_unavailable",
            Status::DeniedByHub => "denied_by_hub",
            Status::DeniedBySite => "denied_by_site",
            Status::TargetUnreachable => "target_unreachable",
            Status::Timeout => "timeout",
            Status::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response to an open or forward request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Outcome.
    pub status: Status,
    /// Human-readable detail (at most 255 bytes; longer is cut at a character boundary).
    pub message: String,
}

impl Response {
    /// A response.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// Encodes, cutting the message to 255 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut end = self.message.len().min(255);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        let msg = &self.message.as_bytes()[..end];
        let mut out = Vec::with_capacity(6 + msg.len());
        out.extend_from_slice(RESPONSE_MAGIC);
        out.push(self.status.code());
        out.push(msg.len() as u8);
        out.extend_from_slice(msg);
        out
    }

    /// Decodes from the start of `buf`; `Ok(None)` means more bytes are needed.
    pub fn decode(buf: &[u8]) -> Decoded<Self> {
        check_magic(buf, RESPONSE_MAGIC)?;
        if buf.len() < 6 {
            return Ok(None);
        }
        let status = Status::from_code(buf[4])?;
        let len = buf[5] as usize;
        if buf.len() < 6 + len {
            return Ok(None);
        }
        let message = String::from_utf8_lossy(&buf[6..6 + len]).into_owned();
        Ok(Some((Self { status, message }, 6 + len)))
    }
}

/// Appends one UDP frame; fails if the datagram is longer than [`MAX_DATAGRAM`].
pub fn encode_datagram(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let len = u16::try_from(datagram.len()).map_err(|_| ProtoError::Length("datagram"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Decodes one UDP frame from the start of `buf`: (datagram range, bytes consumed).
pub fn decode_datagram(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    (buf.len() >= 2 + len).then_some((2..2 + len, 2 + len))
}

/// A message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// Connector to hub, first message: which protocol version it speaks.
    Hello {
        /// Protocol version.
        version: u8,
    },
    /// Hub to connector: the complete allow list for this site. Sent after `hello` and again
    /// whenever the hub's configuration for the site changes.
    Targets {
        /// Bumped on every change, so a connector can log what it applied.
        generation: u64,
        /// The targets; empty denies everything.
        targets: Vec<Target>,
        /// The site's networks (CIDRs): a target name is dialled only at resolved addresses
        /// inside one of them. Absent (an older hub): names reach nothing. Left out when
        /// empty, so a hub without networks still speaks to an older connector.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        advertised_cidrs: Vec<String>,
    },
    /// Connector to hub: liveness check (the hub answers `pong`).
    Ping,
    /// Hub to connector: answer to `ping`.
    Pong,
}

/// Appends a length-prefixed JSON control message.
pub fn encode_control(msg: &ControlMessage, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(msg).expect("control messages always serialise");
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
}

/// Decodes one control message from the start of `buf`.
pub fn decode_control(buf: &[u8]) -> Decoded<ControlMessage> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_CONTROL {
        return Err(ProtoError::Length("control message"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let msg =
        serde_json::from_slice(&buf[4..4 + len]).map_err(|e| ProtoError::Control(e.to_string()))?;
    Ok(Some((msg, 4 + len)))
}

/// Async helpers that read one message with a size bound.
pub mod io {
    use tokio::io::{AsyncRead, AsyncReadExt};

    use super::{Decoded, ProtoError};

    /// Errors of reading a message from a stream.
    #[derive(Debug, thiserror::Error)]
    pub enum ReadError {
        /// The bytes are not a valid message.
        #[error(transparent)]
        Proto(#[from] ProtoError),
        /// The stream ended before the message did.
        #[error("the peer closed the connection before a complete message")]
        Eof,
        /// Reading failed.
        #[error("read failed: {0}")]
        Io(#[from] std::io::Error),
    }

    /// Reads until `decode` yields a message, never buffering more than `max` bytes. Bytes
    /// after the message are returned with it (they belong to the payload).
    pub async fn read_message<T, R>(
        reader: &mut R,
        max: usize,
        decode: impl Fn(&[u8]) -> Decoded<T>,
    ) -> Result<(T, Vec<u8>), ReadError>
    where
        R: AsyncRead + Unpin,
    {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if let Some((msg, used)) = decode(&buf)? {
                return Ok((msg, buf.split_off(used)));
            }
            if buf.len() >= max {
                return Err(ProtoError::Length("message").into());
            }
            let want = (max - buf.len()).min(chunk.len());
            let n = reader.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> OpenRequest {
        OpenRequest {
            token: "s3cret".into(),
            site: "dc1".into(),
            protocol: Protocol::Udp,
            host: Host::parse("db.corp.example").unwrap(),
            port: 5432,
        }
    }

    #[test]
    fn open_request_round_trips_at_every_split() {
        let bytes = open().encode().unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(OpenRequest::decode(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"payload");
        let (req, used) = OpenRequest::decode(&more).unwrap().unwrap();
        assert_eq!(req, open());
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn open_request_rejects_bad_fields() {
        let good = open().encode().unwrap();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            OpenRequest::decode(&b)
        };
        assert_eq!(
            OpenRequest::decode(b"GET / HTTP/1.1\r\n"),
            Err(ProtoError::BadMagic)
        );
        assert_eq!(
            OpenRequest::decode(b"\x16\x03\x01"),
            Err(ProtoError::BadMagic)
        );
        assert_eq!(with(4, 9), Err(ProtoError::Version(9)));
        assert_eq!(with(5, 3), Err(ProtoError::Protocol(3)));
        assert_eq!(
            {
                let mut b = good.clone();
                b[6] = 0;
                b[7] = 0;
                OpenRequest::decode(&b)
            },
            Err(ProtoError::Port)
        );
        assert_eq!(
            {
                let mut b = good.clone();
                b[8] = 0;
                b[9] = 0;
                OpenRequest::decode(&b)
            },
            Err(ProtoError::Length("token"))
        );
        assert_eq!(
            {
                let mut b = good.clone();
                b[8] = 0xff;
                OpenRequest::decode(&b)
            },
            Err(ProtoError::Length("token"))
        );
        assert_eq!(with(10, 0), Err(ProtoError::Length("site")));
        // Site "dc1" becomes "DC1": not a DNS label.
        let mut b = good.clone();
        b[12 + 6] = b'D';
        assert!(matches!(OpenRequest::decode(&b), Err(ProtoError::Site(_))));
        // A newline in the host.
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] = b'\n';
        assert!(matches!(OpenRequest::decode(&b), Err(ProtoError::Host(_))));
    }

    #[test]
    fn open_request_debug_hides_token() {
        assert!(!format!("{:?}", open()).contains("s3cret"));
    }

    #[test]
    fn forward_request_round_trips() {
        for host in ["10.1.2.3", "fd00::1", "a.example"] {
            let req = ForwardRequest {
                protocol: Protocol::Tcp,
                host: Host::parse(host).unwrap(),
                port: 22,
            };
            let bytes = req.encode().unwrap();
            for cut in 0..bytes.len() {
                assert_eq!(ForwardRequest::decode(&bytes[..cut]), Ok(None));
            }
            assert_eq!(ForwardRequest::decode(&bytes), Ok(Some((req, bytes.len()))));
        }
        assert_eq!(ForwardRequest::decode(b"RTNO"), Err(ProtoError::BadMagic));
    }

    #[test]
    fn responses_round_trip_and_long_messages_are_cut_on_char_boundaries() {
        for status in Status::ALL {
            assert_eq!(Status::from_code(status.code()), Ok(status));
            let r = Response::new(status, "why");
            let b = r.encode();
            assert_eq!(Response::decode(&b), Ok(Some((r, b.len()))));
        }
        let long = "é".repeat(200);
        let b = Response::new(Status::Internal, long).encode();
        let (r, _) = Response::decode(&b).unwrap().unwrap();
        assert_eq!(r.message.len(), 254);
        assert_eq!(Status::from_code(200), Err(ProtoError::Status(200)));
    }

    #[test]
    fn datagram_frames() {
        let mut out = Vec::new();
        encode_datagram(b"hello", &mut out).unwrap();
        encode_datagram(b"", &mut out).unwrap();
        let (r, used) = decode_datagram(&out).unwrap();
        assert_eq!(&out[r], b"hello");
        let (r2, used2) = decode_datagram(&out[used..]).unwrap();
        assert!(r2.is_empty());
        assert_eq!(used + used2, out.len());
        assert_eq!(decode_datagram(&out[..3]), None);
        assert!(encode_datagram(&vec![0; 70000], &mut out).is_err());
    }

    #[test]
    fn control_messages_round_trip_and_are_bounded() {
        let msgs = [
            ControlMessage::Hello { version: 1 },
            ControlMessage::Ping,
            ControlMessage::Pong,
            ControlMessage::Targets {
                generation: 7,
                targets: vec![Target {
                    cidr: Some("10.0.0.0/8".into()),
                    host: None,
                    ports: vec![crate::allow::PortRange::single(22)],
                    protocol: Protocol::Tcp,
                }],
                advertised_cidrs: vec!["10.0.0.0/8".into()],
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            encode_control(m, &mut buf);
        }
        let mut at = 0;
        for m in &msgs {
            let (got, used) = decode_control(&buf[at..]).unwrap().unwrap();
            assert_eq!(&got, m);
            at += used;
        }
        assert_eq!(
            decode_control(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtoError::Length("control message"))
        );
        let mut bad = Vec::new();
        bad.extend_from_slice(&3u32.to_be_bytes());
        bad.extend_from_slice(b"{x}");
        assert!(matches!(decode_control(&bad), Err(ProtoError::Control(_))));
    }

    #[tokio::test]
    async fn read_message_is_bounded_and_keeps_the_rest() {
        let mut bytes = open().encode().unwrap();
        bytes.extend_from_slice(b"rest");
        let mut r = &bytes[..];
        let (req, rest) = io::read_message(&mut r, MAX_OPEN_REQUEST, OpenRequest::decode)
            .await
            .unwrap();
        assert_eq!(req, open());
        assert_eq!(rest, b"rest");
        // A never-ending header hits the bound instead of growing.
        let endless = [
            b"RTNO".as_slice(),
            &[1, 1, 0, 1, 0, 10, 10, 10],
            &[b'a'; 100],
        ]
        .concat();
        let mut r = &endless[..];
        assert!(
            io::read_message(&mut r, 20, OpenRequest::decode)
                .await
                .is_err()
        );
        let mut r = &b"RTN"[..];
        assert!(matches!(
            io::read_message(&mut r, 100, OpenRequest::decode).await,
            Err(io::ReadError::Eof)
        ));
    }
}
