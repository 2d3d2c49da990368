//! Secrets the operator generates are used only when it generated them for that Gateway
//! (issue 14, item 10), against a real API server with the operator's controllers under the
//! RBAC it ships with.
//!
//! Someone who can write Secrets in the Gateway's namespace pre-creates the session key
//! Secret `<gw>-session-<tenant>` (a key of their choosing, which would seal sessions for any
//! user) and the tunnel token Secret `<gw>-tunnel-token`. Neither carries the operator's
//! labels nor a controller owner reference to the Gateway. The operator must not use them
//! (no session key for that tenant in the snapshot: OIDC login fails closed), must not
//! overwrite them, and must report them with a Warning Event `ForeignSecret` on the Gateway.
//! Before the fix the forged session key signed the tenant's sessions.
//!
//! One test function in its own binary: the controller reconciles every Gateway of the
//! cluster, so two controllers in one test binary would race each other.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use rustronaut_crds::{Gateway, Resource as RtnResource, Tenant};
use serde_json::json;

mod common;
use common::{create, eventually, install_crds, operator_client, snapshot, start_controllers};

/// dc1's connector key (RFC 7748 test vector public key).
const DC1_KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
/// base64 of 32 bytes the attacker chose.
const FORGED: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

async fn foreign_secret_event(events: &Api<Event>, gateway: &str, secret: &str) -> Option<()> {
    let list = events.list(&ListParams::default()).await.ok()?;
    list.items
        .iter()
        .any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some("ForeignSecret")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(gateway)
                && e.note.as_deref().is_some_and(|n| n.contains(secret))
        })
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_session_or_token_secret_is_refused_reported_and_left_alone() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "foreign").await;
    let apps = rustronaut_e2e::namespace(&client, "foreignapps").await;
    let domain = format!("{suffix}.example");
    let tenant = format!("t-{suffix}");
    let session_secret = format!("edge-session-{tenant}");

    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);
    create(
        &app_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "okta-client"},
               "stringData": {"clientSecret": "s3cret"}}),
    )
    .await;
    // The planted Secrets, before any Gateway exists.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    let planted_session: Secret = create(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": session_secret},
               "stringData": {"key-20260101000000": FORGED}}),
    )
    .await;
    let planted_token: Secret = create(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-tunnel-token"},
               "stringData": {"token": "chosen-by-the-attacker"}}),
    )
    .await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"namespaces": [apps, gw_ns], "adminNamespace": apps,
                     "domains": [format!("*.{domain}")],
                     "identityProviders": [{"name": "okta", "oidc": {
                         "issuer": "https://okta.example", "clientID": "rustronaut",
                         "clientSecretRef": {"name": "okta-client"}}}],
                     "session": {"duration": "1h"}}
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &gw_ns);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
        }),
    )
    .await;
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "hub"},
            "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
                     "tunnel": {"addressPool": "100.96.0.0/16", "sites": [
                         {"name": "dc1", "tenant": tenant, "publicKey": DC1_KEY,
                          "advertisedCIDRs": ["10.1.0.0/16"]}]}}
        }),
    )
    .await;
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &apps);
    create(
        &resources,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": "app"},
            "spec": {
                "gatewayRefs": [{"namespace": gw_ns, "name": "edge"}],
                "protocol": "HTTP",
                "hostnames": [format!("app.{domain}")],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
            }
        }),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-foreign-secret-test");

    // The snapshot is served, without the forged key: the tenant has no session key here.
    let snap = eventually("edge's snapshot with the tenant", || async {
        let s = snapshot(&secrets, "edge").await?;
        s.tenant(&tenant).is_some().then_some(s)
    })
    .await;
    let keys = &snap.tenant(&tenant).unwrap().session.signing_keys;
    assert!(
        keys.iter().all(|k| k.secret.expose() != FORGED),
        "the forged session key is not used"
    );
    assert!(keys.is_empty(), "no session key for the tenant at all");

    // Reported on each Gateway.
    let events: Api<Event> = Api::namespaced(client.clone(), &gw_ns);
    eventually("a ForeignSecret Warning on edge", || {
        foreign_secret_event(&events, "edge", &session_secret)
    })
    .await;
    eventually("a ForeignSecret Warning on hub", || {
        foreign_secret_event(&events, "hub", "hub-tunnel-token")
    })
    .await;

    // And left alone: not overwritten, not adopted.
    for planted in [&planted_session, &planted_token] {
        let name = planted.metadata.name.clone().unwrap();
        let now = secrets.get(&name).await.unwrap();
        assert_eq!(now.data, planted.data, "{name} not overwritten");
        assert_eq!(
            now.metadata.owner_references, planted.metadata.owner_references,
            "{name} not adopted"
        );
        assert_eq!(now.metadata.labels, planted.metadata.labels, "{name}");
    }
    controllers.stop().await;
}
