//! Leader election against a real API server: one holder at a time, a holder that stops
//! renewing (a killed pod) is replaced once its Lease expires, a released Lease is taken at
//! once, and a leader that finds another holder learns it has lost.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustronaut_operator::leader::{Elector, LeaseConfig};
use std::time::{Duration, Instant};

fn cfg(ns: &str, id: &str) -> LeaseConfig {
    let mut c = LeaseConfig::new(ns, id);
    c.name = "operator-test".into();
    c.lease_duration = Duration::from_secs(3);
    c.renew_deadline = Duration::from_secs(2);
    c.retry_period = Duration::from_millis(300);
    c
}

async fn holder(api: &Api<Lease>) -> (Option<String>, Option<i32>) {
    let l = api.get("operator-test").await.unwrap();
    let s = l.spec.unwrap();
    (s.holder_identity, s.lease_transitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_failover_release_and_loss() {
    let admin = rustronaut_e2e::client().await;
    let ns = rustronaut_e2e::namespace(&admin, "lease").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    // The candidates run as the operator's ServiceAccount with the Role it ships with.
    let params = PatchParams::apply("rustronaut-operator-test").force();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .patch(
            rustronaut_operator::rbac::NAME,
            &params,
            &Patch::Apply(&rustronaut_operator::rbac::lease_role(&ns)),
        )
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "rustronaut-operator", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": rustronaut_operator::rbac::NAME},
        "subjects": [{"kind": "ServiceAccount", "name": "rustronaut-operator",
                      "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .patch("rustronaut-operator", &params, &Patch::Apply(&binding))
        .await
        .unwrap();
    let client = rustronaut_e2e::shared()
        .client_as(
            &format!("system:serviceaccount:{ns}:rustronaut-operator"),
            &["system:serviceaccounts", "system:authenticated"],
        )
        .await;

    let a = Elector::new(client.clone(), cfg(&ns, "a")).acquire().await;
    assert!(a.is_leading());
    assert_eq!(holder(&leases).await, (Some("a".into()), Some(0)));

    // b waits while a renews, well past a lease duration.
    let b = tokio::spawn(Elector::new(client.clone(), cfg(&ns, "b")).acquire());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!b.is_finished(), "b must not lead while a renews");
    assert_eq!(holder(&leases).await.0.as_deref(), Some("a"));

    // a "dies" (stops renewing, releases nothing): b takes over after expiry.
    let killed = Instant::now();
    a.abandon();
    let b = tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .expect("b takes over after a's Lease expires")
        .unwrap();
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "not before expiry"
    );
    assert_eq!(holder(&leases).await, (Some("b".into()), Some(1)));

    // b releases on shutdown: a returning candidate gets it without waiting for expiry.
    b.release().await.unwrap();
    let released = Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(5),
        Elector::new(client.clone(), cfg(&ns, "a")).acquire(),
    )
    .await
    .expect("a released Lease is taken at once");
    assert!(released.elapsed() < Duration::from_secs(3));
    assert_eq!(holder(&leases).await.0.as_deref(), Some("a"));

    // Someone else holds a live Lease (say a partition healed): a learns it has lost.
    let lost = a.lost();
    let mut lease = leases.get("operator-test").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("c".into());
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    spec.lease_duration_seconds = Some(60);
    leases
        .replace("operator-test", &PostParams::default(), &lease)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("the old leader notices");
    assert!(!a.is_leading());
    assert_eq!(
        holder(&leases).await.0.as_deref(),
        Some("c"),
        "a never writes it back"
    );
}
