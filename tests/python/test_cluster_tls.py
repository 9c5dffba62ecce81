"""Mutual TLS inside the cluster (--cluster-tls-cert/key/ca on every node,
router and tessera-admin): the cluster serves as it does in the clear, and a
process without a certificate from the cluster CA gets nothing from a node:
no link (Raft or session), no gRPC, no admin call."""

import os
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
import redis

from tessera_cluster import LocalCluster


def flags(d):
    return ["--cluster-tls-cert", os.path.join(d, "cluster.crt"), "--cluster-tls-key", os.path.join(d, "cluster.key"),
            "--cluster-tls-ca", os.path.join(d, "cluster-ca.crt")]


@pytest.fixture(scope="module")
def tls_cluster(request):
    if os.environ.get("TESSERA_EXTERNAL_CLUSTER"):
        pytest.skip("starts its own cluster")
    bin_dir = os.environ.get("TESSERA_BIN_DIR", os.path.expanduser("~/.cache/tessera/target/debug"))
    d = tempfile.mkdtemp(prefix="tessera-ctls-")
    ours, theirs = os.path.join(d, "ours"), os.path.join(d, "theirs")
    for sub in (ours, theirs):
        subprocess.run([f"{bin_dir}/tessera-admin", "certs", "--dir", sub], check=True, capture_output=True)
    c = LocalCluster(node_args=flags(ours), router_args=flags(ours))
    yield c, bin_dir, ours, theirs
    if request.session.testsfailed:
        print(c.logs())
    c.stop()


def test_the_cluster_serves_over_mutual_tls(tls_cluster):
    c, bin_dir, ours, _ = tls_cluster
    r = redis.Redis(port=c.plain_port)
    for i in range(50):
        r.set(f"k{i}", f"v{i}")
    assert [r.get(f"k{i}") for i in range(50)] == [f"v{i}".encode() for i in range(50)]
    r.execute_command("AI.TENSORSET", "t", "FLOAT", 2, "VALUES", 1, 2)
    assert [float(v) for v in r.execute_command("AI.TENSORGET", "t", "VALUES")] == [1.0, 2.0]
    # A large value crosses the session and the Raft links in many records.
    big = os.urandom(3 << 20)
    r.set("big", big)
    assert r.get("big") == big
    # The admin CLI with the cluster's certificate, and without.
    node = ",".join(c.node_addrs)
    ok = subprocess.run([f"{bin_dir}/tessera-admin", "--node", node, *flags(ours), "status"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([f"{bin_dir}/tessera-admin", "--node", node, "--timeout-secs", "5", "status"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


def test_a_peer_without_the_cluster_certificate_gets_nothing(tls_cluster):
    c, bin_dir, ours, theirs = tls_cluster
    host, port = c.node_addrs[0].rsplit(":", 1)
    # A plain Raft link: no magic comes back (a TLS alert, then the close).
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"TSRAFT\x00\x01")
        got = b""
        while chunk := s.recv(64):
            got += chunk
        assert b"TSRAFT" not in got and got[:1] in (b"", b"\x15"), got
    # TLS with a certificate of another cluster's CA (trusting ours): the
    # node refuses it, and says so in its log.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(ours, "cluster-ca.crt"))
    ctx.load_cert_chain(os.path.join(theirs, "cluster.crt"), os.path.join(theirs, "cluster.key"))
    ctx.set_alpn_protocols(["tessera-link"])
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw, server_hostname="tessera.cluster") as s:
                s.sendall(b"TSRAFT\x00\x01")
                if s.recv(8) == b"":
                    raise ConnectionError("closed")
    deadline = time.time() + 10
    while "refused a connection: TLS handshake failed" not in c.logs():
        assert time.time() < deadline, "the node logs the refusal"
        time.sleep(0.2)
    # The same certificate on a cluster member of its own (a router, here):
    # it cannot reach the nodes at all.
    p = subprocess.run([f"{bin_dir}/tessera-router", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                        "--node", ",".join(c.node_addrs), "--node-wait-secs", "3", *flags(theirs)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "no storage node answered" in p.stderr, p.stderr[-2000:]
