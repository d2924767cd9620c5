"""A Prometheus for a Ray cluster: its ``prometheus.yml`` (every Ray node found through the
service-discovery file Ray's head writes), the binary (Debian's ``prometheus`` package
installed where the user may), and the process, started with its own data folder and ended
by its pid. Prometheus's own system service is never touched."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from lifelong.errors import ConfigError, MonitorError

DEFAULT_RAY_TEMP_DIR = "/tmp/ray"
# ray._private.ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE: Ray's head (its dashboard
# process) rewrites it every 5 s with the metrics address of every live node, in the session
# folder and as a link at the top of the temp dir.
SD_FILE = "prom_metrics_service_discovery.json"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
INSTALL_COMMAND = ("apt-get", "install", "-y", "prometheus")
MISSING_HINT = ("install it with `sudo apt-get install prometheus` (Debian, Ubuntu), or take "
                "the binary from https://prometheus.io/download/ and put it on the PATH (or "
                "pass --prometheus PATH)")


def duration(seconds: float) -> str:
    """A Prometheus duration: ``10s``, ``500ms``."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class PrometheusConfig:
    """Where Prometheus listens, what it scrapes, where it keeps its data.

    Attributes:
        ray_temp_dir: Ray's temp dir on the head node (``ray start --temp-dir``; Ray's default
            ``/tmp/ray``), where the head writes the service-discovery file.
        port: The port of Prometheus's web UI and HTTP API.
        listen: The address it listens on: loopback only (put an authenticating proxy in
            front to share it).
        scrape_interval_s: Seconds between scrapes of each node (Ray's own config: 10).
        run_dir: Holds the generated ``prometheus.yml``, the time-series data and the log
            (None: ``~/.lifelong/prometheus``).
        retention: How long samples are kept (a Prometheus duration).
        binary: The ``prometheus`` executable (None: from the PATH).
        install: Install Debian's package when the binary is missing and the user is root.
    """

    ray_temp_dir: str = DEFAULT_RAY_TEMP_DIR
    port: int = 9090
    listen: str = "127.0.0.1"
    scrape_interval_s: float = 10.0
    run_dir: str | None = None
    retention: str = "15d"
    binary: str | None = None
    install: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or \
                not 1 <= self.port <= 65535:
            raise ConfigError(f"must be a port number in [1, 65535], not {self.port!r}",
                              key="port")
        if self.listen not in LOOPBACK:
            raise ConfigError(f"must be a loopback address ({', '.join(LOOPBACK)}), not "
                              f"{self.listen!r}: Prometheus's API has no authentication",
                              key="listen")
        if not isinstance(self.scrape_interval_s, (int, float)) or \
                not 0.1 <= self.scrape_interval_s <= 3600:
            raise ConfigError("must be a number of seconds in [0.1, 3600]",
                              key="scrape_interval_s")
        if not self.ray_temp_dir:
            raise ConfigError("is required", key="ray_temp_dir")

    @property
    def sd_file(self) -> Path:
        """Ray's service-discovery file (the link to the current session's)."""
        return Path(self.ray_temp_dir) / SD_FILE

    @property
    def folder(self) -> Path:
        return Path(self.run_dir or Path.home() / ".lifelong" / "prometheus").absolute()

    @property
    def url(self) -> str:
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"http://{host}:{self.port}"


def prometheus_yml(config: PrometheusConfig) -> str:
    """The ``prometheus.yml``: one job ``ray`` whose targets are read from Ray's
    service-discovery file (re-read as it changes, at the latest every 5 s)."""
    interval = duration(config.scrape_interval_s)
    return yaml.safe_dump({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "ray",
            "scrape_timeout": duration(min(config.scrape_interval_s, 10.0)),
            "file_sd_configs": [{"files": [str(config.sd_file)], "refresh_interval": "5s"}],
        }],
    }, sort_keys=False)


def find_prometheus(binary: str | None = None, install: bool = True, out=None) -> str:
    """The path of the ``prometheus`` executable.

    Args:
        binary: An explicit path (checked), or None to look on the PATH.
        install: When it is missing, run ``apt-get install -y prometheus`` if this user is
            root and apt-get exists.
        out: Where the installation's one-line notes go (default stderr).

    Raises:
        MonitorError: it is missing and cannot be installed here (the message says how).
    """
    out = out or sys.stderr
    if binary is not None:
        if shutil.which(binary) is None:
            raise MonitorError(f"{binary} is not an executable Prometheus")
        return shutil.which(binary)
    found = shutil.which("prometheus")
    if found:
        return found
    if not install:
        raise MonitorError(f"prometheus is not on the PATH: {MISSING_HINT}")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise MonitorError("prometheus is not on the PATH and cannot be installed from here "
                           f"(needs root and apt-get): {MISSING_HINT}")
    print(f"prometheus is missing: {' '.join(INSTALL_COMMAND)}", file=out, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(INSTALL_COMMAND, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(("apt-get", "update"), capture_output=True, text=True, env=env)
        done = subprocess.run(INSTALL_COMMAND, capture_output=True, text=True, env=env)
    found = shutil.which("prometheus")
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MonitorError(f"`{' '.join(INSTALL_COMMAND)}` failed ({tail[0]}): "
                           f"{MISSING_HINT}")
    return found


def _check_free(host: str, port: int) -> None:
    """Raises MonitorError if something listens on (host, port) already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Prometheus: a port in
        try:  # TIME_WAIT is free, a listening one is not
            s.bind((host, port))
        except OSError as exc:
            raise MonitorError(
                f"{host}:{port} is taken ({exc.strerror}): another Prometheus (Debian's "
                "`prometheus` service listens on 9090: `systemctl stop prometheus`)? Choose "
                "another --port") from None


class PrometheusProcess:
    """One Prometheus started by this process (``with PrometheusProcess(config) as p:``).

    Args:
        config: Where it listens, what it scrapes, where its files go.
        binary: The executable (``find_prometheus``'s answer).
    """

    def __init__(self, config: PrometheusConfig, binary: str):
        self.config, self.binary = config, binary
        self.process: subprocess.Popen | None = None
        self.config_path = config.folder / "prometheus.yml"
        self.log_path = config.folder / "prometheus.log"

    def start(self, ready_timeout_s: float = 60.0) -> "PrometheusProcess":
        """Writes ``prometheus.yml``, starts the binary and waits until it answers.

        Raises:
            MonitorError: it exited or did not become ready (the message ends with its log).
        """
        _check_free(self.config.listen, self.config.port)
        folder = self.config.folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(prometheus_yml(self.config))
        listen = f"[{self.config.listen}]" if ":" in self.config.listen else self.config.listen
        command = [self.binary, f"--config.file={self.config_path}",
                   f"--storage.tsdb.path={folder / 'data'}",
                   f"--storage.tsdb.retention.time={self.config.retention}",
                   f"--web.listen-address={listen}:{self.config.port}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(ready_timeout_s)
        except MonitorError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MonitorError(f"prometheus exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.config.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise MonitorError(f"prometheus did not answer at {self.config.url} within "
                           f"{timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or "empty log"

    def wait(self) -> int:
        """Blocks until the process ends; its exit status."""
        return self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ends the process this object started (SIGTERM, then SIGKILL), by its pid."""
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> "PrometheusProcess":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
