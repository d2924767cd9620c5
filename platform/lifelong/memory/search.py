"""Nearest-neighbour search over the memory keys: the only non-differentiable step of a lookup.

A search returns, for each query, the ``k`` slots of highest cosine similarity (keys and queries
are L2-normalised, so the inner product is the cosine). Empty slots (value -1) never match.

``ExactSearch`` is the default: a matrix product plus top-k on the keys' own device, in chunks of
slots so that memory stays bounded at millions of slots. Top-k over a million columns is as
costly as the product itself if done directly, so each chunk first takes the maximum of every
group of ``group`` consecutive slots; the true top-k can only lie in the k groups of highest
maximum (each of the k best slots lifts its own group's maximum to at least the k-th best value),
so only those k * group candidates go through an exact top-k. The result is exact.

``FaissSearch`` wraps a FAISS index (flat or IVF) kept in sync with every write, for approximate
search of very large memories.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class Search(Protocol):
    """What the memory needs from a nearest-neighbour search."""

    def search(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Finds the ``k`` most similar non-empty slots.

        Args:
            queries: [B, d] L2-normalised queries.
            keys: [N, d] the memory keys.
            values: [N] int64, -1 marks an empty slot.
            k: how many neighbours, k <= N.

        Returns:
            sims: [B, k] similarities, best first; -inf where fewer than k slots are filled.
            slots: [B, k] int64 slot ids (arbitrary for -inf entries).
        """
        ...

    def on_write(self, slots: torch.Tensor, keys: torch.Tensor) -> None:
        """Tells the search that ``keys[slots]`` were (re)written. slots: [W], keys: [N, d]."""
        ...

    def reset(self) -> None:
        """Forgets every key (the memory was cleared or reloaded)."""
        ...


def _similarities(queries: torch.Tensor, keys: torch.Tensor, out: torch.Tensor) -> None:
    """out[C, B] = keys[C, d] @ queries[B, d].T, with the fastest kernel for the device.

    On CPU numpy's BLAS runs this layout markedly faster than torch's matmul here (measured by
    jobs/bench_memory.py); both read the same memory, no copy is made.
    """
    if keys.device.type == "cpu" and keys.dtype == torch.float32:
        np.matmul(keys.numpy(), queries.numpy().T, out=out.numpy())
    else:
        torch.mm(keys, queries.t(), out=out)


class ExactSearch:
    """Exact top-k by cosine similarity: chunked matmul, group maxima, exact top-k of the rest.

    Args:
        chunk_bytes: upper bound on the similarity block held at once ([chunk, B] floats).
        group: slots per group for the group-maximum pre-selection.
    """

    def __init__(self, chunk_bytes: int = 256 * 2**20, group: int = 32):
        if chunk_bytes <= 0 or group <= 0:
            raise ValueError("chunk_bytes and group must be positive")
        self.chunk_bytes = chunk_bytes
        self.group = group

    def search(self, queries, keys, values, k):
        batch, num_slots = queries.shape[0], keys.shape[0]
        per_chunk = max(self.group * k, self.chunk_bytes // (4 * batch))
        per_chunk -= per_chunk % self.group
        best_sims, best_slots = [], []
        for start in range(0, num_slots, per_chunk):
            stop = min(start + per_chunk, num_slots)
            sims, slots = self._chunk_topk(queries, keys[start:stop], values[start:stop], k)
            best_sims.append(sims)
            best_slots.append(slots + start)
        if len(best_sims) == 1:
            return best_sims[0], best_slots[0]
        sims = torch.cat(best_sims, dim=1)
        top, pos = sims.topk(k, dim=1)
        return top, torch.cat(best_slots, dim=1).gather(1, pos)

    def _chunk_topk(self, queries, keys, values, k):
        """Top-min(k, C) of one chunk. Returns sims [B, k'] and chunk-local slots [B, k']."""
        size, batch = keys.shape[0], queries.shape[0]
        padded = -(-size // self.group) * self.group
        block = torch.empty(padded, batch, dtype=keys.dtype, device=keys.device)
        _similarities(queries, keys, block[:size])
        block[size:] = float("-inf")
        empty = values < 0
        if bool(empty.any()):
            block[:size][empty] = float("-inf")
        kk = min(k, size)
        num_groups = padded // self.group
        if num_groups <= kk:  # small chunk: no pre-selection needed
            return block[:size].t().topk(kk, dim=1)
        group_max = block.view(num_groups, self.group, batch).amax(dim=1)  # [groups, B]
        top_groups = group_max.t().topk(kk, dim=1).indices  # [B, kk]
        offsets = torch.arange(self.group, device=keys.device)
        candidates = (top_groups.unsqueeze(2) * self.group + offsets).reshape(batch, -1)
        cand_sims = block.t().gather(1, candidates)  # [B, kk * group]
        sims, pos = cand_sims.topk(kk, dim=1)
        # Padding rows (-inf) are picked only when fewer than k slots are filled: keep ids valid.
        return sims, candidates.gather(1, pos).clamp(max=size - 1)

    def on_write(self, slots, keys):
        pass  # searches the keys tensor directly: nothing to keep in sync

    def reset(self):
        pass


class FaissSearch:
    """Approximate (IVF) or exact (flat) inner-product search with a FAISS index.

    The index holds only filled slots, added the first time a slot is written; later writes
    replace the slot's vector. Before an IVF index has seen ``train_size`` keys it answers with
    an exact flat search, then it is trained once on the keys present.

    Args:
        kind: "flat" or "ivf".
        nlist: IVF cells.
        nprobe: IVF cells visited per query.
        train_size: filled slots needed before the IVF index is trained (default 39 * nlist).
    """

    def __init__(self, kind: str = "flat", nlist: int = 1024, nprobe: int = 16,
                 train_size: int | None = None):
        if kind not in ("flat", "ivf"):
            raise ValueError(f"kind must be 'flat' or 'ivf', got {kind!r}")
        import faiss  # optional dependency, imported only when asked for

        self._faiss = faiss
        self.kind, self.nlist, self.nprobe = kind, nlist, nprobe
        self.train_size = train_size if train_size is not None else 39 * nlist
        self.reset()

    def reset(self):
        self._index = None
        self._dim = None
        self._present: np.ndarray | None = None  # [N] bool: slot is in the index

    def _build(self, keys: torch.Tensor, filled: np.ndarray):
        faiss = self._faiss
        dim = keys.shape[1]
        vectors = keys.detach().cpu().numpy()[filled]
        if self.kind == "ivf" and len(vectors) >= self.train_size:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = self.nprobe
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        index.add_with_ids(vectors, np.flatnonzero(filled).astype(np.int64))
        self._index, self._dim = index, dim
        self._present = filled.copy()

    def on_write(self, slots, keys):
        if self._index is None:
            return  # built lazily from the whole memory at the next search
        ids = np.unique(slots.cpu().numpy().astype(np.int64))
        old = ids[self._present[ids]]
        if len(old):
            self._index.remove_ids(self._faiss.IDSelectorBatch(old))
        self._index.add_with_ids(keys.detach().cpu().numpy()[ids], ids)
        self._present[ids] = True
        if self.kind == "ivf" and not isinstance(self._index, self._faiss.IndexIVF):
            if int(self._present.sum()) >= self.train_size:
                self._index = None  # enough keys now: rebuild as a trained IVF index

    def search(self, queries, keys, values, k):
        if self._index is None or self._dim != keys.shape[1]:
            self._build(keys, (values >= 0).cpu().numpy())
        sims, slots = self._index.search(queries.detach().cpu().numpy(), k)
        sims = torch.from_numpy(sims).to(queries.device)
        slots = torch.from_numpy(slots).to(queries.device)
        missing = slots < 0  # fewer than k filled slots (or cells) answered
        sims = sims.masked_fill(missing, float("-inf"))
        return sims, slots.clamp(min=0)


def make_search(name: str, **options) -> Search:
    """Builds a search backend by name: "exact", "faiss-flat" or "faiss-ivf"."""
    if name == "exact":
        return ExactSearch(**options)
    if name in ("faiss-flat", "faiss-ivf"):
        return FaissSearch(kind=name.split("-")[1], **options)
    raise ValueError(f"unknown search backend {name!r}: use exact, faiss-flat or faiss-ivf")
