//! Identity facts from a client certificate: SAN URIs (SPIFFE IDs), DNS names, emails, and the
//! SHA-256 of its SubjectPublicKeyInfo (to pin one key).
//!
//! This module does **not** verify the certificate: the TLS layer (rustls with the listener's
//! CA bundle) has already checked the chain, validity period and proof of possession before
//! these facts are read. Here the certificate is parsed strictly (trailing bytes, a malformed
//! or duplicated SAN extension, or SAN entries that are not valid strings are refused rather
//! than skipped, so a certificate never yields fewer names than it carries without notice).

use super::CertificateIdentity;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate (or a PEM bundle) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    /// Bytes after the certificate.
    #[error("trailing data after the certificate")]
    TrailingData,
    /// The SAN extension is malformed or present twice.
    #[error("invalid subjectAltName extension: {0}")]
    InvalidSan(String),
    /// A PEM block that does not decode.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A PEM bundle without any CERTIFICATE block.
    #[error("no CERTIFICATE block found")]
    NoCertificate,
}

/// The identity facts of a verified DER certificate, attributed to provider `idp` (the
/// clientCertificate provider whose CA verified it).
pub fn certificate_identity(idp: &str, der: &[u8]) -> Result<CertificateIdentity, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingData);
    }
    let mut id = CertificateIdentity {
        idp: idp.to_string(),
        spki_sha256: crate::hex(&Sha256::digest(cert.public_key().raw)),
        ..CertificateIdentity::default()
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::InvalidSan(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => id.san_uris.push((*u).to_string()),
                GeneralName::DNSName(d) => id.san_dns_names.push(d.to_ascii_lowercase()),
                GeneralName::RFC822Name(e) => id.san_emails.push((*e).to_string()),
                GeneralName::Invalid(tag, _) => {
                    return Err(CertError::InvalidSan(format!(
                        "undecodable entry (tag {tag})"
                    )));
                }
                // IP addresses, directory names, other names: not principals.
                _ => {}
            }
        }
    }
    Ok(id)
}

/// Lower-case hex SHA-256 of the certificate's SubjectPublicKeyInfo, the value
/// `clientCertificate.spkiSHA256` principals pin (`openssl x509 -pubkey -noout | openssl pkey
/// -pubin -outform DER | sha256sum`).
pub fn spki_sha256(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(crate::hex(&Sha256::digest(cert.public_key().raw)))
}

/// The DER certificates of a PEM bundle; every CERTIFICATE block must parse as X.509, other
/// blocks are ignored, and at least one certificate is required.
pub fn parse_pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::Pem(e.to_string()))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| CertError::Parse(e.to_string()))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(out)
}
