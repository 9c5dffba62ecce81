#!/usr/bin/env bash
# Runs the GPU tests from a bundle made by scripts/gpu-bundle.sh, on the GPU
# machine. libtorch (with CUDA), CUDA 13 and cuDNN 9 come from that
# machine's Python torch; ONNX Runtime's GPU build comes in the bundle.
# Extra arguments go to the test binary (e.g. a test name); `run.sh bench
# [DEVICE...]` runs the model benchmark instead (scripts/gpu/bench.py).
set -euo pipefail
B="$(cd "$(dirname "$0")" && pwd)"
TORCH_LIB="${TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}"
NVIDIA="$(dirname "$(dirname "$TORCH_LIB")")/nvidia"
cat "$B/BUILD"
nvidia-smi -L || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())' || true
# The node finds ONNX Runtime and the CUDA libraries under TESSERA_CACHE
# (ort-gpu/, nvidia/cu13/lib, nvidia/cudnn/lib), as after setup on a GPU
# machine; libtorch_cuda.so on the loader path.
export TESSERA_CACHE="$B/cache"
mkdir -p "$TESSERA_CACHE"
ln -sfn "$B/ort-gpu" "$TESSERA_CACHE/ort-gpu"
ln -sfn "$NVIDIA" "$TESSERA_CACHE/nvidia"
ls "$NVIDIA/cu13/lib" "$NVIDIA/cudnn/lib" >/dev/null
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TESSERA_BIN_DIR="$B/bin" TESSERA_TESTDATA="$B/testdata"
export TESSERA_TEST_RUST_LOG="${TESSERA_TEST_RUST_LOG:-info,openraft=warn}"
cd "$B"
if [ "${1:-}" = bench ]; then
  shift
  # redis-py (for the cluster launcher) is pure Python: imported from its wheel.
  PYTHONPATH="$B/py:$(ls "$B"/py/redis-*.whl)" exec python3 "$B/py/bench.py" "$@"
fi
"$B/bin/gpu-tests" --ignored --nocapture --test-threads=1 "$@"
