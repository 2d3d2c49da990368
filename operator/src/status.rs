//! The Resource and Policy status pass: a thin shell around [`crate::conditions`].
//!
//! ```text
//!  read    the caches -> World (every Gateway) + each Gateway's build: the one its
//!          reconcile just made (crate::cache::builds), else the same pure gateway_snapshot
//!          built here; the embedded tests compiled and run one tenant at a time
//!          (World::by_tenant, policytest::compile_with / run_all_with)
//!  status  conditions::resource_status / policy_status for every object
//!  write   server-side apply of `status` (field manager "rustronaut-operator"), only where it
//!          differs from the status observed (crate::cache::statuses: the caches keep a
//!          digest of it, not the status), WRITES_IN_FLIGHT at a time (apply::each)
//! ```
//!
//! A pass rather than a controller per kind (see [`crate::pass`]): every condition depends on
//! the whole world. The builds are pure and deterministic, so a Gateway's build made by its
//! reconcile from the same caches is the one this pass would make: it is reused
//! ([`crate::cache::builds`] says when that is safe), and only a Gateway nobody has built
//! since the last change that may affect it is compiled here. `Programmed` says what the
//! Gateway controller writes (or, when its build fails, that the last good snapshot serves).
//!
//! Sidecar Resources (`spec.workload`) are not this pass's: [`crate::sidecar`] writes their
//! status (Accepted, Programmed, Ready and `workload`, from their own snapshot and pods).
//! Both writing would make the two fight over the same conditions on every pass.
//!
//! One object whose write fails does not stall the others: the pass writes everything it can
//! and reports the first failure, which retries the pass with backoff.

use crate::apply::apply_status;
use crate::cache::Stores;
use crate::cache::builds::{Version, WAIT_FOR_RECONCILE};
use crate::conditions::{
    BuildSummary, Builds, PolicyInputs, applied_policies, newly_failed, policy_status,
    resource_status, tests_by_policy,
};
use crate::context::Context;
use crate::error::Error;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use rustronaut_compile::snapshot::gateway_snapshot;
use rustronaut_contract::snapshot::ObjectRef;
use rustronaut_crds::conditions::types;
use rustronaut_crds::{Policy, Resource as RtnResource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// The kind label of this pass's metrics.
pub const KIND: &str = "ResourcePolicyStatus";

/// One status write, and the Warning Events to publish once it is written.
struct Write<S> {
    namespace: String,
    name: String,
    status: S,
    reference: ObjectReference,
    /// (reason, message) of conditions that just failed.
    events: Vec<(String, String)>,
}

/// A status write of either kind, so both go through one [`crate::apply::each`].
enum Kinded {
    Resource(Write<rustronaut_crds::ResourceStatus>),
    Policy(Write<rustronaut_crds::PolicyStatus>),
}

/// Computes every Resource's and Policy's status and writes those that changed. A `resync`
/// builds every Gateway afresh: the backstop for a change the shared builds' index missed.
pub async fn pass(ctx: &Context, stores: &Stores, resync: bool) -> Result<(), Error> {
    stores.ready().await?;
    if resync {
        stores.builds.invalidate_all(false);
    }
    // The Gateways an edit touched are being rebuilt by their reconciles right now: wait for
    // those builds (briefly) rather than compiling the same snapshots beside them.
    let gateways: Vec<ObjectRef> = stores
        .gateways
        .state()
        .iter()
        .filter(|g| g.meta().deletion_timestamp.is_none())
        .map(|g| ObjectRef::new(g.namespace().unwrap_or_default(), g.name_any()))
        .collect();
    let existing: std::collections::HashSet<&ObjectRef> = gateways.iter().collect();
    stores.builds.retain(|g| existing.contains(g));
    let started = std::time::Instant::now();
    stores.builds.settle(&gateways, WAIT_FOR_RECONCILE).await;
    let waited = started.elapsed();
    // Before anything is read: a build of ours is kept only if nothing changed after this.
    let ticket = stores.builds.ticket();
    stores.refresh_secrets(&ctx.client).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Scoped: the build inputs borrow the stores through a `dyn SecretSource`, which must not
    // live across an await.
    let (resources, policies) = {
        let world = stores.world_all();
        let claims = world.claims();
        let mut builds = Builds::new();
        let (mut shared, mut built) = (0u64, 0u64);
        for gw in &world.gateways {
            if gw.meta().deletion_timestamp.is_some() {
                continue;
            }
            let key = ObjectRef::new(gw.namespace().unwrap_or_default(), gw.name_any());
            let version = Version::of(gw);
            let summary = match stores.builds.get(&key, &version) {
                Some(summary) => {
                    shared += 1;
                    summary
                }
                None => {
                    built += 1;
                    let inputs = crate::gateway::inputs::inputs(stores, &world, gw);
                    let summary = BuildSummary::of_result(&gateway_snapshot(&world, gw, &inputs));
                    stores.builds.put(&key, ticket, version, summary.clone());
                    summary
                }
            };
            builds.insert(key, summary);
        }
        ctx.metrics.builds_shared.inc_by(shared);
        ctx.metrics.gateway_builds(KIND, built);
        let applied = applied_policies(&world, &claims);
        let over = rustronaut_compile::quota::over_quota(&world, &claims);
        let resources: Vec<Write<_>> = world
            .resources
            .iter()
            .filter(|r| r.meta().deletion_timestamp.is_none())
            // Sidecar Resources: the sidecar reconciler's to report.
            .filter(|r| r.spec.workload.is_none())
            .filter_map(|r| {
                let key = (r.namespace().unwrap_or_default(), r.name_any());
                let policies = applied.get(&key).map_or(&[][..], |v| &v[..]);
                let (ns, name) = (r.namespace().unwrap_or_default(), r.name_any());
                let observed = stores.statuses.resources.get(&ns, &name);
                let status = resource_status(
                    &world, &claims, &builds, r, &observed, policies, &over, &now,
                );
                (!observed.is_some_and(|o| o.is(&status))).then(|| Write {
                    namespace: ns,
                    name,
                    status,
                    reference: r.object_ref(&()),
                    // The Gateway controller already reports what a snapshot leaves out.
                    events: Vec::new(),
                })
            })
            .collect();
        // The embedded tests, one tenant at a time: what is compiled at once is one tenant's
        // share of the world, not all of it (World::by_tenant).
        let mut outcomes = Vec::new();
        let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, part) in world.by_tenant(&claims) {
            let compiled = rustronaut_compile::compile_with(&part, &claims);
            outcomes.extend(rustronaut_compile::run_all_with(&part, &compiled, &claims));
            missing.extend(compiled.missing_targets);
        }
        let tests = tests_by_policy(outcomes);
        let index = rustronaut_crds::tenancy::ResourceIndex::new(&world.resources);
        let inputs = PolicyInputs {
            world: &world,
            claims: &claims,
            resources: &index,
            builds: &builds,
            missing_targets: &missing,
            tests: &tests,
            over: &over,
        };
        let policies: Vec<Write<_>> = world
            .policies
            .iter()
            .filter(|p| p.meta().deletion_timestamp.is_none())
            // The stand-in of an unreadable Policy: the API server refuses its status.
            .filter(|p| !crate::cache::guard::is_stand_in(p.meta()))
            .filter_map(|p| {
                let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
                let observed = stores.statuses.policies.get(&ns, &name);
                let status = policy_status(&inputs, p, &observed, &now);
                // A failing embedded test is news only this pass can tell.
                let events = newly_failed(&observed, &status.conditions, &[types::TESTS_PASSED])
                    .into_iter()
                    .map(|c| (c.reason.clone(), c.message.clone()))
                    .collect();
                (!observed.is_some_and(|o| o.is(&status))).then(|| Write {
                    namespace: ns,
                    name,
                    status,
                    reference: p.object_ref(&()),
                    events,
                })
            })
            .collect();
        (resources, policies)
    };
    let computed = started.elapsed() - waited;
    let (resource_writes, policy_writes) = (resources.len(), policies.len());
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    // Several writes in flight: after a bulk apply every object's status changes, and one
    // round trip at a time was most of the time to settle 10,000 objects (issue 17).
    let writes = resources
        .into_iter()
        .map(Kinded::Resource)
        .chain(policies.into_iter().map(Kinded::Policy));
    let written = crate::apply::each(writes, |w| match w {
        Kinded::Resource(w) => Box::pin(write::<RtnResource, _>(ctx, &recorder, w)),
        Kinded::Policy(w) => Box::pin(write::<Policy, _>(ctx, &recorder, w)),
    })
    .await;
    // Where a pass's time goes (issue 17: how long statuses take to settle after a bulk
    // apply): waiting for the Gateway reconciles' builds, computing, writing.
    tracing::debug!(
        waited_ms = waited.as_millis() as u64,
        computed_ms = computed.as_millis() as u64,
        written_ms = (started.elapsed() - waited - computed).as_millis() as u64,
        resources = resource_writes,
        policies = policy_writes,
        "status pass"
    );
    written
}

/// Server-side applies `w.status` to the status subresource; an object deleted meanwhile is
/// not an error.
async fn write<K, S>(ctx: &Context, recorder: &Recorder, w: Write<S>) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Serialize + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &w.namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": w.status,
    });
    match apply_status(&api, &w.name, &body).await {
        Ok(_) => {
            ctx.metrics.status_written(&K::kind(&()));
            for (reason, message) in w.events {
                publish_warning(recorder, &w.reference, reason, message).await;
            }
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => {
            let kind = if K::kind(&()) == "Policy" {
                "Policy"
            } else {
                "Resource"
            };
            tracing::warn!(kind, namespace = %w.namespace, name = %w.name, error = %source, "status write failed");
            Err(Error::ObjectStatus {
                kind,
                namespace: w.namespace,
                name: w.name,
                source,
            })
        }
    }
}

/// Publishes a Warning Event about `reference` (Events are best effort: a failure is logged).
pub async fn publish_warning(
    recorder: &Recorder,
    reference: &ObjectReference,
    reason: String,
    mut note: String,
) {
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_: EventType::Warning,
        reason,
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, "failed to publish an Event");
    }
}
