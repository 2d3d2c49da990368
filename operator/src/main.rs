//! `rustronaut-operator`: parses flags, wires the controllers, leader election, the
//! metrics/health server and signal handling. The logic lives in the library.
//!
//! `Runtime::run` runs the Gateway controller together with the Tenant controller, the
//! Resource/Policy status pass and the sidecar reconciler: they share one set of caches, so
//! all of them start and stop together under the one Lease.

use clap::Parser;
use k8s_openapi::api::core::v1::ResourceRequirements;
use prometheus_client::registry::Registry;
use rustronaut_operator::context::{Context, Settings};
use rustronaut_operator::leader::{Elector, LeaseConfig};
use rustronaut_operator::rbac;
use rustronaut_operator::runtime::Runtime;
use rustronaut_operator::webhook;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Environment variable naming this operator instance (the pod name, via the Downward API).
const POD_NAME_ENV: &str = "POD_NAME";
/// Environment variable with the operator's namespace (the Downward API), where its Lease is.
const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// The rustronaut operator: reconciles Gateways into their snapshot and workload, Tenants into
/// claims and namespace isolation, and the status of Resources and Policies.
#[derive(Debug, Parser)]
#[command(name = "rustronaut-operator", version)]
struct Args {
    /// Image of the gateway pods.
    #[arg(long, env = "RUSTRONAUT_GATEWAY_IMAGE", default_value_t = Settings::default_image())]
    gateway_image: String,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// This instance's name in Events and in the Lease (the pod name in a cluster). Default:
    /// the host name.
    #[arg(long, env = POD_NAME_ENV)]
    instance: Option<String>,
    /// Run the controllers only while holding the Lease, so several replicas never write at
    /// once. Turn off only for a single replica outside a cluster.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = POD_NAMESPACE_ENV, default_value = "rustronaut-system")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "rustronaut-operator")]
    lease_name: String,
    /// Namespaces (labels `key=value[,key=value]`) whose pods may reach the admin ports of
    /// gateway and tunnel hub pods, for example a Prometheus scraping `/metrics`:
    /// `kubernetes.io/metadata.name=monitoring`. Default: none (the generated NetworkPolicies
    /// admit the node for probes, and the operator for the hubs' `/status`).
    #[arg(long, value_parser = parse_labels, default_value = "")]
    admin_from_namespaces: BTreeMap<String, String>,
    /// The cluster's pod and Service networks that Nodes' `spec.podCIDRs` and the
    /// ServiceCIDR objects do not name (a CNI with its own IP pools), comma-separated CIDRs.
    /// EndpointSlices the endpointslice controller did not write may not point into them.
    #[arg(long, value_parser = parse_networks, default_value = "")]
    cluster_networks: Networks,
    /// Probe mode: GET this URL (`http://host:port/path`), exit 0 on a 2xx answer, 1
    /// otherwise, and do nothing else. The chart's `helm test` pod runs it against the
    /// operator's `/readyz`.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
    /// Probe mode: how long to keep trying (once a second) before answering 1.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    probe_patience: u64,
    /// Address of the sidecar injection webhook (HTTPS, `POST /inject`), e.g.
    /// `0.0.0.0:9443`. Default: no webhook (the chart sets it with `sidecar.enabled`).
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// With the webhook: seconds it keeps serving after SIGTERM (readiness failing at once),
    /// while the apiserver's route to its Service drops this replica; the webhook is
    /// `failurePolicy: Fail`, so an admission sent to a closed port refuses a pod. The
    /// controllers stop at SIGTERM all the same.
    #[arg(long, env = "RUSTRONAUT_DRAIN_DELAY_SECONDS", default_value_t = 5)]
    drain_delay_seconds: u64,
    /// Image of the injected sidecar. Default: the gateway image.
    #[arg(long, env = "RUSTRONAUT_SIDECAR_IMAGE")]
    sidecar_image: Option<String>,
    /// `imagePullPolicy` of the injected sidecar. Default: the cluster's default for its tag.
    #[arg(long)]
    sidecar_pull_policy: Option<String>,
    /// Requests and limits of the injected sidecar, as JSON ResourceRequirements. Default:
    /// requests cpu 10m, memory 16Mi; limit memory 64Mi.
    #[arg(long, value_parser = parse_resources)]
    sidecar_resources: Option<ResourceRequirements>,
    /// Name of the MutatingWebhookConfiguration whose caBundle the leader keeps current
    /// (the RBAC of `src/rbac.rs` names it; change both together).
    #[arg(long, default_value = rbac::WEBHOOK_CONFIG)]
    webhook_config_name: String,
    /// Name of the Service in front of the webhook (the serving certificate names
    /// `<service>.<namespace>.svc`).
    #[arg(long, default_value = "rustronaut-webhook")]
    webhook_service: String,
    /// Name of the Secret (in the operator's namespace) holding the webhook's CA and
    /// serving certificate.
    #[arg(long, default_value = "rustronaut-webhook-tls")]
    webhook_secret: String,
    /// Log format: `text` for people, `json` (one object per line, with the current span:
    /// the Gateway being reconciled or the pass running) for log pipelines.
    #[arg(long, env = "RUSTRONAUT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Traces: one span per reconcile and per status pass (docs/observability.md).
    #[command(flatten)]
    otlp: rustronaut_otlp::Otlp,
}

/// Flushes the last batch of spans when the operator exits, on every path out of `main`.
struct FlushTraces(opentelemetry_sdk::trace::SdkTracerProvider);

impl Drop for FlushTraces {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("flushing traces: {e}");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustronaut_operator::pass::tune_allocator();
    let args = Args::parse();
    if let Some(url) = &args.probe {
        let patience = std::time::Duration::from_secs(args.probe_patience);
        let report = |e: &str| eprintln!("{e} (trying again)");
        return match rustronaut_operator::server::probe_until(url, patience, report).await {
            Ok(()) => {
                println!("{url}: ok");
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        };
    }
    use tracing_subscriber::prelude::*;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: `kubectl logs` of a pod shows escape codes otherwise.
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let logs = if args.log_format == "json" {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        logs.boxed()
    };
    // Each output has its own filter: RUST_LOG quiets the logs, never the exported spans.
    let (traces, flush) = match rustronaut_operator::telemetry::otlp(&args.otlp)
        .map_err(|e| anyhow::anyhow!("OTLP export: {e}"))?
    {
        Some((provider, tracer)) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::filter_fn(
                    rustronaut_operator::telemetry::exported,
                ));
            (Some(layer), Some(FlushTraces(provider)))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .init();
    let _flush = flush;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes client configuration: {e}"))?;
    let identity = args
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("rustronaut-operator-{}", std::process::id()));
    let ctx = Context::new(client.clone(), Some(identity.clone()));
    let mut registry = Registry::default();
    ctx.metrics.register(&mut registry);
    let metrics = ctx.metrics.clone();
    let gateway_image = args.gateway_image.clone();
    let controller = Runtime::new(
        ctx,
        Settings {
            image: args.gateway_image.clone(),
            // The Lease lives in the operator's own namespace (POD_NAMESPACE in a cluster).
            operator_namespace: args.lease_namespace.clone(),
            admin_from_namespaces: args.admin_from_namespaces.clone(),
            cluster_networks: args.cluster_networks.0.clone(),
        },
    );
    let ready = controller.ready_flag();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", args.metrics_listen))?;
    tracing::info!(addr = %args.metrics_listen, "serving /metrics /healthz /readyz");
    tokio::spawn(rustronaut_operator::server::serve(
        listener,
        Arc::new(registry),
        ready.clone(),
    ));

    // The webhook runs on every replica (the Service may pick any); only the leader writes
    // its certificates and caBundle (below).
    let webhook_certs = match args.webhook_listen {
        None => None,
        Some(addr) => {
            let certs = webhook::certs::CertConfig {
                namespace: args.lease_namespace.clone(),
                secret: args.webhook_secret.clone(),
                hosts: webhook::certs::CertConfig::service_hosts(
                    &args.webhook_service,
                    &args.lease_namespace,
                ),
                webhook_config: args.webhook_config_name.clone(),
                lifetimes: Default::default(),
            };
            let mut settings =
                webhook::inject::Settings::new(args.sidecar_image.clone().unwrap_or(gateway_image));
            settings.pull_policy = args.sidecar_pull_policy.clone();
            if let Some(r) = args.sidecar_resources.clone() {
                settings.resources = r;
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
            tracing::info!(%addr, "serving the sidecar injection webhook");
            let ready = webhook::start(
                client.clone(),
                listener,
                webhook::Config {
                    certs: certs.clone(),
                    settings,
                    metrics: metrics.clone(),
                },
            );
            Some((certs, ready))
        }
    };

    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Set at SIGTERM when a webhook serves: the process does not exit before it.
    let drained_at: Arc<std::sync::OnceLock<tokio::time::Instant>> = Arc::default();
    tokio::spawn({
        let ready = ready.clone();
        let drained_at = drained_at.clone();
        let drain = webhook_certs
            .is_some()
            .then(|| std::time::Duration::from_secs(args.drain_delay_seconds));
        async move {
            terminated().await;
            ready.store(false, Ordering::Relaxed);
            if let Some(d) = drain {
                let _ = drained_at.set(tokio::time::Instant::now() + d);
                tracing::info!(
                    drain_delay_ms = d.as_millis() as u64,
                    "shutting down: finishing in-flight reconciles; the webhook serves until the drain delay ends"
                );
            } else {
                tracing::info!("shutting down: finishing in-flight reconciles");
            }
            let _ = stop.send(true);
        }
    });
    // Every path out of the controllers (a standby stopped before it led, a leader
    // finishing, leadership lost) ends here, so the drain below holds on each.
    let outcome: anyhow::Result<()> = async {
        let stop_requested = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };

        let leadership = if args.leader_elect {
            let mut cfg = LeaseConfig::new(&args.lease_namespace, &identity);
            cfg.name = args.lease_name;
            // A standby is ready to take over; reporting it unready would stall rolling updates
            // (the new pod waits for a Lease the old pod holds until it is replaced). With the
            // webhook, not before its caches are filled: the webhook's Service sends admissions
            // to ready pods only, and an unfilled webhook refuses them.
            if let Some((_, webhook_ready)) = &webhook_certs {
                let filled = async {
                    while !webhook_ready.load(Ordering::Relaxed) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                };
                tokio::select! {
                    () = filled => {}
                    () = stop_requested() => return Ok(()),
                }
            }
            ready.store(true, Ordering::Relaxed);
            tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, "waiting for the Lease");
            tokio::select! {
                l = Elector::new(client.clone(), cfg).acquire() => Some(l),
                () = stop_requested() => return Ok(()),
            }
        } else {
            None
        };

        // Holding the Lease (or running without election): this replica runs the controllers.
        metrics.leader.set(1);
        let lost = leadership.as_ref().map(|l| l.lost());
        let shutdown = {
            let stop = stop_requested();
            async move {
                match lost {
                    Some(lost) => {
                        tokio::select! {
                            () = stop => {}
                            () = lost => {}
                        }
                    }
                    None => stop.await,
                }
            }
        };
        let leader_webhook = webhook_certs.map(|(certs, _)| {
            tokio::spawn(webhook::certs::run_leader(
                client.clone(),
                certs,
                std::future::pending(),
            ))
        });
        controller.run(shutdown).await;
        if let Some(task) = leader_webhook {
            task.abort();
        }
        if let Some(l) = leadership {
            if !l.is_leading() {
                // Exit non-zero: Kubernetes restarts the pod as a plain candidate, which is simpler
                // and safer than stopping and restarting controllers in one process.
                anyhow::bail!("leadership lost; exiting so this replica restarts as a candidate");
            }
            if let Err(e) = l.release().await {
                tracing::warn!(error = %e, "releasing the Lease failed; it expires on its own");
            }
        }
        Ok(())
    }
    .await;
    if let Some(until) = drained_at.get() {
        tokio::time::sleep_until(*until).await;
        tracing::info!("drain delay over; exiting");
    }
    outcome
}

/// SIGTERM (Kubernetes stopping the pod) or SIGINT (a person at a terminal).
async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `key=value[,key=value]` as labels; empty for "none".
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("{p:?} is not key=value")),
        })
        .collect()
}

/// `--sidecar-resources`: JSON ResourceRequirements.
fn parse_resources(s: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON ResourceRequirements: {e}"))
}

/// `--cluster-networks` (a newtype: clap reads a `Vec` as a repeated flag).
#[derive(Debug, Clone)]
struct Networks(Vec<rustronaut_contract::cidr::Cidr>);

fn parse_networks(s: &str) -> Result<Networks, String> {
    rustronaut_operator::cache::networks::parse(s).map(Networks)
}
