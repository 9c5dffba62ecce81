"""The benchmark: Tessera side by side with its peers in one run, written to
a dated results folder (results.json, results.md, PNG plots; `--out`).

First the cost per operation (scripts/bench_cost.py): redis-benchmark
against a local cluster's router and redis-server (GET/SET 1 KiB,
AI.TENSORGET/AI.TENSORSET of 256 floats vs GET/SET) at 1..200 clients and
pipeline 1..64, then puts and linearizable gets through tessera-kv-bench
against the router, redis-server with `appendfsync always` and a
three-member etcd, with each process's CPU per request. Then TLS: GET/SET
1 KiB through the router's TLS port against its plain port, and through a
cluster with mutual TLS inside it against the plain one, A/B/A/B. Then
scripts (`tessera-script-bench`: AI.SCRIPTEXECUTE through the router vs the
same TorchScript function in-process), models (`tessera-model-bench`:
TENSORSET -> MODELEXECUTE -> TENSORGET vs ONNX Runtime in-process) and DAGs
(`tessera-dag-bench`: one AI.DAGEXECUTE vs separate calls vs in-process
ORT, on fresh clusters for each read-only DAG policy: lease (default),
`TESSERA_DAG_READ_POLICY=read-index`, `TESSERA_FOLLOWER_READS`; `--quick`
runs the default only, `--dags` only the DAG part, `--cost` only the
cost per operation). The text those print
is kept in the results folder too; `tessera-bench-plot` draws the plots.
`--publish` copies results.md and the plots to docs/bench/."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import bench_cost

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from tessera_cluster import LocalCluster, free_port  # noqa: E402


def bench(port, n, pipeline, args):
    """redis-benchmark at 50 clients: requests/s."""
    return bench_cost.redis_benchmark(port, n, 50, pipeline, args)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few requests (CI smoke run)")
    ap.add_argument("--dags", action="store_true", help="only the DAG benchmark")
    ap.add_argument("--cost", action="store_true", help="only the cost per operation (sweep and etcd)")
    ap.add_argument("--bin-dir", default=os.path.expanduser("~/.cache/tessera/target/release"))
    ap.add_argument("--out", help="results folder (default bench-results/<UTC date and time>)")
    ap.add_argument("--publish", action="store_true", help="copy results.md and the plots to docs/bench/")
    a = ap.parse_args()
    testdata = os.environ.get("TESSERA_TESTDATA") or os.path.join(ROOT, "..", "shared", "testdata")
    a.out = a.out or os.path.join(ROOT, "bench-results", time.strftime("%Y-%m-%d-%H%M%S", time.gmtime()))
    os.makedirs(a.out, exist_ok=True)
    try:
        if a.cost:
            cluster = LocalCluster(bin_dir=a.bin_dir)
            try:
                bench_cost.run(cluster, a.bin_dir, free_port, a.quick, a.out)
            finally:
                cluster.stop()
        elif not a.dags:
            try:
                others(a, testdata)
            finally:
                dag_bench(a, testdata)
        else:
            dag_bench(a, testdata)
    finally:
        finish(a)


def finish(a):
    """results.md and the plots, from results.json and the benchmarks' text."""
    results = os.path.join(a.out, "results.json")
    md = []
    if os.path.exists(results):
        with open(results) as f:
            md.append(bench_cost.markdown(json.load(f)))
        subprocess.run([os.path.join(a.bin_dir, "tessera-bench-plot"), results], check=True)
    for name, title in (("tls.txt", "TLS"), ("scripts.txt", "Script rounds"), ("models.txt", "Model rounds"),
                        ("dags.txt", "DAG rounds")):
        path = os.path.join(a.out, name)
        if os.path.exists(path):
            with open(path) as f:
                md.append(f"## {title}\n\n```\n{f.read().rstrip()}\n```\n")
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n".join(md))
    print(f"\nresults: {a.out}/results.md", flush=True)
    if a.publish:
        dest = os.path.join(ROOT, "docs", "bench")
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(a.out):
            if name.endswith((".md", ".png")):
                shutil.copy(os.path.join(a.out, name), dest)
        print(f"copied to {dest}", flush=True)


def tee(cmd, out_file, timeout=900):
    """Runs cmd, printing its output as it comes and appending it to out_file;
    returns its exit status."""
    with open(out_file, "a") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            for line in p.stdout:
                print(line, end="", flush=True)
                f.write(line)
            return p.wait()
        finally:
            timer.cancel()


def dag_bench(a, testdata):
    """tessera-dag-bench on a fresh cluster per setting of read-only DAGs."""
    print(flush=True)
    if not os.path.isdir(os.path.join(testdata, "redisai")):
        print(f"DAG benchmark skipped: it runs RedisAI's mnist, not found in {testdata} (set TESSERA_TESTDATA)",
              flush=True)
        return
    settings = [("lease (default)", {})]
    if not a.quick:
        settings += [("read-index", {"TESSERA_DAG_READ_POLICY": "read-index"}),
                     ("lease, follower reads", {"TESSERA_FOLLOWER_READS": "true"})]
    # A redis-server for the round trip's calibration: PING by the same client.
    peer = bench_cost.RedisServer(free_port(), "--appendonly", "no")
    try:
        for label, env in settings:
            dag_run(a, testdata, label, env, peer.port)
    finally:
        peer.stop()


def dag_run(a, testdata, label, env, rport):
    """One tessera-dag-bench run on a fresh cluster started with `env`."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = LocalCluster(bin_dir=a.bin_dir)
    try:
        db = [os.path.join(a.bin_dir, "tessera-dag-bench"), "--router", cluster.plain,
              "--testdata", os.path.join(testdata, "redisai"), "--label", label,
              "--peer", f"127.0.0.1:{rport}"]
        db += ["--requests", "300", "--clients", "16", "--seconds", "2"] if a.quick else \
              ["--requests", "2000", "--clients", "16,64", "--seconds", "6"]
        rc = tee(db, os.path.join(a.out, "dags.txt"))
        if rc != 0:
            print(f"DAG benchmark exited with {rc} (see its error above)", flush=True)
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def others(a, testdata):
    n1, n16 = (20_000, 100_000) if a.quick else (200_000, 1_000_000)
    certs = tempfile.mkdtemp(prefix="tessera-bench-tls-")
    subprocess.run([os.path.join(a.bin_dir, "tessera-admin"), "certs", "--dir", certs], check=True,
                   capture_output=True)
    cluster = LocalCluster(bin_dir=a.bin_dir, router_args=[
        "--tls-listen", "127.0.0.1:0", "--tls-cert", f"{certs}/server.crt", "--tls-key", f"{certs}/server.key",
        "--tls-ca-cert", f"{certs}/ca.crt"])
    try:
        bench_cost.run(cluster, a.bin_dir, free_port, a.quick, a.out)
        tport = cluster.plain_port
        tls_txt = open(os.path.join(a.out, "tls.txt"), "w")

        def say(line):
            print(line, flush=True)
            tls_txt.write(line + "\n")

        # TLS: the router's TLS port against its plain port, interleaved.
        tls = ["--tls", "--cacert", f"{certs}/ca.crt", "--cert", f"{certs}/client.crt", "--key", f"{certs}/client.key"]
        print()
        for p, n in ((1, n1), (16, n16)):
            for name, args in (("SET 1KiB", ["-t", "set", "-d", "1024"]), ("GET 1KiB", ["-t", "get", "-d", "1024"])):
                plain_rps, tls_rps = [], []
                for _ in range(2):
                    plain_rps.append(bench(tport, n, p, args))
                    tls_rps.append(bench(cluster.tls_port, n, p, args + tls))
                say(f"TLS {name:10s} P={p:<3d} plain {' '.join(f'{r:>8.0f}' for r in plain_rps)} rps   "
                    f"TLS {' '.join(f'{r:>8.0f}' for r in tls_rps)} rps   "
                    f"ratio {sum(tls_rps) / sum(plain_rps):5.2f} (target >= 0.8)")

        # TLS inside the cluster: a second cluster whose sessions and Raft
        # links are mutual TLS, against the plain one, interleaved.
        ctls = ["--cluster-tls-cert", f"{certs}/cluster.crt", "--cluster-tls-key", f"{certs}/cluster.key",
                "--cluster-tls-ca", f"{certs}/cluster-ca.crt"]
        inside = LocalCluster(bin_dir=a.bin_dir, node_args=ctls, router_args=ctls)
        try:
            print()
            for p, n in ((1, n1), (16, n16)):
                for name, args in (("SET 1KiB", ["-t", "set", "-d", "1024"]),
                                   ("GET 1KiB", ["-t", "get", "-d", "1024"])):
                    plain_rps, tls_rps = [], []
                    for _ in range(2):
                        plain_rps.append(bench(tport, n, p, args))
                        tls_rps.append(bench(inside.plain_port, n, p, args))
                    say(f"cluster TLS {name:10s} P={p:<3d} plain {' '.join(f'{r:>8.0f}' for r in plain_rps)} rps   "
                        f"TLS inside {' '.join(f'{r:>8.0f}' for r in tls_rps)} rps   "
                        f"ratio {sum(tls_rps) / sum(plain_rps):5.2f}")
        finally:
            inside.stop()
            tls_txt.close()

        # Scripts: a tiny TorchScript function through the router against
        # the same compiled function called in-process, in this run.
        print(flush=True)
        sb = [os.path.join(a.bin_dir, "tessera-script-bench"), "--router", f"127.0.0.1:{tport}"]
        sb += ["--requests", "300", "--clients", "16", "--seconds", "3"] if a.quick else \
              ["--requests", "3000", "--clients", "16", "--seconds", "10"]
        rc = tee(sb, os.path.join(a.out, "scripts.txt"))
        if rc != 0:
            print(f"script benchmark exited with {rc} (see its error above)", flush=True)

        # Models: RedisAI-style runs through the router against ONNX Runtime
        # in-process (same library, same thread settings), in this run.
        print(flush=True)
        mb = [os.path.join(a.bin_dir, "tessera-model-bench"), "--router", f"127.0.0.1:{tport}",
              "--testdata", os.path.join(testdata, "redisai"),
              "--tls-router", f"127.0.0.1:{cluster.tls_port}", "--tls-dir", certs]
        mb += ["--requests", "300", "--clients", "64", "--seconds", "3"] if a.quick else \
              ["--requests", "3000", "--clients", "64", "--seconds", "15"]
        if not os.path.isdir(os.path.join(testdata, "redisai")):
            print(f"model benchmark skipped: it runs RedisAI's test models, not found in {testdata} "
                  "(set TESSERA_TESTDATA)", flush=True)
            return
        # A smoke run must not fail CI on a loaded box: report a failure instead.
        rc = tee(mb, os.path.join(a.out, "models.txt"))
        if rc != 0:
            print(f"model benchmark exited with {rc} (see its error above)", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(certs, ignore_errors=True)

if __name__ == "__main__":
    main()
