"""What Redis tooling takes for granted, with real clients: transactions
(redis-py pipelines, plain and RedisCluster), WATCH, MODULE LIST, SAVE /
BGSAVE / LASTSAVE and the INFO sections tools read."""

import os
import pathlib
import subprocess
import time

import pytest
import redis
from redis.cluster import RedisCluster, ClusterNode


def cluster_client(cluster, protocol=2):
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.cluster_ports],
                        protocol=protocol)


def test_transaction_pipeline_applies_in_order(cluster, plain):
    pipe = plain.pipeline(transaction=True)
    pipe.set("{tx}a", "1").incr("{tx}a").get("{tx}a").delete("{tx}b").set("{tx}b", "x", nx=True)
    pipe.execute_command("AI.TENSORSET", "{tx}t", "FLOAT", 2, "VALUES", 1.5, 2.5)
    pipe.execute_command("AI.TENSORGET", "{tx}t", "VALUES")
    pipe.ping()
    out = pipe.execute()
    assert out[:5] == [True, 2, b"2", 0, True]
    assert out[5] in (b"OK", True)
    assert [float(v) for v in out[6]] == [1.5, 2.5]
    assert out[7] is True


def test_errors_inside_exec_leave_the_rest_applied(cluster, plain):
    plain.set("{tx}s", "text")
    pipe = plain.pipeline(transaction=True)
    pipe.incr("{tx}s").set("{tx}after", "yes").get("{tx}after")
    out = pipe.execute(raise_on_error=False)
    assert isinstance(out[0], redis.ResponseError) and "not an integer" in str(out[0])
    assert out[1:] == [True, b"yes"]


def test_queue_time_errors_abort(cluster, plain):
    c = plain.connection_pool.get_connection()
    try:
        def call(*args):
            c.send_command(*args)
            try:
                return c.read_response()
            except redis.ResponseError as e:
                return e
        assert call("MULTI") == b"OK"
        assert call("SET", "{tx}q", "1") == b"QUEUED"
        assert "hash to the same slot" in str(call("SET", "elsewhere", "1"))
        assert "wrong number of arguments" in str(call("GET"))
        assert "nested" in str(call("MULTI"))
        assert str(call("EXEC")).startswith("Transaction discarded because of previous errors")
        assert plain.get("{tx}q") is None
        assert "EXEC without MULTI" in str(call("EXEC"))
        assert "DISCARD without MULTI" in str(call("DISCARD"))
        # As in RedisAI: an AI command's argument error is queued and
        # answered in its place in EXEC's reply.
        assert call("MULTI") == b"OK"
        assert call("AI.MODELEXECUTE", "{tx}m", "INPUTS", 1, "{tx}t", "OUTPUTS", 1, "{tx}o") == b"QUEUED"
        assert call("AI.TENSORSET", "{tx}t", "BADTYPE", 1) == b"QUEUED"
        assert call("SET", "{tx}x", "1") == b"QUEUED"
        out = call("EXEC")
        assert "model key is empty" in str(out[0])
        assert "invalid data type" in str(out[1]) and out[2] == b"OK"

        # DISCARD throws the queue away.
        assert call("MULTI") == b"OK"
        assert call("SET", "{tx}d", "1") == b"QUEUED"
        assert call("DISCARD") == b"OK"
        assert plain.get("{tx}d") is None
    finally:
        plain.connection_pool.release(c)


def test_watch_aborts_when_a_key_moves(cluster, plain):
    other = redis.Redis(port=cluster.plain_port)
    plain.set("{w}n", "1")
    with plain.pipeline(transaction=True) as pipe:
        pipe.watch("{w}n")
        assert pipe.get("{w}n") == b"1"
        other.set("{w}n", "5")
        pipe.multi()
        pipe.set("{w}n", "2")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert plain.get("{w}n") == b"5"
    # Unmoved, it applies; WATCH of an absent key that stays absent too.
    with plain.pipeline(transaction=True) as pipe:
        pipe.watch("{w}n", "{w}absent")
        pipe.multi()
        pipe.incr("{w}n")
        assert pipe.execute() == [6]
    # A key that appears meanwhile moved.
    with plain.pipeline(transaction=True) as pipe:
        pipe.watch("{w}new")
        other.set("{w}new", "x")
        pipe.multi()
        pipe.set("{w}new", "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    # The optimistic-increment loop redis-py documents, against a racing writer.
    def incr(pipe):
        v = int(pipe.get("{w}n"))
        pipe.multi()
        pipe.set("{w}n", v + 1)
    for _ in range(5):
        plain.transaction(incr, "{w}n")
    assert plain.get("{w}n") == b"11"


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_cluster_transaction(cluster, plain, protocol):
    rc = cluster_client(cluster, protocol)
    try:
        with rc.pipeline(transaction=True) as pipe:
            pipe.set("{rc}a", "1").incrby("{rc}a", 41).get("{rc}a")
            # (redis-py's cluster transactions return raw replies.)
            assert pipe.execute() == [b"OK", 42, b"42"]
        with rc.pipeline(transaction=True) as pipe:
            pipe.watch("{rc}a")
            v = int(pipe.get("{rc}a"))
            pipe.multi()
            pipe.set("{rc}a", v * 2)
            assert pipe.execute() == [b"OK"]
        assert rc.get("{rc}a") == b"84"
    finally:
        rc.close()


def test_module_list_and_hello(cluster, plain):
    mods = plain.module_list()
    assert len(mods) == 1
    assert mods[0][b"name"] == b"ai" and mods[0][b"ver"] == 10207
    with pytest.raises(redis.ResponseError, match="built into Tessera"):
        plain.execute_command("MODULE", "LOAD", "/tmp/redisai.so")
    r3 = redis.Redis(port=cluster.plain_port, protocol=3)
    hello = r3.execute_command("HELLO", 3)
    assert hello[b"modules"][0][b"name"] == b"ai"


def test_save_bgsave_lastsave_and_info_persistence(cluster, plain):
    plain.set("{s}k", "v")
    before = plain.lastsave()
    time.sleep(1.1)
    assert plain.save() is True
    assert plain.lastsave() > before
    info = plain.info("persistence")
    assert info["loading"] == 0 and info["rdb_bgsave_in_progress"] == 0
    assert info["rdb_last_bgsave_status"] == "ok" and info["aof_enabled"] == 0
    saved = plain.lastsave()
    time.sleep(1.1)
    assert plain.bgsave() is True
    deadline = time.time() + 60
    while plain.info("persistence")["rdb_bgsave_in_progress"] == 1:
        assert time.time() < deadline
        time.sleep(0.05)
    assert plain.lastsave() > saved
    assert plain.get("{s}k") == b"v"


def raw(client, *args):
    """A command's reply as sent, without redis-py's parsing of it."""
    c = client.connection_pool.get_connection()
    try:
        c.send_command(*args)
        return c.read_response()
    finally:
        client.connection_pool.release(c)


def test_info_sections_tools_read(cluster, plain):
    info = plain.info()
    for field in ("redis_version", "used_memory", "used_memory_rss", "mem_allocator", "loading",
                  "rdb_bgsave_in_progress", "aof_enabled", "used_cpu_sys", "cluster_enabled"):
        assert field in info, field
    assert info["used_memory"] > 0 and info["maxmemory_policy"] == "noeviction"
    assert str(info["mem_allocator"]).startswith("mimalloc-")
    assert not any(k.startswith("ai_") for k in info)
    text = raw(plain, "INFO", "default").decode()
    assert text.startswith("# Server\r\n") and not text.endswith("\r\n\r\n")
    # Errors are counted by code.
    with pytest.raises(redis.ResponseError):
        plain.execute_command("AI.TENSORGET", "{i}missing")
    assert plain.info("errorstats")["errorstat_ERR"]["count"] >= 1
    assert plain.info("all").get("ai_RedisAI_version") is None


def test_info_modules_as_redisai_tests_read_it(cluster, plain):
    # A model run loads a backend on the node that runs it.
    plain.execute_command("AI.TENSORSET", "{i}a", "FLOAT", 1, "VALUES", 2)
    text = raw(plain, "INFO", "MODULES").decode()
    assert text.startswith("# Modules\r\nmodule:name=ai,ver=10207,api=1,")
    # RedisAI's test helper: split on '#', section 2+k, fields on whitespace.
    parts = text.split("#")
    names = [p.split()[0] for p in parts[2:]]
    assert names == ["ai_versions", "ai_git", "ai_load_time_configs", "ai_backends_info", "ai_cpu"]
    def fields(k):
        return dict(f.split(":", 1) for f in parts[2 + k].split()[1:])
    assert list(fields(0)) == ["ai_RedisAI_version", "ai_low_level_API_version", "ai_rdb_version"]
    assert fields(0)["ai_RedisAI_version"] == "1.2.7"
    assert list(fields(2)) == ["ai_threads_per_queue", "ai_inter_op_parallelism", "ai_intra_op_parallelism",
                               "ai_model_execution_timeout", "ai_backend_memory_limit"]
    cpu = fields(4)
    assert float(cpu["ai_self_used_cpu_user"]) > 0 and "ai_children_used_cpu_sys" in cpu
    only = raw(plain, "INFO", "ai_cpu").decode()
    assert only.startswith("# ai_cpu\r\n") and "ai_git" not in only


def test_slot_commands_are_refused_in_a_transaction(cluster, plain):
    c = plain.connection_pool.get_connection()
    try:
        c.send_command("MULTI")
        assert c.read_response() == b"OK"
        c.send_command("CLUSTER", "COUNTKEYSINSLOT", 5)
        with pytest.raises(redis.ResponseError, match="not allowed inside a transaction"):
            c.read_response()
        c.send_command("EXEC")
        with pytest.raises(redis.ResponseError, match="Transaction discarded"):
            c.read_response()
    finally:
        plain.connection_pool.release(c)


TESTDATA = pathlib.Path(
    os.environ.get("TESSERA_TESTDATA") or pathlib.Path(__file__).resolve().parents[3] / "shared" / "testdata"
) / "redisai"

SCRIPT = """
def add(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('INCR', keys[0])
    return tensors[0] + tensors[1]
"""


@pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"needs RedisAI's test models ({TESTDATA}, or TESSERA_TESTDATA)")
def test_model_and_script_runs_inside_a_transaction(cluster, plain):
    """Beyond RedisAI (which refuses runs in MULTI): TENSORSET, MODELEXECUTE,
    SCRIPTEXECUTE and TENSORGET in one transaction, each seeing the ones
    before it, applied as one entry."""
    graph = (TESTDATA / "graph.pb").read_bytes()
    plain.execute_command("AI.MODELSTORE", "{m}mul", "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
                          "BLOB", graph)
    plain.execute_command("AI.SCRIPTSTORE", "{m}s", "CPU", "ENTRY_POINTS", 1, "add", "SOURCE", SCRIPT)
    pipe = plain.pipeline(transaction=True)
    pipe.execute_command("AI.TENSORSET", "{m}a", "FLOAT", 2, "VALUES", 2, 3)
    pipe.execute_command("AI.MODELEXECUTE", "{m}mul", "INPUTS", 2, "{m}a", "{m}a", "OUTPUTS", 1, "{m}sq")
    pipe.execute_command("AI.SCRIPTEXECUTE", "{m}s", "add", "KEYS", 1, "{m}n", "INPUTS", 2, "{m}sq", "{m}a",
                         "OUTPUTS", 1, "{m}sum")
    pipe.execute_command("AI.TENSORGET", "{m}sum", "VALUES")
    pipe.get("{m}n")
    # A run that fails answers its error in place; the rest applies.
    pipe.execute_command("AI.MODELEXECUTE", "{m}mul", "INPUTS", 2, "{m}a", "{m}none", "OUTPUTS", 1, "{m}x")
    pipe.execute_command("AI.DAGEXECUTE", "LOAD", 1, "{m}a", "|>", "AI.TENSORGET", "{m}a", "VALUES")
    out = pipe.execute(raise_on_error=False)
    assert out[:3] == [b"OK", b"OK", b"OK"]
    assert [float(v) for v in out[3]] == [6.0, 12.0]
    assert out[4] == b"1"
    assert "tensor key is empty" in str(out[5])
    assert "Cannot run RedisAI command within a transaction" in str(out[6])
    assert [float(v) for v in plain.execute_command("AI.TENSORGET", "{m}sq", "VALUES")] == [4.0, 9.0]
    assert plain.exists("{m}x") == 0
    # WATCH holds for a transaction that runs a model too.
    other = redis.Redis(port=cluster.plain_port)
    with plain.pipeline(transaction=True) as p:
        p.watch("{m}a")
        other.execute_command("AI.TENSORSET", "{m}a", "FLOAT", 2, "VALUES", 5, 5)
        p.multi()
        p.execute_command("AI.MODELEXECUTE", "{m}mul", "INPUTS", 2, "{m}a", "{m}a", "OUTPUTS", 1, "{m}sq")
        with pytest.raises(redis.WatchError):
            p.execute()
    assert [float(v) for v in plain.execute_command("AI.TENSORGET", "{m}sq", "VALUES")] == [4.0, 9.0]


def test_pipelined_watch_exec_stays_in_order(cluster, plain):
    """WATCH … EXEC sent in one write, then a GET: the GET sees EXEC's write."""
    import socket
    def cmd(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out
    for i in range(20):
        plain.set("{p}k", "old")
        s = socket.create_connection(("127.0.0.1", cluster.plain_port))
        try:
            s.sendall(cmd("WATCH", "{p}k") + cmd("MULTI") + cmd("SET", "{p}k", f"new{i}") + cmd("EXEC")
                      + cmd("GET", "{p}k"))
            want = f"${len(f'new{i}')}\r\nnew{i}\r\n".encode()
            data = b""
            deadline = time.time() + 10
            while not data.endswith(want) and time.time() < deadline:
                s.settimeout(max(0.01, deadline - time.time()))
                data += s.recv(65536)
            assert data == b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n" + want, data
        finally:
            s.close()


def test_a_save_whose_client_leaves_still_ends(cluster, plain):
    c = plain.connection_pool.get_connection()
    c.send_command("SAVE")
    c.disconnect()
    deadline = time.time() + 60
    while plain.info("persistence")["rdb_bgsave_in_progress"] == 1:
        assert time.time() < deadline
        time.sleep(0.05)
    assert plain.save() is True


def test_redis_cli_sees_the_module_and_transactions(cluster, plain):
    def cli(*args, stdin=None):
        out = subprocess.run(["redis-cli", "-p", str(cluster.plain_port), *map(str, args)], input=stdin,
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.decode()
    assert "ai" in cli("MODULE", "LIST").split()
    assert "ai_RedisAI_version:1.2.7" in cli("INFO", "MODULES")
    # A transaction typed into redis-cli, as an operator would.
    out = cli(stdin=b"MULTI\nSET {cli}a 1\nINCR {cli}a\nEXEC\n")
    assert out.split() == ["OK", "QUEUED", "QUEUED", "OK", "2"], out


def test_health_endpoints(cluster, plain):
    """/livez answers while the process serves; /readyz once the router knows
    a leader for every shard, and once a node's replicas are caught up."""
    import urllib.request
    def get(addr, path):
        try:
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    for addr in [cluster.metrics] + cluster.node_metrics:
        assert get(addr, "/livez") == (200, "ok\n")
        deadline = time.time() + 30
        while get(addr, "/readyz")[0] != 200:
            assert time.time() < deadline, get(addr, "/readyz")
            time.sleep(0.1)
        assert get(addr, "/readyz") == (200, "ok\n")


def test_readyz_says_when_a_majority_is_gone():
    """With two of three nodes gone, no shard has a leader: the router and
    the surviving node stop being ready, and both stay live."""
    import urllib.request
    from tessera_cluster import LocalCluster
    def status(addr, path):
        try:
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    c = LocalCluster()
    try:
        deadline = time.time() + 30
        while status(c.metrics, "/readyz") != 200:
            assert time.time() < deadline
            time.sleep(0.1)
        nodes = [p for name, p, _ in c.procs if name.startswith("node-")]
        for p in nodes[1:]:
            p.kill()
            p.wait()
        deadline = time.time() + 30
        while status(c.metrics, "/readyz") != 503 or status(c.node_metrics[0], "/readyz") != 503:
            assert time.time() < deadline, (status(c.metrics, "/readyz"), status(c.node_metrics[0], "/readyz"))
            time.sleep(0.2)
        assert status(c.metrics, "/livez") == 200 and status(c.node_metrics[0], "/livez") == 200
    finally:
        c.stop()
