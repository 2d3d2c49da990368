#!/usr/bin/env bash
# Where the gateway's allocator calls come from: every call (mimalloc's entry points, probed
# with uprobes) during REQUESTS small HTTP/1.1 requests enforcing the JWT Allow policy, as in
# run.sh, with its call stack; each call attributed to the first frame of the gateway on its
# stack and to the first frame that is not the allocator or `core`/`alloc`, counted per
# request. run.sh's counting allocator says exactly how many; this says where, its total
# within a few percent of that count (docs/benchmarks.md, "the upstream's headers off
# Pingora's header API"). The probes are removed however the script exits.
#
# Also lists the blocks over 1 KiB asked for per request, by size and site: above that
# size mimalloc leaves its fast path (issue 19: a 3.7 KB hook future was one).
#
# Usage (root): gateway/bench/alloc-sites.sh        REQUESTS=2000 TOP=40 by default
# Needs nginx, h2load and perf (installed with apt-get when missing).
set -euo pipefail
N=${REQUESTS:-2000}
TOP=${TOP:-40}
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup nginx=nginx-light h2load=nghttp2-client perf=linux-perf

group=rnalloc$$
remove_probes() {
	perf probe -q -d "$group:*" 2>/dev/null || true
	bench_cleanup
}
trap remove_probes EXIT
# The allocator's entry points Rust's GlobalAlloc for mimalloc calls, with the size asked
# for (first argument of malloc/zalloc, second of realloc; x86-64 System V registers).
for f in mi_malloc_aligned mi_zalloc_aligned; do
	perf probe -q -x "$GW" -a "$group:$f=$f size=%di:u64"
done
perf probe -q -x "$GW" -a "$group:mi_realloc_aligned=mi_realloc_aligned size=%si:u64"

bench_small_upstream 19111
bench_http_snapshot 19114 19111
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)

nginx -c "$work/upstream.conf" & pids+=($!)
# Decision lines on (as run.sh), to /dev/null.
RUST_LOG=info "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" \
	--admin-listen 127.0.0.1:19115 --bind-address 127.0.0.1 --threads 1 >/dev/null 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19115/readyz)" = 200 ] && break
	sleep 0.1
done
load() { # requests [h2load options]
	local out n=$1
	shift
	out=$(h2load --h1 -n "$n" -c 50 -t 1 "$@" -H ":authority: bench.localhost" \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:19114/small" 2>&1)
	if ! grep -q "^status codes: $n 2xx" <<<"$out"; then
		echo "not every request answered 2xx:" >&2
		echo "$out" >&2
		exit 1
	fi
}
# Warm: token cache, upstream pool, allocator pages.
load 5000
perf record -q -m 8192 -e "$group:*" --call-graph dwarf,8192 -p "$gw" -o "$work/alloc.perf" >/dev/null 2>&1 &
rec=$!
sleep 0.5
# At 500 requests a second (10 per connection): perf copies 8 KiB of stack per call, and
# at full speed it drops events rather than keep up.
load "$N" --rps=10
sleep 0.3
kill -INT "$rec"
wait "$rec" 2>/dev/null || true
perf script -i "$work/alloc.perf" -F event,trace,ip,sym --no-inline 2>/dev/null >"$work/alloc.txt"

python3 - "$work/alloc.txt" "$N" "$TOP" <<'PY'
import collections, re, sys
path, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
generic = re.compile(r"^(mi_|_mi_|alloc::|core::|<alloc::|<core::|__rust|__rdl|std::|<std|"
                     r"hashbrown|<hashbrown|<mimalloc|\[unknown\])")
ours = re.compile(r"rustronaut|ProxyHttp>::")
sites, calls, large = collections.Counter(), 0, collections.Counter()
for stack in open(path).read().split("\n\n"):
    frames = []
    lines = stack.strip().split("\n")
    size = re.search(r"size=(\d+)", lines[0])
    size = int(size.group(1)) if size else 0
    for line in lines[1:]:
        parts = line.strip().split(" ", 1)
        if len(parts) == 2:
            frames.append(re.sub(r"::\{\{closure\}\}", "", parts[1]))
    if not frames:
        continue
    calls += 1
    first = next((f for f in frames if not generic.match(f)), frames[-1])
    mine = next((f for f in frames if ours.search(f)), "-")
    mine = mine.replace("<rustronaut_gateway::proxy::GatewayProxy as "
                        "pingora_proxy::proxy_trait::ProxyHttp>", "GatewayProxy")
    sites[(mine[:70], first[:90])] += 1
    # Over 1 KiB, mimalloc's aligned entry points leave their fast path (a size-class
    # lookup) for a generic one unless the size is a power of two: worth seeing apart.
    if size > 1024:
        large[(size, mine[:70], first[:90])] += 1
print(f"allocator calls per request: {calls / n:.1f} ({calls} over {n} requests)")
print(f"\n| per request | gateway frame | first non-allocator frame |\n|---|---|---|")
for (mine, first), c in sites.most_common(top):
    print(f"| {c / n:.2f} | {mine} | {first} |")
print(f"\nblocks over 1 KiB per request: {sum(large.values()) / n:.1f}")
print(f"\n| per request | bytes | gateway frame | first non-allocator frame |\n|---|---|---|---|")
for (size, mine, first), c in sorted(large.items(), key=lambda kv: -kv[1])[:top]:
    if c / n >= 0.05:
        print(f"| {c / n:.2f} | {size} | {mine} | {first} |")
PY
