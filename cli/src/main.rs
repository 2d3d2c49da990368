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
    }
}
