//! "Why was I denied?": the decision for a request, every rule that was considered with the
//! clauses it failed, and the closest Allow rule, the one that failed the fewest clauses,
//! with the clause that failed first. Used by the console's explain page, the CLI and the
//! operator's Policy test failures ("got Deny: closest allow acme-apps/grafana-sre rule sre
//! failed RequireFailed").
//!
//! Unlike [`crate::eval::evaluate`] it evaluates every clause of every rule (no
//! short-circuit) and allocates freely: it is for people, not for the request path. The
//! decision it returns is exactly the one `evaluate` returns.

use crate::eval::{
    ClauseFailure, Clock, Decision, Request, evaluate, lists_for, rule_failures, unresolved_failure,
};
use crate::policy::{PolicyAction, PolicyMode, PolicyRef, PolicySet};
use serde::Serialize;
use std::sync::Arc;
use std::time::SystemTime;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The requested Resource is not in the policy set.
    #[error("resource {namespace}/{name} is not served by this gateway")]
    UnknownResource {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// One rule that was considered, and what it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTrace {
    /// The policy.
    pub policy: PolicyRef,
    /// The rule; `None` for an unresolved policy, which is traced once as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// Allow or Deny.
    pub action: PolicyAction,
    /// Enforce or DryRun.
    pub mode: PolicyMode,
    /// Failed clauses, in clause order (to, when, from, require, exclude); empty: matched.
    pub failures: Vec<ClauseFailure>,
}

impl RuleTrace {
    /// Whether the rule matched.
    pub fn matched(&self) -> bool {
        self.failures.is_empty()
    }

    /// The first clause that failed.
    pub fn first_failure(&self) -> Option<&ClauseFailure> {
        self.failures.first()
    }
}

/// The explanation of one decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The decision, identical to what `evaluate` returns.
    pub decision: Decision,
    /// Every rule of every policy targeting the request (enforced and DryRun), in rank order.
    pub rules: Vec<RuleTrace>,
    /// Among enforced, resolved Allow rules, the one with the fewest failed clauses (each
    /// failed `require` entry and each matching `exclude` entry counts); ties go to the
    /// first in rank order. `None` when no such rule targets the request.
    pub closest_allow: Option<RuleTrace>,
}

/// Explains the decision for `request` at `now`.
pub fn explain(
    set: &PolicySet,
    request: &Request<'_>,
    now: SystemTime,
    decision_id: impl Into<String>,
) -> Result<Explanation, ExplainError> {
    let Some(entry) = set.resource_entry(request.namespace, request.name) else {
        return Err(ExplainError::UnknownResource {
            namespace: request.namespace.to_string(),
            name: request.name.to_string(),
        });
    };
    let decision = evaluate(set, request, now, decision_id);
    let lists = lists_for(entry, request.section);
    let tenant: &str = &entry.tenant;
    let mut clock = Clock::new(now);

    // Rank order across deny and allow lists: indices are ranks.
    let mut indices: Vec<u32> = lists.deny.iter().chain(&lists.allow).copied().collect();
    indices.sort_unstable();
    let mut rules = Vec::new();
    for i in indices {
        let p = &set.policies[i as usize];
        if let Some(e) = &p.unresolved {
            rules.push(RuleTrace {
                policy: p.key.clone(),
                rule: None,
                action: p.action,
                mode: p.mode,
                failures: vec![unresolved_failure(e)],
            });
            continue;
        }
        for rule in &p.rules {
            rules.push(RuleTrace {
                policy: p.key.clone(),
                rule: Some(rule.name.clone()),
                action: p.action,
                mode: p.mode,
                failures: rule_failures(p, rule, request, tenant, &mut clock),
            });
        }
    }
    let closest_allow = rules
        .iter()
        .filter(|t| {
            t.action == PolicyAction::Allow && t.mode == PolicyMode::Enforce && t.rule.is_some()
        })
        .min_by_key(|t| t.failures.len())
        .cloned();
    Ok(Explanation {
        decision,
        rules,
        closest_allow,
    })
}
