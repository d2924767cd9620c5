"""The key-value memory of Kaiser et al., "Learning to Remember Rare Events" (ICLR 2017).

State for N slots of key size d: ``keys`` [N, d] (rows L2-normalised), ``values`` [N] int64
(-1 marks an empty slot, which never matches) and the ages of the slots. Ages are kept as a write
clock: ``ages = clock - write_time``, so an update step touches only the written slots instead of
incrementing N ages. ``state_dict()`` carries ``keys``, ``values``, ``ages`` and
``recent_slots`` (the slot most recently written for each value).

A lookup (``query``) is: normalise the query, search the ``choose_k`` nearest slots without
gradient, recompute their similarities with gradient (keys are constants, so only the query and
what produced it receive gradient), predict the nearest neighbour's value, and, given labels,
compute the margin loss and update the memory. See docs/design.md §1 for the exact semantics.

An update step is two public operations, so that the shards of ``lifelong.distributed`` drive a
``Memory`` exactly as ``write`` does: ``plan_write`` chooses what to write without changing any
state (a ``WritePlan``), ``apply_write`` writes it and ends the step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import MemoryStateError
from lifelong.memory.checks import check_labels, check_query, rescale_rows
from lifelong.memory.insert_order import EMPTY_BONUS, InsertOrder
from lifelong.memory.key_dtypes import query_dtype_for, resolve_key_dtype, zeros_keys
from lifelong.memory.loss import margin_from_pair, softmax_temperature
from lifelong.memory.output import MemoryOutput, WritePlan
from lifelong.memory.search import ExactSearch, Search
from lifelong.memory.state import MemoryState

__all__ = ["EMPTY_BONUS", "Memory", "MemoryOutput", "WritePlan", "margin_from_pair",
           "softmax_temperature"]


class Memory(MemoryState, nn.Module):
    """Life-long key-value memory with nearest-neighbour lookup and margin loss.

    Args:
        key_dim: d, the size of keys and queries.
        num_slots: N, the number of (key, value, age) slots.
        num_values: the value vocabulary; labels must lie in [0, num_values).
        choose_k: neighbours searched per query (the paper's k), default 256.
        alpha: the margin of the memory loss, default 0.1.
        age_noise: inserts pick among the oldest slots by age + U[-age_noise, age_noise].
        use_recent: add the slot most recently written for the label to the candidates during
            training so a positive is available (the reference code's ``recent_idx``).
        learn_query_proj: pass queries through a learned d x d projection (starts as identity).
        search: the nearest-neighbour backend; exact matmul + top-k by default.
        seed: seeds the private random generator of the age noise.
        slot_offset: the global id of slot 0 when this memory is a shard of a larger one.
        total_slots: the slots of that larger memory (None: num_slots). Insert ties are broken
            by the rank of the global slot id among total_slots (``slot_rank``), so a sharded
            memory chooses as one memory of total_slots does.
        key_dtype: how keys are stored: "float32", "bfloat16" or "float16"; queries and
            similarities stay float32 (lifelong.memory.key_dtypes).
    """

    def __init__(
        self,
        *,
        key_dim: int,
        num_slots: int,
        num_values: int,
        choose_k: int = 256,
        alpha: float = 0.1,
        age_noise: float = 8.0,
        use_recent: bool = True,
        learn_query_proj: bool = False,
        search: Search | None = None,
        seed: int = 0,
        key_dtype: str | torch.dtype = "float32",
        slot_offset: int = 0,
        total_slots: int | None = None,
    ):
        super().__init__()
        for name, val in (("key_dim", key_dim), ("num_slots", num_slots),
                          ("num_values", num_values), ("choose_k", choose_k)):
            if not isinstance(val, int) or val <= 0:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if not alpha > 0 or not math.isfinite(alpha):
            raise ValueError(f"alpha must be positive, got {alpha!r}")
        if not age_noise >= 0 or not math.isfinite(age_noise):
            raise ValueError(f"age_noise must be >= 0, got {age_noise!r}")
        self.key_dim, self.num_slots, self.num_values = key_dim, num_slots, num_values
        self.choose_k, self.alpha, self.age_noise = choose_k, alpha, age_noise
        self.use_recent = use_recent
        self.search = search if search is not None else ExactSearch()
        self.generator = torch.Generator().manual_seed(seed)
        self.query_proj = nn.Parameter(torch.eye(key_dim)) if learn_query_proj else None
        self.register_buffer("keys", zeros_keys(num_slots, key_dim,
                                                resolve_key_dtype(key_dtype)))
        self.register_buffer("values", torch.full((num_slots,), -1, dtype=torch.int64))
        self.register_buffer("recent_slots", torch.full((num_values,), -1, dtype=torch.int64))
        self.register_buffer("write_time", torch.zeros(num_slots, dtype=torch.int64),
                             persistent=False)
        self.register_buffer("clock", torch.zeros((), dtype=torch.int64), persistent=False)
        self.insert_order = InsertOrder(num_slots, slot_offset, total_slots)

    # ----------------------------------------------------------------------------- properties
    @property
    def k(self) -> int:
        """Neighbours per query: choose_k, or N when the memory is smaller."""
        return min(self.choose_k, self.num_slots)

    @property
    def temperature(self) -> float:
        """Softmax temperature (``softmax_temperature``): about 40 for k = 256, alpha = 0.1."""
        return softmax_temperature(self.k, self.alpha)

    @property
    def supports_grad_similarities(self) -> bool:
        """True: ``query(..., grad_similarities=True)`` gathers the k keys with gradient."""
        return True

    @property
    def key_dtype(self) -> str:
        """How the keys are stored: "float32", "bfloat16" or "float16" (float64 if doubled)."""
        return str(self.keys.dtype).removeprefix("torch.")

    @property
    def query_dtype(self) -> torch.dtype:
        """The dtype of queries and similarities (float32 for compact keys)."""
        return query_dtype_for(self.keys.dtype)

    def _keys_at(self, slots: torch.Tensor) -> torch.Tensor:
        return self.keys[slots].to(self.query_dtype)  # exact: compact keys are float32s

    @property
    def ages(self) -> torch.Tensor:
        """[N] int64 update steps since each slot was last written."""
        return self.clock - self.write_time

    def occupancy(self) -> int:
        """Number of filled (non-empty) slots (kept by the insert order: O(1) per call)."""
        return self.num_slots - self._order().num_empty

    # ---------------------------------------------------------------------------------- lookup
    def query(self, q: torch.Tensor, labels: torch.Tensor | None = None,
              update: bool = True, grad_similarities: bool = False) -> MemoryOutput:
        """Looks up a batch of queries; with labels, computes the loss and updates the memory.

        Args:
            q: [B, key_dim] float queries (the network's activations), finite.
            labels: [B] int64 true values in [0, num_values), or None for prediction only.
            update: write the batch into memory (only when labels are given).
            grad_similarities: give ``similarities`` (and ``softmax``) a gradient to q, for
                models that mix the memory's answer into their own output. Costs a gather of
                B x k keys; the loss has its gradient either way.

        Returns:
            A MemoryOutput; the prediction is made before the update.
        """
        self._check_query(q)
        if labels is not None:
            self._check_labels(labels, q.shape[0])
        q = self._normalise(q)
        k = self.k
        with torch.no_grad():
            sims, slots = self.search.search(q.detach(), self.keys, self.values, k)
            empty = torch.isinf(sims)  # fewer than k filled slots
            slots = slots.masked_fill(empty, -1)
            cand_values = self.values[slots.clamp(min=0)].masked_fill(empty, -1)
            nearest = sims.argmax(dim=1)
            values = cand_values.gather(1, nearest.unsqueeze(1)).squeeze(1)
        out = MemoryOutput(values=values, similarities=sims, slots=slots,
                           neighbour_values=cand_values, temperature=self.temperature)
        if grad_similarities:  # before any update: the keys as they were searched
            out.similarities = self._candidate_similarities(q, slots)
        if labels is None:
            return out
        if self.use_recent:  # the recent slot is a loss candidate only, never a prediction
            with torch.no_grad():
                recent = self.recent_slots[labels].unsqueeze(1)  # [B, 1], -1 if never written
                recent_values = self.values[recent.clamp(min=0)].masked_fill(recent < 0, -1)
                recent_sims = (q.detach().unsqueeze(1) * self._keys_at(recent.clamp(min=0))).sum(2)
                recent_sims = recent_sims.masked_fill(recent_values < 0, float("-inf"))
            sims = torch.cat([sims, recent_sims], dim=1)
            slots = torch.cat([slots, recent], dim=1)
            cand_values = torch.cat([cand_values, recent_values], dim=1)
        out.loss = self.margin_loss(q, sims, slots, cand_values, labels)
        out.correct = values == labels
        if update:
            n1_slots = out.slots.gather(1, nearest.unsqueeze(1)).squeeze(1)
            out.written_slots = self.write(q.detach(), labels, n1_slots, out.correct)
        return out

    def _candidate_similarities(self, q: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        valid = slots.clamp(min=0)
        sims = torch.einsum("bd,bcd->bc", q, self._keys_at(valid))
        return sims.masked_fill((slots < 0) | (self.values[valid] < 0), float("-inf"))

    def _normalise(self, q: torch.Tensor) -> torch.Tensor:
        q = rescale_rows(q)
        if self.query_proj is not None:
            q = q @ self.query_proj
        return F.normalize(q, dim=1)

    def margin_loss(self, q: torch.Tensor, sims: torch.Tensor, slots: torch.Tensor,
                    cand_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """max(0, alpha - q.K[p] + q.K[b]), averaged over the batch.

        p is the most similar candidate whose value equals the label, b the most similar whose
        value differs. A query with no positive candidate counts q.K[p] as 0, as the reference
        code does; one with no negative candidate has nothing to rank and adds 0. p and b are
        chosen on the search's similarities; q.K[p] and q.K[b] are then recomputed from the two
        keys with gradient, so the loss costs two dot products per query, not k.

        Args:
            q: [B, d] normalised queries (with gradient).
            sims: [B, c] candidate similarities (constants), -inf for empty candidates.
            slots: [B, c] candidate slot ids.
            cand_values: [B, c] candidate values, -1 for empty.
            labels: [B] true values.
        """
        with torch.no_grad():
            filled = cand_values >= 0
            positive = (cand_values == labels.unsqueeze(1)) & filled
            negative = filled & ~positive
            has_pos, has_neg = positive.any(dim=1), negative.any(dim=1)
            best_pos = sims.masked_fill(~positive, float("-inf")).argmax(dim=1, keepdim=True)
            best_neg = sims.masked_fill(~negative, float("-inf")).argmax(dim=1, keepdim=True)
            pair = torch.cat([slots.gather(1, best_pos), slots.gather(1, best_neg)], dim=1)
            pair_keys = self._keys_at(pair.clamp(min=0))  # [B, 2, d], copied before any update
        return margin_from_pair(q, pair_keys, has_pos, has_neg, self.alpha)

    # ---------------------------------------------------------------------------------- update
    @torch.no_grad()
    def write(self, q: torch.Tensor, labels: torch.Tensor, nearest_slots: torch.Tensor,
              correct: torch.Tensor) -> torch.Tensor:
        """One update step: refresh correctly recalled slots, insert the rest into oldest slots.

        A correct query moves its nearest key towards it: key = normalise(key + q) (several
        queries refreshing one slot add up). Every other query takes a distinct slot among the
        oldest by age + noise, never one refreshed in this step, with empty slots first. The
        written slots' ages reset to 0; all others grow by one.

        Args:
            q: [B, d] normalised queries.
            labels: [B] values to store.
            nearest_slots: [B] each query's nearest neighbour slot.
            correct: [B] bool, the nearest neighbour's value equals the label.

        Returns:
            [B] int64 the slot each query wrote.
        """
        written = nearest_slots.clone()
        inserting = ~correct
        plan = self.plan_write(nearest_slots[correct], q[correct], q[inserting],
                               labels[inserting])
        written[inserting] = plan.inserted
        self.apply_write(plan.slots, plan.keys, plan.values)
        self._set_recent(labels, written)
        return written

    @torch.no_grad()
    def plan_write(self, refresh_slots: torch.Tensor, refresh_q: torch.Tensor,
                   insert_q: torch.Tensor, insert_labels: torch.Tensor) -> WritePlan:
        """Chooses what one update step writes, without changing any slot, age or the clock.

        Refreshed keys become normalise(key + sum of the queries refreshing the slot); the
        inserts take distinct slots from ``oldest_slots``, never a refreshed one. With age noise
        this draws from the memory's generator (once, when an insert takes a filled slot), exactly
        as ``write`` does: planning then applying a step is bit-identical to ``write``.

        Args:
            refresh_slots: [R] int64 slots refreshed by correct queries (repeats add up).
            refresh_q: [R, d] normalised queries refreshing them.
            insert_q: [I, d] normalised queries to insert, I <= N - distinct refreshed slots.
            insert_labels: [I] int64 their values.

        Returns:
            The WritePlan: W = distinct refreshed slots + I rows.
        """
        unique, inverse = refresh_slots.unique(return_inverse=True)
        refreshed = F.normalize(self._keys_at(unique).index_add(
            0, inverse, refresh_q.to(self.query_dtype)), dim=1)
        count = insert_q.shape[0]
        inserted = self.oldest_slots(count, exclude=unique) if count else \
            torch.zeros(0, dtype=torch.int64, device=self.keys.device)
        return WritePlan(slots=torch.cat([unique, inserted]),
                         keys=torch.cat([refreshed, insert_q.to(self.query_dtype)]
                                        ).to(self.keys.dtype),
                         values=torch.cat([self.values[unique], insert_labels]),
                         inserted=inserted)

    @torch.no_grad()
    def apply_write(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    clock: int | None = None) -> None:
        """Writes rows and ends an update step: the written slots' ages become 0, every other
        age grows by the step (the search index follows the write).

        Args:
            slots: [W] int64 distinct slots (e.g. ``WritePlan.slots``).
            keys: [W, d] their keys, stored as given (converted to the key dtype: a shard's
                float32 write record of compact keys narrows back exactly).
            values: [W] int64 their values.
            clock: the write clock after the step (a replayed step's recorded clock, >= the
                current one); None: the next step, clock + 1.
        """
        order = self._order()
        was_empty = int((self.values[slots] < 0).sum())
        self.keys[slots] = keys.to(self.keys.dtype)  # float32 records of compact keys: exact
        self.values[slots] = values
        if clock is None:
            self.clock += 1
        else:
            self.clock.fill_(clock)
        self.write_time[slots] = self.clock
        order.written(slots, was_empty, self.values, self.write_time, self.clock)
        self.search.on_write(slots, self.keys)

    @torch.no_grad()
    def load_slots(self, keys: torch.Tensor, values: torch.Tensor, write_time: torch.Tensor,
                   clock: int) -> None:
        """Replaces every slot and the write clock (e.g. from a shard's snapshot); the
        recent-slot table is left as it is and the search index starts afresh.

        Args:
            keys: [N, d] keys; values: [N] int64 values (-1: empty; their range is the
                caller's to check); write_time: [N] int64 clock of each slot's last write,
                each <= clock, so that ages = clock - write_time.
            clock: the write clock.

        Raises:
            MemoryStateError: a shape, dtype or write time does not fit (nothing changed).
        """
        n, d = self.num_slots, self.key_dim
        if tuple(keys.shape) != (n, d) or tuple(values.shape) != (n,) or \
                tuple(write_time.shape) != (n,) or values.dtype != torch.int64 or \
                write_time.dtype != torch.int64:
            raise MemoryStateError(f"slots must be keys [{n}, {d}], values int64 [{n}] and "
                                   f"write_time int64 [{n}]")
        if n and int(write_time.max()) > clock:
            raise MemoryStateError(f"write times must be <= the clock {clock}")
        self.keys.copy_(keys)
        self.values.copy_(values)
        self.write_time.copy_(write_time)
        self.clock.fill_(clock)
        self.insert_order.invalidate()
        self.reset_search()

    def reset_search(self) -> None:
        """The search forgets its index after the slots were replaced; one that indexes the
        filled slots (``IVFSearch.on_reset``) is told which they are."""
        self.search.reset()
        if hasattr(self.search, "on_reset"):
            self.search.on_reset(self.values)

    def _order(self) -> InsertOrder:
        """The insert order, rebuilt first if the state changed other than by ``apply_write``."""
        self.insert_order.sync(self.values, self.write_time, self.clock)
        return self.insert_order

    def oldest_candidates(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``count`` first slots of the noiseless insert order, with their scores.

        The order is score descending, a slot's score being its age plus ``EMPTY_BONUS`` when it
        is empty, equal scores by ascending ``slot_rank`` of the global slot id. Amortised
        O(count + slots written since the last call), not O(N).

        Returns:
            scores: [count] int64, descending; slots: [count] int64 local slot ids.
        """
        return self._order().first(count, None, self.values, self.write_time, int(self.clock))

    def oldest_slots(self, count: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """The ``count`` slots to insert into: empty slots first, in the noiseless insert
        order (``oldest_candidates``), then filled ones by age + U[-age_noise, age_noise].

        With age_noise 0 this is the noiseless order, so the choice is deterministic. With
        noise, T is the score of the count-th slot of the noiseless order: a filled slot scoring
        below T - ceil(2 age_noise) cannot win, so noise (float64, from the memory's generator)
        is drawn for the filled slots at or above that alone, in insert order.

        Args:
            count: how many distinct slots.
            exclude: [E] slot ids that must not be chosen.

        Returns:
            [count] int64 distinct slot ids.
        """
        return self._order().choose(count, exclude, self.age_noise, self.generator, self.values,
                                    self.write_time, int(self.clock))

    def oldest_age(self) -> int:
        """The age of the oldest filled slot, 0 when none is filled (amortised O(written))."""
        time = self._order().oldest_filled_time(self.values, self.write_time)
        return 0 if time is None else int(self.clock) - time

    def _set_recent(self, labels: torch.Tensor, slots: torch.Tensor) -> None:
        """recent_slots[label] = slot; for a label repeated in the batch the last query wins."""
        unique, inverse = labels.unique(return_inverse=True)
        positions = torch.arange(labels.shape[0], device=labels.device)
        last = torch.zeros_like(unique).scatter_reduce_(0, inverse, positions, reduce="amax")
        self.recent_slots[unique] = slots[last]

    # ------------------------------------------------------------------------------ management
    @torch.no_grad()
    def clear(self) -> None:
        """Empties every slot (the paper clears the memory at the start of each episode)."""
        self.keys.zero_()
        self.values.fill_(-1)
        self.recent_slots.fill_(-1)
        self.write_time.zero_()
        self.clock.zero_()
        self.insert_order.invalidate()
        self.reset_search()

    def _check_query(self, q: torch.Tensor) -> None:
        check_query(q, self.key_dim, self.num_slots, self.query_dtype, self.keys.device)

    def _check_labels(self, labels: torch.Tensor, batch: int) -> None:
        check_labels(labels, batch, self.num_values, self.keys.device)

    def extra_repr(self) -> str:
        return (f"key_dim={self.key_dim}, num_slots={self.num_slots}, "
                f"num_values={self.num_values}, choose_k={self.choose_k}, alpha={self.alpha}, "
                f"age_noise={self.age_noise}")
