//! The single writer of the serving state: it polls the snapshot file, compiles a changed
//! one, and swaps it in atomically.
//!
//! ```text
//!  every poll: read file --same bytes as last time?--> nothing
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
//! removes or re-ports an HTTP(S) listener, or switches TLS on or off, is still applied
//! (routes, policies, certificates, client CAs, upstreams) and a warning says the listener
//! change needs a restart.

use crate::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::state::{BuildError, Compiled};
use arc_swap::ArcSwapOption;
use rustronaut_contract::snapshot::{Listener, ListenerProtocol};
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
    #[error("snapshot {path} refused: {source}")]
    Refused {
        /// File.
        path: PathBuf,
        /// Cause.
        source: BuildError,
    },
}

/// The serving state: `None` until a first valid snapshot is loaded.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Compiled>,
}

impl Store {
    /// The state to serve this request with.
    pub fn current(&self) -> Option<Arc<Compiled>> {
        self.current.load_full()
    }

    /// Replaces the state.
    pub fn swap(&self, next: Arc<Compiled>) {
        self.current.store(Some(next));
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

/// Polls one snapshot file.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    last: Option<Vec<u8>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

/// The listener facts that need a rebind when they change.
fn bound_shape(listeners: &[Listener]) -> Vec<(String, u16, bool)> {
    let mut v: Vec<_> = listeners
        .iter()
        .filter(|l| matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https))
        .map(|l| {
            (
                l.name.clone(),
                l.port,
                l.protocol == ListenerProtocol::Https,
            )
        })
        .collect();
    v.sort();
    v
}

impl Reloader {
    /// A reloader of `path` into `store`.
    pub fn new(path: PathBuf, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            path,
            last: None,
            store,
            metrics,
        }
    }

    /// Reads the file and applies it when it changed. A refused snapshot is remembered, so
    /// it is reported once, not on every poll, until the file changes again.
    pub fn poll(&mut self) -> Result<Polled, ReloadError> {
        let bytes = std::fs::read(&self.path).map_err(|source| ReloadError::Read {
            path: self.path.clone(),
            source,
        })?;
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return Ok(Polled::Unchanged);
        }
        let result = Compiled::load(&bytes);
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
                tracing::info!(version = %version, path = %self.path.display(), "snapshot applied");
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
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}
