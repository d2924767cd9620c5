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

import math

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
    inverse = pow(golden_stride(num_slots), -1, num_slots) if num_slots > 1 else 0
    return (slots * inverse) % num_slots


class _Queue:
    """(write time, slot) entries between ``head`` and ``tail`` of two [capacity] int64
    tensors, ordered by (write time, rank); an entry is live while its slot still has that
    write time and is empty exactly when ``empty`` says so."""

    def __init__(self, slots: torch.Tensor, times: torch.Tensor, empty: bool):
        n = slots.numel()
        self.slots = torch.empty(2 * n + 64, dtype=torch.int64, device=slots.device)
        self.times = torch.empty_like(self.slots)
        self.slots[:n], self.times[:n] = slots, times
        self.head, self.tail, self.empty = 0, n, empty

    def live(self, slots, times, values, write_time) -> torch.Tensor:
        """[n] bool: which of the entries (slots, times) [n] are live."""
        return (write_time[slots] == times) & ((values[slots] < 0) == self.empty)

    def push(self, slots: torch.Tensor, time: int, values, write_time) -> None:
        """Appends slots [n] written at ``time`` (later than every entry), in rank order."""
        n = slots.numel()
        if self.tail + n > self.slots.numel():
            self._compact(n, values, write_time)
        self.slots[self.tail:self.tail + n] = slots
        self.times[self.tail:self.tail + n] = time
        self.tail += n

    def _compact(self, extra: int, values, write_time) -> None:
        """Keeps the live entries only, in new tensors with room for as many again + extra."""
        slots, times = self.slots[self.head:self.tail], self.times[self.head:self.tail]
        keep = self.live(slots, times, values, write_time)
        slots, times = slots[keep], times[keep]
        n = slots.numel()
        self.slots = torch.empty(2 * (n + extra) + 64, dtype=torch.int64, device=slots.device)
        self.times = torch.empty_like(self.slots)
        self.slots[:n], self.times[:n] = slots, times
        self.head, self.tail = 0, n

    def front(self, need: int, exclude: torch.Tensor | None, margin: int | None,
              values, write_time) -> tuple[torch.Tensor, torch.Tensor]:
        """The first live entries whose slot is not in ``exclude`` [E], in order: ``need`` of
        them (fewer if the queue holds fewer) and, given a margin, every further one whose
        write time is at most the need-th one's + margin (need >= 1 then). Stale entries met
        on the way are dropped for good.

        Returns:
            slots [m] and times [m] int64 (at least those asked for; tensors of their own).
        """
        excluding = exclude is not None and exclude.numel() > 0
        width = 2 * need + (exclude.numel() if excluding else 0) + 32
        while True:
            end = min(self.head + width, self.tail)
            slots, times = self.slots[self.head:end], self.times[self.head:end]
            last = int(times[-1]) if margin is not None and end < self.tail else None
            keep = self.live(slots, times, values, write_time)
            slots, times = slots[keep], times[keep]
            if slots.numel() < end - self.head:
                start = end - slots.numel()
                self.slots[start:end], self.times[start:end] = slots, times
                self.head = start
            if excluding:
                usable = ~torch.isin(slots, exclude)
                slots, times = slots[usable], times[usable]
            if end == self.tail or (slots.numel() >= need and (
                    last is None or last > int(times[need - 1]) + margin)):
                return slots, times
            width *= 2


class InsertOrder:
    """The noiseless insert order of a memory of ``num_slots`` slots (see the module doc).

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

    def rank(self, slots: torch.Tensor) -> torch.Tensor:
        """[n] int64 ranks of local slots [n] (by their global ids)."""
        return slot_rank(slots + self.offset, self.total_slots)

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
            self._rebuild(values, write_time)
            self.clock = int(clock)
            self.followed = _Followed(values, write_time, clock)

    def _rebuild(self, values: torch.Tensor, write_time: torch.Tensor) -> None:
        """Both queues from the state: O(n log n)."""
        queues = []
        for empty in (True, False):
            slots = ((values < 0) == empty).nonzero().squeeze(1)
            slots = slots[self.rank(slots).argsort()]
            slots = slots[write_time[slots].sort(stable=True).indices]
            queues.append(_Queue(slots, write_time[slots], empty))
            if empty:
                self.num_empty = slots.numel()
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
        slots = slots[self.rank(slots).argsort()]
        now_empty = values[slots] < 0
        for queue in self.queues:
            part = slots[now_empty] if queue.empty else slots[~now_empty]
            if part.numel():
                queue.push(part, time, values, write_time)
        self.num_empty += int(now_empty.sum()) - was_empty
        self.clock = time
        self.followed = _Followed(values, write_time, clock)

    # ------------------------------------------------------------------------------ reading
    def first(self, count: int, exclude: torch.Tensor | None, values: torch.Tensor,
              write_time: torch.Tensor, clock: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` slots of the order that are not in ``exclude`` [E] (call
        ``sync`` first).

        Returns:
            scores: [count] int64, descending; slots: [count] int64.
        """
        scores, slots, _ = self._first(count, exclude, None, values, write_time, clock)
        return scores, slots

    def _first(self, count, exclude, margin, values, write_time, clock):
        """``first``, and the filled slots of the noise window (``choose``) given a margin."""
        found_scores, found_slots, left, window = [], [], count, None
        for queue in self.queues:
            if left <= 0 or (queue.empty and not self.num_empty):
                continue
            slots, times = queue.front(left, exclude, None if queue.empty else margin,
                                       values, write_time)
            if not queue.empty and margin is not None and slots.numel() >= left:
                inside = times <= int(times[left - 1]) + margin
                window = (clock - times[inside], slots[inside])
            slots, times = slots[:left], times[:left]
            found_slots.append(slots)
            found_scores.append(clock - times + (EMPTY_BONUS if queue.empty else 0))
            left -= slots.numel()
        if left > 0:
            raise ValueError(f"asked for {count} insert slots, only {count - left} available")
        return torch.cat(found_scores), torch.cat(found_slots), window

    def choose(self, count: int, exclude: torch.Tensor | None, age_noise: float,
               generator: torch.Generator, values: torch.Tensor, write_time: torch.Tensor,
               clock: int) -> torch.Tensor:
        """``Memory.oldest_slots``: [count] int64 distinct slots not in ``exclude`` [E], empty
        ones first in the noiseless order, then filled ones by age + U[-age_noise, age_noise]:
        noise in float64 from ``generator``, drawn, in insert order, for the filled slots
        scoring at least the count-th noiseless score - ceil(2 age_noise) alone (no other
        can win). Call ``sync`` first."""
        margin = math.ceil(2 * age_noise) if age_noise else None
        scores, slots, window = self._first(count, exclude, margin, values, write_time, clock)
        if window is None:  # no noise, or only empty slots taken
            return slots
        empty = count - int((scores < EMPTY_BONUS).sum())
        scores, candidates = window
        noise = torch.rand(candidates.numel(), generator=generator, dtype=torch.float64)
        noisy = scores.double() + (2 * noise - 1).to(scores.device) * age_noise
        return torch.cat([slots[:empty], candidates[noisy.topk(count - empty).indices]])

    def oldest_filled_time(self, values: torch.Tensor, write_time: torch.Tensor) -> int | None:
        """The write time of the oldest filled slot (call ``sync`` first); None if none is."""
        slots, times = self.queues[1].front(1, None, None, values, write_time)
        return int(times[0]) if times.numel() else None


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
