"""The memory's hyper-parameters: the one config section every job and every named memory uses.

A job's ``memory:`` section is a ``MemoryConfig``; a named memory's ``MemorySpec``
(``lifelong.distributed.spec``) is a ``MemoryConfig`` plus its name, sizes, shards, storage and
placement. Sizes are not here: each job sizes its memory (an episode batch, a shared memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from lifelong.config import check_int
from lifelong.errors import ConfigError

KEY_DTYPE_NAMES = ("float32", "bfloat16", "float16")  # lifelong.memory.key_dtypes.KEY_DTYPES
SEARCHES = ("exact", "ivf")


@dataclass(frozen=True)
class MemoryConfig:
    """How the memory searches, scores and writes (docs/design.md §1).

    Attributes:
        choose_k: Neighbours searched per query (the paper's k).
        alpha: The margin of the memory loss; also sets the softmax temperature.
        age_noise: Inserts pick among the oldest slots by age + U[-age_noise, age_noise].
        use_recent: The slot most recently written for the label joins the loss's candidates,
            so a positive is available (the reference code's ``recent_idx``).
        key_dtype: How keys are stored: float32, bfloat16 or float16 (compact keys halve the
            bytes a search streams; similarities stay float32). A sharded memory
            (``MemorySpec``) stores its shards' keys so too; its snapshots and write records
            hold them widened to float32 (docs/design.md §1.2).
        search: How neighbours are found: "exact" (every slot scanned) or "ivf" (an inverted
            file over the filled slots, approximate: lifelong.memory.ivf.IVFSearch; each shard
            of a sharded memory keeps its own).
        nlist: IVF cells (per shard); the index trains once 39 x nlist slots are filled and
            answers exactly before that.
        nprobe: IVF cells searched per query, 1 .. nlist (nlist: exact).
    """

    choose_k: int = 256
    alpha: float = 0.1
    age_noise: float = 8.0
    use_recent: bool = True
    key_dtype: str = "float32"
    search: str = "exact"
    nlist: int = 1024
    nprobe: int = 8

    def __post_init__(self) -> None:
        check_int("choose_k", self.choose_k)
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0
                and math.isfinite(self.alpha)):
            raise ConfigError(f"must be > 0, got {self.alpha!r}", key="alpha")
        if not (isinstance(self.age_noise, (int, float)) and self.age_noise >= 0
                and math.isfinite(self.age_noise)):
            raise ConfigError(f"must be >= 0, got {self.age_noise!r}", key="age_noise")
        if not isinstance(self.use_recent, bool):
            raise ConfigError(f"must be true or false, got {self.use_recent!r}",
                              key="use_recent")
        if self.key_dtype not in KEY_DTYPE_NAMES:
            raise ConfigError(f"must be one of {', '.join(KEY_DTYPE_NAMES)}, got "
                              f"{self.key_dtype!r}", key="key_dtype")
        if self.search not in SEARCHES:
            raise ConfigError(f"must be one of {', '.join(SEARCHES)}, got {self.search!r}",
                              key="search")
        check_int("nlist", self.nlist)
        check_int("nprobe", self.nprobe)
        if self.nprobe > self.nlist:
            raise ConfigError(f"must be <= nlist ({self.nlist}), got {self.nprobe}",
                              key="nprobe")

    def make_search(self):
        """The search backend these settings name (a fresh one: each memory owns its index)."""
        from lifelong.memory.ivf import IVFSearch
        from lifelong.memory.search import ExactSearch

        if self.search == "ivf":
            return IVFSearch(nlist=self.nlist, nprobe=self.nprobe)
        return ExactSearch()

    def memory_config(self) -> "MemoryConfig":
        """Just the hyper-parameters (a ``MemorySpec`` drops its name, sizes and placement)."""
        return MemoryConfig(**{f.name: getattr(self, f.name) for f in fields(MemoryConfig)})

    def build(self, *, key_dim: int, num_slots: int, num_values: int, seed: int = 0):
        """A fresh local ``Memory`` with these settings.

        Args:
            key_dim: d, the size of keys and queries.
            num_slots: N slots.
            num_values: Labels lie in [0, num_values).
            seed: Seeds the age noise.
        """
        from lifelong.memory.memory import Memory

        return Memory(key_dim=key_dim, num_slots=num_slots, num_values=num_values,
                      choose_k=self.choose_k, alpha=self.alpha, age_noise=self.age_noise,
                      use_recent=self.use_recent, seed=seed, key_dtype=self.key_dtype,
                      search=self.make_search())

    @classmethod
    def of(cls, memory) -> "MemoryConfig":
        """The hyper-parameters of a memory (a ``Memory`` or a ``ShardedMemory``)."""
        key_dtype = getattr(memory, "key_dtype", "float32")  # a sharded memory: float32
        search = getattr(memory, "search", None)  # a sharded memory: its spec's
        spec = getattr(memory, "spec", None)
        ivf = {"search": "ivf", "nlist": search.nlist, "nprobe": search.nprobe} \
            if hasattr(search, "nlist") and hasattr(search, "export_state") else {}
        if spec is not None and hasattr(spec, "search"):
            ivf = {"search": spec.search, "nlist": spec.nlist, "nprobe": spec.nprobe}
        return cls(choose_k=memory.choose_k, alpha=memory.alpha, age_noise=memory.age_noise,
                   use_recent=memory.use_recent,
                   key_dtype=key_dtype if key_dtype in KEY_DTYPE_NAMES else "float32", **ivf)
