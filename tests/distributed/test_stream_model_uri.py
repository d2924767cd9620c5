"""`lifelong stream run --model models:/NAME/1` on a local Ray: the registered encoder embeds an
image stream, and the run records the model it was given and the named memory it fed (with
the snapshot generation of each shard)."""

import json

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from lifelong import metrics  # noqa: E402
from lifelong.streaming.segments import write_segment  # noqa: E402
from mlflow_fakes import cli_run, train_and_register  # noqa: E402
from omniglot_fakes import fake_split  # noqa: E402

pytestmark = pytest.mark.ray


def test_stream_run_takes_a_registered_model_and_records_its_memory(ray_local, tmp_path,
                                                                   monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    train_and_register(monkeypatch, tmp_path, uri, "stream-encoder")
    split = fake_split(num_characters=10, rotations=1, per_class=6)
    images = split.images.reshape(-1, 28, 28)
    labels = np.repeat(np.arange(split.images.shape[0]), split.images.shape[1])
    for n in range(2):
        write_segment(str(tmp_path / "src"), n, images[n::2], labels[n::2], "test",
                      "uint8[28,28]")
    out, run = cli_run(capsys, uri, "stream", [
        "stream", "run", "--model", "models:/stream-encoder/1", "--no-progress",
        "--source", str(tmp_path / "src"), "stream.name=t", "stream.idle_timeout_s=0",
        "stream.poll_s=0.05", "stream.batch_size=16", "stream.log_every=20",
        "stream.windows=[20]", "memory.choose_k=8", "shared_memory.name=model-uri-mem",
        f"shared_memory.storage={tmp_path}/mem", "shared_memory.num_slots=256",
        "shared_memory.num_values=10", "shared_memory.shards=2", "shared_memory.num_cpus=0.5",
        f"tracking.tracking_uri={uri}"])
    assert "examples applied (all runs) | 60" in out
    tags = run.data.tags
    assert tags[metrics.MODEL_URI_TAG] == "models:/stream-encoder/1"
    assert tags[metrics.MEMORY_TAG] == "model-uri-mem"
    generations = json.loads(tags[metrics.MEMORY_GENERATION_TAG])
    assert len(generations) == 2 and all(isinstance(g, int) for g in generations)
    assert run.data.metrics[metrics.STREAM_EXAMPLES] == 60
