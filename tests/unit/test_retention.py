"""The retention stream: probes asked exactly D examples after their one showing, every ask
in a new batch, and a memory too small for the inserts in between forgets."""

import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from lifelong.errors import ConfigError
from lifelong.memory import MemoryConfig
from lifelong.data.augment import rotated_classes
from lifelong.experiments.omniglot.retention import (
    ASK,
    FILLER,
    SHOW,
    RetentionSettings,
    _batches,
    build_stream,
    evaluate_retention,
)


def settings(**kw):
    base = dict(delays=(3, 40), memory_sizes=(16, 4096), way=3, groups=4, show_span=60,
                batch_size=8, distortion=0.0, seed=0)
    base.update(kw)
    return RetentionSettings(**base)


def test_each_probe_is_shown_once_and_asked_exactly_d_later():
    s = settings()
    stream = build_stream(60, 5, s)
    shows = np.flatnonzero(stream.kind == SHOW)
    asks = np.flatnonzero(stream.kind == ASK)
    assert len(shows) == len(asks) == s.groups * len(s.delays) * s.way
    probe_classes = stream.classes[shows]
    assert len(set(probe_classes.tolist())) == len(shows)  # each class shown once
    for pos in asks:
        c = stream.classes[pos]
        (show,) = np.flatnonzero((stream.classes == c) & (stream.kind == SHOW))
        assert pos - show - 1 == stream.delay[pos]  # D examples strictly between
        assert stream.drawers[pos] != stream.drawers[show]  # another drawing
    fillers = stream.classes[stream.kind == FILLER]
    assert not set(fillers.tolist()) & set(probe_classes.tolist())


def test_every_ask_starts_a_batch_and_batches_cover_the_stream():
    stream = build_stream(60, 5, settings())
    cuts = _batches(stream.kind, 8)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(stream)
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    assert all(0 < end - start <= 8 for start, end in cuts)
    starts = {start for start, _ in cuts}
    assert set(np.flatnonzero(stream.kind == ASK).tolist()) <= starts


class OneHot(nn.Module):
    """An 'encoder' that maps each image to the one-hot of its class (stored in pixel 0)."""

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(cls, 256).float()


def test_a_large_memory_recalls_everything_and_a_small_one_forgets_long_delays():
    # 15 characters x 4 rotations = 60 classes; pixel [0, 0] of every rotation holds its class
    # id, so the one-hot "encoder" is perfect and only eviction can make an ask wrong.
    images = np.zeros((15, 5, 8, 8), np.uint8)
    classes = rotated_classes(images)
    for c in range(classes.shape[0]):
        classes[c, :, 0, 0] = c
    s = settings()
    result = evaluate_retention(OneHot(), classes, s, MemoryConfig(choose_k=4, age_noise=0.0),
                                rotate=False, progress=False)
    assert result.acc(4096, 3) == 1.0 and result.acc(4096, 40) == 1.0
    assert result.acc(16, 3) == 1.0  # fewer inserts in between than slots
    assert result.acc(16, 40) < 0.5  # the memory was overwritten meanwhile
    assert result.inserts_between[16, 40] > 16


def test_bad_settings_are_rejected():
    with pytest.raises(ConfigError):
        RetentionSettings(delays=(0,))
    with pytest.raises(ConfigError):
        RetentionSettings(way=1)
    with pytest.raises(ConfigError, match="probe groups"):
        build_stream(10, 5, settings(groups=100))


def test_table_plot_and_slot_count(tmp_path):
    from lifelong.experiments.omniglot.evaluate import ShotAccuracy
    from lifelong.experiments.omniglot.retention import RetentionResult
    from lifelong.experiments.omniglot.retention_job import (
        plot_retention,
        retention_table,
        slots_needed,
    )

    s = settings(delays=(10, 1000), memory_sizes=(64, 512, 4096))
    result = RetentionResult(settings=s)
    for slots, late in ((64, 0.0), (512, 0.9), (4096, 1.0)):
        for d in s.delays:
            result.correct[slots, d] = np.full(20, 1.0 if d == 10 else late)
            result.open_correct[slots, d] = np.full(20, 0.5)
            result.inserts_between[slots, d] = 300.0
    episodic = ShotAccuracy(3, np.full((50, 2), 0.96))
    assert slots_needed(result, episodic, points=5.0) == 4096
    assert slots_needed(result, episodic, points=10.0) == 512
    table = retention_table(result, episodic)
    assert "| 512 | 100.0 ± 0.0 (50.0) | 90.0 ± 0.0 (50.0) |" in table
    png = plot_retention(result, episodic, tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_log_retention_keeps_its_reference_apart_from_eval_metrics(tmp_path):
    from lifelong.tracking import TrackedRun
    from lifelong.experiments.omniglot.evaluate import ShotAccuracy
    from lifelong.experiments.omniglot.retention import RetentionResult
    from lifelong.experiments.omniglot.retention_job import RetentionReport, log_retention

    s = settings(delays=(10,), memory_sizes=(64,))
    result = RetentionResult(settings=s)
    result.correct[64, 10] = np.ones(10)
    result.open_correct[64, 10] = np.zeros(10)
    result.inserts_between[64, 10] = 4.0
    report = RetentionReport(result, ShotAccuracy(3, np.full((5, 2), 0.8)), "table", 64)
    with TrackedRun("retention-test", f"sqlite:///{tmp_path / 'm.db'}") as run:
        log_retention(run, report)
    logged = run.client.get_run(run.run_id).data.metrics
    assert logged["retention.64slots.10delay.acc"] == 1.0
    # every cell is a row of the table artifact, not a metric
    assert "retention.64slots.10delay.open_acc" not in logged
    table = json.loads(Path(run.client.download_artifacts(
        run.run_id, "retention.json", str(tmp_path / "dl"))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows == [{"slots": 64, "delay": 10, "acc": 1.0, "ci95": 0.0, "open_acc": 0.0,
                     "inserts": 4.0}]
    assert logged["retention.episodic.3way.1shot.acc"] == pytest.approx(0.8)
    assert logged["retention.slots_needed"] == 64
    assert not [k for k in logged if k.startswith("eval.")]
    assert {a.path for a in run.client.list_artifacts(run.run_id)} >= {
        "retention.png", "retention_table.md", "retention.json"}
