//! Observability (issue 18, item 2), checked with the real tools of the ecosystem, built by
//! e2e/scripts/tools.sh from the Prometheus Go module:
//!
//! - the chart's ServiceMonitor, PodMonitors, PrometheusRule and dashboard ConfigMaps are off
//!   by default and render as intended when enabled (`helm template`, `helm lint --strict`);
//! - the alert rules pass `promtool check rules`, and `promtool test rules` with
//!   charts/rustronaut/tests/alerts-test.yaml, where each alert must fire on some series and
//!   stay quiet on others;
//! - every dashboard query and alert expression parses with the PromQL parser of the same
//!   Prometheus version (the `promql-check` wrapper in e2e/tools/prometheus) and names only
//!   metrics the project exports, as listed in docs/observability.md; the dashboards have what
//!   Grafana needs, and match Grafana's own schema types (grafana-foundation-sdk, decoded
//!   strictly by the `grafana-schema` wrapper in e2e/tools/grafana-schema);
//! - the operator's metrics are the documented ones, with bounded labels (the gateway's and the
//!   tunnel's are checked the same way by unit tests in their crates).
//!
//! - the operator binary exports one span per reconcile over OTLP/HTTP, under kube-runtime's
//!   span that names what caused it (a minimal receiver, rustronaut_e2e::otlp, takes the
//!   OpenTelemetry SDK's own protobuf);
//! - the rendered ServiceMonitor, PodMonitors and PrometheusRule pass a server-side dry run
//!   against the real API server with prometheus-operator's own CRDs installed (their YAML from
//!   its Go module, fetched by tools.sh).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;

/// Every optional observability object on.
const ALL_ON: [&str; 4] = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitors.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboards.enabled=true",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("charts/rustronaut")
}

fn tools() -> PathBuf {
    rustronaut_e2e::build_tools().expect("the Go-built tools (e2e/scripts/tools.sh)")
}

/// `helm template` with `sets`: (success, stdout or stderr).
fn template(bin: &Path, sets: &[&str]) -> Result<String, String> {
    let mut cmd = support::helm(bin, None);
    cmd.args(["template", "rtn"])
        .arg(chart())
        .args(["--namespace", "rustronaut-system"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The rendered objects, as JSON.
fn render(bin: &Path, sets: &[&str]) -> Vec<Value> {
    let text = template(bin, sets).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("YAML");
            serde_json::to_value(v).expect("JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn dashboard_configmaps(docs: &[Value]) -> Vec<&Value> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect()
}

/// One row of the metric tables of docs/observability.md.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Documented {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
}

/// The metric tables of docs/observability.md: rows `| \`name\` | type | \`label\`, ... | ... |`.
fn documented() -> Vec<Documented> {
    let text = std::fs::read_to_string(root().join("docs/observability.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `rustronaut_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Documented {
                name: cells[1].trim_matches('`').to_string(),
                kind: cells[2].to_string(),
                labels: cells[3]
                    .split(',')
                    .map(|c| c.trim().trim_matches('`').to_string())
                    .filter(|c| !c.is_empty())
                    .collect(),
            }
        })
        .collect()
}

/// The series names a query may select: the documented metrics (a histogram as its
/// `_bucket`, `_sum` and `_count`), and Prometheus's own `up`.
fn exported_series() -> BTreeSet<String> {
    let mut names = BTreeSet::from(["up".to_string()]);
    for d in documented() {
        if d.kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{s}", d.name));
            }
        } else {
            names.insert(d.name);
        }
    }
    names
}

/// Families of a text exposition: sample name (a histogram by its base name) -> (type, label
/// names other than `le`).
fn exposition(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let types: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let (family, kind) = if let Some(k) = types.get(name) {
            (name.to_string(), k.to_string())
        } else if let Some(k) = name.strip_suffix("_total").and_then(|b| types.get(b)) {
            (name.to_string(), k.to_string())
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            (
                base.to_string(),
                types.get(base).unwrap_or(&"untyped").to_string(),
            )
        };
        let entry = out.entry(family).or_insert((kind, BTreeSet::new()));
        if let Some(labels) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) {
            for pair in labels.0.split("\",") {
                if let Some((k, _)) = pair.split_once("=\"")
                    && k != "le"
                {
                    entry.1.insert(k.trim_matches(',').to_string());
                }
            }
        }
    }
    out
}

/// Runs `promql-check` on dashboard files, or on `exprs` (name, expression) given on stdin.
fn promql_check(bin: &Path, files: &[PathBuf], exprs: &[(String, String)]) -> Vec<Value> {
    let mut cmd = Command::new(bin.join("promql-check"));
    if exprs.is_empty() {
        cmd.args(files);
    } else {
        cmd.arg("-exprs");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("promql-check runs");
    let input: Vec<Value> = exprs
        .iter()
        .map(|(n, e)| serde_json::json!({"name": n, "expr": e}))
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "promql-check failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Parse errors and metric names outside `exported`, one line each.
fn query_problems(results: &[Value], exported: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for r in results {
        let at = format!("{} / {}: {}", r["dashboard"], r["panel"], r["expr"]);
        if let Some(e) = r["error"].as_str() {
            problems.push(format!("{at}: does not parse: {e}"));
            continue;
        }
        let metrics = r["metrics"].as_array().cloned().unwrap_or_default();
        if metrics.is_empty() {
            problems.push(format!("{at}: selects no metric by name"));
        }
        for m in metrics {
            let m = m.as_str().unwrap_or_default();
            if !exported.contains(m) {
                problems.push(format!("{at}: {m} is not a metric the project exports"));
            }
        }
    }
    problems
}

#[test]
fn monitors_rules_and_dashboards_are_off_by_default_and_render_when_enabled() {
    let bin = tools();
    let defaults = render(&bin, &[]);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            of_kind(&defaults, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
    assert!(dashboard_configmaps(&defaults).is_empty());

    let docs = render(&bin, &ALL_ON);
    // The ServiceMonitor selects the operator's metrics Service, by its labels and port name.
    let sm = of_kind(&docs, "ServiceMonitor");
    assert_eq!(sm.len(), 1, "one ServiceMonitor");
    let service = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "rustronaut-operator-metrics")
        .expect("the metrics Service");
    let selector = sm[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&service["metadata"]["labels"][k], v, "Service label {k}");
    }
    assert_eq!(
        sm[0]["spec"]["namespaceSelector"]["matchNames"][0],
        "rustronaut-system"
    );
    assert_eq!(sm[0]["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");

    // PodMonitors: gateway and hub pods of every namespace, admin port, /metrics, and the
    // Gateway's name as the `gateway` label the alerts and dashboards group by.
    let pms = of_kind(&docs, "PodMonitor");
    let mut selected: Vec<&str> = pms
        .iter()
        .map(|p| {
            let spec = &p["spec"];
            assert_eq!(spec["namespaceSelector"]["any"], true);
            let ep = &spec["podMetricsEndpoints"][0];
            assert_eq!(ep["port"], "admin");
            assert_eq!(ep["path"], "/metrics");
            assert_eq!(ep["relabelings"][0]["targetLabel"], "gateway");
            assert_eq!(
                ep["relabelings"][0]["sourceLabels"][0],
                "__meta_kubernetes_pod_label_app_kubernetes_io_instance"
            );
            spec["selector"]["matchLabels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap()
        })
        .collect();
    selected.sort();
    assert_eq!(selected, ["rustronaut-gateway", "rustronaut-tunnel-hub"]);

    // The PrometheusRule holds files/prometheus-rules.yaml as is.
    let rule = of_kind(&docs, "PrometheusRule");
    assert_eq!(rule.len(), 1);
    let file: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("files/prometheus-rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule[0]["spec"], serde_json::to_value(file).unwrap());

    // One dashboard ConfigMap per file, each holding JSON.
    let cms = dashboard_configmaps(&docs);
    assert_eq!(cms.len(), 3, "gateway, operator, tunnel");
    for cm in cms {
        for (key, json) in cm["data"].as_object().unwrap() {
            serde_json::from_str::<Value>(json.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{key} is not JSON: {e}"));
        }
    }

    // Extra labels reach the objects (a Prometheus selects monitors by them).
    let labelled = render(
        &bin,
        &[
            ALL_ON[0],
            "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        ],
    );
    assert_eq!(
        of_kind(&labelled, "ServiceMonitor")[0]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );

    // A ServiceMonitor without the Service it selects is refused, saying why.
    let err = template(&bin, &[ALL_ON[0], "metrics.service=false"]).unwrap_err();
    assert!(
        err.contains("metrics.serviceMonitor.enabled needs metrics.service"),
        "{err}"
    );

    let mut lint = support::helm(&bin, None);
    lint.args(["lint", "--strict"]).arg(chart());
    for s in ALL_ON {
        lint.args(["--set", s]);
    }
    support::run(lint);
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let bin = tools();
    let docs = render(&bin, &["metrics.prometheusRule.enabled=true"]);
    let rule = of_kind(&docs, "PrometheusRule");
    let spec = &rule[0]["spec"];
    let dir = tempfile::tempdir().unwrap();
    // promtool reads the groups as the PrometheusRule carries them, beside the unit tests
    // (which name `rules.yaml`).
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(spec).unwrap(),
    )
    .unwrap();
    let tests_file = chart().join("tests/alerts-test.yaml");
    std::fs::copy(&tests_file, dir.path().join("alerts-test.yaml")).unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "alerts-test.yaml"],
    ] {
        let out = Command::new(bin.join("promtool"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("promtool {}:\n{text}", args.join(" "));
        assert!(
            out.status.success(),
            "promtool {} failed:\n{text}",
            args.join(" ")
        );
    }

    // Every alert: tested firing and quiet, and documented with what to do.
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&tests_file).unwrap()).unwrap();
    let tests = serde_json::to_value(tests).unwrap();
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_string();
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let page = std::fs::read_to_string(root().join("docs/observability.md")).unwrap();
    let mut exprs = Vec::new();
    let mut alerts = BTreeSet::new();
    for g in spec["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"]
                .as_str()
                .expect("alerting rules only")
                .to_string();
            assert!(fires.contains(&name), "{name}: no test where it fires");
            assert!(
                quiet.contains(&name),
                "{name}: no test where it stays quiet"
            );
            assert!(
                page.contains(&format!("\n### {name}\n")),
                "{name}: no section in docs/observability.md"
            );
            assert!(
                ["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            exprs.push((name.clone(), r["expr"].as_str().unwrap().to_string()));
            alerts.insert(name);
        }
    }
    assert_eq!(
        alerts.len(),
        8,
        "the alerts of docs/observability.md: {alerts:?}"
    );
    let problems = query_problems(&promql_check(&bin, &[], &exprs), &exported_series());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The chart's dashboard files, sorted: gateway, operator, tunnel.
fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("files/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "gateway, operator, tunnel");
    files
}

/// The dashboards against Grafana's own schema types (e2e/tools/grafana-schema, the
/// grafana-foundation-sdk decoding strictly: unknown or mistyped fields, missing required
/// ones, panel options and field config not of the panel plugin's schema). A copy with one
/// misspelled panel field is refused, so the check can fail.
#[test]
fn dashboards_match_grafanas_schema() {
    let bin = tools().join("grafana-schema");
    let files = dashboard_files();
    let tmp = tempfile::tempdir().unwrap();
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    let panel = bad["panels"][1].as_object_mut().expect("a panel");
    let title = panel.remove("title").expect("a title");
    panel.insert("titel".into(), title);
    let bad_file = tmp.path().join("misspelled.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();

    let out = Command::new(&bin)
        .args(&files)
        .arg(&bad_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grafana-schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), files.len() + 1, "{results:?}");
    for r in &results[..files.len()] {
        assert_eq!(r["errors"], serde_json::json!([]), "{}", r["file"]);
    }
    let refused = results[files.len()]["errors"].as_array().unwrap();
    assert!(
        refused.iter().any(|e| e
            .as_str()
            .unwrap_or_default()
            .contains("unexpected field 'titel'")),
        "the misspelled field passed: {refused:?}"
    );
}

#[test]
fn dashboards_parse_and_name_only_exported_metrics() {
    let bin = tools();
    let files = dashboard_files();

    // What Grafana needs: a stable uid, a title, a schemaVersion, the datasource variable,
    // and every panel and query on `${datasource}` (so an import asks for the data source).
    let mut uids = BTreeSet::new();
    let mut queries = 0;
    for f in &files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let at = f.display();
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40 && uids.insert(uid.to_string()),
            "{at}: uid"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{at}: title"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{at}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().expect("templating");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{at}: no datasource variable"
        );
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{at}: variable {}",
                v["name"]
            );
        }
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().expect("panels") {
            let title = &p["title"];
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{at}: {title}: id"
            );
            assert!(
                p["gridPos"]["w"].as_u64().is_some(),
                "{at}: {title}: gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{at}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{at}: {title}: no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{at}: {title}");
                queries += 1;
            }
        }
    }

    let results = promql_check(&bin, &files, &[]);
    assert_eq!(results.len(), queries, "every query checked");
    let problems = query_problems(&results, &exported_series());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn monitors_and_rules_pass_a_dry_run_against_prometheus_operator_crds() {
    let cluster = rustronaut_e2e::shared();
    let bin = tools();
    let mut crds = cluster.kubectl();
    crds.args([
        "apply",
        "--server-side",
        "--field-manager",
        "rustronaut-e2e",
    ]);
    for k in ["servicemonitors", "podmonitors", "prometheusrules"] {
        crds.arg("-f")
            .arg(bin.join(format!("monitoring.coreos.com_{k}.yaml")));
    }
    support::run(crds);
    let mut wait = cluster.kubectl();
    wait.args(["wait", "--for=condition=Established", "--timeout=60s"])
        .args([
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ]);
    support::run(wait);
    // A dry-run Namespace is not created: the objects' namespace must exist.
    let _ = cluster
        .kubectl()
        .args(["create", "namespace", "rustronaut-system"])
        .output();

    let docs = render(&bin, &ALL_ON);
    let items: Vec<&Value> = ["ServiceMonitor", "PodMonitor", "PrometheusRule"]
        .iter()
        .flat_map(|k| of_kind(&docs, k))
        .chain(dashboard_configmaps(&docs))
        .collect();
    assert_eq!(items.len(), 7);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("monitoring.json");
    std::fs::write(
        &file,
        serde_json::to_string(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        .unwrap(),
    )
    .unwrap();
    let out = cluster
        .kubectl()
        .args(["apply", "--server-side", "--dry-run=server"])
        .args(["--field-manager", "observability-check", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the API server refused:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in [
        "servicemonitor",
        "podmonitor",
        "prometheusrule",
        "configmap",
    ] {
        assert!(text.contains(kind), "{kind} in the dry run:\n{text}");
    }
}

/// Label names that would hold a client's identity or address: unbounded.
const UNBOUNDED_LABELS: [&str; 7] = [
    "client",
    "ip",
    "remote",
    "peer_address",
    "user",
    "path",
    "url",
];

#[test]
fn operator_metrics_are_the_documented_ones_with_bounded_labels() {
    use rustronaut_operator::metrics::Metrics;
    let m = Metrics::default();
    // One sample in every family, so each shows its labels.
    m.observe(
        "Gateway",
        std::time::Duration::from_millis(3),
        Some("Apply"),
    );
    m.leader.set(1);
    m.gateway_built("acme", "edge", Some("sha256:a"), Some("NoTenant"));
    m.admitted("injected");
    m.gateway_builds("Gateway", 1);
    m.status_written("Policy");
    let mut registry = prometheus_client::registry::Registry::default();
    m.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();

    let encoded: Vec<Documented> = exposition(&text)
        .into_iter()
        .map(|(name, (kind, labels))| Documented { name, kind, labels })
        .collect();
    let mut documented: Vec<Documented> = documented()
        .into_iter()
        .filter(|d| d.name.starts_with("rustronaut_operator_"))
        .collect();
    documented.sort();
    assert_eq!(
        encoded, documented,
        "docs/observability.md, Operator, against /metrics"
    );
    for d in &encoded {
        for l in &d.labels {
            assert!(
                !UNBOUNDED_LABELS.contains(&l.as_str()),
                "{}: label {l}",
                d.name
            );
        }
    }
}

#[test]
fn the_operator_exports_a_span_per_reconcile_under_its_cause_over_otlp() {
    let cluster = rustronaut_e2e::shared();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(cluster.client());
    rt.block_on(support::install_operator_rbac(&admin));
    support::install_crds(cluster);
    let ns = rt.block_on(rustronaut_e2e::namespace(&admin, "traced"));
    let collector = rustronaut_e2e::otlp::Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{}", collector.addr);
    let (mut operator, _) =
        support::start_operator_with(cluster, dir.path(), &["--otlp-endpoint", &endpoint]);
    support::kubectl_apply(
        cluster,
        &format!(
            "apiVersion: rustronaut.io/v1alpha1\nkind: Gateway\nmetadata: {{name: traced, namespace: {ns}}}\nspec:\n  tenants: {{from: All}}\n  replicas: 1\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}]\n"
        ),
    );
    let secret = || {
        cluster
            .kubectl()
            .args(["get", "secret", "-n", &ns, "traced-snapshot", "-o", "name"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    support::wait_for("the Gateway's snapshot Secret", &[&operator], secret);
    // SIGTERM: the operator flushes the last batch on its way out.
    assert!(operator.terminate().success(), "{}", operator.log());
    let got = collector.received();
    let object = format!("{ns}/traced");
    // What woke the reconcile, as kube-runtime names it: the Gateway's own event, an owned
    // object's, the bulk trigger when the caches filled, or a wake-up of the operator's own
    // (`reconcile_on`: the namespace's creation reached the tenant index first; kube-runtime
    // names those "unknown"), whichever came first.
    assert!(
        [
            "object updated",
            "related object updated",
            "bulk reconcile requested",
            "unknown",
        ]
        .iter()
        .any(|r| rustronaut_e2e::otlp::contains_bytes(&got, r.as_bytes())),
        "no reconcile cause exported ({} bytes received: {:?}); log:\n{}",
        got.len(),
        String::from_utf8_lossy(&got),
        operator.log()
    );
    for needle in [
        "rustronaut-operator",
        "reconciling object",
        "object.reason",
        "reconcile",
        "kind",
        "Gateway",
        object.as_str(),
        "outcome",
        "pass",
    ] {
        assert!(
            rustronaut_e2e::otlp::contains_bytes(&got, needle.as_bytes()),
            "{needle:?} not exported ({} bytes received); log:\n{}",
            got.len(),
            operator.log()
        );
    }
    // The kube client's per-request spans stay out.
    assert!(
        !rustronaut_e2e::otlp::contains_bytes(&got, b"http.url"),
        "kube client spans exported"
    );
}
