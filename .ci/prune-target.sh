#!/usr/bin/env bash
# Keeps the cached Cargo target directory from growing without bound across commits.
#
# Every commit's build writes a new test binary for each test target (about 170 MB each with
# debug line tables, ~9 GB per run), and Cargo never deletes the old ones: two CI runs on
# one machine filled its disk until the kubelet reported DiskPressure and no pod started.
# This keeps the newest executable of each name in <target>/debug/deps (the one the next
# build reuses or replaces) and deletes the rest; libraries are left alone, since several
# builds of one crate (versions, feature sets) are live at once.
#
# Usage: bash .ci/prune-target.sh <cargo target dir>
set -euo pipefail
deps=${1:?usage: prune-target.sh <cargo target dir>}/debug/deps
[ -d "$deps" ] || exit 0
before=$(du -sm "$deps" | cut -f1)
# Test and binary executables are named <name>-<16 hex digits>; newest first, skip the
# first of each name.
find "$deps" -maxdepth 1 -type f -perm -u+x -printf '%T@ %f\n' |
	grep -E ' [A-Za-z0-9_]+-[0-9a-f]{16}$' |
	sort -rn |
	awk '{ n = $2; sub(/-[0-9a-f]+$/, "", n); if (seen[n]++) print $2 }' |
	while read -r f; do rm -f -- "$deps/$f" "$deps/$f.d"; done
after=$(du -sm "$deps" | cut -f1)
echo "prune-target: $deps $before MB -> $after MB"
