//! End-to-end tests of the hub and the connector as separate processes in network namespaces:
//! hub --veth-- connector --veth-- target (echo servers). Root and `ip` are required.
#![forbid(unsafe_code)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use common::*;
use rustronaut_tunnel::allow::Protocol;
use rustronaut_tunnel::client::{self, ClientError};
use rustronaut_tunnel::keys::PrivateKey;
use rustronaut_tunnel::proto::Status;

const TARGETS_TCP_AND_UDP: &str = "      - {cidr: 10.77.2.0/24, ports: [9000], protocol: TCP}\n      - {cidr: 10.77.2.2, ports: [9000], protocol: UDP}\n      - {cidr: 10.77.2.2, ports: [9001], protocol: TCP}\n";

fn stream_ep() -> SocketAddr {
    "127.0.0.1:4200".parse().unwrap()
}

/// Hub and connector with one site "dc1"; returns (topology, hub config path, hub key).
fn setup(
    site_targets: &str,
    connector_extra: &str,
) -> (Topology, std::path::PathBuf, PrivateKey, PrivateKey) {
    let mut t = Topology::new();
    t.echo_servers(&t.target.clone());
    let (hub_key, hub_key_file) = t.key("hub.key");
    let (site_key, site_key_file) = t.key("site.key");
    let sites = site_yaml(
        "dc1",
        &site_key.public_key().to_string(),
        "100.96.1.1",
        site_targets,
    );
    let hub_cfg = t.hub_config(
        "hub.yaml",
        &hub_key_file,
        51820,
        "127.0.0.1:4200",
        "127.0.0.1:9090",
        &sites,
    );
    let conn_cfg = connector_config(
        &t,
        &site_key_file,
        &[(format!("{HUB_IP}:51820"), hub_key.public_key().to_string())],
        connector_extra,
    );
    let (hub_ns, conn_ns) = (t.hub.clone(), t.conn.clone());
    t.spawn(
        "hub",
        &hub_ns,
        &["hub", "--config", hub_cfg.to_str().unwrap()],
    );
    t.spawn(
        "connector",
        &conn_ns,
        &["connect", "--config", conn_cfg.to_str().unwrap()],
    );
    (t, hub_cfg, hub_key, site_key)
}

fn wait_tcp_echo(t: &Topology, ep: SocketAddr, what: &str) {
    let ns = t.hub.clone();
    eventually(what, Duration::from_secs(45), || {
        let ns = ns.clone();
        in_ns(&ns, move || async move {
            tcp_echo(ep, "dc1", TARGET_IP, b"ping").await
        })
    });
}

fn refusal(
    t: &Topology,
    site: &'static str,
    protocol: Protocol,
    host: &'static str,
    port: u16,
    token: &'static str,
) -> (Status, String) {
    in_ns(&t.hub, move || async move {
        let mut req = open_req(site, protocol, host, port);
        req.token = token.into();
        match client::open(stream_ep(), &req, Duration::from_secs(20)).await {
            Err(ClientError::Refused { status, message }) => (status, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    })
}

#[test]
fn tcp_and_udp_end_to_end_with_denials_metrics_and_roaming() {
    let local = "local_allowed_targets:\n  - {cidr: 10.77.2.0/24, ports: [9000], protocol: TCP}\n  - {cidr: 10.77.2.0/24, ports: [9000], protocol: UDP}\n";
    let (mut t, _, _, _) = setup(TARGETS_TCP_AND_UDP, local);
    wait_tcp_echo(&t, stream_ep(), "tunnel up");

    // TCP: 4 MiB both ways, and UDP datagrams, through the tunnel to the real echo servers.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d2 = data.clone();
    let started = std::time::Instant::now();
    let back = in_ns(&t.hub, move || async move {
        tcp_echo(stream_ep(), "dc1", TARGET_IP, &d2).await.unwrap()
    });
    eprintln!("4 MiB echoed in {:?}", started.elapsed());
    assert!(
        back == data,
        "TCP payload corrupted ({} of {} bytes back)",
        back.len(),
        data.len()
    );
    let dgs = in_ns(&t.hub, || async {
        udp_echo(
            stream_ep(),
            "dc1",
            TARGET_IP,
            &[b"one", &[7u8; 1400], b"", &[9u8; 8000]],
        )
        .await
        .unwrap()
    });
    assert_eq!(
        dgs,
        vec![b"one".to_vec(), vec![7u8; 1400], vec![], vec![9u8; 8000]]
    );

    // The hub refuses what its list does not allow; the connector refuses what the site's
    // local ceiling does not allow (the hub allows 9001, the site does not).
    let (s, m) = refusal(&t, "dc1", Protocol::Tcp, TARGET_IP, 22, TOKEN);
    assert_eq!(s, Status::DeniedByHub, "{m}");
    assert!(m.contains("not an allowed target"), "{m}");
    let (s, m) = refusal(&t, "dc1", Protocol::Tcp, TARGET_IP, 9001, TOKEN);
    assert_eq!(s, Status::DeniedBySite, "{m}");
    assert!(m.contains("local_allowed_targets"), "{m}");
    let (s, _) = refusal(
        &t,
        "dc1",
        Protocol::Tcp,
        TARGET_IP,
        9000,
        "wrong-token-0123456789",
    );
    assert_eq!(s, Status::Unauthorized);
    let (s, _) = refusal(&t, "nosuch", Protocol::Tcp, TARGET_IP, 9000, TOKEN);
    assert_eq!(s, Status::UnknownSite);

    // Metrics and status for the operator (counters are published within 250 ms).
    let hub_ns = t.hub.clone();
    eventually("hub metrics", Duration::from_secs(5), || {
        let metrics = http_get(&hub_ns, "127.0.0.1:9090", "/metrics").map_err(|e| e.to_string())?;
        let rx: f64 = metrics
            .lines()
            .find(|l| l.starts_with("rustronaut_tunnel_hub_peer_receive_bytes_total{site=\"dc1\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        let ok = metrics.contains("rustronaut_tunnel_hub_peer_connected{site=\"dc1\"} 1")
            // At least 1: requests before the connector has its list are denied too.
            && !metrics.contains("rustronaut_tunnel_hub_stream_requests_total{status=\"denied_by_site\"} 0")
            && metrics.contains("rustronaut_tunnel_hub_stream_requests_total{status=\"unauthorized\"} 1")
            && rx > 4.0 * 1024.0 * 1024.0;
        if ok { Ok(()) } else { Err(metrics) }
    });
    let status = http_get(&t.hub, "127.0.0.1:9090", "/status").unwrap();
    assert!(
        status.contains("\"connected\": true")
            && status.contains(&format!("\"endpoint\": \"{CONN_IP}:")),
        "{status}"
    );
    assert!(
        http_get(&t.hub, "127.0.0.1:9090", "/healthz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let conn_metrics = http_get(&t.conn, "127.0.0.1:9190", "/metrics").unwrap();
    assert!(
        conn_metrics.contains("rustronaut_tunnel_connector_peer_targets_generation"),
        "{conn_metrics}"
    );

    // Roaming: the connector's address changes; the hub follows it.
    let conn_ns = t.conn.clone();
    sh(&[
        "ip",
        "-n",
        &conn_ns,
        "addr",
        "del",
        &format!("{CONN_IP}/24"),
        "dev",
        "c0",
    ]);
    sh(&[
        "ip",
        "-n",
        &conn_ns,
        "addr",
        "add",
        &format!("{CONN_IP2}/24"),
        "dev",
        "c0",
    ]);
    wait_tcp_echo(
        &t,
        stream_ep(),
        "tunnel after the connector's address changed",
    );
    let status = http_get(&t.hub, "127.0.0.1:9090", "/status").unwrap();
    assert!(
        status.contains(&format!("\"endpoint\": \"{CONN_IP2}:")),
        "{status}"
    );
    t.kill("connector");
}

#[test]
fn malformed_and_replayed_wireguard_packets_do_not_harm_the_hub() {
    let mut t = Topology::new();
    t.echo_servers(&t.target.clone());
    let (hub_key, hub_key_file) = t.key("hub.key");
    let (site_key, site_key_file) = t.key("site.key");
    // A second site whose key the test holds: its genuine packets are replayed.
    let rogue = PrivateKey::generate().unwrap();
    let sites = site_yaml(
        "dc1",
        &site_key.public_key().to_string(),
        "100.96.1.1",
        TARGETS_TCP_AND_UDP,
    ) + &site_yaml(
        "dc2",
        &rogue.public_key().to_string(),
        "100.96.1.2",
        "      - {cidr: 10.77.2.2, ports: [9000], protocol: TCP}\n",
    );
    let hub_cfg = t.hub_config(
        "hub.yaml",
        &hub_key_file,
        51820,
        "127.0.0.1:4200",
        "127.0.0.1:9090",
        &sites,
    );
    let conn_cfg = connector_config(
        &t,
        &site_key_file,
        &[(format!("{HUB_IP}:51820"), hub_key.public_key().to_string())],
        "",
    );
    let (hub_ns, conn_ns) = (t.hub.clone(), t.conn.clone());
    t.spawn(
        "hub",
        &hub_ns,
        &["hub", "--config", hub_cfg.to_str().unwrap()],
    );
    t.spawn(
        "connector",
        &conn_ns,
        &["connect", "--config", conn_cfg.to_str().unwrap()],
    );
    wait_tcp_echo(&t, stream_ep(), "tunnel up");

    // From the connector's namespace: a genuine handshake by the second site, then replays of
    // it and of a data packet, bit flips, truncations and garbage.
    let hub_pub = hub_key.public_key();
    in_ns(&t.conn, move || async move {
        let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
        sock.connect((HUB_IP, 51820)).await.unwrap();
        let mut tunn = Tunn::new(rogue.to_x25519(), hub_pub.to_x25519(), None, None, 5, None);
        let mut buf = vec![0u8; 2048];
        let mut rbuf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false)
        else {
            panic!()
        };
        let init = init.to_vec();
        sock.send(&init).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut rbuf))
            .await
            .expect("no handshake response")
            .unwrap();
        let mut out = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(keepalive) = tunn.decapsulate(None, &rbuf[..n], &mut out)
        else {
            panic!("handshake failed")
        };
        sock.send(keepalive).await.unwrap();
        let packet = [
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 100, 96, 1, 2, 100, 96, 0, 1,
        ];
        let TunnResult::WriteToNetwork(data) = tunn.encapsulate(&packet, &mut buf) else {
            panic!()
        };
        let data = data.to_vec();
        sock.send(&data).await.unwrap();
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..3000u32 {
            let mut d = match i % 4 {
                0 => init.clone(),
                1 => data.clone(),
                2 => (0..(next() % 300) as usize).map(|_| next() as u8).collect(),
                _ => {
                    let mut d = if i % 8 == 3 {
                        init.clone()
                    } else {
                        data.clone()
                    };
                    let at = (next() as usize) % d.len();
                    d[at] ^= 0x40;
                    d
                }
            };
            if i % 7 == 0 {
                d.truncate((next() as usize) % (d.len() + 1));
            }
            let _ = sock.send(&d).await;
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    // The site's tunnel still works, the hub is alive, and it counted the rejects.
    let data = vec![0x5au8; 256 * 1024];
    let d2 = data.clone();
    let back = in_ns(&t.hub, move || async move {
        tcp_echo(stream_ep(), "dc1", TARGET_IP, &d2).await.unwrap()
    });
    assert!(back == data);
    let hub_ns = t.hub.clone();
    let metrics = eventually("rejected datagrams counted", Duration::from_secs(5), || {
        let metrics = http_get(&hub_ns, "127.0.0.1:9090", "/metrics").map_err(|e| e.to_string())?;
        let value = |prefix: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        let at_site = value("rustronaut_tunnel_hub_peer_rejected_datagrams_total{site=\"dc2\"}");
        let at_ingress =
            value("rustronaut_tunnel_hub_ingress_dropped_datagrams_total{reason=\"invalid\"}");
        // Replays reach the site's session and fail there; garbage and broken MACs stop at
        // the ingress.
        if at_site > 500.0 && at_ingress > 500.0 {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    });
    assert!(
        metrics.contains("rustronaut_tunnel_hub_peer_connected{site=\"dc1\"} 1"),
        "{metrics}"
    );
}

#[test]
fn hub_restart_connector_reconnects() {
    let (mut t, hub_cfg, _, _) = setup(TARGETS_TCP_AND_UDP, "");
    wait_tcp_echo(&t, stream_ep(), "tunnel up");
    t.kill("hub");
    let down = in_ns(&t.hub, || async {
        client::open(
            stream_ep(),
            &open_req("dc1", Protocol::Tcp, TARGET_IP, 9000),
            Duration::from_secs(2),
        )
        .await
        .is_err()
    });
    assert!(down, "the killed hub still answers");
    std::thread::sleep(Duration::from_secs(2));
    let hub_ns = t.hub.clone();
    t.spawn(
        "hub2",
        &hub_ns,
        &["hub", "--config", hub_cfg.to_str().unwrap()],
    );
    let start = std::time::Instant::now();
    wait_tcp_echo(&t, stream_ep(), "tunnel after the hub restarted");
    eprintln!("reconnected {:?} after the hub restarted", start.elapsed());
    assert!(
        t.log("connector").contains("tunnel down; reconnecting"),
        "{}",
        t.log("connector")
    );
}

/// SIGTERM, as the kubelet stops a hub replica: `/readyz` fails at once while `/healthz`
/// stays ok (the liveness probe must not restart a draining hub), the stream endpoint still
/// opens streams through the tunnel for the drain delay (the stream Service may still send
/// it gateways), then closes, and the process exits 0 (`Hub::run`).
#[test]
fn a_hub_stopped_by_sigterm_drains_before_closing() {
    let (mut t, _, _, _) = setup(TARGETS_TCP_AND_UDP, "");
    wait_tcp_echo(&t, stream_ep(), "tunnel up");
    let hub_ns = t.hub.clone();
    let ready = |ns: &str| {
        http_get(ns, "127.0.0.1:9090", "/readyz")
            .map(|r| r.lines().next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert!(ready(&hub_ns).contains(" 200 "), "{}", ready(&hub_ns));
    t.terminate("hub");
    let signalled = std::time::Instant::now();
    eventually("readiness to fail", Duration::from_secs(3), || {
        let r = ready(&hub_ns);
        if r.contains(" 503 ") { Ok(r) } else { Err(r) }
    });
    let health = http_get(&hub_ns, "127.0.0.1:9090", "/healthz").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Still serving: a new stream through the tunnel, while the drain lasts.
    let back = in_ns(&hub_ns, || async {
        tcp_echo(stream_ep(), "dc1", TARGET_IP, b"while draining").await
    });
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the check ran after the drain delay; nothing was shown"
    );
    assert_eq!(back.unwrap(), b"while draining", "{}", t.dump_logs());
    let status = t
        .wait_exit("hub", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the hub still runs 20 s after SIGTERM\n{}", t.dump_logs()));
    assert!(status.success(), "exit {status:?}\n{}", t.dump_logs());
    let closed = in_ns(&hub_ns, || async {
        tokio::net::TcpStream::connect(stream_ep()).await.is_err()
    });
    assert!(
        closed,
        "the stream endpoint still accepts after the hub exited"
    );
    assert!(t.log("hub").contains("hub draining"), "{}", t.log("hub"));
}

#[test]
fn two_hub_replicas_one_killed_traffic_continues() {
    let mut t = Topology::new();
    t.echo_servers(&t.target.clone());
    let (key_a, file_a) = t.key("hub-a.key");
    let (key_b, file_b) = t.key("hub-b.key");
    let (site_key, site_key_file) = t.key("site.key");
    let sites = site_yaml(
        "dc1",
        &site_key.public_key().to_string(),
        "100.96.1.1",
        TARGETS_TCP_AND_UDP,
    );
    let cfg_a = t.hub_config(
        "hub-a.yaml",
        &file_a,
        51820,
        "127.0.0.1:4200",
        "127.0.0.1:9090",
        &sites,
    );
    let cfg_b = t.hub_config(
        "hub-b.yaml",
        &file_b,
        51821,
        "127.0.0.1:4201",
        "127.0.0.1:9091",
        &sites,
    );
    let conn_cfg = connector_config(
        &t,
        &site_key_file,
        &[
            (format!("{HUB_IP}:51820"), key_a.public_key().to_string()),
            (format!("{HUB_IP}:51821"), key_b.public_key().to_string()),
        ],
        "",
    );
    let (hub_ns, conn_ns) = (t.hub.clone(), t.conn.clone());
    t.spawn(
        "hub-a",
        &hub_ns,
        &["hub", "--config", cfg_a.to_str().unwrap()],
    );
    t.spawn(
        "hub-b",
        &hub_ns,
        &["hub", "--config", cfg_b.to_str().unwrap()],
    );
    t.spawn(
        "connector",
        &conn_ns,
        &["connect", "--config", conn_cfg.to_str().unwrap()],
    );
    let ep_a: SocketAddr = "127.0.0.1:4200".parse().unwrap();
    let ep_b: SocketAddr = "127.0.0.1:4201".parse().unwrap();
    wait_tcp_echo(&t, ep_a, "tunnel via replica A");
    wait_tcp_echo(&t, ep_b, "tunnel via replica B");

    // A long-lived stream through B, opened before A dies, keeps working after.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let hub_ns2 = t.hub.clone();
    let long = std::thread::spawn(move || {
        enter_ns(&hub_ns2);
        rt().block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let o = client::open(
                ep_b,
                &open_req("dc1", Protocol::Tcp, TARGET_IP, 9000),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            let mut s = o.stream;
            opened_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || go_rx.recv().unwrap())
                .await
                .unwrap();
            s.write_all(b"after the kill").await.unwrap();
            let mut buf = [0u8; 14];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            buf
        })
    });
    opened_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    t.kill("hub-a");
    for i in 0..10 {
        let payload = format!("round {i}").into_bytes();
        let p2 = payload.clone();
        let back = in_ns(&t.hub, move || async move {
            tcp_echo(ep_b, "dc1", TARGET_IP, &p2).await
        });
        assert_eq!(back.unwrap(), payload);
        std::thread::sleep(Duration::from_millis(300));
    }
    go_tx.send(()).unwrap();
    assert_eq!(&long.join().unwrap(), b"after the kill");
    let status = http_get(&t.conn, "127.0.0.1:9190", "/status").unwrap();
    assert!(status.contains("\"connected\": true"), "{status}");
}

#[test]
fn config_reload_changes_targets_and_adds_a_site_without_dropping_tunnels() {
    let only_tcp = "      - {cidr: 10.77.2.2, ports: [9000], protocol: TCP}\n";
    let (t, hub_cfg, _, site_key) = setup(only_tcp, "");
    wait_tcp_echo(&t, stream_ep(), "tunnel up");
    let (s, _) = refusal(&t, "dc1", Protocol::Udp, TARGET_IP, 9000, TOKEN);
    assert_eq!(s, Status::DeniedByHub);

    // A stream open across the reload.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let hub_ns = t.hub.clone();
    let long = std::thread::spawn(move || {
        enter_ns(&hub_ns);
        rt().block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let o = client::open(
                stream_ep(),
                &open_req("dc1", Protocol::Tcp, TARGET_IP, 9000),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            let mut s = o.stream;
            opened_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || go_rx.recv().unwrap())
                .await
                .unwrap();
            s.write_all(b"survived").await.unwrap();
            let mut buf = [0u8; 8];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            buf
        })
    });
    opened_rx.recv_timeout(Duration::from_secs(20)).unwrap();

    let other = PrivateKey::generate().unwrap();
    let text = std::fs::read_to_string(&hub_cfg).unwrap();
    let text = text.replace(only_tcp, TARGETS_TCP_AND_UDP)
        + &site_yaml(
            "dc9",
            &other.public_key().to_string(),
            "100.96.1.9",
            only_tcp,
        );
    write_atomically(&hub_cfg, &text);
    eventually("UDP allowed after reload", Duration::from_secs(20), || {
        in_ns(&t.hub, || async {
            udp_echo(stream_ep(), "dc1", TARGET_IP, &[b"now allowed"]).await
        })
    });
    let status = http_get(&t.hub, "127.0.0.1:9090", "/status").unwrap();
    assert!(status.contains("\"name\": \"dc9\""), "{status}");
    go_tx.send(()).unwrap();
    assert_eq!(&long.join().unwrap(), b"survived");

    // A broken file is rejected and the last good configuration keeps serving.
    write_atomically(&hub_cfg, "sites: [this is not valid");
    std::thread::sleep(Duration::from_secs(3));
    wait_tcp_echo(&t, stream_ep(), "tunnel after a rejected reload");
    let metrics = http_get(&t.hub, "127.0.0.1:9090", "/metrics").unwrap();
    assert!(
        metrics.contains("rustronaut_tunnel_hub_config_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    let _ = site_key;
}

#[test]
fn key_file_readable_by_others_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap();
    assert_eq!(public.trim().len(), 44);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = std::process::Command::new(BIN)
        .args(["pubkey", "--key-file", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), public);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, format!("hubs: [{{endpoint: \"127.0.0.1:1\", public_key: \"{}\"}}]\nprivate_key_file: {}\ntunnel_address: 100.96.1.1\nhub_tunnel_address: 100.96.0.1\n", public.trim(), key.display())).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["connect", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to use private key file") && err.contains("chmod 600"),
        "{err}"
    );
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(
        !err.contains(secret.trim()),
        "the key leaked into the error output"
    );
}
