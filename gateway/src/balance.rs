//! Load balancing across a rule's upstreams, and the health view it skips.
//!
//! A rule lists upstreams (Services) with weights; each Service has ready endpoint
//! addresses.
//! - **RoundRobin**: a pick first chooses a Service by smooth weighted round robin (nginx's
//!   algorithm: even spreading, no bursts to the heaviest member), then the next address of
//!   that Service in turn. So a weight is a Service's share of traffic whatever its number
//!   of endpoints, as in Gateway API `backendRefs`.
//! - **LeastConnections**: the address with the fewest requests in flight per unit of its
//!   Service's weight.
//! - **ConsistentHash**: weighted rendezvous hashing of the request's key (client IP or
//!   identity) over the addresses, so a client sticks to one address while it is healthy.
//!
//! Unhealthy addresses (failed active checks, or ejected after a connect failure) are
//! skipped, as are addresses already tried for this request. When every address is
//! unhealthy the pick ignores health rather than failing: health information can be wrong
//! (a partition between gateway and checks), and a try costs one connect.

// foldhash, not std's SipHash: in-flight counts and health are looked up on every request,
// by upstream addresses from the snapshot (issue 19).
use foldhash::HashMap;
use rustronaut_contract::snapshot::{LoadBalancing, SiteUpstream, Upstream, UpstreamKind};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Member {
    weight: i64,
    addresses: Vec<SocketAddr>,
    /// A site upstream (through the tunnel hub): no addresses of its own.
    site: Option<SiteUpstream>,
    next: AtomicUsize,
}

/// What [`Balancer::pick_target`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick<'a> {
    /// A Service address.
    Addr(SocketAddr),
    /// A host at a site, reached through the tunnel hub.
    Site(&'a SiteUpstream),
}

/// Requests in flight per upstream address (for least-connections), across reloads.
#[derive(Debug, Default)]
pub struct InFlight {
    map: Mutex<HashMap<SocketAddr, usize>>,
}

impl InFlight {
    /// Requests in flight to `addr`.
    pub fn get(&self, addr: SocketAddr) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).copied().unwrap_or(0)
    }

    /// A request to `addr` started.
    pub fn start(&self, addr: SocketAddr) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(addr).or_default() += 1;
    }

    /// A request to `addr` ended.
    pub fn end(&self, addr: SocketAddr) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&addr);
            }
        }
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every build and on every replica, so
/// consistent hashing sends a key to the same address from every gateway pod.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Which members may be chosen, per request: on the stack for up to eight upstreams.
type Eligible = smallvec::SmallVec<[bool; 8]>;

/// The balancer of one rule: the snapshot's algorithm over the Service upstreams. Site
/// upstreams (through the tunnel) are members too, but only [`Balancer::pick_target`]
/// (the L4 path) returns them; [`Balancer::pick`] (HTTP) never does.
pub struct Balancer {
    algorithm: LoadBalancing,
    members: Vec<Member>,
    current: Mutex<Vec<i64>>,
    ties: AtomicUsize,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("algorithm", &self.algorithm)
            .field("members", &self.members.len())
            .finish()
    }
}

impl Balancer {
    /// A balancer over `upstreams`; weight-0 and address-less upstreams never get traffic.
    pub fn new(upstreams: &[Upstream], algorithm: LoadBalancing) -> Self {
        let members: Vec<Member> = upstreams
            .iter()
            .filter_map(|u| match &u.kind {
                UpstreamKind::Service(s) if u.weight > 0 && !s.addresses.is_empty() => {
                    Some(Member {
                        weight: i64::from(u.weight),
                        addresses: s.addresses.clone(),
                        site: None,
                        next: AtomicUsize::new(0),
                    })
                }
                UpstreamKind::Site(s) if u.weight > 0 => Some(Member {
                    weight: i64::from(u.weight),
                    addresses: Vec::new(),
                    site: Some(s.clone()),
                    next: AtomicUsize::new(0),
                }),
                _ => None,
            })
            .collect();
        let current = Mutex::new(vec![0; members.len()]);
        Self {
            algorithm,
            members,
            current,
            ties: AtomicUsize::new(0),
        }
    }

    /// Every address, for health checking.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.members
            .iter()
            .flat_map(|m| m.addresses.iter().copied())
    }

    /// The next address, skipping `tried` and those `health` reports down (unless nothing
    /// else is left). `hash_key` is the request's key for consistent hashing. `None`: no
    /// address at all, or every one already tried.
    pub fn pick(
        &self,
        health: &Health,
        tried: &[SocketAddr],
        inflight: &InFlight,
        hash_key: Option<&str>,
    ) -> Option<SocketAddr> {
        for respect_health in [true, false] {
            let usable =
                |a: &SocketAddr| !tried.contains(a) && (!respect_health || health.is_up(*a));
            let found = match (self.algorithm, hash_key) {
                (LoadBalancing::LeastConnections, _) => self.pick_least(&usable, inflight),
                (LoadBalancing::ConsistentHash { .. }, Some(key)) => self.pick_hash(&usable, key),
                _ => self.pick_round_robin(&usable),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    fn candidates<'a>(
        &'a self,
        usable: &'a dyn Fn(&SocketAddr) -> bool,
    ) -> impl Iterator<Item = (i64, SocketAddr)> + 'a {
        self.members.iter().flat_map(move |m| {
            m.addresses
                .iter()
                .filter(move |a| usable(a))
                .map(move |a| (m.weight, *a))
        })
    }

    /// Fewest requests in flight relative to weight; ties rotate.
    fn pick_least(
        &self,
        usable: &dyn Fn(&SocketAddr) -> bool,
        inflight: &InFlight,
    ) -> Option<SocketAddr> {
        let all: smallvec::SmallVec<[(i64, SocketAddr); 8]> = self.candidates(usable).collect();
        if all.is_empty() {
            return None;
        }
        let offset = self.ties.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(f64, SocketAddr)> = None;
        for k in 0..all.len() {
            let (w, a) = all[(offset + k) % all.len()];
            let load = (inflight.get(a) as f64 + 1.0) / w as f64;
            if best.is_none_or(|(b, _)| load < b) {
                best = Some((load, a));
            }
        }
        best.map(|(_, a)| a)
    }

    /// Weighted rendezvous hashing: the address with the highest `w / -ln(u)`, `u` a
    /// uniform hash of (key, address). Removing an address moves only its own keys.
    fn pick_hash(&self, usable: &dyn Fn(&SocketAddr) -> bool, key: &str) -> Option<SocketAddr> {
        let mut best: Option<(f64, SocketAddr)> = None;
        for (w, a) in self.candidates(usable) {
            let h = fnv1a(&[key.as_bytes(), a.to_string().as_bytes()]);
            // 53 bits into (0, 1).
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = w as f64 / -u.ln();
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, a));
            }
        }
        best.map(|(_, a)| a)
    }

    /// Smooth weighted round robin over Services, then the next address of the Service.
    fn pick_round_robin(&self, usable: &dyn Fn(&SocketAddr) -> bool) -> Option<SocketAddr> {
        let eligible: Eligible = self
            .members
            .iter()
            .map(|m| m.addresses.iter().any(usable))
            .collect();
        let chosen = self.choose_member(&eligible)?;
        Self::next_address(&self.members[chosen], usable)
    }

    fn next_address(m: &Member, usable: &dyn Fn(&SocketAddr) -> bool) -> Option<SocketAddr> {
        let n = m.addresses.len();
        let start = m.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| m.addresses[(start + k) % n])
            .find(|a| usable(a))
    }

    /// Smooth weighted round robin (nginx's) over the `eligible` members.
    fn choose_member(&self, eligible: &[bool]) -> Option<usize> {
        if !eligible.iter().any(|e| *e) {
            return None;
        }
        // One member (the usual rule): chosen every time, and its running weight would
        // go up by its weight and back down by the same total, so the lock is not taken.
        if self.members.len() == 1 {
            return Some(0);
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let total: i64 = self
            .members
            .iter()
            .zip(eligible)
            .filter(|(_, e)| **e)
            .map(|(m, _)| m.weight)
            .sum();
        let mut best: Option<usize> = None;
        for (i, m) in self.members.iter().enumerate() {
            if !eligible[i] {
                continue;
            }
            current[i] += m.weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }

    /// Whether picks read [`InFlight`] (least connections): only then do requests need
    /// counting (see [`crate::state::Compiled::counts_in_flight`]).
    pub fn counts_in_flight(&self) -> bool {
        matches!(self.algorithm, LoadBalancing::LeastConnections)
    }

    /// Whether any upstream is a site.
    pub fn has_sites(&self) -> bool {
        self.members.iter().any(|m| m.site.is_some())
    }

    /// The next target, sites included (L4). Without site upstreams this is
    /// [`Balancer::pick`]. With them, upstreams share traffic by weighted round robin
    /// whatever the algorithm (the gateway cannot see a site's hosts' load or health); a
    /// site is always eligible (the hub and the connector decide whether it is reachable),
    /// a Service while it has a usable address.
    pub fn pick_target(
        &self,
        health: &Health,
        tried: &[SocketAddr],
        inflight: &InFlight,
        hash_key: Option<&str>,
        sites_tried: bool,
    ) -> Option<Pick<'_>> {
        if !self.has_sites() {
            return self.pick(health, tried, inflight, hash_key).map(Pick::Addr);
        }
        for respect_health in [true, false] {
            let usable =
                |a: &SocketAddr| !tried.contains(a) && (!respect_health || health.is_up(*a));
            let eligible: Eligible = self
                .members
                .iter()
                .map(|m| {
                    if m.site.is_some() {
                        !sites_tried
                    } else {
                        m.addresses.iter().any(usable)
                    }
                })
                .collect();
            let Some(chosen) = self.choose_member(&eligible) else {
                continue;
            };
            let m = &self.members[chosen];
            if let Some(site) = &m.site {
                return Some(Pick::Site(site));
            }
            if let Some(a) = Self::next_address(m, &usable) {
                return Some(Pick::Addr(a));
            }
        }
        None
    }
}

/// Which upstream addresses are down, shared by the active checker and the passive
/// ejection on connect failures; survives snapshot reloads (it is keyed by address).
///
/// Read on every request (twice for a round-robin pick); written by the checker and by
/// connect failures. While nothing is down, which is nearly always, a read is one atomic
/// load ([`Health::is_up`]) instead of a lock and a map lookup (issue 19).
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<HashMap<SocketAddr, AddrHealth>>,
    /// Whether some address may be down: set, under the lock, whenever an address goes
    /// down or is ejected; recomputed from the map when a check brings an address back or
    /// a read finds an ejection over. False only while every address is up, so a reader
    /// that sees it false may skip the map; true a little longer than needed at worst (an
    /// ejection that ran out on an address no one reads again), which costs only the old
    /// locked read.
    any_down: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
struct AddrHealth {
    ejected_until: Option<Instant>,
    active_down: bool,
    failures: u32,
    successes: u32,
}

impl Health {
    /// Whether `addr` may receive traffic now.
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        // Acquire pairs with the Release stores below: a reader that sees `true` sees the
        // entry that made it so.
        if !self.any_down.load(Ordering::Acquire) {
            return true;
        }
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = map.get_mut(&addr) else {
            return true;
        };
        if let Some(t) = h.ejected_until {
            let now = Instant::now();
            if t > now {
                return false;
            }
            // The ejection is over: forgotten, so that reads go back to the fast path once
            // nothing else is down.
            h.ejected_until = None;
            let up = !h.active_down;
            Self::publish(&map, &self.any_down, now);
            return up;
        }
        !h.active_down
    }

    /// Sets `any_down` from `map` (held locked by the caller) at `now`.
    fn publish(map: &HashMap<SocketAddr, AddrHealth>, any_down: &AtomicBool, now: Instant) {
        let down = map
            .values()
            .any(|h| h.active_down || h.ejected_until.is_some_and(|t| t > now));
        any_down.store(down, Ordering::Release);
    }

    /// Passive ejection: a connect to `addr` failed; keep traffic away for `for_`.
    pub fn eject(&self, addr: SocketAddr, for_: Duration) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(addr).or_default().ejected_until = Some(Instant::now() + for_);
        self.any_down.store(true, Ordering::Release);
    }

    /// Records an active check result with the thresholds of the rule; returns whether the
    /// address changed state (for logging) and whether it is now up for active checks.
    pub fn record_check(
        &self,
        addr: SocketAddr,
        ok: bool,
        unhealthy: u32,
        healthy: u32,
    ) -> (bool, bool) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(addr).or_default();
        let before = h.active_down;
        if ok {
            h.failures = 0;
            h.successes = h.successes.saturating_add(1);
            if h.active_down && h.successes >= healthy.max(1) {
                h.active_down = false;
            }
        } else {
            h.successes = 0;
            h.failures = h.failures.saturating_add(1);
            if !h.active_down && h.failures >= unhealthy.max(1) {
                h.active_down = true;
            }
        }
        let (changed, up) = (before != h.active_down, !h.active_down);
        if changed {
            Self::publish(&map, &self.any_down, Instant::now());
        }
        (changed, up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_contract::snapshot::ServiceUpstream;

    fn svc(weight: u32, addrs: &[&str]) -> Upstream {
        Upstream {
            kind: UpstreamKind::Service(ServiceUpstream {
                name: "s".into(),
                port: 80,
                addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            }),
            weight,
        }
    }

    #[test]
    fn weights_are_shares_of_services_not_of_endpoints() {
        let rr = Balancer::new(
            &[
                svc(3, &["10.0.0.1:80"]),
                svc(1, &["10.0.1.1:80", "10.0.1.2:80"]),
                svc(0, &["10.0.2.1:80"]),
            ],
            LoadBalancing::RoundRobin,
        );
        let health = Health::default();
        let mut counts: HashMap<SocketAddr, usize> = HashMap::default();
        for _ in 0..400 {
            *counts
                .entry(rr.pick(&health, &[], &InFlight::default(), None).unwrap())
                .or_default() += 1;
        }
        assert_eq!(counts[&"10.0.0.1:80".parse().unwrap()], 300);
        assert_eq!(counts[&"10.0.1.1:80".parse().unwrap()], 50);
        assert_eq!(counts[&"10.0.1.2:80".parse().unwrap()], 50);
        assert!(!counts.contains_key(&"10.0.2.1:80".parse().unwrap()));
    }

    #[test]
    fn ejected_and_tried_addresses_are_skipped_until_nothing_else_is_left() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let rr = Balancer::new(
            &[svc(1, &["10.0.0.1:80", "10.0.0.2:80"])],
            LoadBalancing::RoundRobin,
        );
        let health = Health::default();
        health.eject(a, Duration::from_secs(60));
        for _ in 0..4 {
            assert_eq!(rr.pick(&health, &[], &InFlight::default(), None), Some(b));
        }
        // Everything down: health is ignored rather than failing the request.
        health.eject(b, Duration::from_secs(60));
        assert!(rr.pick(&health, &[], &InFlight::default(), None).is_some());
        // Tried addresses are never picked again for the same request.
        assert_eq!(rr.pick(&health, &[a, b], &InFlight::default(), None), None);
    }

    #[test]
    fn active_checks_respect_thresholds() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let h = Health::default();
        assert_eq!(h.record_check(a, false, 2, 2), (false, true));
        assert!(h.is_up(a));
        assert_eq!(h.record_check(a, false, 2, 2), (true, false));
        assert!(!h.is_up(a));
        assert_eq!(h.record_check(a, true, 2, 2), (false, false));
        assert_eq!(h.record_check(a, true, 2, 2), (true, true));
        assert!(h.is_up(a));
    }

    #[test]
    fn health_reads_skip_the_map_only_while_nothing_is_down() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let h = Health::default();
        let fast = |h: &Health| !h.any_down.load(Ordering::Acquire);
        assert!(fast(&h));
        // Checks that pass, or fail below the threshold, change nothing a read sees.
        h.record_check(a, true, 2, 2);
        h.record_check(a, false, 2, 2);
        assert!(fast(&h) && h.is_up(a));
        // Down by active checks: slow path, and only that address is down.
        h.record_check(a, false, 2, 2);
        assert!(!fast(&h));
        assert!(!h.is_up(a) && h.is_up(b));
        // An ejection of another address keeps it so until both are up again.
        h.eject(b, Duration::from_millis(200));
        assert!(!h.is_up(b));
        h.record_check(a, true, 2, 2);
        h.record_check(a, true, 2, 2);
        assert!(h.is_up(a) && !fast(&h), "b is still ejected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.is_up(b), "the ejection is over");
        assert!(fast(&h), "nothing is down: reads skip the map again");
        // An ejection over while the address is down by checks leaves it down.
        for _ in 0..2 {
            h.record_check(a, false, 2, 2);
        }
        h.eject(a, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!h.is_up(a) && !fast(&h));
    }

    #[test]
    fn only_least_connections_reads_requests_in_flight() {
        let ups = [svc(1, &["10.0.0.1:80"])];
        assert!(Balancer::new(&ups, LoadBalancing::LeastConnections).counts_in_flight());
        assert!(!Balancer::new(&ups, LoadBalancing::RoundRobin).counts_in_flight());
    }

    #[test]
    fn no_service_upstream_means_no_pick() {
        let rr = Balancer::new(&[], LoadBalancing::RoundRobin);
        assert_eq!(
            rr.pick(&Health::default(), &[], &InFlight::default(), None),
            None
        );
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_address() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let lb = Balancer::new(
            &[svc(1, &["10.0.0.1:80", "10.0.0.2:80"])],
            LoadBalancing::LeastConnections,
        );
        let inflight = InFlight::default();
        let health = Health::default();
        inflight.start(a);
        inflight.start(a);
        inflight.start(b);
        for _ in 0..4 {
            assert_eq!(lb.pick(&health, &[], &inflight, None), Some(b));
        }
        inflight.end(a);
        inflight.end(a);
        assert_eq!(lb.pick(&health, &[], &inflight, None), Some(a));
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_the_keys_of_a_removed_address() {
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let lb = Balancer::new(
            &[svc(1, &addrs)],
            LoadBalancing::ConsistentHash {
                hash_key: rustronaut_contract::snapshot::HashKey::ClientIp,
            },
        );
        let health = Health::default();
        let inflight = InFlight::default();
        let keys: Vec<String> = (0..300).map(|i| format!("ip:192.0.2.{i}")).collect();
        let first: Vec<SocketAddr> = keys
            .iter()
            .map(|k| lb.pick(&health, &[], &inflight, Some(k)).unwrap())
            .collect();
        // Sticky.
        for (k, a) in keys.iter().zip(&first) {
            assert_eq!(lb.pick(&health, &[], &inflight, Some(k)), Some(*a));
        }
        // Spread over every address.
        for a in addrs {
            let a: SocketAddr = a.parse().unwrap();
            assert!(first.iter().filter(|x| **x == a).count() > 50, "{a}");
        }
        // Eject one: only its keys move.
        let gone: SocketAddr = addrs[0].parse().unwrap();
        health.eject(gone, Duration::from_secs(60));
        for (k, a) in keys.iter().zip(&first) {
            let now = lb.pick(&health, &[], &inflight, Some(k)).unwrap();
            if *a == gone {
                assert_ne!(now, gone);
            } else {
                assert_eq!(now, *a);
            }
        }
    }
}
