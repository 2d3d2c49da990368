#!/usr/bin/env bash
# Builds the documentation site from docs/ (mdBook; table of contents docs/SUMMARY.md) into
# target/book. mdBook comes from crates.io, built once into ~/.cache/rustronaut/tools/
# mdbook-<version> (only the HTML renderer and search: no file watcher, no web server).
#
#   bash e2e/scripts/docs.sh                 (make docs)
#   bash e2e/scripts/docs.sh -d /abs/dir     into another directory (the tests do)
set -euo pipefail
cd "$(dirname "$0")/../.."
MDBOOK_VERSION=0.4.52
dir="$HOME/.cache/rustronaut/tools/mdbook-$MDBOOK_VERSION"
if [ ! -x "$dir/bin/mdbook" ]; then
	echo "docs.sh: building mdbook $MDBOOK_VERSION (first time on this machine; cached afterwards)" >&2
	rm -rf "$dir.tmp.$$"
	# Its own target directory: not the workspace's (CI points CARGO_TARGET_DIR at that).
	env -u CARGO_TARGET_DIR cargo install mdbook --version "$MDBOOK_VERSION" --locked \
		--no-default-features --features search --root "$dir.tmp.$$" >&2
	mv "$dir.tmp.$$" "$dir" 2>/dev/null || rm -rf "$dir.tmp.$$"
fi
"$dir/bin/mdbook" build docs "$@"
[ $# -gt 0 ] || echo "docs.sh: the site is in target/book (open target/book/index.html)" >&2
