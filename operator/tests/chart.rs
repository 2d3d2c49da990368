//! The Helm chart's RBAC is generated from `rustronaut_operator::rbac`, the rules the
//! integration tests run the controllers under. This fails when `charts/rustronaut/files/`
//! differs from the code; `make chart` (`UPDATE_CHART=1`) rewrites the files.
//!
//! No cluster: the chart is rendered and installed against the real API server by
//! e2e/tests/helm.rs.

use rustronaut_operator::rbac;
use std::path::PathBuf;

fn files() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/rustronaut/files")
}

/// `(file, content)` the chart must hold. JSON is valid YAML, so the templates include the
/// files as they are.
fn generated() -> Vec<(&'static str, String)> {
    let json = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap() + "\n";
    vec![
        (
            "operator-rules.json",
            json(serde_json::to_value(rbac::cluster_role().rules).unwrap()),
        ),
        (
            "tenant-admin-rules.json",
            json(serde_json::to_value(rbac::tenant_admin_cluster_role().rules).unwrap()),
        ),
        (
            "lease-rules.json",
            json(serde_json::to_value(rbac::lease_role("any").rules).unwrap()),
        ),
    ]
}

#[test]
fn chart_rbac_is_the_rbac_the_code_was_tested_with() {
    let update = std::env::var_os("UPDATE_CHART").is_some();
    let mut stale = Vec::new();
    for (name, want) in generated() {
        let path = files().join(name);
        if update {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "the chart's RBAC differs from operator/src/rbac.rs in {stale:?}: run `make chart`"
    );
}
