//! L4 listeners over real loopback sockets: TCP (plain and TLS-terminated with client
//! certificates), TLS passthrough by SNI, UDP flows, PROXY protocol v1/v2, and reloads.
//! Every denial is checked at the upstream too: it counts the connections or datagrams it
//! received, so "closed" also means "nothing got through".

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "acme-apps";

/// A TCP echo server (optionally TLS) counting the connections it accepted.
struct Echo {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Echo {
    fn start(tls: Option<(String, String)>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.map(|(chain, key)| {
            let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let c = conns.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                echo(s).await;
                            }
                        }
                        None => echo(tcp).await,
                    }
                });
            }
        });
        Self {
            addr,
            conns,
            _rt: rt,
        }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A UDP echo server counting datagrams and recording their sources.
struct UdpEcho {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
}

impl UdpEcho {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let sources: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let s = sources.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                s.lock().unwrap().push(from);
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        Self { addr, sources }
    }

    fn count(&self) -> usize {
        self.sources.lock().unwrap().len()
    }
}

/// A snapshot with the given listeners, resources and policies for tenant acme.
fn snapshot(listeners: Value, resources: Value, policies: Value, idps: Value) -> Value {
    json!({
        "schemaVersion": 1,
        "gateway": {"namespace": "rtn-system", "name": "edge"},
        "listeners": listeners,
        "tenants": [{"name": "acme", "domains": ["*.acme.test"], "identityProviders": idps}],
        "resources": resources,
        "policies": policies,
    })
}

fn service(addr: SocketAddr) -> Value {
    json!([{"kind": {"service": {"name": "echo", "port": addr.port(), "addresses": [addr.to_string()]}}}])
}

/// A TCP or UDP Resource named `name` on listener `listener` (port `port`).
fn port_resource(name: &str, protocol: &str, listener: &str, port: u16, up: SocketAddr) -> Value {
    json!({"namespace": NS, "name": name, "tenant": "acme", "protocol": protocol,
           "listeners": [listener], "ports": [port], "upstreams": service(up)})
}

fn allow(name: &str, resource: &str, from: Value) -> Value {
    json!({"namespace": NS, "name": name, "tenant": "acme", "action": "Allow",
           "targets": [{"resource": {"namespace": NS, "name": resource}}],
           "rules": [{"name": "r", "from": from}]})
}

fn cidrs(list: &[&str]) -> Value {
    json!([{"sourceCIDRs": {"cidrs": list}}])
}

/// Connects, sends `prefix` then `msg`, and reads until `msg.len()` bytes or the end.
/// `Err`: the connection was reset.
fn tcp_roundtrip(port: u16, prefix: &[u8], msg: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = prefix.to_vec();
    out.extend_from_slice(msg);
    // A write may race the gateway's close; the read tells what happened.
    let _ = s.write_all(&out);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < msg.len() {
        match s.read(&mut buf)? {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    Ok(got)
}

/// Whether the gateway closed (or reset) the connection without echoing anything.
fn closed_without_echo(port: u16, prefix: &[u8]) -> bool {
    match tcp_roundtrip(port, prefix, b"hello") {
        Ok(got) => got.is_empty(),
        Err(_) => true,
    }
}

fn metric_value(m: &str, prefix: &str) -> u64 {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn l4_metric(protocol: &str, resource: &str, result: &str) -> String {
    format!(
        "rustronaut_gateway_l4_connections_total{{protocol=\"{protocol}\",resource=\"{resource}\",result=\"{result}\"}}"
    )
}

#[test]
fn tcp_allowed_by_client_cidr_echoes_and_denied_reaches_nothing() {
    let open_up = Echo::start(None);
    let closed_up = Echo::start(None);
    let (p1, p2) = (free_port(), free_port());
    let snap = snapshot(
        json!([{"name": "tcp-open", "port": p1, "protocol": "TCP"},
               {"name": "tcp-closed", "port": p2, "protocol": "TCP"}]),
        json!([
            port_resource("open", "TCP", "tcp-open", p1, open_up.addr),
            port_resource("closed", "TCP", "tcp-closed", p2, closed_up.addr)
        ]),
        json!([
            allow("loopback", "open", cidrs(&["127.0.0.0/8"])),
            allow("office", "closed", cidrs(&["198.51.100.0/24"]))
        ]),
        json!([]),
    );
    // Two workers: the port's connections are spread over them (server::WORK_STEALING).
    let gw = Gateway::start_with(&snap, &["--threads", "2"]);
    let base = open_up.conns();
    assert_eq!(tcp_roundtrip(p1, b"", b"hello").unwrap(), b"hello");
    assert_eq!(open_up.conns(), base + 1);

    assert!(closed_without_echo(p2, b""));
    assert!(closed_without_echo(p2, b""));
    assert_eq!(
        closed_up.conns(),
        0,
        "a denied connection reached the upstream"
    );
    gw.wait_metrics("denied connections counted", |m| {
        metric_value(m, &l4_metric("TCP", "acme-apps/closed", "denied")) == 2
            && metric_value(m, &l4_metric("TCP", "acme-apps/open", "allowed")) == base as u64 + 1
    });
    let log = gw.log();
    let denied = log
        .lines()
        .find(|l| l.contains("\"resource\":\"acme-apps/closed\""))
        .unwrap_or_else(|| panic!("no decision line for the denied resource:\n{log}"));
    assert!(denied.contains("\"decision\":\"Deny\""), "{denied}");
    assert!(denied.contains("\"reason\":\"NoAllowMatched\""), "{denied}");
    assert!(denied.contains("\"decision_id\":\""), "{denied}");
    assert!(!denied.contains("\"decision_id\":\"\""), "{denied}");
}

/// A TLS client over tokio-rustls: the echoed bytes and the certificate the server showed.
fn tls_roundtrip(
    port: u16,
    sni: &str,
    roots_pem: &str,
    client: Option<&(String, String)>,
    msg: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(chain.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let work = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            tls.write_all(msg).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; msg.len()];
            tls.read_exact(&mut got)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok((got, cert))
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

#[test]
fn tls_terminated_tcp_takes_the_client_certificate_as_identity() {
    let up = Echo::start(None);
    let server_pki = Pki::new("gateway ca");
    let client_pki = Pki::new("acme clients ca");
    let (chain, key) = server_pki.server(&["db.acme.test"]);
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "tcp-tls", "port": port, "protocol": "TCP",
                "tls": {"certificates": [{"name": "db", "hostnames": ["db.acme.test"],
                        "certificateChainPem": chain, "privateKeyPem": key}]},
                "clientCertificate": {"mode": "Optional", "caPem": client_pki.ca_pem}}]),
        json!([port_resource("db", "TCP", "tcp-tls", port, up.addr)]),
        json!([allow(
            "ci-only",
            "db",
            json!([{"clientCertificate": {"sanURIs": ["spiffe://acme/ci"]}}])
        )]),
        json!([{"name": "corp-ca", "kind": {"clientCertificate": {"caPem": client_pki.ca_pem}}}]),
    );
    let gw = Gateway::start(&snap);
    let base = up.conns();
    let ci = client_pki.client("spiffe://acme/ci");
    let other = client_pki.client("spiffe://acme/intruder");

    let (got, _) = tls_roundtrip(port, "db.acme.test", &server_pki.ca_pem, Some(&ci), b"ping")
        .expect("the ci certificate is allowed");
    assert_eq!(got, b"ping");
    assert_eq!(up.conns(), base + 1);

    let e = tls_roundtrip(
        port,
        "db.acme.test",
        &server_pki.ca_pem,
        Some(&other),
        b"ping",
    )
    .expect_err("another certificate of the same CA is denied");
    assert!(
        e.starts_with("read"),
        "handshake completes, then closed: {e}"
    );
    let e = tls_roundtrip(port, "db.acme.test", &server_pki.ca_pem, None, b"ping")
        .expect_err("no certificate: anonymous, denied");
    assert!(e.starts_with("read"), "{e}");
    assert_eq!(
        up.conns(),
        base + 1,
        "a denied connection reached the upstream"
    );

    let log = gw.log();
    assert!(
        log.contains("\"identity\":\"cert:corp-ca/spiffe://acme/ci\""),
        "{log}"
    );
    assert!(
        log.contains("\"identity\":\"cert:corp-ca/spiffe://acme/intruder\""),
        "{log}"
    );
}

#[test]
fn tls_passthrough_routes_by_sni_without_terminating() {
    let upstream_pki = Pki::new("upstream ca");
    let upstream_cert = upstream_pki.server(&["db.acme.test"]);
    let upstream_leaf = CertificateDer::pem_slice_iter(upstream_cert.0.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let up = Echo::start(Some(upstream_cert));
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "pass", "port": port, "protocol": "TLSPassthrough"}]),
        json!([{"namespace": NS, "name": "db", "tenant": "acme", "protocol": "TLSPassthrough",
                "listeners": ["pass"], "hostnames": ["db.acme.test"], "upstreams": service(up.addr)}]),
        json!([allow("anyone", "db", json!(["anonymous"]))]),
        json!([]),
    );
    let gw = Gateway::start(&snap);
    // The client trusts only the upstream's CA: the handshake proves it reached the upstream.
    let base = up.conns();
    let (got, cert) = tls_roundtrip(port, "db.acme.test", &upstream_pki.ca_pem, None, b"pong")
        .expect("routed by SNI to the upstream");
    assert_eq!(got, b"pong");
    assert_eq!(
        cert, upstream_leaf,
        "the client saw the upstream's own certificate"
    );
    assert_eq!(up.conns(), base + 1);

    let e = tls_roundtrip(port, "other.acme.test", &upstream_pki.ca_pem, None, b"pong")
        .expect_err("unknown SNI is closed");
    assert!(e.starts_with("handshake"), "{e}");
    // No SNI at all (an IP address as the server name sends none).
    let e = tls_roundtrip(port, "127.0.0.1", &upstream_pki.ca_pem, None, b"pong")
        .expect_err("no SNI is closed");
    assert!(e.starts_with("handshake"), "{e}");
    // Not TLS at all.
    assert!(closed_without_echo(port, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(
        up.conns(),
        base + 1,
        "a refused connection reached the upstream"
    );
    gw.wait_metrics("refusals counted", |m| {
        metric_value(m, &l4_metric("TLSPassthrough", "-", "refused")) == 3
            && metric_value(m, &l4_metric("TLSPassthrough", "acme-apps/db", "allowed")) == 1
    });
    let log = gw.log();
    assert!(log.contains("\"reason\":\"MissingSNI\""), "{log}");
    assert!(log.contains("no resource for SNI other.acme.test"), "{log}");
}

/// Sends `msg` from a fresh socket and waits up to `wait` for an answer.
fn udp_roundtrip(sock: &UdpSocket, port: u16, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(msg, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn udp_flows_are_decided_once_and_idle_out() {
    let open_up = UdpEcho::start();
    let closed_up = UdpEcho::start();
    let (p1, p2) = (free_port(), free_port());
    let snap = snapshot(
        json!([{"name": "dns", "port": p1, "protocol": "UDP"},
               {"name": "syslog", "port": p2, "protocol": "UDP"}]),
        json!([
            port_resource("dns", "UDP", "dns", p1, open_up.addr),
            port_resource("syslog", "UDP", "syslog", p2, closed_up.addr)
        ]),
        json!([
            allow("loopback", "dns", cidrs(&["127.0.0.0/8"])),
            allow("office", "syslog", cidrs(&["198.51.100.0/24"]))
        ]),
        json!([]),
    );
    // Two workers: each flow's relay runs on either (server::WORK_STEALING).
    let gw = Gateway::start_with(&snap, &["--udp-idle-timeout-ms", "400", "--threads", "2"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let wait = Duration::from_secs(5);
    // The first datagram may arrive before the service reads its socket: it is queued.
    let r = udp_roundtrip(&client, p1, b"q1", wait);
    assert_eq!(r.as_deref(), Some(&b"q1"[..]), "{}", gw.log());
    assert_eq!(
        udp_roundtrip(&client, p1, b"q2", wait).as_deref(),
        Some(&b"q2"[..])
    );
    let first = open_up.sources.lock().unwrap().clone();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], first[1], "one flow, one upstream socket");

    let denied = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        assert_eq!(
            udp_roundtrip(&denied, p2, b"log", Duration::from_millis(300)),
            None
        );
    }
    assert_eq!(
        closed_up.count(),
        0,
        "a denied datagram reached the upstream"
    );
    gw.wait_metrics("one denied flow, one allowed", |m| {
        metric_value(m, &l4_metric("UDP", "acme-apps/syslog", "denied")) == 1
            && metric_value(m, &l4_metric("UDP", "acme-apps/dns", "allowed")) == 1
    });

    // Idle past the timeout: the flow is forgotten, the next datagram starts a new one.
    gw.wait_metrics("flows idled out", |m| {
        metric_value(m, "rustronaut_gateway_l4_udp_flows ") == 0
    });
    assert_eq!(
        udp_roundtrip(&client, p1, b"q3", wait).as_deref(),
        Some(&b"q3"[..])
    );
    let all = open_up.sources.lock().unwrap().clone();
    assert_eq!(all.len(), 3);
    assert_ne!(all[2], all[0], "a new flow uses a new upstream socket");
    gw.wait_metrics("a second decision", |m| {
        metric_value(m, &l4_metric("UDP", "acme-apps/dns", "allowed")) == 2
    });
}

fn proxy_v2(src: [u8; 4], src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_sets_the_client_ip_policies_see() {
    let up = Echo::start(None);
    let port = free_port();
    let mut snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([port_resource("app", "TCP", "tcp", port, up.addr)]),
        json!([allow("partner", "app", cidrs(&["203.0.113.0/24"]))]),
        json!([]),
    );
    snap["clientIPDetection"] =
        json!({"proxyProtocol": true, "trustedPeerCIDRs": ["127.0.0.1/32"]});
    let gw = Gateway::start(&snap);
    let base = up.conns();

    let v1_ok = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {port}\r\n");
    assert_eq!(tcp_roundtrip(port, v1_ok.as_bytes(), b"v1").unwrap(), b"v1");
    let v1_no = format!("PROXY TCP4 198.51.100.9 127.0.0.1 40000 {port}\r\n");
    assert!(closed_without_echo(port, v1_no.as_bytes()));
    assert_eq!(
        tcp_roundtrip(port, &proxy_v2([203, 0, 113, 10], 40001, port), b"v2").unwrap(),
        b"v2"
    );
    assert!(closed_without_echo(
        port,
        &proxy_v2([198, 51, 100, 10], 40001, port)
    ));
    // Without a header (the loopback peer would not be allowed anyway, but the connection
    // is refused before any decision), and with a malformed one.
    assert!(closed_without_echo(port, b""));
    assert!(closed_without_echo(port, b"PROXY TCP4 nonsense\r\n"));
    assert_eq!(
        up.conns(),
        base + 2,
        "only the allowed connections reach the upstream"
    );

    let log = gw.log();
    for ip in [
        "203.0.113.9",
        "203.0.113.10",
        "198.51.100.9",
        "198.51.100.10",
    ] {
        assert!(
            log.contains(&format!("\"client_ip\":\"{ip}\"")),
            "{ip}:\n{log}"
        );
    }
    assert!(log.contains("\"reason\":\"InvalidProxyProtocol\""), "{log}");
}

#[test]
fn reloads_apply_to_new_connections_and_a_broken_snapshot_is_refused() {
    let up = Echo::start(None);
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([port_resource("app", "TCP", "tcp", port, up.addr)]),
        json!([allow("loopback", "app", cidrs(&["127.0.0.0/8"]))]),
        json!([]),
    );
    let gw = Gateway::start(&snap);
    // A connection opened before the reload keeps working after it.
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.write_all(b"a").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();

    gw.write_snapshot_bytes(b"{ not json");
    gw.wait_metrics("the parse failure", |m| {
        m.contains("rustronaut_gateway_snapshot_refused_total{reason=\"parse\"} 1")
    });
    assert_eq!(tcp_roundtrip(port, b"", b"still").unwrap(), b"still");

    // Now only 198.51.100.0/24 may connect: new connections are denied.
    let mut next = snap.clone();
    next["policies"] = json!([allow("office", "app", cidrs(&["198.51.100.0/24"]))]);
    gw.write_snapshot_bytes(&serde_json::to_vec(&next).unwrap());
    gw.wait_metrics("the reload", |m| {
        m.contains("rustronaut_gateway_snapshot_reloads_total{result=\"applied\"} 2")
    });
    let before = up.conns();
    assert!(closed_without_echo(port, b""));
    assert_eq!(up.conns(), before);
    // The connection decided before the reload is not cut.
    held.write_all(b"b").unwrap();
    held.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"b");
}

#[test]
fn l4_upstreams_skip_addresses_marked_down_and_retry_failed_connects() {
    let up = Echo::start(None);
    // Nothing listens on these: one is found down by active checks, the other by a connect.
    let checked_dead = format!("127.0.0.1:{}", free_port());
    let passive_dead = format!("127.0.0.1:{}", free_port());
    let (p1, p2) = (free_port(), free_port());
    let ups = |dead: &str| {
        json!([{"kind": {"service": {"name": "echo", "port": 9,
                 "addresses": [dead, up.addr.to_string()]}}}])
    };
    let snap = snapshot(
        json!([{"name": "checked", "port": p1, "protocol": "TCP"},
               {"name": "passive", "port": p2, "protocol": "TCP"}]),
        json!([{"namespace": NS, "name": "checked", "tenant": "acme", "protocol": "TCP",
                "listeners": ["checked"], "ports": [p1], "upstreams": ups(&checked_dead),
                "healthCheck": {"intervalMs": 100, "timeoutMs": 200,
                                "unhealthyThreshold": 1, "healthyThreshold": 1}},
               {"namespace": NS, "name": "passive", "tenant": "acme", "protocol": "TCP",
                "listeners": ["passive"], "ports": [p2], "upstreams": ups(&passive_dead)}]),
        json!([
            allow("c", "checked", json!(["anonymous"])),
            allow("p", "passive", json!(["anonymous"]))
        ]),
        json!([]),
    );
    let gw = Gateway::start(&snap);
    gw.wait_metrics("the active check marking the dead address down", |m| {
        m.contains(&format!(
            "rustronaut_gateway_upstream_up{{address=\"{checked_dead}\"}} 0"
        ))
    });
    for i in 0..4 {
        let msg = format!("checked {i}");
        assert_eq!(
            tcp_roundtrip(p1, b"", msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    let (_, m) = gw.admin_get("/metrics");
    assert_eq!(
        metric_value(&m, "rustronaut_gateway_upstream_ejections_total"),
        0,
        "an address marked down was tried"
    );
    // Without checks the dead address is found by one failed connect, retried elsewhere
    // within the same connection, and then skipped.
    for i in 0..4 {
        let msg = format!("passive {i}");
        assert_eq!(
            tcp_roundtrip(p2, b"", msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    let (_, m) = gw.admin_get("/metrics");
    assert_eq!(
        metric_value(&m, "rustronaut_gateway_upstream_ejections_total"),
        1
    );
}

#[test]
fn udp_flows_beyond_the_cap_are_dropped() {
    let up = UdpEcho::start();
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "dns", "port": port, "protocol": "UDP"}]),
        json!([port_resource("dns", "UDP", "dns", port, up.addr)]),
        json!([allow("anyone", "dns", json!(["anonymous"]))]),
        json!([]),
    );
    let gw = Gateway::start_with(&snap, &["--udp-max-flows", "1"]);
    let (a, b) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let wait = Duration::from_secs(5);
    assert_eq!(
        udp_roundtrip(&a, port, b"a", wait).as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(
        udp_roundtrip(&b, port, b"b", Duration::from_millis(300)),
        None
    );
    assert_eq!(
        up.count(),
        1,
        "a datagram beyond the cap reached the upstream"
    );
    // The existing flow is not affected.
    assert_eq!(
        udp_roundtrip(&a, port, b"a2", wait).as_deref(),
        Some(&b"a2"[..])
    );
    gw.wait_metrics("the dropped datagram", |m| {
        metric_value(m, "rustronaut_gateway_l4_udp_flows_dropped_total") == 1
    });
}

/// A real tunnel hub and site connector (the tunnel crate's own `Hub` and `Connector`, as
/// the `rustronaut-tunnel` binary runs them) in this process, on loopback: the connector's
/// WireGuard tunnel to the hub is UDP over 127.0.0.1, so no namespace is needed. The hub
/// lets site `dc1` reach the `allowed` addresses only.
struct TunnelPair {
    stream: SocketAddr,
    token_file: std::path::PathBuf,
    site_public_key: String,
    stop: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

const TUNNEL_TOKEN: &str = "gateway-token-0123456789abcdef";

impl TunnelPair {
    fn start(allowed: &[(SocketAddr, &str)]) -> Self {
        use rustronaut_tunnel::config::{ConnectorConfig, HubConfig};
        use rustronaut_tunnel::keys::{PrivateKey, write_private_key};
        let dir = tempfile::tempdir().unwrap();
        let hub_key = PrivateKey::generate().unwrap();
        let site_key = PrivateKey::generate().unwrap();
        let hub_key_file = dir.path().join("hub.key");
        let site_key_file = dir.path().join("site.key");
        write_private_key(&hub_key_file, &hub_key).unwrap();
        write_private_key(&site_key_file, &site_key).unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TUNNEL_TOKEN}\n")).unwrap();
        // The ports are free when chosen, but another test may take one before the hub
        // binds it: choose again then (only for "address in use").
        let config = || {
            let wg_port = free_port();
            let stream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let hub: HubConfig = serde_json::from_value(json!({
                "listen_port": wg_port,
                "private_key_file": hub_key_file,
                "tunnel_address": "100.96.0.1",
                "stream_listen": stream.to_string(),
                "token_file": token_file,
                "admin_listen": format!("127.0.0.1:{}", free_port()),
                "sites": [{"name": "dc1", "public_key": site_key.public_key().to_string(),
                           "tunnel_address": "100.96.1.1",
                           "allowed_targets": allowed.iter().map(|(a, protocol)| json!(
                               {"cidr": a.ip().to_string(), "ports": [a.port()], "protocol": protocol}))
                               .collect::<Vec<_>>()}],
            }))
            .unwrap();
            (wg_port, stream, hub)
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut attempt = 0;
        let (wg_port, stream, hub) = loop {
            let (wg_port, stream, hub) = config();
            match rt.block_on(rustronaut_tunnel::hub::Hub::new(hub)) {
                Ok(h) => break (wg_port, stream, h),
                Err(e) if attempt < 5 && e.to_string().contains("in use") => attempt += 1,
                Err(e) => panic!("the tunnel hub did not start: {e}"),
            }
        };
        rt.spawn(hub.run(stop.clone(), std::time::Duration::ZERO));
        let connector: ConnectorConfig = serde_json::from_value(json!({
            "hubs": [{"endpoint": format!("127.0.0.1:{wg_port}"),
                      "public_key": hub_key.public_key().to_string()}],
            "private_key_file": site_key_file,
            "tunnel_address": "100.96.1.1",
            "hub_tunnel_address": "100.96.0.1",
            "persistent_keepalive_secs": 1,
            "control_interval_secs": 1,
            "dead_peer_timeout_secs": 3,
        }))
        .unwrap();
        let connector = rt
            .block_on(rustronaut_tunnel::connector::Connector::new(connector))
            .unwrap();
        let s = stop.clone();
        rt.spawn(async move { connector.run(s).await });
        Self {
            stream,
            token_file,
            site_public_key: site_key.public_key().to_string(),
            stop,
            _dir: dir,
            _rt: rt,
        }
    }
}

impl Drop for TunnelPair {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[test]
fn site_upstreams_are_reached_through_a_real_tunnel_hub() {
    let target = Echo::start(None);
    // Allowed by the snapshot's site, but not by the hub's configuration of the site.
    let outside = Echo::start(None);
    let web = Upstream::start("at-the-site");
    let dns = UdpEcho::start();
    let tunnel = TunnelPair::start(&[(target.addr, "TCP"), (web.addr, "TCP"), (dns.addr, "UDP")]);
    let (p_open, p_denied, p_hub, p_web) = (free_port(), free_port(), free_port(), free_port());
    let p_udp = free_port();
    let site = |addr: SocketAddr| json!([{"kind": {"site": {"site": "dc1", "host": addr.ip().to_string(), "port": addr.port()}}}]);
    let resource = |name: &str, listener: &str, port: u16, addr: SocketAddr| {
        json!({"namespace": NS, "name": name, "tenant": "acme", "protocol": "TCP",
               "listeners": [listener], "ports": [port], "upstreams": site(addr)})
    };
    let mut snap = snapshot(
        json!([{"name": "open", "port": p_open, "protocol": "TCP"},
               {"name": "denied", "port": p_denied, "protocol": "TCP"},
               {"name": "hub-refuses", "port": p_hub, "protocol": "TCP"},
               {"name": "web", "port": p_web, "protocol": "HTTP"},
               {"name": "dns", "port": p_udp, "protocol": "UDP"}]),
        json!([
            {"namespace": NS, "name": "dns", "tenant": "acme", "protocol": "UDP",
             "listeners": ["dns"], "ports": [p_udp], "upstreams": site(dns.addr)},
            resource("db", "open", p_open, target.addr),
            resource("ops", "denied", p_denied, target.addr),
            resource("other", "hub-refuses", p_hub, outside.addr),
            {"namespace": NS, "name": "intranet", "tenant": "acme", "protocol": "HTTP",
             "listeners": ["web"], "hostnames": ["intranet.acme.test"],
             "rules": [{"name": "all", "upstreams": site(web.addr)}]},
            {"namespace": NS, "name": "blocked", "tenant": "acme", "protocol": "HTTP",
             "listeners": ["web"], "hostnames": ["blocked.acme.test"],
             "rules": [{"name": "all", "upstreams": site(outside.addr)}]}
        ]),
        json!([
            allow("anyone", "db", json!(["anonymous"])),
            allow("office", "ops", cidrs(&["198.51.100.0/24"])),
            allow("anyone-other", "other", json!(["anonymous"])),
            allow("anyone-web", "intranet", json!(["anonymous"])),
            allow("anyone-blocked", "blocked", json!(["anonymous"])),
            allow("anyone-dns", "dns", json!(["anonymous"]))
        ]),
        json!([]),
    );
    snap["tunnel"] = json!({
        "listenPort": free_port(), "addressPool": "100.96.0.0/16",
        "sites": [{"name": "dc1", "tenant": "acme", "publicKey": tunnel.site_public_key,
                   "tunnelAddress": "100.96.1.1",
                   "allowedTargets": [
                       {"host": "127.0.0.1",
                        "ports": [target.addr.port(), outside.addr.port(), web.addr.port()],
                        "protocol": "TCP"},
                       {"host": "127.0.0.1", "ports": [dns.addr.port()], "protocol": "UDP"}]}]
    });
    let gw = Gateway::start_with(
        &snap,
        &[
            "--tunnel-stream",
            &tunnel.stream.to_string(),
            "--tunnel-token-file",
            tunnel.token_file.to_str().unwrap(),
        ],
    );
    // The tunnel comes up in the background (handshake, then the allow list is pushed).
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    loop {
        if tcp_roundtrip(p_open, b"", b"through the hub").is_ok_and(|g| g == b"through the hub") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no echo through the tunnel; log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reached = target.conns();
    assert!(reached >= 1);
    assert_eq!(tcp_roundtrip(p_open, b"", b"again").unwrap(), b"again");
    assert_eq!(target.conns(), reached + 1);

    // Denied by policy at the gateway: the hub is never asked.
    assert!(closed_without_echo(p_denied, b""));
    assert_eq!(target.conns(), reached + 1);
    // Allowed by policy, refused by the hub: closed, logged, counted as unreachable.
    assert!(closed_without_echo(p_hub, b""));
    assert_eq!(outside.conns(), 0);
    gw.wait_metrics("the hub's refusal", |m| {
        metric_value(m, &l4_metric("TCP", "acme-apps/other", "unreachable")) == 1
            && metric_value(m, &l4_metric("TCP", "acme-apps/ops", "denied")) == 1
    });
    // HTTP through the hub (Pingora's custom L4 connector), twice: the second request may
    // ride the pooled connection.
    for path in ["/one", "/two"] {
        let r = curl(&[
            "-H",
            "Host: intranet.acme.test",
            &format!("http://127.0.0.1:{p_web}{path}"),
        ]);
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
        assert_eq!(r.json()["upstream"], "at-the-site");
        assert_eq!(r.json()["target"], path);
    }
    assert_eq!(web.hits.load(Ordering::SeqCst), 2);
    // UDP through the hub: datagrams framed on one hub stream per flow.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for q in [&b"q1"[..], b"q2", b"q3"] {
        let got = udp_roundtrip(&client, p_udp, q, Duration::from_secs(10));
        assert_eq!(got.as_deref(), Some(q), "{}", gw.log());
    }
    let sources = dns.sources.lock().unwrap().clone();
    assert_eq!(sources.len(), 3);
    assert!(
        sources.iter().all(|s| *s == sources[0]),
        "one flow at the site"
    );
    // A site target the hub refuses: no upstream for the request.
    let r = curl(&[
        "-H",
        "Host: blocked.acme.test",
        &format!("http://127.0.0.1:{p_web}/x"),
    ]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("x-rustronaut-decision-id").is_some(), "{r:?}");
    assert_eq!(outside.conns(), 0);

    let log = gw.log();
    assert!(log.contains("denied_by_hub"), "{log}");
    assert!(
        log.contains(&format!(
            "\"upstream\":\"site:dc1/127.0.0.1:{}\"",
            web.addr.port()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "\"upstream\":\"site:dc1/127.0.0.1:{}\"",
            target.addr.port()
        )),
        "{log}"
    );
}

#[test]
fn sigterm_stops_l4_listeners_and_the_process_exits() {
    let up = Echo::start(None);
    let udp_up = UdpEcho::start();
    let (tcp, udp) = (free_port(), free_port());
    let snap = snapshot(
        json!([{"name": "tcp", "port": tcp, "protocol": "TCP"},
               {"name": "udp", "port": udp, "protocol": "UDP"}]),
        json!([
            port_resource("app", "TCP", "tcp", tcp, up.addr),
            port_resource("dns", "UDP", "udp", udp, udp_up.addr)
        ]),
        json!([
            allow("a", "app", json!(["anonymous"])),
            allow("d", "dns", json!(["anonymous"]))
        ]),
        json!([]),
    );
    let mut gw = Gateway::start(&snap);
    // A connection held open across the signal: the shutdown timeout ends it.
    let mut held = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.read_exact(&mut one).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(udp_roundtrip(&client, udp, b"q", Duration::from_secs(5)).is_some());

    let status = gw.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        gw.log()
    );
    // (The listeners' own "stops accepting" lines may be cut short: with a zero grace
    // period Pingora may drop their runtimes before they run.)
    let log = gw.log();
    assert!(log.contains("\"stopped\""), "{log}");
    assert!(
        TcpStream::connect(("127.0.0.1", tcp)).is_err(),
        "still accepting"
    );
}

/// An HTTPS request on a fresh connection that starts with `header` (a PROXY header);
/// `Ok(response text)`, or `Err` when the connection was refused or closed.
fn https_after_header(port: u16, header: &[u8], ca_pem: &str) -> Result<String, String> {
    https_after_header_from(Ipv4Addr::LOCALHOST, port, header, ca_pem)
}

/// [`https_after_header`] from source address `from` (a loopback address).
fn https_after_header_from(
    from: Ipv4Addr,
    port: u16,
    header: &[u8],
    ca_pem: &str,
) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let work = async {
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(from.into(), 0))
                .map_err(|e| e.to_string())?;
            let mut tcp = socket
                .connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .map_err(|e| e.to_string())?;
            tcp.write_all(header).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from("app.acme.test").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(
                b"GET /office HTTP/1.1\r\nHost: app.acme.test\r\nConnection: close\r\n\r\n",
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            Ok(String::from_utf8_lossy(&out).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

/// A snapshot with `listener` alone, the HTTP Resource `app.acme.test` on it (upstream
/// `up`) that only 203.0.113.0/24 may reach, and PROXY protocol from 127.0.0.1.
fn partner_app_behind_a_proxy(listener: Value, up: SocketAddr) -> Value {
    let name = listener["name"].clone();
    let mut snap = snapshot(
        json!([listener]),
        json!([{"namespace": NS, "name": "app", "tenant": "acme", "protocol": "HTTP",
                "listeners": [name], "hostnames": ["app.acme.test"],
                "rules": [{"name": "all", "upstreams": service(up)}]}]),
        json!([allow("partner", "app", cidrs(&["203.0.113.0/24"]))]),
        json!([]),
    );
    snap["clientIPDetection"] =
        json!({"proxyProtocol": true, "trustedPeerCIDRs": ["127.0.0.1/32"]});
    snap
}

#[test]
fn proxy_protocol_on_https_listeners_sets_the_client_ip() {
    let up = Upstream::start("office");
    let pki = Pki::new("gateway ca");
    let (chain, key) = pki.server(&["app.acme.test"]);
    let port = free_port();
    let snap = partner_app_behind_a_proxy(
        json!({"name": "https", "port": port, "protocol": "HTTPS",
               "tls": {"certificates": [{"name": "app", "hostnames": ["app.acme.test"],
                       "certificateChainPem": chain, "privateKeyPem": key}]}}),
        up.addr,
    );
    // Two workers: the TLS handshake runs on the worker the connection is handed to
    // (listener::Workers).
    let gw = Gateway::start_with(&snap, &["--threads", "2"]);

    let ok = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {port}\r\n");
    let r = https_after_header(port, ok.as_bytes(), &pki.ca_pem).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}\n{}", gw.log());
    assert!(r.contains("\"x-forwarded-for\":[\"203.0.113.9\"]"), "{r}");
    let r =
        https_after_header(port, &proxy_v2([198, 51, 100, 4], 40001, port), &pki.ca_pem).unwrap();
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // No header: the TLS ClientHello is not a PROXY header, the connection is dropped.
    let e = https_after_header(port, b"", &pki.ca_pem).unwrap_err();
    assert!(e.starts_with("handshake"), "{e}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    let log = gw.log();
    assert!(log.contains("\"client_ip\":\"198.51.100.4\""), "{log}");
    // The refusal has its decision line, as on L4 and plain HTTP listeners.
    assert!(log.contains("\"reason\":\"InvalidProxyProtocol\""), "{log}");
}

/// What a plain HTTP connection from `from` that starts with `bytes` got back before the
/// gateway closed it (empty when it was closed unanswered).
fn http_after(from: Ipv4Addr, port: u16, parts: &[&[u8]]) -> String {
    let mut s = connect_from(from, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = s.write_all(part);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// PROXY protocol on a plain HTTP listener (behind a load balancer that speaks it, such
/// as an AWS NLB): the header's source is the client address policies, X-Forwarded-For
/// and the decision line see, for every request of the connection; the request bytes sent
/// with the header are kept; a header in pieces is waited for. A connection without one,
/// or from a peer that is not a trusted load balancer, is closed unanswered with a decision
/// line saying why, and never reaches the upstream.
#[test]
fn proxy_protocol_on_plain_http_listeners_sets_the_client_ip() {
    let up = Upstream::start("office");
    let port = free_port();
    let snap = partner_app_behind_a_proxy(
        json!({"name": "web", "port": port, "protocol": "HTTP"}),
        up.addr,
    );
    let gw = Gateway::start(&snap);
    let lb = Ipv4Addr::LOCALHOST;
    let get = |path: &str, close: bool| {
        let close = if close { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: app.acme.test\r\n{close}\r\n")
    };
    let v1 = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {port}\r\n");

    // The header and the first request in one write, a second request on the same
    // connection after the first answer: both from 203.0.113.9.
    let mut s = connect_from(lb, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all([v1.as_str(), &get("/one", false)].concat().as_bytes())
        .unwrap();
    let mut first = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&first).ends_with("\"upstream\":\"office\"}") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&first));
        first.extend_from_slice(&chunk[..n]);
    }
    s.write_all(get("/two", true).as_bytes()).unwrap();
    let mut second = Vec::new();
    let _ = s.read_to_end(&mut second);
    let r = String::from_utf8_lossy(&[first, second].concat()).into_owned();
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}\n{}", gw.log());
    assert_eq!(
        r.matches("\"x-forwarded-for\":[\"203.0.113.9\"]").count(),
        2,
        "{r}"
    );
    let both = [v1.as_str(), &get("/two", true)].concat();
    // The header in two pieces, then the request.
    let (a, b) = v1.as_bytes().split_at(10);
    let r = http_after(lb, port, &[a, b, get("/three", true).as_bytes()]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A v2 header naming a client the policy does not allow: refused by the policy, and
    // the decision line names that client.
    let v2 = [
        proxy_v2([198, 51, 100, 4], 40001, port),
        get("/four", true).into_bytes(),
    ]
    .concat();
    let r = http_after(lb, port, &[&v2]);
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);

    // No header: closed unanswered.
    let r = http_after(lb, port, &[get("/five", true).as_bytes()]);
    assert_eq!(r, "");
    // From a peer that is not the load balancer, even with a well-formed header.
    let r = http_after(Ipv4Addr::new(127, 0, 0, 2), port, &[both.as_bytes()]);
    assert_eq!(r, "");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        3,
        "nothing more reached the upstream"
    );
    let log = gw.log();
    assert!(log.contains("\"client_ip\":\"198.51.100.4\""), "{log}");
    assert!(log.contains("\"reason\":\"InvalidProxyProtocol\""), "{log}");
    assert!(log.contains("\"reason\":\"UntrustedProxyPeer\""), "{log}");
}

#[test]
fn idle_tcp_connections_are_closed_and_busy_ones_are_not() {
    let up = Echo::start(None);
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([port_resource("app", "TCP", "tcp", port, up.addr)]),
        json!([allow("a", "app", json!(["anonymous"]))]),
        json!([]),
    );
    let _gw = Gateway::start_with(&snap, &["--l4-idle-timeout-ms", "400"]);
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut one = [0u8; 1];
    // Busy: a byte every 100 ms for 1.2 s, three times the idle timeout.
    let mut busy = connect();
    for _ in 0..12 {
        busy.write_all(b"b").unwrap();
        busy.read_exact(&mut one).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // Idle: closed by the gateway after 400 ms of silence.
    let mut idle = connect();
    idle.write_all(b"i").unwrap();
    idle.read_exact(&mut one).unwrap();
    let started = std::time::Instant::now();
    let n = idle.read(&mut one).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[test]
fn connections_beyond_the_cap_are_closed_on_accept() {
    let up = Echo::start(None);
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([port_resource("app", "TCP", "tcp", port, up.addr)]),
        json!([allow("a", "app", json!(["anonymous"]))]),
        json!([]),
    );
    let gw = Gateway::start_with(&snap, &["--l4-max-connections", "2"]);
    let open = || -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"x")?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one)?;
        Ok(s)
    };
    let first = open().unwrap();
    let _second = open().unwrap();
    assert!(
        closed_without_echo(port, b""),
        "a third connection was served"
    );
    gw.wait_metrics("the refusal", |m| {
        metric_value(m, &l4_metric("TCP", "-", "refused")) == 1
    });
    // A slot frees when a connection ends.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open().is_err() {
        assert!(std::time::Instant::now() < deadline, "no slot freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.log().contains("\"reason\":\"ConnectionLimit\""));
}

/// A TCP connection to the gateway's `port` from source address `src` (another loopback
/// address is another client), echoing one byte first so it is known to be served.
fn served_from(src: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((src, 0)))?;
        sock.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
    })?;
    let mut s = s.into_std()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"x")?;
    let mut one = [0u8; 1];
    s.read_exact(&mut one)?;
    Ok(s)
}

#[test]
fn one_client_cannot_take_every_connection_of_a_port() {
    let up = Echo::start(None);
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([port_resource("app", "TCP", "tcp", port, up.addr)]),
        json!([allow("a", "app", json!(["anonymous"]))]),
        json!([]),
    );
    let gw = Gateway::start_with(&snap, &["--l4-max-connections-per-client", "2"]);
    let first = served_from([127, 0, 0, 1], port).unwrap();
    let _second = served_from([127, 0, 0, 1], port).unwrap();
    // A third from the same address is closed without reaching the upstream...
    assert!(
        served_from([127, 0, 0, 1], port).is_err(),
        "a third connection of one client was served"
    );
    gw.wait_metrics("the refusal", |m| {
        metric_value(m, &l4_metric("TCP", "-", "refused")) == 1
    });
    assert!(gw.log().contains("\"reason\":\"ClientConnectionLimit\""));
    // ... while another client is served.
    let _other = served_from([127, 0, 0, 2], port).expect("another client was refused");
    let _other2 = served_from([127, 0, 0, 2], port).expect("another client was refused");
    // The client's count is given back when a connection ends.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_from([127, 0, 0, 1], port).is_err() {
        assert!(std::time::Instant::now() < deadline, "no slot freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_client_cannot_fill_the_udp_flow_table() {
    let up = UdpEcho::start();
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "dns", "port": port, "protocol": "UDP"}]),
        json!([port_resource("dns", "UDP", "dns", port, up.addr)]),
        json!([allow("anyone", "dns", json!(["anonymous"]))]),
        json!([]),
    );
    let gw = Gateway::start_with(
        &snap,
        &[
            "--udp-max-flows-per-client",
            "2",
            "--udp-idle-timeout-ms",
            "1500",
        ],
    );
    let from = |ip: &str| UdpSocket::bind((ip, 0)).unwrap();
    let (a, b, c) = (from("127.0.0.1"), from("127.0.0.1"), from("127.0.0.1"));
    let wait = Duration::from_secs(5);
    assert_eq!(
        udp_roundtrip(&a, port, b"a", wait).as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(
        udp_roundtrip(&b, port, b"b", wait).as_deref(),
        Some(&b"b"[..])
    );
    // A third source port of the same address is a third flow of one client: dropped.
    assert_eq!(
        udp_roundtrip(&c, port, b"c", Duration::from_millis(300)),
        None
    );
    assert_eq!(
        up.count(),
        2,
        "a datagram beyond the client's cap reached the upstream"
    );
    gw.wait_metrics("the dropped datagram", |m| {
        metric_value(m, "rustronaut_gateway_l4_udp_client_flows_dropped_total") == 1
    });
    // Another client still gets flows, and the first client's flows keep working.
    let d = from("127.0.0.2");
    assert_eq!(
        udp_roundtrip(&d, port, b"d", wait).as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(
        udp_roundtrip(&a, port, b"a2", wait).as_deref(),
        Some(&b"a2"[..])
    );
    // Once the client's flows idle out, its count is given back.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while udp_roundtrip(&c, port, b"c2", Duration::from_millis(500)).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client's flows were never released"
        );
    }
}

#[test]
fn a_tunnel_token_written_after_start_is_picked_up() {
    let target = Echo::start(None);
    let tunnel = TunnelPair::start(&[(target.addr, "TCP")]);
    let port = free_port();
    let mut snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([{"namespace": NS, "name": "db", "tenant": "acme", "protocol": "TCP",
                "listeners": ["tcp"], "ports": [port],
                "upstreams": [{"kind": {"site": {"site": "dc1", "host": "127.0.0.1",
                                                  "port": target.addr.port()}}}]}]),
        json!([allow("anyone", "db", json!(["anonymous"]))]),
        json!([]),
    );
    snap["tunnel"] = json!({
        "listenPort": free_port(), "addressPool": "100.96.0.0/16",
        "sites": [{"name": "dc1", "tenant": "acme", "publicKey": tunnel.site_public_key,
                   "tunnelAddress": "100.96.1.1",
                   "allowedTargets": [{"host": "127.0.0.1", "ports": [target.addr.port()],
                                       "protocol": "TCP"}]}]
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let gw = Gateway::start_with(
        &snap,
        &[
            "--tunnel-stream",
            &tunnel.stream.to_string(),
            "--tunnel-token-file",
            token.to_str().unwrap(),
        ],
    );
    // No token yet: the gateway serves, the site connection is refused.
    assert!(closed_without_echo(port, b""));
    assert!(gw.log().contains("tunnel token file"), "{}", gw.log());
    std::fs::write(&token, format!("# rotated\n{TUNNEL_TOKEN}\n")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while tcp_roundtrip(port, b"", b"late").map_or(true, |g| g != b"late") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TLS echo round trip offering only `versions`.
fn tls_roundtrip_with(
    port: u16,
    roots_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let work = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            let name = ServerName::try_from("db.acme.test").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(msg).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; msg.len()];
            tls.read_exact(&mut got)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok(got)
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

#[test]
fn tls_on_a_tcp_listener_follows_reloads_and_enforces_the_minimum_version() {
    let up = Echo::start(None);
    let pki = Pki::new("gateway ca");
    let (chain, key) = pki.server(&["db.acme.test"]);
    let port = free_port();
    let snap = snapshot(
        json!([{"name": "tcp", "port": port, "protocol": "TCP"}]),
        json!([port_resource("db", "TCP", "tcp", port, up.addr)]),
        json!([allow("anyone", "db", json!(["anonymous"]))]),
        json!([]),
    );
    let gw = Gateway::start(&snap);
    assert_eq!(tcp_roundtrip(port, b"", b"plain").unwrap(), b"plain");
    let tls13 = [&rustls::version::TLS13];
    let tls12 = [&rustls::version::TLS12];
    assert!(tls_roundtrip_with(port, &pki.ca_pem, &tls13, b"x").is_err());

    // TLS switched on (1.3 only) by a reload: no restart.
    let mut next = snap.clone();
    next["listeners"][0]["tls"] = json!({
        "certificates": [{"name": "db", "hostnames": ["db.acme.test"],
                          "certificateChainPem": chain, "privateKeyPem": key}],
        "minVersion": "1.3"});
    gw.write_snapshot_bytes(&serde_json::to_vec(&next).unwrap());
    gw.wait_metrics("the reload", |m| {
        m.contains("rustronaut_gateway_snapshot_reloads_total{result=\"applied\"} 2")
    });
    assert_eq!(
        tls_roundtrip_with(port, &pki.ca_pem, &tls13, b"tls").unwrap(),
        b"tls"
    );
    let e = tls_roundtrip_with(port, &pki.ca_pem, &tls12, b"old").unwrap_err();
    assert!(
        e.starts_with("handshake"),
        "TLS 1.2 refused in the handshake: {e}"
    );
    // Plain TCP now meets the TLS handshake: at most an alert comes back, never an echo.
    let got = tcp_roundtrip(port, b"", b"plain again").unwrap_or_default();
    assert_ne!(got, b"plain again", "plain TCP after TLS was switched on");
    assert!(gw.log().contains("\"reason\":\"TlsHandshakeFailed\""));
}

/// Issue 14, item 9: a PROXY header is believed only from a peer in
/// `clientIPDetection.trustedPeerCIDRs` (the load balancer, 127.0.0.2 here). A client that
/// reaches the listener directly and sends one naming an allowed address is refused before
/// its header is read, on TCP and HTTPS listeners alike; the load balancer still speaks for
/// its clients.
#[test]
fn a_proxy_header_from_an_untrusted_peer_is_refused() {
    let up = Echo::start(None);
    let web = Upstream::start("office");
    let pki = Pki::new("gateway ca");
    let (chain, key) = pki.server(&["app.acme.test"]);
    let (tcp, https) = (free_port(), free_port());
    let mut snap = snapshot(
        json!([{"name": "tcp", "port": tcp, "protocol": "TCP"},
               {"name": "https", "port": https, "protocol": "HTTPS",
                "tls": {"certificates": [{"name": "app", "hostnames": ["app.acme.test"],
                        "certificateChainPem": chain, "privateKeyPem": key}]}}]),
        json!([port_resource("db", "TCP", "tcp", tcp, up.addr),
               {"namespace": NS, "name": "app", "tenant": "acme", "protocol": "HTTP",
                "listeners": ["https"], "hostnames": ["app.acme.test"],
                "rules": [{"name": "all", "upstreams": service(web.addr)}]}]),
        json!([
            allow("partner-db", "db", cidrs(&["203.0.113.0/24"])),
            allow("partner-app", "app", cidrs(&["203.0.113.0/24"]))
        ]),
        json!([]),
    );
    snap["clientIPDetection"] =
        json!({"proxyProtocol": true, "trustedPeerCIDRs": ["127.0.0.2/32"]});
    let gw = Gateway::start(&snap);
    let untrusted = Ipv4Addr::LOCALHOST;
    let lb = Ipv4Addr::new(127, 0, 0, 2);
    let roundtrip = |from: Ipv4Addr, header: &[u8]| -> Vec<u8> {
        let mut s = connect_from(from, tcp);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&[header, b"hello"].concat());
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };

    // TCP: the forged header from a direct client closes the connection unread.
    let header = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {tcp}\r\n");
    assert_eq!(roundtrip(untrusted, header.as_bytes()), b"");
    assert_eq!(
        roundtrip(untrusted, &proxy_v2([203, 0, 113, 9], 1, tcp)),
        b""
    );
    assert_eq!(up.conns(), 0, "nothing reached the upstream");
    // From the load balancer the same header is the client.
    let mut s = connect_from(lb, tcp);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[header.as_bytes(), b"hello"].concat())
        .unwrap();
    let mut five = [0u8; 5];
    s.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"hello");
    drop(s);

    // HTTPS: likewise, refused before the handshake.
    let header = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {https}\r\n");
    let e = https_after_header_from(untrusted, https, header.as_bytes(), &pki.ca_pem).unwrap_err();
    assert!(!e.starts_with("HTTP/"), "{e}");
    assert_eq!(web.hits.load(Ordering::SeqCst), 0);
    let r = https_after_header_from(lb, https, header.as_bytes(), &pki.ca_pem).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}\n{}", gw.log());
    assert_eq!(web.hits.load(Ordering::SeqCst), 1);

    let log = gw.log();
    assert!(log.contains("\"reason\":\"UntrustedProxyPeer\""), "{log}");
    assert!(log.contains("\"client_ip\":\"203.0.113.9\""), "{log}");
}
