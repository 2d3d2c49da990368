//! The console part of `make demo` on the real node: e2e/scripts/console-demo.sh, run as the
//! demo runs it, on the demo's cluster. It adds the console to the helm release (a pod from
//! the console image, `console.oidc.caConfigMap` for the OP's private CA), starts zitadel's
//! example OP on the node's address and a port-forward, and logs a person in with curl: the
//! console pod reaches the OP for the code exchange, the person's RBAC (impersonated) lets them
//! list the demo's Gateway. What `make demo` prints is what this test checks.

use super::*;

/// Kills what the script started on the host (its OP and port-forward), whatever happens.
struct HostProcesses(std::path::PathBuf);

impl Drop for HostProcesses {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.0.join("demo.pids")) {
            for pid in pids.lines() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
    }
}

#[test]
fn the_console_runs_as_a_pod_and_a_person_logs_in_through_the_op_as_make_demo_shows() {
    let cluster = demo();
    let _guard = scenario_lock();
    let bin_dir = cluster.bin_dir().expect("the Go-built tools");
    let dir = tempfile::tempdir().unwrap();
    let _host = HostProcesses(dir.path().to_path_buf());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/console-demo.sh");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The same helm homes as the chart's install (support::helm): the release is found.
    let helm = std::env::temp_dir().join("rustronaut-helm-home");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("PATH", path)
        .env("HELM_CACHE_HOME", helm.join("cache"))
        .env("HELM_CONFIG_HOME", helm.join("config"))
        .env("HELM_DATA_HOME", helm.join("data"))
        .env("CONSOLE_DEMO_PORT", super::support::free_port().to_string())
        .env(
            "CONSOLE_DEMO_OP_PORT",
            super::support::free_port().to_string(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console-demo.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("the console lists the demo's Gateway hello-gw to test-user@zitadel.ch"),
        "the scripted login reached the console's list as the person:\n{stdout}"
    );
    assert!(
        stdout.contains("The console: http://localhost:") && stdout.contains("log in as"),
        "it prints the URL and the login:\n{stdout}"
    );
    // The console is the chart's pod from the console image, as a non-root process.
    let image = kubectl(
        cluster,
        &[
            "-n",
            "rustronaut-system",
            "get",
            "deployment",
            "rustronaut-console",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(image.trim(), rustronaut_e2e::image_ref("console"));
    eprintln!("{stdout}");
}
