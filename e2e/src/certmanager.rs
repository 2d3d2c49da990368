//! cert-manager's real controllers for tests (issue 18, item 3): the `cert-manager-controller`
//! binary that `e2e/scripts/tools.sh` builds from cert-manager's own Go module (the small main
//! of `e2e/tools/cert-manager`), and cert-manager's CRDs from the same module version.
//!
//! ```text
//!   install_crds(client)                    the six cert-manager CRDs, server-side applied, Established
//!   CertManager::start(kubeconfig, log, args) issuers, clusterissuers, CA signer, approver,
//!                                           the Certificate controllers; returns once its caches synced
//!   drop                                    SIGKILL and reap: no process outlives the guard
//! ```
//!
//! Tests share one cluster, so a test normally scopes its controller to its own namespace
//! (`--namespace <ns>`): two controllers never act on the same objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The controller binary, in the tools directory.
pub const BINARY: &str = "cert-manager-controller";
/// Directory of the CRD YAML files, in the tools directory.
pub const CRDS_DIR: &str = "cert-manager-crds";
/// The CRDs `CRDS_DIR` holds (ACME's two included: the Certificate controllers do not need
/// them, but a cluster with cert-manager has them and clients may list them).
pub const CRDS: [&str; 6] = [
    "certificaterequests.cert-manager.io",
    "certificates.cert-manager.io",
    "clusterissuers.cert-manager.io",
    "issuers.cert-manager.io",
    "challenges.acme.cert-manager.io",
    "orders.acme.cert-manager.io",
];
/// Field manager of the CRDs this module applies.
pub const MANAGER: &str = "rustronaut-e2e";
/// How long the CRDs may take to be Established and the controller to sync its caches.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The line the controller logs once its informers have listed (e2e/tools/cert-manager).
const READY_LINE: &str = "caches synced; controllers running";

/// The tools directory: `$RUSTRONAUT_TOOLS_BIN`, else what `tools.sh build` prints.
fn tools_dir() -> PathBuf {
    crate::build_tools().unwrap_or_else(|e| panic!("the Go-built tools: {e}"))
}

/// Server-side applies cert-manager's six CRDs (as `tools.sh` copied them from the module) and
/// waits until each is Established. Idempotent: every test binary may call it.
pub async fn install_crds(client: &kube::Client) {
    let dir = tools_dir().join(CRDS_DIR);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply(MANAGER).force();
    for name in CRDS {
        let (plural, group) = name.split_once('.').expect("<plural>.<group>");
        let path = dir.join(format!("{group}_{plural}.yaml"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()));
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(name),
            "{}",
            path.display()
        );
        crds.patch(name, &ssa, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
    }
    let deadline = Instant::now() + TIMEOUT;
    for name in CRDS {
        loop {
            let established = crds.get(name).await.ok().is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not Established after {}s",
                TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A running `cert-manager-controller`. Dropping it SIGKILLs and reaps the process; [`stop`]
/// stops it as Kubernetes would (SIGTERM) and returns how it exited.
///
/// [`stop`]: CertManager::stop
#[derive(Debug)]
pub struct CertManager {
    child: Child,
    log: PathBuf,
}

impl CertManager {
    /// Starts the controller against the cluster of `kubeconfig`, its standard output and error
    /// to `log`, with `args` added (e.g. `["--namespace", ns]`, `["-v", "4"]`), and returns once
    /// it has logged that its caches synced. Panics, with the log, if it exits or does not get
    /// there within a minute.
    pub async fn start(kubeconfig: &Path, log: &Path, args: &[&str]) -> Self {
        let bin = tools_dir().join(BINARY);
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle");
        let mut cmd = Command::new(&bin);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        crate::controlplane::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut cm = Self {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + TIMEOUT;
        while !cm.log().contains(READY_LINE) {
            if let Ok(Some(status)) = cm.child.try_wait() {
                panic!(
                    "{BINARY} exited ({status}) while starting; log:\n{}",
                    cm.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{BINARY} did not sync its caches within {}s; log:\n{}",
                TIMEOUT.as_secs(),
                cm.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cm
    }

    /// Everything the controller logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        crate::controlplane::tail(&self.log, n)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (up to 30 s, then SIGKILL) for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            crate::signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the controller") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{BINARY} still running 30 s after SIGTERM (killed); log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        // Already reaped by `stop`: both calls then fail harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
