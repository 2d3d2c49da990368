//! The operator holds the data of its own Secrets and of the Secrets Tenants and Gateways
//! name, and nothing else (issue 14, last item), against a real API server with the
//! operator's controllers under the RBAC it ships with.
//!
//! Beside a Tenant's OIDC client Secret and a Gateway's TLS Secret, an unrelated Secret
//! (with the `last-applied-configuration` annotation `kubectl apply` leaves, a full copy of
//! its data) lives in the same namespace. Once the snapshot is built: the named Secrets'
//! data is held, the unrelated one's is not (its metadata is, without annotations), and the
//! operator's own store holds only Secrets labelled as its own. A change of the client
//! secret reaches the snapshot (the data is fetched again when its resourceVersion moves),
//! and naming the once-unrelated Secret makes its data held. Before this change every
//! Secret of the cluster was cached whole.
//!
//! One test function in its own binary: the controller reconciles every Gateway of the
//! cluster, so two controllers in one test binary would race each other.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use rustronaut_contract::snapshot::IdentityProviderKind;
use rustronaut_crds::{Gateway, Resource as RtnResource, Tenant};
use serde_json::json;

mod common;
use common::{
    create, eventually, http_resource, install_crds, operator_client, snapshot, start_controllers,
};

const CERT: &str = include_str!("../../contract/tests/fixtures/ca.pem");
const KEY: &str = include_str!("../../contract/tests/fixtures/ec-p256.pem");

fn client_secret(s: &rustronaut_contract::snapshot::Snapshot, tenant: &str) -> Option<String> {
    match &s.tenant(tenant)?.identity_provider("okta")?.kind {
        IdentityProviderKind::Oidc(o) => Some(o.client_secret.expose().to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operators_own_and_the_named_secrets_are_held() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "secretsgw").await;
    let apps = rustronaut_e2e::namespace(&client, "secretsapps").await;
    let tenant = format!("t-{suffix}");

    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);
    create(
        &app_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "okta-client"},
               "stringData": {"clientSecret": "s3cret"}}),
    )
    .await;
    let applied = r#"{"apiVersion":"v1","kind":"Secret","stringData":{"password":"hunter2"}}"#;
    create(
        &app_secrets,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "unrelated", "annotations": {
                   "kubectl.kubernetes.io/last-applied-configuration": applied}},
               "stringData": {"password": "hunter2"}}),
    )
    .await;
    let gw_secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    create(
        &gw_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edge-tls"},
               "type": "kubernetes.io/tls", "stringData": {"tls.crt": CERT, "tls.key": KEY}}),
    )
    .await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"namespaces": [apps, gw_ns], "adminNamespace": apps,
                     "domains": [format!("*.{suffix}.example")],
                     "identityProviders": [{"name": "okta", "oidc": {
                         "issuer": "https://okta.example", "clientID": "rustronaut",
                         "clientSecretRef": {"name": "okta-client"}}}]}
        }),
    )
    .await;
    create(
        &Api::<Gateway>::namespaced(client.clone(), &gw_ns),
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                                    "tls": {"certificateRefs": [{"name": "edge-tls"}]}}]}
        }),
    )
    .await;

    // A Resource of the tenant on the Gateway: a tenant is in a snapshot through them.
    create(
        &Api::<RtnResource>::namespaced(client.clone(), &apps),
        http_resource("app", &gw_ns, &format!("app.{suffix}.example"), "app"),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-secrets-test");
    let cache = controllers.stores.secrets.clone();

    let snap = eventually(
        "edge's snapshot with the tenant's client secret",
        || async {
            let s = snapshot(&gw_secrets, "edge").await?;
            (client_secret(&s, &tenant)? == "s3cret").then_some(s)
        },
    )
    .await;
    assert_eq!(snap.listeners[0].name, "https");
    assert!(cache.get(&apps, "okta-client").is_some(), "named: held");
    assert!(cache.get(&gw_ns, "edge-tls").is_some(), "named: held");
    assert!(
        cache.get(&apps, "unrelated").is_none(),
        "nobody names it: its data is not held"
    );
    let meta = cache
        .meta
        .state()
        .into_iter()
        .find(|m| m.name_any() == "unrelated" && m.namespace().as_deref() == Some(&apps))
        .expect("its metadata is watched");
    assert_eq!(meta.metadata.annotations, None, "annotations are not kept");
    let own = cache.own.state();
    assert!(!own.is_empty(), "the snapshot Secret at least");
    for s in &own {
        assert_eq!(
            s.labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("rustronaut-operator"),
            "{}/{} in the own store",
            s.namespace().unwrap_or_default(),
            s.name_any()
        );
    }

    // A rotated client secret reaches the snapshot.
    app_secrets
        .patch(
            "okta-client",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"clientSecret": "r0tated"}})),
        )
        .await
        .unwrap();
    eventually("the rotated client secret in the snapshot", || async {
        let s = snapshot(&gw_secrets, "edge").await?;
        (client_secret(&s, &tenant)? == "r0tated").then_some(())
    })
    .await;

    // Naming the unrelated Secret (as the client secret) makes its data held.
    tenants
        .patch(
            &tenant,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"identityProviders": [{"name": "okta", "oidc": {
                "issuer": "https://okta.example", "clientID": "rustronaut",
                "clientSecretRef": {"name": "unrelated", "key": "password"}}}]}}),
            ),
        )
        .await
        .unwrap();
    eventually("the newly named Secret in the snapshot", || async {
        let s = snapshot(&gw_secrets, "edge").await?;
        (client_secret(&s, &tenant)? == "hunter2").then_some(())
    })
    .await;
    assert!(cache.get(&apps, "unrelated").is_some());
    controllers.stop().await;
}
