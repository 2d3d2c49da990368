#!/usr/bin/env bash
# What the decision log costs at a fixed rate: the same gateway build twice, with its decision
# log (RUST_LOG unset: one line per request to its stdout, a file here, as in run.sh) and
# without it (RUST_LOG=warn), beside bare Pingora and nginx answering directly, in rotating
# order, one worker each (issue 19, docs/benchmarks.md).
#
#   h2load --rps ─▶ { gateway, log | gateway, no log | bare Pingora } ─▶ nginx /small
#                   └──────────────── direct ─────────────────────────▶ nginx /small
#
# Each round sends every target 50 connections x RPS requests per second for 1 + RUN_SECONDS s,
# one request in flight per connection, the connections opened a millisecond apart (as
# run.sh's latency part); the first second is warm-up. Prints per round and target: p50 and
# p99 in µs (from h2load's per-request log) and the CPU per request (utime + stime of the
# process, /proc/PID/stat, all its threads: the log thread's writes are counted), then the
# medians, the added p99 (target minus direct) and the CPU against bare Pingora.
#
# "Fixed rate" is h2load's: its rate timer fires every max(10 ms, 1/RPS) per connection and
# sends what fell due back to back (RPS=400: trains of four every 10 ms), so about a
# millisecond's worth of requests arrives at once; the p99 includes draining them.
#
# Usage: [GW=path] [BARE=path] [RPS=400] [RUN_SECONDS=10] [ROUNDS=6] [PIN=0|1] gateway/bench/decision-log.sh
#   GW, BARE default to the release builds of this checkout with the profile
#   (gateway/pgo/cargo.sh). RPS=400 is 20,000 requests per second in all, about half the
#   one-worker gateway's maximum on the 2-core benchmark machine. PIN=1 pins the proxies to
#   CPU 1 and h2load and the upstream to CPU 0 (taskset), so the load generator does not
#   share a run queue with the proxy it measures.
set -euo pipefail
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_pin # before the builds: a PIN this machine cannot take fails at once
bench_setup nginx=nginx-light h2load=nghttp2-client
if [ -z "${BARE:-}" ]; then
	bench_bare_pgo
	BARE=$CARGO_TARGET_DIR/pgo/release/bare-pingora
fi
RPS=${RPS:-400}
SECS=${RUN_SECONDS:-10}
ROUNDS=${ROUNDS:-6}
C=50

bench_small_upstream 19301
bench_http_snapshot 19302 19301
sed 's/"port": 19302/"port": 19303/' "$work/snapshot.json" >"$work/snapshot-nolog.json"
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)
"${pin_load[@]}" nginx -c "$work/upstream.conf" & pids+=($!)
declare -A pid port=([log]=19302 [nolog]=19303 [bare]=19304 [direct]=19301)
"${pin_proxy[@]}" env -u RUST_LOG "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" --bind-address 127.0.0.1 \
	--admin-listen 127.0.0.1:19305 --threads 1 >"$work/gateway-log.out" 2>&1 & pid[log]=$!; pids+=($!)
"${pin_proxy[@]}" env RUST_LOG=warn "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot-nolog.json" --bind-address 127.0.0.1 \
	--admin-listen 127.0.0.1:19306 --threads 1 >"$work/gateway-nolog.out" 2>&1 & pid[nolog]=$!; pids+=($!)
"${pin_proxy[@]}" "$BARE" --listen 127.0.0.1:19304 --l4-read-buffer 0 --upstream 127.0.0.1:19301 --threads 1 \
	>"$work/bare.out" 2>&1 & pid[bare]=$!; pids+=($!)

targets=(log nolog bare direct)
for t in "${targets[@]}"; do
	for _ in $(seq 1 100); do
		curl -sf -o /dev/null -H 'Host: bench.localhost' -H "Authorization: Bearer $TOKEN" \
			"127.0.0.1:${port[$t]}/small" && continue 2
		sleep 0.1
	done
	echo "decision-log.sh: $t does not answer on ${port[$t]}" >&2
	exit 1
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
n=$((C * RPS * (SECS + 1)))
hz=$(getconf CLK_TCK)
declare -A p50s p99s cpus
for r in $(seq 1 "$ROUNDS"); do
	k=$((r % ${#targets[@]}))
	for t in "${targets[@]:k}" "${targets[@]:0:k}"; do
		log=$work/lat-$t.log
		rm -f "$log"
		before=0
		[ "$t" = direct ] || before=$(ticks "${pid[$t]}")
		out=$("${pin_load[@]}" h2load --h1 -c "$C" -r 1 --rate-period=1ms -t 1 --rps="$RPS" -n "$n" --log-file="$log" \
			-H ":authority: bench.localhost" -H "Authorization: Bearer $TOKEN" \
			"http://127.0.0.1:${port[$t]}/small" 2>&1)
		grep -q "status codes: $n 2xx" <<<"$out" || {
			echo "decision-log.sh: $t did not answer every request with 200:" >&2
			grep 'status codes' <<<"$out" >&2
			exit 1
		}
		cpu=-
		[ "$t" = direct ] ||
			cpu=$(echo "($(ticks "${pid[$t]}") - $before) * 1000000 / $hz / $n" | bc -l | xargs printf '%.1f')
		read -r p50 p99 < <(awk -F'\t' 'NR == FNR {if (NR == 1 || $1 < t0) t0 = $1; next}
			$1 >= t0 + 1000000 {print $3}' "$log" "$log" | sort -n | bench_percentiles)
		echo "round $r: $t p50 ${p50} us, p99 ${p99} us, CPU ${cpu} us/request" >&2
		p50s[$t]+="$p50 " p99s[$t]+="$p99 " cpus[$t]+="$cpu "
	done
done

d99=$(bench_median <<<"${p99s[direct]}")
bare_cpu=$(bench_median <<<"${cpus[bare]}")
printf '\n%s rounds, %s req/s (%s connections x %s), %s s each after 1 s warm-up; medians of rounds\n\n' \
	"$ROUNDS" "$((C * RPS))" "$C" "$RPS" "$SECS"
echo "| target | p50 µs | p99 µs | added p99 µs | p99 rounds | CPU µs/request | vs bare Pingora | CPU rounds |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
	p99=$(bench_median <<<"${p99s[$t]}")
	if [ "$t" = direct ]; then
		echo "| direct | $(bench_median <<<"${p50s[$t]}") | $p99 | - | ${p99s[$t]% } | - | - | - |"
		continue
	fi
	cpu=$(bench_median <<<"${cpus[$t]}")
	echo "| $t | $(bench_median <<<"${p50s[$t]}") | $p99 | $(echo "$p99 - $d99" | bc) | ${p99s[$t]% } | $cpu | $(echo "$cpu / $bare_cpu" | bc -l | xargs printf '%.2f') | ${cpus[$t]% } |"
done
