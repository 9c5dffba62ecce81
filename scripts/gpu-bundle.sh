#!/usr/bin/env bash
# Builds a bundle that runs the GPU tests (tests/tests/gpu.rs) on a GPU
# machine with no Rust toolchain and no network, but with CUDA 13 and a
# Python torch (its libtorch, CUDA and cuDNN libraries are used there):
#
#   scripts/gpu-bundle.sh [--torch VERSION] [--sm N] [--split MiB]
#     --torch  the GPU machine's torch version (default 2.11.0): the node is
#              built against that libtorch with the tch release made for it
#              (tch 0.24 for 2.11; the shipped build is tch 0.26 on 2.13),
#              since libtorch_cuda.so must match the libtorch it was built with
#     --sm     keep only this GPU architecture's code in ONNX Runtime's CUDA
#              provider (e.g. 90 for H100/H200; scripts/gpu/prune_fatbin.py)
#     --split  cut the compressed bundle into parts of this size
#
# Output: .gpu-bundle/ (git-ignored) holding tessera-gpu.tar.xz (or its
# parts, tessera-gpu.tar.xz.00, .01, ...); run.sh is inside. On the GPU machine:
#   cat tessera-gpu.tar.xz* > b.tar.xz && mkdir b && tar -xJf b.tar.xz -C b && b/run.sh
# (run.sh needs only bash and python3 with torch).
#
# On a GPU machine that builds for itself none of this is needed:
#   TESSERA_GPU=1 scripts/setup.sh
#   cargo test -p tessera-tests --test gpu -- --ignored --nocapture
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TORCH=2.11.0
SM=""
SPLIT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) TORCH=$2; shift 2 ;;
    --sm) SM=$2; shift 2 ;;
    --split) SPLIT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$TORCH" in
  2.13.0) TCH=0.26.0 ;;
  2.12.0) TCH=0.25.0 ;;
  2.11.0) TCH=0.24.0 ;;
  2.10.0) TCH=0.23.0 ;;
  *) echo "no tch release is known for torch $TORCH" >&2; exit 2 ;;
esac
. "$ROOT/scripts/env.sh"
./scripts/setup.sh >/dev/null
ORT_GPU=$(native/setup_ort.sh --gpu)
LT="$TESSERA_CACHE/libtorch-$TORCH"
TESSERA_TORCH_VERSION=$TORCH native/fetch_libtorch.sh "$LT"

# The workspace, with tch pinned to that libtorch. It shares the target
# directory, so only torch-sys and what depends on it build again.
WS="$TESSERA_CACHE/gpu-ws"
rm -rf "$WS"
mkdir -p "$WS"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -C "$WS" -xf -
sed -i -E "s/^(tch|torch-sys) = \"=[0-9.]+\"/\1 = \"=$TCH\"/" "$WS/backends/torch/Cargo.toml"
grep -q "tch = \"=$TCH\"" "$WS/backends/torch/Cargo.toml"
echo "== building the node against libtorch $TORCH (tch $TCH)"
(cd "$WS" && LIBTORCH="$LT" cargo build --release -q -p tessera-node -p tessera-router -p tessera-bench)
BUILD_LOG=$(mktemp)
if ! (cd "$WS" && LIBTORCH="$LT" cargo test --release -p tessera-tests --test gpu --no-run) >"$BUILD_LOG" 2>&1; then
  cat "$BUILD_LOG" >&2; exit 1
fi
TEST_BIN=$(sed -n 's/.*Executable tests\/gpu.rs (\(.*\))/\1/p' "$BUILD_LOG")
rm -f "$BUILD_LOG"
[ -x "$TEST_BIN" ] || { echo "gpu test binary not found" >&2; exit 1; }

OUT="$ROOT/.gpu-bundle"
STAGE="$OUT/stage"
rm -rf "$OUT"
mkdir -p "$STAGE/bin" "$STAGE/ort-gpu" "$STAGE/testdata/redisai" "$STAGE/py"
for b in tessera-node tessera-router tessera-admin tessera-model-bench; do
  strip -o "$STAGE/bin/$b" "$CARGO_TARGET_DIR/release/$b"
done
strip -o "$STAGE/bin/gpu-tests" "$TEST_BIN"
# The main checkout's next build must not find this build's binaries
# where its own go (cargo links them again from its own artifacts).
rm -f "$CARGO_TARGET_DIR"/release/tessera-{node,router,admin,model-bench}
D=$(dirname "$ORT_GPU")
cp -L "$D/libonnxruntime.so.1.31.1" "$D/libonnxruntime_providers_shared.so" "$STAGE/ort-gpu/"
ln -s libonnxruntime.so.1.31.1 "$STAGE/ort-gpu/libonnxruntime.so"
if [ -n "$SM" ]; then
  python3 scripts/gpu/prune_fatbin.py "$D/libonnxruntime_providers_cuda.so" "$STAGE/ort-gpu/libonnxruntime_providers_cuda.so" "$SM"
else
  cp "$D/libonnxruntime_providers_cuda.so" "$STAGE/ort-gpu/"
fi
TD="${TESSERA_TESTDATA:-$ROOT/../shared/testdata}/redisai"
cp "$TD/mnist.onnx" "$TD/mnist_batched.onnx" "$TD/linear_iris.onnx" "$TD/one.raw" "$TD/pt-minimal.pt" \
  "$STAGE/testdata/redisai/"
cp scripts/gpu/run.sh "$STAGE/run.sh"
# The benchmark's driver, the cluster launcher it shares with the Python
# tests, and redis-py as a wheel (pure Python, imported from the zip).
cp scripts/gpu/bench.py tests/python/tessera_cluster.py "$STAGE/py/"
"$TESSERA_CACHE/venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$STAGE/py" redis==8.1.0
echo "torch $TORCH, tch $TCH, built $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)" > "$STAGE/BUILD"
echo "== compressing"
tar -C "$STAGE" -cf - . | xz -T2 -6 > "$OUT/tessera-gpu.tar.xz"
rm -rf "$STAGE"
if [ "$SPLIT" -gt 0 ]; then
  split -d -b "${SPLIT}M" "$OUT/tessera-gpu.tar.xz" "$OUT/tessera-gpu.tar.xz."
  rm "$OUT/tessera-gpu.tar.xz"
fi
ls -la "$OUT"
