#!/usr/bin/env bash
# Chaos runs (see chaos/README.md): a real cluster, client workloads through
# the router, seeded faults, a linearizability check. Fails on any violation.
#
#   scripts/chaos.sh                 # 150 s of faults, random seed
#   scripts/chaos.sh --seed 42       # replay a seed
#   scripts/chaos.sh --soak 30       # 30 minutes
#   scripts/chaos.sh --quick         # CI: a short seeded run, a shorter one
#                                    # with TLS inside the cluster
#                                    # (--cluster-tls), then the broken-build
#                                    # proof (below)
#   scripts/chaos.sh --broken        # only the proof: a node built with the
#                                    # test-only `chaos-early-ack` feature
#                                    # (acks writes before commit) must FAIL
# Anything after `--` goes to tessera-chaos as is.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. "$ROOT/scripts/env.sh"
export CARGO_TERM_COLOR=never

SECS=150; SEED=""; SOAK=""; QUICK=0; BROKEN=0; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; SECS=100 ;;
    --broken) BROKEN=1 ;;
    --seed) SEED="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --soak) SOAK="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ $QUICK = 1 ] && [ -z "$SEED" ] && SEED=20261123

OUT="${TESSERA_CHAOS_OUT:-$ROOT/target/chaos}"
mkdir -p "$OUT"
REL="$CARGO_TARGET_DIR/release"
DBG="$CARGO_TARGET_DIR/debug"

# The same package set as bench.sh, so cargo's feature unification matches
# and neither script rebuilds what the other built.
echo "== chaos: building release binaries"
cargo build -q --release -p tessera-node -p tessera-router -p tessera-bench -p tessera-chaos
if [ $BROKEN = 0 ]; then
  args=(--bin-dir "$REL" --out "$OUT/run")
  [ -n "$SEED" ] && args+=(--seed "$SEED")
  if [ -n "$SOAK" ]; then args+=(--soak "$SOAK"); else args+=(--secs "$SECS"); fi
  echo "== chaos: ${args[*]} ${EXTRA[*]}"
  "$REL/tessera-chaos" "${args[@]}" "${EXTRA[@]}"
fi

if [ $QUICK = 1 ]; then
  # The same faults with mutual TLS on every link inside the cluster.
  echo "== chaos: a short run with TLS inside the cluster"
  "$REL/tessera-chaos" --bin-dir "$REL" --out "$OUT/tls" --seed "$SEED" --secs 45 --cluster-tls "${EXTRA[@]}"
fi

if [ $BROKEN = 1 ] || [ $QUICK = 1 ]; then
  # The proof that the harness can fail: a node that acknowledges writes
  # before they commit must be caught. A debug build, copied to its own
  # folder. It uses test.sh's package set, so only tessera-node is rebuilt,
  # and cargo keeps both variants cached.
  echo "== chaos: the broken build (chaos-early-ack) must be caught"
  BROKEN_DIR="$CARGO_TARGET_DIR/chaos-early-ack"
  mkdir -p "$BROKEN_DIR"
  cargo build -q -p tessera-node -p tessera-router --features tessera-node/chaos-early-ack
  cp "$DBG/tessera-node" "$DBG/tessera-router" "$DBG/tessera-admin" "$BROKEN_DIR/"
  cargo build -q -p tessera-node -p tessera-router
  set +e
  "$REL/tessera-chaos" --bin-dir "$BROKEN_DIR" --out "$OUT/broken" --seed "${SEED:-1}" --nodes 3 --secs 40 \
    --nemesis kill-leader,pause-leader,kill
  rc=$?
  set -e
  if [ $rc = 1 ]; then
    echo "chaos: the broken build was caught (as it must be)"
  else
    echo "chaos: the checker did NOT catch a node that acks before commit (exit $rc)" >&2
    exit 1
  fi
fi
