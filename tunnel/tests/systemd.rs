//! The connector's systemd unit (`deploy/connector/rustronaut-connector.service`) as systemd
//! reads it: `systemd-analyze verify` on a copy whose `ExecStart` names this build's binary
//! (the shipped one names `/usr/local/bin/rustronaut-tunnel`), with warnings treated as
//! failures; and the command line it runs is one the connector accepts.

use std::process::Command;

const UNIT: &str = include_str!("../../deploy/connector/rustronaut-connector.service");
const INSTALLED: &str = "/usr/local/bin/rustronaut-tunnel";

#[test]
fn the_connector_unit_is_one_systemd_accepts_and_runs_a_command_the_connector_knows() {
    let bin = env!("CARGO_BIN_EXE_rustronaut-tunnel");
    assert!(UNIT.contains(INSTALLED), "ExecStart names {INSTALLED}");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("rustronaut-connector.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED, bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd, installed by .ci/install-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // ExecStart's arguments, parsed by the connector's own command line (`--help` after
    // them stops before anything runs).
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let out = Command::new(bin)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}
