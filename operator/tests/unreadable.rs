//! One object the operator's types cannot read never stalls a watch (issue 17), against a
//! real API server with the operator's controllers under the RBAC it ships with.
//!
//! The Resource and Policy CRDs are loosened for a moment (any spec accepted), one Resource
//! and one Policy are written that the operator's types cannot read, and the CRDs are put
//! back (the API server keeps stored objects as they are). Then:
//! - every other object is reconciled: the good Resource is in the Gateway's snapshot, and a
//!   Resource created afterwards gets there too;
//! - the unreadable Policy fails closed: its namespace's Resources are denied (an Allow that
//!   admits the caller exists) until it is deleted, then allowed;
//! - each unreadable object is reported with a Warning Event `Unreadable` (its status cannot
//!   be written: the API server refuses any write to an object its schema rejects).
//!
//! Before the guard, the typed watch failed on the first unreadable object and the operator
//! built nothing at all.

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use rustronaut_contract::eval::Effect;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde_json::json;

mod common;
use common::{
    TEST_MANAGER, create, decide, eventually, http_resource, install_crds, operator_client,
    snapshot, start_controllers,
};

/// Applies the CRD `name` with a schema that accepts anything.
async fn loosen(client: &kube::Client, name: &str) {
    let crd = rustronaut_crds::generate::crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap();
    let mut v = serde_json::to_value(&crd).unwrap();
    for version in v["spec"]["versions"].as_array_mut().unwrap() {
        version["schema"]["openAPIV3Schema"] =
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&v),
        )
        .await
        .unwrap();
    // The API server takes a moment to serve the new schema.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
}

/// Creates `obj` (any shape) of `kind` through the dynamic API.
async fn create_raw(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    plural: &str,
    obj: serde_json::Value,
) {
    let ar = ApiResource {
        group: "rustronaut.io".into(),
        version: "v1alpha1".into(),
        api_version: "rustronaut.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let o: DynamicObject = serde_json::from_value(obj).unwrap();
    eventually(&format!("the loosened API server to take {kind}"), || {
        let api = api.clone();
        let o = o.clone();
        async move { api.create(&Default::default(), &o).await.ok().map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_object_is_reported_and_never_stalls_the_others() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "unreadgw").await;
    let apps = rustronaut_e2e::namespace(&client, "unreadapps").await;
    let domain = format!("{suffix}.example");
    create(
        &Api::<Tenant>::all(client.clone()),
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
               "metadata": {"name": format!("t-{suffix}")},
               "spec": {"namespaces": [apps, gw_ns], "domains": [format!("*.{domain}")]}}),
    )
    .await;
    create(
        &Api::<Gateway>::namespaced(client.clone(), &gw_ns),
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
               "metadata": {"name": "edge"},
               "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}),
    )
    .await;
    create(
        &Api::<Service>::namespaced(client.clone(), &apps),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    create(
        &Api::<EndpointSlice>::namespaced(client.clone(), &apps),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "app-1", "labels": {"kubernetes.io/service-name": "app"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.10"]}],
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    )
    .await;
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &apps);
    let resource = |name: &str| http_resource(name, &gw_ns, &format!("{name}.{domain}"), "app");
    create(&resources, resource("good")).await;
    create(
        &Api::<Policy>::namespaced(client.clone(), &apps),
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
               "metadata": {"name": "office"},
               "spec": {"targetRefs": [{"kind": "Resource", "name": "good"}], "action": "Allow",
                        "rules": [{"name": "office",
                                   "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}}),
    )
    .await;

    // The unreadable pair, written while the schema accepts anything.
    loosen(&client, "resources.rustronaut.io").await;
    loosen(&client, "policies.rustronaut.io").await;
    create_raw(
        &client,
        &apps,
        "Resource",
        "resources",
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
               "metadata": {"name": "broken", "namespace": apps},
               "spec": {"protocol": 7, "gatewayRefs": "edge"}}),
    )
    .await;
    create_raw(
        &client,
        &apps,
        "Policy",
        "policies",
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
               "metadata": {"name": "broken", "namespace": apps},
               "spec": {"action": 42}}),
    )
    .await;
    install_crds(&client).await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-unreadable-test");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);

    // The others are served; the unreadable Policy denies its namespace.
    let snap = eventually("edge's snapshot with the good Resource", || async {
        let s = snapshot(&secrets, "edge").await?;
        s.resource(&apps, "good")?;
        Some(s)
    })
    .await;
    assert_eq!(
        decide(&snap, &apps, "good", "10.1.2.3"),
        Effect::Deny,
        "an unreadable Policy fails closed"
    );
    assert!(snap.resource(&apps, "broken").is_none());
    eventually("both unreadable objects counted", || async {
        (controllers.stores.unreadable.count() == 2).then_some(())
    })
    .await;

    // Reported on each object (its status cannot be written: the API server checks the
    // whole object against the schema on every write).
    let events: Api<Event> = Api::namespaced(client.clone(), &apps);
    for kind in ["Resource", "Policy"] {
        eventually(
            &format!("a Warning Event Unreadable on the {kind}"),
            || async {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("Unreadable")
                            && e.type_.as_deref() == Some("Warning")
                            && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some("broken")
                    })
                    .then_some(())
            },
        )
        .await;
    }

    // The watches are alive: a new Resource reaches the snapshot.
    create(&resources, resource("later")).await;
    eventually("a Resource created afterwards in the snapshot", || async {
        snapshot(&secrets, "edge")
            .await?
            .resource(&apps, "later")
            .map(|_| ())
    })
    .await;

    // Deleting the unreadable Policy lifts its Deny.
    // (Through the dynamic API: a typed delete would try to read the deleted object back.)
    Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &apps,
        &ApiResource::erase::<Policy>(&()),
    )
    .delete("broken", &DeleteParams::default())
    .await
    .unwrap();
    eventually("the Allow decides again", || async {
        let s = snapshot(&secrets, "edge").await?;
        (decide(&s, &apps, "good", "10.1.2.3") == Effect::Allow).then_some(())
    })
    .await;
    // Forgotten from the Delete event, or from a re-list if the watch was down meanwhile.
    eventually("the Resource alone counted unreadable", || async {
        (controllers.stores.unreadable.count() == 1).then_some(())
    })
    .await;
    controllers.stop().await;
}
