//! The cluster's own pod and Service networks, and which EndpointSlice addresses a gateway
//! may be sent to (issue 14, item 12).
//!
//! ```text
//!  Nodes (spec.podCIDRs only; everything else dropped before caching)  \
//!  ServiceCIDRs (spec.cidrs)                                            } -> ClusterNetworks
//!  --cluster-networks (what a CNI with its own IPAM hands out)          /
//!
//!  EndpointSlice written by the endpointslice controller  -> its addresses (pods the
//!                                                            Service's selector picked, in
//!                                                            the Service's own namespace)
//!  any other EndpointSlice (selector-less Service,         -> only addresses outside the
//!  mirrored Endpoints)                                        cluster networks
//! ```
//!
//! Why: a gateway is admitted by the NetworkPolicy of every tenant it serves. Whoever writes
//! the EndpointSlices of a selector-less Service in tenant A's namespace could otherwise
//! point a gateway shared with tenant B at B's pods or Services and reach them past B's
//! isolation. A selector-less Service exists to reach something outside the cluster (a
//! database VM, a partner's address), so refusing cluster addresses there costs nothing
//! legitimate. Slices of a Service with a selector are the endpointslice controller's: its
//! addresses are the pods the selector picked, which can only be pods of that namespace.
//! Which writer a slice has is read from its `endpointslice.kubernetes.io/managed-by` label,
//! which whoever may write EndpointSlices can also set: since CVE-2021-25740 Kubernetes'
//! default `admin` and `edit` roles grant no EndpointSlice writes, and docs/security.md says
//! not to grant them to tenants. Link-local, loopback and unspecified addresses are refused
//! from every slice ([`super::endpoint_allowed`]).

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::reflector::Store;
use rustronaut_contract::cidr::Cidr;
use std::net::IpAddr;
use std::sync::Arc;

/// Value of `endpointslice.kubernetes.io/managed-by` on the slices the endpointslice
/// controller writes for Services with a selector.
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The label naming a slice's writer.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Where the cluster's pods and Services live, as far as the operator can know it.
#[derive(Clone)]
pub struct ClusterNetworks {
    /// Nodes, reduced to their `spec.podCIDRs` (host-local IPAM, kube-controller-manager's
    /// `--allocate-node-cidrs`, most managed clusters).
    pub nodes: Store<Node>,
    /// The API server's Service networks (networking.k8s.io/v1, served since 1.33).
    pub service_cidrs: Store<ServiceCIDR>,
    /// `--cluster-networks`: what neither says (a CNI's own pools).
    pub configured: Arc<Vec<Cidr>>,
}

impl ClusterNetworks {
    /// Every known cluster network, in no particular order (malformed entries skipped: the
    /// API server validates both fields).
    pub fn cidrs(&self) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = self.configured.iter().copied().collect();
        for n in self.nodes.state() {
            let spec = n.spec.as_ref();
            let cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
            let single = spec.and_then(|s| s.pod_cidr.clone());
            out.extend(
                cidrs
                    .iter()
                    .chain(single.iter())
                    .filter_map(|c| c.parse::<Cidr>().ok()),
            );
        }
        for s in self.service_cidrs.state() {
            let cidrs = s.spec.as_ref().and_then(|s| s.cidrs.clone());
            out.extend(
                cidrs
                    .iter()
                    .flatten()
                    .filter_map(|c| c.parse::<Cidr>().ok()),
            );
        }
        out
    }
}

/// Whether a slice with `managed_by` (its label) may send a gateway to `ip`, given the
/// cluster's networks.
pub fn slice_address_allowed(managed_by: Option<&str>, ip: IpAddr, networks: &[Cidr]) -> bool {
    if !super::endpoint_allowed(ip) {
        return false;
    }
    managed_by == Some(ENDPOINTSLICE_CONTROLLER) || !networks.iter().any(|c| c.contains(ip))
}

/// `--cluster-networks`: comma-separated CIDRs.
pub fn parse(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.parse::<Cidr>().map_err(|e| format!("{c:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_endpointslice_controllers_slices_may_point_into_the_cluster() {
        let nets = parse("10.244.0.0/16, 10.96.0.0/12,fd00:10::/64").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ctl = Some(ENDPOINTSLICE_CONTROLLER);
        // A pod (the selector picked it): fine from the controller's slice only.
        assert!(slice_address_allowed(ctl, ip("10.244.3.7"), &nets));
        assert!(!slice_address_allowed(None, ip("10.244.3.7"), &nets));
        assert!(!slice_address_allowed(
            Some("endpointslicemirroring-controller.k8s.io"),
            ip("10.244.3.7"),
            &nets
        ));
        // Another Service's ClusterIP, IPv6 pods, the same as IPv4-mapped IPv6.
        assert!(!slice_address_allowed(None, ip("10.100.0.1"), &nets));
        assert!(!slice_address_allowed(None, ip("fd00:10::5"), &nets));
        assert!(!slice_address_allowed(
            Some("someone"),
            ip("::ffff:10.244.0.9"),
            &nets
        ));
        // Outside the cluster: what a selector-less Service is for.
        assert!(slice_address_allowed(None, ip("192.0.2.10"), &nets));
        assert!(slice_address_allowed(ctl, ip("192.0.2.10"), &nets));
        // Never the metadata service or loopback, whoever wrote the slice.
        assert!(!slice_address_allowed(ctl, ip("169.254.169.254"), &nets));
        assert!(!slice_address_allowed(None, ip("127.0.0.1"), &[]));
    }

    #[test]
    fn the_flag_takes_a_comma_separated_list_and_names_a_bad_entry() {
        assert_eq!(parse("").unwrap(), Vec::new());
        assert_eq!(parse("10.0.0.0/8").unwrap().len(), 1);
        let e = parse("10.0.0.0/8,10.1.0.0").unwrap_err();
        assert!(e.contains("10.1.0.0"), "{e}");
    }
}
