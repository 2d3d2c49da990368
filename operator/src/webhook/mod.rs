//! The sidecar injection webhook: pods that opt in get the `rustronaut-sidecar` container of
//! the one sidecar Resource that selects them (docs/sidecars.md, "Sidecars: injection").
//!
//! ```text
//!  apiserver --POST /inject (AdmissionReview, HTTPS)--> server  (every replica)
//!                                                        | caches: Resources, Namespaces
//!                                                        v
//!                                                 inject::admit (pure) -> JSONPatch / warning / deny
//!  certs: the leader keeps the CA + serving certificate Secret and the
//!         MutatingWebhookConfiguration's caBundle current; every replica serves from the Secret
//! ```
//!
//! Every replica answers, not only the leader: the webhook's Service selects all operator
//! pods, and with `failurePolicy: Fail` a webhook that answered only on the leader would
//! refuse pods whenever the Service picked a standby. So each replica runs its own two
//! reflectors (Resources and Namespace metadata) instead of sharing the leader's caches.
//!
//! - [`inject`]: the pure decision and patch.
//! - [`server`]: the HTTPS endpoint and its limits.
//! - [`certs`]: the CA, the serving certificate, their rotation and the caBundle.

pub mod certs;
pub mod inject;
pub mod server;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use rustronaut_crds::Resource as RtnResource;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;

/// What the webhook needs to run.
#[derive(Clone)]
pub struct Config {
    /// Where its certificates live and what they name.
    pub certs: certs::CertConfig,
    /// What the injected container looks like.
    pub settings: inject::Settings,
    /// The operator's metrics (admissions are counted there).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Starts the webhook on `listener` (spawned tasks: its caches, the TLS configuration from
/// the Secret, reloaded on every change, and the server) and returns the flag that turns true
/// once its caches are filled (before that it answers 503). Runs on every replica; the
/// leader's part is [`certs::run_leader`].
pub fn start(client: kube::Client, listener: TcpListener, cfg: Config) -> Arc<AtomicBool> {
    let ready = Arc::new(AtomicBool::new(false));

    let (resources, writer) = reflector::store();
    // Guarded like the controllers' watches: one unreadable Resource must not stop the
    // webhook from seeing the others. It is left out (as the controllers leave it out).
    let resource_events = watcher(
        Api::<DeserializeGuard<RtnResource>>::all(client.clone()),
        watcher::Config::default(),
    )
    .filter_map(|r| async move {
        use crate::cache::guard::Unreadable;
        use watcher::Event as E;
        Some(r.map(|e| match e {
            E::Apply(DeserializeGuard(Ok(k))) => E::Apply(k),
            E::InitApply(DeserializeGuard(Ok(k))) => E::InitApply(k),
            E::Delete(DeserializeGuard(Ok(k))) => E::Delete(k),
            E::Apply(DeserializeGuard(Err(bad)))
            | E::InitApply(DeserializeGuard(Err(bad)))
            | E::Delete(DeserializeGuard(Err(bad))) => {
                E::Delete(RtnResource::tombstone(&bad.metadata))
            }
            E::Init => E::Init,
            E::InitDone => E::InitDone,
        }))
    });
    let resource_stream = reflector::reflector(writer, resource_events).default_backoff();

    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = reflector::reflector(
        ns_writer,
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(|n| n.metadata.managed_fields = None),
    )
    .default_backoff();

    for (kind, stream) in [
        ("Resource", resource_stream.map(|r| r.map(|_| ())).boxed()),
        ("Namespace", ns_stream.map(|r| r.map(|_| ())).boxed()),
    ] {
        tokio::spawn(stream.for_each(move |r| async move {
            if let Err(e) = r {
                tracing::warn!(kind, error = %e, "webhook watch failed; retrying");
            }
        }));
    }
    {
        let (resources, namespaces, ready) = (resources.clone(), namespaces.clone(), ready.clone());
        tokio::spawn(async move {
            let filled = async {
                crate::cache::wait_ready(&resources).await?;
                crate::cache::wait_ready(&namespaces).await
            };
            if filled.await.is_ok() {
                tracing::info!("webhook caches filled");
                ready.store(true, Ordering::Relaxed);
            }
        });
    }

    let tls = watch_tls(client.clone(), &cfg.certs);
    let state = Arc::new(server::State {
        resources,
        namespaces,
        client,
        settings: cfg.settings,
        ready: ready.clone(),
        metrics: cfg.metrics,
    });
    tokio::spawn(server::serve(listener, tls, state));
    ready
}

/// Follows the certificate Secret: each version that loads becomes the serving
/// configuration; one that does not is logged and the previous one kept.
pub fn watch_tls(
    client: kube::Client,
    cfg: &certs::CertConfig,
) -> watch::Receiver<Option<Arc<ServerConfig>>> {
    let (tx, rx) = watch::channel(None);
    let api: Api<Secret> = Api::namespaced(client, &cfg.namespace);
    let name = cfg.secret.clone();
    let events = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(e) = events.next().await {
            match e {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                    match certs::Material::from_secret(&s)
                        .ok_or_else(|| "missing entries".to_string())
                        .and_then(|m| m.server_config())
                    {
                        Ok(c) => {
                            tracing::info!(secret = %name, "webhook serving certificate loaded");
                            let _ = tx.send(Some(c));
                        }
                        Err(e) => {
                            tracing::warn!(secret = %name, error = %e, "webhook certificate not loaded; keeping the previous")
                        }
                    }
                }
                Ok(watcher::Event::Delete(_)) => {
                    tracing::warn!(secret = %name, "webhook certificate Secret deleted; serving the previous until the leader makes a new one")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook certificate watch failed; retrying"),
            }
        }
    });
    rx
}
