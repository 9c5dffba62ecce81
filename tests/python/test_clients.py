"""Unmodified Redis clients against Tessera: redis-py RedisCluster (RESP3 and
RESP2), redisai-py, SmartRedis, redis-cli -c and redis-benchmark --cluster."""

import os
import subprocess

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster, ClusterNode
from redis.crc import key_slot


def keys_over_slots(n):
    return [f"py:{i}" for i in range(n)]


@pytest.mark.parametrize("protocol", [3, 2])
def test_redis_py_cluster_strings_and_tensors(cluster, plain, protocol):
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.cluster_ports],
                      protocol=protocol, decode_responses=False)
    try:
        keys = keys_over_slots(2000)
        slots = {rc.keyslot(k) for k in keys}
        assert len(slots) > 1500
        for k in keys:
            assert rc.set(k, k.encode())
        for k in keys:
            assert rc.get(k) == k.encode()
        assert rc.execute_command("AI.TENSORSET", "{py}t", "FLOAT", 2, 2, "VALUES", 1, 2, 3, 4) in (b"OK", "OK", True)
        meta = rc.execute_command("AI.TENSORGET", "{py}t", "META", "VALUES")
        assert meta[0] == b"dtype" and meta[1] == b"FLOAT" and meta[3] == [2, 2]
        values = [float(v) for v in meta[5]]
        assert values == [1.0, 2.0, 3.0, 4.0]
        assert rc.type("{py}t") == b"AI_TENSOR"
        # Sent to every advertised master and summed: each key counted once.
        assert rc.dbsize(target_nodes=RedisCluster.PRIMARIES) == 2001
        listed = rc.keys("py:*", target_nodes=RedisCluster.PRIMARIES)
        assert sorted(listed) == sorted(k.encode() for k in keys)
        with pytest.raises(redis.exceptions.RedisClusterException):
            rc.mget("py:1", "py:2")  # redis-py refuses cross-slot MGET client-side
        assert rc.mget_nonatomic("py:1", "py:2") == [b"py:1", b"py:2"]
    finally:
        rc.close()


def test_crossslot_error_from_server(cluster, plain):
    with pytest.raises(redis.exceptions.ResponseError, match="hash to the same slot"):
        plain.execute_command("MSET", "a", "1", "b", "2")
    assert plain.execute_command("MSET", "{x}a", "1", "{x}b", "2")
    assert plain.mget("{x}a", "{x}b") == [b"1", b"2"]


def test_redisai_py_tensors(cluster, plain):
    import redisai

    con = redisai.Client(host="127.0.0.1", port=cluster.plain_port)
    arr = np.arange(256, dtype=np.float32).reshape(16, 16)
    con.tensorset("rai:x", arr)
    back = con.tensorget("rai:x")
    assert back.dtype == np.float32 and back.shape == (16, 16)
    assert np.array_equal(back, arr)
    con.tensorset("rai:i", np.array([-3, 4], dtype=np.int64))
    assert con.tensorget("rai:i", as_numpy=False)["values"] == [-3, 4]
    con.tensorset("rai:v", [1.5, 2.5], shape=(2,), dtype="double")
    meta = con.tensorget("rai:v", meta_only=True)
    assert meta["dtype"] == "DOUBLE" and meta["shape"] == [2]
    with pytest.raises(redis.exceptions.ResponseError, match="invalid data type"):
        con.execute_command("AI.TENSORSET", "rai:bad", "FLOAT64", 1)


TESTDATA = __import__("pathlib").Path(
    os.environ.get("TESSERA_TESTDATA") or __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "testdata"
) / "redisai"


@pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"needs RedisAI's test models ({TESTDATA}, or TESSERA_TESTDATA)")
def test_redisai_py_models(cluster, plain):
    """redisai-py's model API against RedisAI's own mnist model."""
    import redisai

    con = redisai.Client(host="127.0.0.1", port=cluster.plain_port)
    blob = (TESTDATA / "mnist.onnx").read_bytes()
    assert con.modelstore("py:m{1}", "ONNX", "CPU", blob, tag="v7") == "OK"
    meta = con.modelget("py:m{1}", meta_only=True)
    assert meta["backend"] == "ONNX" and meta["tag"] == "v7" and len(meta["inputs"]) == 1
    assert con.modelget("py:m{1}")["blob"] == blob
    one = np.frombuffer((TESTDATA / "one.raw").read_bytes(), dtype=np.float32).reshape(1, 1, 28, 28)
    con.tensorset("py:a{1}", one)
    assert con.modelexecute("py:m{1}", inputs=["py:a{1}"], outputs=["py:b{1}"]) == "OK"
    scores = con.tensorget("py:b{1}")
    assert scores.shape == (1, 10) and int(np.argmax(scores)) == 1
    info = con.infoget("py:m{1}")
    assert info["calls"] == 1 and info["type"] == "MODEL"
    assert con.inforeset("py:m{1}") == "OK"
    assert con.config("MODEL_CHUNK_SIZE") == 535822336
    with pytest.raises(redis.exceptions.ResponseError, match="does not match model definition"):
        con.modelexecute("py:m{1}", inputs=["py:a{1}", "py:a{1}"], outputs=["py:b{1}"])
    assert con.modeldel("py:m{1}") == "OK"
    with pytest.raises(redis.exceptions.ResponseError, match="model key is empty"):
        con.modelget("py:m{1}")


def test_redisai_py_dag(cluster, plain):
    """redisai-py's dag() builder: AI.DAGEXECUTE with LOAD and PERSIST,
    AI.DAGEXECUTE_RO routed by a tag (intermediate tensors never reach the
    keyspace), and the deprecated AI.DAGRUN it falls back to without
    LOAD/PERSIST/ROUTING."""
    import redisai

    con = redisai.Client(host="127.0.0.1", port=cluster.plain_port)
    assert con.modelstore("py:m{3}", "ONNX", "CPU", (TESTDATA / "mnist.onnx").read_bytes()) == "OK"
    one = np.frombuffer((TESTDATA / "one.raw").read_bytes(), dtype=np.float32).reshape(1, 1, 28, 28)
    con.tensorset("py:in{3}", one)

    dag = con.dag(load=["py:in{3}"], persist=["py:out{3}"])
    dag.modelexecute("py:m{3}", inputs=["py:in{3}"], outputs=["py:out{3}"])
    dag.tensorget("py:out{3}")
    done, scores = dag.execute()
    assert done == "OK" and scores.shape == (1, 10) and int(np.argmax(scores)) == 1
    assert int(np.argmax(con.tensorget("py:out{3}"))) == 1

    ro = con.dag(routing="{3}", readonly=True)
    ro.tensorset("x", one).modelexecute("py:m{3}", inputs="x", outputs="y").tensorget("y")
    set_ok, run_ok, y = ro.execute()
    assert (set_ok, run_ok) == ("OK", "OK") and int(np.argmax(y)) == 1
    assert plain.exists("x") == 0 and plain.exists("y") == 0

    with pytest.warns(DeprecationWarning):
        old = con.dag()
    old.tensorset("a", [1, 2, 3], dtype="int8").tensorget("a", as_numpy=False)
    set_ok, a = old.execute()
    assert set_ok == "OK" and a == {"dtype": "INT8", "shape": [3], "values": [1, 2, 3]}

    with pytest.raises(redis.exceptions.ResponseError, match="PERSIST cannot be specified in a read-only DAG"):
        plain.execute_command("AI.DAGEXECUTE_RO", "PERSIST", 1, "py:out{3}", "|>", "AI.TENSORGET", "py:out{3}")


# A RedisAI script in the entry-point form (AI.SCRIPTSTORE / AI.SCRIPTEXECUTE):
# `bar` adds two tensors, `set_incr` writes and increments a string key
# through redis.execute and returns the result as a 0-d INT64 tensor.
SCRIPT_SRC = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]

def set_incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0], args[0])
    v = redis.execute('INCR', keys[0])
    return torch.tensor(int(str(v)))
"""

# The legacy positional form, as SmartRedis stores it (AI.SCRIPTSET, then
# AI.SCRIPTRUN without entry points).
LEGACY_SRC = "def add(a, b):\n    return a + b\n"


def sr_twice(x):
    return x + x


@pytest.mark.parametrize("mode", ["plain", "cluster"])
def test_smartredis_scripts(cluster, plain, mode, monkeypatch):
    """SmartRedis 0.6.1: put_tensor (AI.TENSORSET .. BLOB), set_script
    (AI.SCRIPTSET k CPU SOURCE s), run_script (AI.SCRIPTRUN k fn INPUTS ..
    OUTPUTS .., no counts), get_tensor (AI.TENSORGET k META BLOB),
    get_script (AI.SCRIPTGET k SOURCE), delete_script (AI.SCRIPTDEL), as a
    non-cluster client on the plain port and as a cluster client on the
    cluster ports. In cluster mode SmartRedis stores the script once per
    advertised master under `{<prefix>}.<name>` (a prefix that hashes to the
    master's first slot), copies the inputs to `{<prefix>}.<in>.TMP`, runs
    there, copies the outputs back and DELs the temporaries."""
    pytest.importorskip("smartredis", reason="SmartRedis is not installed (scripts/setup.sh)")
    from smartredis import Client
    from smartredis.error import RedisReplyError

    # Read by the client library when a Client is made. Its default socket
    # timeout (250 ms) would resend a slow command; one retry at most.
    monkeypatch.setenv("SR_LOG_LEVEL", "QUIET")
    monkeypatch.setenv("SR_SOCKET_TIMEOUT", "60000")
    monkeypatch.setenv("SR_CMD_TIMEOUT", "1")
    port = cluster.plain_port if mode == "plain" else cluster.cluster_ports[0]
    address = f"127.0.0.1:{port}"
    monkeypatch.setenv("SSDB", address)  # Client(address=) sets SSDB; restored afterwards
    client = Client(address=address, cluster=(mode == "cluster"))

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 10.5, dtype=np.float32)
    client.put_tensor("sr:a{sr}", a)
    client.put_tensor("sr:b{sr}", b)
    assert client.tensor_exists("sr:a{sr}")
    back = client.get_tensor("sr:a{sr}")
    assert back.dtype == np.float32 and back.shape == (2, 3) and np.array_equal(back, a)

    client.set_script("sr:s{sr}", LEGACY_SRC)
    assert client.model_exists("sr:s{sr}")
    assert client.get_script("sr:s{sr}") == LEGACY_SRC
    client.run_script("sr:s{sr}", "add", ["sr:a{sr}", "sr:b{sr}"], ["sr:c{sr}"])
    out = client.get_tensor("sr:c{sr}")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert np.array_equal(out, a + b)

    # A single input and output may be given as a string; a Python function
    # is stored from its source (inspect.getsource).
    client.set_function("sr:f{sr}", sr_twice)
    client.run_script("sr:f{sr}", "sr_twice", "sr:a{sr}", "sr:d{sr}")
    assert np.array_equal(client.get_tensor("sr:d{sr}"), a + a)

    i64 = np.array([[-3], [4]], dtype=np.int64)
    client.put_tensor("sr:i{sr}", i64)
    client.run_script("sr:s{sr}", "add", ["sr:i{sr}", "sr:i{sr}"], "sr:j{sr}")
    j = client.get_tensor("sr:j{sr}")
    assert j.dtype == np.int64 and np.array_equal(j, i64 * 2)

    if mode == "plain":
        info = client.get_ai_info([address], "sr:s{sr}")
        assert len(info) == 1
        assert info[0]["type"] == "SCRIPT" and info[0]["backend"] == "TORCH"
        assert info[0]["key"] == "sr:s{sr}" and info[0]["device"] == "CPU"
        assert info[0]["samples"] == "-1" and info[0]["calls"] == "2" and info[0]["errors"] == "0"
        assert plain.type("sr:s{sr}") == b"AI_SCRIPT"

    user = {k.encode() for k in ["sr:a{sr}", "sr:b{sr}", "sr:c{sr}", "sr:d{sr}", "sr:i{sr}", "sr:j{sr}"]}
    keys = set(plain.keys("*"))
    if mode == "plain":
        assert keys == user | {b"sr:s{sr}", b"sr:f{sr}"}
    else:
        # One copy of each script per advertised master, under a hash tag of
        # the master's first slot; the run's temporaries are gone.
        internal = keys - user
        assert user <= keys and len(internal) == 2 * len(cluster.cluster_ports), keys
        assert all(k.startswith(b"{") and k.endswith((b"}.sr:s{sr}", b"}.sr:f{sr}")) for k in internal), keys
        assert {plain.type(k) for k in internal} == {b"AI_SCRIPT"}
        assert len({key_slot(k) for k in internal}) == len(cluster.cluster_ports)

    with pytest.raises(RedisReplyError):
        client.run_script("sr:s{sr}", "no_such_fn", ["sr:a{sr}", "sr:b{sr}"], ["sr:e{sr}"])
    assert not client.tensor_exists("sr:e{sr}")

    client.delete_script("sr:s{sr}")
    client.delete_script("sr:f{sr}")
    assert not client.model_exists("sr:s{sr}")
    with pytest.raises(RedisReplyError, match="script key is empty"):
        client.get_script("sr:s{sr}")
    assert not [k for k in plain.keys("*") if k.endswith((b"sr:s{sr}", b"sr:f{sr}"))]


def test_redisai_py_scripts(cluster, plain):
    """redisai-py 1.3.0's script API: scriptstore (AI.SCRIPTSTORE k CPU TAG t
    ENTRY_POINTS n .. SOURCE s), scriptget (AI.SCRIPTGET k META [SOURCE]),
    scriptexecute (AI.SCRIPTEXECUTE k fn KEYS/INPUTS/ARGS/OUTPUTS with counts),
    scriptscan, infoget/inforeset and scriptdel, with redis.execute writing a
    string key that redis-py then reads."""
    redisai = pytest.importorskip("redisai", reason="redisai-py is not installed (scripts/setup.sh)")

    con = redisai.Client(host="127.0.0.1", port=cluster.plain_port)
    assert con.scriptstore("py:s{2}", "CPU", SCRIPT_SRC, ["bar", "set_incr"], tag="v1") == "OK"
    assert plain.type("py:s{2}") == b"AI_SCRIPT"
    meta = con.scriptget("py:s{2}", meta_only=True)
    assert meta == {"device": "CPU", "tag": "v1", "entry points": [b"bar", b"set_incr"]}
    full = con.scriptget("py:s{2}")
    assert full["source"] == SCRIPT_SRC and full["entry points"] == [b"bar", b"set_incr"]

    con.tensorset("py:a{2}", np.array([[1, 2], [3, 4]], dtype=np.float32))
    con.tensorset("py:b{2}", np.array([[10, 20], [30, 40]], dtype=np.float32))
    assert con.scriptexecute("py:s{2}", "bar", inputs=["py:a{2}", "py:b{2}"], outputs=["py:c{2}"]) == "OK"
    c = con.tensorget("py:c{2}")
    assert c.dtype == np.float32 and np.array_equal(c, np.array([[11, 22], [33, 44]], dtype=np.float32))

    assert con.scriptexecute("py:s{2}", "set_incr", keys=["py:k{2}"], args=["41"], outputs=["py:n{2}"]) == "OK"
    n = con.tensorget("py:n{2}")
    assert n.dtype == np.int64 and n.shape == () and int(n) == 42
    assert plain.get("py:k{2}") == b"42"
    assert con.tensorget("py:n{2}", as_numpy=False) == {"dtype": "INT64", "shape": [], "values": [42]}

    with pytest.warns(UserWarning):
        scan = con.scriptscan()
    assert ["py:s{2}", "v1"] in scan

    info = con.infoget("py:s{2}")
    assert info["key"] == "py:s{2}" and info["type"] == "SCRIPT" and info["backend"] == "TORCH"
    assert info["device"] == "CPU" and info["tag"] == "v1"
    assert info["calls"] == 2 and info["errors"] == 0 and info["samples"] == -1 and info["duration"] > 0
    assert con.inforeset("py:s{2}") == "OK"
    info = con.infoget("py:s{2}")
    assert info["calls"] == 0 and info["duration"] == 0 and info["samples"] == -1

    # Positional functions are not valid entry points (they still run through
    # the deprecated AI.SCRIPTSET/AI.SCRIPTRUN).
    with pytest.raises(redis.exceptions.ResponseError, match="Wrong number of inputs in function add"):
        con.scriptstore("py:old{2}", "CPU", LEGACY_SRC, "add")
    assert plain.exists("py:old{2}") == 0

    assert con.scriptdel("py:s{2}") == "OK"
    assert plain.exists("py:s{2}") == 0
    with pytest.raises(redis.exceptions.ResponseError, match="script key is empty"):
        con.scriptget("py:s{2}")
    with pytest.raises(redis.exceptions.ResponseError, match="script key is empty"):
        con.scriptexecute("py:s{2}", "bar", inputs=["py:a{2}", "py:b{2}"], outputs=["py:c{2}"])
    with pytest.raises(redis.exceptions.ResponseError, match="cannot find run info for key"):
        con.infoget("py:s{2}")


@pytest.mark.parametrize("protocol", [3, 2])
def test_redis_py_cluster_scripts(cluster, plain, protocol):
    """redis-py RedisCluster routes the script commands by their keys: the
    fixed first key of AI.SCRIPTSTORE/GET/DEL, COMMAND GETKEYS for
    AI.SCRIPTEXECUTE (movable keys). One script per hash tag, with the tags
    chosen so that both advertised masters own one."""
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.cluster_ports],
                      protocol=protocol, decode_responses=False)
    ok = (b"OK", "OK", True)
    try:
        tags = ["7", "1"]  # slots 1716 and 9842
        owners = {rc.get_node_from_key(f"{{{t}}}s").port for t in tags}
        assert owners == set(cluster.cluster_ports)
        for t in tags:
            s, a, b, c, k, n = (f"{{{t}}}{x}" for x in "sabckn")
            assert rc.execute_command("AI.SCRIPTSTORE", s, "CPU", "TAG", f"tag{t}", "ENTRY_POINTS", 2, "bar",
                                      "set_incr", "SOURCE", SCRIPT_SRC) in ok
            assert rc.type(s) == b"AI_SCRIPT"
            got = rc.execute_command("AI.SCRIPTGET", s, "META", "SOURCE")
            assert got[:5] == [b"device", b"CPU", b"tag", f"tag{t}".encode(), b"Entry Points"]
            assert got[5] == [b"bar", b"set_incr"] and got[6] == b"source" and got[7] == SCRIPT_SRC.encode()
            assert rc.execute_command("AI.SCRIPTGET", s, "SOURCE") == SCRIPT_SRC.encode()

            assert rc.execute_command("AI.TENSORSET", a, "FLOAT", 2, "VALUES", 1, 2) in ok
            assert rc.execute_command("AI.TENSORSET", b, "FLOAT", 2, "VALUES", 3, 4.5) in ok
            assert rc.execute_command("AI.SCRIPTEXECUTE", s, "bar", "INPUTS", 2, a, b, "OUTPUTS", 1, c) in ok
            meta = rc.execute_command("AI.TENSORGET", c, "META", "VALUES")
            assert meta[1] == b"FLOAT" and meta[3] == [2]
            assert [float(v) for v in meta[5]] == [4.0, 6.5]

            # The script writes k (keys[0]); a bare hash tag is a valid KEYS entry.
            assert rc.execute_command("AI.SCRIPTEXECUTE", s, "set_incr", "KEYS", 2, k, f"{{{t}}}",
                                      "ARGS", 1, "9", "OUTPUTS", 1, n) in ok
            assert rc.execute_command("AI.SCRIPTEXECUTE", s, "set_incr", "KEYS", 1, k, "ARGS", 1, "9",
                                      "OUTPUTS", 1, n) in ok
            assert rc.get(k) == b"10"
            meta = rc.execute_command("AI.TENSORGET", n, "META", "VALUES")
            assert meta[1] == b"INT64" and meta[3] == [] and [int(v) for v in meta[5]] == [10]

            info = rc.execute_command("AI.INFO", s)
            info = dict(zip(info[::2], info[1::2]))
            assert info[b"type"] == b"SCRIPT" and info[b"calls"] == 3 and info[b"samples"] == -1

        # Every cluster port accepts every slot (no MOVED): the master that
        # does not own {1} serves its script too.
        owner = rc.get_node_from_key("{1}s").port
        other = next(p for p in cluster.cluster_ports if p != owner)
        direct = redis.Redis(port=other, protocol=protocol)
        try:
            assert direct.execute_command("AI.SCRIPTGET", "{1}s", "SOURCE") == SCRIPT_SRC.encode()
            assert direct.execute_command("AI.SCRIPTEXECUTE", "{1}s", "bar", "INPUTS", 2, "{1}a", "{1}b",
                                          "OUTPUTS", 1, "{1}c") in ok
        finally:
            direct.close()
        # Keys of two slots: refused by redis-py (from COMMAND GETKEYS), and
        # by the server when sent directly.
        with pytest.raises(redis.exceptions.RedisClusterException):
            rc.execute_command("AI.SCRIPTEXECUTE", "{7}s", "bar", "INPUTS", 2, "{7}a", "{1}b", "OUTPUTS", 1, "{7}c")
        with pytest.raises(redis.exceptions.ResponseError, match="hash to the same slot"):
            plain.execute_command("AI.SCRIPTEXECUTE", "{7}s", "bar", "INPUTS", 2, "{7}a", "{1}b",
                                  "OUTPUTS", 1, "{7}c")

        for t in tags:
            assert rc.execute_command("AI.SCRIPTDEL", f"{{{t}}}s") in ok
            assert rc.exists(f"{{{t}}}s") == 0
            with pytest.raises(redis.exceptions.ResponseError, match="script key is empty"):
                rc.execute_command("AI.SCRIPTGET", f"{{{t}}}s")
    finally:
        rc.close()


def run_cli(*args):
    return subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=30)


def test_redis_cli_cluster_mode_seed_walkthrough(cluster, plain):
    port = str(cluster.cluster_ports[0])
    assert run_cli("-c", "-p", port, "AI.TENSORSET", "tA", "FLOAT", "2", "VALUES", "2", "3").stdout.strip() == "OK"
    assert run_cli("-c", "-p", port, "EXISTS", "tA").stdout.strip() == "1"
    assert run_cli("-c", "-p", port, "TYPE", "tA").stdout.strip() == "AI_TENSOR"
    out = run_cli("-c", "-p", port, "AI.TENSORGET", "tA", "META", "VALUES").stdout.split()
    assert out == ["dtype", "FLOAT", "shape", "2", "values", "2", "3"]
    for i in range(50):
        assert run_cli("-c", "-p", port, "SET", f"cli:{i}", str(i)).stdout.strip() == "OK"
    assert run_cli("-p", str(cluster.plain_port), "DBSIZE").stdout.strip() == "51"


def test_redis_benchmark_cluster_mode(cluster, plain):
    res = subprocess.run(
        ["redis-benchmark", "--cluster", "-p", str(cluster.cluster_ports[0]), "-n", "2000", "-c", "8",
         "-t", "set,get", "-q"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SET:" in res.stdout and "GET:" in res.stdout
    res = subprocess.run(
        ["redis-benchmark", "--cluster", "-p", str(cluster.cluster_ports[0]), "-n", "1000", "-c", "4", "-q",
         "AI.TENSORSET", "bench:{tag}", "FLOAT", "2", "VALUES", "-1", "2"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
