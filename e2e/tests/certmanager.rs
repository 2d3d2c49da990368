//! cert-manager itself issuing from a CA Issuer against the test API server (issue 18, item 3):
//! the real controllers (`rustronaut_e2e::certmanager`, built from cert-manager's Go module),
//! not a stand-in. A CA key pair in a Secret, an `Issuer` with `spec.ca`, a `Certificate`; the
//! Secret it names must hold a certificate signed by that CA, and a renewal triggered the way
//! `cmctl renew` does must replace it.
//!
//! Then the product path ([`a_gateway_listener_serves_and_rotates_a_cert_manager_certificate`]):
//! a Gateway listener with `tls.issuerRef`, the operator binary (with exactly the RBAC it
//! ships) creating the Certificate, a gateway process reading its snapshot from the API, and
//! a TLS client (the openssl CLI) seeing the issued certificate and then its renewal, from the
//! same gateway process.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustronaut_e2e::certmanager::{self, CertManager};
use rustronaut_e2e::scenario;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use x509_parser::extensions::{GeneralName, ParsedExtension};

mod support;

/// What the test reads from a certificate.
#[derive(Debug, Clone, PartialEq)]
struct Cert {
    serial: String,
    subject: String,
    issuer: String,
    dns_names: Vec<String>,
    /// The DER SubjectPublicKeyInfo: which key the certificate is for.
    public_key: Vec<u8>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
}

/// The first certificate of a PEM bundle.
fn parse(pem: &[u8]) -> Cert {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).expect("a PEM certificate");
    let cert = block.parse_x509().expect("an X.509 certificate");
    let mut out = Cert {
        serial: cert.raw_serial_as_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_names: Vec::new(),
        public_key: cert.public_key().raw.to_vec(),
        subject_key_id: None,
        authority_key_id: None,
    };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::DNSName(d) = name {
                        out.dns_names.push(d.to_string());
                    }
                }
            }
            ParsedExtension::SubjectKeyIdentifier(id) => out.subject_key_id = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                out.authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            _ => {}
        }
    }
    out
}

/// cert-manager's namespaced kinds (cert-manager.io/v1).
fn resource(kind: &str) -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    }
}

/// Polls `f` until it returns Ok, or panics after `timeout` naming `what`, with the last error
/// and the end of the controller's log.
async fn eventually<T, F, Fut>(what: &str, cm: &CertManager, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!(
                "timed out waiting for {what}: {e}\ncert-manager-controller log (end):\n{}",
                cm.log_tail(60)
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The status of condition `type_` of `obj`, if it has one.
fn condition(obj: &DynamicObject, type_: &str) -> Option<String> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// `tls.crt` of Secret `name`, once it exists and holds one.
async fn tls_crt(secrets: &Api<Secret>, name: &str) -> Result<Vec<u8>, String> {
    let secret = secrets.get(name).await.map_err(|e| e.to_string())?;
    secret
        .data
        .and_then(|mut d| d.remove("tls.crt"))
        .map(|b| b.0)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("Secret {name} has no tls.crt yet"))
}

/// Renewal as `cmctl renew` does it (cert-manager/cmctl pkg/renew): set the Issuing condition
/// (apiutil.SetCertificateCondition: True, reason ManuallyTriggered, this generation) and
/// UpdateStatus. Callers retry on a conflict: the controllers write the status too.
async fn renew(certificates: &Api<DynamicObject>, name: &str) -> Result<(), String> {
    let mut c = certificates.get(name).await.map_err(|e| e.to_string())?;
    let generation = c.metadata.generation.unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap();
    let issuing = json!({
        "type": "Issuing",
        "status": "True",
        "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance manually triggered",
        "lastTransitionTime": now.to_string(),
        "observedGeneration": generation,
    });
    let status = c.data["status"].as_object_mut().ok_or("no status")?;
    let conditions = status
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("conditions is not a list")?;
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(issuing);
    certificates
        .replace_status(name, &PostParams::default(), &c)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A CA key pair in Secret `ca-key-pair` and an `Issuer` `ca-issuer` using it, once Ready
/// (the issuers controller ran the CA issuer's Setup: it found and parsed the key pair).
/// Returns the CA's PEM and parsed certificate.
async fn ca_issuer(client: &kube::Client, ns: &str, cm: &CertManager) -> (String, Cert) {
    // The CA: a self-signed key pair in a kubernetes.io/tls Secret, as `spec.ca.secretName`
    // expects (PKCS#8 key; cert-manager reads PKCS#1, SEC1 and PKCS#8 alike).
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rustronaut cert-manager test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let ca = parse(ca_pem.as_bytes());
    assert!(ca.subject_key_id.is_some(), "rcgen writes a CA's SKI");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "ca-key-pair"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": ByteString(ca_pem.clone().into_bytes()),
            "tls.key": ByteString(ca_key.serialize_pem().into_bytes()),
        }
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap();

    let issuers: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource("Issuer"));
    let issuer: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Issuer",
        "metadata": {"name": "ca-issuer"},
        "spec": {"ca": {"secretName": "ca-key-pair"}}
    }))
    .unwrap();
    issuers
        .create(&PostParams::default(), &issuer)
        .await
        .unwrap();
    // The issuers controller runs the CA issuer's Setup: it found and parsed the key pair.
    eventually("the Issuer Ready", cm, Duration::from_secs(60), || async {
        let i = issuers.get("ca-issuer").await.map_err(|e| e.to_string())?;
        match condition(&i, "Ready").as_deref() {
            Some("True") => Ok(()),
            other => Err(format!("Ready {other:?}: {}", i.data["status"])),
        }
    })
    .await;

    (ca_pem, ca)
}

#[tokio::test]
async fn ca_issuer_issues_a_certificate() {
    let started = Instant::now();
    let client = rustronaut_e2e::client().await;
    certmanager::install_crds(&client).await;
    let ns = rustronaut_e2e::namespace(&client, "certmanager").await;

    // One controller for this test's namespace only: tests share the cluster.
    let dir = tempfile::tempdir().unwrap();
    let cm = CertManager::start(
        rustronaut_e2e::shared().kubeconfig(),
        &dir.path().join("cert-manager-controller.log"),
        &["--namespace", &ns],
    )
    .await;

    let (ca_pem, ca) = ca_issuer(&client, &ns, &cm).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource("Certificate"));
    let certificate: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "app"},
        "spec": {
            "secretName": "app-tls",
            "dnsNames": ["app.acme.test"],
            "issuerRef": {"name": "ca-issuer", "kind": "Issuer", "group": "cert-manager.io"}
        }
    }))
    .unwrap();
    certificates
        .create(&PostParams::default(), &certificate)
        .await
        .unwrap();

    // Ready, revision 1, and the Secret holding a certificate for the name, signed by the CA.
    let wait_ready = |revision: u64| {
        let (certificates, cm) = (&certificates, &cm);
        async move {
            eventually(
                &format!("the Certificate Ready at revision {revision}"),
                cm,
                Duration::from_secs(90),
                || async move {
                    let c = certificates.get("app").await.map_err(|e| e.to_string())?;
                    let status = &c.data["status"];
                    match (
                        condition(&c, "Ready").as_deref(),
                        status["revision"].as_u64(),
                    ) {
                        (Some("True"), Some(r)) if r == revision => Ok(()),
                        _ => Err(format!("status: {status}")),
                    }
                },
            )
            .await
        }
    };
    wait_ready(1).await;
    let first_pem = eventually("Secret app-tls", &cm, Duration::from_secs(30), || {
        tls_crt(&secrets, "app-tls")
    })
    .await;
    let first = parse(&first_pem);
    assert_eq!(first.dns_names, ["app.acme.test"], "{first:?}");
    assert_eq!(first.issuer, ca.subject, "issued by the CA: {first:?}");
    assert_eq!(
        first.authority_key_id, ca.subject_key_id,
        "the CA's key signed it (AKI = the CA's SKI): {first:?}"
    );
    assert_ne!(first.public_key, ca.public_key, "a key of its own");
    let app_tls = secrets.get("app-tls").await.unwrap();
    let data = app_tls.data.clone().unwrap_or_default();
    assert_eq!(
        data.get("ca.crt").map(|b| b.0.as_slice()),
        Some(ca_pem.as_bytes()),
        "ca.crt is the issuing CA"
    );
    let first_key = data.get("tls.key").cloned().expect("tls.key");
    // The request went through the approver: the CertificateRequest is Approved and Ready.
    let requests: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource("CertificateRequest"));
    let listed = requests.list(&Default::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1, "one CertificateRequest for revision 1");
    assert_eq!(condition(&listed[0], "Approved").as_deref(), Some("True"));
    assert_eq!(condition(&listed[0], "Ready").as_deref(), Some("True"));

    // Renewal as `cmctl renew` does it (cert-manager/cmctl pkg/renew): set the Issuing condition
    // (apiutil.SetCertificateCondition: True, reason ManuallyTriggered, this generation) and
    // UpdateStatus. Retried on a conflict: the controllers write the status too.
    eventually(
        "the manual renewal accepted",
        &cm,
        Duration::from_secs(30),
        || renew(&certificates, "app"),
    )
    .await;

    wait_ready(2).await;
    let second = eventually(
        "a new certificate in app-tls",
        &cm,
        Duration::from_secs(30),
        || async {
            let pem = tls_crt(&secrets, "app-tls").await?;
            let c = parse(&pem);
            if c.serial == first.serial {
                return Err(format!("still serial {}", c.serial));
            }
            Ok(c)
        },
    )
    .await;
    assert_eq!(second.dns_names, ["app.acme.test"], "{second:?}");
    assert_eq!(second.issuer, ca.subject, "{second:?}");
    assert_eq!(second.authority_key_id, ca.subject_key_id, "{second:?}");
    // rotationPolicy defaults to Always (cert-manager >= 1.18): a renewal brings a new key.
    let second_key = secrets.get("app-tls").await.unwrap().data.unwrap()["tls.key"].clone();
    assert_ne!(second_key, first_key, "a new private key with the renewal");
    assert_ne!(
        second.public_key, first.public_key,
        "the new certificate is for the new key"
    );

    // SIGTERM stops it cleanly (exit 0), as a Pod's termination would.
    let status = cm.stop();
    assert!(status.success(), "exit after SIGTERM: {status}");
    eprintln!(
        "cert-manager issued and renewed from a CA Issuer in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Polls `f` until it returns Ok, or panics after `timeout` naming `what`, with the last error
/// and the logs of `procs`.
async fn until<T, F, Fut>(what: &str, procs: &[&support::Proc], timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
                panic!(
                    "timed out waiting for {what}: {e}\nlogs:\n{}",
                    logs.join("\n---\n")
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The certificate a TLS client gets from `127.0.0.1:port` for SNI `host`, verified against
/// `ca_file` for that name (openssl's own chain and hostname checks), or why there is none.
fn served_certificate(port: u16, host: &str, ca_file: &std::path::Path) -> Result<Cert, String> {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", host, "-verify_hostname", host, "-CAfile"])
        .arg(ca_file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let begin = stdout.find("-----BEGIN CERTIFICATE-----").ok_or_else(|| {
        format!(
            "no certificate served: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !stdout.contains("Verify return code: 0 (ok)") {
        return Err(format!("the served certificate does not verify:\n{stdout}"));
    }
    Ok(parse(stdout[begin..].as_bytes()))
}

/// The status of condition `type_` of listener `listener` of Gateway `name`, with its reason.
async fn listener_condition(
    gateways: &Api<DynamicObject>,
    name: &str,
    listener: &str,
    type_: &str,
) -> Result<(String, String), String> {
    let g = gateways.get(name).await.map_err(|e| e.to_string())?;
    g.data["status"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .and_then(|l| l["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .ok_or_else(|| format!("no {type_} on listener {listener}: {}", g.data["status"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_listener_serves_and_rotates_a_cert_manager_certificate() {
    const HOST: &str = "app.acme.test";
    let cluster = rustronaut_e2e::shared();
    let client = cluster.client().await;
    certmanager::install_crds(&client).await;
    support::install_crds(cluster);
    support::install_operator_rbac(&client).await;
    let ns = rustronaut_e2e::namespace(&client, "cm-gateway").await;
    let dir = tempfile::tempdir().unwrap();
    let (operator, _) = support::start_operator(cluster, dir.path());

    // A Gateway whose HTTPS listener has cert-manager issue into app-tls. cert-manager is not
    // running yet: the listener waits (CertificatePending) and the snapshot is written anyway,
    // with the listener bound and marked certificatesPending.
    let port = support::free_port();
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::erase::<rustronaut_crds::Gateway>(&()),
    );
    let gateway: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "edge"},
        "spec": {"replicas": 1, "listeners": [{
            "name": "https", "port": port, "protocol": "HTTPS", "hostname": HOST,
            "tls": {"certificateRefs": [{"name": "app-tls"}],
                    "issuerRef": {"name": "ca-issuer"}}}]}
    }))
    .unwrap();
    gateways
        .create(&PostParams::default(), &gateway)
        .await
        .unwrap();
    until(
        "the listener CertificatePending",
        &[&operator],
        Duration::from_secs(90),
        || {
            let gateways = gateways.clone();
            async move {
                match listener_condition(&gateways, "edge", "https", "ResolvedRefs").await? {
                    (s, r) if s == "False" && r == "CertificatePending" => Ok(()),
                    other => Err(format!("ResolvedRefs {other:?}")),
                }
            }
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let snapshot = secrets.get("edge-snapshot").await.unwrap();
    let json = &snapshot.data.unwrap()["snapshot.json"].0;
    let parsed: Value = serde_json::from_slice(json).unwrap();
    assert_eq!(
        parsed["listeners"][0]["tls"]["certificatesPending"],
        json!(true),
        "{parsed}"
    );

    // The gateway, configured from that Secret through the API; bound, but no handshake yet.
    let ca_file = dir.path().join("ca.pem");
    let admin = format!("127.0.0.1:{}", support::free_port());
    let mut cmd = Command::new(scenario::sibling_binary("rustronaut-gateway").unwrap());
    cmd.env("KUBECONFIG", cluster.kubeconfig())
        .env("RUST_LOG", "info")
        .args(["--config-from", &format!("{ns}/edge-snapshot")])
        .args(["--admin-listen", &admin]);
    let mut gateway_proc = support::Proc::spawn(cmd, dir.path().join("gateway.log"));
    let pid = gateway_proc.pid();
    until(
        "the gateway ready",
        &[&gateway_proc],
        Duration::from_secs(60),
        || {
            let url = format!("http://{admin}/readyz");
            async move {
                let out = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                    .output()
                    .map_err(|e| e.to_string())?;
                match String::from_utf8_lossy(&out.stdout).as_ref() {
                    "200" => Ok(()),
                    code => Err(format!("/readyz {code}")),
                }
            }
        },
    )
    .await;
    // A CA file openssl can load (the real one does not exist yet), so a failure can only
    // be the handshake's.
    let placeholder = CertificateParams::new(vec!["placeholder.test".into()])
        .unwrap()
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(&ca_file, placeholder.pem()).unwrap();
    let before = served_certificate(port, HOST, &ca_file)
        .expect_err("a handshake succeeded before any certificate was issued");
    assert!(before.starts_with("no certificate served"), "{before}");

    // cert-manager, a CA Issuer: the operator's Certificate is issued, the snapshot carries
    // it, and the running gateway serves it.
    let cm = CertManager::start(
        cluster.kubeconfig(),
        &dir.path().join("cert-manager-controller.log"),
        &["--namespace", &ns],
    )
    .await;
    let (ca_pem, ca) = ca_issuer(&client, &ns, &cm).await;
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource("Certificate"));
    let certificate = certificates.get("app-tls").await.unwrap();
    assert_eq!(certificate.data["spec"]["dnsNames"], json!([HOST]));
    assert_eq!(
        certificate.data["spec"]["issuerRef"],
        json!({"name": "ca-issuer", "kind": "Issuer", "group": "cert-manager.io"})
    );
    let owner = &certificate.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Gateway", "edge")
    );
    let first = until(
        "the issued certificate served",
        &[&operator, &gateway_proc],
        Duration::from_secs(120),
        || {
            let ca_file = ca_file.clone();
            async move { served_certificate(port, HOST, &ca_file) }
        },
    )
    .await;
    assert_eq!(first.dns_names, [HOST]);
    assert_eq!(first.issuer, ca.subject);
    until(
        "the listener resolved",
        &[&operator],
        Duration::from_secs(60),
        || {
            let gateways = gateways.clone();
            async move {
                match listener_condition(&gateways, "edge", "https", "ResolvedRefs").await? {
                    (s, _) if s == "True" => Ok(()),
                    other => Err(format!("ResolvedRefs {other:?}")),
                }
            }
        },
    )
    .await;

    // A renewal: a new certificate in a new handshake, from the same gateway process.
    eventually("the renewal accepted", &cm, Duration::from_secs(30), || {
        renew(&certificates, "app-tls")
    })
    .await;
    let second = until(
        "the renewed certificate served",
        &[&operator, &gateway_proc],
        Duration::from_secs(120),
        || {
            let ca_file = ca_file.clone();
            let serial = first.serial.clone();
            async move {
                let c = served_certificate(port, HOST, &ca_file)?;
                if c.serial == serial {
                    return Err(format!("still serial {serial}"));
                }
                Ok(c)
            }
        },
    )
    .await;
    assert_eq!(second.issuer, ca.subject);
    assert_ne!(second.public_key, first.public_key);
    assert_eq!(gateway_proc.pid(), pid);
    assert!(
        gateway_proc.log().lines().all(|l| !l.contains("restart")),
        "the gateway asked for a restart:\n{}",
        gateway_proc.log()
    );

    // The listener stops asking cert-manager: the operator deletes its Certificate (the
    // Secret stays, as a Secret named by certificateRefs).
    gateways
        .patch(
            "edge",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "remove", "path": "/spec/listeners/0/tls/issuerRef"}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    until(
        "the Certificate pruned",
        &[&operator],
        Duration::from_secs(60),
        || {
            let certificates = certificates.clone();
            async move {
                match certificates
                    .get_opt("app-tls")
                    .await
                    .map_err(|e| e.to_string())?
                {
                    None => Ok(()),
                    Some(_) => Err("still there".to_string()),
                }
            }
        },
    )
    .await;
    assert!(served_certificate(port, HOST, &ca_file).is_ok());
    let exit = gateway_proc.terminate();
    assert!(exit.success(), "gateway exit {exit}");
}
