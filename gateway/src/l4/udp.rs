//! UDP ports: a datagram proxy with one flow per client address.
//!
//! ```text
//!  datagram from client C
//!    known flow? -- allowed: send on C's upstream socket; denied: drop (no re-decision)
//!    new flow:   at the flow cap, or C's address at its per-client cap? drop. Else
//!                decide once (PROXY protocol does not apply);
//!                allowed: a connected socket to one upstream address (or a stream
//!                through the tunnel hub for a site upstream), and a task relaying its
//!                answers back to C; denied: remembered, so C's next datagrams are
//!                dropped without another decision or log line until the flow idles out
//!  sweeper: every flow silent in both directions for the idle timeout is forgotten
//! ```

use super::{
    ClientSlot, Kind, L4Facts, L4Options, PerClient, canonical, decide, listeners_on, record,
};
use crate::balance::Pick;
use crate::pipeline::{Env, Record};
use crate::proxy::Shared;
use crate::state::L4_RULE;
use crate::tunnel::Protocol;
use pingora::server::ShutdownWatch;
use rustronaut_contract::snapshot::SiteUpstream;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Largest datagram relayed (the IPv4 UDP payload limit).
const MAX_DATAGRAM: usize = 65_507;

struct Flow {
    /// Milliseconds since the service started, at the last datagram either way.
    last: AtomicU64,
    /// Where the client's datagrams go.
    upstream: FlowUpstream,
    /// Ends the relay task.
    stop: Notify,
}

enum FlowUpstream {
    /// Denied (or no upstream): datagrams are dropped.
    None,
    /// A socket connected to a Service address.
    Socket(Arc<UdpSocket>),
    /// A stream through the tunnel hub to a host at a site; the relay task frames the
    /// datagrams queued here onto it (`len u16 BE | datagram`, docs/tunnel.md). The queue is
    /// bounded: while the hub is still opening the stream, or the stream is slow, datagrams
    /// beyond it are dropped, as a full socket buffer would.
    Site(tokio::sync::mpsc::Sender<Vec<u8>>),
}

/// Datagrams queued per site flow.
const SITE_QUEUE: usize = 256;

impl Flow {
    fn send(&self, data: &[u8]) {
        match &self.upstream {
            FlowUpstream::None => {}
            // UDP may drop: a full buffer drops this datagram rather than stalling every
            // other flow of the port.
            FlowUpstream::Socket(up) => {
                let _ = up.try_send(data);
            }
            FlowUpstream::Site(tx) => {
                let _ = tx.try_send(data.to_vec());
            }
        }
    }
}

/// Flows by client address, each with its place in its client's count: removing the entry
/// (the flow idled out) gives the place back.
type FlowMap = HashMap<SocketAddr, (Arc<Flow>, ClientSlot)>;
type Flows = Arc<Mutex<FlowMap>>;

fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, FlowMap> {
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
    let per_client = PerClient::new(opts.udp_max_flows_per_client);
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
                map.retain(|_, (f, _)| {
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
            _ = shutdown.changed() => {
                tracing::info!(port, protocol = "UDP", "L4 listener stops accepting");
                break;
            }
        };
        let data = &buf[..n];
        let known = lock(&flows).get(&peer).map(|(f, _)| f.clone());
        if let Some(flow) = known {
            flow.last.store(now_ms(), Ordering::Relaxed);
            flow.send(data);
            continue;
        }
        if lock(&flows).len() >= opts.udp_max_flows {
            shared.metrics.l4_udp_flows_dropped.inc();
            continue;
        }
        // One source address opening flow after flow (a port scan, a spoofing flood) stops
        // at its own cap and leaves the table to the others.
        let Some(slot) = per_client.try_acquire(peer.ip()) else {
            shared.metrics.l4_udp_client_flows_dropped.inc();
            tracing::debug!(port, peer = %peer, max = per_client.max(), "UDP client at its flow cap; datagram dropped");
            continue;
        };
        let Some(flow) = open(&socket, port, peer, &shared, epoch).await else {
            continue;
        };
        match &flow.upstream {
            // Awaited, not tried: a fresh socket's readiness is unknown to the reactor until
            // it has been polled once, so `try_send` would drop the first datagram.
            FlowUpstream::Socket(up) => {
                let _ = up.send(data).await;
            }
            _ => flow.send(data),
        }
        let mut map = lock(&flows);
        map.insert(peer, (flow, slot));
        shared.metrics.l4_udp_flows.set(map.len() as i64);
    }
    sweeper.abort();
    for (f, _) in lock(&flows).values() {
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
            upstream: FlowUpstream::None,
            stop: Notify::new(),
        }))
    };
    let mut rec = verdict.record;
    let Some(f) = verdict.forward else {
        return denied(&rec);
    };
    let pick = state.balancer(f.resource, L4_RULE, port).and_then(|b| {
        b.pick_target(
            &shared.health,
            &[],
            &shared.inflight,
            f.hash_key.as_deref(),
            false,
        )
    });
    let addr = match pick {
        None => {
            rec.detail = Some("no upstream address".into());
            return denied(&rec);
        }
        Some(Pick::Site(site)) => {
            let (tx, rx) = tokio::sync::mpsc::channel(SITE_QUEUE);
            let flow = Arc::new(Flow {
                last: AtomicU64::new(now_ms),
                upstream: FlowUpstream::Site(tx),
                stop: Notify::new(),
            });
            let relay = SiteRelay {
                flow: flow.clone(),
                socket: socket.clone(),
                shared: shared.clone(),
                site: site.clone(),
                port,
                peer,
                epoch,
                record: rec,
            };
            // A flow's relay on any worker of the port (crate::server::WORK_STEALING).
            pingora_runtime::current_handle().spawn(relay.run(rx));
            return Some(flow);
        }
        Some(Pick::Addr(addr)) => addr,
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
    let up = Arc::new(up);
    let flow = Arc::new(Flow {
        last: AtomicU64::new(now_ms),
        upstream: FlowUpstream::Socket(up.clone()),
        stop: Notify::new(),
    });
    shared.inflight.start(addr);
    let relay = flow.clone();
    let socket = socket.clone();
    let shared = shared.clone();
    // The upstream's answers read on any worker of the port (crate::server::WORK_STEALING).
    pingora_runtime::current_handle().spawn(async move {
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

/// The relay of one UDP flow to a site: opens the hub stream (off the receive loop: it takes
/// a round trip through the tunnel), logs the decision with its outcome, then frames
/// datagrams both ways until the flow ends.
struct SiteRelay {
    flow: Arc<Flow>,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    site: SiteUpstream,
    port: u16,
    peer: SocketAddr,
    epoch: Instant,
    record: Record,
}

impl SiteRelay {
    async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>) {
        let label = format!(
            "site:{}/{}:{}",
            self.site.site, self.site.host, self.site.port
        );
        let opened = match &self.shared.tunnel {
            Some(t) => t
                .open(
                    &self.site.site,
                    Protocol::Udp,
                    &self.site.host,
                    self.site.port,
                )
                .await
                .map_err(|e| e.to_string()),
            None => Err("no --tunnel-stream configured".to_string()),
        };
        let (stream, mut inbuf) = match opened {
            Ok(o) => o,
            Err(e) => {
                // The flow stays (denied-like) until it idles out, so a client retrying
                // does not make the hub refuse it again for every datagram.
                self.record.detail = Some(format!("{label}: {e}"));
                record(
                    &self.shared,
                    Kind::Udp,
                    self.port,
                    self.peer,
                    &self.record,
                    None,
                );
                return;
            }
        };
        record(
            &self.shared,
            Kind::Udp,
            self.port,
            self.peer,
            &self.record,
            Some(label),
        );
        let (mut rd, mut wr) = stream.into_split();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            // Deliver every complete frame received so far.
            while inbuf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([inbuf[0], inbuf[1]]));
                if inbuf.len() < 2 + len {
                    break;
                }
                self.flow
                    .last
                    .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                let _ = self.socket.send_to(&inbuf[2..2 + len], self.peer).await;
                inbuf.drain(..2 + len);
            }
            tokio::select! {
                d = rx.recv() => {
                    let Some(d) = d else { break };
                    let Ok(len) = u16::try_from(d.len()) else { continue };
                    let mut frame = Vec::with_capacity(2 + d.len());
                    frame.extend_from_slice(&len.to_be_bytes());
                    frame.extend_from_slice(&d);
                    if wr.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                r = rd.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                },
                _ = self.flow.stop.notified() => break,
            }
        }
        tracing::debug!(protocol = "UDP", port = self.port, peer = %self.peer, decision_id = %self.record.decision_id, "site flow ended");
    }
}
