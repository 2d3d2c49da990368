//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never write
//! at once: only the holder runs the controllers.
//!
//! ```text
//!  candidate --(get Lease; free, expired or ours?)--> update with resourceVersion
//!      |  409 Conflict: someone else won this round -> wait retry_period, try again
//!      v
//!  leader: renew every retry_period; no successful renewal within renew_deadline
//!          -> leadership lost (the binary stops its controllers and exits, so Kubernetes
//!             restarts it as a plain candidate: no split brain, no half-stopped state)
//!  graceful shutdown: release (holder cleared), so the next replica takes over at once
//! ```
//!
//! The same algorithm as client-go's leaderelection: optimistic concurrency on the Lease's
//! resourceVersion decides every race, and a holder that stops renewing is replaced once
//! `renewTime + leaseDurationSeconds` has passed. [`decide`] is the pure core.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;

/// Lease timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name. Default: `rustronaut-operator`.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal. Default: 15s (as client-go).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up. Default: 10s.
    pub renew_deadline: Duration,
    /// Time between attempts. Default: 2s.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The defaults for `identity` in `namespace`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: "rustronaut-operator".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate should do with the Lease it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it: nobody holds it, or the holder stopped renewing.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease's spec (None: no Lease yet).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let expired = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .is_none_or(|t| t.0.checked_add(duration).is_ok_and(|end| end < now));
    if expired {
        Decision::Acquire
    } else {
        Decision::Wait { holder }
    }
}

/// A candidate for the Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    /// A candidate using `client`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, acquire: bool, now: Timestamp) -> LeaseSpec {
        let now = MicroTime(now);
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(15),
            ),
            acquire_time: if acquire {
                Some(now.clone())
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if acquire && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// One attempt: true when this candidate holds the Lease afterwards. A lost race (409)
    /// is `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, true, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let acquire = match decide(lease.spec.as_ref(), &self.cfg.identity, now) {
            Decision::Wait { .. } => return Ok(false),
            Decision::Acquire => true,
            Decision::Renew => false,
        };
        lease.spec = Some(self.spec(lease.spec.as_ref(), acquire, now));
        // `replace` carries the resourceVersion we read: if anyone wrote in between, 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it, so another candidate takes over without waiting
    /// for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !ours {
            return Ok(());
        }
        if let Some(s) = lease.spec.as_mut() {
            s.holder_identity = None;
            s.lease_duration_seconds = Some(1);
        }
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate is the leader, then keeps renewing in a background task.
    /// The returned [`Leadership`] says when leadership is lost.
    pub async fn acquire(self) -> Leadership {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: acquiring the Lease failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
        tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became the leader");
        let (tx, rx) = watch::channel(true);
        let elector = self.clone();
        let renewing = tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(elector.cfg.retry_period).await;
                match elector.try_acquire_or_renew().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("leader election: another candidate holds the Lease");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renewing failed");
                        if last_ok.elapsed() > elector.cfg.renew_deadline {
                            tracing::error!("leader election: no renewal within the deadline");
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(false);
        });
        Leadership {
            elector: self,
            leading: rx,
            renewing,
        }
    }
}

/// Held leadership.
pub struct Leadership {
    elector: Elector,
    leading: watch::Receiver<bool>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Completes when leadership is lost. Owned and `Send + Sync`, so it can be a controller's
    /// shutdown trigger.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.leading.clone();
        async move {
            let _ = rx.wait_for(|leading| !*leading).await;
        }
    }

    /// Whether this candidate still leads.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Stops renewing and releases the Lease (graceful shutdown).
    pub async fn release(self) -> Result<(), kube::Error> {
        self.renewing.abort();
        self.elector.release().await
    }

    /// Stops renewing without releasing: what a crash looks like to the others (tests).
    pub fn abandon(self) {
        self.renewing.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::from_second(1_000_000).unwrap();
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(
                now.checked_sub(SignedDuration::from_secs(renewed_secs_ago))
                    .unwrap(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&spec(None, 1, 15)), "a", now),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&spec(Some(""), 1, 15)), "a", now),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), 100, 15)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 5, 15)), "a", now),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 16, 15)), "a", now),
            Decision::Acquire,
            "a holder that stopped renewing is replaced"
        );
        let never_renewed = LeaseSpec {
            holder_identity: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(decide(Some(&never_renewed), "a", now), Decision::Acquire);
    }
}
