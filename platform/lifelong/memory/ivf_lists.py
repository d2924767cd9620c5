"""The inverted lists of ``IVFSearch`` (lifelong.memory.ivf): which slots each coarse cell holds,
kept in place as keys move, and the numba kernel that scores the probed lists' keys.

The lists live in one list-ordered buffer of slot ids with slack: list ``l`` holds
``order[start[l] : start[l] + length[l]]`` and may grow to ``capacity[l]``. A slot whose key
moves to another cell is swap-removed from its old list (the list's last entry takes its place)
and appended to its new one, O(1) per written slot; when a list is full every list is laid out
again with fresh slack (``repack``, O(N log N), amortised over many writes). ``assign[slot]`` is
the slot's cell: -2 empty, -1 filled but not yet in a list (no trained quantiser), else the cell.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY, UNASSIGNED = -2, -1


class InvertedLists:
    """Slot ids per cell for N slots and ``nlist`` cells (numpy, on the CPU whatever the keys'
    device: the bookkeeping is a few integers per slot)."""

    def __init__(self, num_slots: int, nlist: int):
        self.nlist = nlist
        self.assign = np.full(num_slots, EMPTY, dtype=np.int32)  # [N]
        self.pos = np.full(num_slots, -1, dtype=np.int64)  # [N] index into order, -1: none
        self.order = np.zeros(0, dtype=np.int64)  # [capacity total] slot ids, -1 in the slack
        self.start = np.zeros(nlist, dtype=np.int64)
        self.length = np.zeros(nlist, dtype=np.int64)
        self.capacity = np.zeros(nlist, dtype=np.int64)

        self.count = 0  # filled slots (assigned or not), kept by ``fill``

    def fill(self, slots: np.ndarray) -> None:
        """Marks the distinct ``slots`` [W] filled (not yet in a list if they were empty)."""
        empty = slots[self.assign[slots] == EMPTY]
        self.assign[empty] = UNASSIGNED
        self.count += len(empty)

    def recount(self) -> None:
        """``count`` from ``assign`` (after it was set whole)."""
        self.count = int((self.assign >= UNASSIGNED).sum())

    def move(self, slots: np.ndarray, cells: np.ndarray) -> None:
        """Puts each of the distinct ``slots`` [W] into cell ``cells`` [W] (>= 0), leaving
        its old list; repacks when a list is full."""
        done = _move(slots, cells.astype(np.int32), self.assign, self.pos, self.order,
                     self.start, self.length, self.capacity)
        if done < len(slots):
            self.assign[slots[done:]] = cells[done:]
            self.repack()

    def repack(self) -> None:
        """Lays every list out again from ``assign``, each in slot order with slack (a quarter
        of its length plus 16)."""
        filled = np.flatnonzero(self.assign >= 0)
        cells = self.assign[filled]
        counts = np.bincount(cells, minlength=self.nlist).astype(np.int64)
        self.capacity = counts + counts // 4 + 16
        self.start = np.concatenate([[0], np.cumsum(self.capacity)[:-1]]).astype(np.int64)
        self.length = counts
        perm = np.argsort(cells, kind="stable")  # by cell, then slot id
        filled, cells = filled[perm], cells[perm]
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        positions = self.start[cells] + np.arange(len(filled)) - first[cells]
        self.order = np.full(int(self.capacity.sum()), -1, dtype=np.int64)
        self.order[positions] = filled
        self.pos.fill(-1)
        self.pos[filled] = positions

    def members(self, cell: int) -> np.ndarray:
        """The slot ids of one cell's list (a view, in list order)."""
        s = self.start[cell]
        return self.order[s:s + self.length[cell]]


@njit(cache=True)
def _move(slots, cells, assign, pos, order, start, length, capacity):  # pragma: no cover
    """``InvertedLists.move`` without the repack: returns how many slots it placed (all, or
    the index of the first whose new list is full; that slot has left its old list)."""
    for i in range(slots.shape[0]):
        s, new = slots[i], cells[i]
        old = assign[s]
        if old == new:
            continue
        if old >= 0:  # swap-remove from the old list
            p, last = pos[s], start[old] + length[old] - 1
            moved = order[last]
            order[p] = moved
            pos[moved] = p
            order[last] = -1
            length[old] -= 1
            pos[s] = -1
        assign[s] = UNASSIGNED
        if length[new] == capacity[new]:
            return i
        p = start[new] + length[new]
        order[p] = s
        pos[s] = p
        length[new] += 1
        assign[s] = new
    return slots.shape[0]


@njit(nogil=True, fastmath=True, cache=True)
def score_rows(rows, q, which, probes, block):  # pragma: no cover
    """Similarities of gathered keys to the queries that probe their lists, into ``block``.

    Args:
        rows: [R, d] float32 the listed keys, gathered contiguously (list after list).
        q: [B, d] float32 queries.
        which: [R] the list (an index into ``probes``) of each row.
        probes: [L, B] bool, query b probes list l.
        block: [R, B] float32 out; a query that does not probe the row's list gets -inf (it
            never enters that query's top-k).
    """
    batch, d = q.shape
    for r in range(rows.shape[0]):
        i = which[r]
        for b in range(batch):
            if probes[i, b]:
                acc = np.float32(0.0)
                for t in range(d):
                    acc += rows[r, t] * q[b, t]
                block[r, b] = acc
            else:
                block[r, b] = -np.inf
