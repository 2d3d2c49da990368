//! The operator binary at scale, against the real control plane, as its own ServiceAccount:
//! `SCALE_TENANTS` Tenants (default 5) with `SCALE_PER_TENANT` Resources and as many Policies
//! each (default 4), a Service with an EndpointSlice per tenant, and one Gateway per
//! `SCALE_TENANTS_PER_GATEWAY` tenants (default 10) admitting its tenants by label. Then `SCALE_CHANGES` single-Policy edits (default
//! 10).
//!
//! Checked (in CI, at the small default): every Gateway's snapshot holds exactly its own
//! tenants' Resources and Policies, every Policy reports TestsPassed=True, and every edit
//! reaches the right snapshot.
//!
//! Measured and printed (never asserted against a time): time to converge after the objects
//! are created, reconciles by kind and Gateway builds per edit (by reconciles, by the status
//! pass, reused; from the operator's /metrics), operator RSS (current and peak), and apply ->
//! snapshot written p50/p99 over the edits. `make bench-operator` runs it
//! with 50 tenants x 20 (1,000 Resources, 1,000 Policies) on a release build; results in
//! docs/benchmarks.md.

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rustronaut_contract::snapshot::Snapshot;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::{MANAGER, percentile};

const PLATFORM: &str = "scale-platform";

/// Tenants per Gateway: `SCALE_TENANTS_PER_GATEWAY` (default 10; the 10,000-object
/// scenario, 200 tenants on 50 Gateways, is 4).
fn tenants_per_gateway() -> usize {
    env_usize("SCALE_TENANTS_PER_GATEWAY", 10).max(1)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// The objects of the scenario, by kind, in creation order.
struct Plan {
    tenants: usize,
    per_tenant: usize,
    gateways: usize,
}

impl Plan {
    fn ns(t: usize) -> String {
        format!("scale-t{t}")
    }
    fn gateway_of(t: usize) -> usize {
        t / tenants_per_gateway()
    }
    /// The policy rule's CIDRs; `marker` adds one an edit can be recognised by.
    fn policy(t: usize, i: usize, marker: Option<usize>) -> Value {
        let mut cidrs = vec![format!("10.{t}.{i}.0/24")];
        if let Some(m) = marker {
            cidrs.push(format!("192.168.{}.{}/32", m / 256, m % 256));
        }
        json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": format!("p{i}"), "namespace": Self::ns(t)},
            "spec": {
                "targetRefs": [{"kind": "Resource", "name": format!("r{i}")}],
                "action": "Allow",
                "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": cidrs}}]}],
                "tests": [
                    {"name": "office", "expect": "Allow", "request": {"sourceIP": format!("10.{t}.{i}.5")}},
                    {"name": "outsider", "expect": "Deny", "request": {"sourceIP": "203.0.113.9"}}
                ]
            }
        })
    }
}

/// Creates every object with up to 16 requests in flight; returns how long that took.
async fn create_all(client: &kube::Client, plan: &Plan) -> Duration {
    let started = Instant::now();
    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns_names = vec![PLATFORM.to_string()];
    ns_names.extend((0..plan.tenants).map(Plan::ns));
    for ns in &ns_names {
        let obj = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        namespaces.create(&pp, &obj).await.unwrap();
    }
    let tenants: Api<Tenant> = Api::all(client.clone());
    for t in 0..plan.tenants {
        let obj = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": format!("t{t}"),
                         "labels": {"scale.rustronaut.io/gateway": format!("edge-{}", Plan::gateway_of(t))}},
            "spec": {"namespaces": [Plan::ns(t)], "adminNamespace": Plan::ns(t),
                     "domains": [format!("*.t{t}.scale.example")]}
        }))
        .unwrap();
        tenants.create(&pp, &obj).await.unwrap();
    }
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), PLATFORM);
    for g in 0..plan.gateways {
        let obj = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": format!("edge-{g}")},
            "spec": {"tenants": {"from": "Selector", "selector": {"matchLabels":
                        {"scale.rustronaut.io/gateway": format!("edge-{g}")}}},
                     "replicas": 1,
                     "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
        }))
        .unwrap();
        gateways.create(&pp, &obj).await.unwrap();
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..plan.tenants {
        let ns = Plan::ns(t);
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "app-1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("192.0.2.{}", t % 250 + 1)], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let mut objects: Vec<Value> = Vec::new();
        for i in 0..plan.per_tenant {
            objects.push(json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
                "metadata": {"name": format!("r{i}"), "namespace": ns},
                "spec": {
                    "gatewayRefs": [{"namespace": PLATFORM, "name": format!("edge-{}", Plan::gateway_of(t))}],
                    "protocol": "HTTP",
                    "hostnames": [format!("r{i}.t{t}.scale.example")],
                    "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]
                }
            }));
            objects.push(Plan::policy(t, i, None));
        }
        let c = client.clone();
        let gate = limit.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let pp = PostParams::default();
            Api::<Service>::namespaced(c.clone(), &ns)
                .create(&pp, &service)
                .await
                .unwrap();
            Api::<EndpointSlice>::namespaced(c.clone(), &ns)
                .create(&pp, &slice)
                .await
                .unwrap();
        });
        for obj in objects {
            let c = client.clone();
            let gate = limit.clone();
            let ns = Plan::ns(t);
            tasks.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let pp = PostParams::default();
                if obj["kind"] == "Resource" {
                    let r: RtnResource = serde_json::from_value(obj).unwrap();
                    Api::<RtnResource>::namespaced(c, &ns)
                        .create(&pp, &r)
                        .await
                        .unwrap();
                } else {
                    let p: Policy = serde_json::from_value(obj).unwrap();
                    Api::<Policy>::namespaced(c, &ns)
                        .create(&pp, &p)
                        .await
                        .unwrap();
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

/// The snapshot of Gateway `edge-<g>`, if written and loadable.
async fn snapshot(secrets: &Api<Secret>, g: usize) -> Option<Snapshot> {
    let s = secrets
        .get_opt(&format!("edge-{g}-snapshot"))
        .await
        .ok()??;
    let bytes = s.data?.get("snapshot.json")?.0.clone();
    Some(Snapshot::load(&bytes).expect("the operator writes snapshots that load"))
}

/// Whether snapshot `s` of gateway `g` holds exactly the Resources and Policies of its tenants.
fn complete(s: &Snapshot, g: usize, plan: &Plan) -> bool {
    let want: Vec<usize> = (0..plan.tenants)
        .filter(|t| Plan::gateway_of(*t) == g)
        .collect();
    let n = want.len() * plan.per_tenant;
    s.resources.len() == n
        && s.policies.len() == n
        && want.iter().all(|t| {
            (0..plan.per_tenant).all(|i| s.resource(&Plan::ns(*t), &format!("r{i}")).is_some())
        })
}

/// `VmRSS` and `VmHWM` of `pid`, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `(reconciles, mean seconds)` by kind, from the operator's /metrics
/// (`rustronaut_operator_reconcile_duration_seconds` count and sum).
fn reconciles(metrics: &str) -> BTreeMap<String, (u64, f64)> {
    use std::io::{Read, Write};
    let mut out = BTreeMap::new();
    let Ok(mut conn) = std::net::TcpStream::connect(metrics) else {
        return out;
    };
    let _ = write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        let (count, rest) = if let Some(r) =
            line.strip_prefix("rustronaut_operator_reconcile_duration_seconds_count{")
        {
            (true, r)
        } else if let Some(r) =
            line.strip_prefix("rustronaut_operator_reconcile_duration_seconds_sum{")
        {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let kind = labels
            .split(',')
            .find_map(|l| l.strip_prefix("kind=\""))
            .map(|k| k.trim_end_matches('"').to_string())
            .unwrap_or_default();
        let v = value.trim().parse::<f64>().unwrap_or(0.0);
        if count {
            out.entry(kind).or_insert((0, 0.0)).0 += v as u64;
        } else {
            *sums.entry(kind).or_default() += v;
        }
    }
    for (kind, (n, mean)) in out.iter_mut() {
        *mean = sums.get(kind).copied().unwrap_or(0.0) / (*n).max(1) as f64;
    }
    out
}

/// `(builds by Gateway reconciles, builds by the status pass, builds the status pass reused)`,
/// from the operator's /metrics (`rustronaut_operator_gateway_builds_total` and
/// `rustronaut_operator_gateway_builds_shared_total`).
fn builds(metrics: &str) -> (u64, u64, u64) {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(metrics) else {
        return (0, 0, 0);
    };
    let _ = write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    (
        value("rustronaut_operator_gateway_builds_total{by=\"Gateway\"} "),
        value("rustronaut_operator_gateway_builds_total{by=\"ResourcePolicyStatus\"} "),
        value("rustronaut_operator_gateway_builds_shared_total "),
    )
}

#[test]
fn the_operator_converges_at_scale_and_edits_reach_the_right_snapshot() {
    let tenants = env_usize("SCALE_TENANTS", 5).max(1);
    let per_tenant = env_usize("SCALE_PER_TENANT", 4).max(1);
    let changes = env_usize("SCALE_CHANGES", 10);
    let plan = Plan {
        tenants,
        per_tenant,
        gateways: tenants.div_ceil(tenants_per_gateway()),
    };
    let cluster = rustronaut_e2e::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(cluster.client());
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(support::install_operator_rbac(&admin));
    support::install_crds(cluster);
    let (operator, metrics) = support::start_operator(cluster, dir.path());
    let (idle_rss, _) = {
        std::thread::sleep(Duration::from_secs(2));
        rss_mb(operator.pid())
    };

    let created_in = rt.block_on(create_all(&admin, &plan));
    let created = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), PLATFORM);
    support::wait_for_within(
        "every Gateway's snapshot to hold its tenants' objects",
        Duration::from_secs(600),
        &[&operator],
        || {
            (0..plan.gateways).all(|g| {
                rt.block_on(snapshot(&secrets, g))
                    .is_some_and(|s| complete(&s, g, &plan))
            })
        },
    );
    let snapshots_in = created.elapsed();
    // Status: every Policy ran its tests against the whole effective set and passed.
    let policies: Api<Policy> = Api::all(admin.clone());
    let total = plan.tenants * plan.per_tenant;
    let mut last_count = 0;
    support::wait_for_within(
        "every Policy TestsPassed=True",
        Duration::from_secs(600),
        &[&operator],
        || {
            let list = rt.block_on(policies.list(&ListParams::default())).unwrap();
            last_count = list
                .items
                .iter()
                .filter(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.conditions.iter().any(|c| {
                            c.type_ == "TestsPassed"
                                && c.status == "True"
                                && c.observed_generation == p.metadata.generation
                        })
                    })
                })
                .count();
            last_count == total
        },
    );
    let statuses_in = created.elapsed();
    let (settled_rss, peak_rss) = rss_mb(operator.pid());
    let counts = reconciles(&metrics);
    let builds_converged = builds(&metrics);

    // Edits: one Policy at a time; apply -> the right Gateway's snapshot carries it.
    let ssa = PatchParams::apply(MANAGER).force();
    let mut latencies = Vec::new();
    for k in 0..changes {
        let t = (k * 7) % plan.tenants;
        let i = k % plan.per_tenant;
        let g = Plan::gateway_of(t);
        let marker = format!("192.168.{}.{}/32", k / 256, k % 256);
        let api: Api<Policy> = Api::namespaced(admin.clone(), &Plan::ns(t));
        let obj = Plan::policy(t, i, Some(k));
        rt.block_on(api.patch(&format!("p{i}"), &ssa, &Patch::Apply(&obj)))
            .unwrap();
        let applied = Instant::now();
        support::wait_for(&format!("edit {k} in edge-{g}"), &[&operator], || {
            rt.block_on(snapshot(&secrets, g)).is_some_and(|s| {
                s.policies.iter().any(|p| {
                    p.namespace == Plan::ns(t)
                        && p.name == format!("p{i}")
                        && serde_json::to_string(&p.rules).unwrap().contains(&marker)
                })
            })
        });
        latencies.push(applied.elapsed());
    }
    // Each edit reached its own Gateway only: other Gateways never carry another tenant's marker.
    for g in 0..plan.gateways {
        let s = rt.block_on(snapshot(&secrets, g)).unwrap();
        assert!(
            complete(&s, g, &plan),
            "edge-{g} still holds exactly its tenants"
        );
    }
    let (final_rss, final_peak) = rss_mb(operator.pid());
    let after_edits = reconciles(&metrics);
    // Once the last edit's status pass has run: it waits for the reconciles it can reuse.
    std::thread::sleep(Duration::from_secs(2));
    let builds_after = builds(&metrics);

    eprintln!(
        "scale: {} tenants, {} Gateways, {total} Resources, {total} Policies",
        plan.tenants, plan.gateways
    );
    eprintln!("  objects created (16 in flight) in {created_in:.2?}");
    eprintln!("  created -> every snapshot complete: {snapshots_in:.2?}");
    eprintln!("  created -> every Policy TestsPassed=True: {statuses_in:.2?}");
    eprintln!("  reconciles by kind (count, mean seconds) to converge: {counts:?}");
    eprintln!("  ... and after the edits: {after_edits:?}");
    let per_edit = |n: u64| n as f64 / changes.max(1) as f64;
    eprintln!(
        "  Gateway builds to converge: {} by reconciles, {} by the status pass, {} reused by it",
        builds_converged.0, builds_converged.1, builds_converged.2
    );
    eprintln!(
        "  Gateway builds per edit: {:.2} by reconciles, {:.2} by the status pass, {:.2} reused by it ({} Gateways)",
        per_edit(builds_after.0 - builds_converged.0),
        per_edit(builds_after.1 - builds_converged.1),
        per_edit(builds_after.2 - builds_converged.2),
        plan.gateways
    );
    eprintln!(
        "  operator RSS: idle {idle_rss:.1} MB, settled {settled_rss:.1} MB, peak {peak_rss:.1} MB; after edits {final_rss:.1} MB (peak {final_peak:.1} MB)"
    );
    if !latencies.is_empty() {
        latencies.sort();
        eprintln!(
            "  apply -> snapshot written over {} edits: p50 {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().unwrap()
        );
    }
    drop(operator);
}
