//! The end-to-end scenario shared by `make demo` and `e2e/tests/end_to_end.rs`: the
//! manifests of `e2e/manifests/demo.yaml` (run as real pods on the real node), and helpers
//! for tests that still run a binary on this machine as a pod would (the binaries next to the
//! test binary, a non-loopback address, a kubeconfig that impersonates a ServiceAccount).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The scenario's manifests.
pub const DEMO_MANIFESTS: &str = include_str!("../manifests/demo.yaml");
/// The sidecar part of the scenario: a sidecar Resource, its Policy, its Service and the
/// callers' ServiceAccounts (applied after [`DEMO_MANIFESTS`], the chart's sidecar webhook on).
pub const SIDECAR_MANIFESTS: &str = include_str!("../manifests/sidecar.yaml");
/// The sidecar part's workload, applied once its Resource is Programmed.
pub const SIDECAR_WORKLOAD: &str = include_str!("../manifests/sidecar-workload.yaml");
/// Port of the scenario's gateway listener.
pub const LISTENER_PORT: u16 = 18080;
/// Port of the scenario's upstream pod.
pub const UPSTREAM_PORT: u16 = 18081;
/// Host name of the scenario's Resource.
pub const HOST: &str = "hello.demo.localhost";

/// A non-loopback IPv4 address of this machine, the one the default route leaves from (no
/// packet is sent: a UDP socket is only connected). EndpointSlices refuse loopback addresses.
pub fn host_ip() -> Result<Ipv4Addr, String> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    probe
        .connect("192.0.2.1:9")
        .or_else(|_| probe.connect("10.255.255.255:9"))
        .map_err(|e| format!("no route to find this machine's address: {e}"))?;
    match probe.local_addr().map_err(|e| e.to_string())?.ip() {
        std::net::IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Ok(v4),
        other => Err(format!(
            "this machine has no usable IPv4 address (got {other})"
        )),
    }
}

/// A binary of this workspace next to the running executable (`target/<profile>/` or its
/// `deps/` directory), where `cargo build --workspace --bins` puts it.
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found next to {}: run `cargo build --workspace --bins`",
                exe.display()
            )
        })
}

/// Writes to `out` the kubeconfig `admin` with an impersonated ServiceAccount, so a process
/// started with it has exactly that account's permissions, as in a pod.
pub fn impersonating_kubeconfig(
    admin: &Path,
    namespace: &str,
    service_account: &str,
    out: &Path,
) -> Result<(), String> {
    let text = std::fs::read(admin).map_err(|e| format!("{}: {e}", admin.display()))?;
    let mut kc: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", admin.display()))?;
    let user = kc
        .pointer_mut("/users/0/user")
        .ok_or("kubeconfig has no user")?;
    user["as"] = serde_json::json!(format!(
        "system:serviceaccount:{namespace}:{service_account}"
    ));
    user["as-groups"] = serde_json::json!([
        "system:serviceaccounts",
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated"
    ]);
    std::fs::write(out, serde_json::to_vec_pretty(&kc).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manifests_name_the_ports_and_host_the_constants_say() {
        let m = super::DEMO_MANIFESTS;
        assert!(m.contains(&format!("port: {}", super::LISTENER_PORT)));
        assert!(m.contains(&format!("containerPort: {}", super::UPSTREAM_PORT)));
        assert!(m.contains(&format!("targetPort: {}", super::UPSTREAM_PORT)));
        assert!(m.contains(super::HOST));
    }
}
