//! The tunnel hub of a Gateway against a real API server (the e2e control plane, with
//! kube-controller-manager and kwok): spec.tunnel with two replicas and two sites (one with
//! a publicKey, one without) -> replica key Secrets, the site's generated key pair, the token,
//! a hub configuration the hub's own parser accepts, the StatefulSet, one UDP Service per
//! replica, the stream Service and the gateway's tunnel arguments; status.tunnel.publicKeys
//! match the key Secrets; keys survive re-reconciles; a deleted key is regenerated (rotation);
//! fewer replicas and removing spec.tunnel delete what is no longer wanted.
//!
//! The controller runs as the operator's ServiceAccount under `rustronaut_operator::rbac`
//! (impersonation). One test function: the controller reconciles every Gateway.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustronaut_crds::{Gateway, Resource as RtnResource, Tenant};
use rustronaut_tunnel::config::{HubConfig, load_file};
use rustronaut_tunnel::keys::PrivateKey;
use serde_json::json;
use std::collections::BTreeMap;

mod common;
use common::{
    IMAGE, create, eventually, install_crds, operator_client, snapshot, start_controllers,
};

/// dc1's connector key (RFC 7748 test vector public key).
const DC1_KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
const ARGS: [&str; 4] = [
    "--tunnel-stream",
    "edge-hub-stream.NS.svc:4200",
    "--tunnel-token-file",
    "/var/run/rustronaut/tunnel/token",
];

fn data(s: &Secret, key: &str) -> String {
    let bytes = &s.data.as_ref().unwrap()[key].0;
    String::from_utf8(bytes.clone()).unwrap()
}

fn public_of(s: &Secret) -> String {
    PrivateKey::from_base64(&data(s, "private-key"))
        .unwrap()
        .public_key()
        .to_string()
}

async fn public_keys(gateways: &Api<Gateway>) -> Option<Vec<String>> {
    let gw = gateways.get("edge").await.ok()?;
    Some(gw.status?.tunnel?.public_keys)
}

/// Parses `hub.yaml` exactly as `rustronaut-tunnel hub --config` does (from a file).
fn parse_hub_config(secret: &Secret) -> HubConfig {
    let dir = std::env::temp_dir().join(format!(
        "rtn-tunnel-test-{}-{}",
        std::process::id(),
        rustronaut_e2e::random_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.yaml");
    std::fs::write(&path, data(secret, "hub.yaml")).unwrap();
    let config: HubConfig = load_file(&path).expect("the hub parses the generated config");
    std::fs::remove_dir_all(&dir).unwrap();
    config
        .validate()
        .expect("the hub accepts the generated config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_hub_lifecycle() {
    let client = rustronaut_e2e::client().await;
    install_crds(&client).await;
    let suffix = rustronaut_e2e::random_suffix();
    let gw_ns = rustronaut_e2e::namespace(&client, "hub").await;
    let apps = rustronaut_e2e::namespace(&client, "hubapps").await;
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
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &gw_ns);
    create(
        &gateways,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge"},
            "spec": {
                "replicas": 1,
                "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
                "tunnel": {
                    "replicas": 2,
                    "addressPool": "100.96.0.0/16",
                    "sites": [
                        {"name": "dc1", "tenant": tenant_name, "publicKey": DC1_KEY,
                         "advertisedCIDRs": ["10.1.0.0/16"]},
                        {"name": "lab", "tenant": tenant_name,
                         "advertisedCIDRs": ["10.2.0.0/16"]},
                    ]
                }
            }
        }),
    )
    .await;
    // A Resource reaching the keyless site: the hub may open exactly 10.2.0.5:22 there.
    let resources: Api<RtnResource> = Api::namespaced(client.clone(), &apps);
    create(
        &resources,
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": "lab-app"},
            "spec": {
                "gatewayRefs": [{"namespace": gw_ns, "name": "edge"}],
                "protocol": "HTTP",
                "hostnames": [format!("lab.{domain}")],
                "rules": [{"name": "all", "upstreams": [
                    {"site": {"gateway": format!("{gw_ns}/edge"), "name": "lab"},
                     "host": "10.2.0.5", "port": 22}]}]
            }
        }),
    )
    .await;

    let operator = operator_client(&client).await;
    let controllers = start_controllers(operator, "operator-tunnel-test");

    // Key material: one key per replica, the keyless site's pair, the token.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &gw_ns);
    let names = [
        "edge-hub-0",
        "edge-hub-1",
        "edge-site-lab",
        "edge-tunnel-token",
    ];
    let keys: BTreeMap<&str, Secret> = eventually("the key Secrets", || {
        let secrets = secrets.clone();
        async move {
            let mut out = BTreeMap::new();
            for n in names {
                out.insert(n, secrets.get_opt(n).await.ok()??);
            }
            Some(out)
        }
    })
    .await;
    let gw = gateways.get("edge").await.unwrap();
    for (name, s) in &keys {
        let labels = s.labels();
        assert_eq!(labels["app.kubernetes.io/name"], "rustronaut-tunnel-hub");
        assert_eq!(labels["app.kubernetes.io/instance"], "edge");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "rustronaut-operator"
        );
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), Some(&owner.uid), owner.controller),
            ("Gateway", gw.uid().as_ref(), Some(true)),
            "{name}"
        );
    }
    let hub_keys = [
        public_of(&keys["edge-hub-0"]),
        public_of(&keys["edge-hub-1"]),
    ];
    assert_ne!(hub_keys[0], hub_keys[1], "one key per replica");
    assert_eq!(data(&keys["edge-hub-0"], "public-key"), hub_keys[0]);
    let lab = &keys["edge-site-lab"];
    let lab_key = public_of(lab);
    assert_eq!(data(lab, "public-key"), lab_key);
    assert_eq!(data(lab, "hub-tunnel-address"), "100.96.0.1");
    let lab_address = data(lab, "tunnel-address");
    let token = data(&keys["edge-tunnel-token"], "token");
    assert_eq!(token.trim_end().len(), 64, "32 random bytes, hex");
    assert!(token.ends_with('\n') && token.lines().count() == 1);
    assert!(
        secrets.get_opt("edge-site-dc1").await.unwrap().is_none(),
        "a site with a publicKey gets no generated pair"
    );

    // The hub configuration: both sites, the generated key, what the Resource reaches.
    let config = eventually("the hub config naming both sites", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get_opt("edge-hub-config").await.ok()??;
            let c = parse_hub_config(&s);
            (c.sites.len() == 2).then_some(c)
        }
    })
    .await;
    assert_eq!(config.tunnel_address.to_string(), "100.96.0.1");
    assert_eq!(config.listen_port, 51820);
    let site = |n: &str| config.sites.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(site("dc1").public_key, DC1_KEY);
    assert_eq!(site("lab").public_key, lab_key);
    assert_eq!(site("lab").tunnel_address.to_string(), lab_address);
    assert_eq!(
        serde_json::to_value(&site("lab").allowed_targets).unwrap(),
        json!([{"cidr": "10.2.0.5", "ports": [22], "protocol": "TCP"}])
    );
    assert!(site("dc1").allowed_targets.is_empty(), "nothing uses dc1");
    // The gateways' snapshot names the same site by the same key and address.
    let snap = eventually("the snapshot", || {
        let secrets = secrets.clone();
        async move { snapshot(&secrets, "edge").await }
    })
    .await;
    let tunnel = snap.tunnel.as_ref().expect("the snapshot's tunnel");
    let in_snapshot = tunnel.sites.iter().find(|s| s.name == "lab").unwrap();
    assert_eq!(in_snapshot.public_key, lab_key);
    assert_eq!(
        in_snapshot.tunnel_address.as_deref(),
        Some(lab_address.as_str())
    );
    assert!(
        snap.resource(&apps, "lab-app").is_some(),
        "served through the site"
    );

    // The StatefulSet: its replicas, the image, the command, each pod's own key.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &gw_ns);
    // (The snapshot is written first, the hub after it; its PodDisruptionBudget is the last
    // object a reconcile applies, so once it exists the rest does.)
    let last: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &gw_ns);
    eventually("the hub's PodDisruptionBudget", || {
        let last = last.clone();
        async move { last.get_opt("edge-hub").await.ok()? }
    })
    .await;
    let ss = statefulsets.get("edge-hub").await.unwrap();
    let spec = ss.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(IMAGE));
    assert_eq!(
        c.command.as_deref(),
        Some(&["rustronaut-tunnel".to_string()][..])
    );
    assert_eq!(
        c.args.as_deref().unwrap(),
        ["hub", "--config", "/etc/rustronaut/hub/hub.yaml"]
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    let key_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "keys")
        .unwrap();
    assert_eq!(key_mount.sub_path_expr.as_deref(), Some("$(POD_NAME)"));
    let projected: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "keys")
        .and_then(|v| v.projected.as_ref())
        .unwrap()
        .sources
        .iter()
        .flatten()
        .filter_map(|s| Some(s.secret.as_ref()?.name.clone()))
        .collect();
    assert_eq!(projected, ["edge-hub-0", "edge-hub-1"]);

    // Two replicas: a disruption budget keeps one up through a node drain.
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &gw_ns);
    let pdb = pdbs.get("edge-hub").await.unwrap().spec.unwrap();
    assert_eq!(
        pdb.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // One UDP Service per replica (selecting that pod), the stream Service.
    let services: Api<Service> = Api::namespaced(client.clone(), &gw_ns);
    for i in 0..2 {
        let name = format!("edge-hub-{i}");
        let svc = services.get(&name).await.unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap()["statefulset.kubernetes.io/pod-name"],
            name
        );
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.port, port.protocol.as_deref()), (51820, Some("UDP")));
    }
    let stream = services.get("edge-hub-stream").await.unwrap().spec.unwrap();
    let port = &stream.ports.unwrap()[0];
    assert_eq!((port.port, port.protocol.as_deref()), (4200, Some("TCP")));

    // The gateway pods get the stream endpoint and the token.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &gw_ns);
    let want_args: Vec<String> = ARGS.iter().map(|a| a.replace("NS", &gw_ns)).collect();
    let args = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap_or_default()
    };
    let d = deployments.get("edge").await.unwrap();
    assert!(args(&d).ends_with(&want_args), "{:?}", args(&d));
    let token_volume = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tunnel-token")
        .and_then(|v| v.secret.as_ref()?.secret_name.clone());
    assert_eq!(token_volume.as_deref(), Some("edge-tunnel-token"));

    // status.tunnel.publicKeys: the replicas' keys, derived from their Secrets.
    eventually("status.tunnel.publicKeys", || {
        let gateways = gateways.clone();
        let want = hub_keys.to_vec();
        async move { (public_keys(&gateways).await? == want).then_some(()) }
    })
    .await;

    // kwok runs no hub process: no replica answers /status, so nothing is claimed per site.
    let gw = gateways.get("edge").await.unwrap();
    assert!(gw.status.unwrap().tunnel.unwrap().sites.is_empty());

    // A re-reconcile (a spec change) leaves every key and the token as they were.
    let generation = gateways.get("edge").await.unwrap().metadata.generation;
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    eventually("the spec change reconciled", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("edge").await.ok()?;
            (d.spec?.replicas == Some(2)).then_some(())
        }
    })
    .await;
    assert_ne!(
        gateways.get("edge").await.unwrap().metadata.generation,
        generation
    );
    for (name, before) in &keys {
        let now = secrets.get(name).await.unwrap();
        assert_eq!(now.data, before.data, "{name} was rewritten");
    }

    // Rotation: a deleted replica key is generated anew, advertised, and rolls the hub.
    let template_hash = |ss: &StatefulSet| {
        ss.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get("rustronaut.io/hub-restart")
            .cloned()
    };
    let hash_before = template_hash(&ss).expect("the restart annotation");
    secrets
        .delete("edge-hub-1", &DeleteParams::default())
        .await
        .unwrap();
    let rotated = eventually("a new key for replica 1", || {
        let secrets = secrets.clone();
        let old = hub_keys[1].clone();
        async move {
            let s = secrets.get_opt("edge-hub-1").await.ok()??;
            let k = public_of(&s);
            (k != old).then_some(k)
        }
    })
    .await;
    eventually("the rotated key advertised and rolled out", || {
        let gateways = gateways.clone();
        let statefulsets = statefulsets.clone();
        let want = vec![hub_keys[0].clone(), rotated.clone()];
        let hash_before = hash_before.clone();
        async move {
            let ss = statefulsets.get("edge-hub").await.ok()?;
            (public_keys(&gateways).await? == want && template_hash(&ss)? != hash_before)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        data(&secrets.get("edge-hub-0").await.unwrap(), "private-key"),
        data(&keys["edge-hub-0"], "private-key"),
        "the other replica keeps its key"
    );

    // A new address pool: the site's Secret and the hub config follow; the keys stay.
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tunnel": {"addressPool": "100.97.0.0/16"}}})),
        )
        .await
        .unwrap();
    let moved = eventually("the site Secret's addresses follow the pool", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("edge-site-lab").await.ok()?;
            (data(&s, "hub-tunnel-address") == "100.97.0.1").then_some(s)
        }
    })
    .await;
    assert_eq!(data(&moved, "private-key"), data(lab, "private-key"));
    let lab_moved = data(&moved, "tunnel-address");
    assert!(lab_moved.starts_with("100.97."), "{lab_moved}");
    eventually("the hub config in the new pool", || {
        let secrets = secrets.clone();
        let lab_moved = lab_moved.clone();
        async move {
            let c = parse_hub_config(&secrets.get("edge-hub-config").await.ok()?);
            let lab = c.sites.iter().find(|s| s.name == "lab")?;
            (c.tunnel_address.to_string() == "100.97.0.1"
                && lab.tunnel_address.to_string() == lab_moved)
                .then_some(())
        }
    })
    .await;

    // One replica fewer: its key and Service go.
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tunnel": {"replicas": 1}}})),
        )
        .await
        .unwrap();
    eventually("replica 1's objects pruned", || {
        let secrets = secrets.clone();
        let services = services.clone();
        let gateways = gateways.clone();
        let pdbs = pdbs.clone();
        let want = vec![hub_keys[0].clone()];
        async move {
            let gone = secrets.get_opt("edge-hub-1").await.ok()?.is_none()
                && services.get_opt("edge-hub-1").await.ok()?.is_none()
                && pdbs.get_opt("edge-hub").await.ok()?.is_none()
                && services.get_opt("edge-hub-0").await.ok()?.is_some();
            (gone && public_keys(&gateways).await? == want).then_some(())
        }
    })
    .await;

    // No tunnel: every hub object is deleted, the gateway loses its tunnel arguments.
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tunnel": null}})),
        )
        .await
        .unwrap();
    eventually("the hub objects deleted", || {
        let secrets = secrets.clone();
        let services = services.clone();
        let statefulsets = statefulsets.clone();
        async move {
            for n in [
                "edge-hub-0",
                "edge-site-lab",
                "edge-tunnel-token",
                "edge-hub-config",
            ] {
                if secrets.get_opt(n).await.ok()?.is_some() {
                    return None;
                }
            }
            for n in ["edge-hub-0", "edge-hub-stream"] {
                if services.get_opt(n).await.ok()?.is_some() {
                    return None;
                }
            }
            statefulsets
                .get_opt("edge-hub")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let d = eventually("the gateway without tunnel arguments", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("edge").await.ok()?;
            (!args(&d).iter().any(|a| a == "--tunnel-stream")).then_some(d)
        }
    })
    .await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .all(|v| v.name != "tunnel-token"),
        "the token volume is gone with the Secret"
    );
    eventually("status without a tunnel", || {
        let gateways = gateways.clone();
        async move {
            let gw = gateways.get("edge").await.ok()?;
            gw.status?.tunnel.is_none().then_some(())
        }
    })
    .await;
    assert!(
        services.get_opt("edge").await.unwrap().is_some(),
        "the gateway's own stays"
    );

    controllers.stop().await;
    gateways
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    tenants
        .delete(&tenant_name, &DeleteParams::default())
        .await
        .unwrap();
}
