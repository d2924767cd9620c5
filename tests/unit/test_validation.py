"""Bad input and bad files (issue 15, items 9, 10, 12, 13, 15, 17): a typed error, nothing
changed, and from the CLI one line and exit code 2."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from lifelong.cli import main as cli_main
from lifelong.distributed import MemorySpec, ShardedMemory, registry
from lifelong.distributed.batches import ShardWrite, UpdateBatch
from lifelong.distributed.shard import MemoryShard
from lifelong.distributed.spec import check_name
from lifelong.errors import (ConfigError, CorruptStateError, InvalidLabelError,
                             InvalidQueryError, MemoryNameError, MemoryStateError)
from lifelong.memory import Memory
from lifelong.streaming.config import StreamSettings

D, N, V = 8, 24, 5


def make_spec(tmp_path=None, **kw):
    args = dict(name="val", key_dim=D, num_slots=N, num_values=V, shards=2, age_noise=0.0,
                choose_k=4, storage=str(tmp_path) if tmp_path else "unused",
                snapshot_every=1000)
    args.update(kw)
    return MemorySpec(**args)


def good_write(seq=1, labels=(1, 2), refresh_slots=(), positions=None):
    labels = np.asarray(labels, np.int64)
    q = np.eye(D, dtype=np.float32)[: len(labels)]
    r = np.asarray(refresh_slots, np.int64)
    return ShardWrite(writer="w", seq=seq, refresh_slots=r,
                      refresh_q=np.eye(D, dtype=np.float32)[: len(r)],
                      refresh_labels=np.ones(len(r), np.int64),
                      refresh_positions=np.arange(len(r), dtype=np.int64),
                      insert_q=q, insert_labels=labels,
                      insert_positions=np.arange(len(r), len(r) + len(labels), dtype=np.int64)
                      if positions is None else np.asarray(positions, np.int64))


def dir_bytes(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


BAD_WRITES = {
    "label == num_values": (lambda w: dataclasses.replace(
        w, insert_labels=np.asarray([1, V], np.int64)), InvalidLabelError),
    "label -1": (lambda w: dataclasses.replace(
        w, insert_labels=np.asarray([-1, 1], np.int64)), InvalidLabelError),
    "float labels": (lambda w: dataclasses.replace(
        w, insert_labels=np.asarray([1.0, 2.0])), InvalidLabelError),
    "NaN query": (lambda w: dataclasses.replace(
        w, insert_q=np.where(np.eye(D, dtype=np.float32)[:2] > 0, np.nan, 0)
        .astype(np.float32)), InvalidQueryError),
    "wrong key size": (lambda w: dataclasses.replace(
        w, insert_q=np.zeros((2, D + 1), np.float32)), InvalidQueryError),
    "float64 query": (lambda w: dataclasses.replace(
        w, insert_q=w.insert_q.astype(np.float64)), InvalidQueryError),
    "labels of another length": (lambda w: dataclasses.replace(
        w, insert_labels=np.asarray([1], np.int64)), InvalidLabelError),
    "refresh slot of another shard": (lambda w: dataclasses.replace(
        w, refresh_slots=np.asarray([N - 1], np.int64), refresh_q=w.insert_q[:1],
        refresh_labels=np.asarray([1], np.int64),
        refresh_positions=np.asarray([5], np.int64)), MemoryStateError),
    "negative position": (lambda w: dataclasses.replace(
        w, insert_positions=np.asarray([-1, 0], np.int64)), MemoryStateError),
    "more inserts than slots": (lambda w: dataclasses.replace(
        w, insert_q=np.zeros((N, D), np.float32) + 1, insert_labels=np.ones(N, np.int64),
        insert_positions=np.arange(N, dtype=np.int64)), MemoryStateError),
    "seq 0 of a new writer": (lambda w: dataclasses.replace(w, writer="new", seq=0),
                              MemoryStateError),
    "empty writer id": (lambda w: dataclasses.replace(w, writer=""), MemoryStateError),
}


# ------------------------------------------------------------------------------------ item 9
@pytest.mark.parametrize("case", sorted(BAD_WRITES))
def test_a_shard_refuses_a_bad_write_before_logging_or_changing_anything(case, tmp_path):
    spec = make_spec(tmp_path)
    shard = MemoryShard(spec, 0)
    shard.apply(good_write(seq=1))
    before_state = shard.state()
    before_files = dir_bytes(tmp_path)
    before_writers = json.dumps(shard.writers, sort_keys=True)
    mutate, error = BAD_WRITES[case]
    with pytest.raises(error):
        shard.apply(mutate(good_write(seq=2)))
    assert dir_bytes(tmp_path) == before_files  # nothing logged
    for name, a in shard.state().items():
        np.testing.assert_array_equal(a, before_state[name], err_msg=name)
    assert json.dumps(shard.writers, sort_keys=True) == before_writers
    assert shard.status()["updates"] == 1
    # a restart replays only the good write and the shard goes on
    again = MemoryShard(spec, 0)
    assert again.status()["replayed"] == 1
    again.apply(good_write(seq=2, labels=(3, 4)))


def test_a_batch_without_one_write_per_shard_is_refused_and_nothing_is_sent():
    memory = ShardedMemory.local(make_spec())
    out, batch = memory.predict_and_plan(torch.eye(D)[:2], torch.tensor([1, 2]))
    short = UpdateBatch(seq=batch.seq, writes=batch.writes[:1], nearest=batch.nearest,
                        inserting=batch.inserting, target=batch.target)
    with pytest.raises(MemoryStateError, match="one write per shard"):
        memory.apply_update(short)
    assert memory.occupancy() == 0
    memory.apply_update(batch)
    assert memory.occupancy() == 2


# ----------------------------------------------------------------------------------- item 10
def _filled_pair():
    spec = make_spec(num_slots=N, shards=3)
    local = Memory(key_dim=D, num_slots=N, num_values=V, choose_k=4, age_noise=0.0)
    sharded = ShardedMemory.local(spec)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        q, y = torch.randn(4, D, generator=gen), torch.randint(0, V, (4,), generator=gen)
        local.query(q, y)
        sharded.query(q, y)
    return local, sharded


BAD_STATES = {
    "NaN ages": lambda s: {**s, "ages": s["ages"].float().index_fill(0, torch.tensor([0]),
                                                                     float("nan"))},
    "float values": lambda s: {**s, "values": s["values"].float()},
    "integer keys": lambda s: {**s, "keys": s["keys"].long()},
    "missing keys": lambda s: {k: v for k, v in s.items() if k != "keys"},
    "missing recent_slots": lambda s: {k: v for k, v in s.items() if k != "recent_slots"},
    "keys not a tensor": lambda s: {**s, "keys": s["keys"].tolist()},
    "values beyond num_values in the last shard": lambda s: {
        **s, "values": s["values"].index_fill(0, torch.tensor([N - 1]), V)},
    "extra key": lambda s: {**s, "extra": torch.zeros(2)},
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
@pytest.mark.parametrize("which", ["local", "sharded"])
def test_a_bad_state_dict_gives_memory_state_error_and_changes_nothing(case, which):
    local, sharded = _filled_pair()
    memory = local if which == "local" else sharded
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    source = {k: v.clone() for k, v in Memory(key_dim=D, num_slots=N, num_values=V)
              .state_dict().items()}
    with pytest.raises(MemoryStateError):
        memory.load_state_dict(BAD_STATES[case](source))
    after = memory.state_dict()
    assert set(after) == set(before)
    for name in before:
        assert torch.equal(after[name], before[name]), name


# ----------------------------------------------------------------------------------- item 12
@pytest.mark.parametrize("which", ["local", "sharded"])
@pytest.mark.parametrize("scale", [3e38, 1e-30])
def test_a_finite_extreme_query_is_stored_as_a_unit_key_and_found_again(which, scale):
    memory = Memory(key_dim=D, num_slots=N, num_values=V, choose_k=4, age_noise=0.0) \
        if which == "local" else ShardedMemory.local(make_spec())
    q = torch.zeros(1, D)
    q[0, 3] = scale
    q[0, 1] = scale / 4
    out = memory.query(q, torch.tensor([2]))
    keys = memory.state_dict()["keys"]
    slot = int(out.written_slots[0])
    assert torch.isfinite(keys).all()
    torch.testing.assert_close(keys[slot].norm(), torch.tensor(1.0))
    expected = torch.nn.functional.normalize(torch.tensor([[0, 0.25, 0, 1.0] + [0] * (D - 4)]))
    torch.testing.assert_close(keys[slot], expected[0])
    again = memory.query(q, update=False)
    assert int(again.values[0]) == 2 and int(again.slots[0, 0]) == slot


def test_a_huge_query_has_a_finite_gradient():
    memory = Memory(key_dim=D, num_slots=N, num_values=V, choose_k=4, age_noise=0.0)
    memory.query(torch.eye(D)[:2], torch.tensor([1, 2]))
    q = (torch.eye(D)[:1] * 3e38).requires_grad_(True)
    memory.query(q, torch.tensor([1])).loss.backward()
    assert torch.isfinite(q.grad).all()


# ----------------------------------------------------------------------------------- item 15
@pytest.mark.parametrize("name", ["ok\n", "ok\r\n", "\nok", "ok\x00", "ok/..", ""])
def test_a_name_with_a_trailing_newline_or_control_character_is_refused(name):
    with pytest.raises(MemoryNameError):
        check_name(name)
    with pytest.raises(ConfigError):
        StreamSettings(name=name)
    assert check_name("ok") == "ok"


# ----------------------------------------------------------------------------------- item 13
def _make_stored(tmp_path, name="val"):
    """A memory folder written by a shard, without Ray: manifest plus shard files."""
    storage = tmp_path / "a"
    spec = make_spec(storage, name=name)
    fs, path = registry._manifest_path(str(storage), name)
    registry._create_manifest(fs, path, spec.to_json(), spec)
    memory = ShardedMemory.local(spec, durable=True)
    memory.query(torch.eye(D)[:3], torch.tensor([0, 1, 2]))
    return storage, spec


def test_a_copied_memory_uses_the_copy_and_deleting_it_leaves_the_original(tmp_path,
                                                                            monkeypatch):
    storage, spec = _make_stored(tmp_path)
    copy = tmp_path / "b"
    shutil.copytree(storage, copy)
    original = dir_bytes(storage)
    read = registry.read_spec("val", str(copy))
    assert read.storage == str(copy) and read.location == f"{copy}/val"
    # the copy's shards read and write the copy
    copied = ShardedMemory.local(read, durable=True)
    assert copied.occupancy() == 3
    copied.query(torch.eye(D)[3:5], torch.tensor([3, 4]))
    assert dir_bytes(storage) == original
    monkeypatch.setattr(registry, "ensure_ray", lambda address=None: None)
    monkeypatch.setattr(registry, "_stop_shards", lambda spec: None)
    registry.delete_memory("val", str(copy))
    assert not (copy / "val").exists()
    assert dir_bytes(storage) == original
    assert ShardedMemory.local(registry.read_spec("val", str(storage)),
                               durable=True).occupancy() == 3


def test_a_manifest_whose_name_is_not_its_folders_is_refused(tmp_path):
    storage, _ = _make_stored(tmp_path)
    (storage / "val").rename(storage / "other")
    with pytest.raises(CorruptStateError, match="'val'.*'other'"):
        registry.read_spec("other", str(storage))


# ----------------------------------------------------------------------- items 14 (no Ray)
def test_the_manifest_is_created_exclusively_under_a_race(tmp_path):
    import threading

    spec = make_spec(tmp_path)
    fs, path = registry._manifest_path(str(tmp_path), "val")
    results, barrier = [], threading.Barrier(8)

    def create(i):
        barrier.wait()
        try:
            registry._create_manifest(fs, path, dataclasses.replace(spec, seed=i).to_json(),
                                      spec)
            results.append(i)
        except Exception as exc:  # noqa: BLE001
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, int)]
    assert len(winners) == 1 and results.count("MemoryExistsError") == 7
    assert registry.read_spec("val", str(tmp_path)).seed == winners[0]
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["memory.json"]


# ----------------------------------------------------------------------------------- item 17
def _one_error_line(capsys, argv, *expected):
    code = cli_main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for text in expected:
        assert text in lines[0]
    return lines[0]


def test_the_cli_refuses_absurd_sizes_in_one_line_before_allocating(capsys, tmp_path,
                                                                    monkeypatch):
    started = []
    monkeypatch.setattr(registry, "ensure_ray", lambda address=None: started.append(1))
    _one_error_line(capsys, ["memory", "--storage", str(tmp_path), "create", "big",
                             "--slots", "2147483647", "--key-dim", "1000000", "--values", "10"],
                    "ConfigError", "GiB")
    assert not started and list(tmp_path.iterdir()) == []


def test_the_cli_names_a_corrupt_manifest_in_one_line(capsys, tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "memory.json").write_text('{"name": "val", "key_dim": ')
    line = _one_error_line(capsys, ["memory", "--storage", str(tmp_path), "status", "val"],
                           "CorruptStateError", "memory.json")
    assert str(tmp_path) in line
    (tmp_path / "val" / "memory.json").write_bytes(b"\xff\xfe garbage")
    _one_error_line(capsys, ["memory", "--storage", str(tmp_path), "delete", "val", "--yes"],
                    "CorruptStateError")
    (tmp_path / "val" / "memory.json").write_text(json.dumps({"name": "val"}))
    _one_error_line(capsys, ["memory", "--storage", str(tmp_path), "status", "val"],
                    "CorruptStateError")
    assert (tmp_path / "val" / "memory.json").exists()


def test_the_cli_lists_a_file_as_storage_in_one_line(capsys, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    _one_error_line(capsys, ["memory", "--storage", str(path), "list"], "is a file")
    assert path.read_text() == "not a folder"
