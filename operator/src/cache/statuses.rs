//! What the caches keep of each Resource's and Policy's status: a digest, and per condition
//! only what the next status needs (issue 17).
//!
//! The status pass reads two things from the status an object has now:
//! - whether the status it computes differs, so it writes only what changed;
//! - per condition, since when its status holds (`lastTransitionTime` survives a pass that
//!   changes nothing) and for which reason it failed (a Warning Event once, not every pass).
//!
//! A whole status is five or six conditions of four strings each, plus the Policies or targets
//! lists: about 1.6 KB per object. At 10,000 objects that was the largest part of the watch
//! caches (heaptrack, `make bench-operator`, docs/benchmarks.md). So the Resource and Policy
//! watches move each status out of the object, before it is cached, into an [`Observed`]: a
//! 64-bit digest of the status and, per condition, hashes of its type, status and reason and
//! its transition time (about 200 bytes). The cached objects carry `status: None`; nothing
//! else reads it there (the sidecar reconciler, which reads whole statuses of sidecar
//! Resources, has its own watch; the Tenant and Gateway statuses stay whole).
//!
//! The hashes are keyed SipHash with a key drawn at start ([`RandomState`]), so nobody who can
//! write a status can make two different ones collide on purpose; by chance, two differing
//! statuses share a digest with probability 2^-64 per comparison, and the cost of that is one
//! status left unwritten until the next change of the object.
//!
//! The digest is of the status's JSON as the operator writes it, so an observed status equals
//! a computed one exactly when the API server would store the same thing.

use crate::conditions::Previous;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use kube::runtime::watcher;
use rustronaut_crds::{Policy, Resource as RtnResource};
use serde::Serialize;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock};

/// The process's hash key (drawn once, at first use).
fn keys() -> &'static RandomState {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new)
}

fn hash_str(s: &str) -> u64 {
    keys().hash_one(s)
}

/// A [`Hasher`] fed by serde_json's writer: the digest of a value's JSON without building it.
struct HashWriter<H>(H);

impl<H: Hasher> std::io::Write for HashWriter<H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The digest of `status`'s JSON.
pub fn digest(status: &impl Serialize) -> u64 {
    let mut w = HashWriter(keys().build_hasher());
    // Writing to a hasher cannot fail; a status that cannot be serialized (none of ours) gets
    // the digest of what was written, which differs from any whole status's.
    let _ = serde_json::to_writer(&mut w, status);
    w.0.finish()
}

/// What the status pass needs of one condition an object has.
#[derive(Clone, Debug)]
struct Seen {
    type_: u64,
    status: u64,
    reason: u64,
    since: Time,
}

/// What the caches keep of one object's status.
#[derive(Clone, Debug)]
pub struct Observed {
    digest: u64,
    conditions: Box<[Seen]>,
}

impl Observed {
    /// The compact form of `status`, whose conditions are `conditions`.
    pub fn new(status: &impl Serialize, conditions: &[Condition]) -> Self {
        Observed {
            digest: digest(status),
            conditions: conditions
                .iter()
                .map(|c| Seen {
                    type_: hash_str(&c.type_),
                    status: hash_str(&c.status),
                    reason: hash_str(&c.reason),
                    since: c.last_transition_time.clone(),
                })
                .collect(),
        }
    }

    /// Whether `status` is the status observed (see the module doc for the odds).
    pub fn is(&self, status: &impl Serialize) -> bool {
        self.digest == digest(status)
    }
}

impl Previous for Observed {
    fn since(&self, type_: &str, status: &str) -> Option<&Time> {
        let (t, s) = (hash_str(type_), hash_str(status));
        self.conditions
            .iter()
            .find(|c| c.type_ == t)
            .filter(|c| c.status == s)
            .map(|c| &c.since)
    }

    fn failed_for(&self, type_: &str, reason: &str) -> bool {
        let (t, f, r) = (hash_str(type_), hash_str("False"), hash_str(reason));
        self.conditions
            .iter()
            .any(|c| c.type_ == t && c.status == f && c.reason == r)
    }
}

/// A kind whose cached objects keep their status as an [`Observed`].
pub trait Compact: Resource {
    /// Moves the status out of the object, compacted.
    fn take_status(&mut self) -> Option<Observed>;
}

impl Compact for RtnResource {
    fn take_status(&mut self) -> Option<Observed> {
        self.status.take().map(|s| Observed::new(&s, &s.conditions))
    }
}

impl Compact for Policy {
    fn take_status(&mut self) -> Option<Observed> {
        self.status.take().map(|s| Observed::new(&s, &s.conditions))
    }
}

/// namespace -> name -> status observed.
type Table = HashMap<String, HashMap<String, Arc<Observed>>>;

#[derive(Default)]
struct Inner {
    live: Table,
    /// A re-list in progress: what it has listed so far, which replaces `live` when it ends
    /// (what it does not list was deleted while the watch was down).
    relist: Option<Table>,
}

/// The statuses of one kind's cached objects, filled by its watch ([`Statuses::observe`]).
#[derive(Clone, Default)]
pub struct Statuses(Arc<Mutex<Inner>>);

fn put(table: &mut Table, ns: &str, name: &str, observed: Option<Observed>) {
    match observed {
        Some(o) => {
            table
                .entry(ns.to_string())
                .or_default()
                .insert(name.to_string(), Arc::new(o));
        }
        None => remove(table, ns, name),
    }
}

fn remove(table: &mut Table, ns: &str, name: &str) {
    if let Some(names) = table.get_mut(ns) {
        names.remove(name);
        if names.is_empty() {
            table.remove(ns);
        }
    }
}

impl Statuses {
    /// The status observed of `namespace/name`, if it has one.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Observed>> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.live.get(namespace)?.get(name).cloned()
    }

    /// How many objects have a status here.
    pub fn len(&self) -> usize {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.live.values().map(HashMap::len).sum()
    }

    /// Whether no object has a status here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the status of the object in `event` (if any) here, and returns the event as the
    /// cache should keep it: with `status: None`. Follows the watch's re-lists like a
    /// reflector store (the table is replaced when a re-list completes).
    pub fn observe<K: Compact>(&self, mut event: watcher::Event<K>) -> watcher::Event<K> {
        use watcher::Event as E;
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &mut event {
            E::Init => inner.relist = Some(Table::new()),
            E::InitDone => {
                if let Some(listed) = inner.relist.take() {
                    inner.live = listed;
                }
            }
            E::InitApply(k) => {
                let observed = k.take_status();
                let (ns, name) = key(k);
                let Inner { live, relist } = &mut *inner;
                put(relist.as_mut().unwrap_or(live), ns, name, observed);
            }
            E::Apply(k) => {
                let observed = k.take_status();
                let (ns, name) = key(k);
                put(&mut inner.live, ns, name, observed);
            }
            E::Delete(k) => {
                k.take_status();
                let (ns, name) = key(k);
                remove(&mut inner.live, ns, name);
            }
        }
        event
    }
}

fn key<K: Resource>(k: &K) -> (&str, &str) {
    let meta = k.meta();
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_crds::ResourceStatus;

    fn time(s: &str) -> Time {
        Time(s.parse().expect("a timestamp"))
    }

    fn cond(type_: &str, ok: bool, reason: &str, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: format!("{type_} says {reason}"),
            observed_generation: Some(2),
            last_transition_time: time(at),
        }
    }

    fn status() -> ResourceStatus {
        ResourceStatus {
            conditions: vec![
                cond("Accepted", true, "Accepted", "2026-01-01T00:00:00Z"),
                cond("Programmed", false, "Pending", "2026-01-02T00:00:00Z"),
            ],
            observed_generation: Some(2),
            ..Default::default()
        }
    }

    fn resource(ns: &str, name: &str, status: Option<ResourceStatus>) -> RtnResource {
        let mut r: RtnResource = serde_json::from_value(serde_json::json!({
            "apiVersion": "rustronaut.io/v1alpha1",
            "kind": "Resource",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"gatewayRefs": [{"name": "edge"}], "protocol": "HTTP"},
        }))
        .expect("a Resource");
        r.status = status;
        r
    }

    #[test]
    fn a_status_is_its_observed_form_and_any_change_is_not() {
        let s = status();
        let o = Observed::new(&s, &s.conditions);
        assert!(o.is(&s));
        assert!(o.is(&s.clone()));
        let mut message = s.clone();
        message.conditions[0].message.push('!');
        assert!(!o.is(&message));
        let mut since = s.clone();
        since.conditions[1].last_transition_time = time("2026-01-03T00:00:00Z");
        assert!(!o.is(&since));
        let mut generation = s.clone();
        generation.observed_generation = Some(3);
        assert!(!o.is(&generation));
        assert!(!o.is(&ResourceStatus::default()));
    }

    #[test]
    fn the_compact_form_answers_as_the_whole_conditions_do() {
        let s = status();
        let o = Observed::new(&s, &s.conditions);
        let whole: &[Condition] = &s.conditions;
        for (type_, status) in [
            ("Accepted", "True"),
            ("Accepted", "False"),
            ("Programmed", "False"),
            ("Programmed", "True"),
            ("Ready", "True"),
        ] {
            assert_eq!(
                o.since(type_, status),
                whole.since(type_, status),
                "{type_}={status}"
            );
        }
        for (type_, reason) in [
            ("Programmed", "Pending"),
            ("Programmed", "Invalid"),
            ("Accepted", "Accepted"),
            ("Ready", "Pending"),
        ] {
            assert_eq!(
                o.failed_for(type_, reason),
                whole.failed_for(type_, reason),
                "{type_} {reason}"
            );
        }
        assert!(o.failed_for("Programmed", "Pending"));
        assert_eq!(
            o.since("Accepted", "True"),
            Some(&time("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn the_cache_keeps_objects_without_status_and_follows_applies_deletes_and_relists() {
        use watcher::Event as E;
        let st = Statuses::default();
        let out = st.observe(E::Apply(resource("a", "one", Some(status()))));
        let E::Apply(cached) = out else {
            panic!("the event kind is kept")
        };
        assert_eq!(cached.status, None, "the cache holds no status");
        assert!(st.get("a", "one").expect("observed").is(&status()));
        assert!(st.get("a", "two").is_none());
        assert!(st.get("b", "one").is_none());

        // A status removed, then the object deleted.
        st.observe(E::Apply(resource("a", "two", Some(status()))));
        st.observe(E::Apply(resource("a", "two", None)));
        assert!(st.get("a", "two").is_none());
        st.observe(E::Delete(resource("a", "one", Some(status()))));
        assert!(st.get("a", "one").is_none());
        assert!(st.is_empty());

        // A re-list: the old table serves until it completes, then only what it listed.
        st.observe(E::Apply(resource("a", "gone", Some(status()))));
        st.observe(E::<RtnResource>::Init);
        st.observe(E::InitApply(resource("b", "kept", Some(status()))));
        assert!(
            st.get("a", "gone").is_some(),
            "served until the re-list ends"
        );
        assert!(st.get("b", "kept").is_none());
        st.observe(E::<RtnResource>::InitDone);
        assert!(
            st.get("a", "gone").is_none(),
            "deleted while the watch was down"
        );
        assert!(st.get("b", "kept").is_some());
        assert_eq!(st.len(), 1);
    }
}
