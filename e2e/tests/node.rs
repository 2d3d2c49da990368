//! The real node leaves the host as it found it: network interfaces, iptables/ip6tables rules
//! and nftables tables, ipsets, sysctls, network namespaces, mounts, cgroups and processes are
//! the same before a node starts and after it stops, both when it is stopped (its supervisor's
//! standard input closes, as when a test binary exits) and when its supervisor is killed
//! outright (SIGKILL: the reaper process cleans up). A pod runs in each, so there is a sandbox,
//! a veth, a network namespace and container mounts to remove.

use rustronaut_e2e::node::HostSnapshot;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `rustronaut-cluster up --real-node` and returns it with the kubeconfig it printed.
fn start(images: &std::path::Path) -> (Child, String) {
    let bin_dir = rustronaut_e2e::build_tools().expect("tools");
    let exe = std::env::current_exe().unwrap();
    let supervisor = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("rustronaut-cluster"))
        .find(|p| p.is_file())
        .expect("rustronaut-cluster next to the test binary");
    let mut child = Command::new(supervisor)
        .args([
            "up",
            "--watch-stdin",
            "--real-node",
            "--nodes",
            "1",
            "--bin-dir",
        ])
        .arg(&bin_dir)
        .arg("--images")
        .arg(images)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let kubeconfig = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("KUBECONFIG=").map(str::to_string))
        .expect("the supervisor prints KUBECONFIG= once ready");
    (child, kubeconfig)
}

/// Runs a pod on the real node and waits until it is Running.
fn run_pod(kubeconfig: &str) {
    let kubectl = rustronaut_e2e::build_tools().unwrap().join("kubectl");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": true,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
            "containers": [{"name": "s", "image": rustronaut_e2e::image_ref("testkit"),
                            "imagePullPolicy": "Never", "command": ["busybox", "sleep", "3600"]}],
        },
    });
    let mut apply = Command::new(&kubectl)
        .env("KUBECONFIG", kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(pod.to_string().as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success());
    let out = Command::new(&kubectl)
        .env("KUBECONFIG", kubeconfig)
        .args([
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=120s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pod not Ready: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_same(before: &HostSnapshot, after: &HostSnapshot, how: &str) {
    assert_eq!(before.state.links, after.state.links, "{how}: interfaces");
    assert_eq!(
        before.state.nft_tables, after.state.nft_tables,
        "{how}: nftables tables"
    );
    assert_eq!(
        before.state.iptables, after.state.iptables,
        "{how}: iptables rules"
    );
    assert_eq!(
        before.state.ip6tables, after.state.ip6tables,
        "{how}: ip6tables rules"
    );
    assert_eq!(before.state.ipsets, after.state.ipsets, "{how}: ipsets");
    assert_eq!(before.state.sysctls, after.state.sysctls, "{how}: sysctls");
    assert_eq!(
        before.state.netns, after.state.netns,
        "{how}: network namespaces"
    );
    assert_eq!(
        before.state.host_paths, after.state.host_paths,
        "{how}: host paths"
    );
    assert_eq!(before.mounts, after.mounts, "{how}: mounts");
    assert_eq!(before.cgroups, after.cgroups, "{how}: cgroups");
    assert_eq!(before.processes, after.processes, "{how}: node processes");
}

#[test]
fn a_real_node_leaves_the_host_as_it_found_it_when_stopped_and_when_killed() {
    let images = rustronaut_e2e::build_images().expect("images");
    let before = HostSnapshot::take();

    // 1. Stopped: the supervisor's stdin closes (what happens when a test binary exits).
    let (mut child, kubeconfig) = start(&images);
    let during = HostSnapshot::take();
    run_pod(&kubeconfig);
    assert_ne!(
        before.state.links, during.state.links,
        "the node changed the host (else this test proves nothing)"
    );
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "supervisor exit: {status}");
    assert_same(&before, &HostSnapshot::take(), "after a normal stop");

    // 2. Killed: SIGKILL leaves no chance to clean up; the reaper does it, and removes the
    // control plane's working directory (the kubeconfig's directory), as a normal stop does.
    let (mut child, kubeconfig) = start(&images);
    let cluster_dir = std::path::Path::new(&kubeconfig)
        .parent()
        .expect("the kubeconfig is in the cluster's directory")
        .to_path_buf();
    assert!(cluster_dir.is_dir(), "{}", cluster_dir.display());
    run_pod(&kubeconfig);
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let now = HostSnapshot::take();
        let gone =
            !std::path::Path::new(rustronaut_e2e::node::RUN_DIR).exists() && !cluster_dir.exists();
        if (gone && now == before) || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_same(&before, &after, "after the supervisor was killed");
    assert!(
        !cluster_dir.exists(),
        "the killed cluster's directory {} is left behind",
        cluster_dir.display()
    );
}
