"""`lifelong stream run` end to end in this process on a local Ray: a named memory created on
first use, metrics by step and the k-shot plot in MLflow, the gauges the stream dashboard
queries exported by Ray, and a second run that resumes instead of repeating."""

import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lifelong import metrics
from lifelong.config import config_from_dict
from lifelong.streaming.config import StreamJob
from lifelong.streaming.launch import run_stream_job
from lifelong.streaming.segments import write_segment

pytestmark = pytest.mark.ray
DASHBOARD = Path(__file__).parents[2] / "dashboards" / "lifelong-stream.json"


def vector_stream(location, segments=6, rows=100, dim=8, classes=30):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim))
    for n in range(segments):
        labels = rng.integers(classes, size=rows)
        x = (centres[labels] + 0.2 * rng.normal(size=(rows, dim))).astype(np.float32)
        write_segment(location, n, x, labels, "test", f"float32[{dim}]")


def job(tmp_path, **stream):
    return config_from_dict(StreamJob, {
        "stream": {"source": str(tmp_path / "src"), "name": "t", "batch_size": 16,
                   "idle_timeout_s": 0, "poll_s": 0.05, "log_every": 100, "plot_every": 300,
                   "windows": [100], **stream},
        "memory": {"choose_k": 16},
        "shared_memory": {"name": "stream-mem", "storage": str(tmp_path / "mem"),
                          "num_slots": 512, "num_values": 30, "shards": 2, "num_cpus": 0.5},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}",
                     "artifact_location": str(tmp_path / "art")}})


def test_stream_run_logs_and_exports_its_metrics_and_resumes(ray_local, tmp_path, capsys):
    vector_stream(str(tmp_path / "src"))
    result = run_stream_job(job(tmp_path, max_examples=400), progress=False)
    assert (result.examples, result.stats.examples) == (400, 400)
    out = capsys.readouterr().out
    assert "prequential accuracy (%)" in out and "1-shot accuracy" in out

    # The gauges the dashboard queries are exported while this driver lives.
    wanted = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            wanted |= set(re.findall(r"ray_lifelong_stream_[a-z_]+", target["expr"]))
    assert len(wanted) == 7
    node = ray_local.nodes()[0]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline, missing = time.time() + 60, wanted
    while time.time() < deadline and missing:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        missing = wanted - set(re.findall(r"^(ray_lifelong_stream_[a-z_]+)", text, re.M))
        time.sleep(2)
    assert not missing, f"the stream dashboard queries metrics not exported: {missing}"

    # A second run resumes (same MLflow run, the rest of the stream, nothing twice).
    again = run_stream_job(job(tmp_path), progress=False)
    assert (again.resumed_at, again.examples, again.stats.examples) == (400, 200, 600)

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("stream").experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    acc = client.get_metric_history(run_id, metrics.STREAM_PREQUENTIAL_ACC)
    assert sorted({m.step for m in acc}) == [100, 200, 300, 400, 500, 600]
    one_shot = client.get_metric_history(run_id, metrics.stream_shot_metric(1))
    assert one_shot and all(0 <= m.value <= 1 for m in one_shot)
    assert metrics.stream_window_metric(100) in runs[0].data.metrics
    assert runs[0].data.metrics[metrics.STREAM_EXAMPLES] == 600
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert metrics.STREAM_KSHOT_PLOT in artifacts and metrics.CONFIG_ARTIFACT in artifacts
