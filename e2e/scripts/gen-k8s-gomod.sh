#!/usr/bin/env bash
# Regenerates e2e/tools/k8s/go.mod for a Kubernetes release: k8s.io/kubernetes requires each of
# its staging modules at v0.0.0 and points it into ./staging, which Go ignores in dependencies,
# so the wrapper replaces each one with the matching published v0.X.Y. The list is read from
# the release's own go.mod, never copied by hand.
#
#   e2e/scripts/gen-k8s-gomod.sh v1.36.3   (then update K8S_VERSION in tools.sh)
set -euo pipefail
kv=${1:?usage: $0 vX.Y.Z}
cd "$(dirname "$0")/../tools/k8s"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
go mod download "k8s.io/kubernetes@$kv"
mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$kv.mod"
godebug=$(awk '$1=="godebug"{print $2}' "$mod")
goline=$(awk '$1=="go"{print $2; exit}' "$mod")
{
	sed -n '1,/^module /p' go.mod | sed '$d'
	echo "module rustronaut.io/e2e/tools/k8s"
	echo
	echo "go $goline"
	echo
	echo "// Same as upstream k8s.io/kubernetes $kv: the main module's godebug applies to the binaries."
	echo "godebug $godebug"
	echo
	echo "tool ("
	for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
		printf '\tk8s.io/kubernetes/cmd/%s\n' "$c"
	done
	echo ")"
	echo
	echo "require k8s.io/kubernetes $kv"
	echo
	echo "replace ("
	awk -v v="v0.${kv#v1.}" '$2=="v0.0.0"{printf "\t%s => %s %s\n", $1, $1, v}' "$mod"
	echo ")"
} >go.mod.new
mv go.mod.new go.mod
rm -f go.sum
go mod tidy
echo "regenerated $(pwd)/go.mod for $kv; set K8S_VERSION=$kv in e2e/scripts/tools.sh"
