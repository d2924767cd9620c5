"""Torch thread control around the memory steps."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the block with ``count`` torch intra-op threads, restoring the number after.

    The memory steps are many tiny operations; on a small, busy machine their thread hand-offs
    cost more than the work (measured: 2-3 ms per training step with one thread, 12-36 ms with
    two), while the convolutions want every core.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
