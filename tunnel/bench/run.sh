#!/usr/bin/env bash
# Throughput and memory of the userspace tunnel (hub + connector) against a wireguard-go pair,
# in the same two-namespace topology, measured alternately in the same run.
#
#   ns A ("cluster")                            ns B ("site")
#   iperf3 -c ─▶ forward ─▶ hub ══WireGuard/UDP══ connector ─▶ iperf3 -s (127.0.0.1:5201)
#   iperf3 -c ─────────▶ wireguard-go (TUN) ══UDP══ wireguard-go (TUN) ─▶ iperf3 -s
#
# Our path includes the gateway hop (`rustronaut-tunnel forward` stands in for the gateway,
# which terminates the client's TCP and asks the hub for a stream) and two userspace TCP
# stacks; the wireguard-go path is kernel TCP end to end over TUN devices.
#
# Besides throughput, each run reads the CPU time (user + system, /proc/<pid>/stat) the two
# tunnel ends spent per GB carried: steadier than throughput on a machine whose cores are
# shared by both ends, iperf3 and the builds, and what a hub serving many sites pays. Kernel
# work done in softirq context for a process's packets may be charged to another process,
# on both paths alike.
#
# Usage (root): tunnel/bench/run.sh            ROUNDS=3 SECONDS_PER_RUN=10 by default
#               PERF_OUT=/tmp/tun.perf ...     also profiles one run of ours (perf record -g)
#               STREAMS=4 ...                  parallel TCP streams per run (iperf3 -P)
# Needs: ip (iproute2), iperf3 (installed with apt-get if missing), python3, Go tools via
# e2e/scripts/tools.sh (wireguard-go).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-10}
STREAMS=${STREAMS:-1}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/rtn/target-tunnel}

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TUN devices)" >&2; exit 1; }
command -v ip >/dev/null || { echo "needs ip (iproute2)" >&2; exit 1; }
if ! command -v iperf3 >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null
fi

(cd "$repo" && cargo build -q --release -p rustronaut-tunnel)
BIN=$CARGO_TARGET_DIR/release/rustronaut-tunnel
WGGO=$(bash "$repo/e2e/scripts/tools.sh" build)/wireguard-go

id=rtb$$
A=$id-a; B=$id-b
work=$(mktemp -d)
pids=()
# `ip netns add` bind-mounts /run/netns onto itself when it is not a mount point yet and
# never undoes it: unmounted again at the end if this run made it and left it empty, so the
# host keeps its mounts (as the tunnel tests do, tunnel/tests/common/mod.rs).
netns_mounted_before=0
mountpoint -q /run/netns 2>/dev/null && netns_mounted_before=1
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	ip netns del "$A" 2>/dev/null || true
	ip netns del "$B" 2>/dev/null || true
	if [ "$netns_mounted_before" = 0 ] && mountpoint -q /run/netns 2>/dev/null &&
		[ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
		umount /run/netns 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$A"; ip netns add "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 10.88.1.1/24 dev va; ip -n "$A" link set va up
ip -n "$B" addr add 10.88.1.2/24 dev vb; ip -n "$B" link set vb up

# ---- our hub and connector ----
hub_pub=$("$BIN" keygen --out "$work/hub.key")
site_pub=$("$BIN" keygen --out "$work/site.key")
echo "bench-token-0123456789abcdef" > "$work/token"
cat > "$work/hub.yaml" <<YAML
listen_port: 51820
private_key_file: $work/hub.key
tunnel_address: 100.96.0.1
stream_listen: "127.0.0.1:4200"
admin_listen: "127.0.0.1:9090"
token_file: $work/token
sites:
  - name: bench
    public_key: "$site_pub"
    tunnel_address: 100.96.1.1
    allowed_targets:
      - {cidr: 127.0.0.1, ports: [5201], protocol: TCP}
YAML
cat > "$work/conn.yaml" <<YAML
hubs:
  - {endpoint: "10.88.1.1:51820", public_key: "$hub_pub"}
private_key_file: $work/site.key
tunnel_address: 100.96.1.1
hub_tunnel_address: 100.96.0.1
YAML
# glibc's malloc as the images set it for the tunnel (e2e/src/image.rs, TUNNEL_MALLOC_ENV),
# for our three processes only: measure what is deployed. NO_MALLOC_ENV=1 measures the
# binary's own default.
tun=(env)
[ -n "${NO_MALLOC_ENV:-}" ] || tun+=(GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072)
ip netns exec "$A" "${tun[@]}" "$BIN" hub --config "$work/hub.yaml" 2>"$work/hub.log" & hub_pid=$!; pids+=($!)
ip netns exec "$B" "${tun[@]}" "$BIN" connect --config "$work/conn.yaml" 2>"$work/conn.log" & conn_pid=$!; pids+=($!)
ip netns exec "$A" "${tun[@]}" "$BIN" forward --hub 127.0.0.1:4200 --token-file "$work/token" --site bench \
	--listen 127.0.0.1:15201 --target 127.0.0.1:5201 2>"$work/fwd.log" & fwd_pid=$!; pids+=($!)

# ---- the wireguard-go pair ----
wga=wgb${$}a; wgb=wgb${$}b
ip netns exec "$A" "$WGGO" -f "$wga" >"$work/wga.log" 2>&1 & wga_pid=$!; pids+=($!)
ip netns exec "$B" "$WGGO" -f "$wgb" >"$work/wgb.log" 2>&1 & wgb_pid=$!; pids+=($!)
"$BIN" keygen --out "$work/wga.key" >/dev/null; "$BIN" keygen --out "$work/wgb.key" >/dev/null
uapi() { # <iface> <own key file> <peer key file> <peer endpoint or -> <allowed ip>
	python3 - "$@" <<'PY'
import base64, socket, subprocess, sys, time
iface, own, peer, endpoint, allowed = sys.argv[1:]
hexkey = lambda path: base64.b64decode(open(path).read().strip()).hex()
bin_ = __import__("os").environ["BIN"]
peer_pub = subprocess.run([bin_, "pubkey", "--key-file", peer], capture_output=True, text=True, check=True).stdout.strip()
msg = f"set=1\nprivate_key={hexkey(own)}\nlisten_port=51821\nreplace_peers=true\npublic_key={base64.b64decode(peer_pub).hex()}\n"
if endpoint != "-":
    msg += f"endpoint={endpoint}\npersistent_keepalive_interval=25\n"
msg += f"allowed_ip={allowed}\n\n"
for _ in range(100):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(f"/var/run/wireguard/{iface}.sock"); break
    except OSError:
        time.sleep(0.05)
s.sendall(msg.encode())
reply = s.recv(100).decode()
assert reply.startswith("errno=0"), reply
PY
}
export BIN
uapi "$wga" "$work/wga.key" "$work/wgb.key" "10.88.1.2:51821" "100.97.1.2/32"
uapi "$wgb" "$work/wgb.key" "$work/wga.key" "10.88.1.1:51821" "100.97.0.1/32"
ip -n "$A" addr add 100.97.0.1/16 dev "$wga"; ip -n "$A" link set "$wga" up
ip -n "$B" addr add 100.97.1.2/16 dev "$wgb"; ip -n "$B" link set "$wgb" up

ip netns exec "$B" iperf3 -s >/dev/null 2>&1 & pids+=($!)
sleep 3

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
idle_hub=$(rss $hub_pid); idle_conn=$(rss $conn_pid); idle_wga=$(rss $wga_pid); idle_wgb=$(rss $wgb_pid)

gbps() { # iperf3 -J on stdin -> "Gbit/s received" and the bytes into $work/bytes
	python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]["sum_received"]; open(sys.argv[1], "w").write(str(d["bytes"])); print("%.3f" % (d["bits_per_second"]/1e9))' "$work/bytes"
}
# CPU time (user + system, clock ticks) of processes, read from /proc/<pid>/stat.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# CPU seconds per GB carried, for the processes given (the two ends of a tunnel).
cpu_per_gb() { python3 -c "import os,sys; b=int(open('$work/bytes').read()); print('%.2f' % ((int(sys.argv[2]) - int(sys.argv[1])) / os.sysconf('SC_CLK_TCK') / (b / 1e9)))" "$@"; }
# Busy CPU time of the whole machine (user, nice, system, irq, softirq), clock ticks: the
# whole path, iperf3 and the kernel's TCP on loopback included.
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
ours_cpu=(); wg_cpu=(); fwd_cpu=(); ours_all=(); wg_all=()
run_ours() {
	local t0 f0 m0 g
	t0=$(ticks $hub_pid $conn_pid); f0=$(ticks $fwd_pid); m0=$(machine)
	g=$(ip netns exec "$A" iperf3 -J -P "$STREAMS" -c 127.0.0.1 -p 15201 -t "$SECS" | gbps)
	ours_all+=("$(cpu_per_gb "$m0" "$(machine)")")
	ours_cpu+=("$(cpu_per_gb "$t0" "$(ticks $hub_pid $conn_pid)")")
	fwd_cpu+=("$(cpu_per_gb "$f0" "$(ticks $fwd_pid)")")
	echo "$g"
}
run_wg() {
	local t0 m0 g
	t0=$(ticks $wga_pid $wgb_pid); m0=$(machine)
	g=$(ip netns exec "$A" iperf3 -J -P "$STREAMS" -c 100.97.1.2 -p 5201 -t "$SECS" | gbps)
	wg_all+=("$(cpu_per_gb "$m0" "$(machine)")")
	wg_cpu+=("$(cpu_per_gb "$t0" "$(ticks $wga_pid $wgb_pid)")")
	echo "$g"
}

# Warm up both paths (handshakes, allow list) before measuring.
for _ in $(seq 1 30); do
	ip netns exec "$A" iperf3 -c 127.0.0.1 -p 15201 -t 1 >/dev/null 2>&1 && break
	sleep 1
done
ip netns exec "$A" iperf3 -c 100.97.1.2 -t 1 >/dev/null 2>&1

ours=(); wg=()
for r in $(seq 1 "$ROUNDS"); do
	# Not in $(...): the CPU arrays are filled in this shell.
	run_ours >"$work/g"; ours+=("$(cat "$work/g")"); sleep 1
	run_wg >"$work/g"; wg+=("$(cat "$work/g")"); sleep 1
	echo "round $r: ours ${ours[-1]} Gbit/s (${ours_cpu[-1]} CPU s/GB, forward ${fwd_cpu[-1]}, machine ${ours_all[-1]}), wireguard-go ${wg[-1]} Gbit/s (${wg_cpu[-1]} CPU s/GB, machine ${wg_all[-1]})" >&2
done

# Optional profile of our path: one more run of ours under `perf record` of hub, connector and
# forward (PERF_OUT=<prefix> writes <prefix>.hub, .connector, .forward).
if [ -n "${PERF_OUT:-}" ]; then
	perfs=()
	for who in hub:$hub_pid connector:$conn_pid forward:$fwd_pid; do
		perf record -F 999 -g -p "${who#*:}" -o "$PERF_OUT.${who%%:*}" -- sleep "$SECS" >/dev/null 2>&1 &
		perfs+=($!)
	done
	sleep 0.5
	run_ours >"$work/g"
	echo "profiled run: ours $(cat "$work/g") Gbit/s" >&2
	wait "${perfs[@]}" || true
fi

# Memory once the streams are closed again: what a hub keeps after load (buffers freed to the
# allocator but not returned, buffers of new listening sockets committed by reuse).
sleep 2
after_hub=$(rss $hub_pid); after_conn=$(rss $conn_pid); after_wga=$(rss $wga_pid); after_wgb=$(rss $wgb_pid)

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }
mo=$(median "${ours[@]}"); mw=$(median "${wg[@]}")
ratio=$(python3 -c "print('%.2f' % ($mo/$mw))")
co=$(median "${ours_cpu[@]:0:$ROUNDS}"); cw=$(median "${wg_cpu[@]}"); cf=$(median "${fwd_cpu[@]:0:$ROUNDS}")
cratio=$(python3 -c "print('%.2f' % ($co/$cw))")
ao=$(median "${ours_all[@]:0:$ROUNDS}"); aw=$(median "${wg_all[@]}")
aratio=$(python3 -c "print('%.2f' % ($ao/$aw))")
kb2mb() { python3 -c "print('%.1f' % ($1/1024))"; }

cat <<MD
| path | iperf3 TCP x $STREAMS, Gbit/s (median of $ROUNDS x ${SECS}s) | spread | ratio to wireguard-go | CPU s per GB, both ends (vs wireguard-go) | machine CPU s per GB | idle RSS per side (before -> after the runs) | peak RSS per side |
|---|---|---|---|---|---|---|---|
| hub + connector (+ forward as gateway) | $mo | $(minmax "${ours[@]}") | ${ratio}x | $co (${cratio}x; forward $cf more) | $ao (${aratio}x) | hub $(kb2mb "$idle_hub") -> $(kb2mb "$after_hub") MB, connector $(kb2mb "$idle_conn") -> $(kb2mb "$after_conn") MB | hub $(kb2mb "$(hwm $hub_pid)") MB, connector $(kb2mb "$(hwm $conn_pid)") MB, forward $(kb2mb "$(hwm $fwd_pid)") MB |
| wireguard-go pair | $mw | $(minmax "${wg[@]}") | 1.00x | $cw (1.00x) | $aw (1.00x) | $(kb2mb "$idle_wga") -> $(kb2mb "$after_wga") MB, $(kb2mb "$idle_wgb") -> $(kb2mb "$after_wgb") MB | $(kb2mb "$(hwm $wga_pid)") MB, $(kb2mb "$(hwm $wgb_pid)") MB |
MD
