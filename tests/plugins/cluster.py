"""Session fixture for the multi-process cluster of ``make cluster`` (:mod:`launch.cluster`): started once per
session the same way (``cluster.start`` with a :class:`ClusterConfig`), in a folder of the session's own, and
stopped at session end. ``$CAPTIONBEAM_CLUSTER`` points at it while it runs, so the ``flink-cluster`` and
``spark-cluster`` profiles resolve to it.

Where ``make engines`` has not fetched the distributions the tests that need them are skipped outside CI,
and fail in CI (as for the job servers, ``tests/plugins/engines.py``).
"""
import io
import os
import shutil
import tempfile

import pytest

from tests.plugins.engines import need_engine


@pytest.fixture(scope="session")
def cluster():
    """-> a started cluster's config (``ClusterConfig``); ``cluster_state(cfg)`` reads its cluster.json."""
    from captionbeam.launch import cluster as cl
    from captionbeam.launch.engines import default_cache
    for engine in ("flink", "spark", "flink-dist", "spark-dist"):
        need_engine(engine)
    root = tempfile.mkdtemp(prefix="captionbeam-cluster-")
    cfg = cl.ClusterConfig(root=root, engines=default_cache())
    old = os.environ.get(cl.CLUSTER_ENV)
    os.environ[cl.CLUSTER_ENV] = root
    try:
        cl.start(cfg, out=io.StringIO())
        yield cfg
    finally:
        cl.stop(root, out=io.StringIO())
        shutil.rmtree(root, ignore_errors=True)   # Spark's work dirs hold the jars shipped per job
        if old is None:
            os.environ.pop(cl.CLUSTER_ENV, None)
        else:
            os.environ[cl.CLUSTER_ENV] = old
