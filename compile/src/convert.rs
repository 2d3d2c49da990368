//! CR types -> contract types (STYLE.md "convert at the boundary"): the data plane never sees a
//! CRD struct, and everything the CRD says is carried over or reported, never dropped silently.
//!
//! Secret material (OIDC client secrets, CA bundles, API-key hashes, JWKS documents in Secrets)
//! is not in the CRs. The operator reads it through [`SecretSource`]; offline tools (the CLI's
//! `policy test`) pass [`NoSecrets`], which yields empty material: enough for policy evaluation,
//! which only needs to know which providers exist and of which type.

use kube::ResourceExt;
use rustronaut_contract::policy as cp;
use rustronaut_contract::snapshot as cs;
use rustronaut_crds::policy as p;
use rustronaut_crds::resource as r;
use rustronaut_crds::tenancy::Target;
use rustronaut_crds::validate::parse_duration;
use rustronaut_crds::{Policy, Resource, Tenant};
use std::collections::BTreeMap;

/// Where secret material comes from.
pub trait SecretSource {
    /// The value of `key` in Secret `namespace/name`, if it exists.
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String>;

    /// Every key of Secret `namespace/name`, if it exists. API-key Secrets need it: their keys
    /// are client IDs, so they cannot be read one known key at a time. Default: unknown (an
    /// API-key provider then holds no keys and authenticates nobody, failing closed).
    fn data(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, String>> {
        None
    }
}

/// Secrets held in memory: `(namespace, name) -> key -> value`. The operator fills one from
/// its Secret reflector for each build; tests fill one by hand.
#[derive(Debug, Clone, Default)]
pub struct SecretMap(pub BTreeMap<(String, String), BTreeMap<String, String>>);

impl SecretMap {
    /// Adds (or replaces) Secret `namespace/name` with `data`.
    pub fn insert<'a>(
        &mut self,
        namespace: &str,
        name: &str,
        data: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> &mut Self {
        self.0.insert(
            (namespace.to_string(), name.to_string()),
            data.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
}

impl SecretSource for SecretMap {
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.0
            .get(&(namespace.to_string(), name.to_string()))?
            .get(key)
            .cloned()
    }

    fn data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// No Secrets at all (offline policy evaluation).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _: &str, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// Converts a Tenant. Providers whose Secrets are missing get empty material (the operator
/// reports `ResolvedRefs=False/SecretNotFound` separately; an empty CA bundle or key list
/// authenticates nobody, so this fails closed).
pub fn tenant(t: &Tenant, secrets: &dyn SecretSource) -> cs::Tenant {
    let ns = t.spec.admin_namespace().unwrap_or_default().to_string();
    let secret = |name: &str, key: Option<&str>, default_key: &str| {
        secrets
            .get(&ns, name, key.unwrap_or(default_key))
            .unwrap_or_default()
    };
    let identity_providers = t
        .spec
        .identity_providers
        .iter()
        .filter_map(|idp| {
            let kind = if let Some(o) = &idp.oidc {
                cs::IdentityProviderKind::Oidc(cs::OidcProvider {
                    issuer: o.issuer.clone(),
                    client_id: o.client_id.clone(),
                    client_secret: cs::Sensitive::new(secret(
                        &o.client_secret_ref.name,
                        o.client_secret_ref.key.as_deref(),
                        "clientSecret",
                    )),
                    scopes: o.scopes.clone(),
                    claim_mappings: cs::ClaimMappings {
                        groups: o.groups_claim.clone(),
                        ..Default::default()
                    },
                })
            } else if let Some(j) = &idp.jwt {
                let jwks = match (&j.remote_jwks, &j.jwks_secret_ref) {
                    (Some(remote), _) => cs::JwksSource::Remote(cs::RemoteJwks {
                        uri: remote.uri.clone(),
                        refresh_interval_seconds: 300,
                    }),
                    (None, Some(sr)) => {
                        let text = secret(&sr.name, sr.key.as_deref(), "jwks.json");
                        cs::JwksSource::Inline(
                            serde_json::from_str(&text)
                                .unwrap_or_else(|_| serde_json::json!({"keys": []})),
                        )
                    }
                    (None, None) => cs::JwksSource::Inline(serde_json::json!({"keys": []})),
                };
                cs::IdentityProviderKind::Jwt(cs::JwtProvider {
                    issuer: j.issuer.clone(),
                    audiences: j.audiences.clone(),
                    jwks,
                    claim_mappings: cs::ClaimMappings {
                        groups: j.groups_claim.clone(),
                        ..Default::default()
                    },
                    clock_skew_seconds: 60,
                    cookie_name: j.cookie_name.clone(),
                })
            } else if let Some(c) = &idp.client_certificate {
                let ca_pem = c
                    .ca_certificate_refs
                    .iter()
                    .map(|r| secret(&r.name, r.key.as_deref(), "ca.crt"))
                    .collect::<Vec<_>>()
                    .join("\n");
                cs::IdentityProviderKind::ClientCertificate(cs::ClientCertificateProvider {
                    ca_pem,
                })
            } else if let Some(a) = &idp.api_key {
                // Each Secret maps client IDs to salted hashes; a client ID in several
                // Secrets keeps the first (refs order), so the result is deterministic.
                let mut keys: BTreeMap<String, String> = BTreeMap::new();
                for r in &a.secret_refs {
                    for (client_id, hash) in secrets.data(&ns, &r.name).unwrap_or_default() {
                        keys.entry(client_id).or_insert(hash);
                    }
                }
                cs::IdentityProviderKind::ApiKey(cs::ApiKeyProvider {
                    header: a.header.clone(),
                    keys: keys
                        .into_iter()
                        .map(|(client_id, hash)| cs::ApiKeyEntry {
                            client_id,
                            hash: hash.trim().to_string(),
                        })
                        .collect(),
                })
            } else {
                // The CRD's CEL rule makes this unreachable for stored objects; a provider of
                // no type authenticates nobody, so leaving it out fails closed.
                return None;
            };
            Some(cs::IdentityProvider {
                name: idp.name.clone(),
                kind,
            })
        })
        .collect();
    let session = cs::SessionConfig {
        duration_seconds: t
            .spec
            .session
            .as_ref()
            .and_then(|s| parse_duration(&s.duration).ok())
            .map_or(8 * 3600, |d| d.as_secs()),
        signing_keys: Vec::new(),
    };
    cs::Tenant {
        name: t.name_any(),
        domains: t.spec.domains.clone(),
        identity_providers,
        session,
    }
}

fn path_match(m: &rustronaut_crds::common::PathMatch) -> cs::PathMatch {
    cs::PathMatch {
        kind: match m.type_ {
            rustronaut_crds::common::PathMatchType::Exact => cs::PathMatchType::Exact,
            rustronaut_crds::common::PathMatchType::PathPrefix => cs::PathMatchType::PathPrefix,
        },
        value: m.value.clone(),
    }
}

fn hash_key(k: r::HashKey) -> cs::HashKey {
    match k {
        r::HashKey::ClientIdentity => cs::HashKey::ClientIdentity,
        r::HashKey::ClientIP => cs::HashKey::ClientIp,
    }
}

fn load_balancing(lb: Option<&r::LoadBalancing>) -> cs::LoadBalancing {
    match lb {
        None => cs::LoadBalancing::RoundRobin,
        Some(lb) => match lb.type_ {
            r::LoadBalancingType::RoundRobin => cs::LoadBalancing::RoundRobin,
            r::LoadBalancingType::LeastConnections => cs::LoadBalancing::LeastConnections,
            r::LoadBalancingType::ConsistentHash => cs::LoadBalancing::ConsistentHash {
                hash_key: hash_key(lb.hash_key.unwrap_or(r::HashKey::ClientIdentity)),
            },
        },
    }
}

fn millis(s: &str, default_ms: u64) -> u64 {
    parse_duration(s).map_or(default_ms, |d| {
        u64::try_from(d.as_millis()).unwrap_or(default_ms)
    })
}

fn health_check(h: Option<&r::HealthCheck>) -> Option<cs::HealthCheck> {
    h.map(|h| cs::HealthCheck {
        path: h.path.clone(),
        interval_ms: millis(&h.interval, 5_000),
        timeout_ms: millis(&h.timeout, 1_000),
        unhealthy_threshold: u32::try_from(h.unhealthy_threshold).unwrap_or(3),
        healthy_threshold: u32::try_from(h.healthy_threshold).unwrap_or(2),
    })
}

fn upstream(u: &r::Upstream) -> Option<cs::Upstream> {
    let kind = match (&u.service, &u.site) {
        (Some(s), _) => cs::UpstreamKind::Service(cs::ServiceUpstream {
            name: s.name.clone(),
            port: u16::try_from(s.port).ok()?,
            // Resolved from EndpointSlices by the operator.
            addresses: Vec::new(),
        }),
        (None, Some(site)) => cs::UpstreamKind::Site(cs::SiteUpstream {
            site: site.name.clone(),
            host: u.host.clone()?,
            port: u16::try_from(u.port?).ok()?,
        }),
        (None, None) => return None,
    };
    Some(cs::Upstream {
        kind,
        weight: u32::try_from(u.weight).unwrap_or(1),
    })
}

fn protocol(p: r::Protocol) -> cs::ResourceProtocol {
    match p {
        r::Protocol::Http => cs::ResourceProtocol::Http,
        r::Protocol::TlsPassthrough => cs::ResourceProtocol::TlsPassthrough,
        r::Protocol::Tcp => cs::ResourceProtocol::Tcp,
        r::Protocol::Udp => cs::ResourceProtocol::Udp,
    }
}

/// Converts a Resource of `tenant`. `listeners` are the listener names it attaches to on the
/// Gateway being compiled (empty for offline policy evaluation).
pub fn resource(res: &Resource, tenant: &str, listeners: Vec<String>) -> cs::CompiledResource {
    let rules = res
        .spec
        .rules
        .iter()
        .map(|rule| cs::RouteRule {
            name: rule.name.clone(),
            matches: rule
                .matches
                .iter()
                .map(|m| cs::RouteMatch {
                    path: m.path.as_ref().map(path_match),
                    method: m.method.map(|m| m.as_str().to_string()),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| cs::HeaderMatch {
                            name: h.name.clone(),
                            value: h.value.clone(),
                        })
                        .collect(),
                })
                .collect(),
            upstreams: rule.upstreams.iter().filter_map(upstream).collect(),
            load_balancing: load_balancing(rule.load_balancing.as_deref()),
            health_check: health_check(rule.health_check.as_deref()),
            rate_limit: rule.rate_limit.as_ref().map(|rl| cs::RateLimit {
                requests_per_second: u32::try_from(rl.requests_per_second).unwrap_or(1),
                burst: u32::try_from(rl.burst).unwrap_or(1),
                key: hash_key(rl.key),
            }),
            timeout_ms: rule
                .timeout
                .as_deref()
                .map_or(60_000, |t| millis(t, 60_000)),
        })
        .collect();
    cs::CompiledResource {
        namespace: res.namespace().unwrap_or_default(),
        name: res.name_any(),
        tenant: tenant.to_string(),
        protocol: protocol(res.spec.protocol),
        listeners,
        hostnames: res.spec.hostnames.clone(),
        ports: res
            .spec
            .ports
            .iter()
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect(),
        rules,
        upstreams: res.spec.upstreams.iter().filter_map(upstream).collect(),
        load_balancing: load_balancing(res.spec.load_balancing.as_deref()),
        health_check: health_check(res.spec.health_check.as_deref()),
    }
}

fn principal(x: &p::Principal) -> Option<cp::Principal> {
    Some(if let Some(u) = &x.user {
        cp::Principal::User(cp::UserPrincipal {
            idp: u.idp.clone(),
            subjects: u.subjects.clone(),
            emails: u.emails.clone(),
            email_domains: u.email_domains.clone(),
            groups: u.groups.clone(),
            claims: u
                .claims
                .iter()
                .map(|c| cp::ClaimMatch {
                    name: c.name.clone(),
                    values: c.values.clone(),
                })
                .collect(),
            scopes: u.scopes.clone(),
        })
    } else if let Some(c) = &x.client_certificate {
        cp::Principal::ClientCertificate(cp::CertificatePrincipal {
            idp: c.idp.clone(),
            san_uris: c.san_uris.clone(),
            san_dns_names: c.san_dns_names.clone(),
            san_emails: c.san_emails.clone(),
            spki_sha256: c.spki_sha256.clone(),
        })
    } else if let Some(a) = &x.api_key {
        cp::Principal::ApiKey(cp::ApiKeyPrincipal {
            idp: a.idp.clone(),
            client_ids: a.client_ids.clone(),
        })
    } else if let Some(s) = &x.site {
        cp::Principal::Site(cp::SitePrincipal {
            names: s.names.clone(),
        })
    } else if let Some(s) = &x.service_account {
        cp::Principal::ServiceAccount(cp::ServiceAccountPrincipal {
            namespace: s.namespace.clone(),
            names: s.names.clone(),
        })
    } else if let Some(s) = &x.source_cidrs {
        cp::Principal::SourceCidrs(cp::SourceCidrs {
            cidrs: s.cidrs.clone(),
            except: s.except.clone(),
        })
    } else if x.authenticated == Some(true) {
        cp::Principal::Authenticated
    } else if x.anonymous == Some(true) {
        cp::Principal::Anonymous
    } else {
        return None;
    })
}

/// Converts a Policy of `tenant` with its resolved targets. A principal that converts to
/// nothing (impossible for objects the API server accepted) makes the policy unresolved, so
/// it fails closed instead of silently matching more or less than written.
pub fn policy(pol: &Policy, tenant: &str, targets: &[Target]) -> cp::CompiledPolicy {
    let mut unresolved = Vec::new();
    let mut principals = |list: &[p::Principal], clause: &str, rule: &str| {
        list.iter()
            .filter_map(|x| {
                let c = principal(x);
                if c.is_none() {
                    unresolved.push(format!("rule {rule}: an empty principal in {clause}"));
                }
                c
            })
            .collect::<Vec<_>>()
    };
    let rules = pol
        .spec
        .rules
        .iter()
        .map(|rule| cp::PolicyRule {
            name: rule.name.clone(),
            from: principals(&rule.from, "from", &rule.name),
            require: principals(&rule.require, "require", &rule.name),
            exclude: principals(&rule.exclude, "exclude", &rule.name),
            to: rule
                .to
                .iter()
                .map(|op| cp::Operation {
                    methods: op.methods.iter().map(|m| m.as_str().to_string()).collect(),
                    paths: op.paths.iter().map(path_match).collect(),
                    hosts: Vec::new(),
                    ports: op
                        .ports
                        .iter()
                        .filter_map(|p| u16::try_from(*p).ok())
                        .collect(),
                })
                .collect(),
            when: rule.when.as_ref().map(|w| cp::When {
                schedule: w.schedule.as_ref().map(|s| cp::Schedule {
                    days: cp::Days::Spec(s.days.clone()),
                    from: s.from.clone(),
                    to: s.to.clone(),
                    time_zone: s.time_zone.clone(),
                }),
            }),
        })
        .collect();
    let session = pol
        .spec
        .session
        .as_ref()
        .and_then(|s| match parse_duration(&s.duration) {
            Ok(d) => Some(cp::PolicySession {
                duration_seconds: d.as_secs(),
            }),
            Err(e) => {
                unresolved.push(format!("session.duration: {e}"));
                None
            }
        });
    cp::CompiledPolicy {
        namespace: pol.namespace().unwrap_or_default(),
        name: pol.name_any(),
        tenant: tenant.to_string(),
        action: match pol.spec.action {
            p::PolicyAction::Allow => cp::PolicyAction::Allow,
            p::PolicyAction::Deny => cp::PolicyAction::Deny,
        },
        mode: match pol.spec.mode {
            p::PolicyMode::Enforce => cp::PolicyMode::Enforce,
            p::PolicyMode::DryRun => cp::PolicyMode::DryRun,
        },
        targets: targets
            .iter()
            .map(|t| cp::PolicyTarget {
                resource: cs::ObjectRef::new(&t.namespace, &t.name),
                section_name: t.section.clone(),
            })
            .collect(),
        rules,
        session,
        unresolved,
    }
}
