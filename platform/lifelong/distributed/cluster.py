"""Joining a Ray cluster: the one place the platform calls ``ray.init``."""

from __future__ import annotations

import math
import os

import ray

from lifelong.distributed.actor import NAMESPACE


def ensure_ray(address: str | None = None, *, local_cpus: float | None = None,
               log_to_driver: bool = False) -> None:
    """Joins a cluster, or starts a local Ray, unless this process is connected already.

    Args:
        address: The cluster to join; None takes ``$RAY_ADDRESS``.
        local_cpus: Without an address: None lets Ray find a cluster of this machine (the last
            one ``ray start`` began, else a new local one: what ``lifelong memory`` commands
            want); a number starts an embedded local Ray with at least that many logical CPUs
            (the jobs' case: workers and shard actors mostly wait on each other, so they may
            outnumber the cores).
        log_to_driver: Print the workers' and actors' output here.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address or local_cpus is None:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver)
        return
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(local_cpus)), namespace=NAMESPACE,
             log_to_driver=log_to_driver)
