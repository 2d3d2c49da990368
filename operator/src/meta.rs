//! Metadata of the objects the operator generates, shared by every reconciler and by the
//! caches: the label keys and values that mark an object as the operator's (what its watches
//! select and what wakes nobody), and the tests on them.
//!
//! Below the caches and the reconcilers; uses no other module of the crate. What the gateway
//! binary reads (object names, the snapshot key, flags) is not here but in
//! [`rustronaut_contract::deploy`], the contract both sides link.

use kube::Resource;

/// Label keys and the fixed values of generated objects.
pub mod labels {
    /// `app.kubernetes.io/name`.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`: the Gateway's name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Value of [`NAME`] on the gateway's objects.
    pub const GATEWAY: &str = "rustronaut-gateway";
    /// Value of [`NAME`] on every tunnel hub object (not the gateway's: the gateway Service
    /// and Deployment select on theirs, and must never pick a hub pod).
    pub const HUB: &str = "rustronaut-tunnel-hub";
    /// Value of [`MANAGED_BY`]; also what the operator's watches select on.
    pub const OPERATOR: &str = "rustronaut-operator";
    /// Selector of every object the operator manages.
    pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=rustronaut-operator";
    /// Value of [`COMPONENT`] on session key Secrets. It marks them as operator objects whose
    /// changes matter (people rotate keys in them), unlike every other object the operator
    /// writes, whose changes wake nothing.
    pub const SESSION_KEYS: &str = "session-keys";
}

/// Whether `obj` carries the operator's [`labels::MANAGED_BY`].
pub fn managed(obj: &impl Resource) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::OPERATOR)
}

/// Whether changes of `obj` should wake the controllers although the operator manages it:
/// true for session key Secrets, the one managed object people edit (to rotate).
pub fn edited_by_people(obj: &impl Resource) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::COMPONENT))
        .is_some_and(|v| v == labels::SESSION_KEYS)
}
