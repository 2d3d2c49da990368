//! Which pods a sidecar Resource selects and which of them run its current sidecar: pure,
//! from the pods' metadata (the reconciler's metadata-only pod watch).
//!
//! ```text
//!  selected    pods of the Resource's namespace, not terminating, that workload.selector
//!              matches
//!  protected   of those, pods whose INJECTED_LABEL names this Resource and whose
//!              PORTS_ANNOTATION lists exactly its current workload.ports (in any order)
//!  overlap     another sidecar Resource of the namespace selects one of the same pods:
//!              injection refuses such a pod, so both Resources say so
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use rustronaut_crds::Resource;
use rustronaut_crds::resource::{Workload, WorkloadStatus, sidecar_names};
use rustronaut_crds::tenancy::selector_matches;
use std::collections::{BTreeMap, BTreeSet};

/// At most this many unprotected pods are named (the status field's bound).
pub const MAX_NAMED: usize = 10;

/// The metadata of one pod that counting needs.
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    /// Name.
    pub name: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// Whether it is being deleted (a terminating pod is on its way out: not counted).
    pub terminating: bool,
}

/// Why a selector cannot be used, for the `InvalidSelector` condition. The API server only
/// checks a LabelSelector's shape in a CRD, not its meaning, and the webhook and the
/// NetworkPolicy need a meaning: an unknown operator, or values where the operator takes
/// none (or none where it needs some), is refused here rather than read as "nothing".
pub fn check_selector(selector: &LabelSelector) -> Result<(), String> {
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        let at = format!("workload.selector.matchExpressions[{i}]");
        if e.key.is_empty() {
            return Err(format!("{at}.key is empty"));
        }
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("{at}: operator {} needs values", e.operator));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("{at}: operator {} takes no values", e.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "{at}: unknown operator {other:?} (In, NotIn, Exists or DoesNotExist)"
                ));
            }
        }
    }
    Ok(())
}

/// The workload's ports as `(port, sidecarPort)` pairs.
fn spec_ports(workload: &Workload) -> BTreeSet<(i32, i32)> {
    workload
        .ports
        .iter()
        .map(|p| (p.port, p.sidecar_port))
        .collect()
}

/// [`sidecar_names::PORTS_ANNOTATION`] as `(port, sidecarPort)` pairs; None when it is not
/// of the form `port:sidecarPort,...`.
pub fn parse_ports(annotation: &str) -> Option<BTreeSet<(i32, i32)>> {
    annotation
        .split(',')
        .map(|pair| {
            let (a, b) = pair.trim().split_once(':')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// Whether `pod` runs a sidecar for Resource `name` with exactly `ports`.
fn protected(pod: &Pod<'_>, name: &str, ports: &BTreeSet<(i32, i32)>) -> bool {
    pod.labels
        .get(sidecar_names::INJECTED_LABEL)
        .map(String::as_str)
        == Some(name)
        && pod
            .annotations
            .get(sidecar_names::PORTS_ANNOTATION)
            .and_then(|a| parse_ports(a))
            .is_some_and(|p| &p == ports)
}

/// What status reports about a sidecar Resource's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Selected, protected and (up to [`MAX_NAMED`]) unprotected pods.
    pub workload: WorkloadStatus,
    /// Other sidecar Resources of the namespace that select one of the same pods, sorted.
    pub overlaps: Vec<String>,
}

/// The pods of `res` among `pods` (the pods of its namespace), and the Resources among
/// `others` (the other sidecar Resources of the namespace) that select one of them. `res`'s
/// selector must have passed [`check_selector`]; others whose selector does not are
/// ignored (they select nothing, and say so themselves).
pub fn view(res: &Resource, workload: &Workload, others: &[&Resource], pods: &[Pod<'_>]) -> View {
    let name = res.name_any();
    let ports = spec_ports(workload);
    let live: Vec<&Pod<'_>> = pods.iter().filter(|p| !p.terminating).collect();
    let mut selected: Vec<&Pod<'_>> = live
        .iter()
        .copied()
        .filter(|p| selector_matches(&workload.selector, p.labels))
        .collect();
    selected.sort_by_key(|p| p.name);
    let mut unprotected: Vec<String> = selected
        .iter()
        .filter(|p| !protected(p, &name, &ports))
        .map(|p| p.name.to_string())
        .collect();
    let protected_count = selected.len() - unprotected.len();
    unprotected.truncate(MAX_NAMED);
    let mut overlaps: Vec<String> = others
        .iter()
        .filter(|o| o.name_any() != name)
        .filter_map(|o| {
            let w = o.spec.workload.as_ref()?;
            check_selector(&w.selector).ok()?;
            selected
                .iter()
                .any(|p| selector_matches(&w.selector, p.labels))
                .then(|| o.name_any())
        })
        .collect();
    overlaps.sort();
    overlaps.dedup();
    View {
        workload: WorkloadStatus {
            selected_pods: i32::try_from(selected.len()).unwrap_or(i32::MAX),
            protected_pods: i32::try_from(protected_count).unwrap_or(i32::MAX),
            unprotected_pods: unprotected,
        },
        overlaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(name: &str, selector: serde_json::Value) -> Resource {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"protocol": "HTTP", "workload": {"selector": selector,
                     "ports": [{"port": 8080, "sidecarPort": 15080},
                               {"port": 9090, "sidecarPort": 15090}]}}
        }))
        .unwrap()
    }

    struct Meta(BTreeMap<String, String>, BTreeMap<String, String>, bool);

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)], terminating: bool) -> Meta {
        let m = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Meta(m(labels), m(annotations), terminating)
    }

    #[test]
    fn counts_selected_protected_and_names_the_unprotected() {
        let res = resource("orders", json!({"matchLabels": {"app": "orders"}}));
        let injected = [("app", "orders"), (sidecar_names::INJECTED_LABEL, "orders")];
        let pods = [
            // Current ports in another order: protected.
            (
                "a",
                meta(
                    &injected,
                    &[(sidecar_names::PORTS_ANNOTATION, "9090:15090,8080:15080")],
                    false,
                ),
            ),
            // Injected for the old ports: not protected.
            (
                "b",
                meta(
                    &injected,
                    &[(sidecar_names::PORTS_ANNOTATION, "8080:15080")],
                    false,
                ),
            ),
            // Never injected.
            ("c", meta(&[("app", "orders")], &[], false)),
            // Injected for another Resource.
            (
                "d",
                meta(
                    &[("app", "orders"), (sidecar_names::INJECTED_LABEL, "other")],
                    &[(sidecar_names::PORTS_ANNOTATION, "8080:15080,9090:15090")],
                    false,
                ),
            ),
            // Terminating, and not selected.
            ("e", meta(&[("app", "orders")], &[], true)),
            ("f", meta(&[("app", "web")], &[], false)),
        ];
        let pods: Vec<Pod<'_>> = pods
            .iter()
            .map(|(n, m)| Pod {
                name: n,
                labels: &m.0,
                annotations: &m.1,
                terminating: m.2,
            })
            .collect();
        let w = res.spec.workload.clone().unwrap();
        let v = view(&res, &w, &[], &pods);
        assert_eq!(
            v,
            View {
                workload: WorkloadStatus {
                    selected_pods: 4,
                    protected_pods: 1,
                    unprotected_pods: vec!["b".into(), "c".into(), "d".into()],
                },
                overlaps: vec![],
            }
        );
    }

    #[test]
    fn names_at_most_ten_and_reports_overlap_both_ways() {
        let a = resource("a", json!({"matchLabels": {"app": "orders"}}));
        let b = resource(
            "b",
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders", "web"]}]}),
        );
        let c = resource("c", json!({"matchLabels": {"app": "nothing"}}));
        let broken = resource(
            "x",
            json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
        );
        let metas: Vec<(String, Meta)> = (0..12)
            .map(|i| {
                (
                    format!("pod-{i:02}"),
                    meta(&[("app", "orders")], &[], false),
                )
            })
            .collect();
        let pods: Vec<Pod<'_>> = metas
            .iter()
            .map(|(n, m)| Pod {
                name: n,
                labels: &m.0,
                annotations: &m.1,
                terminating: m.2,
            })
            .collect();
        let all = [&a, &b, &c, &broken];
        let va = view(&a, a.spec.workload.as_ref().unwrap(), &all, &pods);
        assert_eq!(va.workload.selected_pods, 12);
        assert_eq!(va.workload.unprotected_pods.len(), MAX_NAMED);
        assert_eq!(va.workload.unprotected_pods[0], "pod-00");
        assert_eq!(va.overlaps, ["b"]);
        let vb = view(&b, b.spec.workload.as_ref().unwrap(), &all, &pods);
        assert_eq!(vb.overlaps, ["a"]);
        let vc = view(&c, c.spec.workload.as_ref().unwrap(), &all, &pods);
        assert_eq!(vc.workload, WorkloadStatus::default());
        assert!(vc.overlaps.is_empty());
    }

    #[test]
    fn selectors_without_a_meaning_are_refused() {
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        assert!(check_selector(&sel(json!({"matchLabels": {"app": "x"}}))).is_ok());
        assert!(
            check_selector(&sel(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]})
            ))
            .is_ok()
        );
        let e = check_selector(&sel(
            json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}),
        ));
        assert_eq!(
            e.unwrap_err(),
            "workload.selector.matchExpressions[0]: unknown operator \"Near\" (In, NotIn, Exists or DoesNotExist)"
        );
        assert!(
            check_selector(&sel(
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
            ))
            .is_err()
        );
        assert!(
            check_selector(&sel(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ))
            .is_err()
        );
    }

    #[test]
    fn the_ports_annotation_is_read_as_a_set_of_pairs() {
        assert_eq!(
            parse_ports("8080:15080, 9090:15090"),
            Some(BTreeSet::from([(8080, 15080), (9090, 15090)]))
        );
        assert_eq!(parse_ports("8080"), None);
        assert_eq!(parse_ports("8080:x"), None);
    }
}
