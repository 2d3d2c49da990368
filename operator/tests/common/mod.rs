//! Helpers shared by the integration tests: CRDs, polling, the operator's identity.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustronaut_contract::snapshot::Snapshot;
use rustronaut_operator::context::{Context, Settings};
use rustronaut_operator::runtime::Runtime;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Field manager of what the tests themselves apply.
pub const TEST_MANAGER: &str = "rustronaut-operator-test";

/// Installs the CRDs and waits until they are Established.
pub async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in rustronaut_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
    }
    for crd in rustronaut_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap();
        eventually(&format!("CRD {name} Established"), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
}

/// Polls `f` until it yields Some, for up to 60 seconds.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of `counter` once it has not moved for two seconds (at most 60 s): the
/// baseline for "this change causes no more of X", taken after the work already queued.
#[allow(dead_code)] // not every test binary asks
pub async fn settled(counter: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = counter();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = counter();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(2) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the counter kept moving for 60 s"
        );
    }
}

/// Creates `value` as a `K`.
pub async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: Clone + DeserializeOwned + serde::Serialize + Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {obj:?}: {e}"))
}

/// Installs the operator's ClusterRole and the tenant-admin ClusterRole, binds the first to
/// the operator's ServiceAccount, and returns a client impersonating that ServiceAccount.
pub async fn operator_client(admin: &kube::Client) -> kube::Client {
    let params = PatchParams::apply(TEST_MANAGER).force();
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    for role in [
        rustronaut_operator::rbac::cluster_role(),
        rustronaut_operator::rbac::tenant_admin_cluster_role(),
    ] {
        roles
            .patch(&role.name_any(), &params, &Patch::Apply(&role))
            .await
            .unwrap();
    }
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "rustronaut-operator-test"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": rustronaut_operator::rbac::NAME},
        "subjects": [{"kind": "ServiceAccount", "name": "rustronaut-operator",
                      "namespace": "rustronaut-system"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("rustronaut-operator-test", &params, &Patch::Apply(&binding))
        .await
        .unwrap();
    let (user, groups) = (
        "system:serviceaccount:rustronaut-system:rustronaut-operator",
        [
            "system:serviceaccounts",
            "system:serviceaccounts:rustronaut-system",
            "system:authenticated",
        ],
    );
    granted(
        admin,
        user,
        &groups,
        &rustronaut_operator::rbac::cluster_role(),
    )
    .await;
    rustronaut_e2e::shared().client_as(user, &groups).await
}

/// Waits until the API server's authorizer allows `user` every verb on every resource that
/// `role` grants.
///
/// Why: the authorizer reads roles and bindings from its own informer, so a binding just
/// written takes a moment to count. Controllers started in that moment see 403s, retry
/// their watches after a backoff of seconds, and the late lists wake every Gateway again:
/// a test counting the work of one edit then counts that too (seen once in CI, on a loaded
/// machine).
async fn granted(admin: &kube::Client, user: &str, groups: &[&str], role: &ClusterRole) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    let mut asks = Vec::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let (resource, subresource) = match resource.split_once('/') {
                    Some((r, s)) => (r.to_string(), Some(s.to_string())),
                    None => (resource.clone(), None),
                };
                for verb in &rule.verbs {
                    asks.push(ResourceAttributes {
                        group: Some(group.clone()),
                        resource: Some(resource.clone()),
                        subresource: subresource.clone(),
                        verb: Some(verb.clone()),
                        name: rule.resource_names.iter().flatten().next().cloned(),
                        ..Default::default()
                    });
                }
            }
        }
    }
    assert!(
        !asks.is_empty(),
        "the operator's ClusterRole grants something"
    );
    for ask in asks {
        let what = format!("{user} allowed {ask:?}");
        eventually(&what, || {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.into()),
                    groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                    resource_attributes: Some(ask.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let reviews = reviews.clone();
            async move {
                let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
                answer.status?.allowed.then_some(())
            }
        })
        .await;
    }
}

/// The snapshot in `<gw>-snapshot`, if the Secret exists and loads.
#[allow(dead_code)] // not every test binary asks
pub async fn snapshot(secrets: &Api<Secret>, gw: &str) -> Option<Snapshot> {
    let s = secrets.get_opt(&format!("{gw}-snapshot")).await.ok()??;
    let bytes = s.data?.get("snapshot.json")?.0.clone();
    Some(Snapshot::load(&bytes).expect("the operator writes snapshots that load"))
}

/// What a gateway loading `s` would decide for an anonymous GET / from `ip` to `ns/name`
/// (rule `all`).
#[allow(dead_code)] // not every test binary asks
pub fn decide(s: &Snapshot, ns: &str, name: &str, ip: &str) -> rustronaut_contract::eval::Effect {
    use rustronaut_contract::eval::{Request, evaluate};
    let set =
        rustronaut_contract::policy::PolicySet::compile(&s.tenants, &s.resources, &s.policies);
    let identity = rustronaut_contract::identity::Identity::anonymous(Some(ip.parse().unwrap()));
    let path = rustronaut_contract::path::normalize("/").unwrap().path;
    let request = Request::new(ns, name, &identity)
        .section("all")
        .http("GET", &path);
    evaluate(&set, &request, std::time::SystemTime::now(), "test").effect
}

/// The gateway image the tests' controllers write into Deployments.
pub const IMAGE: &str = "example.test/rustronaut/gateway:test";

/// The operator's controllers (Gateway, Tenant, Resource/Policy status), running in-process
/// as the binary runs them, under the client `operator` (the shipped RBAC).
pub struct Controllers {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// True once every cache has been filled (what `/readyz` reports).
    #[allow(dead_code)] // not every test binary asks
    pub ready: Arc<AtomicBool>,
    /// The controllers' caches.
    #[allow(dead_code)] // not every test binary asks
    pub stores: rustronaut_operator::cache::Stores,
    /// The controllers' metrics (counts of reconciles and of statuses from reports).
    #[allow(dead_code)] // not every test binary asks
    pub metrics: Arc<rustronaut_operator::metrics::Metrics>,
}

/// Starts the controllers; `reporter` names them in Events.
pub fn start_controllers(operator: kube::Client, reporter: &str) -> Controllers {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = Runtime::new(
        Context::new(operator, Some(reporter.into())),
        Settings {
            image: IMAGE.into(),
            ..Settings::default()
        },
    );
    let ready = controller.ready_flag();
    let stores = controller.stores();
    let metrics = controller.metrics();
    let task = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    Controllers {
        stop,
        task,
        ready,
        stores,
        metrics,
    }
}

impl Controllers {
    /// Asks the controllers to shut down and waits (at most 30 s) until they have.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the controllers stop on shutdown")
            .unwrap();
    }
}

/// An HTTP Resource `name` serving `hostname` on Gateway `gateway_ns/edge`, all requests to
/// Service `service` port 80 of its own namespace: the shape most tests need.
#[allow(dead_code)] // not every test binary asks
pub fn http_resource(name: &str, gateway_ns: &str, hostname: &str, service: &str) -> Value {
    json!({
        "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
        "metadata": {"name": name},
        "spec": {
            "gatewayRefs": [{"namespace": gateway_ns, "name": "edge"}],
            "protocol": "HTTP",
            "hostnames": [hostname],
            "rules": [{"name": "all", "upstreams": [{"service": {"name": service, "port": 80}}]}]
        }
    })
}
