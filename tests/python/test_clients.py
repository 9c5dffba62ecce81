"""Unmodified Redis clients against Tessera: redis-py RedisCluster (RESP3 and
RESP2), redisai-py, redis-cli -c and redis-benchmark --cluster."""

import os
import subprocess

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster, ClusterNode


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
