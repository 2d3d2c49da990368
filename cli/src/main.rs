//! `rustronaut`: the command line for people and CI pipelines.
//!
//! ```text
//! rustronaut policy test <path>...            run every Policy's embedded tests (exit 1 on failure)
//! rustronaut policy explain <path>... --resource NS/NAME [--identity FILE] [--method M] [--path P]
//!                                             the decision, the rule that made it, the closest Allow
//! rustronaut apikey hash --client-id ID       read a key on stdin, print the Secret entry to store
//! ```
//!
//! Paths are files or directories of YAML manifests (a GitOps repository); kinds other than the
//! four rustronaut.io kinds are ignored. Nothing talks to a cluster.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rustronaut_cli::{explain, hash_api_key, load_world, test_policies};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rustronaut",
    version,
    about = "Rustronaut policy tooling for GitOps pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Policies: test and explain.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// API keys.
    Apikey {
        #[command(subcommand)]
        command: ApiKeyCmd,
    },
    /// Remote sites of a Gateway's tunnel.
    Site {
        #[command(subcommand)]
        command: SiteCmd,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Print the connector configuration of a site (YAML for `rustronaut-tunnel connect
    /// --config`), from the Gateway's status, its hub configuration and the hub replicas'
    /// Services, read with your kubeconfig.
    Config {
        /// The Gateway.
        gateway: String,
        /// The site, as named in the Gateway's spec.tunnel.sites.
        site: String,
        /// Namespace of the Gateway (default: the kubeconfig context's).
        #[arg(long, short)]
        namespace: Option<String>,
        /// Path of the site's private key file at the site, written into the configuration.
        #[arg(long, default_value = "/etc/rustronaut/site.key")]
        private_key_file: PathBuf,
        /// For a site without spec.publicKey: also copy the key the operator generated (Secret
        /// <gateway>-site-<site>) into this local file (created with mode 0600, never
        /// overwritten), to carry to the site.
        #[arg(long)]
        write_private_key: Option<PathBuf>,
        /// Reach the hub replicas at this node address, on their Services' node ports, instead
        /// of at their load balancers' addresses (NodePort Services, or no load balancer).
        #[arg(long)]
        endpoint_host: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Run the tests embedded in every Policy against the whole effective policy set.
    Test {
        /// Files or directories of manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Explain the decision for one request.
    Explain {
        /// Files or directories of manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The Resource, as NAMESPACE/NAME.
        #[arg(long)]
        resource: String,
        /// YAML or JSON file with the caller, shaped like a Policy test's `identity`
        /// (`user: {idp, email, groups, claims}`, `clientCertificate`, `apiKey`, `site`).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// HTTP method.
        #[arg(long)]
        method: Option<String>,
        /// Request path (normalised as the gateway does).
        #[arg(long)]
        path: Option<String>,
        /// Port (TCP/UDP Resources).
        #[arg(long)]
        port: Option<u16>,
        /// Client address.
        #[arg(long)]
        source_ip: Option<String>,
        /// Evaluation time, RFC 3339 (default: 2025-01-01T12:00:00Z, a Wednesday).
        #[arg(long)]
        time: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ApiKeyCmd {
    /// Read an API key from standard input and print `CLIENT_ID: HASH` for the provider's
    /// Secret (stringData). The key itself is never stored.
    Hash {
        /// The client ID the key belongs to.
        #[arg(long)]
        client_id: String,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Policy {
            command: PolicyCmd::Test { paths },
        } => {
            let world = load_world(&paths)?;
            let report = test_policies(&world);
            print!("{}", report.text);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Policy {
            command:
                PolicyCmd::Explain {
                    paths,
                    resource,
                    identity,
                    method,
                    path,
                    port,
                    source_ip,
                    time,
                    json,
                },
        } => {
            let world = load_world(&paths)?;
            let identity = match identity {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?,
                ),
                None => None,
            };
            let out = explain(
                &world,
                &resource,
                identity.as_deref(),
                method.as_deref(),
                path,
                port,
                source_ip,
                time,
                json,
            )?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apikey {
            command: ApiKeyCmd::Hash { client_id },
        } => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("reading the key from standard input")?;
            let key = key.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                bail!("no key on standard input");
            }
            println!("{client_id}: {}", hash_api_key(key)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Site {
            command:
                SiteCmd::Config {
                    gateway,
                    site,
                    namespace,
                    private_key_file,
                    write_private_key,
                    endpoint_host,
                },
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let yaml = runtime.block_on(site_config(
                &gateway,
                &site,
                namespace,
                &private_key_file,
                write_private_key.as_deref(),
                endpoint_host.as_deref(),
            ))?;
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `rustronaut site config`: reads the Gateway, its hub configuration, the replicas' Services
/// (and with `write_key`, the site's generated key) and prints the connector configuration.
async fn site_config(
    gateway: &str,
    site: &str,
    namespace: Option<String>,
    private_key_file: &std::path::Path,
    write_key: Option<&std::path::Path>,
    endpoint_host: Option<&str>,
) -> Result<String> {
    use k8s_openapi::api::core::v1::{Secret, Service};
    use kube::Api;
    use rustronaut_crds::gateway::tunnel_names as names;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (KUBECONFIG, ~/.kube/config)")?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let gateways: Api<rustronaut_crds::Gateway> = Api::namespaced(client.clone(), &ns);
    let gw = gateways
        .get(gateway)
        .await
        .with_context(|| format!("reading Gateway {ns}/{gateway}"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let hub_secret = secrets
        .get_opt(&names::config(gateway))
        .await
        .with_context(|| format!("reading Secret {ns}/{}", names::config(gateway)))?
        .with_context(|| {
            format!(
                "Secret {ns}/{} does not exist yet: the operator writes it once the Gateway has a tunnel",
                names::config(gateway)
            )
        })?;
    let text = hub_secret
        .data
        .as_ref()
        .and_then(|d| d.get(names::HUB_CONFIG))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .with_context(|| {
            format!(
                "Secret {ns}/{} has no {}",
                names::config(gateway),
                names::HUB_CONFIG
            )
        })?;
    let hub: rustronaut_tunnel::config::HubConfig =
        serde_saphyr::from_str(&text).context("reading the hub configuration")?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let replicas = gw.spec.tunnel.as_ref().map_or(0, |t| t.replicas);
    let mut replica_services = Vec::new();
    for i in 0..replicas {
        let name = names::replica(gateway, i);
        replica_services.push(
            services
                .get_opt(&name)
                .await
                .with_context(|| format!("reading Service {ns}/{name}"))?,
        );
    }
    let cfg = rustronaut_cli::site::connector_config(
        &gw,
        site,
        &hub,
        &replica_services,
        endpoint_host,
        private_key_file,
    )?;
    if let Some(out) = write_key {
        let name = names::site(gateway, site);
        let secret = secrets
            .get_opt(&name)
            .await
            .with_context(|| format!("reading Secret {ns}/{name}"))?
            .with_context(|| {
                format!("Secret {ns}/{name} does not exist: only a site without spec.publicKey gets a generated key")
            })?;
        let key = secret
            .data
            .as_ref()
            .and_then(|d| d.get(names::PRIVATE_KEY))
            .with_context(|| format!("Secret {ns}/{name} has no {}", names::PRIVATE_KEY))?;
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .with_context(|| format!("creating {} (never overwritten)", out.display()))?;
        f.write_all(&key.0)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    serde_saphyr::to_string(&cfg).context("writing the configuration as YAML")
}
