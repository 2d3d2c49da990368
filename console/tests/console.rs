//! The console against the real API server and the real OpenID provider: the console binary
//! runs as a ServiceAccount that may only impersonate; two people log in through zitadel's
//! example OP (e2e/tools/oidc-provider) with curl as their browser, and Kubernetes RBAC
//! decides what each may do.
//!
//! The OP's users: `test-user@localhost` (email `test-user@zitadel.ch`) is Alice, who may
//! edit Policies in the test namespace; `test-user2` (email
//! `test-user2@zitadel.ch`) is Bob, who may only read them.

mod support;

use kube::api::PostParams;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn login_is_code_with_pkce_into_a_sealed_host_cookie_and_logout_needs_csrf() {
    let w = World::new().await;

    // Not signed in: pages send the browser to log in, the login to the IdP with PKCE.
    let r = w.browser("a", &w.url("/k/policies"), &[]);
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/login?return_to=%2Fk%2Fpolicies")
    );
    let r = w.browser("a", &w.url("/login?return_to=//evil.example/"), &[]);
    assert_eq!(r.status, 302);
    let authorize = r.header("location").unwrap();
    assert!(
        authorize.starts_with(&format!(
            "https://localhost:{}/auth?response_type=code&client_id=console",
            w.op_port
        )),
        "{authorize}"
    );
    assert!(
        authorize.contains("&code_challenge_method=S256"),
        "{authorize}"
    );
    let login_cookie = r
        .set_cookie("__Host-rtn_console_login")
        .expect("login cookie");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(login_cookie.contains(attr), "{login_cookie}");
    }
    // Every response carries the strict CSP.
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    // Not `no-referrer`: with it browsers send `Origin: null` on the console's own forms.
    assert_eq!(r.header("referrer-policy"), Some("same-origin"));

    // A callback this browser did not start is refused.
    let r = w.browser("stranger", &w.url("/oidc/callback?code=x&state=y"), &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.set_cookie(SESSION).is_none());

    let cookie = w.login("a", ALICE, "/k/policies");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains(ALICE_EMAIL),
        "the session is sealed, not readable: {cookie}"
    );
    let r = w.browser("a", &w.url("/"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(ALICE_EMAIL), "the page names the person");

    // A tampered session cookie is no session.
    let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let mut forged = value.to_string();
    forged.replace_range(10..11, if &value[10..11] == "A" { "B" } else { "A" });
    let r = curl(&["-H", &format!("Cookie: {SESSION}={forged}"), &w.url("/")]);
    assert_eq!(r.status, 303, "{r:?}");

    // Logout without the CSRF token is refused; with it, the cookie is cleared.
    let r = w.post("a", "/logout", &[]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = w.post("a", "/logout", &[("_csrf", "not-the-token")]);
    assert_eq!(r.status, 403, "{r:?}");
    let csrf = w.csrf("a");
    let r = w.post("a", "/logout", &[("_csrf", &csrf)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.set_cookie(SESSION).unwrap().contains("Max-Age=0"));
    let r = w.browser("a", &w.url("/"), &[]);
    assert_eq!(r.status, 303, "signed out: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alice_creates_a_policy_with_the_form_and_sees_cel_errors_next_to_the_field() {
    let w = World::new().await;
    w.login("alice", ALICE, "/");
    let csrf = w.csrf("alice");
    let ns = w.ns.clone();
    let new = |name: &str, cidr: &str| -> Vec<(String, String)> {
        [
            ("_csrf", csrf.as_str()),
            ("_mode", "form"),
            ("metadata.name", name),
            ("metadata.namespace", ns.as_str()),
            ("spec.action", "Allow"),
            ("spec.targetRefs[0].name", "app"),
            ("spec.rules[0].name", "office"),
            ("spec.rules[0].from[0].sourceCIDRs.cidrs", cidr),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let post = |fields: Vec<(String, String)>| {
        let refs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        w.post("alice", "/k/policies/new", &refs)
    };

    // Without the CSRF token nothing is created.
    let mut no_csrf = new("office", "10.0.0.0/8");
    no_csrf.remove(0);
    assert_eq!(post(no_csrf).status, 403);

    // The CRD's CEL rule refuses a bad CIDR in the dry run; the message sits next to the field.
    let r = post(new("office", "not-a-cidr"));
    assert_eq!(r.status, 422, "{r:?}");
    let field = r
        .body
        .split(r#"<label for="f-spec-rules-0--from-0--sourceCIDRs-cidrs">"#)
        .nth(1)
        .expect("the cidrs field");
    let field = field.split("</div>").next().unwrap();
    assert!(
        field.contains(r#"<p class="field-error""#)
            && field.contains("cidrs must be CIDRs such as 10.0.0.0/8"),
        "{field}"
    );
    assert!(
        w.policies().get_opt("office").await.unwrap().is_none(),
        "a refused dry run writes nothing"
    );

    // Start watching, then create: the watch reports the new Policy.
    let watch_url = w.url(&format!("/k/policies/watch?namespace={ns}"));
    let jar = w.dir.join("alice").display().to_string();
    let watcher = std::process::Command::new("curl")
        .args(["-s", "-N", "--max-time", "6", "-b", &jar, &watch_url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = post(new("office", "10.0.0.0/8"));
    assert_eq!(r.status, 303, "{r:?}\n{}", w.log());
    assert_eq!(
        r.header("location"),
        Some(format!("/k/policies/{ns}/office").as_str())
    );
    let p = w.policies().get("office").await.unwrap();
    assert_eq!(
        p.data["spec"]["rules"][0]["from"][0]["sourceCIDRs"]["cidrs"],
        json!(["10.0.0.0/8"])
    );
    assert_eq!(p.data["spec"]["targetRefs"][0]["name"], "app");
    let managers: Vec<_> = p
        .metadata
        .managed_fields
        .clone()
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"rustronaut-console".to_string()),
        "{managers:?}"
    );

    // Ready appears live: the status changes (as the operator would write it) reach the watch.
    let mut with_status = p.clone();
    with_status.data["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Programmed",
        "message": "in 1 gateway", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]});
    w.policies()
        .replace_status("office", &PostParams::default(), &with_status)
        .await
        .unwrap();
    let out = watcher.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("event: change"), "{events}");
    let key = format!("\"key\":\"{ns}/office\"");
    let ready = events
        .lines()
        .rfind(|l| l.contains(&key))
        .unwrap_or_else(|| panic!("no event for {key}: {events}"));
    assert!(ready.contains("Programmed"), "{events}");

    // The list and detail pages show it as Alice sees it.
    let r = w.browser("alice", &w.url(&format!("/k/policies?namespace={ns}")), &[]);
    assert!(
        r.body.contains(&format!(r#"data-key="{ns}/office""#)) && r.body.contains("Programmed"),
        "{}",
        r.body
    );
    let r = w.browser("alice", &w.url(&format!("/k/policies/{ns}/office")), &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("10.0.0.0/8")
            && r.body.contains("in 1 gateway")
            && r.body.contains("/edit"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bob_is_refused_an_edit_by_rbac_and_gitops_objects_are_read_only() {
    let w = World::new().await;
    let ns = w.ns.clone();
    let policy = |name: &str, labels: Value| {
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
               "metadata": {"name": name, "namespace": ns, "labels": labels},
               "spec": {"action": "Allow", "targetRefs": [{"name": "app"}],
                        "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}})
    };
    apply(&w.admin, policy("shared", json!({}))).await;
    apply(
        &w.admin,
        policy("from-git", json!({"argocd.argoproj.io/instance": "acme"})),
    )
    .await;

    w.login("bob", BOB, "/");
    w.login("alice", ALICE, "/");

    // Bob may read, but the API server refuses his edit, and the page says so.
    let r = w.browser("bob", &w.url(&format!("/k/policies/{ns}/shared")), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let csrf = w.csrf("bob");
    let r = w.post(
        "bob",
        &format!("/k/policies/{ns}/shared/edit"),
        &[("_csrf", &csrf), ("_mode", "form"), ("spec.action", "Deny")],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("Kubernetes refused this for your account (403 Forbidden)"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(BOB_EMAIL),
        "the refusal names Bob: {}",
        r.body
    );
    assert_eq!(
        w.policies().get("shared").await.unwrap().data["spec"]["action"],
        "Allow"
    );

    // Bob cannot list across namespaces: the overview says so instead of failing.
    let r = w.browser("bob", &w.url("/k/policies"), &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("403 Forbidden") && r.body.contains("Enter a namespace"),
        "{}",
        r.body
    );

    // Alice may edit the same object.
    let csrf = w.csrf("alice");
    let r = w.post(
        "alice",
        &format!("/k/policies/{ns}/shared/edit"),
        &[("_csrf", &csrf), ("_mode", "form"), ("spec.action", "Deny")],
    );
    assert_eq!(r.status, 303, "{r:?}\n{}", w.log());
    assert_eq!(
        w.policies().get("shared").await.unwrap().data["spec"]["action"],
        "Deny"
    );

    // A GitOps-owned object is read-only with a banner, even for Alice.
    let r = w.browser("alice", &w.url(&format!("/k/policies/{ns}/from-git")), &[]);
    assert!(
        r.body
            .contains("Managed by GitOps: Argo CD (argocd.argoproj.io/instance=acme)"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("/from-git/edit"), "no edit link");
    let r = w.post(
        "alice",
        &format!("/k/policies/{ns}/from-git/edit"),
        &[("_csrf", &csrf), ("_mode", "form"), ("spec.action", "Deny")],
    );
    assert_eq!(r.status, 409, "{r:?}");
    let r = w.post(
        "alice",
        &format!("/k/policies/{ns}/from-git/delete"),
        &[("_csrf", &csrf)],
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(
        w.policies().get("from-git").await.unwrap().data["spec"]["action"],
        "Allow"
    );

    // Alice deletes the other one after confirming.
    let r = w.browser(
        "alice",
        &w.url(&format!("/k/policies/{ns}/shared/delete")),
        &[],
    );
    assert!(r.body.contains("This cannot be undone"));
    let r = w.post(
        "alice",
        &format!("/k/policies/{ns}/shared/delete"),
        &[("_csrf", &csrf)],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert!(w.policies().get_opt("shared").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_explain_page_explains_what_the_person_can_read_like_the_cli() {
    let w = World::new().await;
    let ns = w.ns.clone();
    apply(
        &w.admin,
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant", "metadata": {"name": ns},
        "spec": {"namespaces": [ns], "domains": [format!("*.{ns}.test")]}}),
    )
    .await;
    apply(&w.admin, json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource", "metadata": {"name": "app", "namespace": ns},
        "spec": {"protocol": "HTTP", "hostnames": [format!("app.{ns}.test")],
                 "gatewayRefs": [{"namespace": ns, "name": "edge", "listener": "https"}],
                 "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]}})).await;
    apply(&w.admin, json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy", "metadata": {"name": "office", "namespace": ns},
        "spec": {"action": "Allow", "targetRefs": [{"name": "app"}],
                 "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}})).await;
    w.login("alice", ALICE, "/");
    w.login("bob", BOB, "/");

    let url = |ip: &str| {
        w.url(&format!(
            "/explain?resource={ns}%2Fapp&path=%2F&source_ip={ip}"
        ))
    };
    let r = w.browser("alice", &url("10.1.2.3"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let text = r
        .body
        .split(r#"<pre class="explanation"><code>"#)
        .nth(1)
        .unwrap_or_else(|| panic!("{}", r.body));
    assert!(
        text.starts_with("decision: Allow") && text.contains("office"),
        "{text}"
    );
    let r = w.browser("alice", &url("192.0.2.1"), &[]);
    let text = r
        .body
        .split(r#"<pre class="explanation"><code>"#)
        .nth(1)
        .unwrap_or_else(|| panic!("{}", r.body));
    assert!(
        text.starts_with("decision: Deny") && text.contains("closest Allow"),
        "{text}"
    );

    // Bob may not read Tenants: the page says what it could not read instead of guessing.
    let r = w.browser("bob", &url("10.1.2.3"), &[]);
    assert!(
        r.body.contains("Cannot read what the explanation needs") && r.body.contains("403"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("decision:"));
}

/// SIGTERM, as the kubelet stops the console's pod: `/readyz` fails at once while the
/// console still accepts and serves through its drain delay (the endpoints and kube-proxy
/// are still taking the pod out; a port closed at the signal refused what they sent
/// meanwhile); then the port closes and the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readiness_then_drains_and_exits() {
    let mut w = World::new().await;
    assert_eq!(curl(&[&w.url("/readyz")]).status, 200);
    let pid = w._console.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let signalled = std::time::Instant::now();
    let deadline = signalled + Duration::from_secs(4);
    loop {
        let r = curl(&[&w.url("/readyz")]);
        if r.status == 503 {
            assert_eq!(r.body, "draining");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readiness still {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still serving: a new connection gets the login page's redirect.
    let r = w.browser("d", &w.url("/k/policies"), &[]);
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the check ran after the drain delay; nothing was shown"
    );
    assert_eq!(r.status, 303, "{r:?}");
    // Then the port closes and the process exits cleanly.
    let deadline = signalled + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = w._console.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", w.port)).is_err());
    let log = std::fs::read_to_string(&w.console_log).unwrap();
    assert!(log.contains("SIGTERM: draining"), "{log}");
}
