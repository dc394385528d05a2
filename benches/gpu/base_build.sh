#!/usr/bin/env bash
# Build `lowbit` at another commit (default: the one before HEAD) and put it, compressed, at
# .gpu-bundle/bin/lowbit-base.gz, for the A/B steps of sweep.sh (ab, lrprologue) that time it
# against the bundle's own build in the same call. Run it here after ../shared/gpu/bundle.sh
# (which empties .gpu-bundle/):
#   bash benches/gpu/base_build.sh [COMMIT]
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
commit=$(git rev-parse "${1:-HEAD~1}")
[ -d .gpu-bundle/bin ] || { echo "no .gpu-bundle/bin: run ../shared/gpu/bundle.sh first" >&2; exit 2; }
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git worktree add --detach "$tree" "$commit" >/dev/null
# A target directory of its own beside the main one, kept between calls (incremental builds).
CARGO_TARGET_DIR="$root/target/base-build" cargo build --release --bin lowbit \
  --manifest-path "$tree/Cargo.toml" >/dev/null
gzip -c "$root/target/base-build/release/lowbit" > .gpu-bundle/bin/lowbit-base.gz
echo "lowbit of $(git log -1 --format='%h %s' "$commit" | cut -c1-80) -> .gpu-bundle/bin/lowbit-base.gz"
