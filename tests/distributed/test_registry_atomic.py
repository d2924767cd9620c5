"""Creating and attaching named memories on a real local Ray (issue 15, items 14 and 17):
creation is all or nothing, and a shard that cannot start from its files gives a typed error
(one line from the CLI)."""

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory, create_memory, delete_memory, registry
from lifelong.distributed.actor import NAMESPACE, actor_name
from lifelong.errors import CorruptStateError, ShardUnavailableError

pytestmark = pytest.mark.ray


def spec_at(tmp_path, name="atomic", **kw):
    base = dict(name=name, key_dim=8, num_slots=20, num_values=5, shards=2, choose_k=4,
                age_noise=0.0, storage=str(tmp_path), num_cpus=0.5)
    base.update(kw)
    return MemorySpec(**base)


def running(ray, name, shards=2):
    alive = []
    for i in range(shards):
        try:
            ray.get_actor(actor_name(name, i), namespace=NAMESPACE)
            alive.append(i)
        except ValueError:
            pass
    return alive


def test_a_create_whose_shards_cannot_be_placed_leaves_nothing_and_a_second_create_works(
        ray_local, tmp_path):
    ray = ray_local
    with pytest.raises(ShardUnavailableError, match="did not start"):
        create_memory(spec_at(tmp_path, num_cpus=64), timeout_s=3)
    assert not (tmp_path / "atomic").exists()
    assert running(ray, "atomic") == []
    memory = create_memory(spec_at(tmp_path))
    memory.query(torch.eye(8)[:2], torch.tensor([1, 2]))
    assert memory.occupancy() == 2
    assert registry.read_spec("atomic", str(tmp_path)).num_cpus == 0.5
    delete_memory("atomic", str(tmp_path))


def test_attach_to_a_corrupt_shard_is_one_cli_line_naming_the_file(ray_local, tmp_path,
                                                                   capsys):
    from lifelong.cli import main

    spec = spec_at(tmp_path, name="broken", snapshot_every=2)
    fs, path = registry._manifest_path(str(tmp_path), "broken")
    registry._create_manifest(fs, path, spec.to_json(), spec)
    local = ShardedMemory.local(spec, durable=True)
    for i in range(3):
        local.query(torch.eye(8)[i:i + 2] + 0.1, torch.tensor([i, i + 1]))
    snap = next((tmp_path / "broken" / "shard-000").glob("snapshot-*.parquet"))
    data = snap.read_bytes()[: snap.stat().st_size // 2]
    snap.write_bytes(data)  # torn: the footer is gone
    with pytest.raises(CorruptStateError, match=snap.name):
        registry.attach("broken", str(tmp_path), timeout_s=60)
    code = main(["memory", "--storage", str(tmp_path), "status", "broken"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: CorruptStateError") and snap.name in lines[0]
    assert np.frombuffer(snap.read_bytes(), np.uint8).size == len(data)  # left as found


def test_a_copy_of_a_running_memory_never_reaches_the_original(ray_local, tmp_path):
    import shutil

    from lifelong.distributed import attach
    from lifelong.errors import MemoryExistsError

    original = tmp_path / "a"
    memory = create_memory(spec_at(original, name="twin"))
    memory.query(torch.eye(8)[:3], torch.tensor([0, 1, 2]))
    memory.shards.call("snapshot", [()] * 2)
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    with pytest.raises(MemoryExistsError, match="running from"):
        attach("twin", str(copy), timeout_s=60)
    delete_memory("twin", str(copy))  # the copy's files only; the original's shards run on
    assert not (copy / "twin").exists() and (original / "twin" / "memory.json").exists()
    assert running(ray_local, "twin") == [0, 1]
    assert attach("twin", str(original)).occupancy() == 3
    delete_memory("twin", str(original))
    assert running(ray_local, "twin") == []
