"""Joining a Ray cluster: the one place the platform calls ``ray.init``."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from typing import Iterator

import ray
from ray.exceptions import AuthenticationError

from lifelong.distributed.actor import NAMESPACE
from lifelong.errors import ClusterAuthError

_HOST_PORT = re.compile(r"[A-Za-z0-9.\-\[\]]+:[0-9]+")  # a GCS address, not "auto" or a URI
AUTH_HINT = ("export RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, "
             "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, the one `ray start` used)")


def ensure_ray(address: str | None = None, *, local_cpus: float | None = None,
               log_to_driver: bool = False) -> None:
    """Joins a cluster, or starts a local Ray, unless this process is connected already.

    Args:
        address: The cluster to join; None takes ``$RAY_ADDRESS``.
        local_cpus: Without an address: None lets Ray find a cluster of this machine (the last
            one ``ray start`` began, else a new local one: what ``lifelong memory`` commands
            want); a number starts an embedded local Ray with at least that many logical CPUs
            (the jobs' case: workers and shard actors mostly wait on each other, so they may
            outnumber the cores).
        log_to_driver: Print the workers' and actors' output here.

    Raises:
        ClusterAuthError: The cluster wants a token this process does not have (at once, not
            after Ray's 20 s of connection retries).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address or local_cpus is None:
            if address and _HOST_PORT.fullmatch(address) and _has_token_or_no_auth():
                check_auth(address)
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver)
            return
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(local_cpus)),
                 namespace=NAMESPACE, log_to_driver=log_to_driver)
    except (AuthenticationError, ConnectionError) as exc:
        refusal = _refusal(exc)
        if refusal is None:  # not an auth problem: Ray's own error
            raise
        raise ClusterAuthError(f"the Ray cluster{' at ' + address if address else ''} refused "
                               f"this process ({_first_line(refusal)}): {AUTH_HINT}") from None


def check_auth(address: str) -> None:
    """One call to the cluster's GCS at ``host:port`` (when it accepts a connection): raises
    ``ClusterAuthError`` when it refuses this process's token (or its lack of one); any other
    outcome is left to ``ray.init`` (a cluster still starting, a wrong address)."""
    if not _reachable(address):  # Ray's client would wait 40 s: leave it to ray.init
        return
    try:
        from ray._raylet import GcsClient  # Ray's own client; ray.init retries it for 20 s

        with _quiet_stderr():  # its C++ side logs the refusal as a warning line
            GcsClient(address=address)
    except AuthenticationError as exc:
        raise ClusterAuthError(f"the Ray cluster at {address} refused this process "
                               f"({_first_line(exc)}): {AUTH_HINT}") from None
    except Exception:  # noqa: BLE001 - not ours to judge: ray.init reports it
        return


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout_s``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _refusal(exc: BaseException) -> BaseException | None:
    """The ``AuthenticationError`` in ``exc``'s chain of causes (``ray.init`` wraps it in a
    ``ConnectionError`` after its retries), or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _has_token_or_no_auth() -> bool:
    """False where token mode is asked for and no token is at hand: Ray's client would abort
    the process there, while ``ray.init`` raises at once (before any retry)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return True
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or os.path.isfile(os.path.expanduser("~/.ray/auth_token")))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a block (native code's log lines included)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.split(". ")[0].splitlines()[0] if text else type(exc).__name__
    return first.replace("RPC error: ", "")
