"""The training speed benchmark: its modes, its bf16 gate and one timed mode on fake data."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_train_speed as bench  # noqa: E402
from lifelong.errors import ConfigError  # noqa: E402
from omniglot_fakes import fake_split  # noqa: E402


def test_modes_parse_and_bad_ones_name_the_key():
    assert bench.parse_mode("bfloat16+channels_last") == ("bfloat16", True, False)
    assert bench.parse_mode("float32+compile") == ("float32", False, True)
    with pytest.raises(ConfigError) as info:
        bench.BenchConfig(modes=("float16",))
    assert info.value.key == "modes"


def test_bf16_runs_only_where_it_beats_float32():
    fp32 = {"matmul": 100.0, "conv": 100.0, "peak": 100.0}
    assert bench.bf16_pays({"float32": fp32, "bfloat16": {**fp32, "matmul": 300.0}})
    assert not bench.bf16_pays({"float32": fp32, "bfloat16": {**fp32, "matmul": 50.0}})
    assert not bench.bf16_pays({"float32": fp32})


def test_one_mode_trains_and_reports_its_rate():
    torch.set_num_threads(1)
    cfg = bench.BenchConfig(encoder="tiny", key_dim=16, modes=("float32+channels_last",),
                            episodes_per_batch=2, way=3, presentations=2, warmup=1, steps=2)
    row = bench.train_mode(cfg, "float32+channels_last", fake_split(num_characters=4).images)
    assert row["images_per_s"] > 0 and row["warmup_s"] > 0
    assert row["encoder_images_per_s"] > 0
    assert torch.isfinite(torch.tensor(row["last_loss"]))
