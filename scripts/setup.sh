#!/usr/bin/env bash
# Idempotent set-up of everything Tessera's run and test commands need on a
# fresh Debian machine: redis-cli/redis-server/redis-benchmark and etcd (apt), a
# Python venv with the client libraries and the manifest validator the tests
# use (PyPI), and the model runtimes' native libraries (PyPI wheels, see
# native/). Safe to re-run.
set -euo pipefail

CACHE="${TESSERA_CACHE:-$HOME/.cache/tessera}"
VENV="$CACHE/venv"
mkdir -p "$CACHE"

need_apt=()
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
# Partitions in the tests and the chaos harness (network namespaces,
# nftables), and a font for the chaos timeline's text.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# The benchmark's Raft peer (etcd, three members on loopback) and protoc for
# the etcd-client crate's build, with the well-known types it imports (the
# node's own protos use a vendored protoc).
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
# The chaos suite's slow-clock nemesis runs nodes under libfaketime.
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need_apt+=(libfaketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from apt"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The package starts a system redis-server on 6379; the project never uses it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
  $SUDO pkill -x redis-server >/dev/null 2>&1 || true
  # etcd-server's package starts a system etcd on 2379 the same way.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi
  $SUDO pkill -x etcd >/dev/null 2>&1 || true
fi

REQS="redis==8.1.0 redisai==1.3.0 smartredis==0.6.1 pytest==9.2.0 numpy==1.26.4 kubernetes-validate==1.37.0"
STAMP="$VENV/.tessera-reqs"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$REQS" ]; then
  echo "setup: creating Python venv at $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # redisai-py pins an old redis-py range; install it without deps and give it
  # the current redis-py (its API use is covered by the tests).
  # numpy stays below 2: SmartRedis 0.6.1 requires numpy<2 (its extension is
  # built with a pybind11 that predates numpy 2's ABI).
  "$VENV/bin/pip" install -q redis==8.1.0 pytest==9.2.0 numpy==1.26.4 hiredis
  "$VENV/bin/pip" install -q --no-deps redisai==1.3.0
  "$VENV/bin/pip" install -q Deprecated six
  # Offline schema validation of deploy/k8s (it bundles the Kubernetes API
  # schemas, and brings PyYAML for deploy/k8s/check_manifests.py).
  "$VENV/bin/pip" install -q kubernetes-validate==1.37.0
  # SmartRedis (CrayLabs' RedisAI client): binary wheels for CPython 3.9-3.11
  # only, its one dependency is numpy (above). On another Python its tests skip.
  if "$VENV/bin/python" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))'; then
    "$VENV/bin/pip" install -q --no-deps --only-binary=:all: smartredis==0.6.1
  else
    echo "setup: no SmartRedis wheel for this Python; its tests will skip" >&2
  fi
  echo "$REQS" > "$STAMP"
fi
# Model runtimes (native libraries from PyPI wheels, cached outside the clone).
ORT_LIB=$("$(dirname "$0")/../native/setup_ort.sh")
LITERT_LIB=$("$(dirname "$0")/../native/setup_litert.sh")
# On a machine with an NVIDIA GPU (or with TESSERA_GPU=1) the GPU builds
# too: ONNX Runtime's GPU build (the node then prefers it), libtorch's CUDA
# libraries, and the CUDA 13 / cuDNN 9 libraries both need (README: "GPUs").
GPU="${TESSERA_GPU:-auto}"
if [ "$GPU" = auto ]; then GPU=0; nvidia-smi -L >/dev/null 2>&1 && GPU=1; fi
if [ "$GPU" = 1 ]; then
  ORT_LIB=$("$(dirname "$0")/../native/setup_ort.sh" --gpu)
  "$(dirname "$0")/../native/fetch_libtorch.sh" --gpu "$CACHE/libtorch"
else
  "$(dirname "$0")/../native/fetch_libtorch.sh" "$CACHE/libtorch"
fi
echo "setup: ok (venv $VENV, ONNX Runtime $ORT_LIB, LiteRT $LITERT_LIB, libtorch $CACHE/libtorch)"
