//! The console at scale: its pages over many objects, timed by the console itself
//! (`Server-Timing`), side by side with the same lists made directly against the API server
//! as the same person, in the same run; and the console's memory.
//!
//! `make test` runs it small (CONSOLE_OBJECTS=40, 3 rounds) to check that the pages count and
//! show every object at scale; `make bench-console` runs it with 1,000 objects and the release
//! binary and prints the table docs/benchmarks.md records. Timings are printed, never asserted.
//!
//! The objects: one Tenant per 50 (each with its namespace), one Gateway per 100, the rest half
//! Resources and half Policies in the tenants' namespaces. Nine in ten are marked Ready through
//! the status subresource (no operator runs here), so the overview lists a tenth as not Ready.
//! The person (Alice) may read the four kinds everywhere, as a platform team's member would.

mod support;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use std::time::Instant;
use support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How many objects of each kind, for `total` objects.
#[derive(Debug, Clone, Copy)]
struct Plan {
    tenants: usize,
    gateways: usize,
    resources: usize,
    policies: usize,
}

impl Plan {
    fn new(total: usize) -> Self {
        let tenants = (total / 50).max(1);
        let gateways = (total / 100).max(1);
        let rest = total.saturating_sub(tenants + gateways).max(2);
        Plan {
            tenants,
            gateways,
            resources: rest.div_ceil(2),
            policies: rest / 2,
        }
    }

    fn total(&self) -> usize {
        self.tenants + self.gateways + self.resources + self.policies
    }
}

fn ar<K: kube::Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Whether object number `i` of a kind is left not Ready: one in ten.
fn broken(i: usize) -> bool {
    i % 10 == 9
}

/// Creates the objects with up to 16 requests in flight, then marks nine in ten Ready.
async fn seed(w: &World, plan: Plan) -> Vec<String> {
    let tns: Vec<String> = (0..plan.tenants)
        .map(|t| format!("{}-t{t}", w.ns))
        .collect();
    for ns in &tns {
        apply(
            &w.admin,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    let mut objects: Vec<(ApiResource, Option<String>, Value)> = Vec::new();
    for (t, ns) in tns.iter().enumerate() {
        objects.push((
            ar::<rustronaut_crds::Tenant>(),
            None,
            json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant", "metadata": {"name": ns},
            "spec": {"namespaces": [ns], "domains": [format!("*.t{t}.bench.example")]}}),
        ));
    }
    for g in 0..plan.gateways {
        objects.push((ar::<rustronaut_crds::Gateway>(), Some(w.ns.clone()), json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway", "metadata": {"name": format!("edge-{g}")},
            "spec": {"tenants": {"from": "All"}, "replicas": 1,
                     "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}})));
    }
    for i in 0..plan.resources {
        let (t, ns) = (i % plan.tenants, &tns[i % plan.tenants]);
        objects.push((ar::<rustronaut_crds::Resource>(), Some(ns.clone()), json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": format!("r{i}"), "namespace": ns},
            "spec": {"gatewayRefs": [{"namespace": w.ns, "name": format!("edge-{}", i % plan.gateways)}],
                     "protocol": "HTTP", "hostnames": [format!("r{i}.t{t}.bench.example")],
                     "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]}})));
    }
    for i in 0..plan.policies {
        let ns = &tns[i % plan.tenants];
        objects.push((ar::<rustronaut_crds::Policy>(), Some(ns.clone()), json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": format!("p{i}"), "namespace": ns},
            "spec": {"targetRefs": [{"kind": "Resource", "name": format!("r{i}")}], "action": "Allow",
                     "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": [format!("10.{}.{}.0/24", i / 256, i % 256)]}}]}]}})));
    }
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for (ar, ns, obj) in objects {
        let n = seen.entry(ar.kind.clone()).or_default();
        let ready = !broken(*n);
        *n += 1;
        let (c, gate) = (w.admin.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let api: Api<DynamicObject> = match &ns {
                Some(ns) => Api::namespaced_with(c, ns, &ar),
                None => Api::all_with(c, &ar),
            };
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            let o: DynamicObject = serde_json::from_value(obj).unwrap();
            api.create(&Default::default(), &o).await.unwrap();
            if ready {
                let status = json!({"status": {"observedGeneration": 1, "conditions": [{
                    "type": "Ready", "status": "True", "reason": "Ready", "message": "",
                    "lastTransitionTime": "2026-12-03T00:00:00Z", "observedGeneration": 1}]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    tns
}

/// Kibibytes of resident memory of `pid`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The `app;dur=<ms>` of a response's Server-Timing header.
fn server_ms(r: &Resp) -> f64 {
    let v = r.header("server-timing").expect("a Server-Timing header");
    v.strip_prefix("app;dur=")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("Server-Timing {v}"))
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
}

/// `rounds` lists of `plural` across namespaces straight from the API server as Alice
/// (the admin's client certificate plus `Impersonate-User`, as the console impersonates),
/// on one kept-alive connection, by curl: the reference a console page is read against,
/// with no Rust in the path. Milliseconds each (curl's `time_total`), after one warm-up.
fn curl_list_as_alice(w: &World, plural: &str, rounds: usize) -> Vec<f64> {
    use base64::Engine as _;
    let kc: Value = serde_json::from_str(
        &std::fs::read_to_string(rustronaut_e2e::shared().kubeconfig()).unwrap(),
    )
    .unwrap();
    let data = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let (ca, cert, key) = (
        w.dir.join("apiserver-ca.pem"),
        w.dir.join("admin.pem"),
        w.dir.join("admin-key.pem"),
    );
    std::fs::write(
        &ca,
        data(&kc["clusters"][0]["cluster"]["certificate-authority-data"]),
    )
    .unwrap();
    std::fs::write(
        &cert,
        data(&kc["users"][0]["user"]["client-certificate-data"]),
    )
    .unwrap();
    std::fs::write(&key, data(&kc["users"][0]["user"]["client-key-data"])).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let url = format!("{server}/apis/rustronaut.io/v1alpha1/{plural}");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--fail", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-H", &format!("Impersonate-User: {ALICE_EMAIL}")])
        .args(["-H", "Accept: application/json"])
        .args(["-w", "%{time_total}\\n"]);
    for _ in 0..=rounds {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse::<f64>().unwrap() * 1e3)
        .collect();
    assert_eq!(times.len(), rounds + 1, "one time per transfer");
    times[1..].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_show_every_object_at_scale_and_the_bench_prints_their_server_time() {
    let plan = Plan::new(env_usize("CONSOLE_OBJECTS", 40));
    let rounds = env_usize("CONSOLE_ROUNDS", 3).max(1);
    let w = World::new().await;
    // Alice reads the four kinds everywhere (a platform team's member).
    let role = format!("bench-reader-{}", w.ns);
    apply(&w.admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
        "rules": [{"apiGroups": ["rustronaut.io"], "resources": ["tenants", "gateways", "resources", "policies"], "verbs": ["get", "list", "watch"]},
                  {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]}]})).await;
    apply(&w.admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE_EMAIL}]})).await;
    let pid = w._console.0.id();
    let started = Instant::now();
    let tns = seed(&w, plan).await;
    let seeded = started.elapsed();
    w.login("alice", ALICE, "/");
    let rss_idle = rss_kib(pid);

    // What each page must show, counted from the plan (the broken ones are every tenth).
    let not_ready = |n: usize| (0..n).filter(|i| broken(*i)).count();
    let counts = [
        ("Tenants", plan.tenants),
        ("Gateways", plan.gateways),
        ("Resources", plan.resources),
        ("Policies", plan.policies),
    ];
    let r = w.browser("alice", &w.url("/"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    for (title, n) in counts {
        let card = r
            .body
            .split(&format!(
                r#"<h2><a href="/k/{}">{title}</a>"#,
                title.to_lowercase()
            ))
            .nth(1)
            .unwrap_or_else(|| panic!("no {title} card in {}", r.body));
        let expect = format!(
            r#"<span class="count">{n}</span> total, <span class="count {}">{}</span> not Ready"#,
            if not_ready(n) == 0 { "ok" } else { "bad" },
            not_ready(n)
        );
        assert!(
            card.starts_with(&format!("</h2><p>{expect}")),
            "{title}: {card:.200}"
        );
    }
    let rows = r.body.matches("<tr><td>").count();
    let want: usize = counts.iter().map(|(_, n)| not_ready(*n)).sum();
    assert_eq!(rows, want, "one row per object not Ready");
    let r = w.browser("alice", &w.url("/k/policies"), &[]);
    assert!(
        r.body.contains(&format!("{0} of {0} shown", plan.policies)),
        "{:.2000}",
        r.body
    );
    assert_eq!(r.body.matches("<tr data-key=").count(), plan.policies);
    // Searching `p1` shows p1, p10-p19, p100-p199, ...
    let hits = (0..plan.policies)
        .filter(|i| format!("p{i}").contains("p1"))
        .count();
    let r = w.browser("alice", &w.url("/k/policies?q=p1"), &[]);
    assert!(
        r.body
            .contains(&format!("{hits} of {} shown", plan.policies)),
        "{:.2000}",
        r.body
    );
    let explain = format!(
        "/explain?resource={}%2Fr0&path=%2F&source_ip=10.0.0.5",
        tns[0]
    );
    let r = w.browser("alice", &w.url(&explain), &[]);
    assert!(
        r.body
            .contains("<pre class=\"explanation\"><code>decision: Allow"),
        "{:.3000}",
        r.body
    );

    // Timings: each page `rounds` times, and the same lists made directly as Alice.
    let pages = [
        ("overview /".to_string(), "/".to_string()),
        ("list /k/policies".into(), "/k/policies".into()),
        ("list /k/resources".into(), "/k/resources".into()),
        ("search /k/policies?q=p1".into(), "/k/policies?q=p1".into()),
        (
            "detail /k/policies/{ns}/p0".into(),
            format!("/k/policies/{}/p0", tns[0]),
        ),
        ("explain /explain?resource=...".into(), explain.clone()),
    ];
    let mut table = Vec::new();
    for (label, path) in &pages {
        let mut took = Vec::new();
        for _ in 0..rounds {
            let r = w.browser("alice", &w.url(path), &[]);
            assert_eq!(r.status, 200, "{path}: {r:?}");
            took.push(server_ms(&r));
        }
        table.push((label.clone(), took, rss_kib(pid)));
    }
    let rss_after = rss_kib(pid);
    let mut reference = Vec::new();
    for plural in ["tenants", "gateways", "resources", "policies"] {
        let took = curl_list_as_alice(&w, plural, rounds);
        reference.push((format!("list {plural}"), took));
    }

    println!(
        "console at scale: {} objects ({} Tenants, {} Gateways, {} Resources, {} Policies), seeded in {:.1} s, {rounds} rounds",
        plan.total(),
        plan.tenants,
        plan.gateways,
        plan.resources,
        plan.policies,
        seeded.as_secs_f64()
    );
    println!(
        "| page (console, Server-Timing) | p50 ms | p99 ms | max ms | console RSS after, MiB |"
    );
    println!("|---|---|---|---|---|");
    for (label, took, rss) in &table {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
            quantile(took, 0.5),
            quantile(took, 0.99),
            quantile(took, 1.0),
            *rss as f64 / 1024.0
        );
    }
    println!(
        "| reference: the same list from the API server, as Alice, fetched by curl | p50 ms | p99 ms | max ms | |"
    );
    for (label, took) in &reference {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | |",
            quantile(took, 0.5),
            quantile(took, 0.99),
            quantile(took, 1.0)
        );
    }
    println!(
        "console RSS: {:.1} MiB after seeding and login, {:.1} MiB after the pages",
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
}
