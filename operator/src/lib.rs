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
//! - [`gateway`]: the Gateway controller (snapshot Secret, Deployment, Service, RBAC, status).

pub mod apply;
pub mod conditions;
pub mod context;
pub mod gateway;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod server;
