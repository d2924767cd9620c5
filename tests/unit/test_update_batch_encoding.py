"""UpdateBatch owns its array encoding; the stream's commit.npz stays byte for byte what the
field-by-field encoding of format 1 wrote, and records written that way still load."""

import io
import json

import numpy as np
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.batches import WRITE_ARRAYS, ShardWrite, UpdateBatch
from lifelong.distributed.client import UpdateBatch as ClientUpdateBatch
from lifelong.distributed.shard import ShardWrite as ShardShardWrite
from lifelong.streaming.commit import FORMAT_VERSION, CommitRecord
from lifelong.streaming.stats import StreamStats


def planned_batch(shards=3, steps=3):
    spec = MemorySpec(name="enc", key_dim=8, num_slots=40, num_values=10, shards=shards,
                      choose_k=5, age_noise=0.0, storage="unused")
    memory = ShardedMemory(spec, ShardedMemory.local(spec).shards, writer="stream:w")
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        _, batch = memory.predict_and_plan(torch.randn(6, 8, generator=gen),
                                           torch.randint(0, 10, (6,), generator=gen))
        memory.apply_update(batch)
    return batch


def legacy_record_bytes(record: CommitRecord) -> bytes:
    """Format 1 as commit.py wrote it before the encoding moved into distributed/."""
    names = ["refresh_slots", "refresh_q", "refresh_labels", "refresh_positions", "insert_q",
             "insert_labels", "insert_positions"]
    header = {"format_version": 1, "writer": record.writer, "seq": record.seq,
              "segment": record.segment, "row": record.row, "quarantine": None,
              "run_id": record.run_id, "meta": record.meta, "shards": len(record.batch.writes)}
    arrays = record.stats.to_arrays()
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    b = record.batch
    arrays.update({"batch.nearest": b.nearest, "batch.inserting": b.inserting,
                   "batch.target": b.target})
    for s, w in enumerate(b.writes):
        arrays.update({f"write{s}.{name}": getattr(w, name) for name in names})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def assert_batches_equal(a: UpdateBatch, b: UpdateBatch):
    assert a.seq == b.seq and len(a.writes) == len(b.writes)
    for name in ("nearest", "inserting", "target"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for wa, wb in zip(a.writes, b.writes):
        assert (wa.writer, wa.seq) == (wb.writer, wb.seq) and wa.digest() == wb.digest()
        for name in WRITE_ARRAYS:
            x, y = getattr(wa, name), getattr(wb, name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y)


def test_the_classes_are_the_ones_the_client_and_shard_use():
    assert ClientUpdateBatch is UpdateBatch and ShardShardWrite is ShardWrite
    assert WRITE_ARRAYS == ("refresh_slots", "refresh_q", "refresh_labels",
                            "refresh_positions", "insert_q", "insert_labels",
                            "insert_positions")


def test_to_arrays_from_arrays_round_trip():
    batch = planned_batch()
    arrays = batch.to_arrays()
    assert list(arrays)[:3] == ["batch.nearest", "batch.inserting", "batch.target"]
    assert len(arrays) == 3 + 3 * len(WRITE_ARRAYS)
    back = UpdateBatch.from_arrays(arrays, writer="stream:w", seq=batch.seq, shards=3)
    assert_batches_equal(batch, back)


def test_commit_record_bytes_are_format_1_and_legacy_records_load():
    assert FORMAT_VERSION == 1
    batch = planned_batch()
    record = CommitRecord(writer="stream:w", seq=batch.seq, segment=2, row=5,
                          stats=StreamStats.empty(10), batch=batch, run_id="r",
                          meta={"memory": "enc"})
    legacy = legacy_record_bytes(record)
    assert record.to_bytes() == legacy
    loaded = CommitRecord.from_bytes(legacy)
    assert_batches_equal(batch, loaded.batch)
    assert (loaded.writer, loaded.seq, loaded.segment, loaded.row) == ("stream:w", batch.seq, 2,
                                                                       5)
