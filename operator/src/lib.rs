//! The rustronaut operator: a Gateway controller (kube-rs `Controller`), whole-world passes
//! for Tenants and for the status of Resources and Policies, and a sidecar reconciler, all on
//! one set of caches; each Gateway is reconciled as read -> build -> server-side apply ->
//! status (see ARCHITECTURE.md).
//!
//! Module map, from the bottom up: a module uses only modules of the layers below it, the
//! ones before it in its own layer, and its own submodules; never one above, so there are no
//! import circles. The resulting order (`a <- b`: b uses a), as `grep -rn 'crate::'` shows:
//!
//! ```text
//!  error, metrics, meta, conditions, rbac, leader   (use nothing of the crate)
//!  metrics <- context;  context, error <- apply
//!  error, context, meta <- cache
//!  apply, cache, conditions, context, error, meta <- gateway <- status <- tenant
//!  error, metrics <- pass;  gateway, pass <- sidecar
//!  cache, gateway, pass, sidecar, status, tenant <- runtime
//!  apply, cache, metrics <- webhook;  metrics <- server
//! ```
//!
//! 1. Foundations (use nothing of the crate, or only each other):
//!    - [`error`]: the crate-wide [`error::Error`], the retry [`error::backoff`] and
//!      [`error::RESYNC`].
//!    - [`metrics`]: Prometheus metrics of the reconcilers.
//!    - [`telemetry`]: OTLP traces, one span per reconcile under the span that says what caused it.
//!    - [`context`]: what every reconciler shares (client, metrics, Event reporter, field
//!      manager) and the builders' [`context::Settings`] from the flags.
//!    - [`meta`]: labels of the objects the operator generates (what marks one as ours).
//!    - [`apply`]: server-side apply with the fixed field manager; `put`/`remove` of
//!      generated objects.
//!    - [`conditions`]: pure: Resource, Policy and Tenant status from a World and the builds.
//!    - [`rbac`]: the operator's own RBAC (shipped and tested).
//! 2. [`cache`]: the reflector stores ([`cache::Stores`]) of everything a snapshot is made
//!    of, the watches that fill them (one unreadable object never stalls one: `cache::guard`;
//!    Secrets' data only when named: `cache::secrets`; the cluster's networks:
//!    `cache::networks`) and who each change wakes (`cache::affected`: only the Gateways it
//!    can affect).
//! 3. Reconcilers, on the caches:
//!    - [`gateway`]: the Gateway reconciler (snapshot Secret, Deployment, Service, RBAC, the
//!      tunnel hub of `spec.tunnel`, session keys, status): `desired` is its one build value,
//!      made of `objects` and `tunnel`; its `inputs` (the read step) and `objects` are also
//!      used by `status` and `sidecar`.
//!    - [`status`]: the Resource and Policy status pass (writes what `conditions` computes,
//!      building every Gateway's snapshot through `gateway::inputs`).
//!    - [`tenant`]: the Tenant pass (status, namespace labels, NetworkPolicies, admins).
//!    - [`pass`]: the loop of the whole-world passes (debounce, resync, backoff).
//!    - [`sidecar`]: the sidecar reconciler: each sidecar Resource (`spec.workload`) becomes
//!      its snapshot Secret, the RBAC to read it and a NetworkPolicy; its status counts the
//!      protected pods (reuses the builders of `gateway::objects` and `gateway::session`).
//! 4. Serving and wiring:
//!    - [`runtime`]: sets up the caches and runs every reconciler and pass on them until
//!      shutdown (the crate's top; `main` and the integration tests start it).
//!    - [`leader`]: leader election on a Lease (only the holder runs the [`runtime`]).
//!    - [`server`]: the /metrics, /healthz, /readyz endpoint.
//!    - [`webhook`]: the sidecar injection webhook (every replica serves it, on its own small
//!      caches; the leader keeps its certificates and caBundle current).
//!
//! What the gateway binary reads (the snapshot Secret's and status ConfigMap's names, the
//! snapshot key, the config-version annotation, its flags and `POD_NAME`) is defined once, in
//! [`rustronaut_contract::deploy`], which both sides link.

pub mod apply;
pub mod cache;
pub mod conditions;
pub mod context;
pub mod error;
pub mod gateway;
pub mod leader;
pub mod meta;
pub mod metrics;
pub mod pass;
pub mod rbac;
pub mod runtime;
pub mod server;
pub mod sidecar;
pub mod status;
pub mod telemetry;
pub mod tenant;
pub mod webhook;
