//! The container images: what `make images` builds offline (e2e/src/image.rs) is what the
//! Dockerfile describes (same binaries, user, entrypoint), and each image is self-sufficient:
//! its layer, unpacked alone, runs its entrypoint as the nonroot user with nothing from this
//! machine (chroot into the unpacked layer).

use rustronaut_e2e::image::{self, IMAGES, NONROOT_UID};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// One Dockerfile stage: COPY'd binary names, USER, ENTRYPOINT, ENV (`NAME=value`).
type Stage = (Vec<String>, String, String, Vec<String>);

/// The Dockerfile's stages by name.
fn dockerfile_stages() -> BTreeMap<String, Stage> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
        .expect("the Dockerfile at the repository root");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("FROM") => {
                current = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("AS"))
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string());
                if let Some(c) = &current {
                    stages.insert(
                        c.clone(),
                        (Vec::new(), String::new(), String::new(), Vec::new()),
                    );
                }
            }
            Some("COPY") if line.contains("--from=build") => {
                let s = stages.get_mut(current.as_ref().unwrap()).unwrap();
                // COPY --from=build /out/a /out/b /usr/local/bin/
                let args: Vec<&str> = words[2..].to_vec();
                assert_eq!(
                    args.last(),
                    Some(&"/usr/local/bin/"),
                    "binaries go to {}",
                    image::BIN_DIR
                );
                for a in &args[..args.len() - 1] {
                    s.0.push(a.rsplit('/').next().unwrap().to_string());
                }
            }
            Some("ENV") => {
                // ENV NAME=value (one per line, no quoting: all this Dockerfile uses)
                assert_eq!(words.len(), 2, "one NAME=value per ENV line: {line}");
                stages
                    .get_mut(current.as_ref().unwrap())
                    .unwrap()
                    .3
                    .push(words[1].to_string());
            }
            Some("USER") => {
                stages.get_mut(current.as_ref().unwrap()).unwrap().1 = words[1].to_string();
            }
            Some("ENTRYPOINT") => {
                let v: Value = serde_json::from_str(line.trim_start_matches("ENTRYPOINT").trim())
                    .expect("ENTRYPOINT in exec (JSON) form");
                stages.get_mut(current.as_ref().unwrap()).unwrap().2 =
                    v[0].as_str().unwrap().to_string();
            }
            _ => {}
        }
    }
    stages
}

#[test]
fn the_dockerfile_ships_what_the_offline_build_ships() {
    let stages = dockerfile_stages();
    for spec in IMAGES.iter().filter(|s| s.product) {
        let (bins, user, entrypoint, env) = stages
            .get(spec.name)
            .unwrap_or_else(|| panic!("the Dockerfile has no stage `{}`", spec.name));
        let mut want: Vec<String> = spec.binaries.iter().map(|s| s.to_string()).collect();
        let mut got = bins.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "binaries of image {}", spec.name);
        assert_eq!(user, &format!("{NONROOT_UID}:{NONROOT_UID}"));
        assert_eq!(
            entrypoint,
            &format!("{}/{}", image::BIN_DIR, spec.entrypoint)
        );
        assert_eq!(env, &spec.env, "ENV of image {}", spec.name);
    }
    // Every stage that copies our binaries is an image the offline build knows.
    for (name, (bins, ..)) in &stages {
        if !bins.is_empty() {
            assert!(
                image::spec(name).is_some_and(|s| s.product),
                "Dockerfile stage {name} has no offline counterpart"
            );
        }
    }
}

/// Unpacks the layer of an image tar into `dir`; returns the image config.
/// The shipped gateway is the profile-guided build (gateway/pgo/cargo.sh): the Dockerfile and
/// `make images PROFILE=release` both build it through that script and take the binary from
/// its target directory, and the committed profile is one LLVM can read (a truncated or
/// foreign file would fail every release build, which CI does not run).
#[test]
fn release_builds_take_the_gateway_from_the_profile_guided_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    for (file, text) in [
        ("Dockerfile", read("Dockerfile")),
        ("e2e/scripts/images.sh", read("e2e/scripts/images.sh")),
    ] {
        // A command line that runs the script, not a comment that names it.
        let runs_it = text.lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix("&& ")
                .unwrap_or(l)
                .starts_with("gateway/pgo/cargo.sh ")
        });
        assert!(
            runs_it && text.contains("pgo/release/rustronaut-gateway"),
            "{file} does not build the gateway through gateway/pgo/cargo.sh"
        );
    }
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("gateway/pgo/gateway.profdata.gz"))
        .output()
        .expect("gzip");
    assert!(
        out.status.success(),
        "gateway/pgo/gateway.profdata.gz is not gzip"
    );
    // llvm/ProfileData/InstrProf.h: IndexedInstrProf::Magic, little-endian.
    assert_eq!(
        out.stdout.get(..8),
        Some(&0x8169_666f_7270_6cff_u64.to_le_bytes()[..]),
        "gateway/pgo/gateway.profdata.gz does not hold an indexed LLVM profile"
    );
}

fn unpack(tar_path: &Path, dir: &Path) -> Value {
    let mut files = BTreeMap::new();
    let mut outer = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config: Value =
        serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
    let layer = &files[manifest[0]["Layers"][0].as_str().unwrap()];
    let mut inner = tar::Archive::new(layer.as_slice());
    inner.set_preserve_permissions(true);
    inner.unpack(dir).unwrap();
    config
}

#[test]
fn every_image_runs_its_entrypoint_as_nonroot_from_its_own_files_only() {
    // SAFETY-free check of the effective user: chroot needs root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        root,
        "this test unpacks images and chroots into them: run it as root (CI does)"
    );
    let out = rustronaut_e2e::build_images().expect("building the images");
    for spec in IMAGES {
        let tar_path = out.join(format!("{}.tar", spec.name));
        let size = std::fs::metadata(&tar_path).unwrap().len();
        eprintln!("image {}: {:.1} MiB", spec.name, size as f64 / 1048576.0);
        let dir = tempfile::tempdir().unwrap();
        let config = unpack(&tar_path, dir.path());
        assert_eq!(config["config"]["User"], "65532:65532");
        let entrypoint = config["config"]["Entrypoint"][0].as_str().unwrap();
        // busybox answers --help; our binaries --version. Both exit 0 only if the loader
        // found every library inside the image.
        let arg = if spec.product { "--version" } else { "--help" };
        let run = Command::new("/usr/sbin/chroot")
            .arg(format!("--userspec={NONROOT_UID}:{NONROOT_UID}"))
            .arg(dir.path())
            .arg(entrypoint)
            .arg(arg)
            .env_clear()
            .env("PATH", image::BIN_DIR)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{} {arg} inside image {} failed: {}{}",
            entrypoint,
            spec.name,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        // Nothing else: no shell in product images.
        if spec.product {
            assert!(
                !dir.path().join("bin/sh").exists(),
                "no shell in {}",
                spec.name
            );
            for bin in spec.binaries {
                assert!(dir.path().join("usr/local/bin").join(bin).is_file());
            }
        }
    }
}
