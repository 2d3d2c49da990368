//! Builds the Pingora server: one proxy service per HTTP/HTTPS listener of the first
//! snapshot, TLS settings from [`crate::tls`].

use crate::proxy::{GatewayProxy, ListenerInfo, Shared};
use crate::state::Compiled;
use crate::tls::{DynamicClientVerifier, PeerChainCallback, SniResolver};
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use rustronaut_contract::snapshot::ListenerProtocol;
use std::net::IpAddr;
use std::sync::Arc;

/// Why the server could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The snapshot has no HTTP or HTTPS listener, so there is nothing to bind.
    #[error("the snapshot has no HTTP or HTTPS listener")]
    NoListener,
    /// TLS settings could not be created.
    #[error("listener {listener}: {reason}")]
    Tls {
        /// Listener.
        listener: String,
        /// Cause.
        reason: String,
    },
}

/// Process settings for Pingora.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address every listener binds to.
    pub bind: IpAddr,
    /// Worker threads per listener.
    pub threads: usize,
    /// Seconds to keep serving after SIGTERM before closing listeners.
    pub grace_period_seconds: u64,
    /// Seconds to wait for in-flight requests after that.
    pub shutdown_timeout_seconds: u64,
}

/// A Pingora server with every HTTP(S) listener of `first` bound.
pub fn build(
    first: &Compiled,
    shared: &Arc<Shared>,
    opts: &ServerOptions,
) -> Result<Server, ServerError> {
    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(opts.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(opts.shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(None::<pingora::server::configuration::Opt>, conf);
    let conf = server.configuration.clone();
    let mut any = false;
    for l in &first.snapshot.listeners {
        let https = match l.protocol {
            ListenerProtocol::Http => false,
            ListenerProtocol::Https => true,
            other => {
                tracing::warn!(listener = %l.name, protocol = ?other, "listener protocol not served by this gateway build");
                continue;
            }
        };
        let info = ListenerInfo {
            name: l.name.clone(),
            port: l.port,
            https,
        };
        let proxy = GatewayProxy::new(info, shared.clone());
        let mut svc = pingora::proxy::http_proxy_service_with_name(
            &conf,
            proxy,
            &format!("listener {}", l.name),
        );
        let addr = std::net::SocketAddr::new(opts.bind, l.port).to_string();
        if https {
            let tls_err = |reason: String| ServerError::Tls {
                listener: l.name.clone(),
                reason,
            };
            let mut settings = TlsSettings::with_callbacks(Box::new(PeerChainCallback))
                .map_err(|e| tls_err(e.to_string()))?;
            settings.set_cert_resolver(Arc::new(SniResolver::new(shared.store.clone(), &l.name)));
            // Always installed: it asks for a certificate only while the current snapshot
            // says so for this listener.
            settings.set_client_cert_verifier(Arc::new(DynamicClientVerifier::new(
                shared.store.clone(),
                &l.name,
            )));
            settings.enable_h2();
            svc.add_tls_with_settings(&addr, None, settings);
        } else {
            svc.add_tcp(&addr);
        }
        tracing::info!(listener = %l.name, %addr, https, "listener bound");
        server.add_service(svc);
        any = true;
    }
    if !any {
        return Err(ServerError::NoListener);
    }
    Ok(server)
}
