//! Container images without a registry or a Docker daemon: each image is one layer holding the
//! binaries, exactly the shared libraries they link (read from `ldd`), the CA bundle and a
//! `nonroot` user (UID/GID 65532), written as an OCI image layout in a tar file that also carries
//! a `docker save` style `manifest.json`, so the same file loads with `ctr images import`,
//! `docker load` and `podman load`.
//!
//! Why not a Dockerfile here: this machine kind has no container engine and reaches no registry,
//! and the images must be built by the project's own files. The conventional multi-stage
//! `Dockerfile` at the repository root builds the same images elsewhere (Rust builder, distroless
//! `cc` runtime: glibc + libgcc + CA certificates, user 65532); `e2e/tests/images.rs` checks that
//! both name the same binaries, user and entrypoint as [`IMAGES`].
//!
//! The layer is deterministic: sorted paths, owner 0:0, modification time 0, so the same
//! binaries give the same digest.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unprivileged user every image runs as (the distroless `nonroot` convention).
pub const NONROOT_UID: u32 = 65532;
/// Where binaries go inside an image (on `PATH`).
pub const BIN_DIR: &str = "/usr/local/bin";
/// The CA bundle inside an image (Debian's path, which rustls-native-certs and OpenSSL read).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Default repository prefix of locally built images.
pub const DEFAULT_REPOSITORY: &str = "localhost/rustronaut";
/// Default tag of locally built images.
pub const DEFAULT_TAG: &str = "dev";
/// glibc's malloc tuned for `rustronaut-tunnel` (the gateway image runs hubs from it, the
/// connector image is it). Each tunnel connection has two 512 KiB smoltcp buffers
/// (`tunnel/src/link.rs`, `TCP_BUFFER`). glibc maps allocations that large on their own,
/// but the first one freed raises its mmap threshold above them for good, and from then on
/// they come from the heap arenas, which keep the memory after the connections close: a hub
/// and a connector idle again after four parallel streams held 21.6 and 17.8 MB (7 MB
/// before). A fixed threshold turns that adjustment off, so the buffers are mapped,
/// committed page by page as used, and returned on close (10-13 MB after the same load;
/// docs/benchmarks-tunnel.md).
/// The gateway itself allocates with mimalloc and is not affected.
pub const TUNNEL_MALLOC_ENV: &str = "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072";

/// What goes into one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    /// Image name under the repository prefix (`<prefix>/<name>:<tag>`).
    pub name: &'static str,
    /// Files copied into [`BIN_DIR`]: our binaries (from the Cargo target directory) or, for
    /// test images, absolute paths on this machine.
    pub binaries: &'static [&'static str],
    /// The entrypoint: the first binary.
    pub entrypoint: &'static str,
    /// `org.opencontainers.image.description`.
    pub description: &'static str,
    /// A product image (shipped, also described by the Dockerfile) or a test-only image.
    pub product: bool,
    /// Environment beyond `PATH` and `SSL_CERT_FILE`, as `NAME=value` (the Dockerfile's `ENV`).
    pub env: &'static [&'static str],
}

/// Every image the project builds. The gateway image carries `rustronaut-tunnel` too: the
/// operator's tunnel hub pods run it from the gateway image.
pub const IMAGES: &[ImageSpec] = &[
    ImageSpec {
        name: "operator",
        binaries: &["rustronaut-operator"],
        entrypoint: "rustronaut-operator",
        description: "Rustronaut operator: reconciles Tenants, Resources, Gateways and Policies",
        product: true,
        env: &[],
    },
    ImageSpec {
        name: "gateway",
        binaries: &["rustronaut-gateway", "rustronaut-tunnel"],
        entrypoint: "rustronaut-gateway",
        description: "Rustronaut gateway (Pingora) and WireGuard tunnel hub (boringtun, userspace)",
        product: true,
        env: &[TUNNEL_MALLOC_ENV],
    },
    // The web console (docs/console.md): acts as the signed-in person, no state of its own.
    ImageSpec {
        name: "console",
        binaries: &["rustronaut-console"],
        entrypoint: "rustronaut-console",
        description: "Rustronaut console: a web editor of the four kinds that acts as the signed-in person",
        product: true,
        env: &[],
    },
    // The remote-site connector alone, for sites that run containers (docs/tunnel.md).
    ImageSpec {
        name: "connector",
        binaries: &["rustronaut-tunnel"],
        entrypoint: "rustronaut-tunnel",
        description: "Rustronaut site connector: userspace WireGuard to the cluster's tunnel hubs, no root",
        product: true,
        env: &[TUNNEL_MALLOC_ENV],
    },
    // Test workloads: busybox (static, Debian's busybox-static) for upstream web servers and
    // connection probes in the real-node tests and the demo. Not shipped.
    ImageSpec {
        name: "testkit",
        binaries: &["/bin/busybox"],
        entrypoint: "busybox",
        description: "Rustronaut test workloads (busybox httpd, nc); not a product image",
        product: false,
        env: &[],
    },
];

/// The pod sandbox image of the real node: `pause` built by `e2e/scripts/tools.sh` from
/// `build/pause/linux/pause.c` of the `k8s.io/kubernetes` module (static, `gcc -Os -static`),
/// since no registry is reachable to pull `registry.k8s.io/pause`.
pub const PAUSE: ImageSpec = ImageSpec {
    name: "pause",
    binaries: &["pause"],
    entrypoint: "pause",
    description: "Pod sandbox (Kubernetes build/pause), built locally",
    product: false,
    env: &[],
};

/// Looks an image up by name.
pub fn spec(name: &str) -> Option<&'static ImageSpec> {
    IMAGES.iter().find(|s| s.name == name)
}

/// Errors while building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `ldd` failed or printed something we cannot read.
    #[error("ldd {path}: {reason}")]
    Ldd {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the files of an image come from, and how it is named and labelled.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory of our binaries (`target/<profile>`).
    pub bin_dir: PathBuf,
    /// Output directory for `<name>.tar`.
    pub out_dir: PathBuf,
    /// Repository prefix, e.g. [`DEFAULT_REPOSITORY`].
    pub repository: String,
    /// Tag, e.g. [`DEFAULT_TAG`].
    pub tag: String,
    /// `org.opencontainers.image.revision` (the git commit).
    pub revision: String,
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// `org.opencontainers.image.source`.
    pub source: String,
    /// Strip debug information from binaries (the dev profile keeps line tables).
    pub strip: bool,
}

/// The result of building one image.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image reference (`<repository>/<name>:<tag>`).
    pub reference: String,
    /// The tar file.
    pub path: PathBuf,
    /// Digest of the manifest (`sha256:...`).
    pub manifest_digest: String,
    /// Size of the (uncompressed) layer in bytes.
    pub layer_bytes: u64,
}

/// One file of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A directory with its mode and owner.
    Dir { mode: u32, uid: u32 },
    /// A file copied from the host.
    File { from: PathBuf, mode: u32 },
    /// A file with the given contents.
    Data { data: Vec<u8>, mode: u32 },
}

/// The shared libraries a dynamically linked binary needs, as `ldd` prints them: the path
/// the loader will look for (kept in the image) and the file on this machine. A static
/// binary gives an empty list.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| ImageError::Ldd {
            path: binary.to_path_buf(),
            reason: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(ImageError::Ldd {
            path: binary.to_path_buf(),
            reason: format!("{}: {}", out.status, err.trim()),
        });
    }
    parse_ldd(&text).map_err(|reason| ImageError::Ldd {
        path: binary.to_path_buf(),
        reason,
    })
}

/// Parses `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file and is skipped; a library
/// that is `not found` is an error (the image would not start).
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("missing library: {line}"));
        }
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

fn passwd() -> String {
    format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
         nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
    )
}

fn group() -> String {
    format!("root:x:0:\nnogroup:x:65534:\nnonroot:x:{NONROOT_UID}:\n")
}

/// Adds `path` and its parents as root-owned directories (unless already present).
fn add_dirs(entries: &mut BTreeMap<String, Entry>, path: &str) {
    let mut acc = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        entries.entry(acc.clone()).or_insert(Entry::Dir {
            mode: 0o755,
            uid: 0,
        });
    }
}

/// The files of an image, keyed by their path inside it (without the leading `/`).
fn layer_entries(
    spec: &ImageSpec,
    opts: &BuildOptions,
    scratch: &Path,
) -> Result<BTreeMap<String, Entry>, ImageError> {
    let mut entries = BTreeMap::new();
    for bin in spec.binaries {
        let host = if bin.starts_with('/') {
            PathBuf::from(bin)
        } else {
            opts.bin_dir.join(bin)
        };
        std::fs::metadata(&host).map_err(io_err("read", &host))?;
        let name = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let from = if opts.strip && !bin.starts_with('/') {
            strip_into(&host, &scratch.join(&name))?
        } else {
            host.clone()
        };
        add_dirs(&mut entries, BIN_DIR);
        entries.insert(
            format!("{}/{name}", &BIN_DIR[1..]),
            Entry::File { from, mode: 0o755 },
        );
        for lib in shared_libraries(&host)? {
            let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
            if let Some((dir, _)) = inside.rsplit_once('/') {
                add_dirs(&mut entries, dir);
            }
            // The loader opens the path ldd printed; ship the file it resolves to there.
            let real = std::fs::canonicalize(&lib).map_err(io_err("resolve", &lib))?;
            entries.insert(
                inside,
                Entry::File {
                    from: real,
                    mode: 0o755,
                },
            );
        }
    }
    add_dirs(&mut entries, "etc/ssl/certs");
    let ca = PathBuf::from(CA_BUNDLE);
    std::fs::metadata(&ca).map_err(io_err("read (install ca-certificates)", &ca))?;
    entries.insert(
        CA_BUNDLE[1..].to_string(),
        Entry::File {
            from: ca,
            mode: 0o644,
        },
    );
    let data = |s: String| Entry::Data {
        data: s.into_bytes(),
        mode: 0o644,
    };
    entries.insert("etc/passwd".into(), data(passwd()));
    entries.insert("etc/group".into(), data(group()));
    entries.insert(
        "etc/nsswitch.conf".into(),
        data("hosts: files dns\n".into()),
    );
    entries.insert(
        "tmp".into(),
        Entry::Dir {
            mode: 0o1777,
            uid: 0,
        },
    );
    add_dirs(&mut entries, "home");
    entries.insert(
        "home/nonroot".into(),
        Entry::Dir {
            mode: 0o700,
            uid: NONROOT_UID,
        },
    );
    Ok(entries)
}

/// Copies `from` to `to` without debug information (`strip --strip-debug`); falls back to the
/// unstripped file when `strip` is not installed.
fn strip_into(from: &Path, to: &Path) -> Result<PathBuf, ImageError> {
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    Ok(if ok {
        to.to_path_buf()
    } else {
        from.to_path_buf()
    })
}

fn header(size: u64, mode: u32, uid: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(uid.into());
    h.set_mtime(0);
    // The path is set by append_data, which also handles long paths.
    h
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes the layer tar to `file`; returns its digest and size.
fn write_layer(
    entries: &BTreeMap<String, Entry>,
    file: &std::fs::File,
) -> Result<(String, u64), std::io::Error> {
    let mut w = Hashing {
        inner: std::io::BufWriter::new(file),
        hash: Sha256::new(),
        bytes: 0,
    };
    {
        let mut tar = tar::Builder::new(&mut w);
        tar.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in entries {
            match entry {
                Entry::Dir { mode, uid } => {
                    let mut h = header(0, *mode, *uid, tar::EntryType::Directory);
                    tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { from, mode } => {
                    let f = std::fs::File::open(from)?;
                    let len = f.metadata()?.len();
                    let mut h = header(len, *mode, 0, tar::EntryType::Regular);
                    tar.append_data(&mut h, path, f)?;
                }
                Entry::Data { data, mode } => {
                    let mut h = header(data.len() as u64, *mode, 0, tar::EntryType::Regular);
                    tar.append_data(&mut h, path, data.as_slice())?;
                }
            }
        }
        tar.finish()?;
    }
    w.flush()?;
    Ok((
        format!("sha256:{}", hex::encode(w.hash.finalize())),
        w.bytes,
    ))
}

/// The image configuration (OCI image-spec `config`).
pub fn config_json(spec: &ImageSpec, opts: &BuildOptions, diff_id: &str) -> Value {
    let env: Vec<String> = [
        format!("PATH={BIN_DIR}:/usr/bin:/bin"),
        format!("SSL_CERT_FILE={CA_BUNDLE}"),
    ]
    .into_iter()
    .chain(spec.env.iter().map(|e| e.to_string()))
    .collect();
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": format!("{NONROOT_UID}:{NONROOT_UID}"),
            "Entrypoint": [format!("{BIN_DIR}/{}", spec.entrypoint)],
            "Env": env,
            "WorkingDir": "/",
            "Labels": labels(spec, opts),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "rustronaut-image (e2e/src/image.rs)"}],
    })
}

fn labels(spec: &ImageSpec, opts: &BuildOptions) -> Value {
    json!({
        "org.opencontainers.image.title": format!("rustronaut-{}", spec.name),
        "org.opencontainers.image.description": spec.description,
        "org.opencontainers.image.source": opts.source,
        "org.opencontainers.image.revision": opts.revision,
        "org.opencontainers.image.version": opts.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    })
}

/// Builds one image into `<out_dir>/<name>.tar`.
pub fn build(spec: &ImageSpec, opts: &BuildOptions) -> Result<Built, ImageError> {
    std::fs::create_dir_all(&opts.out_dir).map_err(io_err("create", &opts.out_dir))?;
    let scratch = opts.out_dir.join(format!(".{}.scratch", spec.name));
    std::fs::create_dir_all(&scratch).map_err(io_err("create", &scratch))?;
    let result = build_in(spec, opts, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn build_in(spec: &ImageSpec, opts: &BuildOptions, scratch: &Path) -> Result<Built, ImageError> {
    let entries = layer_entries(spec, opts, scratch)?;
    let layer_path = scratch.join("layer.tar");
    let mut layer = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&layer_path)
        .map_err(io_err("create", &layer_path))?;
    let (layer_digest, layer_bytes) =
        write_layer(&entries, &layer).map_err(io_err("write", &layer_path))?;
    layer
        .seek(std::io::SeekFrom::Start(0))
        .map_err(io_err("rewind", &layer_path))?;

    let config = serde_json::to_vec(&config_json(spec, opts, &layer_digest)).unwrap_or_default();
    let config_digest = digest_of(&config);
    let reference = format!("{}/{}:{}", opts.repository, spec.name, opts.tag);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_bytes}],
        "annotations": labels(spec, opts),
    }))
    .unwrap_or_default();
    let manifest_digest = digest_of(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": opts.tag,
            },
        }],
    }))
    .unwrap_or_default();
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [reference],
        "Layers": [blob(&layer_digest)],
    }]))
    .unwrap_or_default();

    let path = opts.out_dir.join(format!("{}.tar", spec.name));
    let tmp = opts.out_dir.join(format!(".{}.tar.tmp", spec.name));
    let out = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    let write_outer = || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
        tar.mode(tar::HeaderMode::Deterministic);
        let mut put = |name: &str, data: &[u8]| -> std::io::Result<()> {
            let mut h = header(data.len() as u64, 0o644, 0, tar::EntryType::Regular);
            tar.append_data(&mut h, name, data)
        };
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        put("index.json", &index)?;
        put("manifest.json", &docker_manifest)?;
        put(&blob(&config_digest), &config)?;
        put(&blob(&manifest_digest), &manifest)?;
        let mut h = header(layer_bytes, 0o644, 0, tar::EntryType::Regular);
        tar.append_data(&mut h, blob(&layer_digest), (&mut layer).take(layer_bytes))?;
        tar.into_inner()?.flush()
    };
    write_outer().map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    Ok(Built {
        reference,
        path,
        manifest_digest,
        layer_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_read_and_the_vdso_skipped() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn config_runs_as_nonroot_with_the_entrypoint_on_path() {
        let opts = BuildOptions {
            bin_dir: PathBuf::from("/nonexistent"),
            out_dir: PathBuf::from("/nonexistent"),
            repository: DEFAULT_REPOSITORY.into(),
            tag: DEFAULT_TAG.into(),
            revision: "abc".into(),
            version: "0.1.0".into(),
            source: "https://example.invalid/src".into(),
            strip: false,
        };
        let c = config_json(spec("gateway").unwrap(), &opts, "sha256:00");
        assert_eq!(c["config"]["User"], "65532:65532");
        assert_eq!(
            c["config"]["Entrypoint"][0],
            "/usr/local/bin/rustronaut-gateway"
        );
        assert_eq!(
            c["config"]["Labels"]["org.opencontainers.image.revision"],
            "abc"
        );
        assert!(
            c["config"]["Env"][0]
                .as_str()
                .unwrap()
                .starts_with("PATH=/usr/local/bin:")
        );
        // The images that run the tunnel carry its malloc setting; the others do not.
        for (name, tuned) in [("gateway", true), ("connector", true), ("operator", false)] {
            let c = config_json(spec(name).unwrap(), &opts, "sha256:00");
            let env: Vec<&str> = c["config"]["Env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                env.contains(&TUNNEL_MALLOC_ENV),
                tuned,
                "image {name}: {env:?}"
            );
        }
    }

    #[test]
    fn an_image_holds_its_binary_libraries_and_users_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        // /bin/true is dynamically linked on every glibc system: a stand-in for our binaries.
        let bins = dir.path().join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        std::fs::copy("/bin/true", bins.join("rustronaut-operator")).unwrap();
        let opts = BuildOptions {
            bin_dir: bins,
            out_dir: dir.path().join("out"),
            repository: DEFAULT_REPOSITORY.into(),
            tag: DEFAULT_TAG.into(),
            revision: "r".into(),
            version: "v".into(),
            source: "s".into(),
            strip: false,
        };
        let spec = spec("operator").unwrap();
        let a = build(spec, &opts).unwrap();
        let b = build(spec, &opts).unwrap();
        assert_eq!(
            a.manifest_digest, b.manifest_digest,
            "same input, same digest"
        );
        assert_eq!(a.reference, "localhost/rustronaut/operator:dev");

        // Read the outer archive back: find the layer via manifest.json and list it.
        let mut outer = tar::Archive::new(std::fs::File::open(&a.path).unwrap());
        let mut files = BTreeMap::new();
        for e in outer.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        for name in ["oci-layout", "index.json", "manifest.json"] {
            assert!(files.contains_key(name), "{name} missing");
        }
        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        let layer = &files[layer_name];
        assert_eq!(
            digest_of(layer),
            format!("sha256:{}", layer_name.rsplit('/').next().unwrap())
        );
        let mut inner = tar::Archive::new(layer.as_slice());
        let mut paths = BTreeMap::new();
        for e in inner.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            paths.insert(
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                (h.mode().unwrap(), h.uid().unwrap(), h.mtime().unwrap()),
            );
        }
        assert_eq!(
            paths["usr/local/bin/rustronaut-operator"],
            (0o755, 0, 0),
            "binary executable, root-owned, time 0"
        );
        assert!(
            paths.keys().any(|p| p.ends_with("libc.so.6")),
            "glibc shipped: {paths:?}"
        );
        assert!(paths.contains_key("etc/ssl/certs/ca-certificates.crt"));
        assert_eq!(paths["home/nonroot"].1, u64::from(NONROOT_UID));
    }
}
