"""The memory benchmark job runs end to end on a small case and reports its floors."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_memory  # noqa: E402


def test_bench_memory_writes_a_table_with_floors(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rows = bench_memory.main(["slots=[2048]", "batches=[4]", "repeats=1", f"out={out}"])
    assert len(rows) == 1
    row = rows[0]
    assert row["step_ms"] > 0 and row["floor_ms"] > 0
    assert row["floor_ms"] == max(row["bandwidth_floor_ms"], row["matmul_floor_ms"])
    assert abs(row["ratio"] - row["step_ms"] / row["floor_ms"]) < 1e-9
    assert set(row["matmul_gflops"]) == {"torch q@K.T", "torch K@q.T", "numpy q@K.T",
                                        "numpy K@q.T"}
    saved = json.loads(out.read_text())
    assert saved["cases"][0]["slots"] == 2048 and saved["read_bandwidth_gbs"] > 0
    assert "ratio" in capsys.readouterr().out
