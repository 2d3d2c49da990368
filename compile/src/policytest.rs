//! Runs the `tests` embedded in Policies against the *whole* effective policy set of each
//! target, exactly as a gateway would decide: the operator reports the outcome as the
//! `TestsPassed` condition, and `rustronaut policy test <dir>` runs it in CI before anything
//! reaches a cluster.
//!
//! A test request is routed like a real one: its path is normalised (so `/api/../admin` is
//! tested as `/admin`), then routed to a rule of the Resource when it names no `sectionName`.

use crate::convert::{self, NoSecrets};
use crate::world::World;
use kube::ResourceExt;
use rustronaut_contract::eval::{Decision, Effect, Request, evaluate};
use rustronaut_contract::identity::{
    ApiKeyIdentity, CertificateIdentity, Identity, ServiceAccountIdentity, SiteIdentity,
    UserIdentity,
};
use rustronaut_contract::policy::{CompiledPolicy, PolicySet};
use rustronaut_contract::snapshot::{CompiledResource, ResourceProtocol, Tenant};
use rustronaut_crds::policy::{PolicyAction, PolicyTest, TestIdentity, TestRequest};
use rustronaut_crds::tenancy::{Claims, ResourceIndex, Target, policy_targets};
use std::net::IpAddr;
use std::time::SystemTime;

/// Client address of a test request that names none (TEST-NET-1, never a real client).
pub const DEFAULT_SOURCE_IP: &str = "192.0.2.1";
/// Evaluation time of a test request that names none: a Wednesday, 12:00 UTC.
pub const DEFAULT_TIME: &str = "2025-01-01T12:00:00Z";

/// Everything compiled from a [`World`]: what a gateway would evaluate.
#[derive(Debug)]
pub struct Compiled {
    /// Tenants with their identity providers (no secret material).
    pub tenants: Vec<Tenant>,
    /// Resources of every tenant.
    pub resources: Vec<CompiledResource>,
    /// Policies with resolved targets.
    pub policies: Vec<CompiledPolicy>,
    /// The indexed, evaluable set.
    pub set: PolicySet,
    /// Policy (`namespace/name`) -> targetRefs that name no Resource.
    pub missing_targets: Vec<(String, Vec<String>)>,
}

/// Compiles every tenant's Resources and Policies. Objects in namespaces no Tenant owns belong
/// to no tenant and are left out (the operator reports them with `Accepted=False/NoTenant`).
pub fn compile(world: &World) -> Compiled {
    compile_with(world, &world.claims())
}

/// [`compile`] with the claims already resolved (by the caller, once for several worlds:
/// [`World::by_tenant`]).
pub fn compile_with(world: &World, claims: &Claims) -> Compiled {
    let tenants: Vec<Tenant> = world
        .tenants
        .iter()
        .map(|t| convert::tenant(t, &NoSecrets))
        .collect();
    // Quotas as the gateways apply them: Resources over quota are not served, Policies over
    // quota fail closed.
    let over = crate::quota::over_quota(world, claims);
    let resources: Vec<CompiledResource> = world
        .resources
        .iter()
        .filter_map(|r| {
            let ns = r.namespace()?;
            let tenant = claims.tenant_of(&ns)?;
            let key = rustronaut_contract::snapshot::ObjectRef::new(&ns, r.name_any());
            if over.resources.contains_key(&key) {
                return None;
            }
            Some(convert::resource(r, tenant, Vec::new()))
        })
        .collect();
    let mut policies = Vec::new();
    let mut missing_targets = Vec::new();
    let index = ResourceIndex::new(&world.resources);
    for p in &world.policies {
        let Some(ns) = p.namespace() else { continue };
        let Some(tenant) = claims.tenant_of(&ns) else {
            continue;
        };
        let admin_ns = world.tenant(tenant).and_then(|t| t.spec.admin_namespace());
        let (targets, missing) = policy_targets(p, &index, claims, admin_ns, &world.namespaces);
        if !missing.is_empty() {
            missing_targets.push((format!("{ns}/{}", p.name_any()), missing));
        }
        let mut compiled = convert::policy(p, tenant, &targets);
        let key = rustronaut_contract::snapshot::ObjectRef::new(&ns, p.name_any());
        if let Some(message) = over.policies.get(&key) {
            compiled.unresolved.push(message.clone());
        }
        policies.push(compiled);
    }
    let set = PolicySet::compile(&tenants, &resources, &policies);
    Compiled {
        tenants,
        resources,
        policies,
        set,
        missing_targets,
    }
}

/// The result of one embedded test.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// `namespace/name` of the Policy carrying the test.
    pub policy: String,
    /// Test name.
    pub test: String,
    /// `namespace/name` of the Resource the request went to.
    pub resource: String,
    /// The rule the request routed to, if any.
    pub section: Option<String>,
    /// What the test expects.
    pub expected: PolicyAction,
    /// The decision, when the request could be evaluated.
    pub decision: Option<Decision>,
    /// Why the request could not be evaluated (invalid path, unknown resource, no route...).
    pub error: Option<String>,
}

impl TestOutcome {
    /// The effect the gateway would enforce: requests that cannot be evaluated are refused.
    pub fn effect(&self) -> Effect {
        self.decision.as_ref().map_or(Effect::Deny, |d| d.effect)
    }

    /// Whether the expectation held.
    pub fn passed(&self) -> bool {
        matches!(
            (self.expected, self.effect()),
            (PolicyAction::Allow, Effect::Allow) | (PolicyAction::Deny, Effect::Deny)
        )
    }

    /// One line for people: `name: got Allow via ns/policy rule r` or the error.
    pub fn message(&self) -> String {
        let got = match (&self.decision, &self.error) {
            (_, Some(e)) => format!("Deny ({e})"),
            (Some(d), None) => describe(d),
            (None, None) => "Deny".into(),
        };
        if self.passed() {
            format!("{}: {got}", self.test)
        } else {
            format!("{}: expected {:?}, got {got}", self.test, self.expected)
        }
    }
}

fn describe(d: &Decision) -> String {
    let effect = match d.effect {
        Effect::Allow => "Allow",
        Effect::Deny => "Deny",
    };
    match (&d.policy, &d.rule) {
        (Some(p), Some(r)) => format!("{effect} via {p} rule {r} ({})", d.reason.as_str()),
        (Some(p), None) => format!("{effect} via {p} ({})", d.reason.as_str()),
        _ => format!("{effect} ({})", d.reason.as_str()),
    }
}

/// Runs every test of every Policy of the world, in namespace/name order.
pub fn run_all(world: &World, compiled: &Compiled) -> Vec<TestOutcome> {
    run_all_with(world, compiled, &world.claims())
}

/// [`run_all`] with the claims already resolved.
pub fn run_all_with(world: &World, compiled: &Compiled, claims: &Claims) -> Vec<TestOutcome> {
    let mut policies: Vec<_> = world.policies.iter().collect();
    policies
        .sort_by(|a, b| rustronaut_crds::tenancy::by_namespace_and_name(&a.metadata, &b.metadata));
    let index = ResourceIndex::new(&world.resources);
    let mut out = Vec::new();
    for p in policies {
        let ns = p.namespace().unwrap_or_default();
        let tenant = claims.tenant_of(&ns).map(str::to_string);
        let admin_ns = tenant
            .as_deref()
            .and_then(|t| world.tenant(t))
            .and_then(|t| t.spec.admin_namespace());
        let (targets, _) = policy_targets(p, &index, claims, admin_ns, &world.namespaces);
        for t in &p.spec.tests {
            out.push(run_one(
                &format!("{ns}/{}", p.name_any()),
                &ns,
                tenant.as_deref(),
                &targets,
                p.spec.target_refs.first().map(|r| r.name.as_str()),
                t,
                compiled,
            ));
        }
    }
    out
}

fn run_one(
    policy: &str,
    policy_ns: &str,
    tenant: Option<&str>,
    targets: &[Target],
    first_ref: Option<&str>,
    test: &PolicyTest,
    compiled: &Compiled,
) -> TestOutcome {
    let req = &test.request;
    let name = req
        .resource
        .as_deref()
        .or(first_ref)
        .or_else(|| targets.first().map(|t| t.name.as_str()))
        .unwrap_or_default()
        .to_string();
    let namespace = targets
        .iter()
        .find(|t| t.name == name)
        .map_or(policy_ns.to_string(), |t| t.namespace.clone());
    let mut outcome = TestOutcome {
        policy: policy.to_string(),
        test: test.name.clone(),
        resource: format!("{namespace}/{name}"),
        section: req.section_name.clone(),
        expected: test.expect,
        decision: None,
        error: None,
    };
    let Some(tenant) = tenant else {
        outcome.error = Some(format!("namespace {policy_ns} belongs to no Tenant"));
        return outcome;
    };
    match Prepared::new(compiled, tenant, &namespace, &name, req) {
        Err(e) => outcome.error = Some(e),
        Ok(p) => {
            outcome.section = p.section.clone();
            let id = format!("test-{}", test.name);
            outcome.decision = Some(evaluate(&compiled.set, &p.request(), p.now, id));
        }
    }
    outcome
}

/// A test request resolved against the compiled world: identity built, path normalised,
/// routed to a rule. What a gateway would hand the evaluator.
#[derive(Debug)]
pub struct Prepared {
    namespace: String,
    name: String,
    identity: Identity,
    method: Option<&'static str>,
    target: Option<rustronaut_contract::path::RequestTarget>,
    /// The rule the request routed to (HTTP).
    pub section: Option<String>,
    port: Option<u16>,
    /// Evaluation time.
    pub now: SystemTime,
}

impl Prepared {
    /// Resolves `req` for Resource `namespace/name` of `tenant`. Errors are the reasons a
    /// gateway would refuse the request before policy (bad path: 400; no route: 404).
    pub fn new(
        compiled: &Compiled,
        tenant: &str,
        namespace: &str,
        name: &str,
        req: &TestRequest,
    ) -> Result<Self, String> {
        let resource = compiled
            .resources
            .iter()
            .find(|r| r.namespace == namespace && r.name == name)
            .ok_or_else(|| format!("Resource {namespace}/{name} not found"))?;
        let source_ip: IpAddr = req
            .source_ip
            .as_deref()
            .unwrap_or(DEFAULT_SOURCE_IP)
            .parse()
            .map_err(|_| format!("sourceIP {:?} is not an IP address", req.source_ip))?;
        let now = parse_time(req.time.as_deref().unwrap_or(DEFAULT_TIME))?;
        let mut prepared = Prepared {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity(req.identity.as_deref(), tenant, source_ip),
            method: None,
            target: None,
            section: req.section_name.clone(),
            port: req.port.and_then(|p| u16::try_from(p).ok()),
            now,
        };
        if resource.protocol == ResourceProtocol::Http {
            let method = req.method.map_or("GET", |m| m.as_str());
            let target = rustronaut_contract::path::normalize(req.path.as_deref().unwrap_or("/"))
                .map_err(|e| format!("path refused with 400: {e}"))?;
            if prepared.section.is_none() {
                let rule = resource
                    .route(method, &target.path, |_| None)
                    .ok_or_else(|| {
                        format!(
                            "no rule of {namespace}/{name} matches {method} {} (404)",
                            target.path.as_str()
                        )
                    })?;
                prepared.section = Some(rule.name.clone());
            }
            prepared.method = Some(method);
            prepared.target = Some(target);
        }
        Ok(prepared)
    }

    /// The evaluator's view of the request.
    pub fn request(&self) -> Request<'_> {
        let mut r = Request::new(&self.namespace, &self.name, &self.identity);
        if let Some(s) = &self.section {
            r = r.section(s);
        }
        if let (Some(m), Some(t)) = (self.method, &self.target) {
            r = r.http(m, &t.path);
        }
        if let Some(p) = self.port {
            r = r.port(p);
        }
        r
    }
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    let ts: k8s_openapi::jiff::Timestamp = s
        .parse()
        .map_err(|e| format!("time {s:?} is not RFC 3339: {e}"))?;
    Ok(SystemTime::from(ts))
}

/// Builds the verified identity a test describes. Credentials in tests are taken as verified:
/// the test is about authorisation, not about token validation.
pub fn identity(t: Option<&TestIdentity>, tenant: &str, source_ip: IpAddr) -> Identity {
    let mut id = Identity::anonymous(Some(source_ip));
    let Some(t) = t else { return id };
    id.user = t.user.as_ref().map(|u| {
        std::sync::Arc::new(UserIdentity {
            idp: u.idp.clone(),
            subject: u
                .subject
                .clone()
                .or_else(|| u.email.clone())
                .unwrap_or_else(|| "test-user".into()),
            email: u.email.clone(),
            groups: u.groups.clone(),
            claims: u.claims.clone(),
            scopes: u.scopes.clone(),
            // A token's user: every claim it names is known.
            known_claims: None,
            derived: Default::default(),
        })
    });
    id.client_certificate = t.client_certificate.as_ref().map(|c| CertificateIdentity {
        idp: c.idp.clone(),
        san_uris: c.san_uris.clone(),
        san_dns_names: c.san_dns_names.clone(),
        san_emails: c.san_emails.clone(),
        spki_sha256: String::new(),
    });
    id.api_key = t.api_key.as_ref().map(|k| ApiKeyIdentity {
        idp: k.idp.clone(),
        client_id: k.client_id.clone(),
    });
    id.site = t.site.as_ref().map(|s| SiteIdentity {
        name: s.clone(),
        tenant: tenant.to_string(),
    });
    id.service_account = t.service_account.as_ref().map(|s| ServiceAccountIdentity {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
    });
    id
}
