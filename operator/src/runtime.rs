//! The top of the crate: sets up the caches ([`crate::cache`]) and runs, on them and under
//! one leader election, every controller and pass until shutdown:
//!
//! ```text
//!  Caches::new ──drivers──> reflector stores (Stores) ──Wakeups──┬─> gateway::run (Controller)
//!                                                                ├─> status::pass  (pass::drive)
//!                                                                ├─> tenant::pass  (pass::drive)
//!                                                                └─> SidecarController::run
//!  readiness: every store filled -> /readyz
//! ```
//!
//! Nothing below this module starts a task of another module; `main` (and the integration
//! tests) build a [`Runtime`] and run it.

use crate::cache::{Caches, Driver, Stores};
use crate::context::{Context, Settings};
use crate::gateway::{self, GatewayContext};
use crate::sidecar::SidecarController;
use crate::{pass, status, tenant};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use rustronaut_crds::Gateway;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The Gateway controller and, sharing its caches and leader election, the Tenant controller,
/// the Resource/Policy status pass and the sidecar reconciler ([`crate::sidecar`]).
pub struct Runtime {
    context: Arc<GatewayContext>,
    drivers: Vec<Driver>,
    triggers: mpsc::Receiver<()>,
    targets: mpsc::UnboundedReceiver<ObjectRef<Gateway>>,
    status_triggers: mpsc::Receiver<()>,
    tenant_triggers: mpsc::Receiver<()>,
    sidecar: SidecarController,
    ready: Arc<AtomicBool>,
}

impl Runtime {
    /// Sets up the caches for `ctx`'s client (nothing runs until [`Self::run`]).
    pub fn new(ctx: Context, settings: Settings) -> Self {
        let Caches {
            stores,
            drivers,
            wakeups,
        } = Caches::new(&ctx, &settings);
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let sidecar = SidecarController::new(
            ctx.clone(),
            stores.clone(),
            settings.clone(),
            wakeups.sidecars,
        );
        Self {
            context: Arc::new(GatewayContext {
                ctx,
                stores,
                settings,
                recorder,
                failures: Default::default(),
                memo: Default::default(),
                certificates_pruned: Default::default(),
            }),
            drivers,
            triggers: wakeups.gateways,
            targets: wakeups.targets,
            status_triggers: wakeups.status,
            tenant_triggers: wakeups.tenants,
            sidecar,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True once every cache has been filled (for `/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// The metrics the controllers record: for tests that count the work done.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.context.ctx.metrics.clone()
    }

    /// The caches (filled once [`Self::run`] runs): for tests that look at what is held.
    pub fn stores(&self) -> Stores {
        self.context.stores.clone()
    }

    /// Runs the Gateway controller, the Tenant controller and the Resource/Policy status pass
    /// until `shutdown` completes; in-flight Gateway reconciles finish first.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
        let shutdown = shutdown.shared();
        let drivers: Vec<_> = self
            .drivers
            .into_iter()
            .map(|d| tokio::spawn(d.for_each(|()| async {})))
            .collect();
        let stores = self.context.stores.clone();
        let ready = self.ready.clone();
        let readiness = tokio::spawn(async move {
            if stores.ready().await.is_ok() {
                ready.store(true, Ordering::Relaxed);
            }
        });
        let status = {
            let ctx = self.context.ctx.clone();
            let stores = self.context.stores.clone();
            tokio::spawn(pass::drive(
                status::KIND,
                ctx.metrics.clone(),
                self.status_triggers,
                shutdown.clone(),
                move |resync| {
                    let ctx = ctx.clone();
                    let stores = stores.clone();
                    async move { status::pass(&ctx, &stores, resync).await }
                },
            ))
        };
        let tenants = {
            let ctx = self.context.ctx.clone();
            let stores = self.context.stores.clone();
            let state = Arc::new(tenant::State::default());
            tokio::spawn(pass::drive(
                tenant::KIND,
                ctx.metrics.clone(),
                self.tenant_triggers,
                shutdown.clone(),
                move |resync| {
                    let ctx = ctx.clone();
                    let stores = stores.clone();
                    let state = state.clone();
                    async move { tenant::pass(&ctx, &stores, &state, resync).await }
                },
            ))
        };
        let sidecars = tokio::spawn(self.sidecar.run(shutdown.clone()));
        let (status_abort, tenants_abort, sidecars_abort) = (
            status.abort_handle(),
            tenants.abort_handle(),
            sidecars.abort_handle(),
        );
        let asked = shutdown.clone();
        let work = async move {
            gateway::run(self.context, self.triggers, self.targets, shutdown).await;
            let _ = status.await;
            let _ = tenants.await;
            let _ = sidecars.await;
        };
        let grace = async move {
            asked.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            () = work => {}
            () = grace => {
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "reconciles still running after the shutdown grace period; stopping without them"
                );
                status_abort.abort();
                tenants_abort.abort();
                sidecars_abort.abort();
            }
        }
        readiness.abort();
        for d in drivers {
            d.abort();
        }
    }
}

/// How long [`Runtime::run`] lets in-flight reconciles finish after shutdown was asked for
/// before it returns without them (as controller-runtime's `gracefulShutdownTimeout` does).
///
/// Why bounded: kube's graceful shutdown waits for every running reconcile, and one stuck on
/// an API call would hold the process until the kubelet kills it; an interrupted reconcile
/// is safe, since the next leader (or this one, restarted) reconciles everything from the
/// API's state. 20 s leaves the rest of a pod's default 30 s termination grace period.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);
