//! Configuration of the hub and of the connector: plain serde data, checked by `validate()`.
//!
//! Files are YAML (JSON is accepted too: it is YAML). The operator will map the Gateway CRD's
//! `tunnel` section into [`HubConfig`], so these types stay plain data: strings, numbers and
//! addresses, no handles. `validate()` turns them into the checked forms the runtime uses
//! ([`ValidHub`], [`ValidConnector`]) and says exactly which field is wrong.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::allow::{AllowError, AllowList, Cidr, Target};
use crate::keys::PublicKey;

/// Default WireGuard UDP port of the hub.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Default TCP port of the hub's control service, on the hub's tunnel address (inside tunnels).
pub const DEFAULT_CONTROL_PORT: u16 = 4100;
/// Default TCP port of the connector's forwarder, on the site's tunnel address (inside tunnels).
pub const DEFAULT_FORWARD_PORT: u16 = 4101;
/// Default in-cluster stream endpoint of the hub (gateways connect here).
pub const DEFAULT_STREAM_LISTEN: &str = "0.0.0.0:4200";
/// Default admin endpoint of the hub (/metrics, /healthz, /status).
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";

/// Errors of loading and validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML/JSON for the type.
    #[error("failed to parse config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A field has an invalid value.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// Path of the field, e.g. `sites[1].public_key`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads and parses a YAML or JSON file.
pub fn load_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn default_listen_port() -> u16 {
    DEFAULT_LISTEN_PORT
}
fn default_control_port() -> u16 {
    DEFAULT_CONTROL_PORT
}
fn default_forward_port() -> u16 {
    DEFAULT_FORWARD_PORT
}
fn default_stream_listen() -> SocketAddr {
    DEFAULT_STREAM_LISTEN.parse().expect("constant")
}
fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN.parse().expect("constant")
}
fn default_keepalive() -> u16 {
    25
}
fn default_dead_peer() -> u64 {
    30
}
fn default_control_interval() -> u64 {
    10
}
fn default_connect_timeout() -> u64 {
    10
}

/// The hub: one per replica, each with its own key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// WireGuard UDP port. Default 51820, the WireGuard convention.
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// File holding this replica's private key (base64, mode 0600). Required.
    pub private_key_file: PathBuf,
    /// Also accept a key file its group may read (mode 0440 or 0640; never group-writable,
    /// never readable by others). Default false. For Kubernetes only: a Secret volume's files
    /// belong to root, and the only way a non-root container can read one is `fsGroup`,
    /// which makes them `root:<fsGroup>` and group-readable (0440); the group is the pod's
    /// own, so the key still stays inside the pod. The operator sets this in the
    /// configuration it generates.
    #[serde(default)]
    pub private_key_group_readable: bool,
    /// The hub's address inside every tunnel, e.g. 100.96.0.1. Required. All replicas may share
    /// it: each tunnel is a point-to-point link of its own.
    pub tunnel_address: IpAddr,
    /// Port of the control service on `tunnel_address`, where connectors fetch their allow
    /// lists. Default 4100; must match the connectors' `control_port`.
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    /// The remote sites. Default none (the hub then serves no site until the file changes).
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    /// In-cluster TCP listener where gateways ask for streams. Default 0.0.0.0:4200.
    #[serde(default = "default_stream_listen")]
    pub stream_listen: SocketAddr,
    /// File with the bearer token(s) gateways present, one per line (several during a
    /// rotation). Required: the stream endpoint never runs unauthenticated.
    pub token_file: PathBuf,
    /// Admin HTTP listener (/metrics, /healthz, /status). Default 0.0.0.0:9090.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

/// A remote site, as the hub knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site name, as gateways name it: a DNS label (lowercase letters, digits, '-').
    pub name: String,
    /// The connector's WireGuard public key (base64): the site's identity.
    pub public_key: String,
    /// The connector's address inside the tunnel, e.g. 100.96.1.1; same family as the hub's.
    pub tunnel_address: IpAddr,
    /// Port of the connector's forwarder. Default 4101; must match the connector's
    /// `forward_port`.
    #[serde(default = "default_forward_port")]
    pub forward_port: u16,
    /// What gateways may reach through this site. Default none: nothing is reachable.
    #[serde(default)]
    pub allowed_targets: Vec<Target>,
    /// The networks behind the site (CIDRs, e.g. 10.1.0.0/16). Sent to the connector with
    /// the targets: a target *name* is resolved at the site and dialled only at addresses
    /// inside one of these (loopback, link-local, unspecified and multicast addresses only
    /// when a network lies inside that range). Default none: names reach nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertised_cidrs: Vec<String>,
}

/// A validated site.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSite {
    /// Name.
    pub name: String,
    /// The connector's key.
    pub public_key: PublicKey,
    /// The connector's tunnel address.
    pub tunnel_address: IpAddr,
    /// The connector's forwarder port.
    pub forward_port: u16,
    /// The configured targets, as sent to the connector.
    pub targets: Vec<Target>,
    /// The compiled allow list.
    pub allow: AllowList,
    /// The site's networks (checked CIDRs), as sent to the connector.
    pub advertised_cidrs: Vec<String>,
}

/// A validated hub configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidHub {
    /// The configuration as written (for the fields that need no conversion).
    pub raw: HubConfig,
    /// The sites.
    pub sites: Vec<ValidSite>,
}

fn validate_targets(field: &str, targets: &[Target]) -> Result<AllowList, ConfigError> {
    AllowList::compile(targets)
        .map_err(|(i, e): (usize, AllowError)| invalid(format!("{field}[{i}]"), e.to_string()))
}

fn validate_port(field: &str, port: u16) -> Result<(), ConfigError> {
    if port == 0 {
        return Err(invalid(field, "port 0 is not a usable port"));
    }
    Ok(())
}

fn validate_tunnel_address(field: &str, ip: IpAddr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(invalid(
            field,
            format!("{ip} cannot be a tunnel address (unspecified, multicast or loopback)"),
        ));
    }
    Ok(())
}

/// Whether `name` is a DNS label, the form site names take.
pub fn is_site_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl HubConfig {
    /// Checks every field; returns the checked form.
    pub fn validate(&self) -> Result<ValidHub, ConfigError> {
        validate_port("listen_port", self.listen_port)?;
        validate_port("control_port", self.control_port)?;
        validate_tunnel_address("tunnel_address", self.tunnel_address)?;
        if self.private_key_file.as_os_str().is_empty() {
            return Err(invalid("private_key_file", "must name a file"));
        }
        if self.token_file.as_os_str().is_empty() {
            return Err(invalid("token_file", "must name a file"));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut addrs = HashSet::new();
        let mut sites = Vec::with_capacity(self.sites.len());
        for (i, site) in self.sites.iter().enumerate() {
            let f = |name: &str| format!("sites[{i}].{name}");
            if !is_site_name(&site.name) {
                return Err(invalid(
                    f("name"),
                    format!(
                        "{:?} is not a DNS label (1-63 lowercase letters, digits, '-')",
                        site.name
                    ),
                ));
            }
            if !names.insert(site.name.clone()) {
                return Err(invalid(
                    f("name"),
                    format!("duplicate site {:?}", site.name),
                ));
            }
            let key: PublicKey = site
                .public_key
                .parse()
                .map_err(|e: crate::keys::KeyError| invalid(f("public_key"), e.to_string()))?;
            if !keys.insert(key) {
                return Err(invalid(
                    f("public_key"),
                    format!("site {:?} uses a key another site already uses", site.name),
                ));
            }
            validate_tunnel_address(&f("tunnel_address"), site.tunnel_address)?;
            if site.tunnel_address.is_ipv4() != self.tunnel_address.is_ipv4() {
                return Err(invalid(
                    f("tunnel_address"),
                    "must be of the same address family as the hub's tunnel_address",
                ));
            }
            if site.tunnel_address == self.tunnel_address || !addrs.insert(site.tunnel_address) {
                return Err(invalid(
                    f("tunnel_address"),
                    format!(
                        "{} is already the hub's or another site's",
                        site.tunnel_address
                    ),
                ));
            }
            validate_port(&f("forward_port"), site.forward_port)?;
            let allow = validate_targets(&f("allowed_targets"), &site.allowed_targets)?;
            for (j, c) in site.advertised_cidrs.iter().enumerate() {
                c.parse::<Cidr>().map_err(|e: AllowError| {
                    invalid(format!("sites[{i}].advertised_cidrs[{j}]"), e.to_string())
                })?;
            }
            sites.push(ValidSite {
                name: site.name.clone(),
                public_key: key,
                tunnel_address: site.tunnel_address,
                forward_port: site.forward_port,
                targets: site.allowed_targets.clone(),
                allow,
                advertised_cidrs: site.advertised_cidrs.clone(),
            });
        }
        Ok(ValidHub {
            raw: self.clone(),
            sites,
        })
    }
}

/// The connector at a remote site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Every hub replica; the connector keeps a tunnel to each. At least one.
    pub hubs: Vec<HubPeerConfig>,
    /// File holding the site's private key (base64, mode 0600). Required.
    pub private_key_file: PathBuf,
    /// The site's address inside the tunnels (the hub's `sites[].tunnel_address`). Required.
    pub tunnel_address: IpAddr,
    /// The hubs' address inside the tunnels (the hub's `tunnel_address`), unless a hub entry
    /// overrides it. Required.
    pub hub_tunnel_address: IpAddr,
    /// Port of the forwarder on `tunnel_address`. Default 4101.
    #[serde(default = "default_forward_port")]
    pub forward_port: u16,
    /// Port of the hubs' control service. Default 4100.
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    /// Local UDP port; default none (an ephemeral port per hub, which also lets NAT and
    /// address changes pass: WireGuard follows the source address).
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// WireGuard persistent keepalive in seconds, keeping NAT mappings open. Default 25 (the
    /// WireGuard recommendation); 0 turns it off.
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive_secs: u16,
    /// How often the connector pings the hub's control service, in seconds. Default 10.
    #[serde(default = "default_control_interval")]
    pub control_interval_secs: u64,
    /// Silence from a hub for this long (seconds) starts a fresh handshake (a restarted hub
    /// has forgotten the session). Default 30; must exceed `control_interval_secs`.
    #[serde(default = "default_dead_peer")]
    pub dead_peer_timeout_secs: u64,
    /// Time allowed to open a connection to a target, in seconds. Default 10.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// An optional local ceiling: when set, a target must be allowed both by the hub and by
    /// this list. Default none (the hub's list alone decides, and before it has arrived,
    /// nothing is allowed).
    #[serde(default)]
    pub local_allowed_targets: Option<Vec<Target>>,
    /// Admin HTTP listener (/metrics, /healthz, /status). Default none.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
}

/// One hub replica, as the connector knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubPeerConfig {
    /// `host:port` of the replica's UDP endpoint; names are resolved at every reconnect.
    pub endpoint: String,
    /// The replica's public key (base64).
    pub public_key: String,
    /// The replica's tunnel address; default the connector's `hub_tunnel_address`.
    #[serde(default)]
    pub tunnel_address: Option<IpAddr>,
}

/// A validated hub peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidHubPeer {
    /// `host:port`.
    pub endpoint: String,
    /// Key.
    pub public_key: PublicKey,
    /// Tunnel address.
    pub tunnel_address: IpAddr,
}

/// A validated connector configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConnector {
    /// The configuration as written.
    pub raw: ConnectorConfig,
    /// The hubs.
    pub hubs: Vec<ValidHubPeer>,
    /// The local ceiling, if any.
    pub local_allow: Option<AllowList>,
    /// Persistent keepalive, if on.
    pub keepalive: Option<u16>,
    /// Control ping interval.
    pub control_interval: Duration,
    /// Dead-peer timeout.
    pub dead_peer_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

/// Splits `host:port` (IPv6 in brackets) without resolving.
pub fn split_endpoint(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

impl ConnectorConfig {
    /// Checks every field; returns the checked form.
    pub fn validate(&self) -> Result<ValidConnector, ConfigError> {
        if self.hubs.is_empty() {
            return Err(invalid("hubs", "at least one hub is needed"));
        }
        if self.private_key_file.as_os_str().is_empty() {
            return Err(invalid("private_key_file", "must name a file"));
        }
        validate_tunnel_address("tunnel_address", self.tunnel_address)?;
        validate_tunnel_address("hub_tunnel_address", self.hub_tunnel_address)?;
        validate_port("forward_port", self.forward_port)?;
        validate_port("control_port", self.control_port)?;
        if self.control_interval_secs == 0 {
            return Err(invalid("control_interval_secs", "must be at least 1"));
        }
        if self.dead_peer_timeout_secs <= self.control_interval_secs {
            return Err(invalid(
                "dead_peer_timeout_secs",
                "must exceed control_interval_secs, or a healthy hub would be declared dead",
            ));
        }
        if self.connect_timeout_secs == 0 {
            return Err(invalid("connect_timeout_secs", "must be at least 1"));
        }
        let mut keys = HashSet::new();
        let mut hubs = Vec::with_capacity(self.hubs.len());
        for (i, hub) in self.hubs.iter().enumerate() {
            if split_endpoint(&hub.endpoint).is_none() {
                return Err(invalid(
                    format!("hubs[{i}].endpoint"),
                    format!("{:?} is not host:port (IPv6 as [addr]:port)", hub.endpoint),
                ));
            }
            let key: PublicKey = hub.public_key.parse().map_err(|e: crate::keys::KeyError| {
                invalid(format!("hubs[{i}].public_key"), e.to_string())
            })?;
            if !keys.insert(key) {
                return Err(invalid(
                    format!("hubs[{i}].public_key"),
                    "listed twice; every hub replica has its own key",
                ));
            }
            let tunnel_address = hub.tunnel_address.unwrap_or(self.hub_tunnel_address);
            validate_tunnel_address(&format!("hubs[{i}].tunnel_address"), tunnel_address)?;
            if tunnel_address.is_ipv4() != self.tunnel_address.is_ipv4()
                || tunnel_address == self.tunnel_address
            {
                return Err(invalid(
                    format!("hubs[{i}].tunnel_address"),
                    "must differ from tunnel_address and be of the same address family",
                ));
            }
            hubs.push(ValidHubPeer {
                endpoint: hub.endpoint.clone(),
                public_key: key,
                tunnel_address,
            });
        }
        let local_allow = self
            .local_allowed_targets
            .as_deref()
            .map(|t| validate_targets("local_allowed_targets", t))
            .transpose()?;
        Ok(ValidConnector {
            raw: self.clone(),
            hubs,
            local_allow,
            keepalive: (self.persistent_keepalive_secs > 0)
                .then_some(self.persistent_keepalive_secs),
            control_interval: Duration::from_secs(self.control_interval_secs),
            dead_peer_timeout: Duration::from_secs(self.dead_peer_timeout_secs),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const KEY_B: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

    fn hub_yaml() -> String {
        format!(
            r#"
private_key_file: /keys/hub
tunnel_address: 100.96.0.1
token_file: /secrets/token
sites:
  - name: dc1
    public_key: "{KEY_A}"
    tunnel_address: 100.96.1.1
    allowed_targets:
      - {{cidr: 10.1.0.0/16, ports: [22, "8000-8100"], protocol: TCP}}
      - {{host: "*.corp.example", ports: [53], protocol: UDP}}
  - name: dc2
    public_key: "{KEY_B}"
    tunnel_address: 100.96.1.2
"#
        )
    }

    fn hub() -> HubConfig {
        serde_saphyr::from_str(&hub_yaml()).unwrap()
    }

    #[test]
    fn hub_yaml_parses_with_defaults() {
        let v = hub().validate().unwrap();
        assert_eq!(v.raw.listen_port, 51820);
        assert_eq!(v.raw.control_port, DEFAULT_CONTROL_PORT);
        assert_eq!(v.raw.stream_listen, default_stream_listen());
        assert_eq!(v.sites.len(), 2);
        assert_eq!(v.sites[0].allow.len(), 2);
        assert!(v.sites[1].allow.is_empty());
        assert_eq!(v.sites[1].forward_port, DEFAULT_FORWARD_PORT);
    }

    #[test]
    fn hub_json_parses_too() {
        let json = serde_json::to_string(&hub()).unwrap();
        let back: HubConfig = serde_saphyr::from_str(&json).unwrap();
        assert_eq!(back, hub());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let yaml = hub_yaml().replace("token_file:", "tokn_file: x\ntoken_file:");
        assert!(serde_saphyr::from_str::<HubConfig>(&yaml).is_err());
    }

    fn hub_err(edit: impl FnOnce(&mut HubConfig)) -> String {
        let mut c = hub();
        edit(&mut c);
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn hub_validation_names_the_field() {
        type Edit = Box<dyn FnOnce(&mut HubConfig)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.listen_port = 0), "invalid listen_port"),
            (
                Box::new(|c| c.tunnel_address = "0.0.0.0".parse().unwrap()),
                "invalid tunnel_address",
            ),
            (
                Box::new(|c| c.sites[1].name = "dc1".into()),
                "invalid sites[1].name: duplicate site",
            ),
            (
                Box::new(|c| c.sites[1].name = "DC2".into()),
                "invalid sites[1].name",
            ),
            (
                Box::new(|c| c.sites[1].public_key = KEY_A.into()),
                "invalid sites[1].public_key",
            ),
            (
                Box::new(|c| c.sites[0].public_key = "nope".into()),
                "invalid sites[0].public_key",
            ),
            (
                Box::new(|c| c.sites[1].tunnel_address = "100.96.1.1".parse().unwrap()),
                "invalid sites[1].tunnel_address",
            ),
            (
                Box::new(|c| c.sites[1].tunnel_address = "100.96.0.1".parse().unwrap()),
                "invalid sites[1].tunnel_address",
            ),
            (
                Box::new(|c| c.sites[1].tunnel_address = "fd00::1".parse().unwrap()),
                "same address family",
            ),
            (
                Box::new(|c| c.sites[0].allowed_targets[1].ports.clear()),
                "invalid sites[0].allowed_targets[1]",
            ),
            (
                Box::new(|c| c.token_file = PathBuf::new()),
                "invalid token_file",
            ),
        ];
        for (edit, want) in cases {
            let got = hub_err(edit);
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
    }

    fn connector() -> ConnectorConfig {
        serde_saphyr::from_str(&format!(
            r#"
hubs:
  - {{endpoint: "hub-0.example:51820", public_key: "{KEY_A}"}}
  - {{endpoint: "[fd00::1]:51820", public_key: "{KEY_B}", tunnel_address: 100.96.0.2}}
private_key_file: /keys/site
tunnel_address: 100.96.1.1
hub_tunnel_address: 100.96.0.1
"#
        ))
        .unwrap()
    }

    #[test]
    fn connector_yaml_parses_with_defaults() {
        let v = connector().validate().unwrap();
        assert_eq!(
            v.hubs[0].tunnel_address,
            "100.96.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            v.hubs[1].tunnel_address,
            "100.96.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(v.keepalive, Some(25));
        assert_eq!(v.raw.forward_port, DEFAULT_FORWARD_PORT);
        assert!(v.local_allow.is_none());
    }

    #[test]
    fn connector_validation_names_the_field() {
        let err = |edit: &dyn Fn(&mut ConnectorConfig)| {
            let mut c = connector();
            edit(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(err(&|c| c.hubs.clear()).contains("invalid hubs"));
        assert!(err(&|c| c.hubs[0].endpoint = "hub-0".into()).contains("hubs[0].endpoint"));
        assert!(err(&|c| c.hubs[0].endpoint = "fd00::1:51820".into()).contains("hubs[0].endpoint"));
        assert!(err(&|c| c.hubs[1].public_key = KEY_A.into()).contains("hubs[1].public_key"));
        assert!(
            err(&|c| c.hubs[1].tunnel_address = Some("100.96.1.1".parse().unwrap()))
                .contains("hubs[1].tunnel_address")
        );
        assert!(err(&|c| c.dead_peer_timeout_secs = 5).contains("dead_peer_timeout_secs"));
        assert!(err(&|c| c.forward_port = 0).contains("forward_port"));
        assert!(
            err(&|c| c.local_allowed_targets = Some(vec![Target {
                cidr: None,
                host: None,
                ports: vec![],
                protocol: crate::allow::Protocol::Tcp
            }]))
            .contains("local_allowed_targets[0]")
        );
    }

    #[test]
    fn endpoints_split() {
        assert_eq!(split_endpoint("a.b:1"), Some(("a.b", 1)));
        assert_eq!(split_endpoint("[::1]:51820"), Some(("::1", 51820)));
        assert_eq!(split_endpoint("::1:51820"), None);
        assert_eq!(split_endpoint("a:0"), None);
        assert_eq!(split_endpoint(":5"), None);
    }
}
