//! Gateway builds shared between the Gateway controller and the Resource/Policy status pass,
//! so one edit compiles each Gateway it touches once (issue 17).
//!
//! Before, the status pass rebuilt **every** Gateway's snapshot on every pass to tell each
//! Resource whether it is `Programmed`, right after the Gateway controller had built the ones
//! the edit touched: one Policy edit compiled each affected Gateway twice and every other
//! Gateway once more for nothing. Now:
//!
//! ```text
//!  watch event ──> invalidate(the Gateways it can affect, crate::cache::affected)
//!  Gateway reconcile: ticket ─> read caches ─> build ─> put(ticket, build)   (the authority)
//!  status pass:       settle(gateways being built) ─> ticket ─> read caches
//!                     ─> get(gateway) ─hit─> reuse
//!                                    └miss─> build ─> put
//! ```
//!
//! Correctness rests on two rules:
//! - **A build is stored only if nothing that could change it happened since its inputs were
//!   read.** A ticket is the invalidation clock taken *before* the caches are read; a put is
//!   refused when the Gateway (or everything) was invalidated after that ticket. So a slow
//!   build never lands on top of a newer change.
//! - **Invalidation follows the wake-ups exactly.** The same change that wakes a Gateway's
//!   reconcile ([`crate::cache`]'s reflectors) invalidates its build, with the same index; a
//!   change the index cannot place (Tenants, Gateways, Nodes, ServiceCIDRs, a namespace no
//!   Tenant holds) invalidates everything. An entry also records the Gateway's uid and
//!   generation, and a reader asks for the ones it sees, so a reconcile that ran on an older
//!   copy of the Gateway than the cache holds is never taken for the current one.
//!
//! The status pass first waits a little (see [`WAIT_FOR_RECONCILE`]) for the Gateways whose
//! reconcile is building, or was woken by a change and has not started yet, instead of
//! compiling the same thing beside them, then
//! reads the caches: so a build it reuses was made from caches no newer than its own view
//! (anything that changed in between invalidated it). What is stored is a
//! [`BuildSummary`], not the snapshot. The periodic resync
//! drops every entry, the backstop for a dependency the index misses. The shared builds only
//! ever feed conditions: what a gateway serves is always built by its own reconcile.

use crate::conditions::BuildSummary;
use rustronaut_contract::snapshot::ObjectRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long the status pass waits for a Gateway whose reconcile is building at that moment,
/// rather than compiling the same snapshot beside it. Short: a reconcile stuck on the API
/// server must not hold statuses back (the status pass then builds on its own). During a bulk
/// apply every Gateway is always busy, so each pass waits this long and writes nothing
/// meanwhile: at 3 s that was a quarter of each pass (`make bench-operator` at 10,000
/// objects), the passes wrote statuses no faster than objects were created, and statuses
/// settled 6-8 s after the last create; at 1 s they settle in 2.7-3.4 s, for 30 Gateway builds
/// by the pass instead of 11-25 and 6 % more status writes (issue 17, docs/benchmarks.md).
pub const WAIT_FOR_RECONCILE: Duration = Duration::from_secs(1);

/// One Gateway's build as the status pass reads it: its summary or why it failed.
pub type Shared = Arc<Result<BuildSummary, String>>;

/// Which copy of a Gateway a build was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// metadata.uid (a Gateway deleted and created again is another Gateway).
    pub uid: Option<String>,
    /// metadata.generation (the spec).
    pub generation: Option<i64>,
}

impl Version {
    /// The version of `gw`.
    pub fn of(gw: &rustronaut_crds::Gateway) -> Self {
        Self {
            uid: gw.metadata.uid.clone(),
            generation: gw.metadata.generation,
        }
    }
}

/// The invalidation clock read before a build's inputs are read.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

#[derive(Default)]
struct Entry {
    /// The clock when this Gateway was last invalidated.
    invalidated: u64,
    /// The clock when a change last woke this Gateway's reconcile (0: never).
    woken: u64,
    /// The clock when a reconcile of this Gateway last started building (0: never).
    started: u64,
    build: Option<(Version, Shared)>,
    /// Reconciles building this Gateway right now.
    building: usize,
    /// Builds this Gateway's reconciles started, ever.
    builds: u64,
}

#[derive(Default)]
struct Inner {
    clock: u64,
    /// The clock when everything was last invalidated.
    all_invalidated: u64,
    /// The clock when a change last woke every Gateway's reconcile.
    all_woken: u64,
    entries: HashMap<ObjectRef, Entry>,
}

impl Inner {
    /// Whether a build of `gateway` by its reconcile is under way or due: one is building, or
    /// a change woke the reconcile after the last one started.
    fn busy(&self, gateway: &ObjectRef) -> bool {
        let (building, woken, started) = self
            .entries
            .get(gateway)
            .map_or((0, 0, 0), |e| (e.building, e.woken, e.started));
        building > 0 || woken.max(self.all_woken) > started
    }
}

/// The shared builds; cheap to clone (one map behind a lock).
#[derive(Clone, Default)]
pub struct SharedBuilds {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl SharedBuilds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only counters behind: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The clock now: take it before reading the caches a build is made from.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().clock)
    }

    /// Forgets the builds of `gateways`, whose reconciles a change just woke: the change may
    /// have affected them, and each will build again.
    pub fn invalidate<'a>(&self, gateways: impl IntoIterator<Item = &'a ObjectRef>) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        for gw in gateways {
            let entry = inner.entries.entry(gw.clone()).or_default();
            entry.invalidated = now;
            entry.woken = now;
            entry.build = None;
        }
    }

    /// Forgets every build; `woken`: a change also woke every Gateway's reconcile (not so for
    /// the status pass's periodic resync).
    pub fn invalidate_all(&self, woken: bool) {
        let mut inner = self.lock();
        inner.clock += 1;
        inner.all_invalidated = inner.clock;
        if woken {
            inner.all_woken = inner.clock;
        }
        for e in inner.entries.values_mut() {
            e.build = None;
        }
    }

    /// Drops what is kept for Gateways that no longer exist (`exists` says which do).
    pub fn retain(&self, exists: impl Fn(&ObjectRef) -> bool) {
        self.lock()
            .entries
            .retain(|gw, e| e.building > 0 || exists(gw));
    }

    /// Marks `gateway` as being built by its reconcile until the returned guard is dropped
    /// (the status pass waits for it meanwhile); the guard's [`Building::ticket`] is taken
    /// now, so take the guard before reading the caches.
    pub fn building(&self, gateway: ObjectRef) -> Building {
        let ticket = {
            let mut inner = self.lock();
            let now = inner.clock;
            let entry = inner.entries.entry(gateway.clone()).or_default();
            entry.building += 1;
            entry.builds += 1;
            entry.started = now;
            Ticket(now)
        };
        Building {
            builds: self.clone(),
            gateway,
            ticket,
        }
    }

    /// Stores the build of `gateway` made from inputs read after `ticket`, unless something
    /// that may change it was invalidated since. Returns whether it was stored.
    pub fn put(
        &self,
        gateway: &ObjectRef,
        ticket: Ticket,
        version: Version,
        build: Shared,
    ) -> bool {
        let stored = {
            let mut inner = self.lock();
            if ticket.0 < inner.all_invalidated {
                false
            } else {
                let entry = inner.entries.entry(gateway.clone()).or_default();
                if ticket.0 < entry.invalidated {
                    false
                } else {
                    entry.build = Some((version, build));
                    true
                }
            }
        };
        if stored {
            self.changed.notify_waiters();
        }
        stored
    }

    /// The stored build of `gateway` made from `version`.
    pub fn get(&self, gateway: &ObjectRef, version: &Version) -> Option<Shared> {
        let inner = self.lock();
        let (v, build) = inner.entries.get(gateway)?.build.as_ref()?;
        (v == version).then(|| build.clone())
    }

    /// Waits until no reconcile of `gateways` is building or due to build (woken by a change
    /// and not started since), or `patience` has passed.
    pub async fn settle(&self, gateways: &[ObjectRef], patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before looking, so a finish between the look and the wait is not
            // lost.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let busy = {
                let inner = self.lock();
                gateways.iter().any(|g| inner.busy(g))
            };
            if !busy || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// How many builds of `gateway` its reconciles have started (what an edit cost, per
    /// Gateway; the metric `gateway_builds_total` counts them all).
    pub fn builds_started(&self, gateway: &ObjectRef) -> u64 {
        self.lock().entries.get(gateway).map_or(0, |e| e.builds)
    }

    /// How many Gateways have a build stored (for tests and the memory budget).
    pub fn len(&self) -> usize {
        self.lock()
            .entries
            .values()
            .filter(|e| e.build.is_some())
            .count()
    }

    /// Whether no build is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reconcile building one Gateway: see [`SharedBuilds::building`].
pub struct Building {
    builds: SharedBuilds,
    gateway: ObjectRef,
    ticket: Ticket,
}

impl Building {
    /// The clock when the build started.
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// Stores the build (see [`SharedBuilds::put`]) and ends the building.
    pub fn finish(self, version: Version, build: Shared) -> bool {
        self.builds.put(&self.gateway, self.ticket, version, build)
        // Drop ends the building and wakes the waiters.
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        {
            let mut inner = self.builds.lock();
            if let Some(e) = inner.entries.get_mut(&self.gateway) {
                e.building = e.building.saturating_sub(1);
            }
        }
        self.builds.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(name: &str) -> ObjectRef {
        ObjectRef::new("edge", name)
    }

    fn v(generation: i64) -> Version {
        Version {
            uid: Some("u".into()),
            generation: Some(generation),
        }
    }

    fn build(tag: &str) -> Shared {
        Arc::new(Err(tag.to_string()))
    }

    fn tag(b: &Shared) -> String {
        b.as_ref().as_ref().err().cloned().unwrap_or_default()
    }

    #[test]
    fn a_build_is_shared_until_a_change_that_may_affect_its_gateway() {
        let builds = SharedBuilds::default();
        let t = builds.ticket();
        assert!(builds.put(&gw("a"), t, v(1), build("a1")));
        assert!(builds.put(&gw("b"), t, v(1), build("b1")));
        assert_eq!(tag(&builds.get(&gw("a"), &v(1)).unwrap()), "a1");
        assert!(
            builds.get(&gw("a"), &v(2)).is_none(),
            "another generation of the Gateway is another build"
        );
        builds.invalidate([&gw("a")]);
        assert!(builds.get(&gw("a"), &v(1)).is_none());
        assert!(builds.get(&gw("b"), &v(1)).is_some(), "b is not touched");
        builds.invalidate_all(false);
        assert!(builds.is_empty());
    }

    #[test]
    fn a_build_whose_inputs_were_read_before_a_change_is_refused() {
        let builds = SharedBuilds::default();
        let before = builds.ticket();
        builds.invalidate([&gw("a")]);
        assert!(
            !builds.put(&gw("a"), before, v(1), build("stale")),
            "read before the change: it may not reflect it"
        );
        assert!(
            builds.put(&gw("b"), before, v(1), build("b")),
            "the change did not concern b"
        );
        builds.invalidate_all(false);
        assert!(!builds.put(&gw("b"), before, v(1), build("stale")));
        let after = builds.ticket();
        assert!(builds.put(&gw("a"), after, v(1), build("fresh")));
        assert_eq!(tag(&builds.get(&gw("a"), &v(1)).unwrap()), "fresh");
    }

    #[tokio::test]
    async fn the_status_pass_waits_for_a_reconcile_that_is_building_and_not_for_others() {
        let builds = SharedBuilds::default();
        let patience = Duration::from_secs(30);
        // Nothing being built: no wait at all.
        let start = tokio::time::Instant::now();
        builds.settle(&[gw("a")], patience).await;
        assert!(start.elapsed() < Duration::from_secs(5));

        let building = builds.building(gw("a"));
        let _other = builds.building(gw("other"));
        let waiter = {
            let builds = builds.clone();
            tokio::spawn(async move {
                builds.settle(&[gw("a")], patience).await;
                builds.get(&gw("a"), &v(1))
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "it waits while the reconcile builds");
        assert!(building.finish(v(1), build("a1")));
        let got = waiter.await.unwrap();
        assert_eq!(
            tag(&got.expect("the reconcile's build")),
            "a1",
            "and is not held up by another Gateway's reconcile"
        );

        // A reconcile that gives up (an error before its build): the wait ends too.
        let building = builds.building(gw("b"));
        let waiter = {
            let builds = builds.clone();
            tokio::spawn(async move { builds.settle(&[gw("b")], patience).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(building);
        waiter.await.unwrap();
        assert!(builds.get(&gw("b"), &v(1)).is_none());

        // A change woke c's reconcile, which has not started yet: wait for it to start and
        // finish, not merely for nobody to be building at this instant.
        builds.invalidate([&gw("c")]);
        let waiter = {
            let builds = builds.clone();
            tokio::spawn(async move {
                builds.settle(&[gw("c")], patience).await;
                builds.get(&gw("c"), &v(1))
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the woken reconcile is due");
        let building = builds.building(gw("c"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "and then building");
        assert!(building.finish(v(1), build("c1")));
        assert_eq!(tag(&waiter.await.unwrap().unwrap()), "c1");
        // A reconcile that was building before the change: its build is refused and the wait
        // goes on for the next one.
        let stale = builds.building(gw("d"));
        builds.invalidate([&gw("d")]);
        assert!(!stale.finish(v(1), build("d-stale")));
        let waiter = {
            let builds = builds.clone();
            tokio::spawn(async move { builds.settle(&[gw("d")], patience).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the stale build does not end the wait"
        );
        assert!(builds.building(gw("d")).finish(v(1), build("d1")));
        waiter.await.unwrap();
        // Every Gateway woken at once (a Tenant changed): each is due.
        builds.invalidate_all(true);
        let start = tokio::time::Instant::now();
        builds.settle(&[gw("e")], Duration::from_millis(100)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "e is due too"
        );
        // The resync of the status pass wakes nobody: no wait for it.
        drop(builds.building(gw("e")));
        builds.invalidate_all(false);
        let start = tokio::time::Instant::now();
        builds.settle(&[gw("e")], patience).await;
        assert!(start.elapsed() < Duration::from_secs(5));

        // A reconcile that never finishes: the patience runs out.
        let _stuck = builds.building(gw("c"));
        let start = tokio::time::Instant::now();
        builds.settle(&[gw("c")], Duration::from_millis(100)).await;
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
