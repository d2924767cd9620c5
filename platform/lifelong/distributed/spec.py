"""What a named memory is: its size, its hyper-parameters, where it is stored, how it is placed."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields

from lifelong.config import check_int
from lifelong.errors import ConfigError, MemoryNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: object) -> str:
    """A memory name: 1-64 of letters, digits, '_', '.', '-', not starting with a punctuation
    mark and never '..' (a name is a directory under the storage location: it must not
    escape it)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise MemoryNameError(
            f"invalid memory name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'")
    return name


@dataclass(frozen=True)
class MemorySpec:
    """A named, sharded, durable memory.

    Attributes:
        name: the memory's name (see ``check_name``).
        key_dim, num_slots, num_values, choose_k, alpha, age_noise: as ``lifelong.memory.Memory``.
        shards: S, the number of shard actors; slots are split into S contiguous ranges.
        storage: the memory's parent location, a local path or a pyarrow filesystem URI; the
            memory lives in ``<storage>/<name>/``.
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
    choose_k: int = 256
    alpha: float = 0.1
    age_noise: float = 8.0
    snapshot_every: int = 1000
    device: str = "auto"
    num_cpus: float = 1.0
    num_gpus: float | None = None
    placement: str = "spread"
    shard_resource: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_name(self.name)
        for name in ("key_dim", "num_slots", "num_values", "shards", "choose_k",
                     "snapshot_every"):
            check_int(f"memory.{name}", getattr(self, name))
        check_int("memory.seed", self.seed, minimum=0)
        if self.num_slots >= 2**31 or self.num_values >= 2**31:
            raise ConfigError("memory.num_slots and memory.num_values must be < 2**31 "
                              "(shards answer with 32-bit slot ids and values)")
        if self.shards > self.num_slots:
            raise ConfigError(f"memory.shards ({self.shards}) exceeds num_slots "
                              f"({self.num_slots})")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"memory.alpha must be positive, got {self.alpha!r}")
        if not (self.age_noise >= 0 and math.isfinite(self.age_noise)):
            raise ConfigError(f"memory.age_noise must be >= 0, got {self.age_noise!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"memory.device must be auto, cpu or cuda, got {self.device!r}")
        if self.placement not in ("spread", "pack"):
            raise ConfigError(f"memory.placement must be spread or pack, got {self.placement!r}")
        if not isinstance(self.storage, str) or not self.storage:
            raise ConfigError("memory.storage must be a path or filesystem URI")
        if not self.shard_resource >= 0:
            raise ConfigError("memory.shard_resource must be >= 0")
        if not self.num_cpus >= 0 or (self.num_gpus is not None and not self.num_gpus >= 0):
            raise ConfigError("memory.num_cpus and memory.num_gpus must be >= 0")

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
