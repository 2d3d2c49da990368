//! `rustronaut-operator`: parses flags, wires the Gateway controller, the metrics/health
//! server and signal handling. The logic lives in the library.

use clap::Parser;
use prometheus_client::registry::Registry;
use rustronaut_operator::context::Context;
use rustronaut_operator::gateway::GatewayController;
use rustronaut_operator::gateway::objects::Settings;
use std::net::SocketAddr;
use std::sync::Arc;

/// Environment variable naming this operator instance (the pod name, via the Downward API).
const POD_NAME_ENV: &str = "POD_NAME";

/// The rustronaut operator: reconciles Gateways into their snapshot and workload.
#[derive(Debug, Parser)]
#[command(name = "rustronaut-operator", version)]
struct Args {
    /// Image of the gateway pods.
    #[arg(long, env = "RUSTRONAUT_GATEWAY_IMAGE", default_value_t = Settings::default_image())]
    gateway_image: String,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// This instance's name in Events (the pod name in a cluster).
    #[arg(long, env = POD_NAME_ENV)]
    instance: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes client configuration: {e}"))?;
    let ctx = Context::new(client, args.instance);
    let mut registry = Registry::default();
    ctx.metrics.register(&mut registry);
    let controller = GatewayController::new(
        ctx,
        Settings {
            image: args.gateway_image,
        },
    );
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", args.metrics_listen))?;
    tracing::info!(addr = %args.metrics_listen, "serving /metrics /healthz /readyz");
    tokio::spawn(rustronaut_operator::server::serve(
        listener,
        Arc::new(registry),
        controller.ready_flag(),
    ));

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutting down: finishing in-flight reconciles");
        let _ = stop.send(());
    });
    controller
        .run(async move {
            let _ = stopped.await;
        })
        .await;
    Ok(())
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
