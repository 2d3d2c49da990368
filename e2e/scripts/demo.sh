#!/usr/bin/env bash
# `make demo`: the local demo on an embedded default.
#
# Brings up a real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok
# nodes) built from the Kubernetes Go modules, installs the rustronaut.io CRDs, runs the
# operator, applies the scenario of e2e/manifests/demo.yaml (a tenant, a gateway, a resource
# whose backend is a process on this machine, an Allow policy for group `dev`), starts the
# gateway with exactly the command, args and env of the Deployment the operator generated,
# and shows an allow and two denies with curl. The same path is the e2e test
# (e2e/tests/end_to_end.rs). Everything keeps running afterwards; `make cluster-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(realpath -m "${CLUSTER_DIR:-$PWD/.cluster}")
target=${CARGO_TARGET_DIR:-$PWD/target}
mkdir -p "$dir"
pids="$dir/demo.pids"

echo "==> building the binaries"
cargo build -q -p rustronaut-operator -p rustronaut-gateway -p rustronaut-cli -p rustronaut-e2e --bins

echo "==> starting a local control plane (the first run builds it from the Kubernetes Go modules: ~30 min)"
env_lines=$(bash e2e/scripts/cluster.sh up "$dir")
eval "$(grep '^export' <<<"$env_lines")"
: >"$pids"

echo "==> installing the rustronaut.io CRDs"
kubectl apply --server-side --field-manager=rustronaut-demo -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/tenants.rustronaut.io crd/resources.rustronaut.io \
	crd/gateways.rustronaut.io crd/policies.rustronaut.io >/dev/null

echo "==> running the scenario's embedded policy tests offline (what a GitOps CI job runs)"
"$target/debug/rustronaut" policy test e2e/manifests/ | tail -3

echo "==> starting the operator (log: $dir/operator.log)"
nohup "$target/debug/rustronaut-operator" --leader-elect false --metrics-listen 127.0.0.1:18090 \
	>"$dir/operator.log" 2>&1 </dev/null &
echo $! >>"$pids"

echo "==> starting the upstream: a web server on this machine, port 18081"
mkdir -p "$dir/www" && echo "hello from the demo upstream" >"$dir/www/index.html"
nohup python3 -m http.server 18081 --bind 0.0.0.0 --directory "$dir/www" >"$dir/upstream.log" 2>&1 </dev/null &
echo $! >>"$pids"

# EndpointSlices refuse loopback addresses: name this machine's address.
host_ip=$(ip -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)
host_ip=${host_ip:-$(hostname -I | awk '{print $1}')}
echo "==> applying e2e/manifests/demo.yaml (upstream at $host_ip:18081)"
sed "s/\${HOST_IP}/$host_ip/" e2e/manifests/demo.yaml | kubectl apply --server-side --field-manager=rustronaut-demo -f -

echo "==> waiting for the operator to generate the gateway's Deployment and snapshot"
for _ in $(seq 1 300); do
	kubectl -n demo-apps get deployment hello-gw >/dev/null 2>&1 &&
		kubectl -n demo-apps get secret hello-gw-snapshot >/dev/null 2>&1 && break
	sleep 0.2
done
kubectl -n demo-apps get deployment/hello-gw secret/hello-gw-snapshot >/dev/null
pod=""
for _ in $(seq 1 300); do
	pod=$(kubectl -n demo-apps get pods -l app.kubernetes.io/instance=hello-gw -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
	[ -n "$pod" ] && break
	sleep 0.2
done

# The exact command and args of the generated Deployment; POD_NAME as the Downward API sets it.
cmd=$(kubectl -n demo-apps get deployment hello-gw -o jsonpath='{.spec.template.spec.containers[0].command[0]}')
mapfile -t args < <(kubectl -n demo-apps get deployment hello-gw -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
echo "==> starting the gateway as the Deployment says: $cmd ${args[*]} (POD_NAME=$pod; log: $dir/gateway.log)"
POD_NAME=$pod nohup "$target/debug/$cmd" "${args[@]}" >"$dir/gateway.log" 2>&1 </dev/null &
echo $! >>"$pids"
for _ in $(seq 1 300); do
	curl -s -o /dev/null 127.0.0.1:9901/readyz && [ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:9901/readyz)" = 200 ] && break
	sleep 0.2
done

mint=gateway/examples/standalone/mint-token.sh
dev=$($mint alice dev)
sales=$($mint bob sales)
show() {
	echo "\$ $1"
	eval "$1" | sed 's/^/    /'
	echo
}
echo
echo "==> through the gateway"
show "curl -s -w ' -> %{http_code}\n' -H 'Host: hello.demo.localhost' -H \"Authorization: Bearer \$($mint alice dev)\" http://127.0.0.1:18080/"
show "curl -s -w ' -> %{http_code}\n' -H 'Host: hello.demo.localhost' http://127.0.0.1:18080/"
show "curl -s -w ' -> %{http_code}\n' -H 'Host: hello.demo.localhost' -H \"Authorization: Bearer \$($mint bob sales)\" http://127.0.0.1:18080/"
unset dev sales
echo "==> kubectl get rustronaut -A"
kubectl get rustronaut -A

cat <<EOF2

Everything keeps running. Try:
$(grep '^export' <<<"$env_lines")
  kubectl -n demo-apps edit policy developers      # change the group: enforced within a second
  kubectl -n demo-apps get gateway hello-gw -o yaml  # status: conditions, config version loaded
  curl -s 127.0.0.1:9901/metrics | grep rustronaut_gateway_requests
  tail -f $dir/gateway.log                          # one JSON line per decision
Stop it all with: make cluster-down
EOF2
