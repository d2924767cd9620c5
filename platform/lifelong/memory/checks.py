"""Input checks of a memory lookup, shared by ``Memory`` and the sharded client: a bad query or
label raises a typed error before any state is touched."""

from __future__ import annotations

import torch

from lifelong.errors import InvalidLabelError, InvalidQueryError


def check_query(q: object, key_dim: int, num_slots: int, dtype: torch.dtype,
                device: torch.device | None) -> None:
    """Raises InvalidQueryError unless q is a finite [B, key_dim] tensor, 1 <= B <= num_slots,
    of ``dtype`` (and on ``device`` unless None)."""
    if not isinstance(q, torch.Tensor):
        raise InvalidQueryError(f"query must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 2 or q.shape[1] != key_dim or q.shape[0] == 0:
        raise InvalidQueryError(
            f"query must have shape [B, {key_dim}] with B >= 1, got {list(q.shape)}")
    if q.dtype != dtype:
        raise InvalidQueryError(f"query dtype must be {dtype}, got {q.dtype}")
    if device is not None and q.device != device:
        raise InvalidQueryError(f"query is on {q.device}, memory on {device}")
    if q.shape[0] > num_slots:
        raise InvalidQueryError(
            f"batch of {q.shape[0]} queries exceeds the memory's {num_slots} slots")
    if not bool(torch.isfinite(q).all()):
        raise InvalidQueryError("query holds NaN or Inf")


def check_labels(labels: object, batch: int, num_values: int,
                 device: torch.device | None) -> None:
    """Raises InvalidLabelError unless labels is an int64 [batch] tensor in [0, num_values)
    (on ``device`` unless None)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise InvalidLabelError("labels must be a torch.int64 tensor")
    if labels.shape != (batch,):
        raise InvalidLabelError(f"labels must have shape [{batch}], got {list(labels.shape)}")
    if device is not None and labels.device != device:
        raise InvalidLabelError(f"labels are on {labels.device}, memory on {device}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_values):
        raise InvalidLabelError(
            f"labels must lie in [0, {num_values}), got [{int(labels.min())}, "
            f"{int(labels.max())}]")
