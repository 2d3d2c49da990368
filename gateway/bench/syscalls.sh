#!/usr/bin/env bash
# System calls per request: the gateway (enforcing the JWT Allow policy, as in run.sh) against
# an nginx reverse proxy, both with one worker, through the same nginx upstream, counted with
# `strace -f -c` over REQUESTS small HTTP/1.1 requests each (h2load --h1, 50 connections).
# strace slows both a lot: read the counts, not the rates. Results: docs/benchmarks.md.
#
# Usage: gateway/bench/syscalls.sh        REQUESTS=20000 by default
# Needs nginx, h2load and strace (installed with apt-get when missing).
set -euo pipefail
N=${REQUESTS:-20000}
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup nginx=nginx-light h2load=nghttp2-client strace=strace

bench_small_upstream 19101
# master_process off: one process, so strace sees exactly the worker's calls.
cat >"$work/proxy.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 8192; }
http { access_log off;
  upstream backend { server 127.0.0.1:19101; keepalive 128; }
  server { listen 127.0.0.1:19102; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering on; } } }
CONF
bench_http_snapshot 19104 19101
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)

nginx -c "$work/upstream.conf" & pids+=($!)
strace -f -c -o "$work/nginx.strace" nginx -c "$work/proxy.conf" & nginx_strace=$!
strace -f -c -o "$work/gateway.strace" "$GW" --allow-loopback-upstreams --snapshot "$work/snapshot.json" \
	--admin-listen 127.0.0.1:19105 --bind-address 127.0.0.1 --threads 1 >"$work/gateway.log" 2>&1 &
gw_strace=$!
pids+=("$nginx_strace" "$gw_strace")
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:19105/readyz)" = 200 ] && break
	sleep 0.1
done
for t in nginx:19102 gateway:19104; do
	out=$(h2load --h1 -n "$N" -c 50 -t 1 -H ":authority: bench.localhost" \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${t#*:}/small" 2>&1)
	if ! grep -q "^status codes: $N 2xx" <<<"$out"; then
		echo "${t%%:*}: not every request answered 2xx:" >&2
		echo "$out" >&2
		exit 1
	fi
done
# Stop the traced processes (not strace), so strace writes its summary and exits.
kill -QUIT "$(pgrep -P "$nginx_strace")"
kill -INT "$(pgrep -P "$gw_strace")"
wait "$nginx_strace" "$gw_strace" 2>/dev/null || true

for t in nginx gateway; do
	printf '\n%s: system calls per request (%s requests; calls made at least 0.01 times per request)\n' "$t" "$N"
	awk -v n="$N" '$1 ~ /^[0-9.]+$/ && NF >= 5 {calls = $4; name = $NF
		if (calls / n >= 0.01) printf "  %-16s %6.2f\n", name, calls / n}' "$work/$t.strace"
done
