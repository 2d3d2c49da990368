//! Sidecar gateways and workload identity against the real API server of the e2e harness:
//! the gateway reads a sidecar snapshot from a Secret with exactly the RBAC a sidecar gets
//! (read that one Secret), forwards to an application on loopback, and admits callers by
//! their ServiceAccount tokens (TokenRequest API, audience `rustronaut.io`), verified against
//! the cluster's issuer keys fetched through the same client.

mod common;

use common::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::path::Path;

const SECRET: &str = "payments-sidecar";

/// A sidecar's snapshot: one plaintext listener, the application on `upstream` (loopback),
/// and one Allow for the principal `from`.
fn sidecar_snapshot(ns: &str, http: u16, upstream: &str, sidecar: bool, from: Value) -> Value {
    json!({
        "schemaVersion": 1,
        "gateway": {"namespace": ns, "name": "payments"},
        "sidecar": sidecar,
        "listeners": [{"name": "http-8080", "port": http, "protocol": "HTTP"}],
        "tenants": [{"name": "acme", "domains": ["*.acme.test"], "identityProviders": []}],
        "resources": [{
            "namespace": ns, "name": "payments", "tenant": "acme", "protocol": "HTTP",
            "listeners": ["http-8080"],
            "hostnames": if sidecar { json!([]) } else { json!(["payments.acme.test"]) },
            "rules": [{"name": "all", "upstreams": [{"kind": {"service": {
                "name": "payments", "port": 8080, "addresses": [upstream]}}}]}]
        }],
        "policies": [{"namespace": ns, "name": "callers", "tenant": "acme", "action": "Allow",
            "targets": [{"resource": {"namespace": ns, "name": "payments"}}],
            "rules": [{"name": "callers", "from": [from]}]}],
    })
}

/// The status of GET / through the sidecar, with `token` as a bearer token.
fn call(http: u16, host: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let host = format!("Host: {host}");
    let url = format!("http://127.0.0.1:{http}/orders");
    let mut args = vec!["-H", host.as_str()];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(url.as_str());
    curl(&args)
}

struct Ground {
    rt: tokio::runtime::Runtime,
    admin: kube::Client,
    ns: String,
    kubeconfig: tempfile::TempDir,
}

impl Ground {
    /// A namespace with the sidecar's ServiceAccount, allowed to read the Secret `SECRET`
    /// and nothing else, and a kubeconfig acting as that account.
    fn new(prefix: &str) -> Self {
        let cluster = rustronaut_e2e::shared();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let admin = rt.block_on(cluster.client());
        let ns = rt.block_on(rustronaut_e2e::namespace(&admin, prefix));
        let pp = PostParams::default();
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "sidecar"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"],
                "verbs": ["get", "list", "watch"], "resourceNames": [SECRET]}]
        }))
        .unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "sidecar"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sidecar"},
            "subjects": [{"kind": "ServiceAccount", "name": "sidecar", "namespace": ns}],
        }))
        .unwrap();
        rt.block_on(async {
            for name in ["sidecar", "a", "b"] {
                let sa: ServiceAccount =
                    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
                Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
                    .create(&pp, &sa)
                    .await
                    .unwrap();
            }
            Api::<Role>::namespaced(admin.clone(), &ns)
                .create(&pp, &role)
                .await
                .unwrap();
            Api::<RoleBinding>::namespaced(admin.clone(), &ns)
                .create(&pp, &binding)
                .await
                .unwrap();
        });
        let kubeconfig = tempfile::tempdir().unwrap();
        rustronaut_e2e::scenario::impersonating_kubeconfig(
            cluster.kubeconfig(),
            &ns,
            "sidecar",
            &kubeconfig.path().join("kubeconfig"),
        )
        .unwrap();
        Self {
            rt,
            admin,
            ns,
            kubeconfig,
        }
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.kubeconfig.path().join("kubeconfig")
    }

    /// A token of ServiceAccount `name` for `audience`, from the TokenRequest API.
    fn token(&self, name: &str, audience: &str) -> String {
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(600),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = self
            .rt
            .block_on(
                Api::<ServiceAccount>::namespaced(self.admin.clone(), &self.ns)
                    .create_token_request(name, &PostParams::default(), &req),
            )
            .unwrap();
        out.status.expect("a token").token
    }

    fn put_snapshot(&self, snapshot: &Value) {
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), &self.ns);
        let s = snapshot_secret(SECRET, &serde_json::to_vec(snapshot).unwrap());
        let pp = PostParams::default();
        self.rt.block_on(async {
            match secrets.get_opt(SECRET).await.unwrap() {
                None => {
                    secrets.create(&pp, &s).await.unwrap();
                }
                Some(old) => {
                    let mut s = s;
                    s.metadata.resource_version = old.metadata.resource_version;
                    secrets.replace(SECRET, &pp, &s).await.unwrap();
                }
            }
        });
    }

    fn spawn(&self) -> Gateway {
        Gateway::spawn_sidecar(
            Path::new(&self.kubeconfig()),
            &format!("{}/{SECRET}", self.ns),
            &[],
        )
    }
}

fn sa(ns: &str, names: &[&str]) -> Value {
    json!({"serviceAccount": {"namespace": ns, "names": names}})
}

#[test]
fn a_sidecar_admits_service_accounts_by_their_projected_tokens() {
    let g = Ground::new("gw-sa");
    let app = Upstream::start("app");
    let http = free_port();
    let ns = g.ns.clone();
    let snap = |allowed: &str| {
        sidecar_snapshot(&ns, http, &app.addr.to_string(), true, sa(&ns, &[allowed]))
    };
    g.put_snapshot(&snap("a"));
    let token_a = g.token("a", "rustronaut.io");
    let token_b = g.token("b", "rustronaut.io");
    let token_a_elsewhere = g.token("a", "https://vault.example");

    // The sidecar's account reads its own Secret only.
    let cluster = rustronaut_e2e::shared();
    let as_sidecar = g.rt.block_on(cluster.client_as(
        &format!("system:serviceaccount:{ns}:sidecar"),
        &["system:serviceaccounts", "system:authenticated"],
    ));
    let err =
        g.rt.block_on(Api::<Secret>::namespaced(as_sidecar, &ns).list(&Default::default()))
            .expect_err("the sidecar's account must not list Secrets");
    assert!(err.to_string().contains("forbidden"), "{err}");

    let gw = g.spawn();
    gw.wait_ready(&snap("a"));
    // Keys are fetched once the snapshot names a ServiceAccount: until then tokens get 401.
    eventually(&gw, "account a admitted", || {
        call(http, "payments", Some(&token_a)).status == 200
    });
    let ok = call(http, "payments.shop.svc.cluster.local", Some(&token_a));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["upstream"], "app", "{}", ok.body);
    assert!(gw.log().contains("ServiceAccount issuer keys fetched"));

    let b = call(http, "payments", Some(&token_b));
    assert_eq!(
        b.status, 403,
        "another account of the namespace: {}",
        b.body
    );
    let other = call(http, "payments", Some(&token_a_elsewhere));
    assert_eq!(
        other.status, 401,
        "a token for another audience: {}",
        other.body
    );
    assert_eq!(call(http, "payments", None).status, 401, "no token");
    let garbage = call(http, "payments", Some("a.b.c"));
    assert_eq!(garbage.status, 401, "not a token: {}", garbage.body);
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A Policy change in the Secret is enforced without a restart.
    g.put_snapshot(&snap("b"));
    eventually(&gw, "account b admitted after the change", || {
        call(http, "payments", Some(&token_b)).status == 200
    });
    assert_eq!(call(http, "payments", Some(&token_a)).status, 403);

    // A Policy naming every account of another namespace admits neither.
    g.put_snapshot(&sidecar_snapshot(
        &ns,
        http,
        &app.addr.to_string(),
        true,
        sa("kube-system", &[]),
    ));
    eventually(&gw, "the other namespace's policy applied", || {
        call(http, "payments", Some(&token_b)).status == 403
    });
    assert_eq!(call(http, "payments", Some(&token_a)).status, 403);
}

#[test]
fn an_edge_snapshot_with_a_loopback_upstream_is_refused() {
    let g = Ground::new("gw-loop");
    let app = Upstream::start("app");
    let http = free_port();
    let ns = g.ns.clone();
    let anyone = json!("anonymous");
    let edge = sidecar_snapshot(&ns, http, &app.addr.to_string(), false, anyone.clone());
    g.put_snapshot(&edge);
    let gw = g.spawn();
    eventually(&gw, "the edge snapshot refused", || {
        gw.log()
            .contains("a loopback upstream is only dialled by a sidecar")
    });
    let (code, _) = gw.admin_get("/readyz");
    assert_ne!(code, 200, "ready without a snapshot");
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The same upstream in a sidecar's snapshot is served.
    let sidecar = sidecar_snapshot(&ns, http, &app.addr.to_string(), true, anyone);
    g.put_snapshot(&sidecar);
    gw.wait_ready(&sidecar);
    let r = call(http, "payments", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["upstream"], "app");
}
