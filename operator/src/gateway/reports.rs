//! Pod reports without a rebuild: a gateway pod writing the snapshot version it loaded into
//! the `<gw>-status` ConfigMap changes only the Gateway's `Ready` (and `configVersion`), so it
//! recomputes the status from what the last reconcile saw instead of reconciling again.
//!
//! Why (issue 17): the ConfigMap was an owned object of the Gateway controller, so every
//! report woke a full reconcile (the world read, the snapshot compiled, a dozen server-side
//! applies) just to flip `Ready`; after one Policy edit each replica reports once, so a
//! Gateway of N replicas was compiled N + 1 times per edit, and its status write woke the
//! controller once more. Now:
//!
//! ```text
//!  reconcile ──status step──> settle(Seen) ──> Memo[gw] = Seen + the status written
//!  report (ConfigMap Apply) ──> Memo[gw] for this generation? ──yes──> status(Seen + reports)
//!                                                             └─no──> full reconcile
//!  ConfigMap deleted ──> full reconcile (it is re-created)
//! ```
//!
//! The memo is what makes this safe: it holds everything [`status::status`] reads except
//! the reports, as the last reconcile saw it, for the generation it reconciled; a report
//! for another generation, or for a Gateway not reconciled yet by this process, falls back
//! to the full reconcile. One lock orders the writers, so a report never writes a status
//! computed from an older reconcile over a newer one, and reports older than the ones a
//! reconcile already used (a lagging watch) are ignored by their resource version.
//!
//! The Gateway's own watch passes only spec changes (`generation`), so a status write,
//! here or in the reconcile, no longer wakes the controller either.
//!
//! The Deployment's readiness goes the same way: its status changes (pods becoming ready
//! during a rollout, a pod lost) are watched here rather than as an owned object of the
//! controller, and recompute `Ready` from the memo with the new Deployment. A change the
//! memo cannot stand in for (the Deployment's spec edited by someone: a new generation;
//! deleted; recreated) is a full reconcile, which puts it back:
//!
//! ```text
//!  Deployment Apply, same uid, resource version not newer  ──> nothing (a lagging watch)
//!  Deployment Apply, same uid and generation as the memo's ──> status(Seen + Deployment)
//!  Deployment Apply, other uid or generation, or Delete     ──> full reconcile
//! ```

use super::GatewayContext;
use super::status::{self, Built};
use crate::apply::apply_status;
use crate::error::Error;
use crate::meta::labels;
use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use rustronaut_crds::Gateway;
use rustronaut_crds::gateway::{GatewayStatus, TunnelStatus};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a reconcile saw, apart from the reports: [`status::Observed`] owned, for one
/// generation of one Gateway.
#[derive(Debug, Clone)]
pub struct Seen {
    /// metadata.generation reconciled.
    pub generation: Option<i64>,
    /// The build.
    pub built: Built,
    /// The snapshot version in the Secret (current or last good).
    pub served: Option<String>,
    /// The Deployment as applied.
    pub deployment: Option<Deployment>,
    /// The Service as applied.
    pub service: Option<Service>,
    /// Listener names in spec order.
    pub listeners: Vec<String>,
    /// Why `spec.podTemplate` was refused, if it was.
    pub pod_template_refused: Option<String>,
    /// The tunnel hub's state.
    pub tunnel: Option<TunnelStatus>,
    /// The reports used, and the ConfigMap resource version they came from.
    pub reports: Reports,
}

/// The status ConfigMap's data at one resource version.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    /// Pod name -> snapshot version it loaded.
    pub data: BTreeMap<String, String>,
    /// The ConfigMap's resource version, as a number (0 when unknown). The apiserver's
    /// resource versions are etcd revisions: larger is newer for one object.
    pub version: u64,
}

impl Reports {
    /// The reports held by `cm` (none: empty, version 0).
    pub fn of(cm: Option<&ConfigMap>) -> Self {
        let Some(cm) = cm else {
            return Self::default();
        };
        Self {
            data: cm.data.clone().unwrap_or_default().into_iter().collect(),
            version: cm
                .resource_version()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

struct Entry {
    seen: Seen,
    /// The status last written (or found equal), the `previous` of the next computation.
    status: GatewayStatus,
}

/// The last [`Seen`] and written status per Gateway (`namespace/name`), behind the one lock
/// that orders status writes of the reconcile and of reports.
///
/// Only this process writes Gateway statuses while it leads, and a replica that loses the
/// Lease exits (`main.rs`), so the memo never outlives a leadership term: the status it
/// holds is the one in the API server, and it may stand in for the cache's copy, which lags
/// our own writes by a watch event.
#[derive(Default)]
pub struct Memo(tokio::sync::Mutex<BTreeMap<String, Entry>>);

impl Memo {
    /// The Deployment (uid, generation) the last reconcile of `key` (`namespace/name`)
    /// applied, if this process reconciled it.
    pub async fn deployment(&self, key: &str) -> Option<(Option<String>, Option<i64>)> {
        let memo = self.0.lock().await;
        let d = memo.get(key)?.seen.deployment.as_ref()?;
        Some((d.metadata.uid.clone(), d.metadata.generation))
    }
}

/// The status of `seen` against `previous`, at `now`.
pub fn compute(seen: &Seen, previous: Option<&GatewayStatus>, now: Time) -> GatewayStatus {
    status::status(&status::Observed {
        generation: seen.generation,
        previous,
        built: seen.built.clone(),
        served: seen.served.clone(),
        deployment: seen.deployment.as_ref(),
        service: seen.service.as_ref(),
        listeners: seen.listeners.clone(),
        reports: seen.reports.data.clone(),
        pod_template_refused: seen.pod_template_refused.clone(),
        tunnel: seen.tunnel.clone(),
        now,
    })
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn write(
    ctx: &GatewayContext,
    ns: &str,
    name: &str,
    new: &GatewayStatus,
) -> Result<(), Error> {
    let api: Api<Gateway> = Api::namespaced(ctx.ctx.client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": Gateway::api_version(&()),
        "kind": Gateway::kind(&()),
        "status": new,
    });
    apply_status(&api, name, &body)
        .await
        .map(drop)
        .map_err(|source| Error::Status {
            namespace: ns.to_string(),
            name: name.to_string(),
            source,
        })
}

/// The reconcile's status step: computes the status of `seen`, writes it when it differs
/// from the current one, and remembers both for the reports that follow.
pub async fn settle(ctx: &GatewayContext, gw: &Gateway, mut seen: Seen) -> Result<(), Error> {
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    let key = format!("{ns}/{name}");
    let mut memo = ctx.memo.0.lock().await;
    // Deleted Gateways leave (a deletion does not reconcile).
    memo.retain(|k, _| {
        k.split_once('/').is_some_and(|(n, g)| {
            ctx.stores
                .gateways
                .get(&ObjectRef::new(g).within(n))
                .is_some()
        })
    });
    // Our own last write is at least as new as the cached Gateway's status.
    let previous = memo
        .get(&key)
        .map(|e| e.status.clone())
        .or_else(|| gw.status.clone());
    // Reports a report already brought in are newer than the ones this reconcile read.
    if let Some(e) = memo.get(&key)
        && e.seen.reports.version > seen.reports.version
    {
        seen.reports = e.seen.reports.clone();
    }
    let new = compute(&seen, previous.as_ref(), now());
    if previous.as_ref() != Some(&new) {
        write(ctx, &ns, &name, &new).await?;
    }
    memo.insert(key, Entry { seen, status: new });
    Ok(())
}

/// What a report event asks for.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The status was recomputed (and written if it changed).
    Settled,
    /// Older than what the memo holds: nothing to do.
    Stale,
    /// Not reconciled yet for this generation (or the ConfigMap is gone): a full reconcile.
    Reconcile,
}

/// How a watched Deployment differs from the one the memo holds.
#[derive(Debug, PartialEq, Eq)]
enum DeploymentChange {
    /// The one the memo holds, or older (a lagging watch).
    Same,
    /// Only its status moved: the memo can stand in for a reconcile.
    Status,
    /// Another object, or its spec changed (someone edited it): reconcile to put it back.
    Spec,
}

fn deployment_change(held: Option<&Deployment>, new: &Deployment) -> DeploymentChange {
    let Some(held) = held else {
        return DeploymentChange::Spec;
    };
    if held.metadata.uid != new.metadata.uid {
        return DeploymentChange::Spec;
    }
    // Ordered by resource version first: the watch can deliver the previous generation's
    // status updates after the reconcile applied (and the memo holds) the next generation,
    // and such an event says nothing new (seen in CI: it woke a needless reconcile).
    let version = |d: &Deployment| d.resource_version().and_then(|v| v.parse::<u64>().ok());
    if let (Some(h), Some(n)) = (version(held), version(new))
        && n <= h
    {
        return DeploymentChange::Same;
    }
    if held.metadata.generation != new.metadata.generation {
        return DeploymentChange::Spec;
    }
    DeploymentChange::Status
}

/// The Gateway owning a status ConfigMap or a Deployment (its controller ownerReference).
fn owner(obj: &impl Resource) -> Option<ObjectRef<Gateway>> {
    let ns = obj.namespace()?;
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Gateway")
        .map(|o| ObjectRef::new(&o.name).within(&ns))
}

/// `initial`: the event is from the watch's first listing (start-up or a relist).
async fn on_report(
    ctx: &GatewayContext,
    gw: &ObjectRef<Gateway>,
    cm: &ConfigMap,
    initial: bool,
) -> Outcome {
    let reports = Reports::of(Some(cm));
    recompute(ctx, gw, initial, |seen| {
        if reports.version != 0 && reports.version <= seen.reports.version {
            return Outcome::Stale;
        }
        seen.reports = reports;
        Outcome::Settled
    })
    .await
}

/// A Deployment event: its readiness recomputes the status from the memo ([`DeploymentChange`]).
async fn on_deployment(
    ctx: &GatewayContext,
    gw: &ObjectRef<Gateway>,
    deployment: &Deployment,
    initial: bool,
) -> Outcome {
    recompute(ctx, gw, initial, |seen| {
        match deployment_change(seen.deployment.as_ref(), deployment) {
            DeploymentChange::Same => Outcome::Stale,
            DeploymentChange::Spec => Outcome::Reconcile,
            DeploymentChange::Status => {
                seen.deployment = Some(deployment.clone());
                Outcome::Settled
            }
        }
    })
    .await
}

/// The status of `gw` from its memo with `update` applied to a copy of what the reconcile
/// saw (which returns [`Outcome::Settled`] to go on, anything else to stop there); written
/// when it changed.
async fn recompute(
    ctx: &GatewayContext,
    gw: &ObjectRef<Gateway>,
    initial: bool,
    update: impl FnOnce(&mut Seen) -> Outcome,
) -> Outcome {
    let Some(current) = ctx.stores.gateways.get(gw) else {
        // Not (yet) in the cache: the Gateway's own watch brings it, with a reconcile.
        return Outcome::Stale;
    };
    let ns = current.namespace().unwrap_or_default();
    let name = current.name_any();
    let key = format!("{ns}/{name}");
    let mut memo = ctx.memo.0.lock().await;
    let Some(entry) = memo.get_mut(&key) else {
        // At start-up the controller reconciles every Gateway anyway, and that reconcile
        // reads the ConfigMap itself: asking for another would build each Gateway twice.
        return if initial {
            Outcome::Stale
        } else {
            Outcome::Reconcile
        };
    };
    if entry.seen.generation != current.meta().generation {
        return Outcome::Reconcile;
    }
    let mut seen = entry.seen.clone();
    let outcome = update(&mut seen);
    if outcome != Outcome::Settled {
        return outcome;
    }
    let new = compute(&seen, Some(&entry.status), now());
    if new != entry.status {
        if let Err(e) = write(ctx, &ns, &name, &new).await {
            tracing::warn!(gateway = %key, error = %e, "status from a pod report or the Deployment not written; reconciling");
            return Outcome::Reconcile;
        }
        ctx.ctx.metrics.status_from_reports.inc();
    }
    *entry = Entry { seen, status: new };
    Outcome::Settled
}

/// Watches the status ConfigMaps and the Deployments of every Gateway until `shutdown`: a
/// report or a readiness change recomputes the owner's status from the memo; what the memo
/// cannot answer (no reconcile of this generation yet, a deleted ConfigMap or Deployment, a
/// Deployment whose spec changed) goes to `reconcile`, the Gateway controller's queue.
pub async fn run(
    ctx: Arc<GatewayContext>,
    reconcile: mpsc::UnboundedSender<ObjectRef<Gateway>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // The gateway's only ConfigMap is its status ConfigMap, its only Deployment its pods.
    let selector = format!(
        "{},{}={}",
        labels::MANAGED_SELECTOR,
        labels::NAME,
        labels::GATEWAY
    );
    let reports = watch_owned::<ConfigMap, _, _>(
        ctx.clone(),
        reconcile.clone(),
        &selector,
        "status ConfigMap",
        |ctx, gw, cm, initial| async move { on_report(&ctx, &gw, &cm, initial).await },
    );
    let deployments = watch_owned::<Deployment, _, _>(
        ctx,
        reconcile,
        &selector,
        "gateway Deployment",
        |ctx, gw, d, initial| async move { on_deployment(&ctx, &gw, &d, initial).await },
    );
    tokio::select! {
        ((), ()) = futures::future::join(reports, deployments) => {}
        () = shutdown => {}
    }
}

/// Watches the `K`s matching `selector` and hands each one a Gateway owns to `on_change`
/// (`initial`: from the watch's first listing); a deletion, or what `on_change` cannot
/// settle, goes to `reconcile`.
async fn watch_owned<K, F, Fut>(
    ctx: Arc<GatewayContext>,
    reconcile: mpsc::UnboundedSender<ObjectRef<Gateway>>,
    selector: &str,
    what: &'static str,
    on_change: F,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + 'static,
    F: Fn(Arc<GatewayContext>, ObjectRef<Gateway>, K, bool) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let api: Api<K> = Api::all(ctx.ctx.client.clone());
    watcher(api, watcher::Config::default().labels(selector))
        .default_backoff()
        .map_err(|e| tracing::warn!(error = %e, "{what} watch failed; retrying"))
        .for_each(|event| {
            let (obj, deleted, initial) = match event {
                Ok(watcher::Event::Apply(o)) => (Some(o), false, false),
                Ok(watcher::Event::InitApply(o)) => (Some(o), false, true),
                Ok(watcher::Event::Delete(o)) => (Some(o), true, false),
                Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(()) => {
                    (None, false, false)
                }
            };
            let gw = obj.as_ref().and_then(owner);
            let settled = match (obj, gw.clone()) {
                (Some(o), Some(gw)) if !deleted => {
                    futures::future::Either::Left(on_change(ctx.clone(), gw, o, initial))
                }
                (_, Some(_)) => {
                    futures::future::Either::Right(std::future::ready(Outcome::Reconcile))
                }
                (_, None) => futures::future::Either::Right(std::future::ready(Outcome::Stale)),
            };
            let reconcile = reconcile.clone();
            async move {
                if settled.await == Outcome::Reconcile
                    && let Some(gw) = gw
                {
                    let _ = reconcile.unbounded_send(gw);
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(rv: &str, data: serde_json::Value, owner_kind: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "edge-status", "namespace": "gw", "resourceVersion": rv,
                "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1", "kind": owner_kind,
                    "name": "edge", "uid": "u1", "controller": true}]},
            "data": data
        }))
        .unwrap()
    }

    #[test]
    fn reports_carry_the_data_and_a_numeric_version() {
        let r = Reports::of(Some(&cm("42", json!({"edge-a": "v1"}), "Gateway")));
        assert_eq!(r.version, 42);
        assert_eq!(r.data.get("edge-a").map(String::as_str), Some("v1"));
        let none = Reports::of(None);
        assert_eq!((none.version, none.data.len()), (0, 0));
    }

    #[test]
    fn the_owner_is_the_controlling_gateway_only() {
        let c = cm("1", json!({}), "Gateway");
        let o = owner(&c).expect("owned by a Gateway");
        assert_eq!(
            (o.name.as_str(), o.namespace.as_deref()),
            ("edge", Some("gw"))
        );
        assert!(owner(&cm("1", json!({}), "Resource")).is_none());
    }

    /// The same reconcile's view with more pods reporting the served version turns Ready
    /// True, with no other input: what a report alone may change.
    #[test]
    fn a_report_alone_turns_ready() {
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "edge"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": 2}
        }))
        .unwrap();
        let mut seen = Seen {
            generation: Some(3),
            built: Built::Ok {
                attached: BTreeMap::new(),
                problems: 0,
                pending: BTreeMap::new(),
            },
            served: Some("v2".into()),
            deployment: Some(deployment),
            service: None,
            listeners: vec![],
            pod_template_refused: None,
            tunnel: None,
            reports: Reports {
                data: [
                    ("a".to_string(), "v2".to_string()),
                    ("b".into(), "v1".into()),
                ]
                .into(),
                version: 10,
            },
        };
        let t = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let before = compute(&seen, None, t.clone());
        let ready = |s: &GatewayStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
        };
        assert_eq!(ready(&before).as_deref(), Some("False"));
        assert_eq!(before.config_version, None, "not every pod has it yet");
        seen.reports.data.insert("b".into(), "v2".into());
        let after = compute(&seen, Some(&before), t);
        assert_eq!(ready(&after).as_deref(), Some("True"));
        assert_eq!(after.config_version.as_deref(), Some("v2"));
    }

    fn deployment(uid: &str, generation: i64, rv: &str, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "edge", "namespace": "gw", "uid": uid,
                "generation": generation, "resourceVersion": rv},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": ready}
        }))
        .unwrap()
    }

    #[test]
    fn only_a_deployments_status_is_settled_from_the_memo() {
        use DeploymentChange::*;
        let held = deployment("u1", 4, "100", 1);
        assert_eq!(
            deployment_change(Some(&held), &deployment("u1", 4, "101", 2)),
            Status,
            "pods became ready"
        );
        assert_eq!(
            deployment_change(Some(&held), &deployment("u1", 4, "100", 1)),
            Same
        );
        assert_eq!(
            deployment_change(Some(&held), &deployment("u1", 4, "99", 0)),
            Same,
            "a lagging watch never moves the memo back"
        );
        assert_eq!(
            deployment_change(Some(&held), &deployment("u1", 3, "98", 1)),
            Same,
            "the previous generation's status, delivered late"
        );
        assert_eq!(
            deployment_change(Some(&held), &deployment("u1", 5, "102", 2)),
            Spec,
            "someone edited the spec: reconcile to put it back"
        );
        assert_eq!(
            deployment_change(Some(&held), &deployment("u2", 4, "103", 2)),
            Spec,
            "deleted and recreated"
        );
        assert_eq!(
            deployment_change(None, &deployment("u1", 4, "101", 2)),
            Spec,
            "the last reconcile saw no Deployment"
        );
    }

    /// The same reconcile's view with the Deployment's pods ready turns Ready True: what a
    /// readiness change alone may change.
    #[test]
    fn a_deployment_becoming_ready_alone_turns_ready() {
        let mut seen = Seen {
            generation: Some(3),
            built: Built::Ok {
                attached: BTreeMap::new(),
                problems: 0,
                pending: BTreeMap::new(),
            },
            served: Some("v2".into()),
            deployment: Some(deployment("u1", 4, "100", 1)),
            service: None,
            listeners: vec![],
            pod_template_refused: None,
            tunnel: None,
            reports: Reports {
                data: [
                    ("a".to_string(), "v2".to_string()),
                    ("b".into(), "v2".into()),
                ]
                .into(),
                version: 10,
            },
        };
        let t = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let ready = |s: &GatewayStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
        };
        let before = compute(&seen, None, t.clone());
        assert_eq!(ready(&before).as_deref(), Some("False"), "1 of 2 ready");
        seen.deployment = Some(deployment("u1", 4, "101", 2));
        let after = compute(&seen, Some(&before), t);
        assert_eq!(ready(&after).as_deref(), Some("True"));
    }
}
