//! Workload identity, token to decision: a ServiceAccount token of the cluster's issuer
//! becomes a `ServiceAccountIdentity` that `serviceAccount` principals match; anything else
//! (a tenant IdP's token that merely looks like one, an expired token, another audience, a
//! `sub` the `kubernetes.io` claim contradicts) never does.

use crate::common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rustronaut_contract::eval::OwnedRequest;
use rustronaut_contract::identity::Identity;
use rustronaut_contract::identity::cache::TokenCache;
use rustronaut_contract::identity::jwt::{Jwks, JwtError, JwtVerifier, JwtVerifierConfig};
use rustronaut_contract::identity::serviceaccount::{
    AUDIENCE, ServiceAccountError, ServiceAccountVerifier,
};
use rustronaut_contract::policy::PolicySet;
use rustronaut_contract::{Effect, Reason, evaluate};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

const NOW: u64 = 1_700_000_000;
const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
const TENANT_IDP: &str = "https://token.example";

fn cluster_key() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("../fixtures/ec-p256.pem")).unwrap()
}
fn tenant_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rsa-2048.pem")).unwrap()
}

fn jwks(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwks {
    let mut j = Jwk::from_encoding_key(key, alg).unwrap();
    j.common.key_id = Some(kid.into());
    Jwks::from_value(&json!({"keys": [serde_json::to_value(j).unwrap()]})).unwrap()
}

fn cluster() -> ServiceAccountVerifier {
    ServiceAccountVerifier::new(CLUSTER, jwks(&cluster_key(), Algorithm::ES256, "k8s")).unwrap()
}

/// A tenant's own JWT provider (its IdP lets anyone pick a `sub`).
fn tenant_idp() -> JwtVerifier {
    JwtVerifier::new(
        JwtVerifierConfig {
            idp: "ci".into(),
            issuer: TENANT_IDP.into(),
            audiences: vec![AUDIENCE.into()],
            groups_claim: "groups".into(),
            email_claim: "email".into(),
            clock_skew: 60,
        },
        jwks(&tenant_key(), Algorithm::RS256, "tenant"),
    )
    .unwrap()
}

/// The claims of a TokenRequest token for `ns/name`.
fn sa_claims(ns: &str, name: &str) -> Value {
    json!({
        "iss": CLUSTER, "aud": [AUDIENCE], "sub": format!("system:serviceaccount:{ns}:{name}"),
        "exp": NOW + 3600, "iat": NOW - 5, "nbf": NOW - 5,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u-1"}},
    })
}

fn cluster_token(claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k8s".into());
    encode(&h, claims, &cluster_key()).unwrap()
}

fn tenant_token(claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("tenant".into());
    encode(&h, claims, &tenant_key()).unwrap()
}

fn decide(id: Identity) -> (Effect, Reason) {
    let set = PolicySet::from_snapshot(&snapshot(vec![
        allow("checkout-only")
            .target("grafana")
            .rule(rule("r").from(sa_p("shop", &["checkout"])))
            .build(),
    ]));
    assert!(set.names_service_accounts("acme"));
    assert!(!set.names_service_accounts("globex"));
    let req = OwnedRequest::new("acme-apps", "grafana", id);
    let d = evaluate(
        &set,
        &req.as_request(),
        UNIX_EPOCH + Duration::from_secs(NOW),
        "t",
    );
    (d.effect, d.reason)
}

fn with_account(
    id: Result<rustronaut_contract::identity::ServiceAccountIdentity, ServiceAccountError>,
) -> Identity {
    Identity {
        service_account: Some(id.expect("token verifies")),
        ..nobody()
    }
}

#[test]
fn the_right_account_is_allowed_and_another_of_its_namespace_denied() {
    let v = cluster();
    let cache = TokenCache::new(16).unwrap();
    let a = v.verify_cached(&cache, &cluster_token(&sa_claims("shop", "checkout")), NOW);
    assert_eq!(
        a.as_ref().map(|s| (s.namespace.as_str(), s.name.as_str())),
        Ok(("shop", "checkout"))
    );
    assert_eq!(decide(with_account(a)), (Effect::Allow, Reason::AllowedBy));
    let b = v.verify(&cluster_token(&sa_claims("shop", "cart")), NOW);
    assert_eq!(
        decide(with_account(b)),
        (Effect::Deny, Reason::NoAllowMatched)
    );
}

#[test]
fn a_tenant_token_that_looks_like_a_service_account_never_is_one() {
    // Everything a cluster token says, but issued (and signed) by the tenant's IdP.
    let mut claims = sa_claims("shop", "checkout");
    claims["iss"] = json!(TENANT_IDP);
    let forged = tenant_token(&claims);
    let v = cluster();
    assert!(
        !v.claims_issuer(&forged),
        "routed to the cluster's verifier"
    );
    // Signed with a key the cluster does not have: refused before its claims are read.
    assert_eq!(
        v.verify(&forged, NOW),
        Err(ServiceAccountError::Token(JwtError::UnknownKid(
            "tenant".into()
        )))
    );
    // The tenant's provider accepts it, as a user, which a serviceAccount principal ignores.
    let user = tenant_idp().verify(&forged, NOW).unwrap().identity;
    assert_eq!(user.subject, "system:serviceaccount:shop:checkout");
    let id = Identity {
        user: Some(user),
        ..nobody()
    };
    assert_eq!(decide(id), (Effect::Deny, Reason::NoAllowMatched));
    // Naming the cluster's issuer does not help without the cluster's key.
    claims["iss"] = json!(CLUSTER);
    let signed_by_tenant = tenant_token(&claims);
    assert!(v.claims_issuer(&signed_by_tenant));
    assert!(matches!(
        v.verify(&signed_by_tenant, NOW),
        Err(ServiceAccountError::Token(JwtError::UnknownKid(_)))
    ));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let v = cluster();
    let mut c = sa_claims("shop", "checkout");
    c["exp"] = json!(NOW - 61);
    assert!(matches!(
        v.verify(&cluster_token(&c), NOW),
        Err(ServiceAccountError::Token(JwtError::Expired { .. }))
    ));
    let mut c = sa_claims("shop", "checkout");
    c["nbf"] = json!(NOW + 600);
    assert!(matches!(
        v.verify(&cluster_token(&c), NOW),
        Err(ServiceAccountError::Token(JwtError::NotYetValid { .. }))
    ));
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let v = cluster();
    for aud in [
        json!(["https://kubernetes.default.svc"]),
        json!("vault"),
        json!([]),
    ] {
        let mut c = sa_claims("shop", "checkout");
        c["aud"] = aud.clone();
        assert_eq!(
            v.verify(&cluster_token(&c), NOW),
            Err(ServiceAccountError::Token(JwtError::WrongAudience)),
            "{aud}"
        );
    }
}

#[test]
fn sub_and_the_kubernetes_claim_must_name_the_same_account() {
    let v = cluster();
    let mut c = sa_claims("shop", "checkout");
    c["kubernetes.io"]["serviceaccount"]["name"] = json!("cart");
    assert!(matches!(
        v.verify(&cluster_token(&c), NOW),
        Err(ServiceAccountError::ClaimMismatch(_))
    ));
    let mut c = sa_claims("shop", "checkout");
    c["kubernetes.io"]["namespace"] = json!("other");
    assert!(matches!(
        v.verify(&cluster_token(&c), NOW),
        Err(ServiceAccountError::ClaimMismatch(_))
    ));
    let mut c = sa_claims("shop", "checkout");
    c.as_object_mut().unwrap().remove("kubernetes.io");
    assert!(matches!(
        v.verify(&cluster_token(&c), NOW),
        Err(ServiceAccountError::ClaimMismatch(_))
    ));
    let mut c = sa_claims("shop", "checkout");
    c["sub"] = json!("system:node:worker-1");
    assert!(matches!(
        v.verify(&cluster_token(&c), NOW),
        Err(ServiceAccountError::NotAServiceAccount(_))
    ));
}
