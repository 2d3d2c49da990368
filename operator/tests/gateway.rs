//! The Gateway controller against a real API server (the e2e control plane, with
//! kube-controller-manager for Deployments and garbage collection, and kwok for pods):
//! create -> snapshot and workload appear -> Policy update and delete reach the snapshot ->
//! a missing certificate keeps the last good snapshot -> the gateway's RBAC reaches only its
//! own objects -> deleting the Gateway collects everything it owns.
//!
//! The controller runs as the operator's ServiceAccount under the RBAC of
//! `rustronaut_operator::rbac` (impersonation), so missing permissions fail here.
//!
//! One test function on purpose: the controller reconciles every Gateway of the cluster, so
//! two controllers in one test binary would race each other.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use rustronaut_contract::snapshot::UpstreamKind;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;

mod common;
use common::{
    IMAGE, create, eventually, install_crds, operator_client, settled, snapshot, start_controllers,
};

const CERT: &str = include_str!("../../contract/tests/fixtures/ca.pem");
const KEY: &str = include_str!("../../contract/tests/fixtures/ec-p256.pem");

async fn patch<K>(api: &Api<K>, name: &str, value: Value) -> K
where
    K: Clone + DeserializeOwned + Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&value))
        .await
        .unwrap_or_else(|e| panic!("patch {name}: {e}"))
}

fn condition<'a>(gw: &'a Gateway, type_: &str) -> Option<(&'a str, &'a str, Option<i64>)> {
    let c = gw
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.as_str(), c.reason.as_str(), c.observed_generation))
}

fn assert_owned(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, gw: &Gateway) {
    let owners = meta.owner_references.clone().unwrap_or_default();
    assert!(
        owners.iter().any(|o| o.kind == "Gateway"
            && o.name == gw.name_any()
            && Some(&o.uid) == gw.uid().as_ref()
            && o.controller == Some(true)),
        "{:?} is not controlled by the Gateway: {owners:?}",
        meta.name
    );
    let labels = meta.labels.clone().unwrap_or_default();
    assert_eq!(labels["app.kubernetes.io/name"], "rustronaut-gateway");
    assert_eq!(labels["app.kubernetes.io/instance"], gw.name_any());
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "rustronaut-operator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_lifecycle() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "gw").await;
    let apps = rustronaut_e2e::namespace(&client, "apps").await;
    let domain = format!("{suffix}.example");
    let tenant_name = format!("t-{suffix}");

    let tenants: Api<Tenant> = Api::all(client.clone());
    create(
        &tenants,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": tenant_name},
            "spec": {"namespaces": [apps, gw_ns], "domains": [format!("*.{domain}")]}
        }),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    create(
        &secrets,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "edge-tls"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": CERT, "tls.key": KEY}
        }),
    )
    .await;
    // An upstream Service without a selector and its EndpointSlice, as a real one would have.
    let services: Api<Service> = Api::namespaced(client.clone(), &apps);
    create(
        &services,
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }),
    )
    .await;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), &apps);
    create(
        &slices,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "app-1", "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.9.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.9.0.2"], "conditions": {"ready": false}}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &gw_ns);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {
                "replicas": 2,
                "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                               "tls": {"certificateRefs": [{"name": "edge-tls"}]}}]
            }
        }),
    )
    .await;
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &apps);
    create(
        &resources,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": "app"},
            "spec": {
                "gatewayRefs": [{"namespace": gw_ns, "name": "edge"}],
                "protocol": "HTTP",
                "hostnames": [format!("app.{domain}")],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
            }
        }),
    )
    .await;
    // A Resource that may not attach (its hostname is outside the tenant's domains): left
    // out and told why, without stalling the good one.
    create(
        &resources,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": "outside"},
            "spec": {
                "gatewayRefs": [{"namespace": gw_ns, "name": "edge"}],
                "protocol": "HTTP",
                "hostnames": ["app.elsewhere.example"],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
            }
        }),
    )
    .await;
    let policies: Api<Policy> = Api::namespaced(client.clone(), &apps);
    create(
        &policies,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "office"},
            "spec": {
                "targetRefs": [{"kind": "Resource", "name": "app"}],
                "action": "Allow",
                "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]
            }
        }),
    )
    .await;

    // The controller, in-process, as the binary runs it, with exactly the RBAC it ships
    // with: a permission the code needs but the ClusterRole lacks fails this test.
    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-test");
    let ready = controllers.ready.clone();

    // The snapshot appears, valid, with the Resource, its resolved endpoints, the Policy.
    let first = eventually("the snapshot Secret", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            s.policies.iter().any(|p| p.name == "office").then_some(s)
        }
    })
    .await;
    assert!(ready.load(std::sync::atomic::Ordering::Relaxed));
    let res = first
        .resource(&apps, "app")
        .expect("the Resource is served");
    let UpstreamKind::Service(svc) = &res.rules[0].upstreams[0].kind else {
        panic!("a Service upstream")
    };
    assert_eq!(
        svc.addresses,
        ["10.9.0.1:8080".parse::<std::net::SocketAddr>().unwrap()],
        "ready endpoints only, at the target port"
    );
    assert_eq!(first.listeners[0].name, "https");
    assert!(first.resource(&apps, "outside").is_none(), "left out");
    let app_events: Api<Event> = Api::namespaced(client.clone(), &apps);
    eventually("a Warning Event on the left-out Resource", || {
        let app_events = app_events.clone();
        async move {
            let list = app_events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("HostnameOutsideTenant")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("outside")
                        && e.regarding
                            .as_ref()
                            .and_then(|r| r.uid.as_deref())
                            .is_some()
                })
                .then_some(())
        }
    })
    .await;

    // A Normal Event on the Gateway for the snapshot version it published.
    let gw_events: Api<Event> = Api::namespaced(client.clone(), &gw_ns);
    let note = eventually("a Normal SnapshotPublished Event on the Gateway", || {
        let gw_events = gw_events.clone();
        async move {
            let list = gw_events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                (e.type_.as_deref() == Some("Normal")
                    && e.reason.as_deref() == Some("SnapshotPublished")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("edge")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("1 Resource(s) served, 1 object(s) left out")))
                .then_some(e.note)
                .flatten()
            })
        }
    })
    .await;
    assert!(
        note.starts_with("snapshot ")
            && note.contains(&format!(" published in Secret {gw_ns}/edge-snapshot: ")),
        "{note}"
    );

    // The workload, owned by the Gateway, with the contract the gateway binary expects. The
    // snapshot is written first and the status last: once the status describes this
    // generation, the reconcile has applied everything in between.
    let gw = eventually("the first reconcile finished (status written)", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            let (_, _, observed) = condition(&gw, "Accepted")?;
            (observed == gw.metadata.generation).then_some(gw)
        }
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &gw_ns);
    let d = deployments.get("edge").await.unwrap();
    assert_owned(&d.metadata, &gw);
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("edge-gateway"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(IMAGE));
    assert_eq!(
        c.command.as_deref(),
        Some(&["rustronaut-gateway".to_string()][..])
    );
    assert_eq!(
        c.args.clone().unwrap(),
        [
            "--config-from",
            &format!("{gw_ns}/edge-snapshot"),
            "--report-status",
            &format!("{gw_ns}/edge-status"),
            "--admin-listen",
            "0.0.0.0:9901"
        ]
    );
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let svc = Api::<Service>::namespaced(client.clone(), &gw_ns)
        .get("edge")
        .await
        .unwrap();
    assert_owned(&svc.metadata, &gw);
    assert_owned(
        &Api::<ServiceAccount>::namespaced(client.clone(), &gw_ns)
            .get("edge-gateway")
            .await
            .unwrap()
            .metadata,
        &gw,
    );
    assert_owned(
        &Api::<Role>::namespaced(client.clone(), &gw_ns)
            .get("edge-gateway")
            .await
            .unwrap()
            .metadata,
        &gw,
    );
    assert_owned(
        &Api::<RoleBinding>::namespaced(client.clone(), &gw_ns)
            .get("edge-gateway")
            .await
            .unwrap()
            .metadata,
        &gw,
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &gw_ns);
    assert_owned(&configmaps.get("edge-status").await.unwrap().metadata, &gw);
    let secret = secrets.get("edge-snapshot").await.unwrap();
    assert_owned(&secret.metadata, &gw);

    // Status: Accepted, Programmed, observedGeneration, the Service address.
    let gw = eventually("Accepted and Programmed", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            let g = gw.metadata.generation;
            (condition(&gw, "Accepted") == Some(("True", "Accepted", g))
                && condition(&gw, "Programmed") == Some(("True", "Programmed", g)))
            .then_some(gw)
        }
    })
    .await;
    let st = gw.status.as_ref().unwrap();
    assert_eq!(st.observed_generation, gw.metadata.generation);
    assert_eq!(
        st.addresses[0].value,
        svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap()
    );
    assert_eq!(st.listeners[0].attached_resources, 1);
    assert_eq!(
        condition(&gw, "Ready").map(|c| c.0),
        Some("False"),
        "no pod reported yet"
    );

    // Two pods report the served version loaded: configVersion follows.
    let version = first.content_hash();
    for pod in ["edge-pod-a", "edge-pod-b"] {
        configmaps
            .patch(
                "edge-status",
                &PatchParams::apply(pod),
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "edge-status"},
                    "data": {pod: version}
                })),
            )
            .await
            .unwrap();
    }
    eventually("configVersion reported", || {
        let gateways = gateways.clone();
        let version = version.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            (gw.status?.config_version? == version).then_some(())
        }
    })
    .await;
    // kwok runs the pods (Ready), so with both reports the Gateway is Ready.
    eventually("Ready", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            (condition(&gw, "Ready").map(|c| (c.0, c.1)) == Some(("True", "Ready"))).then_some(())
        }
    })
    .await;

    // A report alone (a pod loaded something else, then the served version again) moves
    // Ready both ways without a Gateway reconcile: the status is recomputed from what the
    // last reconcile saw (operator/src/gateway/reports.rs), and its write wakes nothing.
    let gateway_reconciles = || {
        controllers
            .metrics
            .reconciles
            .get_or_create(&rustronaut_operator::metrics::KindLabel {
                kind: "Gateway".into(),
            })
            .get()
    };
    // Baseline once the reconciles the set-up caused are done: the watch events of the
    // objects the first reconciles applied can still be in flight after Ready (a CI run
    // counted one such reconcile inside the window below).
    let reconciles_before = settled(gateway_reconciles).await;
    let from_reports_before = controllers.metrics.status_from_reports.get();
    for (loaded, ready) in [("an-older-version", "False"), (version.as_str(), "True")] {
        configmaps
            .patch(
                "edge-status",
                &PatchParams::apply("edge-pod-a"),
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "edge-status"},
                    "data": {"edge-pod-a": loaded}
                })),
            )
            .await
            .unwrap();
        eventually(&format!("Ready={ready} from a report"), || {
            let gateways = gateways.clone();
            async move {
                let gw = gateways.get("edge").await.ok()?;
                (condition(&gw, "Ready").map(|c| c.0) == Some(ready)).then_some(())
            }
        })
        .await;
    }
    // At least: the same counter also counts statuses written for the Deployment's
    // readiness, which kwok may still be moving. Waited for, not read once: the operator
    // counts a write after the apiserver answered it, so the GET above can see the status
    // a moment before the counter moves (a CI run read it in that moment).
    let from_reports = controllers.metrics.status_from_reports.clone();
    eventually("both statuses written from the reports", || {
        let count = from_reports.get();
        async move { (count >= from_reports_before + 2).then_some(()) }
    })
    .await;
    assert_eq!(
        gateway_reconciles(),
        reconciles_before,
        "no Gateway reconcile for a report"
    );

    // Likewise the Deployment's readiness: a pod deleted (kwok's replacement becomes ready)
    // moves the Deployment's status twice, and neither move rebuilds the Gateway; Ready ends
    // True again.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &gw_ns);
    let before = deployments.get("edge").await.unwrap();
    let victim = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=edge"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("a gateway pod (kwok)");
    pods.delete(&victim.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(
        "the Deployment's status moved and is back at 2 ready",
        || {
            let deployments = deployments.clone();
            let before = before.resource_version();
            async move {
                let d = deployments.get("edge").await.ok()?;
                (d.resource_version() != before
                    && d.status.as_ref()?.ready_replicas == Some(2)
                    && d.status.as_ref()?.updated_replicas == Some(2))
                .then_some(())
            }
        },
    )
    .await;
    eventually("Ready again", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            (condition(&gw, "Ready").map(|c| c.0) == Some("True")).then_some(())
        }
    })
    .await;
    assert_eq!(
        gateway_reconciles(),
        reconciles_before,
        "no Gateway reconcile for the Deployment's readiness"
    );

    // A spec change that replaces the pods says so with a Normal Event on the Gateway.
    for replicas in [3, 2] {
        patch(&gateways, "edge", json!({"spec": {"replicas": replicas}})).await;
        eventually(
            &format!("a WorkloadRolled Event for {replicas} replicas"),
            || {
                let gw_events = gw_events.clone();
                async move {
                    let list = gw_events.list(&ListParams::default()).await.ok()?;
                    list.items.into_iter().find_map(|e| {
                        (e.type_.as_deref() == Some("Normal")
                            && e.reason.as_deref() == Some("WorkloadRolled")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("edge")
                            && e.note.as_deref().is_some_and(|n| {
                                n.starts_with("Deployment edge rolled to generation ")
                                    && n.contains(&format!(": {replicas} replica(s) of {IMAGE}"))
                            }))
                        .then_some(())
                    })
                }
            },
        )
        .await;
    }

    // Updating the Policy changes the snapshot.
    patch(
        &policies,
        "office",
        json!({"spec": {"rules": [{"name": "office",
            "from": [{"sourceCIDRs": {"cidrs": ["192.168.0.0/16"]}}]}]}}),
    )
    .await;
    let updated = eventually("the updated policy in the snapshot", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            let p = s.policies.iter().find(|p| p.name == "office")?;
            serde_json::to_string(&p.rules)
                .ok()?
                .contains("192.168.0.0/16")
                .then_some(s)
        }
    })
    .await;
    assert_ne!(updated.content_hash(), version);

    // Deleting the Policy removes it from the snapshot (default deny again).
    policies
        .delete("office", &DeleteParams::default())
        .await
        .unwrap();
    let without = eventually("the policy gone from the snapshot", || {
        let secrets = secrets.clone();
        async move {
            let s = snapshot(&secrets, "edge").await?;
            s.policies.is_empty().then_some(s)
        }
    })
    .await;
    assert!(without.resource(&apps, "app").is_some());

    // A missing TLS Secret: Accepted/Programmed=False with the reason, the last good snapshot
    // stays, a Warning Event says why.
    let good = secrets.get("edge-snapshot").await.unwrap();
    let broken = patch(
        &gateways,
        "edge",
        json!({"spec": {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
            "tls": {"certificateRefs": [{"name": "missing-tls"}]}}]}}),
    )
    .await;
    let generation = broken.metadata.generation;
    let gw = eventually("Accepted=False for the missing certificate", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            (condition(&gw, "Accepted") == Some(("False", "InvalidCertificateRef", generation)))
                .then_some(gw)
        }
    })
    .await;
    assert_eq!(
        condition(&gw, "Programmed"),
        Some(("False", "InvalidCertificateRef", generation))
    );
    let programmed = gw
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Programmed")
        .unwrap();
    assert!(
        programmed.message.contains("missing-tls not found")
            && programmed.message.contains("keeps serving"),
        "{}",
        programmed.message
    );
    assert_eq!(gw.status.as_ref().unwrap().observed_generation, generation);
    let https = &gw.status.as_ref().unwrap().listeners[0];
    let resolved = https
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .unwrap();
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "InvalidCertificateRef"),
        "the listener at fault says so"
    );
    let kept = secrets.get("edge-snapshot").await.unwrap();
    assert_eq!(kept.data, good.data, "the last good snapshot is untouched");
    let events: Api<Event> = Api::namespaced(client.clone(), &gw_ns);
    eventually("a Warning Event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("InvalidCertificateRef")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("edge")
                })
                .then_some(())
        }
    })
    .await;

    // The certificate arrives: accepted again, without touching the Gateway.
    create(
        &secrets,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "missing-tls"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": CERT, "tls.key": KEY}
        }),
    )
    .await;
    eventually("Accepted again", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            (condition(&gw, "Accepted").map(|c| c.0) == Some("True")).then_some(())
        }
    })
    .await;

    // The gateway pods' RBAC reaches their own snapshot and status objects, nothing else.
    let sa = format!("system:serviceaccount:{gw_ns}:edge-gateway");
    let as_gateway = rustronaut_e2e::shared()
        .client_as(&sa, &["system:serviceaccounts", "system:authenticated"])
        .await;
    let gw_secrets: Api<Secret> = Api::namespaced(as_gateway.clone(), &gw_ns);
    gw_secrets
        .get("edge-snapshot")
        .await
        .expect("the gateway reads its snapshot");
    let denied = gw_secrets.get("edge-tls").await.unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(e) if e.code == 403),
        "{denied}"
    );
    let watch = gw_secrets
        .list(&ListParams::default().fields("metadata.name=edge-snapshot"))
        .await
        .expect("list (and so watch) with the name field selector is allowed");
    assert_eq!(watch.items.len(), 1);
    assert!(gw_secrets.list(&ListParams::default()).await.is_err());
    Api::<ConfigMap>::namespaced(as_gateway.clone(), &gw_ns)
        .patch(
            "edge-status",
            &PatchParams::apply("edge-pod-c"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "edge-status"}, "data": {"edge-pod-c": "x"}})),
        )
        .await
        .expect("the gateway reports into its status ConfigMap");
    assert!(
        Api::<Gateway>::namespaced(as_gateway, &gw_ns)
            .get("edge")
            .await
            .is_err()
    );

    // Deleting the Gateway: kube-controller-manager's garbage collector removes what it owns.
    gateways
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    eventually("owned objects collected", || {
        let deployments = deployments.clone();
        let secrets = secrets.clone();
        let configmaps = configmaps.clone();
        async move {
            let gone = deployments.get_opt("edge").await.ok()?.is_none()
                && secrets.get_opt("edge-snapshot").await.ok()?.is_none()
                && configmaps.get_opt("edge-status").await.ok()?.is_none();
            gone.then_some(())
        }
    })
    .await;

    controllers.stop().await;
    tenants
        .delete(&tenant_name, &DeleteParams::default())
        .await
        .unwrap();
}
