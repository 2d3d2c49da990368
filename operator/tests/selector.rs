//! A Policy's namespaceSelector against a real API server (issue 14, item 8): it selects by
//! the labels of the tenant's Namespaces, and a label change reaches the snapshot. Before the
//! fix the selector was only checked for presence, so `{env: dev}` selected prod too.
//!
//! One test function in its own binary: the controllers reconcile the whole cluster.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use rustronaut_contract::eval::Effect;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde_json::json;

mod common;
use common::{
    create, decide, eventually, install_crds, operator_client, snapshot, start_controllers,
};

async fn label(client: &kube::Client, ns: &str, env: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"env": env}}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_selector_follows_namespace_labels() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let admin = rustronaut_e2e::namespace(&client, "admin").await;
    let dev = rustronaut_e2e::namespace(&client, "dev").await;
    let prod = rustronaut_e2e::namespace(&client, "prod").await;
    label(&client, &dev, "dev").await;
    label(&client, &prod, "prod").await;
    let domain = format!("t-{suffix}.example");

    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": format!("t-{suffix}")},
            "spec": {"namespaces": [&admin, &dev, &prod], "adminNamespace": admin,
                     "domains": [format!("*.{domain}")]}
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &admin);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }),
    )
    .await;
    // The same app in dev and prod, allowed from 10/8 by a Policy of its own namespace.
    for ns in [&dev, &prod] {
        let resources: Api<RtnResource> = Api::namespaced(client.clone(), ns);
        create(
            &resources,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
                "metadata": {"name": "app", "labels": {"app": "web"}},
                "spec": {
                    "gatewayRefs": [{"namespace": admin, "name": "edge"}],
                    "protocol": "HTTP",
                    "hostnames": [format!("{ns}.{domain}")],
                    "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
                }
            }),
        )
        .await;
        let policies: Api<Policy> = Api::namespaced(client.clone(), ns);
        create(
            &policies,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
                "metadata": {"name": "office"},
                "spec": {"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Allow",
                         "rules": [{"name": "office",
                                    "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}
            }),
        )
        .await;
    }
    // The admin namespace denies 10.9/16 in dev namespaces only.
    let admin_policies: Api<Policy> = Api::namespaced(client.clone(), &admin);
    create(
        &admin_policies,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "lab-off-dev"},
            "spec": {"targetSelector": {"matchLabels": {"app": "web"}},
                     "namespaceSelector": {"matchLabels": {"env": "dev"}},
                     "action": "Deny",
                     "rules": [{"name": "lab",
                                "from": [{"sourceCIDRs": {"cidrs": ["10.9.0.0/16"]}}]}]}
        }),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-selector-test");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &admin);
    let s = eventually("both apps with the Deny on dev", || {
        let secrets = secrets.clone();
        let (dev, prod) = (dev.clone(), prod.clone());
        async move {
            let s = snapshot(&secrets, "edge").await?;
            (decide(&s, &dev, "app", "10.9.0.1") == Effect::Deny
                && decide(&s, &prod, "app", "10.1.0.1") == Effect::Allow)
                .then_some(s)
        }
    })
    .await;
    assert_eq!(decide(&s, &dev, "app", "10.1.0.1"), Effect::Allow);
    assert_eq!(
        decide(&s, &prod, "app", "10.9.0.1"),
        Effect::Allow,
        "prod is not selected by {{env: dev}}"
    );

    // prod relabelled dev: the Deny reaches it, without any Policy or Resource changing.
    label(&client, &prod, "dev").await;
    eventually("the Deny on the relabelled namespace", || {
        let secrets = secrets.clone();
        let prod = prod.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            (decide(&s, &prod, "app", "10.9.0.1") == Effect::Deny).then_some(())
        }
    })
    .await;

    controllers.stop().await;
}
