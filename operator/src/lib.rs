//! The rustronaut operator: one kube-rs controller per kind, each reconciling as
//! read -> validate -> build -> server-side apply -> status (see ARCHITECTURE.md).
//!
//! Module map:
//! - [`context`]: what every reconciler shares (client, field manager, metrics, events).
//! - [`metrics`]: Prometheus metrics of the reconcilers.
//! - [`apply`]: server-side apply with the operator's fixed field manager.
//! - [`rbac`]: the operator's own RBAC (shipped and tested).
//! - [`server`]: the /metrics, /healthz, /readyz endpoint.
//! - [`leader`]: leader election on a Lease (only the holder runs the controllers).
//! - [`gateway`]: the Gateway controller (snapshot Secret, Deployment, Service, RBAC, the
//!   tunnel hub of `spec.tunnel`, status);
//!   it owns the caches and also runs the two whole-world controllers below.
//! - [`pass`]: the loop of the whole-world controllers (debounce, resync, backoff).
//! - [`conditions`]: pure: Resource, Policy and Tenant status from a World and the builds.
//! - [`status`]: the Resource and Policy status pass (writes what `conditions` computes).
//! - [`tenant`]: the Tenant controller (status, namespace labels, NetworkPolicies, admins).
//! - [`sidecar`]: the sidecar reconciler: each sidecar Resource (`spec.workload`) becomes
//!   its snapshot Secret, the RBAC to read it and a NetworkPolicy; its status counts the
//!   protected pods. Run by the Gateway controller, on its caches.
//! - [`webhook`]: the sidecar injection webhook (every replica serves it; the leader keeps
//!   its certificates and caBundle current).

pub mod apply;
pub mod conditions;
pub mod context;
pub mod gateway;
pub mod leader;
pub mod metrics;
pub mod pass;
pub mod rbac;
pub mod server;
pub mod sidecar;
pub mod status;
pub mod tenant;
pub mod webhook;
