#!/usr/bin/env bash
# Builds a libtorch tree (include/ + lib/) from PyPI wheels only.
#   fetch_libtorch.sh DEST            CPU-capable libtorch 2.13.0 (~540 MB download)
#   fetch_libtorch.sh --gpu DEST      the same plus libtorch's CUDA libraries, and
#                                     CUDA 13 / cuDNN 9 / NCCL in pip's layout at
#                                     DEST/../nvidia (where libtorch_cuda.so's
#                                     $ORIGIN rpath and the node look; ~3 GB)
# Then: export LIBTORCH=DEST (scripts/env.sh does). TESSERA_TORCH_VERSION overrides
# the version for tools that build against another libtorch (the GPU device
# check builds against the device's own); tch 0.26 needs 2.13.0.
# Idempotent: a complete tree is kept. The CUDA build of torch is the only
# one PyPI has; libtorch_cpu.so needs cudart and cupti present (even on CPU),
# hence the two small nvidia wheels.
set -euo pipefail
GPU=0
if [ "${1:-}" = "--gpu" ]; then GPU=1; shift; fi
DEST=${1:?usage: fetch_libtorch.sh [--gpu] DEST}
TORCH_VER=${TESSERA_TORCH_VERSION:-2.13.0}   # must match tch 0.26.0 (torch-sys build.rs TORCH_VERSION)
CUDART_VER=13.0.96          # pinned by torch 2.13.0's cuda-toolkit==13.0.3 requirement
CUPTI_VER=13.0.85
MARK="$DEST/.complete-$TORCH_VER"; [ $GPU = 1 ] && MARK="$MARK-gpu"
if [ -f "$MARK" ]; then exit 0; fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PY=python3; [ -x "${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python" ] && PY="${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python"
PIP=("$PY" -m pip download -q --only-binary=:all: -d "$TMP")
"${PIP[@]}" --no-deps "torch==$TORCH_VER" "nvidia-cuda-runtime==$CUDART_VER" "nvidia-cuda-cupti==$CUPTI_VER"
if [ $GPU = 1 ]; then
  # libtorch_cuda.so's own requirements, as the torch wheel lists them.
  mapfile -t REQS < <("$PY" - "$TMP"/torch-*.whl <<'PY'
import sys, zipfile, re
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            req = line.split(":", 1)[1].split(";")[0].strip()
            if re.match(r"(nvidia-|cuda-toolkit)", req):
                print(req.replace(" ", ""))
PY
)
  [ ${#REQS[@]} -gt 0 ] || { echo "fetch_libtorch: no CUDA requirements found in the torch wheel" >&2; exit 1; }
  "${PIP[@]}" "${REQS[@]}"
fi
mkdir -p "$DEST/lib"
"$PY" - "$TMP" "$DEST" "$GPU" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest, gpu = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
want_lib = {"libtorch_cpu.so", "libc10.so", "libtorch.so", "libgomp.so.1",   # from torch wheel
            "libcudart.so.13", "libcupti.so.13"}                            # NEEDED by libtorch_cpu.so
if gpu:
    want_lib |= {"libtorch_cuda.so", "libc10_cuda.so", "libtorch_cuda_linalg.so", "libtorch_nvshmem.so",
                 "libcaffe2_nvrtc.so", "libtorch_global_deps.so"}
nvidia = os.path.join(os.path.dirname(os.path.abspath(dest)), "nvidia")
for whl in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            base = os.path.basename(n)
            outs = []
            if n.startswith("torch/include/") and not n.endswith("/"):
                outs.append(os.path.join(dest, n[len("torch/"):]))
            if base in want_lib and "/lib/" in n:
                outs.append(os.path.join(dest, "lib", base))
            # CUDA's own libraries also in pip's layout (cudart is in both).
            if gpu and n.startswith("nvidia/") and ".so" in base:
                outs.append(os.path.join(nvidia, n[len("nvidia/"):]))
            for out in outs:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                # A new file renamed into place: a running node may map the old one.
                with z.open(n) as src, open(out + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if ".so" in base:
                    os.chmod(out + ".part", 0o755)
                os.replace(out + ".part", out)
PY
touch "$MARK" "$DEST/.complete-$TORCH_VER"   # a GPU tree holds the CPU one
echo "libtorch $TORCH_VER in $DEST ($(du -sh "$DEST" | cut -f1))"
