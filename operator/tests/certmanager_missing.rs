//! A listener that asks cert-manager for its certificate (`tls.issuerRef`) in a cluster
//! without cert-manager (issue 18): the API server does not serve `cert-manager.io/v1
//! Certificate`, so the operator cannot create one. What a platform team must see, against
//! a real API server with the operator's controllers under the RBAC it ships with:
//!
//! - a Warning Event `CertManagerMissing` on the Gateway that says what to do;
//! - the listener's `ResolvedRefs` and the Gateway's `Ready` False with `CertificatePending`
//!   (kstatus: InProgress, not Failed: installing cert-manager later fixes it);
//! - the rest of the Gateway still served: its snapshot is written, the pending listener
//!   bound and marked `certificatesPending`, the other listener and its Resource in it.
//!
//! One test function in its own binary: the controller reconciles every Gateway of the
//! cluster, so two controllers in one test binary would race each other.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use rustronaut_crds::{Gateway, Resource as RtnResource, Tenant};
use serde_json::json;

mod common;
use common::{
    create, eventually, http_resource, install_crds, operator_client, snapshot, start_controllers,
};

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cert_manager_the_listener_waits_and_a_warning_says_why() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "nocm").await;
    let apps = rustronaut_e2e::namespace(&client, "nocmapps").await;
    let domain = format!("{suffix}.example");
    let tenant = format!("t-{suffix}");

    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"namespaces": [apps, gw_ns], "domains": [format!("*.{domain}")]}
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &gw_ns);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {"listeners": [
                {"name": "http", "port": 8080, "protocol": "HTTP"},
                {"name": "https", "port": 8443, "protocol": "HTTPS",
                 "hostname": format!("app.{domain}"),
                 "tls": {"certificateRefs": [{"name": "app-tls"}],
                         "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}}
            ]}
        }),
    )
    .await;
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &apps);
    create(
        &resources,
        http_resource("app", &gw_ns, &format!("app.{domain}"), "app"),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-certmanager-missing-test");

    // The Warning, on the Gateway, naming the Certificate it could not create.
    let events: Api<Event> = Api::namespaced(client.clone(), &gw_ns);
    let note = eventually("a CertManagerMissing Warning on edge", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                (e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("CertManagerMissing")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("edge"))
                .then_some(e.note)
                .flatten()
            })
        }
    })
    .await;
    assert!(
        note.contains("install cert-manager") && note.contains("Certificate app-tls not created"),
        "{note}"
    );

    // The pending listener's conditions and the Gateway's Ready say why it waits.
    let gw = eventually("edge's status with the pending listener", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            let st = gw.status.as_ref()?;
            let https = st.listeners.iter().find(|l| l.name == "https")?;
            (condition(&https.conditions, "ResolvedRefs")
                == Some(("False".into(), "CertificatePending".into())))
            .then_some(gw)
        }
    })
    .await;
    let st = gw.status.as_ref().unwrap();
    assert_eq!(
        condition(&st.conditions, "Ready"),
        Some(("False".into(), "CertificatePending".into())),
        "{st:?}"
    );
    let http = st.listeners.iter().find(|l| l.name == "http").unwrap();
    assert_eq!(
        condition(&http.conditions, "ResolvedRefs").map(|c| c.0),
        Some("True".into()),
        "the other listener is unaffected: {st:?}"
    );
    assert_eq!(http.attached_resources, 1);

    // The snapshot is served: both listeners bound, the pending one marked, no certificate
    // made up for it; the Resource routed on the plain listener.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    let snap = eventually("edge's snapshot", || snapshot(&secrets, "edge")).await;
    let names: Vec<_> = snap.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["http", "https"]);
    let tls = snap.listeners[1]
        .tls
        .as_ref()
        .expect("the https listener's TLS");
    assert!(tls.certificates_pending);
    assert!(tls.certificates.is_empty());
    assert!(snap.resources.iter().any(|r| r.name == "app"));

    controllers.stop().await;
}
