//! GitOps health (issue 18, item 1): what the real kstatus library (sigs.k8s.io/cli-utils,
//! the one Flux and kpt use; built by `e2e/scripts/tools.sh` into the `kstatus` checker of
//! e2e/tools/kstatus) reads from the statuses the operator writes, against a real API server
//! with the operator's controllers under the RBAC it ships with.
//!
//! - a Tenant, a Resource with an Allow Policy: Current;
//! - a Policy whose target does not exist, a Gateway beyond its tenant's quota: Failed, with
//!   the reason's message (Flux reports at once instead of waiting for its timeout);
//! - the Gateway whose pods have not loaded the snapshot (no gateway process runs on the
//!   kwok node): InProgress;
//! - an object changed while the controllers are stopped (its generation not yet observed):
//!   InProgress.
//!
//! The same objects through Argo CD's health check (deploy/argocd/health.lua run by
//! gopher-lua, the interpreter Argo CD embeds, in e2e/tools/argocd-health): Current reads
//! Healthy, Failed Degraded, InProgress Progressing, so Flux and Argo CD agree.
//!
//! One test function in its own binary: the controllers reconcile the whole cluster.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde::Deserialize;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::{create, eventually, http_resource, install_crds, operator_client, start_controllers};

/// One line of the checker's output.
#[derive(Debug, Deserialize)]
struct Verdict {
    kind: String,
    name: String,
    status: String,
    message: String,
}

/// The Argo CD health script, from the repository.
fn health_lua() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/argocd/health.lua")
}

/// kstatus's verdict on each of `objects` (whole objects as the API server returns them).
fn kstatus(objects: &[serde_json::Value]) -> Vec<Verdict> {
    check("kstatus", &[], objects)
}

/// Argo CD's health of each of `objects`.
fn argocd(objects: &[serde_json::Value]) -> Vec<Verdict> {
    check("argocd-health", &[health_lua()], objects)
}

/// Runs the Go-built checker `tool` with `args` on `objects`.
fn check(tool: &str, args: &[std::path::PathBuf], objects: &[serde_json::Value]) -> Vec<Verdict> {
    let bin = rustronaut_e2e::build_tools()
        .expect("the Go-built tools")
        .join(tool);
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let input = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool} failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// `kind/name` of `ns` as JSON, straight from the API server.
async fn get(client: &kube::Client, ns: &str, kind: &str, name: &str) -> serde_json::Value {
    let plural = format!("{}s", kind.to_lowercase()).replace("policys", "policies");
    let ar = ApiResource {
        group: "rustronaut.io".into(),
        version: "v1alpha1".into(),
        api_version: "rustronaut.io/v1alpha1".into(),
        kind: kind.into(),
        plural,
    };
    let api: Api<DynamicObject> = if kind == "Tenant" {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    };
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// Waits until kstatus reads `want` for every `(kind, name, want)`, then returns the verdicts.
async fn expect(
    client: &kube::Client,
    ns: &str,
    tenant: &str,
    want: &[(&str, &str, &str)],
) -> Vec<Verdict> {
    eventually(&format!("kstatus {want:?}"), || async {
        let mut objects = Vec::new();
        for (kind, name, _) in want {
            let name = if *kind == "Tenant" { tenant } else { name };
            objects.push(get(client, ns, kind, name).await);
        }
        let verdicts = kstatus(&objects);
        let ok = verdicts
            .iter()
            .zip(want)
            .all(|(v, (kind, _, status))| v.kind == *kind && v.status == *status);
        if !ok {
            eprintln!("kstatus so far: {verdicts:?}");
            return None;
        }
        // Argo CD reads the same objects the same way.
        let health = argocd(&objects);
        for (v, h) in verdicts.iter().zip(&health) {
            let want = match v.status.as_str() {
                "Current" => "Healthy",
                "Failed" => "Degraded",
                _ => "Progressing",
            };
            assert_eq!(
                (h.name.as_str(), h.status.as_str()),
                (v.name.as_str(), want),
                "Argo CD's health of {} ({}) against kstatus {:?}",
                h.name,
                h.message,
                v
            );
        }
        Some(verdicts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_reads_current_failed_and_in_progress_as_meant() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let ns = rustronaut_e2e::namespace(&client, "kstatus").await;
    let tenant = format!("ks-{suffix}");
    create(
        &Api::<Tenant>::all(client.clone()),
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"namespaces": [ns], "domains": [format!("*.{suffix}.example")],
                     "quotas": {"gateways": 1}}
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    for name in ["edge", "extra"] {
        create(
            &gateways,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
                "metadata": {"name": name},
                "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
            }),
        )
        .await;
        // "extra" is younger: beyond the quota of one.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    create(
        &Api::<RtnResource>::namespaced(client.clone(), &ns),
        http_resource("app", &ns, &format!("app.{suffix}.example"), "app"),
    )
    .await;
    create(
        &Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    create(
        &Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), &ns),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "app-1", "labels": {"kubernetes.io/service-name": "app"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.10"]}],
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    )
    .await;
    let policies: Api<Policy> = Api::namespaced(client.clone(), &ns);
    for (name, target) in [("open", "app"), ("orphan", "missing")] {
        create(
            &policies,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
                "metadata": {"name": name},
                "spec": {"targetRefs": [{"kind": "Resource", "name": target}],
                         "action": "Allow",
                         "rules": [{"name": "anyone", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}
            }),
        )
        .await;
    }

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator.clone(), "operator-kstatus-test");
    let verdicts = expect(
        &client,
        &ns,
        &tenant,
        &[
            ("Tenant", "", "Current"),
            ("Resource", "app", "Current"),
            ("Policy", "open", "Current"),
            ("Policy", "orphan", "Failed"),
            ("Gateway", "extra", "Failed"),
            ("Gateway", "edge", "InProgress"),
        ],
    )
    .await;
    let message = |name: &str| {
        verdicts
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.message.clone())
            .unwrap()
    };
    assert!(message("orphan").contains("missing"), "{verdicts:?}");
    assert!(message("extra").contains("quota"), "{verdicts:?}");
    assert!(message("edge").contains("pods"), "{verdicts:?}");

    // Changed while nobody reconciles: the new generation is not observed yet.
    controllers.stop().await;
    policies
        .patch(
            "open",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [{"name": "everyone", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}})),
        )
        .await
        .unwrap();
    expect(&client, &ns, &tenant, &[("Policy", "open", "InProgress")]).await;
    // And Current again once it is.
    let controllers = start_controllers(operator, "operator-kstatus-test");
    expect(&client, &ns, &tenant, &[("Policy", "open", "Current")]).await;
    controllers.stop().await;
}

#[test]
fn the_argocd_configmap_carries_the_health_script_for_every_kind() {
    let lua = std::fs::read_to_string(health_lua()).unwrap();
    let cm: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(health_lua().with_file_name("argocd-cm.yaml")).unwrap(),
    )
    .unwrap();
    for kind in ["Tenant", "Resource", "Gateway", "Policy"] {
        let key = format!("resource.customizations.health.rustronaut.io_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(lua.as_str()), "{key}");
    }
}
