import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))

# Test helpers (e.g. the brute-force memory reference) import by module name.
sys.path.insert(0, str(Path(__file__).parent / "unit"))


@pytest.fixture(autouse=True, scope="session")
def lifelong_home(tmp_path_factory):
    """$LIFELONG_HOME in a temporary folder for the session: no test writes the default MLflow
    store or memories into the user's ~/.lifelong (a test naming its own wins)."""
    patch = pytest.MonkeyPatch()
    if not os.environ.get("LIFELONG_HOME"):
        patch.setenv("LIFELONG_HOME", str(tmp_path_factory.mktemp("lifelong-home")))
    yield os.environ["LIFELONG_HOME"]
    patch.undo()


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now, never one this process was given before: the kernel may hand the
    same free port to two binds in a row, and a head started with it twice (say its GCS port
    and its metrics port) fails to start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@pytest.fixture(scope="session")
def free_ports():
    """``free_port`` for test modules (a conftest is no module to import from)."""
    return free_port


def our_ray_processes(token: str) -> list[int]:
    """Processes of the head we started: they all inherited our one-off auth token (Linux)."""
    marker = f"RAY_AUTH_TOKEN={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@dataclass
class HeadNode:
    dashboard: str  # http address: `ray job submit --address`
    gcs: str        # host:port: `ray.init(address=...)`, RAY_ADDRESS of jobs
    env: dict       # environment with the cluster's one-off auth token
    temp: str = ""  # the head's temp dir (its session, job working-dir copies)


@pytest.fixture
def ray_head(tmp_path):
    """A head node started with `ray start --head` (2 CPUs, token authentication on, own
    ports and temp dir); its processes are ended by pid afterwards."""
    temp = tempfile.mkdtemp(prefix="lifelong-head-")  # short: Ray's socket paths live there
    dashboard = free_port()
    # The cluster's `python` is this environment's (as after `source .venv/bin/activate`).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2",
                    f"--temp-dir={temp}", "--include-dashboard=true",
                    f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={free_port()}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        yield HeadNode(dashboard=f"http://127.0.0.1:{dashboard}",
                       gcs=f"127.0.0.1:{port}", env=env, temp=temp)
    finally:
        for pid in our_ray_processes(env["RAY_AUTH_TOKEN"]):  # never `ray stop`: it would end
            # every Ray on the machine
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
