//! Decisions per second with 10, 1,000 and 10,000 policies.
//!
//! Two shapes per size:
//! - `spread`: policies spread over many Resources (10 per Resource), the realistic case; the
//!   index means a request only looks at its own Resource's policies.
//! - `one_resource`: every policy targets the same Resource and only the last-ranked Allow
//!   matches, so evaluation walks every Deny and every Allow rule: the worst case.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustronaut_contract::eval::{Request, evaluate, parse_time};
use rustronaut_contract::identity::{Identity, UserIdentity};
use rustronaut_contract::path::normalize_path;
use rustronaut_contract::policy::PolicySet;
use rustronaut_contract::snapshot::*;
use std::collections::BTreeMap;
use std::hint::black_box;

fn tenant() -> Tenant {
    Tenant {
        name: "acme".into(),
        domains: vec![],
        identity_providers: vec![IdentityProvider {
            name: "okta".into(),
            kind: IdentityProviderKind::Oidc(OidcProvider {
                issuer: "https://okta.example".into(),
                client_id: "rtn".into(),
                client_secret: Sensitive::new("s"),
                scopes: vec!["openid".into()],
                claim_mappings: ClaimMappings::default(),
            }),
        }],
        session: SessionConfig::default(),
    }
}

fn resource(name: &str) -> CompiledResource {
    CompiledResource {
        namespace: "apps".into(),
        name: name.into(),
        tenant: "acme".into(),
        protocol: ResourceProtocol::Http,
        listeners: vec!["https".into()],
        hostnames: vec![format!("{name}.acme.example")],
        ports: vec![],
        rules: vec![RouteRule {
            name: "main".into(),
            matches: vec![],
            upstreams: vec![],
            load_balancing: LoadBalancing::RoundRobin,
            health_check: None,
            rate_limit: None,
            timeout_ms: 1000,
        }],
        upstreams: vec![],
        load_balancing: LoadBalancing::RoundRobin,
        health_check: None,
    }
}

/// Policy `i` on `resource`: every 5th a Deny for contractors, the rest Allows for group
/// `g<i>` on GET /api with an MFA requirement; `last_allow_matches` makes the final Allow
/// match the benchmark's caller.
fn policy(i: usize, resource: &str, matches: bool) -> CompiledPolicy {
    let deny = i.is_multiple_of(5);
    let group = if matches {
        "sre".to_string()
    } else {
        format!("g{i}")
    };
    CompiledPolicy {
        namespace: "apps".into(),
        name: format!("p{i:05}"),
        tenant: "acme".into(),
        action: if deny {
            PolicyAction::Deny
        } else {
            PolicyAction::Allow
        },
        mode: PolicyMode::Enforce,
        targets: vec![PolicyTarget {
            resource: ObjectRef::new("apps", resource),
            section_name: None,
        }],
        rules: vec![PolicyRule {
            name: "r".into(),
            from: vec![Principal::User(UserPrincipal {
                idp: Some("okta".into()),
                groups: vec![if deny { "contractors".into() } else { group }],
                ..UserPrincipal::default()
            })],
            require: vec![Principal::User(UserPrincipal {
                claims: vec![ClaimMatch {
                    name: "amr".into(),
                    values: vec!["mfa".into()],
                }],
                ..UserPrincipal::default()
            })],
            exclude: vec![Principal::SourceCidrs(SourceCidrs {
                cidrs: vec!["198.51.100.0/24".into()],
                except: vec![],
            })],
            to: vec![Operation {
                methods: vec!["GET".into()],
                paths: vec![PathMatch {
                    kind: PathMatchType::PathPrefix,
                    value: "/api".into(),
                }],
                ..Operation::default()
            }],
            when: None,
        }],
        session: None,
        unresolved: vec![],
    }
}

fn spread(n: usize) -> (Vec<CompiledResource>, Vec<CompiledPolicy>) {
    let resources_n = n.div_ceil(10).max(1);
    let resources = (0..resources_n)
        .map(|r| resource(&format!("app{r}")))
        .collect();
    let policies = (0..n)
        .map(|i| {
            let r = i / 10;
            // The last Allow of app0 matches.
            let matches = r == 0 && i == (n.min(10) - 1);
            policy(i, &format!("app{r}"), matches)
        })
        .collect();
    (resources, policies)
}

fn one_resource(n: usize) -> (Vec<CompiledResource>, Vec<CompiledPolicy>) {
    let policies = (0..n).map(|i| policy(i, "app0", i == n - 1)).collect();
    (vec![resource("app0")], policies)
}

fn caller() -> Identity {
    let mut claims = BTreeMap::new();
    claims.insert("amr".to_string(), vec!["mfa".to_string()]);
    Identity {
        user: Some(std::sync::Arc::new(UserIdentity {
            idp: "okta".into(),
            subject: "alice".into(),
            email: Some("alice@acme.example".into()),
            groups: vec!["sre".into(), "dev".into()],
            claims,
            scopes: vec![],
            known_claims: None,
            derived: Default::default(),
        })),
        source_ip: Some("192.0.2.1".parse().unwrap()),
        ..Identity::default()
    }
}

fn bench(c: &mut Criterion) {
    let now = parse_time("2025-01-08T12:00:00Z").unwrap();
    let identity = caller();
    let path = normalize_path("/api/dashboards/42").unwrap();
    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 10_000] {
        for (shape, (resources, policies)) in
            [("spread", spread(n)), ("one_resource", one_resource(n))]
        {
            let set = PolicySet::compile(&[tenant()], &resources, &policies);
            assert!(set.problems().is_empty());
            let req = Request::new("apps", "app0", &identity)
                .section("main")
                .http("GET", &path)
                .host("app0.acme.example")
                .port(443);
            let d = evaluate(&set, &req, now, "bench");
            assert!(
                d.allowed(),
                "{shape}/{n}: the benchmark request must be allowed: {d:?}"
            );
            group.bench_with_input(BenchmarkId::new(shape, n), &set, |b, set| {
                b.iter(|| evaluate(black_box(set), black_box(&req), now, "bench-decision"))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("compile");
    for n in [1_000usize, 10_000] {
        let (resources, policies) = spread(n);
        group.bench_with_input(BenchmarkId::new("spread", n), &n, |b, _| {
            b.iter(|| PolicySet::compile(&[tenant()], black_box(&resources), black_box(&policies)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
