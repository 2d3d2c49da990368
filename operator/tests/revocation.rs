//! One tenant's broken object must not freeze another tenant's revocation (issue 14, item 2),
//! against a real API server with the operator's controllers under the RBAC it ships with.
//!
//! Tenant `alpha` holds a Resource whose site upstream host the snapshot refuses
//! (`DB.corp.example`: upper case). The CRD refuses such hosts now, so the Resource is created
//! the way one would exist in a real cluster: under the previous CRD, which had no rule on the
//! host, before the current CRD is applied again (the API server keeps stored objects). Tenant
//! `beta` then deletes its Allow. The deletion must reach the shared Gateway's snapshot, and
//! alpha's Resource must be left out with `Accepted=False, reason Invalid`. Before the fix the
//! snapshot build failed as a whole and the last good snapshot, with beta's Allow, kept
//! serving.
//!
//! One test function in its own binary: it changes a CRD, which no other test may see.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustronaut_contract::eval::Effect;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde_json::{Value, json};
use std::time::Instant;

mod common;
use common::{
    TEST_MANAGER, create, decide, eventually, install_crds, operator_client, snapshot,
    start_controllers,
};

/// dc1's connector key (RFC 7748 test vector public key).
const DC1_KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

/// Removes the CEL rules on site upstream hosts, recursively: the Resource CRD as it was
/// before they were added.
fn without_host_rules(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                rules.retain(|r| {
                    !r["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("host must be"))
                });
                if rules.is_empty() {
                    map.remove("x-kubernetes-validations");
                }
            }
            for child in map.values_mut() {
                without_host_rules(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_host_rules),
        _ => {}
    }
}

async fn apply_resource_crd(client: &kube::Client, old: bool) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = rustronaut_crds::generate::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "Resource")
        .unwrap();
    let mut v = serde_json::to_value(&crd).unwrap();
    if old {
        let before = v.to_string();
        without_host_rules(&mut v);
        assert_ne!(before, v.to_string(), "the current CRD has the host rule");
    }
    crds.patch(
        &crd.metadata.name.clone().unwrap(),
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_resource_of_one_tenant_does_not_freeze_another_tenants_revocation() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let platform = rustronaut_e2e::namespace(&client, "platform").await;
    let a = rustronaut_e2e::namespace(&client, "alpha").await;
    let b = rustronaut_e2e::namespace(&client, "beta").await;
    let alpha = format!("alpha-{suffix}");
    let beta_host = format!("app.beta-{suffix}.example");

    let tenants: Api<Tenant> = Api::all(client.clone());
    for (name, ns) in [(&alpha, &a), (&format!("beta-{suffix}"), &b)] {
        let domain = format!("*.{}.example", name);
        create(
            &tenants,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
                "metadata": {"name": name},
                "spec": {"namespaces": [ns], "adminNamespace": ns, "domains": [domain]}
            }),
        )
        .await;
    }
    // A platform Gateway open to every tenant, with a tunnel site of alpha's.
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &platform);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shared"},
            "spec": {"tenants": {"from": "All"},
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                     "tunnel": {"addressPool": "100.96.0.0/16", "sites": [
                         {"name": "dc1", "tenant": alpha, "publicKey": DC1_KEY,
                          "advertisedCIDRs": ["10.1.0.0/16"]}]}}
        }),
    )
    .await;
    let resource = |name: &str, host: &str, upstream: Value| {
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name},
            "spec": {
                "gatewayRefs": [{"namespace": platform, "name": "shared"}],
                "protocol": "HTTP",
                "hostnames": [host],
                "rules": [{"name": "all", "upstreams": [upstream]}]
            }
        })
    };
    let beta_resources: Api<RtnResource> = Api::namespaced(client.clone(), &b);
    create(
        &beta_resources,
        resource(
            "app",
            &beta_host,
            json!({"service": {"name": "app", "port": 80}}),
        ),
    )
    .await;
    let beta_policies: Api<Policy> = Api::namespaced(client.clone(), &b);
    create(
        &beta_policies,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "office"},
            "spec": {"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Allow",
                     "rules": [{"name": "office",
                                "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}
        }),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-revocation-test");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &platform);
    let before = eventually("beta's Allow in the snapshot", || {
        let secrets = secrets.clone();
        let b = b.clone();
        async move {
            let s = snapshot(&secrets, "shared").await?;
            (decide(&s, &b, "app", "10.1.2.3") == Effect::Allow).then_some(s)
        }
    })
    .await;
    assert!(before.resource(&b, "app").is_some());

    // The current CRD refuses the host ...
    let alpha_resources: Api<RtnResource> = Api::namespaced(client.clone(), &a);
    let broken = resource(
        "db",
        &format!("db.{alpha}.example"),
        json!({"site": {"gateway": format!("{platform}/shared"), "name": "dc1"},
               "host": "DB.corp.example", "port": 5432}),
    );
    let refused = alpha_resources
        .create(
            &Default::default(),
            &serde_json::from_value(broken.clone()).unwrap(),
        )
        .await
        .expect_err("the CRD refuses an upper-case site host");
    assert!(
        refused.to_string().contains("host must be an IP address"),
        "{refused}"
    );
    // ... but one stored under the previous CRD is still there after an upgrade.
    apply_resource_crd(&client, true).await;
    eventually("the previous CRD accepting the host", || {
        let alpha_resources = alpha_resources.clone();
        let broken = broken.clone();
        async move {
            alpha_resources
                .create(
                    &Default::default(),
                    &serde_json::from_value(broken).unwrap(),
                )
                .await
                .ok()
        }
    })
    .await;
    apply_resource_crd(&client, false).await;

    // beta revokes: its Allow is deleted.
    let revoked_at = Instant::now();
    beta_policies
        .delete("office", &DeleteParams::default())
        .await
        .unwrap();
    let after = eventually("beta's revocation in the snapshot", || {
        let secrets = secrets.clone();
        let b = b.clone();
        async move {
            let s = snapshot(&secrets, "shared").await?;
            (decide(&s, &b, "app", "10.1.2.3") == Effect::Deny).then_some(s)
        }
    })
    .await;
    let took = revoked_at.elapsed();
    eprintln!("beta's revocation reached the snapshot in {took:?}");
    // About 0.8 s here (the operator's reconcile, the Secret write, this poll every 250 ms);
    // the bound leaves room for a slow CI machine without hiding a freeze (which is for ever).
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert!(after.resource(&b, "app").is_some(), "beta is still served");
    assert!(
        after.resource(&a, "db").is_none(),
        "the broken Resource is left out"
    );

    // alpha is told why its Resource is not served.
    let (reason, message) = eventually("db's Accepted=False", || {
        let alpha_resources = alpha_resources.clone();
        async move {
            let r = alpha_resources.get("db").await.ok()?;
            let c = r
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Accepted" && c.status == "False")?;
            Some((c.reason, c.message))
        }
    })
    .await;
    assert_eq!(reason, "Invalid", "{message}");
    assert!(message.contains("DB.corp.example"), "{message}");

    controllers.stop().await;
}
