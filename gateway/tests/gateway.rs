//! End-to-end tests of the gateway binary: real sockets on 127.0.0.1, real upstreams, curl
//! as the client, snapshots written by the test.

mod common;

use common::*;
use rustronaut_e2e::otlp::{Receiver as OtlpReceiver, contains_bytes};
use serde_json::{Value, json};
use std::time::Instant;

const HOST: &str = "app.acme.test";

struct Scenario {
    http: u16,
    https: Option<(u16, Vec<Value>, String)>,
    upstreams: Vec<String>,
    health_check: Option<Value>,
    load_balancing: Option<Value>,
    signer_jwks: Value,
    extra_policies: Vec<Value>,
    extra_idps: Vec<Value>,
}

fn path_op(prefix: &str) -> Value {
    json!({"paths": [{"type": "PathPrefix", "value": prefix}]})
}

fn snapshot(s: &Scenario) -> Value {
    let mut listeners = vec![json!({"name": "http", "port": s.http, "protocol": "HTTP"})];
    let mut resource_listeners = vec!["http"];
    let mut idps = vec![
        json!({"name": "ci", "kind": {"jwt": {
            "issuer": ISSUER, "audiences": ["rtn"], "jwks": {"inline": s.signer_jwks},
            "cookieName": "rtn_token"}}}),
        json!({"name": "keys", "kind": {"apiKey": {
            "header": "X-Api-Key", "keys": [{"clientID": "globex", "hash": api_key_hash()}]}}}),
    ];
    idps.extend(s.extra_idps.iter().cloned());
    if let Some((port, certs, ca)) = &s.https {
        listeners.push(json!({
            "name": "https", "port": port, "protocol": "HTTPS",
            "tls": {"certificates": certs},
            "clientCertificate": {"mode": "Optional", "caPem": ca},
        }));
        resource_listeners.push("https");
        idps.push(json!({"name": "corp-ca", "kind": {"clientCertificate": {"caPem": ca}}}));
    }
    let upstream = json!([{"kind": {"service": {
        "name": "app", "port": 80, "addresses": s.upstreams}}}]);
    let mut all = json!({"name": "all", "upstreams": upstream});
    if let Some(hc) = &s.health_check {
        all["healthCheck"] = hc.clone();
    }
    if let Some(lb) = &s.load_balancing {
        all["loadBalancing"] = lb.clone();
    }
    let mut policies = vec![
        json!({"namespace": "acme-apps", "name": "anon-public", "tenant": "acme", "action": "Allow",
            "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
            "rules": [{"name": "anyone", "from": ["anonymous"],
                       "to": [path_op("/public"), path_op("/limited")]}]}),
        json!({"namespace": "acme-apps", "name": "api-callers", "tenant": "acme", "action": "Allow",
        "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
        "rules": [
            {"name": "devs", "from": [{"user": {"groups": ["dev"]}}], "to": [path_op("/api")]},
            {"name": "globex", "from": [{"apiKey": {"clientIDs": ["globex"]}}], "to": [path_op("/api")]},
            {"name": "ci-cert", "from": [{"clientCertificate": {"sanURIs": ["spiffe://acme/ci"]}}],
             "to": [path_op("/mtls")]}
        ]}),
        json!({"namespace": "acme-apps", "name": "deny-admin", "tenant": "acme", "action": "Deny",
            "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
            "rules": [{"name": "nobody", "from": ["anonymous"], "to": [path_op("/admin")]}]}),
    ];
    policies.extend(s.extra_policies.iter().cloned());
    json!({
        "schemaVersion": 1,
        "gateway": {"namespace": "rtn-system", "name": "edge"},
        "listeners": listeners,
        "tenants": [{"name": "acme", "domains": ["*.acme.test"], "identityProviders": idps}],
        "resources": [{
            "namespace": "acme-apps", "name": "app", "tenant": "acme", "protocol": "HTTP",
            "listeners": resource_listeners, "hostnames": [HOST],
            "rules": [
                all,
                {"name": "limited", "matches": [{"path": {"type": "PathPrefix", "value": "/limited"}}],
                 "upstreams": upstream,
                 "rateLimit": {"requestsPerSecond": 1, "burst": 3, "key": "ClientIP"}}
            ]
        }],
        "policies": policies,
    })
}

fn scenario(upstream: &Upstream, signer: &Signer) -> Scenario {
    Scenario {
        http: free_port(),
        https: None,
        upstreams: vec![upstream.addr.to_string()],
        health_check: None,
        load_balancing: None,
        signer_jwks: signer.jwks.clone(),
        extra_policies: Vec::new(),
        extra_idps: Vec::new(),
    }
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn get(port: u16, path: &str, extra: &[&str]) -> Resp {
    let host = format!("Host: {HOST}");
    let u = url(port, path);
    let mut args: Vec<&str> = vec!["-H", &host];
    args.extend_from_slice(extra);
    args.push(&u);
    curl(&args)
}

fn assert_refused(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    let id = r
        .header("x-rustronaut-decision-id")
        .expect("decision id header");
    assert!(!id.is_empty());
    assert_eq!(r.json()["decisionId"], id);
}

#[test]
fn anonymous_requests_are_routed_allowed_and_denied() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let gw = Gateway::start(&snapshot(&s));

    let r = get(s.http, "/public/page?x=1", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["target"], "/public/page?x=1");

    // No Allow for anonymous callers on /api: credentials could help, so 401 with a challenge.
    let r = get(s.http, "/api/items", &[]);
    assert_refused(&r, 401);
    assert!(r.header("www-authenticate").is_some());

    // Unknown host: no route.
    let r = curl(&["-H", "Host: nope.acme.test", &url(s.http, "/public")]);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Decisions are logged as JSON lines with resource, decision, reason and id.
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("\"reason\":\"NoAllowMatched\""))
        .unwrap_or_else(|| panic!("no decision line in log:\n{log}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["resource"], "acme-apps/app");
    assert_eq!(v["decision"], "Deny");
    assert_eq!(v["status"], 401);
    assert_eq!(v["identity"], "anonymous");
    assert!(v["decision_id"].as_str().is_some_and(|s| !s.is_empty()));
}

/// Issue 14, item 15: a group whose name holds a comma reads as one group upstream, and an
/// email the provider does not mark verified is not an identity fact (no `emailDomains`
/// match, no `X-Rustronaut-Email`).
#[test]
fn group_names_are_unambiguous_and_unverified_emails_do_not_count() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let mut s = scenario(&up, &signer);
    s.extra_policies.push(json!({
        "namespace": "acme-apps", "name": "staff", "tenant": "acme", "action": "Allow",
        "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
        "rules": [{"name": "staff", "from": [{"user": {"emailDomains": ["acme.test"]}}],
                   "to": [path_op("/staff")]}]}));
    let _gw = Gateway::start(&snapshot(&s));
    let bearer = |t: String| format!("Authorization: Bearer {t}");

    let t = bearer(signer.token("alice", &["dev", "dev,admin", "50%", "a b"], 300));
    let r = get(s.http, "/api/items", &["-H", &t]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-groups").as_deref(),
        Some("dev,dev%2Cadmin,50%25,a%20b")
    );
    // Verified email: emailDomains matches and the upstream is told.
    let r = get(s.http, "/staff", &["-H", &t]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-email").as_deref(),
        Some("alice@acme.test")
    );

    for verified in [Value::Null, json!(false), json!("no")] {
        let t = bearer(signer.token_with(
            "mallory",
            json!({"groups": ["dev"], "email_verified": verified}),
        ));
        assert_refused(&get(s.http, "/staff", &["-H", &t]), 403);
        let r = get(s.http, "/api/items", &["-H", &t]);
        assert_eq!(r.status, 200, "{verified}: {r:?}");
        assert_eq!(r.upstream_header("x-rustronaut-email"), None, "{verified}");
    }
}

#[test]
fn jwt_bearer_tokens_allow_deny_and_are_never_downgraded() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let _gw = Gateway::start(&snapshot(&s));

    let good = format!(
        "Authorization: Bearer {}",
        signer.token("alice", &["dev"], 300)
    );
    let r = get(s.http, "/api/items", &["-H", &good]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.upstream_header("x-rustronaut-email").as_deref(),
        Some("alice@acme.test")
    );
    assert_eq!(
        r.upstream_header("x-rustronaut-groups").as_deref(),
        Some("dev")
    );
    // Served again from the verified-token cache: same answer.
    assert_eq!(get(s.http, "/api/items", &["-H", &good]).status, 200);

    // Authenticated but not allowed: 403.
    let other = format!(
        "Authorization: Bearer {}",
        signer.token("bob", &["sales"], 300)
    );
    assert_refused(&get(s.http, "/api/items", &["-H", &other]), 403);

    // Expired, or signed by someone else, or garbage: 401, even where anonymous callers are
    // allowed (a bad credential never falls back to anonymous).
    let expired = format!(
        "Authorization: Bearer {}",
        signer.token("alice", &["dev"], -3600)
    );
    assert_refused(&get(s.http, "/api/items", &["-H", &expired]), 401);
    assert_refused(&get(s.http, "/public/x", &["-H", &expired]), 401);
    let forged = format!(
        "Authorization: Bearer {}",
        Signer::new().token("alice", &["dev"], 300)
    );
    assert_refused(&get(s.http, "/api/items", &["-H", &forged]), 401);
    assert_refused(
        &get(
            s.http,
            "/public/x",
            &["-H", "Authorization: Bearer not.a.jwt"],
        ),
        401,
    );
}

#[test]
fn jwt_cookies_authenticate_browsers_and_never_reach_the_upstream() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let _gw = Gateway::start(&snapshot(&s));
    let dev = signer.token("alice", &["dev"], 300);

    let cookie = format!("Cookie: theme=dark; rtn_token={dev}");
    let r = get(s.http, "/api/items", &["-H", &cookie]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("alice")
    );
    // The token is the gateway's; the upstream gets the other cookies only.
    assert_eq!(r.upstream_header("cookie").as_deref(), Some("theme=dark"));
    let only = format!("Cookie: rtn_token={dev}");
    let r = get(s.http, "/api/items", &["-H", &only]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("cookie"), None, "{r:?}");

    // A bad token in the cookie is a bad credential: 401, never anonymous.
    assert_refused(
        &get(s.http, "/public/x", &["-H", "Cookie: rtn_token=not.a.jwt"]),
        401,
    );
    // The Authorization header wins over the cookie.
    let sales = format!(
        "Authorization: Bearer {}",
        signer.token("bob", &["sales"], 300)
    );
    assert_refused(
        &get(s.http, "/api/items", &["-H", &sales, "-H", &cookie]),
        403,
    );
    // A cookie of another name is not a credential.
    let r = get(
        s.http,
        "/api/items",
        &["-H", &format!("Cookie: token={dev}")],
    );
    assert_refused(&r, 401);
}

#[test]
fn api_keys_allow_and_unknown_keys_are_refused() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let _gw = Gateway::start(&snapshot(&s));

    let key = format!("X-Api-Key: {API_KEY}");
    let r = get(s.http, "/api/items", &["-H", &key]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("globex")
    );
    // The key is a secret between client and gateway: not forwarded.
    assert_eq!(r.upstream_header("x-api-key"), None);

    let wrong = "X-Api-Key: globex-wrong-key-0123456789abcdef";
    assert_refused(&get(s.http, "/api/items", &["-H", wrong]), 401);
    assert_refused(&get(s.http, "/public/x", &["-H", wrong]), 401);
}

#[test]
fn identity_and_forwarding_headers_cannot_be_spoofed() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let _gw = Gateway::start(&snapshot(&s));

    let spoof = [
        "-H",
        "X-Rustronaut-User: root",
        "-H",
        "X-Rustronaut-Groups: admins",
        "-H",
        "x-rustronaut-email: root@acme.test",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Forwarded-Proto: https",
    ];
    let r = get(s.http, "/public/x", &spoof);
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert!(h.get("x-rustronaut-user").is_none(), "{h}");
    assert!(h.get("x-rustronaut-groups").is_none(), "{h}");
    assert!(h.get("x-rustronaut-email").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], json!(["http"]));
    assert_eq!(h["x-forwarded-host"], json!([HOST]));
    assert!(h["x-rustronaut-decision-id"][0].as_str().is_some());

    // With a real identity, only the verified values arrive, once.
    let token = format!(
        "Authorization: Bearer {}",
        signer.token("alice", &["dev"], 300)
    );
    let mut args = spoof.to_vec();
    args.extend(["-H", token.as_str()]);
    let r = get(s.http, "/api/x", &args);
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-rustronaut-user"], json!(["alice"]));
    assert_eq!(h["x-rustronaut-groups"], json!(["dev"]));
}

#[test]
fn path_tricks_cannot_reach_a_denied_rule() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let _gw = Gateway::start(&snapshot(&s));
    let token = format!(
        "Authorization: Bearer {}",
        signer.token("alice", &["dev"], 300)
    );

    for path in [
        "/admin",
        "/api/../admin",
        "//admin",
        "/api/%2e%2e/admin",
        "/%2E%2E/admin/",
        "/public/./../admin/x",
        "/%61dmin",
    ] {
        let r = get(s.http, path, &["-H", &token]);
        assert_refused(&r, 403);
        let r = get(s.http, path, &[]);
        assert_refused(&r, 403);
    }
    // Spellings normalize refuses: 400.
    for path in ["/api/%2Fadmin", "/api/%5C..%5Cadmin", "/api/%00"] {
        assert_refused(&get(s.http, path, &[]), 400);
    }
    // A raw backslash may already be refused by the HTTP parser; either way it is a 400.
    assert_eq!(get(s.http, "/api\\..\\admin", &[]).status, 400);
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // What is forwarded is the normalised path.
    let r = get(s.http, "/api/../public//a/%7Eb", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["target"], "/public/a/~b");
}

#[test]
fn bad_snapshot_is_refused_and_hot_reload_changes_decisions() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let mut s = scenario(&up, &signer);
    let gw = Gateway::start(&snapshot(&s));
    let (code, ready) = gw.admin_get("/readyz");
    assert_eq!(code, 200);
    let first_version = ready.trim().trim_start_matches("ready ").to_string();
    assert!(first_version.starts_with("sha256:"));
    assert_refused(&get(s.http, "/open/x", &[]), 401);

    // Not JSON, then JSON that fails validation: both refused, the old snapshot serves.
    gw.write_snapshot_bytes(b"{ not json");
    gw.wait_metrics("a refused snapshot", |m| {
        m.contains("rustronaut_gateway_snapshot_refused_total{reason=\"parse\"} 1")
    });
    let mut invalid = snapshot(&s);
    invalid["resources"][0]["tenant"] = json!("no-such-tenant");
    gw.write_snapshot_bytes(&serde_json::to_vec(&invalid).unwrap());
    gw.wait_metrics("an invalid snapshot", |m| {
        m.contains("rustronaut_gateway_snapshot_refused_total{reason=\"invalid\"} 1")
    });
    assert_eq!(get(s.http, "/public/x", &[]).status, 200);
    assert_eq!(
        gw.admin_get("/readyz"),
        (200, format!("ready {first_version}\n"))
    );
    assert!(gw.log().contains("the last good snapshot keeps serving"));

    // A valid change applies without a restart.
    s.extra_policies.push(json!({
        "namespace": "acme-apps", "name": "open", "tenant": "acme", "action": "Allow",
        "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
        "rules": [{"name": "anyone", "from": ["anonymous"], "to": [path_op("/open")]}]}));
    gw.write_snapshot_bytes(&serde_json::to_vec(&snapshot(&s)).unwrap());
    gw.wait_metrics("the new version", |m| {
        m.contains("rustronaut_gateway_config_info{version=")
            && !m.contains(&format!("version=\"{first_version}\""))
    });
    let r = get(s.http, "/open/x", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        gw.admin_get("/metrics")
            .1
            .contains("rustronaut_gateway_snapshot_reloads_total{result=\"applied\"} 2")
    );
}

#[test]
fn rate_limit_answers_429_beyond_the_burst() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let _gw = Gateway::start(&snapshot(&s));

    let start = Instant::now();
    let mut allowed = 0u64;
    let mut limited = 0u64;
    for _ in 0..12 {
        let r = get(s.http, "/limited/x", &[]);
        match r.status {
            200 => allowed += 1,
            429 => {
                assert_refused(&r, 429);
                limited += 1;
            }
            other => panic!("unexpected status {other}: {r:?}"),
        }
    }
    // burst 3, 1 token per second: at most one more per elapsed second.
    let elapsed = start.elapsed().as_secs() + 1;
    assert!(allowed >= 3, "allowed {allowed}");
    assert!(allowed <= 3 + elapsed, "allowed {allowed} in {elapsed}s");
    assert_eq!(allowed + limited, 12);
    // Other rules are not limited.
    for _ in 0..5 {
        assert_eq!(get(s.http, "/public/x", &[]).status, 200);
    }
}

#[test]
fn https_with_sni_http2_and_client_certificates() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let pki = Pki::new("test CA");
    let (app_chain, app_key) = pki.server(&[HOST]);
    let (other_chain, other_key) = pki.server(&["other.acme.test"]);
    let mut s = scenario(&up, &signer);
    let https = free_port();
    s.https = Some((
        https,
        vec![
            json!({"name": "other", "hostnames": ["other.acme.test"],
                   "certificateChainPem": other_chain, "privateKeyPem": other_key}),
            json!({"name": "app", "hostnames": [HOST],
                   "certificateChainPem": app_chain, "privateKeyPem": app_key}),
        ],
        pki.ca_pem.clone(),
    ));
    let gw = Gateway::start(&snapshot(&s));
    let dir = gw.dir.path();
    let ca = write(dir, "ca.pem", &pki.ca_pem);
    let (ccert, ckey) = pki.client("spiffe://acme/ci");
    let ccert = write(dir, "client.pem", &ccert);
    let ckey = write(dir, "client-key.pem", &ckey);
    let resolve_app = format!("{HOST}:{https}:127.0.0.1");
    let resolve_other = format!("other.acme.test:{https}:127.0.0.1");
    let app = |path: &str| format!("https://{HOST}:{https}{path}");

    // HTTP/2 over TLS, certificate chosen by SNI (curl verifies it against the test CA).
    let r = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve_app,
        &app("/public/x"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.version, "HTTP/2");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    let r = curl(&[
        "--http1.1",
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve_app,
        &app("/public/x"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve_other,
        &format!("https://other.acme.test:{https}/public"),
    ]);
    assert_eq!(
        r.status, 404,
        "the other certificate verified, no resource there: {r:?}"
    );

    // Client certificate: identity from its URI SAN.
    let r = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve_app,
        "--cert",
        &ccert,
        "--key",
        &ckey,
        &app("/mtls/x"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("spiffe://acme/ci")
    );
    assert_eq!(
        r.upstream_header("x-rustronaut-identity-provider")
            .as_deref(),
        Some("corp-ca")
    );
    // Without it: anonymous, not allowed there.
    assert_refused(
        &curl(&["--cacert", &ca, "--resolve", &resolve_app, &app("/mtls/x")]),
        401,
    );
    // A certificate from another CA fails the handshake.
    let rogue = Pki::new("rogue CA");
    let (rc, rk) = rogue.client("spiffe://acme/ci");
    let rc = write(dir, "rogue.pem", &rc);
    let rk = write(dir, "rogue-key.pem", &rk);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--cacert",
            &ca,
            "--resolve",
            &resolve_app,
            "--cert",
            &rc,
            "--key",
            &rk,
        ])
        .arg(app("/mtls/x"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "handshake with a rogue certificate must fail"
    );
}

#[test]
fn admin_endpoints_report_health_and_metrics() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let gw = Gateway::start(&snapshot(&s));
    assert_eq!(gw.admin_get("/healthz"), (200, "ok\n".into()));
    assert_eq!(get(s.http, "/public/x", &[]).status, 200);
    assert_eq!(get(s.http, "/api/x", &[]).status, 401);
    gw.wait_metrics("request counters", |m| {
        m.contains("rustronaut_gateway_requests_total{resource=\"acme-apps/app\",status=\"200\"} 1")
            && m.contains(
                "rustronaut_gateway_requests_total{resource=\"acme-apps/app\",status=\"401\"} 1",
            )
    });
    let (_, m) = gw.admin_get("/metrics");
    assert!(
        m.contains("rustronaut_gateway_decisions_total{effect=\"Allow\",reason=\"AllowedBy\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "rustronaut_gateway_decisions_total{effect=\"Deny\",reason=\"NoAllowMatched\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("rustronaut_gateway_request_duration_seconds_count 2"),
        "{m}"
    );
    assert!(
        m.contains("rustronaut_gateway_config_info{version=\"sha256:"),
        "{m}"
    );
}

#[test]
fn connect_failures_are_retried_elsewhere_and_ejected() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let mut s = scenario(&up, &signer);
    // Nothing listens on the first address.
    s.upstreams.insert(0, format!("127.0.0.1:{}", free_port()));
    let gw = Gateway::start(&snapshot(&s));
    for _ in 0..6 {
        let r = get(s.http, "/public/x", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["upstream"], "a");
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 6);
    let (_, m) = gw.admin_get("/metrics");
    assert!(
        m.contains("rustronaut_gateway_upstream_ejections_total 1\n"),
        "{m}"
    );
}

#[test]
fn active_health_checks_take_failing_upstreams_out_of_rotation() {
    let good = Upstream::start("good");
    let bad = Upstream::start_with_status("bad", 500);
    let signer = Signer::new();
    let mut s = scenario(&good, &signer);
    s.upstreams.push(bad.addr.to_string());
    s.health_check = Some(
        json!({"path": "/healthz", "intervalMs": 100, "timeoutMs": 1000,
                                 "unhealthyThreshold": 2, "healthyThreshold": 1}),
    );
    let gw = Gateway::start(&snapshot(&s));
    gw.wait_metrics("the bad upstream marked down", |m| {
        m.contains(&format!(
            "rustronaut_gateway_upstream_up{{address=\"{}\"}} 0",
            bad.addr
        )) && m.contains(&format!(
            "rustronaut_gateway_upstream_up{{address=\"{}\"}} 1",
            good.addr
        ))
    });
    // Per Resource (what the "no healthy upstream" alert reads): two addresses, one healthy.
    gw.wait_metrics("the Resource's endpoint gauges", |m| {
        m.lines()
            .filter_map(|l| l.strip_prefix("rustronaut_gateway_upstream_endpoints{"))
            .filter_map(|l| l.strip_suffix("} 2"))
            .any(|labels| {
                m.lines().any(|l| {
                    l == format!("rustronaut_gateway_upstream_healthy_endpoints{{{labels}}} 1")
                })
            })
    });
    // Round robin over both addresses would send half of these to the bad one.
    for _ in 0..8 {
        let r = get(s.http, "/public/x", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["upstream"], "good");
    }
    // An address gone from the snapshot leaves the schedule and its series with it (the
    // health checker trims on the first tick that sees a new snapshot); the other stays.
    s.upstreams.retain(|u| *u != bad.addr.to_string());
    gw.write_snapshot_bytes(&serde_json::to_vec(&snapshot(&s)).unwrap());
    gw.wait_metrics("the removed upstream's series gone", |m| {
        !m.contains(&format!(
            "rustronaut_gateway_upstream_up{{address=\"{}\"}}",
            bad.addr
        )) && m.contains(&format!(
            "rustronaut_gateway_upstream_up{{address=\"{}\"}} 1",
            good.addr
        ))
    });
}

#[test]
fn sigterm_stops_the_gateway_cleanly() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let mut gw = Gateway::start(&snapshot(&s));
    assert_eq!(get(s.http, "/public/x", &[]).status, 200);
    let status = gw.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("\"stopped\""), "{}", gw.log());
}

/// One HTTP/1.1 request on `conn`, answered in full: the status and the `Connection`
/// header of the answer (lower case; empty when absent).
fn exchange(conn: &mut std::net::TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())?;
    let mut reader = BufReader::new(&mut *conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
    let (mut connection, mut length) = (String::new(), 0usize);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "connection" => connection = v.trim().to_ascii_lowercase(),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, connection))
}

/// SIGTERM on a gateway of two workers, as the kubelet stops a pod: readiness fails at
/// once, yet the listener keeps accepting through the drain delay (kube-proxy and load
/// balancers still send new connections for a moment), each answer from then on closing
/// its connection; then the listener closes, the requests in flight on both workers are
/// answered within the grace period, and the process exits 0 (`server::DrainThenStop`).
#[test]
fn sigterm_drains_then_closes_and_requests_in_flight_finish() {
    use std::net::TcpStream;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let mut gw = Gateway::start_with(
        &snapshot(&s),
        &[
            "--threads",
            "2",
            "--drain-delay-seconds",
            "3",
            "--grace-period-seconds",
            "5",
        ],
    );
    let port = s.http;
    // A kept-alive connection, used once before the signal.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(
        exchange(&mut idle, "/public/x").unwrap(),
        (200, "keep-alive".to_string())
    );
    // Four requests held by the upstream, on four connections: with the one above, the
    // least busy worker takes each in turn, so both workers hold some.
    let held: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port))?;
                c.set_read_timeout(Some(Duration::from_secs(20)))?;
                exchange(&mut c, "/public/held")
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.hits.load(Ordering::SeqCst) < 5 {
        assert!(
            Instant::now() < deadline,
            "held requests not at the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let pid = gw.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let signalled = Instant::now();
    eventually(&gw, "readiness to fail", || {
        gw.admin_get("/readyz") == (503, "draining\n".to_string())
    });
    // Still accepting: a new connection is served, and told to close.
    let mut late = TcpStream::connect(("127.0.0.1", port)).expect("accepting while draining");
    late.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let answer = exchange(&mut late, "/public/x").unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the check ran after the drain delay; nothing was shown"
    );
    assert_eq!(answer, (200, "close".to_string()));
    // The connection kept alive from before: its next request too.
    assert_eq!(
        exchange(&mut idle, "/public/x").unwrap(),
        (200, "close".to_string())
    );
    // After the drain delay the port refuses.
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting 15 s after SIGTERM; log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The held requests are answered in the grace period, on both workers.
    up.gate.add_permits(4);
    for h in held {
        let (status, _) = h.join().unwrap().expect("an answer to the held request");
        assert_eq!(status, 200);
    }
    let status = gw.terminate_wait();
    assert!(status.success(), "exit {status:?}; log:\n{}", gw.log());
    let log = gw.log();
    assert!(log.contains("SIGTERM: draining"), "{log}");
}

#[test]
fn certificates_rotate_on_reload_and_min_tls_version_is_enforced() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let old_ca = Pki::new("old CA");
    let new_ca = Pki::new("new CA");
    let (chain, key) = old_ca.server(&[HOST]);
    let mut s = scenario(&up, &signer);
    let https = free_port();
    let cert = |chain: &str, key: &str| {
        vec![json!({"name": "app", "hostnames": [HOST],
                    "certificateChainPem": chain, "privateKeyPem": key})]
    };
    s.https = Some((https, cert(&chain, &key), old_ca.ca_pem.clone()));
    let gw = Gateway::start(&snapshot(&s));
    let dir = gw.dir.path();
    let old = write(dir, "old.pem", &old_ca.ca_pem);
    let new = write(dir, "new.pem", &new_ca.ca_pem);
    let resolve = format!("{HOST}:{https}:127.0.0.1");
    let target = format!("https://{HOST}:{https}/public/x");
    assert_eq!(
        curl(&["--cacert", &old, "--resolve", &resolve, &target]).status,
        200
    );

    // A client certificate from the old CA is accepted (Optional mode).
    let (oc, ok) = old_ca.client("spiffe://acme/ci");
    let (oc, ok) = (write(dir, "oc.pem", &oc), write(dir, "ok.pem", &ok));
    let mtls = format!("https://{HOST}:{https}/mtls/x");
    let r = curl(&[
        "--cacert",
        &old,
        "--resolve",
        &resolve,
        "--cert",
        &oc,
        "--key",
        &ok,
        &mtls,
    ]);
    assert_eq!(r.status, 200, "{r:?}");

    // Rotate the server certificate and the client CA, require client certificates and
    // TLS 1.3, all on the running listener.
    let (chain, key) = new_ca.server(&[HOST]);
    s.https = Some((https, cert(&chain, &key), new_ca.ca_pem.clone()));
    let mut next = snapshot(&s);
    next["listeners"][1]["tls"]["minVersion"] = json!("1.3");
    next["listeners"][1]["clientCertificate"]["mode"] = json!("Required");
    gw.write_snapshot_bytes(&serde_json::to_vec(&next).unwrap());
    gw.wait_metrics("the rotated snapshot", |m| {
        m.contains("rustronaut_gateway_snapshot_reloads_total{result=\"applied\"} 2")
    });
    let (nc, nk) = new_ca.client("spiffe://acme/ci");
    let (nc, nk) = (write(dir, "nc.pem", &nc), write(dir, "nk.pem", &nk));
    let r = curl(&[
        "--cacert",
        &new,
        "--resolve",
        &resolve,
        "--tlsv1.3",
        "--cert",
        &nc,
        "--key",
        &nk,
        &mtls,
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("spiffe://acme/ci")
    );
    let fails = |args: &[&str]| {
        !std::process::Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    };
    // Required now: no certificate, or one from the old CA, fails the handshake.
    assert!(fails(&["--cacert", &new, "--resolve", &resolve, &target]));
    assert!(fails(&[
        "--cacert",
        &new,
        "--resolve",
        &resolve,
        "--cert",
        &oc,
        "--key",
        &ok,
        &target,
    ]));
    assert!(
        fails(&[
            "--cacert",
            &old,
            "--resolve",
            &resolve,
            "--cert",
            &nc,
            "--key",
            &nk,
            &target,
        ]),
        "the old server certificate is no longer served"
    );
    // TLS 1.2 on a 1.3-only listener: refused in the request phase.
    let r = curl(&[
        "--cacert",
        &new,
        "--resolve",
        &resolve,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cert",
        &nc,
        "--key",
        &nk,
        &target,
    ]);
    assert_refused(&r, 403);
}

#[test]
fn unreachable_upstreams_answer_503_with_a_decision_id() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let mut s = scenario(&up, &signer);
    s.upstreams = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let gw = Gateway::start(&snapshot(&s));
    let r = get(s.http, "/public/x", &[]);
    assert_refused(&r, 503);
    let (_, m) = gw.admin_get("/metrics");
    assert!(
        m.contains("rustronaut_gateway_upstream_ejections_total 2\n"),
        "{m}"
    );
}

/// An upstream that takes the request and never answers is cut at the rule's `timeoutMs`:
/// 504 with the decision id, the upstream connection closed, the gateway answering the next
/// request. Both of Pingora's timers are exercised: tokio's for timeouts of a second or more
/// (`server::FAST_TIMEOUT_TO_TOKIO_SECONDS`), Pingora's own below a second.
#[test]
fn a_silent_upstream_is_cut_at_the_rules_timeout_with_504() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let mut snap = snapshot(&s);
    let rules = snap["resources"][0]["rules"].as_array_mut().unwrap();
    rules[0]["timeoutMs"] = json!(1500);
    let upstreams = rules[0]["upstreams"].clone();
    rules.insert(
        0,
        json!({"name": "short", "matches": [{"path": {"type": "PathPrefix", "value": "/public/short"}}],
               "upstreams": upstreams, "timeoutMs": 400}),
    );
    let gw = Gateway::start(&snap);
    for (path, at_least, at_most) in [
        ("/public/held", 1.4, 10.0),
        ("/public/short/held", 0.35, 5.0),
    ] {
        let t = Instant::now();
        let r = get(s.http, path, &[]);
        let took = t.elapsed().as_secs_f64();
        assert_refused(&r, 504);
        assert!(
            (at_least..at_most).contains(&took),
            "{path}: answered after {took:.2} s"
        );
        let id = r.header("x-rustronaut-decision-id").unwrap().to_string();
        let logged = format!("\"decision_id\":\"{id}\",\"status\":504,");
        eventually(&gw, "the decision line with status 504", || {
            gw.log().contains(&logged)
        });
    }
    // The held requests never reached an answer; the gateway still serves.
    assert_eq!(get(s.http, "/public/x", &[]).status, 200);
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// An idle gateway sleeps: its background loops (health checks, JWKS and ServiceAccount
/// keys, the snapshot file) wake for work that is due, not on a tick (`src/wake.rs`), and
/// Pingora's clock thread is not started (`server::FAST_TIMEOUT_TO_TOKIO_SECONDS`). Before both,
/// the threads gave up the CPU about 33 + 100 times a second; now the snapshot file's poll
/// and the endpoint gauges' export, once a second each, are most of it.
#[test]
fn an_idle_gateway_sleeps() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    // The snapshot file looked at once a second, the default (the tests' 100 ms alone
    // would be 50 wake-ups in the 5 s).
    let gw = Gateway::start_with(&snapshot(&s), &["--poll-interval-ms", "1000"]);
    // Served once, so everything a request starts has started.
    assert_eq!(get(s.http, "/public/x", &[]).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = gw.voluntary_switches();
    std::thread::sleep(std::time::Duration::from_secs(5));
    let woke = gw.voluntary_switches() - before;
    assert!(woke <= 40, "{woke} wake-ups in 5 s of idleness");
}

/// With `--threads 2` an HTTP listener is two workers, each a runtime of its own with its
/// own upstream pool; the port's accept loop hands each connection to the worker serving
/// the fewest (`server::WORK_STEALING`, `listener::Workers`). Sixteen connections opened
/// at once are eight on each, and each worker spends its share of the CPU serving them.
/// (Before the hand-over, the workers each polled the socket and the first awake took
/// every connection of such a burst: the other stayed idle.)
#[test]
fn connections_are_spread_over_the_workers() {
    use std::io::{Read, Write};
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let gw = Gateway::start_with(&snapshot(&s), &["--threads", "2"]);
    // The HTTP listener's workers: threads "BG http 0" and "BG http 1".
    let before = gw.thread_cpu_ns("BG http ");
    assert_eq!(before.len(), 2, "{before:?}");
    let request = format!("GET /public/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut conns: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", s.http)).unwrap())
        .collect();
    for _ in 0..50 {
        for c in &mut conns {
            c.write_all(request.as_bytes()).unwrap();
        }
        for c in &mut conns {
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    }
    let after = gw.thread_cpu_ns("BG http ");
    let spent: Vec<u64> = before
        .iter()
        .map(|(tid, b)| after.iter().find(|(t, _)| t == tid).unwrap().1 - b)
        .collect();
    let (least, most) = (spent.iter().min().unwrap(), spent.iter().max().unwrap());
    assert!(
        *least * 4 >= *most,
        "CPU per worker serving 800 requests on 16 connections: {spent:?} ns"
    );
}

#[test]
fn a_reload_does_not_disturb_requests_in_flight() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let mut s = scenario(&up, &signer);
    s.extra_policies.push(json!({
        "namespace": "acme-apps", "name": "held", "tenant": "acme", "action": "Allow",
        "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
        "rules": [{"name": "anyone", "from": ["anonymous"], "to": [path_op("/held")]}]}));
    let gw = Gateway::start(&snapshot(&s));
    let port = s.http;
    let in_flight = std::thread::spawn(move || get(port, "/held/x", &[]));
    // Wait until the request is past the decision and held by the upstream.
    while up.hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(!in_flight.is_finished(), "request ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Withdraw the Allow while the request is in flight.
    s.extra_policies.clear();
    gw.write_snapshot_bytes(&serde_json::to_vec(&snapshot(&s)).unwrap());
    gw.wait_metrics("the reload", |m| {
        m.contains("rustronaut_gateway_snapshot_reloads_total{result=\"applied\"} 2")
    });
    assert_refused(&get(port, "/held/y", &[]), 401);
    up.gate.add_permits(1);
    let r = in_flight.join().unwrap();
    assert_eq!(
        r.status, 200,
        "the request decided before the reload completes: {r:?}"
    );
}

/// A gateway whose tenant has, next to the scenario's inline provider, a provider
/// `remote-ci` (same issuer) whose JWKS is served over HTTPS with `remote`'s keys (refresh
/// every 300 s), once that JWKS was fetched.
struct RemoteJwks {
    s: Scenario,
    gw: Gateway,
    jwks: JwksServer,
    _ca_dir: tempfile::TempDir,
}

impl RemoteJwks {
    fn start(up: &Upstream, inline: &Signer, remote: &Signer) -> Self {
        let pki = Pki::new("JWKS CA");
        let jwks = JwksServer::start(&pki, remote.jwks.to_string());
        let mut s = scenario(up, inline);
        s.extra_idps
            .push(json!({"name": "remote-ci", "kind": {"jwt": {
            "issuer": ISSUER, "audiences": ["rtn"],
            "jwks": {"remote": {"uri": format!("https://localhost:{}/jwks", jwks.port),
                                "refreshIntervalSeconds": 300}}}}}));
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = write(ca_dir.path(), "jwks-ca.pem", &pki.ca_pem);
        let gw = Gateway::start_with(&snapshot(&s), &["--jwks-ca-file", &ca]);
        gw.wait_metrics("the first JWKS fetch", |m| {
            m.contains("rustronaut_gateway_jwks_fetches_total{result=\"ok\"} 1")
        });
        Self {
            s,
            gw,
            jwks,
            _ca_dir: ca_dir,
        }
    }
}

#[test]
fn remote_jwks_are_fetched_and_verify_tokens() {
    let up = Upstream::start("a");
    let inline = Signer::new();
    let remote = Signer::new();
    // Same issuer and key id as the inline provider, different key: the inline verifier
    // refuses the signature, the remote one accepts it.
    // Held whole: its JWKS server and CA file live as long as the test.
    let setup = RemoteJwks::start(&up, &inline, &remote);
    let s = &setup.s;
    let token = format!(
        "Authorization: Bearer {}",
        remote.token("carol", &["dev"], 300)
    );
    let r = get(s.http, "/api/x", &["-H", &token]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("carol")
    );
    assert_eq!(
        r.upstream_header("x-rustronaut-identity-provider")
            .as_deref(),
        Some("remote-ci")
    );
    // Inline tokens still verify; a token from a third key does not.
    let inline_token = format!(
        "Authorization: Bearer {}",
        inline.token("alice", &["dev"], 300)
    );
    assert_eq!(get(s.http, "/api/x", &["-H", &inline_token]).status, 200);
    let stranger = format!(
        "Authorization: Bearer {}",
        Signer::new().token("eve", &["dev"], 300)
    );
    assert_refused(&get(s.http, "/api/x", &["-H", &stranger]), 401);
}

/// An issuer rotates its keys: a token signed with a key id the fetched JWKS lacks is
/// refused and asks the fetch loop for an early refetch (at most once per 10 s after the
/// last fetch, `jwks::KID_REFETCH_MIN`), which the loop answers long before its refresh
/// interval (300 s): the loop sleeps until it is asked (`src/wake.rs`), it does not poll.
#[test]
fn a_token_with_an_unknown_key_id_refetches_the_remote_jwks() {
    let up = Upstream::start("a");
    let inline = Signer::new();
    let old = Signer::with_kid("old");
    let new = Signer::with_kid("new");
    let setup = RemoteJwks::start(&up, &inline, &old);
    let (s, gw, jwks) = (&setup.s, &setup.gw, &setup.jwks);
    let fetched = Instant::now();
    let bearer = |t: String| format!("Authorization: Bearer {t}");
    assert_eq!(
        get(
            s.http,
            "/api/x",
            &["-H", &bearer(old.token("carol", &["dev"], 300))]
        )
        .status,
        200
    );
    // The issuer rotates; the gateway still holds the old keys.
    jwks.set_body(new.jwks.to_string());
    let rotated = bearer(new.token("carol", &["dev"], 300));
    assert_refused(&get(s.http, "/api/x", &["-H", &rotated]), 401);
    // Within the refetch limit the refusal asks for nothing new.
    assert_eq!(jwks.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Past it, the next refusal brings the new keys.
    let limit = std::time::Duration::from_secs(10);
    std::thread::sleep(
        limit.saturating_sub(fetched.elapsed()) + std::time::Duration::from_millis(200),
    );
    assert_refused(&get(s.http, "/api/x", &["-H", &rotated]), 401);
    gw.wait_metrics("the refetch", |m| {
        m.contains("rustronaut_gateway_jwks_fetches_total{result=\"ok\"} 2")
    });
    assert!(
        fetched.elapsed() < std::time::Duration::from_secs(60),
        "refetched only after {:?}",
        fetched.elapsed()
    );
    let r = get(s.http, "/api/x", &["-H", &rotated]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("carol")
    );
}

#[test]
fn tokens_are_refused_while_a_remote_jwks_cannot_be_fetched() {
    let up = Upstream::start("a");
    let inline = Signer::new();
    let remote = Signer::new();
    let mut s = scenario(&up, &inline);
    // Nothing listens there, and the gateway does not trust a private CA anyway.
    s.extra_idps
        .push(json!({"name": "remote-ci", "kind": {"jwt": {
        "issuer": ISSUER, "audiences": ["rtn"],
        "jwks": {"remote": {"uri": format!("https://localhost:{}/jwks", free_port()),
                            "refreshIntervalSeconds": 300}}}}}));
    let gw = Gateway::start(&snapshot(&s));
    gw.wait_metrics("a failed JWKS fetch", |m| {
        m.contains("rustronaut_gateway_jwks_fetches_total{result=\"failed\"} 1")
    });
    let token = format!(
        "Authorization: Bearer {}",
        remote.token("carol", &["dev"], 300)
    );
    assert_refused(&get(s.http, "/api/x", &["-H", &token]), 401);
    assert_refused(&get(s.http, "/public/x", &["-H", &token]), 401);
}

fn upstream_of(r: &Resp) -> String {
    r.json()["upstream"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn consistent_hash_keeps_a_client_on_one_upstream() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let signer = Signer::new();
    let mut s = scenario(&a, &signer);
    s.upstreams.push(b.addr.to_string());
    s.load_balancing = Some(json!({"type": "ConsistentHash", "hashKey": "ClientIP"}));
    let _gw = Gateway::start(&snapshot(&s));
    let first = upstream_of(&get(s.http, "/public/x", &[]));
    for _ in 0..7 {
        assert_eq!(upstream_of(&get(s.http, "/public/x", &[])), first);
    }
}

#[test]
fn least_connections_avoids_a_busy_upstream() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let signer = Signer::new();
    let mut s = scenario(&a, &signer);
    s.upstreams.push(b.addr.to_string());
    s.load_balancing = Some(json!({"type": "LeastConnections"}));
    s.extra_policies.push(json!({
        "namespace": "acme-apps", "name": "held", "tenant": "acme", "action": "Allow",
        "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
        "rules": [{"name": "anyone", "from": ["anonymous"], "to": [path_op("/held")]}]}));
    let _gw = Gateway::start(&snapshot(&s));
    let port = s.http;
    let held = std::thread::spawn(move || get(port, "/held/x", &[]));
    let hits = |u: &Upstream| u.hits.load(std::sync::atomic::Ordering::SeqCst);
    while hits(&a) + hits(&b) == 0 {
        assert!(!held.is_finished(), "request ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (busy, idle) = if hits(&a) == 1 { (&a, "b") } else { (&b, "a") };
    for _ in 0..5 {
        assert_eq!(upstream_of(&get(s.http, "/public/x", &[])), idle);
    }
    busy.gate.add_permits(1);
    assert_eq!(held.join().unwrap().status, 200);
}

#[test]
fn readiness_waits_for_a_first_valid_snapshot() {
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let gw = Gateway::spawn(b"{\"schemaVersion\": 99}", &[]);
    // The admin port answers, but nothing is ready and no listener is bound.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let (code, body) = loop {
        let (code, body) = gw.admin_get("/readyz");
        if code != 0 {
            break (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "admin never answered: {}",
            gw.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!((code, body.as_str()), (503, "no valid snapshot loaded\n"));
    gw.wait_metrics("the refused snapshot", |m| {
        m.contains("rustronaut_gateway_snapshot_refused_total{reason=\"version\"} 1")
    });
    assert!(std::net::TcpStream::connect(("127.0.0.1", s.http)).is_err());

    let valid = snapshot(&s);
    gw.write_snapshot_bytes(&serde_json::to_vec(&valid).unwrap());
    gw.wait_ready(&valid);
    assert_eq!(get(s.http, "/public/x", &[]).status, 200);
}

/// Hot reload under load: clients on keep-alive connections send requests without pause
/// while valid snapshots (each a different config version) and broken ones are swapped in.
/// Every request must succeed: no connection reset, no 5xx, no half-applied state.
#[test]
fn hot_reload_under_load_fails_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let up = Upstream::start("a");
    let signer = Signer::new();
    let mut s = scenario(&up, &signer);
    let gw = Gateway::start(&snapshot(&s));
    let stop = Arc::new(AtomicBool::new(false));
    let (total, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, total, failed) = (stop.clone(), total.clone(), failed.clone());
            let port = s.http;
            std::thread::spawn(move || {
                let u = url(port, &format!("/public/client-{i}"));
                while !stop.load(Ordering::SeqCst) {
                    // One curl process, 50 requests on one keep-alive connection.
                    let mut cmd = std::process::Command::new("curl");
                    cmd.args(["-s", "--max-time", "20", "-H", &format!("Host: {HOST}")])
                        .args(["-w", "%{http_code}\n"]);
                    for _ in 0..50 {
                        cmd.args(["-o", "/dev/null", &u]);
                    }
                    let out = cmd.output().unwrap();
                    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
                    let n = codes.lines().count();
                    let ok = codes.lines().filter(|c| *c == "200").count();
                    // A connection failure shows as 000 or as missing lines.
                    total.fetch_add(50, Ordering::SeqCst);
                    failed.fetch_add(50 - ok.min(n), Ordering::SeqCst);
                }
            })
        })
        .collect();

    for round in 0..20 {
        // The first snapshot was load 1; this round's is load round + 2.
        let applied = round + 2;
        // A valid snapshot that differs (a new policy each round), then every fifth round a
        // broken one, which must be refused while the last good one serves.
        s.extra_policies = vec![json!({
            "namespace": "acme-apps", "name": format!("round-{round}"), "tenant": "acme",
            "action": "Allow",
            "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
            "rules": [{"name": "anyone", "from": ["anonymous"], "to": [path_op("/r")]}]})];
        gw.write_snapshot_bytes(&serde_json::to_vec(&snapshot(&s)).unwrap());
        gw.wait_metrics("the reload", |m| {
            m.contains(&format!(
                "rustronaut_gateway_snapshot_reloads_total{{result=\"applied\"}} {applied}"
            ))
        });
        if round % 5 == 4 {
            gw.write_snapshot_bytes(b"{\"schemaVersion\": 1, \"listeners\": [");
            gw.wait_metrics("the refusal", |m| {
                m.contains(&format!(
                    "rustronaut_gateway_snapshot_refused_total{{reason=\"parse\"}} {}",
                    round / 5 + 1
                ))
            });
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (total, failed) = (total.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!(
        "hot reload under load: {total} requests, {failed} failed, 20 valid + 4 broken swaps"
    );
    assert!(total >= 200, "too few requests to prove anything: {total}");
    assert_eq!(
        failed,
        0,
        "{failed} of {total} requests failed; log:\n{}",
        gw.log()
    );
}

#[test]
fn request_spans_are_exported_over_otlp_and_continue_the_client_trace() {
    let collector = OtlpReceiver::start();
    let up = Upstream::start("a");
    let signer = Signer::new();
    let s = scenario(&up, &signer);
    let endpoint = format!("http://{}", collector.addr);
    let mut gw = Gateway::start_with(&snapshot(&s), &["--otlp-endpoint", &endpoint]);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01");
    let r = get(s.http, "/public/x", &["-H", &parent]);
    assert_eq!(r.status, 200, "{r:?}");
    // The upstream's parent is the gateway's span, in the client's trace.
    let tp = r
        .upstream_header("traceparent")
        .expect("traceparent to upstream");
    assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
    let denied = get(s.http, "/api/items", &[]);
    assert_refused(&denied, 401);
    let denied_id = denied
        .header("x-rustronaut-decision-id")
        .unwrap()
        .to_string();

    // Shutdown flushes the batch.
    assert!(gw.terminate().success(), "{}", gw.log());
    let got = collector.received();
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for needle in [
        &raw_trace_id[..],
        b"rustronaut-gateway",
        b"rustronaut.decision_id",
        denied_id.as_bytes(),
        b"rustronaut.resource",
        b"acme-apps/app",
        b"NoAllowMatched",
        b"anon-public",
    ] {
        assert!(
            contains_bytes(&got, needle),
            "{:?} not exported ({} bytes received); log:\n{}",
            String::from_utf8_lossy(needle),
            got.len(),
            gw.log()
        );
    }
}

/// A sidecar protecting two ports of one application (as compile/src/sidecar.rs writes it:
/// one listener per port, one loopback upstream per listener, named after it): every request
/// on a listener reaches the application port behind it and never the other, so a caller
/// admitted on one port cannot land on another (gateway/src/state.rs, `Compiled::balancer`).
#[test]
fn a_sidecar_pins_each_listener_to_its_own_application_port() {
    let a = Upstream::start("app-port-a");
    let b = Upstream::start("app-port-b");
    let (pa, pb) = (free_port(), free_port());
    let upstream = |listener: &str, addr: std::net::SocketAddr| {
        json!({"kind": {"service": {"name": listener, "port": addr.port(),
            "addresses": [addr.to_string()]}}})
    };
    let snap = json!({
        "schemaVersion": 1,
        "gateway": {"namespace": "shop", "name": "payments"},
        "sidecar": true,
        "listeners": [{"name": "port-a", "port": pa, "protocol": "HTTP"},
                      {"name": "port-b", "port": pb, "protocol": "HTTP"}],
        "tenants": [{"name": "acme", "domains": [], "identityProviders": []}],
        "resources": [{
            "namespace": "shop", "name": "payments", "tenant": "acme", "protocol": "HTTP",
            "listeners": ["port-a", "port-b"], "hostnames": [],
            "rules": [{"name": "all",
                "upstreams": [upstream("port-a", a.addr), upstream("port-b", b.addr)]}]
        }],
        "policies": [{"namespace": "shop", "name": "local", "tenant": "acme", "action": "Allow",
            "targets": [{"resource": {"namespace": "shop", "name": "payments"}}],
            "rules": [{"name": "loopback", "from": [{"sourceCIDRs": {"cidrs": ["127.0.0.0/8"]}}]}]}],
    });
    let gw = Gateway::start(&snap);
    for _ in 0..10 {
        for (port, want) in [(pa, "app-port-a"), (pb, "app-port-b")] {
            let u = url(port, "/orders");
            let r = curl(&["-H", "Host: payments.shop.svc", &u]);
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
            assert_eq!(r.json()["upstream"], want, "{r:?}");
        }
    }
    for up in [&a, &b] {
        assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 10);
    }
}
