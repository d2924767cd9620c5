"""Named memories that outlive jobs: create once, attach by name from any job, delete when done.

A memory lives in ``<storage>/<name>/`` (``memory.json`` plus one folder per shard) and, while the
cluster runs, in S detached shard actors named ``memory:<name>:shard-<i>`` in the Ray namespace
``lifelong``. ``attach`` finds the actors, or starts them from storage after a cluster restart,
so the memory comes back with the same contents.

The default storage location is ``$LIFELONG_MEMORY_STORAGE``, else ``~/.lifelong/memories``.
"""

from __future__ import annotations


import pyarrow.fs as pafs
import ray

from lifelong.distributed.actor import NAMESPACE, RayShards, ShardActor, actor_name
from lifelong.distributed.client import ShardedMemory
from lifelong.distributed.cluster import ensure_ray
from lifelong.distributed.spec import MemorySpec, check_name, default_storage
from lifelong.distributed.storage import filesystem
from lifelong.errors import (ConfigError, MemoryExistsError, MemoryNotFoundError,
                             ShardUnavailableError)

MANIFEST = "memory.json"


def _manifest_path(storage: str, name: str) -> tuple[pafs.FileSystem, str]:
    fs, base = filesystem(storage)
    return fs, f"{base.rstrip('/')}/{check_name(name)}/{MANIFEST}"  # = spec.location


def _cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def _start_shard(spec: MemorySpec, index: int):
    num_gpus = spec.num_gpus if spec.num_gpus is not None else (1 if _cluster_has_gpus() else 0)
    if spec.device == "cuda" and not num_gpus:
        raise ConfigError("memory.device is cuda but the shards request no GPU")
    return ray.remote(ShardActor).options(
        name=actor_name(spec.name, index), namespace=NAMESPACE, lifetime="detached",
        max_restarts=-1, max_task_retries=-1, num_cpus=spec.num_cpus, num_gpus=num_gpus,
        resources={"memory_shard": spec.shard_resource} if spec.shard_resource else None,
        get_if_exists=True,  # two clients starting the same memory get the same actors
        scheduling_strategy="SPREAD" if spec.placement == "spread" else "DEFAULT",
    ).remote(spec.to_json(), index)


def read_spec(name: str, storage: str | None = None) -> MemorySpec:
    """The spec of the memory ``name`` at ``storage``."""
    storage = storage or default_storage()
    fs, path = _manifest_path(storage, name)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise MemoryNotFoundError(f"no memory named {name!r} in {storage}")
    with fs.open_input_stream(path) as fh:
        return MemorySpec.from_json(fh.read().decode())


def create_memory(spec: MemorySpec, address: str | None = None,
                  timeout_s: float = 300.0) -> ShardedMemory:
    """Creates the named memory (its manifest, then its shards) and returns a client."""
    fs, path = _manifest_path(spec.storage, spec.name)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        raise MemoryExistsError(f"memory {spec.name!r} already exists in {spec.storage}")
    ensure_ray(address)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(spec.to_json().encode())
    return _client(spec, [_start_shard(spec, i) for i in range(spec.shards)], timeout_s)


def attach(name: str, storage: str | None = None, address: str | None = None,
           timeout_s: float = 300.0, writer: str | None = None) -> ShardedMemory:
    """A client of the named memory; starts its shards from storage if they are not running.

    Args:
        writer: the client's writer id (default: a fresh one); see ``ShardedMemory``.
    """
    spec = read_spec(name, storage)
    ensure_ray(address)
    return _client(spec, [_start_shard(spec, i) for i in range(spec.shards)], timeout_s,
                   writer)


def _client(spec: MemorySpec, handles: list, timeout_s: float,
            writer: str | None = None) -> ShardedMemory:
    shards = RayShards(handles, timeout_s=timeout_s)
    try:
        shards.call("ping", [()] * spec.shards)  # constructed: restored from storage
    except ShardUnavailableError:
        raise ShardUnavailableError(f"the shards of {spec.name!r} did not start within "
                                    f"{timeout_s} s (not enough CPUs/GPUs for "
                                    f"{spec.shards} x num_cpus={spec.num_cpus}?)") from None
    return ShardedMemory(spec, shards, writer=writer)


def list_memories(storage: str | None = None) -> list[str]:
    """Names of the memories at ``storage``."""
    fs, base = filesystem(storage or default_storage())
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and
                  fs.get_file_info(f"{i.path}/{MANIFEST}").type == pafs.FileType.File)


def detach_shards(name: str, storage: str | None = None) -> None:
    """Stops the shard actors (their state stays in storage; ``attach`` restarts them)."""
    _stop_shards(read_spec(name, storage))


def _stop_shards(spec: MemorySpec) -> None:
    for i in range(spec.shards):
        try:
            ray.kill(ray.get_actor(actor_name(spec.name, i), namespace=NAMESPACE),
                     no_restart=True)
        except ValueError:  # not running
            pass


def delete_memory(name: str, storage: str | None = None, address: str | None = None) -> None:
    """Stops the shards and deletes the memory's files."""
    spec = read_spec(name, storage)
    ensure_ray(address)
    _stop_shards(spec)
    fs, path = filesystem(spec.location)
    fs.delete_dir(path)


def ensure_memory(spec: MemorySpec, *, create: bool = True, recreate: bool = False) -> MemorySpec:
    """Makes the memory of ``spec`` exist: created when missing (``create``), deleted and
    created again with ``recreate``; an existing one is kept and must hold keys of the same size
    and the same label range. Returns the spec of the memory in use (the stored one if kept).

    Raises:
        MemoryNotFoundError: it is missing and ``create`` is False.
        ConfigError: an existing memory does not fit.
    """
    try:
        existing = read_spec(spec.name, spec.storage)
    except MemoryNotFoundError:
        existing = None
    if existing is not None and recreate:
        delete_memory(spec.name, spec.storage)
        existing = None
    if existing is None:
        if not create:
            raise MemoryNotFoundError(f"no memory named {spec.name!r} in {spec.storage} "
                                      "(and create is false)")
        create_memory(spec)
        return spec
    if (existing.key_dim, existing.num_values) != (spec.key_dim, spec.num_values):
        raise ConfigError(f"memory {spec.name!r} holds keys of size {existing.key_dim} and "
                          f"{existing.num_values} values; this job needs {spec.key_dim} and "
                          f"{spec.num_values} (shared_memory.recreate=true starts afresh)")
    return existing
