#!/usr/bin/env bash
# Fetches LiteRT's C library (libLiteRt.so, Google's TFLite runtime) from the
# `ai-edge-litert` wheel on PyPI (the only place this machine can reach that
# ships it) into DEST and prints the library's path. Idempotent: a present
# library is kept. Version, platform and Python tags are pinned, and the
# library's checksum is checked, so the result does not depend on the local
# Python or on what the index serves later.
#
#   setup_litert.sh [DEST]      (DEST: ~/.cache/tessera/litert)
set -euo pipefail
VERSION=2.3.0
SHA256=eec47eb35e2924b3166015887e652a58edc9af823ae38e02bf83bef2548300bb
DEST="${1:-${TESSERA_CACHE:-$HOME/.cache/tessera}/litert}"
LIB="$DEST/libLiteRt.so"
if [ -s "$LIB" ]; then echo "$LIB"; exit 0; fi
mkdir -p "$DEST"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PY=python3; [ -x "${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python" ] && PY="${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_27_x86_64 "ai-edge-litert==$VERSION" -d "$TMP" >&2
WHEEL=$(ls "$TMP"/ai_edge_litert-*.whl)
# The library only: the wheel's Python bindings, GPU/WebGPU accelerators and
# NPU vendor plugins are not used (the node runs TFLite on the CPU).
"$PY" - "$WHEEL" "$LIB" "$SHA256" <<'PY'
import hashlib, os, sys, zipfile
wheel, lib, sha = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read("ai_edge_litert/libLiteRt.so")
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit(f"setup_litert: libLiteRt.so checksum {got}, expected {sha}")
with open(lib + ".part", "wb") as f:
    f.write(data)
os.chmod(lib + ".part", 0o755)
os.replace(lib + ".part", lib)
PY
echo "$LIB"
