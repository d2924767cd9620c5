"""Jobs started at the same moment against one new SQLite MLflow store all run (MLflow sets a
new store's tables up without a lock of its own: ``table experiments already exists``)."""

import multiprocessing as mp
import os
import traceback
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

PROCESSES = 4


def _start_run(uri: str, barrier, results, index: int) -> None:
    try:
        import mlflow  # noqa: F401  - imported before the barrier: only the start races

        from lifelong.tracking import TrackedRun

        barrier.wait(timeout=120)
        with TrackedRun("concurrent", uri, run_name=f"job-{index}") as run:
            run.log_params({"index": index})
        results.put((index, "ok"))
    except BaseException:  # noqa: BLE001 - reported to the test
        results.put((index, traceback.format_exc()))


@pytest.mark.slow  # 4 spawned interpreters importing mlflow: ~30 s alone, more on a busy machine
def test_four_jobs_starting_at_once_on_a_new_sqlite_store_all_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'new' / 'mlruns.db'}"
    os.makedirs(tmp_path / "new")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    platform = str(Path(__file__).parents[2] / "platform")
    os.environ["PYTHONPATH"] = os.pathsep.join([platform, os.environ.get("PYTHONPATH", "")])
    procs = [ctx.Process(target=_start_run, args=(uri, barrier, results, i))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    failed = {i: why for i, why in outcome.items() if why != "ok"}
    assert not failed, "\n".join(failed.values())
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.data.params["index"] for r in runs) == [str(i) for i in range(PROCESSES)]
    assert {r.info.status for r in runs} == {"FINISHED"}
