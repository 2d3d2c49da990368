//! The operator's caches: reflector stores of everything a snapshot is made of, filled by
//! watches, and who each change wakes.
//!
//! ```text
//!  Tenants, Gateways            (DeserializeGuard: guard)  -> every Gateway, the passes
//!  Resources, Policies          (DeserializeGuard: guard;  -> the Gateways of the namespace's
//!                                status compact: statuses)    tenant (affected), the passes
//!  Secrets: metadata of all, the operator's own whole,
//!           data of named ones on demand (secrets)         -> likewise
//!  Services, EndpointSlices, Namespaces                    -> likewise (not the Tenant pass)
//!  Nodes, ServiceCIDRs: the cluster's networks (networks)  -> everything, only when the
//!                                                             CIDRs change
//! ```
//!
//! [`Caches::new`] sets the watches up (nothing runs until their drivers are polled, by
//! [`crate::runtime`]) and returns the [`Stores`] every reconciler reads, and the [`Wakeups`]
//! each listener receives. A change of an object the operator writes itself wakes nothing
//! (except session key Secrets, which people edit to rotate keys), and a status-only update
//! of a rustronaut.io object wakes nothing either, so the reconcilers' own writes do not loop.
//!
//! Below the reconcilers: uses only [`crate::error`], [`crate::context`], [`crate::meta`] and
//! [`crate::conditions`] (the [`conditions::Previous`](crate::conditions::Previous) the compact
//! statuses answer).

pub mod affected;
pub mod builds;
pub mod guard;
pub mod networks;
pub mod secrets;
pub mod statuses;

use crate::context::{Context, FIELD_MANAGER, Settings};
use crate::error::Error;
use crate::meta;
use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use meta::labels;
use rustronaut_compile::World;
use rustronaut_compile::convert::SecretSource;
use rustronaut_contract::snapshot::ObjectRef as ContractRef;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
    /// Gateway builds shared by the Gateway controller and the status pass ([`builds`]).
    pub builds: builds::SharedBuilds,
    /// The rustronaut.io objects the operator cannot read ([`guard`]).
    pub unreadable: guard::Seen,
    /// What the status pass needs of each Resource's and Policy's status: the cached
    /// objects in `resources` and `policies` carry none ([`statuses`]).
    pub statuses: ObservedStatuses,
}

/// The statuses of the cached Resources and Policies, in their compact form.
#[derive(Clone, Default)]
pub struct ObservedStatuses {
    /// Resources'.
    pub resources: statuses::Statuses,
    /// Policies'.
    pub policies: statuses::Statuses,
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
        let mut gateways = self.gateways.state();
        gateways.retain(|g| g.metadata.uid != gateway.metadata.uid);
        gateways.push(Arc::new(gateway.clone()));
        World {
            tenants: self.tenants.state(),
            gateways,
            resources: self.resources.state(),
            policies: self.policies.state(),
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
        World {
            tenants: self.tenants.state(),
            gateways: self.gateways.state(),
            resources: self.resources.state(),
            policies: self.policies.state(),
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
    pub fn endpoints_within(
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
        // Borrowed names throughout: a status pass asks this once per Service port of every
        // Resource, over every EndpointSlice, and owned copies of the names were millions of
        // allocations per pass at 10,000 objects (heaptrack, issue 17).
        let port_name = sp.name.as_deref().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self.slices.state() {
            if slice.metadata.namespace.as_deref() != Some(namespace)
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
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
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

/// A stream that fills a cache: polled until the operator stops.
pub type Driver = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// What a cache change wakes, one receiver per listener. Every channel but `targets` holds
/// one slot: a full slot already means "look at everything", so wake-ups coalesce.
pub struct Wakeups {
    /// Reconcile every Gateway (a Tenant, a Gateway or the cluster's networks changed).
    pub gateways: mpsc::Receiver<()>,
    /// Reconcile these Gateways: those a namespaced change can affect ([`affected`]).
    pub targets: mpsc::UnboundedReceiver<ObjectRef<Gateway>>,
    /// Run the Resource/Policy status pass.
    pub status: mpsc::Receiver<()>,
    /// Run the Tenant pass.
    pub tenants: mpsc::Receiver<()>,
    /// Run the sidecar reconciler's pass over every sidecar Resource.
    pub sidecars: mpsc::Receiver<()>,
}

/// The caches, set up but not yet filled.
pub struct Caches {
    /// The stores (empty until the drivers run; see [`Stores::ready`]).
    pub stores: Stores,
    /// The streams that fill the stores: each must be polled to completion.
    pub drivers: Vec<Driver>,
    /// Who each change wakes.
    pub wakeups: Wakeups,
}

impl Caches {
    /// Sets up the watches of every cached kind for `ctx`'s client (nothing runs until the
    /// drivers are polled); `settings` gives the cluster networks the cluster does not name.
    pub fn new(ctx: &Context, settings: &Settings) -> Self {
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
        let builds = builds::SharedBuilds::default();
        let wake = |txs, index| Wake {
            txs,
            index,
            builds: builds.clone(),
        };
        let (tenants, s1) = reflect(
            guard::guarded::<Tenant>(ctx.clone(), seen.clone()),
            wake(everyone(), None),
            Changes::Spec,
        );
        // Gateways wake the Gateway controller too: quotas make one Gateway's fate depend on
        // its tenant's others (the youngest beyond the quota waits for an older one to go).
        let (gateways, s7) = reflect(
            guard::guarded::<Gateway>(ctx.clone(), seen.clone()),
            wake(everyone(), None),
            Changes::Spec,
        );
        let (targets_tx, targets) = mpsc::unbounded();
        let index = Some(Index {
            tx: targets_tx,
            tenants: tenants.clone(),
            gateways: gateways.clone(),
            memo: Default::default(),
        });
        let others = || vec![st.clone(), tn.clone(), sc.clone()];
        // Resources and Policies are cached without their status ([`statuses`]).
        let observed = ObservedStatuses::default();
        let (resources, s2) = reflect(
            compact(
                guard::guarded::<RtnResource>(ctx.clone(), seen.clone()),
                observed.resources.clone(),
            ),
            wake(others(), index.clone()),
            Changes::Spec,
        );
        let (policies, s3) = reflect(
            compact(
                guard::guarded::<Policy>(ctx.clone(), seen.clone()),
                observed.policies.clone(),
            ),
            wake(others(), index.clone()),
            Changes::Spec,
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
            wake(others(), index.clone()),
            Changes::All,
        );
        let (own_secrets, s11) = reflect(
            watcher(
                Api::<Secret>::all(client.clone()),
                watcher::Config::default().labels(labels::MANAGED_SELECTOR),
            )
            .modify(|s: &mut Secret| {
                // The compiled snapshots are the largest data the operator writes (one per
                // Gateway and sidecar Resource) and it never reads them back: what it compares
                // is the version annotation. Keys, tokens and hub configurations stay whole.
                s.metadata.managed_fields = None;
                if let Some(d) = s.data.as_mut() {
                    d.remove(rustronaut_contract::deploy::SNAPSHOT_KEY);
                }
            }),
            wake(others(), index.clone()),
            Changes::All,
        );
        let secrets = secrets::SecretCache::new(secret_meta, own_secrets);
        let (services, s5) = reflect(
            all::<Service>(client.clone()),
            wake(vec![st.clone()], index.clone()),
            Changes::All,
        );
        let index_for_namespaces = index.clone();
        let (slices, s6) = reflect(
            all::<EndpointSlice>(client.clone()),
            wake(vec![st.clone()], index),
            Changes::All,
        );
        // Namespace labels also decide what a Policy's namespaceSelector selects: a change
        // wakes the status pass and the Gateways of the namespace's tenant.
        let (namespaces, s8) = reflect(
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(slim_namespace),
            wake(vec![st.clone(), tn.clone()], index_for_namespaces),
            Changes::Spec,
        );
        // The cluster's networks change when nodes come and go: every Gateway may have an
        // address newly allowed or refused.
        let (nodes, s9) = reflect_networks(
            Api::<Node>::all(client.clone()),
            wake(everyone(), None),
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
            wake(everyone(), None),
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

        let stores = Stores {
            tenants,
            resources,
            policies,
            secrets,
            services,
            slices,
            gateways,
            namespaces,
            builds,
            unreadable: seen.clone(),
            statuses: observed,
            networks: networks::ClusterNetworks {
                nodes,
                service_cidrs,
                configured: Arc::new(settings.cluster_networks.clone()),
            },
        };
        Self {
            stores,
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
            wakeups: Wakeups {
                gateways: triggers,
                targets,
                status: status_triggers,
                tenants: tenant_triggers,
                sidecars: sidecar_triggers,
            },
        }
    }
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

/// Wakes the Gateways a change of a namespaced object can affect ([`affected`]), through the
/// controller's `reconcile_on` stream.
#[derive(Clone)]
struct Index {
    tx: mpsc::UnboundedSender<ObjectRef<Gateway>>,
    tenants: Store<Tenant>,
    gateways: Store<Gateway>,
    /// Shared by every watch that asks: the answers stay good until a Tenant or Gateway
    /// changes.
    memo: Arc<std::sync::Mutex<affected::Memo>>,
}

impl Index {
    /// The Gateways a change of an object in `ns` can affect; None: every Gateway (`ns` is
    /// None, or no Tenant holds it).
    fn affected(&self, ns: Option<&str>) -> Option<Vec<ObjectRef<Gateway>>> {
        let ns = ns?;
        let (tenants, gateways) = (self.tenants.state(), self.gateways.state());
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        match memo.by_namespace(ns, &tenants, &gateways) {
            affected::Affected::All => None,
            affected::Affected::These(list) => Some(list),
        }
    }

    /// Every Gateway in the cache.
    fn all(&self) -> Vec<ObjectRef<Gateway>> {
        self.gateways
            .state()
            .iter()
            .map(|g| ObjectRef::from_obj(&**g))
            .collect()
    }

    /// Sends `targets` to the Gateway controller.
    fn wake(&self, targets: Vec<ObjectRef<Gateway>>) {
        for t in targets {
            // Unbounded: the controller's scheduler merges repeats of one Gateway.
            let _ = self.tx.unbounded_send(t);
        }
    }
}

/// What one change of a watched object does beyond the store: poke the passes in `txs`,
/// forget the shared builds of the Gateways it can affect (everything when it cannot be
/// placed), and, with an `index`, wake those Gateways' reconciles. The builds and the
/// wake-ups use the same answer, so a build is forgotten exactly when its Gateway is told
/// to rebuild ([`builds`]).
#[derive(Clone)]
struct Wake {
    txs: Vec<mpsc::Sender<()>>,
    index: Option<Index>,
    builds: builds::SharedBuilds,
}

impl Wake {
    /// A change of an object in namespace `ns` (None: not namespaced, or a whole re-list).
    fn changed(&self, ns: Option<&str>) {
        for tx in &self.txs {
            // A full slot already means "reconcile everything": coalesce.
            let _ = tx.clone().try_send(());
        }
        let Some(index) = &self.index else {
            // Tenants, Gateways, Nodes, ServiceCIDRs: `txs` wakes every Gateway.
            self.builds.invalidate_all(true);
            return;
        };
        match index.affected(ns) {
            Some(targets) => {
                let keys: Vec<ContractRef> = targets.iter().map(contract_ref).collect();
                self.builds.invalidate(&keys);
                index.wake(targets);
            }
            None => {
                self.builds.invalidate_all(true);
                index.wake(index.all());
            }
        }
    }
}

/// A kube reference to a Gateway as the snapshot contract names objects.
fn contract_ref(gw: &ObjectRef<Gateway>) -> ContractRef {
    ContractRef::new(gw.namespace.clone().unwrap_or_default(), gw.name.clone())
}

/// Runs a reflector for `api` into a new store; every change (except of objects the operator
/// manages, and, with [`Changes::Spec`], except status-only updates) pokes every sender in
/// `txs`. Returns the store and the stream to drive.
fn reflect<K>(
    source: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    wake: Wake,
    changes: Changes,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let poke = move |obj: Option<&K>| {
        // A Namespace is the namespace its change is about.
        let ns = obj.and_then(|o| {
            if K::kind(&()) == "Namespace" {
                o.meta().name.as_deref()
            } else {
                o.meta().namespace.as_deref()
            }
        });
        wake.changed(ns);
    };
    // uid -> fingerprint, the uid as its keyed hash: a uid String and a tree node per object
    // was ~90 bytes, ~1 MB at 10,000 objects (issue 17). Two uids sharing a hash (odds 2^-64
    // a pair, and nobody can aim for it: the key is drawn here) cost a spurious wake-up.
    let uids = std::hash::RandomState::new();
    let mut seen: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let stream = reflector::reflector(writer, source)
        .default_backoff()
        .map(move |r| match r {
            Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
                let uid = uids.hash_one(obj.meta().uid.as_deref().unwrap_or_default());
                let print = fingerprint(&obj);
                let changed = seen.insert(uid, print) != Some(print);
                let wakes = !meta::managed(&obj) || meta::edited_by_people(&obj);
                if wakes && (changes == Changes::All || changed) {
                    poke(Some(&obj));
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                // Also for the operator's own objects: a deleted key Secret (a rotation) or
                // Service is recreated now, not at the next resync.
                seen.remove(&uids.hash_one(obj.meta().uid.as_deref().unwrap_or_default()));
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

/// `source` with each object's status moved into `statuses` ([`statuses::Statuses::observe`]).
fn compact<K: statuses::Compact>(
    source: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    statuses: statuses::Statuses,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
    source.map(move |r| r.map(|e| statuses.observe(e)))
}

/// What a cached Namespace keeps of its metadata: [`guard::slim`], except that the Tenant
/// pass must know whether this operator set the namespace's tenant label (it removes only
/// its own), so the `managedFields` entries of [`FIELD_MANAGER`] stay, without their field
/// sets.
fn slim_namespace(ns: &mut Namespace) {
    let ours: Vec<_> = ns
        .metadata
        .managed_fields
        .take()
        .into_iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .map(|mut m| {
            m.fields_v1 = None;
            m
        })
        .collect();
    guard::slim(ns);
    ns.metadata.managed_fields = (!ours.is_empty()).then_some(ours);
}

/// A watch of every `K` in the cluster, cached without `managedFields` and `kubectl apply`'s
/// last-applied copy ([`guard::slim`]): these caches hold every Service, EndpointSlice and
/// Namespace of the cluster, not only the operator's, and those two fields were about half
/// of each (heaptrack at 10,000 objects, issue 17).
fn all<K>(client: kube::Client) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(Api::<K>::all(client), watcher::Config::default()).modify(guard::slim::<K>)
}

/// A reflector for the kinds that say where the cluster's networks are (Nodes,
/// ServiceCIDRs): `trim` drops what is not needed before it is cached, and only a change of
/// what `cidrs` reads pokes `txs` (a Node's status changes every few minutes; its pod CIDRs
/// almost never).
fn reflect_networks<K>(
    api: Api<K>,
    wake: Wake,
    trim: impl Fn(&mut K) + Send + Sync + 'static,
    cidrs: impl Fn(&K) -> Vec<String> + Send + 'static,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    // Every Gateway may have an address newly allowed or refused: no index.
    let poke = move || wake.changed(None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_namespace_keeps_its_labels_and_only_whether_we_manage_fields_of_it() {
        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "apps",
                "labels": {"team": "a"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
                    "owner": "team-a"
                },
                "managedFields": [
                    {"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
                    {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:rustronaut.io/tenant": {}}}}}
                ]
            }
        }))
        .unwrap();
        slim_namespace(&mut ns);
        assert_eq!(ns.metadata.labels.as_ref().unwrap()["team"], "a");
        let annotations = ns.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert_eq!(annotations["owner"], "team-a");
        let managed = ns.metadata.managed_fields.as_ref().unwrap();
        assert_eq!(managed.len(), 1);
        assert_eq!(managed[0].manager.as_deref(), Some(FIELD_MANAGER));
        assert_eq!(managed[0].fields_v1, None);
        // Nobody's fields: nothing kept at all.
        let mut other: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "managedFields": [{"manager": "kubectl"}]}
        }))
        .unwrap();
        slim_namespace(&mut other);
        assert_eq!(other.metadata.managed_fields, None);
    }

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
}
