#!/usr/bin/env bash
# Local Tessera cluster on loopback: 3 storage nodes, 3*S shards each
# replicated on all three (one Raft group per shard), and one router. Data, logs and pids live under .tessera/ in the repository.
#
#   deploy/local/cluster.sh up [--shards-per-node S] [--no-demo] [--debug] [--fresh] [--tls]
#   deploy/local/cluster.sh down
#   deploy/local/cluster.sh status
#
# Ports: router plain 7000, cluster 7001 and 7002 (advertised masters),
# metrics 9121; nodes gRPC 7101-7103, metrics 9101-9103. With --tls the
# router also serves TLS on 7010 (plain port's twin) and 7011/7012 (cluster
# ports' twins), with a throwaway CA and certificates made once in
# .tessera/tls by `tessera-admin certs` (client certificates required), and
# every connection inside the cluster is mutual TLS with a cluster CA of its
# own (--cluster-tls-*).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${TESSERA_LOCAL_DIR:-$ROOT/.tessera}"
NODES=3
SPN=2
DEMO=1
FRESH=0
PROFILE=release
TLS=0
CMD="${1:-up}"; shift || true
while [ $# -gt 0 ]; do
  case "$1" in
    --shards-per-node) SPN="$2"; shift 2 ;;
    --no-demo) DEMO=0; shift ;;
    --debug) PROFILE=debug; shift ;;
    --fresh) FRESH=1; shift ;;
    --tls) TLS=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
. "$(cd "$(dirname "$0")/../.." && pwd)/scripts/env.sh"
BIN="$CARGO_TARGET_DIR/$PROFILE"

stop_all() {
  [ -d "$STATE/pids" ] || return 0
  for f in "$STATE"/pids/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    alive=0
    for f in "$STATE"/pids/*.pid; do
      [ -e "$f" ] || continue
      kill -0 "$(cat "$f")" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for f in "$STATE"/pids/*.pid; do
    [ -e "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

case "$CMD" in
  down)
    stop_all
    echo "tessera local cluster stopped"
    exit 0 ;;
  status)
    for f in "$STATE"/pids/*.pid; do
      [ -e "$f" ] || { echo "not running"; exit 0; }
      n=$(basename "$f" .pid)
      if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: dead"; fi
    done
    exit 0 ;;
  up) ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

"$ROOT/scripts/setup.sh"
echo "building tessera-node and tessera-router ($PROFILE)..."
if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build --release -q -p tessera-node -p tessera-router)
else
  (cd "$ROOT" && cargo build -q -p tessera-node -p tessera-router)
fi

stop_all
[ $FRESH = 1 ] && rm -rf "$STATE"
mkdir -p "$STATE/pids" "$STATE/logs"
SHARDS=$((NODES * SPN))
PEERS=""
for ((n = 1; n <= NODES; n++)); do PEERS="${PEERS:+$PEERS,}$n=127.0.0.1:$((7100 + n))"; done
TLS_ARGS=()
CLUSTER_TLS=()
if [ $TLS = 1 ]; then
  CERTS="$STATE/tls"
  [ -f "$CERTS/cluster.crt" ] || "$BIN/tessera-admin" certs --dir "$CERTS" >/dev/null
  TLS_ARGS=(--tls-listen 127.0.0.1:7010 --tls-cluster-listen 127.0.0.1:7011,127.0.0.1:7012
            --tls-cert "$CERTS/server.crt" --tls-key "$CERTS/server.key" --tls-ca-cert "$CERTS/ca.crt")
  CLUSTER_TLS=(--cluster-tls-cert "$CERTS/cluster.crt" --cluster-tls-key "$CERTS/cluster.key"
               --cluster-tls-ca "$CERTS/cluster-ca.crt")
fi
NODE_ADDRS=()
for ((n = 1; n <= NODES; n++)); do
  port=$((7100 + n))
  mkdir -p "$STATE/node-$n"
  "$BIN/tessera-node" --node-id "$n" --listen "127.0.0.1:$port" --worker-threads 1 \
    --metrics-listen "127.0.0.1:$((9100 + n))" --peer "$PEERS" --shards "$SHARDS" \
    --data-dir "$STATE/node-$n" "${CLUSTER_TLS[@]}" >>"$STATE/logs/node-$n.log" 2>&1 &
  echo $! >"$STATE/pids/node-$n.pid"
  NODE_ADDRS+=("127.0.0.1:$port")
done
echo "nodes: $PEERS ($SHARDS shards, each replicated on 3 nodes)"
"$BIN/tessera-router" --listen 127.0.0.1:7000 --cluster-listen 127.0.0.1:7001,127.0.0.1:7002 \
  --metrics-listen 127.0.0.1:9121 --node "$(IFS=,; echo "${NODE_ADDRS[*]}")" "${TLS_ARGS[@]}" "${CLUSTER_TLS[@]}" \
  >>"$STATE/logs/router.log" 2>&1 &
echo $! >"$STATE/pids/router.pid"

for _ in $(seq 300); do
  [ "$(redis-cli -p 7000 DBSIZE 2>/dev/null)" -ge 0 ] 2>/dev/null && break
  sleep 0.1
done
if ! [ "$(redis-cli -p 7000 DBSIZE 2>/dev/null)" -ge 0 ] 2>/dev/null; then
  echo "router did not come up; see $STATE/logs/router.log" >&2
  tail -20 "$STATE/logs/router.log" >&2
  exit 1
fi

cat <<MSG

Tessera is running: $NODES nodes, $SHARDS shards (3 replicas each, Raft), 1 router.
Data survives restarts: it lives under $STATE/node-*/ (delete it for a fresh cluster).
  cluster clients:  redis-cli -c -p 7001      (advertised masters 127.0.0.1:7001, 127.0.0.1:7002)
  plain clients:    redis-cli -p 7000          (one big Redis; KEYS/SCAN/DBSIZE cover every slot)
  metrics:          curl -s 127.0.0.1:9121/metrics   (nodes: 9101-9103)
  logs:             $STATE/logs/
  cluster admin:    $BIN/tessera-admin --node 127.0.0.1:7101 status   (also add-node, move-replica, remove-node, transfer-leader)
  stop:             deploy/local/cluster.sh down
MSG
if [ $TLS = 1 ]; then
  cat <<MSG
  TLS clients:      redis-cli -c -p 7011 --tls --cacert $CERTS/ca.crt --cert $CERTS/client.crt --key $CERTS/client.key
                    (plain port's twin: 7010; certificates in $CERTS)
  inside the cluster: mutual TLS; tessera-admin needs the cluster certificate:
                    $BIN/tessera-admin --node 127.0.0.1:7101 ${CLUSTER_TLS[*]} status
MSG
fi

if [ $DEMO = 1 ]; then
  echo
  echo "Seed walkthrough (redis-cli -c -p 7001):"
  run() { echo "> $*"; redis-cli -c -p 7001 "$@"; }
  run AI.TENSORSET tA FLOAT 2 VALUES 2 3
  run EXISTS tA
  run TYPE tA
  run AI.TENSORGET tA META VALUES
  # Inference: RedisAI's mnist on its image of a handwritten one (from
  # RedisAI's test data, where this checkout has it beside it).
  DATA="${TESSERA_TESTDATA:-$ROOT/../shared/testdata}/redisai"
  if [ -f "$DATA/mnist.onnx" ] && [ -f "$DATA/one.raw" ]; then
    echo
    echo "Inference (RedisAI's mnist on one.raw, a handwritten 1; keys share the tag {mnist}):"
    echo "> AI.MODELSTORE {mnist}m ONNX CPU BLOB <mnist.onnx>"
    redis-cli -c -p 7001 -x AI.MODELSTORE '{mnist}m' ONNX CPU BLOB < "$DATA/mnist.onnx"
    echo "> AI.TENSORSET {mnist}in FLOAT 1 1 28 28 BLOB <one.raw>"
    redis-cli -c -p 7001 -x AI.TENSORSET '{mnist}in' FLOAT 1 1 28 28 BLOB < "$DATA/one.raw"
    run AI.MODELEXECUTE '{mnist}m' INPUTS 1 '{mnist}in' OUTPUTS 1 '{mnist}out'
    run AI.TENSORGET '{mnist}out' VALUES
    # The answer is the digit whose score is highest.
    redis-cli -c -p 7001 AI.TENSORGET '{mnist}out' VALUES |
      awk '{ if (NR == 1 || $1 + 0 > best) { best = $1 + 0; digit = NR - 1 } } END { print "predicted digit: " digit }'
  else
    echo
    echo "(Inference demo skipped: RedisAI's mnist.onnx and one.raw are not in $DATA; set TESSERA_TESTDATA to a folder holding redisai/.)"
  fi
  echo
  echo "Cluster map and replicas (tessera-admin status):"
  "$BIN/tessera-admin" --node 127.0.0.1:7101 status
fi
