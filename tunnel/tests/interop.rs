//! Interoperability with wireguard-go, an independent WireGuard implementation, running with a
//! real TUN device in its own namespace (built by e2e/scripts/tools.sh). Root and `ip` are
//! required.
#![forbid(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use rustronaut_tunnel::allow::{Host, PortRange, Protocol, Target};
use rustronaut_tunnel::control::{self, TargetSet};
use rustronaut_tunnel::keys::PrivateKey;
use rustronaut_tunnel::proto::{self, ForwardRequest, Response, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Locates wireguard-go through the repository's tool script (building it if needed).
fn wireguard_go() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/scripts/tools.sh");
    let out = std::process::Command::new("bash")
        .args([script, "build"])
        .output()
        .expect("run tools.sh");
    assert!(
        out.status.success(),
        "tools.sh build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let bin = PathBuf::from(dir).join("wireguard-go");
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// Starts wireguard-go with interface `iface` in `ns` and configures it over its UAPI socket.
fn start_wireguard_go(t: &mut Topology, ns: &str, iface: &str, uapi: &str, address: &str) {
    let bin = wireguard_go();
    let ns = ns.to_owned();
    t.spawn_cmd(
        "wireguard-go",
        &ns,
        bin.to_str().unwrap(),
        &["-f", iface],
        &[("LOG_LEVEL", "debug")],
    );
    let sock = format!("/var/run/wireguard/{iface}.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!(
                "wireguard-go UAPI socket {sock}: {e}\n{}",
                t.log("wireguard-go")
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut w = stream.try_clone().unwrap();
    write!(w, "set=1\n{uapi}\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "errno=0", "UAPI set failed: {line}");
    sh(&["ip", "-n", &ns, "addr", "add", address, "dev", iface]);
    sh(&["ip", "-n", &ns, "link", "set", iface, "up"]);
}

fn iface_name() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "wg{}n{}",
        std::process::id() % 100_000,
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Our hub, wireguard-go as the site: the hub's stream reaches a server listening on
/// wireguard-go's tunnel address in its namespace (a minimal forwarder speaking our header,
/// bound to the kernel's TCP stack behind the TUN device).
#[test]
fn hub_carries_traffic_to_a_wireguard_go_peer() {
    let mut t = Topology::new();
    let (hub_key, hub_key_file) = t.key("hub.key");
    let site_key = PrivateKey::generate().unwrap();
    let targets = "      - {cidr: 10.9.9.9, ports: [7], protocol: TCP}\n";
    let sites = site_yaml(
        "wg",
        &site_key.public_key().to_string(),
        "100.96.1.1",
        targets,
    );
    let hub_cfg = t.hub_config(
        "hub.yaml",
        &hub_key_file,
        51820,
        "127.0.0.1:4200",
        "127.0.0.1:9090",
        &sites,
    );
    let hub_ns = t.hub.clone();
    t.spawn(
        "hub",
        &hub_ns,
        &["hub", "--config", hub_cfg.to_str().unwrap()],
    );

    let iface = iface_name();
    let uapi = format!(
        "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\nendpoint={HUB_IP}:51820\npersistent_keepalive_interval=1\nallowed_ip=100.96.0.1/32\n",
        site_key.expose_hex(),
        hub_key.public_key().to_hex()
    );
    let conn_ns = t.conn.clone();
    start_wireguard_go(&mut t, &conn_ns, &iface, &uapi, "100.96.1.1/16");

    // The "forwarder" on wireguard-go's side: checks the header, answers OK, echoes.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = conn_ns.clone();
    std::thread::spawn(move || {
        enter_ns(&ns);
        rt().block_on(async move {
            let l = tokio::net::TcpListener::bind("100.96.1.1:4101")
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (req, rest) = proto::io::read_message(
                        &mut s,
                        proto::MAX_FORWARD_REQUEST,
                        ForwardRequest::decode,
                    )
                    .await
                    .unwrap();
                    assert_eq!(req.host, Host::parse("10.9.9.9").unwrap());
                    s.write_all(&Response::new(Status::Ok, "").encode())
                        .await
                        .unwrap();
                    s.write_all(&rest).await.unwrap();
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let ep: SocketAddr = "127.0.0.1:4200".parse().unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let d2 = data.clone();
    let back = eventually(
        "stream through wireguard-go",
        Duration::from_secs(30),
        || {
            let d2 = d2.clone();
            in_ns(&hub_ns, move || async move {
                let o = rustronaut_tunnel::client::open(
                    ep,
                    &open_req("wg", Protocol::Tcp, "10.9.9.9", 7),
                    Duration::from_secs(10),
                )
                .await?;
                let mut s = o.stream;
                let (mut r, mut w) = s.split();
                let write = async {
                    w.write_all(&d2).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut out = o.early;
                let read = r.read_to_end(&mut out);
                let (_, n) = tokio::join!(write, read);
                n.unwrap();
                Ok::<_, rustronaut_tunnel::client::ClientError>(out)
            })
        },
    );
    assert!(back == data, "payload corrupted through wireguard-go");
    eventually(
        "hub reports the wireguard-go site connected",
        Duration::from_secs(5),
        || {
            let status =
                http_get(&hub_ns, "127.0.0.1:9090", "/status").map_err(|e| e.to_string())?;
            if status.contains("\"connected\": true") {
                Ok(())
            } else {
                Err(status)
            }
        },
    );
}

/// Our connector, wireguard-go as the hub: from wireguard-go's namespace, the kernel's TCP
/// reaches the connector's forwarder through the TUN device and on to a real echo server; the
/// allow list comes from a control server on wireguard-go's tunnel address.
#[test]
fn connector_carries_traffic_from_a_wireguard_go_hub() {
    let mut t = Topology::new();
    t.echo_servers(&t.target.clone());
    let wg_key = PrivateKey::generate().unwrap();
    let (site_key, site_key_file) = t.key("site.key");
    let iface = iface_name();
    let uapi = format!(
        "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\nallowed_ip=100.96.1.1/32\n",
        wg_key.expose_hex(),
        site_key.public_key().to_hex()
    );
    let hub_ns = t.hub.clone();
    start_wireguard_go(&mut t, &hub_ns, &iface, &uapi, "100.96.0.1/16");

    // The control server the connector pulls its allow list from.
    let ns = hub_ns.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_ns(&ns);
        rt().block_on(async move {
            let l = tokio::net::TcpListener::bind("100.96.0.1:4100")
                .await
                .unwrap();
            let (_tx, rx) = tokio::sync::watch::channel(TargetSet {
                generation: 1,
                targets: vec![Target {
                    cidr: Some(format!("{TARGET_IP}/32")),
                    host: None,
                    ports: vec![PortRange::single(ECHO_PORT)],
                    protocol: Protocol::Tcp,
                }],
                advertised_cidrs: vec![],
            });
            ready_tx.send(()).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(control::serve(s, rx.clone()));
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let conn_cfg = connector_config(
        &t,
        &site_key_file,
        &[(format!("{HUB_IP}:51820"), wg_key.public_key().to_string())],
        "",
    );
    let conn_ns = t.conn.clone();
    t.spawn(
        "connector",
        &conn_ns,
        &["connect", "--config", conn_cfg.to_str().unwrap()],
    );

    let forward = |host: &'static str| {
        let ns = hub_ns.clone();
        in_ns(&ns, move || async move {
            let mut s = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect("100.96.1.1:4101"),
            )
            .await
            .map_err(|_| "connect timeout".to_owned())?
            .map_err(|e| e.to_string())?;
            let req = ForwardRequest {
                protocol: Protocol::Tcp,
                host: Host::parse(host).unwrap(),
                port: ECHO_PORT,
            };
            s.write_all(&req.encode().unwrap())
                .await
                .map_err(|e| e.to_string())?;
            let (resp, mut early) =
                proto::io::read_message(&mut s, proto::MAX_RESPONSE, Response::decode)
                    .await
                    .map_err(|e| e.to_string())?;
            if resp.status != Status::Ok {
                return Ok((resp, Vec::new()));
            }
            let payload = vec![0x42u8; 300_000];
            s.write_all(&payload).await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            s.read_to_end(&mut early).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((resp, early))
        })
    };
    // Allowed target: echoed through wireguard-go -> connector -> echo server.
    let (resp, back) = eventually(
        "forward through the connector",
        Duration::from_secs(30),
        || match forward(TARGET_IP) {
            Ok((r, b)) if r.status == Status::Ok => Ok((r, b)),
            Ok((r, _)) => Err(format!("{r:?}")),
            Err(e) => Err(e),
        },
    );
    assert_eq!(resp.status, Status::Ok);
    assert_eq!(back, vec![0x42u8; 300_000]);
    // A target outside the list pulled over the tunnel is refused by the connector.
    let (resp, _) = forward("10.77.2.1").unwrap();
    assert_eq!(resp.status, Status::DeniedBySite, "{resp:?}");
}
