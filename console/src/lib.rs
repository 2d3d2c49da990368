//! The Rustronaut console: a thin web editor of Tenants, Gateways, Resources and Policies
//! that acts as the signed-in person.
//!
//! ```text
//! browser --(OIDC code + PKCE)--> IdP
//!    |  sealed __Host- session cookie (user, groups, CSRF token)
//!    v
//! console --(console's credentials + Impersonate-User/Group)--> kube-apiserver
//!                                                                RBAC decides
//! ```
//!
//! No database and no cache of its own: every read and write is made by the API server on
//! behalf of the person ([`impersonate`]), so Kubernetes RBAC, admission (CEL rules) and
//! audit see the person. We chose impersonated reads over a shared watch cache filtered by
//! access reviews: a cache would need the console's ServiceAccount to read every object of
//! the four kinds, and a filtering bug would leak them; impersonated reads keep the
//! ServiceAccount at `impersonate` only, at the cost of one API call per page. The
//! consequence: a person who may not list across namespaces lists one namespace at a time.
//!
//! Modules are pure cores under a thin [`web`] layer: [`seal`] and [`session`] (cookies),
//! [`oidc`] (login), [`forms`] (forms from the CRD schema), [`problems`] (API errors next to
//! fields), [`gitops`] (read-only objects), [`kinds`], [`listing`] (lists decoded into what a page
//! reads), [`metrics`].
#![forbid(unsafe_code)]

pub mod explain;
pub mod forms;
pub mod gitops;
pub mod html;
pub mod impersonate;
pub mod kinds;
pub mod listing;
pub mod metrics;
pub mod oidc;
pub mod problems;
pub mod seal;
pub mod session;
pub mod web;
