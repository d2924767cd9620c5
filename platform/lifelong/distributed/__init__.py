"""The memory as a Ray service: sharded actors, top-k merge, durable named memories.

The only library package that imports Ray (lazily: ``ShardedMemory.local`` works without it).
"""

from lifelong.distributed.client import LocalShards, ShardedMemory
from lifelong.distributed.spec import MemorySpec

__all__ = ["LocalShards", "MemorySpec", "ShardedMemory", "attach", "create_memory",
           "delete_memory", "list_memories", "read_spec"]


def __getattr__(name):  # the registry imports ray: only when asked for
    if name in ("attach", "create_memory", "delete_memory", "list_memories", "read_spec",
                "detach_shards"):
        from lifelong.distributed import registry

        return getattr(registry, name)
    raise AttributeError(name)
