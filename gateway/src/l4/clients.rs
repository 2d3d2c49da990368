//! Per-client caps of an L4 port: TCP connections open at once and UDP flows remembered per
//! client, so one host cannot fill the port's shared connection cap or flow table.
//!
//! A client is an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64, and
//! would otherwise get 2^64 quotas). A [`ClientSlot`] is held for as long as the connection
//! or flow lives and gives its place back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// What one client is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `ip` (IPv4-mapped IPv6 as IPv4; other IPv6 addresses by their /64).
    pub fn of(ip: IpAddr) -> Self {
        match super::canonical(ip) {
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & (u128::MAX << 64);
                Self(IpAddr::V6(Ipv6Addr::from(net)))
            }
            v4 => Self(v4),
        }
    }
}

/// Counts per client against one cap. Only new connections and flows take the lock.
#[derive(Debug)]
pub struct PerClient {
    max: usize,
    counts: Mutex<HashMap<ClientKey, usize>>,
}

impl PerClient {
    /// A table admitting at most `max` (at least 1) at once per client.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            counts: Mutex::default(),
        })
    }

    /// A slot for `ip`, or `None` when its client already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            key,
        })
    }

    /// Slots `ip`'s client holds now.
    #[cfg(test)]
    pub fn held(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Clients holding at least one slot.
    #[cfg(test)]
    pub fn clients(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One connection's or flow's place in its client's count; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<PerClient>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_at_most_max_slots_and_gets_them_back_on_drop() {
        let t = PerClient::new(2);
        let a1 = t.try_acquire(ip("192.0.2.1")).unwrap();
        let _a2 = t.try_acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert!(t.try_acquire(ip("192.0.2.1")).is_none());
        // Another client is not affected.
        let b = t.try_acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(t.held(ip("192.0.2.1")), 2);
        drop(a1);
        assert_eq!(t.held(ip("192.0.2.1")), 1);
        assert!(t.try_acquire(ip("192.0.2.1")).is_some());
        drop(b);
        assert_eq!(t.held(ip("192.0.2.2")), 0);
        assert_eq!(t.clients(), 1, "empty clients are forgotten");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let t = PerClient::new(1);
        let _a = t.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(t.try_acquire(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(t.try_acquire(ip("2001:db8:1:3::1")).is_some());
    }
}
