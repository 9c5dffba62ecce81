"""The compose cluster end to end (run by deploy/compose/e2e.sh, which starts
it): real clients, a killed leader under a write load, catch-up after its
restart, and a fourth node rebalanced in under a write load. Every write a
client saw acknowledged must read back with its value at the end."""

import argparse
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import redis
from redis.cluster import ClusterNode, RedisCluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg):
    print(f"e2e: {msg}", flush=True)


class Cluster:
    def __init__(self, compose, plain, cluster_ports):
        self.compose = shlex.split(compose)
        self.plain = redis.Redis(port=plain, socket_timeout=30)
        # INFO's text as the server wrote it (redis-py parses it into dicts).
        self.plain.set_response_callback("INFO", lambda r, **_: r)
        self.plain_port = plain
        self.cluster_ports = cluster_ports

    def run(self, *args, check=True, timeout=600):
        out = subprocess.run(self.compose + list(args), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out

    def admin(self, *args, check=True):
        """tessera-admin inside node1's container (the image has no shell,
        the binary is run directly)."""
        return self.run("exec", "-T", "node1", "tessera-admin", "--node", "127.0.0.1:7100", *args, check=check)

    def shards(self):
        """Per shard: its leader id and each replica's `(addr, lag)`, from the
        router's INFO replication."""
        out = {}
        for line in self.plain.execute_command("INFO", "replication").decode().splitlines():
            m = re.match(r"shard(\d+):.*leader_id=(\d+),.*replicas=(.*)$", line)
            if not m:
                continue
            replicas = {}
            for r in m.group(3).split(","):
                addr, *rest = r.split("/")
                lag = re.search(r"lag=(\d+)", r)
                replicas[addr] = int(lag.group(1)) if lag else None
            out[int(m.group(1))] = (int(m.group(2)), replicas)
        return out

    def wait(self, what, cond, timeout=180):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                if cond():
                    return
            except (redis.RedisError, RuntimeError) as e:
                last = e
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class Writer(threading.Thread):
    """SETs unique keys through a cluster client until stopped; records the
    acknowledged ones and when each was acknowledged."""

    def __init__(self, cluster, name):
        super().__init__(daemon=True)
        self.cluster, self.name = cluster, name
        self.acked = {}
        self.ack_times = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self):
        rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.cluster.cluster_ports],
                          socket_timeout=10)
        i = 0
        while not self.stop.is_set():
            key, value = f"e2e:{self.name}:{i}", f"v{i}-{time.time()}"
            i += 1
            try:
                if rc.set(key, value):
                    self.acked[key] = value
                    self.ack_times.append(time.time())
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.05)

    def acked_after(self, t):
        return sum(1 for a in self.ack_times if a > t)


def check_acked(cluster, writers):
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.cluster_ports])
    total = 0
    for w in writers:
        for k, v in w.acked.items():
            got = rc.get(k)
            assert got is not None and got.decode() == v, f"acknowledged write lost: {k}={v}, read {got!r}"
            total += 1
    return total


def load(cluster, name, n=4):
    ws = [Writer(cluster, f"{name}{i}") for i in range(n)]
    for w in ws:
        w.start()
    return ws


def stop(ws):
    for w in ws:
        w.stop.set()
    for w in ws:
        w.join(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compose", required=True)
    ap.add_argument("--plain", type=int, required=True)
    ap.add_argument("--cluster", required=True)
    a = ap.parse_args()
    c = Cluster(a.compose, a.plain, [int(p) for p in a.cluster.split(",")])

    log("waiting for the routers and every shard's leader")
    c.wait("the cluster to serve", lambda: c.plain.dbsize() >= 0, timeout=300)
    c.wait("a leader for every shard", lambda: (s := c.shards()) and all(l for l, _ in s.values()), timeout=300)
    log(f"up: {len(c.shards())} shards")

    log("python client tests against the compose cluster")
    env = dict(os.environ, TESSERA_EXTERNAL_CLUSTER=f"{a.plain},{a.cluster}")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests/python/test_clients.py")], env=env, cwd=ROOT)
    assert r.returncode == 0, "client tests failed against the compose cluster"
    c.plain.flushall()

    # A node that leads shards dies under a write load.
    shards = c.shards()
    leads = {}
    for leader, _ in shards.values():
        leads[leader] = leads.get(leader, 0) + 1
    victim = max(sorted(leads), key=lambda n: leads[n])
    log(f"write load on; killing node{victim} (leads {leads[victim]} of {len(shards)} shards)")
    writers = load(c, "kill")
    time.sleep(3)
    killed_at = time.time()
    c.run("kill", f"node{victim}")
    c.wait(f"new leaders for node{victim}'s shards",
           lambda: all(l not in (0, victim) for l, _ in c.shards().values()), timeout=60)
    time.sleep(5)
    after = sum(w.acked_after(killed_at) for w in writers)
    assert after > 0, "no write was acknowledged after the kill"
    log(f"writes went on: {after} acknowledged since the kill")
    c.run("start", f"node{victim}")
    time.sleep(3)
    stop(writers)
    addr = f"node{victim}:7100"
    c.wait(f"node{victim} to catch up",
           lambda: all(reps.get(addr) == 0 for _, reps in c.shards().values()), timeout=180)
    n = check_acked(c, writers)
    log(f"node{victim} caught up on every shard; {n} acknowledged writes all read back "
        f"({sum(w.errors for w in writers)} attempts failed and were not acknowledged)")

    # Scale 3 -> 4 and rebalance under a write load.
    log("adding node4")
    c.run("--profile", "scale", "up", "-d", "node4")
    c.wait("node4 to register", lambda: re.search(r"^node 4 node4:7100", c.admin("status").stdout, re.M),
           timeout=180)
    plan = c.admin("rebalance", "--dry-run").stdout
    log("rebalance plan:\n" + plan)
    assert "move-replica" in plan, "the plan gives node4 nothing"
    writers = load(c, "scale")
    time.sleep(2)
    out = c.admin("rebalance")
    log(out.stdout.strip())
    time.sleep(2)
    stop(writers)
    status = c.admin("status").stdout
    held = {n: 0 for n in range(1, 5)}
    for m in re.finditer(r"^(?:shard \d+|meta) slots \S* voters \[([\d, ]*)\]", status, re.M):
        for v in m.group(1).split(","):
            if v.strip():
                held[int(v)] += 1
    log(f"replicas per node after rebalance: {held}")
    assert held[4] > 0 and max(held.values()) - min(held.values()) <= 1, status
    again = c.admin("rebalance", "--dry-run").stdout
    assert "move-replica" not in again, f"a second rebalance still plans moves:\n{again}"
    n = check_acked(c, writers)
    log(f"{n} writes acknowledged during the rebalance all read back")
    log("PASS")


if __name__ == "__main__":
    main()
