"""``IVFSearch``: an approximate inverted-file search over the memory's own keys, torch + numba,
the same on CPU and GPU, kept consistent with every write (docs/design.md §1.10).

A trained coarse quantiser (``nlist`` unit centroids, spherical k-means) splits the filled slots
into cells; a query scores every centroid and searches the keys of its ``nprobe`` best cells
only. The index holds slot ids, never a copy of the keys: the keys stay the memory's ``keys``
tensor, read in place by the scan.

Rules:
  * Consistency. Every write (``on_write``) moves each written slot to the cell of its new key
    (a refresh that moves a key changes its cell; an insert over an old slot replaces the old
    key's cell). The lists therefore always equal a fresh assignment of the current keys to
    the current centroids. Empty slots are in no list and are never returned.
  * Training is a deterministic function of the writes. The quantiser is (re)trained inside
    the write that brings the filled slots to ``next_train`` (first ``train_per_list * nlist``,
    then each time the filled slots double while twice them fit in the slots), on an evenly strided
    sample of the filled slots in slot order, from a deterministic start, for a fixed number of
    iterations. Replaying the same writes therefore trains the same centroids at the same
    moment. Until then the search is exact (``ExactSearch``).
  * Restart. ``export_state`` / ``import_state`` persist the centroids, the cells and the
    training schedule (checksummed); a shard writes them beside each snapshot, so a restarted
    shard answers exactly as before the crash. A state that fails its checksum or does not fit
    is refused (``import_state`` returns False) and the index is rebuilt from the keys.
  * With ``nprobe == nlist`` every filled slot is scanned: the answer is the exact search's
    (same slots and order, up to float32 rounding of near ties, as between the exact kernels).
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.memory.ivf_lists import EMPTY, UNASSIGNED, InvertedLists, score_rows
from lifelong.memory.search import ExactSearch, canonical_order
from lifelong.memory.topk_kernel import RunningTopK

MAGIC = b"LIVF"
_HEADER = struct.Struct("<4sI")  # magic, header length


class IVFSearch:
    """Inverted-file search: probe ``nprobe`` of ``nlist`` cells per query.

    Args:
        nlist: cells of the coarse quantiser.
        nprobe: cells searched per query (nprobe = nlist: every filled slot).
        train_per_list: filled slots per cell needed before the first training; fewer: exact.
        sample_per_list: training sample per cell (an evenly strided subset of filled slots).
        iterations: k-means iterations.
        block_bytes: size of one similarity block [rows, B] of the scan.
        gather_bytes: size of the buffer the probed keys are gathered into (CPU).
    """

    def __init__(self, nlist: int = 1024, nprobe: int = 8, train_per_list: int = 39,
                 sample_per_list: int = 16, iterations: int = 6, block_bytes: int = 2**22,
                 gather_bytes: int = 2**21):
        if not (nlist >= 1 and 1 <= nprobe and train_per_list >= 1 and sample_per_list >= 1
                and iterations >= 1 and block_bytes > 0 and gather_bytes > 0):
            raise ValueError("nlist, nprobe, train_per_list, sample_per_list, iterations, "
                             "block_bytes and gather_bytes must be positive")
        self.nlist, self.nprobe = nlist, nprobe
        self.train_per_list, self.sample_per_list = train_per_list, sample_per_list
        self.iterations, self.block_bytes = iterations, block_bytes
        self.gather_bytes = gather_bytes
        self._gathered = torch.empty(0, 0)  # the CPU scan's buffer, reused
        self.exact = ExactSearch()
        self.trainings = 0  # quantiser trainings so far (this process)
        self.rebuilds = 0  # indexes rebuilt from the keys after a reset or a refused state
        self.reset()

    # ------------------------------------------------------------------------------ protocol
    def reset(self) -> None:
        """Forgets every key: all slots empty, no quantiser."""
        self.lists: InvertedLists | None = None
        self.centroids: torch.Tensor | None = None  # [nlist, d] float32, unit rows
        self._centroids_bf16: torch.Tensor | None = None  # their bfloat16 copy (probes)
        self.next_train = self.train_per_list * self.nlist
        self._pending: np.ndarray | None = None  # [N] bool filled, to rebuild from (on_reset)

    def on_reset(self, values: torch.Tensor) -> None:
        """The memory was loaded: its filled slots are ``values >= 0`` ([N]); the index is
        rebuilt from the keys at the next call (unless ``import_state`` restores it first)."""
        self.reset()
        self._pending = (values >= 0).cpu().numpy()

    def on_write(self, slots: torch.Tensor, keys: torch.Tensor) -> None:
        """``keys[slots]`` were written (slots [W] distinct, filled now; keys [N, d])."""
        self._sync(keys)
        ids = np.unique(slots.cpu().numpy().astype(np.int64))
        if not len(ids):
            return
        lists = self.lists
        lists.fill(ids)
        if self.centroids is not None:
            lists.move(ids, self._nearest(keys[torch.from_numpy(ids).to(keys.device)]))
        if lists.count >= self.next_train:
            self._train(keys)

    @property
    def trained(self) -> bool:
        return self.centroids is not None

    def search(self, queries, keys, values, k):
        """As ``Search.search``: queries [B, d] unit rows -> sims [B, k], slots [B, k]."""
        self._sync(keys)
        if self.centroids is None:
            return self.exact.search(queries, keys, values, k)
        q = queries.detach().float()
        probes = self.probes(q)
        cells, inverse = probes.cpu().unique(return_inverse=True)  # the union, [L]
        mask = torch.zeros(len(cells), q.shape[0], dtype=torch.bool)
        mask[inverse, torch.arange(q.shape[0]).unsqueeze(1).expand_as(inverse)] = True
        cells, mask = cells.numpy(), mask.numpy()
        if keys.device.type == "cpu" and keys.dtype == torch.float32:
            return self._scan_cpu(q, keys, cells, mask, k)
        return self._scan_torch(q, keys, cells, mask, k)

    # ----------------------------------------------------------------------------- scanning
    def probes(self, q: torch.Tensor) -> torch.Tensor:
        """[B, nprobe] the cells each query q [B, d] searches: its best centroids by a
        bfloat16 product (a fifth of float32's time on CPU; which cells is approximate
        anyway, and nprobe = nlist takes them all)."""
        scores = q.to(torch.bfloat16) @ self._bf16().T  # [B, nlist]
        return scores.float().topk(min(self.nprobe, self.nlist), dim=1).indices

    def _chunks(self, cells: np.ndarray, rows: int):
        """Consecutive groups of ``cells`` holding at most ``rows`` slots (or one list)."""
        lengths = self.lists.length[cells]
        first, total = 0, 0
        for i, n in enumerate(lengths):
            if total and total + n > rows:
                yield first, i, total
                first, total = i, 0
            total += int(n)
        if first < len(cells):
            yield first, len(cells), total

    def _listed(self, cells: np.ndarray, first: int, last: int):
        """The slot ids of lists cells[first:last], concatenated, and the index (into
        ``cells``) of each one's list."""
        lists = self.lists
        ids = [lists.members(c) for c in cells[first:last]]
        ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        return ids, np.repeat(np.arange(last - first), lists.length[cells[first:last]])

    def _scan_cpu(self, q, keys, cells, mask, k):
        """Per chunk of lists (``gather_bytes`` of keys): the rows gathered into a buffer
        (index_select keeps many loads in flight), scored for the queries that probe them
        (numba), fed to the running top-k of the exact search."""
        batch, d = q.shape
        rows = max(1, min(self.block_bytes // (4 * batch), self.gather_bytes // (4 * d)))
        topk = RunningTopK(batch, k)
        q_np, found, offset = q.contiguous().numpy(), [], 0
        for a, b, n in self._chunks(cells, rows):
            ids, which = self._listed(cells, a, b)
            if self._gathered.shape[0] < n:
                self._gathered = torch.empty(n, d)
            gathered = self._gathered[:n]
            torch.index_select(keys, 0, torch.from_numpy(ids), out=gathered)
            block = np.empty((n, batch), dtype=np.float32)
            score_rows(gathered.numpy(), q_np, which, np.ascontiguousarray(mask[a:b]), block)
            topk.push_block(block, np.zeros(n, dtype=np.int64), offset)
            found.append(ids)
            offset += n
        sims, pos = topk.result()
        slots = torch.from_numpy(np.concatenate(found))[pos] if offset else torch.zeros_like(pos)
        return canonical_order(sims, slots.masked_fill(torch.isinf(sims), 0))

    def _scan_torch(self, q, keys, cells, mask, k):
        """Gather + matmul + topk per chunk (any device or key dtype)."""
        device = keys.device
        rows = max(k, self.block_bytes // (4 * q.shape[0]))
        best_sims, best_slots = [], []
        for a, b, _ in self._chunks(cells, rows):
            ids, which = self._listed(cells, a, b)
            which += a
            ids_t = torch.from_numpy(ids).to(device)
            block = keys[ids_t].to(q.dtype) @ q.T  # [rows, B]
            block.masked_fill_(~torch.from_numpy(mask[which]).to(device), float("-inf"))
            sims, pos = block.T.topk(min(k, len(ids)), dim=1)
            best_sims.append(sims)
            best_slots.append(ids_t[pos])
        if not best_sims or sum(s.shape[1] for s in best_sims) < k:
            pad = k - sum(s.shape[1] for s in best_sims)
            best_sims.append(torch.full((q.shape[0], pad), float("-inf"), device=device))
            best_slots.append(torch.zeros(q.shape[0], pad, dtype=torch.int64, device=device))
        sims, pos = torch.cat(best_sims, dim=1).topk(k, dim=1)
        slots = torch.cat(best_slots, dim=1).gather(1, pos)
        return canonical_order(sims, slots.masked_fill(torch.isinf(sims), 0))

    # ----------------------------------------------------------------------------- training
    def _sync(self, keys: torch.Tensor) -> None:
        """Makes the lists exist: after a reset, rebuilt from the filled slots and keys."""
        if self.lists is not None and len(self.lists.assign) == keys.shape[0]:
            return
        pending, self._pending = self._pending, None
        self.lists = InvertedLists(keys.shape[0], self.nlist)
        if pending is None or not pending.any():
            return
        self.rebuilds += 1
        self.lists.fill(np.flatnonzero(pending))
        if self.lists.count >= self.next_train:
            self._train(keys)

    def _bf16(self) -> torch.Tensor:
        """The centroids in bfloat16 [nlist, d], made once per set of centroids."""
        if self._centroids_bf16 is None:
            self._centroids_bf16 = self.centroids.to(torch.bfloat16)
        return self._centroids_bf16

    def _nearest(self, x: torch.Tensor) -> np.ndarray:
        """[M] the cell of each key of x [M, d] (bfloat16 product: the argmax is the nearest
        centroid up to bfloat16 rounding, a deterministic function of x and the centroids)."""
        cent = self._bf16()
        out = [(part.to(torch.bfloat16) @ cent.T).max(dim=1).indices  # [<=16384, nlist] at once
               for part in x.split(16384)]
        return torch.cat(out).cpu().numpy().astype(np.int32) if out else np.zeros(0, np.int32)

    def _train(self, keys: torch.Tensor) -> None:
        """Spherical k-means on an evenly strided sample of the filled slots, then every
        filled slot assigned to its cell; the next training when the filled slots double."""
        lists = self.lists
        filled = np.flatnonzero(lists.assign >= UNASSIGNED)
        size = min(len(filled), self.sample_per_list * self.nlist)
        sample = filled[np.linspace(0, len(filled) - 1, size).astype(np.int64)]
        x = keys[torch.from_numpy(sample).to(keys.device)].float()
        start = np.linspace(0, size - 1, self.nlist).astype(np.int64)
        self.centroids = F.normalize(x[torch.from_numpy(start).to(x.device)], dim=1)
        self._centroids_bf16 = None
        for _ in range(self.iterations):
            cells = torch.from_numpy(self._nearest(x)).to(x.device).long()
            sums = torch.zeros_like(self.centroids).index_add_(0, cells, x)
            used = torch.bincount(cells, minlength=self.nlist) > 0
            self.centroids = torch.where(used.unsqueeze(1), F.normalize(sums, dim=1),
                                         self.centroids)
            self._centroids_bf16 = None
        ids = torch.from_numpy(filled).to(keys.device)
        lists.assign[filled] = np.concatenate(
            [self._nearest(keys[part]) for part in ids.split(1 << 18)] or [np.zeros(0, np.int32)])
        lists.repack()
        self.trainings += 1
        grown = 2 * len(filled)
        self.next_train = grown if grown <= len(lists.assign) else np.iinfo(np.int64).max

    # --------------------------------------------------------------------------- persistence
    def describe(self) -> dict:
        """What ``status`` shows: kind, cells, trained, filled slots, trainings, rebuilds."""
        return {"kind": "ivf", "nlist": self.nlist, "nprobe": self.nprobe,
                "trained": self.trained, "indexed": self.lists.count if self.lists else 0,
                "trainings": self.trainings, "rebuilds": self.rebuilds}

    def export_state(self, keys: torch.Tensor) -> bytes:
        """The index as bytes: header JSON, centroids [nlist, d] float32 (if trained), cells
        [N] int32, then a CRC-32 of all of it."""
        self._sync(keys)
        n, d = keys.shape
        header = json.dumps({"version": 1, "nlist": self.nlist, "dim": d, "slots": n,
                             "trained": self.trained,
                             "next_train": int(min(self.next_train, 2**62))}).encode()
        cent = self.centroids.cpu().numpy().astype("<f4").tobytes() if self.trained else b""
        body = _HEADER.pack(MAGIC, len(header)) + header + cent + \
            self.lists.assign.astype("<i4").tobytes()
        return body + struct.pack("<I", zlib.crc32(body))

    def import_state(self, data: bytes, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Restores ``export_state`` of this memory (keys [N, d], values [N]); False, and
        nothing changed, if it fails its checksum or does not fit (the index is then rebuilt
        from the keys at the next call)."""
        try:
            state = _parse(data, self.nlist, keys.shape, (values >= 0).cpu().numpy())
        except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError):
            return False
        trained, centroids, assign, next_train = state
        self.reset()
        self.lists = InvertedLists(keys.shape[0], self.nlist)
        self.lists.assign[:] = assign
        self.lists.recount()
        self.centroids = torch.from_numpy(centroids).to(keys.device) if trained else None
        self._centroids_bf16 = None
        self.next_train = next_train if next_train < 2**62 else np.iinfo(np.int64).max
        if trained:
            self.lists.repack()
        return True


def _parse(data: bytes, nlist: int, shape, filled: np.ndarray):
    """(trained, centroids, cells, next_train) of ``export_state`` bytes, checked whole."""
    if len(data) < _HEADER.size + 4 or zlib.crc32(data[:-4]) != \
            struct.unpack("<I", data[-4:])[0]:
        raise ValueError("checksum")
    magic, size = _HEADER.unpack_from(data)
    header = json.loads(data[_HEADER.size:_HEADER.size + size])
    n, d = shape
    if magic != MAGIC or header["version"] != 1 or header["nlist"] != nlist or \
            header["dim"] != d or header["slots"] != n:
        raise ValueError("does not fit")
    at = _HEADER.size + size
    trained = bool(header["trained"])
    centroids = np.zeros((0, d), dtype=np.float32)
    if trained:
        centroids = np.frombuffer(data, "<f4", nlist * d, at).reshape(nlist, d).copy()
        at += nlist * d * 4
    assign = np.frombuffer(data, "<i4", n, at).astype(np.int32)
    if at + 4 * n + 4 != len(data) or not np.isfinite(centroids).all():
        raise ValueError("size")
    expected = ((assign >= 0) if trained else (assign == UNASSIGNED)) | (assign == EMPTY)
    if not expected.all() or assign.max(initial=-2) >= nlist or \
            not np.array_equal(assign != EMPTY, filled):
        raise ValueError("cells do not fit the slots")
    return trained, centroids, assign, int(header["next_train"])
