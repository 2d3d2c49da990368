#!/usr/bin/env bash
# `make demo`: the local demo on an embedded default.
#
# Brings up a real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok
# nodes) built from the Kubernetes Go modules, installs the rustronaut.io CRDs, applies the
# example tenant, gateway, resources and policies, and shows what the API server made of them.
# The cluster keeps running afterwards for you to explore; `make cluster-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${CLUSTER_DIR:-$PWD/.cluster}

echo "==> starting a local control plane (the first run builds it from the Kubernetes Go modules: ~20 min)"
env_lines=$(bash e2e/scripts/cluster.sh up "$dir")
eval "$(grep '^export' <<<"$env_lines")"

echo "==> installing the rustronaut.io CRDs"
kubectl apply --server-side --field-manager=rustronaut-demo -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/tenants.rustronaut.io crd/resources.rustronaut.io \
	crd/gateways.rustronaut.io crd/policies.rustronaut.io >/dev/null

echo "==> running the examples' embedded policy tests offline (what a GitOps CI job runs)"
cargo build -q -p rustronaut-cli
"${CARGO_TARGET_DIR:-target}/debug/rustronaut" policy test examples/ | tail -4

echo "==> applying examples/ (one tenant, a gateway with a tunnel site, three resources, policies)"
kubectl apply --server-side --field-manager=rustronaut-demo -f examples/

echo
echo "==> kubectl get rustronaut -A"
kubectl get rustronaut -A

echo
echo "==> the API server refuses an invalid object with the rule's own message:"
kubectl apply --dry-run=server -f - <<'YAML' 2>&1 | sed 's/^/    /' || true
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {name: too-open, namespace: acme-apps}
spec:
  targetRefs: [{name: grafana}]
  action: Allow
  rules: [{name: everyone, from: [{}]}]
YAML

cat <<EOF

The control plane keeps running. Explore it with:
$(grep '^export' <<<"$env_lines")
  kubectl explain policies.spec.rules.from
  kubectl get tenants,gateways,resources,policies -A
Stop it with: make cluster-down
EOF
