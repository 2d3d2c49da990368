//! Starts and stops a local Kubernetes control plane made of the real components, each a child
//! process of the caller, on free loopback ports inside one directory:
//!
//! ```text
//!   etcd ◄── kube-apiserver (RBAC, client-cert admin, ServiceAccount admission)
//!                ▲
//!                ├── kube-controller-manager  (Deployments → ReplicaSets → Pods, GC, SA tokens, CSRs)
//!                ├── kube-scheduler           (binds Pods to nodes)
//!                ├── kwok                     (fake Nodes that turn Ready; bound Pods turn Running)
//!                └── with `real_node`: containerd, kubelet, kube-proxy, kube-router (see [`crate::node`])
//! ```
//!
//! With a real node the apiserver listens on the node's address ([`node::NODE_IP`]) instead of
//! 127.0.0.1, so pods reach it through the `kubernetes` Service, and kwok only manages the fake
//! nodes, which are then tainted so that ordinary pods run for real.
//!
//! Everything lives in `dir`: `pki/`, `etcd/`, `logs/<component>.log`, and `kubeconfig`
//! (admin, client certificate). [`ControlPlane::start`] returns only when the apiserver is
//! ready, the nodes are Ready, and the `default` ServiceAccount exists (so Pods can be created
//! with ServiceAccount admission on). Dropping the [`ControlPlane`] stops every component.
//!
//! Each child is started with `PR_SET_PDEATHSIG = SIGKILL`, so even if the supervising process
//! is killed outright (SIGKILL, OOM), no etcd or apiserver outlives it.
//!
//! This module is synchronous on purpose: it runs inside the `rustronaut-cluster` supervisor
//! binary, whose main thread owns the children for their whole life (the parent-death signal
//! is tied to the thread that spawned the child).

use crate::image;
use crate::node::{self, HostState, NodeLock};
use crate::pki::{self, Pki};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long each start phase may take before the start is declared failed. A cold apiserver on
/// a loaded 2-core machine needs 10-20 s; the margin covers CI noise.
const PHASE_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a second real node waits for the first one to go away.
const NODE_LOCK_WAIT: Duration = Duration::from_secs(900);
/// Service IP range of the apiserver.
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// Errors while starting or supervising the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// A binary is missing from the tools directory.
    #[error("{name} not found at {path}: build the tools with e2e/scripts/tools.sh")]
    MissingBinary {
        /// The component.
        name: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// Key material could not be generated.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A filesystem operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A component could not be started.
    #[error("failed to start {name}: {source}")]
    Spawn {
        /// The component.
        name: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A component exited while it should be running.
    #[error("{name} exited unexpectedly ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// The component.
        name: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A component died while the control plane was starting.
    #[error("{name} died while the control plane was starting; last lines of {log}:\n{tail}")]
    Died {
        /// The component.
        name: &'static str,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A readiness condition did not hold within [`PHASE_TIMEOUT`].
    #[error("timed out after {}s waiting for {what}; last error: {last}", PHASE_TIMEOUT.as_secs())]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The last failure seen while polling.
        last: String,
    },
    /// No free port could be found on loopback.
    #[error("no free loopback port: {0}")]
    NoPort(std::io::Error),
    /// The real node could not be set up.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// An image could not be built.
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd,
    /// kwok and kwok-stages.yaml (what `e2e/scripts/tools.sh build` prints).
    pub bin_dir: PathBuf,
    /// Working directory of this cluster (created if absent).
    pub dir: PathBuf,
    /// Number of fake kwok nodes.
    pub nodes: usize,
    /// Also run a real node (root only; one per machine).
    pub real_node: bool,
    /// Image tar files to import into the real node's containerd (every `*.tar` here).
    pub images_dir: Option<PathBuf>,
    /// Program to start, detached, as `<reaper> reap --pid <this process>`: it cleans up the
    /// real node if this process dies without doing so (SIGKILL, OOM).
    pub reaper: Option<PathBuf>,
    /// Whether the reaper, when it has to clean up after this process, also removes
    /// [`Self::dir`] (the owner would have removed it on a normal stop: a temporary
    /// directory, not one asked to be kept).
    pub reap_dir: bool,
}

struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane. Dropping it stops every component (newest first).
pub struct ControlPlane {
    components: Vec<Component>,
    dir: PathBuf,
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    apiserver_port: u16,
    /// The real node's host state (what to restore) and the machine-wide lock.
    node: Option<(HostState, NodeLock)>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, creates
    /// the fake nodes, and waits until the cluster can run Pods.
    pub fn start(cfg: &Config) -> Result<Self, ControlPlaneError> {
        let bin = |name: &'static str| -> Result<PathBuf, ControlPlaneError> {
            let path = cfg.bin_dir.join(name);
            if path.exists() {
                Ok(path)
            } else {
                Err(ControlPlaneError::MissingBinary { name, path })
            }
        };
        // kubectl is used for readiness checks: fail now, with its path, if it is missing.
        bin("kubectl")?;
        let (etcd, apiserver, kcm, scheduler, kwok, stages) = (
            bin("etcd")?,
            bin("kube-apiserver")?,
            bin("kube-controller-manager")?,
            bin("kube-scheduler")?,
            bin("kwok")?,
            bin("kwok-stages.yaml")?,
        );
        for sub in ["pki", "etcd", "logs", "apiserver"] {
            mkdir(&cfg.dir.join(sub))?;
        }
        let pki = pki::generate(&cfg.dir.join("pki"))?;

        let ports = free_ports(6)?;
        let (etcd_client, etcd_peer, api, kcm_port, sched_port, kwok_port) =
            (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]);
        // With a real node, pods reach the apiserver on the node's address.
        let api_host = if cfg.real_node {
            node::NODE_IP
        } else {
            "127.0.0.1"
        };
        let kubeconfig = cfg.dir.join("kubeconfig");
        write_file(
            &kubeconfig,
            &kubeconfig_for(
                &pki.ca_pem,
                &format!("https://{api_host}:{api}"),
                (&pki.admin_cert_pem, &pki.admin_key_pem),
            ),
        )?;

        let mut cp = ControlPlane {
            components: Vec::new(),
            dir: cfg.dir.clone(),
            bin_dir: cfg.bin_dir.clone(),
            kubeconfig: kubeconfig.clone(),
            apiserver_port: api,
            node: None,
        };
        if cfg.real_node {
            cp.prepare_node(cfg)?;
        }

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cp.spawn(
            "etcd",
            &etcd,
            &[
                "--name=default".into(),
                format!("--data-dir={}", cfg.dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // A test cluster's data is thrown away: skipping fsync makes writes ~10x faster.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        cp.wait("etcd to report healthy", || {
            http_get_plain(etcd_client, "/health").and_then(|body| {
                if body.contains("\"health\":\"true\"") {
                    Ok(())
                } else {
                    Err(body)
                }
            })
        })?;

        let cert_dir = cfg.dir.join("apiserver");
        let mut node_args = Vec::new();
        if cfg.real_node {
            // The `kubernetes` Service's endpoint is this address (lease reconciler), and the
            // apiserver authenticates to the kubelet (logs, exec) as the admin.
            node_args.extend([
                format!("--kubelet-client-certificate={}", pki.admin_cert.display()),
                format!("--kubelet-client-key={}", pki.admin_key.display()),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]);
        } else {
            // No Pod serves the `kubernetes` Service here and a loopback address may not be
            // an Endpoint, so the reconciler would only log errors.
            node_args.push("--endpoint-reconciler-type=none".into());
        }
        cp.spawn(
            "kube-apiserver",
            &apiserver,
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", cert_dir.display()),
                format!("--secure-port={api}"),
                format!("--bind-address={api_host}"),
                format!("--advertise-address={api_host}"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true".into(),
                "--authorization-mode=Node,RBAC".into(),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", pki.sa_pub.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_key.display()
                ),
                "--profiling=false".into(),
            ]
            .into_iter()
            .chain(node_args)
            .collect::<Vec<_>>(),
        )?;
        cp.wait("kube-apiserver /readyz", || {
            cp.kubectl_output(&["get", "--raw", "/readyz"])
                .and_then(|out| if out.trim() == "ok" { Ok(()) } else { Err(out) })
        })?;

        let kc = kubeconfig.display().to_string();
        cp.spawn(
            "kube-controller-manager",
            &kcm,
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                format!(
                    "--service-account-private-key-file={}",
                    pki.sa_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                format!("--cluster-signing-cert-file={}", pki.ca_cert.display()),
                format!("--cluster-signing-key-file={}", pki.ca_key.display()),
                "--use-service-account-credentials=true".into(),
                "--profiling=false".into(),
            ],
        )?;
        cp.spawn(
            "kube-scheduler",
            &scheduler,
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={sched_port}"),
                "--profiling=false".into(),
            ],
        )?;
        cp.spawn(
            "kwok",
            &kwok,
            &[
                format!("--kubeconfig={kc}"),
                format!("--config={}", stages.display()),
                // Only the fake nodes: a real node beside them is the kubelet's.
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--cidr={}", node::FAKE_POD_CIDR),
                "--node-ip=10.245.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
                format!("--server-address=127.0.0.1:{kwok_port}"),
            ],
        )?;

        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &nodes_manifest(cfg.nodes, cfg.real_node),
        )
        .map_err(|last| ControlPlaneError::Timeout {
            what: "the fake nodes to be created",
            last,
        })?;
        if cfg.real_node {
            cp.start_node(cfg, &pki, api)?;
        }
        let want_nodes = cfg.nodes + usize::from(cfg.real_node);
        cp.wait("every node to be Ready", || {
            let out = cp.kubectl_output(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])?;
            let ready = out.lines().filter(|l| l.trim() == "True").count();
            if ready == want_nodes {
                Ok(())
            } else {
                Err(format!("{ready}/{want_nodes} nodes Ready"))
            }
        })?;
        cp.wait("the default ServiceAccount", || {
            cp.kubectl_output(&[
                "get",
                "serviceaccount",
                "default",
                "-n",
                "default",
                "-o",
                "name",
            ])
            .map(drop)
        })?;
        Ok(cp)
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The apiserver's HTTPS port on 127.0.0.1.
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// Fails if any component has exited.
    pub fn check_alive(&mut self) -> Result<(), ControlPlaneError> {
        for c in &mut self.components {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(ControlPlaneError::Exited {
                    name: c.name,
                    status,
                    log: c.log.clone(),
                    tail: tail(&c.log, 30),
                });
            }
        }
        Ok(())
    }

    /// Whether a real node runs.
    pub fn has_real_node(&self) -> bool {
        self.node.is_some()
    }

    /// Stops every component, newest first: SIGTERM, then SIGKILL after a grace period; then
    /// leaves the host as the real node found it (see [`node::cleanup`]).
    pub fn stop(&mut self) {
        while let Some(mut c) = self.components.pop() {
            terminate(&mut c.child, Duration::from_secs(5));
        }
        if let Some((state, lock)) = self.node.take() {
            for problem in node::cleanup(&state) {
                eprintln!("rustronaut-cluster: node cleanup: {problem}");
            }
            drop(lock);
        }
    }

    /// Takes the machine-wide node lock, cleans up after a node that died without doing so,
    /// saves the host state and gives the node its address (before the apiserver binds it).
    fn prepare_node(&mut self, cfg: &Config) -> Result<(), ControlPlaneError> {
        node::preflight(&cfg.bin_dir, &cfg.dir)?;
        let lock = NodeLock::acquire(NODE_LOCK_WAIT)?;
        if let Some(old) = HostState::load() {
            eprintln!(
                "rustronaut-cluster: cleaning up after a real node that did not stop (pid {}, {})",
                old.owner_pid,
                old.node_dir.display()
            );
            for problem in node::cleanup(&old) {
                eprintln!("rustronaut-cluster: node cleanup: {problem}");
            }
        }
        let node_dir = cfg.dir.join("node");
        mkdir(&node_dir)?;
        let state = match node::prepare_host(&node_dir) {
            Ok(state) => state,
            Err(e) => {
                // Undo the part that was done; the state file was written first.
                if let Some(partial) = HostState::load() {
                    node::cleanup(&partial);
                }
                return Err(e.into());
            }
        };
        self.node = Some((state, lock));
        if let Some(reaper) = &cfg.reaper {
            let dir = cfg.reap_dir.then_some(self.dir.as_path());
            spawn_reaper(reaper, &self.dir.join("logs").join("reaper.log"), dir)?;
        }
        Ok(())
    }

    /// Starts containerd (and imports the images), the kubelet, kube-proxy and kube-router,
    /// then waits for the node to be Ready and the NetworkPolicy chains to exist.
    fn start_node(&mut self, cfg: &Config, pki: &Pki, api: u16) -> Result<(), ControlPlaneError> {
        let nd = cfg.dir.join("node");
        for sub in ["containerd", "cni/net.d", "kubelet/pki", "pki", "images"] {
            mkdir(&nd.join(sub))?;
        }
        let server = format!("https://{}:{api}", node::NODE_IP);
        let kubelet_kc = nd.join("pki/kubelet.kubeconfig");
        let proxy_kc = nd.join("pki/kube-proxy.kubeconfig");
        write_file(
            &kubelet_kc,
            &kubeconfig_for(
                &pki.ca_pem,
                &server,
                (&pki.kubelet_pem.0, &pki.kubelet_pem.1),
            ),
        )?;
        write_file(
            &proxy_kc,
            &kubeconfig_for(&pki.ca_pem, &server, (&pki.proxy_pem.0, &pki.proxy_pem.1)),
        )?;

        // The sandbox image, from the pause.c that ships in the k8s.io/kubernetes module.
        let pause = image::build(
            &image::PAUSE,
            &image::BuildOptions {
                bin_dir: cfg.bin_dir.clone(),
                out_dir: nd.join("images"),
                repository: image::DEFAULT_REPOSITORY.into(),
                tag: image::DEFAULT_TAG.into(),
                revision: "kubernetes build/pause".into(),
                version: "local".into(),
                source: "https://github.com/kubernetes/kubernetes/tree/master/build/pause".into(),
                strip: false,
            },
        )?;
        let containerd_cfg = nd.join("containerd/config.toml");
        write_file(
            &containerd_cfg,
            &node::containerd_config(&nd, &pause.reference),
        )?;
        write_file(
            &nd.join("cni/net.d/10-rtn-pods.conflist"),
            &node::cni_config(),
        )?;
        let containerd = node::which("containerd").ok_or_else(|| {
            node::NodeError::Missing("containerd".into(), "apt-get install containerd".into())
        })?;
        self.spawn(
            "containerd",
            &containerd,
            &["--config".into(), containerd_cfg.display().to_string()],
        )?;
        let sock = format!("{}/containerd/containerd.sock", node::RUN_DIR);
        self.wait("containerd to answer", || {
            node::run("ctr", &["--address", &sock, "version"])
                .map(drop)
                .map_err(|e| e.to_string())
        })?;
        let mut tars = vec![pause.path.clone()];
        if let Some(dir) = &cfg.images_dir {
            let mut more: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| ControlPlaneError::Io {
                    action: "read",
                    path: dir.clone(),
                    source,
                })?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .collect();
            more.sort();
            tars.extend(more);
        }
        for tar in &tars {
            let path = tar.display().to_string();
            node::run(
                "ctr",
                &[
                    "--address",
                    &sock,
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    &path,
                ],
            )?;
        }

        let kubelet_cfg = nd.join("kubelet-config.yaml");
        write_file(&kubelet_cfg, &node::kubelet_config(&nd, &pki.ca_cert))?;
        let kubelet = self.bin_dir.join("kubelet");
        self.spawn(
            "kubelet",
            &kubelet,
            &[
                format!("--config={}", kubelet_cfg.display()),
                format!("--kubeconfig={}", kubelet_kc.display()),
                format!("--hostname-override={}", node::NODE_NAME),
                format!("--node-ip={}", node::NODE_IP),
                format!("--root-dir={}", nd.join("kubelet").display()),
                format!("--cert-dir={}", nd.join("kubelet/pki").display()),
                format!("--node-labels={}=true", node::REAL_NODE_LABEL),
                "--v=1".into(),
            ],
        )?;
        let proxy_cfg = nd.join("kube-proxy.yaml");
        write_file(&proxy_cfg, &node::kube_proxy_config(&proxy_kc))?;
        let proxy = self.bin_dir.join("kube-proxy");
        self.spawn(
            "kube-proxy",
            &proxy,
            &[format!("--config={}", proxy_cfg.display()), "--v=1".into()],
        )?;
        self.wait("the real node to be Ready", || {
            self.kubectl_output(&[
                "get",
                "node",
                node::NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .and_then(|s| {
                if s.trim() == "True" {
                    Ok(())
                } else {
                    Err(format!("Ready={s}"))
                }
            })
        })?;
        let corefile = nd.join("Corefile");
        write_file(&corefile, &node::corefile(&self.kubeconfig))?;
        let coredns = self.bin_dir.join("coredns");
        self.spawn(
            "coredns",
            &coredns,
            &["-conf".into(), corefile.display().to_string()],
        )?;
        // kube-router finds its node by name: start it once the kubelet registered it.
        let router = self.bin_dir.join("kube-router");
        self.spawn(
            "kube-router",
            &router,
            &[
                format!("--kubeconfig={}", self.kubeconfig.display()),
                format!("--hostname-override={}", node::NODE_NAME),
                "--run-router=false".into(),
                "--run-service-proxy=false".into(),
                "--run-firewall=true".into(),
                "--enable-cni=false".into(),
                "--health-port=0".into(),
                "--metrics-port=0".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            ],
        )?;
        self.wait("kube-router's NetworkPolicy chains", || {
            let rules = node::run("iptables-save", &["-t", "filter"]).map_err(|e| e.to_string())?;
            if rules.contains("KUBE-ROUTER-") {
                Ok(())
            } else {
                Err("no KUBE-ROUTER chain yet".into())
            }
        })?;
        Ok(())
    }

    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        bin: &Path,
        args: &[String],
    ) -> Result<(), ControlPlaneError> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|source| ControlPlaneError::Io {
            action: "create",
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ControlPlaneError::Io {
            action: "clone handle of",
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(&self.dir);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|source| ControlPlaneError::Spawn { name, source })?;
        self.components.push(Component { name, child, log });
        Ok(())
    }

    /// Polls `check` until it succeeds, failing early if a component dies.
    fn wait(
        &self,
        what: &'static str,
        mut check: impl FnMut() -> Result<(), String>,
    ) -> Result<(), ControlPlaneError> {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let last = match check() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // A component that died will never become ready: report its log instead of waiting.
            for c in &self.components {
                if !is_running(c.child.id()) {
                    return Err(ControlPlaneError::Died {
                        name: c.name,
                        log: c.log.clone(),
                        tail: tail(&c.log, 30),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(ControlPlaneError::Timeout { what, last });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=10s");
        cmd
    }

    fn kubectl_output(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl()
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawned it dies, so that no
/// component outlives a supervisor that was itself killed without a chance to clean up.
/// Also used for the cert-manager controller ([`crate::certmanager`]).
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `<reaper> reap --pid <us> [--dir DIR]` in a session of its own, neither a child
/// that dies with us nor one that shares our terminal's signals: it cleans up the real node
/// (and removes `dir`) if we cannot.
#[allow(unsafe_code)]
fn spawn_reaper(reaper: &Path, log: &Path, dir: Option<&Path>) -> Result<(), ControlPlaneError> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).map_err(|source| ControlPlaneError::Io {
        action: "create",
        path: log.to_path_buf(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| ControlPlaneError::Io {
        action: "clone handle of",
        path: log.to_path_buf(),
        source,
    })?;
    let mut cmd = Command::new(reaper);
    cmd.args(["reap", "--pid", &std::process::id().to_string()]);
    if let Some(dir) = dir {
        cmd.arg("--dir").arg(dir);
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid(2) in the forked child before exec; async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|source| ControlPlaneError::Spawn {
            name: "reaper",
            source,
        })
        .map(drop)
}

fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        send_signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends a signal to a process.
#[allow(unsafe_code)]
pub(crate) fn send_signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

fn is_running(pid: u32) -> bool {
    // A zombie still answers kill(pid, 0); read its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Reserves `n` distinct free ports on 127.0.0.1 by binding them all at once and then releasing
/// them. Another process could take one in the gap; on a test machine that is rare, and the
/// failing component's log then says so.
fn free_ports(n: usize) -> Result<Vec<u16>, ControlPlaneError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ControlPlaneError::NoPort)?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ControlPlaneError::NoPort)
}

/// A minimal HTTP/1.0 GET for etcd's plain-HTTP /health endpoint (no client library needed).
fn http_get_plain(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

fn mkdir(path: &Path) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(path).map_err(|source| ControlPlaneError::Io {
        action: "create directory",
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &str) -> Result<(), ControlPlaneError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ControlPlaneError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(err)
}

/// Last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().fold(String::new(), |mut acc, l| {
        let _ = writeln!(acc, "  {l}");
        acc
    })
}

/// The admin kubeconfig on 127.0.0.1: client-certificate user in system:masters, CA data
/// embedded, so the file works on its own (kubectl, kube-rs, helm).
pub fn kubeconfig_json(pki: &Pki, port: u16) -> String {
    kubeconfig_for(
        &pki.ca_pem,
        &format!("https://127.0.0.1:{port}"),
        (&pki.admin_cert_pem, &pki.admin_key_pem),
    )
}

/// A kubeconfig for `server` with a client certificate (PEM certificate, PEM key).
pub fn kubeconfig_for(ca_pem: &str, server: &str, (cert, key): (&str, &str)) -> String {
    use base64::Engine as _;
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rustronaut-e2e", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem.as_bytes()),
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(cert.as_bytes()),
            "client-key-data": b64(key.as_bytes()),
        }}],
        "contexts": [{"name": "rustronaut-e2e", "context": {"cluster": "rustronaut-e2e", "user": "admin"}}],
        "current-context": "rustronaut-e2e",
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Fake nodes for kwok. Without a real node they carry no taint: the kwok docs'
/// `kwok.x-k8s.io/node=fake:NoSchedule` would keep every Pod without a matching toleration
/// Pending, and the operator's generated Deployments must schedule unchanged, as they would on
/// a real cluster. Beside a real node they carry that taint, so ordinary pods run for real and
/// only pods that tolerate it (scale tests) land on fake nodes.
pub fn nodes_manifest(n: usize, tainted: bool) -> String {
    let items: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": format!("kwok-node-{i}"),
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "kubernetes.io/arch": "amd64",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/hostname": format!("kwok-node-{i}"),
                        "kubernetes.io/role": "agent",
                        "type": "kwok",
                        "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                    },
                },
                "spec": if tainted {
                    serde_json::json!({"taints": [{"key": node::FAKE_NODE_TAINT, "value": "fake", "effect": "NoSchedule"}]})
                } else {
                    serde_json::json!({})
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                },
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_have_no_taint_and_distinct_names() {
        let v: serde_json::Value = serde_json::from_str(&nodes_manifest(3, false)).unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        let names: std::collections::BTreeSet<_> = items
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 3);
        assert!(items.iter().all(|n| n["spec"]["taints"].is_null()));
        let v: serde_json::Value = serde_json::from_str(&nodes_manifest(1, true)).unwrap();
        assert_eq!(v["items"][0]["spec"]["taints"][0]["effect"], "NoSchedule");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(6).unwrap();
        let set: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(set.len(), 6);
    }

    #[test]
    fn tail_keeps_last_lines() {
        let path = std::env::temp_dir().join(format!("rtn-tail-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "  c\n  d\n");
        std::fs::remove_file(&path).unwrap();
    }
}
