//! The sidecar injection webhook against a real apiserver: the webhook runs in-process on
//! 127.0.0.1 (as the operator's ServiceAccount, with the shipped RBAC), a
//! MutatingWebhookConfiguration shaped like the chart's points at it by URL with the
//! generated caBundle, and pods are created through the apiserver (a Deployment's pods by
//! kube-controller-manager). One test, in steps, because they share the one webhook and its
//! certificates (the rotation step changes them for everyone).

#[allow(dead_code)] // this binary needs only some of the shared helpers
mod common;

use common::eventually;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use rustronaut_crds::Resource as RtnResource;
use rustronaut_operator::webhook::{self, certs, inject};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

const IMAGE: &str = "example.test/rustronaut/gateway:sidecar";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "example.test/app:1",
                                 "ports": [{"containerPort": 8080}]}]},
    }))
    .unwrap()
}

/// Created from JSON, not the typed struct: the CRD's rule `size(self.gatewayRefs)` needs
/// the field present, and the struct leaves an empty list out.
async fn create_sidecar_resource(api: &Api<RtnResource>, name: &str, app: &str) {
    api.patch(
        name,
        &kube::api::PatchParams::apply(common::TEST_MANAGER),
        &kube::api::Patch::Apply(sidecar_resource(name, app)),
    )
    .await
    .unwrap_or_else(|e| panic!("create sidecar Resource {name}: {e}"));
}

fn sidecar_resource(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
        "metadata": {"name": name},
        "spec": {"protocol": "HTTP", "gatewayRefs": [], "workload": {
            "selector": {"matchLabels": {"app": app}},
            "ports": [{"port": 8080, "sidecarPort": 8443, "name": "http"}]}},
    })
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

fn init_names(p: &Pod) -> Vec<String> {
    p.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect()
}

/// The MutatingWebhookConfiguration of the chart (two webhooks), pointed at `url`, seeing
/// only this test's namespaces.
fn webhook_config(url: &str, ca_bundle: &str) -> MutatingWebhookConfiguration {
    let hook = |name: &str, ns_op: &str, obj: Value| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": url, "caBundle": k8s_openapi::ByteString(ca_bundle.as_bytes().to_vec())},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "rustronaut.io/sidecar-injection", "operator": ns_op, "values": ["enabled"]},
                {"key": "rustronaut.io/test", "operator": "In", "values": ["true"]}]},
            "objectSelector": {"matchExpressions": [obj]},
            "failurePolicy": "Fail", "sideEffects": "None", "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
        })
    };
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": rustronaut_operator::rbac::WEBHOOK_CONFIG},
        "webhooks": [
            hook("namespace.sidecar.rustronaut.io", "In",
                 json!({"key": "rustronaut.io/sidecar", "operator": "NotIn", "values": ["disabled"]})),
            hook("pod.sidecar.rustronaut.io", "NotIn",
                 json!({"key": "rustronaut.io/sidecar", "operator": "Exists"})),
        ],
    }))
    .unwrap()
}

/// One HTTPS request to the webhook, trusting `ca_bundle`: (status, body, the served
/// certificate).
async fn call(port: u16, ca_bundle: &str, head: &str, body: &[u8]) -> (u16, Vec<u8>, Vec<u8>) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let split = text.find("\r\n\r\n").unwrap() + 4;
    (status, out[split..].to_vec(), served)
}

fn review(pod: &Pod, ns: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": pod, "oldObject": null,
        },
    }))
    .unwrap()
}

fn post(body: &[u8]) -> String {
    format!(
        "POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_injection_through_the_apiserver() {
    let started = Instant::now();
    let admin = rustronaut_e2e::client().await;
    common::install_crds(&admin).await;
    let operator = common::operator_client(&admin).await;
    let op_ns = rustronaut_e2e::namespace(&admin, "webhook-operator").await;

    // The leader's first step: the CA and serving certificate Secret, naming 127.0.0.1.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = certs::CertConfig {
        namespace: op_ns.clone(),
        secret: "rustronaut-webhook-tls".into(),
        hosts: [
            vec!["127.0.0.1".to_string()],
            certs::CertConfig::service_hosts("rustronaut-webhook", &op_ns),
        ]
        .concat(),
        webhook_config: rustronaut_operator::rbac::WEBHOOK_CONFIG.into(),
        lifetimes: certs::Lifetimes::default(),
    };
    let first = certs::ensure_secret(&operator, &cfg, now()).await.unwrap();
    assert_eq!(
        certs::ensure_secret(&operator, &cfg, now()).await.unwrap(),
        first,
        "a second check keeps what is current"
    );
    let url = format!("https://127.0.0.1:{port}/inject");
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let _ = mwcs
        .delete(
            rustronaut_operator::rbac::WEBHOOK_CONFIG,
            &Default::default(),
        )
        .await;
    mwcs.create(
        &PostParams::default(),
        &webhook_config(&url, &first.ca_bundle),
    )
    .await
    .unwrap();
    let metrics = Arc::new(rustronaut_operator::metrics::Metrics::default());
    let webhook_ready = webhook::start(
        operator.clone(),
        listener,
        webhook::Config {
            certs: cfg.clone(),
            settings: inject::Settings::new(IMAGE),
            metrics: metrics.clone(),
        },
    );

    eventually("the webhook's caches", || {
        let ready = webhook_ready.clone();
        async move {
            ready
                .load(std::sync::atomic::Ordering::Relaxed)
                .then_some(())
        }
    })
    .await;

    // An opted-in namespace with a sidecar Resource.
    let ns_in = rustronaut_e2e::namespace(&admin, "webhook-in").await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    nss.patch(
        &ns_in,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {
            "rustronaut.io/sidecar-injection": "enabled"}}})),
    )
    .await
    .unwrap();
    let res_in: Api<RtnResource> = Api::namespaced(admin.clone(), &ns_in);
    create_sidecar_resource(&res_in, "orders", "orders").await;
    let pods_in: Api<Pod> = Api::namespaced(admin.clone(), &ns_in);
    // Once the webhook's caches have the Resource, a (dry-run) pod gets the sidecar.
    eventually("the webhook injects", || {
        let pods_in = pods_in.clone();
        async move {
            let p = pods_in
                .create(&dry_run(), &pod("probe", json!({"app": "orders"})))
                .await
                .ok()?;
            (init_names(&p) == ["rustronaut-sidecar"]).then_some(())
        }
    })
    .await;

    // 1. A Deployment's pods (created by kube-controller-manager) get the sidecar.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns_in);
    common::create(
        &deployments,
        json!({
            "metadata": {"name": "orders"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "orders"}},
                     "template": {"metadata": {"labels": {"app": "orders"}},
                                  "spec": {"containers": [{"name": "app", "image": "example.test/app:1",
                                           "ports": [{"containerPort": 8080}]}]}}},
        }),
    )
    .await;
    let injected = eventually("the Deployment's pod", || {
        let pods_in = pods_in.clone();
        async move {
            pods_in
                .list(&ListParams::default().labels("app=orders"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    assert_eq!(init_names(&injected), ["rustronaut-sidecar"]);
    let sidecar = &injected
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    assert_eq!(sidecar.image.as_deref(), Some(IMAGE));
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.args.as_ref().unwrap()[..2],
        [
            "--config-from".to_string(),
            format!("{ns_in}/orders-sidecar")
        ]
    );
    let labels = injected.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["rustronaut.io/sidecar-resource"], "orders");
    assert_eq!(
        injected.metadata.annotations.as_ref().unwrap()["rustronaut.io/sidecar-ports"],
        "8080:8443"
    );
    let volumes: Vec<&str> = injected
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(volumes.contains(&inject::TOKEN_VOLUME), "{volumes:?}");

    // 2. Re-admission of the stored (defaulted) pod: allowed, no patch.
    let (status, body, _) = call(
        port,
        &first.ca_bundle,
        &post(&review(&injected, &ns_in)),
        &review(&injected, &ns_in),
    )
    .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(
        answer["response"].get("patch").is_none(),
        "no change: {answer}"
    );
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    // A malformed review is a 400.
    let (status, body, _) = call(
        port,
        &first.ca_bundle,
        &post(b"{\"kind\":1}"),
        b"{\"kind\":1}",
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // 3. A namespace that did not opt in: untouched, even where a sidecar Resource selects.
    let ns_out = rustronaut_e2e::namespace(&admin, "webhook-out").await;
    create_sidecar_resource(
        &Api::<RtnResource>::namespaced(admin.clone(), &ns_out),
        "orders",
        "orders",
    )
    .await;
    let pods_out: Api<Pod> = Api::namespaced(admin.clone(), &ns_out);
    let plain = pods_out
        .create(
            &PostParams::default(),
            &pod("plain", json!({"app": "orders"})),
        )
        .await
        .unwrap();
    assert!(init_names(&plain).is_empty());
    assert!(
        !plain
            .metadata
            .labels
            .unwrap()
            .contains_key("rustronaut.io/sidecar-resource")
    );

    // 4. A label value other than enabled/disabled is refused with the reason.
    let err = pods_out
        .create(
            &PostParams::default(),
            &pod(
                "typo",
                json!({"app": "orders", "rustronaut.io/sidecar": "yes"}),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rustronaut.io/sidecar must be enabled or disabled, got \\\"yes\\\"")
            || err.contains("rustronaut.io/sidecar must be enabled or disabled, got \"yes\""),
        "{err}"
    );
    // ...while the pod label opts one pod in outside an opted-in namespace.
    let opted = eventually("a pod-label opt-in", || {
        let pods_out = pods_out.clone();
        async move {
            let p = pods_out
                .create(
                    &dry_run(),
                    &pod(
                        "opted",
                        json!({"app": "orders", "rustronaut.io/sidecar": "enabled"}),
                    ),
                )
                .await
                .ok()?;
            (!init_names(&p).is_empty()).then_some(p)
        }
    })
    .await;
    assert_eq!(init_names(&opted), ["rustronaut-sidecar"]);

    // 5. Two sidecar Resources select the pod: refused, naming both.
    create_sidecar_resource(&res_in, "orders-too", "orders").await;
    let err = eventually("the refusal of a pod two Resources select", || {
        let pods_in = pods_in.clone();
        async move {
            pods_in
                .create(&dry_run(), &pod("twice", json!({"app": "orders"})))
                .await
                .err()
                .map(|e| e.to_string())
        }
    })
    .await;
    assert!(
        err.contains("2 sidecar Resources (orders, orders-too)"),
        "{err}"
    );
    res_in
        .delete("orders-too", &Default::default())
        .await
        .unwrap();

    // 6. Rotation: a new CA joins the bundle, the leader (here as the operator's
    // ServiceAccount, through its RBAC) writes the caBundle, and admission keeps working
    // through the serving certificate's move to the new CA.
    let old_ca = first.ca_bundle.clone();
    cfg.lifetimes.ca_renew_before = 400 * 86_400;
    let rotated = certs::ensure_secret(&operator, &cfg, now()).await.unwrap();
    assert!(
        rotated.ca_bundle.ends_with(&old_ca),
        "the old CA stays in the bundle"
    );
    assert!(rotated.ca_bundle.len() > old_ca.len());
    assert_eq!(
        rotated.cert, first.cert,
        "the serving certificate waits for propagation"
    );
    assert!(
        certs::sync_ca_bundle(&operator, &cfg, &rotated.ca_bundle)
            .await
            .unwrap()
    );
    let mwc = mwcs
        .get(rustronaut_operator::rbac::WEBHOOK_CONFIG)
        .await
        .unwrap();
    for w in mwc.webhooks.as_ref().unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.as_ref().unwrap().0,
            rotated.ca_bundle.as_bytes(),
            "{}",
            w.name
        );
        assert_eq!(
            w.client_config.url.as_deref(),
            Some(url.as_str()),
            "only caBundle changes"
        );
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
    }
    let ours = mwc
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some("rustronaut-operator"))
        .expect("the operator's field manager");
    let owned = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(owned.contains("f:caBundle"), "{owned}");
    for other in ["f:url", "f:rules", "f:failurePolicy", "f:namespaceSelector"] {
        assert!(
            !owned.contains(other),
            "the operator owns only caBundle: {owned}"
        );
    }
    assert!(
        !certs::sync_ca_bundle(&operator, &cfg, &rotated.ca_bundle)
            .await
            .unwrap()
    );

    cfg.lifetimes = certs::Lifetimes {
        propagation: 0,
        ..certs::Lifetimes::default()
    };
    let moved = certs::ensure_secret(&operator, &cfg, now()).await.unwrap();
    assert_ne!(
        moved.cert, rotated.cert,
        "the serving certificate moves to the new CA"
    );
    assert_eq!(moved.ca_bundle, rotated.ca_bundle);
    // Every replica reloads from the Secret: the new certificate is served.
    let new_leaf = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(moved.cert.as_bytes())
            .unwrap()
            .to_vec()
    };
    eventually("the new serving certificate is served", || {
        let (bundle, leaf) = (moved.ca_bundle.clone(), new_leaf.clone());
        async move {
            let b = review(&pod("x", json!({})), "default");
            let (_, _, served) = call(port, &bundle, &post(&b), &b).await;
            (served == leaf).then_some(())
        }
    })
    .await;
    let after = pods_in
        .create(
            &PostParams::default(),
            &pod("after-rotation", json!({"app": "orders"})),
        )
        .await
        .unwrap();
    assert_eq!(init_names(&after), ["rustronaut-sidecar"]);

    let secret = Api::<Secret>::namespaced(admin.clone(), &op_ns)
        .get("rustronaut-webhook-tls")
        .await
        .unwrap();
    assert_eq!(certs::Material::from_secret(&secret).unwrap(), moved);
    // Every outcome was counted.
    let count = |outcome: &str| {
        metrics
            .admissions
            .get_or_create(&rustronaut_operator::metrics::AdmissionLabels {
                outcome: outcome.into(),
            })
            .get()
    };
    for outcome in ["injected", "denied", "error", "unchanged"] {
        assert!(count(outcome) > 0, "{outcome} counted");
    }
    mwcs.delete(
        rustronaut_operator::rbac::WEBHOOK_CONFIG,
        &Default::default(),
    )
    .await
    .unwrap();
    eprintln!("webhook test took {:?}", started.elapsed());
}
