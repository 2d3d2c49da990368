//! The `build` step of the Gateway reconciler: pure functions from a Gateway (and its compiled
//! snapshot) to the whole objects the operator server-side applies. No client, no I/O, so each
//! is tested as "Gateway in, whole JSON out".
//!
//! Every generated object lives in the Gateway's namespace, carries an ownerReference to the
//! Gateway (controller=true, so Kubernetes garbage-collects it with the Gateway) and the labels
//! of [`crate::meta::labels`]. The names are a contract with the gateway binary (see [`names`]).

use super::tunnel;
use crate::context::Settings;
use crate::meta::labels;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use rustronaut_contract::deploy::{self, flags};
use rustronaut_contract::snapshot::Snapshot;
use rustronaut_crds::Gateway;
use rustronaut_crds::gateway::{ListenerProtocol, ServiceType};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Port of the gateway's admin server (/healthz, /readyz, /metrics).
pub use rustronaut_contract::deploy::ADMIN_PORT;
/// Annotation on the snapshot Secret: the snapshot's content hash, so status can report the
/// version being served without parsing the Secret.
pub use rustronaut_contract::deploy::CONFIG_VERSION_ANNOTATION;
/// Key of the snapshot in the snapshot Secret.
pub use rustronaut_contract::deploy::SNAPSHOT_KEY;
/// The user and group the gateway runs as (distroless "nonroot").
pub const RUN_AS: i64 = 65532;
/// Volume of the gateway pods holding the tunnel token (with `spec.tunnel`).
pub const TUNNEL_TOKEN_VOLUME: &str = "tunnel-token";

/// Names of the generated objects: a contract with the gateway binary and its RBAC.
pub mod names {
    /// Secret holding the compiled snapshot.
    pub use rustronaut_contract::deploy::snapshot_secret as snapshot;
    /// ConfigMap the gateway pods report their loaded version into.
    pub use rustronaut_contract::deploy::status_config_map as status;
    /// ServiceAccount, Role and RoleBinding of the gateway pods.
    pub fn account(gw: &str) -> String {
        format!("{gw}-gateway")
    }
}

pub(crate) fn typed<T: DeserializeOwned>(v: Value) -> T {
    // The JSON is built from constants and validated CR fields; a mismatch is a bug in this
    // module, which the whole-object tests catch.
    serde_json::from_value(v).expect("generated object matches its Kubernetes type")
}

fn selector_labels(gw: &Gateway) -> Value {
    json!({labels::NAME: labels::GATEWAY, labels::INSTANCE: gw.name_any()})
}

fn metadata(gw: &Gateway, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": gw.namespace().unwrap_or_default(),
        "labels": {
            labels::NAME: labels::GATEWAY,
            labels::INSTANCE: gw.name_any(),
            labels::MANAGED_BY: labels::OPERATOR,
        },
        "ownerReferences": gw.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
    })
}

/// The Secret holding `snapshot` (`snapshot.json` = [`Snapshot::to_json`]).
pub fn snapshot_secret(gw: &Gateway, snapshot: &Snapshot) -> Secret {
    let mut s: Secret = typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": metadata(gw, &names::snapshot(&gw.name_any())),
        "type": "Opaque",
    }));
    s.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_VERSION_ANNOTATION.into(), snapshot.content_hash());
    s.data = Some(BTreeMap::from([(
        SNAPSHOT_KEY.to_string(),
        ByteString(snapshot.to_json()),
    )]));
    s
}

/// The ConfigMap pods report into. The operator applies it without `data`, so it owns no
/// entry and never removes the pods' (each pod applies its own entry as its own manager).
pub fn status_config_map(gw: &Gateway) -> ConfigMap {
    typed(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(gw, &names::status(&gw.name_any())),
    }))
}

/// The gateway pods' ServiceAccount.
pub fn service_account(gw: &Gateway) -> ServiceAccount {
    typed(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": metadata(gw, &names::account(&gw.name_any())),
    }))
}

/// The gateway pods' Role: read their own snapshot Secret, report into their own status
/// ConfigMap, nothing else. `list`/`watch` with resourceNames are honoured only for requests
/// with a `metadata.name` field selector, which is how the gateway watches.
pub fn role(gw: &Gateway) -> Role {
    let name = gw.name_any();
    typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": metadata(gw, &names::account(&name)),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"],
             "resourceNames": [names::snapshot(&name)]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
             "resourceNames": [names::status(&name)]},
        ],
    }))
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(gw: &Gateway) -> RoleBinding {
    let account = names::account(&gw.name_any());
    typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": metadata(gw, &account),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account,
                      "namespace": gw.namespace().unwrap_or_default()}],
    }))
}

fn transport(p: ListenerProtocol) -> &'static str {
    if p == ListenerProtocol::Udp {
        "UDP"
    } else {
        "TCP"
    }
}

/// (port, TCP|UDP, first listener name) of the listeners, one per distinct port and transport
/// (HTTPS listeners that differ only in hostname share a port).
fn listener_ports(gw: &Gateway) -> Vec<(i32, &'static str, String)> {
    let mut out: Vec<(i32, &'static str, String)> = Vec::new();
    for l in &gw.spec.listeners {
        let proto = transport(l.protocol);
        if !out.iter().any(|(p, t, _)| *p == l.port && *t == proto) {
            out.push((l.port, proto, l.name.clone()));
        }
    }
    out
}

/// Replicas of the Deployment, or None when an HPA decides.
fn replicas(gw: &Gateway) -> Option<i32> {
    gw.spec.autoscaling.is_none().then_some(gw.spec.replicas)
}

/// An HTTP probe of `path` on an admin `port`, as the gateway's and the hub's pods use it
/// (liveness on `/healthz`, readiness on `/readyz`, which fails while a process drains).
pub(crate) fn http_probe(path: &str, port: u16) -> Value {
    json!({
        "httpGet": {"path": path, "port": port},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    })
}

/// The gateway container's security context, re-applied after any podTemplate override.
pub(crate) fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The gateway Deployment, with `spec.podTemplate` merged in and the security settings and
/// the contract with the binary (command, args, POD_NAME) re-applied after the merge.
pub fn deployment(gw: &Gateway, settings: &Settings) -> Deployment {
    let name = gw.name_any();
    let mut ports: Vec<Value> = listener_ports(gw)
        .into_iter()
        .map(|(port, proto, _)| json!({"containerPort": port, "protocol": proto}))
        .collect();
    ports.push(json!({"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}));
    let probe = |path: &str| http_probe(path, ADMIN_PORT);
    let generated = json!({
        "metadata": {
            "labels": {
                labels::NAME: labels::GATEWAY,
                labels::INSTANCE: name,
                labels::MANAGED_BY: labels::OPERATOR,
            }
        },
        "spec": {
            "serviceAccountName": names::account(&name),
            "containers": [{
                "name": "gateway",
                "image": settings.image,
                "ports": ports,
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "1", "memory": "512Mi"},
                },
                "livenessProbe": probe("/healthz"),
                "readinessProbe": probe("/readyz"),
            }],
        }
    });
    let mut template = match &gw.spec.pod_template {
        Some(overlay) => merge(generated, overlay),
        None => generated,
    };
    enforce(&mut template, gw, settings);
    let mut spec = json!({
        "selector": {"matchLabels": selector_labels(gw)},
        "template": template,
    });
    if let Some(r) = replicas(gw) {
        spec["replicas"] = json!(r);
    }
    typed(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(gw, &name),
        "spec": spec,
    }))
}

/// Merges `overlay` into `base`: objects key by key (`null` deletes), lists of objects that
/// all have a `name` (containers, volumes, env) item by name, other lists replaced. This is
/// the part of Kubernetes' strategic merge that pod templates need, without its patch
/// directives; a JSON merge patch alone would replace the whole containers list.
pub fn merge(base: Value, overlay: &Value) -> Value {
    match (base, overlay) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    let merged = match b.remove(k) {
                        Some(old) => merge(old, v),
                        None => v.clone(),
                    };
                    b.insert(k.clone(), merged);
                }
            }
            Value::Object(b)
        }
        (Value::Array(mut b), Value::Array(o)) if named(&b) && named(o) => {
            for item in o {
                let pos = b.iter().position(|x| x["name"] == item["name"]);
                match pos {
                    Some(i) => {
                        let old = std::mem::take(&mut b[i]);
                        b[i] = merge(old, item);
                    }
                    None => b.push(item.clone()),
                }
            }
            Value::Array(b)
        }
        (_, o) => o.clone(),
    }
}

fn named(list: &[Value]) -> bool {
    list.iter()
        .all(|x| x.get("name").is_some_and(Value::is_string))
}

/// Whether `secret` is one the operator generated for `gw`: the operator's labels for this
/// Gateway and a controller owner reference to it (by uid). A Secret of the same name made by
/// anyone else (whoever can write Secrets in the namespace) is foreign: never used, never
/// overwritten (issue 14, item 10).
pub fn generated_for(secret: &Secret, gw: &Gateway) -> bool {
    let labels = secret.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let Some(uid) = gw.uid() else { return false };
    label(labels::MANAGED_BY) == Some(labels::OPERATOR)
        && label(labels::INSTANCE) == Some(gw.name_any().as_str())
        && secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.kind == "Gateway" && o.uid == uid)
}

/// The condition reason when `spec.podTemplate` asks for something not on the allow-list.
pub const POD_TEMPLATE_REFUSED: &str = "PodTemplateRefused";

/// Label and annotation prefixes that belong to the operator (or to the kubelet's security
/// settings): a podTemplate may not set them.
const RESERVED_PREFIXES: &[&str] = &[
    "app.kubernetes.io/",
    "rustronaut.io/",
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
];

/// Taint keys of control-plane nodes: a gateway must not be scheduled there.
const CONTROL_PLANE_TAINTS: &[&str] = &[
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Checks `spec.podTemplate` against the allow-list of what a Gateway's creator may change:
/// labels and annotations outside the operator's prefixes; scheduling (nodeSelector,
/// affinity, tolerations other than control-plane ones, topologySpreadConstraints,
/// priorityClassName), terminationGracePeriodSeconds, imagePullSecrets; a non-root fsGroup;
/// emptyDir, configMap and downwardAPI volumes; and on the `gateway` container only
/// resources, env (no Secret references), envFrom of ConfigMaps and volumeMounts.
/// Everything else (hostPath or Secret volumes, supplementalGroups, SELinux/AppArmor,
/// extra or init containers, host namespaces, another ServiceAccount, ...) is refused: the
/// error names the first field at fault. `enforce` still re-applies the security settings
/// after the merge, as a second line.
pub fn check_pod_template(overlay: &Value) -> Result<(), String> {
    let Some(top) = overlay.as_object() else {
        return Err("spec.podTemplate must be an object".into());
    };
    for (k, v) in top {
        match k.as_str() {
            "metadata" => check_metadata(v)?,
            "spec" => check_pod_spec(v)?,
            other => return Err(format!("spec.podTemplate.{other} may not be set")),
        }
    }
    Ok(())
}

fn check_metadata(v: &Value) -> Result<(), String> {
    let Some(meta) = v.as_object() else {
        return Err("spec.podTemplate.metadata must be an object".into());
    };
    for (k, v) in meta {
        if k != "labels" && k != "annotations" {
            return Err(format!("spec.podTemplate.metadata.{k} may not be set"));
        }
        for key in v.as_object().into_iter().flat_map(|m| m.keys()) {
            if let Some(p) = RESERVED_PREFIXES.iter().find(|p| key.starts_with(*p)) {
                return Err(format!(
                    "spec.podTemplate.metadata.{k}[{key}]: the prefix {p} is reserved"
                ));
            }
        }
    }
    Ok(())
}

fn check_pod_spec(v: &Value) -> Result<(), String> {
    let Some(spec) = v.as_object() else {
        return Err("spec.podTemplate.spec must be an object".into());
    };
    for (k, v) in spec {
        let at = format!("spec.podTemplate.spec.{k}");
        match k.as_str() {
            "nodeSelector"
            | "affinity"
            | "topologySpreadConstraints"
            | "priorityClassName"
            | "terminationGracePeriodSeconds"
            | "imagePullSecrets" => {}
            "tolerations" => {
                for t in v.as_array().into_iter().flatten() {
                    let key = t["key"].as_str().unwrap_or("");
                    if key.is_empty() || CONTROL_PLANE_TAINTS.contains(&key) {
                        return Err(format!(
                            "{at}: tolerating every taint or the control plane's ({}) is refused",
                            if key.is_empty() { "no key" } else { key }
                        ));
                    }
                }
            }
            "securityContext" => {
                for (sk, sv) in v.as_object().into_iter().flatten() {
                    let fine = sk == "fsGroup" && sv.as_i64().is_some_and(|g| g > 0);
                    if !fine {
                        return Err(format!("{at}.{sk} may not be set"));
                    }
                }
            }
            "volumes" => {
                for vol in v.as_array().into_iter().flatten() {
                    let name = vol["name"].as_str().unwrap_or("");
                    if name == TUNNEL_TOKEN_VOLUME {
                        return Err(format!("{at}[{name}]: the name is reserved"));
                    }
                    for source in vol.as_object().into_iter().flat_map(|m| m.keys()) {
                        if !matches!(
                            source.as_str(),
                            "name" | "emptyDir" | "configMap" | "downwardAPI"
                        ) {
                            return Err(format!(
                                "{at}[{name}].{source}: only emptyDir, configMap and downwardAPI volumes may be added"
                            ));
                        }
                    }
                }
            }
            "containers" => {
                for c in v.as_array().into_iter().flatten() {
                    let name = c["name"].as_str().unwrap_or("");
                    if name != "gateway" {
                        return Err(format!(
                            "{at}[{name}]: only the gateway container may be changed, none added"
                        ));
                    }
                    check_container(c, &format!("{at}[gateway]"))?;
                }
            }
            _ => return Err(format!("{at} may not be set")),
        }
    }
    Ok(())
}

fn check_container(c: &Value, at: &str) -> Result<(), String> {
    for (k, v) in c.as_object().into_iter().flatten() {
        match k.as_str() {
            "name" | "resources" | "volumeMounts" => {}
            "env" => {
                for e in v.as_array().into_iter().flatten() {
                    if e["valueFrom"].get("secretKeyRef").is_some() {
                        return Err(format!(
                            "{at}.env[{}].valueFrom.secretKeyRef: Secrets may not be read",
                            e["name"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
            "envFrom" => {
                for e in v.as_array().into_iter().flatten() {
                    if e.get("secretRef").is_some() {
                        return Err(format!("{at}.envFrom.secretRef: Secrets may not be read"));
                    }
                }
            }
            _ => return Err(format!("{at}.{k} may not be set")),
        }
    }
    Ok(())
}

/// What no podTemplate override may change: the selector labels, the ServiceAccount, the
/// security settings of the pod and of every container, and the gateway container's image,
/// command, args and POD_NAME.
fn enforce(template: &mut Value, gw: &Gateway, settings: &Settings) {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    for (k, v) in selector_labels(gw).as_object().into_iter().flatten() {
        template["metadata"]["labels"][k] = v.clone();
    }
    let spec = &mut template["spec"];
    spec["serviceAccountName"] = json!(names::account(&name));
    spec["automountServiceAccountToken"] = json!(true);
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if let Some(o) = spec.as_object_mut() {
            o.remove(host);
        }
    }
    let mut pod_security = json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    // Listeners below 1024 (443) without NET_BIND_SERVICE: the namespaced, "safe" sysctl lets
    // a non-root process bind them, so no capability is ever added.
    if gw.spec.listeners.iter().any(|l| l.port < 1024) {
        pod_security["sysctls"] =
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
    }
    if gw.spec.tunnel.is_some() {
        // The token Secret's files are root-owned: readable by the non-root gateway only
        // through its group (mode 0440).
        pod_security["fsGroup"] = json!(RUN_AS);
        let token = json!([{"name": TUNNEL_TOKEN_VOLUME,
                            "secret": {"secretName": tunnel::names::token(&name),
                                       "defaultMode": 0o440}}]);
        let volumes = spec["volumes"].take();
        spec["volumes"] = merge(
            if volumes.is_array() {
                volumes
            } else {
                json!([])
            },
            &token,
        );
    }
    let user_security = spec["securityContext"].take();
    spec["securityContext"] = merge(user_security, &pod_security);
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec[list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let own = c["securityContext"].take();
            c["securityContext"] = merge(own, &container_security());
            // Replaced, not merged: an override must not add capabilities back.
            c["securityContext"]["capabilities"] = json!({"drop": ["ALL"]});
            if c["name"] == "gateway" && list == "containers" {
                c["image"] = json!(settings.image);
                c["command"] = json!([deploy::GATEWAY_BINARY]);
                let mut args = vec![
                    flags::CONFIG_FROM.to_string(),
                    format!("{ns}/{}", names::snapshot(&name)),
                    flags::REPORT_STATUS.to_string(),
                    format!("{ns}/{}", names::status(&name)),
                    flags::ADMIN_LISTEN.to_string(),
                    format!("0.0.0.0:{ADMIN_PORT}"),
                ];
                args.extend(tunnel::gateway_args(gw));
                c["args"] = json!(args);
                if gw.spec.tunnel.is_some() {
                    let mounts = c["volumeMounts"].take();
                    c["volumeMounts"] = merge(
                        if mounts.is_array() { mounts } else { json!([]) },
                        &json!([{"name": TUNNEL_TOKEN_VOLUME, "mountPath": tunnel::TOKEN_DIR,
                                 "readOnly": true}]),
                    );
                }
                let env = c["env"].take();
                let env = if env.is_array() { env } else { json!([]) };
                c["env"] = merge(
                    env,
                    &json!([{"name": deploy::POD_NAME_ENV,
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
                );
                // A value set by the override would conflict with valueFrom.
                if let Some(list) = c["env"].as_array_mut()
                    && let Some(pod) = list.iter_mut().find(|e| e["name"] == deploy::POD_NAME_ENV)
                    && let Some(o) = pod.as_object_mut()
                {
                    o.remove("value");
                }
            }
        }
    }
}

/// The Service in front of the gateway pods: one port per listener port and transport.
/// Type from spec.service (ClusterIP when absent).
pub fn service(gw: &Gateway) -> Service {
    let name = gw.name_any();
    let ports: Vec<Value> = listener_ports(gw)
        .into_iter()
        .map(|(port, proto, listener)| {
            json!({"name": listener, "port": port, "targetPort": port, "protocol": proto})
        })
        .collect();
    let type_ = match gw.spec.service.as_ref().map(|s| s.type_) {
        None | Some(ServiceType::ClusterIP) => "ClusterIP",
        Some(ServiceType::LoadBalancer) => "LoadBalancer",
        Some(ServiceType::NodePort) => "NodePort",
    };
    let mut meta = metadata(gw, &name);
    if let Some(s) = &gw.spec.service
        && !s.annotations.is_empty()
    {
        meta["annotations"] = json!(s.annotations);
    }
    let mut spec = json!({"type": type_, "selector": selector_labels(gw), "ports": ports});
    if type_ != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!(EXTERNAL_TRAFFIC_POLICY);
    }
    typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta,
        "spec": spec,
    }))
}

/// `from` peers of an admin port: the namespaces of [`Settings::admin_from_namespaces`]
/// (none when empty), plus `extra`.
pub(crate) fn admin_peers(settings: &Settings, extra: Vec<Value>) -> Vec<Value> {
    let mut from = extra;
    if !settings.admin_from_namespaces.is_empty() {
        from.push(json!({"namespaceSelector": {"matchLabels": settings.admin_from_namespaces}}));
    }
    from
}

/// One ingress rule: `ports` from `from` (an empty `from` is written as no rule at all: in a
/// NetworkPolicy an absent `from` means "every source", the opposite of what "nobody" means).
pub(crate) fn ingress_rule(ports: Vec<Value>, from: Option<Vec<Value>>) -> Option<Value> {
    match from {
        None => Some(json!({"ports": ports})),
        Some(f) if f.is_empty() => None,
        Some(f) => Some(json!({"ports": ports, "from": f})),
    }
}

/// The gateway pods' NetworkPolicy (issue 14, item 19): the listener ports from anywhere
/// (they are the front door, and every request is judged by the Policies), the admin port
/// (`/metrics`, `/healthz`) only from the namespaces allowed to scrape. Everything else
/// is refused, so nothing but the front door of a gateway pod is reachable from other pods.
/// The node itself (kubelet probes) is never blocked by a NetworkPolicy.
pub fn network_policy(gw: &Gateway, settings: &Settings) -> NetworkPolicy {
    let listeners: Vec<Value> = listener_ports(gw)
        .into_iter()
        .map(|(port, proto, _)| json!({"port": port, "protocol": proto}))
        .collect();
    let admin = vec![json!({"port": ADMIN_PORT, "protocol": "TCP"})];
    let ingress: Vec<Value> = [
        ingress_rule(listeners, None),
        ingress_rule(admin, Some(admin_peers(settings, Vec::new()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    typed(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(gw, &gw.name_any()),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(gw)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }))
}

/// `externalTrafficPolicy` of every LoadBalancer or NodePort Service the operator makes:
/// `Local`, so the node forwards to a pod on itself without SNAT and the gateway sees the
/// client's own address. With the default (`Cluster`) every client arrives as a node address,
/// so a `sourceCIDRs: [10.0.0.0/8]` rule would match the whole internet (issue 14, item 3; see
/// docs/security.md). The cost, as for any `Local` Service: a node without a gateway pod
/// answers the load balancer's health check as unhealthy and gets no traffic.
pub const EXTERNAL_TRAFFIC_POLICY: &str = "Local";

/// A PodDisruptionBudget (maxUnavailable 1) when more than one pod runs, so a node drain
/// never takes every gateway pod at once; None with a single pod (a PDB would block drains).
pub fn pdb(gw: &Gateway) -> Option<PodDisruptionBudget> {
    let min = gw
        .spec
        .autoscaling
        .as_ref()
        .map_or(gw.spec.replicas, |a| a.min_replicas);
    (min > 1).then(|| {
        typed(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(gw, &gw.name_any()),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(gw)}},
        }))
    })
}

/// A HorizontalPodAutoscaler on CPU when spec.autoscaling is set.
pub fn hpa(gw: &Gateway) -> Option<HorizontalPodAutoscaler> {
    let a = gw.spec.autoscaling.as_ref()?;
    let name = gw.name_any();
    Some(typed(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(gw, &name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization",
                           "averageUtilization": a.target_cpu_utilization_percentage}}}],
        },
    })))
}

/// cert-manager's `Certificate` kind (`cert-manager.io/v1`), which is not in k8s-openapi.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// One cert-manager `Certificate` per Secret that listeners with `tls.issuerRef` issue
/// into (`certificateRefs[0]`), named after the Secret (as cert-manager's own gateway-shim
/// names them), for the hostnames of every such listener naming it; the first of those
/// listeners (in spec order) chooses the issuer. Sorted by name.
pub fn certificates(gw: &Gateway) -> Vec<DynamicObject> {
    let mut by_secret: BTreeMap<&str, (&rustronaut_crds::gateway::IssuerRef, Vec<&str>)> =
        BTreeMap::new();
    for l in &gw.spec.listeners {
        let Some(tls) = &l.tls else { continue };
        let (Some(issuer), Some(secret), Some(host)) = (
            &tls.issuer_ref,
            tls.certificate_refs.first(),
            l.hostname.as_deref(),
        ) else {
            continue;
        };
        let entry = by_secret
            .entry(secret.name.as_str())
            .or_insert_with(|| (issuer, Vec::new()));
        if !entry.1.contains(&host) {
            entry.1.push(host);
        }
    }
    by_secret
        .into_iter()
        .map(|(secret, (issuer, hosts))| {
            typed(json!({
                "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": metadata(gw, secret),
                "spec": {
                    "secretName": secret,
                    "dnsNames": hosts,
                    "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
                },
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listeners with an issuer get one Certificate per Secret, with every hostname naming
    /// it; listeners without one (or their other Secrets) get none.
    #[test]
    fn certificates_for_listeners_with_an_issuer() {
        let gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "rtn", "uid": "u-1"},
            "spec": {"listeners": [
                {"name": "app", "port": 443, "protocol": "HTTPS", "hostname": "app.example",
                 "tls": {"certificateRefs": [{"name": "shared-tls"}, {"name": "extra"}],
                         "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}},
                {"name": "api", "port": 8443, "protocol": "HTTPS", "hostname": "api.example",
                 "tls": {"certificateRefs": [{"name": "shared-tls"}],
                         "issuerRef": {"name": "other"}}},
                {"name": "wild", "port": 443, "protocol": "HTTPS", "hostname": "*.example",
                 "tls": {"certificateRefs": [{"name": "wild-tls"}],
                         "issuerRef": {"name": "acme", "group": "example.io", "kind": "Acme"}}},
                {"name": "plain", "port": 443, "protocol": "HTTPS", "hostname": "plain.example",
                 "tls": {"certificateRefs": [{"name": "by-hand"}]}},
            ]}
        }))
        .unwrap();
        let owner = json!([{"apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "name": "edge", "uid": "u-1", "controller": true}]);
        let labels = json!({
            "app.kubernetes.io/name": "rustronaut-gateway",
            "app.kubernetes.io/instance": "edge",
            "app.kubernetes.io/managed-by": "rustronaut-operator",
        });
        assert_eq!(
            to_json(certificates(&gw)),
            json!([
                {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                 "metadata": {"name": "shared-tls", "namespace": "rtn", "labels": labels,
                              "ownerReferences": owner},
                 "spec": {"secretName": "shared-tls", "dnsNames": ["app.example", "api.example"],
                          "issuerRef": {"name": "ca", "kind": "ClusterIssuer",
                                        "group": "cert-manager.io"}}},
                {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                 "metadata": {"name": "wild-tls", "namespace": "rtn", "labels": labels,
                              "ownerReferences": owner},
                 "spec": {"secretName": "wild-tls", "dnsNames": ["*.example"],
                          "issuerRef": {"name": "acme", "kind": "Acme", "group": "example.io"}}},
            ])
        );
        assert!(certificates(&gateway(json!({}))).is_empty());
    }

    fn gateway(extra: Value) -> Gateway {
        let mut v = json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "rtn", "uid": "u-1"},
            "spec": {
                "listeners": [
                    {"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"certificateRefs": [{"name": "tls"}]}},
                    {"name": "admin", "port": 443, "protocol": "HTTPS", "hostname": "a.example",
                     "tls": {"certificateRefs": [{"name": "tls"}]}},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ]
            }
        });
        if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn to_json(v: impl serde::Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    fn owner() -> Value {
        json!([{"apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway", "name": "edge",
                "uid": "u-1", "controller": true}])
    }

    fn meta(name: &str) -> Value {
        json!({
            "name": name, "namespace": "rtn",
            "labels": {"app.kubernetes.io/name": "rustronaut-gateway",
                       "app.kubernetes.io/instance": "edge",
                       "app.kubernetes.io/managed-by": "rustronaut-operator"},
            "ownerReferences": owner(),
        })
    }

    #[test]
    fn deployment_whole_object() {
        let gw = gateway(json!({"replicas": 3}));
        let d = to_json(deployment(
            &gw,
            &Settings {
                image: "img:1".into(),
                ..Settings::default()
            },
        ));
        let security = json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "privileged": false, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        });
        let probe = |p: &str| {
            json!({"httpGet": {"path": p, "port": 9901}, "periodSeconds": 10,
                   "timeoutSeconds": 2, "failureThreshold": 3})
        };
        let want = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": meta("edge"),
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "rustronaut-gateway",
                                             "app.kubernetes.io/instance": "edge"}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "rustronaut-gateway",
                                            "app.kubernetes.io/instance": "edge",
                                            "app.kubernetes.io/managed-by": "rustronaut-operator"}},
                    "spec": {
                        "serviceAccountName": "edge-gateway",
                        "automountServiceAccountToken": true,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start",
                                         "value": "0"}],
                        },
                        "containers": [{
                            "name": "gateway",
                            "image": "img:1",
                            "command": ["rustronaut-gateway"],
                            "args": ["--config-from", "rtn/edge-snapshot",
                                     "--report-status", "rtn/edge-status",
                                     "--admin-listen", "0.0.0.0:9901"],
                            "env": [{"name": "POD_NAME",
                                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [
                                {"containerPort": 443, "protocol": "TCP"},
                                {"containerPort": 53, "protocol": "UDP"},
                                {"name": "admin", "containerPort": 9901, "protocol": "TCP"},
                            ],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                          "limits": {"cpu": "1", "memory": "512Mi"}},
                            "livenessProbe": probe("/healthz"),
                            "readinessProbe": probe("/readyz"),
                            "securityContext": security,
                        }],
                    }
                }
            }
        });
        assert_eq!(d, want, "{}", serde_json::to_string_pretty(&d).unwrap());
    }

    #[test]
    fn pod_template_merges_but_cannot_weaken_security_or_the_contract() {
        let gw = gateway(json!({
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
            "podTemplate": {
                "metadata": {"labels": {"team": "edge", "app.kubernetes.io/instance": "evil"}},
                "spec": {
                    "nodeSelector": {"pool": "edge"},
                    "hostNetwork": true,
                    "securityContext": {"runAsUser": 0, "fsGroup": 2000},
                    "containers": [
                        {"name": "gateway",
                         "args": ["--snapshot", "/tmp/x"],
                         "resources": {"limits": {"memory": "1Gi"}},
                         "env": [{"name": "RUST_LOG", "value": "debug"},
                                 {"name": "POD_NAME", "value": "fixed"}],
                         "securityContext": {"privileged": true,
                                             "capabilities": {"add": ["NET_ADMIN"]}}},
                        {"name": "sidecar", "image": "busybox"}
                    ]
                }
            }
        }));
        let d = to_json(deployment(&gw, &Settings::default()));
        assert!(d["spec"].get("replicas").is_none(), "the HPA decides");
        let t = &d["spec"]["template"];
        assert_eq!(t["metadata"]["labels"]["team"], "edge");
        assert_eq!(
            t["metadata"]["labels"]["app.kubernetes.io/instance"],
            "edge"
        );
        let spec = &t["spec"];
        assert_eq!(spec["nodeSelector"]["pool"], "edge");
        assert!(spec.get("hostNetwork").is_none());
        assert_eq!(spec["securityContext"]["runAsUser"], 65532);
        assert_eq!(spec["securityContext"]["fsGroup"], 2000);
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        let gwc = &containers[0];
        assert_eq!(gwc["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(gwc["resources"]["requests"]["cpu"], "100m", "kept");
        assert_eq!(gwc["args"][0], "--config-from");
        assert_eq!(gwc["image"], Settings::default_image());
        let env = gwc["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "RUST_LOG"));
        let pod = env.iter().find(|e| e["name"] == "POD_NAME").unwrap();
        assert!(pod.get("value").is_none());
        assert_eq!(pod["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
        for c in containers {
            let s = &c["securityContext"];
            assert_eq!(s["privileged"], false);
            assert_eq!(s["readOnlyRootFilesystem"], true);
            assert_eq!(s["allowPrivilegeEscalation"], false);
            assert_eq!(s["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(s["runAsNonRoot"], true);
        }
        assert!(
            containers[0]["securityContext"]["capabilities"]
                .get("add")
                .is_none()
        );
    }

    #[test]
    fn with_a_tunnel_the_gateway_gets_the_stream_and_the_token() {
        let gw = gateway(json!({"tunnel": {"replicas": 2}, "podTemplate": {"spec": {
            "volumes": [{"name": "extra", "emptyDir": {}}],
            "containers": [{"name": "gateway",
                            "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}]}}}));
        let d = to_json(deployment(&gw, &Settings::default()));
        let spec = &d["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[6..],
            [
                "--tunnel-stream",
                "edge-hub-stream.rtn.svc:4200",
                "--tunnel-token-file",
                "/var/run/rustronaut/tunnel/token"
            ]
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "extra", "mountPath": "/extra"},
                   {"name": "tunnel-token", "mountPath": "/var/run/rustronaut/tunnel",
                    "readOnly": true}])
        );
        assert_eq!(
            spec["volumes"],
            json!([{"name": "extra", "emptyDir": {}},
                   {"name": "tunnel-token",
                    "secret": {"secretName": "edge-tunnel-token", "defaultMode": 288}}])
        );
        assert_eq!(spec["securityContext"]["fsGroup"], 65532);

        let plain = to_json(deployment(&gateway(json!({})), &Settings::default()));
        let spec = &plain["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["args"].as_array().unwrap().len(), 6);
        assert!(spec.get("volumes").is_none());
        assert!(spec["securityContext"].get("fsGroup").is_none());
    }

    #[test]
    fn rbac_reaches_only_the_gateways_own_objects() {
        let gw = gateway(json!({}));
        assert_eq!(
            to_json(role(&gw)),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": meta("edge-gateway"),
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"],
                     "verbs": ["get", "list", "watch"], "resourceNames": ["edge-snapshot"]},
                    {"apiGroups": [""], "resources": ["configmaps"],
                     "verbs": ["get", "patch"], "resourceNames": ["edge-status"]},
                ]
            })
        );
        assert_eq!(
            to_json(role_binding(&gw)),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": meta("edge-gateway"),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "edge-gateway"},
                "subjects": [{"kind": "ServiceAccount", "name": "edge-gateway",
                              "namespace": "rtn"}],
            })
        );
        assert_eq!(
            to_json(service_account(&gw)),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("edge-gateway")})
        );
        assert_eq!(
            to_json(status_config_map(&gw)),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("edge-status")})
        );
    }

    #[test]
    fn service_pdb_hpa() {
        let gw = gateway(json!({"replicas": 1}));
        assert_eq!(
            to_json(service(&gw)),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": meta("edge"),
                "spec": {
                    "type": "ClusterIP",
                    "selector": {"app.kubernetes.io/name": "rustronaut-gateway",
                                 "app.kubernetes.io/instance": "edge"},
                    "ports": [
                        {"name": "https", "port": 443, "targetPort": 443, "protocol": "TCP"},
                        {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                    ]
                }
            })
        );
        assert!(pdb(&gw).is_none(), "one pod: a PDB would block node drains");
        assert!(hpa(&gw).is_none());

        let gw = gateway(json!({
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
            "service": {"type": "LoadBalancer", "annotations": {"lb": "internal"}}
        }));
        let svc = to_json(service(&gw));
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(
            svc["spec"]["externalTrafficPolicy"], "Local",
            "the gateway sees client addresses, not the node's"
        );
        assert_eq!(svc["metadata"]["annotations"]["lb"], "internal");
        assert_eq!(
            to_json(pdb(&gw).unwrap())["spec"],
            json!({"maxUnavailable": 1, "selector": {"matchLabels": {
                "app.kubernetes.io/name": "rustronaut-gateway",
                "app.kubernetes.io/instance": "edge"}}})
        );
        assert_eq!(
            to_json(hpa(&gw).unwrap())["spec"],
            json!({
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edge"},
                "minReplicas": 2, "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70}}}],
            })
        );
    }

    #[test]
    fn snapshot_secret_carries_the_json_and_its_version() {
        let gw = gateway(json!({}));
        let snap = Snapshot::new(rustronaut_contract::snapshot::ObjectRef::new("rtn", "edge"));
        let s = snapshot_secret(&gw, &snap);
        assert_eq!(s.metadata.name.as_deref(), Some("edge-snapshot"));
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[CONFIG_VERSION_ANNOTATION],
            snap.content_hash()
        );
        let bytes = &s.data.as_ref().unwrap()[SNAPSHOT_KEY].0;
        assert_eq!(Snapshot::load(bytes).unwrap(), snap);
        assert_eq!(to_json(&s)["metadata"]["ownerReferences"], owner());
    }

    #[test]
    fn pod_template_allows_scheduling_and_resources_only() {
        let fine = json!({
            "metadata": {"labels": {"team": "edge"}, "annotations": {"note": "x"}},
            "spec": {
                "nodeSelector": {"pool": "edge"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge"}],
                "priorityClassName": "high",
                "securityContext": {"fsGroup": 2000},
                "volumes": [{"name": "extra", "emptyDir": {}},
                            {"name": "cm", "configMap": {"name": "x"}}],
                "containers": [{"name": "gateway",
                                "resources": {"limits": {"memory": "1Gi"}},
                                "env": [{"name": "RUST_LOG", "value": "debug"}],
                                "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}]
            }
        });
        assert_eq!(check_pod_template(&fine), Ok(()));
        let refused = [
            (
                json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}),
                "spec.podTemplate.spec.volumes[h].hostPath",
            ),
            (
                json!({"spec": {"volumes": [{"name": "s", "secret": {"secretName": "other"}}]}}),
                "spec.podTemplate.spec.volumes[s].secret",
            ),
            (
                json!({"spec": {"volumes": [{"name": "p", "projected": {"sources": []}}]}}),
                "spec.podTemplate.spec.volumes[p].projected",
            ),
            (
                json!({"spec": {"volumes": [{"name": "tunnel-token", "emptyDir": {}}]}}),
                "spec.podTemplate.spec.volumes[tunnel-token]",
            ),
            (
                json!({"spec": {"securityContext": {"supplementalGroups": [0]}}}),
                "spec.podTemplate.spec.securityContext.supplementalGroups",
            ),
            (
                json!({"spec": {"securityContext": {"fsGroup": 0}}}),
                "spec.podTemplate.spec.securityContext.fsGroup",
            ),
            (
                json!({"spec": {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}}),
                "spec.podTemplate.spec.securityContext.seLinuxOptions",
            ),
            (
                json!({"spec": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}}),
                "spec.podTemplate.spec.securityContext.appArmorProfile",
            ),
            (
                json!({"metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/gateway": "unconfined"}}}),
                "spec.podTemplate.metadata.annotations[container.apparmor",
            ),
            (
                json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane",
                                              "operator": "Exists", "effect": "NoSchedule"}]}}),
                "spec.podTemplate.spec.tolerations",
            ),
            (
                json!({"spec": {"tolerations": [{"operator": "Exists"}]}}),
                "spec.podTemplate.spec.tolerations",
            ),
            (
                json!({"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}),
                "spec.podTemplate.spec.containers[sidecar]",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "init", "image": "busybox"}]}}),
                "spec.podTemplate.spec.initContainers",
            ),
            (
                json!({"spec": {"containers": [{"name": "gateway",
                                             "securityContext": {"privileged": true}}]}}),
                "spec.podTemplate.spec.containers[gateway].securityContext",
            ),
            (
                json!({"spec": {"containers": [{"name": "gateway", "env": [{"name": "K",
                "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}]}}),
                "spec.podTemplate.spec.containers[gateway].env[K].valueFrom.secretKeyRef",
            ),
            (
                json!({"spec": {"hostNetwork": true}}),
                "spec.podTemplate.spec.hostNetwork",
            ),
            (
                json!({"spec": {"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["idp"]}]}}),
                "spec.podTemplate.spec.hostAliases",
            ),
            (
                json!({"spec": {"serviceAccountName": "admin"}}),
                "spec.podTemplate.spec.serviceAccountName",
            ),
            (
                json!({"metadata": {"labels": {"app.kubernetes.io/name": "rustronaut-gateway"}}}),
                "spec.podTemplate.metadata.labels[app.kubernetes.io/name]",
            ),
            (
                json!({"metadata": {"labels": {"rustronaut.io/x": "y"}}}),
                "spec.podTemplate.metadata.labels[rustronaut.io/x]",
            ),
        ];
        for (overlay, field) in refused {
            let e = check_pod_template(&overlay).expect_err(&overlay.to_string());
            assert!(e.starts_with(field), "{overlay}: {e}");
        }
    }

    #[test]
    fn only_secrets_generated_for_this_gateway_are_its_own() {
        let gw = gateway(json!({}));
        let ours = super::super::session::key_secret(&gw, "acme", "edge-session-acme", "1", "a2V5");
        assert!(generated_for(&ours, &gw));
        let mut foreign = ours.clone();
        foreign.metadata.owner_references = None;
        assert!(
            !generated_for(&foreign, &gw),
            "no controller owner reference"
        );
        let mut other_uid = ours.clone();
        other_uid.metadata.owner_references.as_mut().unwrap()[0].uid = "u-2".into();
        assert!(
            !generated_for(&other_uid, &gw),
            "another (deleted) Gateway's"
        );
        let mut not_controller = ours.clone();
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(!generated_for(&not_controller, &gw));
        let mut unlabelled = ours;
        unlabelled.metadata.labels = None;
        assert!(!generated_for(&unlabelled, &gw), "no operator labels");
    }

    #[test]
    fn gateway_pods_admit_their_listener_ports_from_anywhere_and_the_admin_port_from_no_one_else() {
        let gw = gateway(json!({}));
        let meta = json!({
            "name": "edge", "namespace": "rtn",
            "labels": {"app.kubernetes.io/name": "rustronaut-gateway",
                       "app.kubernetes.io/instance": "edge",
                       "app.kubernetes.io/managed-by": "rustronaut-operator"},
            "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
                                 "name": "edge", "uid": "u-1", "controller": true}],
        });
        let selector = json!({"matchLabels": {"app.kubernetes.io/name": "rustronaut-gateway",
                                              "app.kubernetes.io/instance": "edge"}});
        // No scrapers configured: the admin port has no rule at all (an empty `from` would
        // mean "everyone").
        assert_eq!(
            to_json(network_policy(&gw, &Settings::default())),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": meta,
                "spec": {
                    "podSelector": selector,
                    "policyTypes": ["Ingress"],
                    "ingress": [{"ports": [{"port": 443, "protocol": "TCP"},
                                           {"port": 53, "protocol": "UDP"}]}],
                },
            })
        );
        let scrape = Settings {
            admin_from_namespaces: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "monitoring".to_string(),
            )]),
            ..Settings::default()
        };
        assert_eq!(
            to_json(network_policy(&gw, &scrape))["spec"]["ingress"][1],
            json!({"ports": [{"port": 9901, "protocol": "TCP"}],
                   "from": [{"namespaceSelector": {"matchLabels":
                       {"kubernetes.io/metadata.name": "monitoring"}}}]})
        );
    }
}
