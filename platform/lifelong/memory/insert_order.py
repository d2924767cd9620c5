"""The insert order of a memory's slots, kept incrementally (docs/design.md §1.5).

Inserts take slots in the noiseless insert order: score descending, where a slot's score is its
age plus ``EMPTY_BONUS`` when it is empty, and equal scores by ascending ``slot_rank`` of the
global slot id. The rank is a fixed bijection of [0, N) that spreads consecutive ranks over
the whole id range (a golden-ratio stride), so the slots taken first lie evenly in every
contiguous range: the shards of a sharded memory fill at the same pace.

``InsertOrder`` keeps that order as two queues of (write time, slot) entries, one for empty
and one for filled slots, each ordered by (write time, rank). A write appends its slots at the
back; the entries a slot leaves behind go stale (the slot's write time or emptiness no longer
matches) and are dropped when a scan of the front meets them, or when a queue is compacted.
The first slots of the order then cost amortised O(written + count) per update step instead of
a scan of N ages; a rebuild from the state (after a load or a clear) costs O(N log N).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["EMPTY_BONUS", "InsertOrder", "golden_stride", "slot_rank"]

# Empty slots are preferred for inserts over any written slot: their insert score gets this bonus.
EMPTY_BONUS = 2**32  # an insert score at least this marks an empty slot (shard clients)


def golden_stride(num_slots: int) -> int:
    """G: the integer nearest below N (sqrt 5 - 1) / 2 (N / golden ratio), raised to the
    first value coprime to N; 1 for N <= 2. Rank r belongs to slot r G mod N."""
    if num_slots <= 2:
        return 1
    stride = max(1, (math.isqrt(5 * num_slots * num_slots) - num_slots) // 2)
    while math.gcd(stride, num_slots) != 1:
        stride += 1
    return stride


def slot_rank(slots, num_slots: int):
    """The insert tie-break rank of global slot ids: s G^-1 mod N (``golden_stride``), a
    bijection of [0, N) under which ranks 0, 1, 2 ... are slots 0, G, 2G ... mod N.

    Args:
        slots: [n] int64 global slot ids in [0, N), a tensor or a numpy array.
        num_slots: N, the slots of the whole memory (every shard included), below 2^31.

    Returns:
        [n] int64 ranks, of the same kind as ``slots``.
    """
    return (slots * _rank_inverse(num_slots)) % num_slots


@functools.lru_cache(maxsize=64)
def _rank_inverse(num_slots: int) -> int:
    """G^-1 mod N (``golden_stride``), computed once per N: ranks are taken at every step."""
    return pow(golden_stride(num_slots), -1, num_slots) if num_slots > 1 else 0


def _host(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's numpy view (free); other devices' tensors are copied (O(n))."""
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


class _Queue:
    """(write time, slot) entries between ``head`` and ``tail`` of two [capacity] int64
    arrays, ordered by (write time, rank); an entry is live while its slot still has that
    write time and is empty exactly when ``empty`` says so."""

    def __init__(self, slots: np.ndarray, times: np.ndarray, empty: bool):
        n = slots.size
        self.slots = np.empty(2 * n + 64, dtype=np.int64)
        self.times = np.empty_like(self.slots)
        self.slots[:n], self.times[:n] = slots, times
        self.head, self.tail, self.empty = 0, n, empty

    def live(self, slots, times, values, write_time) -> np.ndarray:
        """[n] bool: which of the entries (slots, times) [n] are live."""
        return (write_time[slots] == times) & ((values[slots] < 0) == self.empty)

    def push(self, slots: np.ndarray, time: int, values, write_time) -> None:
        """Appends slots [n] written at ``time`` (later than every entry), in rank order."""
        n = slots.size
        if self.tail + n > self.slots.size:
            self._compact(n, values, write_time)
        self.slots[self.tail:self.tail + n] = slots
        self.times[self.tail:self.tail + n] = time
        self.tail += n

    def _compact(self, extra: int, values, write_time) -> None:
        """Keeps the live entries only, in arrays with room for as many again + extra."""
        slots, times = self.slots[self.head:self.tail], self.times[self.head:self.tail]
        keep = self.live(slots, times, values, write_time)
        slots, times = slots[keep], times[keep]
        n = slots.size
        self.slots = np.empty(2 * (n + extra) + 64, dtype=np.int64)
        self.times = np.empty_like(self.slots)
        self.slots[:n], self.times[:n] = slots, times
        self.head, self.tail = 0, n

    def front(self, need: int, exclude: np.ndarray | None, margin: int | None,
              values, write_time) -> tuple[np.ndarray, np.ndarray]:
        """The first live entries whose slot is not in ``exclude`` [E], in order: ``need`` of
        them (fewer if the queue holds fewer) and, given a margin, every further one whose
        write time is at most the need-th one's + margin (need >= 1 then). Stale entries met
        on the way are dropped for good.

        Returns:
            slots [m] and times [m] int64 (at least those asked for; arrays of their own).
        """
        excluding = exclude is not None and exclude.size > 0
        width = 2 * need + (exclude.size if excluding else 0) + 32
        while True:
            end = min(self.head + width, self.tail)
            slots, times = self.slots[self.head:end], self.times[self.head:end]
            last = int(times[-1]) if margin is not None and end < self.tail else None
            keep = self.live(slots, times, values, write_time)
            slots, times = slots[keep], times[keep]  # copies (boolean indexing)
            if slots.size < end - self.head:
                start = end - slots.size
                self.slots[start:end], self.times[start:end] = slots, times
                self.head = start
            if excluding:
                usable = ~np.isin(slots, exclude)
                slots, times = slots[usable], times[usable]
            if end == self.tail or (slots.size >= need and (
                    last is None or last > int(times[need - 1]) + margin)):
                return slots, times
            width *= 2


class InsertOrder:
    """The noiseless insert order of a memory of ``num_slots`` slots (see the module doc).

    The queues are numpy arrays on the host whatever the memory's device: each step reads and
    writes a few dozen entries, where a device's per-operation cost would dominate. They read
    the memory's values and write times through numpy views on CPU; a memory on another device
    keeps a host copy of both (``_mirror``), updated by ``written`` for the slots written.

    Args:
        num_slots: n, the memory's slots.
        offset: the global id of local slot 0 (a shard's offset; 0 for a whole memory).
        total_slots: N, the slots of the whole memory, which ``slot_rank`` ranks (n if None).
    """

    def __init__(self, num_slots: int, offset: int = 0, total_slots: int | None = None):
        self.num_slots, self.offset = num_slots, offset
        self.total_slots = num_slots if total_slots is None else total_slots
        self.queues: tuple[_Queue, _Queue] | None = None  # (empty, filled); None: to rebuild
        self.num_empty = 0
        self.clock = 0  # the clock the queues follow
        self.followed: _Followed | None = None  # the state tensors the queues follow
        self._mirror: tuple[np.ndarray, np.ndarray] | None = None  # non-CPU state, on the host

    def rank(self, slots: np.ndarray) -> np.ndarray:
        """[n] int64 ranks of local slots [n] (by their global ids)."""
        return slot_rank(slots + self.offset, self.total_slots)

    def _state(self, values: torch.Tensor, write_time: torch.Tensor):
        """values [n] and write_time [n] as host arrays."""
        if values.device.type == "cpu":
            return values.numpy(), write_time.numpy()
        return self._mirror

    # ------------------------------------------------------------------------------ upkeep
    def invalidate(self) -> None:
        """Rebuild from the state at the next use (after a load or a clear)."""
        self.queues = None

    def sync(self, values: torch.Tensor, write_time: torch.Tensor, clock: torch.Tensor) -> None:
        """Rebuilds the queues if the state was changed other than through ``written`` (or
        moved to another device), or after ``invalidate``.

        Args:
            values: [n] int64 (-1: empty); write_time: [n] int64; clock: [] int64.
        """
        if self.queues is None or self.followed is None or \
                not self.followed.matches(values, write_time, clock):
            if values.device.type != "cpu":
                self._mirror = (_host(values).copy(), _host(write_time).copy())
            self._rebuild(*self._state(values, write_time))
            self.clock = int(clock)
            self.followed = _Followed(values, write_time, clock)

    def _rebuild(self, values: np.ndarray, write_time: np.ndarray) -> None:
        """Both queues from the state: O(n log n)."""
        queues = []
        for empty in (True, False):
            slots = np.flatnonzero((values < 0) == empty)
            slots = slots[np.argsort(self.rank(slots), kind="stable")]
            slots = slots[np.argsort(write_time[slots], kind="stable")]
            queues.append(_Queue(slots, write_time[slots], empty))
            if empty:
                self.num_empty = slots.size
        self.queues = (queues[0], queues[1])

    def written(self, slots: torch.Tensor, was_empty: int, values: torch.Tensor,
                write_time: torch.Tensor, clock: torch.Tensor) -> None:
        """Follows an update step that wrote distinct slots [W] at ``clock``, after the state
        (values [n], write_time [n], clock []) was changed; ``was_empty`` of them were empty
        before it. A clock that does not move forward makes the next use rebuild."""
        time = int(clock)
        if self.queues is None or time <= self.clock:
            self.invalidate()  # entries at one time must stay in rank order: rebuild
            return
        slots = _host(slots)
        if values.device.type != "cpu":  # the written slots' new state, copied to the host
            index = torch.from_numpy(slots).to(values.device)
            self._mirror[0][slots] = _host(values[index])
            self._mirror[1][slots] = _host(write_time[index])
        host_values, host_times = self._state(values, write_time)
        slots = slots[np.argsort(self.rank(slots), kind="stable")]
        now_empty = host_values[slots] < 0
        for queue in self.queues:
            part = slots[now_empty] if queue.empty else slots[~now_empty]
            if part.size:
                queue.push(part, time, host_values, host_times)
        self.num_empty += int(now_empty.sum()) - was_empty
        self.clock = time
        self.followed = _Followed(values, write_time, clock)

    # ------------------------------------------------------------------------------ reading
    def first(self, count: int, exclude: torch.Tensor | None, values: torch.Tensor,
              write_time: torch.Tensor, clock: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` slots of the order that are not in ``exclude`` [E] (call
        ``sync`` first).

        Returns:
            scores: [count] int64, descending; slots: [count] int64 (on the values' device).
        """
        scores, slots, _ = self._first(count, exclude, None, values, write_time, clock)
        return _device(scores, values), _device(slots, values)

    def _first(self, count, exclude, margin, values, write_time, clock):
        """``first`` as host arrays, and the filled slots of the noise window (``choose``)
        given a margin."""
        host_values, host_times = self._state(values, write_time)
        exclude = None if exclude is None else _host(exclude)
        found_scores, found_slots, left, window = [], [], count, None
        for queue in self.queues:
            if left <= 0 or (queue.empty and not self.num_empty):
                continue
            slots, times = queue.front(left, exclude, None if queue.empty else margin,
                                       host_values, host_times)
            if not queue.empty and margin is not None and slots.size >= left:
                inside = times <= int(times[left - 1]) + margin
                window = (clock - times[inside], slots[inside])
            slots, times = slots[:left], times[:left]
            found_slots.append(slots)
            found_scores.append(clock - times + (EMPTY_BONUS if queue.empty else 0))
            left -= slots.size
        if left > 0:
            raise ValueError(f"asked for {count} insert slots, only {count - left} available")
        if len(found_slots) == 1:
            return found_scores[0], found_slots[0], window
        empty = np.zeros(0, dtype=np.int64)
        return (np.concatenate(found_scores or [empty]), np.concatenate(found_slots or [empty]),
                window)

    def choose(self, count: int, exclude: torch.Tensor | None, age_noise: float,
               generator: torch.Generator, values: torch.Tensor, write_time: torch.Tensor,
               clock: int) -> torch.Tensor:
        """``Memory.oldest_slots``: [count] int64 distinct slots not in ``exclude`` [E], empty
        ones first in the noiseless order, then filled ones by age + U[-age_noise, age_noise]:
        noise in float64 from ``generator``, drawn, in insert order, for the filled slots
        scoring at least the count-th noiseless score - ceil(2 age_noise) alone (no other
        can win). Call ``sync`` first. On the values' device."""
        margin = math.ceil(2 * age_noise) if age_noise else None
        scores, slots, window = self._first(count, exclude, margin, values, write_time, clock)
        if window is None:  # no noise, or only empty slots taken
            return _device(slots, values)
        empty = count - int((scores < EMPTY_BONUS).sum())
        scores, candidates = window
        noise = torch.rand(candidates.size, generator=generator, dtype=torch.float64)
        noisy = torch.from_numpy(scores).double() + (2 * noise - 1) * age_noise
        chosen = candidates[noisy.topk(count - empty).indices.numpy()]
        return _device(np.concatenate([slots[:empty], chosen]), values)

    def oldest_filled_time(self, values: torch.Tensor, write_time: torch.Tensor) -> int | None:
        """The write time of the oldest filled slot (call ``sync`` first); None if none is."""
        slots, times = self.queues[1].front(1, None, None, *self._state(values, write_time))
        return int(times[0]) if times.size else None


def _device(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Host array ``a`` as a tensor on ``like``'s device."""
    t = torch.from_numpy(a)
    return t if like.device.type == "cpu" else t.to(like.device)


class _Followed:
    """Tensors and their in-place version counters, which every in-place change (``copy_``,
    ``fill_``, indexed assignment) moves on: ``matches`` says whether they are still the same
    tensors, unchanged since."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors
        self.versions = [t._version for t in tensors]

    def matches(self, *tensors: torch.Tensor) -> bool:
        return len(tensors) == len(self.tensors) and all(
            a is b and a._version == v for a, b, v in zip(tensors, self.tensors, self.versions))
