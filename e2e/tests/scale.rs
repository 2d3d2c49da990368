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
//! snapshot written p50/p99 over the edits.
//!
//! Then apply -> enforced: a gateway process (`RUSTRONAUT_GATEWAY_BIN`, or the one next to
//! the test binary) configured from Gateway `edge-0`'s snapshot Secret through the API, as a
//! gateway pod is, listening on loopback; every Tenant's `app` endpoint is an HTTP server of
//! the test's on a non-loopback address of this machine. `SCALE_CHANGES` more edits, each
//! to a Policy of a Tenant of `edge-0`, toggling whether it allows the test's own address
//! (127.0.0.1): the time from the apply to the first request that gets the new answer (200
//! from the upstream, or 401: an anonymous request no Policy allows) is the edit's apply ->
//! enforced. Checked: the gateway denies
//! before the first edit (default deny), and every Policy ends as its last edit left it.
//! `make bench-operator` runs it
//! with 50 tenants x 20 (1,000 Resources, 1,000 Policies) on a release build; results in
//! docs/benchmarks.md.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rustronaut_crds::Policy;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::{MANAGER, World, percentile};

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

/// The operator's /metrics text (empty when it cannot be read).
fn scrape(metrics: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(metrics) else {
        return String::new();
    };
    let _ = write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// The value of the series `series` (name and labels) in `text`, 0 when absent.
fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `(builds by Gateway reconciles, builds by the status pass, builds the status pass reused)`,
/// from the operator's /metrics (`rustronaut_operator_gateway_builds_total` and
/// `rustronaut_operator_gateway_builds_shared_total`).
fn builds(metrics: &str) -> (u64, u64, u64) {
    let text = scrape(metrics);
    (
        value(
            &text,
            "rustronaut_operator_gateway_builds_total{by=\"Gateway\"}",
        ),
        value(
            &text,
            "rustronaut_operator_gateway_builds_total{by=\"ResourcePolicyStatus\"}",
        ),
        value(&text, "rustronaut_operator_gateway_builds_shared_total"),
    )
}

/// Status writes `(Resource, Policy, Tenant)` (`rustronaut_operator_status_writes_total`).
fn status_writes(metrics: &str) -> (u64, u64, u64) {
    let text = scrape(metrics);
    let kind = |k: &str| {
        value(
            &text,
            &format!("rustronaut_operator_status_writes_total{{kind=\"{k}\"}}"),
        )
    };
    (kind("Resource"), kind("Policy"), kind("Tenant"))
}

#[test]
fn the_operator_converges_at_scale_and_edits_reach_the_right_snapshot() {
    let tenants = env_usize("SCALE_TENANTS", 5).max(1);
    let per_tenant = env_usize("SCALE_PER_TENANT", 4).max(1);
    let changes = env_usize("SCALE_CHANGES", 10);
    // Namespaces scale-platform and scale-t<t>.
    let upstream = upstream_server();
    let port = support::free_port();
    let plan =
        World::new("scale", tenants, per_tenant, tenants_per_gateway()).serving(port, upstream);
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

    let created_in = rt.block_on(plan.create_all(&admin));
    let created = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &plan.platform());
    support::wait_for_within(
        "every Gateway's snapshot to hold its tenants' objects",
        Duration::from_secs(600),
        &[&operator],
        || {
            (0..plan.gateways).all(|g| {
                rt.block_on(World::snapshot(&secrets, g))
                    .is_some_and(|s| plan.complete(&s, g))
            })
        },
    );
    let snapshots_in = created.elapsed();
    // Status: every Policy ran its tests against the whole effective set and passed. Watched
    // (a reflector), not listed: a list of every Policy every 20 ms kept the API server -- the
    // bottleneck of this machine while statuses settle -- busy serialising for the test.
    let policies: Api<Policy> = Api::all(admin.clone());
    let (seen, writer) = kube::runtime::reflector::store::<Policy>();
    let watch = kube::runtime::reflector(
        writer,
        kube::runtime::watcher(policies, kube::runtime::watcher::Config::default()),
    );
    let watching = rt.spawn(futures::StreamExt::for_each(watch, |_| async {}));
    let total = plan.tenants * plan.per_tenant;
    support::wait_for_within(
        "every Policy TestsPassed=True",
        Duration::from_secs(600),
        &[&operator],
        || {
            let state = seen.state();
            state.len() == total
                && state.iter().all(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.conditions.iter().any(|c| {
                            c.type_ == "TestsPassed"
                                && c.status == "True"
                                && c.observed_generation == p.metadata.generation
                        })
                    })
                })
        },
    );
    watching.abort();
    let statuses_in = created.elapsed();
    let (settled_rss, peak_rss) = rss_mb(operator.pid());
    // The sample above falls inside the status pass that wrote the last statuses, before
    // it hands its memory back; this one is the steady state.
    std::thread::sleep(Duration::from_secs(2));
    let (settled_steady_rss, _) = rss_mb(operator.pid());
    let counts = reconciles(&metrics);
    let builds_converged = builds(&metrics);
    let writes_converged = status_writes(&metrics);

    // Edits: one Policy at a time; apply -> the right Gateway's snapshot carries it.
    let ssa = PatchParams::apply(MANAGER).force();
    let mut latencies = Vec::new();
    for k in 0..changes {
        let t = (k * 7) % plan.tenants;
        let i = k % plan.per_tenant;
        let g = plan.gateway_of(t);
        let marker = World::marker_cidr(k);
        let api: Api<Policy> = Api::namespaced(admin.clone(), &plan.ns(t));
        let obj = plan.policy(t, i, Some(k));
        rt.block_on(api.patch(&format!("p{i}"), &ssa, &Patch::Apply(&obj)))
            .unwrap();
        let applied = Instant::now();
        support::wait_for(&format!("edit {k} in edge-{g}"), &[&operator], || {
            rt.block_on(World::snapshot(&secrets, g)).is_some_and(|s| {
                s.policies.iter().any(|p| {
                    p.namespace == plan.ns(t)
                        && p.name == format!("p{i}")
                        && serde_json::to_string(&p.rules).unwrap().contains(&marker)
                })
            })
        });
        latencies.push(applied.elapsed());
    }
    // Each edit reached its own Gateway only: other Gateways never carry another tenant's marker.
    for g in 0..plan.gateways {
        let s = rt.block_on(World::snapshot(&secrets, g)).unwrap();
        assert!(
            plan.complete(&s, g),
            "edge-{g} still holds exactly its tenants"
        );
    }
    let (final_rss, final_peak) = rss_mb(operator.pid());
    let after_edits = reconciles(&metrics);
    // Once the last edit's status pass has run: it waits for the reconciles it can reuse.
    std::thread::sleep(Duration::from_secs(2));
    // Steady: the last pass has trimmed what it freed (the sample above can fall inside a
    // pass, before its memory is handed back).
    let (steady_rss, _) = rss_mb(operator.pid());
    let builds_after = builds(&metrics);
    let writes_after = status_writes(&metrics);

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
        "  status writes (Resource, Policy, Tenant) to converge: {writes_converged:?}; during the edits: {:?}",
        (
            writes_after.0 - writes_converged.0,
            writes_after.1 - writes_converged.1,
            writes_after.2 - writes_converged.2
        )
    );
    // Every Policy's status was written at least once. Read after the edits, not at
    // convergence: the operator counts a write only once the API server has answered it, a
    // moment after the test may already see it.
    assert!(
        writes_after.1 >= total as u64,
        "status writes of Policies {} < {total}: the counter or the scrape is broken",
        writes_after.1
    );
    eprintln!(
        "  operator RSS: idle {idle_rss:.1} MB, settled {settled_rss:.1} MB (2 s later {settled_steady_rss:.1} MB), peak {peak_rss:.1} MB; after edits {final_rss:.1} MB (peak {final_peak:.1} MB), 2 s later {steady_rss:.1} MB"
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

    // Apply -> enforced, through a gateway process serving edge-0's snapshot.
    let admin_addr = format!("127.0.0.1:{}", support::free_port());
    let binary = std::env::var_os("RUSTRONAUT_GATEWAY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| rustronaut_e2e::scenario::sibling_binary("rustronaut-gateway").unwrap());
    let mut cmd = Command::new(binary);
    cmd.env("KUBECONFIG", cluster.kubeconfig())
        .env("RUST_LOG", "info")
        .args([
            "--config-from",
            &format!("{}/edge-0-snapshot", plan.platform()),
        ])
        .args(["--admin-listen", &admin_addr])
        .args(["--bind-address", "127.0.0.1"])
        .args(["--threads", "1"]);
    let gateway = support::Proc::spawn(cmd, dir.path().join("gateway.log"));
    let listener = SocketAddr::from((Ipv4Addr::LOCALHOST, plan.port));
    let host = |t: usize, i: usize| format!("r{i}.t{t}.{}.example", plan.prefix);
    support::wait_for(
        "the gateway to serve edge-0's snapshot",
        &[&operator, &gateway],
        || {
            http_status(&admin_addr.parse().unwrap(), "admin", "/readyz") == Some(200)
                && http_status(&listener, &host(0, 0), "/") == Some(401)
        },
    );
    let edge0: Vec<usize> = (0..plan.tenants)
        .filter(|t| plan.gateway_of(*t) == 0)
        .collect();
    let mut allowing = BTreeSet::new();
    let mut enforced = Vec::new();
    for k in 0..changes {
        let t = edge0[k % edge0.len()];
        let i = (k / edge0.len()) % plan.per_tenant;
        // Each edit flips whether the Policy allows 127.0.0.1.
        let allow = !allowing.remove(&(t, i));
        if allow {
            allowing.insert((t, i));
        }
        let mut obj = plan.policy(t, i, Some(changes + k));
        if allow {
            obj["spec"]["rules"][0]["from"][0]["sourceCIDRs"]["cidrs"]
                .as_array_mut()
                .unwrap()
                .push("127.0.0.1/32".into());
        }
        let want = if allow { 200 } else { 401 };
        let api: Api<Policy> = Api::namespaced(admin.clone(), &plan.ns(t));
        rt.block_on(api.patch(&format!("p{i}"), &ssa, &Patch::Apply(&obj)))
            .unwrap();
        let applied = Instant::now();
        loop {
            if http_status(&listener, &host(t, i), "/") == Some(want) {
                break;
            }
            assert!(
                applied.elapsed() < Duration::from_secs(90),
                "edit {k} of p{i} in {} not enforced ({want}) within 90 s; logs:\n{}\n---\n{}",
                plan.ns(t),
                operator.log(),
                gateway.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        enforced.push(applied.elapsed());
    }
    // Every Policy answers as its last edit left it; the others still deny.
    for &t in &edge0 {
        for i in 0..plan.per_tenant {
            let want = if allowing.contains(&(t, i)) { 200 } else { 401 };
            assert_eq!(
                http_status(&listener, &host(t, i), "/"),
                Some(want),
                "r{i} in {}",
                plan.ns(t)
            );
        }
    }
    let (gateway_rss, gateway_peak) = rss_mb(gateway.pid());
    if !enforced.is_empty() {
        enforced.sort();
        eprintln!(
            "  apply -> enforced (gateway process on edge-0's snapshot, {} Resources) over {} edits: p50 {:?}, p99 {:?}, max {:?}; gateway RSS {gateway_rss:.1} MB (peak {gateway_peak:.1} MB)",
            edge0.len() * plan.per_tenant,
            enforced.len(),
            percentile(&enforced, 0.5),
            percentile(&enforced, 0.99),
            enforced.last().unwrap()
        );
    }
    drop(gateway);
    drop(operator);
}

/// The status code of `GET path` with `Host: host` on a new connection to `addr`; None when
/// there is no answer (not listening yet, closed early).
fn http_status(addr: &SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut conn = TcpStream::connect_timeout(addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An HTTP server answering 200 to every request, on a non-loopback IPv4 address of this
/// machine: the API server refuses loopback endpoints in an EndpointSlice, and the operator
/// and the gateway refuse them in an edge snapshot.
fn upstream_server() -> SocketAddr {
    let ip = host_address().expect("this machine has no non-loopback IPv4 address");
    support::http_server(ip.into(), "ok")
}

/// The first global-scope IPv4 address of an interface that is up (`ip -4 -o addr show
/// scope global up`: no loopback, no link-local).
fn host_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global", "up"])
        .output()
        .ok()?;
    // "2: eth0    inet 10.0.2.15/24 brd ... scope global eth0 ..."
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
}
