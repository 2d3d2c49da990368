#!/usr/bin/env bash
# `make images`: the project's container images, with no registry and no container engine.
# Builds the binaries (the dev profile by default, the same target directory `make test` and
# `make demo` use; PROFILE=release for release binaries, the gateway's profile-guided as
# shipped: gateway/pgo/cargo.sh), then writes one OCI/docker-archive
# tar per image into <target>/<profile>/images/ (see e2e/src/image.rs) and prints, per image:
#   <reference> <tar file> <manifest digest> <layer MiB>
# Load them with `ctr -n k8s.io images import FILE`, `docker load -i FILE` or `podman load -i FILE`.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
profile=${PROFILE:-dev}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
# The dev build is exactly `make test`'s (`cargo build --workspace --bins`): building a subset of
# the workspace would resolve other features and compile the dependencies a second time.
cargo build -q --workspace --bins
bins=$target/$dir
if [ "$profile" = release ]; then
	# The shipped gateway is built with its profile (gateway/pgo/cargo.sh, as the Dockerfile
	# does), in a target directory of its own; the image tool reads one directory, so the
	# release binaries are linked into one for it.
	cargo build -q --release -p rustronaut-operator -p rustronaut-tunnel -p rustronaut-console --bins
	gateway/pgo/cargo.sh -q -p rustronaut-gateway --bins
	bins=$target/release/image-bins
	mkdir -p "$bins"
	for b in rustronaut-operator rustronaut-tunnel rustronaut-console; do
		ln -f "$target/release/$b" "$bins/$b"
	done
	ln -f "$target/pgo/release/rustronaut-gateway" "$bins/rustronaut-gateway"
elif [ "$profile" != dev ]; then
	cargo build -q --profile "$profile" -p rustronaut-operator -p rustronaut-gateway -p rustronaut-tunnel \
		-p rustronaut-console --bins
fi
"$target/debug/rustronaut-image" build --bin-dir "$bins" --out "$target/$dir/images" \
	--repository "${IMAGE_REPOSITORY:-localhost/rustronaut}" --tag "${IMAGE_TAG:-dev}"
