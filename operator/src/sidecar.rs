//! The sidecar reconciler: each sidecar Resource (`spec.workload`) becomes the snapshot its
//! injected `rustronaut-sidecar` containers load, the RBAC that lets them read it, and the
//! NetworkPolicy that keeps the application's ports closed to everything but the pod itself.
//!
//! ```text
//!  read      the Resource + the Gateway controller's caches (Tenants, Resources, Policies,
//!            Secrets, Namespaces: crate::cache::Stores) + a metadata-only watch of pods
//!  validate  workload.selector has a meaning                                 (pods)
//!  build     rustronaut_compile::sidecar::sidecar_snapshot -> Snapshot | SidecarError
//!            objects::build -> Desired { Secret, Role, RoleBinding, NetworkPolicy } (objects)
//!  apply     server-side apply, field manager "rustronaut-operator"      (crate::apply)
//!  status    status::status from what was built and the pods               (status, pods)
//! ```
//!
//! Edge Resources (`gatewayRefs`) are not this reconciler's: it leaves them alone, and the
//! Resource/Policy status pass ([`crate::status`]) leaves sidecar Resources alone, so the two
//! never write the same status. A Resource that stops being a sidecar (its status still has
//! `workload`) has what this reconciler made deleted.
//!
//! Two loops write a sidecar Resource's status:
//! - the reconcile (a Controller over Resources, woken by spec changes of the Resource, by
//!   changes of anything a snapshot is made of, by changes to the objects it owns, and every
//!   [`RESYNC`]) builds, applies, remembers what it concluded ([`status::Built`]) and writes
//!   the status;
//! - the pod pass (woken by pod label, annotation and deletion changes) recomputes only the
//!   pod counts and Ready from the remembered [`status::Built`]: a pod coming or going
//!   never recompiles a snapshot.
//!
//! A snapshot that cannot be built leaves the previous Secret untouched (the sidecars keep
//! their last good configuration) and says why in Programmed. An invalid selector applies
//! nothing (the previous NetworkPolicy, if any, stays) and says why in Accepted. Neither
//! retries in a loop: they wait for a change. Deletion needs no finalizer: every object has
//! a controller ownerReference to the Resource and goes with it (garbage collection).
//!
//! Session keys: when the Resource's tenant has an OIDC provider, the reconcile creates
//! `<resource>-sidecar-session-<tenant>` once (owned by the Resource, then people's to
//! rotate, as a Gateway's) and the snapshot carries its keys. A key Secret the tenant no
//! longer wants (its OIDC provider removed) stays until the Resource goes.

pub mod objects;
pub mod pods;
pub mod status;

use crate::apply::apply_status;
use crate::apply::{put, remove};
use crate::cache::{Stores, guard, wait_ready};
use crate::context::Context;
use crate::context::Settings;
use crate::error::{Error, RESYNC, backoff};
use crate::gateway::objects::CONFIG_VERSION_ANNOTATION;
use crate::meta::labels as gw_labels;
use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use objects::Desired;
use rustronaut_compile::sidecar::{SidecarError, sidecar_snapshot};
use rustronaut_compile::snapshot::GatewayInputs;
use rustronaut_crds::Resource as RtnResource;
use rustronaut_crds::conditions::reasons;
use rustronaut_crds::resource::{AppliedPolicy, sidecar_names};
use serde::de::DeserializeOwned;
use status::{Built, Refusal};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The kind label of the reconciler's metrics.
pub const KIND: &str = "SidecarResource";
/// The kind label of the pod pass's metrics.
pub const POD_KIND: &str = "SidecarPods";
/// Reason of the Normal Event when a new snapshot is in the Secret.
pub const SNAPSHOT_PUBLISHED: &str = "SnapshotPublished";
/// Selector of the objects this reconciler generates (what its `owns` watches select).
pub const OWNED_SELECTOR: &str =
    "app.kubernetes.io/name=rustronaut-sidecar,app.kubernetes.io/managed-by=rustronaut-operator";

/// What the reconcile and the pod pass share.
pub struct SidecarContext {
    /// Client, metrics, Event reporter.
    pub ctx: Context,
    /// The Gateway controller's caches (this reconciler only reads them).
    pub stores: Stores,
    /// Metadata of every pod (labels, the ports annotation, deletion).
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Builder settings (flags): who may scrape the sidecar's admin port.
    pub settings: Settings,
    /// Publishes Events.
    pub recorder: Recorder,
    /// What the last reconcile of each sidecar Resource concluded, by `namespace/name`, with
    /// the Resource's uid (a recreated Resource starts afresh).
    pub built: Mutex<BTreeMap<String, (String, Built)>>,
    /// Consecutive failed reconciles per Resource, for [`backoff`].
    pub failures: Mutex<BTreeMap<String, u32>>,
}

fn key(res: &RtnResource) -> String {
    format!("{}/{}", res.namespace().unwrap_or_default(), res.name_any())
}

/// The sidecar reconciler and its pod pass, set up by the Gateway controller (whose caches
/// and leader election they share) and run by it.
pub struct SidecarController {
    context: Arc<SidecarContext>,
    pod_driver: std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>,
    triggers: mpsc::Receiver<()>,
    pod_triggers: mpsc::Receiver<()>,
}

/// What a change of `pod` is compared by: only these matter to status.
fn pod_print(pod: &PartialObjectMeta<Pod>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pod.metadata.labels.hash(&mut h);
    pod.metadata.annotations.hash(&mut h);
    pod.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

impl SidecarController {
    /// Sets up the pod watch; `triggers` is poked by every change of what a sidecar
    /// snapshot is made of (Tenants, Resources, Policies, Secrets, Namespaces).
    pub fn new(
        ctx: Context,
        stores: Stores,
        settings: Settings,
        triggers: mpsc::Receiver<()>,
    ) -> Self {
        let client = ctx.client.clone();
        let (tx, pod_triggers) = mpsc::channel(1);
        let (pods, writer) = reflector::store();
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let pod_driver = reflector::reflector(
            writer,
            watcher(
                Api::<PartialObjectMeta<Pod>>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(|p: &mut PartialObjectMeta<Pod>| {
                // Only labels, the ports annotation and deletion are read.
                p.metadata.managed_fields = None;
                p.metadata.owner_references = None;
                if let Some(a) = p.metadata.annotations.as_mut() {
                    a.retain(|k, _| k == sidecar_names::PORTS_ANNOTATION);
                }
            }),
        )
        .default_backoff()
        .map(move |r| {
            let poke = |tx: &mpsc::Sender<()>| {
                let _ = tx.clone().try_send(());
            };
            match r {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let print = pod_print(&p);
                    if seen.insert(uid, print) != Some(print) {
                        poke(&tx);
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    seen.remove(&p.metadata.uid.clone().unwrap_or_default());
                    poke(&tx);
                }
                Ok(watcher::Event::InitDone) => poke(&tx),
                Ok(watcher::Event::Init) => seen.clear(),
                Err(e) => tracing::warn!(kind = "Pod", error = %e, "watch failed; retrying"),
            }
        })
        .boxed();
        let recorder = Recorder::new(client, ctx.reporter.clone());
        Self {
            context: Arc::new(SidecarContext {
                ctx,
                stores,
                pods,
                settings,
                recorder,
                built: Mutex::default(),
                failures: Mutex::default(),
            }),
            pod_driver,
            triggers,
            pod_triggers,
        }
    }

    /// Runs the reconciler and the pod pass until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static) {
        let client = self.context.ctx.client.clone();
        let driver = tokio::spawn(self.pod_driver.for_each(|()| async {}));
        let pod_pass = {
            let ctx = self.context.clone();
            tokio::spawn(crate::pass::drive(
                POD_KIND,
                ctx.ctx.metrics.clone(),
                self.pod_triggers,
                shutdown.clone(),
                move |_resync| {
                    let ctx = ctx.clone();
                    async move { pod_pass(&ctx).await }
                },
            ))
        };
        let owned = || watcher::Config::default().labels(OWNED_SELECTOR);
        // Its own Resource watch, guarded as the caches' is: an unreadable Resource is left
        // out instead of stopping every reconcile. Only spec changes (generation) wake a
        // Resource: the status writes of both loops must not recompile it.
        let (store, writer) = reflector::store();
        let events = reflector::reflector(
            writer,
            // Its own record of what was reported: two watches of one kind sharing one would
            // mark each other's unreadable objects stale on a re-list. (The same object is
            // then reported by both watches: the Recorder folds the two into one series.)
            guard::guarded::<RtnResource>(self.context.ctx.clone(), guard::Seen::default())
                .filter_map({
                    let ctx = self.context.clone();
                    move |r| std::future::ready(only_sidecars(&ctx, r))
                }),
        )
        .default_backoff()
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
        Controller::for_stream(events, store)
            .owns(Api::<Secret>::all(client.clone()), owned())
            .owns(Api::<Role>::all(client.clone()), owned())
            .owns(Api::<RoleBinding>::all(client.clone()), owned())
            .owns(Api::<NetworkPolicy>::all(client.clone()), owned())
            .reconcile_all_on(self.triggers)
            .with_config(controller::Config::default().debounce(Duration::from_millis(200)))
            .graceful_shutdown_on(shutdown)
            .run(reconcile, error_policy, self.context)
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => tracing::debug!(resource = %obj, "sidecar reconciled"),
                    Err(e) => tracing::debug!(error = %e, "sidecar reconcile failed"),
                }
            })
            .await;
        let _ = pod_pass.await;
        driver.abort();
    }
}

/// Reconciles one Resource (sidecar Resources only), recording metrics.
pub fn reconcile(
    res: Arc<RtnResource>,
    ctx: Arc<SidecarContext>,
) -> futures::future::BoxFuture<'static, Result<Action, Error>> {
    // Edge Resources are many and not ours: no metrics, no span, no work, unless this one
    // was a sidecar Resource (its status, or our Secret in the cache, says so: the status
    // alone is not enough, the edge pass may already have rewritten it).
    if !is_sidecar(&ctx, &res) {
        return Box::pin(futures::future::ready(Ok(Action::await_change())));
    }
    // Created here, where kube-runtime calls us: its span of the trigger is the parent.
    let span = crate::telemetry::reconcile_span(KIND, &key(&res));
    let recorded = span.clone();
    Box::pin(tracing::Instrument::instrument(
        async move {
            let result = reconcile_measured(res, ctx).await;
            crate::telemetry::record_outcome(&recorded, &result);
            result
        },
        span,
    ))
}

async fn reconcile_measured(
    res: Arc<RtnResource>,
    ctx: Arc<SidecarContext>,
) -> Result<Action, Error> {
    let start = Instant::now();
    let result = reconcile_inner(&res, &ctx).await;
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&key(&res));
    }
    ctx.ctx.metrics.observe(
        KIND,
        start.elapsed(),
        result.as_ref().err().map(Error::label),
    );
    result
}

/// Whether `res` is this reconciler's: a sidecar Resource, or one that was (its status or
/// our Secret says so) and has objects to prune.
fn is_sidecar(ctx: &SidecarContext, res: &RtnResource) -> bool {
    res.spec.workload.is_some()
        || res.status.as_ref().is_some_and(|s| s.workload.is_some())
        || has_our_secret(ctx, res)
}

/// The controller's own Resource store keeps only [`is_sidecar`] Resources: edge Resources
/// are the many (thousands) and the caches ([`crate::cache`]) already hold them, so a second
/// full copy here was measured (issue 17) as a tenth of the operator's heap. An edge
/// Resource's update becomes a removal (it may have been a sidecar Resource a moment ago),
/// and the initial list leaves edge Resources out.
fn only_sidecars(
    ctx: &SidecarContext,
    r: watcher::Result<watcher::Event<RtnResource>>,
) -> Option<watcher::Result<watcher::Event<RtnResource>>> {
    use watcher::Event as E;
    match r {
        Ok(E::Apply(res)) if !is_sidecar(ctx, &res) => Some(Ok(E::Delete(res))),
        Ok(E::InitApply(res)) if !is_sidecar(ctx, &res) => None,
        other => Some(other),
    }
}

/// Whether the operator's Secret cache holds a snapshot Secret this reconciler made for
/// `res`.
fn has_our_secret(ctx: &SidecarContext, res: &RtnResource) -> bool {
    let ns = res.namespace().unwrap_or_default();
    ctx.stores
        .secrets
        .get(&ns, &objects::name(res))
        .is_some_and(|s| is_ours(&*s, &res.name_any(), &res.uid().unwrap_or_default()))
}

/// Transient failures back off exponentially per Resource and retry.
pub fn error_policy(res: Arc<RtnResource>, error: &Error, ctx: Arc<SidecarContext>) -> Action {
    let failures = ctx.failures.lock().map_or(1, |mut f| {
        let n = f.entry(key(&res)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = backoff(failures);
    tracing::warn!(resource = %key(&res), error = %error, failures, retry_in = ?delay,
        "sidecar reconcile failed; retrying");
    Action::requeue(delay)
}

fn config_version(secret: &Secret) -> Option<String> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(CONFIG_VERSION_ANNOTATION)
        .cloned()
}

async fn reconcile_inner(res: &RtnResource, ctx: &SidecarContext) -> Result<Action, Error> {
    if guard::is_stand_in(res.meta()) || res.meta().deletion_timestamp.is_some() {
        // Unreadable (reported by the guard), or going: owned objects go with it.
        return Ok(Action::await_change());
    }
    let ns = res.namespace().unwrap_or_default();
    let Some(workload) = &res.spec.workload else {
        // A former sidecar Resource, now reached through Gateways.
        prune(ctx, res).await?;
        if let Ok(mut b) = ctx.built.lock() {
            b.remove(&key(res));
        }
        return Ok(Action::await_change());
    };
    ctx.stores.ready().await?;
    wait_ready(&ctx.pods)
        .await
        .map_err(|_| Error::CacheDropped("pods"))?;
    let client = &ctx.ctx.client;
    ctx.stores.refresh_secrets(client).await?;
    let generation = res.metadata.generation;

    // validate
    if let Err(message) = pods::check_selector(&workload.selector) {
        let built = Built {
            generation,
            accepted: Err(Refusal::new(reasons::INVALID_SELECTOR, message)),
            programmed: Err(Refusal::new(
                reasons::INVALID_SELECTOR,
                "nothing is published until workload.selector is fixed",
            )),
        };
        remember(ctx, res, &built);
        write_status(ctx, res, &built, &applied(ctx)).await?;
        return Ok(Action::await_change());
    }

    // read: the tenant, and its session keys when it has an OIDC provider (created once)
    let (tenant, wants_keys) = {
        let world = ctx.stores.world_all();
        let tenant = world.claims().tenant_of(&ns).map(str::to_string);
        let wants = tenant
            .as_deref()
            .and_then(|t| world.tenant(t))
            .is_some_and(rustronaut_compile::session::wants_session_keys);
        (tenant, wants)
    };
    let session_keys = match (&tenant, wants_keys) {
        (Some(t), true) => ensure_session_keys(ctx, res, t).await?,
        _ => BTreeMap::new(),
    };

    // build. Scoped: the inputs borrow the stores through a `dyn SecretSource`, which must
    // not live across an await.
    let (snapshot, failure) = {
        let world = ctx.stores.world_all();
        let inputs = GatewayInputs {
            tls: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            secrets: &ctx.stores,
            site_keys: BTreeMap::new(),
            session_keys,
        };
        match sidecar_snapshot(&world, res, &inputs) {
            Ok(outcome) => {
                for p in &outcome.problems {
                    tracing::info!(resource = %key(res), object = %format!("{} {}", p.kind, p.object),
                        reason = p.reason, "{}", p.message);
                }
                (Some(outcome.snapshot), None)
            }
            Err(e) => (None, Some(e)),
        }
    };
    let desired = objects::build(res, workload, snapshot.as_ref(), &ctx.settings);
    let secret_name = objects::name(res);
    let previous = ctx
        .stores
        .secrets
        .get(&ns, &secret_name)
        .and_then(|s| config_version(&s));

    // apply
    let served = apply(ctx, &ns, desired).await?.or(previous.clone());

    // status
    let refused = |e: &SidecarError| Refusal::new(e.reason(), e.to_string());
    let accepted = match &failure {
        Some(
            e @ (SidecarError::NoTenant(_)
            | SidecarError::QuotaExceeded(_)
            | SidecarError::NotSidecar(_)),
        ) => Err(refused(e)),
        _ => Ok(format!(
            "accepted for tenant {}",
            tenant.as_deref().unwrap_or_default()
        )),
    };
    let programmed = match (&failure, &served) {
        (None, Some(v)) => Ok(format!(
            "snapshot {v} published in Secret {ns}/{secret_name}"
        )),
        (Some(e), Some(v)) => Err(Refusal::new(
            e.reason(),
            format!("{e}; the sidecars keep serving the last good snapshot ({v})"),
        )),
        (Some(e), None) => Err(refused(e)),
        (None, None) => Err(Refusal::new(
            reasons::PENDING,
            "the snapshot is being written",
        )),
    };
    if failure.is_none() && served.is_some() && served != previous {
        publish(
            ctx,
            res,
            EventType::Normal,
            SNAPSHOT_PUBLISHED,
            format!(
                "snapshot {} published in Secret {ns}/{secret_name}",
                served.as_deref().unwrap_or_default()
            ),
        )
        .await;
    }
    if let Some(e) = &failure {
        let before = res.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
        let already = before
            .iter()
            .any(|c| c.type_ == "Programmed" && c.status == "False" && c.reason == e.reason());
        if !already {
            publish(ctx, res, EventType::Warning, e.reason(), e.to_string()).await;
        }
    }
    let built = Built {
        generation,
        accepted,
        programmed,
    };
    remember(ctx, res, &built);
    write_status(ctx, res, &built, &applied(ctx)).await?;
    Ok(Action::requeue(RESYNC))
}

fn remember(ctx: &SidecarContext, res: &RtnResource, built: &Built) {
    if let Ok(mut b) = ctx.built.lock() {
        b.insert(key(res), (res.uid().unwrap_or_default(), built.clone()));
    }
}

/// `tenant`'s session key Secret for `res` (created when absent, never overwritten: people
/// add keys to rotate), as the build takes it. A Secret of that name that is not ours is not
/// used (a Warning Event says so; OIDC login stays off at these sidecars, failing closed).
async fn ensure_session_keys(
    ctx: &SidecarContext,
    res: &RtnResource,
    tenant: &str,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, Error> {
    use crate::gateway::session;
    let ns = res.namespace().unwrap_or_default();
    let name = match objects::session_secret_name(res, tenant) {
        Ok(name) => name,
        Err(name) => {
            tracing::warn!(resource = %key(res), secret = %name,
                "session key Secret name is longer than 253 characters; OIDC login stays off at this Resource's sidecars");
            return Ok(BTreeMap::new());
        }
    };
    let secret = match ctx.stores.secrets.get(&ns, &name) {
        Some(s) => (*s).clone(),
        None => {
            let id = session::new_id(k8s_openapi::jiff::Timestamp::now());
            let key_material =
                session::new_key().map_err(|_| Error::Random("a session key".into()))?;
            let made = objects::session_secret(res, tenant, &name, &id, &key_material);
            let api: Api<Secret> = Api::namespaced(ctx.ctx.client.clone(), &ns);
            let params = kube::api::PostParams {
                field_manager: Some(crate::context::FIELD_MANAGER.to_string()),
                ..Default::default()
            };
            match api.create(&params, &made).await {
                Ok(s) => s,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    api.get(&name).await.map_err(|source| Error::Read {
                        namespace: ns.clone(),
                        name: name.clone(),
                        source,
                    })?
                }
                Err(source) => {
                    return Err(Error::Apply {
                        kind: "Secret",
                        namespace: ns,
                        name,
                        source,
                    });
                }
            }
        }
    };
    if !is_ours(&secret, &res.name_any(), &res.uid().unwrap_or_default()) {
        let e = Error::ForeignSecret {
            namespace: ns,
            name,
            what: "a session key".into(),
        };
        publish(ctx, res, EventType::Warning, "ForeignSecret", e.to_string()).await;
        return Ok(BTreeMap::new());
    }
    Ok(BTreeMap::from([(
        tenant.to_string(),
        session::data(&secret),
    )]))
}

/// Applies `desired` whole; returns the version of the snapshot it wrote, if it wrote one.
async fn apply(ctx: &SidecarContext, ns: &str, desired: Desired) -> Result<Option<String>, Error> {
    let client = &ctx.ctx.client;
    let Desired {
        secret,
        role,
        role_binding,
        network_policy,
    } = desired;
    // The snapshot first: it is what carries a Policy change to the running sidecars.
    let served = match secret {
        Some(s) => config_version(&put(client, ns, &s).await?),
        None => None,
    };
    put(client, ns, &role).await?;
    put(client, ns, &role_binding).await?;
    put(client, ns, &network_policy).await?;
    Ok(served)
}

/// Deletes what this reconciler made for `res` (a Resource that is no longer a sidecar
/// Resource), its session key Secrets included: only objects with its labels and its
/// controller ownerReference.
async fn prune(ctx: &SidecarContext, res: &RtnResource) -> Result<(), Error> {
    let ns = res.namespace().unwrap_or_default();
    let name = objects::name(res);
    let uid = res.uid().unwrap_or_default();
    prune_one::<Secret>(ctx, &ns, &name, &res.name_any(), &uid).await?;
    prune_one::<Role>(ctx, &ns, &name, &res.name_any(), &uid).await?;
    prune_one::<RoleBinding>(ctx, &ns, &name, &res.name_any(), &uid).await?;
    prune_one::<NetworkPolicy>(ctx, &ns, &name, &res.name_any(), &uid).await?;
    // Its session key Secrets (one per tenant it was in).
    let sessions: Vec<String> = ctx
        .stores
        .secrets
        .own
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() != name)
        .filter(|s| is_ours(&***s, &res.name_any(), &uid))
        .map(|s| s.name_any())
        .collect();
    for s in sessions {
        remove::<Secret>(&ctx.ctx.client, &ns, &s).await?;
    }
    Ok(())
}

/// Whether `obj` is this reconciler's for Resource `instance` (uid `uid`).
pub fn is_ours(obj: &impl Resource, instance: &str, uid: &str) -> bool {
    let m = obj.meta();
    let label = |k: &str| m.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    label(gw_labels::NAME) == Some(objects::labels::NAME)
        && label(gw_labels::MANAGED_BY) == Some(gw_labels::OPERATOR)
        && label(gw_labels::INSTANCE) == Some(instance)
        && m.owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.kind == "Resource" && o.uid == uid)
}

async fn prune_one<K>(
    ctx: &SidecarContext,
    ns: &str,
    name: &str,
    instance: &str,
    uid: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.ctx.client.clone(), ns);
    let current = api.get_opt(name).await.map_err(|source| Error::Read {
        namespace: ns.to_string(),
        name: name.to_string(),
        source,
    })?;
    if current.is_some_and(|o| is_ours(&o, instance, uid)) {
        remove::<K>(&ctx.ctx.client, ns, name).await?;
    }
    Ok(())
}

/// Recomputes the status of every sidecar Resource a reconcile has built, from the pods
/// now: what a pod change wakes.
pub async fn pod_pass(ctx: &SidecarContext) -> Result<(), Error> {
    ctx.stores.ready().await?;
    wait_ready(&ctx.pods)
        .await
        .map_err(|_| Error::CacheDropped("pods"))?;
    let built = ctx.built.lock().map(|b| b.clone()).unwrap_or_default();
    let policies = applied(ctx);
    let mut first_error = None;
    for res in ctx.stores.resources.state() {
        if res.spec.workload.is_none()
            || guard::is_stand_in(res.meta())
            || res.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        // Only what the reconcile built for this very object and generation; the reconcile
        // writes the status of anything newer itself.
        let Some((uid, b)) = built.get(&key(&res)) else {
            continue;
        };
        if res.uid().as_deref() != Some(uid.as_str()) || b.generation != res.metadata.generation {
            continue;
        }
        if let Err(e) = write_status(ctx, &res, b, &policies).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The Policies that select each Resource (`status.policies`), worked out once per pass.
fn applied(ctx: &SidecarContext) -> BTreeMap<(String, String), Vec<AppliedPolicy>> {
    let world = ctx.stores.world_all();
    let claims = world.claims();
    crate::conditions::applied_policies(&world, &claims)
}

/// Computes the status of `res` from `built`, the pods now and `policies` ([`applied`]),
/// and writes it if it differs.
async fn write_status(
    ctx: &SidecarContext,
    res: &RtnResource,
    built: &Built,
    policies: &BTreeMap<(String, String), Vec<AppliedPolicy>>,
) -> Result<(), Error> {
    let ns = res.namespace().unwrap_or_default();
    let view = res.spec.workload.as_ref().and_then(|w| {
        pods::check_selector(&w.selector).ok()?;
        let metas = ctx.pods.state();
        let in_ns: Vec<&Arc<PartialObjectMeta<Pod>>> = metas
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .collect();
        let empty = BTreeMap::new();
        let list: Vec<pods::Pod<'_>> = in_ns
            .iter()
            .map(|p| pods::Pod {
                name: p.metadata.name.as_deref().unwrap_or_default(),
                labels: p.metadata.labels.as_ref().unwrap_or(&empty),
                annotations: p.metadata.annotations.as_ref().unwrap_or(&empty),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect();
        let resources = ctx.stores.resources.state();
        let others: Vec<&RtnResource> = resources
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
            .filter(|r| r.spec.workload.is_some() && r.uid() != res.uid())
            .map(|r| &**r)
            .collect();
        Some(pods::view(res, w, &others, &list))
    });
    let policies = policies
        .get(&(ns.clone(), res.name_any()))
        .map_or(&[][..], |v| &v[..]);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = res.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let new = status::status(previous, &now, built, view.as_ref(), policies);
    if res.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<RtnResource> = Api::namespaced(ctx.ctx.client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": RtnResource::api_version(&()),
        "kind": RtnResource::kind(&()),
        "status": new,
    });
    match apply_status(&api, &res.name_any(), &body).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::ObjectStatus {
            kind: "Resource",
            namespace: ns,
            name: res.name_any(),
            source,
        }),
    }
}

/// Publishes an Event about `res` (best effort: a failure is logged).
async fn publish(
    ctx: &SidecarContext,
    res: &RtnResource,
    type_: EventType,
    reason: &str,
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
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "PublishSnapshot".into(),
        secondary: None,
    };
    let recorder = match type_ {
        EventType::Normal => ctx.ctx.news(),
        EventType::Warning => ctx.recorder.clone(),
    };
    if let Err(e) = recorder.publish(&event, &res.object_ref(&())).await {
        tracing::warn!(error = %e, "failed to publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ours_means_our_labels_and_our_controller_reference() {
        let obj = |labels: serde_json::Value, uid: &str| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": "orders-sidecar", "labels": labels,
                    "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
                        "name": "orders", "uid": uid, "controller": true}]}
            }))
            .unwrap()
        };
        let ours = json!({"app.kubernetes.io/name": "rustronaut-sidecar",
            "app.kubernetes.io/instance": "orders",
            "app.kubernetes.io/managed-by": "rustronaut-operator"});
        assert!(is_ours(&obj(ours.clone(), "u1"), "orders", "u1"));
        assert!(!is_ours(&obj(ours, "u2"), "orders", "u1"));
        let gateway = json!({"app.kubernetes.io/name": "rustronaut-gateway",
            "app.kubernetes.io/instance": "orders",
            "app.kubernetes.io/managed-by": "rustronaut-operator"});
        assert!(!is_ours(&obj(gateway, "u1"), "orders", "u1"));
    }
}
