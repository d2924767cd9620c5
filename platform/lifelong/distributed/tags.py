"""The run tags that name a memory a job used: its name, location and the snapshot generation
of every shard, so a run can be traced to the exact memory state it read and wrote."""

from __future__ import annotations

import json

from lifelong import metrics


def memory_tags(memory) -> dict[str, str]:
    """``lifelong.memory`` (name), ``lifelong.memory.location`` and
    ``lifelong.memory.snapshot_generation`` (a JSON list, one per shard) of a ``ShardedMemory``
    (anything with ``spec`` and ``status()``)."""
    generations = [shard.get("generation") for shard in memory.status()]
    return {metrics.MEMORY_TAG: memory.spec.name,
            f"{metrics.MEMORY_TAG}.location": memory.spec.location,
            metrics.MEMORY_GENERATION_TAG: json.dumps(generations)}
