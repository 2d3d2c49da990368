# Sourced by the gateway benchmark scripts (run.sh, syscalls.sh, sidecar.sh, symbol-order.sh):
# installs the tools they name, builds the release gateway, and gives them a scratch
# directory and a list of processes that are stopped, with the directory removed, however
# the script exits.
#
#   bench_setup CMD=PACKAGE ...   sets: repo, GW (the gateway binary, as shipped: release,
#                                 profile-guided through gateway/pgo/cargo.sh; PGO=0 for
#                                 the same build without the profile; a GW set by the
#                                 caller is kept and nothing is built), work, pids
#   bench_reference               sets: BARE (bare Pingora, gateway/bench/bare-pingora, built
#                                 the same way and with the same profile as GW), and
#                                 GW_COUNTED, BARE_COUNTED: both built with the counting
#                                 allocator (feature count-allocs, no profile: the counts
#                                 do not depend on it), for allocations per request only;
#                                 the timed runs use GW and BARE
#   bench_bare_pgo                builds bare Pingora with the profile, beside the gateway
#   bench_small_upstream PORT     writes $work/upstream.conf: one nginx worker answering
#                                 /small on 127.0.0.1:PORT
#   bench_http_snapshot PORT UP   writes $work/snapshot.json: the standalone example's JWT
#                                 Allow policy on one plain HTTP listener at PORT for
#                                 bench.localhost, upstream 127.0.0.1:UP (RESOURCES=N:
#                                 N-1 other Resources first, on hostnames of their own)
#   bench_tls_cert                writes $work/tls.crt and tls.key: a self-signed P-256
#                                 certificate for bench.localhost
#   bench_https_snapshot PORT UP  as bench_http_snapshot, on one HTTPS listener with that
#                                 certificate (after bench_tls_cert), to
#                                 $work/snapshot-https.json
#   bench_median                  values on stdin (whitespace-separated) -> their median
#                                 (the lower of the middle two for an even count: always
#                                 one of the values, so "-" and integers stay as they are)
#   bench_percentiles             latencies on stdin, sorted, one per line -> "p50 p99"
#                                 (nearest rank)
#   bench_pin                     sets the arrays pin_load and pin_proxy, command prefixes:
#                                 with PIN=1, taskset to CPU 0 (h2load, the upstream) and
#                                 CPU 1 (the proxies measured), so the load generator does
#                                 not share a run queue with what it measures; else empty
#   bench_symbol_order            prints how many of gateway/link/symbol-order.txt's
#                                 functions $GW has (a stale list costs memory and CPU:
#                                 regenerate with gateway/bench/symbol-order.sh)
# shellcheck shell=bash

bench_setup() {
	repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
	local need=() pair
	for pair in "$@"; do
		command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
	done
	if [ ${#need[@]} -gt 0 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
	if [ -z "${GW:-}" ]; then
		"$repo/gateway/pgo/cargo.sh" -q -p rustronaut-gateway
		GW=$CARGO_TARGET_DIR/pgo/release/rustronaut-gateway
	fi
	work=$(mktemp -d)
	pids=()
	trap bench_cleanup EXIT
}

bench_reference() {
	(cd "$repo" && cargo build -q --release -p rustronaut-gateway -p rustronaut-bare-pingora --features \
		rustronaut-gateway/count-allocs,rustronaut-bare-pingora/count-allocs)
	GW_COUNTED=$CARGO_TARGET_DIR/release/rustronaut-gateway
	BARE_COUNTED=$CARGO_TARGET_DIR/release/bare-pingora
	bench_bare_pgo
	BARE=$CARGO_TARGET_DIR/pgo/release/bare-pingora
}

# Bare Pingora with the gateway's profile. Built together with the gateway, as train.sh
# builds them: on its own, Cargo would resolve fewer features of the dependencies they share
# (Pingora, tokio), which renames those crates' functions, and the profile, keyed by name,
# would miss most of bare Pingora (measured: a reference costing a quarter more CPU per
# request than the one trained, docs/benchmarks.md).
bench_bare_pgo() {
	"$repo/gateway/pgo/cargo.sh" -q -p rustronaut-gateway -p rustronaut-bare-pingora
}

bench_small_upstream() {
	cat >"$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 8192; }
http { access_log off;
  server { listen 127.0.0.1:$1; keepalive_requests 1000000;
    location = /small { return 200 "hello, world\n"; } } }
CONF
}

bench_http_snapshot() {
	python3 - "$repo/gateway/examples/standalone/snapshot.json" "$1" "$2" >"$work/snapshot.json" <<'PY'
import json, os, sys
s = json.load(open(sys.argv[1]))
s["listeners"] = [{"name": "http", "port": int(sys.argv[2]), "protocol": "HTTP"}]
s["tenants"][0]["domains"] = ["bench.localhost"]
r = s["resources"][0]
r["listeners"] = ["http"]
r["hostnames"] = ["bench.localhost"]
r["rules"][0]["upstreams"][0]["kind"]["service"]["addresses"] = [f"127.0.0.1:{sys.argv[3]}"]
# RESOURCES=N: N-1 more Resources of the same tenant on hostnames of their own, listed first,
# for per-request costs that grow with the snapshot.
others = []
for i in range(int(os.environ.get("RESOURCES", "1")) - 1):
    o = json.loads(json.dumps(r))
    o["name"] = f"other-{i}"
    o["hostnames"] = [f"r{i}.localhost"]
    s["tenants"][0]["domains"].append(f"r{i}.localhost")
    others.append(o)
s["resources"] = others + s["resources"]
json.dump(s, sys.stdout)
PY
}

bench_tls_cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=bench.localhost -addext subjectAltName=DNS:bench.localhost \
		-keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
}

bench_https_snapshot() {
	python3 - "$repo/gateway/examples/standalone/snapshot.json" "$1" "$2" "$work/tls.crt" "$work/tls.key" \
		>"$work/snapshot-https.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
cert = {"name": "bench", "hostnames": ["bench.localhost"],
        "certificateChainPem": open(sys.argv[4]).read(), "privateKeyPem": open(sys.argv[5]).read()}
s["listeners"] = [{"name": "https", "port": int(sys.argv[2]), "protocol": "HTTPS",
                   "tls": {"certificates": [cert]}}]
s["tenants"][0]["domains"] = ["bench.localhost"]
r = s["resources"][0]
r["listeners"] = ["https"]
r["hostnames"] = ["bench.localhost"]
r["rules"][0]["upstreams"][0]["kind"]["service"]["addresses"] = [f"127.0.0.1:{sys.argv[3]}"]
json.dump(s, sys.stdout)
PY
}

# PIN=1: the command prefixes that pin the load generator and the proxies apart (see the
# list at the top).
bench_pin() {
	pin_load=() pin_proxy=()
	[ "${PIN:-0}" = 1 ] || return 0
	if [ "$(nproc)" -lt 2 ]; then
		echo "PIN=1 needs two CPUs, this machine has $(nproc)" >&2
		exit 1
	fi
	pin_load=(taskset -c 0) pin_proxy=(taskset -c 1)
}

# How many names of the link order the gateway binary has (see the list at the top).
bench_symbol_order() {
	local order=$repo/gateway/link/symbol-order.txt
	printf 'symbol order: %s of the %s functions of %s are in the binary\n' \
		"$(nm --defined-only "$GW" | awk '{print $3}' | sort -u | comm -12 - <(sort -u "$order") | wc -l)" \
		"$(wc -l <"$order")" gateway/link/symbol-order.txt
}

bench_median() {
	tr -s ' \t' '\n' | grep -v '^$' | sort -g |
		awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'
}

bench_percentiles() {
	awk '{a[NR] = $1} END {print a[int(NR * 0.50 + 0.999999)], a[int(NR * 0.99 + 0.999999)]}'
}

# Whether process $1 still runs (an exited child stays a zombie until waited for).
bench_running() {
	local stat
	stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $stat != Z* ]]
}

bench_cleanup() {
	# Each program's own quick stop: SIGINT is Pingora's fast shutdown and nginx's (SIGTERM
	# is Pingora's graceful one, which kept bare Pingora running through its five-minute
	# grace period), SIGTERM is HAProxy's (it takes SIGINT as a soft stop and waited for
	# its idle connections for good). So SIGINT to all, SIGTERM to what still runs after
	# five seconds, SIGKILL after five more: the script never waits on a process it started.
	local p sig _
	for sig in INT TERM KILL; do
		for p in "${pids[@]}"; do
			bench_running "$p" && { kill "-$sig" "$p" 2>/dev/null || true; }
		done
		for _ in $(seq 1 50); do
			local alive=0
			for p in "${pids[@]}"; do bench_running "$p" && alive=1; done
			[ "$alive" = 0 ] && break
			sleep 0.1
		done
	done
	wait 2>/dev/null || true
	rm -rf "$work"
}
