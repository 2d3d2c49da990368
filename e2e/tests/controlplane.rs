//! Proof that the test control plane is a real Kubernetes: controllers, scheduler and kwok turn a
//! Deployment into Running Pods; the apiserver evaluates CEL validation rules itself; the
//! version is the pinned release; RBAC is enforced.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::time::{Duration, Instant};

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

#[tokio::test]
async fn deployment_gets_replicaset_and_running_pods_on_kwok_nodes() {
    let client = rustronaut_e2e::client().await;
    let ns = rustronaut_e2e::namespace(&client, "cp-deploy").await;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let rs_name = eventually(
        "the controller-manager to create a ReplicaSet owned by the Deployment",
        Duration::from_secs(60),
        || async {
            let list = replicasets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == uid && o.kind == "Deployment")
                })
                .and_then(|rs| rs.metadata.name)
                .ok_or_else(|| "no owned ReplicaSet yet".to_string())
        },
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = eventually(
        "two Running pods bound to kwok nodes",
        Duration::from_secs(90),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .map_err(|e| e.to_string())?;
            let running: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            if running.len() == 2 {
                Ok(running)
            } else {
                Err(format!("{} running", running.len()))
            }
        },
    )
    .await;
    for pod in running {
        let owner = pod.metadata.owner_references.unwrap_or_default();
        assert!(
            owner
                .iter()
                .any(|o| o.kind == "ReplicaSet" && o.name == rs_name),
            "pod must be owned by the ReplicaSet {rs_name}: {owner:?}"
        );
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(
            node.starts_with("kwok-node-")
                || std::env::var(rustronaut_e2e::USE_EXISTING_ENV).is_ok(),
            "pod must be bound by the scheduler to a kwok node, got {node:?}"
        );
        let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
        assert!(!ip.is_empty(), "a Running pod has an IP");
    }
}

#[tokio::test]
async fn crd_with_cel_rule_rejects_bad_object_with_the_apiservers_message() {
    let client = rustronaut_e2e::client().await;
    let group = format!("{}.e2e.rustronaut.io", rustronaut_e2e::random_suffix());
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "x-kubernetes-validations": [{
                            "rule": "self.minReplicas <= self.maxReplicas",
                            "message": "minReplicas must not exceed maxReplicas"
                        }],
                        "properties": {
                            "minReplicas": {"type": "integer"},
                            "maxReplicas": {"type": "integer"}
                        }
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let name = crd.metadata.name.clone().unwrap();
    eventually(
        "the CRD to be Established",
        Duration::from_secs(30),
        || async {
            let c = crds.get(&name).await.map_err(|e| e.to_string())?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;

    let ns = rustronaut_e2e::namespace(&client, "cp-cel").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let widget = |name: &str, min: i64, max: i64| {
        let mut o = DynamicObject::new(name, &ar);
        o.data = serde_json::json!({"spec": {"minReplicas": min, "maxReplicas": max}});
        o
    };
    // The discovery cache of a fresh CRD may lag by a moment: retry the good create.
    eventually(
        "a valid Widget to be accepted",
        Duration::from_secs(30),
        || async {
            widgets
                .create(&PostParams::default(), &widget("good", 1, 3))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;

    let err = widgets
        .create(&PostParams::default(), &widget("bad", 5, 2))
        .await
        .expect_err("the apiserver must reject minReplicas > maxReplicas");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert_eq!(status.reason, "Invalid", "{status:?}");
            assert!(
                status
                    .message
                    .contains("minReplicas must not exceed maxReplicas"),
                "message comes from the CEL rule: {}",
                status.message
            );
        }
        other => panic!("expected an API error, got {other}"),
    }
    crds.delete(&name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn kubectl_version_reports_the_pinned_server_version() {
    let cluster = rustronaut_e2e::shared();
    let out = cluster
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let server = v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // A second, independent client must agree with kubectl.
    let client = cluster.client().await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.git_version, server);

    if std::env::var(rustronaut_e2e::USE_EXISTING_ENV).as_deref() != Ok("1") {
        let pinned = std::process::Command::new("bash")
            .arg(rustronaut_e2e::tools_script())
            .arg("versions")
            .output()
            .unwrap();
        let pinned = String::from_utf8_lossy(&pinned.stdout);
        let k8s = pinned
            .lines()
            .find_map(|l| l.strip_prefix("kubernetes "))
            .expect("tools.sh versions names kubernetes");
        assert_eq!(server, k8s, "the server reports the version tools.sh pins");
        assert_eq!(
            v["clientVersion"]["gitVersion"].as_str(),
            Some(k8s),
            "kubectl is built from the same release"
        );
        assert_eq!(info.major, "1");
    }
}

#[tokio::test]
async fn rbac_is_enforced_for_a_service_account() {
    let cluster = rustronaut_e2e::shared();
    let client = cluster.client().await;
    let ns = rustronaut_e2e::namespace(&client, "cp-rbac").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "nobody"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();

    let as_sa = cluster
        .client_as(
            &format!("system:serviceaccount:{ns}:nobody"),
            &["system:serviceaccounts", "system:authenticated"],
        )
        .await;
    let err = Api::<Pod>::namespaced(as_sa, &ns)
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without a RoleBinding may not list pods");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403, got {other}"),
    }
}
