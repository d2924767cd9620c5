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
    recent-slot table (local slot, clock, position in batch)."""
    mem, device = memory, memory.keys.device
    qt = as_tensor(q, device)
    with torch.no_grad():
        sims, slots = mem.search.search(qt, mem.keys, mem.values, min(k, mem.num_slots))
        empty = torch.isinf(sims)
        values = mem.values[slots].masked_fill(empty, -1)
    answer = ShardAnswer(sims=sims.cpu().numpy(),
                         slots=slots.masked_fill(empty, -1).to(torch.int32).cpu().numpy(),
                         values=values.to(torch.int32).cpu().numpy(), offset=offset)
    if labels is None:
        return answer
    with torch.no_grad():
        y = as_tensor(labels, device).unsqueeze(1)
        positive = (values == y) & ~empty
        negative = ~empty & (values != y)
        for kind, mask in (("pos", positive), ("neg", negative)):
            first = mask.to(torch.int8).argmax(dim=1, keepdim=True)  # first True
            local = slots.gather(1, first).squeeze(1)
            slot = torch.where(mask.any(dim=1), local + offset, -1)
            setattr(answer, f"{kind}_slot", slot.cpu().numpy())
            setattr(answer, f"{kind}_key", mem.keys[local].float().cpu().numpy())
        recent = recent_slots[labels]
        local = torch.from_numpy(recent.clip(min=0)).to(device)
        keys = mem.keys[local].to(mem.query_dtype)  # compact keys: widened exactly
        answer.recent_slot = np.where(recent >= 0, recent + offset, -1)
        answer.recent_stamp = np.stack([recent_clock[labels], recent_position[labels]], axis=1)
        answer.recent_value = np.where(recent >= 0, mem.values[local].cpu().numpy(), -1)
        answer.recent_sim = (qt * keys).sum(1).cpu().numpy()
        answer.recent_key = keys.cpu().numpy()
        scores, oldest = mem.oldest_candidates(min(2 * q.shape[0], mem.num_slots))
        answer.oldest_scores = scores.cpu().numpy()
        answer.oldest_slots = (oldest + offset).cpu().numpy()
    return answer
