//! The gateway configured through the Kubernetes API (`--config-from`, `--report-status`)
//! against the real apiserver of the e2e harness, running with exactly the RBAC the operator
//! grants a gateway: read one Secret, patch one ConfigMap (by resourceName).

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;

const HOST: &str = "app.acme.test";

/// A snapshot whose only Allow lets anonymous callers reach `open`.
fn snapshot(http: u16, upstream: &str, open: &str) -> Value {
    json!({
        "schemaVersion": 1,
        "gateway": {"namespace": "rtn-system", "name": "edge"},
        "listeners": [{"name": "http", "port": http, "protocol": "HTTP"}],
        "tenants": [{"name": "acme", "domains": ["*.acme.test"], "identityProviders": []}],
        "resources": [{
            "namespace": "acme-apps", "name": "app", "tenant": "acme", "protocol": "HTTP",
            "listeners": ["http"], "hostnames": [HOST],
            "rules": [{"name": "all", "upstreams": [{"kind": {"service": {
                "name": "app", "port": 80, "addresses": [upstream]}}}]}]
        }],
        "policies": [{"namespace": "acme-apps", "name": "open", "tenant": "acme",
            "action": "Allow",
            "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
            "rules": [{"name": "anyone", "from": ["anonymous"],
                "to": [{"paths": [{"type": "PathPrefix", "value": open}]}]}]}],
    })
}

fn status_of(port: u16, path: &str) -> u16 {
    curl(&[
        "-H",
        &format!("Host: {HOST}"),
        &format!("http://127.0.0.1:{port}{path}"),
    ])
    .status
}

#[test]
fn snapshot_from_a_secret_is_watched_reported_and_bad_ones_refused() {
    let cluster = rustronaut_e2e::shared();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(cluster.client());
    let ns = rt.block_on(rustronaut_e2e::namespace(&admin, "gw-kube"));
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let pp = PostParams::default();

    // The RBAC the operator gives a gateway (see docs/gateway.md).
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "edge-gateway"}})).unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "edge-gateway"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"],
             "resourceNames": ["edge-snapshot"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
             "resourceNames": ["edge-status"]},
        ]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "edge-gateway"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edge-gateway"},
        "subjects": [{"kind": "ServiceAccount", "name": "edge-gateway", "namespace": ns}],
    }))
    .unwrap();
    let up = Upstream::start("kube");
    let http = free_port();
    let v1 = serde_json::to_vec(&snapshot(http, &up.addr.to_string(), "/one")).unwrap();
    let v2 = serde_json::to_vec(&snapshot(http, &up.addr.to_string(), "/two")).unwrap();
    rt.block_on(async {
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .create(&pp, &sa)
            .await
            .unwrap();
        Api::<Role>::namespaced(admin.clone(), &ns)
            .create(&pp, &role)
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .create(&pp, &binding)
            .await
            .unwrap();
        secrets
            .create(&pp, &snapshot_secret("edge-snapshot", &v1))
            .await
            .unwrap();
        secrets
            .create(&pp, &snapshot_secret("other", b"not for the gateway"))
            .await
            .unwrap();
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "edge-status"}})).unwrap();
        configmaps.create(&pp, &cm).await.unwrap();
    });

    // The RBAC is as narrow as claimed: the account cannot read another Secret.
    let sa_user = format!("system:serviceaccount:{ns}:edge-gateway");
    let as_gateway = rt.block_on(cluster.client_as(
        &sa_user,
        &["system:serviceaccounts", "system:authenticated"],
    ));
    let err = rt
        .block_on(Api::<Secret>::namespaced(as_gateway, &ns).get("other"))
        .expect_err("the gateway's account must not read other Secrets");
    assert!(err.to_string().contains("forbidden"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // The gateway process gets exactly that account's permissions, as in a pod.
    rustronaut_e2e::scenario::impersonating_kubeconfig(
        cluster.kubeconfig(),
        &ns,
        "edge-gateway",
        &kubeconfig,
    )
    .unwrap();
    let pod = "edge-6f7c9-x2x4q";
    let gw = Gateway::spawn_from_secret(
        &kubeconfig,
        &format!("{ns}/edge-snapshot"),
        &format!("{ns}/edge-status"),
        pod,
        &[],
    );
    gw.wait_ready(&snapshot(http, "unused", "/one"));
    assert_eq!(status_of(http, "/one"), 200);
    assert_eq!(status_of(http, "/two"), 401);

    let loaded = |gw: &Gateway| -> String {
        let (code, body) = gw.admin_get("/readyz");
        assert_eq!(code, 200, "{body}");
        body.trim().strip_prefix("ready ").unwrap().to_string()
    };
    let reported = || -> Option<String> {
        rt.block_on(configmaps.get("edge-status"))
            .unwrap()
            .data
            .and_then(|d| d.get(pod).cloned())
    };
    let first_version = loaded(&gw);
    eventually(&gw, "the first version reported", || {
        reported().as_deref() == Some(first_version.as_str())
    });

    // An update of the Secret is applied without a restart and reported.
    rt.block_on(secrets.replace("edge-snapshot", &pp, &snapshot_secret("edge-snapshot", &v2)))
        .unwrap();
    eventually(&gw, "the new policy enforced", || {
        status_of(http, "/two") == 200
    });
    assert_eq!(status_of(http, "/one"), 401);
    let second_version = loaded(&gw);
    assert_ne!(first_version, second_version);
    eventually(&gw, "the second version reported", || {
        reported().as_deref() == Some(second_version.as_str())
    });

    // A broken snapshot is refused; the last good one keeps serving and stays reported.
    rt.block_on(secrets.replace(
        "edge-snapshot",
        &pp,
        &snapshot_secret("edge-snapshot", b"{\"schemaVersion\": 1, \"listeners\": 7}"),
    ))
    .unwrap();
    eventually(&gw, "the broken snapshot refused", || {
        gw.log().contains("refused")
    });
    assert_eq!(status_of(http, "/two"), 200);
    assert_eq!(loaded(&gw), second_version);
    assert_eq!(reported().as_deref(), Some(second_version.as_str()));

    // The Secret deleted: still serving. Re-created: watched again.
    rt.block_on(secrets.delete("edge-snapshot", &DeleteParams::default()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(http, "/two"), 200);
    rt.block_on(secrets.create(&pp, &snapshot_secret("edge-snapshot", &v1)))
        .unwrap();
    eventually(&gw, "the re-created Secret applied", || {
        status_of(http, "/one") == 200
    });
    eventually(&gw, "the first version reported again", || {
        reported().as_deref() == Some(first_version.as_str())
    });

    // Another pod's entry is left alone (one field manager per pod).
    rt.block_on(configmaps.patch(
        "edge-status",
        &PatchParams::apply("rustronaut-gateway-other-pod"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "edge-status"}, "data": {"other-pod": "sha256:x"}})),
    ))
    .unwrap();
    rt.block_on(secrets.replace("edge-snapshot", &pp, &snapshot_secret("edge-snapshot", &v2)))
        .unwrap();
    eventually(
        &gw,
        "the second version reported after the other pod",
        || reported().as_deref() == Some(second_version.as_str()),
    );
    let data = rt
        .block_on(configmaps.get("edge-status"))
        .unwrap()
        .data
        .unwrap();
    assert_eq!(
        data.get("other-pod").map(String::as_str),
        Some("sha256:x"),
        "{data:?}"
    );
}
