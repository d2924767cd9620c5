"""Connecting without the token of a token-auth head is one clear line, at once: not Ray's 20 s
of connection retries and a traceback."""

import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ray

CONNECT = ("import sys\nfrom lifelong.distributed.cluster "
           "import ensure_ray\nfrom lifelong.errors import LifelongError\ntry:\n    ensure_ray()\n"
           "except LifelongError as exc:\n    print(f'error: {type(exc).__name__}: {exc}', "
           "file=sys.stderr)\n    sys.exit(2)\nprint('connected')\n")


def connect(env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CONNECT], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.perf_counter() - start


def test_an_address_without_the_token_is_one_line_and_with_it_connects(ray_head, tmp_path):
    # One head for every case: starting one takes most of this test's time.
    env = {k: v for k, v in ray_head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(RAY_ADDRESS=ray_head.gcs, HOME=str(tmp_path))  # no default token file either
    for mode in ("unset", "token"):  # Ray's default (auth off here), and token without one
        proc, seconds = connect({**env, "RAY_AUTH_MODE": "token"} if mode == "token" else env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        # Ray's own "Connecting to existing Ray cluster" info line may come first
        lines = [line for line in proc.stderr.strip().splitlines()
                 if "INFO worker.py" not in line]
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ClusterAuthError: the Ray cluster at ")
        assert "export RAY_AUTH_MODE=token" in lines[0]
        assert seconds < 15, mode
    proc, _ = connect({**ray_head.env, "RAY_ADDRESS": ray_head.gcs})
    assert proc.returncode == 0 and "connected" in proc.stdout, proc.stderr
