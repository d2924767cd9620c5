"""``ShardedMemory``: the interface of ``lifelong.memory.Memory`` over S shards.

A query goes to every shard at once; the client merges the S local top-k lists into the global
top-k (ordered by similarity, then slot id, exactly as the local search orders them), predicts,
computes the margin loss from the two keys it needs (returned by the shards with their answers),
and routes the update: refreshes to the shard owning the slot, inserts by count to the shards
whose insert candidates come first, each shard choosing its own oldest slots when it applies
them. With age noise 0 and the exact search this reproduces ``Memory`` step for step.

``ShardedMemory`` satisfies ``lifelong.memory.KeyValueMemory`` completely; the one option it
cannot provide, ``grad_similarities``, raises ``UnsupportedOperationError``.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.distributed.answer import ShardAnswer
from lifelong.distributed.batches import ShardWrite, UpdateBatch
from lifelong.distributed.merge import merge_topk
from lifelong.distributed.reroute import reroute, written_slots
from lifelong.distributed.shard import MemoryShard
from lifelong.distributed.spec import MemorySpec
from lifelong.errors import InvalidLabelError, MemoryStateError, UnsupportedOperationError
from lifelong.memory import LoadResult, MemoryOutput
from lifelong.memory.checks import (check_labels, check_query, check_state, check_state_keys,
                                    rescale_rows)
from lifelong.memory.loss import margin_from_pair, softmax_temperature
from lifelong.memory.insert_order import EMPTY_BONUS, slot_rank
from lifelong.memory.key_dtypes import resolve_key_dtype

__all__ = ["LocalShards", "ShardGroup", "ShardedMemory", "UpdateBatch"]


class ShardGroup(Protocol):
    """Calls a method on every shard at once and returns their answers, in shard order."""

    def call(self, method: str, args: Sequence[tuple]) -> list[Any]: ...


class LocalShards:
    """Shards in this process (tests, single-process use). Clients in several threads may
    share them: each shard serialises its own calls, as in a Ray actor."""

    def __init__(self, shards: Sequence[MemoryShard]):
        self.shards = list(shards)

    def call(self, method, args):
        return [getattr(shard, method)(*a) for shard, a in zip(self.shards, args)]


_STATE_KEYS = ("keys", "values", "ages", "recent_slots")  # the names of state_dict()
_STAMP = 2**20  # a recent-slot stamp is clock * _STAMP + position in its batch (B < 2**20)


def _latest(slots: np.ndarray, clocks: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each column of the shards' recent-slot tables [S, n], the shard whose entry was
    written last (by clock, then position in its batch); entries with slot -1 never win."""
    stamp = np.where(slots >= 0, clocks * _STAMP + positions, -1)
    return stamp.argmax(axis=0)


def _padded(answer: ShardAnswer, width: int) -> ShardAnswer:
    """A copy of the answer's top-k lists padded to ``width`` columns with empty entries."""
    extra = width - answer.sims.shape[1]
    pad = lambda a, fill: np.pad(a, ((0, 0), (0, extra)), constant_values=fill)  # noqa: E731
    return replace(answer, sims=pad(answer.sims, -np.inf), slots=pad(answer.slots, -1),
                   values=pad(answer.values, -1))


class ShardedMemory:
    """A memory spread over S shards, used like ``lifelong.memory.Memory``.

    Args:
        spec: the memory's spec.
        shards: how to reach the shards (``LocalShards`` or Ray actors, see ``attach``).
        writer: this client's writer id (default: a fresh random one). Shards apply each
            (writer, seq) batch once: a client that resumes a writer's work after a crash sets
            ``seq`` to its last batch number and re-sends that batch.
        pipelined: one round trip per training step (see ``query``); ``flush()`` sends the
            last update.
    """

    def __init__(self, spec: MemorySpec, shards: ShardGroup, writer: str | None = None,
                 pipelined: bool = False):
        self.spec = spec
        self.shards = shards
        self.writer = writer or uuid.uuid4().hex
        self.seq = 0
        self.redo_after = -1  # see ``resume``
        self.pipelined = pipelined
        self.pending: UpdateBatch | None = None  # planned, not yet acknowledged (pipelined)
        self.last_written: torch.Tensor | None = None  # slots the last sent update wrote
        self.offsets = np.asarray(spec.shard_offsets() + [spec.num_slots])

    def resume(self, writer: str, seq: int) -> None:
        """Resumes the writer ``writer`` from a checkpoint taken after its batch ``seq`` (e.g.
        a restarted training worker): the next batch is ``seq + 1``, and a batch numbered
        above ``seq`` that a shard has already applied (a step redone since the checkpoint,
        whose queries differ) is not applied again: the first version stands (its inserts'
        ``written_slots`` are then -1 where the shard no longer knows them)."""
        self.flush()
        self.writer, self.seq, self.redo_after = writer, int(seq), int(seq)

    @classmethod
    def local(cls, spec: MemorySpec, durable: bool = False,
              pipelined: bool = False) -> "ShardedMemory":
        """All shards in this process."""
        return cls(spec, LocalShards([MemoryShard(spec, i, durable=durable)
                                      for i in range(spec.shards)]), pipelined=pipelined)

    # ----------------------------------------------------------------------------- properties
    @property
    def key_dim(self) -> int:
        """d, the size of keys and queries."""
        return self.spec.key_dim

    @property
    def num_slots(self) -> int:
        """N, slots over all shards."""
        return self.spec.num_slots

    @property
    def num_values(self) -> int:
        """V: labels lie in [0, V)."""
        return self.spec.num_values

    @property
    def choose_k(self) -> int:
        """Neighbours searched per query, before capping at N."""
        return self.spec.choose_k

    @property
    def alpha(self) -> float:
        """The margin of the memory loss."""
        return self.spec.alpha

    @property
    def age_noise(self) -> float:
        """Each shard picks its inserts among its oldest slots by age + U[-age_noise, age_noise]."""
        return self.spec.age_noise

    @property
    def use_recent(self) -> bool:
        """The label's most recently written slot joins the loss's candidates."""
        return self.spec.use_recent

    @property
    def k(self) -> int:
        """Neighbours per query: min(choose_k, N)."""
        return min(self.spec.choose_k, self.spec.num_slots)

    @property
    def temperature(self) -> float:
        """Softmax temperature max(1, ln(0.2 k) / alpha)."""
        return softmax_temperature(self.k, self.spec.alpha)

    @property
    def supports_grad_similarities(self) -> bool:
        """False: the shards do not return the k neighbours' keys (see ``query``)."""
        return False

    def owner(self, slots: np.ndarray) -> np.ndarray:
        """Shard index of each global slot id."""
        return np.searchsorted(self.offsets, slots, side="right") - 1

    # ---------------------------------------------------------------------------------- query
    def query(self, q: torch.Tensor, labels: torch.Tensor | None = None,
              update: bool = True, grad_similarities: bool = False) -> MemoryOutput:
        """As ``Memory.query``: q [B, key_dim] float32 (any device), labels [B] int64 or None.

        Args:
            q: [B, key_dim] queries.
            labels: [B] true values, or None for prediction only.
            update: write the batch into the shards (only with labels).
            grad_similarities: not supported; must be False.

        Returns:
            The MemoryOutput, tensors on the CPU; the loss has its gradient to q.
            ``written_slots`` is None when ``pipelined`` (the update is still on its way; the
            next call's answer brings its acknowledgement, then in ``last_written``).

        Pipelined (``self.pipelined``), the update is planned but not sent: it travels with the
        next call's search, in one call per shard (``MemoryShard.step``: apply, then search),
        so a training step costs one round trip. The shard applies it before it searches, so
        this writer reads its own writes. It is acknowledged, durable, only when that answer
        comes back; until then the client keeps it and a retried call (a shard restarted by
        Ray) re-sends it, applied once by (writer, seq). ``flush()`` sends it on its own; the
        other methods (state, status, load) flush first. A failed update (e.g.
        ``DurabilityError``) raises from the call that carried it and stays pending.

        Raises:
            UnsupportedOperationError: grad_similarities=True: the shards answer with the k
                neighbours' similarities, not their keys [B, k, d], so the similarities cannot
                carry a gradient to q (nothing is sent to the shards).
        """
        if grad_similarities:
            raise UnsupportedOperationError(
                "ShardedMemory.query(grad_similarities=True) is not supported: the shards "
                "return the k neighbours' similarities, not their keys, so the similarities "
                "have no gradient to q (the loss has its gradient either way)")
        out, pending = self._answer(q, labels)
        if labels is not None and update:
            batch = self._plan(*pending)
            if self.pipelined:
                self.pending = batch
            else:
                out.written_slots = self.apply_update(batch)
        return out

    def flush(self) -> torch.Tensor | None:
        """Sends the pending (pipelined) update and waits for its acknowledgement; returns the
        slots it wrote [B], or None if nothing was pending."""
        if self.pending is None:
            return None
        self.last_written = self.apply_update(self.pending)
        self.pending = None
        return self.last_written

    def predict_and_plan(self, q: torch.Tensor,
                         labels: torch.Tensor) -> tuple[MemoryOutput, UpdateBatch]:
        """A prequential step's first half: answers q [B, key_dim] (prediction, loss) and plans
        the update with labels [B], without sending it. ``apply_update`` sends the plan; until
        then the memory is unchanged (and a new plan would take the next sequence number)."""
        if labels is None:
            raise InvalidLabelError("predict_and_plan needs the labels to plan the update")
        out, pending = self._answer(q, labels)
        return out, self._plan(*pending)

    def _answer(self, q: torch.Tensor, labels: torch.Tensor | None):
        """The merged answer of the shards, and what planning its update needs."""
        self._check(q, labels)
        qn = F.normalize(rescale_rows(q), dim=1)
        q_np = np.ascontiguousarray(qn.detach().cpu().numpy())
        y_np = labels.cpu().numpy() if labels is not None else None
        answers: list[ShardAnswer] = self._search(q_np, y_np)
        sims, slots, values, source = self._merge(answers)
        out = MemoryOutput(values=torch.from_numpy(values[:, 0].copy()),
                           similarities=torch.from_numpy(sims), slots=torch.from_numpy(slots),
                           neighbour_values=torch.from_numpy(values),
                           temperature=self.temperature)
        if labels is None:
            return out, None
        out.loss = self._loss(qn, answers, sims, slots, values, source, y_np)
        out.correct = out.values == labels.cpu()
        return out, (q_np, y_np, slots[:, 0], out.correct.numpy(), answers)

    def _search(self, q_np: np.ndarray, y_np: np.ndarray | None) -> list[ShardAnswer]:
        """The shards' answers; a pending update goes with the search, applied first."""
        if self.pending is None:
            return self.shards.call("search", [(q_np, y_np, self.k)] * self.spec.shards)
        batch = self.pending
        results = self.shards.call("step", [(w, q_np, y_np, self.k) for w in batch.writes])
        applied, answers = [a for a, _ in results], [answer for _, answer in results]
        self.pending = None  # acknowledged: durable on every shard
        self.last_written = self._finish(batch, applied)
        return answers

    def _merge(self, answers: list[ShardAnswer]):
        """The global top-k [B, k] (sims, global slots, values) of the shards' answers, and
        the shard each entry came from (``merge.merge_topk``)."""
        width = max(a.sims.shape[1] for a in answers)
        if any(a.sims.shape[1] != width for a in answers):  # shards of unequal sizes
            answers = [_padded(a, width) for a in answers]
        return merge_topk(np.stack([a.sims for a in answers]),
                          np.stack([a.slots for a in answers]),
                          np.stack([a.values for a in answers]),
                          self.offsets[:-1], self.k)

    def _loss(self, qn, answers, sims, slots, values, source, labels) -> torch.Tensor:
        """The margin loss of ``Memory.margin_loss`` over the global top-k (plus the recent slot
        with ``use_recent``): its best positive and best negative are the first of each in
        the merged list, and the shard they came from sent their keys."""
        batch, d = qn.shape
        rows = np.arange(batch)
        positive = values == labels[:, None]  # labels >= 0: an empty entry (-1) never is
        negative = ~positive & (values >= 0)
        pair_keys = np.zeros((batch, 2, d), dtype=np.float32)
        pair_sims = np.full((batch, 2), -np.inf)
        for j, (mask, kind) in enumerate(((positive, "pos"), (negative, "neg"))):
            first = mask.argmax(axis=1)
            has = mask[rows, first]
            owner = source[rows, first].clip(min=0)
            shard_slots = np.stack([getattr(a, f"{kind}_slot") for a in answers])  # [S, B]
            if not np.array_equal(shard_slots[owner, rows][has], slots[rows, first][has]):
                raise RuntimeError("a shard's best candidate is not the global best")
            keys = np.stack([getattr(a, f"{kind}_key") for a in answers])  # [S, B, d]
            pair_keys[has, j] = keys[owner, rows][has]
            pair_sims[has, j] = sims[rows, first][has]
        if self.use_recent:
            self._recent_candidate(answers, labels, pair_sims, pair_keys)
        return margin_from_pair(qn, torch.from_numpy(pair_keys),
                                torch.from_numpy(np.isfinite(pair_sims[:, 0])),
                                torch.from_numpy(np.isfinite(pair_sims[:, 1])), self.spec.alpha)

    @staticmethod
    def _recent_candidate(answers, labels, pair_sims, pair_keys) -> None:
        """The most recent slot of the label (latest stamp over the shards) joins as a
        candidate after the top-k: it takes a pair's place (in pair_sims [B, 2] and pair_keys
        [B, 2, d], in place) only with a strictly higher similarity."""
        rows = np.arange(len(labels))
        stamps = np.stack([a.recent_stamp for a in answers])            # [S, B, 2]
        recent = np.stack([a.recent_slot for a in answers])             # [S, B]
        latest = _latest(recent, stamps[..., 0], stamps[..., 1])
        value = np.stack([a.recent_value for a in answers])[latest, rows]
        sim = np.stack([a.recent_sim for a in answers])[latest, rows]
        key = np.stack([a.recent_key for a in answers])[latest, rows]
        usable = (recent[latest, rows] >= 0) & (value >= 0)
        j = np.where(value == labels, 0, 1)
        better = usable & (sim > pair_sims[rows, j])
        pair_sims[rows[better], j[better]] = sim[better]
        pair_keys[rows[better], j[better]] = key[better]

    # --------------------------------------------------------------------------------- update
    def _plan(self, q, labels, nearest, correct, answers) -> UpdateBatch:
        """Splits one update batch into the shards' parts (refreshes to the slot's owner,
        inserts by the merged insert order: score descending, equal scores by ``slot_rank`` of
        the global slot id, as ``Memory`` orders them) under the next sequence number."""
        refresh = np.flatnonzero(correct)
        inserting = np.flatnonzero(~correct)
        # The global insert order: the shards' candidates merged, minus slots refreshed now.
        scores = np.concatenate([a.oldest_scores for a in answers])
        cands = np.concatenate([a.oldest_slots for a in answers])
        keep = ~np.isin(cands, nearest[refresh])
        scores, cands = scores[keep], cands[keep]
        order = np.lexsort((slot_rank(cands, self.spec.num_slots), -scores))[: len(inserting)]
        target = self.owner(cands[order])  # shard of each insert, in insert order
        to_empty = scores[order] >= EMPTY_BONUS  # routed to a slot empty at search time
        refresh_owner = self.owner(nearest[refresh])
        self.seq += 1
        writes = []
        for s in range(self.spec.shards):
            r = refresh[refresh_owner == s]
            i = inserting[target == s]
            writes.append(ShardWrite(
                writer=self.writer, seq=self.seq, refresh_slots=nearest[r], refresh_q=q[r],
                refresh_labels=labels[r], refresh_positions=r, insert_q=q[i],
                insert_labels=labels[i], insert_positions=i,
                insert_empty=int(to_empty[target == s].sum()), redo_after=self.redo_after))
        return UpdateBatch(seq=self.seq, writes=writes, nearest=nearest, inserting=inserting,
                           target=target)

    def apply_update(self, batch: UpdateBatch, wait: bool = True) -> torch.Tensor | None:
        """Sends a planned batch to the shards (again, after a crash: each shard applies it
        once and answers a repeat with its first answer); returns the global slot each query
        wrote [B]. With ``wait=False`` the batch is sent with the next call instead, as a
        pipelined ``query`` does (returns None; ``flush()`` sends it at once).

        Inserts a shard refused (the empty slots they were routed to were taken by another
        writer since the search, or a stale refresh turned into an insert on a full shard)
        are re-routed: offered to each other shard in turn, which takes them into empty slots
        only; when no shard has one left, they evict in the shard first chosen. These rounds
        go under the writers ``<writer>/<seq>.<round>`` (batch 1 of each) and depend only on
        the shards' (repeatable) answers, so re-sending the batch re-sends them identically.

        Raises:
            MemoryStateError: the batch does not hold one write per shard (nothing sent).
        """
        if len(batch.writes) != self.spec.shards:
            raise MemoryStateError(f"an update batch must hold one write per shard "
                                   f"({self.spec.shards}), got {len(batch.writes)}")
        if self.pending is not None and batch is not self.pending:
            self.flush()  # batches go out in order
        if not wait:
            self.pending = batch
            return None
        return self._finish(batch, self.shards.call("apply", [(w,) for w in batch.writes]))

    def _finish(self, batch: UpdateBatch, answers: list) -> torch.Tensor:
        """The slot each query of ``batch`` wrote [B], from the shards' apply answers, after
        re-routing what they refused (``reroute``)."""
        written, refused, full = written_slots(batch, answers)
        if full:
            reroute(self.shards, self.spec.key_dim, self.writer, self.redo_after, batch,
                    written, refused, full)
        return torch.from_numpy(written)

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """keys [N, d], values [N], ages [N], recent_slots [V], as ``Memory.state_dict()``."""
        self.flush()
        states = self.shards.call("state", [()] * self.spec.shards)
        cat = lambda name: np.concatenate([s[name] for s in states])  # noqa: E731
        stack = lambda name: np.stack([s[name] for s in states])  # noqa: E731
        slots = stack("recent_slots")
        latest = _latest(slots, stack("recent_clock"), stack("recent_position"))
        recent = slots[latest, np.arange(slots.shape[1])]
        keys = torch.from_numpy(cat("keys")).to(resolve_key_dtype(self.spec.key_dtype))
        return {"keys": keys, "values": torch.from_numpy(cat("values")),
                "ages": torch.from_numpy(cat("ages")), "recent_slots": torch.from_numpy(recent)}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor],
                        strict: bool = True) -> LoadResult:
        """Loads keys [N, d], values [N] and ages [N] (e.g. a local Memory's state) into the
        shards, each snapshotting it at once; the recent-slot table starts afresh.

        The whole state is validated (as ``Memory.load_state_dict`` validates it, recent_slots
        [V] included) before any shard is changed.

        Args:
            state_dict: keys, values, ages and recent_slots, as ``state_dict()`` returns them.
            strict: refuse names beyond those four; False ignores them.

        Returns:
            LoadResult(missing_keys, unexpected_keys): the names not loaded.

        Raises:
            MemoryStateError: the state does not fit (no shard changed).
        """
        missing, unexpected = check_state_keys(state_dict, _STATE_KEYS, strict)
        spec = self.spec
        check_state(state_dict, spec.key_dim, spec.num_slots, spec.num_values)
        self.flush()
        keys = state_dict["keys"].detach().cpu().to(resolve_key_dtype(spec.key_dtype)).float()
        keys, values, ages = (t.numpy() for t in (keys, state_dict["values"].detach().cpu(),
                                                   state_dict["ages"].detach().cpu()))
        bounds, clock = list(self.offsets), int(ages.max())
        self.shards.call("load_state", [
            (np.ascontiguousarray(keys[a:b], dtype=np.float32), values[a:b], ages[a:b], clock)
            for a, b in zip(bounds[:-1], bounds[1:])])
        return LoadResult(missing_keys=missing, unexpected_keys=unexpected)

    def status(self) -> list[dict]:
        """Per shard: occupancy, oldest age, queries, inserts, refreshes, ..."""
        self.flush()
        return self.shards.call("status", [()] * self.spec.shards)

    def occupancy(self) -> int:
        """Number of filled (non-empty) slots over all shards."""
        return sum(s["occupied"] for s in self.status())

    def _check(self, q: torch.Tensor, labels: torch.Tensor | None) -> None:
        """As Memory's checks; queries and labels may sit on any device (they go to the shards
        as numpy arrays)."""
        check_query(q, self.spec.key_dim, self.spec.num_slots, torch.float32, None)
        if labels is not None:
            check_labels(labels, q.shape[0], self.spec.num_values, None)
