//! The data-plane contract of Rustronaut and the pure policy evaluator.
//!
//! This crate is shared by the operator, the gateway, the tunnel, the console and the CLI, so
//! it is deliberately light: no kube, no pingora, no tokio, no network or file I/O, no clock
//! reads. Everything here is a pure function of its arguments.
//!
//! ```text
//!   operator:  CRs --compile--> snapshot::Snapshot --JSON--> Secret
//!   gateway:   Secret --Snapshot::load--> policy::PolicySet::from_snapshot
//!              per request: path::normalize, identity::* (verify credentials),
//!                           eval::evaluate(&set, &request, now, decision_id) -> Decision
//!   console/CLI: explain::explain, eval::OwnedRequest (Policy tests)
//! ```
//!
//! Modules:
//! - [`snapshot`]: the compiled snapshot (schema, load, validate, content hash);
//! - [`policy`]: policies on the wire and compiled into an indexed [`policy::PolicySet`];
//! - [`eval`]: the evaluator; [`explain`]: why a request was denied;
//! - [`path`]: path normalisation for matching and forwarding;
//! - [`identity`]: JWT, API keys, client certificates, sites, client IP;
//! - [`cidr`]: address ranges; [`fuzzing`]: fuzz entry points;
//! - [`deploy`]: how the operator deploys a gateway (Secret and ConfigMap names, the snapshot
//!   key, flags): the one place both sides read them from.
#![forbid(unsafe_code)]

pub mod cidr;
pub mod deploy;
pub mod eval;
pub mod explain;
pub mod fuzzing;
pub mod identity;
pub mod path;
pub mod policy;
pub mod snapshot;

pub use eval::{Decision, Effect, Reason, Request, evaluate};
pub use identity::Identity;
pub use policy::PolicySet;
pub use snapshot::{SCHEMA_VERSION, Snapshot};

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}
