//! The Gateway controller: each Gateway becomes its compiled snapshot and the workload that
//! serves it.
//!
//! ```text
//!  read      Gateway + reflector stores (Tenants, Resources, Policies, Services,
//!            EndpointSlices, the cluster's networks) -> World + GatewayInputs (this module;
//!            which slice addresses count: networks)
//!            Secrets: metadata of all, the operator's own whole, the named ones
//!            fetched when they change                                       (secrets)
//!  build     rustronaut_compile::snapshot::gateway_snapshot -> Snapshot | BuildError
//!            objects::* -> Secret, ConfigMap, SA, Role, RoleBinding, Deployment, Service,
//!            NetworkPolicy, PDB, HPA                                        (objects)
//!            with spec.tunnel: key Secrets (created once), hub config Secret,
//!            StatefulSet, per-replica UDP Services, stream Service,
//!            NetworkPolicy                                                  (tunnel)
//!            per admitted tenant with an OIDC provider: its session key Secret
//!            (created once, read into `inputs.session_keys`)                (session)
//!  status    ... + status.tunnel: replica public keys, sites from the hubs' /status
//!                                                                           (hubstatus)
//!  apply     server-side apply, field manager "rustronaut-operator"        (crate::apply)
//!  status    status::status -> Accepted / Programmed / Ready, configVersion (status)
//! ```
//!
//! A snapshot that cannot be built leaves the previous `<gw>-snapshot` Secret untouched (the
//! gateways keep serving the last good configuration), sets Accepted=False and
//! Programmed=False with the reason, records a Warning Event, and waits for a change: the
//! reconcile itself succeeds, so nothing retries in a hot loop and nothing crash-loops.
//!
//! Watches. The Gateway and the objects it owns are watched as usual (`owns`). Everything
//! else a snapshot is made of (Tenants, Resources, Policies, Secrets, Services,
//! EndpointSlices) is held in reflector stores, and *any* change of those re-reconciles every
//! Gateway (`reconcile_all_on`, coalesced through a one-slot channel and the controller's
//! debounce). Simple and obviously correct; an index from objects to the Gateways they affect
//! is the optimisation for later, when the benchmark says it is needed. Changes to Secrets the
//! operator writes itself trigger nothing, so writing a snapshot does not wake every Gateway;
//! the exception is the session key Secrets, which people edit to rotate keys.

pub mod affected;
pub mod guard;
pub mod hubstatus;
pub mod networks;
pub mod objects;
pub mod secrets;
pub mod session;
pub mod status;
pub mod tunnel;

use crate::apply::{apply, apply_status};
use crate::context::Context;
use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use objects::{Settings, labels, names};
use rustronaut_compile::World;
use rustronaut_compile::convert::SecretSource;
use rustronaut_compile::snapshot::{
    BuildError, GatewayInputs, Impact, ServicePort, TlsKeyPair, gateway_snapshot,
};
use rustronaut_contract::snapshot as cs;
use rustronaut_crds::gateway::TunnelStatus;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The kind label of this controller's metrics.
pub const KIND: &str = "Gateway";
/// How often a Gateway is reconciled without any change (a safety net for missed events).
pub const RESYNC: Duration = Duration::from_secs(300);
/// First retry delay after a failed reconcile (an API call failed); doubles per failure.
pub const RETRY: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `failures` (1-based): 2s, 4s, 8s ... at most [`RETRY_MAX`], so
/// a transient failure retries quickly and a persistent one does not hammer the API server.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY.saturating_mul(factor).min(RETRY_MAX)
}

/// Failures of a reconcile: all transient (API calls). An invalid spec is not an error here:
/// it becomes a condition and the reconcile succeeds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a generated object failed.
    #[error("failed to apply {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting an object that is no longer wanted failed.
    #[error("failed to delete {kind} {namespace}/{name}: {source}")]
    Delete {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading the current snapshot Secret failed.
    #[error("failed to read Secret {namespace}/{name}: {source}")]
    Read {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the Gateway's status failed.
    #[error("failed to write the status of Gateway {namespace}/{name}: {source}")]
    Status {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the status of another kind (Resource, Policy, Tenant) failed.
    #[error("failed to write the status of {kind} {namespace}/{name}: {source}")]
    ObjectStatus {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace (empty for a Tenant).
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Listing objects (to prune what is no longer wanted) failed.
    #[error("failed to list {kind}: {source}")]
    List {
        /// Kind of the objects.
        kind: &'static str,
        /// The API error.
        source: kube::Error,
    },
    /// A reflector stopped before its first list.
    #[error("the {0} cache stopped before it was filled")]
    CacheDropped(&'static str),
    /// Reading the Secrets Tenants and Gateways name failed.
    #[error("failed to read the Secrets named by Tenants and Gateways: {0}")]
    SecretRefresh(#[source] kube::Error),
    /// The system random number generator failed (a key or token could not be made).
    #[error("failed to generate {0}: the system random number generator failed")]
    Random(String),
    /// A Secret the operator generates exists but was not made by it for this Gateway.
    #[error(
        "Secret {namespace}/{name} ({what}) is not the operator's for this Gateway (labels or controller owner reference missing); it is not used: delete it to have one generated"
    )]
    ForeignSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What it should hold.
        what: String,
    },
}

impl Error {
    /// A short, bounded label for metrics (the variant).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "Apply",
            Self::Delete { .. } => "Delete",
            Self::Read { .. } => "Read",
            Self::Status { .. } => "Status",
            Self::ObjectStatus { .. } => "ObjectStatus",
            Self::List { .. } => "List",
            Self::CacheDropped(_) => "CacheDropped",
            Self::SecretRefresh(_) => "SecretRefresh",
            Self::Random(_) => "Random",
            Self::ForeignSecret { .. } => "ForeignSecret",
        }
    }
}

/// Whether an EndpointSlice address may be an upstream: never link-local (169.254.0.0/16,
/// the cloud metadata service; fe80::/10), loopback or unspecified, also spelled as
/// IPv4-mapped IPv6. Anyone who can write EndpointSlices of a selector-less Service chooses
/// its addresses, and the gateway is admitted everywhere (issue 14, item 12).
pub fn endpoint_allowed(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => !(v4.is_link_local() || v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_unicast_link_local() || v6.is_loopback() || v6.is_unspecified()),
    }
}

/// The reflector stores a snapshot is built from.
#[derive(Clone)]
pub struct Stores {
    /// Tenants.
    pub tenants: Store<Tenant>,
    /// Resources.
    pub resources: Store<RtnResource>,
    /// Policies.
    pub policies: Store<Policy>,
    /// Secrets: the operator's own whole, users' only when named ([`secrets`]).
    pub secrets: secrets::SecretCache,
    /// Services (Service port -> EndpointSlice port name).
    pub services: Store<Service>,
    /// EndpointSlices (ready endpoints).
    pub slices: Store<EndpointSlice>,
    /// Every Gateway (the Resource/Policy status pass builds each one's snapshot; the
    /// Gateway controller itself works from its own watch).
    pub gateways: Store<Gateway>,
    /// Namespaces (a Tenant labels and isolates only namespaces that exist).
    pub namespaces: Store<Namespace>,
    /// The cluster's pod and Service networks (which EndpointSlice addresses are allowed).
    pub networks: networks::ClusterNetworks,
    /// The rustronaut.io objects the operator cannot read ([`guard`]).
    pub unreadable: guard::Seen,
}

/// How long one wait on a cache's readiness lasts before it is polled afresh.
///
/// Why not simply `Store::wait_until_ready().await`: in kube-runtime 5.0 it polls one
/// `futures` oneshot receiver shared by every waiter, and that receiver keeps only the waker
/// of the last task that polled it. When several tasks wait at once (the Tenant pass, the
/// Resource/Policy status pass, the readiness probe, Gateway reconciles) only the last is
/// woken when the first list completes; the others sleep forever, and a Tenant or Resource
/// never gets a status until the operator restarts (seen in `make demo` and in a CI run of
/// `operator/tests/isolation.rs`, about one start in five). Re-polling bounds a lost wake-up
/// to this interval, and only while the caches fill.
pub const READY_POLL: Duration = Duration::from_millis(100);

/// Waits until `store` has completed its first list, robust to many concurrent waiters
/// (see [`READY_POLL`]).
pub async fn wait_ready<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) = tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
            return r;
        }
    }
}

impl Stores {
    /// Waits until every store has completed its first list.
    pub async fn ready(&self) -> Result<(), Error> {
        macro_rules! wait {
            ($($f:ident),*) => {$(
                wait_ready(&self.$f)
                    .await
                    .map_err(|_| Error::CacheDropped(stringify!($f)))?;
            )*};
        }
        wait!(
            tenants, resources, policies, services, slices, gateways, namespaces
        );
        wait_ready(&self.secrets.meta)
            .await
            .map_err(|_| Error::CacheDropped("secrets"))?;
        wait_ready(&self.secrets.own)
            .await
            .map_err(|_| Error::CacheDropped("own secrets"))?;
        wait_ready(&self.networks.nodes)
            .await
            .map_err(|_| Error::CacheDropped("nodes"))?;
        wait_ready(&self.networks.service_cidrs)
            .await
            .map_err(|_| Error::CacheDropped("service_cidrs"))?;
        Ok(())
    }

    /// Fetches the data of every Secret a Tenant or Gateway names that changed since it was
    /// last read ([`secrets::SecretCache::refresh`]): call before building from the cache.
    pub async fn refresh_secrets(&self, client: &kube::Client) -> Result<(), Error> {
        let tenants = self.tenants.state();
        let gateways = self.gateways.state();
        let wanted =
            secrets::referenced(tenants.iter().map(|t| &**t), gateways.iter().map(|g| &**g));
        self.secrets
            .refresh(client, &wanted)
            .await
            .map_err(Error::SecretRefresh)
    }

    /// The rustronaut.io objects in the cache, as one [`World`], with `gateway` as the
    /// reconcile sees it in place of its cached copy. Other Gateways matter only to quotas
    /// (which Gateways and sites of a tenant are the oldest).
    pub fn world(&self, gateway: &Gateway) -> World {
        fn all<K: Clone + kube::Resource<DynamicType = ()>>(s: &Store<K>) -> Vec<K> {
            s.state().iter().map(|k| (**k).clone()).collect()
        }
        let mut gateways: Vec<Gateway> = self
            .gateways
            .state()
            .iter()
            .filter(|g| g.metadata.uid != gateway.metadata.uid)
            .map(|g| (**g).clone())
            .collect();
        gateways.push(gateway.clone());
        World {
            tenants: all(&self.tenants),
            gateways,
            resources: all(&self.resources),
            policies: all(&self.policies),
            namespaces: self.namespace_labels(),
        }
    }

    /// Labels of every cached Namespace, for Policies' namespaceSelector.
    pub fn namespace_labels(&self) -> rustronaut_crds::tenancy::NamespaceLabels {
        self.namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect()
    }

    /// Every rustronaut.io object in the cache, all Gateways included (for the status
    /// passes, which look at every Gateway at once).
    pub fn world_all(&self) -> World {
        fn all<K: Clone + kube::Resource<DynamicType = ()>>(s: &Store<K>) -> Vec<K> {
            s.state().iter().map(|k| (**k).clone()).collect()
        }
        World {
            tenants: all(&self.tenants),
            gateways: all(&self.gateways),
            resources: all(&self.resources),
            policies: all(&self.policies),
            namespaces: self.namespace_labels(),
        }
    }

    /// Ready endpoints of Service port `namespace/name:port` as `ip:targetPort`; None when
    /// the Service or the port does not exist.
    pub fn endpoints(&self, namespace: &str, name: &str, port: u16) -> Option<Vec<SocketAddr>> {
        self.endpoints_within(namespace, name, port, &self.networks.cidrs())
    }

    /// [`Self::endpoints`] with the cluster's networks already gathered (once per build, not
    /// once per Service port).
    fn endpoints_within(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        cluster: &[rustronaut_contract::cidr::Cidr],
    ) -> Option<Vec<SocketAddr>> {
        let svc = self.services.get(&ObjectRef::new(name).within(namespace))?;
        let sp = svc
            .spec
            .as_ref()?
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(port))?;
        let port_name = sp.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self.slices.state() {
            if slice.namespace().as_deref() != Some(namespace)
                || slice
                    .labels()
                    .get("kubernetes.io/service-name")
                    .map(String::as_str)
                    != Some(name)
            {
                continue;
            }
            let target = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            let Some(target) = target else { continue };
            let writer = slice.labels().get(networks::MANAGED_BY).map(String::as_str);
            for ep in &slice.endpoints {
                // Absent readiness means ready (the EndpointSlice API's convention).
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                out.extend(
                    ep.addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                        .filter(|ip| networks::slice_address_allowed(writer, *ip, cluster))
                        .map(|ip| SocketAddr::new(ip, target)),
                );
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// The inputs of `gateway`'s build: its TLS Secrets, the endpoints of every Service
    /// port the Resources in `world` name.
    pub fn inputs<'a>(&'a self, world: &World, gateway: &Gateway) -> GatewayInputs<'a> {
        let ns = gateway.namespace().unwrap_or_default();
        let mut tls = BTreeMap::new();
        for l in &gateway.spec.listeners {
            for r in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                let Some(s) = self.secrets.get(&ns, &r.name) else {
                    continue;
                };
                let key = |k: &str| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .unwrap_or_default()
                };
                tls.insert(
                    cs::ObjectRef::new(&ns, &r.name),
                    TlsKeyPair {
                        certificate_chain_pem: key("tls.crt"),
                        private_key_pem: key("tls.key"),
                    },
                );
            }
        }
        let mut endpoints = BTreeMap::new();
        let cluster = self.networks.cidrs();
        for res in &world.resources {
            let res_ns = res.namespace().unwrap_or_default();
            let upstreams = res
                .spec
                .upstreams
                .iter()
                .chain(res.spec.rules.iter().flat_map(|r| &r.upstreams));
            for svc in upstreams.filter_map(|u| u.service.as_ref()) {
                let Ok(port) = u16::try_from(svc.port) else {
                    continue;
                };
                let key = ServicePort::new(&res_ns, &svc.name, port);
                if endpoints.contains_key(&key) {
                    continue;
                }
                if let Some(addrs) = self.endpoints_within(&res_ns, &svc.name, port, &cluster) {
                    endpoints.insert(key, addrs);
                }
            }
        }
        GatewayInputs {
            tls,
            endpoints,
            secrets: self,
            site_keys: self.site_keys(gateway),
            session_keys: self.session_keys(world, gateway),
        }
    }

    /// The data of `gateway`'s session key Secrets in the cache, by tenant (only of the
    /// tenants that want one: a Secret about to be pruned contributes nothing).
    pub fn session_keys(
        &self,
        world: &World,
        gateway: &Gateway,
    ) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
        let ns = gateway.namespace().unwrap_or_default();
        session::wanted(world, gateway)
            .into_iter()
            .filter_map(|(tenant, name)| {
                let s = self.secrets.get(&ns, &name.ok()?)?;
                objects::generated_for(&s, gateway).then(|| (tenant, session::data(&s)))
            })
            .collect()
    }

    /// Public keys of `gateway`'s sites without spec publicKey, from the generated
    /// `<gw>-site-<name>` Secrets in the cache.
    pub fn site_keys(&self, gateway: &Gateway) -> BTreeMap<String, String> {
        let ns = gateway.namespace().unwrap_or_default();
        let name = gateway.name_any();
        let sites = gateway.spec.tunnel.iter().flat_map(|t| &t.sites);
        sites
            .filter(|s| s.public_key.is_none())
            .filter_map(|s| {
                let secret = self
                    .secrets
                    .get(&ns, &tunnel::names::site(&name, &s.name))?;
                if !objects::generated_for(&secret, gateway) {
                    return None;
                }
                Some((s.name.clone(), tunnel::public_key_of(&secret)?))
            })
            .collect()
    }
}

/// Identity-provider Secrets straight from the Secret store.
impl SecretSource for Stores {
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let s = self.secrets.get(namespace, name)?;
        let bytes = s.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    }

    fn data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.secrets.get(namespace, name)?;
        Some(
            s.data
                .iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
                .collect(),
        )
    }
}

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
}

fn key(gw: &Gateway) -> String {
    format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any())
}

fn managed(obj: &impl Resource) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::OPERATOR)
}

/// Which changes of a watched kind wake its listeners.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Changes {
    /// Every change (Secrets, Services, EndpointSlices: their data is what matters).
    All,
    /// Changes of the spec (generation), labels or deletion only, not of the status: the
    /// status passes write the status of Resources, Policies, Tenants and the Gateway
    /// controller that of Gateways, and those writes must not wake everything again.
    Spec,
}

/// What `Changes::Spec` compares.
fn fingerprint(obj: &impl Resource) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = obj.meta();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// Runs a reflector for `api` into a new store; every change (except of objects the operator
/// manages, and, with [`Changes::Spec`], except status-only updates) pokes every sender in
/// `txs`. Returns the store and the stream to drive.
/// Wakes the Gateways a change of a namespaced object can affect ([`affected`]), through the
/// controller's `reconcile_on` stream.
#[derive(Clone)]
struct Index {
    tx: mpsc::UnboundedSender<ObjectRef<Gateway>>,
    tenants: Store<Tenant>,
    gateways: Store<Gateway>,
}

impl Index {
    /// `ns`: the changed object's namespace; None wakes every Gateway.
    fn wake(&self, ns: Option<&str>) {
        let gateways = self.gateways.state();
        let all = || gateways.iter().map(|g| ObjectRef::from_obj(&**g)).collect();
        let targets: Vec<ObjectRef<Gateway>> = match ns {
            None => all(),
            Some(ns) => {
                let tenants: Vec<Tenant> =
                    self.tenants.state().iter().map(|t| (**t).clone()).collect();
                match affected::by_namespace(ns, &tenants, gateways.iter().map(|g| &**g)) {
                    affected::Affected::All => all(),
                    affected::Affected::These(list) => list,
                }
            }
        };
        for t in targets {
            // Unbounded: the controller's scheduler merges repeats of one Gateway.
            let _ = self.tx.unbounded_send(t);
        }
    }
}

fn reflect<K>(
    source: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    txs: Vec<mpsc::Sender<()>>,
    changes: Changes,
    index: Option<Index>,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let poke = move |obj: Option<&K>| {
        for tx in &txs {
            // A full slot already means "reconcile everything": coalesce.
            let _ = tx.clone().try_send(());
        }
        if let Some(index) = &index {
            // A Namespace is the namespace its change is about.
            let ns = obj.and_then(|o| {
                if K::kind(&()) == "Namespace" {
                    o.meta().name.as_deref()
                } else {
                    o.meta().namespace.as_deref()
                }
            });
            index.wake(ns);
        }
    };
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let stream = reflector::reflector(writer, source)
        .default_backoff()
        .map(move |r| match r {
            Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
                let uid = obj.meta().uid.clone().unwrap_or_default();
                let print = fingerprint(&obj);
                let changed = seen.insert(uid, print) != Some(print);
                let wakes = !managed(&obj) || session::edited_by_people(&obj);
                if wakes && (changes == Changes::All || changed) {
                    poke(Some(&obj));
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                // Also for the operator's own objects: a deleted key Secret (a rotation) or
                // Service is recreated now, not at the next resync.
                seen.remove(&obj.meta().uid.clone().unwrap_or_default());
                poke(Some(&obj));
            }
            Ok(watcher::Event::InitDone) => poke(None),
            // A re-list: forget what was seen, so objects deleted while the watch was down
            // are not remembered forever (every object counts as changed once).
            Ok(watcher::Event::Init) => seen.clear(),
            Err(e) => {
                tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying")
            }
        });
    (store, stream)
}

/// A watch of every `K` in the cluster.
fn all<K>(client: kube::Client) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(Api::<K>::all(client), watcher::Config::default())
}

/// A reflector for the kinds that say where the cluster's networks are (Nodes,
/// ServiceCIDRs): `trim` drops what is not needed before it is cached, and only a change of
/// what `cidrs` reads pokes `txs` (a Node's status changes every few minutes; its pod CIDRs
/// almost never).
fn reflect_networks<K>(
    api: Api<K>,
    txs: Vec<mpsc::Sender<()>>,
    trim: impl Fn(&mut K) + Send + Sync + 'static,
    cidrs: impl Fn(&K) -> Vec<String> + Send + 'static,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let poke = move || {
        for tx in &txs {
            let _ = tx.clone().try_send(());
        }
    };
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(trim),
    )
    .default_backoff()
    .map(move |r| match r {
        Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
            let uid = obj.meta().uid.clone().unwrap_or_default();
            let now = cidrs(&obj);
            if seen.insert(uid, now.clone()).as_ref() != Some(&now) {
                poke();
            }
        }
        Ok(watcher::Event::Delete(obj)) => {
            seen.remove(&obj.meta().uid.clone().unwrap_or_default());
            poke();
        }
        Ok(watcher::Event::InitDone) => poke(),
        Ok(watcher::Event::Init) => seen.clear(),
        Err(e) => {
            tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying")
        }
    });
    (store, stream)
}

/// The Gateway controller and, sharing its caches and leader election, the Tenant controller,
/// the Resource/Policy status pass and the sidecar reconciler ([`crate::sidecar`]).
pub struct GatewayController {
    context: Arc<GatewayContext>,
    drivers: Vec<std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>>,
    triggers: mpsc::Receiver<()>,
    targets: mpsc::UnboundedReceiver<ObjectRef<Gateway>>,
    status_triggers: mpsc::Receiver<()>,
    tenant_triggers: mpsc::Receiver<()>,
    sidecar: crate::sidecar::SidecarController,
    ready: Arc<AtomicBool>,
}

impl GatewayController {
    /// Sets up the caches for `ctx`'s client (nothing runs until [`Self::run`]).
    pub fn new(ctx: Context, settings: Settings) -> Self {
        let client = ctx.client.clone();
        let (gw, triggers) = mpsc::channel(1);
        let (st, status_triggers) = mpsc::channel(1);
        let (tn, tenant_triggers) = mpsc::channel(1);
        let (sc, sidecar_triggers) = mpsc::channel(1);
        // Who listens to what: Gateways to everything a snapshot is made of; the status pass
        // to the same plus Gateways; Tenants to Tenants, what they count, Secrets and
        // Namespaces.
        // The sidecar reconciler to everything a sidecar snapshot is made of, as the Gateways.
        let everyone = || vec![gw.clone(), st.clone(), tn.clone(), sc.clone()];
        // Tenants and Gateways wake every Gateway (claims, admission and quotas are decided
        // across all of them); what Resources, Policies, Secrets, Services and EndpointSlices
        // change wakes only the Gateways of their namespace's tenant (`index`).
        // The four kinds through DeserializeGuard: one unreadable object never stalls a watch.
        let seen = guard::Seen::default();
        let (tenants, s1) = reflect(
            guard::guarded::<Tenant>(ctx.clone(), seen.clone()),
            everyone(),
            Changes::Spec,
            None,
        );
        // Gateways wake the Gateway controller too: quotas make one Gateway's fate depend on
        // its tenant's others (the youngest beyond the quota waits for an older one to go).
        let (gateways, s7) = reflect(
            guard::guarded::<Gateway>(ctx.clone(), seen.clone()),
            everyone(),
            Changes::Spec,
            None,
        );
        let (targets_tx, targets) = mpsc::unbounded();
        let index = Some(Index {
            tx: targets_tx,
            tenants: tenants.clone(),
            gateways: gateways.clone(),
        });
        let others = || vec![st.clone(), tn.clone(), sc.clone()];
        let (resources, s2) = reflect(
            guard::guarded::<RtnResource>(ctx.clone(), seen.clone()),
            others(),
            Changes::Spec,
            index.clone(),
        );
        let (policies, s3) = reflect(
            guard::guarded::<Policy>(ctx.clone(), seen.clone()),
            others(),
            Changes::Spec,
            index.clone(),
        );
        // Secrets also wake the Tenants: their ResolvedRefs is about identity-provider Secrets.
        // Metadata of all (what exists, and the wake-ups), the operator's own whole; the data
        // of the ones users name is fetched when needed (`secrets`).
        let (secret_meta, s4) = reflect(
            watcher(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(|m: &mut PartialObjectMeta<Secret>| {
                // Never needed, and `kubectl apply` puts a whole copy of the data in an
                // annotation.
                m.metadata.managed_fields = None;
                m.metadata.annotations = None;
            }),
            others(),
            Changes::All,
            index.clone(),
        );
        let (own_secrets, s11) = reflect(
            watcher(
                Api::<Secret>::all(client.clone()),
                watcher::Config::default().labels(labels::MANAGED_SELECTOR),
            ),
            others(),
            Changes::All,
            index.clone(),
        );
        let secrets = secrets::SecretCache::new(secret_meta, own_secrets);
        let (services, s5) = reflect(
            all::<Service>(client.clone()),
            vec![st.clone()],
            Changes::All,
            index.clone(),
        );
        let index_for_namespaces = index.clone();
        let (slices, s6) = reflect(
            all::<EndpointSlice>(client.clone()),
            vec![st.clone()],
            Changes::All,
            index,
        );
        // Namespace labels also decide what a Policy's namespaceSelector selects: a change
        // wakes the status pass and the Gateways of the namespace's tenant.
        let (namespaces, s8) = reflect(
            all::<Namespace>(client.clone()),
            vec![st.clone(), tn.clone()],
            Changes::Spec,
            index_for_namespaces,
        );
        // The cluster's networks change when nodes come and go: every Gateway may have an
        // address newly allowed or refused.
        let (nodes, s9) = reflect_networks(
            Api::<Node>::all(client.clone()),
            everyone(),
            |n: &mut Node| {
                // Only spec.podCIDRs is read: drop status (images, conditions), which is most
                // of a Node and changes all the time.
                n.status = None;
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
                n.metadata.labels = None;
                if let Some(spec) = n.spec.as_mut() {
                    spec.taints = None;
                    spec.config_source = None;
                }
            },
            |n: &Node| {
                let spec = n.spec.as_ref();
                let mut c = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
                c.extend(spec.and_then(|s| s.pod_cidr.clone()));
                c
            },
        );
        let (service_cidrs, s10) = reflect_networks(
            Api::<ServiceCIDR>::all(client.clone()),
            everyone(),
            |c: &mut ServiceCIDR| {
                c.status = None;
                c.metadata.managed_fields = None;
            },
            |c: &ServiceCIDR| {
                c.spec
                    .as_ref()
                    .and_then(|s| s.cidrs.clone())
                    .unwrap_or_default()
            },
        );
        let recorder = Recorder::new(client, ctx.reporter.clone());
        let stores = Stores {
            tenants,
            resources,
            policies,
            secrets,
            services,
            slices,
            gateways,
            namespaces,
            unreadable: seen.clone(),
            networks: networks::ClusterNetworks {
                nodes,
                service_cidrs,
                configured: Arc::new(settings.cluster_networks.clone()),
            },
        };
        let sidecar = crate::sidecar::SidecarController::new(
            ctx.clone(),
            stores.clone(),
            settings.clone(),
            sidecar_triggers,
        );
        Self {
            context: Arc::new(GatewayContext {
                ctx,
                stores,
                settings,
                recorder,
                failures: Default::default(),
            }),
            drivers: vec![
                s1.boxed(),
                s2.boxed(),
                s3.boxed(),
                s4.boxed(),
                s5.boxed(),
                s6.boxed(),
                s7.boxed(),
                s8.boxed(),
                s9.boxed(),
                s10.boxed(),
                s11.boxed(),
            ],
            triggers,
            targets,
            status_triggers,
            tenant_triggers,
            sidecar,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True once every cache has been filled (for `/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// The caches (filled once [`Self::run`] runs): for tests that look at what is held.
    pub fn stores(&self) -> Stores {
        self.context.stores.clone()
    }

    /// Runs the Gateway controller, the Tenant controller and the Resource/Policy status pass
    /// until `shutdown` completes; in-flight Gateway reconciles finish first.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
        let shutdown = shutdown.shared();
        let client = self.context.ctx.client.clone();
        let drivers: Vec<_> = self
            .drivers
            .into_iter()
            .map(|d| tokio::spawn(d.for_each(|()| async {})))
            .collect();
        let stores = self.context.stores.clone();
        let ready = self.ready.clone();
        let readiness = tokio::spawn(async move {
            if stores.ready().await.is_ok() {
                ready.store(true, Ordering::Relaxed);
            }
        });
        let status = {
            let ctx = self.context.ctx.clone();
            let stores = self.context.stores.clone();
            tokio::spawn(crate::pass::drive(
                crate::status::KIND,
                ctx.metrics.clone(),
                self.status_triggers,
                shutdown.clone(),
                move |_resync| {
                    let ctx = ctx.clone();
                    let stores = stores.clone();
                    async move { crate::status::pass(&ctx, &stores).await }
                },
            ))
        };
        let tenants = {
            let ctx = self.context.ctx.clone();
            let stores = self.context.stores.clone();
            let state = Arc::new(crate::tenant::State::default());
            tokio::spawn(crate::pass::drive(
                crate::tenant::KIND,
                ctx.metrics.clone(),
                self.tenant_triggers,
                shutdown.clone(),
                move |resync| {
                    let ctx = ctx.clone();
                    let stores = stores.clone();
                    let state = state.clone();
                    async move { crate::tenant::pass(&ctx, &stores, &state, resync).await }
                },
            ))
        };
        let sidecars = tokio::spawn(self.sidecar.run(shutdown.clone()));
        let owned = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
        // The controller's own Gateway watch, guarded too: an unreadable Gateway is left out
        // instead of stopping every reconcile.
        let (gateway_store, gateway_writer) = reflector::store();
        let gateway_events = reflector::reflector(
            gateway_writer,
            guard::guarded::<Gateway>(
                self.context.ctx.clone(),
                self.context.stores.unreadable.clone(),
            ),
        )
        .default_backoff()
        .applied_objects();
        Controller::for_stream(gateway_events, gateway_store)
            .owns(Api::<Deployment>::all(client.clone()), owned())
            .owns(Api::<StatefulSet>::all(client.clone()), owned())
            .owns(Api::<Service>::all(client.clone()), owned())
            .owns(Api::<ConfigMap>::all(client.clone()), owned())
            .owns(Api::<ServiceAccount>::all(client.clone()), owned())
            .owns(Api::<Role>::all(client.clone()), owned())
            .owns(Api::<RoleBinding>::all(client.clone()), owned())
            .reconcile_all_on(self.triggers)
            .reconcile_on(self.targets)
            .with_config(controller::Config::default().debounce(Duration::from_millis(200)))
            .graceful_shutdown_on(shutdown)
            .run(reconcile, error_policy, self.context)
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => tracing::debug!(gateway = %obj, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile failed"),
                }
            })
            .await;
        let _ = status.await;
        let _ = tenants.await;
        let _ = sidecars.await;
        readiness.abort();
        for d in drivers {
            d.abort();
        }
    }
}

/// Reconciles one Gateway, recording metrics.
pub async fn reconcile(gw: Arc<Gateway>, ctx: Arc<GatewayContext>) -> Result<Action, Error> {
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

pub(crate) async fn put<K>(client: &kube::Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    apply(&api, &name, obj)
        .await
        .map_err(|source| Error::Apply {
            kind: static_kind::<K>(),
            namespace: ns.to_string(),
            name,
            source,
        })
}

fn static_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Secret" => "Secret",
        "ConfigMap" => "ConfigMap",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        "StatefulSet" => "StatefulSet",
        "NetworkPolicy" => "NetworkPolicy",
        _ => "object",
    }
}

/// Deletes `name` if it exists (an object the current spec no longer wants).
pub(crate) async fn remove<K>(client: &kube::Client, ns: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: static_kind::<K>(),
            namespace: ns.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

async fn reconcile_inner(gw: &Gateway, ctx: &GatewayContext) -> Result<Action, Error> {
    let client = &ctx.ctx.client;
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    if gw.meta().deletion_timestamp.is_some() {
        // Owned objects go with the Gateway (garbage collection); nothing to do.
        return Ok(Action::await_change());
    }
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
        let mut inputs = ctx.stores.inputs(&world, gw);
        if let Some(k) = &keys {
            // Fresher than the cache: a key created a moment ago.
            inputs.site_keys.extend(k.sites.clone());
        }
        // Likewise: the first snapshot already carries a session key created just now.
        inputs.session_keys = session_keys;
        let built = gateway_snapshot(&world, gw, &inputs);
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

    // apply: the snapshot first, only when it was built (otherwise the last good one stays).
    // First because it is what carries a policy change to the running gateways: the workload
    // objects and the hubs' status below are a dozen round trips that a change should not wait
    // for (bench-operator: apply -> snapshot written).
    let reference = gw.object_ref(&());
    let compiled_tunnel = built.as_ref().ok().and_then(|o| o.snapshot.tunnel.clone());
    // Over the tenant's Gateway quota: no snapshot (above), no workload, no hub; an existing
    // workload (the quota was lowered) is left as it is, serving its last snapshot.
    let over_quota = matches!(&built, Err(BuildError::QuotaExceeded(_)));
    let (outcome, served) = match built {
        Ok(outcome) => {
            let secret = put(
                client,
                &ns,
                &objects::snapshot_secret(gw, &outcome.snapshot),
            )
            .await?;
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
            }
            (
                status::Built::Ok {
                    attached: outcome.attached,
                    problems: outcome
                        .problems
                        .iter()
                        .filter(|p| p.impact != Impact::Degraded)
                        .count(),
                },
                served,
            )
        }
        Err(e) => {
            publish_failure(ctx, &reference, &e).await;
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
            (
                status::Built::Failed {
                    reason: e.reason(),
                    message: e.to_string(),
                    listener: e.listener().map(str::to_string),
                },
                current.as_ref().and_then(config_version),
            )
        }
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

    // The podTemplate override against its allow-list: refused, no workload change.
    let refused = gw
        .spec
        .pod_template
        .as_ref()
        .and_then(|t| objects::check_pod_template(t).err());
    if let Some(why) = &refused {
        tracing::warn!(gateway = %format!("{ns}/{name}"), "podTemplate refused: {why}");
    }

    // apply: the workload, whatever the snapshot's fate (it does not depend on it)
    let (status_cm, service, deployment) = if over_quota {
        (None, None, None)
    } else {
        put(client, &ns, &objects::service_account(gw)).await?;
        put(client, &ns, &objects::role(gw)).await?;
        put(client, &ns, &objects::role_binding(gw)).await?;
        let status_cm = put(client, &ns, &objects::status_config_map(gw)).await?;
        let service = put(client, &ns, &objects::service(gw)).await?;
        let deployment = match &refused {
            // Refused: the Deployment stays as it is (the one already there, if any).
            Some(_) => Api::<Deployment>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .map_err(|source| Error::Read {
                    namespace: ns.clone(),
                    name: name.clone(),
                    source,
                })?,
            None => Some(put(client, &ns, &objects::deployment(gw, &ctx.settings)).await?),
        };
        put(client, &ns, &objects::network_policy(gw, &ctx.settings)).await?;
        match objects::pdb(gw) {
            Some(p) => drop(put(client, &ns, &p).await?),
            None => remove::<PodDisruptionBudget>(client, &ns, &name).await?,
        }
        match objects::hpa(gw) {
            Some(h) => drop(put(client, &ns, &h).await?),
            None => remove::<HorizontalPodAutoscaler>(client, &ns, &name).await?,
        }
        (Some(status_cm), Some(service), deployment)
    };

    // apply: the tunnel hub (its configuration only from a built snapshot), then prune
    if let Some(k) = &keys {
        apply_hub(ctx, gw, k, compiled_tunnel.as_ref(), &reference).await?;
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

    // status
    let reports = status_cm.and_then(|c| c.data.clone()).unwrap_or_default();
    let new = status::status(&status::Observed {
        generation: gw.meta().generation,
        previous: gw.status.as_ref(),
        built: outcome,
        served,
        deployment: deployment.as_ref(),
        service: service.as_ref(),
        listeners: gw.spec.listeners.iter().map(|l| l.name.clone()).collect(),
        reports: reports.into_iter().collect(),
        pod_template_refused: refused,
        tunnel: keys.map(|k| TunnelStatus {
            public_keys: k.replicas.into_iter().flatten().collect(),
            sites,
        }),
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    });
    if gw.status.as_ref() != Some(&new) {
        let api: Api<Gateway> = Api::namespaced(client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": Gateway::api_version(&()),
            "kind": Gateway::kind(&()),
            "status": new,
        });
        apply_status(&api, &name, &body)
            .await
            .map_err(|source| Error::Status {
                namespace: ns.clone(),
                name: name.clone(),
                source,
            })?;
    }
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

/// Applies the hub's workload and, when the snapshot was built, its configuration (a
/// configuration the hub would refuse is not written: the last good one stays, as with the
/// snapshot, and a Warning Event says why).
async fn apply_hub(
    ctx: &GatewayContext,
    gw: &Gateway,
    keys: &HubKeys,
    compiled: Option<&cs::Tunnel>,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<(), Error> {
    let client = &ctx.ctx.client;
    let ns = gw.namespace().unwrap_or_default();
    if let Some(t) = compiled {
        match tunnel::hub_config(t) {
            Ok(config) => drop(put(client, &ns, &tunnel::hub_config_secret(gw, &config)).await?),
            Err(e) => {
                tracing::warn!(
                    gateway = %format!("{ns}/{}", gw.name_any()),
                    error = %e,
                    "hub configuration not written; the last good one stays"
                );
                let event = Event {
                    type_: EventType::Warning,
                    reason: "InvalidTunnelConfig".into(),
                    note: Some(truncate(e.to_string())),
                    action: "BuildHubConfig".into(),
                    secondary: None,
                };
                if let Err(err) = ctx.recorder.publish(&event, reference).await {
                    tracing::warn!(error = %err, "failed to publish an Event");
                }
            }
        }
    }
    let public: Vec<String> = keys.replicas.iter().flatten().cloned().collect();
    if let Some(ss) = tunnel::stateful_set(gw, &ctx.settings, &public) {
        put(client, &ns, &ss).await?;
    }
    let replicas = gw.spec.tunnel.as_ref().map_or(0, |t| t.replicas);
    for i in 0..replicas {
        if let Some(svc) = tunnel::replica_service(gw, i) {
            put(client, &ns, &svc).await?;
        }
    }
    if let Some(svc) = tunnel::stream_service(gw) {
        put(client, &ns, &svc).await?;
    }
    if let Some(np) = tunnel::network_policy(gw, &ctx.settings) {
        put(client, &ns, &np).await?;
    }
    match tunnel::pdb(gw) {
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

    #[test]
    fn status_only_updates_keep_the_fingerprint() {
        let mut r: RtnResource = serde_json::from_value(serde_json::json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": "app", "namespace": "apps", "generation": 1},
            "spec": {"gatewayRefs": [{"name": "edge"}], "protocol": "HTTP",
                     "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]}
        }))
        .unwrap();
        let before = fingerprint(&r);
        r.status = Some(Default::default());
        r.metadata.resource_version = Some("42".into());
        assert_eq!(fingerprint(&r), before, "a status write wakes nobody");
        r.metadata.labels = Some([("tier".to_string(), "web".to_string())].into());
        let labelled = fingerprint(&r);
        assert_ne!(labelled, before, "labels select Policies' targets");
        r.metadata.generation = Some(2);
        assert_ne!(fingerprint(&r), labelled, "a spec change");
    }

    /// Many tasks wait for one cache at once, as the passes and reconciles do at start-up:
    /// every one of them must see it ready (kube-runtime's own wait wakes only the last).
    #[tokio::test]
    async fn every_concurrent_waiter_sees_the_cache_ready() {
        let (store, mut writer) = reflector::store::<Namespace>();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { wait_ready(&store).await })
            })
            .collect();
        // Let every waiter register before the first list completes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for (i, w) in waiters.into_iter().enumerate() {
            let done = tokio::time::timeout(READY_POLL * 20, w).await;
            assert!(
                matches!(done, Ok(Ok(Ok(())))),
                "waiter {i} never saw the cache ready"
            );
        }
    }

    #[test]
    fn endpoints_never_point_at_link_local_loopback_or_unspecified() {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "fe80::1",
            "febf::1",
            "::1",
            "::",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
        ] {
            assert!(!endpoint_allowed(refused.parse().unwrap()), "{refused}");
        }
        for allowed in [
            "10.9.0.1",
            "192.168.1.1",
            "fd00::1",
            "2001:db8::1",
            "169.255.0.1",
        ] {
            assert!(endpoint_allowed(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let got: Vec<u64> = [1, 2, 3, 4, 8, 9, 100, u32::MAX]
            .into_iter()
            .map(|n| backoff(n).as_secs())
            .collect();
        assert_eq!(got, [2, 4, 8, 16, 256, 300, 300, 300]);
        assert_eq!(backoff(0), RETRY);
    }
}
