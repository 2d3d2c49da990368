//! The Gateway reconciler: each Gateway becomes its compiled snapshot and the workload that
//! serves it.
//!
//! ```text
//!  read      Gateway (its own guarded watch) + the caches (crate::cache::Stores: Tenants,
//!            Resources, Policies, Secrets, Services, EndpointSlices, Namespaces, the
//!            cluster's networks) -> World + GatewayInputs                  (inputs)
//!  ensure    with spec.tunnel: key Secrets (created once, never overwritten)   (tunnel)
//!            per admitted tenant with an OIDC provider: its session key Secret
//!            (created once, read into `inputs.session_keys`)                (session)
//!  build     rustronaut_compile::snapshot::gateway_snapshot -> Snapshot | BuildError
//!            desired::build -> one Desired {                                (desired)
//!              snapshot Secret,
//!              workload: ConfigMap, SA, Role, RoleBinding, Deployment, Service,
//!                        NetworkPolicy, PDB, HPA, cert-manager Certificates of
//!                        listeners with tls.issuerRef                       (objects)
//!              hub: config Secret, StatefulSet, per-replica UDP Services,
//!                   stream Service, NetworkPolicy, PDB                      (tunnel) }
//!  apply     Desired destructured whole (apply_workload, apply_hub): server-side
//!            apply, field manager "rustronaut-operator"; then the pruning of hub
//!            objects, session Secrets and Certificates no longer wanted (crate::apply)
//!  status    status::status -> Accepted / Programmed / Ready, configVersion (status),
//!            written and remembered by reports::settle; later pod reports recompute
//!            Ready from that memo without a reconcile                       (reports)
//!            + status.tunnel: replica public keys, sites from the hubs' /status
//!                                                                           (hubstatus)
//! ```
//!
//! A snapshot that cannot be built leaves the previous `<gw>-snapshot` Secret untouched (the
//! gateways keep serving the last good configuration), sets Accepted=False and
//! Programmed=False with the reason, records a Warning Event, and waits for a change: the
//! reconcile itself succeeds, so nothing retries in a hot loop and nothing crash-loops.
//!
//! Watches ([`run`]). The Gateway (spec changes only: its status writes wake nothing) and
//! the objects it owns are watched as usual (`owns`), except the status ConfigMap the pods
//! report into and the Deployment, whose readiness moves during every rollout: [`reports`]
//! watches both and recomputes the status without a rebuild.
//! Everything else a snapshot is made of is held in the caches ([`crate::cache`]), which
//! wake this controller: a change of a Tenant, a Gateway or the cluster's networks
//! re-reconciles every Gateway (`reconcile_all_on`), a change of a namespaced object only the
//! Gateways it can affect (`reconcile_on`, [`crate::cache::affected`]); the controller's
//! debounce coalesces both. Changes to objects the operator writes itself trigger nothing, so
//! writing a snapshot does not wake every Gateway; the exception is the session key Secrets,
//! which people edit to rotate keys.
//!
//! Started by [`crate::runtime`]; [`inputs`] is also the status pass's ([`crate::status`])
//! and the sidecar reconciler reuses the builders of [`objects`] and [`session`].

pub mod desired;
pub mod hubstatus;
pub mod inputs;
pub mod objects;
pub mod reports;
pub mod session;
pub mod status;
pub mod tunnel;

use crate::apply::{put, remove};
use crate::cache::{Stores, guard};
use crate::context::{Context, Settings};
use crate::error::{Error, RESYNC, backoff};
use crate::meta::labels;
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use objects::names;
use rustronaut_compile::World;
use rustronaut_compile::snapshot::{BuildError, Impact, gateway_snapshot};
use rustronaut_crds::Gateway;
use rustronaut_crds::gateway::TunnelStatus;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kind label of this controller's metrics.
pub const KIND: &str = "Gateway";

/// What the Gateway reconciler works with.
pub struct GatewayContext {
    /// Client, metrics, Event reporter.
    pub ctx: Context,
    /// The caches.
    pub stores: Stores,
    /// Builder settings (flags).
    pub settings: Settings,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Consecutive failed reconciles per Gateway (`namespace/name`), for [`backoff`].
    pub failures: std::sync::Mutex<BTreeMap<String, u32>>,
    /// What the last reconcile of each Gateway saw, for its pods' reports ([`reports`]).
    pub memo: reports::Memo,
    /// The generation of each Gateway whose unwanted Certificates were last pruned.
    pub certificates_pruned: std::sync::Mutex<BTreeMap<String, Option<i64>>>,
}

fn key(gw: &Gateway) -> String {
    format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any())
}

/// Runs the Gateway controller until `shutdown` completes (in-flight reconciles finish
/// first): a guarded watch of Gateways, the objects each owns, and the caches' wake-ups
/// (`all`: every Gateway; `these`: the Gateways a change can affect).
pub async fn run(
    context: Arc<GatewayContext>,
    all: mpsc::Receiver<()>,
    these: mpsc::UnboundedReceiver<ObjectRef<Gateway>>,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let client = context.ctx.client.clone();
    let owned = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    // The controller's own Gateway watch, guarded too: an unreadable Gateway is left out
    // instead of stopping every reconcile. Only spec changes pass (generation): the
    // status writes, the reconcile's own and the pod reports', wake nothing.
    let (gateway_store, gateway_writer) = reflector::store();
    let gateway_events = reflector::reflector(
        gateway_writer,
        guard::guarded::<Gateway>(context.ctx.clone(), context.stores.unreadable.clone()),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    // The status ConfigMap and the Deployment are not owned watches: reports and readiness
    // changes recompute the status without a reconcile (reports); what they cannot settle
    // (a deletion, an edited Deployment spec) comes back here.
    let (report_tx, report_rx) = mpsc::unbounded();
    let reports = tokio::spawn(reports::run(context.clone(), report_tx, shutdown.clone()));
    Controller::for_stream(gateway_events, gateway_store)
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned())
        .owns(Api::<Role>::all(client.clone()), owned())
        .owns(Api::<RoleBinding>::all(client.clone()), owned())
        .reconcile_all_on(all)
        .reconcile_on(futures::stream::select(these, report_rx))
        // Unbounded concurrency, measured: at most 4 reconciles at once (bench-operator,
        // 10,000 objects) left RSS where it was and made the first snapshots slower
        // (docs/benchmarks.md, issue 17).
        .with_config(controller::Config::default().debounce(Duration::from_millis(200)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!(gateway = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    let _ = reports.await;
}

/// Reconciles one Gateway, recording metrics, in a span under kube-runtime's span of what
/// triggered it ([`crate::telemetry`]).
pub fn reconcile(
    gw: Arc<Gateway>,
    ctx: Arc<GatewayContext>,
) -> impl std::future::Future<Output = Result<Action, Error>> + Send {
    let span = crate::telemetry::reconcile_span(KIND, &key(&gw));
    let recorded = span.clone();
    tracing::Instrument::instrument(
        async move {
            let result = reconcile_measured(gw, ctx).await;
            crate::telemetry::record_outcome(&recorded, &result);
            result
        },
        span,
    )
}

async fn reconcile_measured(gw: Arc<Gateway>, ctx: Arc<GatewayContext>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = reconcile_inner(&gw, &ctx).await;
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&key(&gw));
    }
    // Series of deleted Gateways go (a deletion does not reconcile: owned objects are
    // garbage-collected).
    ctx.ctx.metrics.retain_gateways(|ns, name| {
        ctx.stores
            .gateways
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
            .is_some()
    });
    ctx.ctx.metrics.observe(
        KIND,
        start.elapsed(),
        result.as_ref().err().map(Error::label),
    );
    result
}

/// Transient failures back off exponentially per Gateway and retry.
pub fn error_policy(gw: Arc<Gateway>, error: &Error, ctx: Arc<GatewayContext>) -> Action {
    let failures = ctx.failures.lock().map_or(1, |mut f| {
        let n = f.entry(key(&gw)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = backoff(failures);
    tracing::warn!(
        gateway = %key(&gw),
        error = %error,
        failures,
        retry_in = ?delay,
        "reconcile failed; retrying"
    );
    Action::requeue(delay)
}

async fn reconcile_inner(gw: &Gateway, ctx: &GatewayContext) -> Result<Action, Error> {
    let client = &ctx.ctx.client;
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    if gw.meta().deletion_timestamp.is_some() {
        // Owned objects go with the Gateway (garbage collection); nothing to do.
        return Ok(Action::await_change());
    }
    // Says "being built" to the status pass (which waits for this build rather than making
    // its own) and takes the ticket before any cache is read (crate::cache::builds).
    let building = ctx
        .stores
        .builds
        .building(rustronaut_contract::snapshot::ObjectRef::new(&ns, &name));
    ctx.stores.ready().await?;
    ctx.stores.refresh_secrets(&ctx.ctx.client).await?;

    // keys first: the snapshot names the sites by their (possibly generated) public keys
    // and carries the tenants' session keys (not for a Gateway over its tenant's quota: it
    // gets nothing at all)
    let quota_exceeded = over_gateway_quota(ctx, gw);
    let keys = match &gw.spec.tunnel {
        Some(_) if !quota_exceeded => Some(ensure_keys(ctx, gw).await?),
        _ => None,
    };
    // Which tenants get a session key Secret, worked out once for ensure and prune.
    let sessions = if quota_exceeded {
        BTreeMap::new()
    } else {
        session::wanted(&ctx.stores.world(gw), gw)
    };
    let session_keys = ensure_session_keys(ctx, gw, &sessions).await?;

    // read + build
    let (built, problem_refs) = {
        // Scoped: the inputs borrow the stores through a `dyn SecretSource`, which must not
        // live across an await (the reconcile future is sent between threads).
        let world = ctx.stores.world(gw);
        let mut inputs = inputs::inputs(&ctx.stores, &world, gw);
        if let Some(k) = &keys {
            // Fresher than the cache: a key created a moment ago.
            inputs.site_keys.extend(k.sites.clone());
        }
        // Likewise: the first snapshot already carries a session key created just now.
        inputs.session_keys = session_keys;
        let built = gateway_snapshot(&world, gw, &inputs);
        ctx.ctx.metrics.gateway_builds(KIND, 1);
        building.finish(
            crate::cache::builds::Version::of(gw),
            crate::conditions::BuildSummary::of_result(&built),
        );
        let refs = match &built {
            Ok(outcome) => problem_references(&world, &outcome.problems),
            Err(_) => Vec::new(),
        };
        (built, refs)
    };
    let previous = ctx
        .stores
        .secrets
        .get(&ns, &names::snapshot(&name))
        .and_then(|s| config_version(&s));

    // build: one value holding everything this Gateway wants (desired), destructured whole
    // so that nothing built goes unapplied.
    let reference = gw.object_ref(&());
    let desired::Desired {
        snapshot,
        workload,
        hub,
        pod_template_refused,
    } = desired::build(
        gw,
        &ctx.settings,
        &built,
        keys.as_ref().map(|k| k.replicas.as_slice()),
    );

    // apply: the snapshot first, only when it was built (otherwise the last good one stays).
    // First because it is what carries a policy change to the running gateways: the workload
    // objects and the hubs' status below are a dozen round trips that a change should not wait
    // for (bench-operator: apply -> snapshot written).
    let served = match (snapshot, &built) {
        (Some(secret), Ok(outcome)) => {
            let secret = put(client, &ns, &secret).await?;
            for p in &outcome.problems {
                let level = if p.impact == Impact::Degraded {
                    "degraded"
                } else {
                    "excluded"
                };
                tracing::info!(
                    gateway = %format!("{ns}/{name}"),
                    object = %format!("{} {}", p.kind, p.object),
                    reason = p.reason,
                    level,
                    "{}",
                    p.message
                );
            }
            let served = config_version(&secret);
            if served != previous {
                // The configuration changed: say on each affected object why it is left out,
                // fails closed or is degraded here (not on every resync: no Event storm).
                publish_problems(ctx, &problem_refs, &reference).await;
                // And on the Gateway, what changed: `kubectl describe gateway` shows when
                // each configuration went out, next to the Warnings.
                publish_published(ctx, &reference, &secret, served.as_deref(), outcome).await;
            }
            served
        }
        (_, result) => {
            if let Err(e) = result {
                publish_failure(ctx, &reference, e).await;
            }
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret_name = names::snapshot(&name);
            let current = api
                .get_opt(&secret_name)
                .await
                .map_err(|source| Error::Read {
                    namespace: ns.clone(),
                    name: secret_name,
                    source,
                })?;
            current.as_ref().and_then(config_version)
        }
    };
    let outcome = match built {
        Ok(outcome) => status::Built::Ok {
            attached: outcome.attached,
            problems: outcome
                .problems
                .iter()
                .filter(|p| p.impact != Impact::Degraded)
                .count(),
            pending: outcome.pending,
        },
        Err(e) => status::Built::Failed {
            reason: e.reason(),
            message: e.to_string(),
            listener: e.listener().map(str::to_string),
        },
    };

    ctx.ctx.metrics.gateway_built(
        &ns,
        &name,
        served.as_deref(),
        match &outcome {
            status::Built::Failed { reason, .. } => Some(reason),
            _ => None,
        },
    );

    if let Some(why) = &pod_template_refused {
        tracing::warn!(gateway = %format!("{ns}/{name}"), "podTemplate refused: {why}");
    }

    // apply: the workload, whatever the snapshot's fate (it does not depend on it)
    let (status_cm, service, deployment) = match workload {
        // Over the tenant's Gateway quota: no snapshot (above), no workload, no hub; an
        // existing workload (the quota was lowered) is left as it is, serving its last
        // snapshot.
        None => (None, None, None),
        Some(w) => {
            let before = ctx.memo.deployment(&key(gw)).await;
            let (status_cm, service, deployment) = apply_workload(ctx, gw, w).await?;
            if let Some(d) = &deployment
                && rolled(before.as_ref(), d)
            {
                publish_rolled(ctx, &reference, d).await;
            }
            (Some(status_cm), Some(service), deployment)
        }
    };
    let over_quota = status_cm.is_none();

    // apply: the tunnel hub (its configuration only from a built snapshot), then prune
    if let Some(h) = hub {
        apply_hub(ctx, gw, h, &reference).await?;
    }
    if !over_quota {
        prune_hub(ctx, gw).await?;
        // Not when the first quota check said over (then `sessions` is empty, and the cache
        // may have changed since): pruning would end every session for nothing.
        if !quota_exceeded {
            prune_sessions(ctx, gw, &sessions).await?;
        }
    }
    let sites = match &gw.spec.tunnel {
        Some(t) => {
            // The ready hub pods, from the stream Service's EndpointSlices (cached).
            let addrs: Vec<SocketAddr> = ctx
                .stores
                .endpoints(&ns, &tunnel::names::stream(&name), tunnel::STREAM_PORT)
                .unwrap_or_default()
                .into_iter()
                .map(|a| SocketAddr::new(a.ip(), tunnel::ADMIN_PORT))
                .collect();
            let reports = hubstatus::fetch_all(&addrs).await;
            let names: Vec<String> = t.sites.iter().map(|s| s.name.clone()).collect();
            hubstatus::site_status(&names, &reports)
        }
        None => Vec::new(),
    };

    // status, remembered for the pods' reports that follow (reports)
    reports::settle(
        ctx,
        gw,
        reports::Seen {
            generation: gw.meta().generation,
            built: outcome,
            served,
            deployment,
            service,
            listeners: gw.spec.listeners.iter().map(|l| l.name.clone()).collect(),
            pod_template_refused,
            tunnel: keys.map(|k| TunnelStatus {
                public_keys: k.replicas.into_iter().flatten().collect(),
                sites,
            }),
            reports: reports::Reports::of(status_cm.as_ref()),
        },
    )
    .await?;
    // With a tunnel, sooner: the sites' state changes without any event.
    Ok(Action::requeue(if gw.spec.tunnel.is_some() {
        hubstatus::INTERVAL
    } else {
        RESYNC
    }))
}

/// Whether `gw` is beyond its tenant's `quotas.gateways` (oldest Gateways win; see
/// `rustronaut_compile::quota`).
fn over_gateway_quota(ctx: &GatewayContext, gw: &Gateway) -> bool {
    let world = ctx.stores.world(gw);
    let key = rustronaut_contract::snapshot::ObjectRef::new(
        gw.namespace().unwrap_or_default(),
        gw.name_any(),
    );
    rustronaut_compile::quota::over_quota(&world, &world.claims())
        .gateways
        .contains_key(&key)
}

/// The tunnel's key material as it exists after [`ensure_keys`].
struct HubKeys {
    /// Public key of each replica, in replica order; None for a key Secret that holds no
    /// valid key (edited by hand: left alone, never overwritten, and not advertised).
    replicas: Vec<Option<String>>,
    /// Public keys of the sites without spec publicKey.
    sites: BTreeMap<String, String>,
}

/// Returns Secret `name`, creating it from `make` when it does not exist. Never overwrites:
/// `create` fails with 409 when another reconcile (or a stale cache) raced us, and the
/// existing Secret wins.
async fn ensure_secret(
    ctx: &GatewayContext,
    gw: &Gateway,
    name: &str,
    what: &str,
    make: impl FnOnce() -> Option<Secret>,
) -> Result<Secret, Error> {
    let secret = ensure_secret_unchecked(ctx, gw, name, what, make).await?;
    if objects::generated_for(&secret, gw) {
        return Ok(secret);
    }
    let ns = gw.namespace().unwrap_or_default();
    let e = Error::ForeignSecret {
        namespace: ns,
        name: name.to_string(),
        what: what.to_string(),
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "ForeignSecret".into(),
        note: Some(truncate(e.to_string())),
        action: "GenerateSecret".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &gw.object_ref(&())).await {
        tracing::warn!(error = %err, "failed to publish an Event");
    }
    Err(e)
}

/// [`ensure_secret`] without the ownership check: the Secret from the cache, else created,
/// else (created meanwhile) read.
async fn ensure_secret_unchecked(
    ctx: &GatewayContext,
    gw: &Gateway,
    name: &str,
    what: &str,
    make: impl FnOnce() -> Option<Secret>,
) -> Result<Secret, Error> {
    let ns = gw.namespace().unwrap_or_default();
    let ns = ns.as_str();
    if let Some(s) = ctx.stores.secrets.own.get(&ObjectRef::new(name).within(ns)) {
        return Ok((*s).clone());
    }
    let api: Api<Secret> = Api::namespaced(ctx.ctx.client.clone(), ns);
    let secret = make().ok_or_else(|| Error::Random(what.to_string()))?;
    let params = PostParams {
        field_manager: Some(crate::context::FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    match api.create(&params, &secret).await {
        Ok(s) => {
            tracing::info!(secret = %format!("{ns}/{name}"), "generated {what}");
            Ok(s)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.get(name).await.map_err(|source| Error::Read {
                namespace: ns.to_string(),
                name: name.to_string(),
                source,
            })
        }
        Err(source) => Err(Error::Apply {
            kind: "Secret",
            namespace: ns.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

/// Creates the replica keys, the keys of sites without spec publicKey and the gateway token
/// when absent.
async fn ensure_keys(ctx: &GatewayContext, gw: &Gateway) -> Result<HubKeys, Error> {
    use rustronaut_tunnel::keys::PrivateKey;
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    let Some(t) = &gw.spec.tunnel else {
        return Ok(HubKeys {
            replicas: Vec::new(),
            sites: BTreeMap::new(),
        });
    };
    let new_key = || PrivateKey::generate().ok();
    let mut replicas = Vec::new();
    for i in 0..t.replicas {
        let secret = ensure_secret(
            ctx,
            gw,
            &tunnel::names::replica(&name, i),
            "a hub key",
            || Some(tunnel::replica_key_secret(gw, i, &new_key()?)),
        )
        .await?;
        let public = tunnel::public_key_of(&secret);
        if public.is_none() {
            tracing::warn!(
                secret = %format!("{ns}/{}", tunnel::names::replica(&name, i)),
                "hub key Secret holds no valid private-key; delete it to have a new one generated"
            );
        }
        replicas.push(public);
    }
    let pool = t.address_pool.parse().ok();
    let addresses = pool
        .map(|p| {
            rustronaut_compile::tunnel::site_addresses(&p, t.sites.iter().map(|s| s.name.as_str()))
        })
        .unwrap_or_default();
    let hub = pool.and_then(|p| rustronaut_compile::tunnel::hub_address(&p));
    let mut sites = BTreeMap::new();
    for s in t.sites.iter().filter(|s| s.public_key.is_none()) {
        let secret = ensure_secret(
            ctx,
            gw,
            &tunnel::names::site(&name, &s.name),
            "a site key",
            || {
                Some(tunnel::site_key_secret(
                    gw,
                    &s.name,
                    &new_key()?,
                    addresses.get(&s.name).copied(),
                    hub,
                ))
            },
        )
        .await?;
        refresh_site_addresses(ctx, &secret, addresses.get(&s.name).copied(), hub).await?;
        if let Some(public) = tunnel::public_key_of(&secret) {
            sites.insert(s.name.clone(), public);
        }
    }
    ensure_secret(
        ctx,
        gw,
        &tunnel::names::token(&name),
        "the tunnel token",
        || Some(tunnel::token_secret(gw, &tunnel::new_token().ok()?)),
    )
    .await?;
    Ok(HubKeys { replicas, sites })
}

/// Creates the session key Secret of every tenant that wants one at `gw` when absent (one
/// generated key), and returns each one's data by tenant, fresher than the cache. Never
/// overwrites and never logs a key: people add keys to these Secrets to rotate.
async fn ensure_session_keys(
    ctx: &GatewayContext,
    gw: &Gateway,
    wanted: &BTreeMap<String, Result<String, String>>,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, Error> {
    let mut out = BTreeMap::new();
    for (tenant, name) in wanted.clone() {
        let name = match name {
            Ok(name) => name,
            Err(name) => {
                // The snapshot build reports the missing keys on the Tenant too.
                tracing::warn!(
                    gateway = %key(gw),
                    tenant = %tenant,
                    secret = %name,
                    "session key Secret name is longer than 253 characters; OIDC login for this tenant stays off at this Gateway"
                );
                continue;
            }
        };
        let made = ensure_secret(ctx, gw, &name, "a session key", || {
            let id = session::new_id(k8s_openapi::jiff::Timestamp::now());
            Some(session::key_secret(
                gw,
                &tenant,
                &name,
                &id,
                &session::new_key().ok()?,
            ))
        })
        .await;
        let secret = match made {
            Ok(secret) => secret,
            // Someone else's Secret under this name: no session key for this tenant (OIDC
            // login stays off here, fails closed) rather than sessions sealed with a key a
            // stranger chose; the other tenants are not held up (Warning Event published).
            Err(e @ Error::ForeignSecret { .. }) => {
                tracing::warn!(gateway = %key(gw), tenant = %tenant, "{e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        out.insert(tenant, session::data(&secret));
    }
    Ok(out)
}

/// Deletes `gw`'s session key Secrets of tenants that no longer want one (no longer admitted,
/// no OIDC provider left, or deleted; `wanted` is [`session::wanted`]): their sessions end
/// with them.
async fn prune_sessions(
    ctx: &GatewayContext,
    gw: &Gateway,
    wanted: &BTreeMap<String, Result<String, String>>,
) -> Result<(), Error> {
    let ns = gw.namespace().unwrap_or_default();
    let wanted: Vec<&String> = wanted.values().filter_map(|n| n.as_ref().ok()).collect();
    let stale: Vec<String> = ctx
        .stores
        .secrets
        .own
        .state()
        .iter()
        .filter(|s| session::is_session_secret(gw, &***s) && !wanted.contains(&&s.name_any()))
        .map(|s| s.name_any())
        .collect();
    for name in stale {
        tracing::info!(secret = %format!("{ns}/{name}"), "deleting a session key Secret no tenant wants");
        remove::<Secret>(&ctx.ctx.client, &ns, &name).await?;
    }
    Ok(())
}

/// Keeps the addresses in a site's key Secret current (a new addressPool moves them) without
/// touching its keys: a merge patch of exactly those two entries, only when they differ.
async fn refresh_site_addresses(
    ctx: &GatewayContext,
    secret: &Secret,
    site: Option<IpAddr>,
    hub: Option<IpAddr>,
) -> Result<(), Error> {
    use k8s_openapi::ByteString;
    let current = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let want = |a: Option<IpAddr>| a.map(|a| a.to_string().into_bytes());
    let entries = [
        (tunnel::TUNNEL_ADDRESS, want(site)),
        (tunnel::HUB_TUNNEL_ADDRESS, want(hub)),
    ];
    if entries.iter().all(|(k, v)| current(k) == *v) {
        return Ok(());
    }
    let data: serde_json::Map<String, serde_json::Value> = entries
        .into_iter()
        .map(|(k, v)| {
            let v = v.map_or(serde_json::Value::Null, |v| {
                serde_json::json!(ByteString(v))
            });
            (k.to_string(), v)
        })
        .collect();
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.ctx.client.clone(), &ns);
    let params = kube::api::PatchParams {
        field_manager: Some(crate::context::FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    api.patch(
        &name,
        &params,
        &kube::api::Patch::Merge(serde_json::json!({"data": data})),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: "Secret",
        namespace: ns,
        name,
        source,
    })?;
    Ok(())
}

/// Applies the workload of [`desired::Workload`]; returns the status ConfigMap, the Service
/// and the Deployment as the API server holds them (the Deployment read when a refused
/// podTemplate leaves it as it is).
async fn apply_workload(
    ctx: &GatewayContext,
    gw: &Gateway,
    workload: desired::Workload,
) -> Result<
    (
        k8s_openapi::api::core::v1::ConfigMap,
        Service,
        Option<Deployment>,
    ),
    Error,
> {
    let client = &ctx.ctx.client;
    let desired::Workload {
        service_account,
        role,
        role_binding,
        status,
        service,
        deployment,
        network_policy,
        pdb,
        hpa,
        certificates,
    } = workload;
    let ns = &gw.namespace().unwrap_or_default();
    let name = &gw.name_any();
    put(client, ns, &service_account).await?;
    put(client, ns, &role).await?;
    put(client, ns, &role_binding).await?;
    let status = put(client, ns, &status).await?;
    let service = put(client, ns, &service).await?;
    let deployment = match deployment {
        Some(d) => Some(put(client, ns, &d).await?),
        // Refused: the Deployment stays as it is (the one already there, if any).
        None => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|source| Error::Read {
                namespace: ns.to_string(),
                name: name.to_string(),
                source,
            })?,
    };
    put(client, ns, &network_policy).await?;
    match pdb {
        Some(p) => drop(put(client, ns, &p).await?),
        None => remove::<PodDisruptionBudget>(client, ns, name).await?,
    }
    match hpa {
        Some(h) => drop(put(client, ns, &h).await?),
        None => remove::<HorizontalPodAutoscaler>(client, ns, name).await?,
    }
    apply_certificates(ctx, gw, certificates).await?;
    Ok((status, service, deployment))
}

/// Applies the listeners' cert-manager Certificates and, when the Gateway's spec changed
/// since this process last looked, deletes the ones it no longer wants (they are only ever
/// created from the spec, so an unchanged generation cannot leave one behind; the first
/// reconcile after a start always looks). Without cert-manager's CRD the listeners wait
/// (`CertificatePending`) and a Warning Event says why; that is not a reconcile error.
async fn apply_certificates(
    ctx: &GatewayContext,
    gw: &Gateway,
    certificates: Vec<kube::core::DynamicObject>,
) -> Result<(), Error> {
    use kube::api::{DeleteParams, ListParams};
    let client = &ctx.ctx.client;
    let ns = gw.namespace().unwrap_or_default();
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &objects::certificate_resource());
    let missing_crd = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    let mut wanted = std::collections::BTreeSet::new();
    for c in &certificates {
        let cname = c.name_any();
        match crate::apply::apply(&api, &cname, c).await {
            Ok(_) => {}
            Err(e) if missing_crd(&e) => {
                publish_cert_manager_missing(ctx, &gw.object_ref(&()), &cname).await;
                return Ok(());
            }
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Certificate",
                    namespace: ns,
                    name: cname,
                    source,
                });
            }
        }
        wanted.insert(cname);
    }
    let key = key(gw);
    let generation = gw.meta().generation;
    if ctx
        .certificates_pruned
        .lock()
        .is_ok_and(|m| m.get(&key).copied() == Some(generation))
    {
        return Ok(());
    }
    let selector = format!(
        "{},{}={}",
        labels::MANAGED_SELECTOR,
        labels::INSTANCE,
        gw.name_any()
    );
    let listed = match api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(l) => l.items,
        Err(e) if missing_crd(&e) => Vec::new(),
        Err(source) => {
            return Err(Error::List {
                kind: "Certificate",
                source,
            });
        }
    };
    let uid = gw.uid();
    for c in listed {
        let owned = c
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
        let cname = c.name_any();
        if !owned || wanted.contains(&cname) {
            continue;
        }
        match api.delete(&cname, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: "Certificate",
                    namespace: ns,
                    name: cname,
                    source,
                });
            }
        }
    }
    if let Ok(mut m) = ctx.certificates_pruned.lock() {
        m.insert(key, generation);
    }
    Ok(())
}

/// A Warning on the Gateway: a listener asks cert-manager for a certificate, but the
/// cluster has no cert-manager (its `Certificate` kind is not served).
async fn publish_cert_manager_missing(
    ctx: &GatewayContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    certificate: &str,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: "CertManagerMissing".into(),
        note: Some(format!(
            "a listener has tls.issuerRef, but the API server does not serve cert-manager.io/v1 Certificate: install cert-manager, or name a Secret without issuerRef (Certificate {certificate} not created)"
        )),
        action: "Apply".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!("failed to publish an Event: {e}");
    }
}

/// Applies the hub's workload and, when the snapshot was built, its configuration (a
/// configuration the hub would refuse is not written: the last good one stays, as with the
/// snapshot, and a Warning Event says why).
async fn apply_hub(
    ctx: &GatewayContext,
    gw: &Gateway,
    hub: desired::Hub,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<(), Error> {
    let client = &ctx.ctx.client;
    let ns = gw.namespace().unwrap_or_default();
    let desired::Hub {
        config,
        stateful_set,
        replica_services,
        stream_service,
        network_policy,
        pdb,
    } = hub;
    match config {
        Ok(Some(secret)) => drop(put(client, &ns, &secret).await?),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(
                gateway = %format!("{ns}/{}", gw.name_any()),
                error = %e,
                "hub configuration not written; the last good one stays"
            );
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidTunnelConfig".into(),
                note: Some(truncate(e)),
                action: "BuildHubConfig".into(),
                secondary: None,
            };
            if let Err(err) = ctx.recorder.publish(&event, reference).await {
                tracing::warn!(error = %err, "failed to publish an Event");
            }
        }
    }
    if let Some(ss) = stateful_set {
        put(client, &ns, &ss).await?;
    }
    for svc in replica_services {
        put(client, &ns, &svc).await?;
    }
    if let Some(svc) = stream_service {
        put(client, &ns, &svc).await?;
    }
    if let Some(np) = network_policy {
        put(client, &ns, &np).await?;
    }
    match pdb {
        Some(p) => drop(put(client, &ns, &p).await?),
        None => {
            remove::<PodDisruptionBudget>(client, &ns, &tunnel::names::hub(&gw.name_any())).await?
        }
    }
    Ok(())
}

/// Deletes the hub objects the spec no longer wants (all of them without `spec.tunnel`):
/// ownerReferences only clean up after the Gateway itself is deleted.
async fn prune_hub(ctx: &GatewayContext, gw: &Gateway) -> Result<(), Error> {
    let client = &ctx.ctx.client;
    let ns = gw.namespace().unwrap_or_default();
    let wanted = tunnel::wanted(gw);
    let secrets: Vec<String> = ctx
        .stores
        .secrets
        .own
        .state()
        .iter()
        .filter(|s| tunnel::is_hub_object(gw, &***s) && !wanted.secrets.contains(&s.name_any()))
        .map(|s| s.name_any())
        .collect();
    for name in secrets {
        remove::<Secret>(client, &ns, &name).await?;
    }
    let services: Vec<String> = ctx
        .stores
        .services
        .state()
        .iter()
        .filter(|s| tunnel::is_hub_object(gw, &***s) && !wanted.services.contains(&s.name_any()))
        .map(|s| s.name_any())
        .collect();
    for name in services {
        remove::<Service>(client, &ns, &name).await?;
    }
    if gw.spec.tunnel.is_none() {
        let hub = tunnel::names::hub(&gw.name_any());
        remove::<StatefulSet>(client, &ns, &hub).await?;
        remove::<PodDisruptionBudget>(client, &ns, &hub).await?;
        remove::<NetworkPolicy>(client, &ns, &hub).await?;
    }
    Ok(())
}

/// At most this many problem Events per reconcile, so a broken bulk apply cannot turn one
/// reconcile into thousands of API calls (every problem is still logged).
pub const MAX_PROBLEM_EVENTS: usize = 50;

/// Object references (with uids, so `kubectl describe` finds the Events) of the objects
/// that have problems.
fn problem_references(
    world: &World,
    problems: &[rustronaut_compile::snapshot::Problem],
) -> Vec<(k8s_openapi::api::core::v1::ObjectReference, String, String)> {
    problems
        .iter()
        .filter_map(|p| {
            let (ns, name) = (p.object.namespace.as_str(), p.object.name.as_str());
            let matches = |m: &kube::api::ObjectMeta| {
                m.name.as_deref() == Some(name) && m.namespace.as_deref().unwrap_or_default() == ns
            };
            let r = match p.kind {
                "Resource" => world
                    .resources
                    .iter()
                    .find(|r| matches(&r.metadata))
                    .map(|r| r.object_ref(&())),
                "Policy" => world
                    .policies
                    .iter()
                    .find(|x| matches(&x.metadata))
                    .map(|x| x.object_ref(&())),
                "Tenant" => world
                    .tenants
                    .iter()
                    .find(|x| matches(&x.metadata))
                    .map(|x| x.object_ref(&())),
                _ => world
                    .gateways
                    .iter()
                    .find(|x| matches(&x.metadata))
                    .map(|x| x.object_ref(&())),
            }?;
            Some((r, p.reason.to_string(), p.message.clone()))
        })
        .collect()
}

async fn publish_problems(
    ctx: &GatewayContext,
    problems: &[(k8s_openapi::api::core::v1::ObjectReference, String, String)],
    gateway: &k8s_openapi::api::core::v1::ObjectReference,
) {
    for (reference, reason, message) in problems.iter().take(MAX_PROBLEM_EVENTS) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.clone(),
            note: Some(truncate(message.clone())),
            action: "BuildSnapshot".into(),
            secondary: (reference != gateway).then(|| gateway.clone()),
        };
        if let Err(err) = ctx.recorder.publish(&event, reference).await {
            tracing::warn!(error = %err, "failed to publish an Event");
        }
    }
}

/// Event notes are limited to 1 kB.
fn truncate(mut note: String) -> String {
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    note
}

fn config_version(secret: &Secret) -> Option<String> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(objects::CONFIG_VERSION_ANNOTATION)
        .cloned()
}

/// Reason of the Normal Event a Gateway gets when a new snapshot version is written.
pub const SNAPSHOT_PUBLISHED: &str = "SnapshotPublished";

/// The Normal [`SNAPSHOT_PUBLISHED`] Event: which version, in which Secret, how many
/// Resources it serves and how many objects it leaves out. Only on a version change, so a
/// resync publishes nothing.
async fn publish_published(
    ctx: &GatewayContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    secret: &Secret,
    version: Option<&str>,
    outcome: &rustronaut_compile::snapshot::BuildOutcome,
) {
    let Some(version) = version else { return };
    let left_out = outcome
        .problems
        .iter()
        .filter(|p| p.impact != Impact::Degraded)
        .count();
    let event = Event {
        type_: EventType::Normal,
        reason: SNAPSHOT_PUBLISHED.into(),
        note: Some(truncate(format!(
            "snapshot {version} published in Secret {}/{}: {} Resource(s) served, {left_out} object(s) left out",
            secret.namespace().unwrap_or_default(),
            secret.name_any(),
            outcome.snapshot.resources.len(),
        ))),
        action: "PublishSnapshot".into(),
        secondary: None,
    };
    if let Err(err) = ctx.ctx.news().publish(&event, reference).await {
        tracing::warn!(error = %err, "failed to publish an Event");
    }
}

/// Reason of the Normal Event saying the gateway pods are being replaced.
pub const WORKLOAD_ROLLED: &str = "WorkloadRolled";

/// Whether applying changed the Deployment's spec (a new generation of the same object):
/// its pods are being replaced. Not on the first reconcile of this process (`before` None),
/// so a restart of the operator says nothing.
fn rolled(before: Option<&(Option<String>, Option<i64>)>, applied: &Deployment) -> bool {
    before.is_some_and(|(uid, generation)| {
        *uid == applied.metadata.uid && applied.metadata.generation > *generation
    })
}

/// The Normal [`WORKLOAD_ROLLED`] Event: `kubectl describe gateway` shows when the pods were
/// replaced (an image, replica count or podTemplate change), next to the snapshots.
async fn publish_rolled(
    ctx: &GatewayContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    d: &Deployment,
) {
    let spec = d.spec.as_ref();
    let image = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let event = Event {
        type_: EventType::Normal,
        reason: WORKLOAD_ROLLED.into(),
        note: Some(truncate(format!(
            "Deployment {} rolled to generation {}: {} replica(s) of {image}",
            d.name_any(),
            d.metadata.generation.unwrap_or_default(),
            spec.and_then(|s| s.replicas).unwrap_or(1),
        ))),
        action: "RollWorkload".into(),
        secondary: None,
    };
    if let Err(err) = ctx.ctx.news().publish(&event, reference).await {
        tracing::warn!(error = %err, "failed to publish an Event");
    }
}

async fn publish_failure(
    ctx: &GatewayContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    e: &BuildError,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: e.reason().to_string(),
        note: Some(truncate(e.to_string())),
        action: "BuildSnapshot".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %err, "failed to publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(uid: &str, generation: i64) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "edge", "uid": uid, "generation": generation},
        }))
        .unwrap()
    }

    #[test]
    fn rolled_only_when_this_process_saw_an_older_generation_of_the_same_deployment() {
        let before = (Some("u1".to_string()), Some(3));
        assert!(rolled(Some(&before), &deployment("u1", 4)));
        assert!(!rolled(Some(&before), &deployment("u1", 3)), "no change");
        assert!(!rolled(Some(&before), &deployment("u2", 4)), "recreated");
        assert!(!rolled(None, &deployment("u1", 4)), "first reconcile here");
    }
}
