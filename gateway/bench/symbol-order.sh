#!/usr/bin/env bash
# Regenerates gateway/link/symbol-order.txt (see gateway/build.rs): the functions of the
# release gateway a sidecar executes, which the linker places together so a sidecar maps
# less of the binary. Runs the sidecar as gateway/bench/sidecar.sh does (--threads 1, a
# sidecar snapshot, an nginx application) under callgrind: start-up, allowed, refused and
# unauthenticated requests, a short load, the admin endpoints, a few idle seconds. Lists the
# functions callgrind saw run, in the order it names them, keeping those the binary defines.
#
# Usage: gateway/bench/symbol-order.sh   (installs valgrind, nginx-light, nghttp2-client
# when missing; builds the release gateway). Rebuild the release gateway afterwards.
set -euo pipefail
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup valgrind=valgrind nginx=nginx-light h2load=nghttp2-client

cat >"$work/app.conf" <<CONF
worker_processes 1; daemon off; pid $work/app.pid; error_log $work/app.err;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:19111; location / { return 200 "hello, world\n"; } } }
CONF
python3 - "$repo/gateway/examples/standalone/snapshot.json" >"$work/sidecar.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["sidecar"] = True
s["gateway"] = {"namespace": "bench", "name": "app"}
s["listeners"] = [{"name": "port-19113", "port": 19113, "protocol": "HTTP"}]
r = s["resources"][0]
r["listeners"] = ["port-19113"]
r["hostnames"] = []
r["rules"] = [{"name": "all", "matches": [], "upstreams": [{"kind": {"service": {
    "name": "port-19113", "port": 19111, "addresses": ["127.0.0.1:19111"]}}, "weight": 1}]}]
json.dump(s, sys.stdout)
PY
TOKEN=$("$repo/gateway/examples/standalone/mint-token.sh" alice dev 86400)
nginx -c "$work/app.conf" & pids+=($!)
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.out" \
	"$GW" --snapshot "$work/sidecar.json" --admin-listen 127.0.0.1:19114 --bind-address 127.0.0.1 \
	--threads 1 --grace-period-seconds 0 --shutdown-timeout-seconds 1 >"$work/gw.log" 2>&1 & gw=$!
pids+=("$gw")
code() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
for _ in $(seq 1 600); do
	[ "$(code 127.0.0.1:19114/readyz)" = 200 ] && [ "$(code 127.0.0.1:19113/)" = 401 ] && break
	sleep 0.2
done
for _ in 1 2 3 4 5; do
	[ "$(code -H "Authorization: Bearer $TOKEN" 127.0.0.1:19113/)" = 200 ]
	[ "$(code -H "Authorization: Bearer not.a.token" 127.0.0.1:19113/)" = 401 ]
	[ "$(code 127.0.0.1:19113/)" = 401 ]
done
code 127.0.0.1:19114/metrics >/dev/null
code 127.0.0.1:19114/healthz >/dev/null
h2load --h1 -c 10 -n 300 -H "Authorization: Bearer $TOKEN" http://127.0.0.1:19113/ | grep 'status codes'
sleep 5
kill -TERM "$gw"
wait "$gw" || true
python3 - "$work/cg.out" "$GW" >"$repo/gateway/link/symbol-order.txt" <<'PY'
import re, subprocess, sys
seen = {}
for line in open(sys.argv[1]):
    m = re.match(r'^c?fn=\(\d+\) (.+)$', line.rstrip('\n'))
    if m:
        seen.setdefault(m.group(1), None)
nm = subprocess.run(['nm', '--defined-only', sys.argv[2]], capture_output=True, text=True,
                    check=True).stdout
defined = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in 'tTwW'}
for name in seen:
    if name in defined:
        print(name)
PY
echo "$(wc -l <"$repo/gateway/link/symbol-order.txt") functions in gateway/link/symbol-order.txt"
