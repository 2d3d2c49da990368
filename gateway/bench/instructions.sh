#!/usr/bin/env bash
# User-space instructions per request: the gateway (enforcing the JWT Allow policy, as in
# run.sh) against bare Pingora (gateway/bench/bare-pingora), each under callgrind
# (valgrind) with one worker thread, counted over REQUESTS small HTTP/1.1 requests after a
# warm-up (h2load --h1, 50 connections, the same nginx upstream), then the functions where
# the two differ: self instructions per request, largest difference first.
#
# Why next to run.sh: CPU time on this shared 2-core machine moves 2-5 % between rounds, so
# a change worth 1 % needs many alternating rounds to show; an instruction count does not
# move with the machine's load (the same build counts the same within 0.1 % run to run), so
# each of the small per-request costs of issue 19 can be measured one at a time. It is not
# the CPU time: the kernel is not counted (the system calls per request are the same for
# both, syscalls.sh), nor cache misses or stalls. Two things valgrind counts differently from
# the hardware, reported on lines of their own and left out of the "without" ratio:
# - valgrind's CPU has no SHA extensions, so the token's SHA-256 (the cache key) runs sha2's
#   portable code, ~38,600 instructions per request, where natively the SHA-NI code costs
#   about 1.6 % of the gateway's CPU samples (docs/benchmarks.md);
# - `rep movsb` counts one per byte moved: the memcpy of each request's boxed future
#   (~14 KiB, Pingora's and ours alike) is thousands of "instructions" but one instruction.
#
# Usage: gateway/bench/instructions.sh    REQUESTS=10000 WARMUP=2000 TOP=40
#        GW_BEFORE=path/to/rustronaut-gateway also counts another build of the gateway and
#        shows the difference against it (a change's gain, exactly)
#        KEEP_DUMPS=dir keeps the callgrind dumps there (NAME.dump), to read callers and
#        callees with callgrind_annotate --tree=caller
#        RESOURCES=N serves N Resources (N-1 on other hostnames, listed first): per-request
#        costs that grow with the snapshot
# Needs valgrind, nginx and h2load (installed with apt-get when missing). Takes about two
# minutes per target.
set -euo pipefail
N=${REQUESTS:-10000}
WARMUP=${WARMUP:-2000}
TOP=${TOP:-40}
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup nginx=nginx-light h2load=nghttp2-client valgrind=valgrind
bench_bare_pgo # as GW: with the profile, or PGO=0
BARE=$CARGO_TARGET_DIR/pgo/release/bare-pingora

bench_small_upstream 19121
bench_http_snapshot 19122 19121
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)
nginx -c "$work/upstream.conf" & pids+=($!)

# count NAME PORT CMD...: runs CMD under callgrind, warms it up, zeroes the counters, sends
# the requests, dumps; leaves the dump at $work/NAME.out.
count() {
	local name=$1 port=$2 pid
	shift 2
	valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" --dump-instr=no \
		"$@" >"$work/$name.log" 2>&1 &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 1 300); do
		curl -s -o /dev/null -H 'Host: bench.localhost' "127.0.0.1:$port/small" && break
		sleep 0.2
	done
	local load=(h2load --h1 -c 50 -t 1 -H ":authority: bench.localhost" -H "Authorization: Bearer $TOKEN"
		"http://127.0.0.1:$port/small")
	"${load[@]}" -n "$WARMUP" >/dev/null
	callgrind_control -z "$pid" >/dev/null 2>&1
	local out
	out=$("${load[@]}" -n "$N")
	grep -q "status codes: $N 2xx" <<<"$out" || {
		echo "$name: not every request answered 200:" >&2
		grep 'status codes' <<<"$out" >&2
		exit 1
	}
	callgrind_control -d "$pid" >/dev/null 2>&1
	kill -INT "$pid" # SIGTERM is Pingora's graceful shutdown: minutes
	wait "$pid" 2>/dev/null || true
	# The dump named by callgrind_control -d (its part number), the last one written.
	mv "$(ls -t "$work/$name.out".* | head -1)" "$work/$name.dump"
	echo "$name counted" >&2
}

count bare 19123 "$BARE" --listen 127.0.0.1:19123 --l4-read-buffer 0 --upstream 127.0.0.1:19121 --threads 1
count gateway 19122 "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" \
	--admin-listen 127.0.0.1:19124 --bind-address 127.0.0.1 --threads 1
if [ -n "${GW_BEFORE:-}" ]; then
	count gateway-before 19122 "$GW_BEFORE" --allow-loopback-upstreams --snapshot "$work/snapshot.json" \
		--admin-listen 127.0.0.1:19124 --bind-address 127.0.0.1 --threads 1
fi

compare() {
	python3 - "$N" "$TOP" "$1" "$2" "$3" "$4" <<'PY'
import re, subprocess, sys
n, top, a_name, a_file, b_name, b_file = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]

def self_costs(path):
    """Self instructions by function (threads merged); callgrind_annotate's lines of the
    thread entry points, which it shows at ~100 % after a zeroing, are skipped."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*?)(?: \[[^]]*\])?$", line)
        if not m or float(m.group(2)) >= 99.9 or "PROGRAM TOTALS" in line:
            continue
        name = m.group(3)
        head = name.split(":", 1)[0]
        if ":" in name and (head == "???" or "/" in head):
            name = name.split(":", 1)[1]
        name = re.sub(r"'\d+", "", name)[:110]
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs

a, b = self_costs(a_file), self_costs(b_file)
odd = lambda f: "sha256" in f or "memcpy" in f or "memmove" in f
total = lambda c, keep=lambda f: True: sum(v for f, v in c.items() if keep(f)) / n
ta, tb = total(a), total(b)
wa, wb = total(a, lambda f: not odd(f)), total(b, lambda f: not odd(f))
print(f"\n{a_name} against {b_name}: user-space instructions per request ({n} requests)\n")
print(f"| | {a_name} | {b_name} | ratio |")
print("|---|---|---|---|")
print(f"| all | {ta:,.0f} | {tb:,.0f} | {ta / tb:.3f} |")
for label, keep in (("SHA-256 (portable code under valgrind)", lambda f: "sha256" in f),
                    ("memcpy/memmove (rep movsb: per byte)", lambda f: "memcpy" in f or "memmove" in f)):
    print(f"| {label} | {total(a, keep):,.0f} | {total(b, keep):,.0f} | |")
print(f"| **without those two** | **{wa:,.0f}** | **{wb:,.0f}** | **{wa / wb:.3f}** |")
print(f"\nLargest differences, self instructions per request ({a_name} - {b_name}):\n")
rows = sorted(((a.get(f, 0) - b.get(f, 0)) / n, a.get(f, 0) / n, b.get(f, 0) / n, f)
              for f in set(a) | set(b) if not odd(f))
print(f"| difference | {a_name} | {b_name} | function |")
print("|---|---|---|---|")
for d, x, y, f in sorted(rows, key=lambda r: -abs(r[0]))[:top]:
    print(f"| {d:+,.0f} | {x:,.0f} | {y:,.0f} | `{f}` |")
PY
}

if [ -n "${KEEP_DUMPS:-}" ]; then
	mkdir -p "$KEEP_DUMPS"
	cp "$work"/*.dump "$KEEP_DUMPS"/
fi
compare gateway "$work/gateway.dump" bare "$work/bare.dump"
if [ -n "${GW_BEFORE:-}" ]; then
	compare gateway "$work/gateway.dump" gateway-before "$work/gateway-before.dump"
fi
