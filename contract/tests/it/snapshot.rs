//! The snapshot contract: the documented JSON parses and validates, round trips, future
//! versions are refused with an actionable message, validate() reports each problem kind
//! with its path, and the content hash depends on content only.

use crate::common::*;
use rustronaut_contract::path::normalize_path;
use rustronaut_contract::policy::PolicySet;
use rustronaut_contract::snapshot::*;
use serde_json::{Map, Value};

const FIXTURE: &str = include_str!("../fixtures/snapshot-v1.json");

#[test]
fn documented_fixture_parses_and_validates() {
    let s = Snapshot::load(FIXTURE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.schema_version, SCHEMA_VERSION);
    assert_eq!(s.gateway, ObjectRef::new("rtn-system", "edge"));
    assert!(s.client_ip_detection.proxy_protocol);
    assert_eq!(s.listeners.len(), 2);
    assert_eq!(s.resources[0].rules[0].upstreams[0].weight, 90);
    assert_eq!(
        s.resources[0].rules[1].upstreams[0].weight, 1,
        "default weight"
    );
    assert_eq!(
        s.resources[0].rules[1].timeout_ms, 60_000,
        "default timeout"
    );
    assert_eq!(
        s.resources[0].rules[0].load_balancing,
        LoadBalancing::ConsistentHash {
            hash_key: HashKey::ClientIp
        }
    );
    assert_eq!(s.policies[1].mode, PolicyMode::DryRun);
    assert!(
        matches!(&s.policies[1].rules[0].when.as_ref().unwrap().schedule.as_ref().unwrap().days, Days::List(d) if d.len() == 2)
    );
    assert_eq!(
        s.policies[1].rules[0]
            .when
            .as_ref()
            .unwrap()
            .schedule
            .as_ref()
            .unwrap()
            .time_zone,
        "UTC",
        "default time zone"
    );
    // Secrets never print.
    let debug = format!("{s:?}");
    assert!(!debug.contains("s3cret"), "client secret leaked into Debug");
    assert!(debug.contains("Sensitive([redacted])"));
    // The policies compile without problems.
    let set = PolicySet::from_snapshot(&s);
    assert!(set.problems().is_empty(), "{:?}", set.problems());
}

#[test]
fn json_round_trip() {
    let s = Snapshot::from_json(FIXTURE.as_bytes()).unwrap();
    let again = Snapshot::from_json(&s.to_json()).unwrap();
    assert_eq!(s, again);
    assert_eq!(s.content_hash(), again.content_hash());
    let built = snapshot(vec![
        allow("p")
            .target("grafana")
            .rule(rule("r").from(anyone()))
            .build(),
    ]);
    built.validate().unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(Snapshot::from_json(&built.to_json()).unwrap(), built);
}

#[test]
fn future_versions_are_refused_with_a_clear_message() {
    let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
    v["schemaVersion"] = Value::from(7);
    // A future version may also have fields this build does not know.
    v["somethingNew"] = Value::from(true);
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(
        err,
        SnapshotError::UnsupportedVersion { found: 7, max: 1 }
    ));
    assert_eq!(
        err.to_string(),
        "snapshot schema version 7 is newer than this gateway understands (max 1): upgrade the gateway"
    );
    for bad in [
        r#"{"gateway": {}}"#,
        r#"{"schemaVersion": 0}"#,
        r#"{"schemaVersion": "1"}"#,
        r#"{"schemaVersion": -1}"#,
    ] {
        assert!(
            matches!(
                Snapshot::from_json(bad.as_bytes()),
                Err(SnapshotError::MissingVersion)
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        Snapshot::from_json(b"not json"),
        Err(SnapshotError::Json(_))
    ));
}

#[test]
fn unknown_fields_are_refused_not_ignored() {
    for pointer in [
        "",
        "/policies/0/rules/0",
        "/policies/0/rules/0/from/0/user",
        "/resources/0",
        "/listeners/0/tls",
    ] {
        let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
        v.pointer_mut(pointer).unwrap()["surprise"] = Value::from(1);
        let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, SnapshotError::Json(_)), "{pointer}: {err}");
        assert!(err.to_string().contains("surprise"), "{pointer}: {err}");
    }
}

/// Rewrites every object with its keys in reverse order.
fn reverse_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.reverse();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), reverse_keys(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(reverse_keys).collect()),
        other => other.clone(),
    }
}

/// Serialises with object keys in the reverse of their usual order, even if serde_json keeps
/// insertion order in this build.
fn to_string_reversed(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            keys.reverse();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), to_string_reversed(&m[k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(to_string_reversed)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

#[test]
fn content_hash_depends_on_content_only() {
    let s = Snapshot::from_json(FIXTURE.as_bytes()).unwrap();
    let h = s.content_hash();
    assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
    // Map keys in another order, in the text and in the parsed maps (the inline JWKS is a
    // serde_json::Value).
    let v: Value = serde_json::from_str(FIXTURE).unwrap();
    let reordered = to_string_reversed(&reverse_keys(&v));
    assert_ne!(
        reordered.replace(char::is_whitespace, ""),
        FIXTURE.replace(char::is_whitespace, "")
    );
    let s2 = Snapshot::from_json(reordered.as_bytes()).unwrap();
    assert_eq!(s2.content_hash(), h);
    // Unordered lists in another order.
    let mut s3 = s.clone();
    s3.policies.reverse();
    s3.resources.reverse();
    s3.listeners.reverse();
    assert_eq!(s3.content_hash(), h);
    // Any change of content changes it.
    let mut s4 = s.clone();
    s4.policies[0].rules[0].name = "sre2".into();
    assert_ne!(s4.content_hash(), h);
    let mut s5 = s.clone();
    s5.resources[0].rules[0].upstreams[0].weight = 91;
    assert_ne!(s5.content_hash(), h);
    // Ordered lists stay ordered: swapping rules is a different snapshot.
    let mut s6 = s.clone();
    s6.resources[0].rules.reverse();
    assert_ne!(s6.content_hash(), h);
    // The canonical form has sorted keys and no whitespace.
    let canon = String::from_utf8(s.canonical_json()).unwrap();
    assert!(canon.starts_with("{\"clientIPDetection\":{\"proxyProtocol\":true,\"trustedHops\":0,\"trustedPeerCIDRs\":[\"10.0.0.0/8\"]},\"gateway\":{\"name\":\"edge\",\"namespace\":\"rtn-system\"}"), "{}", &canon[..120]);
}

fn kinds(s: &Snapshot) -> Vec<ValidationError> {
    s.validate().err().unwrap_or_default()
}

fn has(
    errors: &[ValidationError],
    path: &str,
    pred: impl Fn(&ValidationErrorKind) -> bool,
) -> bool {
    errors.iter().any(|e| e.path == path && pred(&e.kind))
}

/// Issue 14, item 9: a PROXY header or X-Forwarded-For is believed only from listed peers,
/// so turning either on without listing them is refused (not read as "trust everyone").
#[test]
fn forwarded_addresses_need_trusted_peers() {
    let mut s = snapshot(vec![]);
    assert_eq!(kinds(&s), vec![]);
    for (proxy_protocol, trusted_hops) in [(true, 0), (false, 1), (true, 2)] {
        s.client_ip_detection = ClientIpDetection {
            proxy_protocol,
            trusted_hops,
            trusted_peer_cidrs: vec![],
        };
        let e = kinds(&s);
        assert!(
            has(&e, "clientIPDetection.trustedPeerCIDRs", |k| matches!(
                k,
                ValidationErrorKind::NoTrustedPeers
            )),
            "{e:?}"
        );
        s.client_ip_detection.trusted_peer_cidrs = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
        assert_eq!(kinds(&s), vec![]);
    }
    s.client_ip_detection.trusted_peer_cidrs = vec!["10.0.0.0/40".into()];
    assert!(has(
        &kinds(&s),
        "clientIPDetection.trustedPeerCIDRs[0]",
        |k| matches!(k, ValidationErrorKind::InvalidCidr(_))
    ));
}

#[test]
fn validate_reports_every_problem_with_its_path() {
    use ValidationErrorKind as K;
    let mut s = snapshot(vec![]);
    s.schema_version = 2;
    // Listeners: duplicate name, port conflict, HTTPS without TLS, hostname on TCP.
    let mut dup = s.listeners[0].clone();
    dup.port = 8443;
    s.listeners.push(dup); // [2]
    s.listeners.push(Listener {
        name: "pg2".into(),
        port: 5432,
        protocol: ListenerProtocol::Tcp,
        hostname: Some("db.acme.example".into()),
        tls: None,
        client_certificate: None,
    }); // [3]
    s.listeners.push(Listener {
        name: "bare".into(),
        port: 9443,
        protocol: ListenerProtocol::Https,
        hostname: None,
        tls: None,
        client_certificate: None,
    }); // [4]
    // Tenants: bad identity providers.
    s.tenants[0].identity_providers.push(IdentityProvider {
        name: "bad-jwks".into(),
        kind: IdentityProviderKind::Jwt(JwtProvider {
            issuer: "https://x.example".into(),
            audiences: vec!["rtn".into()],
            jwks: JwksSource::Inline(serde_json::json!({"keys": [{"kty": "oct", "k": "AA"}]})),
            claim_mappings: ClaimMappings::default(),
            clock_skew_seconds: 60,
            cookie_name: Some("session token".into()),
        }),
    }); // [5]
    if let IdentityProviderKind::ApiKey(a) = &mut s.tenants[0].identity_providers[4].kind {
        a.keys[0].hash = "md5$abc$def".into();
    }
    s.tenants[0].identity_providers.push(oidc("okta")); // [6] duplicate
    // Resources.
    let r0 = &mut s.resources[0];
    r0.rules[0].upstreams[0].weight = 0;
    r0.rules[1].matches.push(RouteMatch {
        path: Some(PathMatch {
            kind: PathMatchType::PathPrefix,
            value: "/a/../b".into(),
        }),
        method: Some("GE T".into()),
        headers: vec![],
    });
    r0.rules[1].rate_limit = Some(RateLimit {
        requests_per_second: 10,
        burst: 5,
        key: HashKey::ClientIp,
    });
    r0.rules[2].upstreams.push(Upstream {
        kind: UpstreamKind::Site(SiteUpstream {
            site: "nowhere".into(),
            host: "10.1.2.3".into(),
            port: 3000,
        }),
        weight: 1,
    });
    r0.rules[2].upstreams.push(Upstream {
        kind: UpstreamKind::Site(SiteUpstream {
            site: "dc1".into(),
            host: "10.9.9.9".into(),
            port: 3000,
        }),
        weight: 1,
    });
    s.resources[1].tenant = "initech".into();
    s.resources[1].listeners.push("https".into());
    s.resources[1].listeners.push("ghost".into());
    let mut conflict = http_resource(
        "acme-apps",
        "grafana2",
        "acme",
        "grafana.acme.example",
        vec![route("r", None)],
    );
    conflict.hostnames.push("www.other.example".into());
    s.resources.push(conflict); // [3]
    s.resources.push(s.resources[0].clone()); // [4] duplicate
    if let Some(t) = &mut s.tunnel {
        let mut twin = t.sites[0].clone();
        twin.name = "dc2".into();
        t.sites.push(twin);
        let mut bad = t.sites[0].clone();
        bad.name = "dc3".into();
        bad.public_key = "not-a-key".into();
        bad.advertised_cidrs = vec!["10.0.0.0/99".into()];
        t.sites.push(bad);
    }
    // Policies.
    s.policies = vec![
        allow("idp")
            .target("grafana")
            .rule(rule("r").from(group(Some("no-such-idp"), "x")))
            .build(), // [0]
        allow("ghost")
            .target("nope")
            .rule(rule("r").from(anyone()))
            .build(), // [1]
        allow("cidr")
            .target("grafana")
            .rule(rule("r").from(cidrs(&["10.0.0.0/33"], &[])))
            .build(), // [2]
        allow("cross")
            .tenant("globex", "globex")
            .target("acme-apps/grafana")
            .rule(rule("r").from(anyone()))
            .build(), // [3]
        allow("section")
            .section("grafana", "nope")
            .rule(rule("r").from(anyone()))
            .build(), // [4]
        allow("empty").target("grafana").rule(rule("r")).build(), // [5]
        allow("sched")
            .target("grafana")
            .rule(
                rule("r")
                    .from(anyone())
                    .when("Mon-Fri", "25:00", "20:00", "UTC"),
            )
            .build(), // [6]
        allow("l4")
            .target("db")
            .rule(rule("r").from(anyone()).to(op(&["GET"], &[])))
            .build(), // [7]
        allow("idp")
            .target("grafana")
            .rule(rule("r").from(anyone()))
            .build(), // [8] duplicate
        allow("norules").target("grafana").build(),               // [9]
        allow("typed")
            .target("grafana")
            .rule(rule("r").from(apikey_p(Some("okta"), &[])))
            .build(), // [10]
        allow("marked")
            .unresolved("operator said so")
            .target("grafana")
            .rule(rule("r").from(group(Some("no-such-idp"), "x")))
            .build(), // [11]
    ];

    let e = kinds(&s);
    let report = e
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    type Check = Box<dyn Fn(&K) -> bool>;
    let expect: Vec<(&str, Check)> = vec![
        (
            "schemaVersion",
            Box::new(|k| matches!(k, K::WrongSchemaVersion { found: 2 })),
        ),
        (
            "listeners[2].name",
            Box::new(|k| {
                matches!(
                    k,
                    K::DuplicateName {
                        what: "listener",
                        ..
                    }
                )
            }),
        ),
        (
            "listeners[3].port",
            Box::new(|k| matches!(k, K::PortConflict { port: 5432, .. })),
        ),
        (
            "listeners[3].hostname",
            Box::new(|k| matches!(k, K::HostnameNotAllowed)),
        ),
        ("listeners[4].tls", Box::new(|k| matches!(k, K::MissingTls))),
        (
            "tenants[0].identityProviders[5].kind.jwt.jwks.inline",
            Box::new(|k| matches!(k, K::InvalidJwks(_))),
        ),
        (
            "tenants[0].identityProviders[5].kind.jwt.cookieName",
            Box::new(|k| matches!(k, K::InvalidIdentityProvider(m) if m.contains("cookie name"))),
        ),
        (
            "tenants[0].identityProviders[4].kind.apiKey.keys[0].hash",
            Box::new(|k| matches!(k, K::InvalidApiKeyHash(_))),
        ),
        (
            "tenants[0].identityProviders[6].name",
            Box::new(|k| {
                matches!(
                    k,
                    K::DuplicateName {
                        what: "identity provider",
                        ..
                    }
                )
            }),
        ),
        (
            "resources[0].rules[0].upstreams",
            Box::new(|k| matches!(k, K::AllWeightsZero)),
        ),
        (
            "resources[0].rules[1].matches[1].path.value",
            Box::new(|k| matches!(k, K::InvalidPath(_))),
        ),
        (
            "resources[0].rules[1].matches[1].method",
            Box::new(|k| matches!(k, K::InvalidMethod(_))),
        ),
        (
            "resources[0].rules[1].rateLimit.burst",
            Box::new(|k| matches!(k, K::InvalidRateLimit(_))),
        ),
        (
            "resources[0].rules[2].upstreams[1].kind.site.site",
            Box::new(|k| matches!(k, K::UnknownSite(_))),
        ),
        (
            "resources[0].rules[2].upstreams[2].kind.site",
            Box::new(|k| matches!(k, K::SiteTargetNotAllowed { .. })),
        ),
        (
            "resources[1].tenant",
            Box::new(|k| matches!(k, K::UnknownTenant(_))),
        ),
        (
            "resources[1].listeners[1]",
            Box::new(|k| matches!(k, K::ListenerProtocolMismatch { .. })),
        ),
        (
            "resources[1].listeners[2]",
            Box::new(|k| matches!(k, K::UnknownListener(_))),
        ),
        (
            "resources[3].hostnames[0]",
            Box::new(|k| {
                matches!(
                    k,
                    K::ResourceConflict {
                        what: "hostname",
                        ..
                    }
                )
            }),
        ),
        (
            "resources[3].hostnames[1]",
            Box::new(|k| matches!(k, K::HostnameOutsideTenant { .. })),
        ),
        (
            "resources[4].name",
            Box::new(|k| {
                matches!(
                    k,
                    K::DuplicateName {
                        what: "resource",
                        ..
                    }
                )
            }),
        ),
        (
            "tunnel.sites[1].publicKey",
            Box::new(|k| matches!(k, K::DuplicatePublicKey(_))),
        ),
        (
            "tunnel.sites[2].publicKey",
            Box::new(|k| matches!(k, K::InvalidPublicKey(_))),
        ),
        (
            "tunnel.sites[2].advertisedCIDRs[0]",
            Box::new(|k| matches!(k, K::InvalidCidr(_))),
        ),
        (
            "policies[0].rules[0].from[0].user.idp",
            Box::new(|k| matches!(k, K::UnknownIdentityProvider { .. })),
        ),
        (
            "policies[1].targets[0].resource",
            Box::new(|k| matches!(k, K::UnknownResource(_))),
        ),
        (
            "policies[2].rules[0].from[0].sourceCIDRs.cidrs[0]",
            Box::new(|k| matches!(k, K::InvalidCidr(_))),
        ),
        (
            "policies[3].targets[0].resource",
            Box::new(|k| matches!(k, K::CrossTenantTarget { .. })),
        ),
        (
            "policies[4].targets[0].sectionName",
            Box::new(|k| matches!(k, K::UnknownSection { .. })),
        ),
        (
            "policies[5].rules[0].from",
            Box::new(|k| matches!(k, K::EmptyFrom)),
        ),
        (
            "policies[6].rules[0].when.schedule",
            Box::new(|k| matches!(k, K::InvalidSchedule(_))),
        ),
        (
            "policies[7].rules[0].to[0]",
            Box::new(|k| matches!(k, K::HttpFieldsOnL4Target { .. })),
        ),
        (
            "policies[8].name",
            Box::new(|k| matches!(k, K::DuplicateName { what: "policy", .. })),
        ),
        ("policies[9].rules", Box::new(|k| matches!(k, K::NoRules))),
        (
            "policies[10].rules[0].from[0].apiKey.idp",
            Box::new(|k| matches!(k, K::WrongIdentityProviderType { .. })),
        ),
    ];
    let mut missing = Vec::new();
    for (path, pred) in &expect {
        if !has(&e, path, pred) {
            missing.push(*path);
        }
    }
    assert!(
        missing.is_empty(),
        "not reported: {missing:?}\nreported:\n{report}"
    );
    assert!(
        !e.iter().any(|x| x.path.starts_with("policies[11].rules")),
        "contents of operator-marked unresolved policies are not checked:\n{report}"
    );
    // Display carries path and message.
    assert!(
        report.contains("schemaVersion: schema version 2 is not supported"),
        "{report}"
    );
    // load() refuses a newer version before anything else...
    assert!(matches!(
        Snapshot::load(&s.to_json()),
        Err(SnapshotError::UnsupportedVersion { found: 2, .. })
    ));
    // ...and otherwise lists every problem.
    s.schema_version = SCHEMA_VERSION;
    match Snapshot::load(&s.to_json()).unwrap_err() {
        SnapshotError::Invalid(list) => assert_eq!(list.len(), e.len() - 1),
        other => panic!("{other}"),
    }
}

#[test]
fn routing_follows_gateway_api_precedence() {
    let mut r = http_resource("acme-apps", "app", "acme", "app.acme.example", vec![]);
    let m = |kind, value: &str, method: Option<&str>, headers: &[(&str, &str)]| RouteMatch {
        path: Some(PathMatch {
            kind,
            value: value.into(),
        }),
        method: method.map(Into::into),
        headers: headers
            .iter()
            .map(|(n, v)| HeaderMatch {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
    };
    let with = |name: &str, matches: Vec<RouteMatch>| {
        let mut rr = route(name, None);
        rr.matches = matches;
        rr
    };
    r.rules = vec![
        route("catch-all", None),
        with("api", vec![m(PathMatchType::PathPrefix, "/api", None, &[])]),
        with(
            "api-v2",
            vec![m(PathMatchType::PathPrefix, "/api/v2", None, &[])],
        ),
        with(
            "api-post",
            vec![m(PathMatchType::PathPrefix, "/api", Some("POST"), &[])],
        ),
        with(
            "api-canary",
            vec![m(
                PathMatchType::PathPrefix,
                "/api",
                None,
                &[("X-Canary", "1")],
            )],
        ),
        with("exact", vec![m(PathMatchType::Exact, "/api", None, &[])]),
    ];
    let route_of = |r: &CompiledResource, method: &str, path: &str, canary: bool| {
        let p = normalize_path(path).unwrap();
        r.route(method, &p, |h: &str| {
            (canary && h.eq_ignore_ascii_case("x-canary")).then_some("1")
        })
        .map(|x| x.name.clone())
    };
    assert_eq!(
        route_of(&r, "GET", "/", false).as_deref(),
        Some("catch-all")
    );
    assert_eq!(route_of(&r, "GET", "/api", false).as_deref(), Some("exact"));
    assert_eq!(route_of(&r, "GET", "/api/x", false).as_deref(), Some("api"));
    assert_eq!(
        route_of(&r, "GET", "/api/v2/x", false).as_deref(),
        Some("api-v2")
    );
    assert_eq!(
        route_of(&r, "POST", "/api/x", false).as_deref(),
        Some("api-post")
    );
    assert_eq!(
        route_of(&r, "GET", "/api/x", true).as_deref(),
        Some("api-canary")
    );
    assert_eq!(
        route_of(&r, "GET", "/apix", false).as_deref(),
        Some("catch-all")
    );
    r.rules.remove(0);
    assert_eq!(route_of(&r, "GET", "/other", false), None);
}

#[test]
fn site_targets() {
    let t = tunnel();
    let mut site = t.sites[0].clone();
    site.allowed_targets.push(AllowedTarget {
        host: "10.1.5.0/24".into(),
        ports: vec![22],
        protocol: TransportProtocol::Tcp,
    });
    site.allowed_targets.push(AllowedTarget {
        host: "db.internal.".into(),
        ports: vec![5432],
        protocol: TransportProtocol::Tcp,
    });
    assert!(site.allows("10.1.2.3", 3000, TransportProtocol::Tcp));
    assert!(site.allows("::ffff:10.1.2.3", 3000, TransportProtocol::Tcp));
    assert!(!site.allows("10.1.2.3", 3001, TransportProtocol::Tcp));
    assert!(!site.allows("10.1.2.3", 3000, TransportProtocol::Udp));
    assert!(site.allows("10.1.5.77", 22, TransportProtocol::Tcp));
    assert!(!site.allows("10.1.6.1", 22, TransportProtocol::Tcp));
    assert!(site.allows("DB.internal", 5432, TransportProtocol::Tcp));
    assert!(!site.allows("db.internal.evil", 5432, TransportProtocol::Tcp));
}
