//! The `build` step's one value: everything one reconcile of a Gateway wants to exist.
//!
//! [`build`] is pure: the Gateway, the builder settings, the compiled snapshot (or why it
//! could not be built) and the hub keys the `read` step ensured go in, one [`Desired`] comes
//! out. The reconciler ([`super`]) applies it by destructuring it without `..`, so a field
//! added here breaks the build until it is applied, and the whole value is tested at once
//! (`tests` below: a Gateway and its world as YAML in, every object out, against
//! `operator/tests/golden/`).
//!
//! What each `None` means is part of the contract, because "absent" is not "delete":
//!
//! ```text
//!  snapshot  None  the build failed: the last good Secret keeps serving
//!  workload  None  the Gateway is over its tenant's quota: an existing workload is left
//!                  serving its last snapshot (the quota may have been lowered)
//!  .deployment None  spec.podTemplate refused: the Deployment stays as it is
//!  .pdb/.hpa None  not wanted: deleted if present
//!  hub       None  no spec.tunnel (the hub objects are pruned), or over quota
//!  .config   None  no snapshot, or one the hub would refuse: the last good one stays
//! ```

use super::{objects, tunnel};
use crate::context::Settings;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::DynamicObject;
use rustronaut_compile::snapshot::{BuildError, BuildOutcome};
use rustronaut_crds::Gateway;
use serde::Serialize;

/// Everything a reconcile of one Gateway applies (see the module doc for what `None` means).
#[derive(Debug, Serialize)]
pub struct Desired {
    /// `<gw>-snapshot`, holding the compiled snapshot.
    pub snapshot: Option<Secret>,
    /// The gateway pods and what they need.
    pub workload: Option<Workload>,
    /// The tunnel hub.
    pub hub: Option<Hub>,
    /// Why `spec.podTemplate` was refused (then [`Workload::deployment`] is None), for
    /// status and the log.
    pub pod_template_refused: Option<String>,
}

/// The gateway workload.
#[derive(Debug, Serialize)]
pub struct Workload {
    /// The pods' identity.
    pub service_account: ServiceAccount,
    /// Read the snapshot Secret, write the status ConfigMap.
    pub role: Role,
    /// Binds [`Self::role`] to [`Self::service_account`].
    pub role_binding: RoleBinding,
    /// Where the pods report the configuration version they loaded.
    pub status: ConfigMap,
    /// The listeners' Service.
    pub service: Service,
    /// The pods; None when `spec.podTemplate` is refused ([`Desired::pod_template_refused`]).
    pub deployment: Option<Deployment>,
    /// Listener ports open to all, the admin port to the operator and chosen namespaces.
    pub network_policy: NetworkPolicy,
    /// With `spec.replicas` > 1.
    pub pdb: Option<PodDisruptionBudget>,
    /// With `spec.autoscaling`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// cert-manager Certificates of the listeners with `tls.issuerRef`; the ones no longer
    /// wanted are pruned.
    pub certificates: Vec<DynamicObject>,
}

/// The tunnel hub (with `spec.tunnel`).
#[derive(Debug, Serialize)]
pub struct Hub {
    /// The hub's configuration: None without a snapshot; Err when the hub would refuse it
    /// (a Warning Event says why; the last good one stays).
    pub config: Result<Option<Secret>, String>,
    /// The hub pods.
    pub stateful_set: Option<StatefulSet>,
    /// One UDP Service per replica (its WireGuard endpoint).
    pub replica_services: Vec<Service>,
    /// The Service the gateway pods stream to.
    pub stream_service: Option<Service>,
    /// WireGuard open to all, the stream port to this Gateway's pods only.
    pub network_policy: Option<NetworkPolicy>,
    /// With more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
}

/// The hub's public keys as the `read` step found or made them: one per replica, None for a
/// key Secret holding no valid key (not advertised).
pub type HubPublicKeys<'a> = &'a [Option<String>];

/// Everything `gw` wants, from its compiled snapshot (`built`) and, with a tunnel not over
/// quota, the hub's keys.
pub fn build(
    gw: &Gateway,
    settings: &Settings,
    built: &Result<BuildOutcome, BuildError>,
    hub_keys: Option<HubPublicKeys<'_>>,
) -> Desired {
    let over_quota = matches!(built, Err(BuildError::QuotaExceeded(_)));
    let snapshot = built
        .as_ref()
        .ok()
        .map(|o| objects::snapshot_secret(gw, &o.snapshot));
    let pod_template_refused = gw
        .spec
        .pod_template
        .as_ref()
        .and_then(|t| objects::check_pod_template(t).err());
    let workload = (!over_quota).then(|| Workload {
        service_account: objects::service_account(gw),
        role: objects::role(gw),
        role_binding: objects::role_binding(gw),
        status: objects::status_config_map(gw),
        service: objects::service(gw),
        deployment: pod_template_refused
            .is_none()
            .then(|| objects::deployment(gw, settings)),
        network_policy: objects::network_policy(gw, settings),
        pdb: objects::pdb(gw),
        hpa: objects::hpa(gw),
        certificates: objects::certificates(gw),
    });
    let hub = hub_keys.map(|keys| {
        let compiled = built.as_ref().ok().and_then(|o| o.snapshot.tunnel.as_ref());
        let config = match compiled.map(tunnel::hub_config) {
            None => Ok(None),
            Some(Ok(config)) => Ok(Some(tunnel::hub_config_secret(gw, &config))),
            Some(Err(e)) => Err(e.to_string()),
        };
        let public: Vec<String> = keys.iter().flatten().cloned().collect();
        let replicas = gw.spec.tunnel.as_ref().map_or(0, |t| t.replicas);
        Hub {
            config,
            stateful_set: tunnel::stateful_set(gw, settings, &public),
            replica_services: (0..replicas)
                .filter_map(|i| tunnel::replica_service(gw, i))
                .collect(),
            stream_service: tunnel::stream_service(gw),
            network_policy: tunnel::network_policy(gw, settings),
            pdb: tunnel::pdb(gw),
        }
    });
    Desired {
        snapshot,
        workload,
        hub,
        pod_template_refused,
    }
}

#[cfg(test)]
mod tests {
    //! The whole value, tested whole: the repository's examples (a Gateway with two
    //! replicas, HTTPS and TCP listeners and a tunnel, its tenant, Resources and Policies) in,
    //! every object the reconcile would apply out, compared with
    //! `operator/tests/golden/edge.desired.json`. A change to any builder shows up there as a
    //! reviewable diff; `UPDATE_GOLDEN=1 cargo test -p rustronaut-operator --lib desired`
    //! rewrites the file.
    use super::*;
    use base64::Engine;
    use kube::ResourceExt;
    use rustronaut_compile::World;
    use rustronaut_compile::convert::NoSecrets;
    use rustronaut_compile::snapshot::{GatewayInputs, TlsKeyPair, gateway_snapshot};
    use rustronaut_contract::snapshot::ObjectRef;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// The repository root, read when the test runs (not baked in at build time).
    fn root() -> PathBuf {
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo")).join("..")
    }

    fn world() -> World {
        let manifests = rustronaut_crds::manifests::load(&root().join("examples")).unwrap();
        World::from_manifests(&manifests).unwrap()
    }

    /// The examples' Gateway as the API server holds it: with a uid (owner references name
    /// it) and a generation.
    fn edge(world: &World) -> Gateway {
        let mut gw = (**world
            .gateways
            .iter()
            .find(|g| g.name_any() == "edge")
            .unwrap())
        .clone();
        gw.metadata.uid = Some("0b6f1d5e-7a5c-4c8e-9a0e-2d3c4b5a6f70".into());
        gw.metadata.generation = Some(3);
        gw
    }

    fn settings() -> Settings {
        Settings {
            image: "registry.example/rustronaut/gateway:test".into(),
            ..Settings::default()
        }
    }

    fn desired(world: &World, gw: &Gateway, keys: Option<HubPublicKeys<'_>>) -> Desired {
        let pem = |p: &str| std::fs::read_to_string(root().join("contract/tests/fixtures").join(p));
        let inputs = GatewayInputs {
            tls: BTreeMap::from([(
                ObjectRef::new("rtn-system", "acme-wildcard-tls"),
                TlsKeyPair {
                    certificate_chain_pem: pem("ca.pem").unwrap(),
                    private_key_pem: pem("ec-p256.pem").unwrap(),
                },
            )]),
            endpoints: BTreeMap::new(),
            secrets: &NoSecrets,
            site_keys: BTreeMap::new(),
            session_keys: BTreeMap::new(),
        };
        let built = gateway_snapshot(world, gw, &inputs);
        build(gw, &settings(), &built, keys)
    }

    /// The value as JSON, with the snapshot Secret's payload decoded so the golden file shows
    /// what the gateways load rather than base64.
    fn readable(d: &Desired) -> Value {
        let mut v = serde_json::to_value(d).unwrap();
        let data = &mut v["snapshot"]["data"]["snapshot.json"];
        if let Some(b64) = data.as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            *data = serde_json::from_slice(&bytes).unwrap();
        }
        v
    }

    #[test]
    fn the_examples_edge_gateway_wants_exactly_the_golden_objects() {
        let world = world();
        let gw = edge(&world);
        let keys = [Some("hub0-public".to_string()), None];
        let got = readable(&desired(&world, &gw, Some(&keys)));
        let path = root().join("operator/tests/golden/edge.desired.json");
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            want == text,
            "the Desired of examples/ differs from {} (UPDATE_GOLDEN=1 rewrites it; review the diff)",
            path.display()
        );
        // What the file must say whatever it holds, so a rewrite cannot bless a regression:
        let snapshot = &got["snapshot"]["data"]["snapshot.json"];
        assert!(snapshot.is_object(), "the snapshot is built");
        let w = &got["workload"];
        for kind in [
            "service_account",
            "role",
            "role_binding",
            "status",
            "service",
        ] {
            assert_eq!(w[kind]["metadata"]["namespace"], "rtn-system", "{kind}");
            assert_eq!(
                w[kind]["metadata"]["ownerReferences"][0]["name"], "edge",
                "{kind} is owned by the Gateway"
            );
        }
        assert_eq!(w["deployment"]["spec"]["replicas"], 2);
        assert!(w["pdb"].is_object(), "two replicas get a disruption budget");
        assert!(w["hpa"].is_null(), "no autoscaling asked");
        let hub = &got["hub"];
        assert!(hub["config"]["Ok"].is_object(), "the hub is configured");
        assert_eq!(hub["replica_services"].as_array().unwrap().len(), 2);
        // The hub pods restart when a replica's key changes (the annotation covers the keys).
        let restart = |d: &Desired| {
            let ss = d.hub.as_ref().unwrap().stateful_set.as_ref().unwrap();
            let template = ss.spec.as_ref().unwrap().template.metadata.as_ref();
            template.unwrap().annotations.as_ref().unwrap()[tunnel::RESTART_ANNOTATION].clone()
        };
        let other = [Some("hub0-rotated".to_string()), None];
        assert_ne!(
            restart(&desired(&world, &gw, Some(&keys))),
            restart(&desired(&world, &gw, Some(&other)))
        );
        assert!(got["pod_template_refused"].is_null());
    }

    #[test]
    fn a_refused_pod_template_keeps_the_deployment_and_says_why() {
        let world = world();
        let mut gw = edge(&world);
        gw.spec.pod_template = Some(json!({"spec": {"hostNetwork": true}}));
        let d = desired(&world, &gw, None);
        let w = d
            .workload
            .as_ref()
            .expect("the rest of the workload is applied");
        assert!(w.deployment.is_none(), "the Deployment is left as it is");
        assert!(
            d.pod_template_refused
                .as_deref()
                .is_some_and(|why| why.contains("hostNetwork")),
            "{:?}",
            d.pod_template_refused
        );
        assert!(d.hub.is_none(), "no keys read: no hub built");
    }

    #[test]
    fn a_gateway_over_its_tenants_quota_gets_nothing() {
        let world = world();
        let gw = edge(&world);
        let over = Err(BuildError::QuotaExceeded("gateways: 1 allowed".into()));
        let d = build(&gw, &settings(), &over, Some(&[Some("k".into())]));
        assert!(d.snapshot.is_none(), "the last good snapshot stays");
        assert!(d.workload.is_none(), "an existing workload is left serving");
        let hub = d
            .hub
            .expect("the keys were read: the hub objects are still built");
        assert_eq!(hub.config, Ok(None), "no configuration without a snapshot");
    }

    #[test]
    fn a_failed_build_keeps_the_last_snapshot_and_still_applies_the_workload() {
        let world = world();
        let gw = edge(&world);
        // No TLS Secret for the https listener: the build fails.
        let failed = gateway_snapshot(
            &world,
            &gw,
            &GatewayInputs {
                tls: BTreeMap::new(),
                endpoints: BTreeMap::new(),
                secrets: &NoSecrets,
                site_keys: BTreeMap::new(),
                session_keys: BTreeMap::new(),
            },
        );
        assert!(
            matches!(failed, Err(BuildError::CertificateNotFound { .. })),
            "{failed:?}"
        );
        let d = build(&gw, &settings(), &failed, Some(&[Some("k".into())]));
        assert!(d.snapshot.is_none(), "the last good snapshot stays");
        assert!(
            d.workload.is_some_and(|w| w.deployment.is_some()),
            "the workload does not depend on the snapshot"
        );
        assert_eq!(
            d.hub.map(|h| h.config),
            Some(Ok(None)),
            "nor the hub's configuration"
        );
    }
}
