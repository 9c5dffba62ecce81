"""A local Tessera cluster on ephemeral ports (3 nodes x S shards + 1 router),
started from built binaries; used by the Python tests and scripts/bench.py."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import redis


_LOW_PORT = 10000
_next_port = [os.getpid() * 7919]


def free_port():
    """A port free now, from below the kernel's ephemeral range, for a process
    that must listen on an address known before it starts. A port from
    bind(:0) lies in the ephemeral range, where any outgoing connection on the
    machine may be given it before the node binds (or while a stopped node is
    down), and the node then fails to start."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    span = ephemeral_low - _LOW_PORT
    for _ in range(max(span, 0)):
        port = _LOW_PORT + _next_port[0] % span
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """Runs in the child before exec: the kernel SIGKILLs it when the process
    that started it dies, so a test run killed by a signal or a timeout
    (which skips stop()) leaves no nodes running on the machine."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _ready(proc, timeout=30):
    deadline = time.time() + timeout
    line = proc.stdout.readline().decode()
    if not line.startswith("READY") or time.time() > deadline:
        raise RuntimeError(f"process not ready: {line!r}")
    return line.split()


class LocalCluster:
    def __init__(self, nodes=3, shards_per_node=2, bin_dir=None, router_args=(), node_args=()):
        self.bin = bin_dir or os.environ.get("TESSERA_BIN_DIR",
                                             os.path.expanduser("~/.cache/tessera/target/debug"))
        self.dir = tempfile.mkdtemp(prefix="tessera-py-")
        self.procs = []
        # Each process's command line by name (to start it again).
        self.argv = {}
        # Nodes must know each other's addresses before they start, so ports
        # are reserved up front rather than taken with port 0.
        addrs = [f"127.0.0.1:{free_port()}" for _ in range(nodes)]
        # Each node's metrics address (`/metrics`, `/livez`, `/readyz`).
        self.node_metrics = []
        peers = ",".join(f"{i + 1}={a}" for i, a in enumerate(addrs))
        for n, addr in enumerate(addrs):
            p = self._spawn(f"node-{n + 1}", [f"{self.bin}/tessera-node", "--node-id", str(n + 1),
                                             "--listen", addr, "--metrics-listen", "127.0.0.1:0",
                                             "--print-ready", "--worker-threads", "1", "--peer", peers,
                                             "--shards", str(nodes * shards_per_node),
                                             "--data-dir", os.path.join(self.dir, f"node-{n + 1}")] + list(node_args))
            self.node_metrics.append(_ready(p)[2])
        self.node_addrs = addrs
        fields = self.start_router("router", router_args)
        self.plain = fields["plain"]
        self.metrics = fields["metrics"]
        self.cluster = fields["cluster"].split(",")
        self.plain_port = int(self.plain.rsplit(":", 1)[1])
        self.cluster_ports = [int(a.rsplit(":", 1)[1]) for a in self.cluster]
        # TLS ports, where router_args asked for them.
        self.tls_port = int(fields["tls"].rsplit(":", 1)[1]) if "tls" in fields else None
        self.tls_cluster_ports = [int(a.rsplit(":", 1)[1]) for a in fields.get("tls-cluster", "").split(",") if a]
        deadline = time.time() + 30
        while True:
            try:
                redis.Redis(port=self.plain_port).dbsize()
                break
            except redis.AuthenticationError:
                break  # serving, with users (--acl-file, --requirepass)
            except redis.RedisError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def start_router(self, name, extra_args=(), listen=True):
        """Starts a router in front of this cluster's nodes; returns the
        fields of its READY line (`plain`, `cluster`, `tls`, `tls-cluster`,
        `metrics`). With listen=False, only the extra arguments say what it
        listens on."""
        argv = [f"{self.bin}/tessera-router", "--metrics-listen", "127.0.0.1:0", "--print-ready",
                "--node", ",".join(self.node_addrs)]
        if listen:
            argv += ["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0,127.0.0.1:0"]
        p = self._spawn(name, argv + list(extra_args))
        return dict(f.split("=", 1) for f in _ready(p)[1:])

    def pid(self, name):
        """The process id of the process last started as `name`."""
        return [p.pid for n, p, _ in self.procs if n == name][-1]

    def kill(self, name):
        """Kills (SIGKILL) the process last started as `name`."""
        p = [p for n, p, _ in self.procs if n == name][-1]
        p.kill()
        p.wait()

    def restart(self, name):
        """Starts `name` again as it was first started (a node keeps its
        data directory and address; its metrics address is new)."""
        fields = _ready(self._spawn(name, self.argv[name]))
        if name.startswith("node-"):
            self.node_metrics[int(name[5:]) - 1] = fields[2]
        return fields

    def meta_leader(self, timeout=30):
        """The name of the node leading the meta group (from the nodes'
        `tessera_raft_leader` gauge, refreshed every second)."""
        deadline = time.time() + timeout
        while True:
            for n, addr in enumerate(self.node_metrics):
                try:
                    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                if 'tessera_raft_leader{shard="4294967295"} 1' in text:
                    return f"node-{n + 1}"
            if time.time() > deadline:
                raise TimeoutError("no meta leader reported")
            time.sleep(0.2)

    def _spawn(self, name, argv):
        self.argv.setdefault(name, argv)
        log = open(os.path.join(self.dir, f"{name}.log"), "wb")
        # (The parent death signal follows the thread that spawns: clusters
        # are started from the main thread.)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, preexec_fn=_die_with_parent)
        self.procs.append((name, p, log))
        return p

    def logs(self):
        out = []
        for name, _, log in self.procs:
            log.flush()
            with open(log.name, "rb") as f:
                out.append(f"----- {name} -----\n" + f.read().decode(errors="replace"))
        return "\n".join(out)

    def stop(self):
        for _, p, log in self.procs:
            p.kill()
            p.wait()
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ExternalCluster:
    """A cluster someone else runs on 127.0.0.1: `PLAIN_PORT,CLUSTER_PORT,...`."""

    def __init__(self, ports):
        ports = [int(p) for p in ports.split(",")]
        self.plain_port, self.cluster_ports = ports[0], ports[1:]
        self.plain = f"127.0.0.1:{self.plain_port}"
        self.cluster = [f"127.0.0.1:{p}" for p in self.cluster_ports]

    def logs(self):
        return "(external cluster: see its own logs)"

    def stop(self):
        pass
