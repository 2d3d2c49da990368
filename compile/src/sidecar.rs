//! One sidecar Resource's whole [`Snapshot`]: what the operator writes to
//! `sidecar_names::snapshot(<resource>)` and the `rustronaut-sidecar` container of every pod
//! the Resource protects loads.
//!
//! ```text
//!  World + sidecar Resource (spec.workload) + GatewayInputs (identity-provider Secrets,
//!  session keys; no TLS, no endpoints, no sites)
//!    1. tenant          the tenant holding the Resource's namespace, within its quota
//!    2. listeners       one plaintext listener per workload port: `port-<sidecarPort>`
//!                       on sidecarPort, HTTP or TCP as the Resource
//!    3. resource        convert::resource; an HTTP Resource without rules gets the
//!                       implicit catch-all rule IMPLICIT_RULE; upstreams are the pod's own
//!                       loopback, one per port (see below)
//!    4. tenants         the Resource's tenant with its identity providers (as an edge build)
//!                       and, with an OIDC provider, session keys from `inputs.session_keys`
//!                       (the operator's `<resource>-sidecar-session-<tenant>` Secret)
//!    5. policies        of that tenant, targets narrowed to this Resource (as an edge build)
//!    6. validate        Snapshot::validate(), with the one exemption a sidecar needs
//! ```
//!
//! How a listener finds its application port. A `CompiledResource` has one list of
//! upstreams for all its listeners, and a sidecar Resource may protect several ports. Each
//! loopback upstream is therefore a Service upstream named after the listener it belongs to
//! (`service.name == listener name`, `service.port == addresses[0].port` = the application
//! port, `addresses == [127.0.0.1:<port>]`): the gateway in sidecar mode forwards a
//! connection accepted on listener `L` to the upstream named `L`, and never to another. With
//! one port there is one upstream and nothing to choose.
//!
//! Why HTTP sidecar Resources carry no hostnames: the sidecar serves exactly one Resource
//! and clients reach it under any name (`orders`, `orders.shop.svc`, a pod IP), so every Host
//! routes to it. The contract's validation requires hostnames on HTTP Resources of an edge
//! gateway; for a sidecar snapshot (`sidecar: true`) the contract's validation lifts that one
//! requirement, and the builder exempts it too, as a second line.
//!
//! Failure policy: as an edge build, a Policy that cannot be resolved stays in, failing
//! closed, and an identity provider whose Secret is missing is left out (Policies naming it
//! fail closed). What the snapshot cannot do without (a tenant, the Resource itself) is a
//! [`SidecarError`]: no snapshot, and the operator keeps the previous one serving.
//!
//! Pure: no Kubernetes client.

use crate::convert;
use crate::quota::over_quota;
use crate::snapshot::{BuildError, BuildOutcome, Builder, GatewayInputs};
use crate::world::World;
use kube::ResourceExt;
use rustronaut_contract::snapshot::{
    self as cs, ObjectRef, Snapshot, ValidationError, ValidationErrorKind,
};
use rustronaut_crds::Resource;
use rustronaut_crds::conditions::reasons;
use rustronaut_crds::resource::{Protocol, Workload};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Name of the rule an HTTP sidecar Resource without `rules` gets: every request (no
/// matches), to the application. Policies may target it as `sectionName: all`, or target
/// the Resource as a whole; a Resource that lists rules gets no implicit one.
pub const IMPLICIT_RULE: &str = "all";

/// Address the sidecar reaches the application on: the pod's own loopback, which the
/// NetworkPolicy of the Resource keeps the only way in to the application's ports.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Name of the listener on `sidecar_port` (unique: sidecarPorts are unique by CEL). Also the
/// name of the loopback upstream that listener forwards to.
pub fn listener_name(sidecar_port: i32) -> String {
    format!("port-{sidecar_port}")
}

/// What the session key Secrets of sidecar Resource `resource` are named after: its snapshot
/// Secret's name, so they are `<resource>-sidecar-session-<tenant>` and never those of a
/// Gateway named like the Resource (`<gateway>-session-<tenant>`).
pub fn session_owner(resource: &str) -> String {
    rustronaut_crds::resource::sidecar_names::snapshot(resource)
}

/// Why no sidecar snapshot could be built. The operator keeps the last good one.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The Resource has no `spec.workload`: it is an edge Resource.
    #[error("Resource {0} has no spec.workload: it is reached through Gateways, not a sidecar")]
    NotSidecar(ObjectRef),
    /// The namespace belongs to no Tenant.
    #[error("namespace {0} belongs to no Tenant")]
    NoTenant(String),
    /// The Resource is beyond its tenant's `quotas.resources`.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A workload port outside 1-65535 (the schema forbids it; an object written before
    /// the schema did, or without validation).
    #[error("workload port {0} is not 1-65535")]
    InvalidPort(i32),
    /// The snapshot fails validation, or the Resource itself had to be left out.
    #[error("the sidecar configuration is invalid: {0}")]
    Invalid(String),
}

impl SidecarError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotSidecar(_) | Self::InvalidPort(_) | Self::Invalid(_) => reasons::INVALID,
            Self::NoTenant(_) => reasons::NO_TENANT,
            Self::QuotaExceeded(_) => reasons::QUOTA_EXCEEDED,
        }
    }
}

fn port(p: i32) -> Result<u16, SidecarError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(SidecarError::InvalidPort(p))
}

/// The listeners of `workload`, in spec order.
fn listeners(workload: &Workload, protocol: Protocol) -> Result<Vec<cs::Listener>, SidecarError> {
    let protocol = match protocol {
        Protocol::Http => cs::ListenerProtocol::Http,
        // The CRD admits only HTTP and TCP sidecar Resources; anything else is forwarded
        // as bytes, which is what TCP means.
        _ => cs::ListenerProtocol::Tcp,
    };
    workload
        .ports
        .iter()
        .map(|p| {
            Ok(cs::Listener {
                name: listener_name(p.sidecar_port),
                port: port(p.sidecar_port)?,
                protocol,
                hostname: None,
                tls: None,
                client_certificate: None,
            })
        })
        .collect()
}

/// One loopback upstream per workload port (see the module documentation).
fn loopback_upstreams(workload: &Workload) -> Result<Vec<cs::Upstream>, SidecarError> {
    workload
        .ports
        .iter()
        .map(|p| {
            let app = port(p.port)?;
            Ok(cs::Upstream {
                kind: cs::UpstreamKind::Service(cs::ServiceUpstream {
                    name: listener_name(p.sidecar_port),
                    port: app,
                    addresses: vec![SocketAddr::new(LOOPBACK, app)],
                }),
                weight: 1,
            })
        })
        .collect()
}

/// The validation errors a sidecar snapshot expects: its HTTP Resource has no hostnames.
fn exempt(e: &ValidationError) -> bool {
    e.path == "resources[0].hostnames"
        && e.kind == ValidationErrorKind::RequiredForProtocol(cs::ResourceProtocol::Http)
}

/// Builds the snapshot of sidecar Resource `res`. `inputs.secrets` and
/// `inputs.session_keys` are read; its TLS, endpoints and site keys are not (a sidecar has
/// no TLS listener, no Service upstream and no tunnel). `outcome.problems` are those of the
/// Policies and the Tenant, for their status, as in an edge build.
pub fn sidecar_snapshot(
    world: &World,
    res: &Resource,
    inputs: &GatewayInputs<'_>,
) -> Result<BuildOutcome, SidecarError> {
    let ns = res.namespace().unwrap_or_default();
    let key = ObjectRef::new(&ns, res.name_any());
    let workload = res
        .spec
        .workload
        .as_ref()
        .ok_or_else(|| SidecarError::NotSidecar(key.clone()))?;
    let claims = world.claims();
    let tenant = claims
        .tenant_of(&ns)
        .map(str::to_string)
        .ok_or_else(|| SidecarError::NoTenant(ns.clone()))?;
    let over = over_quota(world, &claims);
    if let Some(message) = over.resources.get(&key) {
        return Err(SidecarError::QuotaExceeded(message.clone()));
    }
    let listeners = listeners(workload, res.spec.protocol)?;
    let upstreams = loopback_upstreams(workload)?;
    let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    let mut compiled = convert::resource(res, &tenant, names);
    compiled.hostnames.clear();
    if compiled.protocol == cs::ResourceProtocol::Http {
        if compiled.rules.is_empty() {
            compiled.rules.push(cs::RouteRule {
                name: IMPLICIT_RULE.to_string(),
                matches: Vec::new(),
                upstreams: Vec::new(),
                load_balancing: cs::LoadBalancing::default(),
                health_check: None,
                rate_limit: None,
                timeout_ms: 60_000,
            });
        }
        for rule in &mut compiled.rules {
            rule.upstreams = upstreams.clone();
            // The application is one process on loopback: nothing to balance or check.
            rule.load_balancing = cs::LoadBalancing::default();
            rule.health_check = None;
        }
        compiled.ports.clear();
        compiled.upstreams.clear();
    } else {
        compiled.rules.clear();
        compiled.ports = listeners.iter().map(|l| l.port).collect();
        compiled.upstreams = upstreams;
        compiled.load_balancing = cs::LoadBalancing::default();
        compiled.health_check = None;
    }
    let mut b = Builder {
        world,
        gateway: None,
        gw: key.clone(),
        session_owner: session_owner(&key.name),
        inputs,
        claims,
        over,
        problems: Vec::new(),
    };
    let mut snapshot = Snapshot::new(key.clone());
    snapshot.sidecar = true;
    snapshot.listeners = listeners;
    snapshot.resources = vec![compiled];
    let mut dropped_idps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Some(t) = b.tenant(&tenant, &mut dropped_idps) {
        snapshot.tenants.push(t);
    }
    snapshot.policies = b.policies(&snapshot.resources, &dropped_idps);
    b.settle(&mut snapshot, &exempt).map_err(|e| match e {
        BuildError::Invalid(errors) => SidecarError::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        other => SidecarError::Invalid(other.to_string()),
    })?;
    if snapshot.resources.is_empty() {
        let why = b
            .problems
            .iter()
            .filter(|p| p.kind == "Resource" && p.object == key)
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(SidecarError::Invalid(why));
    }
    let attached = snapshot
        .listeners
        .iter()
        .map(|l| (l.name.clone(), 1))
        .collect();
    Ok(BuildOutcome {
        snapshot,
        problems: b.problems,
        attached,
        pending: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::SecretMap;
    use rustronaut_crds::manifests::Manifest;
    use serde_json::json;

    /// The world of `yaml` (several documents), read as `rustronaut policy test` reads files.
    fn world(yaml: &str) -> World {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).unwrap();
        let manifests: Vec<Manifest> = docs
            .into_iter()
            .filter(|d| !d.is_null())
            .map(|value| Manifest {
                path: "test.yaml".into(),
                value,
            })
            .collect();
        World::from_manifests(&manifests).unwrap()
    }

    const WORLD: &str = r#"
apiVersion: rustronaut.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  namespaces: [shop]
  adminNamespace: shop
  domains: ["*.acme.example"]
  identityProviders:
    - name: keys
      apiKey:
        secretRefs: [{name: api-keys}]
---
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {name: office, namespace: shop}
spec:
  action: Allow
  targetRefs: [{kind: Resource, name: orders}]
  rules:
    - name: office
      from: [{sourceCIDRs: {cidrs: ["10.0.0.0/8"]}}]
---
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {name: elsewhere, namespace: shop}
spec:
  action: Allow
  targetRefs: [{kind: Resource, name: other}]
  rules:
    - name: all
      from: [{anonymous: true}]
"#;

    const HTTP: &str = r#"
---
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {name: orders, namespace: shop}
spec:
  protocol: HTTP
  workload:
    selector: {matchLabels: {app: orders}}
    ports:
      - {port: 8080, sidecarPort: 15080, name: http}
"#;

    /// The hash of API key client `ci` (a fixed key and salt: the same every run).
    static HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        rustronaut_contract::identity::apikey::hash_api_key(
            "k".repeat(40).as_str(),
            b"saltsaltsaltsalt",
        )
        .unwrap()
    });

    fn inputs(secrets: &SecretMap) -> GatewayInputs<'_> {
        GatewayInputs {
            tls: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            secrets,
            site_keys: BTreeMap::new(),
            session_keys: BTreeMap::new(),
        }
    }

    fn build(yaml: &str) -> Result<BuildOutcome, SidecarError> {
        let w = world(yaml);
        let res = w.resources[0].clone();
        let mut secrets = SecretMap::default();
        secrets.insert("shop", "api-keys", [("ci", HASH.as_str())]);
        sidecar_snapshot(&w, &res, &inputs(&secrets))
    }

    #[test]
    fn an_http_sidecar_resource_becomes_a_whole_snapshot() {
        let outcome = build(&format!("{WORLD}{HTTP}")).unwrap();
        let json = serde_json::to_value(&outcome.snapshot).unwrap();
        assert_eq!(
            json,
            json!({
                "schemaVersion": 1,
                "gateway": {"namespace": "shop", "name": "orders"},
                "clientIPDetection": {"proxyProtocol": false, "trustedHops": 0},
                "listeners": [{"name": "port-15080", "port": 15080, "protocol": "HTTP"}],
                "tenants": [{
                    "name": "acme",
                    "domains": ["*.acme.example"],
                    "identityProviders": [{"name": "keys", "kind": {"apiKey": {
                        "header": "X-Api-Key",
                        "keys": [{"clientID": "ci", "hash": *HASH}]}}}],
                    "session": {"durationSeconds": 28800, "signingKeys": []}
                }],
                "resources": [{
                    "namespace": "shop", "name": "orders", "tenant": "acme",
                    "protocol": "HTTP", "listeners": ["port-15080"],
                    "hostnames": [], "ports": [],
                    "rules": [{
                        "name": "all", "matches": [],
                        "upstreams": [{"kind": {"service": {"name": "port-15080", "port": 8080,
                                       "addresses": ["127.0.0.1:8080"]}}, "weight": 1}],
                        "loadBalancing": {"type": "RoundRobin"},
                        "timeoutMs": 60000
                    }],
                    "upstreams": [],
                    "loadBalancing": {"type": "RoundRobin"}
                }],
                "policies": [serde_json::to_value(&outcome.snapshot.policies[0]).unwrap()],
                "sidecar": true
            })
        );
        // Only the Policy that targets this Resource, narrowed to it.
        assert_eq!(outcome.snapshot.policies.len(), 1);
        let p = &outcome.snapshot.policies[0];
        assert_eq!(p.name, "office");
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].resource, ObjectRef::new("shop", "orders"));
        assert!(p.unresolved.is_empty(), "{:?}", p.unresolved);
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        // The contract accepts an HTTP Resource without hostnames in a sidecar snapshot, so
        // the snapshot validates whole (the builder's exemption is a second line only).
        if let Err(errors) = outcome.snapshot.validate() {
            panic!("a sidecar snapshot validates: {errors:?}");
        }
    }

    #[test]
    fn rules_are_kept_and_each_port_gets_its_listener_and_loopback_upstream() {
        let yaml = format!(
            "{WORLD}{}",
            r#"
---
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {name: orders, namespace: shop}
spec:
  protocol: HTTP
  workload:
    selector: {matchLabels: {app: orders}}
    ports:
      - {port: 8080, sidecarPort: 15080}
      - {port: 9090, sidecarPort: 15090}
  rules:
    - name: api
      matches: [{path: {type: PathPrefix, value: /api}}]
      timeout: 5s
"#
        );
        let s = build(&yaml).unwrap().snapshot;
        let names: Vec<(&str, u16)> = s
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.port))
            .collect();
        assert_eq!(names, [("port-15080", 15080), ("port-15090", 15090)]);
        let r = &s.resources[0];
        assert_eq!(r.rules.len(), 1, "no implicit rule beside explicit ones");
        assert_eq!(r.rules[0].name, "api");
        assert_eq!(r.rules[0].timeout_ms, 5000);
        let ups: Vec<(String, Vec<SocketAddr>)> = r.rules[0]
            .upstreams
            .iter()
            .map(|u| match &u.kind {
                cs::UpstreamKind::Service(s) => (s.name.clone(), s.addresses.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ups,
            [
                ("port-15080".into(), vec!["127.0.0.1:8080".parse().unwrap()]),
                ("port-15090".into(), vec!["127.0.0.1:9090".parse().unwrap()]),
            ]
        );
    }

    #[test]
    fn a_tcp_sidecar_resource_forwards_its_ports_to_loopback() {
        let yaml = format!(
            "{WORLD}{}",
            r#"
---
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {name: orders, namespace: shop}
spec:
  protocol: TCP
  workload:
    selector: {matchLabels: {app: db}}
    ports:
      - {port: 5432, sidecarPort: 15432}
"#
        );
        let s = build(&yaml).unwrap().snapshot;
        assert!(s.sidecar);
        assert_eq!(s.listeners[0].protocol, cs::ListenerProtocol::Tcp);
        let r = &s.resources[0];
        assert_eq!(r.ports, [15432]);
        assert!(r.rules.is_empty());
        assert_eq!(
            r.upstreams[0].kind,
            cs::UpstreamKind::Service(cs::ServiceUpstream {
                name: "port-15432".into(),
                port: 5432,
                addresses: vec!["127.0.0.1:5432".parse().unwrap()],
            })
        );
        // A TCP sidecar snapshot needs no exemption at all.
        s.validate().unwrap();
    }

    #[test]
    fn what_the_snapshot_cannot_do_without_is_an_error() {
        let no_tenant = HTTP.replace("namespace: shop", "namespace: nobody");
        let e = build(&format!("{WORLD}{no_tenant}")).unwrap_err();
        assert_eq!(e.reason(), reasons::NO_TENANT);
        assert_eq!(e.to_string(), "namespace nobody belongs to no Tenant");

        let edge = r#"
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {name: web, namespace: shop}
spec:
  gatewayRefs: [{name: edge}]
  protocol: HTTP
  hostnames: [web.acme.example]
  rules: [{name: all, upstreams: [{service: {name: web, port: 80}}]}]
"#;
        let e = build(edge).unwrap_err();
        assert!(matches!(e, SidecarError::NotSidecar(_)), "{e}");
    }

    #[test]
    fn a_policy_naming_a_missing_identity_provider_secret_fails_closed() {
        let w = world(&format!(
            "{WORLD}{HTTP}{}",
            r#"
---
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {name: ci, namespace: shop}
spec:
  action: Allow
  targetRefs: [{kind: Resource, name: orders}]
  rules:
    - name: ci
      from: [{apiKey: {idp: keys, clientIDs: [ci]}}]
"#
        ));
        let res = w.resources[0].clone();
        let none = SecretMap::default();
        let outcome = sidecar_snapshot(&w, &res, &inputs(&none)).unwrap();
        let ci = outcome
            .snapshot
            .policies
            .iter()
            .find(|p| p.name == "ci")
            .unwrap();
        assert!(!ci.unresolved.is_empty(), "fails closed");
        assert!(outcome.snapshot.tenants[0].identity_providers.is_empty());
        assert!(
            outcome
                .problems
                .iter()
                .any(|p| p.kind == "Tenant" && p.reason == reasons::SECRET_NOT_FOUND),
            "{:?}",
            outcome.problems
        );
    }

    #[test]
    fn an_oidc_tenant_gets_the_session_keys_of_the_sidecars_own_secret() {
        let yaml = format!(
            "{}{HTTP}",
            WORLD.replace(
                "  identityProviders:\n",
                "  identityProviders:\n    - name: sso\n      oidc: {issuer: https://sso.acme.example, clientID: app, clientSecretRef: {name: sso}}\n",
            )
        );
        let w = world(&yaml);
        let res = w.resources[0].clone();
        let mut secrets = SecretMap::default();
        secrets.insert("shop", "sso", [("clientSecret", "s3cret")]);
        let mut with_keys = inputs(&secrets);
        with_keys.session_keys = BTreeMap::from([(
            "acme".to_string(),
            BTreeMap::from([(
                "key-20261203000000".to_string(),
                b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_vec(),
            )]),
        )]);
        let s = sidecar_snapshot(&w, &res, &with_keys).unwrap().snapshot;
        let ids: Vec<&str> = s.tenants[0]
            .session
            .signing_keys
            .iter()
            .map(|k| k.id.as_str())
            .collect();
        assert_eq!(ids, ["20261203000000"]);

        let without = sidecar_snapshot(&w, &res, &inputs(&secrets)).unwrap();
        assert!(without.snapshot.tenants[0].session.signing_keys.is_empty());
        let p = without
            .problems
            .iter()
            .find(|p| p.reason == reasons::SECRET_NOT_FOUND && p.message.contains("session"))
            .expect("a problem says login is off");
        assert!(
            p.message.contains("shop/orders-sidecar-session-acme"),
            "{}",
            p.message
        );
    }
}
