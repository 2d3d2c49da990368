//! Browser login with OpenID Connect against a real provider: zitadel/oidc's example OP
//! (e2e/tools/oidc-provider, built by e2e/scripts/tools.sh) over HTTPS, the gateway binary,
//! curl with a cookie jar as the browser. One test CA (rcgen) signs the OP's and the
//! gateway's certificates; the gateway trusts the OP through `--jwks-ca-file`.
//!
//! The example OP has no groups claim, so policies here match on email (its users'
//! emails are `test-user@zitadel.ch` and `test-user2@zitadel.ch`, verified), which the
//! gateway reads from the userinfo endpoint (the OP leaves them out of the ID token).

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const APP: &str = "app.acme.test";
const SHORT: &str = "short.globex.test";
const ALICE: (&str, &str) = ("test-user@localhost", "verysecure");
const BOB: (&str, &str) = ("test-user2", "verysecure");
const SESSION: &str = "__Host-rtn_session";

/// The OIDC provider process; killed on drop.
struct Provider {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Provider {
    fn start(pki: &Pki, dir: &Path, redirect_uris: &[String]) -> Self {
        let out = Command::new("bash")
            .args(["../e2e/scripts/tools.sh", "bindir"])
            .output()
            .expect("tools.sh runs");
        let bindir = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let bin = Path::new(&bindir).join("oidc-provider");
        assert!(
            bin.exists(),
            "{} missing: run e2e/scripts/tools.sh",
            bin.display()
        );
        let (chain, key) = pki.server(&["localhost"]);
        let port = free_port();
        let log = dir.join("oidc-provider.log");
        let child = Command::new(bin)
            .env("OIDC_LISTEN", format!("127.0.0.1:{port}"))
            .env("OIDC_ISSUER", format!("https://localhost:{port}"))
            .env("OIDC_TLS_CERT", write(dir, "op.pem", &chain))
            .env("OIDC_TLS_KEY", write(dir, "op-key.pem", &key))
            .env("OIDC_REDIRECT_URIS", redirect_uris.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("oidc-provider starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "oidc-provider not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, log }
    }

    fn issuer(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one test needs: CA, provider, upstream, gateway.
struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: String,
    op: Provider,
    upstream: Upstream,
    gw: Gateway,
    snapshot: Value,
    https: u16,
    http: u16,
}

fn key(fill: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([fill; 32])
}

impl World {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A world whose snapshot `edit` changes before the gateway starts.
    fn with(edit: impl FnOnce(&mut Value)) -> Self {
        let pki = Pki::new("oidc test ca");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let ca = write(&dir, "ca.pem", &pki.ca_pem);
        let (https, http) = (free_port(), free_port());
        let redirects = [APP, SHORT]
            .map(|h| format!("https://{h}:{https}/.rustronaut/oidc/callback"))
            .to_vec();
        let op = Provider::start(&pki, &dir, &redirects);
        let upstream = Upstream::start("app");
        let (chain, key_pem) = pki.server(&[APP, SHORT]);
        let idp = |name: &str| {
            json!({"name": name, "kind": {"oidc": {
                "issuer": op.issuer(), "clientID": "rustronaut", "clientSecret": "secret",
                "scopes": ["openid", "email", "profile"]}}})
        };
        let service = json!([{"kind": {"service": {
            "name": "app", "port": 80, "addresses": [upstream.addr.to_string()]}}}]);
        let resource = |tenant: &str, ns: &str, host: &str| {
            json!({"namespace": ns, "name": "app", "tenant": tenant, "protocol": "HTTP",
                   "listeners": ["https", "http"], "hostnames": [host],
                   "rules": [{"name": "all", "upstreams": service}]})
        };
        let allow = |tenant: &str, ns: &str, from: Value| {
            json!({"namespace": ns, "name": "people", "tenant": tenant, "action": "Allow",
            "targets": [{"resource": {"namespace": ns, "name": "app"}}],
            "rules": [
                {"name": "alice", "from": [from], "to": [{"paths": [{"type": "PathPrefix", "value": "/"}]}]},
                {"name": "anyone", "from": ["anonymous"], "to": [{"paths": [{"type": "PathPrefix", "value": "/public"}]}]}
            ]})
        };
        let mut snapshot = json!({
            "schemaVersion": 1,
            "gateway": {"namespace": "rtn-system", "name": "edge"},
            "listeners": [
                {"name": "https", "port": https, "protocol": "HTTPS",
                 "tls": {"certificates": [{"name": "both", "hostnames": [APP, SHORT],
                         "certificateChainPem": chain, "privateKeyPem": key_pem}]}},
                {"name": "http", "port": http, "protocol": "HTTP"}
            ],
            "tenants": [
                {"name": "acme", "domains": ["*.acme.test"], "identityProviders": [idp("corp")],
                 "session": {"durationSeconds": 3600,
                             "signingKeys": [{"id": "k1", "secret": key(1)}]}},
                {"name": "globex", "domains": ["*.globex.test"], "identityProviders": [idp("sso")],
                 "session": {"durationSeconds": 3,
                             "signingKeys": [{"id": "k1", "secret": key(1)}]}}
            ],
            "resources": [resource("acme", "acme-apps", APP), resource("globex", "globex-apps", SHORT)],
            "policies": [
                allow("acme", "acme-apps",
                      json!({"user": {"idp": "corp", "emails": ["test-user@zitadel.ch"]}})),
                allow("globex", "globex-apps", json!("authenticated")),
            ],
        });
        edit(&mut snapshot);
        let gw = Gateway::start_with(&snapshot, &["--jwks-ca-file", &ca]);
        Self {
            _dir: tmp,
            dir,
            ca,
            op,
            upstream,
            gw,
            snapshot,
            https,
            http,
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https)
    }

    /// curl as a browser with cookie jar `jar`: CA trusted, gateway hosts resolved, no
    /// redirects followed.
    fn browser(&self, jar: &str, url: &str, extra: &[&str]) -> Resp {
        let jar = self.dir.join(jar).display().to_string();
        let mut args: Vec<String> = vec![
            "--cacert".into(),
            self.ca.clone(),
            "-b".into(),
            jar.clone(),
            "-c".into(),
            jar,
            "-H".into(),
            "Accept: text/html,application/xhtml+xml,*/*;q=0.8".into(),
        ];
        for h in [APP, SHORT] {
            args.push("--resolve".into());
            args.push(format!("{h}:{}:127.0.0.1", self.https));
            args.push("--resolve".into());
            args.push(format!("{h}:{}:127.0.0.1", self.http));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(url.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    }

    /// Logs in through the OP's form from a gateway 302 to the IdP; returns the callback
    /// URL the OP sends the browser to (not yet visited).
    fn log_in_at_op(&self, jar: &str, authorize: &str, who: (&str, &str)) -> String {
        let r = self.browser(jar, authorize, &[]);
        assert_eq!(
            r.status,
            302,
            "authorize: {r:?}\nOP log:\n{}",
            self.op_log()
        );
        let login = r.header("location").unwrap().to_string();
        let login = if login.starts_with('/') {
            format!("{}{login}", self.op.issuer())
        } else {
            login
        };
        let id = login
            .split_once("authRequestID=")
            .map(|(_, v)| v.split('&').next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no authRequestID in {login}"));
        let page = self.browser(jar, &login, &[]);
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.body.contains("name=\"password\""), "{}", page.body);
        let post = format!("{}/login/username", self.op.issuer());
        let r = self.browser(
            jar,
            &post,
            &[
                "--data-urlencode",
                &format!("id={id}"),
                "--data-urlencode",
                &format!("username={}", who.0),
                "--data-urlencode",
                &format!("password={}", who.1),
            ],
        );
        assert_eq!(r.status, 302, "login form: {r:?}");
        // The OP finishes the auth request, then redirects to the client's redirect URI.
        let mut next = r.header("location").unwrap().to_string();
        for _ in 0..5 {
            if next.contains("/.rustronaut/oidc/callback") {
                return next;
            }
            if next.starts_with('/') {
                next = format!("{}{next}", self.op.issuer());
            }
            let r = self.browser(jar, &next, &[]);
            assert_eq!(r.status, 302, "{next}: {r:?}");
            next = r.header("location").unwrap().to_string();
        }
        panic!("the OP never redirected to the callback; last {next}")
    }

    /// The full login of `who` at `host` starting from `path`: returns the callback URL
    /// used (for replays) after the gateway set the session.
    fn login(&self, jar: &str, host: &str, path: &str, who: (&str, &str)) -> String {
        let r = self.browser(jar, &self.url(host, path), &[]);
        assert_eq!(r.status, 302, "{r:?}\n{}", self.gw.log());
        let authorize = r.header("location").unwrap().to_string();
        let callback = self.log_in_at_op(jar, &authorize, who);
        let r = self.browser(jar, &callback, &[]);
        assert_eq!(r.status, 302, "callback: {r:?}\n{}", self.gw.log());
        assert_eq!(r.header("location"), Some(path), "back where it started");
        let cookie = r
            .headers
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with(SESSION))
            .map(|(_, v)| v.clone())
            .expect("session cookie set");
        for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        callback
    }

    fn op_log(&self) -> String {
        std::fs::read_to_string(&self.op.log).unwrap_or_default()
    }

    /// The session cookie value curl keeps in `jar` for `host`, if any.
    fn session_value(&self, jar: &str, host: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(jar)).unwrap_or_default();
        text.lines()
            .map(|l| l.trim_start_matches("#HttpOnly_"))
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f.len() == 7 && f[0] == host && f[5] == SESSION)
            .map(|f| f[6].to_string())
    }
}

fn query(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn browser_logs_in_with_pkce_and_reaches_the_upstream_without_the_session_cookie() {
    let w = World::new();

    // A browser is sent to the IdP with an S256 PKCE challenge, state and nonce.
    let r = w.browser("a", &w.url(APP, "/private?x=1"), &[]);
    assert_eq!(r.status, 302, "{r:?}\n{}", w.gw.log());
    let authorize = r.header("location").unwrap().to_string();
    assert!(
        authorize.starts_with(&format!("{}/auth?", w.op.issuer())),
        "{authorize}"
    );
    let q = query(&authorize);
    let param = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{k} missing in {authorize}"))
    };
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), "rustronaut");
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("code_challenge").len(), 43);
    assert!(param("state").len() >= 32 && param("nonce").len() >= 32);
    assert_eq!(
        param("redirect_uri"),
        format!(
            "https%3A%2F%2F{APP}%3A{}%2F.rustronaut%2Foidc%2Fcallback",
            w.https
        )
    );
    assert_eq!(w.upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // An API client (no text/html) gets 401, not a redirect.
    let api = curl(&[
        "--cacert",
        &w.ca,
        "--resolve",
        &format!("{APP}:{}:127.0.0.1", w.https),
        "-H",
        "Accept: application/json",
        &w.url(APP, "/private"),
    ]);
    assert_eq!(api.status, 401, "{api:?}");

    // Log in at the OP; the callback sets the session and sends the browser back.
    let callback = w.log_in_at_op("a", &authorize, ALICE);
    let r = w.browser("a", &callback, &[]);
    assert_eq!(r.status, 302, "callback: {r:?}\n{}", w.gw.log());
    assert_eq!(r.header("location"), Some("/private?x=1"));

    // The session gets the upstream; the upstream sees the identity, never the cookie.
    let r = w.browser(
        "a",
        &w.url(APP, "/private?x=1"),
        &["-H", "Cookie: theme=dark"],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", w.gw.log());
    assert_eq!(
        r.upstream_header("x-rustronaut-email").as_deref(),
        Some("test-user@zitadel.ch")
    );
    assert_eq!(
        r.upstream_header("x-rustronaut-identity-provider")
            .as_deref(),
        Some("corp")
    );
    let cookies = r.json()["headers"]["cookie"].to_string();
    assert!(!cookies.contains("rtn_session"), "{cookies}");
    assert!(!cookies.contains("rtn_login"), "{cookies}");
    assert!(cookies.contains("theme=dark"), "{cookies}");

    // The same callback again (the code is spent; the login-state cookie was cleared, so
    // present the old one as an attacker who kept it would): 400, no session.
    let r = w.browser("replay", &w.url(APP, "/private"), &[]);
    assert_eq!(r.status, 302);
    let authorize2 = r.header("location").unwrap().to_string();
    let fresh_callback = w.log_in_at_op("replay", &authorize2, ALICE);
    let r = w.browser("replay", &fresh_callback, &[]);
    assert_eq!(r.status, 302, "{r:?}");
    let stale_login = {
        // Log in once more to get a login-state cookie, then replay the spent code with it
        // and the matching state.
        let r = w.browser("replay2", &w.url(APP, "/private"), &[]);
        let st = query(r.header("location").unwrap())
            .into_iter()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1;
        let code = query(&fresh_callback)
            .into_iter()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1;
        w.url(
            APP,
            &format!("/.rustronaut/oidc/callback?code={code}&state={st}"),
        )
    };
    let r = w.browser("replay2", &stale_login, &[]);
    assert_eq!(r.status, 400, "replayed code: {r:?}\n{}", w.gw.log());
    assert!(w.session_value("replay2", APP).is_none());
    assert!(
        w.gw.log().contains("token endpoint refused the code"),
        "{}",
        w.gw.log()
    );

    // A callback whose state is not the one in the login cookie: 400, no session.
    let r = w.browser("forged", &w.url(APP, "/private"), &[]);
    assert_eq!(r.status, 302);
    let cb = w.log_in_at_op("forged", r.header("location").unwrap(), ALICE);
    let forged = cb.replace("state=", "state=x");
    let r = w.browser("forged", &forged, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(w.session_value("forged", APP).is_none());
    // And no login cookie at all (a callback planted in another browser): 400.
    let r = w.browser("empty", &cb, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(w.session_value("empty", APP).is_none());

    // Every callback is counted by result.
    let (_, m) = w.gw.admin_get("/metrics");
    assert!(
        m.contains("rustronaut_gateway_oidc_logins_total{result=\"ok\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("rustronaut_gateway_oidc_logins_total{result=\"InvalidCallback\"} 3"),
        "{m}"
    );

    // Logout clears the cookie and sends the browser to the OP's end_session_endpoint.
    let r = w.browser("a", &w.url(APP, "/.rustronaut/oidc/logout"), &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert!(
        r.header("location")
            .unwrap()
            .starts_with(&format!("{}/", w.op.issuer())),
        "{r:?}"
    );
    // The cookie is emptied and expired. (curl 7.88 does not rewrite its jar file here, so
    // the header is checked rather than the jar.)
    let cleared = r.headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("set-cookie")
            && v.starts_with(&format!("{SESSION}=;"))
            && v.contains("Max-Age=0")
    });
    assert!(cleared, "{r:?}");
    // A browser without the cookie is sent to log in again.
    let r = w.browser("after-logout", &w.url(APP, "/private"), &[]);
    assert_eq!(r.status, 302, "logged out: {r:?}");
}

#[test]
fn sessions_deny_expire_resist_tampering_and_stay_in_their_tenant() {
    let w = World::new();

    // A user the policy does not allow: logged in, then 403 (not another redirect).
    w.login("bob", APP, "/private", BOB);
    let r = w.browser("bob", &w.url(APP, "/private"), &[]);
    assert_eq!(r.status, 403, "{r:?}\n{}", w.gw.log());
    // Anonymous paths still work with a session.
    let r = w.browser("bob", &w.url(APP, "/public"), &[]);
    assert_eq!(r.status, 200, "{r:?}");

    // Alice's session, then a tampered copy: the tampered one is no session (302 again).
    w.login("alice", APP, "/private", ALICE);
    let value = w.session_value("alice", APP).expect("session in the jar");
    let ok = w.browser(
        "none",
        &w.url(APP, "/private"),
        &["-H", &format!("Cookie: {SESSION}={value}")],
    );
    assert_eq!(ok.status, 200, "the cookie alone is the session: {ok:?}");
    let mut bytes = value.into_bytes();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let r = w.browser(
        "none",
        &w.url(APP, "/private"),
        &["-H", &format!("Cookie: {SESSION}={tampered}")],
    );
    assert_eq!(r.status, 302, "tampered: {r:?}");

    // The acme session at globex (same key material, other tenant): no session there.
    let value = w.session_value("alice", APP).unwrap();
    let r = w.browser(
        "none",
        &w.url(SHORT, "/private"),
        &["-H", &format!("Cookie: {SESSION}={value}")],
    );
    assert_eq!(r.status, 302, "foreign tenant: {r:?}");

    // Over plain HTTP, no redirect to log in (the cookie would travel in clear): 401.
    let r = w.browser(
        "none",
        &format!("http://{APP}:{}/private", w.http),
        &["-H", &format!("Cookie: {SESSION}={value}")],
    );
    assert_eq!(r.status, 401, "plain HTTP: {r:?}");
    assert!(w.gw.log().contains("OIDC login needs an HTTPS listener"));
    // Nor does a callback finish there; the gateway answers it, the upstream never sees it.
    // Other spellings of the path are the callback too (issue 14, item 16: they used to be
    // matched on the raw path and went to the upstream).
    let hits = w.upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    for path in [
        "/.rustronaut/oidc/callback",
        "/.rustronaut/oidc/%63allback",
        "//.rustronaut/oidc/callback",
        "/x/../.rustronaut/oidc/callback",
    ] {
        let before = w.gw.log().matches("OidcNeedsHttps").count();
        let r = w.browser(
            "none",
            &format!("http://{APP}:{}{path}?code=c&state=s", w.http),
            &[],
        );
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(
            w.upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
            hits,
            "{path}"
        );
        assert_eq!(
            w.gw.log().matches("OidcNeedsHttps").count(),
            before + 1,
            "{path}: answered as the callback"
        );
    }

    // globex sessions last 3 seconds.
    w.login("short", SHORT, "/private", ALICE);
    let r = w.browser("short", &w.url(SHORT, "/private"), &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", w.gw.log());
    let value = w.session_value("short", SHORT).unwrap();
    std::thread::sleep(Duration::from_millis(4200));
    // Present the expired cookie explicitly (curl drops it from the jar after Max-Age).
    let r = w.browser(
        "none",
        &w.url(SHORT, "/private"),
        &["-H", &format!("Cookie: {SESSION}={value}")],
    );
    assert_eq!(r.status, 302, "expired: {r:?}");
}

#[test]
fn another_replica_finishes_a_login_this_one_started() {
    let w = World::new();
    // A second gateway with the same snapshot on other ports: the browser's traffic for the
    // same host:port is sent there (as a load balancer would), for the callback and after.
    let mut snap = w.snapshot.clone();
    let (https2, http2) = (free_port(), free_port());
    snap["listeners"][0]["port"] = json!(https2);
    snap["listeners"][1]["port"] = json!(http2);
    let gw2 = Gateway::start_with(&snap, &["--jwks-ca-file", &w.ca]);
    let to_gw2 = format!("{APP}:{}:127.0.0.1:{https2}", w.https);

    let r = w.browser("b", &w.url(APP, "/private"), &[]);
    assert_eq!(r.status, 302, "{r:?}");
    let callback = w.log_in_at_op("b", r.header("location").unwrap(), ALICE);
    let r = w.browser("b", &callback, &["--connect-to", &to_gw2]);
    assert_eq!(
        r.status,
        302,
        "callback at the other replica: {r:?}\n{}",
        gw2.log()
    );
    assert!(gw2.log().contains("LoggedIn"), "{}", gw2.log());
    let r = w.browser("b", &w.url(APP, "/private"), &["--connect-to", &to_gw2]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = w.browser("b", &w.url(APP, "/private"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// An acme policy `name` with one rule: `action` for `from` on paths under `prefix`.
fn acme_policy(name: &str, action: &str, from: Value, prefix: &str) -> Value {
    json!({"namespace": "acme-apps", "name": name, "tenant": "acme", "action": action,
           "targets": [{"resource": {"namespace": "acme-apps", "name": "app"}}],
           "rules": [{"name": "r", "from": [from],
                      "to": [{"paths": [{"type": "PathPrefix", "value": prefix}]}]}]})
}

fn claim_is(name: &str, value: &str) -> Value {
    json!({"user": {"claims": [{"name": name, "values": [value]}]}})
}

/// Issue 14, item 7: a Deny on a claim decides alike for a browser session and a bearer
/// token of the same user. The OP's ID token says `amr: ["pwd"]` for a password login; a
/// Deny on that claim used to never match session users (sessions kept no claims) while it
/// denied the same user presenting a token. Now the session keeps the claims the tenant's
/// policies name; a claim it did not keep (a Deny added after the login) fails closed until
/// the user logs in again.
#[test]
fn a_deny_on_a_claim_decides_alike_for_a_session_and_a_bearer_token() {
    let signer = Signer::new();
    let jwks = signer.jwks.clone();
    let policies = vec![
        acme_policy("people", "Allow", json!("authenticated"), "/"),
        acme_policy("password-only", "Deny", claim_is("amr", "pwd"), "/admin"),
        acme_policy(
            "contractors",
            "Deny",
            claim_is("department", "contractors"),
            "/finance",
        ),
    ];
    let w = World::with(|snap| {
        snap["tenants"][0]["identityProviders"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "ci", "kind": {"jwt": {
                "issuer": ISSUER, "audiences": ["rtn"], "jwks": {"inline": jwks}}}}));
        // acme's policies, globex's as they were.
        snap["policies"] = json!([policies, vec![snap["policies"][1].clone()]].concat());
    });
    // The OP's test-user@localhost is `id1`; the same user with a password-only token.
    let token = signer.token_with("id1", json!({"amr": ["pwd"]}));
    let bearer = format!("Authorization: Bearer {token}");
    let status =
        |jar: &str, path: &str, extra: &[&str]| w.browser(jar, &w.url(APP, path), extra).status;

    w.login("alice", APP, "/app", ALICE);
    for (path, want) in [("/app", 200), ("/admin", 403), ("/finance", 200)] {
        assert_eq!(
            status("alice", path, &[]),
            want,
            "session {path}\n{}",
            w.gw.log()
        );
        assert_eq!(
            status("none", path, &["-H", &bearer]),
            want,
            "bearer {path}"
        );
    }
    assert!(
        w.gw.log().contains("acme-apps/password-only"),
        "the Deny decided:\n{}",
        w.gw.log()
    );

    // A Deny on a claim the session did not keep: unknown for it, so it fails closed; the
    // token (which has every claim) is decided by its value.
    let mut next = w.snapshot.clone();
    next["policies"].as_array_mut().unwrap().push(acme_policy(
        "strong-only",
        "Deny",
        claim_is("acr", "weak"),
        "/reports",
    ));
    w.gw.write_snapshot_bytes(&serde_json::to_vec(&next).unwrap());
    w.gw.wait_metrics("the reload", |m| {
        m.contains("rustronaut_gateway_snapshot_reloads_total{result=\"applied\"} 2")
    });
    assert_eq!(status("alice", "/reports", &[]), 403, "{}", w.gw.log());
    assert_eq!(status("none", "/reports", &["-H", &bearer]), 200);
    // Logging in again keeps acr (absent for this user): decided like the token.
    w.login("alice-again", APP, "/reports", ALICE);
    assert_eq!(
        status("alice-again", "/reports", &[]),
        200,
        "{}",
        w.gw.log()
    );
    assert_eq!(status("alice-again", "/admin", &[]), 403);
}
