//! What fails and how it is retried, for the whole crate: the one [`Error`] every
//! reconciler and pass returns (all transient: API calls), the exponential [`backoff`] after
//! a failure and the [`RESYNC`] interval without one.
//!
//! The bottom of the crate: it uses no other module of it.

use std::time::Duration;

/// How often a Gateway is reconciled without any change (a safety net for missed events).
pub const RESYNC: Duration = Duration::from_secs(300);
/// First retry delay after a failed reconcile (an API call failed); doubles per failure.
pub const RETRY: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `failures` (1-based): 2s, 4s, 8s ... at most [`RETRY_MAX`], so
/// a transient failure retries quickly and a persistent one does not hammer the API server.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY.saturating_mul(factor).min(RETRY_MAX)
}

/// Failures of a reconcile or a pass: all transient (API calls). An invalid spec is not an
/// error here: it becomes a condition and the reconcile succeeds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a generated object failed.
    #[error("failed to apply {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting an object that is no longer wanted failed.
    #[error("failed to delete {kind} {namespace}/{name}: {source}")]
    Delete {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading the current snapshot Secret failed.
    #[error("failed to read Secret {namespace}/{name}: {source}")]
    Read {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the Gateway's status failed.
    #[error("failed to write the status of Gateway {namespace}/{name}: {source}")]
    Status {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the status of another kind (Resource, Policy, Tenant) failed.
    #[error("failed to write the status of {kind} {namespace}/{name}: {source}")]
    ObjectStatus {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace (empty for a Tenant).
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Listing objects (to prune what is no longer wanted) failed.
    #[error("failed to list {kind}: {source}")]
    List {
        /// Kind of the objects.
        kind: &'static str,
        /// The API error.
        source: kube::Error,
    },
    /// A reflector stopped before its first list.
    #[error("the {0} cache stopped before it was filled")]
    CacheDropped(&'static str),
    /// Reading the Secrets Tenants and Gateways name failed.
    #[error("failed to read the Secrets named by Tenants and Gateways: {0}")]
    SecretRefresh(#[source] kube::Error),
    /// The system random number generator failed (a key or token could not be made).
    #[error("failed to generate {0}: the system random number generator failed")]
    Random(String),
    /// A Secret the operator generates exists but was not made by it for this Gateway.
    #[error(
        "Secret {namespace}/{name} ({what}) is not the operator's for this Gateway (labels or controller owner reference missing); it is not used: delete it to have one generated"
    )]
    ForeignSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What it should hold.
        what: String,
    },
}

impl Error {
    /// A short, bounded label for metrics (the variant).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "Apply",
            Self::Delete { .. } => "Delete",
            Self::Read { .. } => "Read",
            Self::Status { .. } => "Status",
            Self::ObjectStatus { .. } => "ObjectStatus",
            Self::List { .. } => "List",
            Self::CacheDropped(_) => "CacheDropped",
            Self::SecretRefresh(_) => "SecretRefresh",
            Self::Random(_) => "Random",
            Self::ForeignSecret { .. } => "ForeignSecret",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let got: Vec<u64> = [1, 2, 3, 4, 8, 9, 100, u32::MAX]
            .into_iter()
            .map(|n| backoff(n).as_secs())
            .collect();
        assert_eq!(got, [2, 4, 8, 16, 256, 300, 300, 300]);
        assert_eq!(backoff(0), RETRY);
    }
}
