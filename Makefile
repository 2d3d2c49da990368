# Rustronaut developer entry points. The two that matter most (see README.md):
#   make demo   a local demo on an embedded default
#   make test   every test, against a real control plane built from the Kubernetes Go modules
SHELL := /bin/bash
.DEFAULT_GOAL := help
CLUSTER_DIR ?= $(CURDIR)/.cluster
TOOLS := bash e2e/scripts/tools.sh

.PHONY: help demo test tools images cluster-up cluster-down crds crds-check chart install-yaml docs policy-test lint fmt bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

tools: ## build the Go tools (control plane, kwok, helm, wireguard-go) if not cached
	@$(TOOLS) build >/dev/null

test: tools ## run every test (unit, integration against a real apiserver)
	cargo build --workspace --bins
	RUSTRONAUT_TOOLS_BIN=$$($(TOOLS) bindir) cargo test --workspace

demo: ## a local cluster with a real node, the operator installed by helm, a gateway pod, curl through it (root)
	@bash e2e/scripts/demo.sh

images: ## build the container images offline into target/<profile>/images (PROFILE=release for release binaries)
	@bash e2e/scripts/images.sh

cluster-up: ## start a local cluster (real node unless KWOK_ONLY=1) in the background and print how to use it
	@bash e2e/scripts/cluster.sh up $(CLUSTER_DIR)

cluster-down: ## stop the local cluster and leave the host as it was
	@bash e2e/scripts/cluster.sh down $(CLUSTER_DIR)

crds: ## regenerate the CRD YAML and the API reference from the Rust types
	cargo run -q -p rustronaut-crds --bin rustronaut-crdgen -- write

crds-check: ## fail if the committed CRD YAML or reference differ from the types
	cargo run -q -p rustronaut-crds --bin rustronaut-crdgen -- check

docs: ## build the documentation site (mdBook) into target/book
	@bash e2e/scripts/docs.sh

install-yaml: tools ## regenerate deploy/install.yaml (CRDs + operator for kubectl apply) from the chart
	HELM=$$($(TOOLS) bindir)/helm bash e2e/scripts/install-yaml.sh deploy/install.yaml

chart: ## regenerate the Helm chart's RBAC from operator/src/rbac.rs
	UPDATE_CHART=1 cargo test -q -p rustronaut-operator --test chart

policy-test: ## run the embedded tests of the example Policies (as a GitOps CI job would)
	cargo run -q -p rustronaut-cli -- policy test examples/

fmt: ## format the code
	cargo fmt --all

lint: ## formatting and clippy, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean: cluster-down ## stop the cluster and remove build output
	cargo clean

.PHONY: bench-tunnel
bench-tunnel: tools ## tunnel throughput and RSS: hub+connector vs a wireguard-go pair (root)
	bash tunnel/bench/run.sh

.PHONY: bench-operator
bench-operator: tools ## operator at scale: 50 tenants, 1,000 Resources, 1,000 Policies (release operator)
	cargo build --release -p rustronaut-operator --bin rustronaut-operator -p rustronaut-gateway --bin rustronaut-gateway
	cargo build -q --workspace --bins
	SCALE_TENANTS=$${SCALE_TENANTS:-50} SCALE_PER_TENANT=$${SCALE_PER_TENANT:-20} SCALE_CHANGES=$${SCALE_CHANGES:-50} \
	  RUSTRONAUT_OPERATOR_BIN=$${CARGO_TARGET_DIR:-target}/release/rustronaut-operator \
	  RUSTRONAUT_GATEWAY_BIN=$${CARGO_TARGET_DIR:-target}/release/rustronaut-gateway \
	  RUSTRONAUT_TOOLS_BIN=$$($(TOOLS) bindir) cargo test -p rustronaut-e2e --test scale -- --nocapture

.PHONY: bench-console
bench-console: tools ## console pages at 1,000 objects: server time next to the bare API call, RSS (release console)
	cargo build --release -p rustronaut-console --bin rustronaut-console
	cargo build -q -p rustronaut-console --bins
	CONSOLE_OBJECTS=$${CONSOLE_OBJECTS:-1000} CONSOLE_ROUNDS=$${CONSOLE_ROUNDS:-20} \
	  RUSTRONAUT_CONSOLE_BIN=$${CARGO_TARGET_DIR:-target}/release/rustronaut-console \
	  RUSTRONAUT_TOOLS_BIN=$$($(TOOLS) bindir) cargo test -p rustronaut-console --test scale -- --nocapture

.PHONY: bench-sidecar
bench-sidecar: ## the sidecar vs an nginx sidecar and direct, same run: added p50/p99 at 1,000 req/s, idle RSS
	bash gateway/bench/sidecar.sh

.PHONY: bench-gateway
bench-gateway: ## gateway vs nginx, HAProxy and direct, same run: HTTP/1.1 + HTTP/2 req/s, fixed-rate p50/p99, RSS, TCP
	bash gateway/bench/run.sh

bench: bench-gateway bench-sidecar bench-tunnel bench-operator bench-console ## every benchmark that compares with a reference (root; installs nginx, haproxy, h2load, iperf3)
	cargo bench -p rustronaut-contract --bench evaluate --bench jwt -- --warm-up-time 1 --measurement-time 3
