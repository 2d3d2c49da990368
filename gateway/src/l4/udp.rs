//! UDP ports: a datagram proxy with one flow per client address.
//!
//! ```text
//!  datagram from client C
//!    known flow? -- allowed: send on C's upstream socket; denied: drop (no re-decision)
//!    new flow:   at the flow cap? drop. Else decide once (PROXY protocol does not apply);
//!                allowed: a connected socket to one upstream address, and a task relaying
//!                its answers back to C; denied: remembered, so C's next datagrams are
//!                dropped without another decision or log line until the flow idles out
//!  sweeper: every flow silent in both directions for the idle timeout is forgotten
//! ```

use super::{Kind, L4Facts, L4Options, canonical, decide, listeners_on, record};
use crate::pipeline::{Env, Record};
use crate::proxy::Shared;
use crate::state::L4_RULE;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Largest datagram relayed (the IPv4 UDP payload limit).
const MAX_DATAGRAM: usize = 65_507;

struct Flow {
    /// Milliseconds since the service started, at the last datagram either way.
    last: AtomicU64,
    /// The connected socket to the upstream; `None` for a denied flow.
    upstream: Option<Arc<UdpSocket>>,
    /// Ends the relay task.
    stop: Notify,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
    flows.lock().unwrap_or_else(|p| p.into_inner())
}

/// Relays until shutdown.
pub(super) async fn serve(
    socket: Arc<UdpSocket>,
    port: u16,
    shared: Arc<Shared>,
    opts: L4Options,
    mut shutdown: ShutdownWatch,
) {
    tracing::info!(port, protocol = "UDP", "L4 listener serving");
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let flows: Flows = Arc::default();
    let idle = opts.udp_idle_timeout.max(Duration::from_millis(10));
    let sweeper = {
        let flows = flows.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            loop {
                tokio::time::sleep(every).await;
                let cutoff = now_ms().saturating_sub(idle.as_millis() as u64);
                let mut map = lock(&flows);
                map.retain(|_, f| {
                    let keep = f.last.load(Ordering::Relaxed) >= cutoff;
                    if !keep {
                        f.stop.notify_one();
                    }
                    keep
                });
                shared.metrics.l4_udp_flows.set(map.len() as i64);
            }
        })
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; they concern one peer only.
                    tracing::debug!(port, error = %e, "UDP receive failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let data = &buf[..n];
        let known = lock(&flows).get(&peer).cloned();
        if let Some(flow) = known {
            flow.last.store(now_ms(), Ordering::Relaxed);
            if let Some(up) = &flow.upstream {
                // UDP may drop: a full socket buffer drops this datagram rather than stalling
                // every other flow of the port.
                let _ = up.try_send(data);
            }
            continue;
        }
        if lock(&flows).len() >= opts.udp_max_flows {
            shared.metrics.l4_udp_flows_dropped.inc();
            continue;
        }
        let Some(flow) = open(&socket, port, peer, &shared, epoch).await else {
            continue;
        };
        if let Some(up) = &flow.upstream {
            // Awaited, not tried: a fresh socket's readiness is unknown to the reactor until
            // it has been polled once, so `try_send` would drop the first datagram.
            let _ = up.send(data).await;
        }
        let mut map = lock(&flows);
        map.insert(peer, flow);
        shared.metrics.l4_udp_flows.set(map.len() as i64);
    }
    sweeper.abort();
    for f in lock(&flows).values() {
        f.stop.notify_one();
    }
}

/// Decides a new flow and, when allowed, connects its upstream socket and starts the task
/// relaying answers. `None`: no snapshot or the listener is gone (nothing remembered).
async fn open(
    socket: &Arc<UdpSocket>,
    port: u16,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    epoch: Instant,
) -> Option<Arc<Flow>> {
    let now_ms = epoch.elapsed().as_millis() as u64;
    let state = shared.store.current()?;
    let names = listeners_on(&state, Kind::Udp, port);
    if names.is_empty() {
        return None;
    }
    let env = Env {
        now: SystemTime::now(),
        instant: Instant::now(),
        cache: &shared.cache,
        ids: &shared.ids,
        limiter: &shared.limiter,
        remote: &shared.remote,
    };
    let facts = L4Facts {
        kind: Kind::Udp,
        listeners: &names,
        port,
        sni: None,
        client_ip: canonical(peer.ip()),
        client_chain: None,
    };
    let verdict = decide(&state, &facts, &env);
    let denied = |rec: &Record| {
        record(shared, Kind::Udp, port, peer, rec, None);
        Some(Arc::new(Flow {
            last: AtomicU64::new(now_ms),
            upstream: None,
            stop: Notify::new(),
        }))
    };
    let mut rec = verdict.record;
    let Some(f) = verdict.forward else {
        return denied(&rec);
    };
    let addr = state
        .balancers
        .get(&(f.resource, L4_RULE))
        .and_then(|b| b.pick(&shared.health, &[], &shared.inflight, f.hash_key.as_deref()));
    let Some(addr) = addr else {
        rec.detail = Some("no upstream address".into());
        return denied(&rec);
    };
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let up = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            rec.detail = Some(format!("binding an upstream socket: {e}"));
            return denied(&rec);
        }
    };
    if let Err(e) = up.connect(addr).await {
        rec.detail = Some(format!("connecting to {addr}: {e}"));
        return denied(&rec);
    }
    record(shared, Kind::Udp, port, peer, &rec, Some(addr.to_string()));
    let flow = Arc::new(Flow {
        last: AtomicU64::new(now_ms),
        upstream: Some(Arc::new(up)),
        stop: Notify::new(),
    });
    shared.inflight.start(addr);
    let relay = flow.clone();
    let socket = socket.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let Some(up) = relay.upstream.clone() else {
            return;
        };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                r = up.recv(&mut buf) => match r {
                    Ok(n) => {
                        relay.last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        let _ = socket.send_to(&buf[..n], peer).await;
                    }
                    // ICMP port unreachable from the upstream: keep the flow, the next
                    // datagram may find it back.
                    Err(_) => continue,
                },
                _ = relay.stop.notified() => break,
            }
        }
        shared.inflight.end(addr);
        tracing::debug!(protocol = "UDP", port, peer = %peer, upstream = %addr, decision_id = %rec.decision_id, "flow ended");
    });
    Some(flow)
}
