//! The pure core of sidecar injection: a Pod being created, its namespace's labels and the
//! sidecar Resources of that namespace in, a [`Verdict`] out. No I/O, so every rule is a
//! table of unit tests.
//!
//! ```text
//!  pod label rustronaut.io/sidecar   namespace label             ->
//!  disabled                          any                         unchanged
//!  enabled                           any                         inject
//!  (absent)                          sidecar-injection=enabled   inject
//!  (absent)                          otherwise                   unchanged
//!  anything else                     any                         deny (a typo must not
//!                                                                 silently run unprotected)
//!  inject: exactly one sidecar Resource selects the pod -> JSONPatch
//!          none -> unchanged + warning; two or more -> deny naming them;
//!          a container already using a sidecar port or 15020 -> deny naming it
//! ```
//!
//! The answer is computed as "the pod as it should be" and turned into patch operations
//! that only add or replace what injection owns (the sidecar container, its token volume,
//! one label, one annotation). A pod that already has all of it (re-admission, a pod copied
//! from an injected one, the apiserver's reinvocation) gets no patch: what the webhook wants
//! is compared as a *subset* of what the pod has, because the apiserver fills defaults
//! (`terminationMessagePath`, probe periods, port protocols) into the stored pod.

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rustronaut_contract::deploy::{self, flags};
use rustronaut_crds::resource::{Resource, SIDECAR_ADMIN_PORT, SIDECAR_CONTAINER, sidecar_names};
use rustronaut_crds::tenancy::selector_matches;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Name of the projected volume holding the sidecar's own API credentials.
pub const TOKEN_VOLUME: &str = "rustronaut-sidecar-token";
/// Where the sidecar finds its API credentials: the path every Kubernetes client reads, so
/// the gateway's in-cluster configuration works unchanged.
pub const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Name of the sidecar's admin container port.
pub const ADMIN_PORT_NAME: &str = "rtn-admin";
/// The warning of a pod that opted in but that no sidecar Resource selects.
pub const NO_RESOURCE_WARNING: &str =
    "no sidecar Resource selects this pod; it runs without a sidecar";
/// Longest label value: the injected label carries the Resource's name.
const MAX_LABEL_VALUE: usize = 63;

/// What the injected container looks like beyond the Resource: the operator's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Image of the sidecar (the gateway image: one binary, sidecar mode by flags).
    pub image: String,
    /// `imagePullPolicy` of the sidecar. None: the cluster's default for the tag.
    pub pull_policy: Option<String>,
    /// Requests and limits of the sidecar. Default: requests cpu 10m, memory 16Mi; limit
    /// memory 64Mi (one worker thread; no CPU limit, which would only throttle latency).
    pub resources: ResourceRequirements,
}

impl Settings {
    /// The default requests and limits (see [`Settings::resources`]).
    pub fn default_resources() -> ResourceRequirements {
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("64Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }
    }

    /// Settings with `image` and the default pull policy and resources.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            pull_policy: None,
            resources: Self::default_resources(),
        }
    }
}

/// The answer to one admission.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit with this JSONPatch (the sidecar of Resource `resource`).
    Patch {
        /// The operations, in the order the apiserver applies them.
        patch: json_patch::Patch,
        /// The sidecar Resource the sidecar serves.
        resource: String,
    },
    /// Admit as it is; with a warning the client shows when something is worth knowing.
    Unchanged {
        /// A warning for the client (kubectl prints it), if any.
        warning: Option<String>,
    },
    /// Refuse the pod, saying why.
    Deny(String),
}

/// Decides what to do with `pod`, created in namespace `namespace` whose labels are
/// `namespace_labels`; `resources` are the Resources the operator knows (any namespace; only
/// the sidecar Resources of `namespace` count).
pub fn admit<'a>(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    resources: impl IntoIterator<Item = &'a Resource>,
    settings: &Settings,
) -> Verdict {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    match labels.get(sidecar_names::POD_LABEL).map(String::as_str) {
        Some(sidecar_names::DISABLED) => return Verdict::Unchanged { warning: None },
        Some(sidecar_names::ENABLED) => {}
        Some(other) => {
            return Verdict::Deny(format!(
                "{} must be {} or {}, got {other:?}",
                sidecar_names::POD_LABEL,
                sidecar_names::ENABLED,
                sidecar_names::DISABLED
            ));
        }
        None => {
            let ns_opted_in = namespace_labels
                .get(sidecar_names::NAMESPACE_LABEL)
                .is_some_and(|v| v == sidecar_names::ENABLED);
            if !ns_opted_in {
                return Verdict::Unchanged { warning: None };
            }
        }
    }

    let mut selecting: Vec<&Resource> = resources
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some(namespace))
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| {
            r.spec
                .workload
                .as_ref()
                .is_some_and(|w| selector_matches(&w.selector, labels))
        })
        .collect();
    selecting.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let resource = match selecting.as_slice() {
        [] => {
            return Verdict::Unchanged {
                warning: Some(NO_RESOURCE_WARNING.into()),
            };
        }
        [one] => *one,
        many => {
            let names: Vec<&str> = many
                .iter()
                .map(|r| r.metadata.name.as_deref().unwrap_or_default())
                .collect();
            return Verdict::Deny(format!(
                "this pod is selected by {} sidecar Resources ({}); a pod is protected by at \
                 most one: narrow their spec.workload.selector",
                names.len(),
                names.join(", ")
            ));
        }
    };
    let name = resource.metadata.name.clone().unwrap_or_default();
    if name.len() > MAX_LABEL_VALUE {
        return Verdict::Deny(format!(
            "sidecar Resource {name:?} selects this pod, but its name is longer than \
             {MAX_LABEL_VALUE} characters and cannot be the value of label {}; rename it",
            sidecar_names::INJECTED_LABEL
        ));
    }
    let workload = resource.spec.workload.as_ref().expect("filtered above");

    if let Some(conflict) = port_conflict(pod, workload, &name) {
        return Verdict::Deny(conflict);
    }

    let patch = patch_ops(
        pod,
        &sidecar(namespace, &name, workload, settings),
        &name,
        workload,
    );
    if patch.is_empty() {
        return Verdict::Unchanged { warning: None };
    }
    Verdict::Patch {
        patch: serde_json::from_value(Value::Array(patch)).expect("well-formed operations"),
        resource: name,
    }
}

/// A port the sidecar needs that a container of the pod (other than the sidecar) already
/// declares, as the denial message.
fn port_conflict(
    pod: &Pod,
    workload: &rustronaut_crds::resource::Workload,
    resource: &str,
) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let needed: Vec<i32> = workload
        .ports
        .iter()
        .map(|p| p.sidecar_port)
        .chain([SIDECAR_ADMIN_PORT])
        .collect();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name != SIDECAR_CONTAINER);
    for c in containers {
        for p in c.ports.iter().flatten() {
            if needed.contains(&p.container_port) {
                let what = if p.container_port == SIDECAR_ADMIN_PORT {
                    "the sidecar's admin port".to_string()
                } else {
                    format!("a sidecarPort of Resource {resource}")
                };
                return Some(format!(
                    "container {:?} already uses port {}, which is {what}; change the \
                     container's port or the Resource's spec.workload.ports",
                    c.name, p.container_port
                ));
            }
        }
    }
    None
}

/// The `rustronaut-sidecar` container for sidecar Resource `resource` of `namespace`.
pub fn sidecar(
    namespace: &str,
    resource: &str,
    workload: &rustronaut_crds::resource::Workload,
    settings: &Settings,
) -> Value {
    let mut ports: Vec<Value> = workload
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({"containerPort": p.sidecar_port, "protocol": "TCP"});
            if let Some(n) = &p.name {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    ports.push(
        json!({"name": ADMIN_PORT_NAME, "containerPort": SIDECAR_ADMIN_PORT,
                      "protocol": "TCP"}),
    );
    let mut c = json!({
        "name": SIDECAR_CONTAINER,
        "image": settings.image,
        // A native sidecar: started before the app containers, kept running beside them,
        // stopped after them, and it does not keep a Job's pod alive.
        "restartPolicy": "Always",
        "command": [deploy::GATEWAY_BINARY],
        "args": [
            flags::CONFIG_FROM, format!("{namespace}/{}", sidecar_names::snapshot(resource)),
            flags::ADMIN_LISTEN, format!("0.0.0.0:{SIDECAR_ADMIN_PORT}"),
            flags::THREADS, "1",
            // No drain: a native sidecar is stopped after the application containers have
            // exited, so connections it kept accepting would reach no application; the
            // pod's endpoints were taken out when its termination began.
            flags::DRAIN_DELAY_SECONDS, "0",
        ],
        "env": [{"name": deploy::POD_NAME_ENV,
                 "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
        "ports": ports,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": SIDECAR_ADMIN_PORT,
                                       "scheme": "HTTP"}},
        "resources": settings.resources,
        "securityContext": {
            "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_PATH, "readOnly": true}],
    });
    if let Some(policy) = &settings.pull_policy {
        c["imagePullPolicy"] = json!(policy);
    }
    c
}

/// The sidecar's own API credentials, whatever the pod's `automountServiceAccountToken`
/// says: the same three sources as the ServiceAccount admission plugin's `kube-api-access`
/// volume (a bound, expiring token; the cluster CA; the namespace).
pub fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// `port:sidecarPort,...`, sorted by application port.
pub fn ports_annotation(workload: &rustronaut_crds::resource::Workload) -> String {
    let mut pairs: Vec<(i32, i32)> = workload
        .ports
        .iter()
        .map(|p| (p.port, p.sidecar_port))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(p, s)| format!("{p}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The operations that give `pod` the sidecar `container`, its volume, the injected label
/// and the ports annotation; empty when it already has them.
fn patch_ops(
    pod: &Pod,
    container: &Value,
    resource: &str,
    workload: &rustronaut_crds::resource::Workload,
) -> Vec<Value> {
    let mut ops = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();

    let inits = spec.init_containers.unwrap_or_default();
    match inits.iter().position(|c| c.name == SIDECAR_CONTAINER) {
        None if inits.is_empty() => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}))
        }
        // First, so it runs before any other init container that might need the network.
        None => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}))
        }
        Some(i) => {
            let have = serde_json::to_value(&inits[i]).unwrap_or(Value::Null);
            if !is_subset(container, &have) {
                ops.push(
                    json!({"op": "replace", "path": format!("/spec/initContainers/{i}"),
                                "value": container}),
                );
            }
        }
    }

    let volume = token_volume();
    let volumes = spec.volumes.unwrap_or_default();
    match volumes.iter().position(|v| v.name == TOKEN_VOLUME) {
        None if volumes.is_empty() => {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}))
        }
        None => ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
        Some(i) => {
            let have = serde_json::to_value(&volumes[i]).unwrap_or(Value::Null);
            if !is_subset(&volume, &have) {
                ops.push(
                    json!({"op": "replace", "path": format!("/spec/volumes/{i}"),
                                "value": volume}),
                );
            }
        }
    }

    let meta = &pod.metadata;
    set_entry(
        &mut ops,
        "labels",
        meta.labels.as_ref(),
        sidecar_names::INJECTED_LABEL,
        resource,
    );
    set_entry(
        &mut ops,
        "annotations",
        meta.annotations.as_ref(),
        sidecar_names::PORTS_ANNOTATION,
        &ports_annotation(workload),
    );
    ops
}

/// Adds the operation setting `metadata.<map>[key] = value`, if it is not already so.
fn set_entry(
    ops: &mut Vec<Value>,
    map: &str,
    have: Option<&BTreeMap<String, String>>,
    key: &str,
    value: &str,
) {
    match have {
        None => ops.push(json!({"op": "add", "path": format!("/metadata/{map}"),
                                "value": {key: value}})),
        Some(m) if m.get(key).map(String::as_str) == Some(value) => {}
        Some(_) => ops.push(json!({"op": "add",
                                   "path": format!("/metadata/{map}/{}", escape(key)),
                                   "value": value})),
    }
}

/// A JSON Pointer token (RFC 6901): `~` and `/` escaped.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Whether everything `want` says is also in `have` (objects: each key, recursively; lists:
/// same length, item by item; values: equal). What the apiserver defaults on top is ignored.
fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        (w, h) => w == h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "shop";

    fn resource(name: &str, selector: Value, ports: Value) -> Resource {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"protocol": "HTTP", "workload": {"selector": selector, "ports": ports}},
        }))
        .unwrap()
    }

    fn orders() -> Resource {
        resource(
            "orders",
            json!({"matchLabels": {"app": "orders"}}),
            json!([{"port": 8080, "sidecarPort": 8443, "name": "http"},
                   {"port": 7000, "sidecarPort": 7443}]),
        )
    }

    fn pod(labels: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "orders-1", "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "ports": [{"containerPort": 8080}]}]},
        }))
        .unwrap()
    }

    fn enabled_ns() -> BTreeMap<String, String> {
        BTreeMap::from([(sidecar_names::NAMESPACE_LABEL.into(), "enabled".into())])
    }

    fn settings() -> Settings {
        Settings::new("example.test/gateway:1")
    }

    fn run(pod: &Pod, ns_labels: &BTreeMap<String, String>, resources: &[Resource]) -> Verdict {
        admit(pod, NS, ns_labels, resources, &settings())
    }

    /// The pod the apiserver would store: `pod` with the verdict's patch applied.
    fn patched(pod: &Pod, verdict: &Verdict) -> Pod {
        let Verdict::Patch { patch, .. } = verdict else {
            panic!("expected a patch, got {verdict:?}");
        };
        let mut doc = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut doc, patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn injects_the_whole_sidecar_in_an_opted_in_namespace() {
        let p = pod(json!({"app": "orders"}));
        let v = run(&p, &enabled_ns(), &[orders()]);
        let Verdict::Patch { resource, .. } = &v else {
            panic!("{v:?}")
        };
        assert_eq!(resource, "orders");
        let out = serde_json::to_value(patched(&p, &v)).unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "orders", "rustronaut.io/sidecar-resource": "orders"})
        );
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"rustronaut.io/sidecar-ports": "7000:7443,8080:8443"})
        );
        assert_eq!(
            out["spec"]["initContainers"],
            json!([{
                "name": "rustronaut-sidecar",
                "image": "example.test/gateway:1",
                "restartPolicy": "Always",
                "command": ["rustronaut-gateway"],
                "args": ["--config-from", "shop/orders-sidecar",
                         "--admin-listen", "0.0.0.0:15020", "--threads", "1",
                         "--drain-delay-seconds", "0"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "ports": [
                    {"name": "http", "containerPort": 8443, "protocol": "TCP"},
                    {"containerPort": 7443, "protocol": "TCP"},
                    {"name": "rtn-admin", "containerPort": 15020, "protocol": "TCP"},
                ],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15020,
                                               "scheme": "HTTP"}},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"memory": "64Mi"}},
                "securityContext": {
                    "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true,
                    "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [{"name": "rustronaut-sidecar-token", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            }])
        );
        assert_eq!(out["spec"]["volumes"], json!([token_volume()]));
        // The app container is untouched: the sidecar's credentials are its own.
        assert_eq!(
            out["spec"]["containers"],
            serde_json::to_value(&p).unwrap()["spec"]["containers"]
        );
    }

    #[test]
    fn pod_label_opts_in_outside_an_opted_in_namespace() {
        let p = pod(json!({"app": "orders", "rustronaut.io/sidecar": "enabled"}));
        assert!(matches!(
            run(&p, &BTreeMap::new(), &[orders()]),
            Verdict::Patch { .. }
        ));
    }

    #[test]
    fn without_opt_in_the_pod_is_untouched() {
        let p = pod(json!({"app": "orders"}));
        let other = BTreeMap::from([(sidecar_names::NAMESPACE_LABEL.into(), "no".into())]);
        for labels in [BTreeMap::new(), other] {
            assert_eq!(
                run(&p, &labels, &[orders()]),
                Verdict::Unchanged { warning: None }
            );
        }
    }

    #[test]
    fn disabled_opts_out_even_in_an_opted_in_namespace() {
        let p = pod(json!({"app": "orders", "rustronaut.io/sidecar": "disabled"}));
        assert_eq!(
            run(&p, &enabled_ns(), &[orders()]),
            Verdict::Unchanged { warning: None }
        );
    }

    #[test]
    fn any_other_pod_label_value_is_refused() {
        let p = pod(json!({"app": "orders", "rustronaut.io/sidecar": "yes"}));
        assert_eq!(
            run(&p, &BTreeMap::new(), &[orders()]),
            Verdict::Deny("rustronaut.io/sidecar must be enabled or disabled, got \"yes\"".into())
        );
    }

    #[test]
    fn no_selecting_resource_warns() {
        let p = pod(json!({"app": "billing"}));
        // Edge Resources, other namespaces' and deleted sidecar Resources do not count.
        let mut elsewhere = resource("billing", json!({}), json!([{"port": 1, "sidecarPort": 2}]));
        elsewhere.metadata.namespace = Some("other".into());
        let mut deleted = resource("gone", json!({}), json!([{"port": 1, "sidecarPort": 2}]));
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut edge = orders();
        edge.metadata.name = Some("edge".into());
        edge.spec.workload = None;
        assert_eq!(
            run(&p, &enabled_ns(), &[orders(), elsewhere, deleted, edge]),
            Verdict::Unchanged {
                warning: Some(NO_RESOURCE_WARNING.into())
            }
        );
    }

    #[test]
    fn two_selecting_resources_are_refused_by_name() {
        let p = pod(json!({"app": "orders", "tier": "web"}));
        let web = resource(
            "web",
            json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
            json!([{"port": 8080, "sidecarPort": 9443}]),
        );
        let Verdict::Deny(msg) = run(&p, &enabled_ns(), &[web, orders()]) else {
            panic!()
        };
        assert!(msg.contains("2 sidecar Resources (orders, web)"), "{msg}");
    }

    #[test]
    fn a_port_the_sidecar_needs_is_refused_naming_the_container() {
        let mut p = pod(json!({"app": "orders"}));
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![
            serde_json::from_value(json!({"name": "setup", "image": "x",
                                          "ports": [{"containerPort": 15020}]}))
            .unwrap(),
        ]);
        let Verdict::Deny(msg) = run(&p, &enabled_ns(), &[orders()]) else {
            panic!()
        };
        assert!(
            msg.contains("container \"setup\" already uses port 15020"),
            "{msg}"
        );
        assert!(msg.contains("admin port"), "{msg}");

        let mut p = pod(json!({"app": "orders"}));
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![
            serde_json::from_value(json!({"containerPort": 7443})).unwrap(),
        ]);
        let Verdict::Deny(msg) = run(&p, &enabled_ns(), &[orders()]) else {
            panic!()
        };
        assert!(
            msg.contains("container \"app\" already uses port 7443"),
            "{msg}"
        );
        assert!(msg.contains("Resource orders"), "{msg}");
    }

    #[test]
    fn a_resource_name_that_cannot_be_a_label_value_is_refused() {
        let mut long = orders();
        long.metadata.name = Some("o".repeat(64));
        let Verdict::Deny(msg) = run(&pod(json!({"app": "orders"})), &enabled_ns(), &[long]) else {
            panic!()
        };
        assert!(msg.contains("longer than 63"), "{msg}");
    }

    #[test]
    fn readmission_changes_nothing_even_after_defaulting() {
        let mut p = pod(json!({"app": "orders"}));
        // Existing init containers, volumes and annotations are kept; the sidecar goes first.
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![
            serde_json::from_value(json!({"name": "setup", "image": "x"})).unwrap(),
        ]);
        spec.volumes = Some(vec![
            serde_json::from_value(json!({"name": "data", "emptyDir": {}})).unwrap(),
        ]);
        p.metadata.annotations = Some(BTreeMap::from([("a".into(), "b".into())]));
        let v = run(&p, &enabled_ns(), &[orders()]);
        let injected = patched(&p, &v);
        let spec = injected.spec.as_ref().unwrap();
        let inits: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(inits, ["rustronaut-sidecar", "setup"]);
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data", TOKEN_VOLUME]);
        assert_eq!(injected.metadata.annotations.as_ref().unwrap()["a"], "b");
        assert_eq!(
            run(&injected, &enabled_ns(), &[orders()]),
            Verdict::Unchanged { warning: None }
        );

        // What the apiserver stores carries defaults the webhook never wrote.
        let mut stored = serde_json::to_value(&injected).unwrap();
        let sidecar = &mut stored["spec"]["initContainers"][0];
        sidecar["terminationMessagePath"] = json!("/dev/termination-log");
        sidecar["imagePullPolicy"] = json!("IfNotPresent");
        sidecar["readinessProbe"]["periodSeconds"] = json!(10);
        let stored: Pod = serde_json::from_value(stored).unwrap();
        assert_eq!(
            run(&stored, &enabled_ns(), &[orders()]),
            Verdict::Unchanged { warning: None }
        );
    }

    #[test]
    fn a_stale_sidecar_is_replaced_in_place() {
        let p = pod(json!({"app": "orders"}));
        let injected = patched(&p, &run(&p, &enabled_ns(), &[orders()]));
        let newer = Settings::new("example.test/gateway:2");
        let v = admit(&injected, NS, &enabled_ns(), &[orders()], &newer);
        let again = patched(&injected, &v);
        let inits = again
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_ref()
            .unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0].image.as_deref(), Some("example.test/gateway:2"));
        let Verdict::Patch { patch, .. } = v else {
            panic!()
        };
        assert_eq!(
            patch.0.len(),
            1,
            "only the container is replaced: {patch:?}"
        );
    }

    #[test]
    fn settings_override_pull_policy_and_resources() {
        let mut s = settings();
        s.pull_policy = Some("Always".into());
        s.resources.limits = Some(BTreeMap::from([(
            "memory".into(),
            Quantity("128Mi".into()),
        )]));
        let w = orders().spec.workload.unwrap();
        let c = sidecar(NS, "orders", &w, &s);
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["resources"]["limits"], json!({"memory": "128Mi"}));
        assert_eq!(c["resources"]["requests"]["cpu"], "10m");
    }

    #[test]
    fn label_keys_are_escaped_in_patch_paths() {
        assert_eq!(
            escape("rustronaut.io/sidecar-resource"),
            "rustronaut.io~1sidecar-resource"
        );
        assert_eq!(escape("a~b"), "a~0b");
    }
}
