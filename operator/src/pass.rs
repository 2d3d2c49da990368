//! The loop behind the whole-world controllers (the Tenant controller and the Resource/Policy
//! status pass): wait for a change, let a burst of changes settle, run one pass over every
//! object, repeat.
//!
//! Why passes and not one reconcile per object: the conditions of a Resource, Policy or Tenant
//! depend on many other objects (claims are decided among all Tenants, `TestsPassed` against
//! the whole effective policy set, `Programmed` against every Gateway's snapshot). One pass
//! compiles the world once and writes only what differs; a per-object reconciler would compile
//! it once per object. Deleted objects need no special case either: the next pass simply no
//! longer wants what they owned.

use crate::gateway::{Error, RESYNC, backoff};
use crate::metrics::Metrics;
use futures::StreamExt;
use futures::channel::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a burst of changes may settle before a pass runs (a `kubectl apply` of a
/// directory is one pass, not one per object).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Runs `pass` once at start, then after each poke of `triggers`, at least every [`RESYNC`]
/// (`pass(true)`: a resync, which may drop caches of what was written), and after a failure
/// with exponential [`backoff`]. Returns when `shutdown` completes.
pub async fn drive<F, Fut>(
    kind: &'static str,
    metrics: Arc<Metrics>,
    triggers: mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()> + Send,
    mut pass: F,
) where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut triggers = Some(triggers);
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    let mut resync = true;
    loop {
        if !wait.is_zero() {
            let poked = async {
                match triggers.as_mut() {
                    Some(t) => t.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => resync = failures == 0,
                t = poked => {
                    if t.is_none() {
                        // Every sender is gone (the caches stopped): resyncs only.
                        triggers = None;
                    }
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(DEBOUNCE) => {}
        }
        if let Some(t) = triggers.as_mut() {
            while t.try_recv().is_ok() {}
        }
        let start = Instant::now();
        let result = tokio::select! {
            () = &mut shutdown => return,
            r = pass(resync) => r,
        };
        metrics.observe(
            kind,
            start.elapsed(),
            result.as_ref().err().map(Error::label),
        );
        resync = false;
        match result {
            Ok(()) => {
                failures = 0;
                wait = RESYNC;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                wait = backoff(failures);
                tracing::warn!(kind, error = %e, failures, retry_in = ?wait, "pass failed; retrying");
            }
        }
    }
}
