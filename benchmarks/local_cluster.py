"""The local Ray cluster the distributed benchmarks run on: a head without CPUs and one node
per shard (``ray.cluster_utils.Cluster``, all on this machine), its files under a temp dir of
its own rather than /tmp/ray, connected to and shut down by ``local_cluster``."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: float = 1, prefix: str = "bench-ray-"):
    """Starts the cluster, connects this process (namespace "lifelong") and yields the
    ``Cluster``; shuts both down on the way out."""
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=prefix)
    os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                            "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="lifelong", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
