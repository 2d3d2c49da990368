//! docs/troubleshooting.md has a section for every condition reason the CRDs define, so a
//! new reason cannot ship without saying what it means and what to do.

#[test]
fn every_condition_reason_has_a_troubleshooting_section() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = std::fs::read_to_string(root.join("crds/src/conditions.rs")).unwrap();
    let reasons = source
        .split("pub mod reasons {")
        .nth(1)
        .and_then(|s| s.split("\n}\n").next())
        .expect("the reasons module");
    let values: Vec<&str> = reasons
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(values.len() > 20, "found {values:?}");
    let page = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
    let missing: Vec<&&str> = values
        .iter()
        .filter(|r| !page.contains(&format!("\n### {r}\n")))
        .collect();
    assert!(missing.is_empty(), "no section in docs/troubleshooting.md for {missing:?}");
}
