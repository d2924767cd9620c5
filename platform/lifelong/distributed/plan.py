"""How a shard applies one update (``plan_update``): which slots it refreshes and which it
inserts into, computed without changing any state, as an ``Update`` the shard logs and
applies (and replays after a restart)."""

from __future__ import annotations

import numpy as np

from lifelong.distributed.answer import as_tensor, gather
from lifelong.distributed.batches import ShardWrite
from lifelong.distributed.records import Update
from lifelong.errors import MemoryStateError
from lifelong.memory import Memory


def plan_update(memory: Memory, write: ShardWrite, digest: str, offset: int) -> Update:
    """The update's effect (``Memory.plan_write``), computed without changing any state.

    A refresh whose slot no longer holds its label (another writer overwrote it since the
    search) becomes an insert; inserts the client routed to an empty slot (the first
    ``write.insert_empty``) and those converted refreshes take this shard's empty slots
    and are refused (answer -1) when none is left, rather than evict an entry. The answer
    (``Update.inserted``) holds the slot of each insert, then of each refresh, in order.
    """
    dev = memory.keys.device
    refresh_local = write.refresh_slots - offset
    if len(refresh_local) and (refresh_local.min() < 0 or
                               refresh_local.max() >= memory.num_slots):
        raise MemoryStateError("refresh slots outside this shard")
    refresh_local = refresh_local.astype(np.int64, copy=False)
    fresh = gather(memory.values, refresh_local) == write.refresh_labels
    n_ins = len(write.insert_labels)
    marked = min(max(int(write.insert_empty), 0), n_ins)
    stale = np.flatnonzero(~fresh)
    if not stale.size:  # the usual case: nothing to convert, the inserts as the client sent them
        ins_q, ins_labels = write.insert_q, write.insert_labels
        ins_pos = write.insert_positions
    else:  # the insert order: routed to an empty slot, converted refreshes, then the others
        ins_q = np.concatenate([write.insert_q[:marked], write.refresh_q[stale],
                                write.insert_q[marked:]]).astype(np.float32, copy=False)
        ins_labels = np.concatenate([write.insert_labels[:marked], write.refresh_labels[stale],
                                     write.insert_labels[marked:]]).astype(np.int64,
                                                                           copy=False)
        ins_pos = np.concatenate([write.insert_positions[:marked],
                                  write.refresh_positions[stale],
                                  write.insert_positions[marked:]]).astype(np.int64, copy=False)
    wants_empty = marked + len(stale)
    empty = memory.num_slots - memory.occupancy() if wants_empty else 0  # none is refreshed now
    accept = np.ones(len(ins_labels), dtype=bool)
    accept[min(wants_empty, empty):wants_empty] = False
    plan = memory.plan_write(as_tensor(refresh_local[fresh], dev),
                             as_tensor(write.refresh_q[fresh], dev),
                             as_tensor(ins_q[accept], dev), as_tensor(ins_labels[accept], dev))
    taken = np.full(len(ins_labels), -1, dtype=np.int64)
    taken[accept] = plan.inserted.cpu().numpy()
    # the answer in the write's order: its inserts, then its refreshes
    answer_refresh = np.where(fresh, refresh_local, -1)
    answer_refresh[stale] = taken[marked:marked + len(stale)]
    answer = np.concatenate([taken[:marked], taken[marked + len(stale):], answer_refresh])
    return Update(writer=write.writer, seq=write.seq, digest=digest,
                  clock=int(memory.clock) + 1, slots=plan.slots.cpu().numpy(),
                  # float32 records: compact keys widen exactly, applying narrows them back
                  keys=plan.keys.cpu().float().numpy(),
                  values=plan.values.cpu().numpy(),
                  recent_labels=np.concatenate([write.refresh_labels[fresh],
                                                ins_labels[accept]]),
                  recent_slots=np.concatenate([refresh_local[fresh], taken[accept]]),
                  recent_positions=np.concatenate([write.refresh_positions[fresh],
                                                   ins_pos[accept]]),
                  inserted=answer)
