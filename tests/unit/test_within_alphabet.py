"""The within-alphabet 20-way 1-shot evaluation (issue 18, item 3): episodes stay inside one
alphabet, the question is another drawing than the shot, and the score is the memory's 1-NN
answer (checked against a brute-force reference on the same draws)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError, DataError
from lifelong.experiments.omniglot.within_alphabet import (alphabet_classes,
                                                           evaluate_within_alphabet)


def split(alphabets=(("Alpha", 25), ("Beta", 21), ("Gamma", 8)), per_class=20, seed=0,
          noise=0.2):
    """Classes with a random pattern each, every drawing with its own grey-level noise (no
    two similarities tie)."""
    rng = np.random.default_rng(seed)
    names = tuple(f"{a}/character{c:02d}" for a, n in alphabets for c in range(1, n + 1))
    patterns = rng.random((len(names), 1, 28, 28)) < 0.2
    pixels = (1 - noise) * patterns + noise * rng.random((len(names), per_class, 28, 28))
    return (pixels * 255).astype(np.uint8), names


class Flatten(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1) - 0.5


def test_episodes_stay_in_alphabets_with_enough_characters():
    images, names = split()
    groups = alphabet_classes(names, 20)
    assert sorted(groups) == ["Alpha", "Beta"]  # Gamma has 8 characters
    assert all(names[i].startswith(a + "/") for a, ix in groups.items() for i in ix)
    result = evaluate_within_alphabet(Flatten(), images, names, way=20, episodes=30,
                                      progress=False)
    assert set(result.alphabets) == {"Alpha", "Beta"} and result.episodes == 30
    assert result.mean() > 0.95  # class patterns far apart: the nearest shot is the class's
    assert set(result.by_alphabet()) == {"Alpha", "Beta"}


def test_the_question_is_another_drawing_than_the_shot():
    """Pure noise, no class pattern: only the very same drawing would be recognised."""
    rng = np.random.default_rng(3)
    images = ((rng.random((40, 20, 28, 28)) < 0.5) * 255).astype(np.uint8)
    names = tuple(f"Alpha/character{c:02d}" for c in range(40))
    result = evaluate_within_alphabet(Flatten(), images, names, way=20, episodes=40,
                                      progress=False)
    assert result.mean() < 0.2  # chance is 0.05; the same drawing twice would give 1.0


def test_the_score_is_the_nearest_shot_of_each_question():
    images, names = split(noise=0.85, seed=5)  # noisy enough to make mistakes
    result = evaluate_within_alphabet(Flatten(), images, names, way=20, episodes=25, seed=7,
                                      progress=False)
    # The same draws, by brute force: cosine 1-NN over the 20 shots.
    groups = alphabet_classes(names, 20)
    order = list(groups)
    rng = np.random.default_rng(7)
    expected = []
    for _ in range(25):
        alphabet = order[rng.integers(len(order))]
        classes = rng.choice(groups[alphabet], size=20, replace=False)
        drawers = np.stack([rng.choice(20, size=2, replace=False) for _ in range(20)])
        x = torch.from_numpy(images[classes[:, None], drawers].astype(np.float32) / 255)
        emb = torch.nn.functional.normalize(x.flatten(2) - 0.5, dim=2)  # [20, 2, D]
        nearest = (emb[:, 1] @ emb[:, 0].T).argmax(dim=1)
        expected.append(float((nearest == torch.arange(20)).float().mean()))
    np.testing.assert_allclose(result.per_episode, expected)
    assert 0.2 < result.mean() < 0.98  # neither trivial nor hopeless
    assert "20-way within alphabet" in result.table()


def test_bad_settings_and_data_get_typed_errors():
    images, names = split()
    with pytest.raises(ConfigError):
        evaluate_within_alphabet(Flatten(), images, names, way=1, progress=False)
    with pytest.raises(DataError, match="no alphabet has 30 characters"):
        evaluate_within_alphabet(Flatten(), images, names, way=30, progress=False)
    with pytest.raises(DataError, match="n >= 2"):
        evaluate_within_alphabet(Flatten(), images[:, :1], names, way=20, progress=False)


def test_lifelong_evaluate_omniglot_reports_and_logs_it_beside_the_standard_table(
        tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow")
    from lifelong import metrics
    from lifelong.data import OmniglotSplit
    from lifelong.experiments.omniglot import jobs as omniglot_jobs
    from lifelong.models.checkpoint import save_encoder
    from lifelong.models.conv import build_encoder
    from mlflow_fakes import cli_run

    images, names = split()
    monkeypatch.setattr(omniglot_jobs, "load_omniglot", lambda *a, **k: OmniglotSplit(
        images=images, class_names=names, split="evaluation"))
    torch.manual_seed(0)
    checkpoint = save_encoder(tmp_path / "encoder.pt", build_encoder("tiny", 16, 0.0),
                              encoder_name="tiny", key_dim=16, dropout=0.0)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out, run = cli_run(capsys, uri, "omniglot-eval", [
        "evaluate", "omniglot", "--checkpoint", str(checkpoint), "--protocol",
        "within-alphabet", "--no-progress", "evaluation.ways=[5]",
        "evaluation.presentations=2", "evaluation.episodes=6", "memory.choose_k=8",
        f"tracking.tracking_uri={uri}"])
    assert "| 5-way |" in out and "| 20-way within alphabet |" in out
    acc = run.data.metrics[metrics.shot_metric(metrics.WITHIN_ALPHABET, 20, 1)]
    assert 0.0 <= acc <= 1.0 and "eval.5way.1shot.acc" in run.data.metrics
    path = mlflow.tracking.MlflowClient(uri).download_artifacts(run.info.run_id, metrics.WITHIN_ALPHABET_TABLE_JSON,
                                     str(tmp_path))
    table = json.loads(Path(path).read_text())  # MLflow's table layout: columns and rows
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert {r["alphabet"] for r in rows} <= {"Alpha", "Beta"}
    assert sum(r["episodes"] for r in rows) == 6
