//! End to end, as a user would run it: `kubectl apply` of the CRDs and of the scenario in
//! e2e/manifests/demo.yaml -> the operator binary (as its own ServiceAccount, under the RBAC
//! it ships with, with leader election) -> the gateway binary started with exactly the
//! command, args and env of the Deployment the operator generated (as the gateway's own
//! ServiceAccount, reading the snapshot Secret the operator wrote) -> curl through it.
//!
//! Then a Policy is changed 50 times and the time from the API server accepting the change
//! to the gateway enforcing it is measured (p50/p99 printed; recorded in
//! docs/benchmarks.md; never asserted against a time).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use rustronaut_crds::Gateway;
use rustronaut_e2e::scenario::{self, HOST, LISTENER_PORT, UPSTREAM_PORT};
use serde_json::json;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Instant;

mod support;
use support::{MANAGER, Proc, kubectl_apply, percentile, wait_for};

/// A tiny HTTP/1.1 upstream on `0.0.0.0:UPSTREAM_PORT` answering 200 with a body naming it.
fn upstream() {
    let listener = std::net::TcpListener::bind(("0.0.0.0", UPSTREAM_PORT))
        .unwrap_or_else(|e| panic!("binding the upstream on port {UPSTREAM_PORT}: {e}"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = conn.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = "hello from the e2e upstream\n";
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
}

fn mint(sub: &str, group: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/examples/standalone/mint-token.sh");
    let out = Command::new(script).args([sub, group]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The status code of a request through the gateway with `token`.
fn status(token: Option<&str>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .args(["-H", &format!("Host: {HOST}")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    cmd.arg(format!("http://127.0.0.1:{LISTENER_PORT}/"));
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[test]
fn apply_operator_gateway_curl_and_policy_changes_are_enforced_live() {
    let cluster = rustronaut_e2e::shared();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(cluster.client());
    let dir = tempfile::tempdir().unwrap();
    let ssa = PatchParams::apply(MANAGER).force();

    // The operator's namespace, ServiceAccount and RBAC, exactly as shipped.
    rt.block_on(support::install_operator_rbac(&admin));
    // kubectl apply -f crds/, then the scenario.
    support::install_crds(cluster);
    upstream();
    let host_ip = scenario::host_ip().expect("a non-loopback address for the EndpointSlice");
    kubectl_apply(cluster, &scenario::demo_manifests(host_ip));

    // The operator binary, as its ServiceAccount.
    let (operator, _metrics) = support::start_operator(cluster, dir.path());

    // The Deployment the operator generated, and one of its (kwok) pods.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "demo-apps");
    let mut deployment = None;
    wait_for("the gateway Deployment", &[&operator], || {
        deployment = rt.block_on(deployments.get_opt("hello-gw")).unwrap();
        deployment.is_some()
    });
    let deployment = deployment.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "demo-apps");
    let mut pod_name = String::new();
    wait_for("a gateway pod", &[&operator], || {
        let list = rt
            .block_on(
                pods.list(&ListParams::default().labels("app.kubernetes.io/instance=hello-gw")),
            )
            .unwrap();
        match list.items.first().and_then(|p| p.metadata.name.clone()) {
            Some(n) => {
                pod_name = n;
                true
            }
            None => false,
        }
    });

    // Its exact command, args and env (POD_NAME from the Downward API = that pod's name).
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == "gateway")
        .unwrap_or(&spec.containers[0]);
    let command = container.command.clone().unwrap_or_default();
    assert_eq!(
        command.first().map(String::as_str),
        Some("rustronaut-gateway")
    );
    let args = container.args.clone().unwrap_or_default();
    assert!(args.contains(&"--config-from".to_string()), "{args:?}");
    let sa = spec.service_account_name.clone().unwrap();
    let gw_kubeconfig = dir.path().join("gateway.kubeconfig");
    scenario::impersonating_kubeconfig(cluster.kubeconfig(), "demo-apps", &sa, &gw_kubeconfig)
        .unwrap();
    let mut gw_cmd = Command::new(scenario::sibling_binary(&command[0]).unwrap());
    gw_cmd
        .args(&command[1..])
        .args(&args)
        .env("KUBECONFIG", &gw_kubeconfig);
    for e in container.env.clone().unwrap_or_default() {
        let from_pod_name = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .is_some_and(|f| f.field_path == "metadata.name");
        match (e.value, from_pod_name) {
            (Some(v), _) => {
                gw_cmd.env(&e.name, v);
            }
            (None, true) => {
                gw_cmd.env(&e.name, &pod_name);
            }
            (None, false) => panic!("env {} has a source this test cannot provide", e.name),
        }
    }
    let gateway = Proc::spawn(gw_cmd, dir.path().join("gateway.log"));

    // Allowed identity: 200 from the real upstream; others 401 and 403.
    let dev = mint("alice", "dev");
    let sales = mint("bob", "sales");
    wait_for(
        "the gateway to serve the allowed identity",
        &[&operator, &gateway],
        || status(Some(&dev)) == 200,
    );
    assert_eq!(status(None), 401);
    assert_eq!(status(Some(&sales)), 403);

    // The Gateway reports the version its (one) pod loaded.
    let gateways: Api<Gateway> = Api::namespaced(admin.clone(), "demo-apps");
    wait_for(
        "the Gateway Ready with the version loaded",
        &[&operator, &gateway],
        || {
            let gw = rt.block_on(gateways.get("hello-gw")).unwrap();
            let status = serde_json::to_value(&gw.status).unwrap();
            status["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        },
    );

    // Policy changes enforced without restarting anything: alternate the allowed group.
    let policies: Api<rustronaut_crds::Policy> = Api::namespaced(admin.clone(), "demo-apps");
    let mut latencies = Vec::new();
    for i in 0..50 {
        let (group, allowed, denied) = if i % 2 == 0 {
            ("sales", &sales, &dev)
        } else {
            ("dev", &dev, &sales)
        };
        let patch = json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "developers", "namespace": "demo-apps"},
            "spec": {"targetRefs": [{"kind": "Resource", "name": "hello"}], "action": "Allow",
                     "rules": [{"name": "dev-group",
                                "from": [{"user": {"idp": "dev-issuer", "groups": [group]}}]}]}
        });
        rt.block_on(policies.patch("developers", &ssa, &Patch::Apply(&patch)))
            .unwrap();
        let applied = Instant::now();
        wait_for(
            &format!("change {i} enforced"),
            &[&operator, &gateway],
            || status(Some(allowed)) == 200 && status(Some(denied)) == 403,
        );
        latencies.push(applied.elapsed());
    }
    latencies.sort();
    eprintln!(
        "apply -> enforced over {} policy changes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    drop(gateway);
    drop(operator);
}
