"""The durable record of ``/learn`` request ids: what makes a request apply exactly once.

Three kinds of file under the record's folder (a local path), each created whole, synced and
linked into place (``lifelong.files.publish``):

- ``claims/<h>.<g>.json``: request id ``r`` (``h`` = sha256 of r) belongs to batch B, with
  the digest of its examples and labels. Created *exclusively*: of two replicas claiming the
  same id at once, one wins. ``g`` is the claim's generation (0 first; a retry may take over
  a claim whose batch was abandoned by creating generation g + 1, exclusively too).
- ``batches/<B>.npz``: the planned update of batch B (``UpdateBatch.to_arrays`` plus a JSON
  header: writer ``serve-<B>``, the requests in it with their rows, the predictions made
  before the write), or an *abandoned* marker. Created exclusively: it is the batch's commit
  point. Whoever creates it first decides: the batch's owner, with the plan (from then on
  anyone may send the plan, which the shards apply once: writer ``serve-<B>``, sequence 1),
  or a retry that found the claim stale (older than ``claim_timeout_s`` without a batch: its
  replica died between claim and plan), with the marker (the batch is never sent).
- ``done/<h>.json``: the answer to request r, written once the shards acknowledged its
  batch (durable there): a retry is answered from it.
- ``open/<B>``: batch B may still need sending: created before its plan is committed,
  removed once every answer of the batch is recorded. Replicas sweep it (``open_batches``)
  and complete what a dead replica left, without waiting for the client's retry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from lifelong.distributed.batches import UpdateBatch
from lifelong.errors import ConfigError, CorruptStateError
from lifelong.files import make_dirs, publish

FORMAT_VERSION = 1


def request_hash(request_id: str) -> str:
    return hashlib.sha256(request_id.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Claim:
    """Request ``request_id`` (examples fingerprinted by ``digest``) belongs to ``batch``."""

    request_id: str
    digest: str
    batch: str
    generation: int
    claimed_at: float


@dataclass
class PlannedBatch:
    """A batch's plan as saved: the update, its writer and, per request, its rows and the
    predictions made before writing."""

    batch_id: str
    writer: str
    update: UpdateBatch
    requests: list[tuple[str, str, int, int]]  # (request id, digest, first row, end row)
    predicted: np.ndarray   # [B] the nearest neighbour's label before the write (-1: none)
    similarity: np.ndarray  # [B] its similarity (-inf: none)
    labels: np.ndarray      # [B]


ABANDONED = "abandoned"


class RequestRecords:
    """The record of one service at ``location`` (a local folder)."""

    def __init__(self, location: str):
        if "://" in location:
            raise ConfigError(f"serve.state must be a local folder (records are created "
                              f"exclusively by hard links), got {location}")
        self.location = os.path.abspath(location)
        for sub in ("claims", "batches", "done", "open"):
            make_dirs(os.path.join(self.location, sub))

    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.location, kind, name)

    # ---------------------------------------------------------------------------- answers
    def answer(self, request_id: str) -> tuple[str, dict] | None:
        """(digest, answer) of a finished request, or None."""
        data = self._read_json(self._path("done", f"{request_hash(request_id)}.json"))
        return None if data is None else (data["digest"], data["answer"])

    def finish(self, request_id: str, digest: str, answer: dict) -> None:
        """Records the answer durably (a second identical write replaces it harmlessly)."""
        publish(self._path("done", f"{request_hash(request_id)}.json"),
                json.dumps({"request_id": request_id, "digest": digest,
                            "answer": answer}).encode())

    # ----------------------------------------------------------------------------- claims
    def current(self, request_id: str) -> Claim | None:
        """The latest claim of a request id, or None."""
        h, found, g = request_hash(request_id), None, 0
        while (data := self._read_json(self._path("claims", f"{h}.{g}.json"))) is not None:
            found = Claim(request_id=data["request_id"], digest=data["digest"],
                          batch=data["batch"], generation=g, claimed_at=data["claimed_at"])
            g += 1
        return found

    def claim(self, request_id: str, digest: str, batch: str, generation: int = 0) -> bool:
        """Claims the request id for ``batch`` at ``generation``; False if that generation is
        taken (another caller claimed it first)."""
        text = json.dumps({"request_id": request_id, "digest": digest, "batch": batch,
                           "claimed_at": time.time()}).encode()
        try:
            publish(self._path("claims", f"{request_hash(request_id)}.{generation}.json"),
                    text, exclusive=True)
        except FileExistsError:
            return False
        return True

    # ---------------------------------------------------------------------------- batches
    def save_batch(self, plan: PlannedBatch) -> bool:
        """Commits a batch's plan; False if a retry abandoned the batch first."""
        header = {"format_version": FORMAT_VERSION, "state": "planned", "writer": plan.writer,
                  "seq": plan.update.seq, "shards": len(plan.update.writes),
                  "requests": plan.requests}
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8),
                  "predicted": plan.predicted, "similarity": plan.similarity,
                  "labels": plan.labels, **plan.update.to_arrays()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return self._create(plan.batch_id, buf.getvalue())

    def open_batch(self, batch_id: str) -> None:
        """Marks batch B open (before its plan is committed)."""
        publish(self._path("open", batch_id), b"")

    def close_batch(self, batch_id: str) -> None:
        """Removes B's open mark (every answer of it is recorded, or it was abandoned)."""
        try:
            os.unlink(self._path("open", batch_id))
        except FileNotFoundError:
            pass

    def open_batches(self, older_than_s: float = 0.0) -> list[str]:
        """The open batches marked more than ``older_than_s`` seconds ago."""
        horizon, out = time.time() - older_than_s, []
        with os.scandir(os.path.join(self.location, "open")) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.stat().st_mtime <= horizon:
                    out.append(entry.name)
        return sorted(out)

    def abandon(self, batch_id: str) -> bool:
        """Marks a batch that was never saved as abandoned (never to be sent); False if it was
        saved (or abandoned) first."""
        buf = io.BytesIO()
        header = {"format_version": FORMAT_VERSION, "state": ABANDONED}
        np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8))
        return self._create(batch_id, buf.getvalue())

    def _create(self, batch_id: str, data: bytes) -> bool:
        try:
            publish(self._path("batches", f"{batch_id}.npz"), data, exclusive=True)
        except FileExistsError:
            return False
        return True

    def load_batch(self, batch_id: str) -> PlannedBatch | str | None:
        """The saved plan, ``ABANDONED``, or None (not saved yet)."""
        path = self._path("batches", f"{batch_id}.npz")
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays["header"].tobytes().decode())
            if header.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {header.get('format_version')}")
            if header["state"] == ABANDONED:
                return ABANDONED
            update = UpdateBatch.from_arrays(arrays, writer=header["writer"],
                                             seq=header["seq"], shards=header["shards"])
            return PlannedBatch(batch_id=batch_id, writer=header["writer"], update=update,
                                requests=[tuple(r) for r in header["requests"]],
                                predicted=arrays["predicted"], similarity=arrays["similarity"],
                                labels=arrays["labels"])
        except Exception as exc:  # zip, JSON or missing arrays: a damaged record
            raise CorruptStateError(f"{path}: unreadable batch record ({exc})") from None

    # ------------------------------------------------------------------------------ files
    @staticmethod
    def _read_json(path: str) -> dict | None:
        try:
            with open(path, "rb") as fh:
                return json.loads(fh.read().decode())
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptStateError(f"{path}: unreadable request record ({exc})") from None
