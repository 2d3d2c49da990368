#!/usr/bin/env bash
# Installs the system packages and Rust components the build and the tests need, only where
# missing, so it is quick on a machine that has them. Run as root (CI and the dev machines are).
set -euo pipefail

# command (or file) -> Debian package
declare -A want=(
	[cmake]=cmake           # pingora's zlib-ng build
	[cc]=build-essential
	[pkg-config]=pkg-config
	[ip]=iproute2           # network namespaces for tunnel tests
	[curl]=curl
	[openssl]=openssl
	# The real node of the test ground (e2e/src/node.rs) and the images (e2e/src/image.rs).
	[containerd]=containerd
	[runc]=runc
	[/usr/lib/cni/bridge]=containernetworking-plugins
	[iptables]=iptables
	[nft]=nftables          # to delete the iptables-nft tables the node created
	[conntrack]=conntrack
	[ipset]=ipset
	[/bin/busybox]=busybox-static   # the test workloads' image (static)
	[/etc/ssl/certs/ca-certificates.crt]=ca-certificates
	[strip]=binutils
	[systemd-analyze]=systemd   # verifies the site connector's unit (tunnel/tests/systemd.rs)
	# The console's browser tests (console/tests/browser.rs): headless Chromium over WebDriver.
	[chromium]=chromium
	[chromedriver]=chromium-driver
	[/usr/share/fonts/truetype/liberation]=fonts-liberation   # a Recommends of chromium: text in its screenshots
)
missing=()
for cmd in "${!want[@]}"; do
	if [[ $cmd == /* ]]; then
		[ -e "$cmd" ] || missing+=("${want[$cmd]}")
	else
		command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
	fi
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
