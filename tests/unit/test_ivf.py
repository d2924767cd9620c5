"""The approximate inverted-file search (lifelong.memory.ivf, issue 17 item 1): exact when it
probes every cell or cannot be trained yet, consistent with every write, deterministic,
persisted with a shard's snapshot and restored to the same answers after a restart."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.client import LocalShards
from lifelong.distributed.registry import ensure_memory
from lifelong.distributed.shard import MemoryShard
from lifelong.errors import ConfigError
from lifelong.memory import Memory, MemoryConfig
from lifelong.memory.ivf import IVFSearch
from lifelong.memory.ivf_lists import EMPTY
from lifelong.memory.search import ExactSearch

D = 16


def clustered(n, d=D, centres=40, noise=0.3, seed=0):
    """[n, d] unit keys around ``centres`` random centres (like embeddings of classes)."""
    gen = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, d, generator=gen), dim=1)
    which = torch.randint(0, centres, (n,), generator=gen)
    return F.normalize(c[which] + noise * torch.randn(n, d, generator=gen) / d ** 0.5, dim=1)


def loaded(n, ivf, filled=None, key_dtype="float32", seed=0):
    """A memory of n slots holding clustered keys in its first ``filled`` slots."""
    filled = n if filled is None else filled
    mem = Memory(key_dim=D, num_slots=n, num_values=50, choose_k=10, age_noise=0.0,
                 search=ivf, key_dtype=key_dtype)
    state = mem.state_dict()
    state["keys"] = clustered(n, seed=seed).to(mem.keys.dtype)
    state["values"] = torch.where(torch.arange(n) < filled,
                                  torch.randint(0, 50, (n,), generator=torch.Generator()), -1)
    state["ages"] = torch.zeros(n, dtype=torch.int64)
    mem.load_state_dict(state)
    return mem


def queries(b, seed=1):
    return F.normalize(torch.randn(b, D, generator=torch.Generator().manual_seed(seed)), dim=1)


def check_consistent(ivf, mem):
    """The lists equal a fresh assignment of the current keys to the current centroids."""
    lists, filled = ivf.lists, (mem.values >= 0).numpy()
    assert np.array_equal(lists.assign != EMPTY, filled)
    ids = np.flatnonzero(filled)
    assert np.array_equal(lists.assign[ids], ivf._nearest(mem.keys[torch.from_numpy(ids)]))
    members = np.concatenate([lists.members(c) for c in range(ivf.nlist)])
    assert sorted(members.tolist()) == ids.tolist()
    for c in range(ivf.nlist):
        assert (lists.assign[lists.members(c)] == c).all()
        assert (lists.pos[lists.members(c)] == lists.start[c] + np.arange(lists.length[c])).all()


@pytest.mark.parametrize("batch", [1, 5, 16, 40])
def test_probing_every_cell_is_the_exact_search(batch):
    ivf = IVFSearch(nlist=8, nprobe=8)
    mem = loaded(3000, ivf)
    q = queries(batch)
    sims, slots = ivf.search(q, mem.keys, mem.values, 10)
    assert ivf.trained
    ref_sims, ref_slots = ExactSearch().search(q, mem.keys, mem.values, 10)
    assert torch.equal(slots, ref_slots)
    torch.testing.assert_close(sims, ref_sims)


def test_compact_keys_take_the_torch_scan_and_match_the_exact_search():
    ivf = IVFSearch(nlist=8, nprobe=8)
    mem = loaded(3000, ivf, key_dtype="bfloat16")
    q = queries(7)
    sims, slots = ivf.search(q, mem.keys, mem.values, 10)
    ref_sims, ref_slots = ExactSearch().search(q, mem.keys, mem.values, 10)
    assert torch.equal(slots, ref_slots)
    torch.testing.assert_close(sims, ref_sims)


def test_too_few_keys_to_train_answers_exactly():
    ivf = IVFSearch(nlist=64, nprobe=1)  # trains at 39 x 64 = 2496 filled slots
    mem = loaded(4000, ivf, filled=2000)
    q = queries(6)
    sims, slots = ivf.search(q, mem.keys, mem.values, 10)
    assert not ivf.trained
    ref = ExactSearch().search(q, mem.keys, mem.values, 10)
    assert torch.equal(slots, ref[1]) and torch.equal(sims, ref[0])


def test_empty_slots_are_never_returned_and_short_answers_are_padded():
    ivf = IVFSearch(nlist=4, nprobe=1, train_per_list=10)
    mem = loaded(400, ivf, filled=60)
    sims, slots = ivf.search(queries(8), mem.keys, mem.values, 50)
    assert ivf.trained
    finite = torch.isfinite(sims)
    assert (mem.values[slots[finite]] >= 0).all()
    assert (~finite).any()  # one cell of 60 keys cannot hold 50 for every query


def test_the_index_follows_every_refresh_insert_and_overwrite():
    ivf = IVFSearch(nlist=8, nprobe=2, train_per_list=10)
    mem = Memory(key_dim=D, num_slots=600, num_values=300, choose_k=8, age_noise=2.0,
                 search=ivf, seed=3)
    gen = torch.Generator().manual_seed(5)
    centres = clustered(300, seed=9)
    for step in range(150):  # fills, trains (80 filled), retrains (~160, ~320), overwrites
        labels = torch.randint(0, 300, (12,), generator=gen)
        q = centres[labels] + 0.4 * torch.randn(12, D, generator=gen) / D ** 0.5
        out = mem.query(q, labels)
        assert (mem.values[out.slots[torch.isfinite(out.similarities)]] >= 0).all()
    assert ivf.trainings >= 2 and mem.occupancy() == 600, (ivf.trainings, mem.occupancy())
    check_consistent(ivf, mem)


def test_training_is_a_deterministic_function_of_the_writes():
    def run():
        ivf = IVFSearch(nlist=8, nprobe=2, train_per_list=10)
        mem = Memory(key_dim=D, num_slots=500, num_values=30, choose_k=8, age_noise=0.0,
                     search=ivf)
        gen = torch.Generator().manual_seed(7)
        for _ in range(40):
            mem.query(torch.randn(10, D, generator=gen), torch.randint(0, 30, (10,),
                                                                       generator=gen))
        return ivf, mem

    (a, ma), (b, mb) = run(), run()
    assert torch.equal(a.centroids, b.centroids)
    assert np.array_equal(a.lists.assign, b.lists.assign)
    q = queries(9)
    assert torch.equal(a.search(q, ma.keys, ma.values, 8)[1], b.search(q, mb.keys, mb.values, 8)[1])


def test_exported_state_restores_the_same_answers_and_a_damaged_one_is_refused():
    ivf = IVFSearch(nlist=8, nprobe=2)
    mem = loaded(3000, ivf)
    q = queries(12)
    before = ivf.search(q, mem.keys, mem.values, 10)
    data = ivf.export_state(mem.keys)
    other = IVFSearch(nlist=8, nprobe=2)
    assert other.import_state(data, mem.keys, mem.values)
    after = other.search(q, mem.keys, mem.values, 10)
    assert torch.equal(before[1], after[1]) and torch.equal(before[0], after[0])
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 1
    assert not IVFSearch(nlist=8, nprobe=2).import_state(bytes(damaged), mem.keys, mem.values)
    assert not IVFSearch(nlist=16, nprobe=2).import_state(data, mem.keys, mem.values)
    assert not IVFSearch(nlist=8).import_state(b"", mem.keys, mem.values)
    emptier = mem.values.clone()
    emptier[0] = -1  # the cells no longer fit the filled slots
    assert not IVFSearch(nlist=8).import_state(data, mem.keys, emptier)


# ------------------------------------------------------------------------ config and spec
def test_config_validates_the_search_choice():
    assert isinstance(MemoryConfig(search="ivf", nlist=4, nprobe=2).make_search(), IVFSearch)
    assert isinstance(MemoryConfig().make_search(), ExactSearch)
    for bad, key in ((dict(search="hnsw"), "search"), (dict(nlist=0), "nlist"),
                     (dict(nprobe=0), "nprobe"), (dict(nlist=4, nprobe=5), "nprobe"),
                     (dict(nlist=True), "nlist")):
        with pytest.raises(ConfigError) as err:
            MemoryConfig(**bad)
        assert err.value.key == key
    mem = MemoryConfig(search="ivf", nlist=4, nprobe=3).build(key_dim=4, num_slots=10,
                                                            num_values=2)
    assert MemoryConfig.of(mem).search == "ivf" and MemoryConfig.of(mem).nprobe == 3


def spec_at(path, **kw):
    base = dict(name="ivf", key_dim=D, num_slots=1200, num_values=400, shards=2, choose_k=6,
                age_noise=0.0, storage=str(path), snapshot_every=1000, search="ivf", nlist=4,
                nprobe=1)
    base.update(kw)
    return MemorySpec(**base)


def test_spec_carries_the_search_through_its_json_and_old_manifests_are_exact(tmp_path):
    spec = spec_at(tmp_path)
    assert MemorySpec.from_json(spec.to_json()) == spec
    old = json.loads(spec.to_json())
    for key in ("search", "nlist", "nprobe"):
        del old[key]
    assert MemorySpec.from_json(json.dumps(old)).search == "exact"


def test_a_search_change_on_an_existing_memory_is_refused(tmp_path):
    spec = spec_at(tmp_path)
    folder = tmp_path / spec.name
    folder.mkdir()
    (folder / "memory.json").write_text(spec.to_json())  # an existing memory, no Ray needed
    assert ensure_memory(spec) == spec
    for change in (dict(search="exact"), dict(nlist=8), dict(nprobe=2)):
        with pytest.raises(ConfigError, match="recreate") as err:
            ensure_memory(dataclasses.replace(spec, **change))
        assert err.value.key == "search"


# ----------------------------------------------------------------------- durable shards
def stream(mem, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = clustered(400, seed=11)
    for _ in range(steps):
        labels = torch.randint(0, 400, (16,), generator=gen)
        mem.query(centres[labels] + 0.5 * torch.randn(16, D, generator=gen) / D ** 0.5, labels)


def opened(spec):
    return ShardedMemory(spec, LocalShards([MemoryShard(spec, i) for i in range(spec.shards)]))


def answers(mem):
    out = mem.query(queries(32, seed=4))
    return out.slots, out.similarities


@pytest.mark.parametrize("snapshot_every", [5, 1000])  # trained before / after the snapshot
def test_a_durable_shard_killed_mid_stream_comes_back_with_the_same_answers(tmp_path,
                                                                         snapshot_every):
    spec = spec_at(tmp_path, snapshot_every=snapshot_every)
    mem = opened(spec)
    stream(mem, 30, seed=1)  # 480 writes over 2 shards of 600: trained (156 filled) mid-stream
    searches = [s.memory.search for s in mem.shards.shards]
    assert all(s.trained for s in searches), [s.describe() for s in searches]
    before = answers(mem)
    again = opened(spec)  # the first is abandoned as a killed process leaves it
    restored = [s.memory.search for s in again.shards.shards]
    assert all(s.trained for s in restored)
    if snapshot_every == 5:  # restored from the persisted index, not retrained
        assert list((tmp_path / "ivf" / "shard-000").glob("index-*.bin"))
        assert all(s.rebuilds == 0 and s.trainings == 0 for s in restored)
    for a, b in zip(searches, restored):
        assert torch.equal(a.centroids, b.centroids)
        assert np.array_equal(a.lists.assign, b.lists.assign)
    after = answers(again)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert again.status()[0]["search"]["refused"] == 0


def test_a_corrupt_persisted_index_is_rebuilt_from_the_keys_never_trusted(tmp_path):
    spec = spec_at(tmp_path, snapshot_every=5)
    mem = opened(spec)
    stream(mem, 30, seed=2)
    index = sorted((tmp_path / "ivf" / "shard-000").glob("index-*.bin"))[-1]
    data = bytearray(index.read_bytes())
    data[40] ^= 0xFF
    index.write_bytes(bytes(data))
    again = opened(spec)
    status = again.status()[0]["search"]
    assert status["refused"] == 1
    shard = again.shards.shards[0]
    out = again.query(queries(8))  # answers from an index rebuilt from the keys
    assert status["trained"] or shard.memory.search.trained
    check_consistent(shard.memory.search, shard.memory)
    assert (out.values >= 0).all()
