//! The logic behind the `rustronaut` command, as functions returning text so tests can call
//! them without spawning the binary (they spawn it too, to check exit codes).
#![forbid(unsafe_code)]

pub mod site;

use anyhow::{Context, Result, anyhow, bail};
use rustronaut_compile::policytest::{Prepared, compile, run_all};
use rustronaut_compile::world::World;
use rustronaut_contract::eval::ClauseFailure;
use rustronaut_contract::explain::RuleTrace;
use rustronaut_crds::manifests;
use rustronaut_crds::policy::{TestIdentity, TestRequest};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Reads every manifest under `paths` into a [`World`].
pub fn load_world(paths: &[PathBuf]) -> Result<World> {
    let mut docs = Vec::new();
    for p in paths {
        docs.extend(manifests::load(p)?);
    }
    let world = World::from_manifests(&docs)?;
    if world.policies.is_empty() && world.resources.is_empty() {
        bail!(
            "no rustronaut.io Resources or Policies found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(world)
}

/// The result of `policy test`.
#[derive(Debug, Clone)]
pub struct Report {
    /// What to print.
    pub text: String,
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
}

/// Runs every embedded Policy test. The text lists each test, then warnings about things that
/// change what the tests mean (policies that fail closed, targetRefs that name nothing), then
/// a closing `N passed, M failed` line.
pub fn test_policies(world: &World) -> Report {
    let compiled = compile(world);
    let outcomes = run_all(world, &compiled);
    let mut text = String::new();
    let (mut passed, mut failed) = (0, 0);
    for o in &outcomes {
        let status = if o.passed() {
            passed += 1;
            "ok  "
        } else {
            failed += 1;
            "FAIL"
        };
        let _ = writeln!(text, "{status} {} {}", o.policy, o.message());
    }
    for p in compiled.set.problems() {
        let _ = writeln!(text, "warning: {p} (the policy fails closed)");
    }
    for (policy, missing) in &compiled.missing_targets {
        let _ = writeln!(
            text,
            "warning: {policy}: targetRefs name no Resource: {}",
            missing.join(", ")
        );
    }
    let _ = writeln!(text, "{passed} passed, {failed} failed");
    Report {
        text,
        passed,
        failed,
    }
}

/// `policy explain`: the decision for one request, every rule that looked at it, and the
/// closest Allow with the clause that failed.
#[allow(clippy::too_many_arguments)]
pub fn explain(
    world: &World,
    resource: &str,
    identity_yaml: Option<&str>,
    method: Option<&str>,
    path: Option<String>,
    port: Option<u16>,
    source_ip: Option<String>,
    time: Option<String>,
    json: bool,
) -> Result<String> {
    let (namespace, name) = resource
        .split_once('/')
        .ok_or_else(|| anyhow!("--resource must be NAMESPACE/NAME, got {resource:?}"))?;
    let identity: Option<TestIdentity> = match identity_yaml {
        Some(text) => Some(serde_saphyr::from_str(text).context("parsing the identity file")?),
        None => None,
    };
    let method = match method {
        Some(m) => Some(
            serde_json::from_value(serde_json::Value::String(m.to_ascii_uppercase()))
                .map_err(|_| anyhow!("unknown HTTP method {m:?}"))?,
        ),
        None => None,
    };
    let request = TestRequest {
        resource: Some(name.to_string()),
        section_name: None,
        identity: identity.map(Box::new),
        method,
        path,
        port: port.map(i32::from),
        source_ip,
        time,
    };
    let compiled = compile(world);
    let claims = world.claims();
    let tenant = claims
        .tenant_of(namespace)
        .ok_or_else(|| anyhow!("namespace {namespace} belongs to no Tenant"))?;
    let prepared = Prepared::new(&compiled, tenant, namespace, name, &request)
        .map_err(|e| anyhow!("the gateway would refuse this request before policy: {e}"))?;
    let exp = rustronaut_contract::explain::explain(
        &compiled.set,
        &prepared.request(),
        prepared.now,
        "explain",
    )?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&exp)?));
    }
    let d = &exp.decision;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "decision: {:?} ({}){}",
        d.effect,
        d.reason.as_str(),
        match (&d.policy, &d.rule) {
            (Some(p), Some(r)) => format!(" by {p} rule {r}"),
            (Some(p), None) => format!(" by {p}"),
            _ => String::new(),
        }
    );
    if let Some(section) = &prepared.section {
        let _ = writeln!(out, "routed to rule: {section}");
    }
    if let Some(s) = &d.shadow {
        let _ = writeln!(
            out,
            "dry-run policies would give: {:?} ({})",
            s.effect,
            s.reason.as_str()
        );
    }
    if d.needs_login {
        let _ = writeln!(
            out,
            "a browser would be sent to log in with: {}",
            d.login_providers
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(out, "rules considered:");
    for t in &exp.rules {
        let _ = writeln!(out, "  {}", trace_line(t));
    }
    match &exp.closest_allow {
        Some(t) if !t.matched() => {
            let _ = writeln!(out, "closest Allow: {}", trace_line(t));
        }
        Some(_) => {}
        None => {
            let _ = writeln!(
                out,
                "closest Allow: none (no enforcing Allow targets this request)"
            );
        }
    }
    Ok(out)
}

fn trace_line(t: &RuleTrace) -> String {
    let rule = t.rule.as_deref().unwrap_or("(whole policy)");
    let verdict = if t.matched() {
        "matched".to_string()
    } else {
        t.failures
            .iter()
            .map(failure_text)
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "{:?}/{:?} {} rule {rule}: {verdict}",
        t.action, t.mode, t.policy
    )
}

fn failure_text(f: &ClauseFailure) -> String {
    match f {
        ClauseFailure::ToNotMatched => "to: the operation does not match".into(),
        ClauseFailure::OutsideSchedule => "when: outside the schedule".into(),
        ClauseFailure::FromNotMatched => "from: no principal matches the caller".into(),
        ClauseFailure::RequireFailed { index } => format!("require[{index}] not satisfied"),
        ClauseFailure::Excluded { index } => format!("excluded by exclude[{index}]"),
        ClauseFailure::Unresolved { reason } => format!("unresolved: {reason}"),
    }
}

/// Hashes an API key with a fresh random salt into the stored form.
pub fn hash_api_key(key: &str) -> Result<String> {
    use std::io::Read;
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .context("reading random bytes for the salt")?;
    Ok(rustronaut_contract::identity::apikey::hash_api_key(
        key, &salt,
    )?)
}
