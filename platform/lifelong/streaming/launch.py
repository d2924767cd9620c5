"""``lifelong stream run`` / ``jobs/stream.py``: connects the stream job's parts (Ray, the named
memory, the commit record, the encoder, MLflow, Ray gauges), runs it and prints a summary."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

from lifelong import metrics
from lifelong.config import config_to_dict
from lifelong.errors import ConfigError, CorruptSegmentError, MemoryNotFoundError
from lifelong.streaming.commit import CommitStore
from lifelong.streaming.config import StreamJob
from lifelong.streaming.encoders import payload_encoder
from lifelong.streaming.job import StreamResult, StreamRunner
from lifelong.streaming.report import StreamGauges, plot_kshot
from lifelong.streaming.segments import check_format, list_segments, read_segment
from lifelong.streaming.stats import StreamStats


def _absolute(location: str | None) -> str | None:
    """Relative paths made absolute: shard actors and workers run in other directories."""
    return location if location is None or "://" in location else os.path.abspath(location)


def ensure_ray(job: StreamJob) -> None:
    """Joins the job's cluster, or starts an embedded local Ray with room for the shards."""
    import ray

    from lifelong.distributed.actor import NAMESPACE

    if ray.is_initialized():
        return
    address = job.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        return
    needed = math.ceil(job.memory.shards * job.memory.num_cpus) + 1
    ray.init(num_cpus=max(os.cpu_count() or 1, needed), namespace=NAMESPACE,
             log_to_driver=False)


def _encoder_loader(job: StreamJob):
    """A function loading the named encoder checkpoint once (None: no encoder named)."""
    if job.encoder.checkpoint is None and job.encoder.run_id is None:
        return None
    cache = {}

    def load():
        if "encoder" not in cache:
            from lifelong.training.jobs import resolve_encoder

            encoder, meta, _ = resolve_encoder(job.encoder.checkpoint, job.encoder.run_id,
                                               job.tracking.tracking_uri)
            cache["encoder"] = (encoder, meta)
        return cache["encoder"]

    return load


def _key_dim(job: StreamJob, loader) -> int:
    """The key size of a new memory: the encoder's, or a vector stream's dimension."""
    if loader is not None:
        return int(loader()[1]["key_dim"])
    fmt = job.stream.payload_format
    if fmt is None:
        found = list_segments(job.stream.source)
        for number, _ in found:
            try:
                fmt = read_segment(job.stream.source, number).payload_format
                break
            except CorruptSegmentError:
                continue
    if fmt is None:
        raise ConfigError("cannot tell the key size of the new memory: no readable segment "
                          "yet; set stream.payload_format or encoder.checkpoint")
    dtype, shape = check_format(fmt)
    if dtype != "float32" or len(shape) != 1:
        raise ConfigError(f"a {fmt} stream needs an encoder: encoder.checkpoint=PATH or "
                          "encoder.run_id=ID")
    return shape[0]


def open_memory(job: StreamJob, loader):
    """Attaches to the job's memory (creating it if allowed) with the job's writer id."""
    from lifelong.distributed import MemorySpec
    from lifelong.distributed.registry import attach, create_memory, default_storage, read_spec

    m = job.memory
    storage = _absolute(m.storage or default_storage())
    writer = f"stream:{job.stream.name}"
    try:
        read_spec(m.name, storage)
    except MemoryNotFoundError:
        if not m.create:
            raise
        spec = MemorySpec(name=m.name, key_dim=_key_dim(job, loader), num_slots=m.num_slots,
                          num_values=m.num_values, storage=storage, shards=m.shards,
                          choose_k=m.choose_k, alpha=m.alpha, age_noise=m.age_noise,
                          snapshot_every=m.snapshot_every, num_cpus=m.num_cpus, seed=m.seed)
        create_memory(spec)
    return attach(m.name, storage, writer=writer)


def run_stream_job(job: StreamJob, progress: bool = True, out=None) -> StreamResult:
    """Runs the stream job until it stops (see ``StreamSettings``); returns what it did."""
    out = out or sys.stdout
    import torch

    from lifelong.training.jobs import open_run

    if job.threads:
        torch.set_num_threads(job.threads)
    s = job.stream
    source = _absolute(s.source)
    ensure_ray(job)
    loader = _encoder_loader(job)
    memory = open_memory(job, loader)
    state = _absolute(s.state) or f"{memory.spec.location}/streams/{s.name}"
    store = CommitStore(state)
    previous = store.load()
    run = None
    if job.tracking.enabled:
        run = open_run(job.tracking, run_id=previous.run_id if previous else None,
                       tags={"job": "stream", "stream": s.name, "memory": memory.spec.name})
        if previous is None:
            run.log_params(config_to_dict(job))
            run.log_text(yaml.safe_dump(config_to_dict(job), sort_keys=False),
                         metrics.CONFIG_ARTIFACT)
        print(f"MLflow run {run.run_id} ({run.tracking_uri})", file=out, flush=True)
    gauges = StreamGauges(s.name, memory.spec.name, s.windows, s.shots)
    plot_dir = Path(tempfile.mkdtemp(prefix="lifelong-stream-"))

    def log_point(stats: StreamStats, values: dict) -> None:
        gauges.update(values)
        if run is not None:
            run.log_metrics(values, step=stats.examples)

    def plot(stats: StreamStats) -> None:
        if run is not None and len(stats.history_examples):
            path = plot_kshot(stats, s.shots, plot_dir / metrics.STREAM_KSHOT_PLOT,
                              title=f"stream {s.name} into memory {memory.spec.name} "
                                    f"({memory.spec.num_slots:,} slots)")
            run.log_artifact(path)

    runner = StreamRunner(replace(s, source=source), memory, store,
                          lambda fmt: payload_encoder(fmt, loader),
                          _absolute(s.quarantine) or f"{state}/quarantine",
                          log_point=log_point, plot=plot,
                          run_id=run.run_id if run else None, progress=progress)
    print(f"stream {s.name}: {source} -> memory {memory.spec.name} ({memory.spec.shards} "
          f"shards, {memory.spec.num_slots:,} slots, keys {memory.spec.key_dim}); commit "
          f"record {store.path}" + (f"; resuming at segment {runner.record.segment} row "
                                    f"{runner.record.row}, {runner.record.stats.examples} "
                                    "examples applied" if previous else ""),
          file=out, flush=True)
    result = runner.run()
    print_summary(job, result, memory, out)
    return result


def print_summary(job: StreamJob, result: StreamResult, memory, out=None) -> None:
    """The run's figures as a markdown table."""
    out = out or sys.stdout
    st = result.stats
    pct = lambda x: "-" if math.isnan(x) else f"{100 * x:.2f}"  # noqa: E731
    occupied = memory.occupancy()
    print(f"\n## Stream {job.stream.name}\n", file=out)
    print("| figure | value |\n| --- | --- |", file=out)
    rows = [("examples applied (all runs)", f"{st.examples:,}"),
            ("examples applied by this run", f"{result.examples:,} in {result.wall_s:.1f} s "
             f"({result.examples_per_s:.0f} examples/s)"),
            ("prequential accuracy (%)", pct(st.accuracy()))]
    rows += [(f"prequential accuracy, last {w:,} (%)", pct(st.window_accuracy(w)))
             for w in job.stream.windows]
    rows += [(f"{k}-shot accuracy (%), {st.shot_total[k]:,} examples", pct(st.shot_accuracy(k)))
             for k in job.stream.shots]
    rows += [("rare classes (seen at most once before) (%)", pct(st.rare_accuracy())),
             ("segments quarantined (bad rows left out)",
              f"{st.quarantined} ({st.dropped_rows} rows)"),
             (f"memory {memory.spec.name} occupancy", f"{occupied:,} / "
                                                      f"{memory.spec.num_slots:,} slots")]
    for name, value in rows:
        print(f"| {name} | {value} |", file=out)
    out.flush()
