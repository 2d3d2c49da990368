//! cert-manager itself issuing from a CA Issuer against the test API server (issue 18, item 3):
//! the real controllers (`rustronaut_e2e::certmanager`, built from cert-manager's Go module),
//! not a stand-in. A CA key pair in a Secret, an `Issuer` with `spec.ca`, a `Certificate`; the
//! Secret it names must hold a certificate signed by that CA, and a renewal triggered the way
//! `cmctl renew` does must replace it.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustronaut_e2e::certmanager::{self, CertManager};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use x509_parser::extensions::{GeneralName, ParsedExtension};

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
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
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

    let issuers: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource("Issuer"));
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
    eventually("the Issuer Ready", &cm, Duration::from_secs(60), || async {
        let i = issuers.get("ca-issuer").await.map_err(|e| e.to_string())?;
        match condition(&i, "Ready").as_deref() {
            Some("True") => Ok(()),
            other => Err(format!("Ready {other:?}: {}", i.data["status"])),
        }
    })
    .await;

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
        || async {
            let mut c = certificates.get("app").await.map_err(|e| e.to_string())?;
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
                .replace_status("app", &PostParams::default(), &c)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
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
