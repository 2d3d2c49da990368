//! Fixture builders shared by the integration tests: a small world of two tenants, their
//! identity providers and Resources, and terse builders for policies and callers.

use rustronaut_contract::identity::{
    ApiKeyIdentity, CertificateIdentity, Identity, ServiceAccountIdentity, SiteIdentity,
    UserIdentity,
};
use rustronaut_contract::snapshot::*;
use std::collections::BTreeMap;

pub const TEST_CA_PEM: &str = include_str!("../fixtures/ca.pem");

pub fn oidc(name: &str) -> IdentityProvider {
    IdentityProvider {
        name: name.into(),
        kind: IdentityProviderKind::Oidc(OidcProvider {
            issuer: format!("https://{name}.example"),
            client_id: "rtn".into(),
            client_secret: Sensitive::new("s3cret"),
            scopes: vec!["openid".into(), "email".into()],
            claim_mappings: ClaimMappings::default(),
        }),
    }
}

pub fn jwt_idp(name: &str) -> IdentityProvider {
    IdentityProvider {
        name: name.into(),
        kind: IdentityProviderKind::Jwt(JwtProvider {
            issuer: "https://token.example".into(),
            audiences: vec!["rtn".into()],
            jwks: JwksSource::Remote(RemoteJwks {
                uri: "https://token.example/jwks".into(),
                refresh_interval_seconds: 300,
            }),
            claim_mappings: ClaimMappings::default(),
            clock_skew_seconds: 60,
            cookie_name: None,
        }),
    }
}

pub fn cert_idp(name: &str) -> IdentityProvider {
    IdentityProvider {
        name: name.into(),
        kind: IdentityProviderKind::ClientCertificate(ClientCertificateProvider {
            ca_pem: TEST_CA_PEM.into(),
        }),
    }
}

pub fn apikey_idp(name: &str) -> IdentityProvider {
    IdentityProvider {
        name: name.into(),
        kind: IdentityProviderKind::ApiKey(ApiKeyProvider {
            header: "X-Api-Key".into(),
            keys: vec![ApiKeyEntry {
                client_id: "ci".into(),
                hash: rustronaut_contract::identity::apikey::hash_api_key(
                    "rtn_0123456789abcdefghijkl",
                    b"0123456789abcdef",
                )
                .unwrap(),
            }],
        }),
    }
}

pub fn tenants() -> Vec<Tenant> {
    vec![
        Tenant {
            name: "acme".into(),
            domains: vec!["*.acme.example".into()],
            identity_providers: vec![
                oidc("okta"),
                oidc("okta2"),
                jwt_idp("ci"),
                cert_idp("corp-ca"),
                apikey_idp("partners"),
            ],
            session: SessionConfig::default(),
        },
        Tenant {
            name: "globex".into(),
            domains: vec!["*.globex.example".into()],
            identity_providers: vec![oidc("gx")],
            session: SessionConfig::default(),
        },
    ]
}

pub fn svc(name: &str, port: u16) -> Upstream {
    Upstream {
        kind: UpstreamKind::Service(ServiceUpstream {
            name: name.into(),
            port,
            addresses: vec![format!("10.0.0.5:{port}").parse().unwrap()],
        }),
        weight: 1,
    }
}

pub fn route(name: &str, prefix: Option<&str>) -> RouteRule {
    RouteRule {
        name: name.into(),
        matches: prefix
            .map(|p| {
                vec![RouteMatch {
                    path: Some(PathMatch {
                        kind: PathMatchType::PathPrefix,
                        value: p.into(),
                    }),
                    method: None,
                    headers: vec![],
                }]
            })
            .unwrap_or_default(),
        upstreams: vec![svc("grafana", 3000)],
        load_balancing: LoadBalancing::RoundRobin,
        health_check: None,
        rate_limit: None,
        timeout_ms: 60_000,
    }
}

pub fn http_resource(
    ns: &str,
    name: &str,
    tenant: &str,
    host: &str,
    rules: Vec<RouteRule>,
) -> CompiledResource {
    CompiledResource {
        namespace: ns.into(),
        name: name.into(),
        tenant: tenant.into(),
        protocol: ResourceProtocol::Http,
        listeners: vec!["https".into()],
        hostnames: vec![host.into()],
        ports: vec![],
        rules,
        upstreams: vec![],
        load_balancing: LoadBalancing::RoundRobin,
        health_check: None,
    }
}

pub fn resources() -> Vec<CompiledResource> {
    vec![
        http_resource(
            "acme-apps",
            "grafana",
            "acme",
            "grafana.acme.example",
            vec![
                route("api", Some("/api")),
                route("admin", Some("/admin")),
                route("web", None),
            ],
        ),
        CompiledResource {
            namespace: "acme-apps".into(),
            name: "db".into(),
            tenant: "acme".into(),
            protocol: ResourceProtocol::Tcp,
            listeners: vec!["pg".into()],
            hostnames: vec![],
            ports: vec![5432],
            rules: vec![],
            upstreams: vec![svc("postgres", 5432)],
            load_balancing: LoadBalancing::RoundRobin,
            health_check: None,
        },
        http_resource(
            "globex",
            "portal",
            "globex",
            "portal.globex.example",
            vec![route("main", None)],
        ),
    ]
}

pub fn listeners() -> Vec<Listener> {
    vec![
        Listener {
            name: "https".into(),
            port: 443,
            protocol: ListenerProtocol::Https,
            hostname: None,
            tls: Some(ListenerTls {
                certificates: vec![TlsCertificate {
                    name: "wildcard".into(),
                    hostnames: vec!["*.acme.example".into()],
                    certificate_chain_pem: TEST_CA_PEM.into(),
                    private_key_pem: Sensitive::new(
                        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
                    ),
                }],
                min_version: TlsVersion::V1_2,
                certificates_pending: false,
            }),
            client_certificate: Some(ClientCertificateConfig {
                mode: ClientCertificateMode::Optional,
                ca_pem: TEST_CA_PEM.into(),
            }),
        },
        Listener {
            name: "pg".into(),
            port: 5432,
            protocol: ListenerProtocol::Tcp,
            hostname: None,
            tls: None,
            client_certificate: None,
        },
    ]
}

pub const SITE_KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

pub fn tunnel() -> Tunnel {
    Tunnel {
        listen_port: 51820,
        address_pool: "100.96.0.0/16".into(),
        sites: vec![TunnelSite {
            name: "dc1".into(),
            tenant: "acme".into(),
            public_key: SITE_KEY.into(),
            tunnel_address: Some("100.96.0.10".into()),
            advertised_cidrs: vec!["10.1.0.0/16".into()],
            allowed_targets: vec![AllowedTarget {
                host: "10.1.2.3".into(),
                ports: vec![3000],
                protocol: TransportProtocol::Tcp,
            }],
        }],
    }
}

/// A complete, valid snapshot of the world with `policies`.
pub fn snapshot(policies: Vec<CompiledPolicy>) -> Snapshot {
    let mut s = Snapshot::new(ObjectRef::new("rtn-system", "edge"));
    s.listeners = listeners();
    s.tenants = tenants();
    s.resources = resources();
    s.policies = policies;
    s.tunnel = Some(tunnel());
    s
}

// ----- policies -----

#[derive(Debug, Clone)]
pub struct P(pub CompiledPolicy);

pub fn allow(name: &str) -> P {
    P(CompiledPolicy {
        namespace: "acme-apps".into(),
        name: name.into(),
        tenant: "acme".into(),
        action: PolicyAction::Allow,
        mode: PolicyMode::Enforce,
        targets: vec![],
        rules: vec![],
        session: None,
        unresolved: vec![],
    })
}

pub fn deny(name: &str) -> P {
    let mut p = allow(name);
    p.0.action = PolicyAction::Deny;
    p
}

impl P {
    pub fn target(mut self, resource: &str) -> Self {
        let (ns, name) = resource.split_once('/').unwrap_or(("acme-apps", resource));
        self.0.targets.push(PolicyTarget {
            resource: ObjectRef::new(ns, name),
            section_name: None,
        });
        self
    }
    pub fn section(mut self, resource: &str, section: &str) -> Self {
        let (ns, name) = resource.split_once('/').unwrap_or(("acme-apps", resource));
        self.0.targets.push(PolicyTarget {
            resource: ObjectRef::new(ns, name),
            section_name: Some(section.into()),
        });
        self
    }
    pub fn rule(mut self, r: R) -> Self {
        self.0.rules.push(r.0);
        self
    }
    pub fn dry_run(mut self) -> Self {
        self.0.mode = PolicyMode::DryRun;
        self
    }
    pub fn unresolved(mut self, why: &str) -> Self {
        self.0.unresolved.push(why.into());
        self
    }
    pub fn tenant(mut self, ns: &str, tenant: &str) -> Self {
        self.0.namespace = ns.into();
        self.0.tenant = tenant.into();
        self
    }
    pub fn session(mut self, seconds: u64) -> Self {
        self.0.session = Some(PolicySession {
            duration_seconds: seconds,
        });
        self
    }
    pub fn build(self) -> CompiledPolicy {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct R(pub PolicyRule);

pub fn rule(name: &str) -> R {
    R(PolicyRule {
        name: name.into(),
        from: vec![],
        require: vec![],
        exclude: vec![],
        to: vec![],
        when: None,
    })
}

impl R {
    pub fn from(mut self, p: Principal) -> Self {
        self.0.from.push(p);
        self
    }
    pub fn require(mut self, p: Principal) -> Self {
        self.0.require.push(p);
        self
    }
    pub fn exclude(mut self, p: Principal) -> Self {
        self.0.exclude.push(p);
        self
    }
    pub fn to(mut self, op: Operation) -> Self {
        self.0.to.push(op);
        self
    }
    pub fn when(mut self, days: &str, from: &str, to: &str, tz: &str) -> Self {
        self.0.when = Some(When {
            schedule: Some(Schedule {
                days: Days::Spec(days.into()),
                from: from.into(),
                to: to.into(),
                time_zone: tz.into(),
            }),
        });
        self
    }
}

// ----- principals -----

pub fn anyone() -> Principal {
    Principal::Anonymous
}
pub fn authenticated() -> Principal {
    Principal::Authenticated
}
pub fn group(idp: Option<&str>, g: &str) -> Principal {
    Principal::User(UserPrincipal {
        idp: idp.map(Into::into),
        groups: vec![g.into()],
        ..UserPrincipal::default()
    })
}
pub fn user_p(u: UserPrincipal) -> Principal {
    Principal::User(u)
}
pub fn claim(name: &str, value: &str) -> Principal {
    Principal::User(UserPrincipal {
        claims: vec![ClaimMatch {
            name: name.into(),
            values: vec![value.into()],
        }],
        ..UserPrincipal::default()
    })
}
pub fn email(e: &str) -> Principal {
    Principal::User(UserPrincipal {
        emails: vec![e.into()],
        ..UserPrincipal::default()
    })
}
pub fn cidrs(c: &[&str], except: &[&str]) -> Principal {
    Principal::SourceCidrs(SourceCidrs {
        cidrs: c.iter().map(|s| s.to_string()).collect(),
        except: except.iter().map(|s| s.to_string()).collect(),
    })
}
pub fn site_p(names: &[&str]) -> Principal {
    Principal::Site(SitePrincipal {
        names: names.iter().map(|s| s.to_string()).collect(),
    })
}
pub fn sa_p(namespace: &str, names: &[&str]) -> Principal {
    Principal::ServiceAccount(ServiceAccountPrincipal {
        namespace: namespace.into(),
        names: names.iter().map(|s| s.to_string()).collect(),
    })
}
pub fn cert_p(c: CertificatePrincipal) -> Principal {
    Principal::ClientCertificate(c)
}
pub fn apikey_p(idp: Option<&str>, ids: &[&str]) -> Principal {
    Principal::ApiKey(ApiKeyPrincipal {
        idp: idp.map(Into::into),
        client_ids: ids.iter().map(|s| s.to_string()).collect(),
    })
}

pub fn op(methods: &[&str], paths: &[(&str, PathMatchType)]) -> Operation {
    Operation {
        methods: methods.iter().map(|s| s.to_string()).collect(),
        paths: paths
            .iter()
            .map(|(v, k)| PathMatch {
                kind: *k,
                value: v.to_string(),
            })
            .collect(),
        hosts: vec![],
        ports: vec![],
    }
}

// ----- callers -----

pub fn nobody() -> Identity {
    Identity::anonymous(Some("192.0.2.1".parse().unwrap()))
}

pub fn user(idp: &str, sub: &str, groups: &[&str]) -> Identity {
    Identity {
        user: Some(std::sync::Arc::new(UserIdentity {
            idp: idp.into(),
            subject: sub.into(),
            email: Some(format!("{sub}@acme.example")),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            claims: BTreeMap::new(),
            scopes: vec![],
            known_claims: None,
            derived: Default::default(),
        })),
        ..nobody()
    }
}

pub fn with_claim(mut id: Identity, name: &str, values: &[&str]) -> Identity {
    if let Some(u) = id.user.as_mut().map(std::sync::Arc::make_mut) {
        u.claims
            .insert(name.into(), values.iter().map(|s| s.to_string()).collect());
    }
    id
}

pub fn with_email(mut id: Identity, email: &str) -> Identity {
    if let Some(u) = id.user.as_mut().map(std::sync::Arc::make_mut) {
        u.email = Some(email.into());
    }
    id
}

/// A user whose provider asserted `email` without vouching for it: no verified email, the
/// raw claim only (what identity_from_claims makes of a token without `email_verified`).
pub fn with_unverified_email(mut id: Identity, email: &str) -> Identity {
    if let Some(u) = id.user.as_mut().map(std::sync::Arc::make_mut) {
        u.email = None;
        u.claims.insert("email".into(), vec![email.into()]);
    }
    id
}

/// The user as a browser session sees it: only the claims named in `known` are carried (see
/// `UserIdentity::known_claims`); their values stay as `id` has them.
pub fn without_email(mut id: Identity) -> Identity {
    if let Some(u) = id.user.as_mut().map(std::sync::Arc::make_mut) {
        u.email = None;
    }
    id
}

pub fn as_session(mut id: Identity, known: &[&str]) -> Identity {
    if let Some(u) = id.user.as_mut().map(std::sync::Arc::make_mut) {
        u.known_claims = Some(known.iter().map(|s| s.to_string()).collect());
    }
    id
}

pub fn with_scopes(mut id: Identity, scopes: &[&str]) -> Identity {
    if let Some(u) = id.user.as_mut().map(std::sync::Arc::make_mut) {
        u.scopes = scopes.iter().map(|s| s.to_string()).collect();
    }
    id
}

pub fn with_ip(mut id: Identity, ip: &str) -> Identity {
    id.source_ip = Some(ip.parse().unwrap());
    id
}

pub fn cert_id(uris: &[&str], dns: &[&str], spki: &str) -> Identity {
    Identity {
        client_certificate: Some(CertificateIdentity {
            idp: "corp-ca".into(),
            san_uris: uris.iter().map(|s| s.to_string()).collect(),
            san_dns_names: dns.iter().map(|s| s.to_string()).collect(),
            san_emails: vec![],
            spki_sha256: spki.into(),
        }),
        ..nobody()
    }
}

pub fn apikey_id(client: &str) -> Identity {
    Identity {
        api_key: Some(ApiKeyIdentity {
            idp: "partners".into(),
            client_id: client.into(),
        }),
        ..nobody()
    }
}

pub fn site_id(name: &str, tenant: &str) -> Identity {
    Identity {
        site: Some(SiteIdentity {
            name: name.into(),
            tenant: tenant.into(),
        }),
        ..nobody()
    }
}

pub fn sa_id(namespace: &str, name: &str) -> Identity {
    Identity {
        service_account: Some(ServiceAccountIdentity {
            namespace: namespace.into(),
            name: name.into(),
        }),
        ..nobody()
    }
}
