"""Ray Train: two workers train against a named 2-shard memory; a worker that dies mid-run is
restarted and the run resumes from its checkpoint; a run started again under the same name
resumes; rank 0 alone logs to MLflow."""

import json

import pytest
import torch

from lifelong.config import load_config
from lifelong.data import load_omniglot
from lifelong.errors import DataError
from lifelong.experiments.omniglot.config import OmniglotTrainJob

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def background():
    try:
        return load_omniglot("background", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Omniglot data not available (set LIFELONG_DATA_DIR): {exc}")


def tiny_job(tmp_path, *overrides):
    return load_config(OmniglotTrainJob, None, [
        "model.encoder=tiny", "model.key_dim=32", "train.way=5", "train.presentations=2",
        "train.episodes_per_batch=2", "train.steps=4", "train.checkpoint_every=2",
        "train.log_every=1", "train.validation_characters=0", "train.val_every=0",
        "train.threads=1", "ray.enabled=true", "ray.num_workers=2", "ray.cpus_per_worker=1",
        "train.mode=lifelong", "shared_memory.num_slots=512", "shared_memory.shards=2",
        f"shared_memory.storage={tmp_path / 'memories'}", "memory.choose_k=16",
        f"output_dir={tmp_path / 'out'}", "tracking.enabled=false", *overrides])


def open_run(tmp_path):
    from lifelong.tracking import TrackedRun

    return TrackedRun("ray-train-test", f"sqlite:///{tmp_path / 'mlruns.db'}")


def metric_steps(run, name):
    return [m.step for m in run.client.get_metric_history(run.run_id, name)]


def test_two_workers_train_against_the_shared_memory(background, ray_local, tmp_path):
    from lifelong.distributed import attach
    from lifelong.models.checkpoint import load_encoder
    from lifelong.experiments.omniglot.on_ray import train_on_ray

    job = tiny_job(tmp_path)
    run = open_run(tmp_path)
    result = train_on_ray(job, run.run_id, run.tracking_uri, progress=False)
    assert result.steps == 4
    encoder, meta = load_encoder(result.checkpoint)
    assert meta["extra"]["step"] == 4
    assert encoder(torch.zeros(3, 1, 28, 28)).shape == (3, 32)
    # Both workers wrote into the one memory: 4 steps x 2 workers x 10 queries, each an insert
    # or a refresh; the shards' clocks count one update batch per query of either worker.
    memory = attach("omniglot-lifelong", str(tmp_path / "memories"))
    assert memory.occupancy() > 0
    assert sum(s["clock"] for s in memory.status()) == 2 * 4 * 2 * 10
    # The result names the memory for the run's tags: name, location, each shard's snapshot.
    assert result.memory_tags["lifelong.memory"] == "omniglot-lifelong"
    assert len(json.loads(result.memory_tags["lifelong.memory.snapshot_generation"])) == \
        memory.spec.shards
    # Rank 0 alone logs: one value per step, not one per worker.
    assert metric_steps(run, "train.loss") == [1, 2, 3, 4]


def test_a_dead_worker_is_restarted_and_resumes_from_its_checkpoint(background, ray_local,
                                                                    tmp_path, monkeypatch):
    from lifelong.experiments.omniglot.on_ray import train_on_ray
    from lifelong.runtime import ray_train

    marker = tmp_path / "died"
    # Workers inherit the environment of the raylet, which this process started.
    monkeypatch.setenv(ray_train.FAULT_STEP_ENV, "2")
    monkeypatch.setenv(ray_train.FAULT_MARKER_ENV, str(marker))
    job = tiny_job(tmp_path, "ray.max_failures=1", "train.mode=episodic")
    run = open_run(tmp_path)
    result = train_on_ray(job, run.run_id, run.tracking_uri, progress=False)
    assert marker.exists(), "the fault was not injected"
    assert result.steps == 4
    resumed = run.client.get_metric_history(run.run_id, "train.resumed_at_step")
    assert [m.value for m in resumed] == [2.0]
    # Steps 1-2 logged before the crash, 3-4 after the resume; none repeated.
    assert sorted(set(metric_steps(run, "train.loss"))) == [1, 2, 3, 4]


def test_a_run_started_again_under_its_name_resumes(background, ray_local, tmp_path):
    from lifelong.experiments.omniglot.on_ray import train_on_ray

    first = train_on_ray(tiny_job(tmp_path, "train.mode=episodic", "ray.num_workers=1",
                                  "ray.run_name=resumable"), None, None, progress=False)
    assert first.steps == 4
    run = open_run(tmp_path)
    again = train_on_ray(tiny_job(tmp_path, "train.mode=episodic", "ray.num_workers=1",
                                  "ray.run_name=resumable", "train.steps=6"), run.run_id,
                         run.tracking_uri,
                         progress=False)
    assert again.steps == 6
    resumed = run.client.get_metric_history(run.run_id, "train.resumed_at_step")
    assert [m.value for m in resumed] == [4.0]
    assert metric_steps(run, "train.loss") == [5, 6]


def test_a_restarted_worker_group_resumes_its_writers_and_applies_redone_steps_once(
        background, ray_local, tmp_path, monkeypatch):
    from lifelong.distributed import attach
    from lifelong.experiments.omniglot.on_ray import train_on_ray
    from lifelong.runtime import ray_train

    marker = tmp_path / "died"
    # Rank 0 exits as step 4 starts: step 3 (after the checkpoint at step 2) is redone.
    monkeypatch.setenv(ray_train.FAULT_BEFORE_STEP_ENV, "4")
    monkeypatch.setenv(ray_train.FAULT_MARKER_ENV, str(marker))
    result = train_on_ray(tiny_job(tmp_path, "ray.max_failures=1"), None, None, progress=False)
    assert marker.exists(), "the fault was not injected"
    assert result.steps == 4
    # As without the restart: 4 steps x 2 workers x 10 update batches, on each of 2 shards,
    # each applied once. Step 3's batches, redone by the resumed writers, were recognised and
    # not applied again, except each rank's last one: pipelined, it was still waiting in the
    # client for step 4's search when the group died, so the redo is its first application.
    memory = attach("omniglot-lifelong", str(tmp_path / "memories"))
    assert sum(s["clock"] for s in memory.status()) == 2 * 4 * 2 * 10
    assert sum(s["duplicates"] for s in memory.status()) == 2 * (10 - 1) * 2
