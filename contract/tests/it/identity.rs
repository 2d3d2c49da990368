//! Client certificates (generated with rcgen at test time), PEM bundles, sites and API keys
//! wired from a snapshot.

use crate::common::*;
use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};
use rustronaut_contract::identity::apikey::ApiKeyVerifier;
use rustronaut_contract::identity::cert::{
    CertError, certificate_identity, parse_pem_certificates, spki_sha256,
};
use rustronaut_contract::identity::site::{SiteDirectory, decode_public_key};
use rustronaut_contract::snapshot::IdentityProviderKind;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn certificate_facts() {
    let mut params = CertificateParams::new(vec!["Deployer.acme.example".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://acme/deployer".try_into().unwrap()));
    params
        .subject_alt_names
        .push(SanType::Rfc822Name("ops@acme.example".try_into().unwrap()));
    params
        .subject_alt_names
        .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let id = certificate_identity("corp-ca", cert.der()).unwrap();
    assert_eq!(id.idp, "corp-ca");
    assert_eq!(id.san_uris, vec!["spiffe://acme/deployer"]);
    assert_eq!(
        id.san_dns_names,
        vec!["deployer.acme.example"],
        "DNS names are lower-cased"
    );
    assert_eq!(id.san_emails, vec!["ops@acme.example"]);
    let expected = hex(&Sha256::digest(key.subject_public_key_info()));
    assert_eq!(id.spki_sha256, expected);
    assert_eq!(spki_sha256(cert.der()).unwrap(), expected);

    // Strict parsing.
    let mut trailing = cert.der().to_vec();
    trailing.push(0);
    assert_eq!(
        certificate_identity("corp-ca", &trailing),
        Err(CertError::TrailingData)
    );
    assert!(matches!(
        certificate_identity("corp-ca", b"garbage"),
        Err(CertError::Parse(_))
    ));

    // PEM bundles.
    let bundle = format!("junk before\n{}\n{}", cert.pem(), TEST_CA_PEM);
    let ders = parse_pem_certificates(&bundle).unwrap();
    assert_eq!(ders.len(), 2);
    assert_eq!(ders[0], cert.der().to_vec());
    assert_eq!(
        parse_pem_certificates("no pem here"),
        Err(CertError::NoCertificate)
    );
    assert!(
        parse_pem_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .is_err()
    );
}

#[test]
fn certificate_without_san() {
    let params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let id = certificate_identity("corp-ca", cert.der()).unwrap();
    assert!(id.san_uris.is_empty() && id.san_dns_names.is_empty() && id.san_emails.is_empty());
    assert_eq!(id.spki_sha256.len(), 64);
}

#[test]
fn sites_from_the_snapshot() {
    let s = snapshot(vec![]);
    let dir = SiteDirectory::new(&s.tunnel.as_ref().unwrap().sites).unwrap();
    let site = dir.lookup(&decode_public_key(SITE_KEY).unwrap()).unwrap();
    assert_eq!((site.name.as_str(), site.tenant.as_str()), ("dc1", "acme"));
}

#[test]
fn api_keys_from_the_snapshot() {
    let s = snapshot(vec![]);
    let tenant = s.tenant("acme").unwrap();
    let p = tenant.identity_provider("partners").unwrap();
    let IdentityProviderKind::ApiKey(cfg) = &p.kind else {
        panic!("partners is an apiKey provider")
    };
    let v = ApiKeyVerifier::from_provider(&p.name, cfg).unwrap();
    assert_eq!(
        v.verify("rtn_0123456789abcdefghijkl").unwrap().client_id,
        "ci"
    );
    assert!(v.verify("rtn_0123456789abcdefghijkm").is_none());
}
