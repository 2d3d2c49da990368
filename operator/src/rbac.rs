//! The operator's own RBAC, as code: what the Helm chart ships and what the integration
//! tests run the controllers under (impersonating the operator's ServiceAccount), so a
//! permission the code needs but the RBAC lacks fails a test instead of a user's cluster.
//!
//! Cluster-wide because Gateways, Resources and the Secrets they name live in any
//! namespace. The operator can write Secrets and RBAC objects, so its ServiceAccount is as
//! sensitive as any controller's; it never gets `delete` on what it does not prune, nor
//! `escalate`/`bind`: the Roles it writes grant only permissions it holds itself.

use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use serde_json::json;

/// Name of the ClusterRole (and of the operator's ServiceAccount).
pub const NAME: &str = "rustronaut-operator";
/// Name of the sidecar injection webhook's MutatingWebhookConfiguration (the chart's), the
/// one object of its kind the operator may touch: the leader keeps its caBundle current.
pub const WEBHOOK_CONFIG: &str = "rustronaut-sidecar-injector";
/// Name of the ClusterRole a Tenant's admins are bound to in each namespace it holds.
pub const TENANT_ADMIN: &str = "rustronaut-tenant-admin";

/// Everything the controllers read and write.
pub fn cluster_role() -> ClusterRole {
    let read = ["get", "list", "watch"];
    let write = ["get", "list", "watch", "create", "patch"];
    let prune = ["get", "create", "patch", "delete"];
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": NAME},
        "rules": [
            {"apiGroups": ["rustronaut.io"],
             "resources": ["tenants", "resources", "policies", "gateways"], "verbs": read},
            {"apiGroups": ["rustronaut.io"],
             "resources": ["gateways/status", "tenants/status", "resources/status",
                           "policies/status"],
             "verbs": ["get", "patch"]},
            // Namespaces: read, and the Tenant label (patch only: never create one).
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "patch"]},
            // Secrets: TLS and identity-provider material (read), snapshots, tunnel keys,
            // hub configuration and session keys (write). Secrets and Services are also
            // deleted: the tunnel hub's, when the spec no longer wants them (fewer replicas or
            // sites, no tunnel), and session keys no admitted OIDC tenant wants.
            {"apiGroups": [""], "resources": ["configmaps", "serviceaccounts"], "verbs": write},
            {"apiGroups": [""], "resources": ["secrets", "services"],
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            // Pods: their metadata, to count which pods a sidecar Resource protects.
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            // Where the cluster's pods and Services live (Nodes' podCIDRs, ServiceCIDRs): an
            // EndpointSlice nobody's controller wrote may not point there.
            {"apiGroups": [""], "resources": ["nodes"], "verbs": read},
            {"apiGroups": ["networking.k8s.io"], "resources": ["servicecidrs"], "verbs": read},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": write},
            // The tunnel hub (watched as an owned kind; deleted when spec.tunnel goes).
            {"apiGroups": ["apps"], "resources": ["statefulsets"],
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            // Roles: the gateways' and the sidecars' (deleted when a Resource stops being a
            // sidecar Resource).
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"],
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            // RoleBindings: the gateways' and the tenant admins' (pruned when a Tenant lets a
            // namespace go).
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            // Binding the tenant-admin ClusterRole without holding what it grants.
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
             "verbs": ["bind"], "resourceNames": [TENANT_ADMIN]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": prune},
            {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
             "verbs": prune},
            // cert-manager Certificates for listeners with tls.issuerRef (listed and deleted
            // when a listener stops asking for one; cert-manager itself writes the Secret).
            {"apiGroups": ["cert-manager.io"], "resources": ["certificates"],
             "verbs": ["get", "list", "create", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"],
             "verbs": ["create", "patch"]},
            // The injection webhook's caBundle (src/webhook/certs.rs): that one object, read
            // and patched, never created or deleted (the chart owns it). Its CA and serving
            // certificate Secret is covered by the Secrets rule above.
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["mutatingwebhookconfigurations"],
             "verbs": ["get", "patch"], "resourceNames": [WEBHOOK_CONFIG]},
        ],
    }))
    .expect("a ClusterRole")
}

/// What a Tenant's admins may do in the namespaces it holds: manage Resources and Policies
/// and read their status (the Tenant controller binds it; the chart ships it).
pub fn tenant_admin_cluster_role() -> ClusterRole {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": TENANT_ADMIN},
        "rules": [
            {"apiGroups": ["rustronaut.io"], "resources": ["resources", "policies"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["rustronaut.io"], "resources": ["resources/status", "policies/status"],
             "verbs": ["get"]},
        ],
    }))
    .expect("a ClusterRole")
}

/// Leader election, in the operator's own namespace only.
pub fn lease_role(namespace: &str) -> Role {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": NAME, "namespace": namespace},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": ["get", "create", "update"]}],
    }))
    .expect("a Role")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds() {
        assert_eq!(cluster_role().rules.unwrap().len(), 20);
        let admin = tenant_admin_cluster_role();
        assert_eq!(admin.metadata.name.as_deref(), Some(TENANT_ADMIN));
        assert_eq!(lease_role("ns").metadata.namespace.as_deref(), Some("ns"));
    }
}
