"""Recovery of shard actors on a real local Ray (issue 15, item 2): a shard whose log ends in a
torn frame restarts and serves, the frame dropped and counted; one whose log is damaged in the
middle stops with a typed CorruptStateError naming the file, not an untyped ActorDiedError."""

import time

import pytest
import torch

from lifelong.distributed import MemorySpec, create_memory, delete_memory
from lifelong.distributed.actor import NAMESPACE, actor_name
from lifelong.errors import CorruptStateError, ShardUnavailableError

pytestmark = pytest.mark.ray


def spec_at(tmp_path, name):
    return MemorySpec(name=name, key_dim=8, num_slots=40, num_values=10, shards=2, choose_k=4,
                      age_noise=0.0, storage=str(tmp_path), snapshot_every=1000, num_cpus=0.5)


def written(name, tmp_path):
    memory = create_memory(spec_at(tmp_path, name))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        memory.query(torch.randn(4, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
    return memory, tmp_path / name / "shard-001" / "log-00000000.bin"


def restart_shard(ray, name, index):
    """Kills the shard's actor process; Ray restarts it, and it rebuilds from its files."""
    handle = ray.get_actor(actor_name(name, index), namespace=NAMESPACE)
    pid = ray.get(handle.status.remote())["pid"]
    ray.kill(handle, no_restart=False)
    return pid


def restarted_status(memory, index, old_pid):
    """The shard's status once its restarted process answers (ray.kill returns at once)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            status = memory.status()[index]
        except ShardUnavailableError:
            status = None
        if status is not None and status["pid"] != old_pid:
            return status
        time.sleep(0.2)
    pytest.fail("the shard was not restarted")


def test_a_shard_whose_log_ends_in_a_torn_frame_restarts_and_serves(ray_local, tmp_path):
    memory, log = written("torn", tmp_path)
    before = memory.state_dict()
    with open(log, "ab") as fh:  # what a crash in the middle of an append leaves
        fh.write(log.read_bytes()[:40])
    status = restarted_status(memory, 1, restart_shard(ray_local, "torn", 1))
    assert status["torn_frames"] == 1 and status["replayed"] == 3
    after = memory.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    memory.query(torch.eye(8)[:2], torch.tensor([1, 2]))  # and it takes writes again
    assert memory.status()[1]["clock"] == 4
    delete_memory("torn", str(tmp_path))


def test_a_shard_whose_log_is_damaged_in_the_middle_raises_a_typed_error(ray_local, tmp_path):
    memory, log = written("damaged", tmp_path)
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    old_pid = restart_shard(ray_local, "damaged", 1)
    with pytest.raises(CorruptStateError, match="shard-001/log-00000000.bin"):
        restarted_status(memory, 1, old_pid)  # status reads only: nothing is written
    with pytest.raises(CorruptStateError, match="shard-001/log-00000000.bin"):
        memory.query(torch.eye(8)[:2], torch.tensor([1, 2]))
    assert log.read_bytes() == bytes(data)  # left as found, for a person to look at
