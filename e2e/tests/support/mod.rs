//! What the end-to-end tests share: child processes with logs, the operator installed with
//! exactly the RBAC it ships with, a world of Tenants, Gateways, Resources and Policies for it
//! to compile ([`World`]), `kubectl apply`, polling and percentiles.

#![allow(dead_code)] // each test binary uses a different part

use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustronaut_contract::snapshot::Snapshot;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use rustronaut_e2e::scenario;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

    /// Kills it with SIGKILL, as the OOM killer or a lost node does (no shutdown code runs:
    /// a Lease it holds is not released), and reaps it.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        // `Child::kill` sends SIGKILL on Unix.
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL to {}: {e}", self.child.id()));
        self.child.wait().unwrap()
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

/// [`wait_for_within`] for tests whose processes run as pods of the real node: on timeout
/// it panics with [`cluster_report`], since a pod that never came is explained by the node
/// (DiskPressure, an image that did not import) or by the operator's log, not by the test.
pub fn wait_in_cluster(
    cluster: &rustronaut_e2e::TestCluster,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; the cluster:\n{}",
                cluster_report(cluster)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the cluster looks like, for a failure message: the node's conditions and taints,
/// every pod with its phase, recent warning events, and the tail of the operator's log.
pub fn cluster_report(cluster: &rustronaut_e2e::TestCluster) -> String {
    let sections: [(&str, &[&str]); 4] = [
        (
            "node conditions and taints",
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{range .status.conditions[*]}  {.type}={.status} {.reason}: {.message}{\"\\n\"}{end}  taints: {.spec.taints}{\"\\n\"}{end}",
            ],
        ),
        ("pods", &["get", "pods", "-A", "-o", "wide"]),
        (
            "warning events",
            &[
                "get",
                "events",
                "-A",
                "--field-selector",
                "type=Warning",
                "--sort-by=.lastTimestamp",
            ],
        ),
        (
            "operator log (tail)",
            &[
                "-n",
                OPERATOR_NAMESPACE,
                "logs",
                "deployment/rustronaut-operator",
                "--tail=40",
            ],
        ),
    ];
    let mut out = String::new();
    for (title, args) in sections {
        let text = match cluster.kubectl().args(args).output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("kubectl: {e}"),
        };
        out.push_str(&format!("--- {title}\n{}\n", text.trim_end()));
    }
    out
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
    // Retried: `kubectl wait` fails at once ("accessor error: <nil>") instead of waiting
    // when it reads a CRD the API server has not given any condition yet (seen in CI).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let out = loop {
        let out = cluster
            .kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s"])
            .args(["crd/tenants.rustronaut.io", "crd/gateways.rustronaut.io"])
            .args(["crd/resources.rustronaut.io", "crd/policies.rustronaut.io"])
            .output()
            .unwrap();
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
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

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 server on `ip` (a free port), answering `body` with 200 to every
/// request, keep-alive included; each connection on a thread of its own. Returns its address.
pub fn http_server(ip: std::net::IpAddr, body: &'static str) -> std::net::SocketAddr {
    use std::io::Read;
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
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

/// A world for the operator to compile, every name derived from `prefix`: a platform
/// namespace `<prefix>-platform` with one Gateway `edge-<g>` per `tenants_per_gateway`
/// Tenants, admitting them by the label `<prefix>.rustronaut.io/gateway`; Tenants `t<t>`, each
/// owning namespace `<prefix>-t<t>` and domain `*.t<t>.<prefix>.example`, with a Service `app`
/// and its EndpointSlice, and `per_tenant` Resources `r<i>` each targeted by one Policy `p<i>`.
/// Gateway `edge-<g>` writes its snapshot to the Secret `edge-<g>-snapshot`; every Gateway
/// has one HTTP listener on [`Self::port`], and every `app` endpoint is [`Self::upstream`]
/// (a TEST-NET address nothing answers, unless a test serves one: [`Self::serving`]).
pub struct World {
    /// What every name starts with.
    pub prefix: &'static str,
    /// Number of Tenants.
    pub tenants: usize,
    /// Resources (and as many Policies) per Tenant.
    pub per_tenant: usize,
    /// Tenants admitted by each Gateway.
    pub tenants_per_gateway: usize,
    /// Number of Gateways.
    pub gateways: usize,
    /// The port of every Gateway's HTTP listener.
    pub port: u16,
    /// Every Tenant's `app` endpoint, or None for `192.0.2.<t>:8080`.
    pub upstream: Option<std::net::SocketAddr>,
}

impl World {
    /// `tenants` Tenants with `per_tenant` Resources and Policies each, `tenants_per_gateway`
    /// (at least 1) to a Gateway.
    pub fn new(
        prefix: &'static str,
        tenants: usize,
        per_tenant: usize,
        tenants_per_gateway: usize,
    ) -> Self {
        let tenants_per_gateway = tenants_per_gateway.max(1);
        Self {
            prefix,
            tenants,
            per_tenant,
            tenants_per_gateway,
            gateways: tenants.div_ceil(tenants_per_gateway),
            port: 8080,
            upstream: None,
        }
    }

    /// This world with every listener on `port` and every Tenant's `app` endpoint at
    /// `upstream` (a server of the test's, so a gateway process run from a snapshot forwards
    /// what a Policy allows and a test can tell allowed from denied).
    pub fn serving(mut self, port: u16, upstream: std::net::SocketAddr) -> Self {
        self.port = port;
        self.upstream = Some(upstream);
        self
    }

    /// The namespace of the Gateways (and their snapshot Secrets).
    pub fn platform(&self) -> String {
        format!("{}-platform", self.prefix)
    }

    /// The namespace of Tenant `t`.
    pub fn ns(&self, t: usize) -> String {
        format!("{}-t{t}", self.prefix)
    }

    /// The Gateway admitting Tenant `t`.
    pub fn gateway_of(&self, t: usize) -> usize {
        t / self.tenants_per_gateway
    }

    /// The CIDR an edit with `marker` adds to a Policy's rule, recognisable in the snapshot.
    pub fn marker_cidr(marker: usize) -> String {
        format!("192.168.{}.{}/32", marker / 256, marker % 256)
    }

    /// Policy `p<i>` of Tenant `t`: allows `10.<t>.<i>.0/24` to Resource `r<i>`; `marker`
    /// adds [`Self::marker_cidr`] to the rule.
    pub fn policy(&self, t: usize, i: usize, marker: Option<usize>) -> Value {
        let mut cidrs = vec![format!("10.{t}.{i}.0/24")];
        if let Some(m) = marker {
            cidrs.push(Self::marker_cidr(m));
        }
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": format!("p{i}"), "namespace": self.ns(t)},
            "spec": {
                "targetRefs": [{"kind": "Resource", "name": format!("r{i}")}],
                "action": "Allow",
                "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": cidrs}}]}],
                "tests": [
                    {"name": "office", "expect": "Allow", "request": {"sourceIP": format!("10.{t}.{i}.5")}},
                    {"name": "outsider", "expect": "Deny", "request": {"sourceIP": "203.0.113.9"}}
                ]
            }
        })
    }

    /// Creates every object with up to 16 requests in flight; returns how long that took.
    pub async fn create_all(&self, client: &kube::Client) -> Duration {
        let started = Instant::now();
        let pp = PostParams::default();
        let platform = self.platform();
        let label = format!("{}.rustronaut.io/gateway", self.prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut ns_names = vec![platform.clone()];
        ns_names.extend((0..self.tenants).map(|t| self.ns(t)));
        for ns in &ns_names {
            let obj = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            namespaces.create(&pp, &obj).await.unwrap();
        }
        let tenants: Api<Tenant> = Api::all(client.clone());
        for t in 0..self.tenants {
            let obj = serde_json::from_value(json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
                "metadata": {"name": format!("t{t}"),
                             "labels": {&label: format!("edge-{}", self.gateway_of(t))}},
                "spec": {"namespaces": [self.ns(t)], "adminNamespace": self.ns(t),
                         "domains": [format!("*.t{t}.{}.example", self.prefix)]}
            }))
            .unwrap();
            tenants.create(&pp, &obj).await.unwrap();
        }
        let gateways: Api<Gateway> = Api::namespaced(client.clone(), &platform);
        for g in 0..self.gateways {
            let obj = serde_json::from_value(json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
                "metadata": {"name": format!("edge-{g}")},
                "spec": {"tenants": {"from": "Selector", "selector": {"matchLabels":
                            {&label: format!("edge-{g}")}}},
                         "replicas": 1,
                         "listeners": [{"name": "http", "port": self.port, "protocol": "HTTP"}]}
            }))
            .unwrap();
            gateways.create(&pp, &obj).await.unwrap();
        }
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..self.tenants {
            let ns = self.ns(t);
            let service: Service = serde_json::from_value(json!({
                "metadata": {"name": "app", "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }))
            .unwrap();
            let (address, port) = match self.upstream {
                Some(a) => (a.ip().to_string(), a.port()),
                None => (format!("192.0.2.{}", t % 250 + 1), 8080),
            };
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "app-1", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": "app"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
            }))
            .unwrap();
            let mut objects: Vec<Value> = Vec::new();
            for i in 0..self.per_tenant {
                objects.push(json!({
                    "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
                    "metadata": {"name": format!("r{i}"), "namespace": ns},
                    "spec": {
                        "gatewayRefs": [{"namespace": platform, "name": format!("edge-{}", self.gateway_of(t))}],
                        "protocol": "HTTP",
                        "hostnames": [format!("r{i}.t{t}.{}.example", self.prefix)],
                        "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
                    }
                }));
                objects.push(self.policy(t, i, None));
            }
            let c = client.clone();
            let gate = limit.clone();
            let service_ns = ns.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let pp = PostParams::default();
                Api::<Service>::namespaced(c.clone(), &service_ns)
                    .create(&pp, &service)
                    .await
                    .unwrap();
                Api::<EndpointSlice>::namespaced(c.clone(), &service_ns)
                    .create(&pp, &slice)
                    .await
                    .unwrap();
            });
            for obj in objects {
                let c = client.clone();
                let gate = limit.clone();
                let ns = ns.clone();
                tasks.spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let pp = PostParams::default();
                    if obj["kind"] == "Resource" {
                        let r: RtnResource = serde_json::from_value(obj).unwrap();
                        Api::<RtnResource>::namespaced(c, &ns)
                            .create(&pp, &r)
                            .await
                            .unwrap();
                    } else {
                        let p: Policy = serde_json::from_value(obj).unwrap();
                        Api::<Policy>::namespaced(c, &ns)
                            .create(&pp, &p)
                            .await
                            .unwrap();
                    }
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        started.elapsed()
    }

    /// The snapshot of Gateway `edge-<g>` (`secrets`: the platform namespace's), if written
    /// and loadable.
    pub async fn snapshot(secrets: &Api<Secret>, g: usize) -> Option<Snapshot> {
        let s = secrets
            .get_opt(&format!("edge-{g}-snapshot"))
            .await
            .ok()??;
        let bytes = s.data?.get("snapshot.json")?.0.clone();
        Some(Snapshot::load(&bytes).expect("the operator writes snapshots that load"))
    }

    /// Whether snapshot `s` of Gateway `g` holds exactly the Resources and Policies of its
    /// Tenants.
    pub fn complete(&self, s: &Snapshot, g: usize) -> bool {
        let want: Vec<usize> = (0..self.tenants)
            .filter(|t| self.gateway_of(*t) == g)
            .collect();
        let n = want.len() * self.per_tenant;
        s.resources.len() == n
            && s.policies.len() == n
            && want.iter().all(|t| {
                (0..self.per_tenant).all(|i| s.resource(&self.ns(*t), &format!("r{i}")).is_some())
            })
    }
}
