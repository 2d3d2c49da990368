#!/usr/bin/env bash
# Where the gateway's CPU goes next to bare Pingora's: a sampling profile of each over the
# same small requests, then the functions where the two differ, in samples.
#
#   h2load ─▶ { gateway (JWT Allow policy, as in run.sh) | bare Pingora } ─▶ nginx /small
#
# Each target gets a warm-up, then `perf record -F 2999 --call-graph dwarf,16384 -p PID`
# while `h2load --h1 -c 50 -t 1` sends REQUESTS requests (the gateway first, then bare
# Pingora, one worker each). Samples are taken at a fixed rate of CPU time, so equal request
# counts make the totals comparable: their ratio is the CPU ratio of this one pair of runs
# (run.sh and rotate.sh measure it properly, over rounds). Prints the totals, kernel and user
# space apart, and the TOP symbols by difference (self samples: gateway, bare, difference).
# The profiles stay in OUT (gateway.perf, bare.perf) for `perf report -i ... -g caller`, e.g.
# `perf report -i OUT/gateway.perf --no-children -S <symbol> -g caller` for a symbol's callers.
#
# Why a sampling profile beside instructions.sh: it sees the kernel (the system calls, and
# the wake-ups of the peers each send costs) and the hardware's own cost of each function,
# where callgrind counts user-space instructions only.
#
# Usage: gateway/bench/profile.sh     OUT=dir (default: a new temporary directory, printed)
#        REQUESTS=100000 TOP=30; GW=path and BARE=path take those builds instead of building
#        them (gateway/pgo/cargo.sh, as run.sh does)
# Needs perf, nginx and h2load (installed with apt-get when missing).
set -euo pipefail
N=${REQUESTS:-100000}
TOP=${TOP:-30}
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup nginx=nginx-light h2load=nghttp2-client perf=linux-perf
if [ -z "${BARE:-}" ]; then
	bench_bare_pgo
	BARE=$CARGO_TARGET_DIR/pgo/release/bare-pingora
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

bench_small_upstream 19131
bench_http_snapshot 19132 19131
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)
nginx -c "$work/upstream.conf" &
pids+=($!)
"$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" --bind-address 127.0.0.1 \
	--admin-listen 127.0.0.1:19133 --threads 1 >"$work/gateway.log" 2>&1 &
gw=$!
pids+=($!)
"$BARE" --listen 127.0.0.1:19136 --l4-read-buffer 0 --upstream 127.0.0.1:19131 --threads 1 \
	>"$work/bare.log" 2>&1 &
bare=$!
pids+=($!)

# load PORT REQUESTS: the benchmark's requests; fails unless all are answered 200.
load() {
	local out
	out=$(h2load --h1 -n "$2" -c 50 -t 1 -H ":authority: bench.localhost" \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/small" 2>&1)
	grep -q "status codes: $2 2xx" <<<"$out" || {
		echo "port $1: not every request answered 200:" >&2
		grep 'status codes' <<<"$out" >&2
		return 1
	}
	grep -o 'finished in .*req/s' <<<"$out"
}
for _ in $(seq 1 300); do
	load 19132 10 >/dev/null 2>&1 && load 19136 10 >/dev/null 2>&1 && break
	sleep 0.2
done
for t in gateway:19132:$gw bare:19136:$bare; do
	IFS=: read -r name port pid <<<"$t"
	load "$port" 20000 >/dev/null # warm-up
	perf record -q -F 2999 --call-graph dwarf,16384 -p "$pid" -o "$OUT/$name.perf" 2>/dev/null &
	rec=$!
	sleep 0.5 # perf attached
	printf '%s: %s\n' "$name" "$(load "$port" "$N")"
	kill -INT "$rec"
	wait "$rec" 2>/dev/null || true
done

for name in gateway bare; do
	perf report -i "$OUT/$name.perf" --no-children --sort sym -q -g none -n -F sample,sym \
		2>/dev/null >"$OUT/$name.txt"
done
python3 - "$OUT/gateway.txt" "$OUT/bare.txt" "$TOP" "$N" <<'PY'
import collections, re, sys
def load(path):
    d = collections.Counter()
    for line in open(path):
        m = re.match(r"\s*(\d+)\s+(\[[.k]\])\s+(.*)$", line)
        if m:
            d[(m.group(2), m.group(3)[:110])] += int(m.group(1))
    return d
g, b, top, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kern = lambda d: sum(v for (k, _), v in d.items() if k == "[k]")
tg, tb = sum(g.values()), sum(b.values())
print(f"\nsamples over {n} requests each (perf -F 2999): gateway / bare Pingora\n")
print("| | gateway | bare Pingora | ratio |\n|---|---|---|---|")
print(f"| all | {tg:,} | {tb:,} | {tg / tb:.3f} |")
print(f"| kernel | {kern(g):,} | {kern(b):,} | {kern(g) / max(kern(b), 1):.3f} |")
print(f"| user space | {tg - kern(g):,} | {tb - kern(b):,} | {(tg - kern(g)) / max(tb - kern(b), 1):.3f} |")
print(f"\nLargest differences, self samples (gateway - bare Pingora):\n")
print("| difference | gateway | bare | symbol |\n|---|---|---|---|")
for key in sorted(set(g) | set(b), key=lambda k: -abs(g[k] - b[k]))[:top]:
    print(f"| {g[key] - b[key]:+,} | {g[key]:,} | {b[key]:,} | {key[0]} `{key[1]}` |")
PY
echo "profiles: $OUT/gateway.perf, $OUT/bare.perf"
