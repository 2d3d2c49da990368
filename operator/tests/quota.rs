//! Gateway and tunnel-site quotas against a real API server, the controllers running under the
//! operator's shipped RBAC: a Tenant may have one Gateway and one site. The older Gateway is
//! served with its first site only; the younger gets no snapshot and no workload, and says why
//! (Accepted=False/QuotaExceeded); when the older goes, the younger takes its place.
//!
//! One test function: the controllers reconcile the whole cluster.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use rustronaut_crds::{Gateway, Tenant};
use serde_json::json;
use std::time::Duration;

mod common;
use common::{create, eventually, install_crds, operator_client, snapshot, start_controllers};

/// `(status, reason, message)` of Gateway `name`'s Accepted condition for its generation.
async fn accepted(api: &Api<Gateway>, name: &str) -> Option<(String, String, String)> {
    let g = api.get(name).await.ok()?;
    let s = g.status?;
    let c = s.conditions.into_iter().find(|c| c.type_ == "Accepted")?;
    (c.observed_generation == g.metadata.generation).then_some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_sites_beyond_the_tenants_quota_are_not_served() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let ns = rustronaut_e2e::namespace(&client, "quota").await;
    let tenant = format!("quota-{suffix}");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"namespaces": [ns], "quotas": {"gateways": 1, "sites": 1}}
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    let key = |n: u8| match n {
        1 => "xTIB0vTdtu3xl8ri7MVi/cZuEBZ5uwOaXvMIsN58gX0=",
        _ => "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
    };
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "first"},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                     "tunnel": {"replicas": 1, "sites": [
                         {"name": "dc1", "tenant": tenant, "publicKey": key(1)},
                         {"name": "dc2", "tenant": tenant, "publicKey": key(2)}]}}
        }),
    )
    .await;
    // creationTimestamp has one-second resolution: make "second" unambiguously younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "second"},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-quota-test");

    // The older Gateway is served, with its first site only.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s = eventually("first's snapshot", || {
        let secrets = secrets.clone();
        async move { snapshot(&secrets, "first").await }
    })
    .await;
    let sites: Vec<&str> = s
        .tunnel
        .as_ref()
        .unwrap()
        .sites
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(sites, ["dc1"], "dc2 is beyond the tenant's one site");

    // The younger one says why it is not served, and nothing was created for it.
    let (status, reason, message) = eventually("second's Accepted=False", || {
        let gateways = gateways.clone();
        async move {
            accepted(&gateways, "second")
                .await
                .filter(|c| c.0 == "False")
        }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "QuotaExceeded")
    );
    assert!(
        message.contains("spec.quotas.gateways") && message.contains(&tenant),
        "{message}"
    );
    // Status is written after the workload: once first is Accepted, its Deployment exists.
    let (status, ..) = eventually("first Accepted", || {
        let gateways = gateways.clone();
        async move { accepted(&gateways, "first").await }
    })
    .await;
    assert_eq!(status, "True");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("first").await.unwrap().is_some());
    assert!(
        deployments.get_opt("second").await.unwrap().is_none(),
        "no workload beyond the quota"
    );
    assert!(snapshot(&secrets, "second").await.is_none(), "no snapshot");
    // The older Gateway goes: the younger takes its place.
    gateways
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually("second's Deployment", || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("second").await.ok()? }
    })
    .await;
    let (status, ..) = eventually("second Accepted=True", || {
        let gateways = gateways.clone();
        async move {
            accepted(&gateways, "second")
                .await
                .filter(|c| c.0 == "True")
        }
    })
    .await;
    assert_eq!(status, "True");

    controllers.stop().await;
}
