//! `rustronaut site config`: the connector configuration of one remote site, from what the
//! operator published for its Gateway (issue 18, item 5).
//!
//! ```text
//!  Gateway <gw>                 spec.tunnel.sites[<site>], status.tunnel.publicKeys (one per replica)
//!  Secret <gw>-hub-config       hub.yaml: the hub's and the site's tunnel addresses
//!  Service <gw>-hub-<i>         replica i's UDP endpoint (load balancer, node port or cluster IP)
//!  Secret <gw>-site-<site>      the generated private key of a site without spec publicKey
//!      -> connector_config (pure, this module) -> ConnectorConfig (YAML for `rustronaut-tunnel
//!         connect --config`)
//! ```
//!
//! The shell (`main.rs`) reads the objects with the caller's kubeconfig, so Kubernetes RBAC
//! decides who may print a site's configuration (reading the generated key needs `get` on
//! that Secret).

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use rustronaut_crds::Gateway;
use rustronaut_tunnel::config::{ConnectorConfig, HubConfig, HubPeerConfig};
use std::path::{Path, PathBuf};

/// Why no configuration could be made; each says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SiteError {
    /// The Gateway has no tunnel.
    #[error("Gateway {0} has no spec.tunnel: it reaches no sites")]
    NoTunnel(String),
    /// No such site on the Gateway.
    #[error("Gateway {gateway} has no site {site} (its sites: {known})")]
    NoSite {
        /// The Gateway.
        gateway: String,
        /// The site asked for.
        site: String,
        /// The sites it has.
        known: String,
    },
    /// The hub's public keys are not in the Gateway status yet.
    #[error(
        "Gateway {0} does not publish its hub replicas' public keys yet (status.tunnel.publicKeys): wait for the operator, then try again"
    )]
    NoHubKeys(String),
    /// The hub configuration does not name the site (the operator has not written it yet).
    #[error(
        "the hub configuration of {gateway} does not list site {site} yet: wait for the operator, then try again"
    )]
    SiteNotInHubConfig {
        /// The Gateway.
        gateway: String,
        /// The site.
        site: String,
    },
    /// A replica's UDP Service is missing or has no usable address.
    #[error("hub replica {replica}: {why}")]
    Endpoint {
        /// The replica's Service name.
        replica: String,
        /// What is missing.
        why: String,
    },
}

/// Where the connector reaches replica `i` from: `endpoint_host` (a node's address) with the
/// Service's node port; else the load balancer's address and the Service's port; else the
/// cluster IP (only reachable from inside the cluster).
fn endpoint(
    svc: Option<&Service>,
    name: &str,
    endpoint_host: Option<&str>,
) -> Result<String, SiteError> {
    let err = |why: &str| SiteError::Endpoint {
        replica: name.to_string(),
        why: why.to_string(),
    };
    let svc = svc.ok_or_else(|| err("its Service does not exist yet"))?;
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| err("its Service has no spec"))?;
    let port = spec
        .ports
        .iter()
        .flatten()
        .next()
        .ok_or_else(|| err("its Service has no port"))?;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let host_port = |host: &str, p: i32| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{p}")
        } else {
            format!("{host}:{p}")
        }
    };
    if let Some(host) = endpoint_host {
        // A node's address: the replica's node port (NodePort and LoadBalancer Services both
        // have one), else the Service's port.
        let p = port.node_port.unwrap_or(port.port);
        return Ok(host_port(host, p));
    }
    match type_ {
        "LoadBalancer" => {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .and_then(|i| i.first())
                .ok_or_else(|| {
                    err("its LoadBalancer Service has no external address yet (or pass --endpoint-host)")
                })?;
            let host = ingress
                .ip
                .as_deref()
                .or(ingress.hostname.as_deref())
                .ok_or_else(|| err("its load balancer address is empty"))?;
            Ok(host_port(host, port.port))
        }
        "NodePort" => Err(err(
            "its Service is a NodePort: pass --endpoint-host with an address of a node the site can reach",
        )),
        _ => {
            let ip = spec
                .cluster_ip
                .as_deref()
                .filter(|ip| *ip != "None")
                .ok_or_else(|| err("its Service has no cluster IP"))?;
            Ok(host_port(ip, port.port))
        }
    }
}

/// The connector configuration of `site` at `gw`: one hub entry per replica (its endpoint
/// and public key), the tunnel addresses from the hub configuration, and `private_key_file`
/// as the key's path at the site.
pub fn connector_config(
    gw: &Gateway,
    site: &str,
    hub: &HubConfig,
    replicas: &[Option<Service>],
    endpoint_host: Option<&str>,
    private_key_file: &Path,
) -> Result<ConnectorConfig, SiteError> {
    let gw_name = format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any());
    let tunnel = gw
        .spec
        .tunnel
        .as_ref()
        .ok_or_else(|| SiteError::NoTunnel(gw_name.clone()))?;
    if !tunnel.sites.iter().any(|s| s.name == site) {
        return Err(SiteError::NoSite {
            gateway: gw_name,
            site: site.to_string(),
            known: tunnel
                .sites
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let keys = gw
        .status
        .as_ref()
        .and_then(|s| s.tunnel.as_ref())
        .map(|t| t.public_keys.clone())
        .unwrap_or_default();
    let replicas_wanted = usize::try_from(tunnel.replicas).unwrap_or(0);
    if keys.len() < replicas_wanted || keys.is_empty() {
        return Err(SiteError::NoHubKeys(gw_name));
    }
    let in_hub =
        hub.sites
            .iter()
            .find(|s| s.name == site)
            .ok_or_else(|| SiteError::SiteNotInHubConfig {
                gateway: gw_name.clone(),
                site: site.to_string(),
            })?;
    let names = rustronaut_crds::gateway::tunnel_names::replica;
    let hubs = keys
        .iter()
        .take(replicas_wanted)
        .enumerate()
        .map(|(i, key)| {
            let name = names(&gw.name_any(), i32::try_from(i).unwrap_or(i32::MAX));
            Ok(HubPeerConfig {
                endpoint: endpoint(
                    replicas.get(i).and_then(Option::as_ref),
                    &name,
                    endpoint_host,
                )?,
                public_key: key.clone(),
                tunnel_address: None,
            })
        })
        .collect::<Result<Vec<_>, SiteError>>()?;
    let mut cfg: ConnectorConfig = serde_json::from_value(serde_json::json!({
        "hubs": [],
        "private_key_file": PathBuf::from(private_key_file),
        "tunnel_address": in_hub.tunnel_address,
        "hub_tunnel_address": hub.tunnel_address,
        "forward_port": in_hub.forward_port,
        "control_port": hub.control_port,
    }))
    .expect("a connector configuration with its required fields");
    cfg.hubs = hubs;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(status: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "rtn"},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                     "tunnel": {"replicas": 2, "listenPort": 51820,
                                "sites": [{"name": "lab", "tenant": "t"}]}},
            "status": status,
        }))
        .unwrap()
    }

    fn hub() -> HubConfig {
        serde_json::from_value(json!({
            "listen_port": 51820, "private_key_file": "/k", "tunnel_address": "100.96.0.1",
            "token_file": "/t",
            "sites": [{"name": "lab", "public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
                       "tunnel_address": "100.96.0.2", "forward_port": 4101}],
        }))
        .unwrap()
    }

    fn service(v: serde_json::Value) -> Option<Service> {
        Some(serde_json::from_value(v).unwrap())
    }

    const K0: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const K1: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

    #[test]
    fn one_hub_entry_per_replica_with_its_key_and_the_addresses_the_operator_chose() {
        let gw = gateway(json!({"tunnel": {"publicKeys": [K0, K1]}}));
        let lb = |ip: &str| {
            service(json!({"spec": {"type": "LoadBalancer",
                                    "ports": [{"port": 51820, "protocol": "UDP", "nodePort": 31820}]},
                           "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))
        };
        let replicas = [lb("203.0.113.10"), lb("2001:db8::10")];
        let cfg = connector_config(
            &gw,
            "lab",
            &hub(),
            &replicas,
            None,
            Path::new("/etc/rustronaut/site.key"),
        )
        .unwrap();
        let got = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            got["hubs"],
            json!([
                {"endpoint": "203.0.113.10:51820", "public_key": K0, "tunnel_address": null},
                {"endpoint": "[2001:db8::10]:51820", "public_key": K1, "tunnel_address": null},
            ])
        );
        assert_eq!(got["tunnel_address"], "100.96.0.2");
        assert_eq!(got["hub_tunnel_address"], "100.96.0.1");
        assert_eq!(got["private_key_file"], "/etc/rustronaut/site.key");
        // What `rustronaut-tunnel connect --config` reads back, validated as it would be.
        let yaml = serde_saphyr::to_string(&cfg).unwrap();
        let back: ConnectorConfig = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, cfg);
        back.validate().unwrap();

        // A node port with the address of a node.
        let np = service(json!({"spec": {"type": "NodePort",
                                          "ports": [{"port": 51820, "nodePort": 31820}]}}));
        let cfg = connector_config(
            &gw,
            "lab",
            &hub(),
            &[np.clone(), np],
            Some("node.example"),
            Path::new("/k"),
        )
        .unwrap();
        assert_eq!(cfg.hubs[1].endpoint, "node.example:31820");
        // A load balancer's node port, with a node's address.
        let cfg = connector_config(
            &gw,
            "lab",
            &hub(),
            &replicas,
            Some("192.0.2.7"),
            Path::new("/k"),
        )
        .unwrap();
        assert_eq!(cfg.hubs[0].endpoint, "192.0.2.7:31820");
    }

    #[test]
    fn what_is_missing_is_named_with_what_to_do() {
        let keys = json!({"tunnel": {"publicKeys": [K0, K1]}});
        let k = Path::new("/k");
        let e = connector_config(&gateway(keys.clone()), "nope", &hub(), &[], None, k).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Gateway rtn/edge has no site nope (its sites: lab)"
        );
        let e = connector_config(&gateway(json!({})), "lab", &hub(), &[], None, k).unwrap_err();
        assert!(matches!(e, SiteError::NoHubKeys(_)), "{e}");
        let pending =
            service(json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 51820}]}}));
        let e = connector_config(
            &gateway(keys.clone()),
            "lab",
            &hub(),
            &[pending.clone(), pending],
            None,
            k,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--endpoint-host"), "{e}");
        let np = service(
            json!({"spec": {"type": "NodePort", "ports": [{"port": 51820, "nodePort": 30000}]}}),
        );
        let e = connector_config(
            &gateway(keys.clone()),
            "lab",
            &hub(),
            &[np.clone(), np],
            None,
            k,
        )
        .unwrap_err();
        assert!(e.to_string().contains("NodePort"), "{e}");
        let e =
            connector_config(&gateway(keys), "lab", &hub(), &[None, None], None, k).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hub replica edge-hub-0: its Service does not exist yet"
        );
    }
}
