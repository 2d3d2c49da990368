#!/usr/bin/env bash
# Two gateway builds and bare Pingora at their maximum, in rotating order, many short
# rounds: for differences of a few per cent, which the three rounds of run.sh cannot
# resolve on a noisy machine (issue 19, docs/benchmarks.md: the link order's effect).
#
#   h2load ─▶ { gateway A | gateway B | bare Pingora } ─▶ nginx /small
#
# Each round runs the three targets, one after the other, in one of the six orders in turn;
# CPU per request is utime + stime of the target process over its run (/proc/PID/stat),
# as in run.sh. Prints each round's CPU and ratios, then the medians and in how many rounds
# B cost less than A.
#
# Usage: A=path/to/rustronaut-gateway [B=path] [BARE=path] [PROTO=h1|h2] [REQUESTS=60000] \
#          [ROUNDS=12] [PIN=0|1] gateway/bench/rotate.sh
#   B defaults to the release gateway built from this checkout, BARE to the release bare
#   Pingora built from it, both with the profile (gateway/pgo/cargo.sh; PGO=0: without). Any of the three may be a wrapper script that `exec`s the binary
#   (the CPU is read from the process it starts), e.g. to set an environment variable.
#   PROTO=h1: plain HTTP/1.1, 50 connections (run.sh's small requests); h2: HTTP/2 over
#   TLS 1.3, 10 connections x 10 streams (run.sh's HTTP/2 part). PIN=1 pins the proxies to
#   CPU 1 and h2load and the upstream to CPU 0 (taskset). Installs nginx-light and
#   nghttp2-client when missing.
set -euo pipefail
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_pin # before the builds: a PIN this machine cannot take fails at once
bench_setup nginx=nginx-light h2load=nghttp2-client openssl=openssl
A=${A:?A=path to the first gateway build}
B=${B:-$GW}
for bin in "$A" "$B"; do
	[ -x "$bin" ] || { echo "rotate.sh: $bin is not an executable gateway build" >&2; exit 1; }
done
PROTO=${PROTO:-h1}
N=${REQUESTS:-60000}
ROUNDS=${ROUNDS:-12}
if [ -z "${BARE:-}" ]; then
	bench_bare_pgo # as GW: with the profile, or PGO=0
	BARE=$CARGO_TARGET_DIR/pgo/release/bare-pingora
fi
[ -x "$BARE" ] || { echo "rotate.sh: $BARE is not an executable bare Pingora build" >&2; exit 1; }

bench_small_upstream 19201
bench_tls_cert
# The same listener for A and B but for its port: HTTP, or HTTPS for PROTO=h2.
for t in a:19202 b:19204; do
	if [ "$PROTO" = h2 ]; then
		bench_https_snapshot "${t#*:}" 19201
		mv "$work/snapshot-https.json" "$work/${t%%:*}.json"
	else
		bench_http_snapshot "${t#*:}" 19201
		mv "$work/snapshot.json" "$work/${t%%:*}.json"
	fi
done
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)
"${pin_load[@]}" nginx -c "$work/upstream.conf" &
pids+=($!)
declare -A port=([A]=19202 [B]=19204 [bare]=19206) pid=()
for t in A B; do
	bin=$A && [ "$t" = B ] && bin=$B
	"${pin_proxy[@]}" "$bin" --allow-loopback-upstreams --snapshot "$work/${t,,}.json" --bind-address 127.0.0.1 \
		--admin-listen "127.0.0.1:$((port[$t] + 1))" --threads 1 >"$work/$t.log" 2>&1 &
	pid[$t]=$!
	pids+=($!)
done
if [ "$PROTO" = h2 ]; then
	"${pin_proxy[@]}" "$BARE" --listen 127.0.0.1:19208 --l4-read-buffer 0 --upstream 127.0.0.1:19201 --threads 1 \
		--tls-listen 127.0.0.1:19206 --cert "$work/tls.crt" --key "$work/tls.key" >"$work/bare.log" 2>&1 &
else
	"${pin_proxy[@]}" "$BARE" --listen 127.0.0.1:19206 --l4-read-buffer 0 --upstream 127.0.0.1:19201 --threads 1 \
		>"$work/bare.log" 2>&1 &
fi
pid[bare]=$!
pids+=($!)

# load TARGET REQUESTS: the benchmark's requests to TARGET; fails unless all are answered 200.
load() {
	local out
	if [ "$PROTO" = h2 ]; then
		out=$("${pin_load[@]}" h2load -n "$2" -c 10 -m 10 -t 1 --tls13-ciphers=TLS_AES_128_GCM_SHA256 \
			--connect-to "127.0.0.1:${port[$1]}" -H "Authorization: Bearer $TOKEN" \
			"https://bench.localhost/small" 2>&1)
	else
		out=$("${pin_load[@]}" h2load --h1 -n "$2" -c 50 -t 1 -H ":authority: bench.localhost" \
			-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$1]}/small" 2>&1)
	fi
	grep -q "status codes: $2 2xx" <<<"$out" || {
		echo "$1: not every request answered 200:" >&2
		grep -v '^progress' <<<"$out" | tail -8 >&2
		echo "$1's own log ends:" >&2
		tail -5 "$work/$1.log" >&2
		return 1
	}
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Ready when each answers: 50 requests, as h2load refuses fewer than its 50 HTTP/1.1 clients.
for _ in $(seq 1 300); do
	load A 50 2>/dev/null && load B 50 2>/dev/null && load bare 50 2>/dev/null && break
	sleep 0.2
done
for t in A B bare; do load "$t" 20000; done # warm-up

printf '%s, %s requests per run, %s rounds; CPU µs per request\n\n' "$PROTO" "$N" "$ROUNDS"
orders=("A B bare" "B bare A" "bare A B" "B A bare" "A bare B" "bare B A")
declare -A us
for r in $(seq 1 "$ROUNDS"); do
	for t in ${orders[$(((r - 1) % 6))]}; do
		c0=$(cpu "${pid[$t]}")
		load "$t" "$N"
		c1=$(cpu "${pid[$t]}")
		us[$t]=$(echo "($c1 - $c0) * 10000 / $N" | bc -l)
	done
	printf 'round %2d: A %.1f B %.1f bare %.1f  A/bare %.3f B/bare %.3f B/A %.3f\n' "$r" \
		"${us[A]}" "${us[B]}" "${us[bare]}" "$(echo "${us[A]} / ${us[bare]}" | bc -l)" \
		"$(echo "${us[B]} / ${us[bare]}" | bc -l)" "$(echo "${us[B]} / ${us[A]}" | bc -l)"
done | tee "$work/rounds"
python3 - "$work/rounds" <<'PY'
import re, statistics, sys
rows = [tuple(map(float, m.groups())) for m in
        (re.search(r'A/bare ([\d.]+) B/bare ([\d.]+) B/A ([\d.]+)', l) for l in open(sys.argv[1])) if m]
a, b, ba = zip(*rows)
print(f"\nmedians: A/bare {statistics.median(a):.3f}, B/bare {statistics.median(b):.3f}, "
      f"B/A {statistics.median(ba):.3f}; B cost less than A in {sum(x < 1 for x in ba)} of {len(rows)} rounds")
PY
