"""The direct shard channel (lifelong.distributed.channel, wire) over real sockets on
127.0.0.1: the same answers as in-process shards, exactly once across a broken connection,
typed errors, and hostile frames refused before anything runs (docs/design.md §3.11)."""

import socket
import threading
import time
import struct

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed import wire
from lifelong.distributed.channel import DirectShards, ShardServer, _Connection
from lifelong.distributed.client import LocalShards
from lifelong.distributed.shard import MemoryShard
from lifelong.errors import InvalidLabelError, ProtocolError


class InProcessRay:
    """Stands in for RayShards: the fallback path runs the call on in-process shards."""

    def __init__(self, shards):
        self.local = LocalShards(shards)
        self.handles = [None] * len(shards)
        self.timeout_s = 10.0

    def call(self, method, args):
        return self.local.call(method, args)

    def call_some(self, method, shards, args):
        return [getattr(self.local.shards[i], method)(*a) for i, a in zip(shards, args)]


def _spec(tmp_path, name):
    return MemorySpec(name=name, key_dim=8, num_slots=64, num_values=10, shards=2,
                      choose_k=8, age_noise=0.0, storage=str(tmp_path), snapshot_every=10**9)


def _direct(spec):
    shards = [MemoryShard(spec, i) for i in range(spec.shards)]
    servers = [ShardServer(s, "127.0.0.1") for s in shards]
    group = DirectShards(InProcessRay(shards))
    group._endpoints = [s.endpoint() for s in servers]  # what the actor's `endpoint` returns
    return shards, servers, group


def _batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
            for _ in range(n)]


def _same(a, b):
    assert torch.equal(a.slots, b.slots) and torch.equal(a.values, b.values)
    assert torch.equal(a.similarities, b.similarities)
    assert torch.equal(a.loss.detach(), b.loss.detach())


def test_direct_steps_equal_in_process_shards_and_use_the_channel(tmp_path):
    ref = ShardedMemory(_spec(tmp_path / "a", "ref"),
                        LocalShards([MemoryShard(_spec(tmp_path / "a", "ref"), i)
                                     for i in range(2)]), writer="w", pipelined=True)
    _, servers, group = _direct(_spec(tmp_path / "b", "direct"))
    mem = ShardedMemory(_spec(tmp_path / "b", "direct"), group, writer="w", pipelined=True)
    for q, y in _batches(30):
        _same(ref.query(q, y), mem.query(q, y))
    assert torch.equal(ref.flush(), mem.flush())
    for name, value in ref.state_dict().items():
        assert torch.equal(value, mem.state_dict()[name]), name
    assert group.direct_calls >= 2 * 30 and group.ray_calls == 0


def test_a_broken_connection_falls_back_and_applies_each_batch_once(tmp_path):
    ref = ShardedMemory.local(_spec(tmp_path / "a", "ref"), pipelined=True)
    ref.writer = "w"
    shards, servers, group = _direct(_spec(tmp_path / "b", "direct"))
    mem = ShardedMemory(_spec(tmp_path / "b", "direct"), group, writer="w", pipelined=True)
    for step, (q, y) in enumerate(_batches(20)):
        if step in (5, 12):  # the connections die under the client (a reset)
            for conns in group._idle:
                for conn in conns:
                    if conn is not None:
                        conn.sock.shutdown(socket.SHUT_RDWR)
        _same(ref.query(q, y), mem.query(q, y))
    mem.flush(), ref.flush()
    assert group.ray_calls >= 2  # the broken calls went the other way
    assert sum(s.stats.updates for s in shards) == 2 * 20  # each batch applied once per shard
    for name, value in ref.state_dict().items():
        assert torch.equal(value, mem.state_dict()[name]), name


def test_a_shard_error_comes_back_typed_and_changes_nothing(tmp_path):
    shards, _, group = _direct(_spec(tmp_path, "typed"))
    q = np.full((2, 8), 8 ** -0.5, dtype=np.float32)
    with pytest.raises(InvalidLabelError):
        group.call("search", [(q, np.array([0, 99]), 4)] * 2)  # label out of range
    assert [s.stats.queries for s in shards] == [0, 0]
    assert group.call("search", [(q, None, 4)] * 2)[0].sims.shape == (2, 4)


def test_a_connection_without_the_token_is_refused(tmp_path):
    shards, servers, _ = _direct(_spec(tmp_path, "token"))
    wrong = dict(servers[0].endpoint(), token="0" * 64)
    with pytest.raises(ProtocolError):
        _Connection(wrong, timeout_s=5)
    assert servers[0].refused == 1


def _authenticated(server):
    return _Connection(server.endpoint(), timeout_s=5).sock


HOSTILE = {
    "bad magic": lambda: b"NOPE" + struct.pack("<IQ", 2, 0) + b"{}",
    "absurd data size": lambda: wire.PREFIX.pack(wire.MAGIC, 2, 1 << 60) + b"{}",
    "absurd header size": lambda: wire.PREFIX.pack(wire.MAGIC, 1 << 31, 0),
    "header not json": lambda: wire.PREFIX.pack(wire.MAGIC, 3, 0) + b"\xff\x00{",
    "unknown dtype": lambda: _frame({"op": "search", "fields": {"k": 4},
                                     "arrays": [["q", "object", [2, 8]]]}, 128),
    "shape larger than data": lambda: _frame({"op": "search", "fields": {"k": 4},
                                              "arrays": [["q", "float32", [2**30, 8]]]}, 64),
    "unknown call": lambda: b"".join(bytes(b) for b in wire.encode("state", {}, {})),
    "missing query": lambda: b"".join(bytes(b) for b in wire.encode("search", {"k": 4}, {})),
    "writer name with control characters and no arrays": lambda: b"".join(
        bytes(b) for b in wire.encode("apply", {"writer": "w\x00\n", "seq": 1,
                                                "insert_empty": 0, "redo_after": -1}, {})),
}


def _frame(header, data_bytes):
    h = __import__("json").dumps(header).encode()
    return wire.PREFIX.pack(wire.MAGIC, len(h), data_bytes) + h + b"\0" * data_bytes


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_frame_is_refused_typed_and_changes_nothing(tmp_path, case):
    shards, servers, _ = _direct(_spec(tmp_path, "hostile"))
    before = [(s.stats.updates, s.stats.queries) for s in shards]
    sock = _authenticated(servers[0])
    sock.sendall(HOSTILE[case]())
    op, fields, _ = wire.read_frame(sock)
    assert op == "error" and fields["type"] == "ProtocolError", fields
    assert sock.recv(1) == b""  # and the connection is closed
    assert [(s.stats.updates, s.stats.queries) for s in shards] == before


class CountingHandler:
    """A shard actor's two channel hooks around a real shard: ``serve`` runs the call,
    ``after_reply`` (the metrics' export) may only run once the answer has left; it waits for
    the client to have read it, so a server that ran it first would never answer."""

    def __init__(self, shard):
        self.shard, self.events = shard, []
        self.answered = threading.Event()

    def serve(self, op, args):
        self.events.append(("serve", op))
        return getattr(self.shard, op)(*args)

    def after_reply(self):
        self.events.append(("after_reply", self.answered.wait(5.0)))


def test_the_work_after_a_reply_runs_once_the_answer_has_left(tmp_path):
    spec = _spec(tmp_path, "after")
    shards = [MemoryShard(spec, i) for i in range(spec.shards)]
    handlers = [CountingHandler(s) for s in shards]
    servers = [ShardServer(h, "127.0.0.1") for h in handlers]
    group = DirectShards(InProcessRay(shards))
    group._endpoints = [s.endpoint() for s in servers]
    memory = ShardedMemory(spec, group, pipelined=True)
    for q, y in _batches(3):
        memory.query(q, y)
        for h in handlers:  # the answer is in the client's hands: let the server go on
            h.answered.set()
        deadline = time.monotonic() + 5
        while any(len(h.events) % 2 for h in handlers) and time.monotonic() < deadline:
            time.sleep(0.01)
        for h in handlers:
            h.answered.clear()
    for h in handlers:
        ops = [e for e in h.events if e[0] == "serve"]
        assert ops == [("serve", "search"), ("serve", "step"), ("serve", "step")]
        assert h.events[1::2] == [("after_reply", True)] * 3  # each after its answer was read
    assert group.direct_calls == 6 and group.ray_calls == 0
