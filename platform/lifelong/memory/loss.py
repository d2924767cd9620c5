"""The memory's softmax temperature and margin loss, shared by ``Memory`` and the sharded client
(docs/design.md §1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax_temperature(k: int, alpha: float) -> float:
    """max(1, ln(0.2 k) / alpha): about 40 for k = 256, alpha = 0.1."""
    return max(1.0, math.log(0.2 * k) / alpha)


def margin_from_pair(q: torch.Tensor, pair_keys: torch.Tensor, has_pos: torch.Tensor,
                     has_neg: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean over the batch of max(0, alpha - q.K[p] + q.K[b]).

    Args:
        q: [B, d] normalised queries (with gradient).
        pair_keys: [B, 2, d] the keys of p (positive) and b (negative), constants.
        has_pos: [B] bool; without a positive q.K[p] counts as 0 (as the reference code does).
        has_neg: [B] bool; without a negative the query adds 0.
    """
    sims = torch.bmm(pair_keys, q.unsqueeze(2)).squeeze(2)  # [B, 2]: q.K[p], q.K[b]
    pos_sim = sims[:, 0] * has_pos  # 0 without a positive
    return (F.relu(alpha - pos_sim + sims[:, 1]) * has_neg).mean()
