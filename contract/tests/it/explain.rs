//! explain(): the closest Allow rule and the clause that failed.

use crate::common::*;
use rustronaut_contract::eval::{ClauseFailure, OwnedRequest, parse_time};
use rustronaut_contract::explain::{ExplainError, explain};
use rustronaut_contract::policy::PolicySet;
use rustronaut_contract::snapshot::{PathMatchType, PolicyAction};
use rustronaut_contract::{Effect, Reason, evaluate};

fn req(id: rustronaut_contract::Identity, target: &str) -> OwnedRequest {
    OwnedRequest::new("acme-apps", "grafana", id)
        .with_http("GET", target)
        .unwrap()
        .with_routed_section(&resources()[0])
}

#[test]
fn closest_allow_and_failed_clause() {
    let policies = vec![
        // Fails from and require: 2 failures.
        allow("a-far")
            .target("grafana")
            .rule(
                rule("far")
                    .from(group(None, "admins"))
                    .require(claim("amr", "mfa")),
            )
            .build(),
        // Fails only the MFA requirement: 1 failure.
        allow("b-near")
            .target("grafana")
            .rule(
                rule("near")
                    .from(group(None, "sre"))
                    .require(claim("amr", "mfa")),
            )
            .build(),
        // Fails to and from: 2 failures.
        allow("c-path")
            .target("grafana")
            .rule(
                rule("path")
                    .from(group(None, "dev"))
                    .to(op(&[], &[("/api", PathPrefix)])),
            )
            .build(),
        deny("d-deny")
            .target("grafana")
            .rule(rule("contractors").from(group(None, "contractors")))
            .build(),
        deny("e-broken")
            .dry_run()
            .unresolved("x")
            .target("grafana")
            .rule(rule("r").from(anyone()))
            .build(),
    ];
    use PathMatchType::PathPrefix;
    let set = PolicySet::compile(&tenants(), &resources(), &policies);
    let now = parse_time("2025-01-08T12:00:00Z").unwrap();
    let r = req(user("okta", "alice", &["sre"]), "/web");
    let x = explain(&set, &r.as_request(), now, "id-1").unwrap();
    assert_eq!(
        x.decision,
        evaluate(&set, &r.as_request(), now, "id-1"),
        "same decision as evaluate"
    );
    assert_eq!(x.decision.effect, Effect::Deny);
    assert_eq!(x.decision.reason, Reason::NoAllowMatched);
    let closest = x.closest_allow.as_ref().unwrap();
    assert_eq!(&*closest.policy.name, "b-near");
    assert_eq!(closest.rule.as_deref(), Some("near"));
    assert_eq!(
        closest.failures,
        vec![ClauseFailure::RequireFailed { index: 0 }]
    );
    assert_eq!(closest.first_failure().unwrap().as_str(), "RequireFailed");
    // Every considered rule is traced, in rank order, deny rules included.
    let names: Vec<String> = x.rules.iter().map(|t| t.policy.name.to_string()).collect();
    assert_eq!(
        names,
        vec!["a-far", "b-near", "c-path", "d-deny", "e-broken"]
    );
    let c = &x.rules[2];
    assert_eq!(
        c.failures,
        vec![ClauseFailure::ToNotMatched, ClauseFailure::FromNotMatched]
    );
    assert_eq!(x.rules[3].action, PolicyAction::Deny);
    assert!(matches!(
        x.rules[4].failures[0],
        ClauseFailure::Unresolved { .. }
    ));
    assert_eq!(x.rules[4].rule, None);

    // With the MFA claim the closest rule matches and is the deciding one.
    let r = req(
        with_claim(user("okta", "alice", &["sre"]), "amr", &["mfa"]),
        "/web",
    );
    let x = explain(&set, &r.as_request(), now, "id-2").unwrap();
    assert_eq!(x.decision.effect, Effect::Allow);
    let closest = x.closest_allow.unwrap();
    assert!(closest.matched());
    assert_eq!(&*closest.policy.name, "b-near");

    // Schedules and excludes are reported too.
    let policies = vec![
        allow("p")
            .target("grafana")
            .rule(
                rule("r")
                    .from(anyone())
                    .exclude(authenticated())
                    .when("Sat-Sun", "00:00", "23:59", "UTC"),
            )
            .build(),
    ];
    let set = PolicySet::compile(&tenants(), &resources(), &policies);
    let r = req(user("okta", "alice", &[]), "/");
    let x = explain(&set, &r.as_request(), now, "id-3").unwrap();
    assert_eq!(
        x.closest_allow.unwrap().failures,
        vec![
            ClauseFailure::OutsideSchedule,
            ClauseFailure::Excluded { index: 0 }
        ]
    );

    // Serialisable for the console.
    let json = serde_json::to_value(&x.decision).unwrap();
    assert_eq!(json["decisionId"], "id-3");
    assert_eq!(json["reason"], "NoAllowMatched");

    let r = OwnedRequest::new("acme-apps", "nope", user("okta", "a", &[]));
    assert!(matches!(
        explain(&set, &r.as_request(), now, "x"),
        Err(ExplainError::UnknownResource { .. })
    ));
}
