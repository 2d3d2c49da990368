#!/usr/bin/env bash
# `make cluster-up` / `make cluster-down`: a local control plane for your shell.
#
#   e2e/scripts/cluster.sh up [DIR]     start it in the background; prints the exports to use it
#   e2e/scripts/cluster.sh down [DIR]   stop it (also removes DIR/run)
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
	cargo build -q -p rustronaut-e2e --bin rustronaut-cluster
	mkdir -p "$dir"
	if [ -f "$dir/run/supervisor.pid" ] && [ -d "/proc/$(cat "$dir/run/supervisor.pid")" ]; then
		echo "a cluster is already running from $dir/run; 'make cluster-down' first" >&2
		exit 1
	fi
	rm -rf "$dir/run"
	nohup "$supervisor" up --dir "$dir/run" --bin-dir "$bin" >"$dir/supervisor.log" 2>&1 </dev/null &
	pid=$!
	for _ in $(seq 1 900); do
		[ -f "$dir/run/ready" ] && break
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "the control plane failed to start; $dir/supervisor.log says:" >&2
			tail -40 "$dir/supervisor.log" >&2
			exit 1
		fi
		sleep 0.2
	done
	[ -f "$dir/run/ready" ] || { echo "timed out waiting for the control plane" >&2; exit 1; }
	echo "# control plane ready (stop it with 'make cluster-down'); to use it:"
	echo "export KUBECONFIG=$dir/run/kubeconfig"
	echo "export PATH=$bin:\$PATH"
	;;
down)
	# Processes `make demo` started (operator, gateway, upstream), if any.
	if [ -f "$dir/demo.pids" ]; then
		while read -r p; do kill "$p" 2>/dev/null || true; done <"$dir/demo.pids"
		rm -f "$dir/demo.pids"
	fi
	if [ -x "$supervisor" ]; then
		"$supervisor" down --dir "$dir/run"
	elif [ -f "$dir/run/supervisor.pid" ]; then
		kill "$(cat "$dir/run/supervisor.pid")" 2>/dev/null || true
	fi
	;;
*)
	echo "usage: $0 up|down [DIR]" >&2
	exit 2
	;;
esac
