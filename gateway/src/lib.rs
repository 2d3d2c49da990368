//! The Rustronaut gateway: a Pingora proxy that enforces a compiled snapshot.
//!
//! ```text
//!  snapshot file (poll) or Secret (watch, kube_source)
//!    --reload (Compiled::load, arc-swap)--> Store; loaded version -> ConfigMap (kube_source)
//!                                                              |
//!  client --accept (listener: own loop), PROXY header when asked, TLS (SNI cert,
//!  client cert)--> proxy (per listener)                        | reads Arc<Compiled>
//!     downstream: HTTP/1 head deadline, keep-alive timeout, bare LF / obs-fold -> 408/400
//!     request_filter: /.rustronaut/oidc/{callback,logout} -> oidc (login, session cookie)
//!                     pipeline::decide = route -> normalise -> authenticate (+ session
//!                     cookie) -> evaluate -> rate limit (pure; 302 to the IdP for browsers
//!                     that could log in; 400/401/403/404/429 answered here)
//!     upstream_peer:  weighted round robin over healthy addresses (balance, health)
//!     upstream_request_filter: normalised target, identity headers, X-Forwarded-*
//!     logging: one JSON decision line (logs: formatted in place, written by the log
//!              thread in batches) + metrics
//!  client --TCP / TLS / TLSPassthrough / UDP--> l4 (Pingora background service per port):
//!     PROXY header -> TLS handshake or ClientHello peek -> l4::decide (same evaluator)
//!     -> close (deny) | balancer pick -> splice bytes / relay datagrams
//!  admin (own runtime): /healthz /readyz /metrics, snapshot reloader, active health checks,
//!                       remote JWKS fetching (each loop sleeps until it has work: wake)
//! ```
//!
//! The binary (`src/main.rs`) only parses flags and wires these together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authn;
pub mod balance;
pub mod downstream;
pub mod framing;
pub mod fuzzing;
pub mod health;
pub mod jwks;
pub mod kube_source;
pub mod l4;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod oidc;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod service_accounts;
pub mod session;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod wake;
