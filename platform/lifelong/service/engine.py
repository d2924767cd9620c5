"""The service's work against a named memory, without Ray Serve (``app`` puts it behind HTTP).

``predict`` answers a batch of requests with one query of the memory (read-only). ``learn``
writes a batch of requests with one planned update, exactly once per request id
(``records``): claim every request id for a fresh batch B (exclusively), plan the update
(``ShardedMemory.predict_and_plan``, read-only), mark B open, commit the plan (exclusively),
send it under the writer ``serve-<B>`` (sequence 1: the shards apply it once, however often
it is sent), record each request's answer, close B, answer. A retry finds the answer, or the committed
plan and sends it again, or an abandoned batch and claims the id anew; it never plans a second
write for a request id whose plan was committed. ``recover`` settles the open batches a dead
replica left (docs/design.md §8.4).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lifelong.distributed.client import ShardedMemory
from lifelong.errors import RequestConflictError, RequestInProgressError
from lifelong.service.protocol import LearnRequest, PredictRequest, finite_or_none
from lifelong.service.records import ABANDONED, PlannedBatch, RequestRecords

WRITER_PREFIX = "serve-"  # + batch id: one writer per batch, sequence number 1


@dataclass
class Learned:
    """One ``/learn`` request's outcome: its answer, and whether it came from the record."""

    answer: dict
    replayed: bool


class ServiceEngine:
    """Predicts and learns against ``memory``.

    Args:
        memory: A client of the named memory (its shards are shared with one client per batch).
        encode: Payloads [n, *shape] -> keys [n, key_dim] float32.
        records: The record of request ids.
        claim_timeout_s: A claim this old whose batch was never committed may be taken over.
        writes: Called with the number of examples each new batch wrote (a metric).
    """

    def __init__(self, memory: ShardedMemory, encode: Callable[[np.ndarray], torch.Tensor],
                 records: RequestRecords, claim_timeout_s: float = 60.0,
                 writes: Callable[[int], None] | None = None):
        self.memory, self.encode, self.records = memory, encode, records
        self.claim_timeout_s = claim_timeout_s
        self.writes = writes or (lambda n: None)

    # ---------------------------------------------------------------------------- predict
    def predict(self, requests: list[PredictRequest]) -> list[dict]:
        """One answer per request: per example the label and similarity of its nearest
        neighbour (among ``candidates`` if given; None when there is none) and the nearest
        ``neighbours`` neighbours' labels and similarities."""
        keys = self.encode(np.concatenate([r.payloads for r in requests]))
        out = self.memory.query(keys, labels=None, update=False)
        values, sims = out.neighbour_values.numpy(), out.similarities.numpy()
        answers, row = [], 0
        for r in requests:
            predictions = []
            for i in range(row, row + len(r)):
                filled = values[i] >= 0
                usable = filled if r.candidates is None else \
                    filled & np.isin(values[i], r.candidates)
                j = int(np.argmax(usable)) if usable.any() else None
                predictions.append({
                    "label": int(values[i, j]) if j is not None else None,
                    "similarity": finite_or_none(sims[i, j]) if j is not None else None,
                    "neighbours": [{"label": int(v), "similarity": finite_or_none(s)}
                                   for v, s in zip(values[i, :r.neighbours],
                                                   sims[i, :r.neighbours]) if v >= 0]})
            row += len(r)
            answers.append({"predictions": predictions})
        return answers

    # ------------------------------------------------------------------------------ learn
    def learn(self, requests: list[LearnRequest]) -> list[Learned | Exception]:
        """One outcome per request: ``Learned``, or the error it is answered with
        (RequestConflictError, RequestInProgressError, ShardUnavailableError, ...)."""
        outcomes: list[Learned | Exception | None] = [None] * len(requests)
        batch_id = uuid.uuid4().hex
        owned = []
        for i, r in enumerate(requests):
            try:
                found = self._resolve(r)
                if isinstance(found, Learned):
                    outcomes[i] = found
                elif self.records.claim(r.request_id, r.digest, batch_id, found):
                    owned.append(i)
                else:  # another caller claimed it just now
                    again = self._resolve(r)
                    outcomes[i] = again if isinstance(again, Learned) else \
                        RequestInProgressError(f"request {r.request_id!r} is being applied")
            except Exception as exc:  # noqa: BLE001 - answered to this request alone
                outcomes[i] = exc
        if owned:
            try:
                answers = self._write(batch_id, [requests[i] for i in owned])
                for i in owned:
                    outcomes[i] = Learned(answers[requests[i].request_id], replayed=False)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for i in owned:
                    outcomes[i] = exc
        return outcomes

    def _resolve(self, r: LearnRequest) -> Learned | int:
        """A request id's state: its recorded answer (``Learned``), or the claim generation a
        new batch may take (0 for a new id).

        Raises:
            RequestConflictError: the id was used with other examples or labels.
            RequestInProgressError: another call is applying it now.
            ShardUnavailableError: its committed batch could not be sent again (yet).
        """
        done = self.records.answer(r.request_id)
        if done is not None:
            return Learned(self._same(r, done[0], done[1]), replayed=True)
        claim = self.records.current(r.request_id)
        if claim is None:
            return 0
        self._same(r, claim.digest, None)
        state = self.records.load_batch(claim.batch)
        if state is None and time.time() - claim.claimed_at > self.claim_timeout_s:
            self.records.abandon(claim.batch)  # its caller died before committing it
            state = self.records.load_batch(claim.batch)
        if state is None:
            raise RequestInProgressError(f"request {r.request_id!r} is being applied")
        if state == ABANDONED:
            return claim.generation + 1
        answers = self._complete(state)  # committed, maybe not sent: send it (again)
        return Learned(answers[r.request_id], replayed=True)

    @staticmethod
    def _same(r: LearnRequest, digest: str, answer):
        if digest != r.digest:
            raise RequestConflictError(f"request id {r.request_id!r} was used before with "
                                       "other examples or labels")
        return answer

    def _write(self, batch_id: str, requests: list[LearnRequest]) -> dict[str, dict]:
        """Plans, commits and sends one batch for requests whose ids it claimed."""
        try:
            labels = np.concatenate([r.labels for r in requests])
            keys = self.encode(np.concatenate([r.payloads for r in requests]))
            mem = ShardedMemory(self.memory.spec, self.memory.shards,
                                writer=WRITER_PREFIX + batch_id)
            out, update = mem.predict_and_plan(keys, torch.from_numpy(labels))
            rows, start = [], 0
            for r in requests:
                rows.append((r.request_id, r.digest, start, start + len(r)))
                start += len(r)
            nearest = out.similarities[:, 0].numpy()
            plan = PlannedBatch(batch_id=batch_id, writer=mem.writer, update=update,
                                requests=rows, predicted=out.values.numpy(),
                                similarity=nearest, labels=labels)
            self.records.open_batch(batch_id)
            committed = self.records.save_batch(plan)
        except BaseException:
            if self.records.abandon(batch_id):  # never sent: a retry claims its ids anew
                self.records.close_batch(batch_id)
            raise
        if not committed:  # a retry found the claim stale and abandoned it first
            self.records.close_batch(batch_id)
            raise RequestInProgressError("the batch was abandoned before it was committed")
        answers = self._complete(plan)
        self.writes(len(labels))
        return answers

    def _complete(self, plan: PlannedBatch) -> dict[str, dict]:
        """Sends a committed plan (the shards apply it once) and records every answer."""
        mem = ShardedMemory(self.memory.spec, self.memory.shards, writer=plan.writer)
        written = mem.apply_update(plan.update).numpy()
        refreshed = np.ones(len(plan.labels), dtype=bool)  # the correct ones refresh
        refreshed[plan.update.inserting] = False
        answers = {}
        for request_id, digest, start, end in plan.requests:
            answer = {"request_id": request_id, "results": [{
                "label": int(plan.labels[i]),
                "predicted": int(plan.predicted[i]) if plan.predicted[i] >= 0 else None,
                "similarity": finite_or_none(plan.similarity[i]),
                "slot": int(written[i]),
                "action": "refresh" if refreshed[i] else "insert"} for i in range(start, end)]}
            self.records.finish(request_id, digest, answer)
            answers[request_id] = answer
        self.records.close_batch(plan.batch_id)
        return answers

    def recover(self, older_than_s: float) -> int:
        """Completes the open batches older than ``older_than_s`` that a replica left (it
        died between committing and recording the answers, or its send failed and no client
        retried): sends those whose answers are missing (the shards apply each once), abandons
        those never committed, closes the rest. Returns how many it sent; a batch it cannot
        send now (a shard outage) stays open for the next sweep."""
        sent = 0
        for batch_id in self.records.open_batches(older_than_s):
            state = self.records.load_batch(batch_id)
            if state is None and self.records.abandon(batch_id):  # never committed
                state = ABANDONED
            if state is None:
                state = self.records.load_batch(batch_id)
            if isinstance(state, PlannedBatch) and any(
                    self.records.answer(request_id) is None for request_id, *_ in state.requests):
                try:
                    self._complete(state)
                    sent += 1
                except Exception:  # noqa: BLE001 - tried again at the next sweep
                    continue
            self.records.close_batch(batch_id)
        return sent

    # ----------------------------------------------------------------------------- status
    def status(self) -> dict:
        """The memory's occupancy and shards."""
        shards = self.memory.status()
        spec = self.memory.spec
        return {"memory": spec.name, "location": spec.location, "num_slots": spec.num_slots,
                "key_dim": spec.key_dim, "num_values": spec.num_values,
                "occupancy": sum(s["occupied"] for s in shards),
                "shards": [{k: s.get(k) for k in ("shard", "slots", "occupied", "oldest_age",
                                                 "clock", "device", "queries", "inserts",
                                                 "refreshes", "updates", "generation")}
                           for s in shards]}
