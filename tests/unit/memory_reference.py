"""A brute-force reference of the memory's semantics (docs/design.md §1), written for clarity.

Plain loops over queries and a full sort over all slots: slow, obviously correct, and independent
of the module's chunked search, group pre-selection and write clock.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ReferenceMemory:
    """Same state as lifelong.memory.Memory (age_noise 0 only), kept as plain tensors."""

    def __init__(self, key_dim, num_slots, num_values, choose_k, alpha, use_recent=True):
        self.keys = torch.zeros(num_slots, key_dim, dtype=torch.float64)
        self.values = torch.full((num_slots,), -1, dtype=torch.int64)
        self.ages = torch.zeros(num_slots, dtype=torch.int64)
        self.recent = torch.full((num_values,), -1, dtype=torch.int64)
        self.k = min(choose_k, num_slots)
        self.alpha = alpha
        self.use_recent = use_recent

    def neighbours(self, qn_row):
        """Slots of the k most similar non-empty keys, best first (full sort)."""
        sims = [(float(qn_row @ self.keys[s]), s) for s in range(len(self.values))
                if self.values[s] >= 0]
        sims.sort(key=lambda t: -t[0])
        return [s for _, s in sims[: self.k]]

    def query(self, q, labels=None, update=True):
        """Returns (predictions [B], loss or None); q may require grad (float64)."""
        qn = F.normalize(q, dim=1)
        preds, losses, nearest = [], [], []
        for i in range(q.shape[0]):
            slots = self.neighbours(qn[i].detach())
            nearest.append(slots[0] if slots else -1)
            preds.append(int(self.values[slots[0]]) if slots else -1)
            if labels is None:
                continue
            y = int(labels[i])
            cands = list(slots)
            if self.use_recent and self.recent[y] >= 0:
                cands.append(int(self.recent[y]))
            pos = [qn[i] @ self.keys[s].clone() for s in cands if self.values[s] == y]
            neg = [qn[i] @ self.keys[s].clone() for s in cands if self.values[s] != y]
            if not neg:
                losses.append(qn[i].sum() * 0)
                continue
            p = torch.stack(pos).max() if pos else qn[i].sum() * 0
            b = torch.stack(neg).max()
            losses.append(F.relu(self.alpha - p + b))
        preds = torch.tensor(preds)
        loss = torch.stack(losses).mean() if labels is not None else None
        if labels is not None and update:
            self.write(qn.detach(), labels, nearest, preds == labels)
        return preds, loss

    def oldest(self, count, exclude):
        """Empty slots first, then oldest, ties by rank (``golden_rank``)."""
        rank = golden_rank(len(self.values))
        order = sorted(range(len(self.values)),
                       key=lambda s: (-(self.values[s] < 0).item(), -int(self.ages[s]), rank[s]))
        return [s for s in order if s not in exclude][:count]

    def write(self, qn, labels, nearest, correct):
        refresh = {}
        for i in range(len(labels)):
            if correct[i]:
                refresh.setdefault(nearest[i], []).append(i)
        written = [None] * len(labels)
        for slot, rows in refresh.items():
            total = self.keys[slot] + sum(qn[r] for r in rows)
            self.keys[slot] = total / total.norm()
            for r in rows:
                written[r] = slot
        inserts = [i for i in range(len(labels)) if not correct[i]]
        for i, slot in zip(inserts, self.oldest(len(inserts), set(refresh))):
            self.keys[slot] = qn[i]
            self.values[slot] = labels[i]
            written[i] = slot
        self.ages += 1
        for i, slot in enumerate(written):
            self.ages[slot] = 0
            self.recent[int(labels[i])] = slot
        return written


def golden_rank(n):
    """rank[s] for slots [0, n): the slots in rank order are 0, G, 2G, ... mod n, G the integer
    below n (sqrt 5 - 1) / 2 raised to the first value coprime to n (1 for n <= 2)."""
    stride = 1
    if n > 2:
        stride = max(1, (math.isqrt(5 * n * n) - n) // 2)
        while math.gcd(stride, n) != 1:
            stride += 1
    rank = [0] * n
    for r in range(n):
        rank[(r * stride) % n] = r
    return rank


def temperature(k, alpha):
    return max(1.0, math.log(0.2 * k) / alpha)
