#!/usr/bin/env bash
# What a sidecar costs (docs/sidecars.md): the latency a rustronaut-sidecar adds in front of
# an application at a fixed rate, against the application called directly and against an
# nginx sidecar doing plain proxying (no authentication, no policy), in the same run,
# alternating; and the idle memory of each sidecar.
#
#   h2load --h1 --rps ─▶ { direct | nginx sidecar | rustronaut sidecar } ─▶ nginx "application"
#
# All on loopback, as a pod's containers talk. The rustronaut sidecar runs as the webhook
# injects it (--threads 1) on a sidecar snapshot (`sidecar: true`, one plaintext listener,
# the hostless Resource whose upstream is the application on 127.0.0.1, as
# rustronaut_compile::sidecar builds it): it verifies a JWT (cached after the first request),
# evaluates an Allow policy for group dev and logs one JSON decision line per request. nginx
# runs one worker, keep-alive to the application, access log off.
#
# Fixed rate: RATE req/s in total (default 1000), spread over CONNECTIONS connections (10),
# one request in flight per connection, SECONDS s per run (10) after 1 s of warm-up, ROUNDS
# rounds (3); p50/p99 from h2load's per-request log, median of rounds; added = target minus
# direct. Idle RSS: VmRSS after start-up and one request (nginx: master + worker).
#
# Usage: gateway/bench/sidecar.sh   (root not needed; installs nginx-light and nghttp2-client
# with apt-get when missing; builds the release gateway)
set -euo pipefail
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-1000}
C=${CONNECTIONS:-10}
SECS=${SECONDS_PER_RUN:-10}

# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup nginx=nginx-light h2load=nghttp2-client
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { awk -v n="$1" -v k="${2:-2}" '{for (i = n; i <= NF; i += k) print $i}'; }
ms() { printf '%.2f ms' "$(echo "$1 / 1000" | bc -l)"; }

cat >"$work/app.conf" <<CONF
worker_processes 1; daemon off; pid $work/app.pid; error_log $work/app.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:19101; keepalive_requests 1000000;
    location / { return 200 "hello, world\n"; } } }
CONF
cat >"$work/nginx-sidecar.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx-sidecar.pid; error_log $work/nginx-sidecar.err;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:19101; keepalive 32; }
  server { listen 127.0.0.1:19102; keepalive_requests 1000000;
    location / { proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Connection ""; } } }
CONF
# The sidecar snapshot: the standalone example's tenant (DEV-ONLY keys) and its Allow for
# group dev, reshaped as the sidecar compiler shapes a sidecar Resource.
python3 - "$repo/gateway/examples/standalone/snapshot.json" >"$work/sidecar.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["sidecar"] = True
s["gateway"] = {"namespace": "bench", "name": "app"}
s["listeners"] = [{"name": "port-19103", "port": 19103, "protocol": "HTTP"}]
r = s["resources"][0]
r["listeners"] = ["port-19103"]
r["hostnames"] = []
r["rules"] = [{"name": "all", "matches": [], "upstreams": [{"kind": {"service": {
    "name": "port-19103", "port": 19101, "addresses": ["127.0.0.1:19101"]}}, "weight": 1}]}]
json.dump(s, sys.stdout)
PY
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)

nginx -c "$work/app.conf" & pids+=($!)
nginx -c "$work/nginx-sidecar.conf" & pids+=($!)
"$GW" --snapshot "$work/sidecar.json" --admin-listen 127.0.0.1:19104 --bind-address 127.0.0.1 \
	--threads 1 >"$work/sidecar.log" 2>&1 & gwpid=$!; pids+=("$gwpid")
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19104/readyz)" = 200 ] && break
	sleep 0.1
done
declare -A port=([direct]=19101 [nginx-sidecar]=19102 [rustronaut-sidecar]=19103)
targets=(direct nginx-sidecar rustronaut-sidecar)
for t in "${targets[@]}"; do
	code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$t]}/")
	[ "$code" = 200 ] || { echo "$t answered $code, not 200:" >&2; cat "$work/sidecar.log" >&2; exit 1; }
done
# The policy is enforced: without the token the sidecar refuses.
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:19103/")
[ "$code" = 401 ] || { echo "the sidecar answered $code without a token, not 401" >&2; exit 1; }
sleep 0.5
rss() { awk '/VmRSS/ {s += $2} END {print s}' "$@"; }
gw_idle=$(rss "/proc/$gwpid/status")
nginx_idle=$(rss "/proc/$(cat "$work/nginx-sidecar.pid")/status" \
	$(pgrep -P "$(cat "$work/nginx-sidecar.pid")" | sed 's|.*|/proc/&/status|'))

per_client=$(((RATE + C / 2) / C))
n=$((C * per_client * (SECS + 1)))
# run_lat target -> "achieved_req/s p50_us p99_us" (see run.sh's run_lat: connections open
# one per millisecond so the sends spread over each interval; the first second is warm-up).
run_lat() {
	local out log=$work/lat-$1.log
	rm -f "$log"
	out=$(h2load --h1 -c "$C" -r 1 --rate-period=1ms -t 1 --rps="$per_client" -n "$n" \
		--log-file="$log" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$1]}/" 2>&1)
	ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
	[ "$ok" = "$n" ] || { echo "$1: only ${ok:-0} of $n answered 2xx:" >&2; echo "$out" >&2; exit 1; }
	awk -F'\t' 'NR == FNR {if (NR == 1 || $1 < t0) t0 = $1; next}
		$1 >= t0 + 1000000 {print $3; if (!t1 || $1 < t1) t1 = $1; if ($1 > t2) t2 = $1; k++}
		END {printf "%.0f\n", (k - 1) / ((t2 - t1) / 1e6) > "/dev/stderr"}' "$log" "$log" \
		2>"$work/lat-rate" | sort -n >"$work/lat-sorted"
	echo "$(cat "$work/lat-rate") $(awk '{a[NR] = $1} END {
		print a[int(NR * 0.50 + 0.999999)], a[int(NR * 0.99 + 0.999999)]}' "$work/lat-sorted")"
}
declare -A lat
for r in $(seq 1 "$ROUNDS"); do
	for t in "${targets[@]}"; do lat[$t]+="$(run_lat "$t") "; done
	echo "round $r done" >&2
done
gw_peak=$(awk '/VmHWM/ {print $2}' "/proc/$gwpid/status")

printf '\nSidecars at a fixed rate: %s connections x %s req/s = %s req/s, %s s per run after 1 s\n' \
	"$C" "$per_client" "$((C * per_client))" "$SECS"
printf 'warm-up, %s rounds; p50/p99 median of rounds; added = target minus direct\n\n' "$ROUNDS"
echo "| target | achieved req/s | p50 | p99 | added p50 | added p99 | p99 runs |"
echo "|---|---|---|---|---|---|---|"
d50=$(field 2 3 <<<"${lat[direct]}" | median)
d99=$(field 3 3 <<<"${lat[direct]}" | median)
for t in "${targets[@]}"; do
	a=$(field 1 3 <<<"${lat[$t]}" | median)
	p50=$(field 2 3 <<<"${lat[$t]}" | median)
	p99=$(field 3 3 <<<"${lat[$t]}" | median)
	runs=$(field 3 3 <<<"${lat[$t]}" | while read -r v; do ms "$v"; printf ' '; done)
	printf '| %s | %.0f | %s | %s | %s | %s | %s|\n' "$t" "$a" "$(ms "$p50")" "$(ms "$p99")" \
		"$(ms "$((p50 - d50))")" "$(ms "$((p99 - d99))")" "$runs"
done
printf '\nidle RSS: rustronaut sidecar %s KiB (peak after the runs %s KiB); nginx sidecar (master + worker) %s KiB\n' \
	"$gw_idle" "$gw_peak" "$nginx_idle"
# A stale gateway/link/symbol-order.txt (gateway/build.rs) shows here first: fewer of its
# functions in the binary, more of the binary resident.
bench_symbol_order
