"""The stream job as a real process against a Ray cluster (`ray start --head`, token auth on),
SIGKILLed at random points and started again each time: at the end the memory holds exactly
what an uninterrupted run over the same segments wrote, and the counts agree."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.models import build_encoder
from lifelong.streaming.commit import CommitStore
from lifelong.streaming.produce import ProduceSettings, produce
from lifelong.models.checkpoint import save_encoder

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray

KILLS = 4
COMPARE = """
import sys, ray, torch
from lifelong.distributed import attach
address, storage, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(address=address, namespace="lifelong", log_to_driver=False)
got, want = attach("killed", storage), attach("reference", storage)
a, b = got.state_dict(), want.state_dict()
for name in ("keys", "values", "ages", "recent_slots"):
    assert torch.equal(a[name], b[name]), name
count = lambda m, k: sum(s[k] for s in m.status())
for k in ("inserts", "refreshes", "updates"):
    assert count(got, k) == count(want, k), (k, count(got, k), count(want, k))
assert count(got, "inserts") + count(got, "refreshes") == total
print("identical:", {k: count(got, k) for k in ("inserts", "refreshes", "updates",
                                                 "duplicates")})
"""


def start_job(tmp_path, head, memory, source):
    env = {**head.env, "RAY_ADDRESS": head.gcs}
    cmd = [sys.executable, str(REPO / "jobs" / "stream.py"), "--no-progress",
           "--source", str(source), "--checkpoint", str(tmp_path / "encoder.pt"),
           "stream.name=kill-test", "stream.batch_size=8", "stream.idle_timeout_s=0",
           "stream.poll_s=0.05", "stream.log_every=200", f"shared_memory.name={memory}",
           f"shared_memory.storage={tmp_path / 'memories'}", "shared_memory.num_slots=1024",
           "shared_memory.num_values=160", "shared_memory.shards=2", "memory.choose_k=32",
           "tracking.enabled=false", "threads=1"]
    log = open(tmp_path / f"{memory}.log", "ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def applied(tmp_path, memory) -> int:
    state = tmp_path / "memories" / memory / "streams" / "kill-test"
    if not (state / "commit.npz").exists():
        return -1
    return CommitStore(str(state)).load().stats.examples


def test_killed_and_restarted_stream_job_applies_every_example_once(ray_head, tmp_path):
    torch.manual_seed(0)
    save_encoder(tmp_path / "encoder.pt", build_encoder("tiny", key_dim=16, dropout=0.0),
                 encoder_name="tiny", key_dim=16, dropout=0.0)
    images = ((np.random.default_rng(0).random((40, 20, 28, 28)) < 0.2) * 255).astype(np.uint8)
    source = tmp_path / "segments"
    total = 2400
    list(produce(str(source), images, ProduceSettings(examples=total, rows_per_segment=100),
                 progress=False))

    reference = start_job(tmp_path, ray_head, "reference", source)
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    rng = np.random.default_rng(0)
    thresholds = np.sort(rng.choice(np.arange(1, total - 200), KILLS, replace=False))
    kills = []
    for threshold in thresholds:
        job = start_job(tmp_path, ray_head, "killed", source)
        while applied(tmp_path, "killed") < threshold and job.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.02))  # anywhere inside a batch
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
        kills.append(applied(tmp_path, "killed"))
    job = start_job(tmp_path, ray_head, "killed", source)
    log = (tmp_path / "killed.log")
    assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert all(0 < k < total for k in kills), kills  # each kill hit the middle of the run
    assert log.read_text().count("resuming at segment") == KILLS

    # The memories compared by a client of the cluster (a fresh process: Ray reads the auth
    # token when it is first loaded).
    check = subprocess.run([sys.executable, "-c", COMPARE, ray_head.gcs,
                            str(tmp_path / "memories"), str(total)],
                           env=ray_head.env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "identical" in check.stdout
    s_got = CommitStore(str(tmp_path / "memories/killed/streams/kill-test")).load().stats
    s_want = CommitStore(str(tmp_path / "memories/reference/streams/kill-test")).load().stats
    assert s_got.examples == s_want.examples == total
    for name in ("seen", "shot_total", "shot_correct", "ring", "history_total"):
        np.testing.assert_array_equal(getattr(s_got, name), getattr(s_want, name))
