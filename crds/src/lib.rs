//! The `rustronaut.io/v1alpha1` API: the Rust types of the four kinds, the CRDs generated from
//! them, and validation shared by the operator, the console and the CLI.
//!
//! | kind | scope | module |
//! |---|---|---|
//! | `Tenant` | cluster | [`tenant`] |
//! | `Resource` | namespaced | [`resource`] |
//! | `Gateway` | namespaced | [`gateway`] |
//! | `Policy` | namespaced | [`policy`] |
//!
//! What one object can be checked for, the API server checks: structural schemas with bounds,
//! enums, patterns and CEL rules (`x-kubernetes-validations`), so `kubectl apply` of a bad
//! object fails with a clear message before anything else sees it. What needs several objects
//! (exclusive claims, quotas, references) or is too costly for CEL is in [`validate`], pure
//! functions the operator turns into conditions and the console shows before saving.
//!
//! The CRD YAML under `crds/` and the reference under `docs/reference/` are generated from these
//! types by `make crds` ([`generate`]); a test fails when the committed files drift.
#![forbid(unsafe_code)]

pub mod common;
pub mod conditions;
pub mod gateway;
pub mod generate;
pub mod manifests;
pub mod policy;
pub mod resource;
mod schema;
pub mod tenancy;
pub mod tenant;
pub mod validate;

pub use gateway::{Gateway, GatewaySpec, GatewayStatus};
pub use policy::{Policy, PolicySpec, PolicyStatus};
pub use resource::{Resource, ResourceSpec, ResourceStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};

/// API group of every kind.
pub const GROUP: &str = "rustronaut.io";
/// API version.
pub const VERSION: &str = "v1alpha1";
