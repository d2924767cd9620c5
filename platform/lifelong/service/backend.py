"""What a replica of the service is made of: the named memory, the encoder, the record of
request ids and the limits of a request, put together from the job's config."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from lifelong.errors import ConfigError
from lifelong.service.config import ServeJob
from lifelong.service.engine import ServiceEngine
from lifelong.service.protocol import Limits, limits_for
from lifelong.service.records import RequestRecords
from lifelong.streaming.encoders import payload_encoder


@dataclass
class Backend:
    """A replica's parts: the engine, the limits requests are checked against, and the
    identity of its encoder (shown by ``/status``)."""

    engine: ServiceEngine
    limits: Limits
    encoder: dict


def records_location(job: ServeJob, memory_location: str) -> str:
    """Where the service keeps its record of request ids (default: beside the memory)."""
    return job.serve.state or f"{memory_location}/serve/{job.serve.name}"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_encoder_identity(job: ServeJob):
    """(loader for ``payload_encoder`` or None, the encoder's identity): the checkpoint or
    MLflow model it came from, its architecture and key size, the file's sha256."""
    if not job.has_encoder:
        return None, {"kind": "none", "note": "examples are the memory's keys"}
    from lifelong.tracking import resolve_encoder

    encoder, meta, path = resolve_encoder(job.encoder.checkpoint, job.encoder.run_id,
                                          job.tracking.tracking_uri)
    identity = {"kind": "checkpoint", "checkpoint": job.encoder.checkpoint,
                "run_id": job.encoder.run_id, "encoder": meta.get("encoder"),
                "key_dim": int(meta["key_dim"]), "sha256": file_sha256(str(path))}
    return (lambda: (encoder, meta)), identity


def open_backend(job: ServeJob, writes=None) -> Backend:
    """Attaches to the job's named memory (it must exist) and loads the encoder.

    Args:
        writes: called with the number of examples each new ``/learn`` batch wrote.

    Raises:
        MemoryNotFoundError: the memory does not exist.
        ConfigError: the encoder or payload format does not fit the memory.
    """
    from lifelong.distributed.registry import attach

    shared, s = job.shared_memory, job.serve
    memory = attach(shared.name, shared.storage_location(), timeout_s=s.shard_timeout_s)
    spec = memory.spec
    fmt = job.payload_format(spec.key_dim)
    loader, identity = load_encoder_identity(job)
    encode = payload_encoder(fmt, loader)
    if encode.key_dim != spec.key_dim:
        raise ConfigError(f"the encoder makes keys of size {encode.key_dim}; memory "
                          f"{spec.name!r} holds keys of size {spec.key_dim}")
    if s.threads:
        import torch

        torch.set_num_threads(s.threads)
    records = RequestRecords(os.path.abspath(records_location(job, spec.location)))
    limits = limits_for(fmt, spec.num_values, s.max_examples, s.max_body_bytes,
                        max_neighbours=memory.k, default_neighbours=s.neighbours)
    engine = ServiceEngine(memory, encode, records, claim_timeout_s=s.claim_timeout_s,
                           writes=writes)
    return Backend(engine=engine, limits=limits, encoder={**identity, "payload_format": fmt})
