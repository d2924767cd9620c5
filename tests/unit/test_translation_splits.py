"""`lifelong evaluate translation --split NAME|all` on generated test sets in the official
layout, with a tiny untrained translator: one BLEU line per set, typed one-line errors."""

import re

import pytest
import torch

from lifelong import cli
from lifelong.data.multi30k import TEST_SPLITS
from lifelong.models.checkpoint import TranslationModel
from lifelong.models.translator import Translator, TranslatorConfig
from lifelong.models.vocab import SubwordVocab
from multi30k_fakes import ENGLISH, GERMAN, write_split, write_splits

BLEU_LINE = re.compile(r"^BLEU on (\S+) \((\d+) sentences, beam 1, no memory\): (\d+\.\d\d)$")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translator")
    sv = SubwordVocab.train(list(ENGLISH), 16, model_type="word")
    tv = SubwordVocab.train(list(GERMAN), 16, model_type="word")
    torch.manual_seed(0)
    net = Translator(len(sv), len(tv), TranslatorConfig(emb_dim=8, hidden=16, key_dim=8,
                                                        dropout=0.0))
    return str(TranslationModel(net, sv, tv, None).save(folder / "translator.pt"))


def evaluate(checkpoint, root, *args):
    return cli.main(["evaluate", "translation", "--checkpoint", checkpoint, "--no-progress",
                     f"data_root={root}", "beam=1", "max_sentences=3", "rare_counts=[]",
                     "tracking.enabled=false", *args])


def bleu_lines(out):
    return [BLEU_LINE.match(line).groups() for line in out.splitlines()
            if line.startswith("BLEU on ")]


def test_split_all_reports_one_bleu_line_per_official_test_set(checkpoint, tmp_path, capsys):
    from lifelong.data import load_multi30k
    from lifelong.experiments.translation.evaluate import bleu, translate

    write_splits(tmp_path, TEST_SPLITS)
    assert evaluate(checkpoint, tmp_path, "--split", "all") == 0
    lines = bleu_lines(capsys.readouterr().out)
    assert [name for name, _, _ in lines] == list(TEST_SPLITS)
    tm = TranslationModel.load(checkpoint)
    for name, n, score in lines:  # sacrebleu's score of the set's first 3 translations
        data = load_multi30k(name, root=tmp_path, download=False)
        expected = bleu(translate(tm, data.source[:3]), data.target[:3])[0]
        assert n == "3" and score == f"{expected:.2f}"


def test_split_all_logs_one_bleu_metric_and_one_translations_file_per_set(checkpoint,
                                                                         tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    write_splits(tmp_path / "data", TEST_SPLITS)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert cli.main(["evaluate", "translation", "--checkpoint", checkpoint, "--no-progress",
                     "--split", "all", f"data_root={tmp_path / 'data'}", "beam=1",
                     "max_sentences=2", "rare_counts=[]", f"tracking.tracking_uri={uri}",
                     f"tracking.artifact_location={tmp_path / 'artifacts'}"]) == 0
    assert "logged to MLflow run" in capsys.readouterr().out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("translation").experiment_id])
    assert {k for k in run.data.metrics if k.startswith("eval.bleu")} == {
        f"eval.bleu.{name}" for name in TEST_SPLITS}
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        f"translations_{name}.de" for name in TEST_SPLITS}


@pytest.mark.parametrize("split", TEST_SPLITS)
def test_any_test_set_by_name(split, checkpoint, tmp_path, capsys):
    write_split(tmp_path, split)
    assert evaluate(checkpoint, tmp_path, "--split", split) == 0
    assert [name for name, _, _ in bleu_lines(capsys.readouterr().out)] == [split]


def test_split_all_skips_a_set_that_is_not_there_and_says_so(checkpoint, tmp_path, capsys):
    write_splits(tmp_path, TEST_SPLITS[:3])
    assert evaluate(checkpoint, tmp_path, "split=all") == 0
    out = capsys.readouterr().out
    assert [name for name, _, _ in bleu_lines(out)] == list(TEST_SPLITS[:3])
    assert "skipped test_2018_flickr (" in out


def test_an_unknown_split_is_one_line_listing_the_valid_names(checkpoint, tmp_path, capsys):
    assert evaluate(checkpoint, tmp_path, "--split", "test_2019") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ConfigError: ")
    assert "split 'test_2019' is not a Multi30k split; valid: " in err
    assert all(name in err for name in (*TEST_SPLITS, "all"))


def test_a_damaged_set_is_a_typed_error_naming_the_file(checkpoint, tmp_path, capsys):
    write_splits(tmp_path, TEST_SPLITS)
    write_split(tmp_path, "test_2017_flickr", lines={"de": 998})
    assert evaluate(checkpoint, tmp_path, "--split", "all") == 2
    err = capsys.readouterr().err
    assert "CorruptArchiveError" in err and "test_2017_flickr.de.gz: 998 lines" in err
    assert evaluate(checkpoint, tmp_path / "empty", "--split", "all") == 2
    assert "no Multi30k test set available" in capsys.readouterr().err
