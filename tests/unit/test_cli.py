import pytest

from lifelong import cli


def test_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "train omniglot" in capsys.readouterr().out
    assert cli.main(["fly", "omniglot"]) == 2


@pytest.mark.parametrize("argv", [["train", "omniglot", "--help"],
                                  ["evaluate", "omniglot", "--help"], ["demo", "--help"]])
def test_job_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    assert "key=value" in capsys.readouterr().out


def test_config_errors_print_one_line(capsys, tmp_path):
    assert cli.main(["train", "omniglot", "--config", str(tmp_path / "none.yaml")]) == 2
    assert cli.main(["evaluate", "omniglot", "train.lrr=1", "checkpoint=x.pt"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "unknown key train" in err


def test_shipped_configs_load():
    from lifelong.config import load_config
    from lifelong.experiments.omniglot.config import OmniglotEvaluateJob
    from lifelong.experiments.omniglot.config import OmniglotTrainJob

    for name in ("train_omniglot.yaml", "train_omniglot_paper.yaml", "demo.yaml"):
        load_config(OmniglotTrainJob, cli.CONFIG_DIR / name)
    load_config(OmniglotEvaluateJob, cli.CONFIG_DIR / "evaluate_omniglot.yaml",
                ["checkpoint=x.pt"])


def test_stream_produce_rejects_bad_settings_before_reading_data(capsys, tmp_path):
    assert cli.main(["stream", "produce", "--to", str(tmp_path), "--examples", "0"]) == 2
    assert "examples must be an int >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_stream_run_help_config_and_errors(capsys, tmp_path):
    from lifelong.config import load_config
    from lifelong.streaming.config import StreamJob

    with pytest.raises(SystemExit) as exit_:
        cli.main(["stream", "run", "--help"])
    assert exit_.value.code == 0 and "--source" in capsys.readouterr().out
    job = load_config(StreamJob, cli.CONFIG_DIR / "stream.yaml", ["stream.source=x"])
    assert job.tracking.experiment == "stream" and job.shared_memory.num_values == 2636
    # No source, bad values, unknown keys: one line, exit 2, nothing started.
    assert cli.main(["stream", "run", "stream.batch_size=0", "stream.windoes=[5]"]) == 2
    err = capsys.readouterr().err
    assert "stream.source is required" in err or "stream.batch_size" in err
    assert "unknown key stream.windoes" in err
    assert cli.main(["stream", "run", "--source", str(tmp_path), "--no-progress",
                     "encoder.checkpoint=a.pt", "encoder.run_id=b"]) == 2
    assert "at most one of encoder.checkpoint" in capsys.readouterr().err


def test_stream_produce_if_empty_writes_nothing_into_a_filled_folder(capsys, tmp_path):
    import numpy as np

    from lifelong.streaming.segments import list_segments, write_segment

    write_segment(str(tmp_path), 0, np.zeros((1, 2), np.float32), [0], "s", "float32[2]")
    assert cli.main(["stream", "produce", "--to", str(tmp_path), "--if-empty"]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert len(list_segments(str(tmp_path))) == 1


def test_translation_configs_load_and_check():
    from lifelong.config import config_from_dict, load_config
    from lifelong.errors import ConfigError
    from lifelong.experiments.translation.config import TranslationJob
    from lifelong.experiments.translation.config import TranslationEvalJob

    job = load_config(TranslationJob, cli.CONFIG_DIR / "train_translation.yaml")
    assert job.model.use_memory and job.tracking.experiment == "translation"
    load_config(TranslationEvalJob, cli.CONFIG_DIR / "evaluate_translation.yaml",
                ["checkpoint=x.pt"])
    with pytest.raises(ConfigError, match="split evenly"):
        config_from_dict(TranslationJob, {"train": {"batch_size": 63},
                                          "ray": {"enabled": True, "num_workers": 2}})
    with pytest.raises(ConfigError, match="checkpoint"):
        config_from_dict(TranslationEvalJob, {})


@pytest.mark.parametrize("verb", ["train", "evaluate", "stream"])
def test_a_verbs_help_lists_its_tasks_and_exits_0(verb, capsys):
    assert cli.main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    tasks = [line.split()[1] for line in out.splitlines() if line.startswith(f"  {verb} ")]
    assert tasks and f"lifelong {verb} TASK --help" in out
    assert cli.main([verb]) == 2  # a verb without its task is still an error


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lifelong {version('lifelong')}"
