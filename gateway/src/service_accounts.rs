//! Workload identity: the keys of the cluster's ServiceAccount issuer, fetched through the
//! gateway's Kubernetes client, so a caller's projected ServiceAccount token is verified
//! offline on every request (no TokenReview round trip per request).
//!
//! ```text
//!  loop (admin runtime, the single writer), while a Policy of the snapshot names a
//!  serviceAccount principal:
//!    due? (never fetched, 10 min elapsed, or a token named an unknown kid and the last
//!          attempt is 10 s old)
//!      GET /.well-known/openid-configuration -> issuer
//!      GET /openid/v1/jwks (on the API server the client talks to, not jwks_uri's host)
//!        ok:   ServiceAccountVerifier(issuer, aud rustronaut.io) -> RemoteJwks (arc-swap)
//!        fail: log + metric; the previous keys keep verifying; retry in 10 s
//!  no Policy names one: no fetch, the verifier is withdrawn, Authorization stays the
//!  upstream's business on tenants without JWT providers
//! ```
//!
//! Why only when a Policy asks: an edge gateway's tenants may pass their own bearer tokens
//! to their upstreams, and a gateway that always claimed `Authorization` would refuse them;
//! and a gateway nobody asks for workload identity makes no extra API calls. The discovery
//! endpoints are readable by every ServiceAccount (the default
//! `system:service-account-issuer-discovery` binding), so a sidecar needs no extra RBAC.
//!
//! Without a Kubernetes client (`--snapshot`), a snapshot that needs ServiceAccounts fails
//! closed: tokens are refused (401), the principal never matches, and an error says why.

use crate::jwks::RemoteJwks;
use crate::metrics::{Metrics, ResultLabel};
use crate::reload::Store;
use rustronaut_contract::identity::jwt::Jwks;
use rustronaut_contract::identity::serviceaccount::{
    DISCOVERY_PATH, JWKS_PATH, ServiceAccountVerifier, issuer_from_discovery,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the keys are refetched while they are in use.
const REFRESH: Duration = Duration::from_secs(600);
/// Retry delay after a failed fetch.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Least time between fetches triggered by unknown key ids.
const KID_REFETCH_MIN: Duration = Duration::from_secs(10);
/// The shortest sleep of the loop: it looks no more often than this, and otherwise sleeps
/// until the next refresh is due, a snapshot swap or a refetch request ([`crate::wake`]).
const TICK: Duration = Duration::from_millis(250);

/// Why the issuer's documents could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The API server request failed.
    #[error("GET {path}: {source}")]
    Request {
        /// Path.
        path: &'static str,
        /// Cause.
        source: kube::Error,
    },
    /// The discovery document or the JWKS is unusable.
    #[error("{0}")]
    Document(String),
}

/// GETs `path` from the API server, accepting `accept`: the API server answers 406 to
/// `application/json` for the JWKS, which it serves as `application/jwk-set+json` only.
async fn get(
    client: &kube::Client,
    path: &'static str,
    accept: &'static str,
) -> Result<String, IssuerError> {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .map_err(|e| IssuerError::Document(e.to_string()))?;
    client
        .request_text(req)
        .await
        .map_err(|source| IssuerError::Request { path, source })
}

/// Fetches the issuer and its keys through `client` and builds the verifier.
pub async fn fetch(client: &kube::Client) -> Result<ServiceAccountVerifier, IssuerError> {
    let discovery = get(client, DISCOVERY_PATH, "application/json").await?;
    let issuer = issuer_from_discovery(discovery.as_bytes())
        .map_err(|e| IssuerError::Document(e.to_string()))?;
    let jwks = get(
        client,
        JWKS_PATH,
        "application/jwk-set+json, application/json",
    )
    .await?;
    Jwks::from_json(jwks.as_bytes())
        .and_then(|keys| ServiceAccountVerifier::new(&issuer, keys))
        .map_err(|e| IssuerError::Document(format!("{JWKS_PATH}: {e}")))
}

/// Runs the fetch loop forever (the caller drops the task to stop it).
pub async fn run(
    store: Arc<Store>,
    remote: Arc<RemoteJwks>,
    client: Option<kube::Client>,
    metrics: Arc<Metrics>,
) {
    let mut next_due = Instant::now();
    let mut last_attempt: Option<Instant> = None;
    let mut warned_version: Option<String> = None;
    let mut swaps = store.swaps();
    // When to look next: `None` while nothing is to be fetched (no snapshot, no Policy
    // naming a ServiceAccount, no client), so only a swap or a refetch request wakes it.
    let mut next: Option<Instant> = Some(Instant::now());
    let mut looked: Option<Instant> = None;
    loop {
        let not_before = looked.map_or_else(Instant::now, |t| t + TICK);
        let asked = remote.service_account_refresh_asked();
        crate::wake::until(not_before, next, &mut swaps, Some(asked)).await;
        looked = Some(Instant::now());
        next = None;
        let Some(state) = store.current() else {
            continue;
        };
        if !state.names_service_accounts() {
            if remote.service_accounts().is_some() {
                remote.set_service_accounts(None);
            }
            remote.take_service_account_refresh();
            next_due = Instant::now();
            last_attempt = None;
            continue;
        }
        let Some(client) = &client else {
            if warned_version.as_deref() != Some(state.version.as_str()) {
                tracing::error!(
                    version = %state.version,
                    "a Policy names a serviceAccount principal, but this gateway has no Kubernetes client (it runs from --snapshot): ServiceAccount tokens are refused and the principal never matches"
                );
                warned_version = Some(state.version.clone());
            }
            continue;
        };
        let now = Instant::now();
        let kid_refetch = remote.take_service_account_refresh()
            && last_attempt.is_none_or(|t| now.duration_since(t) >= KID_REFETCH_MIN);
        if next_due > now && !kid_refetch {
            next = Some(next_due);
            continue;
        }
        last_attempt = Some(now);
        match fetch(client).await {
            Ok(v) => {
                tracing::info!(issuer = %v.issuer(), "ServiceAccount issuer keys fetched");
                remote.set_service_accounts(Some(Arc::new(v)));
                next_due = now + REFRESH;
                metrics
                    .jwks_fetches
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
            }
            Err(e) => {
                tracing::warn!(error = %e,
                    "fetching the ServiceAccount issuer keys failed; the previous keys (if any) keep verifying");
                next_due = now + RETRY_AFTER;
                metrics
                    .jwks_fetches
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
            }
        }
        next = Some(next_due);
    }
}
