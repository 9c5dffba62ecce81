"""Cost per operation, side by side in one run (the first parts of
scripts/bench.py; see docs/benchmarks.md).

1. Sweep: redis-benchmark against a Tessera router and against redis-server
   (no persistence; RedisAI's stand-in: for these commands RedisAI is
   redis-server), interleaved A/B/A/B: GET/SET of 1 KiB and
   AI.TENSORGET/AI.TENSORSET of a 256-float tensor (redis-server: GET/SET of
   the same 1 KiB), throughput and latency vs clients (P=1) and vs pipeline
   depth (50 clients).
2. Durable writes and linearizable reads against the Raft anchor:
   tessera-kv-bench (one Rust client, one connection per client, one core)
   drives the router (redis-rs), redis-server with `appendfsync always`
   (redis-rs) and a three-member etcd cluster on loopback (etcd-client, at
   its leader): put/SET and get/GET of 1 KiB at 1..200 clients.

Every run also records each server process's CPU time and context switches
per request (from /proc, all threads) and the load generator's CPU.
"""

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of a process (every thread, living or not)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def ctx_switches(pid):
    """Voluntary + involuntary context switches of each of the process's threads, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                out[tid] = sum(int(line.split()[1]) for line in f
                               if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        except OSError:
            pass  # the thread ended
    return out


def ctx_delta(before, after):
    """Context switches between two readings: the threads alive at the second
    (a thread that ended in between is not counted: a slight undercount)."""
    return sum(n - before.get(tid, 0) for tid, n in after.items())


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Meter:
    """CPU seconds and context switches of named processes (and of the load
    generator, a waited-for child) between start() and stop()."""

    def __init__(self, procs, client=None):
        self.procs = procs  # name -> pid
        self.client = client  # the load generator's pid while it runs (else: a child waited for)

    def start(self):
        self.t0 = {n: (cpu_seconds(p), ctx_switches(p)) for n, p in self.procs.items()}
        self.c0 = cpu_seconds(self.client) if self.client else children_cpu()

    def stop(self, requests):
        """Per request: {name: [cpu µs, context switches]} (`client`: the load generator's CPU)."""
        out = {}
        for n, p in self.procs.items():
            cpu, ctx = cpu_seconds(p), ctx_switches(p)
            out[n] = [round((cpu - self.t0[n][0]) * 1e6 / requests, 2), round(ctx_delta(self.t0[n][1], ctx) / requests, 3)]
        c1 = cpu_seconds(self.client) if self.client else children_cpu()
        out["client"] = [round((c1 - self.c0) * 1e6 / requests, 2), None]
        return out


def redis_benchmark(port, n, clients, pipeline, args, stdin=None):
    """One redis-benchmark run: (requests/s, p50 ms, p99 ms)."""
    cmd = ["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(n), "-P", str(pipeline), "--csv"] + args
    out = subprocess.run(cmd, input=stdin, capture_output=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stdout!r} {out.stderr!r}")
    lines = [line for line in out.stdout.decode().splitlines() if line.startswith('"')]
    head = [h.strip('"') for h in lines[0].split(",")]
    row = dict(zip(head, (v.strip('"') for v in lines[-1].split(","))))
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def wait_ping(port):
    for _ in range(200):
        r = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True)
        if r.stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"no redis-server on {port}")


def cluster_procs(cluster):
    """A LocalCluster's processes by name: its router and three nodes."""
    return {"router": cluster.pid("router"), **{f"node-{i}": cluster.pid(f"node-{i}") for i in (1, 2, 3)}}


class RedisServer:
    def __init__(self, port, *args):
        self.dir = tempfile.mkdtemp(prefix="tessera-bench-redis-")
        self.port = port
        self.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--dir", self.dir] + list(args), stdout=subprocess.DEVNULL)
        wait_ping(port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Etcd:
    """Three etcd members on loopback, data beside Tessera's (the same disk)."""

    def __init__(self, free_port):
        self.dir = tempfile.mkdtemp(prefix="tessera-bench-etcd-")
        client = [free_port() for _ in range(3)]
        peer = [free_port() for _ in range(3)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer[i]}" for i in range(3))
        self.procs = []
        self.log = open(os.path.join(self.dir, "etcd.log"), "wb")
        for i in range(3):
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", f"m{i}", "--data-dir", os.path.join(self.dir, f"m{i}"),
                 "--listen-client-urls", f"http://127.0.0.1:{client[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "tessera-bench", "--log-level", "error"],
                stdout=self.log, stderr=self.log))
        self.target = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in client)
        self.pids = {f"etcd-{i + 1}": p.pid for i, p in enumerate(self.procs)}
        deadline = time.time() + 30
        for port in client:
            while True:
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                    if json.loads(body).get("health") == "true":
                        break
                except (OSError, ValueError):
                    pass
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError("etcd did not become healthy in 30 s")
                time.sleep(0.1)

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep(cluster, redis, quick, rows):
    """redis-benchmark against the router and redis-server, A/B/A/B."""
    tport = cluster.plain_port
    procs_t = cluster_procs(cluster)
    procs_r = {"redis-server": redis.proc.pid}
    blob = b"\x41" * 1024  # 256 float32; no NUL or newline (redis-benchmark -x reads text)
    subprocess.run(["redis-cli", "-p", str(tport), "-x", "AI.TENSORSET", "bench:t", "FLOAT", "256", "BLOB"],
                   input=blob, capture_output=True, check=True)
    subprocess.run(["redis-cli", "-p", str(redis.port), "-x", "SET", "bench:t"], input=blob,
                   capture_output=True, check=True)
    commands = [
        ("GET", ["-t", "get", "-d", "1024"], ["-t", "get", "-d", "1024"], None),
        ("SET", ["-t", "set", "-d", "1024"], ["-t", "set", "-d", "1024"], None),
        ("TENSORGET", ["AI.TENSORGET", "bench:t", "BLOB"], ["GET", "bench:t"], None),
        ("TENSORSET", ["-x", "AI.TENSORSET", "bench:t", "FLOAT", "256", "BLOB"], ["-x", "SET", "bench:t"], blob),
    ]
    points = [(1, 1), (8, 1), (50, 1), (200, 1), (50, 4), (50, 16), (50, 64)]
    if quick:
        points = [(1, 1), (50, 1), (50, 16)]
    rounds, secs = (1, 0.7) if quick else (2, 3.0)
    rate = {}  # (side, command) -> last rps: sizes the next run to about `secs`
    for name, targs, rargs, stdin in commands:
        for clients, pipeline in points:
            for rnd in range(rounds):
                for side, port, args, procs in (("tessera", tport, targs, procs_t),
                                                ("redis", redis.port, rargs, procs_r)):
                    est = rate.get((side, name), 2000)
                    n = int(min(max(est * secs, 200 * pipeline, 2 * clients * pipeline), 2_000_000))
                    m = Meter(procs)
                    m.start()
                    rps, p50, p99 = redis_benchmark(port, n, clients, pipeline, args, stdin)
                    cpu = m.stop(n)
                    rate[(side, name)] = rps
                    rows.append({"part": "sweep", "command": name, "side": side, "clients": clients,
                                 "pipeline": pipeline, "round": rnd, "requests": n, "rps": rps,
                                 "p50_ms": p50, "p99_ms": p99, "cpu": cpu})
                    print(f"{name:10s} c={clients:<4d} P={pipeline:<3d} {side:8s} {rps:>10.0f} rps  "
                          f"p50 {p50:6.3f} ms  p99 {p99:7.3f} ms  CPU µs/req "
                          + " ".join(f"{k} {v[0]:.1f}" for k, v in cpu.items()), flush=True)


def kv_bench(bin_dir, target, op, clients, secs, procs, fill):
    """One tessera-kv-bench run, with the processes' CPU measured over its
    window (it prints `measuring` when the window opens)."""
    cmd = [os.path.join(bin_dir, "tessera-kv-bench"), "--target", target, "--op", op, "--clients", str(clients),
           "--seconds", str(secs), "--keys", "1000"] + (["--fill"] if fill else [])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    m = Meter(procs, client=p.pid)
    report = None
    for line in p.stdout:
        if line.strip() == "measuring":
            m.start()
        elif line.startswith("{"):
            report = json.loads(line)
            report["cpu"] = m.stop(report["requests"])
    if p.wait() != 0 or report is None:
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}")
    return report


def raft_anchor(cluster, bin_dir, free_port, quick, rows):
    """Puts and linearizable gets: the router, redis-server with
    `appendfsync always`, and etcd, interleaved."""
    aport = free_port()
    aof = RedisServer(aport, "--appendonly", "yes", "--appendfsync", "always")
    etcd = Etcd(free_port)
    try:
        targets = [
            ("tessera", f"redis://{cluster.plain}/", cluster_procs(cluster)),
            ("redis-aof", f"redis://127.0.0.1:{aport}/", {"redis-server": aof.proc.pid}),
            ("etcd", etcd.target, etcd.pids),
        ]
        clients_list, rounds, secs = ([1, 50], 1, 1.5) if quick else ([1, 8, 50, 200], 2, 6.0)
        filled = set()
        for op in ("put", "get"):
            for clients in clients_list:
                for rnd in range(rounds):
                    for side, target, procs in targets:
                        fill = op == "get" and side not in filled
                        if fill:
                            filled.add(side)
                        r = kv_bench(bin_dir, target, op, clients, secs, procs, fill)
                        r.update(part="kv", side=side, round=rnd)
                        rows.append(r)
                        print(f"kv {op:3s} c={clients:<4d} {side:10s} {r['rps']:>9.0f} rps  p50 {r['p50_us']:8.0f} µs  "
                              f"p99 {r['p99_us']:8.0f} µs  CPU µs/req "
                              + " ".join(f"{k} {v[0]:.1f}" for k, v in r["cpu"].items()), flush=True)
    finally:
        etcd.stop()
        aof.stop()


def idle(procs, secs, rows):
    """Each process's CPU while nothing is asked of it (heartbeats, timers):
    µs of CPU per second, the floor under every per-request figure."""
    m = Meter(procs)
    m.start()
    time.sleep(secs)
    cpu = m.stop(secs)  # per second, not per request
    cpu.pop("client")
    rows.append({"part": "idle", "seconds": secs, "cpu": cpu})
    print("idle, CPU µs per second: " + " ".join(f"{k} {v[0]:.0f}" for k, v in cpu.items()), flush=True)


def run(cluster, bin_dir, free_port, quick, out_dir):
    """Both parts; writes results.json in out_dir."""
    rows = []
    redis_srv = RedisServer(free_port(), "--appendonly", "no")
    try:
        time.sleep(1)  # past start-up (elections, the first heartbeats)
        idle({**cluster_procs(cluster), "redis-server": redis_srv.proc.pid}, 1.0 if quick else 3.0, rows)
        sweep(cluster, redis_srv, quick, rows)
        print(flush=True)
        raft_anchor(cluster, bin_dir, free_port, quick, rows)
    finally:
        redis_srv.stop()
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"machine": machine(), "quick": quick, "rows": rows}, f, indent=1)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "kernel": os.uname().release}


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def _cpu(rows):
    """Mean CPU µs and context switches per request per process over rounds."""
    names = list(rows[0]["cpu"])
    return {n: (sum(r["cpu"][n][0] for r in rows) / len(rows),
                None if rows[0]["cpu"][n][1] is None else sum(r["cpu"][n][1] for r in rows) / len(rows))
            for n in names}


def _fmt(v, nd=0):
    return "–" if v is None else f"{v:,.{nd}f}"


def markdown(data):
    """results.md: the run's tables (absolute figures, the machine, ratios)."""
    rows, m = data["rows"], data["machine"]
    out = [f"# Tessera cost per operation — {m['date']}", "",
           f"{m['cpus']} vCPU ({m['cpu']}), Linux {m['kernel']}; release build; one local cluster "
           "(3 nodes, 6 shards × 3 replicas, one router) and its peers on the same machine, same run"
           + (" (smoke run: short, one round)." if data["quick"] else ", two interleaved rounds (mean)."), "",
           "## Throughput and latency against redis-server (redis-benchmark)", "",
           "redis-server without persistence stands in for RedisAI (for these commands RedisAI is redis-server);"
           " AI.TENSORGET/AI.TENSORSET of 256 floats are compared with its GET/SET of the same 1 KiB.", "",
           "| command | clients | pipeline | Tessera rps | redis rps | ratio | Tessera p50 / p99 ms | redis p50 / p99 ms |",
           "|---|---:|---:|---:|---:|---:|---|---|"]
    sweep = [r for r in rows if r["part"] == "sweep"]
    keys = sorted({(r["command"], r["clients"], r["pipeline"]) for r in sweep},
                  key=lambda k: (["GET", "SET", "TENSORGET", "TENSORSET"].index(k[0]), k[2], k[1]))
    ratio = {}
    for cmd, c, p in keys:
        t = [r for r in sweep if (r["command"], r["clients"], r["pipeline"], r["side"]) == (cmd, c, p, "tessera")]
        d = [r for r in sweep if (r["command"], r["clients"], r["pipeline"], r["side"]) == (cmd, c, p, "redis")]
        ratio[(cmd, c, p)] = _mean(t, "rps") / _mean(d, "rps")
        out.append(f"| {cmd} | {c} | {p} | {_fmt(_mean(t, 'rps'))} | {_fmt(_mean(d, 'rps'))} | "
                   f"{ratio[(cmd, c, p)]:.2f} | {_mean(t, 'p50_ms'):.3f} / {_mean(t, 'p99_ms'):.3f} | "
                   f"{_mean(d, 'p50_ms'):.3f} / {_mean(d, 'p99_ms'):.3f} |")

    kv = [r for r in rows if r["part"] == "kv"]
    out += ["", "## Durable writes and linearizable reads against etcd (tessera-kv-bench)", "",
            "One Rust client on one thread, one connection per client, 1 KiB values, 1,000 keys: redis-rs against "
            "the router and against redis-server with `appendfsync always`; etcd-client against etcd's leader "
            "(three members on loopback, data on the same disk as Tessera's). Tessera and etcd fsync a quorum of "
            "three logs before they answer; redis-server fsyncs its one AOF.", "",
            "| op | clients | Tessera rps | redis AOF rps | etcd rps | Tessera / etcd | p50 µs Tessera / redis AOF / etcd | p50 Tessera / etcd |",
            "|---|---:|---:|---:|---:|---:|---|---:|"]
    kv_ratio = {}
    for op in ("put", "get"):
        for c in sorted({r["clients"] for r in kv if r["op"] == op}):
            side = {s: [r for r in kv if (r["op"], r["clients"], r["side"]) == (op, c, s)]
                    for s in ("tessera", "redis-aof", "etcd")}
            if not all(side.values()):
                continue
            rps = {s: _mean(v, "rps") for s, v in side.items()}
            p50 = {s: _mean(v, "p50_us") for s, v in side.items()}
            kv_ratio[(op, c)] = (rps["tessera"] / rps["etcd"], p50["tessera"] / p50["etcd"])
            out.append(f"| {op} | {c} | {_fmt(rps['tessera'])} | {_fmt(rps['redis-aof'])} | {_fmt(rps['etcd'])} | "
                       f"{kv_ratio[(op, c)][0]:.2f} | {_fmt(p50['tessera'])} / {_fmt(p50['redis-aof'])} / "
                       f"{_fmt(p50['etcd'])} | {kv_ratio[(op, c)][1]:.2f} |")

    out += ["", "## CPU per request, per process", ""]
    for r in (r for r in rows if r["part"] == "idle"):
        out += ["Idle, each process's CPU in µs per second (heartbeats of 7 Raft groups per node, timers): "
                + ", ".join(f"{n} {v[0]:,.0f}" for n, v in r["cpu"].items())
                + ". At low request rates this floor is a large part of the per-request figures below.", ""]
    out += ["CPU time (user + system, every thread, from `/proc/<pid>/stat`) and context switches (every thread's "
            "`/proc/<pid>/task/*/status`) over the run, divided by the requests answered. `client` is the load "
            "generator (redis-benchmark or tessera-kv-bench).", "",
            "| run | process: CPU µs / context switches per request | servers' CPU µs per request |",
            "|---|---|---:|"]
    cpu_total = {}

    def cpu_row(title, rs, key):
        cpu = _cpu(rs)
        total = sum(v[0] for n, v in cpu.items() if n != "client")
        cpu_total[key] = total
        cells = "; ".join(f"{n} {v[0]:.1f}" + ("" if v[1] is None else f" / {v[1]:.2f}") for n, v in cpu.items())
        out.append(f"| {title} | {cells} | {total:.1f} |")

    for cmd, c, p in keys:
        if cmd in ("GET", "SET") and c == 50 and p in (1, 16):
            for s in ("tessera", "redis"):
                rs = [r for r in sweep if (r["command"], r["clients"], r["pipeline"], r["side"]) == (cmd, c, p, s)]
                cpu_row(f"{cmd} 1 KiB, {c} clients, P={p}: {s}", rs, (cmd, p, s))
    for op in ("put", "get"):
        for s in ("tessera", "redis-aof", "etcd"):
            rs = [r for r in kv if (r["op"], r["clients"], r["side"]) == (op, 50, s)]
            if rs:
                cpu_row(f"{op} 1 KiB, 50 clients: {s}", rs, (op, s))

    def verdict(v, target, above=True):
        ok = v >= target if above else v <= target
        return f"{v:.2f} ({'meets' if ok else 'misses'} {'≥' if above else '≤'} {target})"

    out += ["", "## Against the targets", "", "| target | this run |", "|---|---|"]
    for cmd in ("GET", "TENSORGET"):
        for p, t in ((1, 0.6), (16, 0.35)):
            if (cmd, 50, p) in ratio:
                out.append(f"| {cmd}, 50 clients, P={p}: Tessera / RedisAI | {verdict(ratio[(cmd, 50, p)], t)} |")
    for cmd in ("SET", "TENSORSET"):
        if (cmd, 50, 1) in ratio:
            out.append(f"| {cmd}, 50 clients, P=1: Tessera / RedisAI | {verdict(ratio[(cmd, 50, 1)], 0.25)} |")
    if ("put", 50) in kv_ratio:
        out.append(f"| puts, 50 clients: Tessera / etcd | {verdict(kv_ratio[('put', 50)][0], 3.0)} |")
    if ("put", 1) in kv_ratio:
        out.append(f"| put p50, 1 client: Tessera / etcd | {verdict(kv_ratio[('put', 1)][1], 0.6, above=False)} |")
    for cmd, t in (("GET", 3.0), ("SET", 8.0)):
        if (cmd, 1, "tessera") in cpu_total and cpu_total.get((cmd, 1, "redis")):
            v = cpu_total[(cmd, 1, "tessera")] / cpu_total[(cmd, 1, "redis")]
            out.append(f"| cluster CPU per {cmd} (50 clients, P=1) / redis-server's | {verdict(v, t, above=False)} |")
    out += ["", "![throughput vs clients](throughput-clients.png)", "",
            "![throughput vs pipeline depth](throughput-pipeline.png)", "", "![latency](latency.png)", ""]
    return "\n".join(out)
