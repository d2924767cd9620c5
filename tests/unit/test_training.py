import math

import numpy as np
import pytest
import torch

from lifelong.config import load_config
from lifelong.errors import ConfigError
from lifelong.models import build_encoder
from lifelong.models.checkpoint import load_encoder
from lifelong.experiments.omniglot.config import OmniglotEvaluateJob, OmniglotTrainJob
from lifelong.experiments.omniglot.evaluate import ShotAccuracy, accuracy_table, evaluate_encoder
from lifelong.memory import MemoryConfig
from lifelong.experiments.omniglot.train import split_validation, train_omniglot
from omniglot_fakes import fake_split


def small_job(tmp_path, **train):
    settings = dict(episodes_per_batch=4, way=5, presentations=4, steps=40, lr=3e-3,
                    validation_characters=2, val_every=0, val_episodes=20, checkpoint_every=0,
                    log_every=5, seed=0)
    settings.update(train)
    return load_config(OmniglotTrainJob, None,
                       [f"train.{k}={v}" for k, v in settings.items()]
                       + ["model.encoder=tiny", "model.dropout=0.0", "model.key_dim=32",
                          f"output_dir={tmp_path}", "tracking.enabled=false"])


class Recorder:
    def __init__(self):
        self.logged = []

    def log_metrics(self, values, step):
        self.logged.append((step, dict(values)))


def test_training_lowers_loss_and_raises_accuracy(tmp_path):
    torch.set_num_threads(1)
    split = fake_split(num_characters=6, rotations=4)
    job = small_job(tmp_path)
    images, _ = split_validation(split, 2, 0)
    encoder = build_encoder("tiny", key_dim=32, dropout=0.0)
    torch.manual_seed(0)
    before = evaluate_encoder(encoder, images, way=5, presentations=3, episodes=30, seed=3,
                              progress=False)
    recorder = Recorder()
    result = train_omniglot(job, logger=recorder, background=split, progress=False)
    assert result.steps == 40 and result.checkpoint.is_file()
    losses = [m["train.loss"] for _, m in recorder.logged]
    assert losses[-1] < losses[0]
    trained, meta = load_encoder(result.checkpoint)
    assert meta["extra"]["step"] == 40 and meta["encoder"] == "tiny"
    after = evaluate_encoder(trained, images, way=5, presentations=3, episodes=30, seed=3,
                             progress=False)
    assert after.mean(1) > before.mean(1) and after.mean(1) > 0.8


def test_validation_holds_out_whole_characters():
    split = fake_split(num_characters=10, rotations=4)
    train, val = split_validation(split, 3, seed=1)
    assert train.shape[0] == 28 and val.shape[0] == 12
    # Every held-out class is absent from training (classes are distinct random patterns).
    train_set = {t.tobytes() for t in train[:, 0]}
    assert not any(v.tobytes() in train_set for v in val[:, 0])


class Constant(torch.nn.Module):
    """An 'encoder' that embeds each image by its first pixel row: equal images, equal keys."""

    def forward(self, x):
        return x[:, 0, 0, :16].float() + 1e-3


def test_evaluation_per_shot_accounting():
    # Every image of a class is identical and classes differ: 0-shot is always wrong (memory
    # has never seen the class), every later presentation is right.
    rng = np.random.default_rng(0)
    rows = (rng.random((8, 1, 1, 28)) < 0.5).astype(np.uint8) * 255
    images = np.broadcast_to(rows, (8, 20, 28, 28)).copy()
    acc = evaluate_encoder(Constant(), images, way=4, presentations=3, episodes=7,
                           episodes_per_chunk=3, progress=False)
    assert acc.per_episode.shape == (7, 3)
    assert acc.mean(0) == 0.0 and acc.mean(1) == 1.0 and acc.mean(2) == 1.0
    assert acc.ci95(1) == 0.0


def test_confidence_interval():
    per_episode = np.array([[0, 1.0], [0, 0.5], [0, 0.0], [0, 0.5]])
    acc = ShotAccuracy(way=2, per_episode=per_episode)
    assert acc.mean(1) == pytest.approx(0.5)
    assert acc.ci95(1) == pytest.approx(1.96 * np.std([1, 0.5, 0, 0.5]) / math.sqrt(4))
    table = accuracy_table([acc])
    assert "| 2-way | 0.00 ± 0.00 | 50.00 ± " in table and "1-shot" in table


def test_unknown_keys_are_all_named():
    with pytest.raises(ConfigError) as err:
        load_config(OmniglotTrainJob, None, ["train.lr=1e-3", "train.lrr=1", "modle.x=2",
                                             "memory.k=3"])
    message = str(err.value)
    assert all(k in message for k in ("train.lrr", "modle", "memory.k"))


def test_unknown_keys_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  typo: 3\nextra: 1\n")
    with pytest.raises(ConfigError, match="unknown key extra; unknown key train.typo"):
        load_config(OmniglotTrainJob, path)


def test_yaml_scientific_notation_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  max_minutes: 2\n")
    job = load_config(OmniglotTrainJob, path)
    assert job.train.lr == 1e-4 and job.train.max_minutes == 2.0


@pytest.mark.parametrize("override", ["train.way=0", "train.lr=-1", "train.presentations=1",
                                      "model.encoder=vgg", "model.dropout=1.5",
                                      "train.lr_schedule=step", "memory.alpha=0"])
def test_invalid_values(override):
    with pytest.raises(ConfigError):
        load_config(OmniglotTrainJob, None, [override])


def test_evaluate_job_needs_one_encoder():
    with pytest.raises(ConfigError):
        load_config(OmniglotEvaluateJob, None, [])
    with pytest.raises(ConfigError):
        load_config(OmniglotEvaluateJob, None, ["checkpoint=a.pt", "run_id=abc"])
    job = load_config(OmniglotEvaluateJob, None, ["checkpoint=a.pt"])
    assert job.evaluation.episodes == 1000 and job.evaluation.ways == (5, 20)


def test_memory_config_builds_memory():
    memory = MemoryConfig(choose_k=8).build(key_dim=4, num_slots=16, num_values=3)
    assert memory.k == 8 and memory.num_slots == 16
