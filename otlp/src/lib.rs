//! OTLP/HTTP trace export, one implementation for the three binaries that export spans (the
//! operator: a span per reconcile; the gateway: a span per request; the tunnel: a span per
//! site session and per relayed stream).
//!
//! ```text
//!  --otlp-endpoint  OTEL_EXPORTER_OTLP_ENDPOINT            http://host:4318 or https://host:4318
//!  --otlp-ca-file   OTEL_EXPORTER_OTLP_CERTIFICATE         PEM CAs trusted besides the OS store
//!  --otlp-client-certificate / --otlp-client-key           mutual TLS to the collector
//!                   OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE / _CLIENT_KEY
//!        |
//!        v
//!  [`Otlp::provider`] -> SdkTracerProvider, batch exporter -> POST <endpoint>/v1/traces
//!                        (protobuf) on the SDK's own export thread, reqwest blocking client
//! ```
//!
//! The variable names are the OpenTelemetry specification's, so a collector set up for any
//! other OpenTelemetry SDK is set up for these binaries too.
//!
//! Why TLS here and not only a local agent: a collector is often a shared service in another
//! namespace or cluster, reached over the network; spans carry object names and decision ids,
//! so they should not cross it in clear. The TLS stack is rustls on ring, the one crypto
//! provider of the whole tree; trust is the OS store (the images ship the CA bundle) plus an
//! optional CA file (a private collector CA, typically mounted from a Secret).
//! Why a blocking client on the export thread: no Tokio runtime is needed there, and the
//! exporter never competes with the proxy's or the controller's runtime. The client is
//! built on a thread of its own, because reqwest's blocking client may not be created (or
//! dropped) inside a Tokio runtime.

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an `http://` or `https://` base URL.
    #[error("OTLP endpoint {0:?} must be an http:// or https:// URL such as http://collector:4318")]
    Endpoint(String),
    /// TLS files given for a plain `http://` endpoint (they would be silently unused).
    #[error("OTLP endpoint {0:?} is http://, but TLS files were given: use https://")]
    TlsWithoutHttps(String),
    /// A client certificate without its key, or the other way round.
    #[error("--otlp-client-certificate and --otlp-client-key go together")]
    ClientIdentity,
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration (for example a key that does not match).
    #[error("TLS to the collector: {0}")]
    Tls(String),
    /// The exporter or its HTTP client could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Where and how to export: the flags every binary flattens into its own (global, so a
/// binary with subcommands takes them after the subcommand too).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Otlp {
    /// OTLP/HTTP collector base URL (http://host:4318 or https://host:4318); spans go to
    /// `<url>/v1/traces`. Unset: no tracing, nothing started.
    #[arg(
        long = "otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        global = true
    )]
    pub endpoint: Option<String>,
    /// PEM file of CA certificates trusted for an https:// collector, besides the OS store.
    #[arg(
        long = "otlp-ca-file",
        env = "OTEL_EXPORTER_OTLP_CERTIFICATE",
        global = true
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a collector that requires mutual TLS.
    #[arg(
        long = "otlp-client-certificate",
        env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        global = true
    )]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of `--otlp-client-certificate`.
    #[arg(
        long = "otlp-client-key",
        env = "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        global = true
    )]
    pub client_key: Option<PathBuf>,
}

/// Time allowed for one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP/HTTP traces URL of a base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` means it
/// (the signal path `/v1/traces` appended), and whether it is TLS.
pub fn traces_url(endpoint: &str) -> Result<(String, bool), OtlpError> {
    let (rest, tls) = match endpoint.strip_prefix("https://") {
        Some(rest) => (Some(rest), true),
        None => (endpoint.strip_prefix("http://"), false),
    };
    let rest = rest
        .filter(|r| !r.is_empty() && !r.starts_with('/'))
        .ok_or_else(|| OtlpError::Endpoint(endpoint.to_string()))?;
    if rest.chars().any(char::is_whitespace) {
        return Err(OtlpError::Endpoint(endpoint.to_string()));
    }
    Ok((format!("{}/v1/traces", endpoint.trim_end_matches('/')), tls))
}

impl Otlp {
    /// With only an endpoint (tests, callers that take no TLS flags).
    pub fn endpoint(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: Some(endpoint.into()),
            ..Self::default()
        }
    }

    /// A tracer provider exporting in batches as `service` (the `service.name` resource
    /// attribute), or None without an endpoint. Keep it: shutting it down (or dropping it)
    /// flushes the last batch. Call outside any Tokio runtime, or from a blocking section.
    pub fn provider(&self, service: &'static str) -> Result<Option<SdkTracerProvider>, OtlpError> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let (url, tls) = traces_url(endpoint)?;
        let tls_files = self.ca_file.is_some()
            || self.client_certificate.is_some()
            || self.client_key.is_some();
        if !tls && tls_files {
            return Err(OtlpError::TlsWithoutHttps(endpoint.clone()));
        }
        // reqwest's rustls backend is compiled in without a provider, so it is always given a
        // configuration, also for http:// (where it is never used): an empty trust store.
        let config = if tls {
            self.rustls_config()?
        } else {
            client_builder()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let client = std::thread::Builder::new()
            .name("otlp-client".into())
            .spawn(move || {
                reqwest::blocking::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .tls_backend_preconfigured(config)
                    .build()
            })
            .map_err(|e| OtlpError::Exporter(e.to_string()))?
            .join()
            .map_err(|_| OtlpError::Exporter("building the HTTP client panicked".into()))?
            .map_err(|e| OtlpError::Exporter(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| OtlpError::Exporter(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        ))
    }

    /// rustls on ring: the OS trust store plus `ca_file`, and the client identity if given.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, OtlpError> {
        let mut roots = rustls::RootCertStore::empty();
        // The OS store: certificates it cannot parse are skipped (as every rustls client
        // does), and an empty store is fine when a CA file is given.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = &self.ca_file {
            let cas = certificates(path)?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(OtlpError::Pem {
                    path: path.clone(),
                    message: "no usable CA certificate".into(),
                });
            }
        }
        if roots.is_empty() {
            return Err(OtlpError::Tls(
                "no trusted CA: the OS store is empty and no --otlp-ca-file was given".into(),
            ));
        }
        let builder = client_builder()?.with_root_certificates(roots);
        let mut config = match (&self.client_certificate, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| OtlpError::Tls(e.to_string()))?,
            _ => return Err(OtlpError::ClientIdentity),
        };
        // OTLP/HTTP collectors speak HTTP/1.1 and HTTP/2; reqwest here is HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A rustls client configuration on ring with the safe default protocol versions.
fn client_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, OtlpError> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| OtlpError::Tls(e.to_string()))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|e| OtlpError::Pem {
        path: path.clone(),
        message: e.to_string(),
    })
}

fn certificates(
    path: &PathBuf,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, OtlpError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| OtlpError::Pem {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(OtlpError::Pem {
            path: path.clone(),
            message: "no PEM certificate".into(),
        });
    }
    Ok(certs)
}

fn private_key(path: &PathBuf) -> Result<rustls::pki_types::PrivateKeyDer<'static>, OtlpError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| OtlpError::Pem {
            path: path.clone(),
            message: e.to_string(),
        })?
        .ok_or_else(|| OtlpError::Pem {
            path: path.clone(),
            message: "no PEM private key".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_to_an_http_or_https_base() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            ("http://collector:4318/v1/traces".into(), false)
        );
        assert_eq!(
            traces_url("https://collector:4318/").unwrap(),
            ("https://collector:4318/v1/traces".into(), true)
        );
        for bad in [
            "grpc://c:4317",
            "collector:4318",
            "http://",
            "https:///x",
            "http://a b",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_endpoint_starts_nothing() {
        assert!(Otlp::default().provider("test").unwrap().is_none());
    }

    /// Misconfigurations are refused when the binary starts, with what to change, instead of
    /// exporting in clear or failing at the first batch; a good one builds.
    #[test]
    fn tls_misconfigurations_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["collector.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();

        let with = |endpoint: &str, f: &dyn Fn(&mut Otlp)| {
            let mut o = Otlp::endpoint(endpoint);
            f(&mut o);
            o.provider("test").map(|p| p.map(|p| p.shutdown()))
        };
        let err = |r: Result<_, OtlpError>| r.unwrap_err().to_string();
        assert_eq!(
            err(with("http://c:4318", &|o| o.ca_file = Some(ca.clone()))),
            "OTLP endpoint \"http://c:4318\" is http://, but TLS files were given: use https://"
        );
        assert_eq!(
            err(with("https://c:4318", &|o| o.client_certificate =
                Some(ca.clone()))),
            "--otlp-client-certificate and --otlp-client-key go together"
        );
        assert_eq!(
            err(with("https://c:4318", &|o| o.ca_file = Some(junk.clone()))),
            format!("{}: no PEM certificate", junk.display())
        );
        assert!(
            err(with("https://c:4318", &|o| o.ca_file =
                Some(dir.path().join("absent"))))
            .contains("No such file"),
        );
        assert!(with("http://c:4318", &|_| {}).is_ok());
        assert!(with("https://c:4318", &|o| o.ca_file = Some(ca.clone())).is_ok());
        assert!(
            with("https://c:4318", &|o| {
                o.ca_file = Some(ca.clone());
                o.client_certificate = Some(ca.clone());
                o.client_key = Some(key_file.clone());
            })
            .is_ok()
        );
    }
}
