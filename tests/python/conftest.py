"""Starts a real Tessera cluster (3 nodes x 2 shards + 1 router, port 0) for the
Python client tests. Binaries come from TESSERA_BIN_DIR (set by scripts/test.sh)."""

import pytest
import redis

from tessera_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(request):
    c = LocalCluster()
    yield c
    if request.session.testsfailed:
        print(c.logs())
    c.stop()


@pytest.fixture
def plain(cluster):
    r = redis.Redis(port=cluster.plain_port)
    r.flushall()
    return r
