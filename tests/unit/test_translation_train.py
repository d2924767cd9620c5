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


def test_held_out_pairs_are_not_trained_on_and_the_checkpoint_records_them(real_data, tmp_path,
                                                                        monkeypatch):
    from dataclasses import replace

    from lifelong.experiments.translation import train as train_module
    from lifelong.experiments.translation.heldout import HeldOutWord, held_out_pairs
    from lifelong.models.checkpoint import TranslationModel

    base = job(tmp_path, 0)
    j = replace(base, data=replace(base.data, heldout_words=20))
    seen = []
    real_build = train_module.build

    def build(*args, **kwargs):
        built = real_build(*args, **kwargs)
        seen.append(built)
        return built

    monkeypatch.setattr(train_module, "build", build)
    tm = TranslationModel.load(train_module.train_translation(j, progress=False).checkpoint)
    heldout = [HeldOutWord.from_list(row) for row in tm.meta["heldout"]]
    assert len(heldout) == 20 and tm.meta["steps"] == 3
    train = load_multi30k("train", progress=False)
    trained_texts = set(seen[0][3])
    for i in held_out_pairs(heldout):
        # neither pair of a held-out word is trained on (a duplicate sentence elsewhere
        # in the training split may be)
        assert train.source[i] not in trained_texts or train.source.count(train.source[i]) > 1
    for h in heldout:
        assert h.word in train.source[h.shown].lower() and h.word in train.source[h.asked].lower()
