#!/usr/bin/env bash
# Installs the system packages and Rust components the build and the tests need, only where
# missing, so it is quick on a machine that has them. Run as root (CI and the dev machines are).
set -euo pipefail

# command -> Debian package
declare -A want=(
	[cmake]=cmake           # pingora's zlib-ng build
	[cc]=build-essential
	[pkg-config]=pkg-config
	[ip]=iproute2           # network namespaces for tunnel tests
	[curl]=curl
	[openssl]=openssl
)
missing=()
for cmd in "${!want[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for comp in rustfmt clippy; do
	if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
		rustup component add "$comp"
	fi
done
echo "system packages and Rust components present"
