"""The memory as a Ray service: sharded actors, top-k merge, durable named memories.

The only library package that imports Ray (lazily: ``ShardedMemory.local`` works without it).
"""

from lifelong.distributed.client import LocalShards, ShardedMemory
from lifelong.distributed.spec import MemorySpec

__all__ = ["LocalShards", "MemorySpec", "ShardedMemory"]
