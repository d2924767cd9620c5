"""A shard with the approximate (IVF) index killed with SIGKILL mid-stream comes back with the
same answers to the same queries (issue 17 item 1): restored from its snapshot, the index saved
beside it and the log written after it."""

import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from lifelong.distributed import MemorySpec, create_memory

pytestmark = pytest.mark.ray

D = 16


def test_killed_ivf_shard_answers_the_same_after_its_restart(ray_local, tmp_path):
    spec = MemorySpec(name="ivf-kill", key_dim=D, num_slots=2400, num_values=800, shards=2,
                      choose_k=8, age_noise=0.0, storage=str(tmp_path), snapshot_every=10,
                      num_cpus=1, search="ivf", nlist=8, nprobe=2)
    mem = create_memory(spec, timeout_s=120)
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(800, D, generator=gen), dim=1)
    for step in range(45):  # 720 new labels, all inserts: trained at 312 filled per shard
        labels = torch.arange(16) + 16 * step
        mem.query(centres[labels] + 0.3 * torch.randn(16, D, generator=gen) / D ** 0.5, labels)
    status = mem.status()[0]
    assert status["search"]["trained"], status
    q = F.normalize(torch.randn(64, D, generator=gen), dim=1)
    before = mem.query(q)
    pid = status["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 120
    while True:
        try:
            status = mem.status()[0]
            break
        except Exception:  # noqa: BLE001 - unavailable while Ray restarts it
            assert time.time() < deadline
            time.sleep(0.5)
    assert status["pid"] != pid and status["replayed"] > 0  # restarted: snapshot + log
    assert status["search"]["trained"] and status["search"]["refused"] == 0
    after = mem.query(q)
    assert torch.equal(before.slots, after.slots)
    assert torch.equal(before.similarities, after.similarities)
