//! How the operator deploys a gateway and how the gateway finds its configuration: the names,
//! keys, flags and environment both sides must agree on. The operator writes them into the
//! objects and the pod template it generates; the gateway binary reads them (its flag names
//! and the snapshot key come from here too), so a rename here changes both sides at once.
//!
//! ```text
//!  operator --apply--> Secret    <gw>-snapshot  {snapshot.json = Snapshot::to_json()}
//!                                 annotation rustronaut.io/config-version = content hash
//!  gateway pod:  rustronaut-gateway --config-from <ns>/<gw>-snapshot
//!                                   --report-status <ns>/<gw>-status
//!                                   --admin-listen 0.0.0.0:9901   env POD_NAME (Downward API)
//!  gateway pod --apply--> ConfigMap <gw>-status {data[<pod name>] = version loaded}
//!  operator reads the ConfigMap for the Gateway's status (Ready, configVersion)
//! ```
//!
//! A sidecar (injected by the operator's webhook) is the same binary with `--config-from
//! <ns>/<snapshot Secret of its Resource>` and no `--report-status`; the name of that Secret
//! is the operator's alone (`rustronaut_crds::resource::sidecar_names::snapshot`).
//!
//! Only constants and string formatting: no dependency is added to either side.

/// Key of the compiled snapshot (JSON, [`crate::Snapshot::to_json`]) in the snapshot Secret.
pub const SNAPSHOT_KEY: &str = "snapshot.json";

/// Annotation on a snapshot Secret: the snapshot's content hash
/// ([`crate::Snapshot::content_hash`]), so the operator can tell the version it wrote without
/// parsing the Secret; the gateway pods report the same hash once loaded.
pub const CONFIG_VERSION_ANNOTATION: &str = "rustronaut.io/config-version";

/// The Secret holding Gateway `gateway`'s compiled snapshot (in the Gateway's namespace).
pub fn snapshot_secret(gateway: &str) -> String {
    format!("{gateway}-snapshot")
}

/// The ConfigMap Gateway `gateway`'s pods report the version they loaded into (in the
/// Gateway's namespace), one entry per pod: `data[<pod name>] = <config version>`.
pub fn status_config_map(gateway: &str) -> String {
    format!("{gateway}-status")
}

/// The gateway binary (the container's command).
pub const GATEWAY_BINARY: &str = "rustronaut-gateway";

/// Port of the gateway's admin listener (/healthz, /readyz, /metrics) in a Gateway's pods:
/// the gateway's default `--admin-listen` and what the operator's probes and Service use.
pub const ADMIN_PORT: u16 = 9901;

/// Environment variable with the pod's name (the Downward API's `metadata.name`): the key of
/// the pod's entry in the status ConfigMap.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// The gateway's command-line flags the operator passes, as written on a command line. The
/// gateway declares them with [`flags::long`] of these, so they cannot drift apart.
pub mod flags {
    /// `NAMESPACE/NAME` of the Secret holding the snapshot under [`super::SNAPSHOT_KEY`],
    /// watched through the Kubernetes API.
    pub const CONFIG_FROM: &str = "--config-from";
    /// `NAMESPACE/NAME` of the ConfigMap the pod reports the version it loaded into.
    pub const REPORT_STATUS: &str = "--report-status";
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    pub const ADMIN_LISTEN: &str = "--admin-listen";
    /// Worker threads per listener (a sidecar runs one).
    pub const THREADS: &str = "--threads";
    /// `host:port` of the tunnel hub's stream Service (Gateways with `spec.tunnel`).
    pub const TUNNEL_STREAM: &str = "--tunnel-stream";
    /// File holding the token the gateway presents to the tunnel hub.
    pub const TUNNEL_TOKEN_FILE: &str = "--tunnel-token-file";
    /// Seconds the listeners keep accepting after SIGTERM (a sidecar's is 0).
    pub const DRAIN_DELAY_SECONDS: &str = "--drain-delay-seconds";

    /// The flag's name without its leading `--`, as a command-line parser declares it.
    pub const fn long(flag: &'static str) -> &'static str {
        match flag.as_bytes() {
            [b'-', b'-', rest @ ..] => match std::str::from_utf8(rest) {
                Ok(s) => s,
                Err(_) => flag,
            },
            _ => flag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags_are_the_wire_contract() {
        assert_eq!(snapshot_secret("edge"), "edge-snapshot");
        assert_eq!(status_config_map("edge"), "edge-status");
        assert_eq!(SNAPSHOT_KEY, "snapshot.json");
        assert_eq!(CONFIG_VERSION_ANNOTATION, "rustronaut.io/config-version");
        assert_eq!(flags::long(flags::CONFIG_FROM), "config-from");
        assert_eq!(flags::long(flags::REPORT_STATUS), "report-status");
        assert_eq!(flags::long(flags::TUNNEL_TOKEN_FILE), "tunnel-token-file");
        assert_eq!(
            flags::long(flags::DRAIN_DELAY_SECONDS),
            "drain-delay-seconds"
        );
    }
}
