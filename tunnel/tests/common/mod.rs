//! Shared helpers of the network-namespace tests: namespaces and veth pairs that are always
//! removed (also on panic), child processes that are always killed, code run inside a
//! namespace, echo servers, and clients of the hub's stream endpoint.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustronaut_tunnel::allow::{Host, Protocol};
use rustronaut_tunnel::client::{self, ClientError, Opened};
use rustronaut_tunnel::keys::{self, PrivateKey};
use rustronaut_tunnel::proto::{self, OpenRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_rustronaut-tunnel");
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// Hub namespace side of the hub<->connector veth.
pub const HUB_IP: &str = "10.77.1.1";
pub const CONN_IP: &str = "10.77.1.2";
pub const CONN_IP2: &str = "10.77.1.3";
/// Target namespace side of the connector<->target veth.
pub const TARGET_IP: &str = "10.77.2.2";
pub const ECHO_PORT: u16 = 9000;

/// Fails (never skips) when the test cannot run: these tests are part of CI, which runs them
/// as root with iproute2 installed.
pub fn require_root_and_ip() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root (CI does); run: sudo -E cargo test -p rustronaut-tunnel"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "this test needs `ip` from iproute2 (bash .ci/install-deps.sh installs it)"
    );
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Three namespaces: hub --veth-- conn --veth-- target. Removed on drop.
pub struct Topology {
    pub hub: String,
    pub conn: String,
    pub target: String,
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Live topologies of this process, and whether /run/netns was a mount point before the
/// first: `ip netns add` bind-mounts /run/netns onto itself when it is not, and the last
/// topology to go undoes that, so the host is left as it was. Held while namespaces are
/// added or deleted, so an unmount never races another topology's `ip netns add`.
static LIVE: Mutex<(usize, bool)> = Mutex::new((0, true));

/// Whether `path` is a mount point (from /proc/self/mountinfo, field 5).
fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

impl Topology {
    pub fn new() -> Self {
        require_root_and_ip();
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        if live.0 == 0 {
            live.1 = is_mount_point("/run/netns");
        }
        live.0 += 1;
        let id = format!(
            "rtn{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let t = Topology {
            hub: format!("{id}-hub"),
            conn: format!("{id}-conn"),
            target: format!("{id}-tgt"),
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
            stops: Vec::new(),
        };
        // Created before any fallible step, so Drop removes whatever exists.
        for ns in [&t.hub, &t.conn, &t.target] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        drop(live);
        sh(&[
            "ip", "link", "add", "h0", "netns", &t.hub, "type", "veth", "peer", "name", "c0",
            "netns", &t.conn,
        ]);
        sh(&[
            "ip", "link", "add", "c1", "netns", &t.conn, "type", "veth", "peer", "name", "t0",
            "netns", &t.target,
        ]);
        for (ns, dev, addr) in [
            (&t.hub, "h0", format!("{HUB_IP}/24")),
            (&t.conn, "c0", format!("{CONN_IP}/24")),
            (&t.conn, "c1", "10.77.2.1/24".to_owned()),
            (&t.target, "t0", format!("{TARGET_IP}/24")),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        t
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh key file; returns (key, path).
    pub fn key(&self, name: &str) -> (PrivateKey, PathBuf) {
        let key = PrivateKey::generate().unwrap();
        let path = self.path(name);
        keys::write_private_key(&path, &key).unwrap();
        (key, path)
    }

    /// Runs our binary in a namespace; logs go to a file in the temp dir.
    pub fn spawn(&mut self, name: &str, ns: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .env("RUST_LOG", "info,rustronaut_tunnel=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    /// Runs any program in a namespace (killed on drop).
    pub fn spawn_cmd(
        &mut self,
        name: &str,
        ns: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    pub fn kill(&mut self, name: &str) {
        if let Some(pos) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to a child (as the kubelet stops a pod).
    pub fn terminate(&self, name: &str) {
        let (_, c) = self
            .children
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no child {name}"));
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// The child's exit status once it has exited, waiting up to `timeout`.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let (_, c) = self.children.iter_mut().find(|(n, _)| n == name)?;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Dumps every child's log (call before failing an assertion).
    pub fn dump_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    out.push_str(&format!("---- {} (last 40 lines) ----\n", p.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// TCP and UDP echo servers on 0.0.0.0:ECHO_PORT in `ns`, until drop.
    pub fn echo_servers(&mut self, ns: &str) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_owned();
        std::thread::spawn(move || {
            enter_ns(&ns);
            rt().block_on(async move {
                let tcp = tokio::net::TcpListener::bind(("0.0.0.0", ECHO_PORT))
                    .await
                    .unwrap();
                let udp = tokio::net::UdpSocket::bind(("0.0.0.0", ECHO_PORT))
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let tcp_loop = async {
                    loop {
                        let (mut s, _) = tcp.accept().await.unwrap();
                        tokio::spawn(async move {
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                };
                let udp_loop = async {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                        let _ = udp.send_to(&buf[..n], from).await;
                    }
                };
                tokio::select! {
                    _ = tcp_loop => {}
                    _ = udp_loop => {}
                    _ = stopped => {}
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        self.stops.push(stop);
    }

    /// Writes a hub configuration file.
    pub fn hub_config(
        &self,
        name: &str,
        key_file: &Path,
        listen_port: u16,
        stream: &str,
        admin: &str,
        sites_yaml: &str,
    ) -> PathBuf {
        let token_file = self.path("token");
        if !token_file.exists() {
            std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        }
        let path = self.path(name);
        let yaml = format!(
            "listen_port: {listen_port}\nprivate_key_file: {}\ntunnel_address: 100.96.0.1\nstream_listen: \"{stream}\"\ntoken_file: {}\nadmin_listen: \"{admin}\"\nsites:\n{sites_yaml}",
            key_file.display(),
            token_file.display()
        );
        write_atomically(&path, &yaml);
        path
    }
}

/// Replaces a file by rename, as Kubernetes updates mounted ConfigMaps.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stops.clear();
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        for ns in [&self.hub, &self.conn, &self.target] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        live.0 -= 1;
        let empty = std::fs::read_dir("/run/netns").map_or(true, |mut d| d.next().is_none());
        if live.0 == 0 && !live.1 && empty && is_mount_point("/run/netns") {
            let _ = Command::new("umount").arg("/run/netns").output();
        }
        drop(live);
        if std::thread::panicking() {
            eprintln!("{}", self.dump_logs());
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Moves the calling thread into a network namespace.
pub fn enter_ns(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Runs an async block on a fresh thread inside `ns`.
pub fn in_ns<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_ns(&ns);
        rt().block_on(f())
    })
    .join()
    .unwrap()
}

pub fn open_req(site: &str, protocol: Protocol, host: &str, port: u16) -> OpenRequest {
    OpenRequest {
        token: TOKEN.into(),
        site: site.into(),
        protocol,
        host: Host::parse(host).unwrap(),
        port,
    }
}

/// Opens a TCP stream through the hub and echoes `data`.
pub async fn tcp_echo(
    stream_ep: SocketAddr,
    site: &str,
    host: &str,
    data: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let Opened { mut stream, early } = client::open(
        stream_ep,
        &open_req(site, Protocol::Tcp, host, ECHO_PORT),
        Duration::from_secs(15),
    )
    .await?;
    assert!(early.is_empty());
    let (mut r, mut w) = stream.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut out = Vec::new();
    let read = r.read_to_end(&mut out);
    let (_, n) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
        .await
        .expect("echo timed out");
    n.unwrap();
    Ok(out)
}

/// Opens a UDP flow through the hub and echoes each datagram.
pub async fn udp_echo(
    stream_ep: SocketAddr,
    site: &str,
    host: &str,
    datagrams: &[&[u8]],
) -> Result<Vec<Vec<u8>>, ClientError> {
    let Opened { mut stream, early } = client::open(
        stream_ep,
        &open_req(site, Protocol::Udp, host, ECHO_PORT),
        Duration::from_secs(15),
    )
    .await?;
    let mut buf = early;
    let mut out = Vec::new();
    for d in datagrams {
        let mut frame = Vec::new();
        proto::encode_datagram(d, &mut frame).unwrap();
        stream.write_all(&frame).await.unwrap();
        loop {
            if let Some((range, used)) = proto::decode_datagram(&buf) {
                out.push(buf[range].to_vec());
                buf.drain(..used);
                break;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("udp echo timed out")
                .unwrap();
            assert!(n > 0, "flow closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(out)
}

/// Retries `f` until it returns Ok or the deadline passes.
pub fn eventually<T, E: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: still failing after {timeout:?}: {e:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// GET over plain HTTP/1.1 from inside `ns`.
pub fn http_get(ns: &str, addr: &str, path: &str) -> std::io::Result<String> {
    let (addr, path, ns) = (addr.to_owned(), path.to_owned(), ns.to_owned());
    std::thread::spawn(move || {
        enter_ns(&ns);
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap()
}

pub fn site_yaml(name: &str, public_key: &str, tunnel_address: &str, targets: &str) -> String {
    format!(
        "  - name: {name}\n    public_key: \"{public_key}\"\n    tunnel_address: {tunnel_address}\n    allowed_targets:\n{targets}"
    )
}

/// A connector configuration with fast timers for tests.
pub fn connector_config(
    t: &Topology,
    key_file: &Path,
    hubs: &[(String, String)],
    extra: &str,
) -> PathBuf {
    let mut yaml = String::from("hubs:\n");
    for (endpoint, key) in hubs {
        yaml.push_str(&format!(
            "  - {{endpoint: \"{endpoint}\", public_key: \"{key}\"}}\n"
        ));
    }
    yaml.push_str(&format!(
        "private_key_file: {}\ntunnel_address: 100.96.1.1\nhub_tunnel_address: 100.96.0.1\npersistent_keepalive_secs: 1\ncontrol_interval_secs: 1\ndead_peer_timeout_secs: 3\nadmin_listen: \"127.0.0.1:9190\"\n{extra}",
        key_file.display()
    ));
    let path = t.path("connector.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}
