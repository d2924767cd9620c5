"""The translation training job in process on a slice of the real Multi30k: show-then-ask writes
the shown pairs into the memory before each step, the checkpoint holds model, vocabularies and
memory, and it translates deterministically."""

import pytest
import torch

from lifelong.config import config_from_dict
from lifelong.data import load_multi30k
from lifelong.errors import DataError


@pytest.fixture(scope="module")
def real_data():
    try:
        load_multi30k("train", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Multi30k not available (set LIFELONG_DATA_DIR): {exc}")


def job(tmp_path, show: int):
    from lifelong.experiments.translation.config import TranslationJob

    return config_from_dict(TranslationJob, {
        "data": {"vocab_size": 300, "max_pairs": 600},
        "model": {"emb_dim": 16, "hidden": 32, "key_dim": 8},
        "memory": {"choose_k": 16}, "shared_memory": {"num_slots": 4096},
        "train": {"batch_size": 16, "steps": 3, "max_minutes": None, "log_every": 1,
                  "show_per_batch": show, "threads": 1},
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / f"show{show}")})


def test_show_then_ask_writes_the_shown_pairs_first(real_data, tmp_path):
    from lifelong.experiments.translation.train import train_translation
    from lifelong.models.checkpoint import TranslationModel
    from lifelong.experiments.translation.evaluate import translate

    plain = TranslationModel.load(train_translation(job(tmp_path, 0), progress=False).checkpoint)
    shown = TranslationModel.load(train_translation(job(tmp_path, 8), progress=False).checkpoint)
    assert plain.memory.occupancy() > 0
    # ages count update steps (a never-written slot's age is their number): three steps,
    # and with show-then-ask a write of the shown pairs before each step that had some
    assert int(plain.memory.ages.max()) == 3
    assert 3 < int(shown.memory.ages.max()) <= 6
    first = translate(shown, ["A dog runs on the grass."])
    assert first == translate(shown, ["A dog runs on the grass."])
