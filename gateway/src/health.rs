//! Active health checks of the upstream addresses of rules (HTTP) and Resources (TCP, UDP,
//! TLSPassthrough) that configure `healthCheck`:
//! an HTTP `GET <path>` (2xx/3xx is healthy) or, without a path, a TCP connect, every
//! `intervalMs`, each bounded by `timeoutMs`; `unhealthyThreshold` consecutive failures
//! take an address out of rotation, `healthyThreshold` successes bring it back.
//!
//! One loop reads the current snapshot on every tick, so a reload changes what is checked
//! without restarting anything; results go to the shared [`Health`].

use crate::balance::Health;
use crate::metrics::{AddressLabel, Metrics, ResourceLabel};
use crate::reload::Store;
use crate::state::L4_RULE;
use rustronaut_contract::snapshot::HealthCheck;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The shortest sleep of the check loop: it looks no more often than this, and otherwise
/// sleeps until the next check or export is due or the snapshot is swapped
/// ([`crate::wake`]).
const TICK: Duration = Duration::from_millis(100);

/// One check; `true` when healthy.
pub async fn check(addr: SocketAddr, hc: &HealthCheck) -> bool {
    let timeout = Duration::from_millis(hc.timeout_ms.max(1));
    tokio::time::timeout(timeout, check_inner(addr, hc.path.as_deref()))
        .await
        .unwrap_or(false)
}

async fn check_inner(addr: SocketAddr, path: Option<&str>) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = path else { return true };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rustronaut-gateway-health\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.x NNN"
    let status = std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok());
    buf.starts_with(b"HTTP/1.") && status.is_some_and(|s| (200..400).contains(&s))
}

/// How often the per-Resource endpoint gauges are recomputed.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Per Resource (`namespace/name`): (upstream addresses, addresses that are up), from the
/// addresses of each of its balancers. A Resource whose balancers have no address at all
/// (its Service has no ready endpoint) counts (0, 0); an address shared by several rules
/// counts once. Pure, for the gauges behind the "no healthy upstream" alert.
pub fn endpoints_by_resource(
    balancers: impl IntoIterator<Item = (String, Vec<SocketAddr>)>,
    is_up: impl Fn(SocketAddr) -> bool,
) -> BTreeMap<String, (i64, i64)> {
    let mut by: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    for (resource, addrs) in balancers {
        by.entry(resource).or_default().extend(addrs);
    }
    by.into_iter()
        .map(|(r, addrs)| {
            let up = addrs.iter().filter(|a| is_up(**a)).count();
            (r, (addrs.len() as i64, up as i64))
        })
        .collect()
}

/// Sets the per-Resource gauges and removes those of Resources no longer served.
fn export_endpoints(
    state: &crate::state::Compiled,
    health: &Health,
    metrics: &Metrics,
    exported: &mut BTreeSet<String>,
) {
    let resources = &state.snapshot.resources;
    // Balancers with site upstreams are left out: a site's reachability is the tunnel's
    // (`rustronaut_tunnel_hub_peer_connected`), and a site-only one has no address.
    let counts = endpoints_by_resource(
        state
            .balancers
            .iter()
            .filter(|(_, b)| !b.has_sites())
            .map(|((ri, _), b)| {
                let name = resources
                    .get(*ri)
                    .map(|r| format!("{}/{}", r.namespace, r.name))
                    .unwrap_or_else(|| "-".into());
                (name, b.addresses().collect())
            }),
        |a| health.is_up(a),
    );
    for gone in exported.iter().filter(|r| !counts.contains_key(*r)) {
        let l = ResourceLabel {
            resource: gone.clone(),
        };
        metrics.upstream_endpoints.remove(&l);
        metrics.upstream_healthy_endpoints.remove(&l);
    }
    for (resource, (total, up)) in &counts {
        let l = ResourceLabel {
            resource: resource.clone(),
        };
        metrics.upstream_endpoints.get_or_create(&l).set(*total);
        metrics
            .upstream_healthy_endpoints
            .get_or_create(&l)
            .set(*up);
    }
    *exported = counts.into_keys().collect();
}

/// Runs the checks forever (the caller drops the task to stop it).
pub async fn run(store: Arc<Store>, health: Arc<Health>, metrics: Arc<Metrics>) {
    let due: Arc<Mutex<HashMap<SocketAddr, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let mut exported = BTreeSet::new();
    let mut last_export: Option<Instant> = None;
    // The snapshot the schedule was last trimmed for: an address can leave it only with a new
    // snapshot, so the trimming (a set of every balancer's addresses) waits for one instead
    // of running every tick (issue 19: with 1,000 upstreams, ~800,000 instructions a tick,
    // ten ticks a second, idle or not). Weak: the old snapshot's contents are not kept, and
    // its allocation is, so a new snapshot never takes its address.
    let mut trimmed_for: Option<std::sync::Weak<crate::state::Compiled>> = None;
    let mut swaps = store.swaps();
    let mut next = Some(Instant::now());
    let mut looked: Option<Instant> = None;
    loop {
        let not_before = looked.map_or_else(Instant::now, |t| t + TICK);
        crate::wake::until(not_before, next, &mut swaps, None).await;
        looked = Some(Instant::now());
        let Some(state) = store.current() else {
            next = None;
            continue;
        };
        let now = Instant::now();
        if last_export.is_none_or(|t| now.duration_since(t) >= EXPORT_EVERY) {
            export_endpoints(&state, &health, &metrics, &mut exported);
            last_export = Some(now);
        }
        if trimmed_for
            .as_ref()
            .is_none_or(|t| !std::ptr::eq(t.as_ptr(), Arc::as_ptr(&state)))
        {
            // Forget addresses no longer in the snapshot, so the schedule stays bounded.
            let current: HashSet<SocketAddr> = state
                .balancers
                .values()
                .flat_map(|b| b.addresses())
                .collect();
            // Their `upstream_up` series go too: the label is an upstream address of the
            // current snapshot, so its cardinality stays bounded by the configuration as
            // endpoints churn.
            due.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|a, _| {
                    let keep = current.contains(a);
                    if !keep {
                        metrics.upstream_up.remove(&AddressLabel {
                            address: a.to_string(),
                        });
                    }
                    keep
                });
            trimmed_for = Some(Arc::downgrade(&state));
        }
        // HTTP rules carry their own health check; an L4 Resource has one for all its
        // upstreams, kept under rule index [`L4_RULE`].
        let checked = state
            .snapshot
            .resources
            .iter()
            .enumerate()
            .flat_map(|(ri, r)| {
                let l4 = r.health_check.as_ref().map(|hc| ((ri, L4_RULE), hc));
                r.rules
                    .iter()
                    .enumerate()
                    .filter_map(move |(ui, rule)| {
                        rule.health_check.as_ref().map(|hc| ((ri, ui), hc))
                    })
                    .chain(l4)
            });
        let mut first_due: Option<Instant> = None;
        for (key, hc) in checked {
            {
                let Some(b) = state.balancers.get(&key) else {
                    continue;
                };
                for addr in b.addresses() {
                    {
                        let mut due = due.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(&t) = due.get(&addr).filter(|t| **t > now) {
                            first_due = Some(first_due.map_or(t, |f| f.min(t)));
                            continue;
                        }
                        let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                        if !running.insert(addr) {
                            // Still running past its interval: looked at again next time.
                            first_due = Some(now);
                            continue;
                        }
                        let t = now + Duration::from_millis(hc.interval_ms.max(100));
                        first_due = Some(first_due.map_or(t, |f| f.min(t)));
                        due.insert(addr, t);
                    }
                    let hc = hc.clone();
                    let health = health.clone();
                    let running = running.clone();
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let ok = check(addr, &hc).await;
                        let (changed, up) = health.record_check(
                            addr,
                            ok,
                            hc.unhealthy_threshold,
                            hc.healthy_threshold,
                        );
                        if changed {
                            tracing::warn!(upstream = %addr, healthy = up, "upstream health changed");
                        }
                        metrics
                            .upstream_up
                            .get_or_create(&AddressLabel {
                                address: addr.to_string(),
                            })
                            .set(i64::from(up));
                        running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&addr);
                    });
                }
            }
        }
        // Until the next export or the next check due, whichever is first (a check still
        // running past its interval is looked at again after the tick).
        let export = last_export.map_or(now, |t| t + EXPORT_EVERY);
        next = Some(first_due.map_or(export, |d| d.min(export)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn endpoints_are_counted_per_resource_once_each() {
        let down = a("10.0.0.2:80");
        let counts = endpoints_by_resource(
            [
                ("acme/web".to_string(), vec![a("10.0.0.1:80"), down]),
                // A second rule of the same Resource with the same address: counted once.
                ("acme/web".to_string(), vec![a("10.0.0.1:80")]),
                ("acme/db".to_string(), vec![a("10.0.1.1:5432")]),
                ("beta/api".to_string(), vec![down]),
                // No ready endpoint at all: reported, as (0, 0).
                ("beta/empty".to_string(), vec![]),
            ],
            |x| x != down,
        );
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("acme/db".to_string(), (1, 1)),
                ("acme/web".to_string(), (2, 1)),
                ("beta/api".to_string(), (1, 0)),
                ("beta/empty".to_string(), (0, 0)),
            ]
        );
    }
}
