"""The memory as a Ray service: sharded actors, top-k merge, durable named memories.

Ray is imported lazily: ``ShardedMemory.local`` and the specs work without it.
"""

from lifelong.distributed.client import LocalShards, ShardedMemory
from lifelong.distributed.spec import MemorySpec, SharedMemoryConfig

__all__ = ["LocalShards", "MemorySpec", "ShardedMemory", "SharedMemoryConfig", "attach",
           "create_memory", "delete_memory", "detach_shards", "ensure_memory", "list_memories",
           "read_spec"]


def __getattr__(name):  # the registry imports ray: only when asked for
    if name in ("attach", "create_memory", "delete_memory", "detach_shards", "ensure_memory",
                "list_memories", "read_spec"):
        from lifelong.distributed import registry

        return getattr(registry, name)
    raise AttributeError(name)
