"""Nearest-neighbour search over the memory keys: the only non-differentiable step of a lookup.

A search returns, for each query, the ``k`` slots of highest cosine similarity (keys and queries
are L2-normalised, so the inner product is the cosine). Empty slots (value -1) never match.

``ExactSearch`` is the default: a matrix product plus top-k on the keys' own device, in chunks of
slots so that memory stays bounded at millions of slots.

``FaissSearch`` wraps a FAISS index (flat or IVF) kept in sync with every write, for approximate
search of very large memories.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from lifelong.memory.topk_kernel import RunningTopK


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
    """out[C, B] = keys[C, d] @ queries[B, d].T (torch: one thread pool with the rest)."""
    torch.mm(keys, queries.t(), out=out)


def _similarities_numpy(queries: torch.Tensor, keys: torch.Tensor, out: torch.Tensor) -> None:
    """The same product with numpy's BLAS, which runs this layout markedly faster than torch's
    for large blocks here (jobs/bench_memory.py measures both); no copy is made."""
    np.matmul(keys.numpy(), queries.numpy().T, out=out.numpy())


def _canonical_order(sims: torch.Tensor, slots: torch.Tensor):
    """Sorts each row by similarity, best first, equal similarities by slot id.

    top-k leaves the order of exact ties unspecified; a fixed order makes the search
    reproducible across chunkings and across shards. Rows come in sorted by similarity, so only
    exact ties need work; without any the input is returned as it is.
    """
    if not bool((sims[:, 1:] == sims[:, :-1]).any()):
        return sims, slots
    slots, perm = slots.sort(dim=1)
    sims, perm2 = sims.gather(1, perm).sort(dim=1, descending=True, stable=True)
    return sims, slots.gather(1, perm2)


class ExactSearch:
    """Exact top-k by cosine similarity, in chunks of slots so memory stays bounded.

    On CPU each chunk's similarity block [C, B] is scanned once by a compiled kernel
    (lifelong.memory.topk_kernel): a vectorised compare against each query's current k-th best
    discards almost every element, so selection costs one pass over the block instead of a sort.
    On CUDA each chunk goes through torch.topk.

    Memories of at most ``small_memory`` slots go through torch.mm + torch.topk on CPU too:
    there, handing work between torch's, numpy's and numba's thread pools costs more than the
    sort saves (measured: 10 against 20 ms per step at 65536 slots, batch 16; 124 against 180 ms
    at batch 256; at 1048576 slots the kernel wins at both batch sizes).

    Args:
        chunk_bytes: upper bound on the similarity block held at once ([C, B] floats). Fewer,
            larger blocks mean fewer hand-overs between the BLAS and kernel thread pools: at
            1M slots, batch 256, a step took 660-680 ms with 1 GiB against 790 with 256 MiB.
        small_memory: slot count at or below which CPU search uses torch.topk.
    """

    def __init__(self, chunk_bytes: int = 2**30, small_memory: int = 2**18):
        if chunk_bytes <= 0 or small_memory < 0:
            raise ValueError("chunk_bytes must be positive and small_memory >= 0")
        self.chunk_bytes = chunk_bytes
        self.small_memory = small_memory
        # The block is reused across calls: a fresh allocation of this size costs page faults
        # comparable to the selection itself.
        self._block = torch.empty(0)

    def _block_for(self, rows: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        if (self._block.numel() < rows * batch or self._block.device != like.device
                or self._block.dtype != like.dtype):
            self._block = torch.empty(rows * batch, dtype=like.dtype, device=like.device)
        return self._block[: rows * batch].view(rows, batch)

    def search(self, queries, keys, values, k):
        batch, num_slots = queries.shape[0], keys.shape[0]
        per_chunk = max(k, min(num_slots, self.chunk_bytes // (4 * batch)))
        block = self._block_for(per_chunk, batch, keys)
        if keys.device.type == "cpu" and num_slots > self.small_memory:
            sims, slots = self._search_cpu(queries, keys, values, k, block)
        else:
            sims, slots = self._search_torch(queries, keys, values, k, block)
        return _canonical_order(sims, slots)

    @staticmethod
    def _search_cpu(queries, keys, values, k, block):
        topk = RunningTopK(queries.shape[0], k)
        values_np = values.numpy()
        for start in range(0, keys.shape[0], block.shape[0]):
            stop = min(start + block.shape[0], keys.shape[0])
            _similarities_numpy(queries, keys[start:stop], block[: stop - start])
            topk.push_block(block[: stop - start].numpy(), values_np[start:stop], start)
        return topk.result()

    @staticmethod
    def _search_torch(queries, keys, values, k, block):
        best_sims, best_slots = [], []
        for start in range(0, keys.shape[0], block.shape[0]):
            stop = min(start + block.shape[0], keys.shape[0])
            chunk = block[: stop - start]
            _similarities(queries, keys[start:stop], chunk)
            chunk[values[start:stop] < 0] = float("-inf")
            sims, slots = chunk.t().topk(min(k, stop - start), dim=1)
            best_sims.append(sims)
            best_slots.append(slots + start)
        if len(best_sims) == 1:
            return best_sims[0], best_slots[0]
        sims, pos = torch.cat(best_sims, dim=1).topk(k, dim=1)
        return sims, torch.cat(best_slots, dim=1).gather(1, pos)

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
            # IDSelectorArray: the only selector an IVF index with a hashtable direct map takes.
            old = np.ascontiguousarray(old)
            self._index.remove_ids(self._faiss.IDSelectorArray(len(old),
                                                               self._faiss.swig_ptr(old)))
        rows = keys[torch.from_numpy(ids).to(keys.device)]  # only the written rows leave a GPU
        self._index.add_with_ids(rows.detach().cpu().numpy(), ids)
        self._present[ids] = True
        if self.kind == "ivf" and not isinstance(self._index, self._faiss.IndexIVF):
            if self._index.ntotal >= self.train_size:
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
