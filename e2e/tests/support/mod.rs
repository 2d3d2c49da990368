//! What the end-to-end tests share: child processes with logs, the operator installed with
//! exactly the RBAC it ships with, `kubectl apply`, polling and percentiles.

#![allow(dead_code)] // each test binary uses a different part

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use rustronaut_e2e::scenario;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Field manager of what the tests apply.
pub const MANAGER: &str = "rustronaut-e2e";
/// Namespace of the operator's ServiceAccount and Lease.
pub const OPERATOR_NAMESPACE: &str = "rustronaut-system";
/// The operator's ServiceAccount.
pub const OPERATOR_ACCOUNT: &str = "rustronaut-operator";

/// A child process killed on drop, its output in a file.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Self { child, log }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as Kubernetes does (SIGTERM) and waits up to 30 s for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM to {}", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 30 s after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms for up to `timeout`; on timeout panics with the logs of `logs`.
pub fn wait_for_within(
    what: &str,
    timeout: Duration,
    logs: &[&Proc],
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "timed out waiting for {what}; logs:\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_for_within`] 90 seconds.
pub fn wait_for(what: &str, logs: &[&Proc], cond: impl FnMut() -> bool) {
    wait_for_within(what, Duration::from_secs(90), logs, cond)
}

/// `kubectl apply --server-side` of `yaml` (read from stdin).
pub fn kubectl_apply(cluster: &rustronaut_e2e::TestCluster, yaml: &str) {
    let mut child = cluster
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            MANAGER,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply -f crds/` and wait until the four CRDs are Established.
pub fn install_crds(cluster: &rustronaut_e2e::TestCluster) {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let out = cluster
        .kubectl()
        .args(["apply", "--server-side", "--field-manager", MANAGER, "-f"])
        .arg(&crds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s"])
        .args(["crd/tenants.rustronaut.io", "crd/gateways.rustronaut.io"])
        .args(["crd/resources.rustronaut.io", "crd/policies.rustronaut.io"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's namespace, ServiceAccount and RBAC, exactly as shipped
/// (`rustronaut_operator::rbac`).
pub async fn install_operator_rbac(admin: &kube::Client) {
    let ssa = PatchParams::apply(MANAGER).force();
    let op_ns = OPERATOR_NAMESPACE;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": op_ns}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .patch(op_ns, &ssa, &Patch::Apply(&ns))
        .await
        .unwrap();
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": OPERATOR_ACCOUNT, "namespace": op_ns}}))
    .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), op_ns)
        .patch(OPERATOR_ACCOUNT, &ssa, &Patch::Apply(&sa))
        .await
        .unwrap();
    let cr = rustronaut_operator::rbac::cluster_role();
    Api::<ClusterRole>::all(admin.clone())
        .patch(rustronaut_operator::rbac::NAME, &ssa, &Patch::Apply(&cr))
        .await
        .unwrap();
    // What a Tenant's admins get in its namespaces (the operator may only bind this).
    let tenant_admin = rustronaut_operator::rbac::tenant_admin_cluster_role();
    let name = tenant_admin.metadata.name.clone().unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .patch(&name, &ssa, &Patch::Apply(&tenant_admin))
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATOR_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": rustronaut_operator::rbac::NAME},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT,
                      "namespace": op_ns}]}))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(OPERATOR_ACCOUNT, &ssa, &Patch::Apply(&crb))
        .await
        .unwrap();
    let lease = rustronaut_operator::rbac::lease_role(op_ns);
    Api::<Role>::namespaced(admin.clone(), op_ns)
        .patch(rustronaut_operator::rbac::NAME, &ssa, &Patch::Apply(&lease))
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": OPERATOR_ACCOUNT, "namespace": op_ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": rustronaut_operator::rbac::NAME},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT,
                      "namespace": op_ns}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), op_ns)
        .patch(OPERATOR_ACCOUNT, &ssa, &Patch::Apply(&rb))
        .await
        .unwrap();
}

/// The operator binary next to the test binary (or `RUSTRONAUT_OPERATOR_BIN`: `make
/// bench-operator` measures a release operator from the debug test harness), as its
/// ServiceAccount (an impersonating kubeconfig written into `dir`), with leader election,
/// metrics on a free loopback port. Returns the process and the metrics address.
pub fn start_operator(cluster: &rustronaut_e2e::TestCluster, dir: &Path) -> (Proc, String) {
    start_operator_with(cluster, dir, &[])
}

/// [`start_operator`] with `extra` arguments.
pub fn start_operator_with(
    cluster: &rustronaut_e2e::TestCluster,
    dir: &Path,
    extra: &[&str],
) -> (Proc, String) {
    let kubeconfig = dir.join("operator.kubeconfig");
    scenario::impersonating_kubeconfig(
        cluster.kubeconfig(),
        OPERATOR_NAMESPACE,
        OPERATOR_ACCOUNT,
        &kubeconfig,
    )
    .unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let binary = std::env::var_os("RUSTRONAUT_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| scenario::sibling_binary("rustronaut-operator").unwrap());
    let mut cmd = Command::new(binary);
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "rustronaut-operator-e2e")
        .env("RUST_LOG", "info")
        .args(["--metrics-listen", &metrics])
        .args(["--lease-namespace", OPERATOR_NAMESPACE])
        .args(extra);
    (Proc::spawn(cmd, dir.join("operator.log")), metrics)
}

/// The `p` quantile (0..=1) of sorted durations, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs `cmd`, panics with its output unless it succeeds, and returns its standard output.
pub fn run(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm` from `bin_dir` (the Go-built tools) with its caches and configuration in a
/// directory of its own, never under $HOME; with `cluster`, pointed at that cluster.
pub fn helm(bin_dir: &Path, cluster: Option<&rustronaut_e2e::TestCluster>) -> Command {
    let mut cmd = Command::new(bin_dir.join("helm"));
    let home = std::env::temp_dir().join("rustronaut-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(c) = cluster {
        cmd.env("KUBECONFIG", c.kubeconfig());
    }
    cmd
}
