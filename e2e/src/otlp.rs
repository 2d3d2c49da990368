//! A minimal OTLP/HTTP trace receiver for tests of the binaries' exports (gateway, operator,
//! tunnel), plain or over TLS (optionally mutual), as a collector behind a private CA.
//!
//! Why not the OpenTelemetry Collector: it is not built here; the payload is checked for the
//! strings and ids a span must carry, which protobuf keeps verbatim, and the exporters are
//! the OpenTelemetry SDK's own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// A minimal OTLP/HTTP collector: keeps the body of every `POST /v1/traces` (protobuf) and
/// answers 200. Plain std sockets, one thread per connection, keep-alive honoured.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every body received.
    pub bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Receiver {
    /// Listens on a free loopback port (plain HTTP).
    pub fn start() -> Self {
        Self::listen(None)
    }

    /// Listens on a free loopback port over TLS with `certificate_pem` (chain) and `key_pem`,
    /// as a collector behind a private CA; with `client_ca_pem`, clients must present a
    /// certificate it signed (mutual TLS).
    pub fn start_tls(certificate_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        Self::listen(Some(Arc::new(
            builder.with_single_cert(chain, key).unwrap(),
        )))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let store = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let store = store.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve(conn, &store),
                    Some(config) => {
                        let Ok(session) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(rustls::StreamOwned::new(session, conn), &store);
                    }
                });
            }
        });
        Self { addr, bodies }
    }

    /// Every body received so far, concatenated (protobuf keeps strings and ids verbatim).
    pub fn received(&self) -> Vec<u8> {
        self.bodies.lock().unwrap().concat()
    }
}

/// Serves one connection: keeps every `POST /v1/traces` body, answers 200 (404 for other
/// paths), keep-alive honoured; returns when the peer closes or a handshake fails.
fn serve<S: Read + Write>(conn: S, store: &std::sync::Mutex<Vec<Vec<u8>>>) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path_ok = line.starts_with("POST /v1/traces ");
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if path_ok {
            store.lock().unwrap().push(body);
            "200 OK"
        } else {
            "404 Not Found"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        let out = reader.get_mut();
        if out.write_all(resp.as_bytes()).is_err() || out.flush().is_err() {
            return;
        }
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
