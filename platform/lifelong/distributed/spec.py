"""What a named memory is (``MemorySpec``: its size, its hyper-parameters, where it is stored,
how it is placed) and how a job names one (``SharedMemoryConfig``, its ``shared_memory:``
section, turned into a spec by ``SharedMemoryConfig.spec``: the one conversion)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields

from lifelong.config import check_int
from lifelong.errors import ConfigError, MemoryNameError
from lifelong.locations import durable_location, lifelong_home
from lifelong.memory.config import MemoryConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The most bytes of keys one shard may hold (num_slots / shards x key_dim x 4): a spec asking
# for more is refused before anything is allocated or written (1 TiB: beyond any one device).
MAX_SHARD_KEY_BYTES = 2**40


def check_name(name: object) -> str:
    """A memory name: 1-64 of letters, digits, '_', '.', '-', not starting with a punctuation
    mark and never '..' (a name is a directory under the storage location: it must not
    escape it)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise MemoryNameError(
            f"invalid memory name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'")
    return name


def default_storage() -> str:
    """Where named memories live by default: ``$LIFELONG_MEMORY_STORAGE``, else
    ``~/.lifelong/memories``."""
    return os.environ.get("LIFELONG_MEMORY_STORAGE", str(lifelong_home() / "memories"))


def absolute_location(location: str) -> str:
    """A relative local path made absolute (shard actors and workers run in other
    directories; inside a Ray job's working-dir copy, from ``$LIFELONG_HOME``: see
    ``lifelong.locations``); URIs are kept as they are."""
    return durable_location(location)


@dataclass(frozen=True, kw_only=True)
class MemorySpec(MemoryConfig):
    """A named, sharded, durable memory: a ``MemoryConfig`` (choose_k, alpha, age_noise,
    use_recent) plus its name, sizes, shards, storage and placement.

    Attributes:
        name: the memory's name (see ``check_name``).
        key_dim, num_slots, num_values: as ``lifelong.memory.Memory``.
        storage: the memory's parent location, a local path or a pyarrow filesystem URI; the
            memory lives in ``<storage>/<name>/``.
        shards: S, the number of shard actors; slots are split into S contiguous ranges.
        snapshot_every: update batches a shard applies between snapshots (its log is replayed
            on restart, so this bounds the replay).
        device: "auto" (a GPU when the shard actor was given one), "cpu" or "cuda".
        num_cpus, num_gpus: resources each shard actor requests; num_gpus None means 1 when
            the cluster has GPUs, else 0.
        placement: "spread" (shards on different nodes where possible) or "pack".
        shard_resource: units of the custom resource ``memory_shard`` each shard actor requests
            (cluster.yaml's GPU nodes advertise it, so shards land there); 0: none.
        seed: seeds each shard's age noise (shard i uses seed + i).
    """

    name: str
    key_dim: int
    num_slots: int
    num_values: int
    storage: str
    shards: int = 2
    snapshot_every: int = 1000
    device: str = "auto"
    num_cpus: float = 1.0
    num_gpus: float | None = None
    placement: str = "spread"
    shard_resource: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_name(self.name)
        for name in ("key_dim", "num_slots", "num_values", "shards", "snapshot_every"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=0)
        if self.num_slots >= 2**31 or self.num_values >= 2**31:
            raise ConfigError("num_slots and num_values must be < 2**31 (shards answer with "
                              "32-bit slot ids and values)")
        key_bytes = 4 if self.key_dtype == "float32" else 2  # compact keys: 2 bytes each
        shard_bytes = -(-self.num_slots // self.shards) * self.key_dim * key_bytes
        if shard_bytes > MAX_SHARD_KEY_BYTES:
            raise ConfigError(f"num_slots x key_dim = {self.num_slots} x {self.key_dim} needs "
                              f"{shard_bytes / 2**30:.0f} GiB of keys per shard over "
                              f"{self.shards} shards, more than the limit of "
                              f"{MAX_SHARD_KEY_BYTES // 2**30} GiB: use fewer slots, smaller "
                              "keys or more shards")
        if self.shards > self.num_slots:
            raise ConfigError(f"exceeds num_slots ({self.num_slots}), got {self.shards}",
                              key="shards")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"must be auto, cpu or cuda, got {self.device!r}", key="device")
        if self.placement not in ("spread", "pack"):
            raise ConfigError(f"must be spread or pack, got {self.placement!r}",
                              key="placement")
        if not isinstance(self.storage, str) or not self.storage:
            raise ConfigError("must be a path or filesystem URI", key="storage")
        if not self.shard_resource >= 0:
            raise ConfigError("must be >= 0", key="shard_resource")
        if not self.num_cpus >= 0 or (self.num_gpus is not None and not self.num_gpus >= 0):
            raise ConfigError("num_cpus and num_gpus must be >= 0")

    @property
    def location(self) -> str:
        """Where the memory's files live: ``<storage>/<name>``."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def shard_sizes(self) -> list[int]:
        """Slots per shard: as equal as possible, the first shards one larger."""
        base, extra = divmod(self.num_slots, self.shards)
        return [base + (i < extra) for i in range(self.shards)]

    def shard_offsets(self) -> list[int]:
        """Global id of each shard's first slot."""
        offsets, start = [], 0
        for size in self.shard_sizes():
            offsets.append(start)
            start += size
        return offsets

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MemorySpec":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown memory spec keys: {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class SharedMemoryConfig:
    """The named memory a job uses (section ``shared_memory``): created on first use with these
    sizes, attached to by name afterwards. Its hyper-parameters are the job's ``memory:``
    section (a ``MemoryConfig``); ``spec`` joins the two.

    Attributes:
        name: The memory's name (see ``check_name``).
        num_slots, shards: Its size and how many shard actors hold it.
        num_values: Its label range [0, V) (None: the job's own, e.g. its classes).
        storage: Where it lives (None: ``$LIFELONG_MEMORY_STORAGE`` or ~/.lifelong/memories).
        snapshot_every: Update batches between a shard's snapshots.
        num_cpus: CPUs each shard actor reserves (shards mostly wait; 0.5 lets 2 shards and 2
            workers share a 2-core machine).
        shard_resource: Units of the custom resource ``memory_shard`` each shard requests
            (1.0 on cluster.yaml, whose GPU nodes advertise it); 0: none.
        seed: Seeds the shards' age noise (None: the job's seed).
        create: Create the memory when it does not exist (False: it must exist).
        recreate: Delete a memory of this name first (a fresh run); False attaches to it.
    """

    name: str = "omniglot-lifelong"
    num_slots: int = 65536
    shards: int = 2
    num_values: int | None = None
    storage: str | None = None
    snapshot_every: int = 1000
    num_cpus: float = 0.5
    shard_resource: float = 0.0
    seed: int | None = None
    create: bool = True
    recreate: bool = False

    def __post_init__(self) -> None:
        try:
            check_name(self.name)
        except MemoryNameError as exc:
            raise ConfigError(str(exc), key="name") from None
        for name in ("num_slots", "shards", "snapshot_every"):
            check_int(name, getattr(self, name))
        if self.num_values is not None:
            check_int("num_values", self.num_values)
        if self.seed is not None:
            check_int("seed", self.seed, minimum=0)
        if not self.num_cpus >= 0:
            raise ConfigError(f"must be >= 0, got {self.num_cpus!r}", key="num_cpus")
        if not self.shard_resource >= 0:
            raise ConfigError(f"must be >= 0, got {self.shard_resource!r}",
                              key="shard_resource")

    def storage_location(self) -> str:
        """The storage location, absolute (shard actors and workers run elsewhere)."""
        return absolute_location(self.storage or default_storage())

    def spec(self, memory: MemoryConfig, *, key_dim: int, num_values: int | None = None,
             seed: int = 0) -> MemorySpec:
        """The ``MemorySpec`` of this named memory with the hyper-parameters ``memory``.

        Args:
            memory: The job's ``memory:`` section.
            key_dim: The size of the job's keys (its encoder's).
            num_values: The job's label range, used where ``self.num_values`` is None.
            seed: The job's seed, used where ``self.seed`` is None.
        """
        values = self.num_values if self.num_values is not None else num_values
        if values is None:
            raise ConfigError("must be set: the label range of the memory", key="num_values")
        return MemorySpec(**vars(memory.memory_config()), name=self.name, key_dim=key_dim,
                          num_slots=self.num_slots, num_values=values, storage=self.storage_location(),
                          shards=self.shards, snapshot_every=self.snapshot_every,
                          num_cpus=self.num_cpus, shard_resource=self.shard_resource,
                          seed=self.seed if self.seed is not None else seed)
