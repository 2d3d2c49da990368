#!/usr/bin/env bash
# `make demo`: Rustronaut on a real node, installed as a user would install it.
#
# Builds the binaries and the container images (no registry, no container engine: see
# e2e/src/image.rs), starts a local cluster whose control plane is built from the Kubernetes Go
# modules and whose node is real (containerd, runc, kubelet, kube-proxy, kube-router), installs
# the operator with `helm install charts/rustronaut`, applies e2e/manifests/demo.yaml (a tenant,
# a gateway, an upstream pod behind a Service, a Resource and an Allow policy for group `dev`),
# waits for the operator's gateway pod, and shows an allow and two denies with curl through the
# gateway's Service, plus the upstream refusing a direct call (the tenant's NetworkPolicy).
# Then the sidecar part (e2e/manifests/sidecar*.yaml, docs/sidecars.md): a workload whose pods
# get the rustronaut-sidecar container from the operator's webhook, called with a token, without,
# and with ServiceAccount tokens, and its application port refused to other pods. Last the web
# console (e2e/scripts/console-demo.sh): a pod from its image, a real OpenID provider, a
# scripted login, and the URL and login to use in a browser.
# The same path is the e2e test (e2e/tests/end_to_end.rs). Everything keeps running afterwards;
# `make cluster-down` stops it and leaves the host as it was.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(realpath -m "${CLUSTER_DIR:-$PWD/.cluster}")
target=${CARGO_TARGET_DIR:-$PWD/target}
mkdir -p "$dir"

if [ "$(id -u)" != 0 ]; then
	echo "make demo runs a real Kubernetes node (network interfaces, mounts, iptables): run it as root" >&2
	exit 1
fi

echo "==> building the binaries and the images (the first run compiles the workspace)"
bash e2e/scripts/images.sh | awk '{printf "    %-40s %6s MiB\n", $1, $4}'

echo "==> starting a local cluster with a real node (the first run builds it from the Kubernetes Go modules: ~30 min)"
env_lines=$(bash e2e/scripts/cluster.sh up "$dir")
eval "$(grep '^export' <<<"$env_lines")"
export HELM_CACHE_HOME="$dir/helm/cache" HELM_CONFIG_HOME="$dir/helm/config" HELM_DATA_HOME="$dir/helm/data"

echo "==> helm install rustronaut charts/rustronaut (operator and CRDs, images built above)"
helm upgrade --install rustronaut charts/rustronaut --namespace rustronaut-system --create-namespace \
	--set operator.image.repository=localhost/rustronaut/operator --set operator.image.tag=dev \
	--set gateway.image.repository=localhost/rustronaut/gateway --set gateway.image.tag=dev \
	--set operator.replicas=1 --set sidecar.enabled=true --wait --timeout 5m >/dev/null
kubectl -n rustronaut-system get pods -o wide

echo "==> running the scenario's embedded policy tests offline (what a GitOps CI job runs)"
"$target/debug/rustronaut" policy test e2e/manifests/ | tail -3

echo "==> kubectl apply -f e2e/manifests/demo.yaml"
kubectl apply --server-side --field-manager=rustronaut-demo -f e2e/manifests/demo.yaml
kubectl -n demo-apps rollout status deployment/hello --timeout=180s >/dev/null

echo "==> waiting for the operator's gateway pod"
for _ in $(seq 1 300); do
	kubectl -n demo-apps get deployment hello-gw >/dev/null 2>&1 && break
	sleep 0.2
done
kubectl -n demo-apps rollout status deployment/hello-gw --timeout=180s >/dev/null
kubectl -n demo-apps get pods -o wide
gw=$(kubectl -n demo-apps get service hello-gw -o jsonpath='{.spec.clusterIP}')
app=$(kubectl -n demo-apps get service hello -o jsonpath='{.spec.clusterIP}')

mint=gateway/examples/standalone/mint-token.sh
# A Service answers once its endpoints reach kube-proxy (a second or two after Ready).
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H 'Host: hello.demo.localhost' \
		-H "Authorization: Bearer $($mint alice dev)" "http://$gw:18080/")" = 200 ] && break
	sleep 0.3
done
show() {
	echo "\$ $1"
	eval "$1" 2>&1 | sed 's/^/    /'
	echo
}
echo
echo "==> through the gateway's Service ($gw), node $(kubectl get node rtn-node -o jsonpath='{.metadata.name}, runtime {.status.nodeInfo.containerRuntimeVersion}')"
show "curl -s -w ' -> %{http_code}\n' -H 'Host: hello.demo.localhost' -H \"Authorization: Bearer \$($mint alice dev)\" http://$gw:18080/"
show "curl -s -w ' -> %{http_code}\n' -H 'Host: hello.demo.localhost' http://$gw:18080/"
show "curl -s -w ' -> %{http_code}\n' -H 'Host: hello.demo.localhost' -H \"Authorization: Bearer \$($mint bob sales)\" http://$gw:18080/"
# A pod in namespace default that opens a TCP connection with busybox nc and prints the outcome.
probe() { # <ip> <port>
	local name=probe-$RANDOM phase=""
	kubectl run "$name" -n default --image=localhost/rustronaut/testkit:dev --image-pull-policy=Never \
		--restart=Never --command -- busybox nc -w 3 "$1" "$2" -e busybox true >/dev/null
	for _ in $(seq 1 60); do
		phase=$(kubectl -n default get pod "$name" -o jsonpath='{.status.phase}')
		[ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
		sleep 0.5
	done
	echo "\$ kubectl run $name -n default --image=localhost/rustronaut/testkit:dev --restart=Never --command -- busybox nc -w 3 $1 $2 -e busybox true"
	kubectl -n default logs "$name" 2>&1 | sed 's/^/    /'
	echo "    -> pod $phase ($([ "$phase" = Succeeded ] && echo connected || echo 'not connected'))"
	echo
	kubectl -n default delete pod "$name" --wait=false >/dev/null
}
echo "==> from a pod in another namespace: straight to the upstream's Service ($app), past the gateway,"
echo "    the tenant's NetworkPolicy (enforced by kube-router) refuses; the gateway's Service answers"
probe "$app" 80
probe "$gw" 18080

echo "==> the sidecar part: kubectl apply -f e2e/manifests/sidecar.yaml, then sidecar-workload.yaml"
echo "    (namespace demo-sidecar opts in to injection; Resource orders selects app=orders)"
kubectl apply --server-side --field-manager=rustronaut-demo -f e2e/manifests/sidecar.yaml >/dev/null
# The workload only once its snapshot is published: a pod created before its Resource exists
# runs without a sidecar (the Resource then reports UnprotectedPods).
kubectl -n demo-sidecar wait --for=condition=Programmed resource/orders --timeout=120s >/dev/null
kubectl apply --server-side --field-manager=rustronaut-demo -f e2e/manifests/sidecar-workload.yaml >/dev/null
for _ in $(seq 1 300); do
	kubectl -n demo-sidecar get deployment orders >/dev/null 2>&1 && break
	sleep 0.2
done
kubectl -n demo-sidecar rollout status deployment/orders --timeout=180s >/dev/null
kubectl -n demo-sidecar get pods -o 'custom-columns=POD:.metadata.name,CONTAINERS:.spec.containers[*].name,SIDECAR:.spec.initContainers[*].name,READY:.status.conditions[?(@.type=="Ready")].status'
orders=$(kubectl -n demo-sidecar get service orders -o jsonpath='{.spec.clusterIP}')
orders_pod=$(kubectl -n demo-sidecar get pods -l app=orders -o jsonpath='{.items[0].status.podIP}')
for _ in $(seq 1 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
		-H "Authorization: Bearer $($mint alice dev)" "http://$orders/")" = 200 ] && break
	sleep 0.3
done
echo
echo "==> through the orders Service ($orders), which points at the pod's sidecar (port 15080)"
show "curl -s -w ' -> %{http_code}\n' -H \"Authorization: Bearer \$($mint alice dev)\" http://$orders/"
show "curl -s -w ' -> %{http_code}\n' http://$orders/"
echo "==> callers inside the cluster prove their ServiceAccount (a projected token, audience rustronaut.io);"
echo "    the Policy allows demo-callers/checkout, not demo-callers/intruder"
show "curl -s -w ' -> %{http_code}\n' -H \"Authorization: Bearer \$(kubectl -n demo-callers create token checkout --audience rustronaut.io)\" http://$orders/"
show "curl -s -w ' -> %{http_code}\n' -H \"Authorization: Bearer \$(kubectl -n demo-callers create token intruder --audience rustronaut.io)\" http://$orders/"
echo "==> from a pod in another namespace, to the orders pod ($orders_pod): the sidecar port answers,"
echo "    the application's own port 8080 does not (the operator's NetworkPolicy orders-sidecar)"
probe "$orders_pod" 15080
probe "$orders_pod" 8080

echo "==> kubectl get rustronaut -A"
kubectl get rustronaut -A

echo
echo "==> the console (docs/console.md): e2e/scripts/console-demo.sh"
bash e2e/scripts/console-demo.sh "$dir"

cat <<EOF2

Everything keeps running. Try:
$(grep '^export' <<<"$env_lines")
  kubectl -n demo-apps edit policy developers       # change the group: enforced within a second
  kubectl -n demo-apps get gateway hello-gw -o yaml  # status: conditions, config version loaded
  kubectl -n demo-apps logs deploy/hello-gw          # one JSON line per decision
  kubectl -n demo-sidecar get resource orders -o yaml # status.workload: pods protected, unprotected
  kubectl -n demo-sidecar logs deploy/orders -c rustronaut-sidecar   # the sidecar's decisions
  kubectl -n rustronaut-system logs deploy/rustronaut-operator
  open the console's URL above and log in (the login is printed above)
Stop it all with: make cluster-down
EOF2
