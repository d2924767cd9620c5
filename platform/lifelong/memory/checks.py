"""Input checks of a memory, shared by ``Memory`` and the sharded client: a bad query, label or
state raises a typed error before any state is touched; ``rescale_rows`` makes a finite but
extreme query safe to normalise."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from lifelong.errors import InvalidLabelError, InvalidQueryError, MemoryStateError


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


def check_state(state: Mapping[str, object], key_dim: int, num_slots: int, num_values: int,
                prefix: str = "") -> None:
    """Raises MemoryStateError unless ``state`` holds a memory state of N = num_slots slots:
    ``keys`` [N, key_dim] finite float, ``values`` [N] int64 in [-1, num_values), ``ages`` [N]
    int64 >= 0 and ``recent_slots`` [num_values] int64 in [-1, N) (names after ``prefix``).
    Other entries are not looked at (see ``check_state_keys``)."""
    n, d, v = num_slots, key_dim, num_values
    expected = {"keys": ((n, d), None), "values": ((n,), torch.int64),
                "ages": ((n,), torch.int64), "recent_slots": ((v,), torch.int64)}
    for name, (shape, dtype) in expected.items():
        tensor = state.get(prefix + name)
        if not isinstance(tensor, torch.Tensor):
            raise MemoryStateError(f"memory state lacks {name!r}")
        if tuple(tensor.shape) != shape or (dtype is not None and tensor.dtype != dtype):
            raise MemoryStateError(
                f"{name!r} must be {dtype or 'float'} {list(shape)}, got {tensor.dtype} "
                f"{list(tensor.shape)}")
    if not state[prefix + "keys"].is_floating_point():
        raise MemoryStateError(f"'keys' must be float, got {state[prefix + 'keys'].dtype}")
    values = state[prefix + "values"]
    if n and (int(values.min()) < -1 or int(values.max()) >= v):
        raise MemoryStateError(f"'values' must lie in [-1, {v})")
    if n and int(state[prefix + "ages"].min()) < 0:
        raise MemoryStateError("'ages' must be >= 0")
    if not bool(torch.isfinite(state[prefix + "keys"]).all()):
        raise MemoryStateError("'keys' hold NaN or Inf")
    recent = state[prefix + "recent_slots"]
    if v and (int(recent.min()) < -1 or int(recent.max()) >= n):
        raise MemoryStateError(f"'recent_slots' must lie in [-1, {n})")


def check_state_keys(state: Mapping[str, object], expected: Iterable[str],
                     strict: bool) -> tuple[list[str], list[str]]:
    """The names ``expected`` that ``state`` lacks and the names it holds beyond them.

    Raises:
        MemoryStateError: with ``strict``, when either list is not empty (naming them).
    """
    expected = list(expected)
    known = set(expected)
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in known]
    if strict and (missing or unexpected):
        raise MemoryStateError(f"memory state does not match (strict): missing keys {missing}, "
                               f"unexpected keys {unexpected}")
    return missing, unexpected


def rescale_rows(q: torch.Tensor) -> torch.Tensor:
    """q [B, d] with each row whose largest component is beyond 2**+-40 divided by a power of
    two near it (exact, and the same direction), so that normalising it neither overflows
    (a finite 3e38 would make the norm inf and the key zero) nor underflows; other rows are
    returned bit for bit. The scale is a constant: the gradient to q is that of the row."""
    with torch.no_grad():
        amax = q.abs().amax(dim=1, keepdim=True)
        odd = (amax > 2.0**40) | ((amax < 2.0**-40) & (amax > 0))
        if not bool(odd.any()):
            return q
        _, exponent = torch.frexp(amax.double())  # amax = m * 2**exponent, m in [0.5, 1)
        scale = torch.where(odd, torch.ldexp(torch.ones_like(amax, dtype=torch.float64),
                                             exponent - 1), 1.0)
    return (q.double() / scale).to(q.dtype)  # in float64, where 2**exponent never overflows
