//! Allow lists: which (protocol, host, port) a site may be asked to reach. Pure; no I/O.
//!
//! Both ends check: the hub before it dials a site, the connector before it opens a socket
//! (the connector trusts only its own copy, learnt over the tunnel, and an optional local
//! ceiling the site owner configures). Anything not matched is denied.
//!
//! Matching rules, chosen so that a rule means exactly what it says:
//! - an IP request matches only CIDR rules; a name request matches only name rules. A name is
//!   never resolved to decide whether it is allowed (the answer could change between the check
//!   and the connection), and a CIDR rule never admits a name that happens to resolve into it.
//! - names compare case-insensitively without a trailing dot; `*.corp.example` matches any name
//!   strictly below `corp.example` (not `corp.example` itself).
//! - IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are treated as the IPv4 address, so they
//!   neither slip past nor fail a rule written for IPv4.
//!
//! A name rule admits the *name*; where it may lead is decided after resolution, at the site,
//! by [`Networks`]: the connector resolves a name once and dials only the resolved addresses
//! inside the site's networks (its advertised CIDRs). Loopback, link-local, unspecified,
//! multicast and broadcast addresses are dialled only when a network lies wholly inside such a
//! range (`127.0.0.1/32` admits `localhost`; `0.0.0.0/0` does not), so a name pointing at the
//! connector's own host or at a metadata service never gets through a broad network by
//! accident.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Errors in allow-list rules and request hosts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    /// A CIDR could not be parsed.
    #[error("invalid CIDR {0:?}: expected an address or address/prefix, e.g. 10.1.0.0/16")]
    InvalidCidr(String),
    /// A CIDR has bits set below its prefix.
    #[error("CIDR {given} has host bits set below the prefix; did you mean {suggested}?")]
    HostBitsSet {
        /// What was written.
        given: String,
        /// The network it probably means.
        suggested: String,
    },
    /// A host name is not a valid DNS name or wildcard.
    #[error(
        "invalid host {0:?}: expected an IP address or a DNS name (letters, digits, '-', '_'; \
         labels of 1-63 characters; at most 253 characters; not all-numeric last label)"
    )]
    InvalidHost(String),
    /// A rule names neither or both of `cidr` and `host`.
    #[error("a target needs exactly one of `cidr` and `host`")]
    CidrXorHost,
    /// A rule has no ports.
    #[error("a target needs at least one port or port range")]
    NoPorts,
    /// A port range is empty or includes port 0.
    #[error("invalid port range {0}: ports are 1-65535 and the start must not exceed the end")]
    InvalidPortRange(PortRange),
}

/// Transport protocol of a target or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// A TCP stream.
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    /// A UDP flow (datagrams to and from one target address).
    #[serde(rename = "UDP", alias = "udp")]
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// An inclusive range of ports. In configuration: `443`, `"443"` or `"8000-8100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// One port.
    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    fn validate(&self) -> Result<(), AllowError> {
        if self.start == 0 || self.start > self.end {
            return Err(AllowError::InvalidPortRange(*self));
        }
        Ok(())
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid port range {s:?}: expected 443 or 8000-8100");
        let s = s.trim();
        match s.split_once('-') {
            None => s.parse().map(Self::single).map_err(|_| bad()),
            Some((a, b)) => Ok(Self {
                start: a.trim().parse().map_err(|_| bad())?,
                end: b.trim().parse().map_err(|_| bad())?,
            }),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end {
            s.serialize_u16(self.start)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => u16::try_from(n)
                .map(Self::single)
                .map_err(|_| serde::de::Error::custom(format!("port {n} is out of range"))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// One allowed target as configured: plain data, checked by [`Target::compile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// An address or network, e.g. `10.1.0.0/16` or `10.1.2.3`. Exactly one of `cidr`, `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// A DNS name, or `*.suffix` for every name below suffix; resolved at the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Ports and inclusive ranges; at least one.
    pub ports: Vec<PortRange>,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl Target {
    /// Checks the rule and turns it into its matching form.
    pub fn compile(&self) -> Result<Rule, AllowError> {
        let host = match (&self.cidr, &self.host) {
            (Some(cidr), None) => HostMatch::Cidr(cidr.parse()?),
            (None, Some(host)) => HostMatch::parse_name_rule(host)?,
            _ => return Err(AllowError::CidrXorHost),
        };
        if self.ports.is_empty() {
            return Err(AllowError::NoPorts);
        }
        for range in &self.ports {
            range.validate()?;
        }
        Ok(Rule {
            host,
            ports: self.ports.clone(),
            protocol: self.protocol,
        })
    }
}

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_u32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_u128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl Cidr {
    /// Whether every address of `self` lies in `outer`.
    pub fn within(&self, outer: &Cidr) -> bool {
        self.addr.is_ipv4() == outer.addr.is_ipv4()
            && self.prefix >= outer.prefix
            && outer.contains(self.addr)
    }
}

/// Ranges a resolved address is dialled in only when a network lies wholly inside them:
/// "this host" and unspecified, loopback, link-local (cloud metadata services live at
/// 169.254.169.254), multicast and broadcast.
const SPECIAL_RANGES: [&str; 9] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
];

/// The networks behind a site: where a target name may resolve to. Empty admits nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks {
    cidrs: Vec<Cidr>,
}

impl Networks {
    /// Parses CIDRs (or bare addresses), failing on the first invalid one (with its index).
    pub fn parse(list: &[String]) -> Result<Self, (usize, AllowError)> {
        let cidrs = list
            .iter()
            .enumerate()
            .map(|(i, c)| c.parse().map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Self { cidrs })
    }

    /// Whether a resolved address may be dialled: inside one of the networks and, when it is
    /// in a special range (loopback, link-local, ...), only through a network that lies
    /// wholly inside that range.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let special: Option<Cidr> = SPECIAL_RANGES
            .iter()
            .map(|r| r.parse::<Cidr>().expect("constant ranges parse"))
            .find(|r| r.contains(ip));
        self.cidrs
            .iter()
            .any(|n| n.contains(ip) && special.is_none_or(|s| n.within(&s)))
    }

    /// Whether there are no networks (no name can be dialled).
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cidrs.is_empty() {
            return f.write_str("none");
        }
        for (i, c) in self.cidrs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

fn mask_u32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - prefix))
    }
}

fn mask_u128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - prefix))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl std::str::FromStr for Cidr {
    type Err = AllowError;

    fn from_str(s: &str) -> Result<Self, AllowError> {
        let bad = || AllowError::InvalidCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask_u32(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask_u128(u128::from(a), prefix).into()),
        };
        if network != addr {
            return Err(AllowError::HostBitsSet {
                given: s.to_owned(),
                suggested: format!("{network}/{prefix}"),
            });
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The host part of a request: an address, or a normalised DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IP address (IPv4-mapped IPv6 already turned into IPv4).
    Ip(IpAddr),
    /// A DNS name: lowercase, no trailing dot.
    Name(String),
}

impl Host {
    /// Parses a request host: an IP literal (IPv6 with or without brackets) or a DNS name.
    pub fn parse(s: &str) -> Result<Self, AllowError> {
        let t = s
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Host::Ip(canonical(ip)));
        }
        normalise_name(s).map(Host::Name)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Lowercases, strips one trailing dot and checks DNS name syntax.
fn normalise_name(s: &str) -> Result<String, AllowError> {
    let bad = || AllowError::InvalidHost(s.to_owned());
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    // A numeric last label makes resolvers treat the name as an address ("10.1", "0x7f.1",
    // "2130706433"): refuse it rather than let it dodge the CIDR rules.
    let last = labels.last().ok_or_else(bad)?;
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        return Err(bad());
    }
    Ok(name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Cidr(Cidr),
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Below(String),
}

impl HostMatch {
    fn parse_name_rule(s: &str) -> Result<Self, AllowError> {
        if Host::parse(s).is_ok_and(|h| matches!(h, Host::Ip(_))) {
            // An address in `host`: accept it as a single-address network, which is what the
            // writer means, rather than a name rule nothing could match.
            return Ok(HostMatch::Cidr(s.parse()?));
        }
        match s.strip_prefix("*.") {
            Some(rest) => Ok(HostMatch::Below(format!(".{}", normalise_name(rest)?))),
            None => Ok(HostMatch::Exact(normalise_name(s)?)),
        }
    }

    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostMatch::Cidr(c), Host::Ip(ip)) => c.contains(*ip),
            (HostMatch::Exact(n), Host::Name(h)) => n == h,
            (HostMatch::Below(suffix), Host::Name(h)) => {
                h.len() > suffix.len() && h.ends_with(suffix.as_str())
            }
            _ => false,
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: HostMatch,
    ports: Vec<PortRange>,
    protocol: Protocol,
}

impl Rule {
    /// Whether the rule admits the request.
    pub fn permits(&self, protocol: Protocol, host: &Host, port: u16) -> bool {
        self.protocol == protocol
            && self.ports.iter().any(|r| r.contains(port))
            && self.host.matches(host)
    }
}

/// A set of rules; a request is allowed when any rule admits it. Empty denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

impl AllowList {
    /// Compiles configured targets, failing on the first invalid one (with its index).
    pub fn compile(targets: &[Target]) -> Result<Self, (usize, AllowError)> {
        let rules = targets
            .iter()
            .enumerate()
            .map(|(i, t)| t.compile().map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Whether any rule admits the request.
    pub fn permits(&self, protocol: Protocol, host: &Host, port: u16) -> bool {
        self.rules.iter().any(|r| r.permits(protocol, host, port))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cidr: Option<&str>, host: Option<&str>, ports: &[&str], protocol: Protocol) -> Target {
        Target {
            cidr: cidr.map(str::to_owned),
            host: host.map(str::to_owned),
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            protocol,
        }
    }

    #[test]
    fn table_of_requests() {
        use Protocol::*;
        let list = AllowList::compile(&[
            t(Some("10.1.0.0/16"), None, &["22", "8000-8100"], Tcp),
            t(Some("10.9.9.9"), None, &["53"], Udp),
            t(None, Some("DB.corp.example."), &["5432"], Tcp),
            t(None, Some("*.svc.example"), &["443"], Tcp),
            t(Some("fd00::/64"), None, &["80"], Tcp),
        ])
        .unwrap();
        let cases: &[(Protocol, &str, u16, bool)] = &[
            (Tcp, "10.1.2.3", 22, true),
            (Tcp, "10.1.255.255", 8100, true),
            (Tcp, "10.1.2.3", 8101, false),
            (Tcp, "10.1.2.3", 23, false),
            (Udp, "10.1.2.3", 22, false),
            (Tcp, "10.2.0.1", 22, false),
            (Tcp, "::ffff:10.1.2.3", 22, true),
            (Tcp, "[::ffff:10.1.2.3]", 22, true),
            (Udp, "10.9.9.9", 53, true),
            (Udp, "10.9.9.8", 53, false),
            (Tcp, "db.corp.example", 5432, true),
            (Tcp, "DB.CORP.EXAMPLE.", 5432, true),
            (Tcp, "xdb.corp.example", 5432, false),
            (Tcp, "a.svc.example", 443, true),
            (Tcp, "a.b.svc.example", 443, true),
            (Tcp, "svc.example", 443, false),
            (Tcp, "evilsvc.example", 443, false),
            (Tcp, "fd00::1", 80, true),
            (Tcp, "fd00:0:0:1::1", 80, false),
        ];
        for &(proto, host, port, want) in cases {
            let h = Host::parse(host).unwrap();
            assert_eq!(list.permits(proto, &h, port), want, "{proto} {host}:{port}");
        }
    }

    #[test]
    fn empty_list_denies() {
        let h = Host::parse("10.0.0.1").unwrap();
        assert!(!AllowList::default().permits(Protocol::Tcp, &h, 1));
    }

    #[test]
    fn names_never_match_cidrs_and_numeric_names_are_refused() {
        let list =
            AllowList::compile(&[t(Some("0.0.0.0/0"), None, &["1-65535"], Protocol::Tcp)]).unwrap();
        assert!(!list.permits(Protocol::Tcp, &Host::parse("localhost").unwrap(), 80));
        for bad in [
            "10.1",
            "2130706433",
            "0x7f.1",
            "a..b",
            "-a.b",
            "a b",
            "",
            "ä.example",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn invalid_rules_are_explained() {
        let err = |tg: Target| tg.compile().unwrap_err();
        assert_eq!(
            err(t(None, None, &["1"], Protocol::Tcp)),
            AllowError::CidrXorHost
        );
        assert_eq!(
            err(t(Some("10.0.0.0/8"), Some("a"), &["1"], Protocol::Tcp)),
            AllowError::CidrXorHost
        );
        assert_eq!(
            err(t(Some("10.0.0.0/8"), None, &[], Protocol::Tcp)),
            AllowError::NoPorts
        );
        assert!(matches!(
            err(t(Some("10.0.0.0/8"), None, &["0"], Protocol::Tcp)),
            AllowError::InvalidPortRange(_)
        ));
        assert!(matches!(
            err(t(Some("10.0.0.0/8"), None, &["9-8"], Protocol::Tcp)),
            AllowError::InvalidPortRange(_)
        ));
        assert_eq!(
            err(t(Some("10.1.2.3/16"), None, &["1"], Protocol::Tcp)).to_string(),
            "CIDR 10.1.2.3/16 has host bits set below the prefix; did you mean 10.1.0.0/16?"
        );
        assert!(matches!(
            err(t(Some("10.0.0.0/33"), None, &["1"], Protocol::Tcp)),
            AllowError::InvalidCidr(_)
        ));
        assert!(matches!(
            err(t(None, Some("*.*.x"), &["1"], Protocol::Tcp)),
            AllowError::InvalidHost(_)
        ));
    }

    #[test]
    fn address_in_host_field_is_a_single_address_rule() {
        let list =
            AllowList::compile(&[t(None, Some("10.0.0.5"), &["80"], Protocol::Tcp)]).unwrap();
        assert!(list.permits(Protocol::Tcp, &Host::parse("10.0.0.5").unwrap(), 80));
        assert!(!list.permits(Protocol::Tcp, &Host::parse("10.0.0.6").unwrap(), 80));
    }

    #[test]
    fn port_ranges_deserialize_from_numbers_and_strings() {
        let v: Vec<PortRange> = serde_json::from_str(r#"[22, "80", "8000-8100"]"#).unwrap();
        assert_eq!(
            v,
            vec![
                PortRange::single(22),
                PortRange::single(80),
                PortRange {
                    start: 8000,
                    end: 8100
                }
            ]
        );
        assert!(serde_json::from_str::<Vec<PortRange>>("[70000]").is_err());
        assert!(serde_json::from_str::<Vec<PortRange>>(r#"["a-b"]"#).is_err());
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"[22,80,"8000-8100"]"#);
    }

    #[test]
    fn resolved_addresses_must_be_inside_the_networks_and_special_ranges_explicit() {
        let nets = |l: &[&str]| {
            Networks::parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let site = nets(&["10.1.0.0/16", "fd00::/64"]);
        assert!(site.admits(ip("10.1.2.3")));
        assert!(site.admits(ip("::ffff:10.1.2.3")));
        assert!(site.admits(ip("fd00::5")));
        assert!(!site.admits(ip("10.2.0.1")));
        assert!(!site.admits(ip("127.0.0.1")));
        assert!(!Networks::default().admits(ip("10.1.2.3")));
        // A broad network does not cover the special ranges...
        let all = nets(&["0.0.0.0/0", "::/0"]);
        assert!(all.admits(ip("192.0.2.1")));
        assert!(all.admits(ip("2001:db8::1")));
        for special in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!all.admits(ip(special)), "{special} admitted by 0.0.0.0/0");
        }
        // ... a network inside one does.
        assert!(nets(&["127.0.0.1/32"]).admits(ip("127.0.0.1")));
        assert!(nets(&["127.0.0.0/8"]).admits(ip("127.0.0.53")));
        assert!(nets(&["169.254.169.254"]).admits(ip("169.254.169.254")));
        assert!(!nets(&["127.0.0.1/32"]).admits(ip("127.0.0.2")));
        assert!(Networks::parse(&["10.1.2.3/16".to_string()]).is_err());
    }

    #[test]
    fn zero_prefix_matches_family_only() {
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains("1.2.3.4".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c6: Cidr = "::/0".parse().unwrap();
        assert!(c6.contains("::1".parse().unwrap()));
        assert!(!c6.contains("::ffff:1.2.3.4".parse().unwrap()));
    }
}
