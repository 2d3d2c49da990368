//! The console's test world, shared by tests/console.rs (curl as the browser) and
//! tests/browser.rs (headless Chromium): the real API server, zitadel's example OP
//! (e2e/tools/oidc-provider) and the console binary, which runs as a ServiceAccount that may
//! only impersonate.
//!
//! The OP's users: `test-user@localhost` (email `test-user@zitadel.ch`) is Alice, who may
//! edit Policies in the test namespace; `test-user2` (email
//! `test-user2@zitadel.ch`) is Bob, who may only read them.

// Each test crate that declares `mod support;` uses only part of it.
#![allow(dead_code)]

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ALICE: (&str, &str) = ("test-user@localhost", "verysecure");
pub const BOB: (&str, &str) = ("test-user2", "verysecure");
pub const ALICE_EMAIL: &str = "test-user@zitadel.ch";
pub const BOB_EMAIL: &str = "test-user2@zitadel.ch";
pub const SESSION: &str = "__Host-rtn_console";

/// One HTTP response as curl saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, v)| {
                k.eq_ignore_ascii_case("set-cookie") && v.starts_with(&format!("{name}="))
            })
            .map(|(_, v)| v.as_str())
    }
}

pub fn curl(args: &[&str]) -> Resp {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_listening(port: u16, what: &str, log: &Path) {
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
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The OP, the console and the test namespace with Alice's and Bob's RBAC.
pub struct World {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The OP's serving certificate (the browser pins its key).
    pub op_cert: PathBuf,
    pub op_port: u16,
    pub port: u16,
    pub ns: String,
    pub admin: kube::Client,
    pub console_log: PathBuf,
    pub _op: Proc,
    pub _console: Proc,
}

pub async fn apply(client: &kube::Client, value: Value) {
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

pub async fn install_crds(client: &kube::Client) {
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
pub async fn console_kubeconfig(admin: &kube::Client, ns: &str, dir: &Path) -> PathBuf {
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
    pub async fn new() -> Self {
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
        // `make bench-console` runs the release binary; tests run the one cargo built for them.
        let bin = std::env::var_os("RUSTRONAUT_CONSOLE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rustronaut-console")));
        let console = Command::new(bin)
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
            op_cert: pki.serving_cert,
            op_port,
            port,
            ns,
            admin,
            console_log,
            _op: op,
            _console: console,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }

    pub fn op_url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("https://localhost:{}{path}", self.op_port)
        } else {
            path.to_string()
        }
    }

    /// curl as the browser of `jar`.
    pub fn browser(&self, jar: &str, url: &str, extra: &[&str]) -> Resp {
        let jar = self.dir.join(jar).display().to_string();
        let ca = self.ca.display().to_string();
        let mut args = vec!["--cacert", &ca, "-b", &jar, "-c", &jar];
        args.extend_from_slice(extra);
        args.push(url);
        curl(&args)
    }

    /// A form POST of `fields` from the browser of `jar`.
    pub fn post(&self, jar: &str, path: &str, fields: &[(&str, &str)]) -> Resp {
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // `-d ''` first: a POST even without fields.
        let mut args: Vec<&str> = vec!["-d", ""];
        for e in &encoded {
            args.push("--data-urlencode");
            args.push(e);
        }
        self.browser(jar, &self.url(path), &args)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// Logs `who` in from `path`; returns the session cookie's Set-Cookie value.
    pub fn login(&self, jar: &str, who: (&str, &str), path: &str) -> String {
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
    pub fn csrf(&self, jar: &str) -> String {
        let r = self.browser(jar, &self.url("/"), &[]);
        let (_, rest) = r
            .body
            .split_once(r#"name="_csrf" value=""#)
            .expect("a CSRF field");
        rest.split('"').next().unwrap().to_string()
    }

    pub fn policies(&self) -> Api<DynamicObject> {
        let ar = kube::core::ApiResource::erase::<rustronaut_crds::Policy>(&());
        Api::namespaced_with(self.admin.clone(), &self.ns, &ar)
    }
}
