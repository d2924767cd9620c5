"""`lifelong monitor` without a cluster: the generated prometheus.yml, the binary's lookup, the
dashboards' conventions (Ray's: SessionName / Cluster variables, $__rate_interval, worker
labels aggregated away, a datasource variable and no hard-coded datasource uid), and the
rendering of Grafana variables. The real Prometheus test: distributed/test_monitoring_ray.py."""

import re
import shutil
import subprocess

import pytest
import yaml

from lifelong import metrics
from lifelong.errors import ConfigError, MonitorError
from lifelong.monitor import PrometheusConfig, load_dashboards, panel_queries, render
from lifelong.monitor import prometheus as prom
from lifelong.monitor.dashboards import PanelQuery, QueryResult, results_table

DASHBOARDS = load_dashboards()
FILTERS = ('SessionName=~"$SessionName"', 'ray_io_cluster=~"$Cluster"')


def targets():
    return [(name, q) for name, d in DASHBOARDS.items() for q in panel_queries(name, d)
            if not q.panel.startswith("$")]


def test_prometheus_yml_scrapes_the_nodes_of_rays_service_discovery_file(tmp_path):
    config = PrometheusConfig(ray_temp_dir=str(tmp_path / "ray"), port=19090,
                              scrape_interval_s=2.5, run_dir=str(tmp_path / "run"))
    text = prom.prometheus_yml(config)
    parsed = yaml.safe_load(text)
    assert parsed["global"]["scrape_interval"] == "2500ms"
    [job] = parsed["scrape_configs"]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"] == [{"files": [str(tmp_path / "ray" /
                                                     "prom_metrics_service_discovery.json")],
                                       "refresh_interval": "5s"}]
    assert config.url == "http://127.0.0.1:19090"
    promtool = shutil.which("promtool")
    if promtool:  # Debian's package has it: the file is a valid Prometheus config
        path = tmp_path / "prometheus.yml"
        path.write_text(text)
        done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("field, value", [("port", 0), ("port", 70000), ("port", True),
                                          ("listen", "0.0.0.0"), ("scrape_interval_s", 0),
                                          ("ray_temp_dir", "")])
def test_monitor_config_is_checked(field, value):
    with pytest.raises(ConfigError, match=field):
        PrometheusConfig(**{field: value})


def test_a_taken_port_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = PrometheusConfig(port=taken.getsockname()[1], run_dir=str(tmp_path))
        with pytest.raises(MonitorError, match="is taken.*--port"):
            prom.PrometheusProcess(config, "/bin/false").start()
    assert not (tmp_path / "prometheus.yml").exists()  # nothing started, nothing written


def test_durations_in_prometheus_syntax():
    assert [prom.duration(s) for s in (10, 1.0, 0.5, 2.25)] == ["10s", "1s", "500ms", "2250ms"]


def test_a_missing_binary_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(prom.shutil, "which", lambda name: None)
    with pytest.raises(MonitorError, match="apt-get install prometheus"):
        prom.find_prometheus(install=False)
    monkeypatch.setattr(prom.os, "geteuid", lambda: 1000)  # not root: no installation tried
    with pytest.raises(MonitorError, match="cannot be installed from here"):
        prom.find_prometheus(install=True)
    with pytest.raises(MonitorError, match="not an executable"):
        prom.find_prometheus("/nonexistent/prometheus")


def test_dashboards_import_into_grafana_as_they_are():
    for name, d in DASHBOARDS.items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        assert {"SessionName", "Cluster"} <= set(variables), name
        uids = set(re.findall(r'"uid":\s*"([^"]*)"', _json(d["panels"]) +
                              _json(d["templating"])))
        assert uids == {"${datasource}"}, f"{name}: hard-coded datasource uids {uids}"


def _json(x) -> str:
    import json

    return json.dumps(x)


def test_every_panel_follows_rays_query_conventions():
    known = {metrics.prometheus_name(getattr(metrics, n), kind)
             for n, kind in [("MEMORY_QUERY_LATENCY_S", "histogram"),
                             ("MEMORY_QUERIES", "counter"), ("MEMORY_INSERTS", "counter"),
                             ("MEMORY_REFRESHES", "counter"),
                             ("SERVE_REQUESTS", "counter"), ("SERVE_LATENCY_S", "histogram"),
                             ("SERVE_BATCH_REQUESTS", "histogram"),
                             ("SERVE_BATCH_EXAMPLES", "histogram"),
                             ("SERVE_LEARN_WRITES", "counter"), ("SERVE_LEARN_REPLAYS", "counter"),
                             ("SERVE_HEARTBEAT", "gauge")]}
    known |= {metrics.prometheus_name(getattr(metrics, n), "gauge") for n in dir(metrics)
              if n.startswith(("MEMORY_", "STREAM_RAY_")) and isinstance(getattr(metrics, n), str)
              and getattr(metrics, n).startswith("lifelong_")}
    assert targets()
    for name, q in targets():
        where = f"{name} / {q.panel} ({q.ref}): {q.expr}"
        for f in FILTERS:
            assert f in q.expr, f"{where} lacks {f}"
        assert re.match(r"^(histogram_quantile\([\d.]+, )?(sum|max|min|avg) by \(", q.expr), \
            f"{where}: worker labels (WorkerId, instance, ...) are not aggregated away"
        series = set(re.findall(r"\bray_lifelong_\w+", q.expr))
        assert series and series <= known, f"{where}: not a metric of metrics.py"
        for window in re.findall(r"\b(?:rate|irate|increase)\((\w+)\{[^}]*\}\[([^\]]+)\]",
                                 q.expr):
            metric, interval = window
            assert interval == "$__rate_interval", where
            assert metric.endswith(("_total", "_bucket")), f"{where}: rate over a gauge"
        for metric in series - {m for m, _ in re.findall(
                r"\b(?:rate|irate|increase)\((\w+)\{[^}]*\}\[([^\]]+)\]", q.expr)}:
            assert not metric.endswith(("_total", "_bucket")), f"{where}: {metric} without rate"
        if "histogram_quantile" in q.expr:
            assert re.search(r"by \(le\b", q.expr), f"{where}: quantile without le"


def test_grafana_variables_are_filled_as_for_all():
    memory = DASHBOARDS["lifelong-memory"]
    latency = next(q for q in panel_queries("lifelong-memory", memory) if q.ref == "A")
    text = render(latency.expr, memory, rate_interval="30s")
    assert "$" not in text and "[30s]" in text
    assert 'SessionName=~".+"' in text and 'ray_io_cluster=~".*"' in text
    with pytest.raises(MonitorError, match=r"\$memroy"):
        render('ray_lifelong_memory_occupancy{memory=~"$memroy"}', memory)


def test_results_table_lists_panel_expression_and_samples():
    q = PanelQuery("d", "Occupancy", "A", "max by (memory) (m)")
    table = results_table([QueryResult(q, "max by (memory) (m)", 3, 2)])
    assert table.splitlines()[-1] == "| d | Occupancy (A) | `max by (memory) (m)` | 3 (2) |"
    assert not QueryResult(q, "", 0, 0).ok
    assert QueryResult(PanelQuery("d", "$Cluster", "", "x", optional=True), "", 0, 0).ok


def test_monitor_help_exits_0(capsys):
    from lifelong.cli import main

    for argv in (["monitor", "--help"], ["monitor", "start", "--help"],
                 ["monitor", "check", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    assert "prom_metrics_service_discovery.json" in capsys.readouterr().out


def test_lifelong_monitor_start_runs_prometheus_until_sigterm(tmp_path):
    import os
    import signal
    import socket
    import sys
    import time
    import urllib.request

    try:
        prom.find_prometheus(install=False)
    except MonitorError as exc:
        pytest.skip(f"no Prometheus binary here: {exc}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = subprocess.Popen(
        [sys.executable, "-m", "lifelong.cli", "monitor", "start", "--port", str(port),
         "--ray-temp-dir", str(tmp_path / "ray"), "--run-dir", str(tmp_path / "run"),
         "--no-install"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        while not any("Ctrl-C stops it" in line for line in lines):
            line = command.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert "does not exist yet" in text  # no Ray head here: one clear note
        pid = int(re.search(r"Prometheus \(pid (\d+)\)", text).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=10) as r:
            assert r.status == 200
        assert yaml.safe_load((tmp_path / "run" / "prometheus.yml").read_text())[
            "scrape_configs"][0]["file_sd_configs"][0]["files"] == [
            str(tmp_path / "ray" / "prom_metrics_service_discovery.json")]
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid), "the Prometheus it started outlived it"
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
