//! Target names are resolved at the site and dialled only inside the site's networks (issue
//! 14, item 13): a real hub and connector in this process, the WireGuard tunnel over
//! loopback UDP, so no namespace and no root are needed.
//!
//! The hub allows the *name* `localhost` (which resolves to 127.0.0.1). With the site's
//! advertised CIDRs `10.1.0.0/16` the connector refuses it (`denied_by_site`), logs and counts
//! it; with `127.0.0.1/32` (a network naming loopback explicitly) the same name reaches the
//! echo server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rustronaut_tunnel::allow::{Host, Protocol};
use rustronaut_tunnel::client::{self, ClientError};
use rustronaut_tunnel::config::{ConnectorConfig, HubConfig};
use rustronaut_tunnel::connector::Connector;
use rustronaut_tunnel::hub::Hub;
use rustronaut_tunnel::keys::{PrivateKey, write_private_key};
use rustronaut_tunnel::proto::{OpenRequest, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "gateway-token-0123456789abcdef";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP echo server on 127.0.0.1.
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Pair {
    stream: SocketAddr,
    connector_admin: SocketAddr,
    hub_admin: SocketAddr,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A hub whose site `dc1` allows the name `localhost` on `port`, with `networks` as the
/// site's advertised CIDRs, and that site's connector.
async fn start(port: u16, networks: &[&str]) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let hub_key = PrivateKey::generate().unwrap();
    let site_key = PrivateKey::generate().unwrap();
    let (hub_key_file, site_key_file) = (dir.path().join("hub.key"), dir.path().join("site.key"));
    write_private_key(&hub_key_file, &hub_key).unwrap();
    write_private_key(&site_key_file, &site_key).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let wg_port = free_port();
    let stream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let connector_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hub_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hub: HubConfig = serde_json::from_value(serde_json::json!({
        "listen_port": wg_port,
        "private_key_file": hub_key_file,
        "tunnel_address": "100.96.0.1",
        "stream_listen": stream.to_string(),
        "token_file": token_file,
        "admin_listen": hub_admin.to_string(),
        "sites": [{"name": "dc1", "public_key": site_key.public_key().to_string(),
                   "tunnel_address": "100.96.1.1",
                   "advertised_cidrs": networks,
                   "allowed_targets": [{"host": "localhost", "ports": [port], "protocol": "TCP"}]}],
    }))
    .unwrap();
    let connector: ConnectorConfig = serde_json::from_value(serde_json::json!({
        "hubs": [{"endpoint": format!("127.0.0.1:{wg_port}"),
                  "public_key": hub_key.public_key().to_string()}],
        "private_key_file": site_key_file,
        "tunnel_address": "100.96.1.1",
        "hub_tunnel_address": "100.96.0.1",
        "persistent_keepalive_secs": 1,
        "control_interval_secs": 1,
        "dead_peer_timeout_secs": 3,
        "admin_listen": connector_admin.to_string(),
    }))
    .unwrap();
    let stop = CancellationToken::new();
    let hub = Hub::new(hub).await.unwrap();
    tokio::spawn(hub.run(stop.clone(), Duration::ZERO));
    let connector = Connector::new(connector).await.unwrap();
    tokio::spawn(connector.run(stop.clone()));
    Pair {
        stream,
        connector_admin,
        hub_admin,
        stop,
        _dir: dir,
    }
}

/// Asks for `localhost:port` until the connector has its list (before that it denies
/// everything, with another message); returns the final answer.
async fn open_localhost(pair: &Pair, port: u16) -> Result<client::Opened, ClientError> {
    let req = OpenRequest {
        token: TOKEN.into(),
        site: "dc1".into(),
        protocol: Protocol::Tcp,
        host: Host::parse("localhost").unwrap(),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client::open(pair.stream, &req, Duration::from_secs(5)).await;
        let waiting = match &r {
            Err(ClientError::Refused { status, message }) => {
                *status == Status::SiteUnavailable
                    || (*status == Status::DeniedBySite && message.contains("not received"))
            }
            Err(_) => true,
            Ok(_) => false,
        };
        if !waiting || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_outside_the_sites_networks_is_refused_and_inside_is_reached() {
    let target = echo();
    let port = target.port();

    // `localhost` is 127.0.0.1: outside 10.1.0.0/16.
    let outside = start(port, &["10.1.0.0/16"]).await;
    match open_localhost(&outside, port).await {
        Err(ClientError::Refused { status, message }) => {
            assert_eq!(status, Status::DeniedBySite, "{message}");
            assert!(message.contains("127.0.0.1"), "{message}");
            assert!(message.contains("10.1.0.0/16"), "{message}");
        }
        other => panic!("localhost was not refused: {other:?}"),
    }
    let m = metrics(outside.connector_admin).await;
    assert!(
        m.lines().any(|l| l
            .starts_with("rustronaut_tunnel_connector_names_resolved_outside_total{")
            && l.ends_with(" 1")),
        "{m}"
    );
    drop(outside);

    // A network naming loopback explicitly: the same name is reached.
    let inside = start(port, &["127.0.0.1/32"]).await;
    let opened = open_localhost(&inside, port)
        .await
        .expect("localhost reached");
    let mut s = opened.stream;
    s.write_all(b"ping").await.unwrap();
    let mut got = opened.early;
    let mut buf = [0u8; 16];
    while got.len() < 4 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "closed before the echo");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got[..], b"ping");
}

/// (metric, type, label names) of the families in a /metrics response.
fn families(response: &str) -> std::collections::BTreeSet<(String, String, String)> {
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let types: std::collections::BTreeMap<&str, &str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, rest) = l.split_once('{').expect("every sample has a label");
            let label = rest.split_once("=\"").expect("a label").0;
            let kind = types.get(name).copied().unwrap_or("untyped");
            (name.to_string(), kind.to_string(), label.to_string())
        })
        .collect()
}

/// Rows `| \`prefix...\` | type | \`label\` | ... |` of docs/observability.md.
fn documented(prefix: &str) -> std::collections::BTreeSet<(String, String, String)> {
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
    std::fs::read_to_string(page)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&format!("| `{prefix}")))
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            let label = c[3].trim_matches('`').to_string();
            (c[1].trim_matches('`').to_string(), c[2].to_string(), label)
        })
        .collect()
}

/// The real /metrics of a connected hub and connector hold exactly the families
/// docs/observability.md lists (which the chart's alerts and dashboards are checked
/// against), each with one bounded label: a configured site or hub, a status, a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_connector_metrics_are_the_documented_ones() {
    let target = echo();
    let pair = start(target.port(), &["127.0.0.1/32"]).await;
    open_localhost(&pair, target.port())
        .await
        .expect("localhost reached");
    // The peers' handshake time shows once both ends report the peer connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    for admin in [pair.hub_admin, pair.connector_admin] {
        while !metrics(admin)
            .await
            .lines()
            .any(|l| l.contains("_peer_connected{") && l.ends_with(" 1"))
        {
            assert!(Instant::now() < deadline, "{admin}: peer never connected");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (role, admin) in [("hub", pair.hub_admin), ("connector", pair.connector_admin)] {
        let got = families(&metrics(admin).await);
        assert_eq!(
            got,
            documented(&format!("rustronaut_tunnel_{role}_")),
            "{role}: /metrics against docs/observability.md"
        );
        for (name, _, label) in &got {
            assert!(
                ["site", "hub", "status", "reason", "result"].contains(&label.as_str()),
                "{name}: label {label}"
            );
        }
    }
}
