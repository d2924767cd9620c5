"""What the memory's operations return: a lookup's ``MemoryOutput`` and an update step's
``WritePlan``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MemoryOutput:
    """The answer of one lookup.

    Attributes:
        values: [B] int64 predicted value (nearest non-empty neighbour; -1 if memory is empty).
        similarities: [B, k] cosine similarity to the k neighbours, best first, -inf for empty
            candidates. Constants unless the query asked for ``grad_similarities``.
        slots: [B, k] int64 slot ids of the k neighbours.
        neighbour_values: [B, k] int64 values of the k neighbours (-1 for empty).
        temperature: the softmax temperature of the memory.
        loss: scalar margin loss (mean over the batch), or None without labels.
        correct: [B] bool, prediction == label (None without labels).
        written_slots: [B] int64 slot each query refreshed or was inserted into (None if the
            memory was not updated).
    """

    values: torch.Tensor
    similarities: torch.Tensor
    slots: torch.Tensor
    neighbour_values: torch.Tensor
    temperature: float
    loss: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    written_slots: torch.Tensor | None = None

    @property
    def softmax(self) -> torch.Tensor:
        """[B, k] softmax of similarities * temperature over the non-empty neighbours (an
        all-empty row gives zeros); computed when asked for."""
        empty = torch.isinf(self.similarities)
        logits = (self.similarities * self.temperature).masked_fill(
            empty.all(1, keepdim=True), 0.0)
        return torch.softmax(logits, dim=1).masked_fill(empty, 0.0)


@dataclass
class WritePlan:
    """What one update step writes, as ``Memory.plan_write`` chose it (nothing written yet).

    Attributes:
        slots: [W] int64 distinct slots to write: the refreshed ones (ascending), then the
            inserted ones (in the order of the insert queries).
        keys: [W, d] their new keys: normalise(key + sum of the refreshing queries) for a
            refreshed slot, the query itself for an inserted one.
        values: [W] int64 their values (a refreshed slot keeps its value).
        inserted: [I] int64 the slot each insert query takes, in order.
    """

    slots: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    inserted: torch.Tensor
