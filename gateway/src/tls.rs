//! TLS termination on HTTPS listeners (rustls through Pingora).
//!
//! - **Certificates** are chosen per handshake by SNI from the snapshot being served
//!   ([`SniResolver`] reads the atomically swapped state), so a reload that rotates a
//!   certificate takes effect on the next handshake without rebinding.
//! - **Client certificates**: the listener's `clientCertificate` mode and CA bundle (the union
//!   of its tenants' CAs), read from the current snapshot on every handshake
//!   ([`DynamicClientVerifier`]), so a CA rotation or a mode change needs no restart. After
//!   the handshake [`HandshakeCallback`] keeps the verified chain on the connection, and the
//!   request phase attributes it to one clientCertificate provider of the requested
//!   Resource's tenant. No CA names are hinted to clients (the hint list is borrowed from
//!   the verifier and cannot follow a swap); clients then offer any certificate they have.
//! - **ALPN** offers h2 and http/1.1; TLS 1.2 and 1.3 are negotiated (a `minVersion: "1.3"`
//!   listener refuses requests on TLS 1.2 connections in the request phase).

use crate::reload::Store;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::any::Any;
use std::sync::Arc;

/// Picks the certificate of one listener by SNI from the current snapshot.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<Store>,
    listener: String,
}

impl SniResolver {
    /// A resolver for `listener`.
    pub fn new(store: Arc<Store>, listener: impl Into<String>) -> Self {
        Self {
            store,
            listener: listener.into(),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let compiled = self.store.current()?;
        compiled
            .certs
            .get(&self.listener)?
            .select(hello.server_name())
    }
}

/// What a handshake established, kept on the connection's TLS digest for the request phase.
#[derive(Debug)]
pub struct HandshakeFacts {
    /// The verified client certificate chain, leaf first; `None` without one.
    pub chain: Option<Vec<CertificateDer<'static>>>,
    /// The server name the client asked for (SNI), which chose the certificate; the request
    /// phase answers 421 on listeners with client certificates when a request names another
    /// host (see [`crate::pipeline::decide`]).
    pub sni: Option<String>,
}

/// Keeps [`HandshakeFacts`] on the connection's TLS digest.
#[derive(Debug)]
pub struct HandshakeCallback;

#[async_trait::async_trait]
impl TlsAccept for HandshakeCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(HandshakeFacts {
            chain: tls.peer_cert_chain_der().map(<[_]>::to_vec),
            sni: tls.server_name().map(str::to_string),
        }))
    }
}

/// The client-certificate verifier of one listener, taken from the current snapshot at each
/// handshake: mode `None` (or no such listener) asks for no certificate.
#[derive(Debug)]
pub struct DynamicClientVerifier {
    store: Arc<Store>,
    listener: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DynamicClientVerifier {
    /// A verifier for `listener`.
    pub fn new(store: Arc<Store>, listener: impl Into<String>) -> Self {
        Self {
            store,
            listener: listener.into(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn current(&self) -> Option<(Arc<dyn ClientCertVerifier>, bool)> {
        let state = self.store.current()?;
        state.client_verifiers.get(&self.listener).cloned()
    }
}

impl ClientCertVerifier for DynamicClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().is_some_and(|(_, required)| required)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current() {
            Some((v, _)) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "client certificates are not accepted on this listener".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
