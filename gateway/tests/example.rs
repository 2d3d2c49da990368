//! The documented standalone example (gateway/examples/standalone/README.md), run step by
//! step: its snapshot, its token script, curl over HTTP/2 with TLS. If the example rots,
//! this fails.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone")
}

fn mint(sub: &str, group: &str) -> String {
    let out = Command::new(example_dir().join("mint-token.sh"))
        .args([sub, group])
        .output()
        .expect("mint-token.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn https(extra: &[&str]) -> Resp {
    let ca = example_dir().join("dev-tls.crt");
    let ca = ca.to_str().unwrap();
    let mut args = vec![
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        "hello.localhost:18443:127.0.0.1",
    ];
    args.extend_from_slice(extra);
    args.push("https://hello.localhost:18443/hello");
    curl(&args)
}

#[test]
fn the_standalone_example_allows_a_dev_token_and_refuses_the_rest() {
    let bytes = std::fs::read(example_dir().join("snapshot.json")).unwrap();
    let snapshot: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let up = Upstream::start_on("hello", 200, "127.0.0.1:18081");
    let gw = Gateway::spawn(&bytes, &[]);
    gw.wait_ready(&snapshot);

    let alice = format!("Authorization: Bearer {}", mint("alice", "dev"));
    let r = https(&["-H", &alice]);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.version, "HTTP/2");
    assert_eq!(r.json()["upstream"], "hello");
    assert_eq!(
        r.upstream_header("x-rustronaut-user").as_deref(),
        Some("alice")
    );

    let cookie = format!("rtn_token={}", mint("alice", "dev"));
    let r = https(&["--cookie", &cookie]);
    assert_eq!(r.status, 200, "{r:?}");

    let r = https(&[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("x-rustronaut-decision-id").is_some());
    let bob = format!("Authorization: Bearer {}", mint("bob", "sales"));
    let r = https(&["-H", &bob]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}
