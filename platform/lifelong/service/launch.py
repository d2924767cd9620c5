"""``lifelong serve`` / ``jobs/serve.py``: makes the named memory exist, starts Serve's HTTP
proxy (loopback by default) and the service's application, and serves until Ctrl-C/SIGTERM.
``build_app`` is the same application for ``serve run`` (an application builder)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading

from lifelong.config import load_config
from lifelong.distributed.spec import absolute_location
from lifelong.errors import ConfigError, MemoryNotFoundError
from lifelong.service.backend import load_encoder_identity
from lifelong.service.config import ServeJob
from lifelong.streaming.segments import vector_size


def absolute_job(job: ServeJob) -> ServeJob:
    """Local paths made absolute: replicas run in other directories."""
    encoder = job.encoder
    checkpoint = encoder.checkpoint
    if checkpoint and "://" not in checkpoint and not checkpoint.startswith("models:/"):
        checkpoint = os.path.abspath(checkpoint)
    shared = dataclasses.replace(job.shared_memory,
                                 storage=job.shared_memory.storage_location())
    serve = job.serve
    if serve.state is not None:
        serve = dataclasses.replace(serve, state=absolute_location(serve.state))
    return dataclasses.replace(job, encoder=dataclasses.replace(encoder, checkpoint=checkpoint),
                               shared_memory=shared, serve=serve)


def ensure_service_memory(job: ServeJob):
    """The spec of the job's memory, created when missing (``shared_memory.create``) with
    keys of the encoder's size or the payload format's."""
    from lifelong.distributed.registry import create_memory, read_spec

    shared = job.shared_memory
    try:
        return read_spec(shared.name, shared.storage_location())
    except MemoryNotFoundError:
        if not shared.create:
            raise
    if job.has_encoder:
        key_dim = load_encoder_identity(job)[1]["key_dim"]
    elif job.serve.payload_format is not None:
        key_dim = vector_size(job.serve.payload_format)
    else:
        raise ConfigError("cannot tell the key size of the new memory: set encoder.checkpoint "
                          "or serve.payload_format=float32[D]")
    create_memory(shared.spec(job.memory, key_dim=key_dim))
    return read_spec(shared.name, shared.storage_location())


def service_app(job: ServeJob):
    """The bound Serve application of the job (replicas, autoscaling, CPUs from ``serve``)."""
    from lifelong.service.app import MemoryService

    s = job.serve
    data = json.dumps(dataclasses.asdict(job))
    return MemoryService.options(
        name=f"{s.name}-memory-service", autoscaling_config=s.autoscaling_config(),
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.num_cpus}).bind(data)


def start_service(job: ServeJob, out=None) -> str:
    """Joins or starts Ray, makes the memory exist, starts Serve and the application; returns
    the service's base URL once its replicas answer."""
    from ray import serve

    from lifelong.distributed.cluster import ensure_ray

    out = out or sys.stdout
    job = absolute_job(job)
    s, shared = job.serve, job.shared_memory
    ensure_ray(job.ray_address, local_cpus=shared.shards * shared.num_cpus
               + s.max_replicas * s.num_cpus + 1)
    spec = ensure_service_memory(job)
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(service_app(job), name=s.name, route_prefix=s.route_prefix, blocking=False)
    url = f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"
    print(f"service {s.name}: {url} (/predict /learn /healthz /status) -> memory {spec.name} "
          f"({spec.shards} shards, {spec.num_slots:,} slots, keys {spec.key_dim}, labels "
          f"[0, {spec.num_values}))", file=out, flush=True)
    return url


def run_service(job: ServeJob, out=None) -> None:
    """Serves until SIGINT/SIGTERM, then deletes the application (the memory stays)."""
    from ray import serve

    start_service(job, out)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.delete(job.serve.name)


def build_app(args: dict):
    """Serve's application builder: ``serve run lifelong.service.launch:build_app
    config=jobs/configs/serve.yaml shared_memory.name=...`` (every other argument is a
    ``key=value`` override). The memory must exist or be creatable from this process."""
    args = dict(args)
    config = args.pop("config", None)
    job = absolute_job(load_config(ServeJob, config, [f"{k}={v}" for k, v in args.items()]))
    ensure_service_memory(job)
    return service_app(job)
