//! Best-effort per-site tunnel state for `status.tunnel.sites`, read from the hub pods'
//! admin endpoint (`GET /status` on port 9090, docs/tunnel.md).
//!
//! ```text
//!  EndpointSlices of <gw>-hub-stream (ready hub pods, from the cache: no extra permission)
//!    -> GET http://<pod ip>:9090/status, all pods at once, 1 s each  (fetch_all)
//!    -> site_status: connected if any replica has a live tunnel, the latest handshake
//! ```
//!
//! Best effort, never invented: a pod that does not answer in time (or is not ready) is not
//! counted, and when no pod answers the sites are left out of the status entirely rather than
//! reported as disconnected. The status is as fresh as the last reconcile; a Gateway with a
//! tunnel is reconciled at least every [`INTERVAL`]. The request is plain HTTP/1.1 on a
//! `TcpStream`: one GET with `Connection: close` and a bounded body needs no HTTP client.

use rustronaut_crds::gateway::SiteStatus;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one hub pod may take to answer (connect, request and response together).
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Largest response read (a hub with 64 sites answers with a few kB).
pub const MAX_RESPONSE: u64 = 1 << 20;
/// Longest time between two reconciles of a Gateway with a tunnel, so site state follows.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// What the operator reads of a hub's `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Report {
    /// The hub's peers: one per site.
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// One site as a hub replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Peer {
    /// Site name.
    pub name: String,
    /// A handshake within the last 180 s.
    pub connected: bool,
    /// Unix time of the last handshake.
    #[serde(default)]
    pub last_handshake_unix: Option<u64>,
}

/// Parses a whole HTTP/1.x response: a 200 with a JSON [`Report`] body, else None.
pub fn parse_response(bytes: &[u8]) -> Option<Report> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).ok()?;
    let status = head.lines().next()?;
    let mut parts = status.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") || parts.next()? != "200" {
        return None;
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        // The hub sends a Content-Length; anything else is not the hub.
        return None;
    }
    serde_json::from_slice(&bytes[split + 4..]).ok()
}

/// `GET /status` from one hub pod; None when it does not answer a 200 with a report within
/// [`TIMEOUT`].
pub async fn fetch(addr: SocketAddr) -> Option<Report> {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        tcp.take(MAX_RESPONSE).read_to_end(&mut body).await.ok()?;
        parse_response(&body)
    };
    tokio::time::timeout(TIMEOUT, exchange).await.ok().flatten()
}

/// Every answer of the hub pods at `addrs`, asked concurrently.
pub async fn fetch_all(addrs: &[SocketAddr]) -> Vec<Report> {
    futures::future::join_all(addrs.iter().map(|a| fetch(*a)))
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The state of `sites` (spec order) from the replicas' `reports`: connected when any replica
/// has a live tunnel, the most recent handshake of any replica. No reports: nothing known,
/// so no entries (an empty list, not a list of disconnected sites).
pub fn site_status(sites: &[String], reports: &[Report]) -> Vec<SiteStatus> {
    if reports.is_empty() {
        return Vec::new();
    }
    let mut seen: BTreeMap<&str, (bool, Option<u64>)> = BTreeMap::new();
    for p in reports.iter().flat_map(|r| &r.peers) {
        let e = seen.entry(p.name.as_str()).or_insert((false, None));
        e.0 |= p.connected;
        e.1 = e.1.max(p.last_handshake_unix);
    }
    sites
        .iter()
        .map(|name| {
            let (connected, last) = seen.get(name.as_str()).copied().unwrap_or((false, None));
            SiteStatus {
                name: name.clone(),
                connected,
                last_handshake_time: last
                    .and_then(|s| i64::try_from(s).ok())
                    .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
                    .map(|t| t.to_string()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_tunnel::admin::{PeerStatus, Status, StatusSource};
    use std::sync::Arc;

    fn peer(name: &str, connected: bool, last: Option<u64>) -> Peer {
        Peer {
            name: name.into(),
            connected,
            last_handshake_unix: last,
        }
    }

    #[test]
    fn any_replica_connects_a_site_and_the_latest_handshake_wins() {
        let sites = vec!["dc1".to_string(), "lab".to_string(), "new".to_string()];
        let reports = [
            Report {
                peers: vec![peer("dc1", false, Some(100)), peer("lab", false, None)],
            },
            Report {
                peers: vec![
                    peer("dc1", true, Some(1_790_000_000)),
                    peer("gone", true, None),
                ],
            },
        ];
        let got = site_status(&sites, &reports);
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::json!([
                {"name": "dc1", "connected": true, "lastHandshakeTime": "2026-09-21T14:13:20Z"},
                {"name": "lab", "connected": false},
                {"name": "new", "connected": false},
            ])
        );
        assert!(
            site_status(&sites, &[]).is_empty(),
            "unknown is not disconnected"
        );
    }

    #[test]
    fn responses_other_than_a_hub_report_are_ignored() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\n\r\n{\"role\":\"hub\",\"peers\":[{\"name\":\"dc1\",\"connected\":true}]}";
        assert_eq!(
            parse_response(ok),
            Some(Report {
                peers: vec![peer("dc1", true, None)]
            })
        );
        for bad in [
            &b"HTTP/1.1 404 Not Found\r\n\r\nnot found"[..],
            b"HTTP/1.1 200 OK\r\n\r\nnot json",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{}\r\n",
            b"SSH-2.0-OpenSSH\r\n",
            b"",
        ] {
            assert_eq!(
                parse_response(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    struct Fixed(Status);
    impl StatusSource for Fixed {
        fn status(&self) -> Status {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn reads_the_hubs_own_admin_endpoint() {
        // The hub's admin server itself (rustronaut_tunnel::admin), on a real socket.
        let status = Status {
            role: "hub",
            public_key: "k".into(),
            peers: vec![PeerStatus {
                name: "dc1".into(),
                public_key: "p".into(),
                tunnel_address: "100.96.1.1".into(),
                connected: true,
                last_handshake_unix: Some(1_790_000_000),
                endpoint: None,
                rx_bytes: 1,
                tx_bytes: 2,
                rx_rejected: 0,
                streams: 0,
                targets_generation: Some(1),
            }],
            counters: Vec::new(),
        };
        let listener = rustronaut_tunnel::admin::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(rustronaut_tunnel::admin::serve(
            listener,
            Arc::new(Fixed(status)),
        ));
        // A closed port next to it: refused, not counted.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let reports = fetch_all(&[addr, closed]).await;
        server.abort();
        assert_eq!(
            reports,
            [Report {
                peers: vec![peer("dc1", true, Some(1_790_000_000))]
            }]
        );
    }
}
