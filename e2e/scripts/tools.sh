#!/usr/bin/env bash
# Builds (once) and locates the Go-built tools the tests and the demo need:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kubelet, kube-proxy, and the pause binary (build/pause/linux/pause.c
#   of the same module, static)                                        (e2e/tools/k8s wrapper module)
#   kube-router (its firewall is the real node's NetworkPolicy enforcer),
#   coredns (the real node's cluster DNS)                              (pinned `go install`)
#   etcd                                                               (e2e/tools/etcd wrapper module)
#   kwok, helm, wireguard-go, an OIDC provider, h2spec                 (pinned `go install`)
#   promtool and promql-check (the PromQL parser on dashboards)        (e2e/tools/prometheus wrapper module)
#   prometheus-operator's ServiceMonitor, PodMonitor, PrometheusRule CRDs (YAML from its Go module)
#   cert-manager-controller (cert-manager's own controllers, CA issuer)  (e2e/tools/cert-manager wrapper module)
#   and cert-manager's six CRDs                                        (YAML from its Go module)
#   grafana-schema (dashboards against Grafana's own schema types)      (e2e/tools/grafana-schema wrapper module)
#
# Every tool lands in its own directory under the cache, keyed by its version and by the hash of
# the wrapper module's go.mod/go.sum, and is rebuilt only when that directory is absent. The cache
# lives outside the clone ($RUSTRONAUT_CACHE, default ~/.cache/rustronaut) so a second CI run on the
# same machine is fast, but nothing depends on it being there.
#
# Usage:
#   e2e/scripts/tools.sh build      build whatever is missing, then print the bin directory
#   e2e/scripts/tools.sh bindir     same as build (kept for readability at call sites)
#   e2e/scripts/tools.sh versions   print the pinned versions
set -euo pipefail

# ---- pinned versions: bump here (and regenerate the wrapper go.mod with gen-k8s-gomod.sh) ----
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
# wireguard-go has no useful semver tag (the only one is a stale v0.0.20201121): pin a
# pseudo-version, which is wireguard-go 0.0.20250522.
WIREGUARD_GO_VERSION=v0.0.0-20250521234502-f333402bd9cb
# A real OpenID Connect provider for the gateway's browser-login tests: zitadel/oidc's example
# OP (an OpenID-certified library), served over HTTPS by the small wrapper module in
# e2e/tools/oidc-provider (users, client and redirect URIs from the environment). Dex, the
# ecosystem's usual choice, is not installable from the Go module proxy: its v2 tags have no
# /v2 module path, so the newest version the proxy serves is v2.13.0+incompatible (2018).
ZITADEL_OIDC_VERSION=v3.52.0
# HTTP/2 conformance for the gateway's HTTPS listener (gateway/tests/h2spec.rs). v2.2.1 is the
# newest release; its module has no go.mod, so the proxy serves it as +incompatible.
H2SPEC_VERSION=v2.2.1+incompatible
# kstatus, the library Flux, kpt and cli-utils compute an object's readiness with: the small
# checker in e2e/tools/kstatus runs it on the operator's objects (operator/tests/kstatus.rs).
CLI_UTILS_VERSION=v0.37.2
# gopher-lua, the Lua interpreter Argo CD embeds (the version of Argo CD v3's go.mod): the
# checker in e2e/tools/argocd-health runs deploy/argocd/health.lua as Argo CD would.
GOPHER_LUA_VERSION=v1.1.1
# Prometheus: promtool checks and unit-tests the chart's alert rules, and the small checker in
# e2e/tools/prometheus parses the Grafana dashboards' queries with the same PromQL parser
# (e2e/tests/observability.rs). Both are built from this module version.
PROMETHEUS_VERSION=v0.316.0
# prometheus-operator: its CRDs (not a binary), so the chart's monitors and rules are dry-run
# against the real schemas. v0.85.0 is the newest version the Go module proxy serves.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
# cert-manager: its real controllers (issuers, the CA CertificateRequest signer, the approver and
# the Certificate life cycle), wired by the small main in e2e/tools/cert-manager because
# upstream's cmd/controller is a separate module the proxy does not serve, and its CRDs
# (deploy/crds, plain YAML). v1.21.2 is the newest version the Go module proxy serves.
CERT_MANAGER_VERSION=v1.21.2
# Grafana's Foundation SDK: the schema types of Grafana dashboards and panel plugins, which
# e2e/tools/grafana-schema decodes the chart's dashboards with, strictly. Grafana's
# dashboard-linter is not served by the Go module proxy (no version listed, v0.1.1 refused),
# so its rules are checked by e2e/tests/observability.rs and this adds the schema.
GRAFANA_FOUNDATION_SDK_VERSION=v0.0.22
# NetworkPolicy enforcer of the real node (only its firewall runs; e2e/src/node.rs).
KUBE_ROUTER_VERSION=v2.1.0
# Cluster DNS of the real node (a host process on the node address; e2e/src/node.rs), so pods
# resolve Service names (`<svc>.<ns>.svc`) as on any cluster.
COREDNS_VERSION=v1.15.0

here=$(cd "$(dirname "$0")" && pwd)
tools_src=$(cd "$here/../tools" && pwd)
cache=${RUSTRONAUT_CACHE:-$HOME/.cache/rustronaut}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf 'tools.sh: %s\n' "$*" >&2; }

# Short content hash of a wrapper module, so editing go.mod/go.sum rebuilds.
modhash() { cat "$1/go.mod" "$1/go.sum" | sha256sum | cut -c1-12; }
# Also the sources, for the project's own small Go programs.
srchash() { cat "$1/go.mod" "$1/go.sum" "$1"/*.go | sha256sum | cut -c1-12; }

# Builds into a temporary directory and renames it into place, so an interrupted build never
# leaves a half-filled cache directory that would later be taken as complete.
build_into() { # <final-dir> <command...>
	local final=$1; shift
	[ -d "$final" ] && return 0
	local tmp="$final.tmp.$$"
	rm -rf "$tmp"; mkdir -p "$tmp"
	log "building $(basename "$final") (first time on this machine; cached afterwards)"
	local start=$SECONDS
	OUT="$tmp" "$@"
	mv "$tmp" "$final"
	log "built $(basename "$final") in $((SECONDS - start))s"
}

build_k8s() {
	local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
	local ldf="-s -w" p
	# The same variables upstream's hack/lib/version.sh sets; without them the server reports
	# v0.0.0-master and helm's kubeVersion checks and kwok's version detection misbehave.
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
		ldf="$ldf -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
		ldf="$ldf -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	(cd "$tools_src/k8s" && go build -trimpath -ldflags "$ldf" -o "$OUT/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
	# The pod sandbox ("pause") of the real node: no registry is reachable to pull it, and its
	# source ships in the module. Static, so its image needs no libraries.
	local src
	src="$(cd "$tools_src/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
	cc -Os -static -Wall -DVERSION="$K8S_VERSION" -o "$OUT/pause" "$src"
	strip "$OUT/pause"
}

build_coredns() {
	GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

build_kube_router() {
	# CGO off like every other tool here: kube-router links no C for its firewall.
	GOBIN="$OUT" go install -trimpath -ldflags "-s -w" \
		"github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
}

build_etcd() {
	(cd "$tools_src/etcd" && go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
	GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
	# The kwok binary embeds no lifecycle stages (kwokctl writes them into its config), and
	# without stages it refuses to start. Assemble kwok's own published "fast" stages from the
	# module it was built from: nodes become Ready (leases renewed), scheduled pods Running.
	local stages
	stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
	local f first=1
	for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
		pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
		[ $first = 1 ] || echo "---"
		first=0
		cat "$stages/$f"
	done >"$OUT/kwok-stages.yaml"
}

build_helm() {
	local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
	GOBIN="$OUT" go install -trimpath -ldflags "-s -w \
		-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
		-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
		-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_wireguard_go() {
	GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION"
	mv "$OUT/wireguard" "$OUT/wireguard-go"
}

build_h2spec() {
	GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION"
}

build_oidc_provider() {
	(cd "$tools_src/oidc-provider" && go build -trimpath -ldflags "-s -w" -o "$OUT/oidc-provider" .)
}

build_kstatus() {
	(cd "$tools_src/kstatus" && go build -trimpath -ldflags "-s -w" -o "$OUT/kstatus" .)
}

build_argocd_health() {
	(cd "$tools_src/argocd-health" && go build -trimpath -ldflags "-s -w" -o "$OUT/argocd-health" .)
}

# remove_all_sd: upstream's build tag that leaves out the service-discovery plugins (AWS, Azure,
# GCE, OpenStack, ... SDKs), which `promtool check rules` / `test rules` never use. Measured on a
# 2-core machine, cold Go build cache: 336 s with the tag; without it, over 10 minutes and
# about 1.5 GB of build cache.
build_prometheus() {
	(cd "$tools_src/prometheus" && go build -tags remove_all_sd -trimpath -ldflags "-s -w" -o "$OUT/" \
		github.com/prometheus/prometheus/cmd/promtool && \
		go build -trimpath -ldflags "-s -w" -o "$OUT/promql-check" .)
}

fetch_prometheus_operator_crds() {
	local dir k
	dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] || { log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: no module directory"; return 1; }
	for k in servicemonitors podmonitors prometheusrules; do
		cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$k.yaml" "$OUT/"
	done
}

# The version the wrapper module requires (its go.mod decides what is built); refuses to go on if
# CERT_MANAGER_VERSION was bumped without the go.mod, or the other way round.
cert_manager_module_dir() {
	local v
	v=$(cd "$tools_src/cert-manager" && go list -m -f '{{.Version}}' github.com/cert-manager/cert-manager)
	[ "$v" = "$CERT_MANAGER_VERSION" ] || {
		log "e2e/tools/cert-manager/go.mod requires cert-manager $v, CERT_MANAGER_VERSION is $CERT_MANAGER_VERSION"
		return 1
	}
	(cd "$tools_src/cert-manager" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
}

# AppVersion as upstream's release build sets it (the User-Agent and the version in logs).
build_cert_manager() {
	cert_manager_module_dir >/dev/null
	(cd "$tools_src/cert-manager" && go build -trimpath \
		-ldflags "-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION" \
		-o "$OUT/cert-manager-controller" .)
}

# deploy/crds of the same module: plain CustomResourceDefinitions, controller-gen's output (the
# Helm chart's crd-*.yaml templates are made from it by adding `{{ if .Values.crds.enabled }}`
# and labels), one served version (v1) and no conversion webhook, so they apply as they are.
# Copied into their own directory (cert-manager-crds/ in the bin dir): the harness
# (e2e/src/certmanager.rs) applies every file there.
fetch_cert_manager_crds() {
	local dir f
	dir=$(cert_manager_module_dir)
	mkdir -p "$OUT/cert-manager-crds"
	for f in cert-manager.io_certificaterequests cert-manager.io_certificates cert-manager.io_clusterissuers \
		cert-manager.io_issuers acme.cert-manager.io_challenges acme.cert-manager.io_orders; do
		cp "$dir/deploy/crds/$f.yaml" "$OUT/cert-manager-crds/"
	done
}

build_grafana_schema() {
	local v
	v=$(cd "$tools_src/grafana-schema" && go list -m -f '{{.Version}}' github.com/grafana/grafana-foundation-sdk/go)
	[ "$v" = "$GRAFANA_FOUNDATION_SDK_VERSION" ] || {
		log "e2e/tools/grafana-schema/go.mod requires grafana-foundation-sdk $v, GRAFANA_FOUNDATION_SDK_VERSION is $GRAFANA_FOUNDATION_SDK_VERSION"
		return 1
	}
	(cd "$tools_src/grafana-schema" && go build -trimpath -ldflags "-s -w" -o "$OUT/grafana-schema" .)
}

build_all() {
	command -v go >/dev/null || { log "go is not installed: the control plane is built from Go modules"; exit 1; }
	local k8s_dir="$cache/tools/kubernetes-$K8S_VERSION-$(modhash "$tools_src/k8s")"
	local etcd_dir="$cache/tools/etcd-$ETCD_VERSION-$(modhash "$tools_src/etcd")"
	local kwok_dir="$cache/tools/kwok-$KWOK_VERSION"
	local helm_dir="$cache/tools/helm-$HELM_VERSION"
	local wg_dir="$cache/tools/wireguard-go-$WIREGUARD_GO_VERSION"
	local oidc_dir="$cache/tools/oidc-provider-$ZITADEL_OIDC_VERSION-$(modhash "$tools_src/oidc-provider")"
	local h2spec_dir="$cache/tools/h2spec-$H2SPEC_VERSION"
	local kstatus_dir="$cache/tools/kstatus-$CLI_UTILS_VERSION-$(srchash "$tools_src/kstatus")"
	local lua_dir="$cache/tools/argocd-health-$GOPHER_LUA_VERSION-$(srchash "$tools_src/argocd-health")"
	local prom_dir="$cache/tools/prometheus-$PROMETHEUS_VERSION-$(srchash "$tools_src/prometheus")"
	local promop_dir="$cache/tools/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
	local router_dir="$cache/tools/kube-router-$KUBE_ROUTER_VERSION"
	local coredns_dir="$cache/tools/coredns-$COREDNS_VERSION"
	local certmgr_dir="$cache/tools/cert-manager-$CERT_MANAGER_VERSION-$(srchash "$tools_src/cert-manager")"
	local certmgr_crds_dir="$cache/tools/cert-manager-crds-$CERT_MANAGER_VERSION-$(modhash "$tools_src/cert-manager")"
	local grafana_dir="$cache/tools/grafana-schema-$GRAFANA_FOUNDATION_SDK_VERSION-$(srchash "$tools_src/grafana-schema")"
	build_into "$etcd_dir" build_etcd
	build_into "$kwok_dir" build_kwok
	build_into "$helm_dir" build_helm
	build_into "$wg_dir" build_wireguard_go
	build_into "$oidc_dir" build_oidc_provider
	build_into "$h2spec_dir" build_h2spec
	build_into "$kstatus_dir" build_kstatus
	build_into "$lua_dir" build_argocd_health
	build_into "$prom_dir" build_prometheus
	build_into "$promop_dir" fetch_prometheus_operator_crds
	build_into "$certmgr_dir" build_cert_manager
	build_into "$certmgr_crds_dir" fetch_cert_manager_crds
	build_into "$grafana_dir" build_grafana_schema
	build_into "$k8s_dir" build_k8s
	build_into "$router_dir" build_kube_router
	build_into "$coredns_dir" build_coredns
	# One directory of symlinks per combination of versions, so two clones pinned to different
	# versions on one machine never see each other's binaries.
	local key; key=$(printf '%s\n' "$k8s_dir" "$etcd_dir" "$kwok_dir" "$helm_dir" "$wg_dir" "$oidc_dir" "$h2spec_dir" "$router_dir" "$coredns_dir" "$kstatus_dir" "$lua_dir" "$prom_dir" "$promop_dir" "$certmgr_dir" "$certmgr_crds_dir" "$grafana_dir" | sha256sum | cut -c1-12)
	local bin="$cache/bin/$key"
	if [ ! -d "$bin" ]; then
		mkdir -p "$bin.tmp.$$"
		local d f
		for d in "$k8s_dir" "$etcd_dir" "$kwok_dir" "$helm_dir" "$wg_dir" "$oidc_dir" "$h2spec_dir" "$router_dir" "$coredns_dir" "$kstatus_dir" "$lua_dir" "$prom_dir" "$promop_dir" "$certmgr_dir" "$certmgr_crds_dir" "$grafana_dir"; do
			for f in "$d"/*; do ln -sf "$f" "$bin.tmp.$$/$(basename "$f")"; done
		done
		mv "$bin.tmp.$$" "$bin" 2>/dev/null || rm -rf "$bin.tmp.$$"
	fi
	echo "$bin"
}

case "${1:-build}" in
build | bindir) build_all ;;
versions)
	printf 'kubernetes %s\netcd %s\nkwok %s\nhelm %s\nwireguard-go %s\nzitadel-oidc %s\nh2spec %s\nkube-router %s\ncoredns %s\ncli-utils %s\ngopher-lua %s\nprometheus %s\nprometheus-operator %s\ncert-manager %s\ngrafana-foundation-sdk %s\n' \
		"$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$HELM_VERSION" "$WIREGUARD_GO_VERSION" "$ZITADEL_OIDC_VERSION" \
		"$H2SPEC_VERSION" "$KUBE_ROUTER_VERSION" "$COREDNS_VERSION" "$CLI_UTILS_VERSION" "$GOPHER_LUA_VERSION" "$PROMETHEUS_VERSION" "$PROMETHEUS_OPERATOR_VERSION" "$CERT_MANAGER_VERSION" "$GRAFANA_FOUNDATION_SDK_VERSION" ;;
*) echo "usage: $0 [build|bindir|versions]" >&2; exit 2 ;;
esac
