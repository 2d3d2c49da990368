//! The `rustronaut` binary as a CI job runs it: exit codes, and messages a person can act on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rustronaut"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A copy of the examples in a fresh directory, with `edit` applied to one file's text.
fn examples_with(file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rtn-cli-{}-{}",
        std::process::id(),
        rustronaut_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let mut body = std::fs::read_to_string(&p).unwrap();
        if name == file {
            let edited = edit(&body);
            assert_ne!(edited, body, "the edit of {file} changed nothing");
            body = edited;
        }
        std::fs::write(dir.join(name), body).unwrap();
    }
    dir
}

fn rustronaut_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn the_examples_pass_their_own_tests() {
    let out = bin()
        .args(["policy", "test"])
        .arg(examples())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("closing line {last:?}"));
    assert!(passed >= 20, "every example test runs: {stdout}");
    assert!(
        !stdout.contains("warning:"),
        "the examples compile cleanly: {stdout}"
    );
}

#[test]
fn a_broken_policy_fails_with_a_readable_message() {
    // The SRE rule now names a group nobody is in: the test that expects SREs to read fails.
    let dir = examples_with("40-policy-grafana.yaml", |s| {
        s.replacen(
            "user: {idp: okta, groups: [sre]}",
            "user: {idp: okta, groups: [sre-oncall]}",
            1,
        )
    });
    let out = bin().args(["policy", "test"]).arg(&dir).output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL acme-apps/grafana-api sre-reads-with-mfa: expected Allow, got Deny (NoAllowMatched)"
        ),
        "{stdout}"
    );
    // The other tests still run and pass.
    assert!(
        stdout.contains("ok   acme-apps/grafana-ui employee-views-dashboards"),
        "{stdout}"
    );
    // grafana-admin-can (an SRE who is also an admin) loses access too: both are reported.
    assert!(
        stdout.contains("FAIL acme-apps/grafana-admin-api grafana-admin-can: expected Allow"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().ends_with(" 2 failed"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_deny_that_stops_matching_is_caught_and_names_the_allow() {
    // Widening the admin exclusion to every SRE lets alice through: the test names the Allow.
    let dir = examples_with("40-policy-grafana.yaml", |s| {
        s.replacen(
            "groups: [grafana-admins]",
            "groups: [grafana-admins, sre]",
            1,
        )
    });
    let out = bin().args(["policy", "test"]).arg(&dir).output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL acme-apps/grafana-admin-api sre-cannot-use-admin-api: expected Deny, got Allow via acme-apps/grafana-api rule sre-read"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_invalid_manifest_is_an_error_naming_the_file() {
    let dir = examples_with("41-policy-postgres.yaml", |s| {
        s.replacen("action: Allow", "action: Maybe", 1)
    });
    let out = bin().args(["policy", "test"]).arg(&dir).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("41-policy-postgres.yaml")
            && stderr.contains("Policy \"postgres-deployer\" is invalid"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_policy_outside_any_tenant_cannot_pass_its_tests() {
    // Move the wiki policy (and its Resource) to a namespace no Tenant claims.
    let dir = examples_with("42-policy-wiki.yaml", |s| {
        s.replace("namespace: acme-apps", "namespace: nobody")
    });
    let out = bin().args(["policy", "test"]).arg(&dir).output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL nobody/wiki-access staff-edits: expected Allow, got Deny (namespace nobody belongs to no Tenant)"), "{stdout}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn explain_names_the_closest_allow_and_the_failed_clause() {
    let id = std::env::temp_dir().join(format!("rtn-cli-id-{}.yaml", std::process::id()));
    std::fs::write(
        &id,
        "user: {idp: okta, email: alice@acme.example, groups: [sre], claims: {amr: [pwd]}}\n",
    )
    .unwrap();
    let out = bin()
        .args(["policy", "explain"])
        .arg(examples())
        .args([
            "--resource",
            "acme-apps/grafana",
            "--path",
            "/api/search",
            "--identity",
        ])
        .arg(&id)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("decision: Deny (NoAllowMatched)"),
        "{stdout}"
    );
    assert!(stdout.contains("routed to rule: api"), "{stdout}");
    assert!(
        stdout.contains("closest Allow: Allow/Enforce acme-apps/grafana-api rule sre-read: require[0] not satisfied"),
        "{stdout}"
    );

    let out = bin()
        .args(["policy", "explain"])
        .arg(examples())
        .args([
            "--resource",
            "acme-apps/grafana",
            "--path",
            "/api/search",
            "--json",
            "--identity",
        ])
        .arg(&id)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["effect"], "Deny");
    assert_eq!(v["closestAllow"]["rule"], "sre-read");
    std::fs::remove_file(id).unwrap();
}

#[test]
fn explain_refuses_a_path_the_gateway_would_refuse() {
    let out = bin()
        .args(["policy", "explain"])
        .arg(examples())
        .args(["--resource", "acme-apps/grafana", "--path", "/api/%2Fadmin"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("encoded slash"), "{stderr}");
}

#[test]
fn apikey_hash_prints_a_verifiable_salted_hash() {
    use std::io::Write;
    let key = "correct-horse-battery-staple-42";
    let run = || {
        let mut child = bin()
            .args(["apikey", "hash", "--client-id", "globex"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    let hash = a.trim().strip_prefix("globex: ").expect("CLIENT_ID: HASH");
    assert!(!a.contains(key), "the key itself is never printed");
    assert_ne!(a, b, "a fresh salt every time");
    let parsed = rustronaut_contract::identity::apikey::ApiKeyHash::parse(hash).unwrap();
    assert!(parsed.matches(key));
    assert!(parsed.lookup().is_some(), "indexed by its lookup tag");
    assert!(!parsed.matches("correct-horse-battery-staple-43"));
}
