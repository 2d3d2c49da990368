//! HTTP/2 conformance: h2spec (built by e2e/scripts/tools.sh) against the HTTPS listener of
//! the standalone example (gateway/examples/standalone), every test must pass.
//!
//! h2spec sends no credentials and has no option to add a header, and a request the policy
//! refuses is answered from its headers alone (401) before h2spec sends the frames some
//! tests are about (docs/gateway.md, h2spec). The example's policy is therefore opened to
//! anonymous callers here, so every h2spec request is forwarded to an upstream the way an
//! allowed request is; `localhost` is added to the certificate and Resource hostnames
//! because h2spec connects to a name it can resolve.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn example_snapshot() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone/snapshot.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `(total, passed, the line)` from h2spec's summary line, `145 tests, 145 passed, 0 skipped, 0 failed`.
fn summary(out: &str) -> Option<(u32, u32, &str)> {
    out.lines().find_map(|l| {
        let l = l.trim();
        let (total, rest) = l.split_once(" tests, ")?;
        let (passed, _) = rest.split_once(" passed")?;
        Some((total.parse().ok()?, passed.parse().ok()?, l))
    })
}

/// `$RUSTRONAUT_TOOLS_BIN`, else what `e2e/scripts/tools.sh bindir` builds and prints (the
/// script is found from this crate, not from the e2e crate's build, which a shared target
/// directory may have compiled in another checkout).
fn tools_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUSTRONAUT_TOOLS_BIN") {
        return PathBuf::from(dir);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/scripts/tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("bindir")
        .output()
        .expect("tools.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn summary_lines_parse() {
    assert_eq!(
        summary("x\n145 tests, 142 passed, 0 skipped, 3 failed\n"),
        Some((145, 142, "145 tests, 142 passed, 0 skipped, 3 failed"))
    );
    assert_eq!(summary("Finished in 1.2 seconds"), None);
}

#[test]
fn h2spec_passes_against_the_https_listener() {
    let bin = tools_bin().join("h2spec");
    assert!(
        bin.exists(),
        "{} missing (e2e/scripts/tools.sh)",
        bin.display()
    );

    let up = Upstream::start("hello");
    let port = free_port();
    let mut snap = example_snapshot();
    snap["listeners"][0]["port"] = json!(port);
    snap["listeners"][0]["tls"]["certificates"][0]["hostnames"] =
        json!(["hello.localhost", "localhost"]);
    snap["tenants"][0]["domains"] = json!(["*.localhost", "hello.localhost", "localhost"]);
    snap["resources"][0]["hostnames"] = json!(["hello.localhost", "localhost"]);
    snap["resources"][0]["rules"][0]["upstreams"][0]["kind"]["service"]["addresses"] =
        json!([up.addr.to_string()]);
    snap["policies"][0]["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "h2spec", "from": ["anonymous"]}));
    let gw = Gateway::start(&snap);

    let out = Command::new(&bin)
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-t",
            "-k",
            "-o",
            "5",
        ])
        .output()
        .expect("h2spec runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (total, passed, line) = summary(&stdout).unwrap_or_else(|| {
        panic!(
            "no h2spec summary:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!("h2spec: {line}");
    assert!(total >= 145, "{line}");
    assert_eq!(passed, total, "{stdout}\n{}", gw.log());
    assert!(out.status.success(), "{line}");
    assert!(up.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
}
