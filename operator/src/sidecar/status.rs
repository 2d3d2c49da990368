//! The status of a sidecar Resource, pure: from what the last reconcile built and published
//! ([`Built`]) and what the pods say now ([`View`]). Pod changes recompute only this, from
//! the [`Built`] the reconciler remembered, never the snapshot.
//!
//! ```text
//!  Accepted    False: InvalidSelector, NoTenant, QuotaExceeded, Invalid (not a sidecar)
//!  Programmed  True when a snapshot is in the Secret; False with the build's reason (the
//!              last good snapshot, if any, keeps serving)
//!  Ready       the first of: Accepted, Programmed, SelectorOverlap (another sidecar
//!              Resource selects one of the same pods), UnprotectedPods (selected pods
//!              without this Resource's current sidecar, up to 10 named); else True
//!  Reconciling / Stalled as kstatus reads Ready's reason (crate::conditions::progress)
//! ```
//!
//! Zero selected pods is Ready: nothing runs unprotected, and the configuration every future
//! pod will load is published (a Deployment scaled to zero, or a Resource created before
//! its workload, is not an error). `status.workload` says `selectedPods: 0`.

use super::pods::View;
use crate::conditions::{condition, progress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rustronaut_crds::common::Condition;
use rustronaut_crds::conditions::{reasons, types};
use rustronaut_crds::resource::{AppliedPolicy, ResourceStatus};

/// A False condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A constant of [`reasons`].
    pub reason: &'static str,
    /// For a person.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What one reconcile of a sidecar Resource concluded, kept for the status writes that pod
/// changes cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The generation it was built from.
    pub generation: Option<i64>,
    /// Accepted: the tenant, or why not.
    pub accepted: Result<String, Refusal>,
    /// Programmed: where the snapshot is published, or why not.
    pub programmed: Result<String, Refusal>,
}

/// The Resource's whole status. `view` is None when the selector cannot be evaluated
/// (then `accepted` says why).
pub fn status(
    previous: &[Condition],
    now: &Time,
    built: &Built,
    view: Option<&View>,
    policies: &[AppliedPolicy],
) -> ResourceStatus {
    let generation = built.generation;
    let cond = |type_: &str, r: &Result<String, Refusal>, good: &str| match r {
        Ok(message) => condition(
            previous,
            now,
            generation,
            type_,
            true,
            good,
            message.clone(),
        ),
        Err(f) => condition(
            previous,
            now,
            generation,
            type_,
            false,
            f.reason,
            f.message.clone(),
        ),
    };
    let accepted = cond(types::ACCEPTED, &built.accepted, reasons::ACCEPTED);
    let programmed = cond(types::PROGRAMMED, &built.programmed, reasons::PROGRAMMED);
    let pods: Result<String, Refusal> = match view {
        None => Err(Refusal::new(
            reasons::INVALID_SELECTOR,
            "the selector cannot be evaluated",
        )),
        Some(v) if !v.overlaps.is_empty() => Err(Refusal::new(
            reasons::SELECTOR_OVERLAP,
            format!(
                "sidecar Resource {} also selects some of these pods: injection refuses a pod two sidecar Resources select, so narrow one selector",
                v.overlaps.join(", ")
            ),
        )),
        Some(v) if v.workload.protected_pods < v.workload.selected_pods => {
            let w = &v.workload;
            let missing = w.selected_pods - w.protected_pods;
            let mut names = w.unprotected_pods.join(", ");
            if usize::try_from(missing).unwrap_or(0) > w.unprotected_pods.len() {
                names.push_str(&format!(
                    " and {} more",
                    usize::try_from(missing).unwrap_or(0) - w.unprotected_pods.len()
                ));
            }
            Err(Refusal::new(
                reasons::UNPROTECTED_PODS,
                format!(
                    "{missing} of {} selected pods run without this Resource's current sidecar: {names}; restart them in a namespace (or with a pod label) that opts in to injection",
                    w.selected_pods
                ),
            ))
        }
        Some(v) if v.workload.selected_pods == 0 => {
            Ok("snapshot published; no pod selected yet".to_string())
        }
        Some(v) => Ok(format!(
            "snapshot published; all {} selected pods run its sidecar",
            v.workload.selected_pods
        )),
    };
    let ready = [&accepted, &programmed]
        .into_iter()
        .find(|c| c.status != "True")
        .map_or_else(
            || cond(types::READY, &pods, reasons::READY),
            |bad| {
                condition(
                    previous,
                    now,
                    generation,
                    types::READY,
                    false,
                    &bad.reason,
                    format!("{}: {}", bad.type_, bad.message),
                )
            },
        );
    let mut conditions = vec![accepted, programmed];
    conditions.extend(progress(previous, now, generation, &ready));
    conditions.push(ready);
    ResourceStatus {
        conditions,
        observed_generation: generation,
        policies: policies.to_vec(),
        workload: view.map(|v| v.workload.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_crds::resource::WorkloadStatus;

    fn now() -> Time {
        Time("2026-12-03T10:00:00Z".parse().unwrap())
    }

    fn built() -> Built {
        Built {
            generation: Some(3),
            accepted: Ok("accepted for tenant acme".into()),
            programmed: Ok("snapshot published in Secret shop/orders-sidecar".into()),
        }
    }

    fn view(selected: i32, protected: i32, unprotected: &[&str], overlaps: &[&str]) -> View {
        View {
            workload: WorkloadStatus {
                selected_pods: selected,
                protected_pods: protected,
                unprotected_pods: unprotected.iter().map(|s| s.to_string()).collect(),
            },
            overlaps: overlaps.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn get<'a>(s: &'a ResourceStatus, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn ready_when_published_and_every_pod_is_protected_or_none_is_selected() {
        for v in [view(2, 2, &[], &[]), view(0, 0, &[], &[])] {
            let s = status(&[], &now(), &built(), Some(&v), &[]);
            let ready = get(&s, types::READY).unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("True", "Ready")
            );
            assert_eq!(ready.observed_generation, Some(3));
            assert!(get(&s, types::STALLED).is_none());
            assert_eq!(s.workload.as_ref(), Some(&v.workload));
        }
    }

    #[test]
    fn unprotected_pods_are_named_and_stall() {
        let v = view(
            13,
            1,
            &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
            &[],
        );
        let s = status(&[], &now(), &built(), Some(&v), &[]);
        let ready = get(&s, types::READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, reasons::UNPROTECTED_PODS);
        assert!(
            ready.message.starts_with("12 of 13 selected pods run without this Resource's current sidecar: a, b, c, d, e, f, g, h, i, j and 2 more;"),
            "{}",
            ready.message
        );
        assert_eq!(
            get(&s, types::STALLED).unwrap().reason,
            reasons::UNPROTECTED_PODS
        );
    }

    #[test]
    fn overlap_comes_before_unprotected_and_a_refusal_before_both() {
        let v = view(2, 0, &["a", "b"], &["other"]);
        let s = status(&[], &now(), &built(), Some(&v), &[]);
        assert_eq!(
            get(&s, types::READY).unwrap().reason,
            reasons::SELECTOR_OVERLAP
        );
        let refused = Built {
            accepted: Err(Refusal::new(reasons::INVALID_SELECTOR, "bad operator")),
            programmed: Err(Refusal::new(reasons::INVALID_SELECTOR, "not built")),
            ..built()
        };
        let s = status(&[], &now(), &refused, None, &[]);
        let ready = get(&s, types::READY).unwrap();
        assert_eq!(ready.reason, reasons::INVALID_SELECTOR);
        assert_eq!(ready.message, "Accepted: bad operator");
        assert_eq!(get(&s, types::ACCEPTED).unwrap().status, "False");
        assert!(s.workload.is_none());
    }
}
