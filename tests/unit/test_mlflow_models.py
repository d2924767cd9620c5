"""Trained models are MLflow models (MLmodel, signature, input example, registered when asked),
and every option that names a model takes a registered model by URI, loaded without running
stored code: `lifelong evaluate omniglot --model models:/NAME/1`, translators through the same
resolver."""

import json
from pathlib import Path

import pytest
import torch
import yaml

mlflow = pytest.importorskip("mlflow")

from lifelong import cli, metrics  # noqa: E402
from lifelong.experiments.omniglot import jobs as omniglot_jobs  # noqa: E402
from lifelong.models.checkpoint import TranslationModel, load_encoder  # noqa: E402
from lifelong.tracking import TrackedRun, resolve_model_file  # noqa: E402
from mlflow_fakes import KEY_DIM, cli_run, train_and_register  # noqa: E402
from omniglot_fakes import fake_split  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-models")
    return f"sqlite:///{root / 'mlruns.db'}", root


@pytest.fixture(scope="module")
def registered(store):
    monkeypatch = pytest.MonkeyPatch()
    try:
        result = train_and_register(monkeypatch, store[1], store[0], "omniglot-tiny")
    finally:
        monkeypatch.undo()
    return result


def test_the_trained_encoder_is_a_registered_mlflow_model(store, registered, tmp_path,
                                                           monkeypatch):
    uri, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # models:/ URIs resolve in the global registry
    assert registered.model.registered == "models:/omniglot-tiny/1"
    assert registered.model.run_uri == f"runs:/{registered.run_id}/encoder"
    client = mlflow.tracking.MlflowClient(uri)
    version = client.get_model_version("omniglot-tiny", "1")
    assert version.run_id == registered.run_id
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri="models:/omniglot-tiny/1", dst_path=str(tmp_path), tracking_uri=uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert inputs[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 1, 28, 28]}
    assert outputs[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, KEY_DIM]}
    assert mlmodel["saved_input_example_info"]["artifact_path"]
    # The traced pt2 graph, no pickle; the platform's own checkpoint beside it.
    assert (local / "data" / "model.pt2").is_file()
    assert [e["path"] for e in mlmodel["flavors"]["pytorch"]["extra_files"]] == [
        "extra_files/encoder.pt"]


@pytest.mark.parametrize("reference", ["models:/omniglot-tiny/1", "runs:/{run}/encoder",
                                       "run_id"])
def test_every_reference_resolves_to_the_same_weights(store, registered, reference):
    uri, _ = store
    run_id = registered.run_id if reference == "run_id" else None
    ref = None if run_id else reference.format(run=registered.run_id)
    encoder, meta = load_encoder(resolve_model_file(ref, run_id, uri, "encoder"))
    trained, _ = load_encoder(registered.train.checkpoint)
    assert meta["encoder"] == "tiny" and meta["key_dim"] == KEY_DIM
    for a, b in zip(encoder.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)


def test_evaluate_omniglot_takes_a_registered_model_by_name(store, registered, monkeypatch,
                                                           capsys):
    uri, _ = store
    monkeypatch.setattr(omniglot_jobs, "load_omniglot",
                        lambda *a, **k: fake_split(num_characters=8, rotations=1))
    out, run = cli_run(capsys, uri, "omniglot-eval", [
        "evaluate", "omniglot", "--model", "models:/omniglot-tiny/1", "--no-progress",
        "evaluation.ways=[5]", "evaluation.presentations=2", "evaluation.episodes=4",
        "memory.choose_k=8", f"tracking.tracking_uri={uri}"])
    assert "from models:/omniglot-tiny/1" in out
    assert run.data.tags[metrics.MODEL_URI_TAG] == "models:/omniglot-tiny/1"
    assert run.data.params["checkpoint"] == "models:/omniglot-tiny/1"
    assert 0.0 <= run.data.metrics["eval.5way.1shot.acc"] <= 1.0


def test_a_missing_model_is_one_line_and_exit_2(store, capsys):
    uri, _ = store
    code = cli.main(["evaluate", "omniglot", "--model", "models:/omniglot-tiny/9",
                     "--no-progress", f"tracking.tracking_uri={uri}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ConfigError: no encoder model at models:/omniglot-tiny/9")


def test_a_translator_is_logged_and_resolved_through_the_same_function(store, tmp_path):
    from lifelong.experiments.translation.jobs import log_translator_model
    from lifelong.memory import Memory
    from lifelong.models.translator import Translator, TranslatorConfig
    from lifelong.models.vocab import SubwordVocab

    uri, _ = store
    words = ["a man rides", "two dogs play", "a dog runs", "the man sleeps"]
    sv = SubwordVocab.train(words * 4, 16, model_type="word")
    tv = SubwordVocab.train(words * 4, 16, model_type="word")
    torch.manual_seed(0)
    net = Translator(len(sv), len(tv), TranslatorConfig(emb_dim=8, hidden=16, key_dim=8,
                                                        dropout=0.0)).eval()
    memory = Memory(key_dim=8, num_slots=64, num_values=len(tv), choose_k=4)
    path = TranslationModel(net, sv, tv, memory).save(tmp_path / "translator.pt")
    with TrackedRun("translation-models", uri) as run:
        logged = log_translator_model(run, path, "translator-tiny")
    assert logged.registered == "models:/translator-tiny/1"
    loaded = TranslationModel.load(resolve_model_file("models:/translator-tiny/1", None, uri,
                                                      "translator"))
    assert len(loaded.source_vocab) == len(sv) and loaded.memory is not None
    for a, b in zip(loaded.model.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)


def test_a_run_from_before_models_still_resolves_by_run_id(store, registered):
    """Runs logged before encoders were MLflow models hold ``encoder/encoder.pt``."""
    uri, _ = store
    with TrackedRun("before-models", uri) as run:
        run.log_artifact(registered.train.checkpoint, "encoder")
    path = resolve_model_file(None, run.run_id, uri, "encoder")
    assert path.name == "encoder.pt" and load_encoder(path)[1]["encoder"] == "tiny"
