//! Order independence (GitOps: the apply order must never matter): shuffling the policies,
//! resources and tenants never changes any decision, including which policy and rule are
//! named, the shadow outcome and the login hint.

use crate::common::*;
use proptest::prelude::*;
use rustronaut_contract::eval::{OwnedRequest, parse_time};
use rustronaut_contract::evaluate;
use rustronaut_contract::explain::explain;
use rustronaut_contract::identity::Identity;
use rustronaut_contract::policy::PolicySet;
use rustronaut_contract::snapshot::{
    CompiledPolicy, Operation, PathMatchType, PolicyAction, PolicyMode, Principal,
};

fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        Just(Principal::Anonymous),
        Just(Principal::Authenticated),
        prop::sample::select(vec!["sre", "dev", "contractors"]).prop_map(|g| group(None, g)),
        prop::sample::select(vec!["okta", "okta2"]).prop_map(|i| group(Some(i), "sre")),
        prop::sample::select(vec!["10.0.0.0/8", "192.0.2.0/24", "10.0.0.0/33"])
            .prop_map(|c| cidrs(&[c], &[])),
        Just(claim("amr", "mfa")),
        Just(site_p(&["dc1"])),
        Just(apikey_p(None, &["ci"])),
        Just(group(Some("no-such-idp"), "sre")),
    ]
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        Just(op(&["GET"], &[])),
        Just(op(&[], &[("/api", PathPrefix)])),
        Just(op(&["POST"], &[("/admin", PathMatchType::Exact)])),
        Just(Operation {
            ports: vec![5432],
            ..Default::default()
        }),
    ]
}
use PathMatchType::PathPrefix;

fn policy_rule(i: usize) -> impl Strategy<Value = R> {
    (
        prop::collection::vec(principal(), 0..3),
        prop::collection::vec(principal(), 0..2),
        prop::collection::vec(principal(), 0..2),
        prop::option::of(operation()),
        prop::option::of(prop::sample::select(vec![
            ("Mon-Fri", "07:00", "20:00", "Europe/Berlin"),
            ("Sat", "22:00", "06:00", "UTC"),
            ("Mon", "00:00", "01:00", "Mars/Base"),
        ])),
    )
        .prop_map(move |(from, require, exclude, to, when)| {
            let mut r = rule(&format!("r{i}"));
            r.0.from = from;
            r.0.require = require;
            r.0.exclude = exclude;
            r.0.to = to.into_iter().collect();
            if let Some((d, f, t, z)) = when {
                r = r.when(d, f, t, z);
            }
            r
        })
}

fn policy(i: usize) -> impl Strategy<Value = CompiledPolicy> {
    (
        any::<bool>(),
        prop::sample::select(vec![
            PolicyMode::Enforce,
            PolicyMode::Enforce,
            PolicyMode::DryRun,
        ]),
        prop::sample::select(vec![
            ("grafana", None),
            ("grafana", Some("api")),
            ("grafana", Some("admin")),
            ("db", None),
            ("globex/portal", None),
        ]),
        prop::collection::vec(policy_rule(i), 1..3),
        prop::sample::select(vec![false, false, false, true]),
        prop::sample::select(vec![
            ("acme-apps", "acme"),
            ("acme-apps", "acme"),
            ("globex", "globex"),
        ]),
        prop::sample::select(vec!["a", "b"]),
    )
        .prop_map(
            move |(deny_it, mode, (target, section), rules, unresolved, (ns, tenant), prefix)| {
                let name = format!("{prefix}-{i}");
                let mut p = if deny_it { deny(&name) } else { allow(&name) };
                p = p.tenant(ns, tenant);
                p = match section {
                    Some(s) => p.section(target, s),
                    None => p.target(target),
                };
                for r in rules {
                    p = p.rule(r);
                }
                if unresolved {
                    p = p.unresolved("operator could not resolve");
                }
                let mut built = p.build();
                built.mode = mode;
                built
            },
        )
}

fn policies() -> impl Strategy<Value = Vec<CompiledPolicy>> {
    (1usize..12).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>())
}

fn unconditional_deny(p: &CompiledPolicy, resource: &str) -> bool {
    p.action == PolicyAction::Deny
        && p.mode == PolicyMode::Enforce
        && p.tenant == "acme"
        && p.targets
            .iter()
            .any(|t| t.resource.name == resource && t.section_name.is_none())
        && p.rules.iter().any(|rr| {
            rr.from.contains(&Principal::Anonymous)
                && rr.to.is_empty()
                && rr.when.is_none()
                && rr.require.is_empty()
                && rr.exclude.is_empty()
        })
}

fn identities() -> Vec<Identity> {
    vec![
        nobody(),
        user("okta", "alice", &["sre"]),
        with_claim(user("okta2", "bob", &["dev", "sre"]), "amr", &["mfa"]),
        user("okta", "carl", &["contractors"]),
        with_ip(apikey_id("ci"), "10.1.2.3"),
        site_id("dc1", "acme"),
        with_ip(cert_id(&["spiffe://acme/x"], &[], "00"), "198.51.100.1"),
    ]
}

fn requests(id: &Identity) -> Vec<OwnedRequest> {
    let world = resources();
    let http = |target: &str, method: &str| {
        OwnedRequest::new("acme-apps", "grafana", id.clone())
            .with_http(method, target)
            .unwrap()
            .with_routed_section(&world[0])
    };
    let mut db = OwnedRequest::new("acme-apps", "db", id.clone());
    db.port = Some(5432);
    vec![
        http("/", "GET"),
        http("/api/x", "GET"),
        http("/admin", "POST"),
        db,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn shuffling_policies_never_changes_a_decision(
        (original, shuffled) in policies().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        let tenants_a = tenants();
        let mut tenants_b = tenants();
        tenants_b.reverse();
        let resources_a = resources();
        let mut resources_b = resources();
        resources_b.reverse();
        let a = PolicySet::compile(&tenants_a, &resources_a, &original);
        let b = PolicySet::compile(&tenants_b, &resources_b, &shuffled);
        prop_assert_eq!(a.problems(), b.problems());
        for at in ["2025-01-08T12:00:00Z", "2025-01-11T23:30:00Z"] {
            let now = parse_time(at).unwrap();
            for id in identities() {
                for r in requests(&id) {
                    let da = evaluate(&a, &r.as_request(), now, "d");
                    let db = evaluate(&b, &r.as_request(), now, "d");
                    prop_assert_eq!(&da, &db);
                    let xa = explain(&a, &r.as_request(), now, "d").unwrap();
                    let xb = explain(&b, &r.as_request(), now, "d").unwrap();
                    prop_assert_eq!(xa, xb);
                    // Semantics sanity, whatever the order: nothing is allowed while an
                    // enforced Deny of the Resource's tenant has an unconditional rule for
                    // anyone on the whole Resource.
                    if da.allowed() {
                        prop_assert!(!shuffled.iter().any(|p| unconditional_deny(p, &r.name)));
                    }
                }
            }
        }
    }
}
