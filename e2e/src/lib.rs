//! Rustronaut's test ground: a real Kubernetes control plane built from the Kubernetes Go
//! modules (see `e2e/scripts/tools.sh`), for every test that talks to Kubernetes.
//!
//! - [`controlplane`]: starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//!   kwok as child processes (used by the `rustronaut-cluster` binary), and with a real node
//!   ([`node`]) containerd, the kubelet, kube-proxy and kube-router.
//! - [`certmanager`]: cert-manager's real controllers (built from its Go module) and CRDs, for
//!   tests of what cert-manager issues.
//! - [`image`]: the project's container images, built without a registry or container engine
//!   (the `rustronaut-image` binary).
//! - [`shared`] / [`client`]: what a test uses. The first call in a test binary starts one
//!   cluster through `rustronaut-cluster up --watch-stdin`, shared by every test of that binary;
//!   the cluster goes away when the test binary exits, however it exits, because the
//!   supervisor's standard input closes. [`shared_real_node`] is the same with a real node and
//!   the project's images imported: for tests whose pods must really run.
//! - With `E2E_USE_EXISTING_CLUSTER=1`, tests run against the cluster of `$KUBECONFIG` instead.
//!
//! Tests share a cluster, so each works in namespaces of its own ([`namespace`]).

pub mod certmanager;
pub mod controlplane;
pub mod image;
pub mod node;
pub mod otlp;
pub mod pki;
pub mod scenario;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Environment variable: directory of the Go-built binaries (skips `tools.sh`).
pub const TOOLS_BIN_ENV: &str = "RUSTRONAUT_TOOLS_BIN";
/// Environment variable: `1` runs the tests against `$KUBECONFIG` instead of a local cluster.
pub const USE_EXISTING_ENV: &str = "E2E_USE_EXISTING_CLUSTER";
/// Environment variable: path of the `rustronaut-cluster` binary.
pub const CLUSTER_BIN_ENV: &str = "RUSTRONAUT_CLUSTER_BIN";

/// Path of the tool-building script in this checkout.
pub fn tools_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tools.sh")
}

/// Builds the Go tools if they are not cached yet and returns their directory. Honours
/// [`TOOLS_BIN_ENV`].
pub fn build_tools() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(TOOLS_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let out = Command::new("bash")
        .arg(tools_script())
        .arg("build")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("failed to run {}: {e}", tools_script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({})",
            tools_script().display(),
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| "tools.sh printed no bin directory".to_string())
}

/// Sends `signal` to `pid`; false if the process does not exist.
pub fn signal(pid: i32, signal: i32) -> bool {
    controlplane::send_signal(pid, signal)
}

/// The cluster every test of one test binary shares.
#[derive(Debug)]
pub struct TestCluster {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    bin_dir: Option<PathBuf>,
    /// Keeps the supervisor's stdin open: closing it (at process exit) stops the cluster.
    _supervisor: Option<Mutex<(Child, ChildStdin)>>,
}

impl TestCluster {
    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` command already pointed at this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Directory of the Go-built tools (None when running against an existing cluster without
    /// [`TOOLS_BIN_ENV`]).
    pub fn bin_dir(&self) -> Option<&Path> {
        self.bin_dir.as_deref()
    }

    /// A new client for the calling test's runtime (a `kube::Client` is bound to the Tokio
    /// runtime that created it, and every `#[tokio::test]` has its own).
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", self.kubeconfig.display()));
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("loading kubeconfig {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(cfg).expect("building kube client")
    }

    /// A client that impersonates `user` in `groups`, so a test can prove what a component's
    /// ServiceAccount may and may not do under the RBAC it ships with.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", self.kubeconfig.display()));
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("loading kubeconfig {}: {e}", self.kubeconfig.display()));
        cfg.auth_info.impersonate = Some(user.to_string());
        cfg.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        kube::Client::try_from(cfg).expect("building impersonating kube client")
    }
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The cluster of this test binary, started on first use. Panics with the reason (and the
/// failing component's log) if it cannot start.
pub fn shared() -> &'static TestCluster {
    match SHARED.get_or_init(|| start_shared(false)) {
        Ok(c) => c,
        Err(e) => panic!("test cluster unavailable: {e}"),
    }
}

/// The cluster of this test binary with a real node (containerd, kubelet, kube-proxy,
/// kube-router) and the project's images imported; started on first use. A test binary uses
/// either this or [`shared`], never both (one supervisor per binary). Needs root.
pub fn shared_real_node() -> &'static TestCluster {
    match SHARED.get_or_init(|| start_shared(true)) {
        Ok(c) => c,
        Err(e) => panic!("test cluster with a real node unavailable: {e}"),
    }
}

/// Reference of one of the project's images as the real node knows it
/// (`localhost/rustronaut/<name>:dev`).
pub fn image_ref(name: &str) -> String {
    format!(
        "{}/{name}:{}",
        image::DEFAULT_REPOSITORY,
        image::DEFAULT_TAG
    )
}

/// Builds the project's images from the binaries next to the running test binary
/// (`target/<profile>`, where `cargo build --bins` put them) into `target/<profile>/images`.
pub fn build_images() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin_dir = exe
        .ancestors()
        .skip(1)
        .take(3)
        .find(|d| d.join("rustronaut-operator").is_file())
        .ok_or("the project's binaries are not built next to this test: run `cargo build --workspace --bins` (make test does)")?
        .to_path_buf();
    let out_dir = bin_dir.join("images");
    let opts = image::BuildOptions {
        bin_dir,
        out_dir: out_dir.clone(),
        repository: image::DEFAULT_REPOSITORY.into(),
        tag: image::DEFAULT_TAG.into(),
        revision: "test".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        source: "https://github.com/rustronaut/rustronaut".into(),
        strip: true,
    };
    for spec in image::IMAGES {
        image::build(spec, &opts).map_err(|e| format!("building image {}: {e}", spec.name))?;
    }
    Ok(out_dir)
}

/// A client for the shared cluster.
pub async fn client() -> kube::Client {
    test_logs();
    shared().client().await
}

/// Sends the `tracing` output of the code under test (the operator's controllers run
/// in-process in many tests) to the test harness's captured output, so a failing test prints
/// what the controllers did and a passing one prints nothing. `RUST_LOG` overrides the default
/// filter (`info`). Idempotent: the first call in a test binary installs the subscriber.
pub fn test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// Creates a namespace named `<prefix>-<random suffix>` and returns its name. Tests share a
/// cluster, so each one works in namespaces of its own.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let name = format!("{prefix}-{}", random_suffix());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"rustronaut.io/test": "true"}}
    }))
    .expect("namespace manifest");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Eight lowercase alphanumerics, unique enough for names within one cluster.
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    let mut n = h.finish();
    (0..8)
        .map(|_| {
            let c = b"abcdefghijklmnopqrstuvwxyz0123456789"[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect()
}

fn start_shared(real_node: bool) -> Result<TestCluster, String> {
    if std::env::var(USE_EXISTING_ENV).as_deref() == Ok("1") {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")))
            .ok_or("E2E_USE_EXISTING_CLUSTER=1 needs KUBECONFIG")?;
        let bin_dir = std::env::var_os(TOOLS_BIN_ENV).map(PathBuf::from);
        let kubectl = bin_dir
            .as_ref()
            .map(|b| b.join("kubectl"))
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        return Ok(TestCluster {
            kubeconfig,
            kubectl,
            bin_dir,
            _supervisor: None,
        });
    }

    let bin_dir = build_tools()?;
    let supervisor = cluster_binary()?;
    let mut cmd = Command::new(&supervisor);
    cmd.args(["up", "--watch-stdin", "--bin-dir"]).arg(&bin_dir);
    if real_node {
        cmd.args(["--real-node", "--nodes", "1", "--images"])
            .arg(build_images()?);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("failed to run {}: {e}", supervisor.display()))?;
    let stdin = child.stdin.take().ok_or("supervisor has no stdin")?;
    let stdout = child.stdout.take().ok_or("supervisor has no stdout")?;
    let mut kubeconfig = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading supervisor output: {e}"))?;
        if let Some(path) = line.strip_prefix("KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(path));
            break;
        }
    }
    let kubeconfig = match kubeconfig {
        Some(k) => k,
        None => {
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!(
                "rustronaut-cluster exited ({status}) before the cluster was ready; see its output above"
            ));
        }
    };
    Ok(TestCluster {
        kubeconfig,
        kubectl: bin_dir.join("kubectl"),
        bin_dir: Some(bin_dir),
        _supervisor: Some(Mutex::new((child, stdin))),
    })
}

/// Finds `rustronaut-cluster`: [`CLUSTER_BIN_ENV`], else next to the running test binary's
/// directory (`target/<profile>/deps/..`), where `cargo test` and `cargo build` put it.
fn cluster_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(CLUSTER_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("rustronaut-cluster"))
        .collect::<Vec<_>>();
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "rustronaut-cluster binary not found next to the test binary: run `cargo build -p rustronaut-e2e` \
         (make test does) or set RUSTRONAUT_CLUSTER_BIN"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_suffixes_are_dns_labels_and_differ() {
        let a = super::random_suffix();
        let b = super::random_suffix();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.len(), 8);
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            );
        }
    }
}
