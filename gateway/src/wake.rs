//! How the gateway's background loops wait: until their next deadline, the next snapshot
//! swap, or a request from the request path, whichever comes first.
//!
//! Why not a fixed tick (what this replaced): the health-check loop looked every 100 ms, the
//! JWKS fetch loop every 200 ms and the ServiceAccount key loop every 250 ms, whether or not
//! there was anything to check or fetch, so an idle gateway's admin thread woke about 33
//! times a second (`voluntary_ctxt_switches`, 327 in 10 s, issue 19). A sidecar runs next
//! to every workload of a mesh and is idle most of the time, so those wake-ups were its
//! whole idle cost. Each loop now computes when it next has work (a due check, a due
//! fetch) and sleeps until then; what can give it work earlier wakes it: a new snapshot
//! ([`crate::reload::Store::swaps`]) or a token naming an unknown key id (the [`Notify`]s
//! of [`crate::jwks::RemoteJwks`]). The loops keep their old tick as the shortest sleep, so
//! they never look more often than before.

use std::time::Instant;
use tokio::sync::{Notify, watch};

/// Why [`until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The deadline passed.
    Deadline,
    /// The snapshot was swapped.
    Swap,
    /// The request path asked for work (a refetch).
    Asked,
}

/// Waits until `deadline` (never, with `None`), a swap seen by `swaps`, or a notification
/// of `asked`, but not before `not_before`: a loop passes the time of its last look plus
/// its old tick, so neither frequent swaps nor a client sending tokens with unknown key ids
/// as fast as it can make it look more often than it used to (what came meanwhile is
/// kept, and seen at `not_before`). A store that is gone (its sender dropped) never wakes
/// the caller again, so a loop outliving it sleeps to its deadlines instead of spinning.
pub async fn until(
    not_before: Instant,
    deadline: Option<Instant>,
    swaps: &mut watch::Receiver<()>,
    asked: Option<&Notify>,
) -> Woke {
    tokio::time::sleep_until(not_before.into()).await;
    let timer = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let swap = async {
        if swaps.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let ask = async {
        match asked {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = timer => Woke::Deadline,
        () = swap => Woke::Swap,
        () = ask => Woke::Asked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn wakes_for_the_deadline_a_swap_or_a_request_and_nothing_else() {
        let (tx, mut rx) = watch::channel(());
        let asked = Notify::new();
        let t0 = Instant::now();
        let soon = t0 + 50 * MS;
        assert_eq!(
            until(t0, Some(soon), &mut rx, Some(&asked)).await,
            Woke::Deadline
        );
        assert!(t0.elapsed() >= 50 * MS);

        tx.send_replace(());
        assert_eq!(until(t0, None, &mut rx, Some(&asked)).await, Woke::Swap);

        // A request made while nobody waits is kept for the next wait (`notify_one`).
        asked.notify_one();
        assert_eq!(until(t0, None, &mut rx, Some(&asked)).await, Woke::Asked);

        // Nothing pending and no deadline: it sleeps (the swap and the request above were
        // each taken once).
        tokio::select! {
            w = until(t0, None, &mut rx, Some(&asked)) => panic!("woke without a cause: {w:?}"),
            () = tokio::time::sleep(200 * MS) => {}
        }
    }

    /// What comes before `not_before` is kept for then, not answered at once.
    #[tokio::test]
    async fn causes_wait_for_not_before() {
        let (tx, mut rx) = watch::channel(());
        let asked = Notify::new();
        asked.notify_one();
        tx.send_replace(());
        let t0 = Instant::now();
        let w = until(t0 + 80 * MS, None, &mut rx, Some(&asked)).await;
        assert!(t0.elapsed() >= 80 * MS);
        assert!(matches!(w, Woke::Swap | Woke::Asked), "{w:?}");
    }

    #[tokio::test]
    async fn a_dropped_store_does_not_make_the_loop_spin() {
        let (tx, mut rx) = watch::channel(());
        drop(tx);
        let t0 = Instant::now();
        assert_eq!(
            until(t0, Some(t0 + 100 * MS), &mut rx, None).await,
            Woke::Deadline
        );
        assert!(t0.elapsed() >= 100 * MS);
    }
}
