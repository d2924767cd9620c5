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
    from lifelong.training.jobs import OmniglotEvaluateJob
    from lifelong.training.omniglot import OmniglotTrainJob

    for name in ("train_omniglot.yaml", "train_omniglot_paper.yaml", "demo.yaml"):
        load_config(OmniglotTrainJob, cli.CONFIG_DIR / name)
    load_config(OmniglotEvaluateJob, cli.CONFIG_DIR / "evaluate_omniglot.yaml",
                ["checkpoint=x.pt"])


def test_stream_produce_rejects_bad_settings_before_reading_data(capsys, tmp_path):
    assert cli.main(["stream", "produce", "--to", str(tmp_path), "--examples", "0"]) == 2
    assert "examples must be an int >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
