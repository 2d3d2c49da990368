//! Sidecar Resources against a real API server: the snapshot Secret the injected sidecars
//! load, the Role/RoleBinding/NetworkPolicy beside it, a Policy change reaching the
//! snapshot, the pod counts in status (pods created through the API, their metadata is all
//! that counts), overlap, a malformed selector that blocks nobody else, and deletion through
//! ownerReferences.
//!
//! One test function in its own binary: the controllers reconcile the whole cluster.

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustronaut_contract::eval::Effect;
use rustronaut_contract::snapshot::{Snapshot, UpstreamKind};
use rustronaut_crds::resource::sidecar_names;
use rustronaut_crds::{Policy, Resource as RtnResource, Tenant};
use serde_json::{Value, json};

mod common;
use common::{create, decide, eventually, install_crds, operator_client, start_controllers};

fn sidecar_resource(name: &str, selector: Value) -> Value {
    json!({
        "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
        "metadata": {"name": name},
        "spec": {"protocol": "HTTP",
                 "workload": {"selector": selector,
                              "ports": [{"port": 8080, "sidecarPort": 15080, "name": "http"}]}}
    })
}

fn pod(name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example.test/app:1"}],
                 // Never scheduled onto a node: the metadata is what this test is about.
                 "nodeSelector": {"rustronaut.io/nowhere": "true"}}
    })
}

async fn sidecar_snapshot(secrets: &Api<Secret>, resource: &str) -> Option<Snapshot> {
    let s = secrets
        .get_opt(&sidecar_names::snapshot(resource))
        .await
        .ok()??;
    let bytes = s.data?.get("snapshot.json")?.0.clone();
    Some(Snapshot::from_json(&bytes).expect("the operator writes snapshots that parse"))
}

/// Whether none of the four sidecar objects named `name` exists in `ns`.
async fn gone(client: &kube::Client, ns: &str, name: &str) -> bool {
    async fn absent<K>(client: &kube::Client, ns: &str, name: &str) -> bool
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        matches!(
            Api::<K>::namespaced(client.clone(), ns).get_opt(name).await,
            Ok(None)
        )
    }
    absent::<Secret>(client, ns, name).await
        && absent::<Role>(client, ns, name).await
        && absent::<RoleBinding>(client, ns, name).await
        && absent::<NetworkPolicy>(client, ns, name).await
}

/// The condition `type_` of Resource `name` as (status, reason, message).
async fn condition(
    api: &Api<RtnResource>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let r = api.get_opt(name).await.ok()??;
    let c = r
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_resources_publish_protect_count_and_go() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let ns = rustronaut_e2e::namespace(&client, "shop").await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": format!("t-{suffix}")},
            "spec": {"namespaces": [&ns], "adminNamespace": ns,
                     // OIDC: the sidecar snapshot carries session keys from a Secret of its own.
                     "identityProviders": [{"name": "sso", "oidc": {
                         "issuer": "https://sso.example", "clientID": "app",
                         "clientSecretRef": {"name": "sso"}}}]}
        }),
    )
    .await;
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &ns);
    create(
        &resources,
        sidecar_resource("orders", json!({"matchLabels": {"app": "orders"}})),
    )
    .await;
    let policies: Api<Policy> = Api::namespaced(client.clone(), &ns);
    create(
        &policies,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "office"},
            "spec": {"targetRefs": [{"kind": "Resource", "name": "orders"}], "action": "Allow",
                     "rules": [{"name": "office",
                                "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let injected = json!({"app": "orders", sidecar_names::INJECTED_LABEL: "orders"});
    create(
        &pods,
        pod(
            "protected",
            injected.clone(),
            json!({sidecar_names::PORTS_ANNOTATION: "8080:15080"}),
        ),
    )
    .await;
    create(&pods, pod("plain", json!({"app": "orders"}), json!({}))).await;
    create(
        &pods,
        pod(
            "old-ports",
            injected,
            json!({sidecar_names::PORTS_ANNOTATION: "8080:15000"}),
        ),
    )
    .await;
    create(&pods, pod("web", json!({"app": "web"}), json!({}))).await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-sidecar-test");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // The snapshot: a sidecar's, one listener, the loopback upstream, the Policy.
    let s = eventually("the sidecar snapshot", || {
        let secrets = secrets.clone();
        async move { sidecar_snapshot(&secrets, "orders").await }
    })
    .await;
    assert!(s.sidecar);
    assert_eq!(s.gateway.to_string(), format!("{ns}/orders"));
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.listeners[0].port, 15080);
    let rule = &s.resources[0].rules[0];
    assert_eq!(rule.name, "all", "the implicit catch-all rule");
    let UpstreamKind::Service(up) = &rule.upstreams[0].kind else {
        panic!("{:?}", rule.upstreams)
    };
    assert_eq!(up.addresses, ["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(s.policies.len(), 1);
    assert_eq!(
        s.tenants[0].session.signing_keys.len(),
        1,
        "a generated session key"
    );
    let session_name = format!("orders-sidecar-session-t-{suffix}");
    let session = secrets.get(&session_name).await.unwrap();
    assert_eq!(
        session.metadata.owner_references.unwrap()[0].name,
        "orders",
        "owned by the Resource"
    );
    assert_eq!(decide(&s, &ns, "orders", "10.1.2.3"), Effect::Allow);
    assert_eq!(decide(&s, &ns, "orders", "192.0.2.1"), Effect::Deny);

    // The RBAC and the NetworkPolicy beside it (applied right after the Secret: the last
    // one there means all are).
    let name = sidecar_names::snapshot("orders");
    eventually("the NetworkPolicy", || {
        let api = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
        let name = name.clone();
        async move { api.get_opt(&name).await.ok()? }
    })
    .await;
    let role = Api::<Role>::namespaced(client.clone(), &ns)
        .get(&name)
        .await
        .unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["secrets".to_string()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[name.clone()][..])
    );
    assert_eq!(
        rules[0].verbs,
        ["get".to_string(), "list".into(), "watch".into()]
    );
    let rb = Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get(&name)
        .await
        .unwrap();
    assert_eq!(rb.role_ref.name, name);
    let subjects = rb.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.clone()),
        ("Group", format!("system:serviceaccounts:{ns}"))
    );
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get(&name)
        .await
        .unwrap();
    let spec = np.spec.unwrap();
    assert_eq!(
        serde_json::to_value(&spec.pod_selector).unwrap(),
        json!({"matchLabels": {"app": "orders"}})
    );
    let ports: Vec<Value> = spec
        .ingress
        .unwrap()
        .iter()
        .flat_map(|r| r.ports.clone().unwrap_or_default())
        .map(|p| serde_json::to_value(p.port).unwrap())
        .collect();
    assert_eq!(ports, [json!(15080)], "only the sidecar port is open");

    // Status: 3 selected (not web), 1 protected; the other two named.
    let status = eventually("the workload counted", || {
        let resources = resources.clone();
        async move {
            let r = resources.get("orders").await.ok()?;
            let w = r.status?.workload?;
            (w.selected_pods == 3).then_some(w)
        }
    })
    .await;
    assert_eq!(status.protected_pods, 1);
    assert_eq!(status.unprotected_pods, ["old-ports", "plain"]);
    let (st, reason, message) = condition(&resources, "orders", "Ready").await.unwrap();
    assert_eq!((st.as_str(), reason.as_str()), ("False", "UnprotectedPods"));
    assert!(message.contains("old-ports, plain"), "{message}");
    let (st, reason, _) = condition(&resources, "orders", "Programmed").await.unwrap();
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Programmed"));
    // The edge pass leaves it alone: none of its conditions.
    assert!(condition(&resources, "orders", "Reachable").await.is_none());
    assert!(
        condition(&resources, "orders", "ResolvedRefs")
            .await
            .is_none()
    );

    // A Policy change reaches the snapshot.
    policies
        .patch(
            "office",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [{"name": "office",
                "from": [{"sourceCIDRs": {"cidrs": ["192.0.2.0/24"]}}]}]}})),
        )
        .await
        .unwrap();
    eventually("the Policy change in the snapshot", || {
        let secrets = secrets.clone();
        let ns = ns.clone();
        async move {
            let s = sidecar_snapshot(&secrets, "orders").await?;
            (decide(&s, &ns, "orders", "192.0.2.1") == Effect::Allow
                && decide(&s, &ns, "orders", "10.1.2.3") == Effect::Deny)
                .then_some(())
        }
    })
    .await;

    // Overlap, reported on both; a malformed selector is a condition and blocks nobody.
    create(
        &resources,
        sidecar_resource(
            "orders-too",
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders"]}]}),
        ),
    )
    .await;
    create(
        &resources,
        sidecar_resource(
            "broken",
            json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
        ),
    )
    .await;
    create(
        &resources,
        sidecar_resource("other", json!({"matchLabels": {"app": "other"}})),
    )
    .await;
    for (name, other) in [("orders", "orders-too"), ("orders-too", "orders")] {
        eventually(&format!("{name} reports the overlap"), || {
            let resources = resources.clone();
            async move {
                let (st, reason, message) = condition(&resources, name, "Ready").await?;
                (st == "False" && reason == "SelectorOverlap" && message.contains(other))
                    .then_some(())
            }
        })
        .await;
    }
    eventually("broken: InvalidSelector", || {
        let resources = resources.clone();
        async move {
            let (st, reason, message) = condition(&resources, "broken", "Accepted").await?;
            (st == "False" && reason == "InvalidSelector" && message.contains("Near")).then_some(())
        }
    })
    .await;
    assert!(
        secrets
            .get_opt(&sidecar_names::snapshot("broken"))
            .await
            .unwrap()
            .is_none()
    );
    eventually("other: published and Ready with no pod", || {
        let (resources, secrets) = (resources.clone(), secrets.clone());
        async move {
            sidecar_snapshot(&secrets, "other").await?;
            let (st, reason, _) = condition(&resources, "other", "Ready").await?;
            (st == "True" && reason == "Ready").then_some(())
        }
    })
    .await;

    // A sidecar Resource turned into an edge Resource: what was made for it goes.
    resources
        .patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "workload": null,
                "gatewayRefs": [{"name": "edge"}],
                "hostnames": ["other.example"],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": "other", "port": 80}}]}],
            }})),
        )
        .await
        .unwrap();
    eventually("other's sidecar objects pruned", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            gone(&client, &ns, &sidecar_names::snapshot("other"))
                .await
                .then_some(())
        }
    })
    .await;

    // The overlap goes, the unprotected pods go: Ready, from pod changes alone.
    resources
        .delete("orders-too", &DeleteParams::default())
        .await
        .unwrap();
    for p in ["plain", "old-ports"] {
        pods.delete(p, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    eventually("orders Ready", || {
        let resources = resources.clone();
        async move {
            let r = resources.get("orders").await.ok()?;
            let status = r.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            let w = status.workload?;
            (ready.status == "True" && w.selected_pods == 1 && w.protected_pods == 1).then_some(())
        }
    })
    .await;

    // "snapshot published" was said, as a Normal Event.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let published = events.list(&Default::default()).await.unwrap();
    assert!(
        published
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("SnapshotPublished")
                && e.type_.as_deref() == Some("Normal")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders")),
        "{:?}",
        published
            .items
            .iter()
            .map(|e| &e.reason)
            .collect::<Vec<_>>()
    );

    // Deleting the Resource removes what it owned.
    resources
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the owned objects gone", || {
        let client = client.clone();
        let (ns, name) = (ns.clone(), name.clone());
        async move { gone(&client, &ns, &name).await.then_some(()) }
    })
    .await;
    eventually("the session key Secret gone", || {
        let secrets = secrets.clone();
        let session_name = session_name.clone();
        async move { matches!(secrets.get_opt(&session_name).await, Ok(None)).then_some(()) }
    })
    .await;
    controllers.stop().await;
}
