#!/usr/bin/env bash
# HTTP/1.1 throughput of the gateway (enforcing a JWT Allow policy) against nginx and HAProxy
# as plain reverse proxies, and against no proxy at all, in the same run, alternating.
#
#   h2load --h1 ─▶ { direct | nginx proxy | HAProxy | rustronaut-gateway } ─▶ nginx upstream
#
# Every proxy gets one worker thread (the machine has 2 cores: one for the proxy, one for
# h2load and the upstream), keep-alive to the upstream, access logs off. The gateway verifies
# the token (cached after the first request) and evaluates the policy on every request, and
# logs one JSON decision line per request; nginx and HAProxy only forward.
#
# Then TCP throughput (iperf3, one stream) direct vs the gateway's TCP listener (an Allow by
# client CIDR, decided once per connection, then spliced) vs HAProxy in tcp mode.
#
# Usage: gateway/bench/run.sh     ROUNDS=3 REQUESTS=100000 CONNECTIONS=50 by default;
#        PERF_OUT=/tmp/gw.perf also profiles the gateway (perf report -i /tmp/gw.perf)
#        TCP_ONLY=1 runs only the iperf3 part (TCP_SECONDS=5 per run); the gateway runs twice,
#        with its default 64 KiB copy buffers and with tokio's 8 KiB (gateway-8k)
# Needs nginx, haproxy, h2load (nghttp2-client) and iperf3: installed with apt-get when missing.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
N=${REQUESTS:-100000}
C=${CONNECTIONS:-50}
NBIG=${BIG_REQUESTS:-2000}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
# 10,000 held connections per server below need the descriptors (HAProxy, at maxconn 9500,
# fits a 20,000 hard limit: the rest of its 10,000 wait in the listen backlog).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v iperf3 >/dev/null || need+=(iperf3)
if [ ${#need[@]} -gt 0 ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
(cd "$repo" && cargo build -q --release -p rustronaut-gateway)
GW=$CARGO_TARGET_DIR/release/rustronaut-gateway

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

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
	"$GW" --snapshot "$work/snapshot-tcp.json" --admin-listen 127.0.0.1:19014 --bind-address 127.0.0.1 \
		--threads 1 >"$work/gateway-tcp.log" 2>&1 & pids+=($!)
	# The same with tokio's default 8 KiB copy buffers, to show what the default buys.
	sed 's/19012/19015/g' "$work/snapshot-tcp.json" >"$work/snapshot-tcp8k.json"
	"$GW" --snapshot "$work/snapshot-tcp8k.json" --admin-listen 127.0.0.1:19016 --bind-address 127.0.0.1 \
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
	d=$(median <<<"${gbps[direct]}")
	h=$(median <<<"${gbps[haproxy]}")
	for t in direct haproxy gateway gateway-8k; do
		g=$(median <<<"${gbps[$t]}")
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
# nginx workers drop to an unprivileged user: let them read the file.
chmod 755 "$work" && chmod 644 "$work/big.bin"
cat >"$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 8192; }
http { access_log off;
  server { listen 127.0.0.1:19001; keepalive_requests 1000000;
    location = /small { return 200 "hello, world\n"; }
    location = /big { alias $work/big.bin; } } }
CONF
cat >"$work/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $work/proxy.pid; error_log $work/proxy.err;
worker_rlimit_nofile 20000;
events { worker_connections 15000; }
http { access_log off;
  upstream backend { server 127.0.0.1:19001; keepalive 128; }
  server { listen 127.0.0.1:19002; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering on; } } }
CONF
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:19003
  default_backend be
backend be
  server up 127.0.0.1:19001
CONF

# The gateway: the standalone example's issuer (DEV-ONLY keys), an Allow for group dev.
python3 - "$repo/gateway/examples/standalone/snapshot.json" >"$work/snapshot.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["listeners"] = [{"name": "http", "port": 19004, "protocol": "HTTP"}]
s["tenants"][0]["domains"] = ["bench.localhost"]
r = s["resources"][0]
r["listeners"] = ["http"]
r["hostnames"] = ["bench.localhost"]
r["rules"][0]["upstreams"][0]["kind"]["service"]["addresses"] = ["127.0.0.1:19001"]
json.dump(s, sys.stdout)
PY
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)

nginx -c "$work/upstream.conf" & pids+=($!)
nginx -c "$work/proxy.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
"$GW" --snapshot "$work/snapshot.json" --admin-listen 127.0.0.1:19005 --bind-address 127.0.0.1 \
	--threads 1 >"$work/gateway.log" 2>&1 & gwpid=$!; pids+=($gwpid)
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19005/readyz)" = 200 ] && break
	sleep 0.1
done
sleep 0.5
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$gwpid/status")

declare -A port=([direct]=19001 [nginx]=19002 [haproxy]=19003 [gateway]=19004)
targets=(direct nginx haproxy gateway)
run() { # target path requests -> "req/s mean_ms"
	local out
	out=$(h2load --h1 -n "$3" -c "$C" -t 1 -H ":authority: bench.localhost" \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$1]}$2" 2>&1)
	local ok
	ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
	if [ "$ok" != "$3" ]; then
		echo "$1 $2: only ${ok:-0} of $3 answered 2xx:" >&2
		echo "$out" >&2
		exit 1
	fi
	local rps mean
	rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
	mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
	echo "$rps $mean"
}
# PERF_OUT=file: profile the gateway (perf record -g) during one extra run of small requests.
if [ -n "${PERF_OUT:-}" ]; then
	perf record -F 999 -g -p "$gwpid" -o "$PERF_OUT" -- sleep 4 >/dev/null 2>&1 &
	perfpid=$!
	sleep 0.3
	run gateway /small "$N" >/dev/null
	wait "$perfpid" || true
fi
declare -A small big
for r in $(seq 1 "$ROUNDS"); do
	for t in "${targets[@]}"; do
		small[$t]+="$(run "$t" /small "$N") "
		big[$t]+="$(run "$t" /big "$NBIG") "
	done
	echo "round $r done" >&2
done
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$gwpid/status")

# Memory at scale: a second gateway on a snapshot with 1,000 Resources (one route and one
# Allow policy each), idle, then holding 10,000 open client connections.
python3 - "$work/snapshot.json" >"$work/snapshot-1000.json" <<'PY'
import copy, json, sys
s = json.load(open(sys.argv[1]))
s["listeners"] = [{"name": "http", "port": 19006, "protocol": "HTTP"}]
s["tenants"][0]["domains"] = ["bench.localhost", "*.bench.localhost"]
r0, p0 = s["resources"][0], s["policies"][0]
s["resources"], s["policies"] = [], []
for i in range(1000):
    r = copy.deepcopy(r0); r["name"] = f"r{i}"; r["hostnames"] = [f"r{i}.bench.localhost"]
    p = copy.deepcopy(p0); p["name"] = f"p{i}"
    p["targets"] = [{"resource": {"namespace": r["namespace"], "name": f"r{i}"}}]
    s["resources"].append(r); s["policies"].append(p)
json.dump(s, sys.stdout)
PY
RUST_LOG=warn "$GW" --snapshot "$work/snapshot-1000.json" --admin-listen 127.0.0.1:19007 \
	--bind-address 127.0.0.1 --threads 1 >"$work/gateway-1000.log" 2>&1 & gw2=$!; pids+=($gw2)
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

field() { # values "rps mean rps mean ..." -> the n-th field of each pair
	awk -v n="$1" '{for (i = n; i <= NF; i += 2) print $i}'
}
printf '\n%s requests x %s connections (small), %s x 1 MiB, %s rounds, median of rounds\n\n' "$N" "$C" "$NBIG" "$ROUNDS"
echo "| target | small req/s | vs nginx | mean latency | 1 MiB req/s | vs nginx | mean latency |"
echo "|---|---|---|---|---|---|---|"
ns=$(field 1 <<<"${small[nginx]}" | median)
nb=$(field 1 <<<"${big[nginx]}" | median)
for t in "${targets[@]}"; do
	s=$(field 1 <<<"${small[$t]}" | median)
	sl=$(field 2 <<<"${small[$t]}" | median)
	b=$(field 1 <<<"${big[$t]}" | median)
	bl=$(field 2 <<<"${big[$t]}" | median)
	printf '| %s | %.0f | %.2f | %s | %.0f | %.2f | %s |\n' "$t" "$s" "$(echo "$s / $ns" | bc -l)" "$sl" \
		"$b" "$(echo "$b / $nb" | bc -l)" "$bl"
done
printf '\ngateway RSS: idle %s KiB, peak %s KiB\n' "$idle_rss" "$peak_rss"
printf 'gateway RSS with 1,000 routes: idle %s KiB, holding 10,000 open connections %s KiB\n' "$rss_1000" "$rss_10k"
printf 'holding 10,000 open connections, same run: nginx worker %s KiB, HAProxy %s KiB\n' "$nginx_10k" "$haproxy_10k"
tcp_bench
