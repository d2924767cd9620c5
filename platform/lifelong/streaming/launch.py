"""``lifelong stream run`` / ``jobs/stream.py``: connects the stream job's parts (Ray, the named
memory, the commit record, the encoder, MLflow, Ray gauges), runs it and prints a summary."""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from lifelong import metrics
from lifelong.distributed.spec import absolute_location
from lifelong.distributed.tags import memory_tags
from lifelong.errors import ConfigError, CorruptSegmentError, MemoryNotFoundError
from lifelong.streaming.commit import CommitStore
from lifelong.streaming.config import StreamJob
from lifelong.streaming.encoders import payload_encoder
from lifelong.streaming.job import StreamResult, StreamRunner
from lifelong.streaming.report import StreamGauges, plot_kshot
from lifelong.streaming.segments import list_segments, read_segment, vector_size
from lifelong.streaming.stats import StreamStats
from lifelong.tracking import job_run, redact_uri


def _absolute(location: str | None) -> str | None:
    """Relative paths made absolute: shard actors and workers run in other directories."""
    return None if location is None else absolute_location(location)


def ensure_ray(job: StreamJob) -> None:
    """Joins the job's cluster, or starts an embedded local Ray with room for the shards."""
    from lifelong.distributed.cluster import ensure_ray as join

    join(job.ray_address, local_cpus=job.shared_memory.shards * job.shared_memory.num_cpus + 1)


def encoder_loader(job: StreamJob):
    """A function loading the named encoder checkpoint once (None: no encoder named)."""
    if job.encoder.checkpoint is None and job.encoder.run_id is None:
        return None
    cache = {}

    def load():
        if "encoder" not in cache:
            from lifelong.tracking import resolve_encoder

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
    return vector_size(fmt)


def open_memory(job: StreamJob, loader):
    """Attaches to the job's memory (creating it if allowed) with the job's writer id."""
    from lifelong.distributed.registry import attach, create_memory, read_spec

    shared = job.shared_memory
    storage = shared.storage_location()
    try:
        read_spec(shared.name, storage)
    except MemoryNotFoundError:
        if not shared.create:
            raise
        create_memory(shared.spec(job.memory, key_dim=_key_dim(job, loader)))
    return attach(shared.name, storage, writer=f"stream:{job.stream.name}")


def run_stream_job(job: StreamJob, progress: bool = True, out=None) -> StreamResult:
    """Runs the stream job until it stops (see ``StreamSettings``); returns what it did."""
    out = out or sys.stdout
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    s = job.stream
    source = _absolute(s.source)
    ensure_ray(job)
    loader = encoder_loader(job)
    memory = open_memory(job, loader)
    state = _absolute(s.state) or f"{memory.spec.location}/streams/{s.name}"
    store = CommitStore(state)
    previous = store.load()
    with job_run(job.tracking, run_id=previous.run_id if previous else None,
                 tags={"job": "stream", "stream": s.name, "memory": memory.spec.name}) as run:
        if run is not None:
            if previous is None:
                run.log_config(job)
            run.set_tags({**memory_tags(memory),
                          metrics.MODEL_URI_TAG: job.encoder.checkpoint or job.encoder.run_id})
            print(f"MLflow run {run.run_id} ({redact_uri(run.tracking_uri)})", file=out,
                  flush=True)
        result = _run(job, memory, store, state, source, loader, run, previous is not None,
                      progress, out)
    print_summary(job, result, memory, out)
    return result


def _run(job: StreamJob, memory, store: CommitStore, state: str, source: str, loader, run,
         resuming: bool, progress: bool, out) -> StreamResult:
    """The stream job proper, logging into ``run`` (None: no MLflow)."""
    s = job.stream
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
                                    "examples applied" if resuming else ""),
          file=out, flush=True)
    gauges.start()  # the last log point's values stay exported while the job waits for data
    try:
        return runner.run()
    finally:
        gauges.close()


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
