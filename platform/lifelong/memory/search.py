"""Nearest-neighbour search over the memory keys: the only non-differentiable step of a lookup.

A search returns, for each query, the ``k`` slots of highest cosine similarity (keys and queries
are L2-normalised, so the inner product is the cosine). Empty slots (value -1) never match.

``ExactSearch`` is the default: a matrix product plus top-k on the keys' own device, in blocks of
slots so that memory stays bounded at millions of slots.

``FaissSearch`` wraps a FAISS index (flat or IVF) kept in sync with every write, for approximate
search of very large memories.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from lifelong.memory.bf16_kernel import bf16_dot_similarities, bfloat16_pairs, has_bfloat16_dot
from lifelong.memory.fused_kernel import BFLOAT16, FLOAT16, FLOAT32, LANES, fused_similarities
from lifelong.memory.topk_kernel import TILE, RunningTopK

KERNELS = ("auto", "fused", "blas", "bf16")
BF16_DOT = -1  # ``_scan_range_fused``'s kind for the bfloat16 dot product (kernel "bf16")
_KINDS = {torch.float32: FLOAT32, torch.bfloat16: BFLOAT16, torch.float16: FLOAT16}


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


canonical_order = _canonical_order  # the same order for other searches (lifelong.memory.ivf)

_workers: dict[int, ThreadPoolExecutor] = {}
_worker_state = threading.local()  # each worker thread's reusable similarity block
_blas = None  # threadpoolctl controller of numpy's BLAS, made on first use


def _worker_pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _workers:
        _workers[threads] = ThreadPoolExecutor(threads, thread_name_prefix="lifelong-search")
    return _workers[threads]


def _one_blas_thread():
    """A context in which numpy's BLAS runs single-threaded (each search worker is a thread)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def _worker_block(size: int) -> np.ndarray:
    """This thread's reusable float32 buffer of at least ``size`` elements."""
    block = getattr(_worker_state, "block", None)
    if block is None or block.size < size:
        block = _worker_state.block = np.empty(size, dtype=np.float32)
    return block


def _scan_range(queries: np.ndarray, keys, values: np.ndarray, start: int, stop: int,
                rows: int, topk: RunningTopK, part: int) -> None:
    """Feeds slots start .. stop - 1 to ``topk``'s ``part``, ``rows`` slots per product (BLAS).

    The block [rows, B] stays in this core's cache between the product and the scan. ``keys``
    is a float32 array, or a torch tensor of compact keys, widened to float32 block by block.
    """
    block = _worker_block(rows * queries.shape[0])
    for first in range(start, stop, rows):
        last = min(stop, first + rows)
        out = block[: (last - first) * queries.shape[0]].reshape(last - first, -1)
        part_keys = keys[first:last]
        if isinstance(part_keys, torch.Tensor):
            part_keys = part_keys.float().numpy()
        np.matmul(part_keys, queries.T, out=out)
        topk.push_block(out, values[first:last], first, part)


def _scan_range_fused(queries: np.ndarray, keys: np.ndarray, kind: int, values: np.ndarray,
                      start: int, stop: int, rows: int, topk: RunningTopK, part: int) -> None:
    """As ``_scan_range``, with the fused kernel (lifelong.memory.fused_kernel); queries are
    transposed, [d, B]."""
    batch = queries.shape[1]  # queries: [d, B] (kind BF16_DOT: their pairs, [d / 2, B])
    tiles = -(-rows // TILE)
    buffer = _worker_block((rows + tiles) * batch)
    maxima_all = buffer[rows * batch:(rows + tiles) * batch].reshape(tiles, batch)
    for first in range(start, stop, rows):
        last = min(stop, first + rows)
        out = buffer[: (last - first) * batch].reshape(last - first, batch)
        maxima = maxima_all[: -(-(last - first) // TILE)]
        if kind == BF16_DOT:
            bf16_dot_similarities(keys, queries, values, first, last, out, maxima)
        else:
            fused_similarities(keys, kind, queries, values, first, last, out, maxima)
        topk.push_block(out, values[first:last], first, part, maxima=maxima)


def _scan_parts(scan, num_slots: int, threads: int) -> None:
    """Runs ``scan(start, stop, part)`` over ``threads`` contiguous slot ranges: on the
    calling thread when there is one (no hand-over to a worker), else one per worker."""
    if threads == 1:
        scan(0, num_slots, 0)
        return
    per_part = -(-num_slots // threads)
    pool = _worker_pool(threads)
    futures = [pool.submit(scan, start, min(num_slots, start + per_part), part)
               for part, start in enumerate(range(0, num_slots, per_part))]
    for future in futures:
        future.result()


class ExactSearch:
    """Exact top-k by cosine similarity, in blocks of slots so memory stays bounded.

    On CPU the slots are split into ``threads`` contiguous ranges, one per worker thread. A
    worker multiplies a block of keys with the queries (numpy's BLAS, one thread per worker) and
    scans the block with the running top-k kernel (lifelong.memory.topk_kernel) while it is still
    in the core's cache: a vectorised compare against each query's k-th best so far discards
    almost every element, so selection costs one pass over cached data instead of a sort, and no
    work is handed between thread pools (which spin and steal each other's cores). Searches of at
    most ``serial_elements`` similarities run on the calling thread: torch.mm, then the kernel.
    On CUDA each block goes through torch.topk.

    ``kernel`` picks how a CPU block of similarities is computed: "blas" (the product above),
    "fused" (lifelong.memory.fused_kernel: each key read once, dot products in registers, the
    tile maxima of the threshold test taken on the way; the kernel of small batches, where BLAS
    runs far below its peak) or "auto": fused for batches of ``fused_min_batch`` to
    ``fused_max_batch`` queries (the kernel pads a batch to a multiple of 16), BLAS otherwise.
    "bf16", for bfloat16 keys on CPUs with AVX512-BF16 only, is the fused kernel with the
    queries rounded to bfloat16 too and multiplied by the CPU's bfloat16 dot product: half the
    instructions of the float32 arithmetic, other similarities (docs/design.md §1.2), at
    every batch.
    Both give the same slots in the same order except where two similarities are within a
    float32 rounding of each other (docs/design.md §1.2). Keys may be float32, bfloat16 or
    float16 (the memory's ``key_dtype``); similarities are float32 either way.

    Args:
        block_bytes: size of one similarity block [rows, B] per worker; the default 4 MiB stays
            within the L2 + L3 share of a core and keeps BLAS blocks large.
        threads: CPU worker threads (default: torch's intra-op thread count).
        serial_elements: N * B at or below which a CPU search runs on the calling thread.
        kernel: "auto", "fused" or "blas" (above).
        fused_min_batch, fused_max_batch: the batches "auto" gives the fused kernel.
    """

    def __init__(self, block_bytes: int = 2**22, threads: int | None = None,
                 serial_elements: int = 2**20, kernel: str = "auto", fused_min_batch: int = 16,
                 fused_max_batch: int = 32):
        if block_bytes <= 0 or serial_elements < 0 or (threads is not None and threads < 1):
            raise ValueError("block_bytes must be positive, threads >= 1, serial_elements >= 0")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "bf16" and not has_bfloat16_dot():
            raise ValueError("kernel='bf16' needs a CPU with the bfloat16 dot product "
                             "(AVX512-BF16, 'avx512_bf16' in /proc/cpuinfo); this one has none")
        if not 0 <= fused_min_batch or fused_max_batch < 0:
            raise ValueError("fused_min_batch and fused_max_batch must be >= 0")
        self.block_bytes = block_bytes
        self.threads = threads
        self.serial_elements = serial_elements
        self.kernel = kernel
        self.fused_min_batch, self.fused_max_batch = fused_min_batch, fused_max_batch
        self._block = torch.empty(0)  # the calling thread's block (torch path), reused

    def _block_for(self, rows: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        if (self._block.numel() < rows * batch or self._block.device != like.device
                or self._block.dtype != like.dtype):
            self._block = torch.empty(rows * batch, dtype=like.dtype, device=like.device)
        return self._block[: rows * batch].view(rows, batch)

    def uses_fused(self, batch: int, keys: torch.Tensor) -> bool:
        """Whether a search of ``batch`` queries over ``keys`` runs the fused kernel."""
        if keys.device.type != "cpu" or self.kernel == "blas" or keys.dtype not in _KINDS:
            return False
        if self.kernel == "bf16":
            if keys.dtype != torch.bfloat16 or keys.shape[1] % 2:
                raise ValueError("kernel='bf16' searches bfloat16 keys of an even size, got "
                                 f"{str(keys.dtype).removeprefix('torch.')} [*, {keys.shape[1]}]")
            return True
        return self.kernel == "fused" or self.fused_min_batch <= batch <= self.fused_max_batch

    def search(self, queries, keys, values, k):
        batch, num_slots = queries.shape[0], keys.shape[0]
        rows = max(1, min(num_slots, self.block_bytes // (4 * batch)))
        if keys.device.type != "cpu":
            return _canonical_order(*self._search_torch(queries, keys, values, k, max(rows, k)))
        if self.uses_fused(batch, keys):
            return self._search_fused(queries, keys, values, k, rows)
        if keys.dtype != torch.float32:
            return self._search_threads(queries, keys, values, k, rows)
        if num_slots * batch <= self.serial_elements:
            return self._search_serial(queries, keys, values, k, rows)
        return self._search_threads(queries, keys, values, k, rows)

    def _search_serial(self, queries, keys, values, k, rows):
        topk = RunningTopK(queries.shape[0], k)
        values_np = values.numpy()
        for start in range(0, keys.shape[0], rows):
            stop = min(start + rows, keys.shape[0])
            block = self._block_for(stop - start, queries.shape[0], keys)
            torch.mm(keys[start:stop], queries.t(), out=block)
            topk.push_block(block.numpy(), values_np[start:stop], start)
        return topk.result()

    def _threads_for(self, num_slots: int, batch: int) -> int:
        if num_slots * batch <= self.serial_elements:
            return 1
        return self.threads or torch.get_num_threads()

    def _search_fused(self, queries, keys, values, k, rows):
        batch, num_slots = queries.shape[0], keys.shape[0]
        q = queries.detach().float()
        pad = -batch % LANES  # the kernel takes LANES queries at once: repeat the last one
        if pad:
            q = torch.cat([q, q[-1:].expand(pad, -1)])
        rows = max(1, min(num_slots, self.block_bytes // (4 * q.shape[0])))
        threads = self._threads_for(num_slots, batch)
        topk = RunningTopK(q.shape[0], k, parts=threads)
        kind = _KINDS[keys.dtype]
        keys_np = (keys if kind == FLOAT32 else keys.view(torch.int16)).numpy()
        if kind != FLOAT32:
            keys_np = keys_np.view(np.uint16)
        if self.kernel == "bf16":  # keys and queries as bfloat16 pairs
            kind, keys_np = BF16_DOT, keys_np.view(np.uint32)
            q_np = np.ascontiguousarray(bfloat16_pairs(q.numpy()).T)
        else:
            q_np = np.ascontiguousarray(q.numpy().T)
        values_np = values.numpy()
        _scan_parts(lambda start, stop, part: _scan_range_fused(
            q_np, keys_np, kind, values_np, start, stop, rows, topk, part), num_slots, threads)
        sims, slots = topk.result()
        return sims[:batch], slots[:batch]

    def _search_threads(self, queries, keys, values, k, rows):
        threads = self._threads_for(keys.shape[0], queries.shape[0])
        topk = RunningTopK(queries.shape[0], k, parts=threads)
        q, values_np = queries.contiguous().float().numpy(), values.numpy()
        keys_np = keys.numpy() if keys.dtype == torch.float32 else keys
        with _one_blas_thread():
            _scan_parts(lambda start, stop, part: _scan_range(
                q, keys_np, values_np, start, stop, rows, topk, part), keys.shape[0], threads)
        return topk.result()

    def _search_torch(self, queries, keys, values, k, rows):
        best_sims, best_slots = [], []
        for start in range(0, keys.shape[0], rows):
            stop = min(start + rows, keys.shape[0])
            chunk = self._block_for(stop - start, queries.shape[0], queries)
            torch.mm(keys[start:stop].to(queries.dtype), queries.t(), out=chunk)
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
    """Builds a search backend by name: "exact", "faiss-flat" or "faiss-ivf" (the torch-native
    inverted file is ``lifelong.memory.ivf.IVFSearch``, ``MemoryConfig(search="ivf")``)."""
    if name == "exact":
        return ExactSearch(**options)
    if name in ("faiss-flat", "faiss-ivf"):
        return FaissSearch(kind=name.split("-")[1], **options)
    raise ValueError(f"unknown search backend {name!r}: use exact, faiss-flat or faiss-ivf")
