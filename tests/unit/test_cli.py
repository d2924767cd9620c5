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


def test_serve_help_config_and_errors(capsys):
    from lifelong.config import load_config
    from lifelong.service.config import ServeJob

    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--checkpoint" in out and "/learn" in out
    job = load_config(ServeJob, cli.CONFIG_DIR / "serve.yaml", ["serve.port=9"])
    assert job.serve.host == "127.0.0.1" and job.serve.port == 9
    assert job.shared_memory.num_values == 2636
    assert job.serve.autoscaling_config()["max_replicas"] == 2
    # Bad values and unknown keys: one line, exit 2, nothing started.
    assert cli.main(["serve", "serve.max_batch_size=0", "serve.hots=x"]) == 2
    err = capsys.readouterr().err
    assert "serve.max_batch_size" in err and "unknown key serve.hots" in err
    assert cli.main(["serve", "--checkpoint", "a.pt", "encoder.run_id=b"]) == 2
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


def _subcommands(parser) -> dict:
    """An argparse parser's subcommand parsers, by name (argparse has no public accessor)."""
    import argparse

    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def test_every_help_of_the_command_tree_exits_0_and_lists_its_subcommands(monkeypatch, capsys):
    """Walks `lifelong`'s tree from its argparse parsers: build_parser's groups, then the
    parser each command prints its help with (e.g. `lifelong memory`'s own subcommands), so a
    command added anywhere is covered without editing this test."""
    import argparse
    import re

    printed = []
    print_help = argparse.ArgumentParser.print_help

    def recording(self, file=None):
        printed.append(self)
        return print_help(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", recording)
    tree, todo, walked = cli.build_parser(), [()], []
    while todo:
        path = todo.pop(0)
        printed.clear()
        try:
            code = cli.main([*path, "--help"])
        except SystemExit as exit_:
            code = exit_.code
        out = capsys.readouterr().out
        assert code == 0, f"lifelong {' '.join(path)} --help exited {code}"
        assert len(printed) == 1 and out.startswith("usage: "), path
        node = tree
        for word in path:
            node = _subcommands(node).get(word) if node is not None else None
        children = {**(_subcommands(node) if node is not None else {}),
                    **_subcommands(printed[0])}
        for name in children:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), (path, name)
        todo += [(*path, name) for name in children]
        walked.append(path)
    assert set(cli.COMMANDS) <= set(walked)
    assert ("memory", "create") in walked and ("stream", "run") in walked
    assert len(walked) > len(cli.COMMANDS) + 4  # the root, the groups, memory's commands


def test_each_group_alone_or_unknown_is_a_usage_error(capsys):
    for argv in ([], ["train"], ["evaluate"], ["stream"], ["evaluate", "speed"]):
        assert cli.main(argv) == 2, argv
        assert "usage: lifelong" in capsys.readouterr().err


def test_the_installed_command_prints_its_version():
    import os
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    expected = f"lifelong {version('lifelong')}"
    script = Path(sys.executable).with_name("lifelong")
    for command in ([sys.executable, "-m", "lifelong.cli", "--version"],
                    [str(script), "--version"] if script.is_file() else None):
        if command:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                  env=os.environ.copy())
            assert (done.returncode, done.stdout.strip()) == (0, expected), done.stderr


def test_the_mlflow_ui_hint_runs_as_printed_with_or_without_the_venv_on_path(monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("mlflow")
    from lifelong.tracking import ui_command

    venv_bin = str(Path(sys.executable).parent)
    if not (Path(venv_bin) / "mlflow").is_file():
        pytest.skip("mlflow has no console script beside this interpreter")
    bare = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and os.path.abspath(p) != os.path.abspath(venv_bin))
    for path in (bare, venv_bin + os.pathsep + bare):
        monkeypatch.setenv("PATH", path)
        hint = ui_command("sqlite:////tmp/mlruns.db")
        assert hint.endswith(" ui --backend-store-uri sqlite:////tmp/mlruns.db")
        assert hint.startswith("mlflow ") == (path != bare), hint
        done = subprocess.run(f"{hint} --help", shell=True, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PATH": path})
        assert done.returncode == 0 and "--backend-store-uri" in done.stdout, (hint, done)
