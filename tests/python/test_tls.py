"""Client TLS with real clients: redis-cli, redis-benchmark, redis-py (plain
and RedisCluster) against the router's TLS ports, client certificates,
refusals (a wrong CA, no client certificate), the endpoints cluster clients
are given, and certificates reloaded without a restart.

Certificates come from `tessera-admin certs` (a throwaway CA per folder).
The Rust side (redis-rs, expired certificates, --tls-only) is in
tests/tests/tls.rs."""

import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tessera_cluster import LocalCluster

BIN = os.environ.get("TESSERA_BIN_DIR", os.path.expanduser("~/.cache/tessera/target/debug"))


def make_certs(folder):
    subprocess.run([f"{BIN}/tessera-admin", "certs", "--dir", folder], check=True, capture_output=True)
    return {n: os.path.join(folder, n) for n in
            ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"]}


@pytest.fixture(scope="module")
def certs():
    root = tempfile.mkdtemp(prefix="tessera-tls-")
    # The router's files live in their own folder, so a test can swap them.
    live = os.path.join(root, "live")
    yield {"good": make_certs(os.path.join(root, "good")), "other": make_certs(os.path.join(root, "other")),
           "live": live, "root": root}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_cluster(request, certs):
    if os.environ.get("TESSERA_EXTERNAL_CLUSTER"):
        pytest.skip("TLS tests start their own cluster")
    shutil.copytree(os.path.dirname(certs["good"]["ca.crt"]), certs["live"])
    live = certs["live"]
    c = LocalCluster(router_args=[
        "--tls-listen", "127.0.0.1:0", "--tls-cluster-listen", "127.0.0.1:0,127.0.0.1:0",
        "--tls-cert", f"{live}/server.crt", "--tls-key", f"{live}/server.key",
        "--tls-ca-cert", f"{live}/ca.crt", "--tls-reload-secs", "1"])
    yield c
    if request.session.testsfailed:
        print(c.logs())
    c.stop()


def cli(port, *args, certs=None, client_cert=True, ca=None, timeout=20):
    argv = ["redis-cli", "-p", str(port)]
    if certs is not None:
        argv += ["--tls", "--cacert", ca or certs["ca.crt"]]
        if client_cert:
            argv += ["--cert", certs["client.crt"], "--key", certs["client.key"]]
    return subprocess.run(argv + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def tls_client(port, certs, **kw):
    return redis.Redis(port=port, ssl=True, ssl_ca_certs=certs["ca.crt"], ssl_certfile=certs["client.crt"],
                       ssl_keyfile=certs["client.key"], socket_timeout=10, **kw)


def test_redis_cli_over_tls(tls_cluster, certs):
    good = certs["good"]
    assert cli(tls_cluster.tls_port, "SET", "tls:k", "v1", certs=good).stdout.strip() == "OK"
    assert cli(tls_cluster.tls_port, "GET", "tls:k", certs=good).stdout.strip() == "v1"
    # The same store on the plain port.
    assert cli(tls_cluster.plain_port, "GET", "tls:k").stdout.strip() == "v1"
    # Tensors too, and RESP3.
    out = cli(tls_cluster.tls_port, "-3", "AI.TENSORSET", "{t}x", "FLOAT", "2", "VALUES", "1", "2", certs=good)
    assert out.stdout.strip() == "OK", out
    out = cli(tls_cluster.tls_port, "AI.TENSORGET", "{t}x", "VALUES", certs=good)
    assert out.stdout.split() == ["1", "2"], out


def test_a_plain_client_on_the_tls_port_gets_nothing(tls_cluster):
    out = cli(tls_cluster.tls_port, "PING", timeout=30)
    assert "PONG" not in out.stdout


def test_wrong_ca_is_refused_by_the_client(tls_cluster, certs):
    out = cli(tls_cluster.tls_port, "PING", certs=certs["good"], ca=certs["other"]["ca.crt"])
    assert "PONG" not in out.stdout
    assert "certificate verify failed" in (out.stdout + out.stderr), out


def test_a_client_without_a_certificate_is_refused(tls_cluster, certs):
    # --tls-auth-clients yes (the default, as Redis's).
    out = cli(tls_cluster.tls_port, "PING", certs=certs["good"], client_cert=False)
    assert "PONG" not in out.stdout, out
    with pytest.raises((redis.ConnectionError, ssl.SSLError)):
        redis.Redis(port=tls_cluster.tls_port, ssl=True, ssl_ca_certs=certs["good"]["ca.crt"],
                    socket_timeout=10).ping()


def test_a_client_certificate_from_another_ca_is_refused(tls_cluster, certs):
    good, other = certs["good"], certs["other"]
    r = redis.Redis(port=tls_cluster.tls_port, ssl=True, ssl_ca_certs=good["ca.crt"],
                    ssl_certfile=other["client.crt"], ssl_keyfile=other["client.key"], socket_timeout=10)
    with pytest.raises((redis.ConnectionError, ssl.SSLError)):
        r.ping()


def test_redis_py_over_tls(tls_cluster, certs):
    r = tls_client(tls_cluster.tls_port, certs["good"])
    r.set("tls:py", "value")
    assert r.get("tls:py") == b"value"
    r3 = tls_client(tls_cluster.tls_port, certs["good"], protocol=3)
    assert r3.get("tls:py") == b"value"
    # A pipeline of 500 commands in flight through one TLS connection.
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"{{tlsp}}{i}", i)
    pipe.execute()
    assert r.mget([f"{{tlsp}}{i}" for i in range(500)]) == [str(i).encode() for i in range(500)]
    # A value larger than a TLS record (16 KiB).
    big = os.urandom(300_000)
    r.set("tls:big", big)
    assert r.get("tls:big") == big


def test_cluster_endpoints_follow_the_connection(tls_cluster, certs):
    r = tls_client(tls_cluster.tls_cluster_ports[0], certs["good"])
    tls_ports = sorted(entry[2][1] for entry in r.execute_command("CLUSTER", "SLOTS"))
    assert tls_ports == sorted(tls_cluster.tls_cluster_ports)
    plain = redis.Redis(port=tls_cluster.cluster_ports[0])
    plain_ports = sorted(entry[2][1] for entry in plain.execute_command("CLUSTER", "SLOTS"))
    assert plain_ports == sorted(tls_cluster.cluster_ports)
    nodes = r.execute_command("CLUSTER", "NODES")
    nodes = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    for p in tls_cluster.tls_cluster_ports:
        assert f"127.0.0.1:{p}@" in nodes, nodes
    # The same masters (same ids) either way.
    assert sorted(e[2][2] for e in r.execute_command("CLUSTER", "SLOTS")) == \
        sorted(e[2][2] for e in plain.execute_command("CLUSTER", "SLOTS"))
    # (redis-py turns each shard and node into a dict with bytes keys.)
    for shard in plain.execute_command("CLUSTER", "SHARDS"):
        node = shard[b"nodes"][0]
        assert node[b"port"] in tls_cluster.cluster_ports, node
        assert node[b"tls-port"] in tls_cluster.tls_cluster_ports, node
    assert plain.config_get("tls-port")["tls-port"] == str(tls_cluster.tls_port)


def test_redis_cluster_client_over_tls(tls_cluster, certs):
    good = certs["good"]
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in tls_cluster.tls_cluster_ports],
                      ssl=True, ssl_ca_certs=good["ca.crt"], ssl_certfile=good["client.crt"],
                      ssl_keyfile=good["client.key"])
    try:
        for i in range(200):
            rc.set(f"tlsrc:{i}", i)
        assert [rc.get(f"tlsrc:{i}") for i in range(200)] == [str(i).encode() for i in range(200)]
        # Every connection the client opened went to a TLS port.
        ports = {n.port for n in rc.get_nodes()}
        assert ports == set(tls_cluster.tls_cluster_ports), ports
    finally:
        rc.close()


def test_redis_benchmark_over_tls(tls_cluster, certs):
    good = certs["good"]
    out = subprocess.run(["redis-benchmark", "-p", str(tls_cluster.tls_port), "--tls", "--cacert", good["ca.crt"],
                          "--cert", good["client.crt"], "--key", good["client.key"], "-t", "set,get",
                          "-n", "2000", "-c", "8", "-q"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out
    assert "SET:" in out.stdout and "GET:" in out.stdout, out


def replace_certs(live, source):
    for n in ["ca.crt", "server.crt", "server.key"]:
        tmp = os.path.join(live, f".{n}.new")
        shutil.copyfile(source[n], tmp)
        os.replace(tmp, os.path.join(live, n))


def wait_for(check, what, seconds=15):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_certificates_reload_on_change_and_on_sighup(tls_cluster, certs):
    good, other, live = certs["good"], certs["other"], certs["live"]
    port = tls_cluster.tls_port
    before = tls_client(port, good)
    before.set("tls:reload", "1")

    def serves(cert_set):
        # Client certificates must now come from the new CA too.
        return cli(port, "PING", certs=cert_set).stdout.strip() == "PONG"

    # Files changed on disk: picked up by the 1 s check.
    replace_certs(live, other)
    wait_for(lambda: serves(other), "the router to serve the new certificate")
    assert not serves(good)
    # A connection opened before the reload keeps working.
    assert before.get("tls:reload") == b"1"

    # Back again, this time told with SIGHUP (the check would also see it).
    replace_certs(live, good)
    os.kill(tls_cluster.pid("router"), signal.SIGHUP)
    wait_for(lambda: serves(good), "the router to serve the first certificate again")
    # SIGHUP does not stop the router.
    assert tls_client(port, good).get("tls:reload") == b"1"


def test_a_broken_file_keeps_the_previous_certificates(tls_cluster, certs):
    live, good = certs["live"], certs["good"]
    with open(os.path.join(live, "server.key"), "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    os.kill(tls_cluster.pid("router"), signal.SIGHUP)
    time.sleep(1.5)
    assert cli(tls_cluster.tls_port, "PING", certs=good).stdout.strip() == "PONG"
    replace_certs(live, good)


def test_optional_client_certificates(tls_cluster, certs):
    good = certs["good"]
    fields = tls_cluster.start_router("router-optional", [
        "--tls-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"], "--tls-key", good["server.key"],
        "--tls-ca-cert", good["ca.crt"], "--tls-auth-clients", "optional"])
    port = int(fields["tls"].rsplit(":", 1)[1])
    wait_for(lambda: cli(port, "PING", certs=good, client_cert=False).stdout.strip() == "PONG",
             "the second router to serve")
    assert cli(port, "PING", certs=good).stdout.strip() == "PONG"
    # A certificate that is offered is still checked.
    r = redis.Redis(port=port, ssl=True, ssl_ca_certs=good["ca.crt"], ssl_certfile=certs["other"]["client.crt"],
                    ssl_keyfile=certs["other"]["client.key"], socket_timeout=10)
    with pytest.raises((redis.ConnectionError, ssl.SSLError)):
        r.ping()


def test_tls_1_2_only(tls_cluster, certs):
    good = certs["good"]
    fields = tls_cluster.start_router("router-tls12", [
        "--tls-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"], "--tls-key", good["server.key"],
        "--tls-auth-clients", "no", "--tls-protocols", "TLSv1.2"])
    port = int(fields["tls"].rsplit(":", 1)[1])
    wait_for(lambda: cli(port, "PING", certs=good, client_cert=False).stdout.strip() == "PONG",
             "the TLS 1.2 router to serve")
    redis.Redis(port=port, ssl=True, ssl_ca_certs=good["ca.crt"], socket_timeout=10).ping()
    strict = redis.Redis(port=port, ssl=True, ssl_ca_certs=good["ca.crt"], ssl_min_version=ssl.TLSVersion.TLSv1_3,
                         socket_timeout=10)
    with pytest.raises((redis.ConnectionError, ssl.SSLError)):
        strict.ping()


def test_bad_tls_settings_stop_the_router_at_start(tls_cluster, certs):
    good = certs["good"]
    cases = [
        (["--tls-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"]], "--tls-cert and --tls-key"),
        (["--tls-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"], "--tls-key", good["server.key"]],
         "needs --tls-ca-cert"),
        (["--tls-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"], "--tls-key", good["client.key"],
          "--tls-auth-clients", "no"], "server.crt"),
        (["--tls-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"], "--tls-key", good["server.key"],
          "--tls-auth-clients", "no", "--tls-protocols", "TLSv1.1"], "TLSv1.1"),
        (["--tls-only"], "--tls-only needs"),
        (["--tls-advertise", "127.0.0.1:7011"], "--tls-advertise needs TLS ports"),
        (["--advertise", "127.0.0.1:7001", "--tls-cluster-listen", "127.0.0.1:0", "--tls-cert", good["server.crt"],
          "--tls-key", good["server.key"], "--tls-auth-clients", "no"], "give --tls-advertise"),
        (["--cluster-listen", "127.0.0.1:0,127.0.0.1:0", "--tls-cluster-listen", "127.0.0.1:0",
          "--tls-cert", good["server.crt"], "--tls-key", good["server.key"], "--tls-auth-clients", "no"],
         "1 TLS cluster endpoints"),
    ]
    for args, words in cases:
        out = subprocess.run([f"{BIN}/tessera-router", "--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0",
                              "--metrics-listen", "127.0.0.1:0", "--node", tls_cluster.node_addrs[0],
                              "--node-wait-secs", "5"] + args, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, (args, out)
        assert words in out.stderr, (args, out.stderr)
