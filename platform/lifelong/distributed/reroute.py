"""What an applied update batch wrote, and the re-routing of the inserts a shard refused.

A shard refuses (answers -1) an insert routed to an empty slot that another writer took since
the search, and a stale refresh turned into an insert when it has no empty slot left
(docs/design.md §7.2). The client then offers those queries to each other shard in turn, which
takes them into empty slots only; when no shard has one left they evict in the shard first
chosen. These rounds go under the writers ``<writer>/<seq>.<round>`` (batch 1 of each) and
depend only on the shards' repeatable answers, so re-sending a batch re-sends them identically
and each is applied once.
"""

from __future__ import annotations

import numpy as np

from lifelong.distributed.batches import ShardWrite, UpdateBatch


def written_slots(batch: UpdateBatch, answers: list) -> tuple[np.ndarray, np.ndarray, set]:
    """From the shards' answers to ``batch`` (one per shard: the slot of each insert, then of
    each refresh, -1 where refused): the slot each query wrote [B] (-1 for a redone step a
    shard had applied, see ``ShardedMemory.resume``), which queries were refused [B] bool, and
    the shards that refused some (full of empty slots no more)."""
    written = batch.nearest.copy()
    refused = np.zeros(len(written), dtype=bool)
    full = set()
    for s, (w, slots) in enumerate(zip(batch.writes, answers)):
        slots = np.asarray(slots, dtype=np.int64)
        n = len(w.insert_labels)
        if len(slots) < n:  # a redone step the shard had applied (see ``resume``)
            written[w.insert_positions] = -1
            continue
        written[w.insert_positions] = slots[:n]
        if len(slots) > n:  # the slot each refresh wrote (an insert if it was stale)
            written[w.refresh_positions] = slots[n:]
        positions = np.concatenate([w.insert_positions, w.refresh_positions])
        no = positions[: len(slots)][slots < 0]
        if no.size:
            refused[no] = True
            full.add(s)
    return written, refused, full


def reroute(shards, key_dim: int, writer: str, redo_after: int, batch: UpdateBatch,
            written: np.ndarray, refused: np.ndarray, full: set[int]) -> None:
    """Places the queries the shards refused (``refused`` [B]; their slots go into ``written``,
    in place) into empty slots of the shards not known to be full, one shard at a time, then
    what is left by eviction in each query's first shard.

    Args:
        shards: the shard group (``ShardGroup``); key_dim: d.
        writer, redo_after: the client's writer id and ``redo_after`` (see ``ShardWrite``).
    """
    num_shards = len(batch.writes)
    size, d = len(written), key_dim
    qs, ys = np.zeros((size, d), dtype=np.float32), np.zeros(size, dtype=np.int64)
    home = np.zeros(size, dtype=np.int64)
    for s, w in enumerate(batch.writes):
        for pos, q, y in ((w.insert_positions, w.insert_q, w.insert_labels),
                          (w.refresh_positions, w.refresh_q, w.refresh_labels)):
            qs[pos], ys[pos], home[pos] = q, y, s
    step = 0
    redo = 0 if 0 <= redo_after < batch.seq else -1  # a redone step's rounds too
    remaining = np.flatnonzero(refused)
    for t in [t for t in range(num_shards) if t not in full] + [None]:
        if not remaining.size:
            return
        step += 1
        if t is None:  # no empty slot anywhere: evict, each in its first shard
            parts = [remaining[home[remaining] == s] for s in range(num_shards)]
        else:
            parts = [remaining if s == t else remaining[:0] for s in range(num_shards)]
        writes = [ShardWrite(
            writer=f"{writer}/{batch.seq}.{step}", seq=1,
            refresh_slots=np.zeros(0, dtype=np.int64),
            refresh_q=np.zeros((0, d), dtype=np.float32),
            refresh_labels=np.zeros(0, dtype=np.int64),
            refresh_positions=np.zeros(0, dtype=np.int64), insert_q=qs[p],
            insert_labels=ys[p], insert_positions=p,
            insert_empty=len(p) if t is not None else 0, redo_after=redo) for p in parts]
        answers = shards.call("apply", [(w,) for w in writes])
        for p, slots in zip(parts, answers):
            slots = np.asarray(slots, dtype=np.int64)[: len(p)]
            if len(slots) < len(p):  # a redone round the shard had applied (``resume``)
                written[p], refused[p] = -1, False
                continue
            written[p] = slots
            refused[p] = slots < 0
        remaining = np.flatnonzero(refused)
