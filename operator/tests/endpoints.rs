//! EndpointSlices nobody's controller wrote may not point a gateway into the cluster
//! (issue 14, item 12), against a real API server with the operator's controllers under the
//! RBAC it ships with.
//!
//! A selector-less Service in a tenant's namespace with a hand-written EndpointSlice: one
//! address outside the cluster (what such a Service is for), the ClusterIP of the
//! `kubernetes` Service (inside the API server's ServiceCIDR), and an address in a pod
//! network that a Node announces only later (the API server itself refuses link-local
//! addresses in EndpointSlices; loopback ones are covered by the unit tests). The snapshot keeps the outside
//! address only; when the Node with that pod CIDR appears, the pod-network address leaves the
//! snapshot without any change to the slice. Before the fix every address but the
//! link-local one was served, and a gateway shared by two tenants could be sent to the other
//! tenant's pods and Services.
//!
//! One test function in its own binary: the controller reconciles every Gateway of the
//! cluster, so two controllers in one test binary would race each other.

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams};
use rustronaut_contract::snapshot::{Snapshot, UpstreamKind};
use rustronaut_crds::{Gateway, Resource as RtnResource, Tenant};
use serde_json::json;
use std::net::SocketAddr;

mod common;
use common::{
    create, eventually, http_resource, install_crds, operator_client, snapshot, start_controllers,
};

fn addresses(s: &Snapshot, ns: &str) -> Option<Vec<SocketAddr>> {
    let res = s.resource(ns, "ext")?;
    match &res.rules.first()?.upstreams.first()?.kind {
        UpstreamKind::Service(svc) => Some(svc.addresses.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_endpoint_slices_may_not_point_into_the_cluster() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "slicegw").await;
    let apps = rustronaut_e2e::namespace(&client, "sliceapps").await;
    let domain = format!("{suffix}.example");
    // A pod network no Node announces yet (the test cluster's own are 10.244/10.245).
    let late_pod = "10.250.7.9";
    let kubernetes_ip = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("the kubernetes Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("its ClusterIP");

    create(
        &Api::<Tenant>::all(client.clone()),
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": format!("t-{suffix}")},
            "spec": {"namespaces": [apps, gw_ns], "domains": [format!("*.{domain}")]}
        }),
    )
    .await;
    create(
        &Api::<Service>::namespaced(client.clone(), &apps),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }),
    )
    .await;
    create(
        &Api::<EndpointSlice>::namespaced(client.clone(), &apps),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "ext-1", "labels": {"kubernetes.io/service-name": "ext"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.10"]},
                {"addresses": [kubernetes_ip]},
                {"addresses": [late_pod]},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }),
    )
    .await;
    create(
        &Api::<Gateway>::namespaced(client.clone(), &gw_ns),
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
        }),
    )
    .await;
    create(
        &Api::<RtnResource>::namespaced(client.clone(), &apps),
        http_resource("ext", &gw_ns, &format!("ext.{domain}"), "ext"),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-endpoints-test");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    let outside: SocketAddr = "192.0.2.10:8080".parse().unwrap();
    let pod: SocketAddr = format!("{late_pod}:8080").parse().unwrap();

    // Not the Service network; the unannounced pod network is not known to be the cluster's
    // yet.
    let first = eventually("edge's snapshot with ext", || async {
        addresses(&snapshot(&secrets, "edge").await?, &apps)
    })
    .await;
    assert_eq!(first, vec![pod, outside], "sorted");

    // A Node announces that pod network: the address leaves the snapshot.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = format!("slices-{suffix}");
    create(
        &nodes,
        json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "spec": {"podCIDR": "10.250.7.0/24", "podCIDRs": ["10.250.7.0/24"]}
        }),
    )
    .await;
    let second = eventually("the pod-network address refused", || async {
        let a = addresses(&snapshot(&secrets, "edge").await?, &apps)?;
        (a.len() == 1).then_some(a)
    })
    .await;
    assert_eq!(second, vec![outside]);

    let _ = nodes.delete(&node, &DeleteParams::default()).await;
    controllers.stop().await;
}
