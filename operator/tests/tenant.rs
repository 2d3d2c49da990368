//! The Tenant controller and the Resource/Policy status pass against a real API server (the
//! e2e control plane, with kube-controller-manager for garbage collection), running as the
//! operator's ServiceAccount under `rustronaut_operator::rbac` (impersonation), so a missing
//! permission fails here:
//! - two Tenants claim one namespace: the younger gets Accepted=False naming the older;
//! - held namespaces are labelled, isolated by a NetworkPolicy and bound for the admins;
//!   deleting the Tenant collects the NetworkPolicy (garbage collection) and the label;
//! - a Resource in a namespace no Tenant owns gets Accepted=False/NoTenant, one of a tenant
//!   the Gateway does not admit Accepted=False/NotAllowedByGateway, one over its tenant's
//!   quota Accepted=False/QuotaExceeded (and is not served); a served one is
//!   Programmed naming its Gateway;
//! - a Policy whose embedded test fails gets TestsPassed=False naming the test; fixed, True;
//!   targetRefs that match nothing are named under ResolvedRefs;
//! - deleting the only Allow policy revokes access: the snapshot Secret no longer holds it and
//!   the evaluator denies what it allowed.
//!
//! One test function on purpose: the controllers reconcile the whole cluster, so two in one
//! test binary would race each other.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustronaut_contract::eval::Effect;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use rustronaut_operator::tenant::{
    ADMIN_BINDING, NETWORK_POLICY, SIDECAR_NETWORK_POLICY, TENANT_LABEL,
};
use serde_json::{Value, json};
use std::time::Duration;

mod common;
use common::{
    create, decide, eventually, install_crds, operator_client, snapshot, start_controllers,
};

/// `(status, reason, message)` of condition `type_`, when it describes `generation`.
fn cond(
    conditions: &[Condition],
    type_: &str,
    generation: Option<i64>,
) -> Option<(String, String, String)> {
    let c = conditions.iter().find(|c| c.type_ == type_)?;
    (c.observed_generation == generation)
        .then(|| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn tenant_cond(
    api: &Api<Tenant>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let t = api.get(name).await.ok()?;
    let s = t.status.as_ref()?;
    (s.observed_generation == t.metadata.generation).then_some(())?;
    cond(&s.conditions, type_, t.metadata.generation)
}

async fn resource_cond(
    api: &Api<RtnResource>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let r = api.get(name).await.ok()?;
    cond(&r.status.as_ref()?.conditions, type_, r.metadata.generation)
}

async fn policy_cond(
    api: &Api<Policy>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let p = api.get(name).await.ok()?;
    cond(&p.status.as_ref()?.conditions, type_, p.metadata.generation)
}

/// Waits for a Warning Event with `reason` about the object named `name`.
async fn warning_about(client: &kube::Client, ns: &str, name: &str, reason: &str) {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(&format!("a Warning {reason} Event about {name}"), || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_object_status() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let apps = rustronaut_e2e::namespace(&client, "apps").await;
    let shared = rustronaut_e2e::namespace(&client, "shared").await;
    let unowned = rustronaut_e2e::namespace(&client, "unowned").await;
    let foreign = rustronaut_e2e::namespace(&client, "foreign").await;
    let domain = format!("{suffix}.example");
    let older = format!("older-{suffix}");
    let younger = format!("younger-{suffix}");

    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": older},
            "spec": {"namespaces": [apps, shared], "domains": [format!("*.{domain}")],
                     "admins": {"groups": [format!("admins-{suffix}")]},
                     "quotas": {"resources": 1}}
        }),
    )
    .await;
    // creationTimestamp has one-second resolution: make "younger" unambiguous.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": younger},
            "spec": {"namespaces": [shared],
                     "identityProviders": [{"name": "okta", "oidc": {
                         "issuer": "https://okta.example", "clientID": "rustronaut",
                         "clientSecretRef": {"name": "okta-client"}}}]}
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &apps);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }),
    )
    .await;
    let resource = |name: &str, host: String| {
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name},
            "spec": {
                "gatewayRefs": [{"namespace": apps, "name": "edge"}],
                "protocol": "HTTP",
                "hostnames": [host],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
            }
        })
    };
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &apps);
    create(&resources, resource("app", format!("app.{domain}"))).await;
    let orphans: Api<RtnResource> = Api::namespaced(client.clone(), &unowned);
    create(&orphans, resource("orphan", format!("orphan.{domain}"))).await;
    // A third Tenant's Resource asks for the Gateway, which admits only its own tenant.
    let third = format!("third-{suffix}");
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": third},
            "spec": {"namespaces": [foreign], "domains": [format!("*.third-{domain}")]}
        }),
    )
    .await;
    let foreigners: Api<RtnResource> = Api::namespaced(client.clone(), &foreign);
    create(
        &foreigners,
        resource("intruder", format!("x.third-{domain}")),
    )
    .await;
    let policies: Api<Policy> = Api::namespaced(client.clone(), &apps);
    let office = |tests: Value| {
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "office"},
            "spec": {
                "targetRefs": [{"kind": "Resource", "name": "app"}, {"kind": "Resource", "name": "ghost"}],
                "action": "Allow",
                "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}],
                "tests": tests
            }
        })
    };
    // The second test is wrong: an address outside 10/8 is denied by default.
    create(
        &policies,
        office(json!([
            {"name": "office-allowed", "expect": "Allow", "request": {"sourceIP": "10.1.2.3"}},
            {"name": "outsider-allowed", "expect": "Allow", "request": {"sourceIP": "192.0.2.9"}}
        ])),
    )
    .await;

    // The controllers, in-process as the binary runs them, under the shipped RBAC.
    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-test");

    // Claims: the older Tenant holds the shared namespace, the younger is told who does.
    let (status, reason, message) = eventually("the younger Tenant's claim conflict", || {
        let tenants = tenants.clone();
        let younger = younger.clone();
        async move {
            tenant_cond(&tenants, &younger, "Accepted")
                .await
                .filter(|c| c.0 == "False")
        }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NamespaceClaimed")
    );
    assert!(
        message.contains(&shared) && message.contains(&older),
        "names the namespace and its holder: {message}"
    );
    // Events of cluster-scoped objects go to the default namespace.
    warning_about(&client, "default", &younger, "NamespaceClaimed").await;
    let (status, ..) = eventually("the older Tenant Accepted", || {
        let tenants = tenants.clone();
        let older = older.clone();
        async move { tenant_cond(&tenants, &older, "Accepted").await }
    })
    .await;
    assert_eq!(status, "True");
    let usage = tenants
        .get(&older)
        .await
        .unwrap()
        .status
        .unwrap()
        .usage
        .unwrap();
    assert_eq!(
        (usage.resources, usage.policies, usage.gateways),
        (Some(1), Some(1), Some(1))
    );

    // Held namespaces: labelled, isolated, bound for the admins; owned by the Tenant.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&apps, &shared] {
        eventually(&format!("namespace {ns} labelled"), || {
            let namespaces = namespaces.clone();
            let older = older.clone();
            async move {
                let n = namespaces.get(ns).await.ok()?;
                (n.labels().get(TENANT_LABEL) == Some(&older)).then_some(())
            }
        })
        .await;
    }
    let labels = namespaces.get(&apps).await.unwrap().labels().clone();
    assert_eq!(
        labels["rustronaut.io/test"], "true",
        "other labels are left alone"
    );
    assert!(
        !namespaces
            .get(&unowned)
            .await
            .unwrap()
            .labels()
            .contains_key(TENANT_LABEL),
        "a namespace no Tenant claims is not labelled"
    );
    let older_uid = tenants.get(&older).await.unwrap().uid();
    let netpols: Api<NetworkPolicy> = Api::namespaced(client.clone(), &shared);
    let np = eventually("the NetworkPolicy", || {
        let netpols = netpols.clone();
        async move { netpols.get_opt(NETWORK_POLICY).await.ok()? }
    })
    .await;
    let owner = &np.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Tenant", older_uid.as_ref())
    );
    // Its companion closing the pods that carry an injected sidecar, owned the same way.
    let closed = eventually("the sidecar pods' NetworkPolicy", || {
        let netpols = netpols.clone();
        async move { netpols.get_opt(SIDECAR_NETWORK_POLICY).await.ok()? }
    })
    .await;
    let owner = &closed.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Tenant", older_uid.as_ref())
    );
    assert!(
        closed.spec.unwrap().ingress.unwrap_or_default().is_empty(),
        "no ingress for pods with a sidecar, except what their Resource's policy opens"
    );
    // The one Gateway admitting the older tenant (`edge` in `apps`, tenants: Same) is the one
    // peer: its pods, in its namespace, named (never "gateway pods of any namespace").
    let spec = np.spec.unwrap();
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let ingress = spec.ingress.unwrap_or_default();
    let peers = ingress[0].from.clone().unwrap_or_default();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        peers[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        apps
    );
    let pods = peers[0]
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert_eq!(pods["app.kubernetes.io/name"], "rustronaut-gateway");
    assert_eq!(pods["app.kubernetes.io/instance"], "edge");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &apps);
    let rb = eventually("the admins' RoleBinding", || {
        let bindings = bindings.clone();
        async move { bindings.get_opt(ADMIN_BINDING).await.ok()? }
    })
    .await;
    assert_eq!(rb.subjects.unwrap()[0].name, format!("admins-{suffix}"));

    // Resources: one served, one in a namespace nobody owns, one the Gateway refuses.
    let (status, reason, message) = eventually("the intruder's NotAllowedByGateway", || {
        let foreigners = foreigners.clone();
        async move { resource_cond(&foreigners, "intruder", "Accepted").await }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NotAllowedByGateway")
    );
    assert!(
        message.contains(&format!("{apps}/edge")) && message.contains(&third),
        "{message}"
    );
    assert_eq!(
        resource_cond(&foreigners, "intruder", "Programmed")
            .await
            .unwrap()
            .1,
        "NotAllowedByGateway"
    );
    let (status, reason, message) = eventually("the orphan's NoTenant", || {
        let orphans = orphans.clone();
        async move { resource_cond(&orphans, "orphan", "Accepted").await }
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NoTenant"));
    assert!(message.contains(&unowned), "{message}");
    let (status, _, message) = eventually("the app Programmed", || {
        let resources = resources.clone();
        async move {
            resource_cond(&resources, "app", "Programmed")
                .await
                .filter(|c| c.0 == "True")
        }
    })
    .await;
    assert_eq!(status, "True");
    assert!(message.contains(&format!("{apps}/edge")), "{message}");
    assert_eq!(
        resource_cond(&resources, "app", "Accepted")
            .await
            .unwrap()
            .0,
        "True"
    );
    // No Service "app" exists: served (degraded), and the missing backend is named.
    let (status, reason, message) = resource_cond(&resources, "app", "ResolvedRefs")
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackendNotFound")
    );
    assert!(message.contains("app:80"), "{message}");

    // Quota: the tenant may have one Resource; a second, younger one is refused.
    create(&resources, resource("extra", format!("extra.{domain}"))).await;
    let (status, reason, message) = eventually("the extra Resource's QuotaExceeded", || {
        let resources = resources.clone();
        async move { resource_cond(&resources, "extra", "Accepted").await }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "QuotaExceeded")
    );
    assert!(message.contains("spec.quotas.resources"), "{message}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);
    let s = snapshot(&secrets, "edge").await.unwrap();
    assert!(s.resource(&apps, "extra").is_none() && s.resource(&apps, "app").is_some());
    resources
        .delete("extra", &DeleteParams::default())
        .await
        .unwrap();

    // Policy: the failing test is named; the missing target is named.
    let (status, reason, message) = eventually("TestsPassed=False", || {
        let policies = policies.clone();
        async move { policy_cond(&policies, "office", "TestsPassed").await }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TestFailed"),
        "{message}"
    );
    assert!(message.contains("outsider-allowed"), "{message}");
    warning_about(&client, &apps, "office", "TestFailed").await;
    let (status, reason, message) = policy_cond(&policies, "office", "ResolvedRefs")
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TargetNotFound")
    );
    assert!(message.contains("ghost"), "{message}");

    // Fixed: the outsider is expected to be denied, the ghost target removed.
    let mut fixed = office(json!([
        {"name": "office-allowed", "expect": "Allow", "request": {"sourceIP": "10.1.2.3"}},
        {"name": "outsider-denied", "expect": "Deny", "request": {"sourceIP": "192.0.2.9"}}
    ]));
    fixed["spec"]["targetRefs"] = json!([{"kind": "Resource", "name": "app"}]);
    policies
        .patch(
            "office",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": fixed["spec"]})),
        )
        .await
        .unwrap();
    let (_, reason, message) = eventually("TestsPassed=True", || {
        let policies = policies.clone();
        async move {
            policy_cond(&policies, "office", "TestsPassed")
                .await
                .filter(|c| c.0 == "True")
        }
    })
    .await;
    assert_eq!(reason, "TestsPassed");
    assert!(message.contains("all 2 test"), "{message}");
    assert_eq!(
        policy_cond(&policies, "office", "Ready").await.unwrap().0,
        "True"
    );

    // Deleting the only Allow policy revokes access in the snapshot the gateways load.
    let before = eventually("the snapshot with the policy", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            s.policies.iter().any(|p| p.name == "office").then_some(s)
        }
    })
    .await;
    assert_eq!(decide(&before, &apps, "app", "10.1.2.3"), Effect::Allow);
    let (status, _, message) = eventually("Reachable=True", || {
        let resources = resources.clone();
        async move { resource_cond(&resources, "app", "Reachable").await }
    })
    .await;
    assert_eq!(status, "True");
    assert!(message.contains(&format!("{apps}/office")), "{message}");
    policies
        .delete("office", &DeleteParams::default())
        .await
        .unwrap();
    let after = eventually("the snapshot without the policy", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            (!s.policies.iter().any(|p| p.name == "office")).then_some(s)
        }
    })
    .await;
    assert!(
        after.resource(&apps, "app").is_some(),
        "the Resource is still served"
    );
    assert_eq!(decide(&after, &apps, "app", "10.1.2.3"), Effect::Deny);
    // ... and the Resource says so itself.
    let (_, reason, message) = eventually("Reachable=False", || {
        let resources = resources.clone();
        async move {
            resource_cond(&resources, "app", "Reachable")
                .await
                .filter(|c| c.0 == "False")
        }
    })
    .await;
    assert_eq!(reason, "NoAllowPolicy", "{message}");
    assert!(
        resources
            .get("app")
            .await
            .unwrap()
            .status
            .unwrap()
            .policies
            .is_empty(),
        "no Policy selects it any more"
    );

    // Deleting the older Tenant: its NetworkPolicies go (garbage collection), the shared
    // namespace passes to the younger Tenant, the label of the other goes.
    tenants
        .delete(&older, &DeleteParams::default())
        .await
        .unwrap();
    let netpols_apps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &apps);
    eventually("the NetworkPolicy collected", || {
        let netpols_apps = netpols_apps.clone();
        async move {
            netpols_apps
                .get_opt(NETWORK_POLICY)
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    eventually(
        "the shared namespace relabelled to the younger Tenant",
        || {
            let namespaces = namespaces.clone();
            let shared = shared.clone();
            let younger = younger.clone();
            async move {
                let n = namespaces.get(&shared).await.ok()?;
                (n.labels().get(TENANT_LABEL) == Some(&younger)).then_some(())
            }
        },
    )
    .await;
    eventually("the younger Tenant Accepted", || {
        let tenants = tenants.clone();
        let younger = younger.clone();
        async move {
            tenant_cond(&tenants, &younger, "Accepted")
                .await
                .filter(|c| c.0 == "True")
        }
    })
    .await;
    // Its identity provider's Secret (in its admin namespace, the first it claims) is missing.
    let (status, reason, message) = tenant_cond(&tenants, &younger, "ResolvedRefs")
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        message.contains("okta") && message.contains(&format!("{shared}/okta-client")),
        "{message}"
    );
    let secrets_shared: Api<Secret> = Api::namespaced(client.clone(), &shared);
    create(
        &secrets_shared,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "okta-client"},
               "stringData": {"clientSecret": "s3cret"}}),
    )
    .await;
    eventually("ResolvedRefs once the Secret exists", || {
        let tenants = tenants.clone();
        let younger = younger.clone();
        async move {
            tenant_cond(&tenants, &younger, "ResolvedRefs")
                .await
                .filter(|c| c.0 == "True")
        }
    })
    .await;
    let younger_uid = tenants.get(&younger).await.unwrap().uid();
    eventually(
        "the shared NetworkPolicy owned by the younger Tenant",
        || {
            let netpols = netpols.clone();
            let younger_uid = younger_uid.clone();
            async move {
                let np = netpols.get_opt(NETWORK_POLICY).await.ok()??;
                np.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == younger_uid.as_ref())
                    .then_some(())
            }
        },
    )
    .await;
    eventually("the apps namespace unlabelled", || {
        let namespaces = namespaces.clone();
        let apps = apps.clone();
        async move {
            let n = namespaces.get(&apps).await.ok()?;
            (!n.labels().contains_key(TENANT_LABEL)).then_some(())
        }
    })
    .await;
    let (status, reason, _) = eventually("the app loses its tenant", || {
        let resources = resources.clone();
        async move {
            resource_cond(&resources, "app", "Accepted")
                .await
                .filter(|c| c.0 == "False")
        }
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NoTenant"));

    // Settled: passes write only what differs, so nothing is rewritten without a change.
    let rv = |r: Option<String>| r.expect("a resourceVersion");
    let quiet = (
        rv(resources.get("app").await.unwrap().resource_version()),
        rv(tenants.get(&younger).await.unwrap().resource_version()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        quiet,
        (
            rv(resources.get("app").await.unwrap().resource_version()),
            rv(tenants.get(&younger).await.unwrap().resource_version()),
        ),
        "a settled world is not rewritten"
    );

    controllers.stop().await;
    for t in [&younger, &third] {
        tenants.delete(t, &DeleteParams::default()).await.unwrap();
    }
}
