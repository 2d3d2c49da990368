//! Remote JWKS: the keys of `jwt` providers whose snapshot entry names a `remote` URI are
//! fetched by the gateway and refreshed every `refreshIntervalSeconds`.
//!
//! ```text
//!  fetch loop (admin runtime, the single writer)
//!    every tick: for each remote provider of the current snapshot
//!      due? (never fetched, interval elapsed, provider changed, or an unknown kid was seen
//!            and the last attempt is 10 s old) --> GET uri (HTTPS, 10 s, 1 MiB)
//!        ok:   Jwks::from_json -> JwtVerifier -> publish (arc-swap map by tenant, provider)
//!        fail: log + metric; the previous keys keep verifying; retry in 30 s at most
//!  request path: RemoteJwks::get(tenant, provider) -- a lock-free read
//! ```
//!
//! Until the first fetch succeeds, tokens for the provider cannot be verified and are
//! refused with 401 (never let through).

use crate::metrics::{Metrics, ResultLabel};
use crate::reload::Store;
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustronaut_contract::identity::jwt::{Jwks, JwtError, JwtVerifier, JwtVerifierConfig};
use rustronaut_contract::identity::serviceaccount::ServiceAccountVerifier;
use rustronaut_contract::snapshot::{IdentityProviderKind, JwksSource};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest JWKS document accepted.
const MAX_BODY: usize = 1 << 20;
/// Time a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delay after a failed fetch (or the refresh interval, if shorter).
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Least time between fetches triggered by unknown key ids.
const KID_REFETCH_MIN: Duration = Duration::from_secs(10);
/// The shortest sleep of the fetch loop: it looks no more often than this, and otherwise
/// sleeps until the next fetch is due, a snapshot swap or a refetch request
/// ([`crate::wake`]).
const TICK: Duration = Duration::from_millis(200);

/// Why a JWKS could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Trust anchors could not be loaded.
    #[error("failed to load CA certificates from {path}: {reason}")]
    Roots {
        /// File.
        path: String,
        /// Cause.
        reason: String,
    },
    /// Not a usable URI.
    #[error("invalid JWKS uri {0:?}")]
    Uri(String),
    /// Connection, TLS or HTTP failure.
    #[error("request failed: {0}")]
    Request(String),
    /// No answer in time.
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    /// A non-2xx answer.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body could not be read or was too large.
    #[error("body unreadable or larger than {MAX_BODY} bytes: {0}")]
    Body(String),
    /// Not a usable JWKS, or a provider the verifier refuses.
    #[error(transparent)]
    Jwks(#[from] JwtError),
}

type Key = (String, String);

/// Verifiers built from fetched JWKS, by (tenant, provider), and the cluster's
/// ServiceAccount issuer ([`crate::service_accounts`]).
#[derive(Debug, Default)]
pub struct RemoteJwks {
    verifiers: ArcSwap<HashMap<Key, Arc<JwtVerifier>>>,
    wanted: Mutex<HashSet<Key>>,
    /// Wakes [`run`] for a refetch request (see [`crate::wake`]).
    wanted_wake: tokio::sync::Notify,
    service_accounts: ArcSwapOption<ServiceAccountVerifier>,
    service_accounts_wanted: AtomicBool,
    /// Wakes [`crate::service_accounts::run`] for a refetch request.
    service_accounts_wake: tokio::sync::Notify,
}

impl RemoteJwks {
    /// The verifier of `tenant`'s provider `idp`, once its keys were fetched.
    pub fn get(&self, tenant: &str, idp: &str) -> Option<Arc<JwtVerifier>> {
        self.verifiers
            .load()
            .get(&(tenant.to_string(), idp.to_string()))
            .cloned()
    }

    /// The verifier of the cluster's ServiceAccount tokens, once its keys were fetched.
    pub fn service_accounts(&self) -> Option<Arc<ServiceAccountVerifier>> {
        self.service_accounts.load_full()
    }

    /// Publishes (or, with `None`, withdraws) the ServiceAccount verifier.
    pub fn set_service_accounts(&self, v: Option<Arc<ServiceAccountVerifier>>) {
        self.service_accounts.store(v);
    }

    /// A ServiceAccount token named an unknown key id: asks for an early refetch of the
    /// cluster's keys (rate-limited by [`crate::service_accounts::run`]).
    pub fn request_service_account_refresh(&self) {
        self.service_accounts_wanted.store(true, Ordering::Relaxed);
        self.service_accounts_wake.notify_one();
    }

    /// Notified when a refetch of the cluster's keys is asked for.
    pub fn service_account_refresh_asked(&self) -> &tokio::sync::Notify {
        &self.service_accounts_wake
    }

    /// Takes the pending refetch request of the cluster's keys.
    pub fn take_service_account_refresh(&self) -> bool {
        self.service_accounts_wanted.swap(false, Ordering::Relaxed)
    }

    /// Asks for an early refetch (a token named a key id the JWKS does not have: the issuer
    /// may have rotated its keys). Rate-limited by the fetch loop.
    pub fn request_refresh(&self, tenant: &str, idp: &str) {
        self.wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tenant.to_string(), idp.to_string()));
        self.wanted_wake.notify_one();
    }
}

/// An HTTPS client for JWKS documents, also used by [`crate::oidc`] (discovery, token and
/// userinfo endpoints) so both trust the same roots. Cheap to clone (shared pool).
#[derive(Clone)]
pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A client trusting the OS store plus the certificates of `extra_ca` (PEM), if given.
    pub fn new(extra_ca: Option<&str>) -> Result<Self, JwksError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // Unusable OS certificates are skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let err = |reason: String| JwksError::Roots {
                path: path.to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::Request(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// GETs `uri` and returns the body.
    pub async fn fetch(&self, uri: &str) -> Result<Bytes, JwksError> {
        let parsed: http::Uri = uri.parse().map_err(|_| JwksError::Uri(uri.into()))?;
        let req = http::Request::get(parsed)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| JwksError::Request(e.to_string()))?;
        match self.send(req).await? {
            (status, body) if (200..300).contains(&status) => Ok(body),
            (status, _) => Err(JwksError::Status(status)),
        }
    }

    /// Sends `req` (HTTPS only) and returns the status and body, whatever the status; the
    /// whole exchange is bounded by the fetch timeout and the body by the size limit.
    pub async fn send(
        &self,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), JwksError> {
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("rustronaut-gateway"),
        );
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| JwksError::Request(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| JwksError::Body(e.to_string()))?;
            Ok((status, body))
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| JwksError::Timeout)?
    }
}

struct Entry {
    uri: String,
    config: JwtVerifierConfig,
    next_due: Instant,
    last_attempt: Option<Instant>,
}

/// Runs the fetch loop forever (the caller drops the task to stop it).
pub async fn run(
    store: Arc<Store>,
    remote: Arc<RemoteJwks>,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
) {
    let mut entries: HashMap<Key, Entry> = HashMap::new();
    let mut swaps = store.swaps();
    let mut next = Some(Instant::now());
    let mut looked: Option<Instant> = None;
    loop {
        let not_before = looked.map_or_else(Instant::now, |t| t + TICK);
        crate::wake::until(not_before, next, &mut swaps, Some(&remote.wanted_wake)).await;
        looked = Some(Instant::now());
        let Some(state) = store.current() else {
            next = None;
            continue;
        };
        let now = Instant::now();
        let wanted: HashSet<Key> =
            std::mem::take(&mut *remote.wanted.lock().unwrap_or_else(|p| p.into_inner()));
        let mut present = HashSet::new();
        for t in &state.snapshot.tenants {
            for p in &t.identity_providers {
                let IdentityProviderKind::Jwt(j) = &p.kind else {
                    continue;
                };
                let JwksSource::Remote(r) = &j.jwks else {
                    continue;
                };
                let key = (t.name.clone(), p.name.clone());
                present.insert(key.clone());
                let config = JwtVerifierConfig::from_provider(&p.name, j);
                let interval = Duration::from_secs(r.refresh_interval_seconds.max(1));
                let e = entries.entry(key.clone()).or_insert_with(|| Entry {
                    uri: r.uri.clone(),
                    config: config.clone(),
                    next_due: now,
                    last_attempt: None,
                });
                if e.uri != r.uri || e.config != config {
                    // Keys checked under the old settings (another audience, say) must not
                    // keep verifying: drop them until the refetch under the new ones.
                    let mut map = (**remote.verifiers.load()).clone();
                    map.remove(&key);
                    remote.verifiers.store(Arc::new(map));
                    e.uri = r.uri.clone();
                    e.config = config;
                    e.next_due = now;
                }
                let kid_refetch = wanted.contains(&key)
                    && e.last_attempt
                        .is_none_or(|t| now.duration_since(t) >= KID_REFETCH_MIN);
                if e.next_due > now && !kid_refetch {
                    continue;
                }
                e.last_attempt = Some(now);
                let result = match fetcher.fetch(&e.uri).await {
                    Ok(body) => Jwks::from_json(&body)
                        .and_then(|jwks| JwtVerifier::new(e.config.clone(), jwks))
                        .map_err(JwksError::from),
                    Err(err) => Err(err),
                };
                match result {
                    Ok(v) => {
                        let mut map = (**remote.verifiers.load()).clone();
                        map.insert(key.clone(), Arc::new(v));
                        remote.verifiers.store(Arc::new(map));
                        e.next_due = now + interval;
                        metrics
                            .jwks_fetches
                            .get_or_create(&ResultLabel { result: "ok" })
                            .inc();
                        tracing::info!(tenant = %key.0, idp = %key.1, uri = %e.uri, "JWKS fetched");
                    }
                    Err(err) => {
                        e.next_due = now + RETRY_AFTER.min(interval);
                        metrics
                            .jwks_fetches
                            .get_or_create(&ResultLabel { result: "failed" })
                            .inc();
                        tracing::warn!(tenant = %key.0, idp = %key.1, uri = %e.uri, error = %err,
                            "JWKS fetch failed; the previous keys (if any) keep verifying");
                    }
                }
            }
        }
        // Providers gone from the snapshot: forget them and their keys.
        entries.retain(|k, _| present.contains(k));
        let current = remote.verifiers.load();
        if current.keys().any(|k| !present.contains(k)) {
            let map: HashMap<Key, Arc<JwtVerifier>> = current
                .iter()
                .filter(|(k, _)| present.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            remote.verifiers.store(Arc::new(map));
        }
        // Until the next fetch falls due; with no remote JWKS, until a snapshot or a
        // request brings one.
        next = entries.values().map(|e| e.next_due).min();
    }
}
