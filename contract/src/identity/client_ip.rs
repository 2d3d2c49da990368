//! The client address behind load balancers: PROXY protocol v1/v2 headers (parsed from the
//! first bytes of a connection) and X-Forwarded-For with a trusted hop count.
//!
//! Both are only trusted when the Gateway says so (`clientIPDetection`), and only from the
//! TCP peers it lists ([`TrustedPeers`], `trustedPeerCIDRs`): from any other peer, or with
//! neither, the client is the TCP peer. A hop count alone would let any client that reaches
//! the gateway directly (a pod, a NodePort) write its own address (issue 14, item 9). `sourceCIDRs` principals match the result, so getting this wrong
//! either lets clients spoof their address or locks everyone out. Hence: strict parsing,
//! malformed input is an error (close the connection / 400), never "best effort".

use crate::cidr::{Cidr, CidrError, canonical_ip};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (spec: 107 bytes).
const V1_MAX: usize = 107;

/// Why a PROXY header or an X-Forwarded-For value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError {
    /// The buffer is a valid beginning: read more bytes and try again.
    #[error("incomplete PROXY protocol header")]
    Incomplete,
    /// The connection does not start with a PROXY protocol header.
    #[error("connection does not start with a PROXY protocol header")]
    NotProxyProtocol,
    /// A PROXY header that breaks the specification.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// Fewer X-Forwarded-For entries than trusted proxies: the request did not come through
    /// them.
    #[error("X-Forwarded-For has {found} entries, {expected} trusted proxies expected")]
    TooFewHops {
        /// Entries present.
        found: usize,
        /// `trustedHops`.
        expected: usize,
    },
    /// The selected X-Forwarded-For entry is not an IP address.
    #[error("X-Forwarded-For entry {0:?} is not an IP address")]
    InvalidAddress(String),
}

/// LOCAL (health checks from the proxy itself) or PROXY (a relayed connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// The proxy's own connection: use the real peer address.
    Local,
    /// A relayed connection.
    Proxy,
}

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// LOCAL or PROXY (v1 is always PROXY).
    pub command: ProxyCommand,
    /// The original client, when the header carries an IP address (`None` for LOCAL,
    /// `UNKNOWN`, UNSPEC and UNIX addresses: use the peer address).
    pub source: Option<SocketAddr>,
    /// The original destination.
    pub destination: Option<SocketAddr>,
    /// Bytes the header takes at the start of the buffer; the payload follows.
    pub length: usize,
}

/// Parses a PROXY protocol header at the start of `buf` (v1 text or v2 binary).
/// [`ClientIpError::Incomplete`] means "read more"; every other error means "close".
pub fn parse_proxy_header(buf: &[u8]) -> Result<ProxyHeader, ClientIpError> {
    if buf.is_empty() {
        return Err(ClientIpError::Incomplete);
    }
    if buf[0] == b'\r' {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(ClientIpError::NotProxyProtocol);
        }
        return parse_v2(buf);
    }
    if buf[0] == b'P' {
        let n = buf.len().min(6);
        if buf[..n] != b"PROXY "[..n] {
            return Err(ClientIpError::NotProxyProtocol);
        }
        return parse_v1(buf);
    }
    Err(ClientIpError::NotProxyProtocol)
}

fn parse_v1(buf: &[u8]) -> Result<ProxyHeader, ClientIpError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= V1_MAX || window.contains(&b'\n') {
            Err(ClientIpError::Malformed(
                "v1 header without CRLF within 107 bytes",
            ))
        } else {
            Err(ClientIpError::Incomplete)
        };
    };
    match window.get(cr + 1) {
        None => return Err(ClientIpError::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ClientIpError::Malformed("v1 header: CR not followed by LF")),
    }
    let line = std::str::from_utf8(&window[..cr])
        .map_err(|_| ClientIpError::Malformed("v1 header is not ASCII"))?;
    if line.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(ClientIpError::Malformed("v1 header is not printable ASCII"));
    }
    let length = cr + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 2 || fields[0] != "PROXY" {
        return Err(ClientIpError::Malformed(
            "v1 header must start with \"PROXY \"",
        ));
    }
    if fields[1] == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(ProxyHeader {
            version: 1,
            command: ProxyCommand::Proxy,
            source: None,
            destination: None,
            length,
        });
    }
    let [_, proto, src, dst, sport, dport] = fields[..] else {
        return Err(ClientIpError::Malformed(
            "v1 header needs protocol, two addresses and two ports",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(
                src.parse::<Ipv4Addr>()
                    .map_err(|_| ClientIpError::Malformed("v1 source is not IPv4"))?,
            ),
            IpAddr::V4(
                dst.parse::<Ipv4Addr>()
                    .map_err(|_| ClientIpError::Malformed("v1 destination is not IPv4"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                src.parse::<Ipv6Addr>()
                    .map_err(|_| ClientIpError::Malformed("v1 source is not IPv6"))?,
            ),
            IpAddr::V6(
                dst.parse::<Ipv6Addr>()
                    .map_err(|_| ClientIpError::Malformed("v1 destination is not IPv6"))?,
            ),
        ),
        _ => {
            return Err(ClientIpError::Malformed(
                "v1 protocol must be TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(ProxyHeader {
        version: 1,
        command: ProxyCommand::Proxy,
        source: Some(SocketAddr::new(src, v1_port(sport)?)),
        destination: Some(SocketAddr::new(dst, v1_port(dport)?)),
        length,
    })
}

fn v1_port(s: &str) -> Result<u16, ClientIpError> {
    let bad = ClientIpError::Malformed("v1 port must be a decimal 0-65535 without leading zeros");
    if s.is_empty()
        || s.len() > 5
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<ProxyHeader, ClientIpError> {
    if buf.len() < 16 {
        return Err(ClientIpError::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ClientIpError::Malformed("v2 version must be 2"));
    }
    let command = match ver_cmd & 0x0f {
        0 => ProxyCommand::Local,
        1 => ProxyCommand::Proxy,
        _ => {
            return Err(ClientIpError::Malformed(
                "v2 command must be LOCAL or PROXY",
            ));
        }
    };
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let length = 16 + len;
    if buf.len() < length {
        return Err(ClientIpError::Incomplete);
    }
    let body = &buf[16..length];
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ClientIpError::Malformed(
            "v2 unknown address family or transport",
        ));
    }
    let needed = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if body.len() < needed {
        return Err(ClientIpError::Malformed(
            "v2 address block shorter than its family needs",
        ));
    }
    let (source, destination) = if command == ProxyCommand::Local {
        // The receiver must ignore the address information of LOCAL connections.
        (None, None)
    } else {
        match family {
            1 => {
                let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                (
                    Some(SocketAddr::new(IpAddr::V4(ip(0)), port(8))),
                    Some(SocketAddr::new(IpAddr::V4(ip(4)), port(10))),
                )
            }
            2 => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[o..o + 16]);
                    Ipv6Addr::from(a)
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                (
                    Some(SocketAddr::new(IpAddr::V6(ip(0)), port(32))),
                    Some(SocketAddr::new(IpAddr::V6(ip(16)), port(34))),
                )
            }
            // UNSPEC and UNIX: no IP address.
            _ => (None, None),
        }
    };
    Ok(ProxyHeader {
        version: 2,
        command,
        source,
        destination,
        length,
    })
}

/// The peers whose PROXY header and X-Forwarded-For are believed (`trustedPeerCIDRs`).
/// Parsed once per snapshot. Empty trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedPeers(Vec<Cidr>);

impl TrustedPeers {
    /// Parses the snapshot's list.
    pub fn parse(cidrs: &[String]) -> Result<Self, CidrError> {
        cidrs
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `peer` (the TCP peer; IPv4-mapped IPv6 counts as IPv4) is listed.
    pub fn contains(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(peer))
    }

    /// The hop count to apply to a request from `peer`: `trusted_hops` from a listed peer,
    /// 0 (ignore X-Forwarded-For, the peer is the client) from any other.
    pub fn hops_from(&self, peer: IpAddr, trusted_hops: u32) -> u32 {
        if self.contains(peer) { trusted_hops } else { 0 }
    }
}

/// The client address from X-Forwarded-For, given the TCP peer and the number of trusted
/// proxies in front of the gateway that each append the address they received from.
///
/// With `trusted_hops = N` the client is the N-th entry from the right (the one the outermost
/// trusted proxy appended); entries further left were written by the client and are ignored.
/// `N = 0` ignores the header and returns the peer. The caller passes 0 unless the peer is
/// one of the [`TrustedPeers`] ([`TrustedPeers::hops_from`]). Several header lines count as one list,
/// in order. Entries may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`). The result is
/// canonical (IPv4-mapped IPv6 becomes IPv4).
pub fn client_ip_from_forwarded_for(
    peer: IpAddr,
    header_values: &[&str],
    trusted_hops: u32,
) -> Result<IpAddr, ClientIpError> {
    let n = trusted_hops as usize;
    if n == 0 {
        return Ok(canonical_ip(peer));
    }
    let entries: Vec<&str> = header_values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim_matches(|c| c == ' ' || c == '\t'))
        .collect();
    if entries.len() < n {
        return Err(ClientIpError::TooFewHops {
            found: entries.len(),
            expected: n,
        });
    }
    let entry = entries[entries.len() - n];
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .ok_or_else(|| ClientIpError::InvalidAddress(entry.to_string()))?;
    Ok(canonical_ip(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_from_trusted_peers() {
        let peers = TrustedPeers::parse(&["10.0.0.0/8".into(), "2001:db8::/32".into()]).unwrap();
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped_lb: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let pod: IpAddr = "192.168.1.5".parse().unwrap();
        let forged = ["203.0.113.7"];
        assert_eq!(peers.hops_from(lb, 1), 1);
        assert_eq!(peers.hops_from(mapped_lb, 1), 1);
        assert_eq!(peers.hops_from("2001:db8::1".parse().unwrap(), 2), 2);
        assert_eq!(peers.hops_from(pod, 1), 0);
        let from = |peer| client_ip_from_forwarded_for(peer, &forged, peers.hops_from(peer, 1));
        assert_eq!(from(lb), Ok("203.0.113.7".parse().unwrap()));
        assert_eq!(from(pod), Ok(pod), "an untrusted peer's header is ignored");
        assert_eq!(TrustedPeers::default().hops_from(lb, 1), 0);
        assert!(TrustedPeers::parse(&["10.0.0.0/33".into()]).is_err());
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let h = parse_proxy_header(buf).unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.source, sa("192.0.2.1:56324"));
        assert_eq!(h.destination, sa("198.51.100.2:443"));
        assert_eq!(&buf[h.length..h.length + 3], b"GET");
        let h = parse_proxy_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n").unwrap();
        assert_eq!(h.source, sa("[2001:db8::1]:1"));
        assert_eq!(h.destination, sa("[2001:db8::2]:65535"));
        let h = parse_proxy_header(b"PROXY UNKNOWN whatever\r\n").unwrap();
        assert_eq!(h.source, None);
        assert_eq!(h.length, 24);
    }

    #[test]
    fn v1_rejections() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rX",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
        ];
        for b in bad {
            assert!(
                matches!(parse_proxy_header(b), Err(ClientIpError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 200]].concat();
        assert!(matches!(
            parse_proxy_header(&long),
            Err(ClientIpError::Malformed(_))
        ));
        assert_eq!(
            parse_proxy_header(b"PROXY TCP4 1.2"),
            Err(ClientIpError::Incomplete)
        );
        assert_eq!(parse_proxy_header(b"PRO"), Err(ClientIpError::Incomplete));
        assert_eq!(parse_proxy_header(b""), Err(ClientIpError::Incomplete));
        assert_eq!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n"),
            Err(ClientIpError::NotProxyProtocol)
        );
        assert_eq!(
            parse_proxy_header(b"PROXX"),
            Err(ClientIpError::NotProxyProtocol)
        );
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v2_inet_inet6_local_unspec() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x03, 0x00, 0x01, 0xaa]); // a TLV, ignored
        let mut buf = v2(1, 0x11, &body);
        buf.extend_from_slice(b"payload");
        let h = parse_proxy_header(&buf).unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.command, ProxyCommand::Proxy);
        assert_eq!(h.source, sa("192.0.2.1:56324"));
        assert_eq!(h.destination, sa("198.51.100.2:443"));
        assert_eq!(&buf[h.length..], b"payload");

        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&1u16.to_be_bytes());
        body6.extend_from_slice(&2u16.to_be_bytes());
        let h = parse_proxy_header(&v2(1, 0x21, &body6)).unwrap();
        assert_eq!(h.source, sa("[2001:db8::1]:1"));

        let h = parse_proxy_header(&v2(0, 0x11, &body)).unwrap();
        assert_eq!(h.command, ProxyCommand::Local);
        assert_eq!(h.source, None, "LOCAL addresses are ignored");
        let h = parse_proxy_header(&v2(1, 0x00, &[])).unwrap();
        assert_eq!(h.source, None);
        assert_eq!(h.length, 16);
    }

    #[test]
    fn v2_rejections() {
        let body = [0u8; 12];
        let mut b = v2(1, 0x11, &body);
        b[12] = 0x11; // version 1 in a v2 header
        assert!(matches!(
            parse_proxy_header(&b),
            Err(ClientIpError::Malformed(_))
        ));
        let mut b = v2(1, 0x11, &body);
        b[12] = 0x22; // command 2
        assert!(matches!(
            parse_proxy_header(&b),
            Err(ClientIpError::Malformed(_))
        ));
        assert!(matches!(
            parse_proxy_header(&v2(1, 0x41, &body)),
            Err(ClientIpError::Malformed(_))
        ));
        assert!(matches!(
            parse_proxy_header(&v2(1, 0x13, &body)),
            Err(ClientIpError::Malformed(_))
        ));
        assert!(
            matches!(
                parse_proxy_header(&v2(1, 0x21, &body)),
                Err(ClientIpError::Malformed(_))
            ),
            "INET6 needs 36 bytes"
        );
        let full = v2(1, 0x11, &body);
        assert_eq!(
            parse_proxy_header(&full[..20]),
            Err(ClientIpError::Incomplete)
        );
        assert_eq!(
            parse_proxy_header(&full[..5]),
            Err(ClientIpError::Incomplete)
        );
        assert_eq!(
            parse_proxy_header(b"\r\n\r\nX"),
            Err(ClientIpError::NotProxyProtocol)
        );
    }

    #[test]
    fn forwarded_for() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["1.1.1.1"], 0).unwrap(),
            peer
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["203.0.113.7"], 1).unwrap(),
            ip("203.0.113.7")
        );
        // Spoofed entries on the left are ignored.
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["6.6.6.6, 203.0.113.7"], 1).unwrap(),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["6.6.6.6, 203.0.113.7", "10.1.1.1"], 2).unwrap(),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["[2001:db8::1]:443"], 1).unwrap(),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["203.0.113.7:5555"], 1).unwrap(),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["::ffff:203.0.113.7"], 1).unwrap(),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &["203.0.113.7"], 2),
            Err(ClientIpError::TooFewHops {
                found: 1,
                expected: 2
            })
        );
        assert_eq!(
            client_ip_from_forwarded_for(peer, &[], 1),
            Err(ClientIpError::TooFewHops {
                found: 0,
                expected: 1
            })
        );
        assert!(matches!(
            client_ip_from_forwarded_for(peer, &["unknown"], 1),
            Err(ClientIpError::InvalidAddress(_))
        ));
    }
}
