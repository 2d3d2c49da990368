//! `rustronaut-image`: builds the project's container images from binaries already compiled,
//! with no registry and no container engine (see `e2e/src/image.rs`), and optionally imports
//! them into a containerd.
//!
//! ```text
//! rustronaut-image build [--bin-dir target/debug] [--out DIR] [--repository R] [--tag T] [NAME...]
//!     writes DIR/<name>.tar for each image (all by default) and prints one line per image:
//!     <reference> <path> <manifest digest> <layer MiB>
//! ```

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rustronaut_e2e::image::{self, BuildOptions};
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(
    version,
    about = "Build Rustronaut's container images without a registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build images into OCI/docker-archive tar files.
    Build {
        /// Directory of the compiled binaries. Default: the directory of this program.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Output directory. Default: <bin-dir>/images.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Repository prefix of the image references.
        #[arg(long, default_value = image::DEFAULT_REPOSITORY)]
        repository: String,
        /// Tag of the image references.
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
        /// Keep debug information in the binaries (it is stripped by default).
        #[arg(long)]
        no_strip: bool,
        /// Images to build (default: all).
        names: Vec<String>,
    },
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Build {
            bin_dir,
            out,
            repository,
            tag,
            no_strip,
            names,
        } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .context("this program has no directory")?
                    .to_path_buf(),
            };
            let out_dir = out.unwrap_or_else(|| bin_dir.join("images"));
            let mut revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty())
            {
                revision.push_str("-dirty");
            }
            let opts = BuildOptions {
                bin_dir,
                out_dir,
                repository,
                tag,
                revision,
                version: env!("CARGO_PKG_VERSION").to_string(),
                source: "https://github.com/rustronaut/rustronaut".to_string(),
                strip: !no_strip,
            };
            let specs: Vec<_> = if names.is_empty() {
                image::IMAGES.iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| image::spec(n).with_context(|| format!("no image named {n}")))
                    .collect::<Result<_>>()?
            };
            for spec in specs {
                let built = image::build(spec, &opts)
                    .with_context(|| format!("building image {}", spec.name))?;
                println!(
                    "{} {} {} {:.1}",
                    built.reference,
                    built.path.display(),
                    built.manifest_digest,
                    built.layer_bytes as f64 / (1024.0 * 1024.0)
                );
            }
            Ok(())
        }
    }
}
