//! `rustronaut-crdgen write|check|print`: writes the files generated from the API types
//! (CRD YAML for crds/ and the chart, docs/reference/crds.md), checks them for drift, or prints
//! the CRDs as one YAML stream (for `kubectl apply -f -`).

use anyhow::{Context, Result, bail};
use rustronaut_crds::generate;

fn main() -> Result<()> {
    let root = generate::repo_root();
    match std::env::args().nth(1).as_deref() {
        Some("write") => {
            for (path, contents) in generate::files()? {
                let full = root.join(&path);
                if let Some(dir) = full.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                std::fs::write(&full, contents)
                    .with_context(|| format!("writing {}", full.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Some("check") => {
            let drifted = generate::drifted(&root)?;
            if drifted.is_empty() {
                println!("generated files are current");
                Ok(())
            } else {
                for p in &drifted {
                    eprintln!("out of date: {}", p.display());
                }
                bail!(
                    "{} generated file(s) differ from the types: run `make crds`",
                    drifted.len()
                )
            }
        }
        Some("print") => {
            for crd in generate::crds() {
                println!("---\n{}", generate::crd_yaml(&crd)?);
            }
            Ok(())
        }
        _ => bail!("usage: rustronaut-crdgen write|check|print"),
    }
}
