"""The declared interface of a key-value memory: what every memory of the platform provides.

``lifelong.memory.Memory`` (one process, pure PyTorch) and ``lifelong.distributed.ShardedMemory``
(S shards behind Ray actors) both satisfy ``KeyValueMemory`` completely, so models and training
code take "a memory" and never branch on which one (docs/design.md §2.1). The semantics of each
member are those of ``Memory`` (docs/design.md §1); where an implementation cannot provide an
option it raises ``lifelong.errors.UnsupportedOperationError`` naming the option, before
changing anything.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Protocol, runtime_checkable

import torch

from lifelong.memory.output import MemoryOutput


class LoadResult(NamedTuple):
    """What ``load_state_dict`` left out (the fields of torch's ``_IncompatibleKeys``).

    Attributes:
        missing_keys: names the memory's state has that the loaded one lacked.
        unexpected_keys: names in the loaded state the memory ignored (strict=False).
    """

    missing_keys: list[str]
    unexpected_keys: list[str]


@runtime_checkable
class KeyValueMemory(Protocol):
    """A life-long key-value memory of N slots of key size d over a vocabulary of V values.

    State: ``keys`` [N, d] (rows L2-normalised), ``values`` [N] int64 (-1: empty, never
    matches), ``ages`` [N] int64 (update steps since each slot was written) and ``recent_slots``
    [V] int64 (the slot last written for each value, -1 if none).

    ``isinstance(x, KeyValueMemory)`` checks that every member below exists (not their
    signatures); tests/unit/test_memory_protocol.py checks that both memories behave alike.
    """

    # ------------------------------------------------------------------- sizes, hyper-parameters
    @property
    def key_dim(self) -> int:
        """d, the size of keys and queries."""
        ...

    @property
    def num_slots(self) -> int:
        """N, the number of (key, value, age) slots."""
        ...

    @property
    def num_values(self) -> int:
        """V: labels lie in [0, V)."""
        ...

    @property
    def choose_k(self) -> int:
        """Neighbours searched per query (the paper's k), before capping at N."""
        ...

    @property
    def alpha(self) -> float:
        """The margin of the memory loss."""
        ...

    @property
    def age_noise(self) -> float:
        """Inserts pick among the oldest slots by age + U[-age_noise, age_noise]."""
        ...

    @property
    def use_recent(self) -> bool:
        """The label's most recently written slot joins the loss's candidates in training."""
        ...

    @property
    def k(self) -> int:
        """Neighbours per query: min(choose_k, N)."""
        ...

    @property
    def temperature(self) -> float:
        """Softmax temperature max(1, ln(0.2 k) / alpha) of ``MemoryOutput.softmax``."""
        ...

    @property
    def supports_grad_similarities(self) -> bool:
        """Whether ``query(..., grad_similarities=True)`` is available (a model that mixes the
        memory's softmax into its output asks for it where it is, instead of testing types)."""
        ...

    # ------------------------------------------------------------------------------ operations
    def query(self, q: torch.Tensor, labels: torch.Tensor | None = None, update: bool = True,
              grad_similarities: bool = False) -> MemoryOutput:
        """Looks up a batch of queries; with labels, computes the loss and updates the memory.

        Args:
            q: [B, d] float32 queries, finite, 1 <= B <= N.
            labels: [B] int64 true values in [0, V), or None for prediction only.
            update: write the batch into memory (only when labels are given).
            grad_similarities: give ``MemoryOutput.similarities`` [B, k] a gradient to q.

        Returns:
            The MemoryOutput (values [B], similarities / slots / neighbour_values [B, k]; with
            labels also loss (scalar), correct [B] and, if updated, written_slots [B]); the
            prediction is made before the update.

        Raises:
            InvalidQueryError, InvalidLabelError: bad input (nothing changed).
            UnsupportedOperationError: an option this memory cannot provide (nothing changed).
        """
        ...

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        """The whole state: keys [N, d], values [N], ages [N], recent_slots [V] (a copy)."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                        strict: bool = True) -> LoadResult:
        """Replaces the state with ``state_dict`` (as ``state_dict()`` returns it).

        The whole state is validated before anything changes. keys, values, ages and
        recent_slots are always needed; an implementation may start its recent-slot table
        afresh instead of loading it (``ShardedMemory`` does).

        Args:
            state_dict: keys [N, d] float, values [N] int64 in [-1, V), ages [N] int64 >= 0,
                recent_slots [V] int64 in [-1, N).
            strict: refuse names beyond the memory's own (and any of its own missing); False
                ignores unexpected names.

        Returns:
            LoadResult: the names left out.

        Raises:
            MemoryStateError: the state does not fit (nothing changed).
        """
        ...

    def occupancy(self) -> int:
        """Number of filled (non-empty) slots."""
        ...
