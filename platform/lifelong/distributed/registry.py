"""Named memories that outlive jobs: create once, attach by name from any job, delete when done.

A memory lives in ``<storage>/<name>/`` (``memory.json`` plus one folder per shard) and, while the
cluster runs, in S detached shard actors named ``memory:<name>:shard-<i>`` in the Ray namespace
``lifelong``. ``attach`` finds the actors, or starts them from storage after a cluster restart,
so the memory comes back with the same contents.

The default storage location is ``$LIFELONG_MEMORY_STORAGE``, else ``~/.lifelong/memories``.
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow.fs as pafs
import ray

from lifelong.distributed.actor import (MAX_CONCURRENCY, NAMESPACE, RayShards, ShardActor,
                                        actor_name, shard_died_error)
from lifelong.distributed.channel import DirectShards
from lifelong.distributed.client import ShardedMemory
from lifelong.distributed.cluster import ensure_ray
from lifelong.distributed.spec import MemorySpec, absolute_location, check_name, default_storage
from lifelong.distributed.storage import filesystem
from lifelong.files import make_dirs, publish
from lifelong.errors import (ConfigError, CorruptStateError, LifelongError, MemoryExistsError,
                             MemoryNotFoundError, ShardUnavailableError)

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
        max_concurrency=MAX_CONCURRENCY,
        resources={"memory_shard": spec.shard_resource} if spec.shard_resource else None,
        get_if_exists=True,  # two clients starting the same memory get the same actors
        scheduling_strategy="SPREAD" if spec.placement == "spread" else "DEFAULT",
    ).remote(spec.to_json(), index)


def read_spec(name: str, storage: str | None = None) -> MemorySpec:
    """The spec of the memory ``name`` at ``storage``.

    Its ``storage`` is the location it was read from, whatever the manifest says (a memory
    folder copied elsewhere reads, writes and deletes only the copy).

    Raises:
        MemoryNotFoundError: there is no manifest ``<storage>/<name>/memory.json``.
        CorruptStateError: the manifest is unreadable, not a valid spec, or names another
            memory than its folder (the message names the file).
    """
    storage = absolute_location(storage or default_storage())
    fs, path = _manifest_path(storage, name)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise MemoryNotFoundError(f"no memory named {name!r} in {storage}")
    try:
        with fs.open_input_stream(path) as fh:
            spec = MemorySpec.from_json(fh.read().decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError,
            LifelongError) as exc:
        raise CorruptStateError(f"{path}: not a valid memory manifest "
                                f"({type(exc).__name__}: {exc})") from None
    if spec.name != name:
        raise CorruptStateError(f"{path}: the manifest names memory {spec.name!r}, not the "
                                f"folder's {name!r}")
    return dataclasses.replace(spec, storage=storage)


def _create_manifest(fs: pafs.FileSystem, path: str, text: str, spec: MemorySpec) -> None:
    """Writes the manifest ``path`` only if it does not exist: on a local path exclusively
    (a complete temporary file hard-linked into place, so of two racing creators one wins and
    the other gets MemoryExistsError); elsewhere checked first, then written."""
    exists = MemoryExistsError(f"memory {spec.name!r} already exists in {spec.storage}")
    folder = path.rsplit("/", 1)[0]
    if isinstance(fs, pafs.LocalFileSystem):
        make_dirs(folder)
    else:
        fs.create_dir(folder, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise exists
        with fs.open_output_stream(path) as fh:
            fh.write(text.encode())
        return
    try:
        publish(path, text.encode(), exclusive=True)
    except FileExistsError:
        raise exists from None


def create_memory(spec: MemorySpec, address: str | None = None,
                  timeout_s: float = 300.0, direct: bool = True) -> ShardedMemory:
    """Creates the named memory (its manifest, then its shards) and returns a client
    (``direct``: as for ``attach``).

    Creation is all or nothing: the manifest is created exclusively (MemoryExistsError if the
    memory exists, also when another creator wins a race), and when the shards cannot be
    started (ShardUnavailableError or any other error) the started shard actors are stopped
    and the memory's folder is removed, so a later create can succeed.
    """
    spec = dataclasses.replace(spec, storage=absolute_location(spec.storage))
    fs, path = _manifest_path(spec.storage, spec.name)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        raise MemoryExistsError(f"memory {spec.name!r} already exists in {spec.storage}")
    ensure_ray(address)
    _create_manifest(fs, path, spec.to_json(), spec)
    handles = []
    try:
        handles.extend(_start_shard(spec, i) for i in range(spec.shards))
        return _client(spec, handles, timeout_s, direct=direct)
    except BaseException:
        for handle in handles:  # ours (pending or started), never another location's
            if _location_of(handle) in (None, spec.location):
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        fs.delete_dir(path.rsplit("/", 1)[0])
        raise


def attach(name: str, storage: str | None = None, address: str | None = None,
           timeout_s: float = 300.0, writer: str | None = None,
           direct: bool = True) -> ShardedMemory:
    """A client of the named memory; starts its shards from storage if they are not running.

    Args:
        writer: the client's writer id (default: a fresh one); see ``ShardedMemory``.
        direct: send the step calls (step, search, apply) over the shards' direct channel
            (``lifelong.distributed.channel``, docs/design.md §3.11), falling back to Ray for
            a shard it cannot reach; False: every call through Ray.
    """
    spec = read_spec(name, storage)
    ensure_ray(address)
    return _client(spec, [_start_shard(spec, i) for i in range(spec.shards)], timeout_s,
                   writer, direct)


def _client(spec: MemorySpec, handles: list, timeout_s: float,
            writer: str | None = None, direct: bool = True) -> ShardedMemory:
    shards = RayShards(handles, timeout_s=timeout_s, memory=spec.name)
    try:
        shards.call("ping", [()] * spec.shards)  # constructed: restored from storage
    except ShardUnavailableError:
        raise ShardUnavailableError(f"the shards of {spec.name!r} did not start within "
                                    f"{timeout_s} s (not enough CPUs/GPUs for "
                                    f"{spec.shards} x num_cpus={spec.num_cpus}?)") from None
    except ray.exceptions.RayActorError as exc:
        raise shard_died_error(spec.name, exc) from None
    locations = shards.call("location", [()] * spec.shards)
    if any(location != spec.location for location in locations):
        other = next(loc for loc in locations if loc != spec.location)
        raise MemoryExistsError(
            f"a memory named {spec.name!r} is running from {other}, not {spec.location}: "
            "shard actors are named by memory name, so detach that one first")
    return ShardedMemory(spec, DirectShards(shards) if direct else shards, writer=writer)


def _location_of(handle, timeout_s: float = 2.0) -> str | None:
    """Where a shard actor reads and writes; None if it does not answer (pending or dead)."""
    try:
        return ray.get(handle.location.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - not started, died, or timed out
        return None


def list_memories(storage: str | None = None) -> list[str]:
    """Names of the memories at ``storage``.

    Raises:
        ConfigError: ``storage`` exists but is not a directory.
    """
    fs, base = filesystem(storage or default_storage())
    if fs.get_file_info(base).type == pafs.FileType.File:
        raise ConfigError(f"storage location {base} is a file, not a directory")
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and
                  fs.get_file_info(f"{i.path}/{MANIFEST}").type == pafs.FileType.File)


def detach_shards(name: str, storage: str | None = None) -> None:
    """Stops the shard actors (their state stays in storage; ``attach`` restarts them)."""
    _stop_shards(read_spec(name, storage))


def _stop_shards(spec: MemorySpec) -> None:
    """Stops the running shard actors of ``spec``'s name that use its location (those of a
    same-named memory elsewhere, e.g. the original of a copied folder, keep running)."""
    for i in range(spec.shards):
        try:
            handle = ray.get_actor(actor_name(spec.name, i), namespace=NAMESPACE)
        except ValueError:  # not running
            continue
        if _location_of(handle, timeout_s=30.0) in (None, spec.location):
            ray.kill(handle, no_restart=True)


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
    and the same label range, and search the same way (``search``, ``nlist``, ``nprobe``). Returns the spec of the memory in use (the stored one if kept).

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
    asked, held = (spec.search, spec.nlist, spec.nprobe), \
        (existing.search, existing.nlist, existing.nprobe)
    if asked != held:  # its shards keep their index: a change is refused, never half applied
        raise ConfigError(f"memory {spec.name!r} searches with search={held[0]} nlist={held[1]} "
                          f"nprobe={held[2]}; this job asks for search={asked[0]} "
                          f"nlist={asked[1]} nprobe={asked[2]} (a memory's search is fixed "
                          "when it is created: shared_memory.recreate=true starts afresh)",
                          key="search")
    return existing
