#!/usr/bin/env bash
# The whole test suite: set-up, formatting and lints, Rust unit and
# integration tests (real processes, real sockets, redis-rs), Python client
# tests (redis-py RedisCluster, redisai-py, redis-cli -c, redis-benchmark),
# offline validation of the Kubernetes manifests, the image and compose
# cluster end to end under Docker (skipped, saying so, when no Docker engine
# answers; --no-docker skips it), a short benchmark smoke run (pass
# --no-bench to skip it), and a short seeded chaos run with the proof that
# the checker catches a broken build (pass --no-chaos to skip it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BENCH=1
CHAOS=1
DOCKER=1
for a in "$@"; do
  case "$a" in
    --no-docker) DOCKER=0 ;;
    --no-bench) BENCH=0 ;;
    --no-chaos) CHAOS=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

. "$ROOT/scripts/env.sh"
export CARGO_TERM_COLOR=never
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "== build binaries"
cargo build -q -p tessera-node -p tessera-router
echo "== cargo test"
# Every end-to-end test starts its own cluster of debug nodes (each loading
# libtorch, ORT and tract at start). On this 2-core box, clusters forming
# while others run under load missed the routers' start-up wait, so the
# tests run one at a time, and routers wait up to 90 s.
export TESSERA_NODE_WAIT_SECS="${TESSERA_NODE_WAIT_SECS:-90}"
TESSERA_BIN_DIR="$CARGO_TARGET_DIR/debug" cargo test -q --workspace -- --test-threads=1 2>&1 | grep -vE '^\s*$|^running 0 tests|0 passed; 0 failed; 0 ignored; 0 measured'
echo "== pytest (real clients)"
TESSERA_BIN_DIR="$CARGO_TARGET_DIR/debug" "$HOME/.cache/tessera/venv/bin/python" -m pytest -q tests/python
echo "== deploy manifests (offline validation)"
./deploy/k8s/validate.sh
if [ $DOCKER = 1 ]; then
  echo "== deploy end to end: image, compose cluster, client tests, node kill, scale-out (debug binaries)"
  ./deploy/compose/e2e.sh --profile debug --no-build
fi
if [ $BENCH = 1 ]; then
  echo "== benchmark smoke run (short; full: scripts/bench.sh)"
  ./scripts/bench.sh --quick
fi
if [ $CHAOS = 1 ]; then
  echo "== chaos: short seeded run + broken-build proof (long runs: scripts/chaos.sh --soak 30)"
  ./scripts/chaos.sh --quick
fi
