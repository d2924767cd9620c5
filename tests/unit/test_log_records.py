"""The update records of a shard's log (distributed/records.py): one ``wire`` frame each, read
back exactly; logs written before that format (Arrow IPC payloads) still restore a shard to
the same state; a payload that is not an update record is refused, typed, naming the file."""

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory, wire
from lifelong.distributed.client import LocalShards
from lifelong.distributed.records import Update, encode_frame, key_column
from lifelong.distributed.shard import MemoryShard
from lifelong.distributed.storage import ShardStore
from lifelong.errors import CorruptStateError, ProtocolError


def spec_at(path):
    return MemorySpec(name="records", key_dim=8, num_slots=40, num_values=20, shards=2,
                      choose_k=5, age_noise=0.0, storage=str(path), snapshot_every=1000)


def fed(spec, steps=6):
    mem = ShardedMemory(spec, LocalShards([MemoryShard(spec, i) for i in range(spec.shards)]))
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        mem.query(torch.randn(6, 8, generator=gen), torch.randint(0, 20, (6,), generator=gen))
    return mem


def log_path(spec, index=0):
    return os.path.join(spec.location, f"shard-{index:03d}", "log-00000000.bin")


def legacy_payload(update: Update) -> bytes:
    """An update as logs held it before the frame format: the encoder of records.py at
    03cdaae (an Arrow IPC stream of one record batch, the scalars in its metadata)."""
    import json
    d, rows, recent = update.keys.shape[1], len(update.slots), len(update.recent_labels)
    n = max(rows, recent)

    def pad(a):
        out = np.zeros(n, dtype=np.int64)
        out[: len(a)] = a
        return out

    keys = np.zeros((n, d), dtype=np.float32)
    keys[:rows] = update.keys
    batch = pa.record_batch({
        "slot": pad(update.slots), "key": key_column(keys), "value": pad(update.values),
        "recent_label": pad(update.recent_labels), "recent_slot": pad(update.recent_slots),
        "recent_position": pad(update.recent_positions),
    }).replace_schema_metadata({"lifelong": json.dumps({
        "writer": update.writer, "seq": update.seq, "clock": update.clock, "rows": rows,
        "recent": recent, "inserted": [int(s) for s in update.inserted],
        "digest": update.digest})})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def same_update(a: Update, b: Update) -> bool:
    arrays = ("slots", "keys", "values", "recent_labels", "recent_slots", "recent_positions",
              "inserted")
    return (a.writer, a.seq, a.clock, a.digest) == (b.writer, b.seq, b.clock, b.digest) and \
        all(np.array_equal(getattr(a, n), getattr(b, n)) and
            getattr(a, n).dtype == getattr(b, n).dtype for n in arrays)


def test_every_logged_update_reads_back_exactly(tmp_path):
    spec = spec_at(tmp_path)
    fed(spec)
    _, updates = ShardStore(spec.location, 0).load()
    assert len(updates) == 6
    for update in updates:
        again = Update.from_bytes(update.to_bytes())
        assert same_update(update, again)
        assert again.keys.flags.writeable and again.slots.flags.writeable


def test_a_log_written_before_the_frame_format_restores_the_same_state(tmp_path):
    spec = spec_at(tmp_path)
    mem = fed(spec)
    want = mem.state_dict()
    for index in range(spec.shards):  # rewrite each shard's log in the old format
        _, updates = ShardStore(spec.location, index).load()
        with open(log_path(spec, index), "wb") as fh:
            for update in updates:
                payload = legacy_payload(update)
                assert Update.from_bytes(payload).seq == update.seq
                fh.write(encode_frame(payload))
    reopened = ShardedMemory(spec, LocalShards([MemoryShard(spec, i)
                                                for i in range(spec.shards)]))
    got = reopened.state_dict()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def frame(fields=None, arrays=None, op="update"):
    return b"".join(wire.encode(op, fields, arrays))


def good_parts():
    arrays = {"slots": np.arange(2), "keys": np.zeros((2, 8), np.float32),
              "values": np.arange(2), "recent_labels": np.arange(2),
              "recent_slots": np.arange(2), "recent_positions": np.arange(2),
              "inserted": np.arange(1)}
    return {"writer": "w", "seq": 1, "clock": 5, "digest": None}, arrays


@pytest.mark.parametrize("craft", ["other op", "missing array", "extra array", "int32 slots",
                                   "digest not a str"])
def test_a_payload_that_is_no_update_record_is_refused(craft):
    fields, arrays = good_parts()
    op = "update"
    if craft == "other op":
        op = "step"
    elif craft == "missing array":
        del arrays["inserted"]
    elif craft == "extra array":
        arrays["more"] = np.arange(3)
    elif craft == "int32 slots":
        arrays["slots"] = arrays["slots"].astype(np.int32)
    else:
        fields["digest"] = 7
    assert Update.from_bytes(frame(*good_parts())).clock == 5
    with pytest.raises(ValueError):
        Update.from_bytes(frame(fields, arrays, op))


@pytest.mark.parametrize("cut", ["short prefix", "one byte short", "one byte more", "bad magic",
                                 "header not json"])
def test_parse_frame_refuses_anything_but_exactly_one_frame(cut):
    whole = frame(*good_parts())
    damaged = {"short prefix": whole[:10], "one byte short": whole[:-1],
               "one byte more": whole + b"\0", "bad magic": b"XXXX" + whole[4:],
               "header not json": whole[:16] + b"\xff" + whole[17:]}[cut]
    assert wire.parse_frame(whole)[0] == "update"
    with pytest.raises(ProtocolError):
        wire.parse_frame(damaged)


def test_an_undecodable_record_with_a_valid_checksum_is_refused_naming_the_file(tmp_path):
    spec = spec_at(tmp_path)
    fed(spec, 2)
    fields, arrays = good_parts()
    arrays["slots"] = arrays["slots"].astype(np.float64)
    with open(log_path(spec), "ab") as fh:
        fh.write(encode_frame(frame(fields, arrays)))
    with pytest.raises(CorruptStateError, match="shard-000/log-00000000.bin"):
        MemoryShard(spec, 0)
