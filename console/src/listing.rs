//! Lists made as the person, decoded into only what a page needs.
//!
//! The overview and the list pages show, per object, its name, namespace, Ready condition and
//! whether GitOps owns it. Decoding whole objects for that (`DynamicObject`, then a
//! `serde_json::Value` copy of each) kept every spec, every `managedFields` entry and every
//! `kubectl.kubernetes.io/last-applied-configuration` annotation in memory for the length of
//! a page: at 1,000 objects that was most of the console's memory. [`Listed`] keeps the
//! metadata and status a page reads and lets the decoder skip the rest without building it.
//! The explain page needs whole objects and lists them as [`Value`]s, still decoded once.

use crate::gitops;
use crate::kinds::Kind;
use kube::api::{DynamicObject, ListParams};
use kube::core::ObjectList;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt;

/// One object of a list, as the list pages read it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Listed {
    /// The parts of `metadata` the pages read.
    #[serde(default)]
    pub metadata: Meta,
    /// The conditions, nothing else of `status`.
    #[serde(default)]
    pub status: Status,
}

/// Name, namespace and what marks an object as GitOps-owned.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`; none for Tenants.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only the labels [`gitops::owner`] looks for.
    #[serde(default, deserialize_with = "gitops_marks")]
    pub labels: BTreeMap<String, String>,
    /// Only the annotations [`gitops::owner`] looks for (never last-applied-configuration).
    #[serde(default, deserialize_with = "gitops_marks")]
    pub annotations: BTreeMap<String, String>,
    /// The field managers, without the fields they own.
    #[serde(default)]
    pub managed_fields: Vec<Manager>,
}

/// One `managedFields` entry's manager.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Manager {
    /// `manager`.
    #[serde(default)]
    pub manager: String,
}

/// `status.conditions`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Status {
    /// The conditions as written.
    #[serde(default)]
    pub conditions: Vec<Value>,
}

/// Keeps the entries of a string map whose key is one of [`gitops::MARKS`]; the decoder
/// skips the others' values without allocating them.
fn gitops_marks<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Marks;
    impl<'de> Visitor<'de> for Marks {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if gitops::MARKS.contains(&key.as_ref()) {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(kept)
        }
    }
    d.deserialize_any(Marks)
}

impl Listed {
    /// The namespace segment of the object's URLs (`-` for cluster-scoped objects).
    pub fn ns_segment(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("-")
    }

    /// The object as the small JSON value [`gitops::owner`] and the Ready helpers read:
    /// `metadata` (name, namespace, the marks, the managers) and `status.conditions`.
    pub fn to_value(&self) -> Value {
        let m = &self.metadata;
        let mut meta = Map::new();
        meta.insert("name".into(), json!(m.name));
        if let Some(ns) = &m.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("labels".into(), json!(m.labels));
        meta.insert("annotations".into(), json!(m.annotations));
        let managers: Vec<Value> = m
            .managed_fields
            .iter()
            .map(|f| json!({"manager": f.manager}))
            .collect();
        meta.insert("managedFields".into(), Value::Array(managers));
        json!({"metadata": meta, "status": {"conditions": self.status.conditions}})
    }
}

/// Lists `kind` as the client's person, in `ns` or (`None`) across namespaces, decoded as `T`.
pub async fn list<T: DeserializeOwned + Clone>(
    c: &kube::Client,
    kind: Kind,
    ns: Option<&str>,
) -> Result<Vec<T>, kube::Error> {
    let ar = kind.api_resource();
    let ns = ns.filter(|_| kind.namespaced());
    let url = <DynamicObject as kube::Resource>::url_path(&ar, ns);
    let req = kube::core::Request::new(url)
        .list(&ListParams::default())
        .map_err(kube::Error::BuildRequest)?;
    let list: ObjectList<T> = c.request(req).await?;
    Ok(list.items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Value {
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {
                "name": "p", "namespace": "team",
                "labels": {"app": "x", "kustomize.toolkit.fluxcd.io/name": "apps"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsV1": {"f:spec": {"f:rules": {}}}}]
            },
            "spec": {"action": "Allow", "rules": [{"name": "all"}]},
            "status": {"observedGeneration": 1, "conditions": [
                {"type": "Ready", "status": "False", "reason": "Broken", "message": "m"}]}
        })
    }

    #[test]
    fn keeps_what_the_pages_read_and_drops_specs_and_other_annotations() {
        let l: Listed = serde_json::from_value(policy()).unwrap();
        assert_eq!(l.metadata.name, "p");
        assert_eq!(l.ns_segment(), "team");
        assert_eq!(
            l.metadata.labels.keys().collect::<Vec<_>>(),
            ["kustomize.toolkit.fluxcd.io/name"]
        );
        assert!(l.metadata.annotations.is_empty());
        assert_eq!(l.metadata.managed_fields[0].manager, "kubectl");
        let v = l.to_value();
        assert!(v.get("spec").is_none());
        assert_eq!(
            crate::web::ready(&v),
            ("False".into(), "Broken".into(), "m".into())
        );
        assert_eq!(
            gitops::owner(&v),
            gitops::owner(&policy()),
            "the slim value marks GitOps ownership as the whole object does"
        );
        assert!(gitops::owner(&v).is_some());
    }

    #[test]
    fn a_field_manager_alone_marks_gitops_ownership_too() {
        let mut p = policy();
        p["metadata"]["labels"] = Value::Null;
        p["metadata"]["managedFields"][0]["manager"] = json!("argocd-controller");
        let l: Listed = serde_json::from_value(p.clone()).unwrap();
        assert!(l.metadata.labels.is_empty());
        assert_eq!(gitops::owner(&l.to_value()), gitops::owner(&p));
        assert!(gitops::owner(&l.to_value()).is_some());
    }

    #[test]
    fn cluster_scoped_objects_use_a_dash_and_no_status_is_not_ready() {
        let l: Listed = serde_json::from_value(json!({"metadata": {"name": "t"}})).unwrap();
        assert_eq!(l.ns_segment(), "-");
        assert_eq!(crate::web::ready(&l.to_value()).0, "Unknown");
    }
}
