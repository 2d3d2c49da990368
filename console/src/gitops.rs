//! Whether an object is owned by a GitOps tool, which makes it read-only in the console:
//! an edit there would be reverted at the next sync and hide the drift from the repository.

use serde_json::Value;

/// Field managers of GitOps controllers (server-side apply or update).
const MANAGERS: [&str; 4] = [
    "argocd-controller",
    "argocd-application-controller",
    "kustomize-controller",
    "helm-controller",
];
/// Labels and annotations GitOps tools put on what they apply.
pub const MARKS: [&str; 5] = [
    "argocd.argoproj.io/instance",
    "argocd.argoproj.io/tracking-id",
    "kustomize.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/name",
    "app.kubernetes.io/instance-argocd",
];

/// The GitOps tool that owns `object` (with how we know), if any.
pub fn owner(object: &Value) -> Option<String> {
    let meta = &object["metadata"];
    for map in ["labels", "annotations"] {
        if let Some(m) = meta[map].as_object() {
            for mark in MARKS {
                if let Some(v) = m.get(mark).and_then(Value::as_str) {
                    let tool = if mark.starts_with("argocd") {
                        "Argo CD"
                    } else {
                        "Flux"
                    };
                    return Some(format!("{tool} ({mark}={v})"));
                }
            }
        }
    }
    meta["managedFields"].as_array()?.iter().find_map(|f| {
        let m = f["manager"].as_str()?;
        MANAGERS.contains(&m).then(|| {
            let tool = if m.starts_with("argocd") {
                "Argo CD"
            } else {
                "Flux"
            };
            format!("{tool} (field manager {m})")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_annotations_and_field_managers_mark_gitops_objects() {
        let cases = [
            (
                json!({"metadata": {"labels": {"argocd.argoproj.io/instance": "acme"}}}),
                Some("Argo CD (argocd.argoproj.io/instance=acme)"),
            ),
            (
                json!({"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": "a:x/y"}}}),
                Some("Argo CD (argocd.argoproj.io/tracking-id=a:x/y)"),
            ),
            (
                json!({"metadata": {"labels": {"kustomize.toolkit.fluxcd.io/name": "apps"}}}),
                Some("Flux (kustomize.toolkit.fluxcd.io/name=apps)"),
            ),
            (
                json!({"metadata": {"managedFields": [{"manager": "kubectl"}, {"manager": "kustomize-controller"}]}}),
                Some("Flux (field manager kustomize-controller)"),
            ),
            (
                json!({"metadata": {"managedFields": [{"manager": "argocd-controller"}]}}),
                Some("Argo CD (field manager argocd-controller)"),
            ),
            (
                json!({"metadata": {"labels": {"app": "x"}, "managedFields": [{"manager": "rustronaut-console"}]}}),
                None,
            ),
            (json!({}), None),
        ];
        for (obj, want) in cases {
            assert_eq!(owner(&obj).as_deref(), want, "{obj}");
        }
    }
}
