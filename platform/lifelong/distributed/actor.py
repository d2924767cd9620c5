"""The Ray actor that holds one memory shard, and the shard group the client calls through."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Sequence

import ray
import torch
from ray.util import metrics as ray_metrics

from lifelong import errors, metrics
from lifelong.distributed.channel import ShardServer
from lifelong.distributed.shard import MemoryShard
from lifelong.distributed.spec import MemorySpec
from lifelong.errors import LifelongError, ShardUnavailableError

NAMESPACE = "lifelong"
# Calls a shard actor runs at once (threads): each holds the shard's lock while it reads or
# changes the state, and waits for its log sync without it, so writers share syncs.
MAX_CONCURRENCY = 8


def actor_name(memory: str, index: int) -> str:
    return f"memory:{memory}:shard-{index:03d}"


def shard_died_error(memory: str, exc: Exception) -> LifelongError:
    """The typed error of a shard actor that died (e.g. the CorruptStateError its constructor
    raised on a corrupt snapshot or log when it started or restarted), from the text Ray
    reports it with; ShardUnavailableError when no typed error is in it."""
    text = str(exc)
    found = re.findall(r"lifelong\.errors\.(\w+): ([^\n]*)", text)
    kind = getattr(errors, found[-1][0], None) if found else None
    if isinstance(kind, type) and issubclass(kind, LifelongError):
        return kind(f"a shard of {memory!r} failed to start: {found[-1][1]}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return ShardUnavailableError(f"a shard of {memory!r} is unavailable: "
                                 f"{lines[-1] if lines else type(exc).__name__}")


class _ShardMetrics:
    def __init__(self, memory: str, index: int):
        tags = {"memory": memory, "shard": str(index)}
        keys = metrics.MEMORY_TAG_KEYS
        self.latency = ray_metrics.Histogram(
            metrics.MEMORY_QUERY_LATENCY_S, "seconds per search on one shard (a pipelined "
            "step's includes the update it carries)",
            boundaries=metrics.MEMORY_QUERY_LATENCY_BOUNDARIES, tag_keys=keys)
        self.queries = ray_metrics.Counter(metrics.MEMORY_QUERIES, "queries answered",
                                           tag_keys=keys)
        self.inserts = ray_metrics.Counter(metrics.MEMORY_INSERTS, "keys inserted", tag_keys=keys)
        self.refreshes = ray_metrics.Counter(metrics.MEMORY_REFRESHES, "keys refreshed",
                                             tag_keys=keys)
        self.occupancy = ray_metrics.Gauge(metrics.MEMORY_OCCUPANCY, "filled slots",
                                           tag_keys=keys)
        self.oldest_age = ray_metrics.Gauge(metrics.MEMORY_OLDEST_AGE,
                                            "age of the oldest filled slot", tag_keys=keys)
        self.snapshot_failures = ray_metrics.Gauge(
            metrics.MEMORY_SNAPSHOT_FAILURES, "snapshots that could not be written (the log "
            "holds every update)", tag_keys=keys)
        self.torn_frames = ray_metrics.Gauge(
            metrics.MEMORY_TORN_FRAMES, "torn final log frames dropped at start (never "
            "acknowledged)", tag_keys=keys)
        for m in (self.latency, self.queries, self.inserts, self.refreshes, self.occupancy,
                  self.oldest_age, self.snapshot_failures, self.torn_frames):
            m.set_default_tags(tags)
        # Counted by the calls, exported by ``export``: a Ray metric call costs tens of
        # microseconds, which the direct channel spends after its reply has left.
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._counts = [0, 0, 0]  # queries, inserts, refreshes

    def count(self, queries: int = 0, inserts: int = 0, refreshes: int = 0,
              latency: float | None = None) -> None:
        with self._lock:
            self._counts[0] += queries
            self._counts[1] += inserts
            self._counts[2] += refreshes
            if latency is not None:
                self._latencies.append(latency)

    def export(self) -> None:
        """Hands what was counted since the last export to Ray's metrics."""
        with self._lock:
            (queries, inserts, refreshes), self._counts = self._counts, [0, 0, 0]
            latencies, self._latencies = self._latencies, []
        for value in latencies:
            self.latency.observe(value)
        for metric, n in ((self.queries, queries), (self.inserts, inserts),
                          (self.refreshes, refreshes)):
            if n:
                metric.inc(n)


class ShardActor:
    """A MemoryShard in a Ray actor: restarted by Ray after a crash, it rebuilds itself from
    its snapshot and log (the constructor does), and a retried update is applied once.
    Started threaded (``MAX_CONCURRENCY``): the calls of several clients overlap their syncs;
    each client sends its next call only after the answer to the last."""

    def __init__(self, spec_json: str, index: int):
        spec = MemorySpec.from_json(spec_json)
        device = spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(spec.num_cpus) or 1))
        self.shard = MemoryShard(spec, index, device=device)
        # The direct channel of the step calls (lifelong.distributed.channel)
        self.server = ShardServer(self, ray.util.get_node_ip_address())
        self.metrics = _ShardMetrics(spec.name, index)
        self._gauges()
        # Every GAUGE_INTERVAL_S, traffic or not: not per call (a pass over the slots), and an
        # idle shard's series stay exported.
        self._gauge_timer = metrics.GaugeTimer(self._gauges, name="shard-gauges").start()

    def _gauges(self) -> None:
        values = self.shard.gauges()
        self.metrics.occupancy.set(values["occupied"])
        self.metrics.oldest_age.set(values["oldest_age"])
        self.metrics.snapshot_failures.set(values["snapshot_failures"])
        self.metrics.torn_frames.set(values["torn_frames"])

    # The step calls. Through Ray they export their metrics before they return; through the
    # direct channel (``serve``) the server calls ``after_reply`` once the answer has left.
    def search(self, q, labels, k):
        return self._exported(self.serve("search", (q, labels, k)))

    def apply(self, write):
        return self._exported(self.serve("apply", (write,)))

    def step(self, write, q, labels, k):
        """``MemoryShard.step``: the previous step's update, then this step's search, in one
        durable reply (the log syncs while the search runs)."""
        return self._exported(self.serve("step", (write, q, labels, k)))

    def serve(self, op: str, args: tuple):
        """Runs the step call ``op`` (``wire.CALLS``) on the shard and counts it."""
        start = time.perf_counter()
        result = getattr(self.shard, op)(*args)
        write = args[0] if op != "search" else None
        q = args[-3] if op != "apply" else None
        self.metrics.count(
            queries=0 if q is None else q.shape[0],
            inserts=0 if write is None else len(write.insert_labels),
            refreshes=0 if write is None else len(write.refresh_labels),
            latency=None if q is None else time.perf_counter() - start)
        return result

    def after_reply(self) -> None:
        self.metrics.export()

    def _exported(self, result):
        self.metrics.export()
        return result

    def state(self):
        return self.shard.state()

    def status(self) -> dict:
        status = self.shard.status()
        status["node"] = ray.get_runtime_context().get_node_id()
        status["pid"] = os.getpid()
        return status

    def snapshot(self) -> int:
        return self.shard.snapshot()

    def load_state(self, keys, values, ages, clock) -> int:
        generation = self.shard.load_state(keys, values, ages, clock)
        self._gauges()
        return generation

    def ping(self) -> bool:
        return True

    def endpoint(self) -> dict:
        """Where the direct channel listens, and its token (``channel.ShardServer``)."""
        return self.server.endpoint()

    def location(self) -> str:
        """The storage location this shard reads and writes (its memory's folder)."""
        return self.shard.spec.location


class RayShards:
    """The shard actors of one memory; ``call`` runs a method on all of them at once."""

    def __init__(self, handles: Sequence[Any], timeout_s: float = 120.0, memory: str = ""):
        self.handles = list(handles)
        self.timeout_s = timeout_s
        self.memory = memory

    def call(self, method, args):
        """Raises:
            ShardUnavailableError: a shard did not answer within ``timeout_s``.
            LifelongError: a shard died and cannot restart, as the typed error it raised
                (e.g. CorruptStateError naming the file it cannot read).
        """
        return self.call_some(method, range(len(self.handles)), args)

    def call_some(self, method, shards: Sequence[int], args: Sequence[tuple]) -> list:
        """``call`` on the shards numbered ``shards`` only, ``args`` in the same order."""
        refs = [getattr(self.handles[i], method).remote(*a) for i, a in zip(shards, args)]
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ShardUnavailableError(
                f"memory shards did not answer {method} within {self.timeout_s} s") from None
        except ray.exceptions.ActorDiedError as exc:
            raise shard_died_error(self.memory, exc) from None
