//! docs/troubleshooting.md has a section for every condition reason the CRDs define, so a
//! new reason cannot ship without saying what it means and what to do.

#[test]
fn every_condition_reason_has_a_troubleshooting_section() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = std::fs::read_to_string(root.join("crds/src/conditions.rs")).unwrap();
    let reasons = source
        .split("pub mod reasons {")
        .nth(1)
        .and_then(|s| s.split("\n}\n").next())
        .expect("the reasons module");
    let values: Vec<&str> = reasons
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(values.len() > 20, "found {values:?}");
    let page = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
    let missing: Vec<&&str> = values
        .iter()
        .filter(|r| !page.contains(&format!("\n### {r}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "no section in docs/troubleshooting.md for {missing:?}"
    );
}

/// Every relative link in the project's Markdown (README, ARCHITECTURE, docs/, the crates'
/// and the chart's READMEs) points at a file or directory that exists.
#[test]
fn relative_links_in_the_docs_resolve() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let mut pages: Vec<std::path::PathBuf> = ["README.md", "ARCHITECTURE.md"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    let mut dirs = vec![root.join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                pages.push(p);
            }
        }
    }
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let readme = e.path().join("README.md");
        if e.path().is_dir() && readme.is_file() {
            pages.push(readme);
        }
    }
    pages.push(root.join("charts/rustronaut/README.md"));
    let mut broken = Vec::new();
    for page in &pages {
        let text = without_code(&std::fs::read_to_string(page).unwrap());
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("").trim();
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.contains(' ')
            {
                continue;
            }
            let dir = page.parent().unwrap();
            if !dir.join(target).exists() {
                broken.push(format!(
                    "{} -> {target}",
                    page.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `text` without fenced code blocks and inline code spans (regular expressions and shell
/// lines there are not links).
fn without_code(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut inline = false;
        for c in line.chars() {
            if c == '`' {
                inline = !inline;
            } else if !inline {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Every page under docs/ is in the site's table of contents (docs/SUMMARY.md, `make docs`).
#[test]
fn every_docs_page_is_in_the_site_summary() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let summary = std::fs::read_to_string(docs.join("SUMMARY.md")).unwrap();
    let mut missing = Vec::new();
    let mut dirs = vec![docs.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                let rel = p
                    .strip_prefix(&docs)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel != "SUMMARY.md" && !summary.contains(&format!("]({rel})")) {
                    missing.push(rel);
                }
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/SUMMARY.md: {missing:?}");
}

/// `make docs` builds the site (mdBook, installed by e2e/scripts/docs.sh) with a page for
/// every entry of the table of contents.
#[test]
fn the_documentation_site_builds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("bash")
        .arg(root.join("e2e/scripts/docs.sh"))
        .arg("-d")
        .arg(out.path())
        .status()
        .expect("bash");
    assert!(status.success(), "e2e/scripts/docs.sh failed");
    for page in [
        "index.html",
        "concepts.html",
        "troubleshooting.html",
        "reference/crds.html",
    ] {
        assert!(out.path().join(page).is_file(), "{page} in the site");
    }
}
