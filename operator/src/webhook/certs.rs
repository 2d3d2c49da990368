//! The webhook's own PKI: a CA and a serving certificate for `<service>.<namespace>.svc`,
//! kept in one Secret of the operator's namespace, rotated before they expire.
//!
//! ```text
//!  leader, every CHECK_INTERVAL:  read Secret -> plan (pure) -> write Secret if needed
//!                                 -> MutatingWebhookConfiguration caBundle := Secret ca.crt
//!                                    (server-side apply, field manager rustronaut-operator,
//!                                     only webhooks[*].clientConfig.caBundle)
//!  every replica:                 watch Secret -> rustls config -> serve (reload on change)
//! ```
//!
//! Lifetimes ([`Lifetimes::default`]): the CA lives 365 days and is replaced when fewer than
//! 120 days are left; the serving certificate lives 90 days (never beyond its CA) and is
//! replaced when fewer than 30 days are left. A replaced CA stays in `ca.crt` (the caBundle)
//! until it expires, so the serving certificate it signed stays trusted; the serving
//! certificate moves to the new CA once the new CA has been in the bundle for an hour
//! ([`Lifetimes::propagation`]), long enough for the leader to have written the caBundle and
//! the apiserver to use it. Nothing is ever trusted that is not in the bundle first.
//!
//! Only the leader writes (the Secret with a resourceVersion precondition, the caBundle),
//! so two replicas never generate two CAs; every replica serves whatever the Secret holds.
//! Delete the Secret to start over with a new CA (the leader makes one within a minute;
//! admissions fail, and pods are refused, until the caBundle and the replicas follow).

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// Key of the CA bundle in the Secret (current CA first, then the previous ones still valid).
pub const CA_BUNDLE_KEY: &str = "ca.crt";
/// Key of the current CA's private key.
pub const CA_KEY_KEY: &str = "ca.key";
/// Key of the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// Key of the serving certificate's private key.
pub const KEY_KEY: &str = "tls.key";
/// How often the leader checks the Secret and the caBundle (also repairs a caBundle a
/// `helm upgrade` or a person reset).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

const DAY: i64 = 86_400;

/// Certificate lifetimes, in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetimes {
    /// Validity of a new CA. Default: 365 days.
    pub ca: i64,
    /// A CA with less than this left is replaced. Default: 120 days.
    pub ca_renew_before: i64,
    /// Validity of a new serving certificate (capped at its CA's). Default: 90 days.
    pub serving: i64,
    /// A serving certificate with less than this left is replaced. Default: 30 days.
    pub serving_renew_before: i64,
    /// How long a new CA is in the bundle before it signs the serving certificate. Default: 1 h.
    pub propagation: i64,
    /// `notBefore` is set this far back, for clocks slightly behind. Default: 5 minutes.
    pub backdate: i64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            ca: 365 * DAY,
            ca_renew_before: 120 * DAY,
            serving: 90 * DAY,
            serving_renew_before: 30 * DAY,
            propagation: 3600,
            backdate: 300,
        }
    }
}

/// Errors of the webhook's PKI.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed to generate a key or certificate.
    #[error("failed to generate the webhook's {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// The Secret holds no usable serving certificate.
    #[error("Secret {0} holds no usable serving certificate and key")]
    Unusable(String),
    /// An API call failed.
    #[error("failed to {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        source: kube::Error,
    },
}

/// What the Secret holds, as PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The CA bundle: the current CA first, then previous CAs not yet expired.
    pub ca_bundle: String,
    /// The current CA's private key.
    pub ca_key: String,
    /// The serving certificate.
    pub cert: String,
    /// The serving certificate's private key.
    pub key: String,
}

impl Material {
    /// Reads the four entries of `secret`; None when one is missing or not text.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some(Self {
            ca_bundle: text(CA_BUNDLE_KEY)?,
            ca_key: text(CA_KEY_KEY)?,
            cert: text(CERT_KEY)?,
            key: text(KEY_KEY)?,
        })
    }

    /// The Secret's `data`.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_BUNDLE_KEY, &self.ca_bundle),
            (CA_KEY_KEY, &self.ca_key),
            (CERT_KEY, &self.cert),
            (KEY_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
        .collect()
    }

    /// The rustls configuration serving this material's certificate (HTTP/1.1 only).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad serving certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|e| format!("bad serving key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("serving certificate and key do not fit: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// What the leader should do with the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It is current.
    Keep,
    /// Write this material, for these reasons (logged).
    Write {
        /// The new content.
        material: Material,
        /// Why, for the log.
        why: Vec<String>,
    },
}

/// One parsed certificate.
struct Info {
    pem: String,
    not_before: i64,
    not_after: i64,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    public_key: Vec<u8>,
    names: Vec<String>,
}

fn parse_all(pem: &str) -> Option<Vec<Info>> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.ok()?;
        let cert = block.parse_x509().ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).map(std::net::IpAddr::from).ok(),
                            16 => <[u8; 16]>::try_from(*ip).map(std::net::IpAddr::from).ok(),
                            _ => None,
                        };
                        names.extend(ip.map(|i| i.to_string()));
                    }
                    _ => {}
                }
            }
        }
        out.push(Info {
            pem: pem::encode(&block),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            names,
        });
    }
    (!out.is_empty()).then_some(out)
}

mod pem {
    /// A PEM block back to text.
    pub fn encode(block: &x509_parser::pem::Pem) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&block.contents);
        let mut out = format!("-----BEGIN {}-----\n", block.label);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {}-----\n", block.label));
        out
    }
}

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

fn at(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new CA valid from `now`: (certificate PEM, key PEM).
fn new_ca(now: i64, life: &Lifetimes) -> Result<(String, String), CertError> {
    let key = KeyPair::generate().map_err(gen_err("CA key"))?;
    let mut params = CertificateParams::default();
    // The creation time and a digest of the key in the name: each CA is told apart (and
    // serving certificates by their issuer) without any other state, even two made within
    // the same second.
    let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    let id: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("rustronaut-webhook-ca-{now}-{id}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = at(now - life.backdate);
    params.not_after = at(now + life.ca);
    let cert = params.self_signed(&key).map_err(gen_err("CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `hosts` signed by the CA (`ca_pem`, `ca_key`) that expires at
/// `ca_not_after`: (certificate PEM, key PEM).
fn new_serving(
    hosts: &[String],
    ca_pem: &str,
    ca_key: &str,
    ca_not_after: i64,
    now: i64,
    life: &Lifetimes,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(gen_err("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(gen_err("CA"))?;
    let key = KeyPair::generate().map_err(gen_err("serving key"))?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen_err("serving names"))?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = at(now - life.backdate);
    params.not_after = at((now + life.serving).min(ca_not_after));
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err("serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn key_matches(key_pem: &str, cert: &Info) -> bool {
    use rcgen::PublicKeyData;
    KeyPair::from_pem(key_pem).is_ok_and(|k| k.der_bytes() == cert.public_key.as_slice())
}

/// Decides, at unix time `now`, what the Secret should hold for a serving certificate naming
/// `hosts`, given what it holds (`existing`). Pure apart from key generation.
pub fn plan(
    existing: Option<&Material>,
    hosts: &[String],
    now: i64,
    life: &Lifetimes,
) -> Result<Plan, CertError> {
    let cas = existing.and_then(|m| parse_all(&m.ca_bundle));
    let usable = existing
        .zip(cas)
        .filter(|(m, cas)| key_matches(&m.ca_key, &cas[0]) && cas[0].not_after > now);
    let Some((m, cas)) = usable else {
        let (ca, ca_key) = new_ca(now, life)?;
        let (cert, key) = new_serving(hosts, &ca, &ca_key, now + life.ca, now, life)?;
        return Ok(Plan::Write {
            material: Material {
                ca_bundle: ca,
                ca_key,
                cert,
                key,
            },
            why: vec!["no usable CA".into()],
        });
    };
    let mut why = Vec::new();
    let mut cas: Vec<Info> = cas;
    let mut ca_key = m.ca_key.clone();
    // The CA that signs a serving certificate due now: the current one, or, right after a
    // rotation, the one it replaces (the new one is not in the apiserver's bundle yet).
    let mut signer: Option<(String, String, i64)> = None;
    if cas[0].not_after - now < life.ca_renew_before {
        let (ca, key) = new_ca(now, life)?;
        signer = Some((cas[0].pem.clone(), ca_key.clone(), cas[0].not_after));
        let mut fresh = parse_all(&ca).expect("a generated certificate parses");
        fresh.append(&mut cas);
        cas = fresh;
        ca_key = key;
        why.push("the CA expires soon: a new CA joins the bundle".into());
    }
    let before = cas.len();
    let current = cas.remove(0);
    cas.retain(|c| c.not_after > now);
    if cas.len() + 1 != before {
        why.push("an expired previous CA leaves the bundle".into());
    }
    cas.insert(0, current);

    let leaf = parse_all(&m.cert).map(|mut v| v.remove(0));
    let mut wanted: Vec<String> = hosts.to_vec();
    wanted.sort();
    let current_settled = now >= cas[0].not_before + life.backdate + life.propagation;
    let leaf_due = match &leaf {
        None => Some("no serving certificate"),
        Some(l) if !key_matches(&m.key, l) => Some("the serving key does not fit"),
        Some(l)
            if {
                let mut have = l.names.clone();
                have.sort();
                have != wanted
            } =>
        {
            Some("the serving names changed")
        }
        Some(l) if l.not_after - now < life.serving_renew_before => {
            Some("the serving certificate expires soon")
        }
        Some(l) if !cas.iter().any(|c| c.subject == l.issuer) => {
            Some("the serving certificate's CA left the bundle")
        }
        Some(l) if l.issuer != cas[0].subject && current_settled => {
            Some("the serving certificate moves to the new CA")
        }
        Some(_) => None,
    };
    let (cert, key) = match leaf_due {
        None => (m.cert.clone(), m.key.clone()),
        Some(reason) => {
            why.push(reason.into());
            let (ca_pem, key, not_after) =
                signer.unwrap_or_else(|| (cas[0].pem.clone(), ca_key.clone(), cas[0].not_after));
            new_serving(hosts, &ca_pem, &key, not_after, now, life)?
        }
    };
    if why.is_empty() {
        return Ok(Plan::Keep);
    }
    Ok(Plan::Write {
        material: Material {
            ca_bundle: cas.iter().map(|c| c.pem.as_str()).collect(),
            ca_key,
            cert,
            key,
        },
        why,
    })
}

/// Where the PKI lives and what it names.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// The operator's namespace (the Secret's).
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// Names in the serving certificate (see [`CertConfig::service_hosts`]).
    pub hosts: Vec<String>,
    /// Name of the MutatingWebhookConfiguration whose caBundle the leader keeps current.
    pub webhook_config: String,
    /// Certificate lifetimes.
    pub lifetimes: Lifetimes,
}

impl CertConfig {
    /// The names the apiserver may use for Service `service` of `namespace`.
    pub fn service_hosts(service: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
        ]
    }
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> CertError {
    move |source| CertError::Api { what, source }
}

/// The leader's step at unix time `now`: brings the Secret to what [`plan`] wants and
/// returns what it holds afterwards.
pub async fn ensure_secret(
    client: &kube::Client,
    cfg: &CertConfig,
    now: i64,
) -> Result<Material, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let what = || format!("write Secret {}/{}", cfg.namespace, cfg.secret);
    let existing = api.get_opt(&cfg.secret).await.map_err(api_err(format!(
        "read Secret {}/{}",
        cfg.namespace, cfg.secret
    )))?;
    let material = existing.as_ref().and_then(Material::from_secret);
    let Plan::Write { material: new, why } =
        plan(material.as_ref(), &cfg.hosts, now, &cfg.lifetimes)?
    else {
        return material.ok_or_else(|| CertError::Unusable(cfg.secret.clone()));
    };
    tracing::info!(secret = %cfg.secret, why = %why.join("; "), "writing the webhook's certificates");
    match existing {
        None => {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": cfg.secret, "namespace": cfg.namespace,
                             "labels": {"app.kubernetes.io/name": "rustronaut-operator",
                                        "app.kubernetes.io/component": "webhook",
                                        "app.kubernetes.io/managed-by": "rustronaut-operator"}},
                "type": "Opaque",
                "data": new.to_data(),
            }))
            .expect("a Secret");
            api.create(&PostParams::default(), &secret)
                .await
                .map_err(api_err(what()))?;
        }
        Some(s) => {
            // The resourceVersion makes it a compare-and-swap: a write since the read fails
            // (409) instead of being overwritten, and the next check starts over.
            let patch = json!({
                "metadata": {"resourceVersion": s.metadata.resource_version},
                "data": new.to_data(),
            });
            api.patch(&cfg.secret, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(what()))?;
        }
    }
    Ok(new)
}

/// Sets every webhook's `clientConfig.caBundle` of the MutatingWebhookConfiguration to
/// `bundle` (server-side apply of that field only); returns whether it changed anything.
pub async fn sync_ca_bundle(
    client: &kube::Client,
    cfg: &CertConfig,
    bundle: &str,
) -> Result<bool, CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &cfg.webhook_config;
    let current = api
        .get(name)
        .await
        .map_err(api_err(format!("read MutatingWebhookConfiguration {name}")))?;
    let webhooks = current.webhooks.unwrap_or_default();
    let want = ByteString(bundle.as_bytes().to_vec());
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&want))
    {
        return Ok(false);
    }
    let intent = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks.iter().map(|w| json!({
            "name": w.name, "clientConfig": {"caBundle": want},
        })).collect::<Vec<_>>(),
    });
    crate::apply::apply(&api, name, &intent)
        .await
        .map_err(api_err(format!(
            "set the caBundle of MutatingWebhookConfiguration {name}"
        )))?;
    Ok(true)
}

/// The leader's loop: [`ensure_secret`] and [`sync_ca_bundle`] every [`CHECK_INTERVAL`]
/// until `shutdown`; failures are logged and retried at the next check.
pub async fn run_leader(
    client: kube::Client,
    cfg: CertConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let work = async {
        loop {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match ensure_secret(&client, &cfg, now).await {
                Ok(m) => match sync_ca_bundle(&client, &cfg, &m.ca_bundle).await {
                    Ok(true) => tracing::info!(config = %cfg.webhook_config, "caBundle updated"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "caBundle not updated"),
                },
                Err(e) => tracing::warn!(error = %e, "webhook certificates not checked"),
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn hosts() -> Vec<String> {
        CertConfig::service_hosts("rustronaut-webhook", "rustronaut-system")
    }

    fn written(p: Plan) -> (Material, Vec<String>) {
        match p {
            Plan::Write { material, why } => (material, why),
            Plan::Keep => panic!("expected a write"),
        }
    }

    fn info(pem: &str) -> Vec<Info> {
        parse_all(pem).unwrap()
    }

    #[test]
    fn fresh_material_chains_and_serves() {
        let life = Lifetimes::default();
        let (m, why) = written(plan(None, &hosts(), NOW, &life).unwrap());
        assert_eq!(why, ["no usable CA"]);
        let (ca, leaf) = (&info(&m.ca_bundle)[0], &info(&m.cert)[0]);
        assert_eq!(leaf.issuer, ca.subject);
        assert_eq!(ca.not_after, NOW + 365 * DAY);
        assert_eq!(leaf.not_after, NOW + 90 * DAY);
        assert_eq!(leaf.not_before, NOW - 300);
        let mut names = leaf.names.clone();
        names.sort();
        let mut want = hosts();
        want.sort();
        assert_eq!(names, want);
        m.server_config().expect("rustls accepts it");
        // Nothing to do until renewal is due.
        assert_eq!(
            plan(Some(&m), &hosts(), NOW + 59 * DAY, &life).unwrap(),
            Plan::Keep
        );
        // A garbled Secret starts over.
        let mut bad = m.clone();
        bad.ca_bundle = "garbage".into();
        assert_eq!(
            written(plan(Some(&bad), &hosts(), NOW, &life).unwrap()).1,
            ["no usable CA"]
        );
    }

    #[test]
    fn the_serving_certificate_is_renewed_before_expiry_by_the_same_ca() {
        let life = Lifetimes::default();
        let (m, _) = written(plan(None, &hosts(), NOW, &life).unwrap());
        let t = NOW + 61 * DAY;
        let (n, why) = written(plan(Some(&m), &hosts(), t, &life).unwrap());
        assert_eq!(why, ["the serving certificate expires soon"]);
        assert_eq!(n.ca_bundle, m.ca_bundle);
        assert_ne!(n.cert, m.cert);
        assert_eq!(info(&n.cert)[0].not_after, t + 90 * DAY);
        // New names: a new certificate at once.
        let more = [hosts(), vec!["127.0.0.1".into()]].concat();
        let (n, why) = written(plan(Some(&m), &more, NOW, &life).unwrap());
        assert_eq!(why, ["the serving names changed"]);
        assert!(info(&n.cert)[0].names.contains(&"127.0.0.1".to_string()));
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_until_it_expires() {
        let life = Lifetimes::default();
        let (m0, _) = written(plan(None, &hosts(), NOW, &life).unwrap());
        let old_ca = info(&m0.ca_bundle).remove(0);

        // 246 days in, the CA has 119 days left: a new CA joins the bundle. The leaf (90 days,
        // so long expired) is renewed by the *old* CA: the new one is not in the apiserver's
        // bundle yet.
        let t1 = NOW + 246 * DAY;
        let (m1, why) = written(plan(Some(&m0), &hosts(), t1, &life).unwrap());
        assert!(why.contains(&"the CA expires soon: a new CA joins the bundle".to_string()));
        let bundle = info(&m1.ca_bundle);
        assert_eq!(bundle.len(), 2);
        assert_eq!(
            bundle[1].subject, old_ca.subject,
            "the old CA stays, second"
        );
        assert_ne!(bundle[0].subject, old_ca.subject);
        let leaf = info(&m1.cert).remove(0);
        assert_eq!(
            leaf.issuer, old_ca.subject,
            "signed by the CA the apiserver trusts"
        );
        assert_eq!(leaf.not_after, old_ca.not_after.min(t1 + 90 * DAY));

        // Within the propagation hour: nothing moves.
        assert_eq!(
            plan(Some(&m1), &hosts(), t1 + 1800, &life).unwrap(),
            Plan::Keep
        );
        // After it: the leaf moves to the new CA, both CAs still in the bundle.
        let t2 = t1 + 2 * 3600;
        let (m2, why) = written(plan(Some(&m1), &hosts(), t2, &life).unwrap());
        assert_eq!(why, ["the serving certificate moves to the new CA"]);
        assert_eq!(m2.ca_bundle, m1.ca_bundle);
        assert_eq!(info(&m2.cert)[0].issuer, bundle[0].subject);
        // When the old CA expires it leaves the bundle.
        let t3 = old_ca.not_after + 1;
        let (m3, why) = written(plan(Some(&m2), &hosts(), t3, &life).unwrap());
        assert!(
            why.contains(&"an expired previous CA leaves the bundle".to_string()),
            "{why:?}"
        );
        assert_eq!(info(&m3.ca_bundle).len(), 1);
        assert_eq!(info(&m3.ca_bundle)[0].subject, bundle[0].subject);
    }

    #[test]
    fn a_rotation_within_the_same_second_still_moves_the_leaf() {
        let life = Lifetimes {
            ca_renew_before: 400 * DAY,
            ..Lifetimes::default()
        };
        let (m0, _) = written(plan(None, &hosts(), NOW, &Lifetimes::default()).unwrap());
        let (m1, _) = written(plan(Some(&m0), &hosts(), NOW, &life).unwrap());
        let settled = Lifetimes {
            propagation: 0,
            ..Lifetimes::default()
        };
        let (m2, why) = written(plan(Some(&m1), &hosts(), NOW, &settled).unwrap());
        assert_eq!(why, ["the serving certificate moves to the new CA"]);
        assert_eq!(info(&m2.cert)[0].issuer, info(&m1.ca_bundle)[0].subject);
    }

    #[test]
    fn a_key_that_does_not_fit_is_replaced() {
        let life = Lifetimes::default();
        let (m, _) = written(plan(None, &hosts(), NOW, &life).unwrap());
        let (other, _) = written(plan(None, &hosts(), NOW, &life).unwrap());
        let mut swapped = m.clone();
        swapped.key = other.key.clone();
        let (n, why) = written(plan(Some(&swapped), &hosts(), NOW, &life).unwrap());
        assert_eq!(why, ["the serving key does not fit"]);
        assert_eq!(n.ca_bundle, m.ca_bundle);
        let mut swapped = m.clone();
        swapped.ca_key = other.ca_key;
        assert_eq!(
            written(plan(Some(&swapped), &hosts(), NOW, &life).unwrap()).1,
            ["no usable CA"]
        );
    }
}
