#!/usr/bin/env bash
# HTTP/1.1 throughput of the gateway (enforcing a JWT Allow policy) against nginx and HAProxy
# as plain reverse proxies, bare Pingora (the smallest ProxyHttp on the same Pingora,
# gateway/bench/bare-pingora), and no proxy at all, in the same run, alternating (each round
# in another order, see `rotated`).
#
#   h2load --h1 ─▶ { direct | nginx | HAProxy | bare Pingora | rustronaut-gateway } ─▶ nginx upstream
#
# Each throughput run also reads the proxy's CPU time (utime + stime of all its threads,
# /proc/PID/stat) before and after: CPU µs per request, and the user-space part. Then an
# allocation pass: the gateway and bare Pingora built with a counting allocator
# (gateway/bench/alloc-count, feature count-allocs; separate processes, never the timed
# ones) serve the same requests, and the allocator calls per request are reported side by
# side (idle background allocations measured over 2 s and subtracted). At the start, before
# any load, each Pingora process's idle wake-ups per second (5 s, after one request).
#
# Every proxy gets one worker thread (the machine has 2 cores: one for the proxy, one for
# h2load and the upstream; THREADS=2 for the scaling comparison), keep-alive to the upstream,
# access logs off. Bare Pingora's plain listener runs without an L4 read buffer, as the
# gateway's do (rustronaut_gateway::server::PLAIN_HTTP_L4), so the CPU ratio is the cost of
# the gateway's code, not of a listener setting; 10,000 idle connections are held on both
# settings. The gateway verifies
# the token (cached after the first request) and evaluates the policy on every request, and
# logs one JSON decision line per request; nginx and HAProxy only forward.
#
# Then latency at a fixed rate: half of the gateway's maximum small-request rate (its median
# from the throughput rounds), the same absolute rate for every target (h2load --h1 --rps per
# client, -D seconds, --log-file per request); p50/p99 of each run computed from the log, and
# the added p50/p99 of each proxy (target minus direct, medians of rounds), and each proxy's
# CPU per request at that rate: every proxy under the same load, where the throughput
# rounds measure each at its own maximum (a slower proxy there also finds h2load and nginx
# asleep more often, and pays the wake-ups in its sends).
#
# Then HTTP/2 over TLS (h2 by ALPN, a self-signed P-256 certificate made here with openssl):
# h2load -m streams per connection against nginx's own TLS listener (direct), nginx
# (`ssl http2`), HAProxy (`ssl alpn h2,http/1.1`) and the gateway's HTTPS listener, small
# responses; each proxy speaks HTTP/1.1 with keep-alive to the same upstream as above.
#
# Then TCP throughput (iperf3, one stream) direct vs the gateway's TCP listener (an Allow by
# client CIDR, decided once per connection, then spliced) vs HAProxy in tcp mode.
#
# Usage: gateway/bench/run.sh     ROUNDS=3 REQUESTS=100000 CONNECTIONS=50 by default;
#        PERF_OUT=/tmp/gw.perf also profiles the gateway (perf report -i /tmp/gw.perf)
#        LATENCY_ONLY=1 runs only the small-request throughput rounds (to find the rate) and
#        the fixed-rate latency part (LAT_SECONDS=10 per run, LAT_CONNECTIONS=50, or
#        LAT_RATE=N req/s to fix the rate instead of measuring the gateway's maximum; without
#        it a row "bare-pingora-at-own-half" also runs bare Pingora at half its own maximum,
#        the reference for the gateway at half of its own; LAT_BARE_OWN=0 leaves it out)
#        H2_ONLY=1 runs only the HTTP/2 part (H2_CONNECTIONS=10, H2_STREAMS=10, REQUESTS)
#        GW_BEFORE=path/to/rustronaut-gateway adds a row "gateway-before": another build of the
#        gateway (the commit before a change) on the same snapshot, so a change's gain is
#        measured in the same run as its baseline
#        BARE_STEAL=1 adds a row "bare-pingora-steal": bare Pingora on tokio's multi-thread
#        scheduler, Pingora's default (the bare-pingora row runs a current-thread runtime
#        with THREADS=1, as the gateway does, and the multi-thread one above: see
#        bare-pingora's --work-stealing)
#        THREADS=2 gives each proxy under test (nginx, HAProxy, bare Pingora, the gateway) two
#        worker threads/processes instead of one, for the scaling comparison (the upstream
#        nginx, h2load and the TCP part stay at one)
#        PIN=1 runs the proxies under test on CPU 1 and h2load and the upstream nginx on CPU 0
#        (taskset; THREADS=1 only) in the throughput, fixed-rate and HTTP/2 rounds, so the
#        load generator does not share a run queue with what it measures (on two shared
#        cores that about doubles every proxy's added p99: docs/benchmarks.md). CPU 0 then
#        carries h2load and the upstream for every target, which can cap the fastest ones'
#        maximum (nginx, HAProxy): read the throughput ratios of a PIN=1 run with that
#        in mind. The idle-connection and TCP parts are not pinned.
#        TCP_ONLY=1 runs only the iperf3 part (TCP_SECONDS=5 per run); the gateway runs twice,
#        with its default 64 KiB copy buffers and with tokio's 8 KiB (gateway-8k)
# Needs nginx, haproxy, h2load (nghttp2-client), iperf3 and openssl: installed with apt-get
# when missing.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
N=${REQUESTS:-100000}
C=${CONNECTIONS:-50}
NBIG=${BIG_REQUESTS:-2000}
LAT_SECONDS=${LAT_SECONDS:-10}
LAT_C=${LAT_CONNECTIONS:-50}
H2_C=${H2_CONNECTIONS:-10}
H2_M=${H2_STREAMS:-10}
LATENCY_ONLY=${LATENCY_ONLY:-0}
H2_ONLY=${H2_ONLY:-0}
THREADS=${THREADS:-1}
# 10,000 held connections per server below need the descriptors (HAProxy, at maxconn 9500,
# fits a 20,000 hard limit: the rest of its 10,000 wait in the listen backlog).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
# Pinning settled before the builds, so a wrong PIN fails at once.
bench_pin
if [ "${PIN:-0}" = 1 ] && [ "${THREADS:-1}" != 1 ]; then
	echo "run.sh: PIN=1 puts every proxy on one CPU, so it goes with THREADS=1 only" >&2
	exit 1
fi
bench_setup nginx=nginx-light haproxy=haproxy h2load=nghttp2-client iperf3=iperf3 openssl=openssl
bench_reference
CLK_TCK=$(getconf CLK_TCK)

# TCP throughput: iperf3 -> { direct | HAProxy (mode tcp) | gateway TCP listener } -> iperf3 -s
tcp_bench() {
	local secs=${TCP_SECONDS:-5}
	iperf3 -s -B 127.0.0.1 -p 19011 >"$work/iperf3.log" 2>&1 & pids+=($!)
	cat >"$work/haproxy-tcp.cfg" <<CONF
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:19013
  default_backend be
backend be
  server up 127.0.0.1:19011
CONF
	haproxy -f "$work/haproxy-tcp.cfg" -db >"$work/haproxy-tcp.log" 2>&1 & pids+=($!)
	cat >"$work/snapshot-tcp.json" <<'JSON'
{"schemaVersion": 1, "gateway": {"namespace": "bench", "name": "bench"},
 "listeners": [{"name": "tcp", "port": 19012, "protocol": "TCP"}],
 "tenants": [{"name": "bench"}],
 "resources": [{"namespace": "bench", "name": "iperf", "tenant": "bench", "protocol": "TCP",
   "listeners": ["tcp"], "ports": [19012],
   "upstreams": [{"kind": {"service": {"name": "iperf", "port": 19011, "addresses": ["127.0.0.1:19011"]}}}]}],
 "policies": [{"namespace": "bench", "name": "local", "tenant": "bench", "action": "Allow",
   "targets": [{"resource": {"namespace": "bench", "name": "iperf"}}],
   "rules": [{"name": "loopback", "from": [{"sourceCIDRs": {"cidrs": ["127.0.0.0/8"]}}]}]}]}
JSON
	"$GW" --allow-loopback-upstreams --snapshot "$work/snapshot-tcp.json" --admin-listen 127.0.0.1:19014 --bind-address 127.0.0.1 \
		--threads 1 >"$work/gateway-tcp.log" 2>&1 & pids+=($!)
	# The same with tokio's default 8 KiB copy buffers, to show what the default buys.
	sed 's/19012/19015/g' "$work/snapshot-tcp.json" >"$work/snapshot-tcp8k.json"
	"$GW" --allow-loopback-upstreams --snapshot "$work/snapshot-tcp8k.json" --admin-listen 127.0.0.1:19016 --bind-address 127.0.0.1 \
		--threads 1 --l4-copy-buffer-bytes 8192 >"$work/gateway-tcp8k.log" 2>&1 & pids+=($!)
	for admin in 19014 19016; do
		for _ in $(seq 1 100); do
			[ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$admin/readyz")" = 200 ] && break
			sleep 0.1
		done
	done
	sleep 0.5
	local -A tport=([direct]=19011 [haproxy]=19013 [gateway]=19012 [gateway-8k]=19015) gbps=()
	local r t
	for r in $(seq 1 "$ROUNDS"); do
		for t in direct haproxy gateway gateway-8k; do
			gbps[$t]+="$(iperf3 -c 127.0.0.1 -p "${tport[$t]}" -t "$secs" -J |
				python3 -c 'import json, sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9)') "
		done
		echo "tcp round $r done" >&2
	done
	printf '\niperf3, one TCP stream, %s s per run, %s rounds, median (all runs)\n\n' "$secs" "$ROUNDS"
	echo "| target | Gbit/s | vs direct | vs HAProxy | runs |"
	echo "|---|---|---|---|---|"
	local d h g
	d=$(bench_median <<<"${gbps[direct]}")
	h=$(bench_median <<<"${gbps[haproxy]}")
	for t in direct haproxy gateway gateway-8k; do
		g=$(bench_median <<<"${gbps[$t]}")
		# shellcheck disable=SC2086
		printf '| %s | %.2f | %.2f | %.2f | %s |\n' "$t" "$g" "$(echo "$g / $d" | bc -l)" \
			"$(echo "$g / $h" | bc -l)" "$(printf '%.1f ' ${gbps[$t]})"
	done
}
if [ "${TCP_ONLY:-0}" = 1 ]; then
	tcp_bench
	exit 0
fi

head -c 1048576 /dev/urandom >"$work/big.bin"
# The TLS listeners of the HTTP/2 part: one self-signed P-256 certificate for all of them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
	-subj /CN=bench.localhost -addext subjectAltName=DNS:bench.localhost \
	-keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cat "$work/tls.crt" "$work/tls.key" >"$work/tls.pem"
# nginx workers drop to an unprivileged user: let them read the file.
chmod 755 "$work" && chmod 644 "$work/big.bin"
cat >"$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 8192; }
http { access_log off;
  server { listen 127.0.0.1:19001; keepalive_requests 1000000;
    location = /small { return 200 "hello, world\n"; }
    location = /big { alias $work/big.bin; } }
  server { listen 127.0.0.1:19021 ssl http2; keepalive_requests 1000000;
    ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key; ssl_protocols TLSv1.3;
    location = /small { return 200 "hello, world\n"; } } }
CONF
cat >"$work/proxy.conf" <<CONF
worker_processes $THREADS; daemon off; pid $work/proxy.pid; error_log $work/proxy.err;
worker_rlimit_nofile 20000;
events { worker_connections 15000; }
http { access_log off;
  upstream backend { server 127.0.0.1:19001; keepalive 128; }
  server { listen 127.0.0.1:19002; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering on; } }
  server { listen 127.0.0.1:19022 ssl http2; keepalive_requests 1000000;
    ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key; ssl_protocols TLSv1.3;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering on; } } }
CONF
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread $THREADS
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:19003
  bind 127.0.0.1:19023 ssl crt $work/tls.pem alpn h2,http/1.1
  default_backend be
backend be
  server up 127.0.0.1:19001
CONF

# The gateway: the standalone example's issuer (DEV-ONLY keys), an Allow for group dev.
# Listeners: HTTP on 19004, HTTPS (h2 or http/1.1 by ALPN) on 19024.
python3 - "$repo/gateway/examples/standalone/snapshot.json" "$work/tls.crt" "$work/tls.key" \
	>"$work/snapshot.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
cert = {"name": "bench", "hostnames": ["bench.localhost"],
        "certificateChainPem": open(sys.argv[2]).read(), "privateKeyPem": open(sys.argv[3]).read()}
s["listeners"] = [{"name": "http", "port": 19004, "protocol": "HTTP"},
                  {"name": "https", "port": 19024, "protocol": "HTTPS", "tls": {"certificates": [cert]}}]
s["tenants"][0]["domains"] = ["bench.localhost"]
r = s["resources"][0]
r["listeners"] = ["http", "https"]
r["hostnames"] = ["bench.localhost"]
r["rules"][0]["upstreams"][0]["kind"]["service"]["addresses"] = ["127.0.0.1:19001"]
json.dump(s, sys.stdout)
PY
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)

"${pin_load[@]}" nginx -c "$work/upstream.conf" & pids+=($!)
"${pin_proxy[@]}" nginx -c "$work/proxy.conf" & pids+=($!)
"${pin_proxy[@]}" haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
"${pin_proxy[@]}" "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" --admin-listen 127.0.0.1:19005 --bind-address 127.0.0.1 \
	--threads "$THREADS" >"$work/gateway.log" 2>&1 & gwpid=$!; pids+=("$gwpid")
if [ -n "${GW_BEFORE:-}" ]; then
	sed -e 's/"port": 19004/"port": 19031/' -e 's/"port": 19024/"port": 19033/' "$work/snapshot.json" \
		>"$work/snapshot-before.json"
	"${pin_proxy[@]}" "$GW_BEFORE" --allow-loopback-upstreams --snapshot "$work/snapshot-before.json" --admin-listen 127.0.0.1:19032 \
		--bind-address 127.0.0.1 --threads "$THREADS" >"$work/gateway-before.log" 2>&1 & beforepid=$!; pids+=("$beforepid")
fi
"${pin_proxy[@]}" "$BARE" --listen 127.0.0.1:19008 --l4-read-buffer 0 --upstream 127.0.0.1:19001 --threads "$THREADS" --tls-listen 127.0.0.1:19028 \
	--cert "$work/tls.crt" --key "$work/tls.key" >"$work/bare.log" 2>&1 & barepid=$!; pids+=("$barepid")
if [ "${BARE_STEAL:-0}" = 1 ]; then
	# Bare Pingora on tokio's multi-thread scheduler, Pingora's default (the row above runs
	# a current-thread runtime with THREADS=1: see bare-pingora's --work-stealing).
	"${pin_proxy[@]}" "$BARE" --listen 127.0.0.1:19038 --l4-read-buffer 0 --upstream 127.0.0.1:19001 --threads "$THREADS" \
		--work-stealing true --tls-listen 127.0.0.1:19039 --cert "$work/tls.crt" --key "$work/tls.key" \
		>"$work/bare-steal.log" 2>&1 & stealpid=$!; pids+=("$stealpid")
fi
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19005/readyz)" = 200 ] &&
		[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19008/small)" = 200 ] && break
	sleep 0.1
done
sleep 0.5
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$gwpid/status")

declare -A port=([direct]=19001 [nginx]=19002 [haproxy]=19003 [bare-pingora]=19008 [gateway]=19004)
declare -A tlsport=([direct]=19021 [nginx]=19022 [haproxy]=19023 [bare-pingora]=19028 [gateway]=19024)
targets=(direct nginx haproxy bare-pingora gateway)
if [ -n "${GW_BEFORE:-}" ]; then
	targets+=(gateway-before); port[gateway-before]=19031; tlsport[gateway-before]=19033
	for _ in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19032/readyz)" = 200 ] && break
		sleep 0.1
	done
fi
if [ "${BARE_STEAL:-0}" = 1 ]; then
	targets+=(bare-pingora-steal); port[bare-pingora-steal]=19038; tlsport[bare-pingora-steal]=19039
	for _ in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19038/small)" = 200 ] && break
		sleep 0.1
	done
fi
# Idle wake-ups: how often each process's threads give up the CPU on their own (every
# thread's voluntary_ctxt_switches) over 5 s of idleness, after one proxied request each, so
# that whatever a request starts (Pingora's clock thread, say) has started. What an idle
# sidecar costs its node, beyond its memory.
switches() {
	local f sum=0 n
	for f in /proc/"$1"/task/*/status; do
		n=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$f" 2>/dev/null) && sum=$((sum + ${n:-0}))
	done
	echo "$sum"
}
curl -s -o /dev/null -H 'Host: bench.localhost' -H "Authorization: Bearer $TOKEN" http://127.0.0.1:19004/small
[ -n "${beforepid:-}" ] && curl -s -o /dev/null -H 'Host: bench.localhost' \
	-H "Authorization: Bearer $TOKEN" http://127.0.0.1:19031/small
sleep 0.5
declare -A idle_woke
idle_procs=(gateway:"$gwpid" bare-pingora:"$barepid")
[ -n "${beforepid:-}" ] && idle_procs+=(gateway-before:"$beforepid")
for tp in "${idle_procs[@]}"; do idle_woke[${tp%%:*}]=$(switches "${tp#*:}"); done
sleep 5
for tp in "${idle_procs[@]}"; do
	idle_woke[${tp%%:*}]=$(( ($(switches "${tp#*:}") - idle_woke[${tp%%:*}]) / 5 ))
done

# The processes whose CPU time is the proxy's (direct: none; nginx: its worker).
declare -A tpids=([direct]="" [nginx]="$(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')"
	[haproxy]="${pids[2]}" [bare-pingora]="$barepid" [gateway]="$gwpid" [gateway-before]="${beforepid:-}"
	[bare-pingora-steal]="${stealpid:-}")
# cpu_ticks PID... -> "total user" clock ticks of every thread of the processes so far
cpu_ticks() {
	local p u=0 t=0 f
	for p in "$@"; do
		# fields after the command name (which may hold spaces): utime is the 12th, stime the 13th
		read -r -a f <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
		u=$((u + f[11])); t=$((t + f[11] + f[12]))
	done
	echo "$t $u"
}
# cpu_per_request TARGET BEFORE("total user") REQUESTS -> "total_us user_us" ("- -" for direct)
cpu_per_request() {
	if [ -z "${tpids[$1]}" ]; then echo "- -"; return; fi
	local after
	# shellcheck disable=SC2086
	after=$(cpu_ticks ${tpids[$1]})
	awk -v a="$after" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
		split(a, x, " "); split(b, y, " ");
		printf "%.1f %.1f\n", (x[1] - y[1]) * 1e6 / hz / n, (x[2] - y[2]) * 1e6 / hz / n }'
}
# check TARGET WHAT EXPECTED OUTPUT: every request answered 2xx, or the run fails.
check() {
	local ok
	ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$4")
	if [ "$ok" != "$3" ]; then
		echo "$1 $2: only ${ok:-0} of $3 answered 2xx:" >&2
		echo "$4" >&2
		exit 1
	fi
}
run() { # target path requests -> "req/s mean_ms cpu_us user_us"
	local out before
	# shellcheck disable=SC2086
	before=$(cpu_ticks ${tpids[$1]})
	out=$("${pin_load[@]}" h2load --h1 -n "$3" -c "$C" -t 1 -H ":authority: bench.localhost" \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$1]}$2" 2>&1)
	check "$1" "$2" "$3" "$out"
	local rps mean
	rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
	mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
	echo "$rps $mean $(cpu_per_request "$1" "$before" "$3")"
}
# run_h2 target requests -> "req/s mean cpu_us user_us": HTTP/2 over TLS 1.3 (ALPN h2, SNI bench.localhost,
# TLS_AES_128_GCM_SHA256 offered alone so every server uses the same cipher), H2_C
# connections with H2_M concurrent streams each.
run_h2() {
	local out before
	# shellcheck disable=SC2086
	before=$(cpu_ticks ${tpids[$1]})
	out=$("${pin_load[@]}" h2load -n "$2" -c "$H2_C" -m "$H2_M" -t 1 --tls13-ciphers=TLS_AES_128_GCM_SHA256 \
		--connect-to "127.0.0.1:${tlsport[$1]}" -H "Authorization: Bearer $TOKEN" "https://bench.localhost/small" 2>&1)
	if ! grep -q '^Application protocol: h2$' <<<"$out"; then
		echo "$1: HTTP/2 was not negotiated:" >&2
		echo "$out" >&2
		exit 1
	fi
	check "$1" h2 "$2" "$out"
	awk '/^TLS Protocol:/ {p = $3} /^Cipher:/ {print p, $2}' <<<"$out" >"$work/h2-cipher-$1"
	local rps mean
	rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
	mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
	echo "$rps $mean $(cpu_per_request "$1" "$before" "$2")"
}
# run_lat target rps_per_client -> "achieved_req/s p50_us p99_us": LAT_C connections, each
# sending rps_per_client requests per second, one request in flight per connection
# (HTTP/1.1), for 1 + LAT_SECONDS s; the first second is warm-up and not counted.
# Connections open one per millisecond (-r 1 --rate-period 1ms): h2load starts each one's
# request timer when it connects, so opened together they would all send at the same instant
# (bursts of LAT_C requests); staggered, the sends spread over ten phases. The rate is not
# smooth even so: h2load's rate timer fires every max(10 ms, 1/rps) and sends what fell due
# back to back, one in flight (at 400 per connection, trains of four every 10 ms), so about
# a millisecond's worth of requests arrives at once and a proxy's p99 includes draining them
# (docs/benchmarks.md, "the added p99 ... h2load's trains"). Percentiles
# from h2load's per-request log (start in us since the epoch, status, us until the end of
# the response).
run_lat() {
	local out log=$work/lat-$1.log before="" cpu
	rm -f "$log"
	# shellcheck disable=SC2086
	[ -z "${tpids[$1]}" ] || before=$(cpu_ticks ${tpids[$1]})
	out=$("${pin_load[@]}" h2load --h1 -c "$LAT_C" -r 1 --rate-period=1ms -t 1 --rps="$2" \
		-n "$((LAT_C * $2 * (LAT_SECONDS + 1)))" --log-file="$log" -H ":authority: bench.localhost" \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$1]}/small" 2>&1)
	check "$1" latency "$((LAT_C * $2 * (LAT_SECONDS + 1)))" "$out"
	cpu=$(cpu_per_request "$1" "$before" "$((LAT_C * $2 * (LAT_SECONDS + 1)))")
	# keep requests started after the first second; achieved rate over the span they cover
	awk -F'\t' 'NR == FNR {if (NR == 1 || $1 < t0) t0 = $1; next}
		$1 >= t0 + 1000000 {print $3; if (!t1 || $1 < t1) t1 = $1; if ($1 > t2) t2 = $1; n++}
		END {printf "%.0f\n", (n - 1) / ((t2 - t1) / 1e6) > "/dev/stderr"}' "$log" "$log" \
		2>"$work/lat-rate" | sort -n >"$work/lat-sorted"
	echo "$(cat "$work/lat-rate") $(bench_percentiles <"$work/lat-sorted") $cpu"
}
field() { # values "a b c d a b c d ..." -> the n-th of each group of k (default 4: run, run_h2)
	awk -v n="$1" -v k="${2:-4}" '{for (i = n; i <= NF; i += k) print $i}'
}
# PERF_OUT=file: profile the gateway (perf record -g) during one extra run of small requests.
if [ -n "${PERF_OUT:-}" ]; then
	perf record -F 999 -g -p "$gwpid" -o "$PERF_OUT" -- sleep 4 >/dev/null 2>&1 &
	perfpid=$!
	sleep 0.3
	if [ "$H2_ONLY" = 1 ]; then run_h2 gateway "$N" >/dev/null; else run gateway /small "$N" >/dev/null; fi
	wait "$perfpid" || true
fi
declare -A small big lat h2
# The targets in round R's order: the list turned by R-1 places, backwards in even rounds,
# so a target's place and the target it follows change from round to round (a target's CPU
# at a fixed rate moved with its place in a fixed order, issue 19).
rotated() { # round [name of the list, default targets]
	local -n list=${2:-targets}
	local n=${#list[@]} i
	for ((i = 0; i < n; i++)); do
		if (($1 % 2)); then
			printf '%s ' "${list[(i + $1 - 1) % n]}"
		else
			printf '%s ' "${list[(n - 1 - i + $1 - 1) % n]}"
		fi
	done
}
if [ "$H2_ONLY" != 1 ]; then
	for r in $(seq 1 "$ROUNDS"); do
		for t in $(rotated "$r"); do
			small[$t]+="$(run "$t" /small "$N") "
			[ "$LATENCY_ONLY" = 1 ] || big[$t]+="$(run "$t" /big "$NBIG") "
		done
		echo "round $r done" >&2
	done
	# Fixed rate: half the gateway's median maximum, the same for every target.
	gw_max=$(field 1 <<<"${small[gateway]}" | bench_median)
	rate=${LAT_RATE:-$(printf '%.0f' "$(echo "$gw_max / 2" | bc -l)")}
	per_client=$(((rate + LAT_C / 2) / LAT_C))
	[ "$per_client" -ge 1 ] || per_client=1
	# The reference for the latency goal: bare Pingora at half of *its own* maximum, as busy
	# as the gateway is at half of its, in the same rotation (at the gateway's rate it is
	# idler, and a single worker's tail grows with how busy it is).
	lat_targets=("${targets[@]}")
	declare -A lat_per
	for t in "${targets[@]}"; do lat_per[$t]=$per_client; done
	if [ "${LAT_BARE_OWN:-1}" = 1 ] && [ -z "${LAT_RATE:-}" ]; then
		bare_max=$(field 1 <<<"${small[bare-pingora]}" | bench_median)
		own=bare-pingora-at-own-half
		port[$own]=${port[bare-pingora]}; tpids[$own]=${tpids[bare-pingora]}; small[$own]=${small[bare-pingora]}
		lat_per[$own]=$(printf '%.0f' "$(echo "$bare_max / 2 / $LAT_C" | bc -l)")
		lat_targets+=("$own")
	fi
	for r in $(seq 1 "$ROUNDS"); do
		for t in $(rotated "$r" lat_targets); do
			lat[$t]+="$(run_lat "$t" "${lat_per[$t]}") "
		done
		echo "latency round $r done" >&2
	done
fi
if [ "$LATENCY_ONLY" != 1 ]; then
	for r in $(seq 1 "$ROUNDS"); do
		for t in $(rotated "$r"); do
			h2[$t]+="$(run_h2 "$t" "$N") "
		done
		echo "h2 round $r done" >&2
	done
fi
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$gwpid/status")

# Allocation pass: the counted builds (see the top), on ports of their own, warmed up, then
# the same small requests as above; allocator calls per request = (calls during the run -
# the idle rate x its duration) / requests.
sed -e 's/"port": 19004/"port": 19009/' -e 's/"port": 19024/"port": 19029/' "$work/snapshot.json" \
	>"$work/snapshot-counted.json"
RUSTRONAUT_ALLOC_COUNT_FILE=$work/alloc-gateway "$GW_COUNTED" --allow-loopback-upstreams \
	--snapshot "$work/snapshot-counted.json" --admin-listen 127.0.0.1:19010 --bind-address 127.0.0.1 \
	--threads 1 >"$work/gateway-counted.log" 2>&1 & pids+=($!)
RUSTRONAUT_ALLOC_COUNT_FILE=$work/alloc-bare-pingora "$BARE_COUNTED" --listen 127.0.0.1:19017 \
	--l4-read-buffer 0 --upstream 127.0.0.1:19001 --threads 1 --tls-listen 127.0.0.1:19027 --cert "$work/tls.crt" \
	--key "$work/tls.key" >"$work/bare-counted.log" 2>&1 & pids+=($!)
port[gateway-counted]=19009; tlsport[gateway-counted]=19029; tpids[gateway-counted]=""
port[bare-pingora-counted]=19017; tlsport[bare-pingora-counted]=19027; tpids[bare-pingora-counted]=""
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19010/readyz)" = 200 ] &&
		[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19017/small)" = 200 ] &&
		[ -s "$work/alloc-gateway" ] && [ -s "$work/alloc-bare-pingora" ] && break
	sleep 0.1
done
now_s() { date +%s.%N; }
# allocs_per_request TARGET KIND(h1|h2) -> allocator calls per request
allocs_per_request() {
	local f=$work/alloc-$1 a0 a1 t0 t1 i0 i1
	if [ "$2" = h1 ]; then run "$1-counted" /small 2000 >/dev/null; else run_h2 "$1-counted" 2000 >/dev/null; fi
	sleep 0.2
	i0=$(cat "$f"); sleep 2; i1=$(cat "$f")
	a0=$(cat "$f"); t0=$(now_s)
	if [ "$2" = h1 ]; then run "$1-counted" /small "$N" >/dev/null; else run_h2 "$1-counted" "$N" >/dev/null; fi
	t1=$(now_s); sleep 0.2; a1=$(cat "$f")
	awk -v i0="$i0" -v i1="$i1" -v a0="$a0" -v a1="$a1" -v t0="$t0" -v t1="$t1" -v n="$N" \
		'BEGIN { idle = (i1 - i0) / 2; printf "%.1f %.0f\n", (a1 - a0 - idle * (t1 - t0 + 0.2)) / n, idle }'
}
declare -A allocs
for t in bare-pingora gateway; do
	[ "$H2_ONLY" = 1 ] && allocs[$t-h1]="- -" || allocs[$t-h1]=$(allocs_per_request "$t" h1)
	[ "$LATENCY_ONLY" = 1 ] && allocs[$t-h2]="- -" || allocs[$t-h2]=$(allocs_per_request "$t" h2)
done

if [ "$LATENCY_ONLY" != 1 ] && [ "$H2_ONLY" != 1 ]; then
	# Memory at scale: a second gateway on a snapshot with 1,000 Resources (one route and one
	# Allow policy each), idle, then holding 10,000 open client connections.
	python3 - "$work/snapshot.json" >"$work/snapshot-1000.json" <<'PY'
import copy, json, sys
s = json.load(open(sys.argv[1]))
https = next(l for l in s["listeners"] if l["protocol"] == "HTTPS")
s["listeners"] = [{"name": "http", "port": 19006, "protocol": "HTTP"}, dict(https, port=19026)]
s["tenants"][0]["domains"] = ["bench.localhost", "*.bench.localhost"]
r0, p0 = s["resources"][0], s["policies"][0]
r0["listeners"] = ["http", https["name"]]
s["resources"], s["policies"] = [], []
for i in range(1000):
    r = copy.deepcopy(r0); r["name"] = f"r{i}"; r["hostnames"] = [f"r{i}.bench.localhost"]
    p = copy.deepcopy(p0); p["name"] = f"p{i}"
    p["targets"] = [{"resource": {"namespace": r["namespace"], "name": f"r{i}"}}]
    s["resources"].append(r); s["policies"].append(p)
json.dump(s, sys.stdout)
PY
	# A header timeout past the time 10,000 TLS handshakes take here (~15 s), as nginx's and
	# HAProxy's 60 s are: the connections held below must all still be open when measured.
	RUST_LOG=warn "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot-1000.json" --admin-listen 127.0.0.1:19007 \
		--header-timeout-ms 120000 --bind-address 127.0.0.1 --threads 1 >"$work/gateway-1000.log" 2>&1 & gw2=$!
	pids+=("$gw2")
	for _ in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19007/readyz)" = 200 ] && break
		sleep 0.1
	done
	sleep 0.5
	[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: r999.bench.localhost" \
		-H "Authorization: Bearer $TOKEN" http://127.0.0.1:19006/small)" = 200 ] ||
		{ echo "the 1,000-route gateway does not serve r999" >&2; exit 1; }
	rss_1000=$(awk '/VmRSS/ {print $2}' "/proc/$gw2/status")
	# hold PORT PID...: RSS (KiB, summed over PIDs) while 10,000 idle client connections are open.
	hold() {
		python3 - "$@" <<'PY'
import socket, sys, time
port, pids = int(sys.argv[1]), sys.argv[2:]
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(10000)]
time.sleep(2)
rss = lambda p: int(open(f"/proc/{p}/status").read().split("VmRSS:")[1].split()[0])
print(sum(rss(p) for p in pids))
PY
	}
	rss_10k=$(hold 19006 "$gw2")
	nginx_workers=$(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')
	# shellcheck disable=SC2086
	nginx_10k=$(hold 19002 $nginx_workers)
	haproxy_10k=$(hold 19003 "${pids[2]}")
	# Bare Pingora, fresh like the 1,000-route gateway, with both L4 read buffer settings:
	# none (as the gateway's plain listeners and the timed bare-pingora) and Pingora's
	# default (64 KiB).
	"$BARE" --listen 127.0.0.1:19018 --upstream 127.0.0.1:19001 --threads 1 >"$work/bare-default.log" 2>&1 &
	baredef=$!; pids+=("$baredef")
	"$BARE" --listen 127.0.0.1:19019 --l4-read-buffer 0 --upstream 127.0.0.1:19001 --threads 1 \
		>"$work/bare-unbuffered.log" 2>&1 & bare0=$!; pids+=("$bare0")
	for _ in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19018/small)" = 200 ] &&
			[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19019/small)" = 200 ] && break
		sleep 0.1
	done
	bare_10k=$(hold 19019 "$bare0")
	baredef_10k=$(hold 19018 "$baredef")
	# hold_tls PORT PID...: RSS added (KiB, summed over PIDs) by 10,000 idle HTTPS connections,
	# each with its TLS handshake done (HTTP/1.1 by ALPN, SNI bench.localhost), all still
	# open when measured (checked); the gateway's on the 1,000-route one, the others on the
	# timed proxies' TLS listeners (so the difference, not the total, which holds their runs).
	hold_tls() {
		python3 - "$@" <<'PY'
import socket, ssl, sys, time
port, pids = int(sys.argv[1]), sys.argv[2:]
rss = lambda p: int(open(f"/proc/{p}/status").read().split("VmRSS:")[1].split()[0])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
before = sum(rss(p) for p in pids)
socks = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="bench.localhost")
         for _ in range(10000)]
time.sleep(2)
added = sum(rss(p) for p in pids) - before
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        s.recv(1)
        closed += 1  # end of stream (or bytes: an answer nobody asked for)
    except ssl.SSLWantReadError:
        pass
    except OSError:
        closed += 1
if closed:
    sys.exit(f"port {port}: {closed} of 10,000 held HTTPS connections were closed by the server")
print(added)
PY
	}
	gw_tls_10k=$(hold_tls 19026 "$gw2")
	# shellcheck disable=SC2086
	nginx_tls_10k=$(hold_tls "${tlsport[nginx]}" $nginx_workers)
	bare_tls_10k=$(hold_tls "${tlsport[bare-pingora]}" "$barepid")

fi

ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
ms() { printf '%.3f' "$(echo "$1 / 1000" | bc -l)"; }
# paired results n k: after a table, each gateway build's CPU per request over bare Pingora's
# in the same round, round by round, and their median. The ratio of the medians above mixes
# rounds taken minutes apart; a round's two runs are seconds apart, so the machine's drift
# (2-5 % between rounds here) cancels more of itself in each of these (issue 19).
paired() {
	local -n res=$1
	local t list
	for t in gateway gateway-before; do
		[ -n "${res[$t]:-}" ] || continue
		list=$(paste -d' ' <(field "$2" "$3" <<<"${res[$t]}") <(field "$2" "$3" <<<"${res[bare-pingora]}") |
			awk '$1 != "-" && $2 != "-" && $2 > 0 {printf "%.2f ", $1 / $2}')
		[ -n "$list" ] || continue
		printf '(CPU vs bare Pingora in the same round, %s: %s-> median %s)\n' "$t" "$list" \
			"$(bench_median <<<"$list")"
	done
}
if [ "$H2_ONLY" != 1 ]; then
	ns=$(field 1 <<<"${small[nginx]}" | bench_median)
	if [ "$LATENCY_ONLY" = 1 ]; then
		printf '\n%s requests x %s connections (small), %s rounds, median of rounds, %s worker thread(s) per proxy\n\n' "$N" "$C" "$ROUNDS" "$THREADS"
		echo "| target | small req/s | vs nginx | mean latency | CPU µs/req | user µs/req | CPU vs bare Pingora | runs |"
		echo "|---|---|---|---|---|---|---|---|"
	else
		printf '\n%s requests x %s connections (small), %s x 1 MiB, %s rounds, median of rounds, %s worker thread(s) per proxy\n' "$N" "$C" "$NBIG" "$ROUNDS" "$THREADS"
		printf '(CPU: utime + stime of the proxy process per small request, median of rounds)\n\n'
		echo "| target | small req/s | vs nginx | mean latency | CPU µs/req | user µs/req | CPU vs bare Pingora | 1 MiB req/s | vs nginx | mean latency | small runs |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|"
		nb=$(field 1 <<<"${big[nginx]}" | bench_median)
	fi
	bare_cpu=$(field 3 <<<"${small[bare-pingora]}" | bench_median)
	for t in "${targets[@]}"; do
		s=$(field 1 <<<"${small[$t]}" | bench_median)
		sl=$(field 2 <<<"${small[$t]}" | bench_median)
		cpu=$(field 3 <<<"${small[$t]}" | bench_median)
		user=$(field 4 <<<"${small[$t]}" | bench_median)
		vs_bare=-
		[ "$cpu" = - ] || vs_bare=$(ratio "$cpu" "$bare_cpu")
		runs=$(field 1 <<<"${small[$t]}" | xargs printf '%.0f ')
		if [ "$LATENCY_ONLY" = 1 ]; then
			printf '| %s | %.0f | %s | %s | %s | %s | %s | %s|\n' "$t" "$s" "$(ratio "$s" "$ns")" "$sl" \
				"$cpu" "$user" "$vs_bare" "$runs"
		else
			b=$(field 1 <<<"${big[$t]}" | bench_median)
			bl=$(field 2 <<<"${big[$t]}" | bench_median)
			printf '| %s | %.0f | %s | %s | %s | %s | %s | %.0f | %s | %s | %s|\n' "$t" "$s" "$(ratio "$s" "$ns")" "$sl" \
				"$cpu" "$user" "$vs_bare" "$b" "$(ratio "$b" "$nb")" "$bl" "$runs"
		fi
	done
	paired small 3 4

	if [ -n "${LAT_RATE:-}" ]; then
		why="LAT_RATE; the gateway's median maximum is $(printf '%.0f' "$gw_max")"
	else
		why="half the gateway's median maximum, $(printf '%.0f' "$gw_max")"
	fi
	printf '\nFixed rate: %s connections x %s req/s = %s req/s (%s),\n' \
		"$LAT_C" "$per_client" "$((LAT_C * per_client))" "$why"
	printf 'h2load --h1 --rps, %s s per run after 1 s warm-up, %s rounds; p50/p99 in ms, median of rounds\n' \
		"$LAT_SECONDS" "$ROUNDS"
	printf '(added = target minus direct, of the medians; runs: p99 of each round)\n\n'
	[ -z "${own:-}" ] || printf '(%s: bare Pingora at half its own maximum, %s req/s; added against direct at the rate above)\n\n' \
		"$own" "$((LAT_C * ${lat_per[$own]}))"
	printf '(CPU at this rate: utime + stime of the proxy over the whole run, warm-up included, per\n'
	printf 'request sent: every target at the same load, so no proxy finds its peers idler than another)\n\n'
	echo "| target | achieved req/s | share of its max | p50 | p99 | added p50 | added p99 | CPU µs/req | user µs/req | CPU vs bare Pingora | p99 runs |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|"
	d50=$(field 2 5 <<<"${lat[direct]}" | bench_median)
	d99=$(field 3 5 <<<"${lat[direct]}" | bench_median)
	bare_lat_cpu=$(field 4 5 <<<"${lat[bare-pingora]}" | bench_median)
	for t in "${lat_targets[@]}"; do
		a=$(field 1 5 <<<"${lat[$t]}" | bench_median)
		p50=$(field 2 5 <<<"${lat[$t]}" | bench_median)
		p99=$(field 3 5 <<<"${lat[$t]}" | bench_median)
		c=$(field 4 5 <<<"${lat[$t]}" | bench_median)
		cu=$(field 5 5 <<<"${lat[$t]}" | bench_median)
		mx=$(field 1 <<<"${small[$t]}" | bench_median)
		runs=$(field 3 5 <<<"${lat[$t]}" | while read -r v; do ms "$v"; printf ' '; done)
		vs_bare=-
		[ "$c" = - ] || vs_bare=$(ratio "$c" "$bare_lat_cpu")
		printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s|\n' "$t" "$a" "$(ratio "$a" "$mx")" \
			"$(ms "$p50")" "$(ms "$p99")" "$(ms "$((p50 - d50))")" "$(ms "$((p99 - d99))")" \
			"$c" "$cu" "$vs_bare" "$runs"
	done
	paired lat 4 5
fi
if [ "$LATENCY_ONLY" != 1 ]; then
	printf '\nHTTP/2 over TLS (%s), %s requests x %s connections x %s streams, %s rounds, median of rounds\n\n' \
		"$(cat "$work/h2-cipher-gateway")" "$N" "$H2_C" "$H2_M" "$ROUNDS"
	echo "| target | small req/s | vs nginx | vs direct | mean latency | CPU µs/req | user µs/req | CPU vs bare Pingora | runs |"
	echo "|---|---|---|---|---|---|---|---|---|"
	hn=$(field 1 <<<"${h2[nginx]}" | bench_median)
	hd=$(field 1 <<<"${h2[direct]}" | bench_median)
	hbare=$(field 3 <<<"${h2[bare-pingora]}" | bench_median)
	for t in "${targets[@]}"; do
		s=$(field 1 <<<"${h2[$t]}" | bench_median)
		sl=$(field 2 <<<"${h2[$t]}" | bench_median)
		cpu=$(field 3 <<<"${h2[$t]}" | bench_median)
		user=$(field 4 <<<"${h2[$t]}" | bench_median)
		vs_bare=-
		[ "$cpu" = - ] || vs_bare=$(ratio "$cpu" "$hbare")
		runs=$(field 1 <<<"${h2[$t]}" | xargs printf '%.0f ')
		printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s|\n' "$t" "$s" "$(ratio "$s" "$hn")" "$(ratio "$s" "$hd")" \
			"$sl" "$cpu" "$user" "$vs_bare" "$runs"
	done
	paired h2 3 4
	printf '(negotiated per target:'
	for t in "${targets[@]}"; do printf ' %s %s;' "$t" "$(cat "$work/h2-cipher-$t")"; done
	printf ')\n'
fi
printf '\nAllocator calls per request (counting allocator builds, %s requests each; idle calls/s subtracted)\n\n' "$N"
echo "| target | HTTP/1.1 small | HTTP/2 small | idle calls/s |"
echo "|---|---|---|---|"
for t in bare-pingora gateway; do
	printf '| %s | %s | %s | %s |\n' "$t" "${allocs[$t-h1]% *}" "${allocs[$t-h2]% *}" "${allocs[$t-h1]#* }"
done
if [ "$H2_ONLY" != 1 ]; then
	printf '(gateway - bare Pingora, HTTP/1.1: %+.1f allocator calls per request)\n' \
		"$(echo "${allocs[gateway-h1]% *} - ${allocs[bare-pingora-h1]% *}" | bc -l)"
fi
printf '\ngateway RSS: idle %s KiB, peak %s KiB\n' "$idle_rss" "$peak_rss"
# A stale link order (gateway/build.rs) shows in the gateway's CPU per request.
bench_symbol_order
printf 'idle wake-ups per second (voluntary context switches, all threads, 5 s after one request):'
for tp in "${idle_procs[@]}"; do printf ' %s %s' "${tp%%:*}" "${idle_woke[${tp%%:*}]}"; done
printf '\n'
if [ "$LATENCY_ONLY" != 1 ] && [ "$H2_ONLY" != 1 ]; then
	printf 'gateway RSS with 1,000 routes: idle %s KiB, holding 10,000 open connections %s KiB\n' "$rss_1000" "$rss_10k"
	printf 'holding 10,000 open connections, same run: nginx worker %s KiB, HAProxy %s KiB\n' "$nginx_10k" "$haproxy_10k"
	printf 'holding 10,000 open connections, same run: bare Pingora %s KiB (no L4 read buffer, as the gateway), %s KiB (Pingora default, 64 KiB)\n' \
		"$bare_10k" "$baredef_10k"
	# HAProxy not: at maxconn 9500 (above), the connections past it never handshake.
	printf 'added by 10,000 idle HTTPS connections (handshake done), same run: gateway (1,000 routes) %s KiB, nginx worker %s KiB, bare Pingora %s KiB\n' \
		"$gw_tls_10k" "$nginx_tls_10k" "$bare_tls_10k"
	tcp_bench
fi
