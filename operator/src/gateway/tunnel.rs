//! The WireGuard tunnel hub of a Gateway with `spec.tunnel`: pure builders of its objects
//! (the `build` step) and the key material they need.
//!
//! ```text
//!  <gw>-hub-<i>        Secret   private-key (+ public-key), one per replica, created once
//!  <gw>-site-<name>    Secret   private-key, public-key, tunnel-address, hub-tunnel-address,
//!                               for each site without spec publicKey, created once
//!  <gw>-tunnel-token   Secret   token (hub and gateway pods), created once
//!  <gw>-hub-config     Secret   hub.yaml = hub_config(compiled snapshot's tunnel)
//!  <gw>-hub            StatefulSet  rustronaut-tunnel hub --config /etc/rustronaut/hub/hub.yaml
//!  <gw>-hub            PodDisruptionBudget  maxUnavailable 1, with more than one replica
//!  <gw>-hub-<i>        Service  UDP listenPort -> pod <gw>-hub-<i> (connectors reach each one)
//!  <gw>-hub-stream     Service  TCP 4200 -> any hub pod (the gateway pods' stream endpoint)
//! ```
//!
//! **Keys are created, never applied.** The key and token Secrets are written with `create`
//! only when absent (a 409 means another reconcile won the race, and its Secret is used):
//! server-side apply with `force` would overwrite a key with a new one whenever the cache
//! lagged behind, silently cutting every connector off. Deleting a Secret is how a key is
//! rotated. Private keys are never logged (the key type's `Debug` is redacted).
//!
//! **One key per pod without an init container.** Every replica's key Secret is projected
//! into one volume (one file per pod name) and the hub container mounts only its own file,
//! with `subPathExpr: $(POD_NAME)`; so the process sees exactly one key, and the config file,
//! shared by all replicas, names one fixed path. The volume is `root:<fsGroup>` mode 0440,
//! the only way a non-root container can read a Secret file, hence the hub configuration's
//! `private_key_group_readable: true`. A `subPath` mount does not follow later changes of the
//! Secret; the pod template carries a hash of the replicas' public keys (and of the hub's
//! tunnel address, also read only at start), so a rotated key rolls the StatefulSet (one
//! pod at a time) and the running key is always the advertised one.

use super::objects::{self, RUN_AS, container_security, typed};
use crate::context::Settings;
use crate::meta::labels;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use rustronaut_contract::deploy::flags;
use rustronaut_contract::snapshot as cs;
use rustronaut_crds::Gateway;
use rustronaut_crds::gateway::ServiceType;
use rustronaut_tunnel::allow::{PortRange, Protocol, Target};
use rustronaut_tunnel::config::{ConfigError, HubConfig, SiteConfig};
use rustronaut_tunnel::keys::PrivateKey;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Key of a private key (base64, as `wg genkey` writes it) in a key Secret.
pub const PRIVATE_KEY: &str = names::PRIVATE_KEY;
/// Key of the matching public key in a key Secret (for people; status derives its own).
pub const PUBLIC_KEY: &str = "public-key";
/// Key of the site's tunnel address in a site Secret (its connector's `tunnel_address`).
pub const TUNNEL_ADDRESS: &str = "tunnel-address";
/// Key of the hubs' tunnel address in a site Secret (its connector's `hub_tunnel_address`).
pub const HUB_TUNNEL_ADDRESS: &str = "hub-tunnel-address";
/// Key of the gateway token in the token Secret.
pub const TOKEN: &str = "token";
/// Key of the hub configuration in the config Secret.
pub const HUB_CONFIG: &str = names::HUB_CONFIG;
/// Where the hub reads its configuration.
pub const CONFIG_DIR: &str = "/etc/rustronaut/hub";
/// Where the hub reads its own private key (one file, mounted by pod name).
pub const KEY_FILE: &str = "/var/run/rustronaut/hub/private-key";
/// Where hub and gateway pods find the token Secret.
pub const TOKEN_DIR: &str = "/var/run/rustronaut/tunnel";
/// The token file, in hub and gateway pods (the gateway's `--tunnel-token-file`).
pub const TOKEN_FILE: &str = "/var/run/rustronaut/tunnel/token";
/// The hub's in-cluster stream endpoint (gateways connect here).
pub const STREAM_PORT: u16 = 4200;
/// The hub's admin endpoint (/healthz, /metrics, /status).
pub const ADMIN_PORT: u16 = 9090;
/// Annotation on the hub pod template: a hash of what the hub reads only when it starts (the
/// replicas' public keys and the hub's tunnel address), so a rotated key or a new address
/// pool restarts the pods; the key file is a `subPath` mount, which never updates anyway.
pub const RESTART_ANNOTATION: &str = "rustronaut.io/hub-restart";

/// Names of the hub objects (part of the API: the CRD reference and docs/tunnel.md name
/// them, and `rustronaut site config` reads them).
pub use rustronaut_crds::gateway::tunnel_names as names;

/// What hub objects `gw` wants, by name: everything else labelled as its hub's is pruned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Secrets: replica keys, site keys, token, config.
    pub secrets: Vec<String>,
    /// Services: one per replica, and the stream Service.
    pub services: Vec<String>,
}

/// The hub objects `gw` wants (nothing without `spec.tunnel`).
pub fn wanted(gw: &Gateway) -> Wanted {
    let Some(t) = &gw.spec.tunnel else {
        return Wanted::default();
    };
    let name = gw.name_any();
    let mut secrets: Vec<String> = (0..t.replicas).map(|i| names::replica(&name, i)).collect();
    secrets.extend(
        t.sites
            .iter()
            .filter(|s| s.public_key.is_none())
            .map(|s| names::site(&name, &s.name)),
    );
    secrets.push(names::token(&name));
    secrets.push(names::config(&name));
    let mut services: Vec<String> = (0..t.replicas).map(|i| names::replica(&name, i)).collect();
    services.push(names::stream(&name));
    Wanted { secrets, services }
}

/// Selector labels of the hub pods.
fn selector(gw: &Gateway) -> Value {
    json!({labels::NAME: labels::HUB, labels::INSTANCE: gw.name_any()})
}

/// Metadata of a hub object: the hub's labels, owned by the Gateway.
fn metadata(gw: &Gateway, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": gw.namespace().unwrap_or_default(),
        "labels": {
            labels::NAME: labels::HUB,
            labels::INSTANCE: gw.name_any(),
            labels::MANAGED_BY: labels::OPERATOR,
        },
        "ownerReferences": gw.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
    })
}

/// Whether `obj` is one of `gw`'s hub objects (labels and controller ownerReference), so
/// pruning never touches anything else.
pub fn is_hub_object(gw: &Gateway, obj: &impl Resource) -> bool {
    let m = obj.meta();
    let label = |k: &str| m.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    let owned = m
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == gw.meta().uid.as_ref());
    owned
        && m.namespace == gw.namespace()
        && label(labels::NAME) == Some(labels::HUB)
        && label(labels::INSTANCE) == Some(gw.name_any().as_str())
        && label(labels::MANAGED_BY) == Some(labels::OPERATOR)
}

fn secret(gw: &Gateway, name: &str, data: BTreeMap<String, String>) -> Secret {
    let mut s: Secret = typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": metadata(gw, name),
        "type": "Opaque",
    }));
    s.data = Some(
        data.into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect(),
    );
    s
}

/// The key Secret of hub replica `i`.
pub fn replica_key_secret(gw: &Gateway, i: i32, key: &PrivateKey) -> Secret {
    secret(
        gw,
        &names::replica(&gw.name_any(), i),
        BTreeMap::from([
            (PRIVATE_KEY.into(), key.expose_base64()),
            (PUBLIC_KEY.into(), key.public_key().to_string()),
        ]),
    )
}

/// The generated key pair of `site`, with what its connector needs besides the hubs'
/// endpoints and public keys (those are in the Gateway's status): its own tunnel address
/// and the hubs'.
pub fn site_key_secret(
    gw: &Gateway,
    site: &str,
    key: &PrivateKey,
    tunnel_address: Option<IpAddr>,
    hub_address: Option<IpAddr>,
) -> Secret {
    let mut data = BTreeMap::from([
        (PRIVATE_KEY.to_string(), key.expose_base64()),
        (PUBLIC_KEY.to_string(), key.public_key().to_string()),
    ]);
    if let Some(a) = tunnel_address {
        data.insert(TUNNEL_ADDRESS.into(), a.to_string());
    }
    if let Some(a) = hub_address {
        data.insert(HUB_TUNNEL_ADDRESS.into(), a.to_string());
    }
    secret(gw, &names::site(&gw.name_any(), site), data)
}

/// The token Secret: `token` is one line, as the hub's token file and the gateway's
/// `--tunnel-token-file` read it.
pub fn token_secret(gw: &Gateway, token: &str) -> Secret {
    secret(
        gw,
        &names::token(&gw.name_any()),
        BTreeMap::from([(TOKEN.to_string(), format!("{token}\n"))]),
    )
}

/// A new gateway token: 32 bytes from the operating system's random number generator, hex.
pub fn new_token() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The public key of a key Secret's `private-key` (None when absent or not a key).
pub fn public_key_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(PRIVATE_KEY)?;
    let text = std::str::from_utf8(&bytes.0).ok()?;
    let key = PrivateKey::from_base64(text).ok()?;
    Some(key.public_key().to_string())
}

/// The hub's tunnel address: the first host of the pool (`rustronaut_compile::tunnel`).
pub fn hub_address(pool: &str) -> Option<IpAddr> {
    rustronaut_compile::tunnel::hub_address(&pool.parse().ok()?)
}

/// Why a hub configuration could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum HubConfigError {
    /// The address pool has no room for the hub.
    #[error("tunnel addressPool {0:?} has no room for the hub and its sites")]
    Pool(String),
    /// The rendered configuration does not validate (the hub would refuse it).
    #[error("the hub would refuse this configuration: {0}")]
    Invalid(#[from] ConfigError),
}

fn target(t: &cs::AllowedTarget) -> Target {
    // An address or a network is matched as a CIDR; anything else is a name, resolved at
    // the site (the hub never resolves names to decide what is allowed).
    let is_network = t.host.parse::<IpAddr>().is_ok() || t.host.contains('/');
    Target {
        cidr: is_network.then(|| t.host.clone()),
        host: (!is_network).then(|| t.host.clone()),
        ports: t.ports.iter().map(|p| PortRange::single(*p)).collect(),
        protocol: match t.protocol {
            cs::TransportProtocol::Tcp => Protocol::Tcp,
            cs::TransportProtocol::Udp => Protocol::Udp,
        },
    }
}

/// The hub configuration of a compiled tunnel: every site of the snapshot with its key,
/// tunnel address and allowed targets; the paths where the StatefulSet mounts the key and
/// the token. Pure; validated with the hub's own `validate()`, so what it returns is what
/// the hub accepts. Sites without a tunnel address (a full pool) are left out.
pub fn hub_config(tunnel: &cs::Tunnel) -> Result<HubConfig, HubConfigError> {
    let hub = hub_address(&tunnel.address_pool)
        .ok_or_else(|| HubConfigError::Pool(tunnel.address_pool.clone()))?;
    let sites = tunnel
        .sites
        .iter()
        .filter_map(|s| {
            let tunnel_address = s.tunnel_address.as_ref()?.parse().ok()?;
            Some(SiteConfig {
                name: s.name.clone(),
                public_key: s.public_key.clone(),
                tunnel_address,
                forward_port: rustronaut_tunnel::config::DEFAULT_FORWARD_PORT,
                allowed_targets: s.allowed_targets.iter().map(target).collect(),
                // The connector dials a target name only at resolved addresses inside these
                // (issue 14, item 13). Written as networks (host bits cleared, as the
                // snapshot's CIDR type reads them), which is the form the hub accepts.
                advertised_cidrs: s
                    .advertised_cidrs
                    .iter()
                    .filter_map(|c| c.parse::<rustronaut_contract::cidr::Cidr>().ok())
                    .map(|c| c.to_string())
                    .collect(),
            })
        })
        .collect();
    let config = HubConfig {
        listen_port: tunnel.listen_port,
        private_key_file: KEY_FILE.into(),
        private_key_group_readable: true,
        tunnel_address: hub,
        control_port: rustronaut_tunnel::config::DEFAULT_CONTROL_PORT,
        sites,
        stream_listen: ([0, 0, 0, 0], STREAM_PORT).into(),
        token_file: TOKEN_FILE.into(),
        admin_listen: ([0, 0, 0, 0], ADMIN_PORT).into(),
    };
    config.validate()?;
    Ok(config)
}

/// The config Secret holding `config` as `hub.yaml` (JSON, which is YAML: no YAML emitter
/// needed, and the hub parses both).
pub fn hub_config_secret(gw: &Gateway, config: &HubConfig) -> Secret {
    let text = serde_json::to_string_pretty(config).expect("a HubConfig serializes");
    secret(
        gw,
        &names::config(&gw.name_any()),
        BTreeMap::from([(HUB_CONFIG.to_string(), text)]),
    )
}

/// A short, stable hash (FNV-1a) of `parts` for [`RESTART_ANNOTATION`].
pub fn restart_hash(parts: &[String]) -> String {
    let h = parts.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, k| {
        k.bytes()
            .chain(std::iter::once(b'\n'))
            .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    });
    format!("{h:016x}")
}

fn service_type(gw: &Gateway) -> &'static str {
    match gw.spec.service.as_ref().map(|s| s.type_) {
        None | Some(ServiceType::ClusterIP) => "ClusterIP",
        Some(ServiceType::LoadBalancer) => "LoadBalancer",
        Some(ServiceType::NodePort) => "NodePort",
    }
}

/// The StatefulSet of the hub (None without `spec.tunnel`). `public_keys` are the replicas'
/// (for [`RESTART_ANNOTATION`], with the hub's tunnel address).
pub fn stateful_set(
    gw: &Gateway,
    settings: &Settings,
    public_keys: &[String],
) -> Option<StatefulSet> {
    let t = gw.spec.tunnel.as_ref()?;
    let name = gw.name_any();
    let port = t.listen_port;
    let mut restart = public_keys.to_vec();
    restart.extend(hub_address(&t.address_pool).map(|a| a.to_string()));
    let probe = |path: &str| objects::http_probe(path, ADMIN_PORT);
    let mut pod_security = json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        // Secret files are root-owned; fsGroup makes them readable by the hub (0440).
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if port < 1024 {
        pod_security["sysctls"] =
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
    }
    let keys: Vec<Value> = (0..t.replicas)
        .map(|i| {
            let replica = names::replica(&name, i);
            json!({"secret": {"name": replica, "items": [{"key": PRIVATE_KEY, "path": replica}]}})
        })
        .collect();
    Some(typed(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(gw, &names::hub(&name)),
        "spec": {
            "replicas": t.replicas,
            "serviceName": names::stream(&name),
            // Replicas are independent peers (no ordering between them); start them together.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(gw)},
            "template": {
                "metadata": {
                    "labels": {
                        labels::NAME: labels::HUB,
                        labels::INSTANCE: name,
                        labels::MANAGED_BY: labels::OPERATOR,
                    },
                    "annotations": {RESTART_ANNOTATION: restart_hash(&restart)},
                },
                "spec": {
                    // The hub reads files only; it never talks to the API server.
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security,
                    "containers": [{
                        "name": "hub",
                        "image": settings.image,
                        "command": ["rustronaut-tunnel"],
                        "args": ["hub", "--config", format!("{CONFIG_DIR}/{HUB_CONFIG}")],
                        "env": [{"name": "POD_NAME",
                                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [
                            {"name": "wireguard", "containerPort": port, "protocol": "UDP"},
                            {"name": "stream", "containerPort": STREAM_PORT, "protocol": "TCP"},
                            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
                        ],
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "64Mi"},
                            "limits": {"cpu": "1", "memory": "256Mi"},
                        },
                        "livenessProbe": probe("/healthz"),
                        // Fails from SIGTERM on while the hub drains (tunnel/src/hub.rs).
                        "readinessProbe": probe("/readyz"),
                        "securityContext": container_security(),
                        "volumeMounts": [
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
                            {"name": "keys", "mountPath": KEY_FILE,
                             "subPathExpr": "$(POD_NAME)", "readOnly": true},
                            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "secret": {"secretName": names::config(&name),
                                                      "defaultMode": 0o440}},
                        {"name": "keys", "projected": {"defaultMode": 0o440, "sources": keys}},
                        {"name": "token", "secret": {"secretName": names::token(&name),
                                                     "defaultMode": 0o440}},
                    ],
                },
            },
        },
    })))
}

/// The hub pods' NetworkPolicy (issue 14, item 19), None without a tunnel:
///
/// - the WireGuard port (UDP) from anywhere: connectors dial in from their sites, and a
///   handshake without a configured key is dropped by the hub itself;
/// - the stream port only from this Gateway's own gateway pods (the only clients of the stream
///   endpoint, which also wants the tunnel token);
/// - the admin port (`/status` lists every site's endpoint and public key) only from the
///   operator's pods (it reads `/status` for the Gateway's status) and the namespaces allowed
///   to scrape metrics.
pub fn network_policy(gw: &Gateway, settings: &Settings) -> Option<NetworkPolicy> {
    let t = gw.spec.tunnel.as_ref()?;
    let ns = gw.namespace().unwrap_or_default();
    let operator = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}},
        "podSelector": {"matchLabels": {labels::NAME: labels::OPERATOR}},
    });
    let gateways = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "podSelector": {"matchLabels": {labels::NAME: labels::GATEWAY, labels::INSTANCE: gw.name_any()}},
    });
    let ingress: Vec<Value> = [
        objects::ingress_rule(
            vec![json!({"port": t.listen_port, "protocol": "UDP"})],
            None,
        ),
        objects::ingress_rule(
            vec![json!({"port": STREAM_PORT, "protocol": "TCP"})],
            Some(vec![gateways]),
        ),
        objects::ingress_rule(
            vec![json!({"port": ADMIN_PORT, "protocol": "TCP"})],
            Some(objects::admin_peers(settings, vec![operator])),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    Some(typed(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(gw, &names::hub(&gw.name_any())),
        "spec": {
            "podSelector": {"matchLabels": selector(gw)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    })))
}

/// A PodDisruptionBudget (maxUnavailable 1) for more than one hub replica, so a node drain
/// never takes every hub at once (connectors keep their tunnels through the others); None
/// for a single replica (it would block drains) or without a tunnel.
pub fn pdb(gw: &Gateway) -> Option<PodDisruptionBudget> {
    let t = gw.spec.tunnel.as_ref()?;
    (t.replicas > 1).then(|| {
        typed(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(gw, &names::hub(&gw.name_any())),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(gw)}},
        }))
    })
}

/// The UDP Service of hub replica `i`: connectors keep a tunnel to every replica, so each
/// needs its own address. Type and annotations from `spec.service`, like the gateway's.
pub fn replica_service(gw: &Gateway, i: i32) -> Option<Service> {
    let t = gw.spec.tunnel.as_ref()?;
    let name = names::replica(&gw.name_any(), i);
    let mut meta = metadata(gw, &name);
    if let Some(s) = &gw.spec.service
        && !s.annotations.is_empty()
    {
        meta["annotations"] = json!(s.annotations);
    }
    let mut udp_spec = json!({
        "type": service_type(gw),
        "selector": {"statefulset.kubernetes.io/pod-name": name},
        "ports": [{"name": "wireguard", "port": t.listen_port,
                   "targetPort": t.listen_port, "protocol": "UDP"}],
    });
    // As for the gateway's Service: no SNAT, so the hub sees each site's own address.
    if service_type(gw) != "ClusterIP" {
        udp_spec["externalTrafficPolicy"] = json!(super::objects::EXTERNAL_TRAFFIC_POLICY);
    }
    Some(typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta,
        "spec": udp_spec,
    })))
}

/// The in-cluster stream Service (any hub replica serves any site).
pub fn stream_service(gw: &Gateway) -> Option<Service> {
    gw.spec.tunnel.as_ref()?;
    Some(typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(gw, &names::stream(&gw.name_any())),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(gw),
            "ports": [{"name": "stream", "port": STREAM_PORT, "targetPort": STREAM_PORT,
                       "protocol": "TCP"}],
        },
    })))
}

/// The gateway container's tunnel arguments (`--tunnel-stream`, `--tunnel-token-file`).
pub fn gateway_args(gw: &Gateway) -> Vec<String> {
    if gw.spec.tunnel.is_none() {
        return Vec::new();
    }
    let ns = gw.namespace().unwrap_or_default();
    vec![
        flags::TUNNEL_STREAM.into(),
        format!("{}.{ns}.svc:{STREAM_PORT}", names::stream(&gw.name_any())),
        flags::TUNNEL_TOKEN_FILE.into(),
        TOKEN_FILE.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_tunnel::config::load_file;

    const KEY_A: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn gateway(tunnel: Value) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "rtn", "uid": "u-1"},
            "spec": {
                "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
                "service": {"type": "LoadBalancer", "annotations": {"lb": "internal"}},
                "tunnel": tunnel,
            }
        }))
        .unwrap()
    }

    fn compiled() -> cs::Tunnel {
        cs::Tunnel {
            listen_port: 51820,
            address_pool: "100.96.0.0/16".into(),
            sites: vec![
                cs::TunnelSite {
                    name: "dc1".into(),
                    tenant: "acme".into(),
                    public_key: KEY_A.into(),
                    tunnel_address: Some("100.96.12.34".into()),
                    advertised_cidrs: vec!["10.1.0.0/16".into()],
                    allowed_targets: vec![
                        cs::AllowedTarget {
                            host: "10.1.2.3".into(),
                            ports: vec![8080, 22],
                            protocol: cs::TransportProtocol::Tcp,
                        },
                        cs::AllowedTarget {
                            host: "db.corp.example".into(),
                            ports: vec![53],
                            protocol: cs::TransportProtocol::Udp,
                        },
                    ],
                },
                cs::TunnelSite {
                    name: "lab".into(),
                    tenant: "acme".into(),
                    public_key: PrivateKey::generate().unwrap().public_key().to_string(),
                    tunnel_address: None,
                    advertised_cidrs: vec![],
                    allowed_targets: vec![],
                },
            ],
        }
    }

    #[test]
    fn hub_config_is_what_the_hub_accepts() {
        let config = hub_config(&compiled()).unwrap();
        let gw = gateway(json!({"replicas": 2}));
        let secret = hub_config_secret(&gw, &config);
        let text = &secret.data.as_ref().unwrap()[HUB_CONFIG].0;
        // Parsed from a file, exactly as `rustronaut-tunnel hub --config` does.
        let dir = std::env::temp_dir().join(format!("rtn-hub-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.yaml");
        std::fs::write(&path, text).unwrap();
        let parsed: HubConfig = load_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parsed, config);
        let valid = parsed.validate().unwrap();
        assert_eq!(
            parsed.tunnel_address,
            "100.96.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(parsed.private_key_file.to_str(), Some(KEY_FILE));
        assert!(parsed.private_key_group_readable);
        assert_eq!(parsed.token_file.to_str(), Some(TOKEN_FILE));
        assert_eq!(parsed.stream_listen.port(), STREAM_PORT);
        assert_eq!(parsed.admin_listen.port(), ADMIN_PORT);
        assert_eq!(
            valid.sites.len(),
            1,
            "the site without an address is left out"
        );
        let dc1 = &valid.sites[0];
        assert_eq!(dc1.name, "dc1");
        assert_eq!(dc1.advertised_cidrs, vec!["10.1.0.0/16".to_string()]);
        assert_eq!(dc1.public_key.to_string(), KEY_A);
        assert_eq!(
            dc1.tunnel_address,
            "100.96.12.34".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            serde_json::to_value(&dc1.targets).unwrap(),
            json!([
                {"cidr": "10.1.2.3", "ports": [8080, 22], "protocol": "TCP"},
                {"host": "db.corp.example", "ports": [53], "protocol": "UDP"},
            ])
        );
    }

    /// The hub itself (`Hub::from_file`, what `rustronaut-tunnel hub --config` runs) starts
    /// from the generated configuration with a key and token shaped like the Secret volume
    /// files the kubelet writes with fsGroup (mode 0440); only the paths and ports are moved
    /// to a temporary directory and free ports.
    #[tokio::test]
    async fn the_hub_starts_from_the_generated_config_and_secret_volume_files() {
        use std::os::unix::fs::PermissionsExt;
        let gw = gateway(json!({"replicas": 2}));
        let dir = std::env::temp_dir().join(format!("rtn-hub-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
            path
        };
        let key = PrivateKey::generate().unwrap();
        let key_secret = replica_key_secret(&gw, 0, &key);
        let key_file = write("key", &key_secret.data.as_ref().unwrap()[PRIVATE_KEY].0);
        let token = token_secret(&gw, &new_token().unwrap());
        let token_file = write("token", &token.data.as_ref().unwrap()[TOKEN].0);
        let free_tcp = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut config = hub_config(&compiled()).unwrap();
        assert!(config.private_key_group_readable);
        config.private_key_file = key_file;
        config.token_file = token_file;
        config.listen_port = udp.local_addr().unwrap().port();
        drop(udp);
        config.stream_listen = free_tcp();
        config.admin_listen = free_tcp();
        let start = |config: &HubConfig| {
            let secret = hub_config_secret(&gw, config);
            let path = dir.join("hub.yaml");
            std::fs::write(&path, &secret.data.as_ref().unwrap()[HUB_CONFIG].0).unwrap();
            async move { rustronaut_tunnel::hub::Hub::from_file(&path).await }
        };
        let hub = start(&config).await.expect("the hub starts");
        assert_eq!(hub.public_key(), key.public_key());
        drop(hub);
        // Without the option the hub refuses the Secret volume's key file: why it is set.
        config.private_key_group_readable = false;
        let refused = start(&config).await.err().expect("refused").to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(refused.contains("0440"), "{refused}");
    }

    #[test]
    fn hub_config_refuses_what_the_hub_would_refuse() {
        let mut t = compiled();
        t.address_pool = "100.96.0.0/31".into();
        assert!(matches!(hub_config(&t), Err(HubConfigError::Pool(_))));
        let mut t = compiled();
        t.sites[0].tunnel_address = Some("100.96.0.1".into());
        let err = hub_config(&t).unwrap_err().to_string();
        assert!(err.contains("sites[0].tunnel_address"), "{err}");
    }

    #[test]
    fn wanted_and_names() {
        let gw = gateway(json!({"replicas": 2, "sites": [
            {"name": "dc1", "tenant": "acme", "publicKey": KEY_A},
            {"name": "lab", "tenant": "acme"},
        ]}));
        assert_eq!(
            wanted(&gw),
            Wanted {
                secrets: vec![
                    "edge-hub-0".into(),
                    "edge-hub-1".into(),
                    "edge-site-lab".into(),
                    "edge-tunnel-token".into(),
                    "edge-hub-config".into(),
                ],
                services: vec![
                    "edge-hub-0".into(),
                    "edge-hub-1".into(),
                    "edge-hub-stream".into()
                ],
            }
        );
        let mut plain = gw.clone();
        plain.spec.tunnel = None;
        assert_eq!(wanted(&plain), Wanted::default());
        assert!(stateful_set(&plain, &Settings::default(), &[]).is_none());
        assert!(gateway_args(&plain).is_empty());
        assert_eq!(
            gateway_args(&gw),
            [
                "--tunnel-stream",
                "edge-hub-stream.rtn.svc:4200",
                "--tunnel-token-file",
                "/var/run/rustronaut/tunnel/token"
            ]
        );
        let own = replica_key_secret(&gw, 0, &PrivateKey::generate().unwrap());
        assert!(is_hub_object(&gw, &own));
        let mut other = gw.clone();
        other.metadata.uid = Some("u-2".into());
        assert!(
            !is_hub_object(&other, &own),
            "another Gateway's (same name, new uid)"
        );
    }

    #[test]
    fn key_secrets_hold_a_matching_pair() {
        let gw = gateway(json!({}));
        let key = PrivateKey::generate().unwrap();
        let s = replica_key_secret(&gw, 1, &key);
        assert_eq!(s.metadata.name.as_deref(), Some("edge-hub-1"));
        assert_eq!(public_key_of(&s), Some(key.public_key().to_string()));
        let data = s.data.as_ref().unwrap();
        assert_eq!(
            data[PUBLIC_KEY].0,
            key.public_key().to_string().into_bytes()
        );
        let site = site_key_secret(
            &gw,
            "lab",
            &key,
            Some("100.96.3.4".parse().unwrap()),
            hub_address("100.96.0.0/16"),
        );
        let data = site.data.as_ref().unwrap();
        assert_eq!(site.metadata.name.as_deref(), Some("edge-site-lab"));
        assert_eq!(data[TUNNEL_ADDRESS].0, b"100.96.3.4");
        assert_eq!(data[HUB_TUNNEL_ADDRESS].0, b"100.96.0.1");
        assert_eq!(public_key_of(&site), Some(key.public_key().to_string()));
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token().unwrap());
        let t = token_secret(&gw, &token);
        assert_eq!(
            t.data.as_ref().unwrap()[TOKEN].0,
            format!("{token}\n").into_bytes()
        );
        assert_eq!(
            serde_json::to_value(&t).unwrap()["metadata"]["labels"],
            json!({"app.kubernetes.io/name": "rustronaut-tunnel-hub",
                   "app.kubernetes.io/instance": "edge",
                   "app.kubernetes.io/managed-by": "rustronaut-operator"})
        );
        assert_ne!(restart_hash(&["a".into()]), restart_hash(&["b".into()]));
        assert_ne!(
            restart_hash(&["a".into(), "b".into()]),
            restart_hash(&["ab".into()])
        );
    }

    #[test]
    fn stateful_set_whole_object() {
        let gw = gateway(json!({"replicas": 2, "listenPort": 443}));
        let ss = serde_json::to_value(
            stateful_set(
                &gw,
                &Settings {
                    image: "img:1".into(),
                    ..Settings::default()
                },
                &["k0".into(), "k1".into()],
            )
            .unwrap(),
        )
        .unwrap();
        let labels = json!({"app.kubernetes.io/name": "rustronaut-tunnel-hub",
                            "app.kubernetes.io/instance": "edge",
                            "app.kubernetes.io/managed-by": "rustronaut-operator"});
        let probe = |path: &str| {
            json!({"httpGet": {"path": path, "port": 9090},
                           "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3})
        };
        let want = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "edge-hub", "namespace": "rtn", "labels": labels,
                         "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1",
                             "kind": "Gateway", "name": "edge", "uid": "u-1",
                             "controller": true}]},
            "spec": {
                "replicas": 2,
                "serviceName": "edge-hub-stream",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app.kubernetes.io/name": "rustronaut-tunnel-hub",
                                             "app.kubernetes.io/instance": "edge"}},
                "template": {
                    "metadata": {"labels": labels,
                                 "annotations": {RESTART_ANNOTATION: restart_hash(
                                     &["k0".into(), "k1".into(), "100.96.0.1".into()])}},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"},
                            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start",
                                         "value": "0"}],
                        },
                        "containers": [{
                            "name": "hub",
                            "image": "img:1",
                            "command": ["rustronaut-tunnel"],
                            "args": ["hub", "--config", "/etc/rustronaut/hub/hub.yaml"],
                            "env": [{"name": "POD_NAME",
                                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [
                                {"name": "wireguard", "containerPort": 443, "protocol": "UDP"},
                                {"name": "stream", "containerPort": 4200, "protocol": "TCP"},
                                {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
                            ],
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                          "limits": {"cpu": "1", "memory": "256Mi"}},
                            "livenessProbe": probe("/healthz"),
                            "readinessProbe": probe("/readyz"),
                            "securityContext": {
                                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                "privileged": false, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/rustronaut/hub",
                                 "readOnly": true},
                                {"name": "keys", "mountPath": "/var/run/rustronaut/hub/private-key",
                                 "subPathExpr": "$(POD_NAME)", "readOnly": true},
                                {"name": "token", "mountPath": "/var/run/rustronaut/tunnel",
                                 "readOnly": true},
                            ],
                        }],
                        "volumes": [
                            {"name": "config", "secret": {"secretName": "edge-hub-config",
                                                          "defaultMode": 288}},
                            {"name": "keys", "projected": {"defaultMode": 288, "sources": [
                                {"secret": {"name": "edge-hub-0", "items": [
                                    {"key": "private-key", "path": "edge-hub-0"}]}},
                                {"secret": {"name": "edge-hub-1", "items": [
                                    {"key": "private-key", "path": "edge-hub-1"}]}},
                            ]}},
                            {"name": "token", "secret": {"secretName": "edge-tunnel-token",
                                                         "defaultMode": 288}},
                        ],
                    }
                }
            }
        });
        assert_eq!(ss, want, "{}", serde_json::to_string_pretty(&ss).unwrap());
    }

    #[test]
    fn pdb_only_with_several_replicas() {
        let two = gateway(json!({"replicas": 2}));
        assert_eq!(
            serde_json::to_value(pdb(&two).unwrap()).unwrap(),
            json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "edge-hub", "namespace": "rtn",
                    "labels": {"app.kubernetes.io/name": "rustronaut-tunnel-hub",
                               "app.kubernetes.io/instance": "edge",
                               "app.kubernetes.io/managed-by": "rustronaut-operator"},
                    "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1",
                        "kind": "Gateway", "name": "edge", "uid": "u-1", "controller": true}]},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {
                    "app.kubernetes.io/name": "rustronaut-tunnel-hub",
                    "app.kubernetes.io/instance": "edge"}}},
            })
        );
        assert!(pdb(&gateway(json!({"replicas": 1}))).is_none());
        let mut none = two.clone();
        none.spec.tunnel = None;
        assert!(pdb(&none).is_none());
    }

    #[test]
    fn services() {
        let gw = gateway(json!({"replicas": 2}));
        let svc = serde_json::to_value(replica_service(&gw, 1).unwrap()).unwrap();
        assert_eq!(svc["metadata"]["name"], "edge-hub-1");
        assert_eq!(svc["metadata"]["annotations"]["lb"], "internal");
        assert_eq!(
            svc["spec"],
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                   "selector": {"statefulset.kubernetes.io/pod-name": "edge-hub-1"},
                   "ports": [{"name": "wireguard", "port": 51820, "targetPort": 51820,
                              "protocol": "UDP"}]})
        );
        let stream = serde_json::to_value(stream_service(&gw).unwrap()).unwrap();
        assert_eq!(stream["metadata"]["name"], "edge-hub-stream");
        assert_eq!(
            stream["spec"],
            json!({"type": "ClusterIP",
                   "selector": {"app.kubernetes.io/name": "rustronaut-tunnel-hub",
                                "app.kubernetes.io/instance": "edge"},
                   "ports": [{"name": "stream", "port": 4200, "targetPort": 4200,
                              "protocol": "TCP"}]})
        );
    }

    #[test]
    fn hub_pods_admit_wireguard_from_anywhere_the_stream_from_their_gateway_and_status_from_the_operator()
     {
        let mut none = gateway(json!({}));
        none.spec.tunnel = None;
        assert_eq!(network_policy(&none, &Settings::default()), None);
        let gw = gateway(json!({"listenPort": 51820}));
        let settings = Settings {
            operator_namespace: "ops".into(),
            ..Settings::default()
        };
        let np = serde_json::to_value(network_policy(&gw, &settings).unwrap()).unwrap();
        assert_eq!(np["metadata"]["name"], "edge-hub");
        assert_eq!(
            np["spec"],
            json!({
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rustronaut-tunnel-hub",
                                                "app.kubernetes.io/instance": "edge"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"port": 51820, "protocol": "UDP"}]},
                    {"ports": [{"port": 4200, "protocol": "TCP"}],
                     "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rtn"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rustronaut-gateway",
                                                               "app.kubernetes.io/instance": "edge"}}}]},
                    {"ports": [{"port": 9090, "protocol": "TCP"}],
                     "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rustronaut-operator"}}}]},
                ],
            })
        );
    }
}
