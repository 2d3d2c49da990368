//! `rustronaut-tunnel`: the WireGuard hub, the site connector, and key tools, in one binary.
//! Flags are parsed and things are wired here; everything else lives in the library.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rustronaut_tunnel::allow::Host;
use rustronaut_tunnel::config::{self, ConnectorConfig, HubPeerConfig};
use rustronaut_tunnel::{client, connector, hub, keys};
use tokio_util::sync::CancellationToken;

/// Environment variable for the log filter (tracing-subscriber syntax).
const LOG_ENV: &str = "RUST_LOG";

#[derive(Parser, Debug)]
#[command(
    name = "rustronaut-tunnel",
    version,
    about = "WireGuard hub and site connector in userspace: no TUN device, no root"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Traces: a span per gateway stream on the hub, per forwarded stream on the connector
    /// (docs/tunnel.md, Tracing).
    #[command(flatten)]
    otlp: rustronaut_otlp::Otlp,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub (in the cluster): WireGuard endpoint, stream endpoint for gateways, admin.
    Hub {
        /// Configuration file (YAML or JSON, see docs/tunnel.md); re-read when it changes.
        #[arg(long, env = "RUSTRONAUT_TUNNEL_CONFIG")]
        config: PathBuf,
        /// Seconds the hub keeps serving after SIGTERM, `/readyz` failing, while the stream
        /// Service stops sending it gateways (0: stop at once).
        #[arg(long, env = "RUSTRONAUT_DRAIN_DELAY_SECONDS", default_value_t = 5)]
        drain_delay_seconds: u64,
    },
    /// Run the connector (at a remote site): tunnels to every hub replica, forwarder.
    Connect {
        /// Configuration file (YAML or JSON). Without it, the flags below describe the connector.
        #[arg(long, env = "RUSTRONAUT_CONNECTOR_CONFIG", conflicts_with_all = ["hub", "private_key_file"])]
        config: Option<PathBuf>,
        /// A hub replica as ENDPOINT=PUBLIC_KEY (e.g. hub-0.example:51820=xTIB...=); repeat for each.
        #[arg(long = "hub", value_name = "ENDPOINT=PUBLIC_KEY")]
        hub: Vec<String>,
        /// The site's private key file (mode 0600).
        #[arg(long)]
        private_key_file: Option<PathBuf>,
        /// The site's tunnel address.
        #[arg(long)]
        tunnel_address: Option<IpAddr>,
        /// The hubs' tunnel address.
        #[arg(long)]
        hub_tunnel_address: Option<IpAddr>,
        /// Forwarder port on the tunnel address.
        #[arg(long, default_value_t = config::DEFAULT_FORWARD_PORT)]
        forward_port: u16,
        /// Admin endpoint (/metrics, /healthz, /status).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Generate a private key into a new file (mode 0600) and print its public key.
    Keygen {
        /// The file to create; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a private key file.
    Pubkey {
        /// The private key file.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Forward a local TCP port through a hub's stream endpoint to a target at a site
    /// (what a gateway does; for debugging and benchmarks).
    Forward {
        /// The hub's stream endpoint.
        #[arg(long)]
        hub: SocketAddr,
        /// File with the gateway token.
        #[arg(long)]
        token_file: PathBuf,
        /// Site name.
        #[arg(long)]
        site: String,
        /// Local address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Target as HOST:PORT at the site.
        #[arg(long)]
        target: String,
    },
}

/// Logs to stderr and, with an OTLP endpoint, this crate's INFO spans to the collector (each
/// output with its own filter: RUST_LOG quiets the logs, never the exported spans). The
/// returned provider flushes the last batch when dropped.
fn init_logs(format: &str, otlp: &rustronaut_otlp::Otlp) -> anyhow::Result<Option<FlushTraces>> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` of a hub pod shows escape codes otherwise.
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let logs = if format == "json" {
        logs.json().boxed()
    } else {
        logs.boxed()
    };
    let provider = otlp.provider("rustronaut-tunnel").context("OTLP export")?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("rustronaut-tunnel"))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("rustronaut_tunnel") && *m.level() <= tracing::Level::INFO
            }))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .init();
    Ok(provider.map(FlushTraces))
}

/// Flushes the last batch of spans when the process exits.
struct FlushTraces(opentelemetry_sdk::trace::SdkTracerProvider);

impl Drop for FlushTraces {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("flushing traces: {e}");
        }
    }
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        t.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { out } => {
            let key = keys::PrivateKey::generate()?;
            keys::write_private_key(&out, &key)?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::Pubkey { key_file } => {
            println!("{}", keys::load_private_key(&key_file)?.public_key());
            Ok(())
        }
        Command::Hub {
            config,
            drain_delay_seconds,
        } => {
            let _flush = init_logs(&cli.log_format, &cli.otlp)?;
            let hub = hub::Hub::from_file(&config).await?;
            let drain = std::time::Duration::from_secs(drain_delay_seconds);
            hub.run(shutdown_on_signal(), drain).await;
            Ok(())
        }
        Command::Connect {
            config,
            hub,
            private_key_file,
            tunnel_address,
            hub_tunnel_address,
            forward_port,
            admin_listen,
        } => {
            let _flush = init_logs(&cli.log_format, &cli.otlp)?;
            let cfg: ConnectorConfig = match config {
                Some(path) => config::load_file(&path)?,
                None => {
                    let hubs = hub
                        .iter()
                        .map(|h| {
                            let (endpoint, key) = h.split_once('=').with_context(|| {
                                format!("--hub {h:?}: expected ENDPOINT=PUBLIC_KEY")
                            })?;
                            Ok(HubPeerConfig {
                                endpoint: endpoint.to_owned(),
                                public_key: key.to_owned(),
                                tunnel_address: None,
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let (Some(private_key_file), Some(tunnel_address), Some(hub_tunnel_address)) =
                        (private_key_file, tunnel_address, hub_tunnel_address)
                    else {
                        bail!(
                            "without --config, --hub, --private-key-file, --tunnel-address and --hub-tunnel-address are required"
                        );
                    };
                    let mut cfg: ConnectorConfig = serde_json::from_value(serde_json::json!({
                        "hubs": [],
                        "private_key_file": private_key_file,
                        "tunnel_address": tunnel_address,
                        "hub_tunnel_address": hub_tunnel_address,
                    }))?;
                    cfg.hubs = hubs;
                    cfg.forward_port = forward_port;
                    cfg.admin_listen = admin_listen;
                    cfg
                }
            };
            let connector = connector::Connector::new(cfg).await?;
            connector.run(shutdown_on_signal()).await?;
            Ok(())
        }
        Command::Forward {
            hub,
            token_file,
            site,
            listen,
            target,
        } => {
            let _flush = init_logs(&cli.log_format, &cli.otlp)?;
            let (host, port) = config::split_endpoint(&target)
                .with_context(|| format!("--target {target:?}: expected HOST:PORT"))?;
            let spec = client::ForwardSpec {
                hub,
                token: client::read_token(&token_file)?,
                site,
                host: Host::parse(host)?,
                port,
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("failed to listen on {listen}"))?;
            tracing::info!(%listen, ?spec, "forwarding");
            let shutdown = shutdown_on_signal();
            tokio::select! {
                _ = client::forward_tcp(listener, spec) => {}
                _ = shutdown.cancelled() => {}
            }
            Ok(())
        }
    }
}
