//! Work per edit, against a real API server (issue 17): an edit of one tenant's Policy
//! compiles the Gateway of that tenant once, by its reconcile, and nothing else. The status
//! pass takes that build ([`rustronaut_operator::cache::builds`]) and the other tenant's
//! unchanged one instead of compiling every Gateway again, and the other tenant's Gateway is
//! not rebuilt at all.
//!
//! One test function in its own binary: the controllers reconcile the whole cluster.

use kube::api::{Api, Patch, PatchParams};
use rustronaut_contract::snapshot::ObjectRef;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use rustronaut_operator::metrics::{BuildLabels, Metrics};
use serde_json::json;
use std::time::{Duration, Instant};

mod common;
use common::{
    TEST_MANAGER, create, eventually, http_resource, install_crds, operator_client, snapshot,
    start_controllers,
};

/// (builds by reconciles, builds by the status pass, builds the status pass reused).
fn counts(m: &Metrics) -> (u64, u64, u64) {
    let by = |who: &str| {
        m.builds
            .get_or_create(&BuildLabels { by: who.into() })
            .get()
    };
    (
        by("Gateway"),
        by("ResourcePolicyStatus"),
        m.builds_shared.get(),
    )
}

/// Waits until the build counters have not moved for two seconds: every reconcile and pass
/// that the last change set off is done.
async fn quiet(m: &Metrics) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = counts(m);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counts(m);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(2) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the build counters never settled: {now:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_one_tenants_policy_compiles_only_that_tenants_gateway_once() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let a = rustronaut_e2e::namespace(&client, "alpha").await;
    let b = rustronaut_e2e::namespace(&client, "beta").await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    for (name, ns) in [("alpha", &a), ("beta", &b)] {
        create(
            &tenants,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
                "metadata": {"name": format!("{name}-{suffix}")},
                "spec": {"namespaces": [ns], "adminNamespace": ns,
                         "domains": [format!("*.{name}-{suffix}.example")]}
            }),
        )
        .await;
        // Each tenant its own Gateway (admitting its own tenant), Resource and Policy.
        let gateways: Api<Gateway> = Api::namespaced(client.clone(), ns);
        create(
            &gateways,
            json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
                "metadata": {"name": "edge"},
                "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
            }),
        )
        .await;
        let resources: Api<RtnResource> = Api::namespaced(client.clone(), ns);
        create(
            &resources,
            http_resource("app", ns, &format!("app.{name}-{suffix}.example"), "app"),
        )
        .await;
        let policies: Api<Policy> = Api::namespaced(client.clone(), ns);
        create(&policies, policy("10.0.0.0/8")).await;
    }

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-builds-test");
    let metrics = controllers.metrics.clone();
    for ns in [&a, &b] {
        let resources: Api<RtnResource> = Api::namespaced(client.clone(), ns);
        eventually(&format!("{ns}/app Programmed"), || {
            let resources = resources.clone();
            async move {
                let r = resources.get("app").await.ok()?;
                r.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    // The status pass can make a Resource Programmed by building on its own, before the
    // Gateway's reconcile ran: the baseline is taken once both reconciles built.
    let builds = &controllers.stores.builds;
    let (gw_a, gw_b) = (ObjectRef::new(&a, "edge"), ObjectRef::new(&b, "edge"));
    eventually("both Gateways built by their reconciles", || {
        let started = builds.builds_started(&gw_a) >= 1 && builds.builds_started(&gw_b) >= 1;
        std::future::ready(started.then_some(()))
    })
    .await;
    let before = quiet(&metrics).await;
    let (a_before, b_before) = (builds.builds_started(&gw_a), builds.builds_started(&gw_b));

    // The edit: alpha's Policy admits another network.
    let policies: Api<Policy> = Api::namespaced(client.clone(), &a);
    let edited = policies
        .patch(
            "office",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(policy("192.168.0.0/16")),
        )
        .await
        .unwrap();
    let generation = edited.metadata.generation;
    let secrets = Api::namespaced(client.clone(), &a);
    eventually("alpha's snapshot carries the edit", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            serde_json::to_string(&s.policies)
                .ok()?
                .contains("192.168.0.0/16")
                .then_some(())
        }
    })
    .await;
    eventually("alpha's Policy status for the edit", || {
        let policies = policies.clone();
        async move {
            let p = policies.get("office").await.ok()?;
            p.status?
                .conditions
                .iter()
                .all(|c| c.observed_generation == generation)
                .then_some(())
        }
    })
    .await;
    let after = quiet(&metrics).await;
    let (a_after, b_after) = (builds.builds_started(&gw_a), builds.builds_started(&gw_b));
    eprintln!(
        "one Policy edit: alpha's Gateway built {} time(s) by its reconcile, beta's {}; \
         the status pass compiled {} and reused {} (counters before {before:?}, after {after:?})",
        a_after - a_before,
        b_after - b_before,
        after.1 - before.1,
        after.2 - before.2,
    );
    assert!(
        a_after > a_before,
        "alpha's Gateway is rebuilt for the edit"
    );
    assert_eq!(
        b_after, b_before,
        "beta's Gateway serves nothing of alpha's: not rebuilt"
    );
    assert_eq!(
        after.1, before.1,
        "the status pass compiles no Gateway: it reuses alpha's new build and beta's last one"
    );
    assert!(
        after.2 >= before.2 + 2,
        "the status pass took both builds from the reconciles: {before:?} -> {after:?}"
    );

    controllers.stop().await;
}

/// Policy `office`: Allow from `cidr` to Resource `app`.
fn policy(cidr: &str) -> serde_json::Value {
    json!({
        "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
        "metadata": {"name": "office"},
        "spec": {"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Allow",
                 "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": [cidr]}}]}]}
    })
}
