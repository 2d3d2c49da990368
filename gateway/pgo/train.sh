#!/usr/bin/env bash
# Writes gateway/pgo/gateway.profdata.gz, the profile gateway/pgo/cargo.sh builds with
# (why, and when to run this: the top of that script).
#
#   h2load ─▶ { instrumented gateway | instrumented bare Pingora } ─▶ nginx /small
#
# 1. Builds the gateway and bare Pingora with LLVM's instrumentation (-Cprofile-generate),
#    into $CARGO_TARGET_DIR/pgo-generate, in the same layout as cargo.sh's build (no
#    `--target`: the counts are keyed by symbol names, which an explicit target changes).
# 2. Runs the benchmark's traffic through each, one worker as in `make bench-gateway`:
#    HTTP/1.1 with the JWT Allow policy (60,000 requests, 50 connections), HTTP/2 over TLS 1.3
#    (20,000 requests, 10 connections x 10 streams), and 2,000 HTTP/1.1 requests without a
#    token, which the policy refuses. Bare Pingora gets the same traffic but the refused
#    part: both binaries are built with the one profile, so the benchmark's reference goes
#    through the same optimisation as the gateway it is compared with.
# 3. Stops them (SIGINT: they exit, and the instrumentation writes its counts), merges the
#    counts with `llvm-profdata merge --sparse` (functions that never ran are left out) and
#    writes the result compressed (about 350 KB).
#
# Needs llvm-profdata of the toolchain's own LLVM (`rustup component add llvm-tools`, which
# this script runs when it is missing). Takes about 15 minutes, most of it the build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=gateway/bench/common.sh
. "$here/../bench/common.sh"
repo=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
[ -x "$profdata" ] || rustup component add llvm-tools
[ -x "$profdata" ] || { echo "train.sh: no llvm-profdata at $profdata" >&2; exit 1; }

gen=$CARGO_TARGET_DIR/pgo-generate
# Build scripts and proc macros are instrumented too (RUSTFLAGS without --target reach them)
# and write their counts while the build runs: into this directory, which nothing merges.
build_counts=$gen/build-counts
mkdir -p "$build_counts"
(cd "$repo" && RUSTFLAGS="-Cprofile-generate=$build_counts" CARGO_TARGET_DIR=$gen \
	cargo build -q --release -p rustronaut-gateway -p rustronaut-bare-pingora)
GW=$gen/release/rustronaut-gateway
bench_setup nginx=nginx-light h2load=nghttp2-client openssl=openssl
counts=$work/counts
mkdir -p "$counts"
export LLVM_PROFILE_FILE=$counts/%p.profraw

bench_small_upstream 19301
bench_tls_cert
bench_http_snapshot 19302 19301
bench_https_snapshot 19304 19301
nginx -c "$work/upstream.conf" &
pids+=($!)
"$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" --bind-address 127.0.0.1 \
	--admin-listen 127.0.0.1:19303 --threads 1 >"$work/gw-http.log" 2>&1 &
trained=($!)
"$GW" --allow-loopback-upstreams --snapshot "$work/snapshot-https.json" --bind-address 127.0.0.1 \
	--admin-listen 127.0.0.1:19305 --threads 1 >"$work/gw-https.log" 2>&1 &
trained+=($!)
"$gen/release/bare-pingora" --listen 127.0.0.1:19306 --l4-read-buffer 0 --upstream 127.0.0.1:19301 \
	--threads 1 --tls-listen 127.0.0.1:19307 --cert "$work/tls.crt" --key "$work/tls.key" \
	>"$work/bare.log" 2>&1 &
trained+=($!)
pids+=("${trained[@]}")
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)

# h1 PORT N [h2load options]: N HTTP/1.1 requests; prints the status code summary.
h1() {
	local port=$1 n=$2
	shift 2
	h2load --h1 -n "$n" -c 50 -t 1 -H ":authority: bench.localhost" "$@" \
		"http://127.0.0.1:$port/small" 2>&1 | grep 'status codes'
}
# h2 PORT N: N HTTP/2 requests over TLS 1.3 with the token.
h2() {
	h2load -n "$2" -c 10 -m 10 -t 1 --tls13-ciphers=TLS_AES_128_GCM_SHA256 \
		--connect-to "127.0.0.1:$1" -H "Authorization: Bearer $TOKEN" \
		"https://bench.localhost/small" 2>&1 | grep 'status codes'
}
for _ in $(seq 1 300); do
	h1 19302 1 -H "Authorization: Bearer $TOKEN" | grep -q '1 2xx' &&
		h1 19306 1 | grep -q '1 2xx' && break
	sleep 0.2
done
echo "gateway, HTTP/1.1 with the token: $(h1 19302 60000 -H "Authorization: Bearer $TOKEN")"
echo "gateway, HTTP/1.1 without a token: $(h1 19302 2000)"
echo "gateway, HTTP/2 with the token: $(h2 19304 20000)"
echo "bare Pingora, HTTP/1.1: $(h1 19306 60000 -H "Authorization: Bearer $TOKEN")"
echo "bare Pingora, HTTP/2: $(h2 19307 20000)"

for p in "${trained[@]}"; do kill -INT "$p"; done
for p in "${trained[@]}"; do wait "$p" || true; done
n=$(find "$counts" -name '*.profraw' | wc -l)
[ "$n" = 3 ] || { echo "train.sh: $n count files for 3 processes" >&2; exit 1; }
"$profdata" merge --sparse -o "$work/gateway.profdata" "$counts"/*.profraw
gzip -9nc "$work/gateway.profdata" >"$repo/gateway/pgo/gateway.profdata.gz"
"$profdata" show "$work/gateway.profdata" | sed -n 's/^Total functions: /functions with counts: /p'
ls -l "$repo/gateway/pgo/gateway.profdata.gz"
