//! `rustronaut-console`: parses flags, builds the app, serves it. See the crate docs.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use rustronaut_console::impersonate::Impersonator;
use rustronaut_console::metrics::Metrics;
use rustronaut_console::oidc::{OidcClient, OidcSettings};
use rustronaut_console::seal::Sealer;
use rustronaut_console::web::{App, router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The console's flags; every one can also come from the environment.
#[derive(Debug, Parser)]
#[command(name = "rustronaut-console", version, about)]
struct Args {
    /// Address of the web UI and probes.
    #[arg(long, env = "CONSOLE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of the Prometheus metrics.
    #[arg(long, env = "CONSOLE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// The URL people reach the console at (https; the OIDC redirect URI is
    /// `<public-url>/oidc/callback`).
    #[arg(long, env = "CONSOLE_PUBLIC_URL")]
    public_url: String,
    /// OIDC issuer URL.
    #[arg(long, env = "CONSOLE_OIDC_ISSUER")]
    oidc_issuer: String,
    /// OIDC client id.
    #[arg(
        long,
        env = "CONSOLE_OIDC_CLIENT_ID",
        default_value = "rustronaut-console"
    )]
    oidc_client_id: String,
    /// OIDC client secret.
    #[arg(long, env = "CONSOLE_OIDC_CLIENT_SECRET", hide_env_values = true)]
    oidc_client_secret: String,
    /// Extra CA certificates (PEM) trusted for the issuer.
    #[arg(long, env = "CONSOLE_OIDC_CA_FILE")]
    oidc_ca_file: Option<String>,
    /// Scopes requested besides `openid`.
    #[arg(
        long,
        env = "CONSOLE_OIDC_SCOPES",
        value_delimiter = ',',
        default_value = "email,profile,groups"
    )]
    oidc_scopes: Vec<String>,
    /// Claim naming the Kubernetes user.
    #[arg(long, env = "CONSOLE_USERNAME_CLAIM", default_value = "email")]
    username_claim: String,
    /// Prefix of the Kubernetes user name (match the API server's --oidc-username-prefix).
    #[arg(long, env = "CONSOLE_USERNAME_PREFIX", default_value = "")]
    username_prefix: String,
    /// Claim listing the person's groups.
    #[arg(long, env = "CONSOLE_GROUPS_CLAIM", default_value = "groups")]
    groups_claim: String,
    /// Prefix of every Kubernetes group.
    #[arg(long, env = "CONSOLE_GROUPS_PREFIX", default_value = "")]
    groups_prefix: String,
    /// Cookie keys: base64 of 32 random bytes each, comma-separated; the first seals.
    #[arg(
        long,
        env = "CONSOLE_COOKIE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    cookie_keys: Vec<String>,
    /// How long a session lasts, in seconds.
    #[arg(long, env = "CONSOLE_SESSION_SECONDS", default_value_t = 8 * 3600)]
    session_seconds: u64,
    /// Seconds the console keeps serving after SIGTERM, `/readyz` failing, while the
    /// Service and any load balancer take the pod out (a second SIGTERM ends it early);
    /// then it stops accepting and finishes the requests in flight.
    #[arg(long, env = "CONSOLE_DRAIN_DELAY_SECONDS", default_value_t = 5)]
    drain_delay_seconds: u64,
    /// Kubeconfig of the console's own identity (default: in-cluster, then $KUBECONFIG).
    #[arg(long, env = "CONSOLE_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let public = args.public_url.trim_end_matches('/').to_string();
    let origin = http::Uri::try_from(public.as_str())
        .ok()
        .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
        .context("--public-url must be an absolute URL")?;
    let kube_config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let settings = OidcSettings {
        issuer: args.oidc_issuer,
        client_id: args.oidc_client_id,
        client_secret: args.oidc_client_secret,
        redirect_uri: format!("{public}/oidc/callback"),
        scopes: args.oidc_scopes,
        username_claim: args.username_claim,
        username_prefix: args.username_prefix,
        groups_claim: args.groups_claim,
        groups_prefix: args.groups_prefix,
    };
    let app = Arc::new(App {
        sealer: Sealer::new(&args.cookie_keys)?,
        oidc: OidcClient::new(settings, args.oidc_ca_file.as_deref())?,
        kube: Impersonator::new(kube_config),
        origin,
        session_seconds: args.session_seconds,
        metrics: Metrics::default(),
        draining: Default::default(),
    });
    let metrics_app = app.clone();
    let metrics = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let app = metrics_app.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    app.metrics.render(),
                )
            }
        }),
    );
    let web = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mon = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    tracing::info!(listen = %web.local_addr()?, metrics = %mon.local_addr()?, "console serving");
    // SIGTERM: readiness fails, the port still accepts for the drain delay (the kubelet's
    // signal comes while the endpoints and kube-proxy are still taking the pod out; a port
    // closed now would refuse what they send meanwhile), then axum's graceful shutdown.
    // SIGINT stops at once.
    let drain = Duration::from_secs(args.drain_delay_seconds);
    let draining = app.clone();
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => {}
        }
        draining
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(drain_delay_s = drain.as_secs(), "SIGTERM: draining");
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: no new connections, finishing the requests in flight");
    };
    tokio::select! {
        r = axum::serve(web, router(app)).with_graceful_shutdown(shutdown) => r?,
        r = axum::serve(mon, metrics) => r?,
    }
    Ok(())
}
