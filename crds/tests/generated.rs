//! The committed CRD YAML and API reference must be exactly what the types generate; otherwise
//! `kubectl apply -f crds/`, the chart and the docs would describe a different API than the code.

#[test]
fn committed_generated_files_match_the_types() {
    let root = rustronaut_crds::generate::repo_root();
    let drifted = rustronaut_crds::generate::drifted(&root).unwrap();
    assert!(
        drifted.is_empty(),
        "generated files differ from the types; run `make crds` and commit: {drifted:?}"
    );
}

#[test]
fn every_crd_has_status_printer_columns_short_names_and_category() {
    for crd in rustronaut_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["rustronaut".to_string()][..]),
            "{name}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has a status subresource"
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            cols.contains(&"Ready") && cols.contains(&"Reason") && cols.contains(&"Age"),
            "{name}: {cols:?}"
        );
    }
}

/// Every string and list in the spec carries a bound, so CEL cost estimation passes and one
/// object cannot make the operator do unbounded work.
#[test]
fn every_string_and_list_in_specs_is_bounded() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaProps, JSONSchemaPropsOrArray,
    };
    fn walk(path: &str, s: &JSONSchemaProps, unbounded: &mut Vec<String>) {
        match s.type_.as_deref() {
            Some("string") if s.max_length.is_none() && s.enum_.is_none() && s.format.is_none() => {
                unbounded.push(path.to_string())
            }
            Some("array") if s.max_items.is_none() => unbounded.push(path.to_string()),
            _ => {}
        }
        for (k, v) in s.properties.iter().flatten() {
            walk(&format!("{path}.{k}"), v, unbounded);
        }
        if let Some(JSONSchemaPropsOrArray::Schema(item)) = &s.items {
            walk(&format!("{path}[]"), item, unbounded);
        }
    }
    let mut unbounded = Vec::new();
    for crd in rustronaut_crds::generate::crds() {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        if let Some(spec) = schema.properties.as_ref().unwrap().get("spec") {
            walk(
                &format!("{}.spec", crd.spec.names.kind),
                spec,
                &mut unbounded,
            );
        }
    }
    // LabelSelectors come from Kubernetes' own types, bounded by the API server elsewhere.
    unbounded.retain(|p| !p.to_ascii_lowercase().contains("selector"));
    assert!(unbounded.is_empty(), "unbounded fields: {unbounded:#?}");
}
