#!/usr/bin/env bash
# Benchmarks Tessera's router against redis-server in the same run (release
# build). --quick for a short smoke run (what CI does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. "$ROOT/scripts/env.sh"
./scripts/setup.sh >/dev/null
# The same package set as chaos.sh (cargo's feature unification matches).
cargo build --release -q -p tessera-node -p tessera-router -p tessera-bench -p tessera-chaos
exec "$HOME/.cache/tessera/venv/bin/python" scripts/bench.py --bin-dir "$CARGO_TARGET_DIR/release" "$@"
