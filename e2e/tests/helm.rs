//! `helm install` of charts/rustronaut against the real control plane, with the helm binary
//! built by e2e/scripts/tools.sh: the chart lints, installs (CRDs included) and becomes ready
//! on kwok nodes; the ClusterRole it ships holds exactly the rules the operator's integration
//! tests run under (`rustronaut_operator::rbac`); the pods run non-root with a read-only root
//! filesystem and the Downward API env the operator needs; an upgrade to one replica drops the
//! PodDisruptionBudget; uninstall removes the operator and, as Helm does, keeps the CRDs (and
//! so every user object). An upgrade from the previous chart (packaged in e2e/fixtures) with
//! the documented CRD step keeps every object and serves the new API.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod support;
use support::run;

const RELEASE: &str = "rtn";
const NAMESPACE: &str = "rustronaut-helm";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/rustronaut")
}

fn helm(cluster: &rustronaut_e2e::TestCluster) -> Command {
    // Without a bin dir (an existing cluster), the `helm` on PATH.
    support::helm(cluster.bin_dir().unwrap_or(Path::new("")), Some(cluster))
}

/// `helm template` with `values`; its error output when it fails.
fn template_error(cluster: &rustronaut_e2e::TestCluster, values: &[&str]) -> Option<String> {
    let mut cmd = helm(cluster);
    cmd.args(["template", RELEASE]).arg(chart());
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd.output().unwrap();
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn values_the_schema_refuses_fail_with_a_message_that_names_them() {
    let cluster = rustronaut_e2e::shared();
    assert_eq!(template_error(cluster, &[]), None, "the defaults render");
    assert_eq!(
        template_error(cluster, &["operator.logFormat=json", "operator.replicas=3"]),
        None
    );
    for (value, names) in [
        ("operator.logFormat=xml", "logFormat"),
        ("operator.replicas=0", "replicas"),
        ("operator.image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.replica=2", "replica"),
        ("gateway.image.repository=", "repository"),
        ("sidecar.image.pullPolicy=Sometimes", "pullPolicy"),
        ("sidecar.enable=true", "enable"),
    ] {
        let err = template_error(cluster, &[value])
            .unwrap_or_else(|| panic!("{value} must be refused by values.schema.json"));
        assert!(
            err.contains(names),
            "{value}: the message names {names}: {err}"
        );
    }
}

/// The chart allows one release per cluster (and refuses a second with a message): the tests
/// that install it take turns.
fn one_release() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn helm_installs_the_operator_with_the_rbac_it_was_tested_with() {
    let _one_release = one_release();
    let cluster = rustronaut_e2e::shared();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(cluster.client());

    let mut lint = helm(cluster);
    lint.args(["lint", "--strict"]).arg(chart());
    run(lint);

    let mut install = helm(cluster);
    install
        .args(["install", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--create-namespace"])
        .args(["--wait", "--timeout", "180s"])
        .args(["--set", "gateway.image.tag=test"]);
    run(install);

    // CRDs from the chart's crds/ directory.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "tenants.rustronaut.io",
        "resources.rustronaut.io",
        "gateways.rustronaut.io",
        "policies.rustronaut.io",
    ] {
        assert!(
            rt.block_on(crds.get_opt(name)).unwrap().is_some(),
            "CRD {name} installed"
        );
    }

    // RBAC: exactly what the code says (and what the integration tests ran under).
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let installed = rt
        .block_on(roles.get(rustronaut_operator::rbac::NAME))
        .unwrap();
    assert_eq!(
        installed.rules,
        rustronaut_operator::rbac::cluster_role().rules
    );
    let tenant_admin = rt
        .block_on(roles.get(rustronaut_operator::rbac::TENANT_ADMIN))
        .unwrap();
    assert_eq!(
        tenant_admin.rules,
        rustronaut_operator::rbac::tenant_admin_cluster_role().rules
    );
    let lease: Api<Role> = Api::namespaced(admin.clone(), NAMESPACE);
    assert_eq!(
        rt.block_on(lease.get(rustronaut_operator::rbac::NAME))
            .unwrap()
            .rules,
        rustronaut_operator::rbac::lease_role(NAMESPACE).rules
    );

    // The Deployment: ready (helm --wait), hardened, with the env the operator reads.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    let d = rt
        .block_on(deployments.get(rustronaut_operator::rbac::NAME))
        .unwrap();
    assert_eq!(d.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(rustronaut_operator::rbac::NAME)
    );
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    let env: Vec<_> = c.env.clone().unwrap_or_default();
    let var = |name: &str| env.iter().find(|e| e.name == name).cloned();
    assert_eq!(
        var("POD_NAMESPACE")
            .and_then(|e| e.value_from)
            .and_then(|v| v.field_ref)
            .map(|f| f.field_path),
        Some("metadata.namespace".to_string()),
        "the Lease lives in the release namespace"
    );
    assert_eq!(
        var("RUSTRONAUT_GATEWAY_IMAGE").and_then(|e| e.value),
        Some("ghcr.io/rustronaut/gateway:test".to_string())
    );
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/rustronaut/operator:0.1.0"),
        "the operator image defaults to the chart's appVersion"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), NAMESPACE);
    assert!(
        rt.block_on(pdbs.get_opt(rustronaut_operator::rbac::NAME))
            .unwrap()
            .is_some()
    );

    // A second release is refused with a message that says what to do instead.
    let mut second = helm(cluster);
    second.args(["install", "second"]).arg(chart()).args([
        "--namespace",
        "rustronaut-second",
        "--create-namespace",
    ]);
    let out = second.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second release installs");
    assert!(
        stderr.contains(&format!(
            "already installed in this cluster by release \"{RELEASE}\" in namespace \"{NAMESPACE}\""
        )) && stderr.contains("helm upgrade"),
        "{stderr}"
    );

    // Upgrade to one replica: no PodDisruptionBudget (it would block every drain).
    let mut upgrade = helm(cluster);
    upgrade
        .args(["upgrade", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--reuse-values"])
        .args([
            "--set",
            "operator.replicas=1",
            "--wait",
            "--timeout",
            "180s",
        ]);
    run(upgrade);
    assert!(
        rt.block_on(pdbs.get_opt(rustronaut_operator::rbac::NAME))
            .unwrap()
            .is_none()
    );

    // Uninstall: the operator goes; the CRDs (and so every user object) stay.
    let mut uninstall = helm(cluster);
    uninstall
        .args(["uninstall", RELEASE, "--namespace", NAMESPACE])
        .args(["--wait", "--timeout", "120s"]);
    run(uninstall);
    let mut gone = false;
    for _ in 0..300 {
        if rt
            .block_on(deployments.get_opt(rustronaut_operator::rbac::NAME))
            .unwrap()
            .is_none()
        {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "uninstall removes the operator Deployment");
    assert!(
        rt.block_on(roles.get_opt(rustronaut_operator::rbac::NAME))
            .unwrap()
            .is_none()
    );
    assert!(
        rt.block_on(crds.get_opt("gateways.rustronaut.io"))
            .unwrap()
            .is_some(),
        "Helm never deletes CRDs"
    );
}

/// deploy/install.yaml, for `kubectl apply` without Helm: what the chart renders today (the
/// same script, `make install-yaml`), and accepted by the real API server (server-side dry
/// run: schemas, CRDs, RBAC, the Deployment), with nothing persisted.
#[test]
fn install_yaml_is_the_chart_rendered_and_the_api_server_accepts_it() {
    let cluster = rustronaut_e2e::shared();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/install.yaml");
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("install.yaml");
    let helm_bin = cluster.bin_dir().unwrap().join("helm");
    let mut render = Command::new("bash");
    render
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-yaml.sh"))
        .arg(&fresh)
        .env("HELM", helm_bin);
    run(render);
    assert!(
        std::fs::read_to_string(&committed).unwrap() == std::fs::read_to_string(&fresh).unwrap(),
        "deploy/install.yaml is stale: run `make install-yaml`"
    );
    // The namespace must exist for a dry run of the objects in it (a dry-run Namespace is
    // not created).
    let _ = cluster
        .kubectl()
        .args(["create", "namespace", "rustronaut-system"])
        .output();
    let mut dry = cluster.kubectl();
    dry.args([
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
    ])
    .args(["--field-manager", "install-yaml-check", "-f"])
    .arg(&committed);
    let out = run(dry);
    for kind in ["customresourcedefinition", "deployment", "clusterrole"] {
        assert!(out.contains(kind), "{kind} in the dry run:\n{out}");
    }
}

/// The previous chart, as its users have it installed: `helm package` of charts/rustronaut at
/// the commit its file name ends with (e2e/fixtures/README.md).
fn previous_chart() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut charts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rustronaut-") && n.ends_with(".tgz"))
        })
        .collect();
    assert_eq!(charts.len(), 1, "one previous chart in {}", dir.display());
    charts.pop().unwrap()
}

/// `kubectl get <kind> <name> -n <ns> -o jsonpath=<path>`.
fn get(cluster: &rustronaut_e2e::TestCluster, ns: &str, what: &[&str], path: &str) -> String {
    let mut cmd = cluster.kubectl();
    cmd.args(["-n", ns, "get"])
        .args(what)
        .args(["-o", &format!("jsonpath={path}")]);
    run(cmd)
}

/// What a user of the previous release does to upgrade: the new CRDs first (Helm never
/// upgrades them; charts/rustronaut/README.md), then `helm upgrade`. Every object survives
/// with its identity and spec, and the API of the new CRDs is served (a sidecar Resource the
/// previous CRDs refuse is accepted after the upgrade).
#[test]
fn an_upgrade_from_the_previous_chart_keeps_every_object_and_serves_the_new_api() {
    const REL: &str = "rtn-up";
    const NS: &str = "rustronaut-upgrade";
    const APPS: &str = "upgrade-apps";
    let _one_release = one_release();
    let cluster = rustronaut_e2e::shared();
    let old = tempfile::tempdir().unwrap();
    let mut untar = Command::new("tar");
    untar
        .arg("-xzf")
        .arg(previous_chart())
        .arg("-C")
        .arg(old.path());
    run(untar);
    let old_chart = old.path().join("rustronaut");

    // A cluster of the previous release: its CRDs (forced: this test binary's other tests may
    // have installed the current ones), its operator, and objects made under its API.
    let mut old_crds = cluster.kubectl();
    old_crds
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(old_chart.join("crds"));
    run(old_crds);
    let mut install = helm(cluster);
    install
        .args(["install", REL])
        .arg(&old_chart)
        .args(["--namespace", NS, "--create-namespace"])
        .args(["--wait", "--timeout", "180s"]);
    run(install);
    let objects = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {APPS}}}
---
apiVersion: rustronaut.io/v1alpha1
kind: Tenant
metadata: {{name: upgrade}}
spec:
  namespaces: [{APPS}]
  domains: ["*.upgrade.example"]
---
apiVersion: rustronaut.io/v1alpha1
kind: Gateway
metadata: {{name: edge, namespace: {APPS}}}
spec:
  listeners:
  - {{name: http, port: 8080, protocol: HTTP}}
---
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {{name: web, namespace: {APPS}}}
spec:
  gatewayRefs: [{{name: edge}}]
  protocol: HTTP
  hostnames: [web.upgrade.example]
  rules:
  - name: all
    upstreams: [{{service: {{name: web, port: 80}}}}]
---
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {{name: web-ops, namespace: {APPS}}}
spec:
  targetRefs: [{{kind: Resource, name: web}}]
  action: Allow
  rules:
  - name: ops
    from: [{{user: {{groups: [ops]}}}}]
"#
    );
    support::kubectl_apply(cluster, &objects);
    let kinds = [
        ("", ["tenant", "upgrade"]),
        (APPS, ["gateway", "edge"]),
        (APPS, ["resource", "web"]),
        (APPS, ["policy", "web-ops"]),
    ];
    let before: Vec<(String, String)> = kinds
        .iter()
        .map(|(ns, what)| {
            (
                get(cluster, ns, what, "{.metadata.uid}"),
                get(cluster, ns, what, "{.spec}"),
            )
        })
        .collect();
    let sidecar = format!(
        r#"
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {{name: orders, namespace: {APPS}}}
spec:
  protocol: HTTP
  workload:
    selector: {{matchLabels: {{app: orders}}}}
    ports: [{{port: 8080, sidecarPort: 18080}}]
"#
    );
    let apply_sidecar = || {
        let mut cmd = cluster.kubectl();
        cmd.args(["apply", "--server-side", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sidecar.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let refused = apply_sidecar();
    assert!(
        !refused.status.success(),
        "the previous CRDs know no sidecar Resources, so this test runs against them"
    );

    // The upgrade, as documented.
    let mut new_crds = cluster.kubectl();
    new_crds
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(chart().join("crds"));
    run(new_crds);
    let mut upgrade = helm(cluster);
    upgrade.args(["upgrade", REL]).arg(chart()).args([
        "--namespace",
        NS,
        "--wait",
        "--timeout",
        "180s",
    ]);
    run(upgrade);
    let mut history = helm(cluster);
    history.args(["history", REL, "--namespace", NS, "-o", "json"]);
    let history = run(history);
    assert!(
        history.contains("0.1.0-prev.") && history.contains("\"status\":\"deployed\""),
        "the release went from the previous chart to this one: {history}"
    );

    let after: Vec<(String, String)> = kinds
        .iter()
        .map(|(ns, what)| {
            (
                get(cluster, ns, what, "{.metadata.uid}"),
                get(cluster, ns, what, "{.spec}"),
            )
        })
        .collect();
    assert_eq!(before, after, "every object kept its identity and spec");
    let accepted = apply_sidecar();
    assert!(
        accepted.status.success(),
        "the new API is served: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    let mut cleanup = cluster.kubectl();
    cleanup.args(["delete", "namespace", APPS, "--wait=false"]);
    run(cleanup);
    let mut cleanup = cluster.kubectl();
    cleanup.args(["delete", "tenant", "upgrade", "--wait=false"]);
    run(cleanup);
    let mut uninstall = helm(cluster);
    uninstall
        .args(["uninstall", REL, "--namespace", NS])
        .args(["--wait", "--timeout", "120s"]);
    run(uninstall);
}

/// `sidecar.enabled=true`: the operator gets the webhook flags and port, the webhook's Service
/// and MutatingWebhookConfiguration carry the names the operator's code and RBAC use, both
/// webhooks fail closed and never see kube-system or the release namespace, the caBundle is
/// left to the operator, and the API server accepts the objects (server-side dry run).
#[test]
fn the_sidecar_webhook_renders_as_the_operator_expects() {
    let cluster = rustronaut_e2e::shared();
    let mut template = helm(cluster);
    template
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", "rustronaut-system"])
        .args(["--set", "sidecar.enabled=true"])
        .args(["--set", "sidecar.image.repository=example.test/sidecar"])
        .args(["--set", "sidecar.image.tag=v1"])
        .args(["--set", "sidecar.resources.limits.memory=100Mi"]);
    let rendered = run(template);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("{kind} {name} in the chart"))
            .clone()
    };
    let deployment = find("Deployment", rustronaut_operator::rbac::NAME);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "--webhook-listen=0.0.0.0:9443",
        "--webhook-service=rustronaut-webhook",
        "--sidecar-image=example.test/sidecar:v1",
        "--sidecar-resources={\"limits\":{\"memory\":\"100Mi\"}}",
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    let service = find("Service", "rustronaut-webhook");
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(443));
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("webhook")
    );
    let mwc = find(
        "MutatingWebhookConfiguration",
        rustronaut_operator::rbac::WEBHOOK_CONFIG,
    );
    let hooks = mwc["webhooks"].as_sequence().unwrap();
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert_eq!(h["failurePolicy"].as_str(), Some("Fail"));
        assert_eq!(h["timeoutSeconds"].as_u64(), Some(5));
        assert_eq!(h["sideEffects"].as_str(), Some("None"));
        assert!(
            h["clientConfig"].get("caBundle").is_none(),
            "the operator writes it"
        );
        assert_eq!(
            h["clientConfig"]["service"]["path"].as_str(),
            Some("/inject")
        );
        let ns = serde_yaml::to_string(&h["namespaceSelector"]).unwrap();
        assert!(
            ns.contains("kube-system") && ns.contains("rustronaut-system"),
            "{ns}"
        );
    }

    // Off by default: no webhook objects, no webhook flags.
    assert!(template_error(cluster, &[]).is_none());
    let mut default = helm(cluster);
    default.args(["template", RELEASE]).arg(chart());
    let out = run(default);
    assert!(!out.contains("MutatingWebhookConfiguration") && !out.contains("--webhook-listen"));

    // The API server accepts the objects as rendered.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhook.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let _ = cluster
        .kubectl()
        .args(["create", "namespace", "rustronaut-system"])
        .output();
    let mut dry = cluster.kubectl();
    dry.args([
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
    ])
    .args(["--field-manager", "webhook-chart-check", "-f"])
    .arg(&file);
    let out = run(dry);
    assert!(out.contains("mutatingwebhookconfiguration"), "{out}");
}
