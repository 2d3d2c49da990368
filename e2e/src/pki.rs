//! The certificates and keys a throwaway control plane needs, generated fresh for every cluster.
//!
//! ```text
//!   ca  ──signs──> apiserver serving cert (127.0.0.1, the real node's 172.30.0.1, localhost,
//!                  kubernetes.default.svc, 10.0.0.1)
//!       ──signs──> admin client cert (O=system:masters: what kubeconfig users authenticate with;
//!                  also the apiserver's client certificate towards the kubelet)
//!       ──signs──> kubelet client cert (CN=system:node:rtn-node, O=system:nodes) and kube-proxy
//!                  client cert (CN=system:kube-proxy), used only when a real node runs
//!   sa.key / sa.pub: ECDSA P-256 pair that signs and verifies ServiceAccount tokens
//! ```
//!
//! The CA key is also given to kube-controller-manager as the cluster signing key, so
//! CertificateSigningRequests are approved and signed as on a real cluster.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Errors while generating or writing key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build a certificate or key.
    #[error("failed to generate {what}: {source}")]
    Generate {
        /// Which certificate or key.
        what: &'static str,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// Writing a PEM file failed.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Paths of the generated files, and the PEM text the kubeconfig embeds.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (PEM file).
    pub ca_cert: PathBuf,
    /// CA private key (PKCS#8 PEM file).
    pub ca_key: PathBuf,
    /// kube-apiserver serving certificate.
    pub serving_cert: PathBuf,
    /// kube-apiserver serving key.
    pub serving_key: PathBuf,
    /// ServiceAccount token signing key.
    pub sa_key: PathBuf,
    /// ServiceAccount token verification key.
    pub sa_pub: PathBuf,
    /// CA certificate PEM.
    pub ca_pem: String,
    /// Admin client certificate PEM (member of system:masters).
    pub admin_cert_pem: String,
    /// Admin client key PEM.
    pub admin_key_pem: String,
    /// Admin client certificate (PEM file), for the apiserver's calls to the kubelet.
    pub admin_cert: PathBuf,
    /// Admin client key (PEM file).
    pub admin_key: PathBuf,
    /// The real node's kubelet client pair (PEM certificate, PEM key).
    pub kubelet_pem: (String, String),
    /// kube-proxy's client pair (PEM certificate, PEM key).
    pub proxy_pem: (String, String),
}

/// A client certificate signed by the CA for `cn` in `org`.
fn client_pair(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: Option<&str>,
    what: &'static str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(generate_err(what))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).map_err(generate_err(what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn generate_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

/// Generates a CA, the apiserver serving pair, an admin client pair and the ServiceAccount
/// signing pair, and writes them (mode 0600 for keys) into `dir`.
pub fn generate(dir: &Path) -> Result<Pki, PkiError> {
    let ca_key = KeyPair::generate().map_err(generate_err("CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rustronaut-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate_err("CA certificate"))?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().map_err(generate_err("serving key"))?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        crate::node::NODE_IP.to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
        // The first address of --service-cluster-ip-range: the in-cluster `kubernetes` Service.
        "10.0.0.1".to_string(),
    ])
    .map_err(generate_err("serving certificate parameters"))?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .map_err(generate_err("serving certificate"))?;

    let admin_key = KeyPair::generate().map_err(generate_err("admin key"))?;
    let mut admin = CertificateParams::default();
    admin
        .distinguished_name
        .push(DnType::CommonName, "rustronaut-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin
        .signed_by(&admin_key, &issuer)
        .map_err(generate_err("admin certificate"))?;

    let sa = KeyPair::generate().map_err(generate_err("service-account key"))?;
    let kubelet_pem = client_pair(
        &issuer,
        &format!("system:node:{}", crate::node::NODE_NAME),
        Some("system:nodes"),
        "kubelet client certificate",
    )?;
    let proxy_pem = client_pair(
        &issuer,
        "system:kube-proxy",
        None,
        "kube-proxy client certificate",
    )?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        ca_pem: ca_cert.pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        kubelet_pem,
        proxy_pem,
    };
    write(&pki.admin_cert, &pki.admin_cert_pem, 0o644)?;
    write(&pki.admin_key, &pki.admin_key_pem, 0o600)?;
    write(&pki.ca_cert, &pki.ca_pem, 0o644)?;
    write(&pki.ca_key, &ca_key_pem, 0o600)?;
    write(&pki.serving_cert, &serving_cert.pem(), 0o644)?;
    write(&pki.serving_key, &serving_key.serialize_pem(), 0o600)?;
    write(&pki.sa_key, &sa.serialize_pem(), 0o600)?;
    write(&pki.sa_pub, &sa.public_key_pem(), 0o644)?;
    Ok(pki)
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_keys_private_and_certs_as_pem() {
        let dir = std::env::temp_dir().join(format!("rtn-pki-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = generate(&dir).unwrap();
        for key in [&pki.ca_key, &pki.serving_key, &pki.sa_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                0o600,
                "{} must not be readable by others",
                key.display()
            );
            let text = std::fs::read_to_string(key).unwrap();
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        }
        let sa_pub = std::fs::read_to_string(&pki.sa_pub).unwrap();
        assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(
            pki.admin_cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_ne!(pki.ca_pem, pki.admin_cert_pem);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
