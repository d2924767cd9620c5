"""Monitoring for real (issue 19, item 1): a real Prometheus finds a local Ray cluster through
the service-discovery file Ray's head writes, scrapes a named memory under write traffic, a
stream job and the online service (issue 20: predict, learn, a retried learn, a bad request
over HTTP), and every expression of every panel and variable of dashboards/*.json returns
samples through Prometheus's HTTP API; again after IDLE_S seconds without traffic (the
gauges are set again on a timer, not only on writes). A wrong expression returns nothing."""

import io
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest
import requests
import torch

from lifelong.config import config_from_dict
from lifelong.distributed import MemorySpec, create_memory
from lifelong.errors import MonitorError
from lifelong.service.config import ServeJob
from lifelong.service.launch import start_service
from lifelong.monitor import (PrometheusAPI, PrometheusConfig, PrometheusProcess,
                              evaluate_dashboards, find_prometheus, load_dashboards,
                              results_table)
from lifelong.streaming import launch

from test_stream_job_ray import job, vector_stream

pytestmark = pytest.mark.ray
IDLE_S = 60  # the "60 s without traffic": six times Ray's gauge expiry here (2 x 5 s)
EXPORT_MS = 5000
SCRAPE_S = 1.0


@pytest.fixture
def prometheus_binary():
    try:  # installs Debian's package where this user may (root with apt-get)
        return find_prometheus(install=True)
    except MonitorError as exc:
        pytest.skip(f"no Prometheus binary can be had here: {exc}")


@pytest.fixture
def ray_with_dashboard(free_ports):
    """A local Ray whose head runs the dashboard (it writes the service-discovery file), in a
    short temp dir of its own, with its own ports."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="lifelong-mon-")  # short: Ray's socket paths live there
    # Ray exports every 5 s instead of 10: data sooner, and gauges not set again expire
    # sooner (within 10 s instead of 20 s), so the idle check is stricter, not looser.
    ray.init(num_cpus=4, include_dashboard=True, dashboard_port=free_ports(),
             _metrics_export_port=free_ports(), _temp_dir=temp, namespace="lifelong",
             log_to_driver=False, _system_config={"metrics_report_interval_ms": EXPORT_MS})
    try:
        yield temp
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    pytest.fail(f"{what} within {timeout_s} s")


def test_every_dashboard_query_returns_data_under_traffic_and_after_idling(
        prometheus_binary, ray_with_dashboard, free_ports, tmp_path, monkeypatch, capsys):
    config = PrometheusConfig(ray_temp_dir=ray_with_dashboard, port=free_ports(),
                              scrape_interval_s=SCRAPE_S, run_dir=str(tmp_path / "prom"))
    wait_for(config.sd_file.exists, 30, f"Ray wrote no {config.sd_file}")
    runners = []

    class Recorded(launch.StreamRunner):  # to stop the job, which waits for data forever
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    monkeypatch.setattr(launch, "StreamRunner", Recorded)
    vector_stream(str(tmp_path / "src"))
    stream = threading.Thread(target=launch.run_stream_job, daemon=True,
                              args=(job(tmp_path, idle_timeout_s=None, log_every=50),),
                              kwargs={"progress": False, "out": io.StringIO()})
    memory = create_memory(MemorySpec(name="watched", key_dim=16, num_slots=64, num_values=12,
                                      shards=2, choose_k=7, storage=str(tmp_path / "mem"),
                                      num_cpus=0.5))
    service = start_service(config_from_dict(ServeJob, {
        "serve": {"name": "watched-serve", "port": free_ports(), "num_cpus": 0,
                  "min_replicas": 1, "max_replicas": 1, "payload_format": "float32[16]"},
        "shared_memory": {"name": "watched-served", "storage": str(tmp_path / "mem"),
                          "num_slots": 64, "shards": 2, "num_values": 12, "num_cpus": 0.25}}),
        out=io.StringIO())
    served = iter(range(10**6))

    def serve_traffic():  # every route and outcome the serve dashboard shows
        keys = np.random.default_rng(next(served)).standard_normal((2, 16)).tolist()
        learn = {"request_id": f"watched-{next(served)}", "examples": keys, "labels": [1, 2]}
        for _ in range(2):  # the second is answered from the record (a replay)
            assert requests.post(f"{service}/learn", json=learn, timeout=30).ok
        assert requests.post(f"{service}/predict", json={"examples": keys}, timeout=30).ok
        assert requests.post(f"{service}/predict", data=b"{bad", timeout=30).status_code == 400

    dashboards = load_dashboards()
    assert "lifelong-serve" in dashboards
    gen = torch.Generator().manual_seed(0)
    known, known_labels = torch.randn(8, 16, generator=gen), torch.arange(8)
    with PrometheusProcess(config, prometheus_binary) as prometheus:
        api = PrometheusAPI(config.url)
        stream.start()
        try:
            wait_for(lambda: api.targets_up() >= 1, 30, "Prometheus scraped no Ray node")
            results = []

            def all_answer():
                for _ in range(5):  # write traffic: new keys inserted, known ones refreshed
                    memory.query(torch.randn(8, 16, generator=gen),
                                 torch.randint(0, 12, (8,), generator=gen))
                    memory.query(known, known_labels)
                serve_traffic()
                results[:] = evaluate_dashboards(config.url, dashboards)
                return all(r.ok and (r.finite or r.query.optional) for r in results)

            wait_for(all_answer, 90, "some panels returned no data under traffic:\n"
                     + results_table([r for r in results if not r.ok]))
            with capsys.disabled():
                print(f"\n## under traffic\n\n{results_table(results)}\n")

            time.sleep(IDLE_S)  # no writes, no queries; the stream job waits for data
            idle = evaluate_dashboards(config.url, dashboards)
            with capsys.disabled():
                print(f"\n## after {IDLE_S} s without traffic\n\n{results_table(idle)}\n")
            empty = [r for r in idle if not r.ok]
            assert not empty, f"panels blank after {IDLE_S} s idle:\n{results_table(empty)}"

            # The check can fail: a label never set and a quantile without `le` give nothing.
            assert api.query('ray_lifelong_memory_occupancy{shard="no-such-shard"}') == []
            assert api.query("histogram_quantile(0.5, sum by (memory) (rate("
                             "ray_lifelong_memory_query_latency_s_bucket[1m])))") == []
        finally:
            for runner in runners:
                runner.stopping = True
            stream.join(timeout=60)
            from ray import serve

            serve.shutdown()
    assert not stream.is_alive()
    assert prometheus.process.poll() is not None  # ended, by its pid
