# Sourced by the project's scripts (and by hand: `. scripts/env.sh`): where
# builds and native libraries live. Everything is under ~/.cache/tessera so
# a fresh clone builds incrementally on a machine that built before.
export TESSERA_CACHE="${TESSERA_CACHE:-$HOME/.cache/tessera}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TESSERA_CACHE/target}"
# libtorch 2.13.0 for the TORCH backend (tch/torch-sys build against it).
export LIBTORCH="${LIBTORCH:-$TESSERA_CACHE/libtorch}"
# Test binaries that link the node library load libtorch from here (the
# node's own binaries carry an rpath).
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
