//! Reading manifests from YAML files: the examples, a GitOps repository, `rustronaut policy
//! test <dir>`. Every document is kept as JSON with the file it came from, so errors can name
//! the file and the object.

use std::path::{Path, PathBuf};

/// Errors reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not valid YAML.
    #[error("{path} is not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// One document of a manifest file.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it came from.
    pub path: PathBuf,
    /// The document.
    pub value: serde_json::Value,
}

impl Manifest {
    /// `kind` of the object.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    /// `apiVersion` of the object.
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `metadata.namespace`, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

/// Reads every `.yaml`/`.yml`/`.json` file of `path` (a file, or a directory read recursively in
/// name order, which is the order `kubectl apply -f` uses). Empty documents are skipped.
pub fn load(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| ManifestError::Yaml {
                path: file.clone(),
                message: e.to_string(),
            })?;
        out.extend(
            docs.into_iter()
                .filter(|d| !d.is_null())
                .map(|value| Manifest {
                    path: file.clone(),
                    value,
                }),
        );
    }
    Ok(out)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        entries.sort();
        for e in entries {
            if e.is_dir() {
                collect(&e, files)?;
            } else if matches!(
                e.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(e);
            }
        }
        Ok(())
    } else {
        std::fs::metadata(path).map_err(err)?;
        files.push(path.to_path_buf());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_files_in_name_order_and_names_bad_yaml() {
        let dir = std::env::temp_dir().join(format!("rtn-manifests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.yaml"), "kind: B\n---\nkind: C\n---\n").unwrap();
        std::fs::write(
            dir.join("a.yml"),
            "kind: A\nmetadata: {name: x, namespace: ns1}\n",
        )
        .unwrap();
        std::fs::write(dir.join("sub/d.json"), r#"{"kind": "D"}"#).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let got = load(&dir).unwrap();
        let kinds: Vec<_> = got.iter().map(Manifest::kind).collect();
        assert_eq!(kinds, ["A", "B", "C", "D"]);
        assert_eq!(got[0].name(), "x");
        assert_eq!(got[0].namespace(), Some("ns1"));

        std::fs::write(dir.join("c.yaml"), "kind: [unclosed\n").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("c.yaml") && err.contains("not valid YAML"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
