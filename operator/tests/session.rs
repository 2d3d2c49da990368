//! OIDC session keys against a real API server (the e2e control plane): a Tenant with an OIDC
//! provider (its client Secret present) and a Gateway admitting it -> the Secret
//! `<gw>-session-<tenant>` exists, owned by the Gateway, with one generated key, and the
//! snapshot's tenant carries it; a re-reconcile changes neither; a newer key added by hand
//! signs (listed first) while the old one still verifies, and a bad entry is skipped; a
//! deleted Secret is made anew with a new key; removing the OIDC provider prunes the Secret
//! and the snapshot has no keys.
//!
//! The controller runs as the operator's ServiceAccount under `rustronaut_operator::rbac`
//! (impersonation), so a missing permission fails here.

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustronaut_contract::snapshot::{SessionKey, Snapshot};
use rustronaut_crds::{Gateway, Resource as RtnResource, Tenant};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use common::{
    TEST_MANAGER, create, eventually, install_crds, operator_client, snapshot, start_controllers,
};

/// The tenant's signing keys in `snap` as (id, secret) pairs, in order.
fn keys_of(snap: &Snapshot, tenant: &str) -> Vec<(String, String)> {
    let t = snap.tenant(tenant).expect("the tenant is in the snapshot");
    t.session
        .signing_keys
        .iter()
        .map(|SessionKey { id, secret }| (id.clone(), secret.expose().to_string()))
        .collect()
}

/// The Secret's entries as text.
fn entries(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
        .collect()
}

/// Checks the one generated key of a fresh session Secret: `key-<UTC YYYYMMDDhhmmss>` holding
/// base64 of 32 bytes. Returns (id, key).
fn generated_key(s: &Secret) -> (String, String) {
    let e = entries(s);
    assert_eq!(e.len(), 1, "one key: {:?}", e.keys());
    let (entry, key) = e.into_iter().next().unwrap();
    let id = entry
        .strip_prefix("key-")
        .expect("named key-<id>")
        .to_string();
    assert!(
        id.len() == 14 && id.bytes().all(|c| c.is_ascii_digit()),
        "id is UTC YYYYMMDDhhmmss: {id}"
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap();
    assert_eq!(bytes.len(), 32);
    (id, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keys_lifecycle() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "sess").await;
    let apps = rustronaut_e2e::namespace(&client, "sessapps").await;
    let domain = format!("{suffix}.example");
    let tenant = format!("t-{suffix}");
    let session_secret = format!("edge-session-{tenant}");

    // The OIDC client Secret first, so the provider is resolved from the start.
    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);
    create(
        &app_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "okta-client"},
               "stringData": {"clientSecret": "s3cret"}}),
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
    // tenants.from defaults to Same: the tenant holds the Gateway's namespace.
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
    // A Resource on the Gateway: only tenants with one are in its snapshot.
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
    let controllers = start_controllers(operator, "operator-session-test");

    // The Secret: owned by the Gateway, the operator's labels, one generated key.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    let created = eventually("the session key Secret", || {
        let secrets = secrets.clone();
        let name = session_secret.clone();
        async move { secrets.get_opt(&name).await.ok()? }
    })
    .await;
    let gw = gateways.get("edge").await.unwrap();
    let owner = &created.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid), owner.controller),
        ("Gateway", gw.uid().as_ref(), Some(true))
    );
    let labels = created.labels();
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "rustronaut-operator"
    );
    assert_eq!(labels["app.kubernetes.io/instance"], "edge");
    assert_eq!(labels["app.kubernetes.io/component"], "session-keys");
    assert_eq!(created.annotations()["rustronaut.io/tenant"], tenant);
    let (id, key) = generated_key(&created);

    // The snapshot's tenant signs with it (the very first snapshot: the key was passed into
    // the build, not read back from the cache later).
    let snap = eventually("the snapshot", || {
        let secrets = secrets.clone();
        async move { snapshot(&secrets, "edge").await }
    })
    .await;
    assert_eq!(keys_of(&snap, &tenant), [(id.clone(), key.clone())]);
    assert_eq!(snap.tenant(&tenant).unwrap().session.duration_seconds, 3600);

    // A re-reconcile (a spec change of the Gateway) keeps the Secret and the keys as they are.
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"listeners": [
                {"name": "http", "port": 8080, "protocol": "HTTP"},
                {"name": "alt", "port": 8081, "protocol": "HTTP"}]}})),
        )
        .await
        .unwrap();
    let snap = eventually("the snapshot with two listeners", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            (s.listeners.len() == 2).then_some(s)
        }
    })
    .await;
    assert_eq!(keys_of(&snap, &tenant), [(id.clone(), key.clone())]);
    let again = secrets.get(&session_secret).await.unwrap();
    assert_eq!(
        (again.uid(), again.resource_version(), entries(&again)),
        (created.uid(), created.resource_version(), entries(&created)),
        "never rewritten"
    );

    // Let the Gateway settle first (its Deployment's status, written as kwok starts the pod,
    // re-reconciles it too): then only the watch on the key Secret can bring the rotation in
    // before the next resync (5 minutes), which is what this part checks.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &gw_ns);
    eventually("the gateway Deployment available", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("edge").await.ok()?;
            (d.status?.available_replicas? >= 1).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Rotation: a newer key added by hand signs; the old one still verifies. A bad entry
    // alongside is skipped without costing the good ones.
    let newer = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let newer_id = "99991231235959";
    secrets
        .patch(
            &session_secret,
            &PatchParams {
                field_manager: Some(TEST_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"data": {
                format!("key-{newer_id}"): ByteString(newer.clone().into_bytes()),
                "key-broken": ByteString(b"not a key".to_vec()),
            }})),
        )
        .await
        .unwrap();
    let want = [
        (newer_id.to_string(), newer.clone()),
        (id.clone(), key.clone()),
    ];
    eventually("the newer key listed first", || {
        let secrets = secrets.clone();
        let tenant = tenant.clone();
        let want = want.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            (keys_of(&s, &tenant) == want).then_some(())
        }
    })
    .await;
    let rotated: Vec<String> = entries(&secrets.get(&session_secret).await.unwrap())
        .into_keys()
        .collect();
    assert_eq!(
        rotated,
        [
            format!("key-{id}"),
            format!("key-{newer_id}"),
            "key-broken".to_string()
        ],
        "the operator leaves people's entries alone"
    );

    // Deleting the Secret makes a new one with a new key (every session ends).
    secrets
        .delete(&session_secret, &DeleteParams::default())
        .await
        .unwrap();
    let remade = eventually("a new session key Secret", || {
        let secrets = secrets.clone();
        let name = session_secret.clone();
        let old = created.uid();
        async move {
            let s = secrets.get_opt(&name).await.ok()??;
            (s.uid() != old).then_some(s)
        }
    })
    .await;
    let (_, fresh) = generated_key(&remade);
    assert_ne!(fresh, key, "a new key");
    eventually("the snapshot with only the new key", || {
        let secrets = secrets.clone();
        let tenant = tenant.clone();
        let fresh = fresh.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            let keys = keys_of(&s, &tenant);
            (keys.len() == 1 && keys[0].1 == fresh).then_some(())
        }
    })
    .await;

    // No OIDC provider left: the Secret is pruned and the snapshot has no keys.
    tenants
        .patch(
            &tenant,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"identityProviders": []}})),
        )
        .await
        .unwrap();
    eventually("the session key Secret pruned", || {
        let secrets = secrets.clone();
        let name = session_secret.clone();
        async move { secrets.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    eventually("a snapshot without keys", || {
        let secrets = secrets.clone();
        let tenant = tenant.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            keys_of(&s, &tenant).is_empty().then_some(())
        }
    })
    .await;

    controllers.stop().await;
    gateways
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    tenants
        .delete(&tenant, &DeleteParams::default())
        .await
        .unwrap();
}
