#!/usr/bin/env bash
# `make cluster-up` / `make cluster-down`: a local cluster for your shell.
#
#   e2e/scripts/cluster.sh up [DIR]     start it in the background; prints the exports to use it
#   e2e/scripts/cluster.sh down [DIR]   stop it (also removes DIR/run) and leave the host as it was
#
# By default the cluster has a real node (containerd, kubelet, kube-proxy, kube-router; root
# only, one per machine) with the project's images imported, beside kwok's fake nodes.
# KWOK_ONLY=1 starts the control plane with fake nodes only (no root needed).
#
# The supervisor (rustronaut-cluster) keeps running after this script exits; its log is
# DIR/supervisor.log, the components' logs are under DIR/run/logs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(realpath -m "${2:-.cluster}")
target=${CARGO_TARGET_DIR:-target}
supervisor="$target/debug/rustronaut-cluster"

case "${1:-}" in
up)
	bin=$(bash e2e/scripts/tools.sh build)
	node_args=()
	if [ "${KWOK_ONLY:-0}" != 1 ]; then
		if [ "$(id -u)" != 0 ]; then
			echo "a real node needs root; run as root, or KWOK_ONLY=1 for fake nodes only" >&2
			exit 1
		fi
		bash e2e/scripts/images.sh >/dev/null
		node_args=(--real-node --nodes 1 --images "$target/debug/images")
	else
		cargo build -q --workspace --bins   # the same build as make test: nothing compiles twice
	fi
	mkdir -p "$dir"
	if [ -f "$dir/run/supervisor.pid" ] && [ -d "/proc/$(cat "$dir/run/supervisor.pid")" ]; then
		echo "a cluster is already running from $dir/run; 'make cluster-down' first" >&2
		exit 1
	fi
	rm -rf "$dir/run"
	nohup "$supervisor" up --dir "$dir/run" --bin-dir "$bin" "${node_args[@]}" >"$dir/supervisor.log" 2>&1 </dev/null &
	pid=$!
	for _ in $(seq 1 1500); do
		[ -f "$dir/run/ready" ] && break
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "the cluster failed to start; $dir/supervisor.log says:" >&2
			tail -40 "$dir/supervisor.log" >&2
			exit 1
		fi
		sleep 0.2
	done
	[ -f "$dir/run/ready" ] || { echo "timed out waiting for the cluster" >&2; exit 1; }
	echo "# cluster ready (stop it with 'make cluster-down'); to use it:"
	echo "export KUBECONFIG=$dir/run/kubeconfig"
	echo "export PATH=$bin:\$PATH"
	;;
down)
	# What `make demo` started on the host beside the cluster (the console's OP and its
	# port-forward: e2e/scripts/console-demo.sh).
	if [ -f "$dir/demo.pids" ]; then
		while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/demo.pids"
	fi
	if [ -x "$supervisor" ]; then
		"$supervisor" down --dir "$dir/run"
	elif [ -f "$dir/run/supervisor.pid" ]; then
		kill "$(cat "$dir/run/supervisor.pid")" 2>/dev/null || true
	fi
	rm -f "$dir/demo.pids"
	;;
*)
	echo "usage: $0 up|down [DIR]" >&2
	exit 2
	;;
esac
