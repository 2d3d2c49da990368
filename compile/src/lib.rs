//! Compiles the rustronaut.io objects into the data-plane contract.
//!
//! ```text
//!  World (Tenants, Gateways, Resources, Policies: from the cluster or from YAML files)
//!    | tenancy: namespace/domain claims, policy targets          (rustronaut_crds::tenancy)
//!    | convert: CR types -> contract types, secrets via a source  (convert)
//!    v
//!  contract: CompiledResource, CompiledPolicy, Tenant -> PolicySet (rustronaut_contract)
//!    | quota: Resources and Policies over their tenant's quota     (quota)
//!    | policytest: embedded Policy tests against the whole set    (policytest)
//!    | snapshot: one Gateway's whole contract::Snapshot            (snapshot)
//!    | tunnel: hub and site addresses inside the tunnel pool      (tunnel)
//!    | session: a tenant's session signing keys from their Secret  (session)
//!    | sidecar: one sidecar Resource's whole contract::Snapshot   (sidecar)
//! ```
//!
//! Pure: no Kubernetes client, no network. The operator feeds it from its reflectors and writes
//! the results; the `rustronaut` CLI feeds it from files.
#![forbid(unsafe_code)]

pub mod convert;
pub mod policytest;
pub mod quota;
pub mod session;
pub mod sidecar;
pub mod snapshot;
pub mod tunnel;
pub mod world;

pub use policytest::{Compiled, TestOutcome, compile, compile_with, run_all, run_all_with};
pub use world::{World, WorldError};
