"""Benchmark the stream job against its floors, side by side in one run on the same segments.

Three stages over the same long-tailed Omniglot stream (``lifelong stream produce``), each with
the same encoder and memory size:

- encoder alone: decode + encode every segment (the job's own reader code, ``threads`` torch
  threads), no memory;
- memory alone: the keys precomputed, then the prequential loop against a fresh named memory
  (predict_and_plan + apply_update per batch), no commit record, no encoder;
- the stream job: ``lifelong stream run`` (reader thread one segment ahead, commit record per
  batch, exactly once) into another fresh memory.

The job overlaps encoding with the memory's round trips, so its floor is the slower of the first
two; the table gives each stage's examples/s and the job's share of that floor.

Usage:
    python benchmarks/bench_stream.py --checkpoint runs/omniglot/encoder.pt
    python benchmarks/bench_stream.py --checkpoint ENC examples=20000 slots=1048576
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import lifelong  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import torch

from lifelong.config import config_from_args, config_from_dict
from lifelong.data import load_omniglot
from lifelong.streaming.config import StreamJob
from lifelong.streaming.encoders import payload_encoder
from lifelong.streaming.launch import encoder_loader, ensure_ray, open_memory, run_stream_job
from lifelong.streaming.produce import ProduceSettings, produce
from lifelong.streaming.segments import list_segments, read_segment


@dataclass(frozen=True)
class BenchStreamConfig:
    checkpoint: str | None = None
    examples: int = 50_000
    slots: int = 65536
    shards: int = 2
    batch_size: int = 64
    threads: int = 1
    out: str = "bench_stream.json"

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("give the image encoder: --checkpoint PATH (checkpoint=PATH)")
        if min(self.examples, self.slots, self.shards, self.batch_size, self.threads) < 1:
            raise ValueError("examples, slots, shards, batch_size and threads must be >= 1")


def stream_job(cfg: BenchStreamConfig, source: str, storage: str, memory: str) -> StreamJob:
    return config_from_dict(StreamJob, {
        "stream": {"source": source, "name": "bench", "batch_size": cfg.batch_size,
                   "idle_timeout_s": 0, "poll_s": 0.05},
        "shared_memory": {"name": memory, "storage": storage, "num_slots": cfg.slots,
                          "shards": cfg.shards},
        "encoder": {"checkpoint": cfg.checkpoint}, "tracking": {"enabled": False},
        "threads": cfg.threads})


def encoder_alone(job: StreamJob, source: str):
    """Seconds to read and encode every segment; returns (seconds, [(labels, keys)])."""
    encode = None
    segments, start = [], time.perf_counter()
    for number, _ in list_segments(source):
        segment = read_segment(source, number)
        encode = encode or payload_encoder(segment.payload_format, encoder_loader(job))
        segments.append((segment.labels, encode(segment.payloads)))
    return time.perf_counter() - start, segments


def memory_alone(job: StreamJob, segments, batch_size: int) -> float:
    """Seconds of the prequential loop (predict, plan, apply) with the keys given."""
    memory = open_memory(job, encoder_loader(job))
    start = time.perf_counter()
    for labels, keys in segments:
        labels = torch.from_numpy(labels.astype("int64"))
        for row in range(0, len(labels), batch_size):
            _, batch = memory.predict_and_plan(keys[row:row + batch_size],
                                               labels[row:row + batch_size])
            memory.apply_update(batch)
    return time.perf_counter() - start


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--checkpoint" in argv:  # the same flag as the other jobs
        i = argv.index("--checkpoint")
        argv[i:i + 2] = [f"checkpoint={argv[i + 1]}"]
    cfg = config_from_args(BenchStreamConfig, __doc__, argv, "benchmarks/configs/bench_stream.yaml")
    torch.set_num_threads(cfg.threads)
    work = tempfile.mkdtemp(prefix="bench-stream-")
    source, storage = os.path.join(work, "segments"), os.path.join(work, "memories")
    images = load_omniglot("evaluation").images
    list(produce(source, images, ProduceSettings(examples=cfg.examples), progress=False))
    job = stream_job(cfg, source, storage, "bench-memory-alone")
    ensure_ray(job)
    enc_s, segments = encoder_alone(job, source)
    key_dim = segments[0][1].shape[1]
    mem_s = memory_alone(job, segments, cfg.batch_size)
    result = run_stream_job(stream_job(cfg, source, storage, "bench-stream-job"),
                            progress=False, out=open(os.devnull, "w"))
    rows = [("encoder alone (read + decode + encode)", cfg.examples / enc_s),
            ("memory alone (predict + write, keys given)", cfg.examples / mem_s),
            ("stream job (all of it, exactly once)", result.examples_per_s)]
    floor = min(rows[0][1], rows[1][1])
    print(f"\n{cfg.examples:,} examples, encoder {cfg.checkpoint} (keys {key_dim}, "
          f"{cfg.threads} thread{'s' if cfg.threads > 1 else ''}), memory {cfg.slots:,} slots "
          f"in {cfg.shards} shards, batch {cfg.batch_size}:\n")
    print("| stage | examples/s | stream job / stage |\n| --- | --- | --- |")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} | {result.examples_per_s / rate:.2f} |")
    print(f"\nThe job runs at {100 * result.examples_per_s / floor:.0f}% of its floor "
          f"(the slower of encoder and memory alone: {floor:.0f} examples/s).")
    Path(cfg.out).write_text(json.dumps({"config": asdict(cfg), "key_dim": key_dim,
                                         "examples_per_s": {n: r for n, r in rows}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
