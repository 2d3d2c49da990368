//! Test harness: the gateway binary as a child process on free loopback ports, real
//! upstream servers, curl as the client, a test CA from rcgen.
#![allow(dead_code, missing_docs)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const API_KEY: &str = "globex-0123456789abcdefghijklmnop";
pub const ISSUER: &str = "https://token.test";

/// A loopback port no other caller in this test binary has been given.
///
/// Why not just `bind(0)` and drop: the gateway binds its ports itself, after this
/// returns, and tests run in parallel. The kernel may hand a just-released ephemeral port
/// to the next `bind(0)`, so two gateways could be given the same port, and one test
/// would talk to the other's listener (a real flake seen in CI). Ports are therefore
/// taken from below the kernel's ephemeral range (32768+, also used by curl's outgoing
/// connections) with a per-process counter, and each is checked free before it is
/// handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Start each test binary at a different offset so that two binaries run by hand at
    // once rarely meet.
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id() % u32::from(SPAN)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = LOW + n % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// An upstream that echoes what it received as JSON: path (with query), headers.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Every request target the upstream received, in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    /// Requests whose path contains `/held` wait for a permit here before answering.
    pub gate: Arc<tokio::sync::Semaphore>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start(name: &'static str) -> Self {
        Self::start_with_status(name, 200)
    }

    /// An upstream answering every request with `status`.
    pub fn start_with_status(name: &'static str, status: u16) -> Self {
        Self::start_on(name, status, "127.0.0.1:0")
    }

    /// An upstream answering `status` on `addr` (a fixed port, for the documented example).
    pub fn start_on(name: &'static str, status: u16, addr: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding the upstream on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let h = hits.clone();
        let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let h = h.clone();
            let g = g.clone();
            let s = s.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().push(
                    req.uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                );
                if req.uri().path().contains("/held") {
                    g.acquire().await.unwrap().forget();
                }
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in req.headers() {
                    headers
                        .entry(k.as_str().to_string())
                        .or_default()
                        .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
                let target = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default();
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({"upstream": name, "target": target, "headers": headers})),
                )
            }
        });
        rt.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            hits,
            seen,
            gate,
            _rt: rt,
        }
    }
}

/// A response as curl saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A header the upstream received (first value).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }
}

/// Runs curl with `args`; `--path-as-is` so curl does not normalise paths itself.
pub fn curl(args: &[&str]) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let hfile = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-s", "-S", "--path-as-is", "--max-time", "20", "-D"])
        .arg(&hfile)
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = std::fs::read_to_string(&hfile).unwrap();
    // With redirects or 100-continue there can be several blocks; the last one counts.
    let block = raw
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default();
    let mut lines = block.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        version,
        headers,
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// The gateway child process; killed on drop.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub snapshot: PathBuf,
    pub admin: u16,
    log: PathBuf,
}

impl Gateway {
    /// Times the process's threads gave up the CPU on their own (slept or waited), summed
    /// over every thread: `voluntary_ctxt_switches` of each `/proc/<pid>/task/*/status`.
    pub fn voluntary_switches(&self) -> u64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .map(|v| v.trim().parse::<u64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of each thread whose name (as the kernel keeps it, at most 15 bytes) starts
    /// with `prefix`, in nanoseconds (`/proc/<pid>/task/<tid>/schedstat`), by thread id.
    pub fn thread_cpu_ns(&self, prefix: &str) -> Vec<(u32, u64)> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        tasks
            .filter_map(|t| {
                let dir = t.ok()?.path();
                let tid = dir.file_name()?.to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                comm.starts_with(prefix).then_some(())?;
                let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
                Some((tid, stat.split_whitespace().next()?.parse().ok()?))
            })
            .collect()
    }

    pub fn start(snapshot: &Value) -> Self {
        Self::start_with(snapshot, &[])
    }

    /// [`Gateway::start`] with extra flags.
    pub fn start_with(snapshot: &Value, extra: &[&str]) -> Self {
        let gw = Self::spawn(&serde_json::to_vec_pretty(snapshot).unwrap(), extra);
        gw.wait_ready(snapshot);
        gw
    }

    /// Starts the process on a snapshot file holding `bytes`, without waiting.
    pub fn spawn(bytes: &[u8], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        std::fs::write(&path, bytes).unwrap();
        let source = vec!["--snapshot".to_string(), path.display().to_string()];
        Self::spawn_in(dir, path, &source, &[], extra, true)
    }

    /// Starts the process reading its snapshot from the Secret `secret` (NAMESPACE/NAME)
    /// through the API server of `kubeconfig`, reporting into the ConfigMap `status` as
    /// pod `pod`; without waiting.
    pub fn spawn_from_secret(
        kubeconfig: &Path,
        secret: &str,
        status: &str,
        pod: &str,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unused-snapshot.json");
        let source = vec![
            "--config-from".to_string(),
            secret.to_string(),
            "--report-status".to_string(),
            status.to_string(),
        ];
        let env = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAME", pod.to_string()),
        ];
        Self::spawn_in(dir, path, &source, &env, extra, true)
    }

    /// Starts the process as the sidecar injection runs it: its snapshot from the Secret
    /// `secret` (NAMESPACE/NAME) through the API server of `kubeconfig`, no status report,
    /// and no `--allow-loopback-upstreams` (a sidecar snapshot needs none; an edge
    /// snapshot naming a loopback upstream is refused); without waiting.
    pub fn spawn_sidecar(kubeconfig: &Path, secret: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unused-snapshot.json");
        let source = vec!["--config-from".to_string(), secret.to_string()];
        let env = [("KUBECONFIG", kubeconfig.display().to_string())];
        Self::spawn_in(dir, path, &source, &env, extra, false)
    }

    /// Every test upstream runs on the host's loopback, which an edge gateway refuses
    /// unless `allow_loopback` passes `--allow-loopback-upstreams`.
    fn spawn_in(
        dir: tempfile::TempDir,
        path: PathBuf,
        source: &[String],
        env: &[(&str, String)],
        extra: &[&str],
        allow_loopback: bool,
    ) -> Self {
        let admin = free_port();
        let log = dir.path().join("gateway.log");
        let loopback: &[&str] = if allow_loopback {
            &["--allow-loopback-upstreams"]
        } else {
            &[]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_rustronaut-gateway"))
            .args(source)
            .args(loopback)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--bind-address", "127.0.0.1"])
            // Quick reloads for the tests, unless a test sets its own.
            .args(if extra.contains(&"--poll-interval-ms") {
                &[][..]
            } else {
                &["--poll-interval-ms", "100"][..]
            })
            // One worker, as a sidecar, unless a test sets its own.
            .args(if extra.contains(&"--threads") {
                &[][..]
            } else {
                &["--threads", "1"][..]
            })
            // Stop at once, unless a test sets its own drain and grace.
            .args(if extra.contains(&"--drain-delay-seconds") {
                &[][..]
            } else {
                &["--drain-delay-seconds", "0"][..]
            })
            .args(if extra.contains(&"--grace-period-seconds") {
                &[][..]
            } else {
                &["--grace-period-seconds", "0"][..]
            })
            .args(["--shutdown-timeout-seconds", "1"])
            .args(extra)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("gateway starts");
        Self {
            child,
            dir,
            snapshot: path,
            admin,
            log,
        }
    }

    /// Waits until /readyz is 200, every HTTP(S) listener of `snapshot` accepts
    /// connections and the process says it is serving (L4 ports are bound before that line,
    /// so they are not probed: a probe would be a connection the tests would have to count).
    pub fn wait_ready(&self, snapshot: &Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ports: Vec<u16> = snapshot["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["protocol"] == "HTTP" || l["protocol"] == "HTTPS")
            .map(|l| l["port"].as_u64().unwrap() as u16)
            .collect();
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok()
                && self.admin_get("/readyz").0 == 200
                && ports
                    .iter()
                    .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
                && self.log().contains("\"message\":\"serving\"");
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        self.terminate_wait()
    }

    /// Waits (30 s at most) for the process to exit, after a signal the test sent itself.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not stop; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process's log so far. The gateway writes it from a thread of its own
    /// (gateway/src/logs.rs), a moment after the request that logged a line was answered, so
    /// this reads the file once it has stopped growing for 30 ms (at most 2 s).
    pub fn log(&self) -> String {
        let read = || std::fs::read_to_string(&self.log).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(30));
            let now = read();
            if now.len() == last.len() || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// `(status, body)` of an admin endpoint.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.admin))
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Replaces the snapshot file atomically (write + rename), as a kubelet volume update
    /// does.
    pub fn write_snapshot_bytes(&self, bytes: &[u8]) {
        let tmp = self.dir.path().join("snapshot.json.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.snapshot).unwrap();
    }

    /// Waits until `cond` holds on the admin metrics text.
    pub fn wait_metrics(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, m) = self.admin_get("/metrics");
            if cond(&m) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; metrics:\n{m}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test PKI: one CA issuing server and client certificates.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// `(chain pem, key pem)` for a server certificate covering `names`.
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `(cert pem, key pem)` for a client certificate with a URI SAN.
    pub fn client(&self, uri: &str) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "client");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `contents` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_string_lossy().into_owned()
}

/// A JWT signer with its JWKS.
pub struct Signer {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    pub jwks: Value,
}

impl Signer {
    pub fn new() -> Self {
        Self::with_kid("k1")
    }

    /// A signer whose key (and tokens) carry key id `kid`.
    pub fn with_kid(kid: &str) -> Self {
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        Self {
            key,
            kid: kid.to_string(),
            jwks,
        }
    }

    pub fn token(&self, sub: &str, groups: &[&str], exp_from_now: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.token_claims(json!({
            "iss": ISSUER, "aud": "rtn", "sub": sub, "iat": now, "exp": now + exp_from_now,
            "email": format!("{sub}@acme.test"), "email_verified": true, "groups": groups,
        }))
    }

    /// A token of `sub` valid for 5 minutes with `extra` claims on top (a `null` removes
    /// one of the usual claims).
    pub fn token_with(&self, sub: &str, extra: Value) -> String {
        let usual = self.token(sub, &[], 300);
        let payload = URL_SAFE_NO_PAD
            .decode(usual.split('.').nth(1).unwrap())
            .unwrap();
        let mut claims: Value = serde_json::from_slice(&payload).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.token_claims(claims)
    }

    fn token_claims(&self, claims: Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

/// The API-key hash for [`API_KEY`].
pub fn api_key_hash() -> String {
    rustronaut_contract::identity::apikey::hash_api_key(API_KEY, b"0123456789abcdef0123").unwrap()
}

/// An HTTPS server (certificate for `localhost` from `pki`) answering every request with
/// `body` as JSON (replaced with [`JwksServer::set_body`]), counting the requests.
pub struct JwksServer {
    pub port: u16,
    body: Arc<std::sync::Mutex<String>>,
    pub hits: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl JwksServer {
    pub fn start(pki: &Pki, body: String) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (chain, key) = pki.server(&["localhost"]);
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
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(std::sync::Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (shared, counted) = (body.clone(), hits.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let body = shared.lock().unwrap().clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 8192];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            port,
            body,
            hits,
            _rt: rt,
        }
    }

    /// What later requests are answered with.
    pub fn set_body(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

/// A TCP connection to the gateway (127.0.0.1:`port`) whose source address is `from`, any
/// address of 127.0.0.0/8 (all of it is the loopback on Linux): tests of which peers a
/// gateway trusts use 127.0.0.1 for an untrusted client and another loopback address for
/// the trusted load balancer.
pub fn connect_from(from: std::net::Ipv4Addr, port: u16) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from.into(), 0)).unwrap();
        let s = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap_or_else(|e| panic!("connecting from {from} to port {port}: {e}"));
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// Waits until `cond` holds, or fails with `what` and the gateway's log.
pub fn eventually(gw: &Gateway, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Secret `name` holding `snapshot` under the key the gateway reads.
pub fn snapshot_secret(name: &str, snapshot: &[u8]) -> k8s_openapi::api::core::v1::Secret {
    let mut s = k8s_openapi::api::core::v1::Secret::default();
    s.metadata.name = Some(name.to_string());
    s.data = Some(
        [(
            "snapshot.json".to_string(),
            k8s_openapi::ByteString(snapshot.to_vec()),
        )]
        .into_iter()
        .collect(),
    );
    s
}
