"""The translator on Ray Train: 2 workers (DDP) against one shared 2-shard memory, both writing
into it, rank 0 logging to MLflow; the driver writes a translator whose memory holds the shared
memory's contents and that translates deterministically."""

import pytest
import torch

from lifelong.config import config_from_dict
from lifelong.data import load_multi30k
from lifelong.errors import DataError

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # Ray Train start-up: minutes here


def test_two_workers_train_against_the_shared_memory(ray_local, tmp_path):
    try:
        load_multi30k("train", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Multi30k not available (set LIFELONG_DATA_DIR): {exc}")
    from lifelong.distributed import attach
    from lifelong.experiments.translation.config import TranslationJob
    from lifelong.models.checkpoint import TranslationModel
    from lifelong.experiments.translation.evaluate import translate
    from lifelong.experiments.translation.on_ray import train_translation_on_ray
    from lifelong.tracking import TrackedRun

    job = config_from_dict(TranslationJob, {
        "data": {"vocab_size": 300, "max_pairs": 400},
        "model": {"emb_dim": 16, "hidden": 32, "key_dim": 8},
        "memory": {"choose_k": 16},
        "train": {"batch_size": 16, "steps": 3, "max_minutes": None, "log_every": 1},
        "ray": {"enabled": True, "num_workers": 2, "cpus_per_worker": 1},
        "shared_memory": {"name": "tr-mem", "num_slots": 2048, "shards": 2,
                          "storage": str(tmp_path / "mem"), "num_cpus": 0.5},
        "output_dir": str(tmp_path / "out")})
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run = TrackedRun("translation", uri)
    result = train_translation_on_ray(job, run.run_id, uri, progress=False)
    assert result.steps == 3 and result.checkpoint.is_file()
    shared = attach("tr-mem", str(tmp_path / "mem"))
    status = shared.status()
    # both workers write every step, plus the pairs they show first (show-then-ask)
    assert all(2 * 3 <= s["updates"] <= 2 * 2 * 3 for s in status), status
    assert sum(s["inserts"] + s["refreshes"] for s in status) > 0
    history = run.client.get_metric_history(run.run_id, "train.nll")
    assert sorted(m.step for m in history) == [1, 2, 3]  # rank 0 alone
    tm = TranslationModel.load(result.checkpoint)
    assert torch.equal(tm.memory.state_dict()["keys"], shared.state_dict()["keys"])
    first = translate(tm, ["A dog runs on the grass."])
    assert first == translate(tm, ["A dog runs on the grass."])
