#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from the PyPI wheel (the only place
# this machine can reach) into DEST (default ~/.cache/tessera/ort) and prints
# the library's path. Idempotent: a present library is kept.
# The wheel's platform and Python tags are pinned, so the result does not
# depend on the local Python.
set -euo pipefail
VERSION=1.31.1
DEST="${1:-${TESSERA_CACHE:-$HOME/.cache/tessera}/ort}"
LIB="$DEST/libonnxruntime.so.$VERSION"
if [ -s "$LIB" ]; then echo "$LIB"; exit 0; fi
mkdir -p "$DEST"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PY=python3; [ -x "${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python" ] && PY="${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  "onnxruntime==$VERSION" -d "$TMP" >&2
WHEEL=$(ls "$TMP"/onnxruntime-*.whl)
"$PY" - "$WHEEL" "$TMP/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if "/capi/libonnxruntime.so" in n:
            z.extract(n, sys.argv[2])
PY
SO=$(find "$TMP/x" -name "libonnxruntime.so*" -type f | sort | tail -1)
cp "$SO" "$LIB.part" && mv "$LIB.part" "$LIB"
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
echo "$LIB"
