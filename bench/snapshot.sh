#!/usr/bin/env bash
# bench/snapshot.sh [REV]: the committed code only, built apart from the shared working tree.
# Exports REV (default HEAD) into /tmp/bench-snap-<rev>, copies node_modules (its workspace links
# are relative, so they point into the copy), builds it with `tsc -b`, and prints the folder:
#   node "$(bench/snapshot.sh)/bench/run.js" --scale 1,5 --runs 3,1 --out "$PWD/bench/results"
# Other people's uncommitted edits (and a dist/ a half-done edit compiled) are then not measured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rev=$(git -C "$root" rev-parse --short "${1:-HEAD}")
dir=/tmp/bench-snap-$rev
rm -rf "$dir"
mkdir -p "$dir"
git -C "$root" archive "$rev" | tar -x -C "$dir"
cp -a "$root/node_modules" "$dir/"
echo "$rev" > "$dir/.bench-rev"
(cd "$dir" && npx tsc -b >&2)
echo "$dir"
