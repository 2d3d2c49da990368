//! The policy evaluator: a pure, deterministic function from (policy set, request, time,
//! decision id) to a [`Decision`].
//!
//! ```text
//!  Request { resource, section?, identity, method?, path?, host?, port? }
//!      |  look up the Resource's rule lists (whole Resource + the routed section)
//!      v
//!  enforced pass:  any Deny rule matches (or an unresolved Deny targets it) -> Deny
//!                  else any Allow rule matches                             -> Allow
//!                  else                                                     -> Deny (default)
//!  shadow pass (only when DryRun policies target the request): the same with DryRun
//!                  policies enforced too; reported in `Decision::shadow`, never enforced
//!  needs_login:    denied, no user yet, and an Allow rule could match once the caller logs
//!                  in with one of the tenant's OIDC providers -> redirect to the IdP
//! ```
//!
//! A rule matches when `to AND when AND (any from) AND (all require) AND NOT (any exclude)`.
//! There are no priorities: the result does not depend on the order of policies or rules.
//! When several rules could decide, the decision names the first in a fixed order
//! (namespace, name, then rule position), so logs are reproducible too.
//!
//! The evaluator never reads a clock or a random source: the time and the decision id are
//! arguments ([`DecisionIds`] makes ids from a caller-supplied nonce and a counter).
//!
//! Inputs are trusted to be verified: credentials presented but invalid never get here (see
//! [`crate::identity`]), and the path must be normalised ([`crate::path`]).

use crate::identity::{Identity, UserIdentity};
use crate::path::{NormalizedPath, path_matches};
use crate::policy::{
    CertMatcher, Lists, Matcher, Op, Policy, PolicyAction, PolicyError, PolicyMode, PolicyRef,
    PolicySet, Rule, UserMatcher, Window,
};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Errors building an [`OwnedRequest`] from text (policy tests, the CLI, the console).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A method that is not an HTTP token.
    #[error("invalid HTTP method {0:?}")]
    InvalidMethod(String),
    /// A path the gateway would refuse with 400.
    #[error("invalid request path: {0}")]
    InvalidPath(#[from] crate::path::PathError),
    /// A time that is not RFC 3339.
    #[error("invalid time {0:?}: use RFC 3339, e.g. 2025-01-01T12:00:00Z")]
    InvalidTime(String),
}

/// One request, as the evaluator sees it. Borrowed, so building one on the hot path does not
/// allocate.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Namespace of the requested Resource.
    pub namespace: &'a str,
    /// Name of the requested Resource.
    pub name: &'a str,
    /// The Resource rule the request routed to (HTTP), for sectionName targeting.
    pub section: Option<&'a str>,
    /// Who is calling (verified facts only).
    pub identity: &'a Identity,
    /// HTTP method; `None` for TCP/UDP/TLSPassthrough.
    pub method: Option<&'a str>,
    /// Normalised path; `None` for TCP/UDP/TLSPassthrough.
    pub path: Option<&'a NormalizedPath>,
    /// Host (HTTP `Host`/`:authority` or TLS SNI) without port.
    pub host: Option<&'a str>,
    /// The listener port the request arrived on.
    pub port: Option<u16>,
}

impl<'a> Request<'a> {
    /// A request to Resource `namespace/name` by `identity`, with no operation details.
    pub fn new(namespace: &'a str, name: &'a str, identity: &'a Identity) -> Self {
        Self {
            namespace,
            name,
            section: None,
            identity,
            method: None,
            path: None,
            host: None,
            port: None,
        }
    }

    /// Sets the routed section (the Resource rule name).
    pub fn section(mut self, section: &'a str) -> Self {
        self.section = Some(section);
        self
    }

    /// Sets the HTTP method and normalised path.
    pub fn http(mut self, method: &'a str, path: &'a NormalizedPath) -> Self {
        self.method = Some(method);
        self.path = Some(path);
        self
    }

    /// Sets the host.
    pub fn host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }

    /// Sets the listener port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

/// Allow or Deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse it (HTTP 403, or close the TCP/UDP flow).
    Deny,
}

/// Why a decision is what it is. Stable names, usable as metric labels ([`Reason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Reason {
    /// An Allow rule matched (and no Deny did).
    AllowedBy,
    /// A Deny rule matched.
    DeniedBy,
    /// An unresolved Deny policy targets the request: it fails closed and denies.
    Unresolved,
    /// Policies target the request, but no Allow rule matched (default deny).
    NoAllowMatched,
    /// No policy targets the request (default deny).
    NoPolicy,
    /// The Resource is not in the policy set (deny).
    UnknownResource,
}

impl Reason {
    /// The name, e.g. `DeniedBy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowedBy => "AllowedBy",
            Self::DeniedBy => "DeniedBy",
            Self::Unresolved => "Unresolved",
            Self::NoAllowMatched => "NoAllowMatched",
            Self::NoPolicy => "NoPolicy",
            Self::UnknownResource => "UnknownResource",
        }
    }
}

/// Why one rule did not match: one code per failed clause. Stable names for logs and the
/// explain page ([`ClauseFailure::as_str`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "code", rename_all_fields = "camelCase")]
pub enum ClauseFailure {
    /// No `to` operation matched the method/path/host/port.
    ToNotMatched,
    /// Outside the `when.schedule` window.
    OutsideSchedule,
    /// No `from` principal matched.
    FromNotMatched,
    /// The `require` principal at `index` did not match.
    RequireFailed {
        /// Position in `require`.
        index: usize,
    },
    /// The `exclude` principal at `index` matched.
    Excluded {
        /// Position in `exclude`.
        index: usize,
    },
    /// The whole policy is unresolved (fails closed).
    Unresolved {
        /// Why.
        reason: String,
    },
}

impl ClauseFailure {
    /// The code, e.g. `RequireFailed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ToNotMatched => "ToNotMatched",
            Self::OutsideSchedule => "OutsideSchedule",
            Self::FromNotMatched => "FromNotMatched",
            Self::RequireFailed { .. } => "RequireFailed",
            Self::Excluded { .. } => "Excluded",
            Self::Unresolved { .. } => "Unresolved",
        }
    }
}

/// The outcome of one pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Allow or Deny.
    pub effect: Effect,
    /// Why.
    pub reason: Reason,
    /// The policy that decided (AllowedBy, DeniedBy, Unresolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// The rule that decided (AllowedBy, DeniedBy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
}

/// The decision for one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Id for logs and the deny page (supplied by the caller).
    pub decision_id: String,
    /// What is enforced.
    pub effect: Effect,
    /// Why.
    pub reason: Reason,
    /// The policy that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// The rule that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// When allowed by a policy with a `session` override: the maximum age of the login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_max_age_seconds: Option<u64>,
    /// Present when DryRun policies target the request: what the decision would be if they
    /// were enforced too. Reported (logs, metrics), never enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Outcome>,
    /// Denied, but logging in with one of `login_providers` could make an Allow rule match:
    /// browsers are redirected to the IdP instead of getting a 403. Only for HTTP requests
    /// (with a method) by callers without a user identity, when no Deny decided.
    pub needs_login: bool,
    /// The tenant's OIDC providers named (or admitted) by such Allow rules, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub login_providers: Vec<Arc<str>>,
}

impl Decision {
    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// The enforced outcome alone.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            effect: self.effect,
            reason: self.reason,
            policy: self.policy.clone(),
            rule: self.rule.clone(),
        }
    }
}

/// Decision ids from a per-process random nonce (supplied by the caller, e.g. from the OS
/// random source at startup) and a counter: unique, cheap, and the evaluator stays
/// deterministic.
#[derive(Debug)]
pub struct DecisionIds {
    /// The nonce's 16 hex digits and `-`: the same in every id, written once.
    prefix: String,
    counter: AtomicU64,
}

impl DecisionIds {
    /// A generator with the given nonce.
    pub fn new(nonce: u64) -> Self {
        Self::starting_at(nonce, 0)
    }

    fn starting_at(nonce: u64, counter: u64) -> Self {
        Self {
            prefix: format!("{nonce:016x}-"),
            counter: AtomicU64::new(counter),
        }
    }

    /// The next id: 16 hex digits of nonce, `-`, the counter in hex.
    ///
    /// The prefix copied, the counter's digits written one by one, into one exactly sized
    /// `String`: every request makes one, and `format!` spent more in its machinery than in
    /// the digits (issue 19).
    pub fn next_id(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let digits = (16 - n.leading_zeros().min(63) as usize / 4).max(1);
        let mut id = String::with_capacity(self.prefix.len() + digits);
        id.push_str(&self.prefix);
        for shift in (0..digits).rev() {
            id.push(char::from(HEX[(n >> (shift * 4)) as usize & 0xf]));
        }
        id
    }
}

/// The evaluation time, converted to a timestamp at most once per request and only when a
/// schedule needs it.
pub(crate) struct Clock {
    now: SystemTime,
    ts: Option<Option<jiff::Timestamp>>,
}

impl Clock {
    pub(crate) fn new(now: SystemTime) -> Self {
        Self { now, ts: None }
    }

    /// Whether `now` is inside the window; `None` if the time cannot be represented (then the
    /// caller fails closed: a Deny applies, an Allow does not).
    fn within(&mut self, w: &Window) -> Option<bool> {
        let now = self.now;
        let ts = (*self
            .ts
            .get_or_insert_with(|| jiff::Timestamp::try_from(now).ok()))?;
        let local = w.tz.to_datetime(ts);
        let day = u8::try_from(local.weekday().to_monday_zero_offset()).ok()?;
        let minute =
            u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).ok()?;
        let on = |d: u8| w.days & (1 << d) != 0;
        Some(if w.from < w.to {
            on(day) && minute >= w.from && minute < w.to
        } else {
            // Across midnight: the window belongs to the day it starts on.
            (on(day) && minute >= w.from) || (on((day + 6) % 7) && minute < w.to)
        })
    }
}

/// Evaluates a request. `now` is the evaluation time (for schedules); `decision_id` is
/// returned in the decision.
pub fn evaluate(
    set: &PolicySet,
    request: &Request<'_>,
    now: SystemTime,
    decision_id: impl Into<String>,
) -> Decision {
    let decision_id = decision_id.into();
    let Some(entry) = set.resource_entry(request.namespace, request.name) else {
        return Decision {
            decision_id,
            effect: Effect::Deny,
            reason: Reason::UnknownResource,
            policy: None,
            rule: None,
            session_max_age_seconds: None,
            shadow: None,
            needs_login: false,
            login_providers: Vec::new(),
        };
    };
    let lists = lists_for(entry, request.section);
    let tenant: &str = &entry.tenant;
    let mut clock = Clock::new(now);
    let enforced = decide(set, lists, tenant, request, &mut clock, false);
    let shadow = lists
        .has_dry_run
        .then(|| decide(set, lists, tenant, request, &mut clock, true).outcome);
    // Only HTTP requests (a method is set) can be redirected to an IdP; TCP/UDP flows are
    // closed.
    let login_providers = if enforced.outcome.reason == Reason::NoAllowMatched
        && request.identity.user.is_none()
        && request.method.is_some()
    {
        login_providers(set, lists, tenant, request, &mut clock)
    } else {
        Vec::new()
    };
    Decision {
        decision_id,
        effect: enforced.outcome.effect,
        reason: enforced.outcome.reason,
        policy: enforced.outcome.policy,
        rule: enforced.outcome.rule,
        session_max_age_seconds: enforced.session_max_age_seconds,
        shadow,
        needs_login: !login_providers.is_empty(),
        login_providers,
    }
}

pub(crate) fn lists_for<'s>(
    entry: &'s crate::policy::ResourceEntry,
    section: Option<&str>,
) -> &'s Lists {
    section
        .and_then(|s| entry.sections.get(s))
        .unwrap_or(&entry.whole)
}

pub(crate) struct PassResult {
    pub(crate) outcome: Outcome,
    session_max_age_seconds: Option<u64>,
}

fn decide(
    set: &PolicySet,
    lists: &Lists,
    tenant: &str,
    req: &Request<'_>,
    clock: &mut Clock,
    include_dry_run: bool,
) -> PassResult {
    let considered = |p: &Policy| include_dry_run || p.mode == PolicyMode::Enforce;
    for &i in &lists.deny {
        let p = &set.policies[i as usize];
        if !considered(p) {
            continue;
        }
        if p.unresolved.is_some() {
            return PassResult {
                outcome: Outcome {
                    effect: Effect::Deny,
                    reason: Reason::Unresolved,
                    policy: Some(p.key.clone()),
                    rule: None,
                },
                session_max_age_seconds: None,
            };
        }
        for rule in &p.rules {
            if rule_matches(rule, req, tenant, clock, PolicyAction::Deny) {
                return PassResult {
                    outcome: Outcome {
                        effect: Effect::Deny,
                        reason: Reason::DeniedBy,
                        policy: Some(p.key.clone()),
                        rule: Some(rule.name.clone()),
                    },
                    session_max_age_seconds: None,
                };
            }
        }
    }
    for &i in &lists.allow {
        let p = &set.policies[i as usize];
        if !considered(p) || p.unresolved.is_some() {
            continue;
        }
        for rule in &p.rules {
            if rule_matches(rule, req, tenant, clock, PolicyAction::Allow) {
                return PassResult {
                    outcome: Outcome {
                        effect: Effect::Allow,
                        reason: Reason::AllowedBy,
                        policy: Some(p.key.clone()),
                        rule: Some(rule.name.clone()),
                    },
                    session_max_age_seconds: p.session_seconds,
                };
            }
        }
    }
    let any = if include_dry_run {
        !lists.deny.is_empty() || !lists.allow.is_empty()
    } else {
        lists.has_enforced
    };
    PassResult {
        outcome: Outcome {
            effect: Effect::Deny,
            reason: if any {
                Reason::NoAllowMatched
            } else {
                Reason::NoPolicy
            },
            policy: None,
            rule: None,
        },
        session_max_age_seconds: None,
    }
}

/// Short-circuit match, cheapest clauses first.
fn rule_matches(
    rule: &Rule,
    req: &Request<'_>,
    tenant: &str,
    clock: &mut Clock,
    action: PolicyAction,
) -> bool {
    let id = req.identity;
    (rule.to.is_empty() || rule.to.iter().any(|op| op_matches(op, req, action)))
        && schedule_ok(rule, clock, action)
        && rule
            .from
            .iter()
            .any(|p| principal_matches(p, id, tenant, Stake::of(action, false)))
        && rule
            .require
            .iter()
            .all(|p| principal_matches(p, id, tenant, Stake::of(action, false)))
        && !rule
            .exclude
            .iter()
            .any(|p| principal_matches(p, id, tenant, Stake::of(action, true)))
}

/// Whether `path` is `value` with a trailing slash added or removed.
fn same_but_slash(value: &str, path: &NormalizedPath) -> bool {
    let p = path.as_str();
    p.strip_suffix('/')
        .is_some_and(|q| q == value && !q.is_empty())
        || value
            .strip_suffix('/')
            .is_some_and(|v| v == p && !v.is_empty())
}

/// What a clause of a rule does when it matches: grant access (`from`/`require` of an Allow,
/// `exclude` of a Deny) or take it away (`from`/`require` of a Deny, `exclude` of an Allow).
/// Where the identity does not settle a condition, the answer is the one that never widens
/// access: a granting clause does not match, a restricting one does.
///
/// - Emails: only a verified address may grant ([`UserIdentity::email`]); where a match takes
///   access away, the address the provider asserted without vouching for it (the raw `email`
///   claim) counts too, so a token without `email_verified` can never dodge a Deny or an
///   `exclude` naming its email.
/// - Claims and scopes a browser session does not carry ([`UserIdentity::known_claims`]):
///   unknown, so a Deny on them denies and an Allow requiring them does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stake {
    /// The clause grants: only what is known and verified counts.
    Grants,
    /// The clause restricts: what is asserted or unknown counts as matching.
    Restricts,
}

impl Stake {
    /// For a clause of a rule of a `action` policy: `from`/`require` of a Deny and
    /// `exclude` of an Allow restrict, everything else grants.
    pub(crate) fn of(action: PolicyAction, exclude: bool) -> Self {
        if (action == PolicyAction::Deny) != exclude {
            Self::Restricts
        } else {
            Self::Grants
        }
    }

    fn pick_email(self, user: &UserIdentity) -> Option<&str> {
        user.email.as_deref().or(match self {
            Self::Grants => None,
            Self::Restricts => user
                .claims
                .get("email")
                .and_then(|v| v.first())
                .map(String::as_str),
        })
    }

    /// The answer for a condition the identity cannot settle.
    fn unknown(self) -> bool {
        self == Self::Restricts
    }
}

fn schedule_ok(rule: &Rule, clock: &mut Clock, action: PolicyAction) -> bool {
    match &rule.schedule {
        None => true,
        // Unrepresentable time: a Deny applies, an Allow does not.
        Some(w) => clock.within(w).unwrap_or(action == PolicyAction::Deny),
    }
}

/// Every failed clause of a rule (empty: it matches). Used by explain.
pub(crate) fn rule_failures(
    policy: &Policy,
    rule: &Rule,
    req: &Request<'_>,
    tenant: &str,
    clock: &mut Clock,
) -> Vec<ClauseFailure> {
    let id = req.identity;
    let mut out = Vec::new();
    if !(rule.to.is_empty() || rule.to.iter().any(|op| op_matches(op, req, policy.action))) {
        out.push(ClauseFailure::ToNotMatched);
    }
    if !schedule_ok(rule, clock, policy.action) {
        out.push(ClauseFailure::OutsideSchedule);
    }
    let grants = Stake::of(policy.action, false);
    if !rule
        .from
        .iter()
        .any(|p| principal_matches(p, id, tenant, grants))
    {
        out.push(ClauseFailure::FromNotMatched);
    }
    for (index, p) in rule.require.iter().enumerate() {
        if !principal_matches(p, id, tenant, grants) {
            out.push(ClauseFailure::RequireFailed { index });
        }
    }
    for (index, p) in rule.exclude.iter().enumerate() {
        if principal_matches(p, id, tenant, Stake::of(policy.action, true)) {
            out.push(ClauseFailure::Excluded { index });
        }
    }
    out
}

pub(crate) fn unresolved_failure(e: &PolicyError) -> ClauseFailure {
    ClauseFailure::Unresolved {
        reason: e.to_string(),
    }
}

/// Whether `req` is one of the operations `op` names. In a Deny, `GET` also names `HEAD`:
/// most frameworks serve HEAD with the GET handler (running it, dropping the body), so a Deny
/// on GET alone would let HEAD run what it forbids. An Allow of GET does not allow HEAD. For
/// the same reason an Exact path in a Deny also names the path with a trailing slash added
/// or removed (`/admin` and `/admin/`), which many routers serve alike.
fn op_matches(op: &Op, req: &Request<'_>, action: PolicyAction) -> bool {
    let deny = action == PolicyAction::Deny;
    if !op.methods.is_empty()
        && !req.method.is_some_and(|m| {
            op.methods
                .iter()
                .any(|x| x == m || (deny && m == "HEAD" && x == "GET"))
        })
    {
        return false;
    }
    if !op.paths.is_empty()
        && !req.path.is_some_and(|p| {
            op.paths.iter().any(|pm| {
                path_matches(pm.kind, &pm.value, p)
                    || (deny
                        && pm.kind == crate::snapshot::PathMatchType::Exact
                        && same_but_slash(&pm.value, p))
            })
        })
    {
        return false;
    }
    if !op.hosts.is_empty()
        && !req
            .host
            .is_some_and(|h| op.hosts.iter().any(|pat| host_matches(pat, h)))
    {
        return false;
    }
    if !op.ports.is_empty() && !req.port.is_some_and(|p| op.ports.contains(&p)) {
        return false;
    }
    true
}

/// `pattern` is lower-case; `*.example.com` covers one or more labels before `example.com`.
/// A trailing dot on the host is ignored; case-insensitive.
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

pub(crate) fn principal_matches(m: &Matcher, id: &Identity, tenant: &str, stake: Stake) -> bool {
    match m {
        Matcher::User(u) => id
            .user
            .as_ref()
            .is_some_and(|user| user_matches(u, user, stake)),
        Matcher::Certificate(c) => id
            .client_certificate
            .as_ref()
            .is_some_and(|cert| cert_matches(c, cert)),
        Matcher::ApiKey { idp, client_ids } => id.api_key.as_ref().is_some_and(|k| {
            idp.as_ref().is_none_or(|i| *i == k.idp)
                && (client_ids.is_empty() || client_ids.contains(&k.client_id))
        }),
        Matcher::Site(names) => id
            .site
            .as_ref()
            .is_some_and(|s| s.tenant == tenant && names.contains(&s.name)),
        Matcher::ServiceAccount { namespace, names } => {
            id.service_account.as_ref().is_some_and(|sa| {
                sa.namespace == *namespace && (names.is_empty() || names.contains(&sa.name))
            })
        }
        Matcher::Cidrs { cidrs, except } => id.source_ip.is_some_and(|ip| {
            cidrs.iter().any(|c| c.contains(ip)) && !except.iter().any(|c| c.contains(ip))
        }),
        Matcher::Authenticated => id.authenticated(),
        Matcher::Anonymous => true,
    }
}

fn user_matches(u: &UserMatcher, user: &UserIdentity, stake: Stake) -> bool {
    let email = stake.pick_email(user);
    // A session without a verified email and without the raw `email` claim cannot say which
    // address the provider asserted: a restricting clause on emails then matches.
    let email_unknown = email.is_none() && !user.claim_known("email") && stake.unknown();
    if u.idp.as_ref().is_some_and(|i| *i != user.idp) {
        return false;
    }
    if !u.subjects.is_empty() && !u.subjects.contains(&user.subject) {
        return false;
    }
    if !u.emails.is_empty()
        && !email_unknown
        && !email.is_some_and(|e| u.emails.iter().any(|x| x.eq_ignore_ascii_case(e)))
    {
        return false;
    }
    if !u.email_domains.is_empty()
        && !email_unknown
        && !email.is_some_and(|e| {
            e.rsplit_once('@')
                .is_some_and(|(_, d)| u.email_domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
        })
    {
        return false;
    }
    if !u.groups.is_empty() && !u.groups.iter().any(|g| user.groups.contains(g)) {
        return false;
    }
    if !u.claims.iter().all(|c| {
        if !user.claim_known(&c.name) {
            return stake.unknown();
        }
        user.claims
            .get(&c.name)
            .is_some_and(|vals| vals.iter().any(|v| c.values.contains(v)))
    }) {
        return false;
    }
    if !u.scopes.is_empty() && user.known_claims.is_some() {
        // A browser session carries no scopes.
        return stake.unknown();
    }
    u.scopes.iter().all(|s| user.scopes.contains(s))
}

fn cert_matches(c: &CertMatcher, cert: &crate::identity::CertificateIdentity) -> bool {
    if c.idp.as_ref().is_some_and(|i| *i != cert.idp) {
        return false;
    }
    if !c.san_uris.is_empty() && !cert.san_uris.iter().any(|u| c.san_uris.contains(u)) {
        return false;
    }
    if !c.san_dns_names.is_empty()
        && !cert
            .san_dns_names
            .iter()
            .any(|d| c.san_dns_names.iter().any(|x| x.eq_ignore_ascii_case(d)))
    {
        return false;
    }
    if !c.san_emails.is_empty()
        && !cert
            .san_emails
            .iter()
            .any(|e| c.san_emails.iter().any(|x| x.eq_ignore_ascii_case(e)))
    {
        return false;
    }
    c.spki_sha256.is_empty()
        || c.spki_sha256
            .iter()
            .any(|x| x.eq_ignore_ascii_case(&cert.spki_sha256))
}

/// The OIDC providers with which logging in could make an enforced, resolved Allow rule
/// match. Optimistic about the unknown user's attributes (groups, emails, claims): the IdP
/// decides those; pessimistic about everything already known (operation, schedule, other
/// principals, excludes that already match or that any login would trigger).
fn login_providers(
    set: &PolicySet,
    lists: &Lists,
    tenant: &str,
    req: &Request<'_>,
    clock: &mut Clock,
) -> Vec<Arc<str>> {
    let Some(info) = set.tenants.get(tenant) else {
        return Vec::new();
    };
    if info.oidc.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Arc<str>> = Vec::new();
    for &i in &lists.allow {
        let p = &set.policies[i as usize];
        if p.mode != PolicyMode::Enforce || p.unresolved.is_some() {
            continue;
        }
        for rule in &p.rules {
            if !(rule.to.is_empty()
                || rule
                    .to
                    .iter()
                    .any(|op| op_matches(op, req, PolicyAction::Allow)))
                || !schedule_ok(rule, clock, PolicyAction::Allow)
            {
                continue;
            }
            for idp in &info.oidc {
                if out.contains(idp) {
                    continue;
                }
                if could_match_after_login(rule, req.identity, tenant, idp) {
                    out.push(idp.clone());
                }
            }
        }
    }
    out.sort();
    out
}

fn could_match_after_login(rule: &Rule, id: &Identity, tenant: &str, idp: &str) -> bool {
    let now_or_after =
        |m: &Matcher| principal_matches(m, id, tenant, Stake::Grants) || login_may_satisfy(m, idp);
    rule.from.iter().any(now_or_after)
        && rule.require.iter().all(now_or_after)
        && !rule.exclude.iter().any(|m| {
            principal_matches(m, id, tenant, Stake::Restricts) || login_surely_satisfies(m, idp)
        })
}

fn login_may_satisfy(m: &Matcher, idp: &str) -> bool {
    match m {
        Matcher::User(u) => u.idp.as_deref().is_none_or(|i| i == idp),
        Matcher::Authenticated => true,
        _ => false,
    }
}

fn login_surely_satisfies(m: &Matcher, idp: &str) -> bool {
    match m {
        Matcher::Authenticated => true,
        Matcher::User(u) => {
            u.idp.as_deref().is_none_or(|i| i == idp)
                && u.subjects.is_empty()
                && u.emails.is_empty()
                && u.email_domains.is_empty()
                && u.groups.is_empty()
                && u.claims.is_empty()
                && u.scopes.is_empty()
        }
        _ => false,
    }
}

/// An owned request, for callers that build requests from text rather than from a live
/// connection: the operator's embedded Policy tests, `rustronaut policy test`, the console's
/// explain page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRequest {
    /// Namespace of the Resource.
    pub namespace: String,
    /// Name of the Resource.
    pub name: String,
    /// Routed section.
    pub section: Option<String>,
    /// The caller.
    pub identity: Identity,
    /// HTTP method.
    pub method: Option<String>,
    /// Normalised path.
    pub path: Option<NormalizedPath>,
    /// Host.
    pub host: Option<String>,
    /// Listener port.
    pub port: Option<u16>,
}

impl OwnedRequest {
    /// A request with no operation details (TCP/UDP, or "any operation").
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: Identity) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            section: None,
            identity,
            method: None,
            path: None,
            host: None,
            port: None,
        }
    }

    /// Sets method and path (`/a/b?query`), normalising the path as the gateway would.
    pub fn with_http(mut self, method: &str, target: &str) -> Result<Self, EvalError> {
        if !crate::policy::is_method_token(method) {
            return Err(EvalError::InvalidMethod(method.to_string()));
        }
        self.method = Some(method.to_string());
        self.path = Some(crate::path::normalize(target)?.path);
        Ok(self)
    }

    /// Sets the section to the Resource rule the request routes to, as the gateway would
    /// (no headers). Leaves it unset when nothing routes (the gateway would answer 404).
    pub fn with_routed_section(mut self, resource: &crate::snapshot::CompiledResource) -> Self {
        if let (Some(method), Some(path)) = (&self.method, &self.path) {
            self.section = resource
                .route(method, path, |_: &str| -> Option<&str> { None })
                .map(|r| r.name.clone());
        }
        self
    }

    /// The borrowed view the evaluator takes.
    pub fn as_request(&self) -> Request<'_> {
        Request {
            namespace: &self.namespace,
            name: &self.name,
            section: self.section.as_deref(),
            identity: &self.identity,
            method: self.method.as_deref(),
            path: self.path.as_ref(),
            host: self.host.as_deref(),
            port: self.port,
        }
    }
}

/// Parses an RFC 3339 time (`2025-01-01T12:00:00Z`, `2025-01-01T13:00:00+01:00`) into the
/// evaluation time.
pub fn parse_time(s: &str) -> Result<SystemTime, EvalError> {
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|_| EvalError::InvalidTime(s.to_string()))?;
    SystemTime::try_from(ts).map_err(|_| EvalError::InvalidTime(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_read_as_the_nonce_and_the_counter_in_hex() {
        for nonce in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX] {
            for n in [
                0,
                1,
                0xf,
                0x10,
                0xff,
                0x100,
                0xdead_beef,
                u64::MAX - 1,
                u64::MAX,
            ] {
                let ids = DecisionIds::starting_at(nonce, n);
                assert_eq!(ids.next_id(), format!("{nonce:016x}-{n:x}"));
            }
        }
        let ids = DecisionIds::new(7);
        assert_ne!(ids.next_id(), ids.next_id());
    }

    #[test]
    fn wildcard_hosts() {
        assert!(host_matches("*.acme.example", "a.acme.example"));
        assert!(host_matches("*.acme.example", "a.b.acme.example"));
        assert!(host_matches("*.acme.example", "A.ACME.example."));
        assert!(!host_matches("*.acme.example", "acme.example"));
        assert!(!host_matches("*.acme.example", "evilacme.example"));
        assert!(!host_matches("*.acme.example", ".acme.example"));
        assert!(host_matches("app.acme.example", "APP.acme.example"));
        assert!(!host_matches("app.acme.example", "app.acme.example.evil"));
    }

    #[test]
    fn decision_ids_are_unique() {
        let ids = DecisionIds::new(0xdead_beef);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!(a, "00000000deadbeef-0");
        assert_eq!(b, "00000000deadbeef-1");
    }
}
