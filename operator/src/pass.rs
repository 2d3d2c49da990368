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

use crate::error::{Error, RESYNC, backoff};
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
        // One span per pass: every log line (and Event failure) of the pass carries the kind
        // and whether it was a resync, and JSON logs nest them under it.
        let span = tracing::info_span!("pass", kind, resync);
        let result = tokio::select! {
            () = &mut shutdown => return,
            r = tracing::Instrument::instrument(pass(resync), span) => r,
        };
        metrics.observe(
            kind,
            start.elapsed(),
            result.as_ref().err().map(Error::label),
        );
        release_freed_memory();
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

/// Hands the memory a whole-world pass allocated and freed back to the kernel.
///
/// A pass builds and drops a view of every object; glibc keeps what was freed in its arenas
/// (one per thread that allocated), so without this the resident size stays at the largest
/// pass ever made, never at what is live. Measured in issue 17 (`make bench-operator`,
/// docs/benchmarks.md). `malloc_trim(0)` also returns free pages inside the arenas, not only
/// at their top; it costs a walk of the free lists, a few milliseconds after a pass that took
/// hundreds. Other C libraries: nothing (musl returns memory on its own).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own arenas under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Large allocations straight from the kernel (mmap), returned to it when freed: called once
/// at start (`main`), before the caches fill.
///
/// glibc serves allocations from 128 KiB up with mmap, but raises that threshold each time
/// such a block is freed (up to 32 MiB), so after the first pass the large, short-lived
/// buffers of the next ones (a pass's lists of statuses, JSON bodies, the watch lists'
/// pages) land inside the arenas between long-lived cache entries, and stay resident as
/// fragments that `malloc_trim` cannot return. A fixed threshold (set explicitly, glibc stops
/// adjusting it) keeps them out: `make bench-operator` at 10,000 objects settled at 73 MB
/// instead of 77 and stayed at 77 MB after the edits instead of 86 (issue 17,
/// docs/benchmarks.md). Other C libraries: nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt takes two integers and only sets glibc's malloc parameters, under the
    // main arena's lock; it is safe to call from any thread at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn runs_at_start_and_once_per_burst_then_stops() {
        let runs = Arc::new(AtomicU32::new(0));
        let resyncs = Arc::new(AtomicU32::new(0));
        let (mut tx, rx) = mpsc::channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(drive(
            "Test",
            Arc::new(Metrics::default()),
            rx,
            async move {
                let _ = stopped.await;
            },
            {
                let runs = runs.clone();
                let resyncs = resyncs.clone();
                move |resync| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if resync {
                        resyncs.fetch_add(1, Ordering::SeqCst);
                    }
                    async { Ok(()) }
                }
            },
        ));
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one pass at start");
        assert_eq!(
            resyncs.load(Ordering::SeqCst),
            1,
            "the first pass is a full one"
        );
        // A burst of pokes is one pass.
        for _ in 0..5 {
            let _ = tx.try_send(());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one pass per burst");
        assert_eq!(resyncs.load(Ordering::SeqCst), 1, "a poke is not a resync");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_pass_retries_without_a_poke() {
        let runs = Arc::new(AtomicU32::new(0));
        let (_tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(drive(
            "Test",
            Arc::new(Metrics::default()),
            rx,
            std::future::pending(),
            {
                let runs = runs.clone();
                move |_| {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            Err(Error::CacheDropped("test"))
                        } else {
                            Ok(())
                        }
                    }
                }
            },
        ));
        // The first retry comes after backoff(1) = 2s (+ the debounce).
        tokio::time::sleep(backoff(1) + DEBOUNCE * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        task.abort();
    }
}
