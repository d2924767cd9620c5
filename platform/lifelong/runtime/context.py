"""Where a training loop runs: alone in this process, or as one rank of a Ray Train group.

An experiment's training loop knows nothing of Ray; ``runtime/ray_train.py`` fills a
``TrainContext`` with DDP, the shared memory, Ray Train checkpoints and a stop consensus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from lifelong.memory.protocol import KeyValueMemory


def _identity(module: nn.Module) -> nn.Module:
    return module


def _same(flag: bool) -> bool:
    return flag


@dataclass
class TrainContext:
    """How one rank of a training run is wired.

    Attributes:
        rank, world_size: This worker's rank among world_size data-parallel workers; each
            samples episodes_per_batch / world_size episodes per step (its own seed).
        prepare_model: Wraps the encoder for data parallelism (DDP); identity alone.
        shared_memory: Life-long mode: the memory every rank queries and writes, never cleared
            (a ``ShardedMemory``); None builds a local one.
        resume: A state written by ``save`` earlier (encoder, optimizer, step, elapsed_s):
            the run goes on from there.
        save: Checkpoint hook ``save(step, state, metrics)``, called on every rank at each
            checkpoint (Ray Train needs every rank to report); None writes encoder.pt locally.
        any_rank: True on every rank when ``flag`` is True on any (all ranks must stop at the
            same step, or the gradient all-reduce would wait forever).
    """

    rank: int = 0
    world_size: int = 1
    prepare_model: Callable[[nn.Module], nn.Module] = _identity
    shared_memory: KeyValueMemory | None = None
    resume: dict[str, Any] | None = None
    save: Callable[[int, dict[str, Any], dict[str, float]], None] | None = None
    any_rank: Callable[[bool], bool] = _same
