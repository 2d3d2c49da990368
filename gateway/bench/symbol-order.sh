#!/usr/bin/env bash
# Regenerates gateway/link/symbol-order.txt (see gateway/build.rs): the functions of the
# release gateway a sidecar executes, which the linker places together so a sidecar maps
# less of the binary, then those an edge gateway's HTTPS load adds. Runs the sidecar as
# gateway/bench/sidecar.sh does (--threads 1, a sidecar snapshot, an nginx application)
# under callgrind: start-up, allowed, refused and unauthenticated requests, a load, the
# admin endpoints, a few idle seconds. Lists the functions callgrind saw run that the
# binary defines.
#
# Their order is for the request path's speed: the functions the load ran are placed by
# call-chain clustering (C3, Ottoni and Maher, "Optimizing Function Placement for
# Large-Scale Data-Center Applications", CGO 2017; what lld's --call-graph-profile-sort
# does with a PGO profile): each function, densest first, joins the cluster of its most
# frequent caller unless the cluster would pass 1 MiB or lose more than 8x of its density,
# and the clusters follow each other densest first, so a request's code sits together
# rather than between start-up code in the order callgrind first named the functions
# (issue 19, docs/benchmarks.md: about 1.5 % of the CPU per request against that order;
# a stale list, most names gone after a dependency change, cost 3.5 %). Functions that
# ran only at start-up, at idle or for the probes follow, in the order callgrind named
# them. Last come the functions an edge gateway's HTTPS load runs (TLS, HTTP/2) that the
# sidecar did not, clustered the same way.
#
# Regenerate whenever Cargo.lock or the toolchain changes (the names' hashes follow both),
# or when `make bench-gateway` or `make bench-sidecar`, which print how many of the names
# the binary still has, find some missing (a new impl block renumbers the ones after it).
#
# Usage: gateway/bench/symbol-order.sh   (installs valgrind, nginx-light, nghttp2-client,
# openssl when missing; builds the release gateway). Rebuild the release gateway afterwards.
set -euo pipefail
# shellcheck source=gateway/bench/common.sh
. "$(dirname "$0")/common.sh"
bench_setup valgrind=valgrind nginx=nginx-light h2load=nghttp2-client openssl=openssl

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
	--threads 1 --drain-delay-seconds 0 --grace-period-seconds 0 --shutdown-timeout-seconds 1 >"$work/gw.log" 2>&1 & gw=$!
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
# Part 1 of the profile: start-up and the probes above. Part 2: the load alone, whose
# costs and calls order the functions.
callgrind_control -d "$gw" >/dev/null
h2load --h1 -c 10 -n 3000 -H "Authorization: Bearer $TOKEN" http://127.0.0.1:19113/ | grep 'status codes'
callgrind_control -d "$gw" >/dev/null
sleep 5
kill -TERM "$gw"
wait "$gw" || true

# An edge gateway over HTTPS, HTTP/2 and HTTP/1.1 by ALPN: the TLS and HTTP/2 code a
# sidecar never runs, profiled the same way and placed after the sidecar's whole set, so
# the sidecar's resident code stays what it was.
bench_tls_cert
bench_https_snapshot 19115 19111
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/edge.out" \
	"$GW" --allow-loopback-upstreams --snapshot "$work/snapshot-https.json" --admin-listen 127.0.0.1:19116 \
	--bind-address 127.0.0.1 --threads 1 --drain-delay-seconds 0 --grace-period-seconds 0 --shutdown-timeout-seconds 1 \
	>"$work/edge.log" 2>&1 & edge=$!
pids+=("$edge")
for _ in $(seq 1 600); do
	[ "$(code 127.0.0.1:19116/readyz)" = 200 ] && break
	sleep 0.2
done
callgrind_control -d "$edge" >/dev/null
tls=(--connect-to 127.0.0.1:19115 -H "Authorization: Bearer $TOKEN" https://bench.localhost/)
h2load -n 2000 -c 10 -m 10 "${tls[@]}" | grep 'status codes'
h2load --h1 -n 1000 -c 10 "${tls[@]}" | grep 'status codes'
callgrind_control -d "$edge" >/dev/null
kill -TERM "$edge"
wait "$edge" || true

python3 - "$GW" "$work/cg.out.1" "$work/cg.out.2" "$work/cg.out" "$work/edge.out.2" \
	>"$repo/gateway/link/symbol-order.txt" <<'PY'
import re, subprocess, sys
from collections import Counter

binary, parts, edge = sys.argv[1], sys.argv[2:5], sys.argv[5]


def read(path):
    """Functions in the order callgrind names them; exclusive instructions; calls per edge."""
    names, seen, cost, calls = {}, {}, Counter(), Counter()
    fn = cfn = None
    in_call = False
    for line in open(path):
        line = line.rstrip('\n')
        m = re.match(r'^(c?fn)=\((\d+)\)(?: (.+))?$', line)
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            name = names[ident]
            seen.setdefault(name, None)
            if kind == 'fn':
                fn = name
            else:
                cfn = name
            continue
        if line.startswith('calls='):
            calls[(fn, cfn)] += int(line[6:].split()[0])
            in_call = True
            continue
        if line[:1] in tuple('0123456789+-*'):
            if in_call:  # the call's inclusive cost, not the caller's own
                in_call = False
            elif fn is not None:
                cost[fn] += int(line.split()[-1])
    return seen, cost, calls


nm = subprocess.run(['nm', '--defined-only', '-S', binary], capture_output=True, text=True,
                    check=True).stdout
size = {}
for fields in (l.split() for l in nm.splitlines()):
    if len(fields) == 4 and fields[2] in 'tTwW':
        size[fields[3]] = max(int(fields[1], 16), 1)

profiles = [read(path) for path in parts]
order = {}
for seen, _, _ in profiles:
    order.update(seen)
names = [n for n in order if n in size]


def c3(names, cost, calls):
    """The functions of `names` that cost anything, by call-chain clustering (see above)."""
    best = {}
    for (caller, callee), n in calls.items():
        if caller in size and callee in size and caller != callee and n > best.get(callee, (0, None))[0]:
            best[callee] = (n, caller)
    hot = [n for n in names if cost[n] > 0]
    leader = {n: n for n in hot}
    members = {n: [n] for n in hot}
    csize = {n: size[n] for n in hot}
    ccost = {n: cost[n] for n in hot}

    def find(n):
        while leader[n] != n:
            leader[n] = leader[leader[n]]
            n = leader[n]
        return n

    for f in sorted(hot, key=lambda n: -cost[n] / size[n]):
        if f not in best or best[f][1] not in leader or find(f) != f:
            continue
        p = find(best[f][1])
        if p == f or csize[p] + csize[f] > 1 << 20:
            continue
        merged = (ccost[p] + ccost[f]) / (csize[p] + csize[f])
        if merged * 8 < ccost[p] / csize[p]:
            continue
        leader[f] = p
        members[p] += members.pop(f)
        csize[p] += csize.pop(f)
        ccost[p] += ccost.pop(f)
    return [n for c in sorted(members, key=lambda c: -ccost[c] / csize[c]) for n in members[c]]


_, cost, calls = profiles[1]
out = c3(names, cost, calls)
listed = set(out)
out += [n for n in names if n not in listed]
listed = set(out)
edge_seen, cost, calls = read(edge)
out += c3([n for n in edge_seen if n in size and n not in listed], cost, calls)
print('\n'.join(out))
PY
echo "$(wc -l <"$repo/gateway/link/symbol-order.txt") functions in gateway/link/symbol-order.txt"
