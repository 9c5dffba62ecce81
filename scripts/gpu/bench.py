"""The model benchmark on a GPU machine, from a bundle made by
scripts/gpu-bundle.sh: a local cluster (3 nodes, 6 shards, 1 router) from
the bundle's binaries, then tessera-model-bench once per device given
(default: CPU, then GPU). Run through run.sh (`run.sh bench [DEVICE...]`),
which sets TESSERA_CACHE and the library path."""

import os
import subprocess
import sys

from tessera_cluster import LocalCluster

# The bundle root (this file is in its py/ folder).
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    devices = sys.argv[1:] or ["CPU", "GPU"]
    print("TESSERA_CUDNN_CONV_SEARCH =", os.environ.get("TESSERA_CUDNN_CONV_SEARCH", "(unset: heuristic)"), flush=True)
    cluster = LocalCluster(bin_dir=os.path.join(B, "bin"))
    try:
        for dev in devices:
            subprocess.run([os.path.join(B, "bin", "tessera-model-bench"),
                            "--router", f"127.0.0.1:{cluster.plain_port}",
                            "--testdata", os.path.join(B, "testdata", "redisai"),
                            "--ort-lib", os.path.join(B, "ort-gpu", "libonnxruntime.so"),
                            "--cuda-libs", os.path.join(os.environ["TESSERA_CACHE"], "nvidia"),
                            "--device", dev, "--requests", "500", "--clients", "64", "--seconds", "5"],
                           check=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
