//! Integration tests of the contract crate, in one binary (one link instead of six).

mod common;
mod explain;
mod fuzz_smoke;
mod identity;
mod jwt;
mod order;
mod semantics;
mod service_accounts;
mod snapshot;
