//! Condition types and reasons, as constants shared by the operator (which writes them), the
//! console (which shows them) and tests (which assert on them). Every kind has `Ready`, the
//! summary Argo CD health checks read, with `observedGeneration`; and while Ready is False,
//! one of kstatus's two "abnormal-true" conditions ([`progress`]): `Reconciling` (it will
//! get there by itself: Flux and `kubectl wait` keep waiting) or `Stalled` (it cannot
//! without a change by a person: Flux reports the failure at once instead of timing out).

/// Condition types.
pub mod types {
    /// Summary: True when every other condition is in its good state.
    pub const READY: &str = "Ready";
    /// (kstatus) Present and True only while Ready is False for a reason that resolves by
    /// itself (pods starting, a snapshot being written).
    pub const RECONCILING: &str = "Reconciling";
    /// (kstatus) Present and True only while Ready is False for a reason that needs a change
    /// of this or another object (an invalid spec, a missing reference, a quota).
    pub const STALLED: &str = "Stalled";
    /// The object is valid and its claims (namespaces, domains, hostnames) are granted.
    pub const ACCEPTED: &str = "Accepted";
    /// Every reference (Secrets, Services, sites, identity providers) resolves.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The object is part of the configuration the gateways run.
    pub const PROGRAMMED: &str = "Programmed";
    /// (Resource) At least one enforcing Allow policy can admit a request.
    pub const REACHABLE: &str = "Reachable";
    /// (Policy) Every embedded test gives the expected decision.
    pub const TESTS_PASSED: &str = "TestsPassed";
    /// (Gateway listener) Another listener or Resource claims the same name.
    pub const CONFLICTED: &str = "Conflicted";
}

/// Condition reasons (CamelCase, stable: alerts and dashboards match on them).
pub mod reasons {
    /// Everything is as desired.
    pub const READY: &str = "Ready";
    /// Accepted.
    pub const ACCEPTED: &str = "Accepted";
    /// All references resolved.
    pub const RESOLVED: &str = "ResolvedRefs";
    /// Programmed into the gateways.
    pub const PROGRAMMED: &str = "Programmed";
    /// Waiting for something that is progressing (pods starting, config rolling out).
    pub const PENDING: &str = "Pending";
    /// The spec is invalid in a way the CRD schema cannot express.
    pub const INVALID: &str = "Invalid";
    /// A namespace is already claimed by an older Tenant.
    pub const NAMESPACE_CLAIMED: &str = "NamespaceClaimed";
    /// A domain is already claimed by an older Tenant.
    pub const DOMAIN_CLAIMED: &str = "DomainClaimed";
    /// A referenced Secret does not exist or lacks the key.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A JWKS endpoint could not be fetched.
    pub const JWKS_UNREACHABLE: &str = "JWKSUnreachable";
    /// The Resource's namespace belongs to no Tenant.
    pub const NO_TENANT: &str = "NoTenant";
    /// The Gateway does not admit this tenant.
    pub const NOT_ALLOWED_BY_GATEWAY: &str = "NotAllowedByGateway";
    /// A hostname is outside the tenant's domains.
    pub const HOSTNAME_OUTSIDE_TENANT: &str = "HostnameOutsideTenant";
    /// Another Resource already serves this hostname or port on the Gateway.
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    /// The tenant's quota is used up.
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    /// A referenced Gateway does not exist.
    pub const GATEWAY_NOT_FOUND: &str = "GatewayNotFound";
    /// A referenced Service does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// A reference crosses a boundary it may not cross.
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// A referenced site does not exist on the Gateway.
    pub const SITE_NOT_FOUND: &str = "SiteNotFound";
    /// The site has no live tunnel.
    pub const SITE_DISCONNECTED: &str = "SiteDisconnected";
    /// No enforcing Allow policy selects the Resource: default deny refuses everything.
    pub const NO_ALLOW_POLICY: &str = "NoAllowPolicy";
    /// A Policy target does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// A Policy uses HTTP fields (methods, paths) on a TCP/UDP target.
    pub const HTTP_FIELDS_ON_L4_TARGET: &str = "HTTPFieldsOnL4Target";
    /// A Policy names an identity provider the tenant does not have.
    pub const IDENTITY_PROVIDER_NOT_FOUND: &str = "IdentityProviderNotFound";
    /// An embedded test gave the wrong decision.
    pub const TEST_FAILED: &str = "TestFailed";
    /// Every embedded test passed.
    pub const TESTS_PASSED: &str = "TestsPassed";
    /// A listener's certificate Secret is missing or invalid.
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    /// cert-manager has not issued a listener's certificate yet (`tls.issuerRef`).
    pub const CERTIFICATE_PENDING: &str = "CertificatePending";
    /// The gateway Service has no address yet.
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    /// Parameters conflict in a way the schema cannot express.
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    /// (Sidecar Resource) pods the selector selects run without the Resource's current
    /// sidecar.
    pub const UNPROTECTED_PODS: &str = "UnprotectedPods";
    /// (Sidecar Resource) another sidecar Resource selects some of the same pods.
    pub const SELECTOR_OVERLAP: &str = "SelectorOverlap";
    /// (Sidecar Resource) `workload.selector` cannot be evaluated (an unknown operator, or
    /// values where the operator takes none).
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
}

/// What a False `Ready` with `reason` means for kstatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Ready: neither `Reconciling` nor `Stalled`.
    Done,
    /// It gets there without anybody's help: `Reconciling=True`.
    Reconciling,
    /// It cannot until someone changes something: `Stalled=True`.
    Stalled,
}

/// Reasons of a False `Ready` that resolve by themselves: waiting for pods or a rollout, a
/// load balancer's address, a site's tunnel (the connector redials), a JWKS endpoint (it is
/// fetched again), a certificate cert-manager is issuing. Every other reason is Stalled: what it names (an invalid field, a missing
/// Secret, Service or target, a claim held by an older Tenant, a quota) stays as it is until
/// a person changes it. A missing object that a GitOps tool is about to create counts as
/// Stalled too: kstatus reads it as Failed until the object appears, then Current.
pub const TRANSIENT: &[&str] = &[
    reasons::PENDING,
    reasons::ADDRESS_NOT_ASSIGNED,
    reasons::SITE_DISCONNECTED,
    reasons::JWKS_UNREACHABLE,
    reasons::CERTIFICATE_PENDING,
];

/// kstatus's reading of a `Ready` condition with `ready` status and `reason`.
pub fn progress(ready: bool, reason: &str) -> Progress {
    if ready {
        Progress::Done
    } else if TRANSIENT.contains(&reason) {
        Progress::Reconciling
    } else {
        Progress::Stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_reconciles_and_what_needs_a_person_stalls() {
        assert_eq!(progress(true, reasons::READY), Progress::Done);
        for r in [
            reasons::PENDING,
            reasons::ADDRESS_NOT_ASSIGNED,
            reasons::SITE_DISCONNECTED,
            reasons::CERTIFICATE_PENDING,
        ] {
            assert_eq!(progress(false, r), Progress::Reconciling, "{r}");
        }
        for r in [
            reasons::TARGET_NOT_FOUND,
            reasons::QUOTA_EXCEEDED,
            reasons::INVALID,
            reasons::SECRET_NOT_FOUND,
            reasons::NO_ALLOW_POLICY,
            "SomeReasonAddedLater",
        ] {
            assert_eq!(progress(false, r), Progress::Stalled, "{r}");
        }
    }
}
