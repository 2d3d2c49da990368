//! Pure: the status of every Resource, Policy and Tenant, computed from one [`World`] and the
//! outcome of each Gateway's build. No client; the shells ([`crate::status`],
//! [`crate::tenant`]) gather the inputs from the caches and write what differs.
//!
//! Why whole-world functions rather than one object at a time: every condition here depends
//! on other objects (namespace claims on every Tenant, `TestsPassed` on the whole effective
//! policy set, `Programmed` on every Gateway's snapshot), so computing them all in one pass
//! compiles the world once instead of once per object.
//!
//! Conditions keep their `lastTransitionTime` while their status holds, so an unchanged world
//! yields an identical status and the shells write nothing.
//!
//! - Resource: `Accepted` (False: `NoTenant`, `QuotaExceeded`, `NotAllowedByGateway`,
//!   `HostnameOutsideTenant`, `HostnameConflict`, `InvalidParameters`, `Invalid`), `ResolvedRefs` (False: a missing
//!   Gateway, Service or site, named), `Programmed` (True when in the snapshot of every Gateway
//!   it references, named), `Reachable` (False/`NoAllowPolicy`: no enforcing Allow Policy
//!   selects it, so default deny refuses every request), `Ready`; `policies` lists the
//!   Policies that select it.
//! - Policy: `Accepted` (False: `NoTenant`, `QuotaExceeded`, or what `validate::policy`
//!   finds), `ResolvedRefs`
//!   (False: targetRefs that match no Resource, a missing rule, a missing identity-provider
//!   Secret), `TestsPassed` (the embedded tests against the whole effective set; False names
//!   the first failing test), `Ready`.
//! - Tenant: `Accepted` (False: `NamespaceClaimed`/`DomainClaimed` naming the holder, or
//!   `Invalid`), `ResolvedRefs` (False/`SecretNotFound` naming identity providers whose
//!   Secrets are missing), `Ready`, usage counts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use rustronaut_compile::quota::OverQuota;
use rustronaut_compile::snapshot::{BuildOutcome, Impact, Problem};
use rustronaut_compile::{TestOutcome, World};
use rustronaut_contract::snapshot::ObjectRef;
use rustronaut_crds::conditions::{reasons, types};
use rustronaut_crds::policy::{PolicyAction, PolicyMode};
use rustronaut_crds::policy::{PolicyStatus, PolicyTargetStatus};
use rustronaut_crds::resource::{AppliedPolicy, ResourceStatus};
use rustronaut_crds::tenancy::{Claims, ResourceIndex, policy_targets};
use rustronaut_crds::tenant::{Quotas, TenantStatus};
use rustronaut_crds::validate::hostname_within;
use rustronaut_crds::{Policy, Resource, Tenant};
use std::collections::{BTreeMap, BTreeSet};

/// What became of one Gateway's build: what it serves and its problems, or why it failed (the
/// last good snapshot keeps serving, so nothing new is programmed there). Shared between the
/// Gateway controller and the status pass ([`crate::cache::builds`]), hence the `Arc`.
pub type Builds = BTreeMap<ObjectRef, std::sync::Arc<Result<BuildSummary, String>>>;

/// What conditions read of one Gateway's [`BuildOutcome`]: which Resources its snapshot serves
/// and the problems of each object. Not the snapshot itself: the operator keeps one summary
/// per Gateway between passes, and the snapshot (every rule, address and certificate) is far
/// larger than the names; a set also answers "does Gateway G serve Resource R" in one lookup
/// for each of thousands of Policies.
#[derive(Debug, Clone, Default)]
pub struct BuildSummary {
    /// Namespace -> names: looked up by borrowed names (an `ObjectRef` key cost two Strings
    /// per lookup, and the status pass asks once per Policy target and Gateway).
    served: std::collections::HashMap<String, std::collections::HashSet<String>>,
    problems: Vec<Problem>,
}

impl BuildSummary {
    /// The summary of `outcome`.
    pub fn of(outcome: &BuildOutcome) -> Self {
        let mut served: std::collections::HashMap<String, std::collections::HashSet<String>> =
            Default::default();
        for r in &outcome.snapshot.resources {
            served
                .entry(r.namespace.clone())
                .or_default()
                .insert(r.name.clone());
        }
        Self {
            served,
            problems: outcome.problems.clone(),
        }
    }

    /// The summary of a build's result, its error as text.
    pub fn of_result<E: std::fmt::Display>(
        built: &Result<BuildOutcome, E>,
    ) -> std::sync::Arc<Result<Self, String>> {
        std::sync::Arc::new(built.as_ref().map(Self::of).map_err(|e| e.to_string()))
    }

    /// Whether the snapshot serves Resource `namespace/name`.
    pub fn serves(&self, namespace: &str, name: &str) -> bool {
        self.served
            .get(namespace)
            .is_some_and(|names| names.contains(name))
    }

    /// The problems of one object.
    pub fn problems_of<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems
            .iter()
            .filter(move |p| p.is_of(kind, namespace, name))
    }
}

/// Reasons that mean a Gateway refused to attach a Resource (the `Accepted` condition);
/// every other left-out or degraded reason is about a reference (`ResolvedRefs`).
const REFUSALS: &[&str] = &[
    reasons::NO_TENANT,
    reasons::NOT_ALLOWED_BY_GATEWAY,
    reasons::HOSTNAME_OUTSIDE_TENANT,
    reasons::HOSTNAME_CONFLICT,
    reasons::INVALID_PARAMETERS,
    reasons::INVALID,
    reasons::QUOTA_EXCEEDED,
];

/// At most this many names in a message, so a status stays small (the rest is counted).
const MAX_NAMES: usize = 5;

fn names(items: &[String]) -> String {
    let mut out = items
        .iter()
        .take(MAX_NAMES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_NAMES {
        out.push_str(&format!(" and {} more", items.len() - MAX_NAMES));
    }
    out
}

/// What a new condition needs of the conditions an object has now: since when a type has had a
/// status (its `lastTransitionTime` is kept while the status holds) and whether it already
/// failed for a reason (a Warning Event once, not on every pass). Whole conditions answer it
/// (Tenants, Gateways, sidecar Resources), and so does the compact form the caches keep of
/// every Resource's and Policy's status ([`crate::cache::statuses`]).
pub trait Previous {
    /// The transition time of the condition `type_` if its status is `status`.
    fn since(&self, type_: &str, status: &str) -> Option<&Time>;
    /// Whether the condition `type_` is False for `reason`.
    fn failed_for(&self, type_: &str, reason: &str) -> bool;
}

impl Previous for [Condition] {
    fn since(&self, type_: &str, status: &str) -> Option<&Time> {
        self.iter()
            .find(|c| c.type_ == type_)
            .filter(|c| c.status == status)
            .map(|c| &c.last_transition_time)
    }

    fn failed_for(&self, type_: &str, reason: &str) -> bool {
        self.iter()
            .any(|c| c.type_ == type_ && c.status == "False" && c.reason == reason)
    }
}

/// No status yet: every condition begins now, and none has failed before.
impl<P: Previous> Previous for Option<P> {
    fn since(&self, type_: &str, status: &str) -> Option<&Time> {
        self.as_ref()?.since(type_, status)
    }

    fn failed_for(&self, type_: &str, reason: &str) -> bool {
        self.as_ref().is_some_and(|p| p.failed_for(type_, reason))
    }
}

impl<P: Previous + ?Sized> Previous for std::sync::Arc<P> {
    fn since(&self, type_: &str, status: &str) -> Option<&Time> {
        (**self).since(type_, status)
    }

    fn failed_for(&self, type_: &str, reason: &str) -> bool {
        (**self).failed_for(type_, reason)
    }
}

/// A condition of `generation`; the transition time is kept from `previous` while the status
/// holds.
pub fn condition(
    previous: &(impl Previous + ?Sized),
    now: &Time,
    generation: Option<i64>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = previous.since(type_, status).unwrap_or(now).clone();
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// The conditions of `types` that are False in `new` and were not False for the same reason
/// in `previous`: what deserves a Warning Event once, not on every pass.
pub fn newly_failed<'a>(
    previous: &(impl Previous + ?Sized),
    new: &'a [Condition],
    types: &[&str],
) -> Vec<&'a Condition> {
    new.iter()
        .filter(|c| types.contains(&c.type_.as_str()) && c.status == "False")
        .filter(|c| !previous.failed_for(&c.type_, &c.reason))
        .collect()
}

/// `Ready`: True when every condition in `parts` is True, else False with the reason and
/// message of the first that is not.
fn ready(
    previous: &(impl Previous + ?Sized),
    now: &Time,
    generation: Option<i64>,
    parts: &[Condition],
) -> Condition {
    match parts.iter().find(|c| c.status != "True") {
        Some(bad) => condition(
            previous,
            now,
            generation,
            types::READY,
            false,
            &bad.reason,
            format!("{}: {}", bad.type_, bad.message),
        ),
        None => condition(
            previous,
            now,
            generation,
            types::READY,
            true,
            reasons::READY,
            "every condition holds".into(),
        ),
    }
}

/// kstatus's condition for `ready` ([`rustronaut_crds::conditions::progress`]):
/// `Reconciling=True` or `Stalled=True` with Ready's reason and message while it is False,
/// nothing while it is True (kstatus: abnormal-true conditions are absent when they do not
/// apply).
pub fn progress(
    previous: &(impl Previous + ?Sized),
    now: &Time,
    generation: Option<i64>,
    ready: &Condition,
) -> Option<Condition> {
    use rustronaut_crds::conditions::{Progress, progress};
    let type_ = match progress(ready.status == "True", &ready.reason) {
        Progress::Done => return None,
        Progress::Reconciling => types::RECONCILING,
        Progress::Stalled => types::STALLED,
    };
    Some(condition(
        previous,
        now,
        generation,
        type_,
        true,
        &ready.reason,
        ready.message.clone(),
    ))
}

/// Collected findings for one condition: the first reason wins, every message is kept.
#[derive(Default)]
struct Findings {
    reason: Option<&'static str>,
    messages: Vec<String>,
}

impl Findings {
    fn add(&mut self, reason: &'static str, message: String) {
        self.reason.get_or_insert(reason);
        if !self.messages.contains(&message) {
            self.messages.push(message);
        }
    }

    fn condition(
        &self,
        previous: &(impl Previous + ?Sized),
        now: &Time,
        generation: Option<i64>,
        type_: &str,
        good: (&str, String),
    ) -> Condition {
        match self.reason {
            Some(reason) => condition(
                previous,
                now,
                generation,
                type_,
                false,
                reason,
                self.messages.join("; "),
            ),
            None => condition(previous, now, generation, type_, true, good.0, good.1),
        }
    }
}

/// Resource (`namespace`, `name`) -> the Policies that select it, in namespace/name order
/// (at most 1000, the CRD's limit).
pub fn applied_policies(
    world: &World,
    claims: &Claims,
) -> BTreeMap<(String, String), Vec<AppliedPolicy>> {
    let mut policies: Vec<&Policy> = world.policies.iter().map(|p| &**p).collect();
    policies
        .sort_by(|a, b| rustronaut_crds::tenancy::by_namespace_and_name(&a.metadata, &b.metadata));
    let mut out: BTreeMap<(String, String), Vec<AppliedPolicy>> = BTreeMap::new();
    let index = ResourceIndex::new(&world.resources);
    for p in policies {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = p.namespace().unwrap_or_default();
        let admin_ns = claims
            .tenant_of(&ns)
            .and_then(|t| world.tenant(t))
            .and_then(|t| t.spec.admin_namespace());
        let (targets, _) = policy_targets(p, &index, claims, admin_ns, &world.namespaces);
        let mut seen = BTreeSet::new();
        for t in targets {
            if !seen.insert((t.namespace.clone(), t.name.clone())) {
                continue;
            }
            let list = out.entry((t.namespace, t.name)).or_default();
            if list.len() < 1000 {
                list.push(AppliedPolicy {
                    namespace: ns.clone(),
                    name: p.name_any(),
                    action: match p.spec.action {
                        PolicyAction::Allow => "Allow",
                        PolicyAction::Deny => "Deny",
                    }
                    .into(),
                    mode: match p.spec.mode {
                        PolicyMode::Enforce => "Enforce",
                        PolicyMode::DryRun => "DryRun",
                    }
                    .into(),
                });
            }
        }
    }
    out
}

/// The status of Resource `res`, whose conditions are now `previous`; `applied` are the
/// Policies that select it ([`applied_policies`]), `over` what is beyond its tenant's quota.
#[allow(clippy::too_many_arguments)]
pub fn resource_status(
    world: &World,
    claims: &Claims,
    builds: &Builds,
    res: &Resource,
    previous: &(impl Previous + ?Sized),
    applied: &[AppliedPolicy],
    over: &OverQuota,
    now: &Time,
) -> ResourceStatus {
    let ns = res.namespace().unwrap_or_default();
    let name = res.name_any();
    let generation = res.metadata.generation;
    let mut accepted = Findings::default();
    let mut refs = Findings::default();
    let mut programmed = Vec::new();
    let mut not_programmed = Vec::new();
    let tenant = claims.tenant_of(&ns);
    match tenant {
        None => accepted.add(
            reasons::NO_TENANT,
            format!("namespace {ns} belongs to no Tenant"),
        ),
        // Checked here too, not only by the builds, so it is said even when no referenced
        // Gateway exists.
        Some(t) => {
            if let Some(message) = over.resources.get(&ObjectRef::new(&ns, &name)) {
                accepted.add(reasons::QUOTA_EXCEEDED, message.clone());
            }
            let domains: Vec<&str> = claims.domains_of(t).collect();
            for h in &res.spec.hostnames {
                if !domains.iter().any(|d| hostname_within(h, d)) {
                    accepted.add(
                        reasons::HOSTNAME_OUTSIDE_TENANT,
                        format!(
                            "{h} is outside the domains tenant {t} holds ({})",
                            if domains.is_empty() {
                                "none".to_string()
                            } else {
                                domains.join(", ")
                            }
                        ),
                    );
                }
            }
        }
    }
    let mut gateways: Vec<ObjectRef> = Vec::new();
    for r in &res.spec.gateway_refs {
        let key = ObjectRef::new(r.namespace.as_deref().unwrap_or(&ns), &r.name);
        if !gateways.contains(&key) {
            gateways.push(key);
        }
    }
    if gateways.is_empty() {
        accepted.add(reasons::INVALID, "spec.gatewayRefs names no Gateway".into());
    }
    for gw in &gateways {
        if !world.has_gateway(&gw.namespace, &gw.name) {
            refs.add(
                reasons::GATEWAY_NOT_FOUND,
                format!("Gateway {gw} not found"),
            );
            not_programmed.push(format!("{gw} (not found)"));
            continue;
        }
        match builds.get(gw).map(|b| &**b) {
            None => not_programmed.push(format!("{gw} (not built yet)")),
            Some(Err(e)) => {
                not_programmed.push(format!("{gw} (its snapshot cannot be built: {e})"));
            }
            Some(Ok(outcome)) => {
                for p in outcome.problems_of("Resource", &ns, &name) {
                    let message = format!("Gateway {gw}: {}", p.message);
                    if REFUSALS.contains(&p.reason) {
                        // Said once above, without a gateway prefix.
                        let said = [
                            reasons::NO_TENANT,
                            reasons::HOSTNAME_OUTSIDE_TENANT,
                            reasons::QUOTA_EXCEEDED,
                        ];
                        if !said.contains(&p.reason) {
                            accepted.add(p.reason, message);
                        }
                    } else {
                        refs.add(p.reason, message);
                    }
                }
                if outcome.serves(&ns, &name) {
                    programmed.push(gw.to_string());
                } else {
                    not_programmed.push(gw.to_string());
                }
            }
        }
    }
    let accepted = accepted.condition(
        previous,
        now,
        generation,
        types::ACCEPTED,
        (
            reasons::ACCEPTED,
            format!("accepted for tenant {}", tenant.unwrap_or_default()),
        ),
    );
    let resolved = refs.condition(
        previous,
        now,
        generation,
        types::RESOLVED_REFS,
        (
            reasons::RESOLVED,
            "every Gateway, Service and site resolves".into(),
        ),
    );
    let programmed = if not_programmed.is_empty() && !programmed.is_empty() {
        condition(
            previous,
            now,
            generation,
            types::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            format!("in the snapshot of Gateway {}", names(&programmed)),
        )
    } else {
        let reason = if accepted.status != "True" {
            accepted.reason.clone()
        } else if resolved.status != "True" {
            resolved.reason.clone()
        } else {
            reasons::PENDING.to_string()
        };
        let mut message = format!("not in the snapshot of Gateway {}", names(&not_programmed));
        if !programmed.is_empty() {
            message.push_str(&format!("; in the snapshot of {}", names(&programmed)));
        }
        condition(
            previous,
            now,
            generation,
            types::PROGRAMMED,
            false,
            &reason,
            message,
        )
    };
    let allows: Vec<String> = applied
        .iter()
        .filter(|p| p.action == "Allow" && p.mode == "Enforce")
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let reachable = if allows.is_empty() {
        condition(
            previous,
            now,
            generation,
            types::REACHABLE,
            false,
            reasons::NO_ALLOW_POLICY,
            "no enforcing Allow Policy selects this Resource: default deny refuses every request"
                .into(),
        )
    } else {
        condition(
            previous,
            now,
            generation,
            types::REACHABLE,
            true,
            types::REACHABLE,
            format!("allowed by {}", names(&allows)),
        )
    };
    let parts = [accepted, resolved, programmed, reachable];
    let ready = ready(previous, now, generation, &parts);
    let mut conditions = parts.to_vec();
    conditions.extend(progress(previous, now, generation, &ready));
    conditions.push(ready);
    ResourceStatus {
        conditions,
        observed_generation: generation,
        policies: applied.to_vec(),
        // Sidecar Resources: filled by the sidecar reconciler, never by the edge pass.
        workload: None,
    }
}

/// Everything computed once per pass for the Policies: compiled world and test outcomes.
pub struct PolicyInputs<'a> {
    /// The world.
    pub world: &'a World,
    /// Its claims.
    pub claims: &'a Claims,
    /// Its Resources, indexed (`ResourceIndex::new(&world.resources)`).
    pub resources: &'a ResourceIndex<'a>,
    /// Per-gateway builds.
    pub builds: &'a Builds,
    /// Policy (`namespace/name`) -> targetRefs that name no Resource.
    pub missing_targets: &'a BTreeMap<String, Vec<String>>,
    /// Policy (`namespace/name`) -> its test outcomes (from `policytest::run_all`).
    pub tests: &'a BTreeMap<String, Vec<TestOutcome>>,
    /// What is beyond its tenant's quota.
    pub over: &'a OverQuota,
}

/// The status of Policy `p`, whose conditions are now `previous`.
pub fn policy_status(
    inputs: &PolicyInputs<'_>,
    p: &Policy,
    previous: &(impl Previous + ?Sized),
    now: &Time,
) -> PolicyStatus {
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let key = format!("{ns}/{name}");
    let generation = p.metadata.generation;
    let mut accepted = Findings::default();
    let mut refs = Findings::default();
    let tenant = inputs
        .claims
        .tenant_of(&ns)
        .and_then(|t| inputs.world.tenant(t));
    let mut targets = Vec::new();
    match tenant {
        None => accepted.add(
            reasons::NO_TENANT,
            format!("namespace {ns} belongs to no Tenant"),
        ),
        Some(t) => {
            if let Some(message) = inputs.over.policies.get(&ObjectRef::new(&ns, &name)) {
                accepted.add(
                    reasons::QUOTA_EXCEEDED,
                    format!("{message}; this Policy fails closed"),
                );
            }
            for problem in rustronaut_crds::validate::policy(&p.spec, &t.spec) {
                accepted.add(
                    problem.reason,
                    format!("{}: {}", problem.field, problem.message),
                );
            }
            let (resolved, _) = policy_targets(
                p,
                inputs.resources,
                inputs.claims,
                t.spec.admin_namespace(),
                &inputs.world.namespaces,
            );
            let mut protocols = Vec::new();
            for target in &resolved {
                let found = inputs.resources.get(&target.namespace, &target.name);
                if let Some(r) = found
                    && !protocols.contains(&r.spec.protocol)
                {
                    protocols.push(r.spec.protocol);
                }
                let gateways: Vec<String> = inputs
                    .builds
                    .iter()
                    .filter_map(|(gw, b)| Some((gw, b.as_ref().as_ref().ok()?)))
                    .filter(|(_, b)| b.serves(&target.namespace, &target.name))
                    .map(|(gw, _)| gw.to_string())
                    .take(8)
                    .collect();
                targets.push(PolicyTargetStatus {
                    resource: format!("{}/{}", target.namespace, target.name),
                    section_name: target.section.clone(),
                    gateways,
                });
            }
            for proto in protocols {
                for problem in rustronaut_crds::validate::policy_for_target(&p.spec, proto) {
                    accepted.add(
                        problem.reason,
                        format!("{}: {}", problem.field, problem.message),
                    );
                }
            }
        }
    }
    targets.truncate(1000);
    if let Some(missing) = inputs.missing_targets.get(&key) {
        refs.add(
            reasons::TARGET_NOT_FOUND,
            format!("targetRefs match no Resource: {}", names(missing)),
        );
    }
    for (gw, b) in inputs.builds {
        let Ok(outcome) = b.as_ref() else { continue };
        for problem in outcome.problems_of("Policy", &ns, &name) {
            // What validation already reported under Accepted is not repeated here.
            let about_refs =
                problem.impact == Impact::Degraded || problem.reason == reasons::SECRET_NOT_FOUND;
            if about_refs {
                refs.add(problem.reason, format!("Gateway {gw}: {}", problem.message));
            }
        }
    }
    let accepted = accepted.condition(
        previous,
        now,
        generation,
        types::ACCEPTED,
        (
            reasons::ACCEPTED,
            format!(
                "accepted for tenant {}",
                tenant.map(ResourceExt::name_any).unwrap_or_default()
            ),
        ),
    );
    let resolved = refs.condition(
        previous,
        now,
        generation,
        types::RESOLVED_REFS,
        (
            reasons::RESOLVED,
            format!("{} target(s) resolved", targets.len()),
        ),
    );
    let outcomes = inputs.tests.get(&key).map_or(&[][..], |v| &v[..]);
    let failed: Vec<&TestOutcome> = outcomes.iter().filter(|t| !t.passed()).collect();
    let tests = match failed.first() {
        Some(first) => condition(
            previous,
            now,
            generation,
            types::TESTS_PASSED,
            false,
            reasons::TEST_FAILED,
            format!(
                "test {} ({} of {} failed, evaluated against the whole effective policy set)",
                first.message(),
                failed.len(),
                outcomes.len()
            ),
        ),
        None => condition(
            previous,
            now,
            generation,
            types::TESTS_PASSED,
            true,
            reasons::TESTS_PASSED,
            if outcomes.is_empty() {
                "no embedded tests".into()
            } else {
                format!(
                    "all {} test(s) passed against the whole effective policy set",
                    outcomes.len()
                )
            },
        ),
    };
    let parts = [accepted, resolved, tests];
    let ready = ready(previous, now, generation, &parts);
    let mut conditions = parts.to_vec();
    conditions.extend(progress(previous, now, generation, &ready));
    conditions.push(ready);
    PolicyStatus {
        conditions,
        observed_generation: generation,
        targets,
    }
}

/// Test outcomes grouped by Policy (`namespace/name`).
pub fn tests_by_policy(outcomes: Vec<TestOutcome>) -> BTreeMap<String, Vec<TestOutcome>> {
    let mut out: BTreeMap<String, Vec<TestOutcome>> = BTreeMap::new();
    for o in outcomes {
        out.entry(o.policy.clone()).or_default().push(o);
    }
    out
}

/// What every Tenant's `usage` counts, counted once per pass: Resources, Policies and
/// Gateways by namespace, tunnel sites by tenant. (Counting per Tenant over every object was
/// 2 million namespace comparisons per Tenant pass at 200 tenants and 10,000 objects.)
#[derive(Debug, Default)]
pub struct Usage<'a> {
    namespaces: std::collections::HashMap<&'a str, [usize; 3]>,
    sites: std::collections::HashMap<&'a str, usize>,
}

impl<'a> Usage<'a> {
    const RESOURCES: usize = 0;
    const POLICIES: usize = 1;
    const GATEWAYS: usize = 2;

    /// Counts the objects of `world`.
    pub fn of(world: &'a World) -> Self {
        let mut usage = Self::default();
        let mut add = |ns: Option<&'a str>, kind: usize| {
            usage.namespaces.entry(ns.unwrap_or_default()).or_default()[kind] += 1;
        };
        for r in &world.resources {
            add(r.metadata.namespace.as_deref(), Self::RESOURCES);
        }
        for p in &world.policies {
            add(p.metadata.namespace.as_deref(), Self::POLICIES);
        }
        for g in &world.gateways {
            add(g.metadata.namespace.as_deref(), Self::GATEWAYS);
        }
        for site in world
            .gateways
            .iter()
            .flat_map(|g| g.spec.tunnel.iter().flat_map(|t| &t.sites))
        {
            *usage.sites.entry(site.tenant.as_str()).or_default() += 1;
        }
        usage
    }

    fn count(&self, ns: &str, kind: usize) -> usize {
        self.namespaces.get(ns).map_or(0, |c| c[kind])
    }
}

/// The status of Tenant `t`: its claims and validity, its identity providers' Secrets
/// (`missing`: provider -> what is missing, from `snapshot::missing_idp_secrets`), and what
/// it uses.
pub fn tenant_status(
    usage: &Usage<'_>,
    claims: &Claims,
    t: &Tenant,
    missing: &BTreeMap<String, String>,
    now: &Time,
) -> TenantStatus {
    let name = t.name_any();
    let generation = t.metadata.generation;
    let previous = t.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let mut accepted = Findings::default();
    for problem in rustronaut_crds::validate::tenant(&t.spec) {
        accepted.add(
            problem.reason,
            format!("{}: {}", problem.field, problem.message),
        );
    }
    for lost in claims.lost.get(&name).into_iter().flatten() {
        accepted.add(lost.reason, lost.message());
    }
    let held: BTreeSet<&str> = claims
        .namespaces
        .iter()
        .filter(|(_, holder)| **holder == name)
        .map(|(ns, _)| ns.as_str())
        .collect();
    let accepted = accepted.condition(
        previous,
        now,
        generation,
        types::ACCEPTED,
        (
            reasons::ACCEPTED,
            format!(
                "holds {} namespace(s) and {} domain(s)",
                held.len(),
                claims.domains_of(&name).count()
            ),
        ),
    );
    let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
    let held_count = |kind: usize| held.iter().map(|ns| usage.count(ns, kind)).sum();
    let usage = Quotas {
        resources: count(held_count(Usage::RESOURCES)),
        policies: count(held_count(Usage::POLICIES)),
        gateways: count(held_count(Usage::GATEWAYS)),
        sites: count(usage.sites.get(name.as_str()).copied().unwrap_or(0)),
    };
    let mut refs = Findings::default();
    for (idp, message) in missing {
        refs.add(
            reasons::SECRET_NOT_FOUND,
            format!("identity provider {idp}: {message}; Policies naming it fail closed"),
        );
    }
    let resolved = refs.condition(
        previous,
        now,
        generation,
        types::RESOLVED_REFS,
        (
            reasons::RESOLVED,
            format!(
                "the Secrets of {} identity provider(s) resolve",
                t.spec.identity_providers.len()
            ),
        ),
    );
    let parts = [accepted, resolved];
    let ready = ready(previous, now, generation, &parts);
    let mut conditions = parts.to_vec();
    conditions.extend(progress(previous, now, generation, &ready));
    conditions.push(ready);
    TenantStatus {
        conditions,
        observed_generation: generation,
        usage: Some(usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_compile::convert::NoSecrets;
    use rustronaut_compile::snapshot::{GatewayInputs, ServicePort, gateway_snapshot};
    use rustronaut_crds::Gateway;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn meta(name: &str, ns: Option<&str>, created: &str) -> Value {
        let mut m = json!({"name": name, "generation": 3, "creationTimestamp": created});
        if let Some(ns) = ns {
            m["namespace"] = json!(ns);
        }
        m
    }

    fn tenant(name: &str, created: &str, namespaces: &[&str], domains: &[&str]) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": meta(name, None, created),
            "spec": {"namespaces": namespaces, "domains": domains}
        }))
        .unwrap()
    }

    fn gateway(ns: &str, name: &str, from: &str) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": meta(name, Some(ns), "2025-01-01T00:00:00Z"),
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                     "tenants": {"from": from}}
        }))
        .unwrap()
    }

    fn resource(ns: &str, name: &str, host: &str, gw: (&str, &str)) -> Resource {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": meta(name, Some(ns), "2025-01-01T00:00:00Z"),
            "spec": {"gatewayRefs": [{"namespace": gw.0, "name": gw.1}], "protocol": "HTTP",
                     "hostnames": [host],
                     "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]}
        }))
        .unwrap()
    }

    fn policy(ns: &str, name: &str, targets: &[&str], tests: Value) -> Policy {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": meta(name, Some(ns), "2025-01-01T00:00:00Z"),
            "spec": {"targetRefs": targets.iter().map(|t| json!({"kind": "Resource", "name": t})).collect::<Vec<_>>(),
                     "action": "Allow",
                     "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}],
                     "tests": tests}
        }))
        .unwrap()
    }

    /// A world: tenant `a` owns `apps` and `gw` (domain a.example), tenant `b` owns `bapps`;
    /// Gateway gw/edge admits only its own tenant (Same).
    fn world() -> World {
        World {
            tenants: vec![
                Arc::new(tenant(
                    "a",
                    "2025-01-01T00:00:00Z",
                    &["apps", "gw"],
                    &["*.a.example"],
                )),
                Arc::new(tenant(
                    "b",
                    "2025-01-02T00:00:00Z",
                    &["bapps"],
                    &["*.b.example"],
                )),
            ],
            gateways: vec![Arc::new(gateway("gw", "edge", "Same"))],
            resources: [
                resource("apps", "app", "app.a.example", ("gw", "edge")),
                resource("bapps", "other", "x.b.example", ("gw", "edge")),
                resource("nowhere", "orphan", "o.a.example", ("gw", "edge")),
                resource("apps", "lost", "l.a.example", ("gw", "missing")),
            ]
            .map(Arc::new)
            .to_vec(),
            policies: Vec::new(),
            namespaces: Default::default(),
        }
    }

    fn builds(world: &World, with_endpoints: bool) -> Builds {
        let mut endpoints = BTreeMap::new();
        if with_endpoints {
            endpoints.insert(
                ServicePort::new("apps", "app", 80),
                vec!["10.9.0.1:8080".parse().unwrap()],
            );
        }
        let inputs = GatewayInputs {
            tls: BTreeMap::new(),
            endpoints,
            secrets: &NoSecrets,
            site_keys: BTreeMap::new(),
            session_keys: BTreeMap::new(),
        };
        world
            .gateways
            .iter()
            .map(|g| {
                let key = ObjectRef::new(g.namespace().unwrap(), g.name_any());
                (
                    key,
                    BuildSummary::of_result(&gateway_snapshot(world, g, &inputs)),
                )
            })
            .collect()
    }

    fn get<'a>(conditions: &'a [Condition], t: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn res_status(world: &World, builds: &Builds, ns: &str, name: &str) -> ResourceStatus {
        let r = world
            .resources
            .iter()
            .find(|r| r.namespace().as_deref() == Some(ns) && r.name_any() == name)
            .unwrap();
        let claims = world.claims();
        let applied = applied_policies(world, &claims);
        let key = (ns.to_string(), name.to_string());
        let applied = applied.get(&key).map_or(&[][..], |v| &v[..]);
        resource_status(
            world,
            &claims,
            builds,
            r,
            &[] as &[Condition],
            applied,
            &rustronaut_compile::quota::over_quota(world, &claims),
            &time("2026-01-01T00:00:00Z"),
        )
    }

    #[test]
    fn a_served_resource_is_accepted_resolved_and_programmed() {
        let mut w = world();
        let before = res_status(&w, &builds(&w, true), "apps", "app");
        let r = get(&before.conditions, types::REACHABLE);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", reasons::NO_ALLOW_POLICY)
        );
        assert!(before.policies.is_empty());
        w.policies
            .push(Arc::new(policy("apps", "allow", &["app"], json!([]))));
        let b = builds(&w, true);
        let s = res_status(&w, &b, "apps", "app");
        assert_eq!(s.policies.len(), 1);
        assert_eq!(
            (s.policies[0].name.as_str(), s.policies[0].action.as_str()),
            ("allow", "Allow")
        );
        assert!(
            get(&s.conditions, types::REACHABLE)
                .message
                .contains("apps/allow")
        );
        assert_eq!(s.observed_generation, Some(3));
        for t in [
            types::ACCEPTED,
            types::RESOLVED_REFS,
            types::PROGRAMMED,
            types::REACHABLE,
            types::READY,
        ] {
            assert_eq!(
                get(&s.conditions, t).status,
                "True",
                "{t}: {:?}",
                s.conditions
            );
        }
        assert!(
            get(&s.conditions, types::PROGRAMMED)
                .message
                .contains("gw/edge")
        );
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn a_missing_backend_is_named_under_resolved_refs() {
        let w = world();
        let s = res_status(&w, &builds(&w, false), "apps", "app");
        let c = get(&s.conditions, types::RESOLVED_REFS);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::BACKEND_NOT_FOUND)
        );
        assert!(c.message.contains("app:80"), "{}", c.message);
        // Degraded, still served.
        assert_eq!(get(&s.conditions, types::PROGRAMMED).status, "True");
        assert_eq!(
            get(&s.conditions, types::READY).reason,
            reasons::BACKEND_NOT_FOUND
        );
    }

    #[test]
    fn refusals_are_not_accepted_and_not_programmed() {
        let w = world();
        let b = builds(&w, true);
        let s = res_status(&w, &b, "nowhere", "orphan");
        let c = get(&s.conditions, types::ACCEPTED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::NO_TENANT)
        );
        assert!(c.message.contains("nowhere"));
        let p = get(&s.conditions, types::PROGRAMMED);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("False", reasons::NO_TENANT)
        );

        let s = res_status(&w, &b, "bapps", "other");
        let c = get(&s.conditions, types::ACCEPTED);
        assert_eq!(c.reason, reasons::NOT_ALLOWED_BY_GATEWAY, "{c:?}");
        assert!(c.message.contains("tenant b"), "{}", c.message);

        let mut outside = w.clone();
        Arc::make_mut(&mut outside.resources[3]).spec.hostnames =
            vec!["x.elsewhere.example".into()];
        let s = res_status(&outside, &builds(&outside, true), "apps", "lost");
        let c = get(&s.conditions, types::ACCEPTED);
        assert_eq!(
            c.reason,
            reasons::HOSTNAME_OUTSIDE_TENANT,
            "even on a missing Gateway"
        );
        assert!(c.message.contains("x.elsewhere.example") && c.message.contains("*.a.example"));

        let s = res_status(&w, &b, "apps", "lost");
        let c = get(&s.conditions, types::RESOLVED_REFS);
        assert_eq!(c.reason, reasons::GATEWAY_NOT_FOUND);
        assert!(c.message.contains("gw/missing"));
        assert_eq!(get(&s.conditions, types::PROGRAMMED).status, "False");
    }

    #[test]
    fn quotas_refuse_the_youngest() {
        let mut w = world();
        Arc::make_mut(&mut w.tenants[0]).spec.quotas = Some(Quotas {
            resources: Some(1),
            policies: Some(0),
            ..Default::default()
        });
        w.policies
            .push(Arc::new(policy("apps", "p", &["app"], json!([]))));
        let b = builds(&w, true);
        // Same creationTimestamp: name order decides; "app" is kept, "lost" is over.
        let kept = res_status(&w, &b, "apps", "app");
        assert_eq!(get(&kept.conditions, types::ACCEPTED).status, "True");
        let s = res_status(&w, &b, "apps", "lost");
        let c = get(&s.conditions, types::ACCEPTED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::QUOTA_EXCEEDED)
        );
        assert!(c.message.contains("spec.quotas.resources"), "{}", c.message);
        let p = pol_status(&w, "p");
        let c = get(&p.conditions, types::ACCEPTED);
        assert_eq!(c.reason, reasons::QUOTA_EXCEEDED);
        assert!(c.message.contains("fails closed"), "{}", c.message);
    }

    #[test]
    fn transition_times_hold_while_the_status_holds() {
        let w = world();
        let b = builds(&w, true);
        let first = res_status(&w, &b, "apps", "app");
        let r = &w.resources[0];
        // The whole conditions and the compact form the caches keep (cache::statuses) give
        // the same status.
        let whole: &[Condition] = &first.conditions;
        let compact = crate::cache::statuses::Observed::new(&first, &first.conditions);
        let later = time("2026-02-01T00:00:00Z");
        let again = resource_status(
            &w,
            &w.claims(),
            &b,
            r,
            whole,
            &[],
            &OverQuota::default(),
            &later,
        );
        assert_eq!(
            again, first,
            "an unchanged world yields an identical status"
        );
        let again = resource_status(
            &w,
            &w.claims(),
            &b,
            r,
            &compact,
            &[],
            &OverQuota::default(),
            &later,
        );
        assert_eq!(again, first, "likewise from the compact form");
        assert!(
            compact.is(&again),
            "and the compact form knows it is unchanged"
        );
        let degraded = resource_status(
            &w,
            &w.claims(),
            &builds(&w, false),
            r,
            &compact,
            &[],
            &OverQuota::default(),
            &later,
        );
        assert!(!compact.is(&degraded));
        assert_eq!(
            get(&degraded.conditions, types::RESOLVED_REFS).last_transition_time,
            later
        );
        assert_eq!(
            get(&degraded.conditions, types::ACCEPTED).last_transition_time,
            time("2026-01-01T00:00:00Z")
        );
    }

    fn pol_status(w: &World, name: &str) -> PolicyStatus {
        let compiled = rustronaut_compile::compile(w);
        let tests = tests_by_policy(rustronaut_compile::run_all(w, &compiled));
        let missing: BTreeMap<String, Vec<String>> = compiled.missing_targets.into_iter().collect();
        let b = builds(w, true);
        let claims = w.claims();
        let index = ResourceIndex::new(&w.resources);
        let inputs = PolicyInputs {
            world: w,
            claims: &claims,
            resources: &index,
            builds: &b,
            missing_targets: &missing,
            tests: &tests,
            over: &rustronaut_compile::quota::over_quota(w, &claims),
        };
        let p = w.policies.iter().find(|p| p.name_any() == name).unwrap();
        policy_status(
            &inputs,
            p,
            &[] as &[Condition],
            &time("2026-01-01T00:00:00Z"),
        )
    }

    #[test]
    fn policy_tests_run_against_the_whole_set() {
        let mut w = world();
        let office = json!([{"name": "office-allowed", "expect": "Allow",
                             "request": {"sourceIP": "10.1.2.3", "path": "/"}}]);
        let wrong = json!([
            {"name": "fine", "expect": "Deny", "request": {"sourceIP": "192.0.2.1", "path": "/"}},
            {"name": "outsider-allowed", "expect": "Allow",
             "request": {"sourceIP": "192.0.2.1", "path": "/"}}
        ]);
        w.policies
            .push(Arc::new(policy("apps", "good", &["app"], office)));
        w.policies
            .push(Arc::new(policy("apps", "bad", &["app"], wrong)));
        let s = pol_status(&w, "good");
        let c = get(&s.conditions, types::TESTS_PASSED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::TESTS_PASSED)
        );
        assert!(c.message.contains("all 1 test"), "{}", c.message);
        assert_eq!(get(&s.conditions, types::READY).status, "True");
        assert_eq!(s.targets[0].resource, "apps/app");
        assert_eq!(s.targets[0].gateways, ["gw/edge"]);

        let s = pol_status(&w, "bad");
        let c = get(&s.conditions, types::TESTS_PASSED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::TEST_FAILED)
        );
        assert!(c.message.contains("outsider-allowed"), "{}", c.message);
        assert!(c.message.contains("1 of 2 failed"), "{}", c.message);
    }

    #[test]
    fn policy_refs_that_match_nothing_are_named() {
        let mut w = world();
        w.policies
            .push(Arc::new(policy("apps", "p", &["app", "ghost"], json!([]))));
        w.policies
            .push(Arc::new(policy("nowhere", "q", &["orphan"], json!([]))));
        let s = pol_status(&w, "p");
        let c = get(&s.conditions, types::RESOLVED_REFS);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::TARGET_NOT_FOUND)
        );
        assert!(
            c.message.contains("ghost") && !c.message.contains("app,"),
            "{}",
            c.message
        );
        assert_eq!(
            get(&s.conditions, types::TESTS_PASSED).message,
            "no embedded tests"
        );
        assert_eq!(get(&s.conditions, types::ACCEPTED).status, "True");

        let s = pol_status(&w, "q");
        assert_eq!(
            get(&s.conditions, types::ACCEPTED).reason,
            reasons::NO_TENANT
        );
    }

    #[test]
    fn only_new_failures_are_events() {
        let now = time("2026-01-01T00:00:00Z");
        let c = |t: &str, ok: bool, reason: &str| {
            condition(
                &[] as &[Condition],
                &now,
                None,
                t,
                ok,
                reason,
                String::new(),
            )
        };
        let previous = [
            c("Accepted", false, "NamespaceClaimed"),
            c("TestsPassed", true, "TestsPassed"),
        ];
        let new = [
            c("Accepted", false, "NamespaceClaimed"),
            c("TestsPassed", false, "TestFailed"),
            c("Ready", false, "TestFailed"),
        ];
        let got: Vec<&str> = newly_failed(&previous[..], &new, &["Accepted", "TestsPassed"])
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(got, ["TestsPassed"]);
        let got = newly_failed(&[] as &[Condition], &new, &["Accepted"]);
        assert_eq!(got.len(), 1, "a first status that fails is new");
    }

    #[test]
    fn the_younger_tenant_loses_a_shared_namespace_and_is_told_who_holds_it() {
        let mut w = world();
        w.tenants.push(Arc::new(tenant(
            "c",
            "2025-03-01T00:00:00Z",
            &["apps", "capps"],
            &[],
        )));
        let claims = w.claims();
        let now = time("2026-01-01T00:00:00Z");
        let none = BTreeMap::new();
        let c = tenant_status(&Usage::of(&w), &claims, &w.tenants[2], &none, &now);
        let acc = get(&c.conditions, types::ACCEPTED);
        assert_eq!(
            (acc.status.as_str(), acc.reason.as_str()),
            ("False", reasons::NAMESPACE_CLAIMED)
        );
        assert!(
            acc.message.contains("apps") && acc.message.contains("tenant a"),
            "{}",
            acc.message
        );
        assert_eq!(get(&c.conditions, types::READY).status, "False");

        let a = tenant_status(&Usage::of(&w), &claims, &w.tenants[0], &none, &now);
        assert_eq!(get(&a.conditions, types::ACCEPTED).status, "True");
        assert_eq!(get(&a.conditions, types::RESOLVED_REFS).status, "True");
        assert_eq!(get(&a.conditions, types::READY).status, "True");
        let missing =
            BTreeMap::from([("okta".to_string(), "Secret apps/okta not found".to_string())]);
        let broken = tenant_status(&Usage::of(&w), &claims, &w.tenants[0], &missing, &now);
        let r = get(&broken.conditions, types::RESOLVED_REFS);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", reasons::SECRET_NOT_FOUND)
        );
        assert!(
            r.message.contains("okta") && r.message.contains("apps/okta"),
            "{}",
            r.message
        );
        assert_eq!(
            get(&broken.conditions, types::READY).reason,
            reasons::SECRET_NOT_FOUND
        );
        let usage = a.usage.unwrap();
        assert_eq!(usage.resources, Some(2), "apps/app and apps/lost");
        assert_eq!(usage.gateways, Some(1));
        assert_eq!(usage.policies, Some(0));
        assert_eq!(c.usage.unwrap().resources, Some(0), "apps is not c's");
    }
}
