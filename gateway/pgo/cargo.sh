#!/usr/bin/env bash
# `cargo build --release` of the gateway with profile-guided optimisation: the shipped gateway
# (the release images, `Dockerfile`, `make images PROFILE=release`) and the benchmarks' gateway
# and bare Pingora are built through this script.
#
#   gateway/pgo/cargo.sh [cargo build arguments]     e.g. -p rustronaut-gateway --bins
#   prints nothing of its own; the binaries land in $CARGO_TARGET_DIR/pgo/release/
#
# Why: the gateway's CPU per request is many small costs along one hot path (issue 19,
# docs/benchmarks.md). LLVM optimising every crate of it (Pingora, tokio, rustls, ours) with
# the branch and call counts of a real run, inlining and laying out code by them, took
# 14.5 % off the gateway's CPU per request at its maximum (docs/benchmarks.md, "profile-guided
# optimisation", 2026-12-07). The counts are `gateway.profdata.gz` beside this script, written
# by `gateway/pgo/train.sh` from the benchmark's own traffic (HTTP/1.1 and HTTP/2 with a JWT
# Allow policy, a few requests without a token), sparse: a function the training never ran
# has no entry and keeps LLVM's usual heuristics, so configuration loading, reloads and error
# paths are compiled as they would be without a profile.
#
# The build goes to its own target directory ($CARGO_TARGET_DIR/pgo): RUSTFLAGS are part of
# Cargo's fingerprint, so sharing target/release with plain builds would rebuild every crate
# each time one alternates with the other. It passes no `--target`, because Cargo hashes an
# explicit target into every crate's symbol names: the profile's counts are keyed by those
# names, and so is the link order (`gateway/link/symbol-order.txt`, gateway/build.rs), which
# therefore applies to this build as to a plain one.
#
# The names depend on the features Cargo resolves for the dependencies, and those on the
# packages built together: the gateway alone resolves what the gateway and bare Pingora
# together do (train.sh builds the two at once), bare Pingora alone does not, so the
# benchmarks build it beside the gateway (bench_bare_pgo in gateway/bench/common.sh).
#
# A profile that no longer matches some function (its code changed since training) leaves
# that function without counts, silently: a stale profile costs speed, never correctness.
# Regenerate it with `gateway/pgo/train.sh` when the request path changes and when
# Cargo.lock or the toolchain changes (both rename functions), as for the link order. The
# indexed format is LLVM's: a newer rustc reads it, an older one than it was written with
# may not. PGO=0 in the environment builds without the profile (same directory layout).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
mkdir -p "$target/pgo"
flags=${RUSTFLAGS:-}
if [ "${PGO:-1}" != 0 ]; then
	# Named by its content: the path is in RUSTFLAGS, so a new profile rebuilds what it affects.
	sum=$(sha256sum "$repo/gateway/pgo/gateway.profdata.gz" | cut -c1-16)
	profile=$target/pgo/gateway-$sum.profdata
	if [ ! -s "$profile" ]; then
		gzip -dc "$repo/gateway/pgo/gateway.profdata.gz" >"$profile.tmp"
		mv "$profile.tmp" "$profile"
	fi
	flags="${flags:+$flags }-Cprofile-use=$profile"
fi
cd "$repo"
RUSTFLAGS=$flags CARGO_TARGET_DIR=$target/pgo exec cargo build --release "$@"
