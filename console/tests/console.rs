//! The console against the real API server and the real OpenID provider: the console binary
//! runs as a ServiceAccount that may only impersonate; two people log in through zitadel's
//! example OP (e2e/tools/oidc-provider) with curl as their browser, and Kubernetes RBAC
//! decides what each may do.
//!
//! The OP's users: `test-user@localhost` (email `test-user@zitadel.ch`) is Alice, who may
//! edit Policies in the test namespace; `test-user2` (email
//! `test-user2@zitadel.ch`) is Bob, who may only read them.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ALICE: (&str, &str) = ("test-user@localhost", "verysecure");
const BOB: (&str, &str) = ("test-user2", "verysecure");
const ALICE_EMAIL: &str = "test-user@zitadel.ch";
const BOB_EMAIL: &str = "test-user2@zitadel.ch";
const SESSION: &str = "__Host-rtn_console";

/// One HTTP response as curl saw it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, v)| {
                k.eq_ignore_ascii_case("set-cookie") && v.starts_with(&format!("{name}="))
            })
            .map(|(_, v)| v.as_str())
    }
}

fn curl(args: &[&str]) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let hfile = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-D"])
        .arg(&hfile)
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success() || out.status.code() == Some(28),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = std::fs::read_to_string(&hfile).unwrap_or_default();
    let block = raw
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default();
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} not listening:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The OP, the console and the test namespace with Alice's and Bob's RBAC.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: PathBuf,
    op_port: u16,
    port: u16,
    ns: String,
    admin: kube::Client,
    console_log: PathBuf,
    _op: Proc,
    _console: Proc,
}

async fn apply(client: &kube::Client, value: Value) {
    let gvk: kube::core::GroupVersionKind = {
        let (g, v) = value["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap_or(("", value["apiVersion"].as_str().unwrap()));
        kube::core::GroupVersionKind::gvk(g, v, value["kind"].as_str().unwrap())
    };
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = match value["metadata"]["namespace"].as_str() {
        Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        _ => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    api.patch(
        &name,
        &PatchParams::apply("console-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in rustronaut_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("console-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = crds.get(&name).await.unwrap();
            let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not Established");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A kubeconfig for the console's own ServiceAccount, which may only impersonate.
async fn console_kubeconfig(admin: &kube::Client, ns: &str, dir: &Path) -> PathBuf {
    let cluster = rustronaut_e2e::shared();
    let role = format!("console-impersonator-{ns}");
    apply(admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
        "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}]})).await;
    apply(admin, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "console", "namespace": ns}})).await;
    apply(admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "console", "namespace": ns}]})).await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = sas
        .create_token_request("console", &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let c = &kc.clusters[0];
    let cl = c.cluster.as_ref().unwrap();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: console\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: console}}\ncurrent-context: c\n",
        cl.server.as_deref().unwrap(),
        cl.certificate_authority_data.as_deref().unwrap()
    );
    let path = dir.join("console.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

impl World {
    async fn new() -> Self {
        let admin = rustronaut_e2e::client().await;
        install_crds(&admin).await;
        let ns = rustronaut_e2e::namespace(&admin, "console").await;
        for (who, verbs) in [
            (
                ALICE_EMAIL,
                json!([
                    "get", "list", "watch", "create", "update", "patch", "delete"
                ]),
            ),
            (BOB_EMAIL, json!(["get", "list", "watch"])),
        ] {
            let name = who.split('@').next().unwrap();
            apply(&admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": ns},
                "rules": [{"apiGroups": ["rustronaut.io"], "resources": ["policies", "resources"], "verbs": verbs},
                          {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]}]})).await;
            apply(&admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": who}]})).await;
        }
        // Alice may also read Tenants (cluster-scoped), which the explain page needs.
        let reader = format!("tenant-reader-{ns}");
        apply(&admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": reader},
            "rules": [{"apiGroups": ["rustronaut.io"], "resources": ["tenants"], "verbs": ["get", "list", "watch"]}]})).await;
        apply(&admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": reader},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE_EMAIL}]})).await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let kubeconfig = console_kubeconfig(&admin, &ns, &dir).await;
        // The apiserver's test PKI has a serving certificate for localhost: the OP uses it.
        let pki = rustronaut_e2e::pki::generate(&dir).unwrap();
        let bindir = rustronaut_e2e::build_tools().expect("tools built");
        let (op_port, port) = (free_port(), free_port());
        let op_log = dir.join("op.log");
        let op = Command::new(bindir.join("oidc-provider"))
            .env("OIDC_LISTEN", format!("127.0.0.1:{op_port}"))
            .env("OIDC_ISSUER", format!("https://localhost:{op_port}"))
            .env("OIDC_TLS_CERT", &pki.serving_cert)
            .env("OIDC_TLS_KEY", &pki.serving_key)
            .env("OIDC_CLIENT_ID", "console")
            .env("OIDC_CLIENT_SECRET", "console-secret")
            .env(
                "OIDC_REDIRECT_URIS",
                format!("http://localhost:{port}/oidc/callback"),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&op_log).unwrap())
            .spawn()
            .expect("oidc-provider starts");
        let op = Proc(op);
        wait_listening(op_port, "oidc-provider", &op_log);
        let console_log = dir.join("console.log");
        let console = Command::new(env!("CARGO_BIN_EXE_rustronaut-console"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--public-url", &format!("http://localhost:{port}")])
            .args(["--oidc-issuer", &format!("https://localhost:{op_port}")])
            .args([
                "--oidc-client-id",
                "console",
                "--oidc-client-secret",
                "console-secret",
            ])
            .args(["--oidc-scopes", "email,profile"])
            .arg("--oidc-ca-file")
            .arg(&pki.ca_cert)
            .args([
                "--cookie-keys",
                "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(std::fs::File::create(&console_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("console starts");
        let console = Proc(console);
        wait_listening(port, "console", &console_log);
        World {
            _tmp: tmp,
            dir,
            ca: pki.ca_cert,
            op_port,
            port,
            ns,
            admin,
            console_log,
            _op: op,
            _console: console,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }

    fn op_url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("https://localhost:{}{path}", self.op_port)
        } else {
            path.to_string()
        }
    }

    /// curl as the browser of `jar`.
    fn browser(&self, jar: &str, url: &str, extra: &[&str]) -> Resp {
        let jar = self.dir.join(jar).display().to_string();
        let ca = self.ca.display().to_string();
        let mut args = vec!["--cacert", &ca, "-b", &jar, "-c", &jar];
        args.extend_from_slice(extra);
        args.push(url);
        curl(&args)
    }

    /// A form POST of `fields` from the browser of `jar`.
    fn post(&self, jar: &str, path: &str, fields: &[(&str, &str)]) -> Resp {
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // `-d ''` first: a POST even without fields.
        let mut args: Vec<&str> = vec!["-d", ""];
        for e in &encoded {
            args.push("--data-urlencode");
            args.push(e);
        }
        self.browser(jar, &self.url(path), &args)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// Logs `who` in from `path`; returns the session cookie's Set-Cookie value.
    fn login(&self, jar: &str, who: (&str, &str), path: &str) -> String {
        let r = self.browser(jar, &self.url(path), &[]);
        assert_eq!(r.status, 303, "{r:?}");
        let to_login = r.header("location").unwrap().to_string();
        assert!(to_login.starts_with("/login?return_to="), "{to_login}");
        let r = self.browser(jar, &self.url(&to_login), &[]);
        assert_eq!(r.status, 302, "{r:?}\n{}", self.log());
        let authorize = r.header("location").unwrap().to_string();
        let r = self.browser(jar, &authorize, &[]);
        assert_eq!(r.status, 302, "authorize: {r:?}");
        let login = self.op_url(r.header("location").unwrap());
        let id = login
            .split_once("authRequestID=")
            .map(|(_, v)| v.split('&').next().unwrap().to_string())
            .unwrap();
        let page = self.browser(jar, &login, &[]);
        assert!(page.body.contains("name=\"password\""), "{}", page.body);
        let id = format!("id={id}");
        let user = format!("username={}", who.0);
        let pass = format!("password={}", who.1);
        let r = self.browser(
            jar,
            &self.op_url("/login/username"),
            &[
                "--data-urlencode",
                &id,
                "--data-urlencode",
                &user,
                "--data-urlencode",
                &pass,
            ],
        );
        assert_eq!(r.status, 302, "login form: {r:?}");
        let mut next = self.op_url(r.header("location").unwrap());
        for _ in 0..5 {
            if next.contains("/oidc/callback") {
                break;
            }
            let r = self.browser(jar, &next, &[]);
            next = self.op_url(
                r.header("location")
                    .unwrap_or_else(|| panic!("{next}: {r:?}")),
            );
        }
        let r = self.browser(jar, &next, &[]);
        assert_eq!(r.status, 303, "callback: {r:?}\n{}", self.log());
        assert_eq!(r.header("location"), Some(path));
        r.set_cookie(SESSION).expect("session cookie").to_string()
    }

    /// The CSRF token on the pages of `jar`'s session.
    fn csrf(&self, jar: &str) -> String {
        let r = self.browser(jar, &self.url("/"), &[]);
        let (_, rest) = r
            .body
            .split_once(r#"name="_csrf" value=""#)
            .expect("a CSRF field");
        rest.split('"').next().unwrap().to_string()
    }

    fn policies(&self) -> Api<DynamicObject> {
        let ar = kube::core::ApiResource::erase::<rustronaut_crds::Policy>(&());
        Api::namespaced_with(self.admin.clone(), &self.ns, &ar)
    }
}

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
