"""No warnings in normal runs (issue 19, item 5): arrays that come out of Ray's object store are
read-only, and ``torch.from_numpy`` on one prints a UserWarning into every run's log. Shards in
this process get and give read-only arrays here, as Ray actors do, with warnings as errors."""

import dataclasses
import warnings

import numpy as np
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.client import LocalShards
from lifelong.distributed.shard import MemoryShard


def read_only(x):
    """``x`` with every NumPy array in it a read-only copy (what Ray's deserializer gives)."""
    if isinstance(x, np.ndarray):
        x = x.copy()
        x.flags.writeable = False
        return x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: read_only(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    if isinstance(x, (list, tuple)):
        return type(x)(read_only(v) for v in x)
    if isinstance(x, dict):
        return {k: read_only(v) for k, v in x.items()}
    return x


class ObjectStoreShards(LocalShards):
    """Local shards whose arguments and answers cross a (simulated) object store."""

    def call(self, method, args):
        return read_only(super().call(method, [read_only(a) for a in args]))


def test_a_memory_whose_arrays_are_read_only_raises_no_warning():
    spec = MemorySpec(name="ro", key_dim=16, num_slots=61, num_values=12, shards=2,
                      choose_k=7, age_noise=0.0, storage="unused")
    memory = ShardedMemory(spec, ObjectStoreShards([MemoryShard(spec, i, durable=False)
                                                    for i in range(2)]))
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a UserWarning fails the test
        for _ in range(4):  # inserts, refreshes, searches
            memory.query(torch.randn(8, 16, generator=gen),
                         torch.randint(0, 12, (8,), generator=gen))
        state = memory.state_dict()
        memory.load_state_dict(state)  # the state reaches the shards read-only
        again = memory.state_dict()
        memory.query(torch.randn(8, 16, generator=gen), torch.randint(0, 12, (8,), generator=gen))
    for name in ("keys", "values", "ages"):  # (load_state clears the recent-slot table)
        assert torch.equal(state[name], again[name]), name
    assert memory.occupancy() > 0
