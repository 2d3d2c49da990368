#!/usr/bin/env bash
# Renders deploy/install.yaml: the CRDs and the operator (namespace rustronaut-system, the
# chart's default values) as one file for `kubectl apply --server-side -f`, for people who do
# not use Helm. Generated from charts/rustronaut so the two never differ; e2e/tests/helm.rs
# fails when the committed file is stale and dry-runs it against the real API server.
#
#   bash e2e/scripts/install-yaml.sh [OUT]      (default deploy/install.yaml; HELM=path/to/helm)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-deploy/install.yaml}
helm=${HELM:-helm}
ns=rustronaut-system
chart=charts/rustronaut
version=$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' "$chart/Chart.yaml")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
	echo "# Rustronaut $version: the CRDs and the operator in namespace $ns."
	echo "#   kubectl apply --server-side -f install.yaml"
	echo "# Generated from charts/rustronaut with its default values by e2e/scripts/install-yaml.sh"
	echo "# (make install-yaml); do not edit. For other values, use the chart."
	echo "apiVersion: v1"
	echo "kind: Namespace"
	echo "metadata:"
	echo "  name: $ns"
	for crd in "$chart"/crds/*.yaml; do
		echo "---"
		grep -v '^---$' "$crd"
	done
	echo "---"
	# No cluster is consulted (`helm template`): the one-release guard's lookup is empty.
	HELM_CACHE_HOME="$tmp.d/cache" HELM_CONFIG_HOME="$tmp.d/config" HELM_DATA_HOME="$tmp.d/data" \
		"$helm" template rustronaut "$chart" --namespace "$ns" --skip-tests |
		# Not Helm's objects once applied with kubectl: drop the labels that would say so.
		grep -v -e '^---$' -e 'app.kubernetes.io/managed-by: Helm' -e 'helm.sh/chart: ' | awk 'BEGIN{first=1} /^# Source:/ {if (!first) print "---"; first=0} {print}'
} >"$tmp"
rm -rf "$tmp.d"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
trap - EXIT
