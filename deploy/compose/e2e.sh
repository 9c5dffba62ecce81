#!/usr/bin/env bash
# End to end under Docker: builds the image, starts the compose cluster
# (3 nodes, 2 routers), runs the Python client tests against it, kills a node
# that leads shards under a write load and checks nothing acknowledged is
# lost, restarts it and waits for it to catch up, then adds a fourth node and
# rebalances under a write load (deploy/compose/e2e.py).
#
#   deploy/compose/e2e.sh [--profile release|debug] [--no-build] [--keep]
#
# Skips (exit 0, saying so) when no Docker engine answers. Host ports:
# TESSERA_E2E_PORT (default 17000) for plain clients, +1 and +2 for the
# routers' cluster ports.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PROFILE=release
BUILD=1
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if ! docker info >/dev/null 2>&1; then
  echo "SKIPPED: deploy end-to-end test: no Docker engine answers (docker info failed)"
  exit 0
fi
. "$ROOT/scripts/env.sh"
flags=(--profile "$PROFILE" --tag tessera:e2e)
[ $BUILD = 0 ] && flags+=(--no-build)
"$ROOT/deploy/image/build.sh" "${flags[@]}"

BASE="${TESSERA_E2E_PORT:-17000}"
export TESSERA_IMAGE=tessera:e2e TESSERA_PORT_PLAIN=$BASE TESSERA_PORT_A=$((BASE + 1)) TESSERA_PORT_B=$((BASE + 2))
export TESSERA_PORT_METRICS=$((BASE + 3)) TESSERA_WORKER_THREADS=1
COMPOSE=(docker-compose -p tessera-e2e -f "$ROOT/deploy/compose/docker-compose.yml")
down() {
  if [ $KEEP = 1 ]; then echo "e2e: left running (${COMPOSE[*]} down -v)"; return; fi
  "${COMPOSE[@]}" --profile scale down -v --remove-orphans >/dev/null 2>&1 || true
}
down
trap down EXIT
"${COMPOSE[@]}" up -d
status=0
"$TESSERA_CACHE/venv/bin/python" "$ROOT/deploy/compose/e2e.py" --compose "${COMPOSE[*]}" \
  --plain "$TESSERA_PORT_PLAIN" --cluster "$TESSERA_PORT_A,$TESSERA_PORT_B" || status=$?
if [ $status != 0 ]; then
  echo "e2e: failed; the cluster's logs:" >&2
  "${COMPOSE[@]}" --profile scale logs --no-color --tail 60 >&2 || true
fi
exit $status
