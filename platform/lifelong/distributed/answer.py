"""A shard's answer to a query batch: its local top-k, and with labels what the client's loss
and insert routing need from this shard (``ShardAnswer``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lifelong.memory import Memory


def as_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """``a`` on ``device``; arrays from Ray's object store are read-only, so those are copied."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def gather(t: torch.Tensor, index: np.ndarray) -> np.ndarray:
    """``t[index]`` as a numpy array: numpy indexing of a CPU tensor's view (a torch gather
    costs ten times as much at a step's sizes), else a gather on t's device (and for the
    bfloat16 keys numpy has no type for, widened to float32)."""
    if t.device.type == "cpu" and t.dtype != torch.bfloat16:
        return t.numpy()[index]
    rows = t[torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)).to(t.device)]
    return rows.float().cpu().numpy() if t.dtype == torch.bfloat16 else rows.cpu().numpy()


@dataclass
class ShardAnswer:
    """A shard's answer to a query batch of B (numpy, so it crosses processes cheaply).

    sims/slots/values: [B, k'] local top-k (k' = min(k, shard size)), best first, -inf / -1 / -1
    where fewer slots are filled; slots are local ids (add ``offset``) and slots and values are
    int32, which keeps a batch-16 answer under Ray's 100 KiB limit for replies sent inline
    (larger ones go through the object store: several ms more per call, measured). With
    labels: pos_*/neg_* the best positive / negative of that list (global slot, -1 if none)
    with their keys [B, d]; recent_* the slot last written here for the label (-1 if none), its
    stamp (clock, position in batch), similarity, value and key; and oldest_scores/oldest_slots
    [c] the shard's first insert candidates.
    """

    sims: np.ndarray
    slots: np.ndarray
    values: np.ndarray
    offset: int = 0
    pos_slot: np.ndarray | None = None
    pos_key: np.ndarray | None = None
    neg_slot: np.ndarray | None = None
    neg_key: np.ndarray | None = None
    recent_slot: np.ndarray | None = None
    recent_stamp: np.ndarray | None = None
    recent_sim: np.ndarray | None = None
    recent_value: np.ndarray | None = None
    recent_key: np.ndarray | None = None
    oldest_scores: np.ndarray | None = None
    oldest_slots: np.ndarray | None = None


def answer_query(memory: Memory, q: np.ndarray, labels: np.ndarray | None, k: int, offset: int,
                 recent_slots: np.ndarray, recent_clock: np.ndarray,
                 recent_position: np.ndarray) -> ShardAnswer:
    """The answer of the shard whose slots ``memory`` holds (global ids offset + local) to B
    checked, normalised queries q [B, d] with labels [B] or None; recent_* [V] are its
    recent-slot table (local slot, clock, position in batch).

    The search runs on the keys' device; what follows it is a handful of numpy operations on
    the [B, k] answer and gathers from the slots (``gather``): on a small shard these
    per-call operations, not the search, were the cost.
    """
    mem, device = memory, memory.keys.device
    qt = as_tensor(q, device)
    with torch.no_grad():
        sims_t, slots_t = mem.search.search(qt, mem.keys, mem.values, min(k, mem.num_slots))
    sims, slots = sims_t.cpu().numpy(), slots_t.cpu().numpy()
    values = gather(mem.values, slots).astype(np.int32)
    slots = slots.astype(np.int32)
    empty = np.isinf(sims)
    if empty.any():
        slots[empty] = -1
        values[empty] = -1
    answer = ShardAnswer(sims=sims, slots=slots, values=values, offset=offset)
    if labels is None:
        return answer
    batch = len(labels)
    rows = np.arange(batch)
    positive = values == labels[:, None]  # labels >= 0: an empty slot (-1) is never positive
    negative = ~positive & ~empty
    firsts = np.stack([positive.argmax(axis=1), negative.argmax(axis=1)])  # [2, B]
    found = np.stack([positive[rows, firsts[0]], negative[rows, firsts[1]]])
    local = slots[rows, firsts].astype(np.int64)  # [2, B], -1 where nothing is found
    recent = recent_slots[labels]
    recent_local = recent.clip(min=0)
    # one gather of the 3B keys the loss may need: best positive, best negative, recent
    keys = gather(mem.keys, np.concatenate([local.reshape(-1).clip(min=0), recent_local]))
    keys = keys.astype(np.float32, copy=False)  # compact keys: widened exactly
    recent_keys = keys[2 * batch:]
    with torch.no_grad():  # the product Memory computes (same operation, same bits)
        answer.recent_sim = (qt.cpu() * torch.from_numpy(recent_keys)).sum(1).numpy()
    slot = np.where(found, local + offset, -1)
    answer.pos_slot, answer.neg_slot = slot[0], slot[1]
    answer.pos_key, answer.neg_key = keys[:batch], keys[batch:2 * batch]
    answer.recent_slot = np.where(recent >= 0, recent + offset, -1)
    answer.recent_stamp = np.stack([recent_clock[labels], recent_position[labels]], axis=1)
    answer.recent_value = np.where(recent >= 0, gather(mem.values, recent_local), -1)
    answer.recent_key = recent_keys
    scores, oldest = mem.oldest_candidates(min(2 * batch, mem.num_slots))
    answer.oldest_scores = scores.cpu().numpy()
    answer.oldest_slots = oldest.cpu().numpy() + offset
    return answer
