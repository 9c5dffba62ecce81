#!/usr/bin/env bash
# Builds the `tessera` container image from this checkout's binaries, with no
# registry: the root filesystem is assembled here and the image is built
# `FROM scratch` by the local Docker engine.
#
#   deploy/image/build.sh [--profile release|debug] [--gpu] [--tag NAME] [--no-build]
#     --profile  which cargo profile's binaries go in (default release; the
#                end-to-end test uses debug, which the test suite has built)
#     --gpu      the GPU variant: ONNX Runtime's GPU build, libtorch's CUDA
#                libraries and the CUDA/cuDNN libraries setup fetched
#                (run `TESSERA_GPU=1 scripts/setup.sh` first); tag tessera:gpu
#     --tag      image name (default tessera:latest, tessera:gpu with --gpu)
#     --no-build use the binaries already built
#
# What is inside:
#   /usr/local/bin/       tessera-node, tessera-router, tessera-admin (stripped)
#   /opt/tessera/         the model runtimes the node loads (TESSERA_CACHE):
#                         ort/, litert/, libtorch/lib/ (only the libraries the
#                         node links), and with --gpu ort-gpu/ and nvidia/
#   /lib, /usr/lib, ...   the C libraries those need, found with ldd
#   /etc/ssl/certs/       CA certificates; /etc/passwd and /etc/group with the
#                         user `tessera` (10001), which the image runs as
#   /data                 the node's data folder (a volume in compose and k8s)
#
#   docker run --rm tessera:latest tessera-node --help
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PROFILE=release
GPU=0
TAG=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --tag) TAG=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$TAG" ] || { [ $GPU = 1 ] && TAG=tessera:gpu || TAG=tessera:latest; }
. "$ROOT/scripts/env.sh"
BIN="$CARGO_TARGET_DIR/$PROFILE"
CACHE="$TESSERA_CACHE"

if [ $BUILD = 1 ]; then
  flags=(-q -p tessera-node -p tessera-router)
  [ "$PROFILE" = release ] && flags+=(--release)
  (cd "$ROOT" && cargo build "${flags[@]}")
fi
for b in tessera-node tessera-router tessera-admin; do
  [ -x "$BIN/$b" ] || { echo "image: $BIN/$b is missing (build it or drop --no-build)" >&2; exit 1; }
done
runtimes=("$CACHE/ort/libonnxruntime.so" "$CACHE/litert/libLiteRt.so")
if [ $GPU = 1 ]; then
  [ -e "$CACHE/ort-gpu/libonnxruntime.so" ] && [ -e "$LIBTORCH/lib/libtorch_cuda.so" ] || {
    echo "image: --gpu needs ONNX Runtime's GPU build and libtorch's CUDA build; run TESSERA_GPU=1 scripts/setup.sh" >&2
    exit 1
  }
fi
for r in "${runtimes[@]}"; do
  [ -e "$r" ] || { echo "image: $r is missing; run scripts/setup.sh" >&2; exit 1; }
done

WORK="$CARGO_TARGET_DIR/image/$(echo "$TAG" | tr ':/' '__')"
ROOTFS="$WORK/rootfs"
rm -rf "$WORK"
mkdir -p "$ROOTFS"/{usr/local/bin,opt/tessera,etc/ssl/certs,tmp} "$WORK/data"
chmod 1777 "$ROOTFS/tmp"

# The top-level library folders that are links here (merged /usr: /lib ->
# usr/lib) are the same links in the image.
for d in lib lib32 lib64 libx32 bin sbin; do
  if [ -L "/$d" ]; then
    ln -s "$(readlink "/$d")" "$ROOTFS/$d"
    mkdir -p "$ROOTFS/$(readlink -m "/$d" | sed 's|^/||')"
  fi
done
# A library under the name the loader asks for (its soname's path here),
# its contents copied (a link here may point anywhere).
copy_path() {
  local dst="$ROOTFS$1"
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  cp -L "$1" "$dst"
}
# The shared libraries a binary or library needs, and the dynamic loader,
# outside /opt/tessera (copied on its own below).
copy_deps() {
  LD_LIBRARY_PATH="$LIBTORCH/lib:$(dirname "$1")" ldd "$1" |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
      case "$lib" in "$CACHE"/*) continue ;; esac
      copy_path "$lib"
    done
}

for b in tessera-node tessera-router tessera-admin; do
  cp "$BIN/$b" "$ROOTFS/usr/local/bin/$b"
  strip --strip-debug "$ROOTFS/usr/local/bin/$b"
  copy_deps "$BIN/$b"
done

# Model runtimes, under /opt/tessera as under ~/.cache/tessera here.
mkdir -p "$ROOTFS/opt/tessera/ort" "$ROOTFS/opt/tessera/litert" "$ROOTFS/opt/tessera/libtorch/lib"
cp -L "$CACHE/ort/libonnxruntime.so" "$ROOTFS/opt/tessera/ort/libonnxruntime.so"
cp -L "$CACHE/litert/libLiteRt.so" "$ROOTFS/opt/tessera/litert/libLiteRt.so"
copy_deps "$CACHE/ort/libonnxruntime.so"
copy_deps "$CACHE/litert/libLiteRt.so"
if [ $GPU = 1 ]; then
  # The CUDA stack is loaded on demand (dlopen), so ldd cannot name it:
  # libtorch's whole lib folder, ORT's GPU build and the nvidia libraries go in.
  cp -a "$LIBTORCH/lib/." "$ROOTFS/opt/tessera/libtorch/lib/"
  cp -a "$CACHE/ort-gpu" "$ROOTFS/opt/tessera/ort-gpu"
  [ -d "$CACHE/nvidia" ] && cp -a "$CACHE/nvidia" "$ROOTFS/opt/tessera/nvidia"
else
  # Only the libtorch libraries the node links (ldd), not the whole 0.5 GB.
  LD_LIBRARY_PATH="$LIBTORCH/lib" ldd "$BIN/tessera-node" | awk '/=> \// { print $3 }' |
    while read -r lib; do
      case "$lib" in "$LIBTORCH"/lib/*) cp -L "$lib" "$ROOTFS/opt/tessera/libtorch/lib/" ;; esac
    done
fi
for lib in "$ROOTFS"/opt/tessera/libtorch/lib/*.so*; do
  [ -f "$lib" ] && copy_deps "$lib"
done

# Name resolution (peers and routers find each other by DNS name), CA
# certificates, and the unprivileged user.
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
printf 'hosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/sbin/nologin\ntessera:x:10001:10001:tessera:/data:/sbin/nologin\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\ntessera:x:10001:\n' >"$ROOTFS/etc/group"

cat >"$WORK/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
# COPY makes root the owner of what it copies; the node's data folder
# belongs to the user it runs as.
COPY --chown=10001:10001 data/ /data/
ENV PATH=/usr/local/bin \
    TESSERA_CACHE=/opt/tessera \
    LD_LIBRARY_PATH=/opt/tessera/libtorch/lib \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HOME=/data
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 6379 7001 7002 7100 9100 9121
DOCKERFILE
docker build -q -t "$TAG" "$WORK" >/dev/null

echo "image: $TAG built from $PROFILE binaries"
docker image ls "$TAG" --format '  size {{.Size}}'
echo "  what takes the space (uncompressed):"
du -sh "$ROOTFS"/usr/local/bin/* "$ROOTFS"/opt/tessera/* | sed "s|$ROOTFS||; s|^|    |"
libs=$(find "$ROOTFS" -path "$ROOTFS/opt" -prune -o -path "$ROOTFS/usr/local" -prune -o -type f -print0 | du -ch --files0-from=- | tail -1 | cut -f1)
echo "    $libs	C libraries (glibc, libstdc++, libgomp, ...), certificates, passwd"
