//! The single writer of the serving state: it takes snapshot bytes from its source (a file it
//! polls, or a Kubernetes Secret watched by [`crate::kube_source`]), compiles a changed one,
//! and swaps it in atomically.
//!
//! ```text
//!  every poll / watch event: bytes --same bytes as last time?--> nothing
//!                  | changed
//!                  v
//!      Compiled::load --error--> log + snapshot_refused{reason}; the last good state serves
//!                  | ok
//!                  v
//!      Store::swap (arc-swap): new requests see the new state; requests in flight keep the
//!      Arc they started with, so nothing is dropped or half-switched
//! ```
//!
//! Listeners are bound once at start-up from the first snapshot; a later snapshot that adds,
//! removes, re-ports or changes the protocol of a listener (HTTP to HTTPS included) is still applied
//! (routes, policies, certificates, client CAs, upstreams) and a warning says the listener
//! change needs a restart.

use crate::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::state::{BuildError, Compiled, check_upstream_addresses};
use arc_swap::ArcSwapOption;
use rustronaut_contract::snapshot::Listener;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a poll did not apply a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("failed to read snapshot {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The snapshot was refused.
    #[error("snapshot from {origin} refused: {source}")]
    Refused {
        /// Where it came from (file path or Secret namespace/name).
        origin: String,
        /// Cause.
        source: BuildError,
    },
}

/// The serving state: `None` until a first valid snapshot is loaded.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Compiled>,
    /// Told of every swap, so the background loops (health checks, JWKS and ServiceAccount
    /// key fetches) sleep until they have work instead of looking several times a second
    /// (see [`crate::wake`]).
    swaps: tokio::sync::watch::Sender<()>,
}

impl Store {
    /// The state to serve this request with.
    pub fn current(&self) -> Option<Arc<Compiled>> {
        self.current.load_full()
    }

    /// Replaces the state.
    pub fn swap(&self, next: Arc<Compiled>) {
        self.current.store(Some(next));
        self.swaps.send_replace(());
    }

    /// A receiver that sees every later [`swap`](Self::swap) as a change.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<()> {
        self.swaps.subscribe()
    }
}

/// What a poll did.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// The file did not change.
    Unchanged,
    /// A new snapshot is serving, with this version.
    Applied(String),
}

/// Applies the snapshots of one source.
#[derive(Debug)]
pub struct Reloader {
    /// Where snapshots come from, for logs and errors.
    origin: String,
    /// The file polled by [`Reloader::poll`], if the source is a file.
    path: Option<PathBuf>,
    last: Option<Vec<u8>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Whether an edge snapshot may name loopback upstreams ([`check_upstream_addresses`]).
    allow_loopback: bool,
}

/// The listener facts that need a rebind when they change: name, port and protocol (HTTP
/// vs HTTPS included). TLS on a TCP listener is not among them: L4 listeners read it from
/// the current snapshot per connection.
fn bound_shape(listeners: &[Listener]) -> Vec<(String, u16, u8)> {
    let mut v: Vec<_> = listeners
        .iter()
        .map(|l| (l.name.clone(), l.port, l.protocol as u8))
        .collect();
    v.sort();
    v
}

impl Reloader {
    /// A reloader of the file `path` into `store`.
    pub fn new(path: PathBuf, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            origin: path.display().to_string(),
            path: Some(path),
            last: None,
            store,
            metrics,
            allow_loopback: false,
        }
    }

    /// A reloader fed through [`Reloader::offer`] by another source (`origin` names it).
    pub fn for_source(origin: String, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            origin,
            path: None,
            last: None,
            store,
            metrics,
            allow_loopback: false,
        }
    }

    /// Accepts loopback upstreams in edge snapshots too (`--allow-loopback-upstreams`: tests
    /// and local development); a sidecar's snapshot always may name them.
    pub fn allow_loopback_upstreams(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// Reads the file and applies it when it changed. A refused snapshot is remembered, so
    /// it is reported once, not on every poll, until the file changes again.
    pub fn poll(&mut self) -> Result<Polled, ReloadError> {
        let Some(path) = &self.path else {
            return Ok(Polled::Unchanged);
        };
        let bytes = std::fs::read(path).map_err(|source| ReloadError::Read {
            path: path.clone(),
            source,
        })?;
        self.offer(bytes)
    }

    /// Applies `bytes` when they differ from the last snapshot offered.
    pub fn offer(&mut self, bytes: Vec<u8>) -> Result<Polled, ReloadError> {
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return Ok(Polled::Unchanged);
        }
        let allow_loopback = self.allow_loopback;
        let result = Compiled::load(&bytes).and_then(|c| {
            check_upstream_addresses(&c.snapshot, allow_loopback)?;
            Ok(c)
        });
        self.last = Some(bytes);
        match result {
            Ok(next) => {
                let version = next.version.clone();
                if let Some(prev) = self.store.current()
                    && bound_shape(&prev.snapshot.listeners)
                        != bound_shape(&next.snapshot.listeners)
                {
                    tracing::warn!(
                        version = %version,
                        "listener set changed: routes and policies are applied now, listener changes need a restart"
                    );
                }
                for p in next.policies.problems() {
                    tracing::warn!(problem = ?p, "policy fails closed");
                }
                self.store.swap(Arc::new(next));
                self.metrics.set_version(&version);
                self.metrics
                    .reloads
                    .get_or_create(&ResultLabel { result: "applied" })
                    .inc();
                tracing::info!(version = %version, origin = %self.origin, "snapshot applied");
                Ok(Polled::Applied(version))
            }
            Err(source) => {
                self.metrics
                    .reloads
                    .get_or_create(&ResultLabel { result: "refused" })
                    .inc();
                self.metrics
                    .refused
                    .get_or_create(&ReasonLabel {
                        reason: source.kind(),
                    })
                    .inc();
                Err(ReloadError::Refused {
                    origin: self.origin.clone(),
                    source,
                })
            }
        }
    }
}
