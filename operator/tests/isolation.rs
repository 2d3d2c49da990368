//! Tenant isolation against a real API server, with the operator's controllers running under
//! the RBAC it ships with: nothing tenant `alpha` writes changes what a Gateway shared by both
//! tenants allows for tenant `beta`.
//!
//! `alpha` tries, from its admin namespace:
//! - an Allow for everyone and a Deny for 10/8, both with `targetSelector: {}` and
//!   `namespaceSelector: {}` (the widest selection the API offers);
//! - a Resource that claims `beta`'s host name;
//! - a Policy whose targetRefs name `beta`'s Resource (targetRefs are same-namespace).
//!
//! The Gateway's snapshot must carry `alpha`'s policies (so they were compiled, and they do
//! decide for `alpha`'s own Resource) while `beta`'s Resource decides exactly as before, and the
//! host-name grab is refused with a reason naming the conflict.
//!
//! One test function: the controllers reconcile the whole cluster.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rustronaut_contract::eval::Effect;
use rustronaut_contract::snapshot::Snapshot;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde_json::{Value, json};

mod common;
use common::{
    create, decide, eventually, install_crds, operator_client, snapshot, start_controllers,
};

/// The policies of the snapshot that select `ns/name`, by `namespace/name`.
fn policies_on(s: &Snapshot, ns: &str, name: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .policies
        .iter()
        .filter(|p| {
            p.targets
                .iter()
                .any(|t| t.resource.namespace == ns && t.resource.name == name)
        })
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_change_what_another_tenants_resource_allows() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let platform = rustronaut_e2e::namespace(&client, "platform").await;
    let a = rustronaut_e2e::namespace(&client, "alpha").await;
    let b = rustronaut_e2e::namespace(&client, "beta").await;
    let alpha_domain = format!("alpha-{suffix}.example");
    let beta_domain = format!("beta-{suffix}.example");
    let beta_host = format!("app.{beta_domain}");

    let tenants: Api<Tenant> = Api::all(client.clone());
    for (name, ns, domain) in [("alpha", &a, &alpha_domain), ("beta", &b, &beta_domain)] {
        create(
            &tenants,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
                "metadata": {"name": format!("{name}-{suffix}")},
                "spec": {"namespaces": [ns], "adminNamespace": ns,
                         "domains": [format!("*.{domain}")]}
            }),
        )
        .await;
    }
    // A platform Gateway in a namespace no tenant holds, open to every tenant.
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &platform);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shared"},
            "spec": {"tenants": {"from": "All"},
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }),
    )
    .await;
    let resource = |name: &str, host: &str| {
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name},
            "spec": {
                "gatewayRefs": [{"namespace": platform, "name": "shared"}],
                "protocol": "HTTP",
                "hostnames": [host],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
            }
        })
    };
    let policy = |name: &str, spec: Value| {
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": name}, "spec": spec
        })
    };
    let beta_resources: Api<RtnResource> = Api::namespaced(client.clone(), &b);
    create(&beta_resources, resource("app", &beta_host)).await;
    let beta_policies: Api<Policy> = Api::namespaced(client.clone(), &b);
    create(
        &beta_policies,
        policy(
            "office",
            json!({"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Allow",
                   "rules": [{"name": "office",
                              "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}),
        ),
    )
    .await;

    // The controllers, in-process as the binary runs them, under the shipped RBAC.
    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-isolation-test");

    // Before: beta's office network is allowed, everyone else denied by default.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &platform);
    let before = eventually("beta's Resource and Policy in the snapshot", || {
        let secrets = secrets.clone();
        let b = b.clone();
        async move {
            let s = snapshot(&secrets, "shared").await?;
            (s.resource(&b, "app").is_some() && !policies_on(&s, &b, "app").is_empty()).then_some(s)
        }
    })
    .await;
    assert_eq!(decide(&before, &b, "app", "10.1.2.3"), Effect::Allow);
    assert_eq!(decide(&before, &b, "app", "192.0.2.9"), Effect::Deny);
    let beta_policies_before = policies_on(&before, &b, "app");
    assert_eq!(beta_policies_before, vec![format!("{b}/office")]);

    // alpha does its worst, from its admin namespace.
    let alpha_resources: Api<RtnResource> = Api::namespaced(client.clone(), &a);
    create(
        &alpha_resources,
        resource("own", &format!("own.{alpha_domain}")),
    )
    .await;
    create(&alpha_resources, resource("steal", &beta_host)).await;
    let alpha_policies: Api<Policy> = Api::namespaced(client.clone(), &a);
    let everything = json!({"targetSelector": {}, "namespaceSelector": {}});
    let mut allow_all = everything.clone();
    allow_all["action"] = json!("Allow");
    allow_all["rules"] = json!([{"name": "anyone", "from": [{"anonymous": true}]}]);
    create(&alpha_policies, policy("allow-everyone", allow_all)).await;
    let mut deny_office = everything.clone();
    deny_office["action"] = json!("Deny");
    deny_office["rules"] =
        json!([{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]);
    create(&alpha_policies, policy("deny-office", deny_office)).await;
    create(
        &alpha_policies,
        policy(
            "by-name",
            json!({"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Deny",
                   "rules": [{"name": "all", "from": [{"sourceCIDRs": {"cidrs": ["0.0.0.0/0"]}}]}]}),
        ),
    )
    .await;

    // The snapshot now carries alpha's policies, and they decide for alpha's own Resource ...
    let after = eventually("alpha's Resource and Policies in the snapshot", || {
        let secrets = secrets.clone();
        let a = a.clone();
        async move {
            let s = snapshot(&secrets, "shared").await?;
            (s.resource(&a, "own").is_some() && policies_on(&s, &a, "own").len() == 2).then_some(s)
        }
    })
    .await;
    assert_eq!(
        policies_on(&after, &a, "own"),
        vec![format!("{a}/allow-everyone"), format!("{a}/deny-office")]
    );
    assert_eq!(decide(&after, &a, "own", "192.0.2.9"), Effect::Allow);
    assert_eq!(decide(&after, &a, "own", "10.1.2.3"), Effect::Deny);

    // ... but beta's Resource is selected by beta's policy alone and decides as before.
    assert_eq!(policies_on(&after, &b, "app"), beta_policies_before);
    assert_eq!(decide(&after, &b, "app", "10.1.2.3"), Effect::Allow);
    assert_eq!(decide(&after, &b, "app", "192.0.2.9"), Effect::Deny);

    // The host-name grab is not served, and alpha is told why.
    assert!(
        after.resource(&a, "steal").is_none(),
        "a Resource with another tenant's host name must not be served"
    );
    let (status, reason, message) = eventually("steal's Accepted=False", || {
        let alpha_resources = alpha_resources.clone();
        async move {
            let r = alpha_resources.get("steal").await.ok()?;
            let c = r
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Accepted" && c.status == "False")?;
            Some((c.status, c.reason, c.message))
        }
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(reason, "HostnameOutsideTenant", "{message}");
    assert!(message.contains(&beta_host), "names the host: {message}");
    // The by-name Policy resolves to nothing in alpha's namespace and says so.
    let message = eventually("by-name's ResolvedRefs=False", || {
        let alpha_policies = alpha_policies.clone();
        async move {
            let p = alpha_policies.get("by-name").await.ok()?;
            p.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ResolvedRefs" && c.status == "False")
                .map(|c| c.message)
        }
    })
    .await;
    assert!(
        message.contains("app"),
        "names the missing target: {message}"
    );

    controllers.stop().await;
}
