#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from the PyPI wheel (the only place
# this machine can reach) into DEST and prints the library's path.
# Idempotent: a present library is kept. The wheel's platform and Python
# tags are pinned, so the result does not depend on the local Python.
#
#   setup_ort.sh [DEST]         CPU build, `onnxruntime` (DEST: ~/.cache/tessera/ort)
#   setup_ort.sh --gpu [DEST]   GPU build, `onnxruntime-gpu` (DEST: ~/.cache/tessera/ort-gpu):
#                               the library plus its CUDA provider (CUDA 13, cuDNN 9);
#                               the node prefers it when present. It runs CPU models too.
set -euo pipefail
VERSION=1.31.1
PKG=onnxruntime
if [ "${1:-}" = "--gpu" ]; then PKG=onnxruntime-gpu; shift; fi
SUB=ort; [ $PKG = onnxruntime-gpu ] && SUB=ort-gpu
DEST="${1:-${TESSERA_CACHE:-$HOME/.cache/tessera}/$SUB}"
LIB="$DEST/libonnxruntime.so.$VERSION"
COMPLETE="$LIB"; [ $PKG = onnxruntime-gpu ] && COMPLETE="$DEST/libonnxruntime_providers_cuda.so"
if [ -s "$LIB" ] && [ -s "$COMPLETE" ]; then echo "$LIB"; exit 0; fi
mkdir -p "$DEST"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PY=python3; [ -x "${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python" ] && PY="${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  "$PKG==$VERSION" -d "$TMP" >&2
WHEEL=$(ls "$TMP"/onnxruntime*.whl)
# The library and, in the GPU build, the provider libraries it loads from
# its own directory (libonnxruntime_providers_{shared,cuda}.so).
"$PY" - "$WHEEL" "$DEST" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    # The providers first, the library last: setup counts the GPU build as
    # complete once its provider is there, so a cut-short run is redone.
    for n in sorted(z.namelist(), key=lambda n: os.path.basename(n).startswith("libonnxruntime.so")):
        base = os.path.basename(n)
        if "/capi/" in n and (base.startswith("libonnxruntime.so") or base in (
                "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so")):
            out = os.path.join(sys.argv[2], base)
            with z.open(n) as src, open(out + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(out + ".part", 0o755)
            os.replace(out + ".part", out)
PY
[ -s "$LIB" ] || { echo "setup_ort: $LIB missing from $WHEEL" >&2; exit 1; }
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
echo "$LIB"
