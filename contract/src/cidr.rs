//! IP address ranges (`10.0.0.0/8`, `2001:db8::/32`) for `sourceCIDRs` principals, tunnel
//! address pools and site targets.
//!
//! A tiny type of our own rather than a dependency: parsing and containment are a dozen lines,
//! and the choices that matter for security are made here explicitly:
//! - host bits are allowed and masked off (`10.0.0.1/8` is `10.0.0.0/8`), as Kubernetes'
//!   `isCIDR()` accepts them and the intent is unambiguous;
//! - IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are compared as the IPv4 address they
//!   carry, so a dual-stack listener cannot be used to slip past an IPv4 range;
//! - a bare address (`10.0.0.1`) is not a CIDR: the prefix length is required, so a typo
//!   never silently widens or narrows a range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/` separating address and prefix length.
    #[error("invalid CIDR {0:?}: expected <address>/<prefix length>, e.g. 10.0.0.0/8")]
    MissingPrefix(String),
    /// The address part is not an IP address.
    #[error("invalid CIDR {0:?}: the address is not an IPv4 or IPv6 address")]
    InvalidAddress(String),
    /// The prefix length is not a number in range for the address family.
    #[error("invalid CIDR {0:?}: the prefix length must be 0-32 for IPv4 and 0-128 for IPv6")]
    InvalidPrefix(String),
}

/// An IP network: an address with its host bits cleared and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds a network from an address and prefix length, clearing host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return Err(CidrError::InvalidPrefix(format!("{addr}/{prefix}")));
        }
        Ok(Self {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is inside this network. IPv4-mapped IPv6 addresses are compared as IPv4;
    /// an IPv4 address is never inside an IPv6 network and vice versa.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical_ip(addr);
        match (self.network, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(addr, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

/// Returns the IPv4 address carried by an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), and
/// any other address unchanged. Every comparison of client addresses goes through this.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingPrefix(s.to_string()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::InvalidAddress(s.to_string()))?;
        // Digits only: `u8::from_str` would accept a leading `+`.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::InvalidPrefix(s.to_string()));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| CidrError::InvalidPrefix(s.to_string()))?;
        Cidr::new(addr, prefix).map_err(|_| CidrError::InvalidPrefix(s.to_string()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_masks() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("::1")), "families never mix");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        let host: Cidr = "192.0.2.7/32".parse().unwrap();
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert_eq!(canonical_ip(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} should not parse");
        }
    }
}
