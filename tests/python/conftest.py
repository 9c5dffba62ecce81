"""Starts a real Tessera cluster (3 nodes x 2 shards + 1 router, port 0) for the
Python client tests. Binaries come from TESSERA_BIN_DIR (set by scripts/test.sh).
With TESSERA_EXTERNAL_CLUSTER=PLAIN_PORT,CLUSTER_PORT,... the tests use a
cluster already running on 127.0.0.1 instead (the compose cluster in
deploy/compose/e2e.sh)."""

import os

import pytest
import redis

from tessera_cluster import ExternalCluster, LocalCluster


@pytest.fixture(scope="module")
def cluster(request):
    external = os.environ.get("TESSERA_EXTERNAL_CLUSTER")
    c = ExternalCluster(external) if external else LocalCluster()
    yield c
    if request.session.testsfailed:
        print(c.logs())
    c.stop()


@pytest.fixture
def plain(cluster):
    r = redis.Redis(port=cluster.plain_port)
    r.flushall()
    return r
