//! The tunnel's traces (issue 18, item 2): the hub and connector binaries export a span per
//! gateway stream and per forwarded stream over OTLP/HTTP, **over mutual TLS** to a collector
//! behind a private CA (`--otlp-ca-file`, `--otlp-client-certificate`, `--otlp-client-key`, the
//! exporter shared with the operator and the gateway). Real processes, the WireGuard tunnel
//! over loopback UDP, so no namespace and no root are needed. The collector requires a client
//! certificate from its CA, so spans arriving prove both directions of the TLS set-up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustronaut_e2e::otlp::{Receiver, contains_bytes};
use rustronaut_tunnel::allow::{Host, Protocol};
use rustronaut_tunnel::client::{self, ClientError};
use rustronaut_tunnel::keys::{PrivateKey, write_private_key};
use rustronaut_tunnel::proto::{OpenRequest, Status};

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

/// The binaries, stopped with SIGTERM (so they flush their last batch) and reaped on drop.
struct Procs(Vec<Child>);

impl Procs {
    fn stop(&mut self) {
        for c in &mut self.0 {
            // SAFETY-free: a plain kill(2) through the libc wrapper of nix is not a dependency
            // here; `kill -TERM` is.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all from that CA.
fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(vec!["127.0.0.1".into()]),
        client: leaf(vec!["rustronaut-tunnel".into()]),
    }
}

fn tunnel(dir: &Path, args: &[&str], otlp: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rustronaut-tunnel"))
        .args(args)
        .args(otlp)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{}.log", args[0]))).unwrap())
        .spawn()
        .unwrap()
}

/// Opens a stream to `host:port` at site dc1 until the tunnel is up (before that: site
/// unavailable, or the connector has no allow list yet); returns the final answer.
async fn open(stream: SocketAddr, host: &str, port: u16) -> Result<client::Opened, ClientError> {
    let req = OpenRequest {
        token: TOKEN.into(),
        site: "dc1".into(),
        protocol: Protocol::Tcp,
        host: Host::parse(host).unwrap(),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client::open(stream, &req, Duration::from_secs(5)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_connector_export_stream_spans_over_mutual_tls() {
    let pki = pki();
    let collector = Receiver::start_tls(&pki.server.0, &pki.server.1, Some(&pki.ca));
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca),
        file("client.pem", &pki.client.0),
        file("client.key", &pki.client.1),
    );
    let otlp = |endpoint: SocketAddr, ca: &str| {
        vec![
            "--otlp-endpoint".to_string(),
            format!("https://{endpoint}"),
            "--otlp-ca-file".into(),
            ca.into(),
            "--otlp-client-certificate".into(),
            cert.clone(),
            "--otlp-client-key".into(),
            key.clone(),
        ]
    };

    let target = echo();
    let hub_key = PrivateKey::generate().unwrap();
    let site_key = PrivateKey::generate().unwrap();
    let (hub_key_file, site_key_file) = (dir.path().join("hub.key"), dir.path().join("site.key"));
    write_private_key(&hub_key_file, &hub_key).unwrap();
    write_private_key(&site_key_file, &site_key).unwrap();
    let token_file = file("token", &format!("{TOKEN}\n"));
    let wg_port = free_port();
    let stream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hub = serde_json::json!({
        "listen_port": wg_port,
        "private_key_file": hub_key_file,
        "tunnel_address": "100.96.0.1",
        "stream_listen": stream.to_string(),
        "token_file": token_file,
        "admin_listen": format!("127.0.0.1:{}", free_port()),
        "sites": [{"name": "dc1", "public_key": site_key.public_key().to_string(),
                   "tunnel_address": "100.96.1.1",
                   "advertised_cidrs": ["127.0.0.1/32"],
                   "allowed_targets": [{"host": "127.0.0.1", "ports": [target.port()],
                                        "protocol": "TCP"}]}],
    });
    let connector = serde_json::json!({
        "hubs": [{"endpoint": format!("127.0.0.1:{wg_port}"),
                  "public_key": hub_key.public_key().to_string()}],
        "private_key_file": site_key_file,
        "tunnel_address": "100.96.1.1",
        "hub_tunnel_address": "100.96.0.1",
        "persistent_keepalive_secs": 1,
        "control_interval_secs": 1,
        "dead_peer_timeout_secs": 3,
    });
    let hub_cfg = file("hub.json", &hub.to_string());
    let connector_cfg = file("connector.json", &connector.to_string());
    let mut procs = Procs(vec![
        tunnel(
            dir.path(),
            &["hub", "--config", &hub_cfg],
            &otlp(collector.addr, &ca),
        ),
        tunnel(
            dir.path(),
            &["connect", "--config", &connector_cfg],
            &otlp(collector.addr, &ca),
        ),
    ]);

    // One stream that reaches the echo server, one the hub's allow list refuses.
    let mut opened = open(stream, "127.0.0.1", target.port())
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default();
            panic!("no stream through the tunnel: {e}\nhub log:\n{log}")
        });
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        opened.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        opened.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    drop(opened);
    let denied = open(stream, "127.0.0.1", 9).await;
    assert!(
        matches!(
            &denied,
            Err(ClientError::Refused {
                status: Status::DeniedByHub,
                ..
            })
        ),
        "{denied:?}"
    );
    // SIGTERM: both flush their last batch before exiting.
    procs.stop();

    let got = collector.received();
    let hub_log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default();
    for needle in [
        "rustronaut-tunnel".to_string(),
        "stream".into(),
        "dc1".into(),
        format!("TCP/127.0.0.1:{}", target.port()),
        "TCP/127.0.0.1:9".into(),
        "ok".into(),
        "denied_by_hub".into(),
    ] {
        assert!(
            contains_bytes(&got, needle.as_bytes()),
            "{needle:?} not in the hub's spans ({} bytes received)\nhub log:\n{hub_log}",
            got.len()
        );
    }
    // The connector's span of the forwarded stream.
    assert!(
        contains_bytes(&got, b"forward"),
        "no forward span from the connector"
    );
}
