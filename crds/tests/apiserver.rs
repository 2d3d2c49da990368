//! The API against a real kube-apiserver: the CRDs install and become Established, every
//! example is accepted (server-side dry run, then a real apply), and a table of invalid objects
//! is refused by the API server itself, each with a message that says what to fix.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

const MANAGER: &str = "rustronaut-crds-test";

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Applies the generated CRDs once per test binary and waits until they are Established.
async fn install(client: &kube::Client) {
    INSTALLED
        .get_or_init(|| async {
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            for crd in rustronaut_crds::generate::crds() {
                let name = crd.metadata.name.clone().unwrap();
                crds.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            for crd in rustronaut_crds::generate::crds() {
                let name = crd.metadata.name.clone().unwrap();
                loop {
                    let c = crds.get(&name).await.unwrap();
                    let established = c
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if established {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "CRD {name} never became Established"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .await;
}

fn api_resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "Tenant" => "tenants",
        "Resource" => "resources",
        "Gateway" => "gateways",
        "Policy" => "policies",
        "Namespace" => "namespaces",
        other => panic!("no API resource for kind {other}"),
    };
    let gvk = if kind == "Namespace" {
        GroupVersionKind::gvk("", "v1", kind)
    } else {
        GroupVersionKind::gvk("rustronaut.io", "v1alpha1", kind)
    };
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

fn api_for(client: &kube::Client, obj: &Value) -> Api<DynamicObject> {
    let ar = api_resource(obj["kind"].as_str().unwrap());
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn examples() -> Vec<rustronaut_crds::manifests::Manifest> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    rustronaut_crds::manifests::load(&dir).expect("reading examples/")
}

#[tokio::test]
async fn every_example_is_accepted_by_dry_run_and_for_real() {
    let client = rustronaut_e2e::client().await;
    install(&client).await;
    let docs = examples();
    assert!(
        docs.len() >= 12,
        "the example set shrank: {} documents",
        docs.len()
    );
    for kind in ["Tenant", "Gateway", "Resource", "Policy"] {
        assert!(
            docs.iter().any(|d| d.kind() == kind),
            "no example of {kind}"
        );
    }
    for doc in &docs {
        let api = api_for(&client, &doc.value);
        let obj: DynamicObject = serde_json::from_value(doc.value.clone()).unwrap();
        if doc.kind() != "Namespace" {
            // Server-side dry run runs every admission step and validation, and stores nothing.
            let dry = PostParams {
                dry_run: true,
                field_manager: Some(MANAGER.into()),
            };
            if let Err(e) = api.create(&dry, &obj).await {
                // Already there from an earlier run against an existing cluster is fine.
                let exists = matches!(&e, kube::Error::Api(s) if s.code == 409);
                assert!(
                    exists,
                    "{} ({}/{}) refused in dry run: {e}",
                    doc.path.display(),
                    doc.kind(),
                    doc.name()
                );
            }
        }
        api.patch(
            doc.name(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} ({}/{}) refused: {e}",
                doc.path.display(),
                doc.kind(),
                doc.name()
            )
        });
    }
    // Defaults from the schema are applied by the API server.
    let ar = api_resource("Policy");
    let policy = Api::<DynamicObject>::namespaced_with(client.clone(), "acme-apps", &ar)
        .get("grafana-api")
        .await
        .unwrap();
    assert_eq!(
        policy.data["spec"]["mode"], "Enforce",
        "mode defaults to Enforce"
    );
    let ar = api_resource("Gateway");
    let gw = Api::<DynamicObject>::namespaced_with(client.clone(), "rtn-system", &ar)
        .get("edge")
        .await
        .unwrap();
    assert_eq!(gw.data["spec"]["listeners"][0]["tls"]["minVersion"], "1.2");
}

#[tokio::test]
async fn kubectl_lists_the_category_and_explains_fields() {
    let cluster = rustronaut_e2e::shared();
    let client = cluster.client().await;
    install(&client).await;
    let out = cluster
        .kubectl()
        .args(["explain", "tenants.spec.identityProviders.oidc.issuer"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Must be https"),
        "explain shows the field docs: {text}"
    );

    let out = cluster
        .kubectl()
        .args(["get", "rustronaut", "-A", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the rustronaut category resolves: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn example(kind: &str, name: &str) -> Value {
    examples()
        .into_iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("example {kind}/{name} missing"))
        .value
}

/// An invalid object: a valid example, one change, and words the refusal must contain.
/// A valid `spec.workload` for the sidecar cases.
fn sidecar_workload() -> Value {
    json!({"selector": {"matchLabels": {"app": "grafana"}},
           "ports": [{"port": 8080, "sidecarPort": 15080, "name": "rtn-http"}]})
}

struct Case {
    name: &'static str,
    base: (&'static str, &'static str),
    change: fn(&mut Value),
    expect: &'static str,
}

fn cases() -> Vec<Case> {
    let t = ("Tenant", "acme");
    let r = ("Resource", "grafana");
    let tcp = ("Resource", "postgres");
    let g = ("Gateway", "edge");
    let p = ("Policy", "grafana-api");
    vec![
        // Tenant
        Case {
            name: "tenant without namespaces",
            base: t,
            change: |v| v["spec"]["namespaces"] = json!([]),
            expect: "should have at least 1 items",
        },
        Case {
            name: "adminNamespace not claimed",
            base: t,
            change: |v| v["spec"]["adminNamespace"] = json!("other"),
            expect: "adminNamespace must be one of namespaces",
        },
        Case {
            name: "namespace not a DNS label",
            base: t,
            change: |v| v["spec"]["namespaces"] = json!(["Acme_Apps"]),
            expect: "spec.namespaces[0]",
        },
        Case {
            name: "identity provider with two types",
            base: t,
            change: |v| v["spec"]["identityProviders"][0]["jwt"] = json!({"issuer": "x", "audiences": ["a"], "remoteJWKS": {"uri": "https://x.example/jwks"}}),
            expect: "exactly one of oidc, jwt, clientCertificate, apiKey must be set",
        },
        Case {
            name: "identity provider without a type",
            base: t,
            change: |v| v["spec"]["identityProviders"][0] = json!({"name": "empty"}),
            expect: "exactly one of oidc, jwt, clientCertificate, apiKey must be set",
        },
        Case {
            name: "OIDC issuer over http",
            base: t,
            change: |v| {
                v["spec"]["identityProviders"][0]["oidc"]["issuer"] =
                    json!("http://acme.okta.example")
            },
            expect: "issuer must be an https URL",
        },
        Case {
            name: "JWT with two key sources",
            base: t,
            change: |v| {
                v["spec"]["identityProviders"][1]["jwt"]["jwksSecretRef"] = json!({"name": "jwks"})
            },
            expect: "exactly one of remoteJWKS, jwksSecretRef must be set",
        },
        Case {
            name: "JWT without audiences",
            base: t,
            change: |v| v["spec"]["identityProviders"][1]["jwt"]["audiences"] = json!([]),
            expect: "should have at least 1 items",
        },
        Case {
            name: "duplicate identity provider names",
            base: t,
            change: |v| v["spec"]["identityProviders"][1]["name"] = json!("okta"),
            expect: "Duplicate value",
        },
        Case {
            name: "malformed domain",
            base: t,
            change: |v| v["spec"]["domains"] = json!(["acme..example"]),
            expect: "spec.domains[0]",
        },
        Case {
            name: "session duration in words",
            base: t,
            change: |v| v["spec"]["session"]["duration"] = json!("8 hours"),
            expect: "spec.session.duration",
        },
        Case {
            name: "negative quota",
            base: t,
            change: |v| v["spec"]["quotas"]["resources"] = json!(-1),
            expect: "should be greater than or equal to 0",
        },
        Case {
            name: "API key header with spaces",
            base: t,
            change: |v| v["spec"]["identityProviders"][3]["apiKey"]["header"] = json!("X Api Key"),
            expect: "spec.identityProviders[3].apiKey.header",
        },
        // Resource
        Case {
            name: "HTTP resource without hostnames",
            base: r,
            change: |v| v["spec"]["hostnames"] = json!([]),
            expect: "HTTP and TLSPassthrough resources need at least one hostname",
        },
        Case {
            name: "TCP resource with hostnames",
            base: tcp,
            change: |v| v["spec"]["hostnames"] = json!(["db.acme.example"]),
            expect: "TCP and UDP resources are reached by ports",
        },
        Case {
            name: "HTTP resource with top-level upstreams",
            base: r,
            change: |v| v["spec"]["upstreams"] = json!([{"service": {"name": "x", "port": 80}}]),
            expect: "HTTP resources route with rules",
        },
        Case {
            name: "upstream with service and site",
            base: r,
            change: |v| {
                v["spec"]["rules"][0]["upstreams"][0]["site"] =
                    json!({"gateway": "rtn-system/edge", "name": "dc1"})
            },
            expect: "exactly one of service, site must be set",
        },
        Case {
            name: "site upstream without host",
            base: ("Resource", "wiki"),
            change: |v| {
                v["spec"]["rules"][0]["upstreams"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("host");
            },
            expect: "a site upstream needs host",
        },
        // Issue 14, item 9: forwarded client addresses only from listed peers.
        Case {
            name: "trusted hops without trusted peers",
            base: g,
            change: |v| v["spec"]["clientIPDetection"] = json!({"trustedHops": 1}),
            expect: "proxyProtocol and trustedHops need trustedPeerCIDRs",
        },
        Case {
            name: "PROXY protocol without trusted peers",
            base: g,
            change: |v| v["spec"]["clientIPDetection"] = json!({"proxyProtocol": true}),
            expect: "proxyProtocol and trustedHops need trustedPeerCIDRs",
        },
        Case {
            name: "trusted peer that is not a CIDR",
            base: g,
            change: |v| {
                v["spec"]["clientIPDetection"] =
                    json!({"trustedHops": 1, "trustedPeerCIDRs": ["10.0.0.0/33"]})
            },
            expect: "trustedPeerCIDRs must be CIDRs",
        },
        // Issue 14, item 2: hosts the snapshot refuses must not get past the API server.
        Case {
            name: "site host in upper case",
            base: ("Resource", "wiki"),
            change: |v| v["spec"]["rules"][0]["upstreams"][0]["host"] = json!("DB.corp.example"),
            expect: "host must be an IP address or a lower-case DNS name",
        },
        Case {
            name: "site host with an underscore",
            base: ("Resource", "wiki"),
            change: |v| v["spec"]["rules"][0]["upstreams"][0]["host"] = json!("a_b"),
            expect: "host must be an IP address or a lower-case DNS name",
        },
        Case {
            name: "site host as a wildcard",
            base: ("Resource", "wiki"),
            change: |v| v["spec"]["rules"][0]["upstreams"][0]["host"] = json!("*.corp.example"),
            expect: "host must be an IP address or a lower-case DNS name",
        },
        Case {
            name: "service upstream with a host",
            base: r,
            change: |v| v["spec"]["rules"][1]["upstreams"][0]["host"] = json!("10.0.0.1"),
            expect: "a site upstream needs host (and a service upstream takes none)",
        },
        Case {
            name: "weight above 1000",
            base: r,
            change: |v| v["spec"]["rules"][0]["upstreams"][0]["weight"] = json!(5000),
            expect: "should be less than or equal to 1000",
        },
        Case {
            name: "unknown protocol",
            base: r,
            change: |v| v["spec"]["protocol"] = json!("SCTP"),
            expect: "Unsupported value: \"SCTP\"",
        },
        Case {
            name: "relative path",
            base: r,
            change: |v| v["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!("api"),
            expect: "spec.rules[0].matches[0].path.value",
        },
        Case {
            name: "path with dot segments",
            base: r,
            change: |v| {
                v["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!("/api/../admin")
            },
            expect: "path must be normalised",
        },
        Case {
            name: "burst below rate",
            base: r,
            change: |v| v["spec"]["rules"][0]["rateLimit"]["burst"] = json!(10),
            expect: "burst must be at least requestsPerSecond",
        },
        Case {
            name: "consistent hash without key",
            base: r,
            change: |v| v["spec"]["rules"][0]["loadBalancing"] = json!({"type": "ConsistentHash"}),
            expect: "hashKey is required for ConsistentHash",
        },
        Case {
            name: "no gateway refs",
            base: r,
            change: |v| v["spec"]["gatewayRefs"] = json!([]),
            expect: "set exactly one",
        },
        Case {
            name: "gateway refs and a workload",
            base: r,
            change: |v| v["spec"]["workload"] = sidecar_workload(),
            expect: "set exactly one",
        },
        Case {
            name: "sidecar Resource with hostnames and rule upstreams",
            base: r,
            change: |v| {
                v["spec"].as_object_mut().unwrap().remove("gatewayRefs");
                v["spec"]["workload"] = sidecar_workload();
            },
            expect: "a sidecar Resource (workload) forwards to its pod's own ports",
        },
        Case {
            name: "UDP sidecar Resource",
            base: tcp,
            change: |v| {
                v["spec"].as_object_mut().unwrap().remove("gatewayRefs");
                v["spec"]["protocol"] = json!("UDP");
                v["spec"]["workload"] = sidecar_workload();
            },
            expect: "a sidecar Resource (workload) is HTTP or TCP",
        },
        Case {
            name: "sidecar port used twice",
            base: r,
            change: |v| {
                v["spec"]["workload"] = sidecar_workload();
                v["spec"]["workload"]["ports"] = json!([
                    {"port": 8080, "sidecarPort": 15080},
                    {"port": 8081, "sidecarPort": 15080},
                ]);
            },
            expect: "each port and each sidecarPort appears once",
        },
        Case {
            name: "sidecar port on an application port",
            base: r,
            change: |v| {
                v["spec"]["workload"] = sidecar_workload();
                v["spec"]["workload"]["ports"] = json!([
                    {"port": 8080, "sidecarPort": 15080},
                    {"port": 15080, "sidecarPort": 15081},
                ]);
            },
            expect: "no sidecarPort is also an application port",
        },
        Case {
            name: "sidecar port on the admin port",
            base: r,
            change: |v| {
                v["spec"]["workload"] = sidecar_workload();
                v["spec"]["workload"]["ports"][0]["sidecarPort"] = json!(15020);
            },
            expect: "sidecarPort 15020 is the sidecar's admin port",
        },
        // Gateway
        Case {
            name: "HTTPS listener without tls",
            base: g,
            change: |v| {
                v["spec"]["listeners"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("tls");
                v["spec"]["listeners"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("clientCertificate");
            },
            expect: "HTTPS listeners need tls",
        },
        Case {
            name: "TCP listener with hostname",
            base: g,
            change: |v| v["spec"]["listeners"][1]["hostname"] = json!("db.acme.example"),
            expect: "TCP and UDP listeners take no hostname",
        },
        Case {
            name: "duplicate listener address",
            base: g,
            change: |v| {
                let l = v["spec"]["listeners"][1].clone();
                let mut l2 = l;
                l2["name"] = json!("postgres-again");
                v["spec"]["listeners"].as_array_mut().unwrap().push(l2);
            },
            expect: "listeners must have unique (port, protocol, hostname)",
        },
        Case {
            name: "listener port out of range",
            base: g,
            change: |v| v["spec"]["listeners"][1]["port"] = json!(70000),
            expect: "should be less than or equal to 65535",
        },
        Case {
            name: "client certificates without tls",
            base: g,
            change: |v| {
                v["spec"]["listeners"][1]["clientCertificate"] = json!({"mode": "Required"})
            },
            expect: "clientCertificate needs tls on the same listener",
        },
        Case {
            name: "issuer on a TCP listener",
            base: g,
            change: |v| {
                v["spec"]["listeners"][1]["tls"] = json!({
                    "certificateRefs": [{"name": "db-tls"}], "issuerRef": {"name": "ca"}})
            },
            expect: "tls.issuerRef needs an HTTPS listener with a hostname",
        },
        Case {
            name: "issuer on an HTTPS listener without hostname",
            base: g,
            change: |v| {
                let l = v["spec"]["listeners"][0].as_object_mut().unwrap();
                l.remove("hostname");
                l["tls"]["issuerRef"] = json!({"name": "ca", "kind": "ClusterIssuer"});
            },
            expect: "tls.issuerRef needs an HTTPS listener with a hostname",
        },
        Case {
            name: "malformed WireGuard key",
            base: g,
            change: |v| {
                v["spec"]["tunnel"]["sites"][0]["publicKey"] =
                    json!("not-a-key-not-a-key-not-a-key-not-a-key-abc=")
            },
            expect: "spec.tunnel.sites[0].publicKey",
        },
        Case {
            name: "address pool not a CIDR",
            base: g,
            change: |v| v["spec"]["tunnel"]["addressPool"] = json!("100.96.0.0/99"),
            expect: "addressPool must be a CIDR",
        },
        Case {
            name: "advertised range not a CIDR",
            base: g,
            change: |v| v["spec"]["tunnel"]["sites"][0]["advertisedCIDRs"] = json!(["10.1.0.0"]),
            expect: "advertisedCIDRs must be CIDRs",
        },
        Case {
            name: "tenant selector missing",
            base: g,
            change: |v| v["spec"]["tenants"] = json!({"from": "Selector"}),
            expect: "selector is required when from is Selector",
        },
        Case {
            name: "autoscaling bounds inverted",
            base: g,
            change: |v| v["spec"]["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2}),
            expect: "autoscaling.minReplicas must not exceed maxReplicas",
        },
        // Policy
        Case {
            name: "policy without targets",
            base: p,
            change: |v| {
                v["spec"].as_object_mut().unwrap().remove("targetRefs");
            },
            expect: "a Policy needs targetRefs or targetSelector",
        },
        Case {
            name: "rule without from",
            base: p,
            change: |v| v["spec"]["rules"][0]["from"] = json!([]),
            expect: "should have at least 1 items",
        },
        Case {
            name: "principal of two kinds",
            base: p,
            change: |v| v["spec"]["rules"][0]["from"][0]["anonymous"] = json!(true),
            expect: "a principal is exactly one of",
        },
        Case {
            name: "serviceAccount beside another principal kind",
            base: p,
            change: |v| {
                v["spec"]["rules"][0]["from"][0] =
                    json!({"serviceAccount": {"namespace": "shop"}, "site": {"names": ["dc1"]}})
            },
            expect: "exactly one of user, clientCertificate, apiKey, site, serviceAccount",
        },
        Case {
            name: "serviceAccount namespace not a DNS label",
            base: p,
            change: |v| {
                v["spec"]["rules"][0]["from"][0] =
                    json!({"serviceAccount": {"namespace": "Shop_1", "names": ["checkout"]}})
            },
            expect: "spec.rules[0].from[0].serviceAccount.namespace",
        },
        Case {
            name: "serviceAccount without namespace",
            base: p,
            change: |v| {
                v["spec"]["rules"][0]["from"][0] =
                    json!({"serviceAccount": {"names": ["checkout"]}})
            },
            expect: "spec.rules[0].from[0].serviceAccount.namespace: Required value",
        },
        Case {
            name: "empty principal",
            base: p,
            change: |v| v["spec"]["rules"][0]["from"][0] = json!({}),
            expect: "a principal is exactly one of",
        },
        Case {
            name: "authenticated false",
            base: p,
            change: |v| v["spec"]["rules"][0]["from"][0] = json!({"authenticated": false}),
            expect: "authenticated must be true when set",
        },
        Case {
            name: "unknown action",
            base: p,
            change: |v| v["spec"]["action"] = json!("Maybe"),
            expect: "Unsupported value: \"Maybe\"",
        },
        Case {
            name: "unknown mode",
            base: p,
            change: |v| v["spec"]["mode"] = json!("Audit"),
            expect: "Unsupported value: \"Audit\"",
        },
        Case {
            name: "empty user principal",
            base: p,
            change: |v| v["spec"]["rules"][0]["from"][0] = json!({"user": {}}),
            expect: "user needs at least one of idp",
        },
        Case {
            name: "source range not a CIDR",
            base: p,
            change: |v| {
                v["spec"]["rules"][0]["from"][0] =
                    json!({"sourceCIDRs": {"cidrs": ["10.0.0.300/8"]}})
            },
            expect: "cidrs must be CIDRs",
        },
        Case {
            name: "schedule hour 25",
            base: p,
            change: |v| v["spec"]["rules"][0]["when"]["schedule"]["from"] = json!("25:00"),
            expect: "spec.rules[0].when.schedule.from",
        },
        Case {
            name: "empty schedule window",
            base: p,
            change: |v| v["spec"]["rules"][0]["when"]["schedule"]["to"] = json!("07:00"),
            expect: "from and to must differ",
        },
        Case {
            name: "namespaceSelector alone",
            base: p,
            change: |v| v["spec"]["namespaceSelector"] = json!({"matchLabels": {"a": "b"}}),
            expect: "namespaceSelector widens targetSelector and needs it",
        },
        Case {
            name: "SPKI pin not hex",
            base: p,
            change: |v| {
                v["spec"]["rules"][0]["from"][0] =
                    json!({"clientCertificate": {"spkiSHA256": ["zz"]}})
            },
            expect: "spec.rules[0].from[0].clientCertificate.spkiSHA256[0]",
        },
        Case {
            name: "unknown test expectation",
            base: p,
            change: |v| v["spec"]["tests"][0]["expect"] = json!("Maybe"),
            expect: "Unsupported value: \"Maybe\"",
        },
    ]
}

#[tokio::test]
async fn invalid_objects_are_refused_by_the_api_server_with_a_clear_message() {
    let client = rustronaut_e2e::client().await;
    install(&client).await;
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "at least 30 invalid objects, one per rule"
    );
    let mut failures = Vec::new();
    for case in &cases {
        let mut obj = example(case.base.0, case.base.1);
        // A unique name: dry-run create must not collide with the real example objects.
        obj["metadata"]["name"] = json!(format!("invalid-{}", rustronaut_e2e::random_suffix()));
        (case.change)(&mut obj);
        let api = api_for(&client, &obj);
        let dyn_obj: DynamicObject = serde_json::from_value(obj).unwrap();
        let dry = PostParams {
            dry_run: true,
            field_manager: Some(MANAGER.into()),
        };
        match api.create(&dry, &dyn_obj).await {
            Ok(_) => failures.push(format!("{}: accepted, expected a refusal", case.name)),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(case.expect) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => failures.push(format!(
                "{}: unexpected {} {}",
                case.name, s.code, s.message
            )),
            Err(e) => failures.push(format!(
                "{}: wanted 422 containing {:?}, got {e}",
                case.name, case.expect
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn protocol_is_immutable() {
    let client = rustronaut_e2e::client().await;
    install(&client).await;
    let ns = rustronaut_e2e::namespace(&client, "crd-immutable").await;
    let mut obj = example("Resource", "postgres");
    obj["metadata"]["namespace"] = json!(ns);
    let api = api_for(&client, &obj);
    let dyn_obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &dyn_obj).await.unwrap();
    let err = api
        .patch(
            "postgres",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protocol": "UDP"}})),
        )
        .await
        .expect_err("changing the protocol must be refused");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("protocol is immutable"), "{}", s.message);
        }
        other => panic!("expected a 422, got {other}"),
    }
}

/// Server-side apply from two field managers (a GitOps tool and the console, say) on one
/// Policy: each owns its own rule (rules are a list keyed by `name`), so one manager's
/// re-apply changes its rule and never drops or reverts the other's (issue 18, item 1).
#[tokio::test]
async fn two_field_managers_edit_their_own_rules_of_one_policy() {
    let client = rustronaut_e2e::client().await;
    install(&client).await;
    let ns = rustronaut_e2e::namespace(&client, "crd-ssa").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &api_resource("Policy"));
    let rule = |name: &str, cidr: &str| json!({"name": name, "from": [{"sourceCIDRs": {"cidrs": [cidr]}}]});
    let intent = |rules: Vec<Value>| {
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
               "metadata": {"name": "shared", "namespace": ns},
               "spec": {"targetRefs": [{"kind": "Resource", "name": "app"}],
                        "action": "Allow", "rules": rules}})
    };
    let apply = |manager: &'static str, body: Value| {
        let api = api.clone();
        async move {
            api.patch("shared", &PatchParams::apply(manager), &Patch::Apply(&body))
                .await
                .unwrap_or_else(|e| panic!("{manager}: {e}"))
        }
    };
    let rules = |o: &DynamicObject| -> Vec<(String, String)> {
        o.data["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["from"][0]["sourceCIDRs"]["cidrs"][0]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    apply("gitops", intent(vec![rule("office", "10.0.0.0/8")])).await;
    // The console adds its own rule, sending only what it owns.
    let o = apply("console", intent(vec![rule("vpn", "100.64.0.0/10")])).await;
    assert_eq!(
        rules(&o),
        [
            ("office".into(), "10.0.0.0/8".into()),
            ("vpn".into(), "100.64.0.0/10".into())
        ]
    );
    // GitOps re-applies its (changed) rule: the console's stays.
    let o = apply("gitops", intent(vec![rule("office", "10.1.0.0/16")])).await;
    assert_eq!(
        rules(&o),
        [
            ("office".into(), "10.1.0.0/16".into()),
            ("vpn".into(), "100.64.0.0/10".into())
        ]
    );
    // Changing the other's rule without force is a conflict, not a silent overwrite.
    let err = api
        .patch(
            "shared",
            &PatchParams::apply("console"),
            &Patch::Apply(&intent(vec![rule("office", "0.0.0.0/0")])),
        )
        .await
        .expect_err("a conflict");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("expected a 409 conflict, got {other}"),
    }
}
