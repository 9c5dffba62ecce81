#!/usr/bin/env bash
# Builds a CPU-capable libtorch 2.13.0 tree (include/ + lib/) from PyPI wheels only.
# Usage: fetch_libtorch.sh DEST   (then: export LIBTORCH=DEST; scripts/env.sh does)
# Idempotent: a complete tree is kept. The CUDA build of torch is the only
# one PyPI has for 2.13.0; libtorch_cpu.so needs cudart and cupti present
# (even on CPU), hence the two small nvidia wheels. ~540 MB download.
set -euo pipefail
DEST=${1:?usage: fetch_libtorch.sh DEST}
TORCH_VER=2.13.0            # must match tch 0.26.0 (torch-sys build.rs TORCH_VERSION)
CUDART_VER=13.0.96          # pinned by torch 2.13.0's cuda-toolkit==13.0.3 requirement
CUPTI_VER=13.0.85
if [ -f "$DEST/.complete-$TORCH_VER" ]; then exit 0; fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PY=python3; [ -x "${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python" ] && PY="${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" \
  "torch==$TORCH_VER" "nvidia-cuda-runtime==$CUDART_VER" "nvidia-cuda-cupti==$CUPTI_VER"
mkdir -p "$DEST/lib"
"$PY" - "$TMP" "$DEST" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
want_lib = {"libtorch_cpu.so", "libc10.so", "libtorch.so", "libgomp.so.1",   # from torch wheel
            "libcudart.so.13", "libcupti.so.13"}                            # NEEDED by libtorch_cpu.so
for whl in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            base = os.path.basename(n)
            if n.startswith("torch/include/") and not n.endswith("/"):
                out = os.path.join(dest, n[len("torch/"):])
            elif base in want_lib and "/lib/" in n:
                out = os.path.join(dest, "lib", base)
            else:
                continue
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(n) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
chmod 755 "$DEST"/lib/*.so*
touch "$DEST/.complete-$TORCH_VER"
echo "libtorch $TORCH_VER in $DEST ($(du -sh "$DEST" | cut -f1))"
