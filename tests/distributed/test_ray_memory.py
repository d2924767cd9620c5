"""Named sharded memories on a real local Ray: parity, life-long across cluster restarts,
errors that cross processes, metrics that dashboards query."""

import re
import urllib.request

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, attach, create_memory, delete_memory, list_memories
from lifelong.errors import (InvalidQueryError, MemoryExistsError, MemoryNameError,
                             MemoryNotFoundError)
from lifelong.memory import Memory

from test_sharded_parity import run_pair

pytestmark = pytest.mark.ray


def small_spec(tmp_path, name="m", shards=2, **kw):
    base = dict(name=name, key_dim=16, num_slots=61, num_values=12, shards=shards, choose_k=7,
                age_noise=0.0, storage=str(tmp_path), num_cpus=0.5)
    base.update(kw)
    return MemorySpec(**base)


def test_ray_sharded_memory_equals_memory(ray_local, tmp_path):
    mem = create_memory(small_spec(tmp_path, shards=3))
    local = Memory(key_dim=16, num_slots=61, num_values=12, choose_k=7, age_noise=0.0)
    run_pair(mem, local, steps=12, batch=8)
    a, b = local.state_dict(), mem.state_dict()
    torch.testing.assert_close(a["keys"], b["keys"])
    for name in ("values", "ages", "recent_slots"):
        assert torch.equal(a[name], b[name]), name


def test_create_attach_list_delete_and_errors(ray_local, tmp_path):
    spec = small_spec(tmp_path, name="named")
    mem = create_memory(spec)
    with pytest.raises(MemoryExistsError):
        create_memory(spec)
    assert list_memories(str(tmp_path)) == ["named"]
    mem.query(torch.randn(4, 16), torch.arange(4))
    other = attach("named", str(tmp_path))  # a second client sees the same memory
    assert other.occupancy() == 4
    with pytest.raises(InvalidQueryError):  # typed errors survive the trip from the actor
        other.shards.call("search", [(np.zeros((2, 3), np.float32), None, 7)] * 2)
    with pytest.raises(MemoryNotFoundError):
        attach("nothing-here", str(tmp_path))
    with pytest.raises(MemoryNameError):
        attach("../named", str(tmp_path))
    delete_memory("named", str(tmp_path))
    assert list_memories(str(tmp_path)) == []


def test_memory_outlives_the_cluster(tmp_path, tmp_path_factory):
    import ray

    spec = small_spec(tmp_path, name="lifelong", age_noise=8.0, snapshot_every=5)
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("r1")),
             log_to_driver=False)
    try:
        mem = create_memory(spec)
        gen = torch.Generator().manual_seed(0)
        for _ in range(13):
            mem.query(torch.randn(6, 16, generator=gen), torch.randint(0, 12, (6,), generator=gen))
        before = mem.state_dict()
    finally:
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("r2")),
             log_to_driver=False)
    try:
        again = attach("lifelong", str(tmp_path))  # a new cluster: shards start from storage
        after = again.state_dict()
        for name in before:
            assert torch.equal(before[name], after[name]), name
    finally:
        ray.shutdown()


def test_metrics_the_dashboard_queries_are_exported(ray_local, tmp_path):
    import json
    import time
    from pathlib import Path

    mem = create_memory(small_spec(tmp_path, name="metered"))
    q = torch.randn(4, 16)
    for _ in range(3):  # inserts, then refreshes of the same keys
        mem.query(q, torch.arange(4))
    dashboard = json.loads((Path(__file__).parents[2] / "dashboards" /
                            "lifelong-memory.json").read_text())
    wanted = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            wanted |= set(re.findall(r"ray_lifelong_[a-z_]+", target["expr"]))
    assert wanted, "the dashboard queries no lifelong metric"
    node = ray_local.nodes()[0]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline, missing = time.time() + 60, wanted
    while time.time() < deadline and missing:
        mem.query(q, torch.arange(4))  # traffic goes on while the exporter catches up
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        exported = set(re.findall(r"^(ray_lifelong_[a-z_]+)", text, re.MULTILINE))
        missing = wanted - exported
        time.sleep(2)
    assert not missing, f"panels query metrics that are not exported: {sorted(missing)}"


def test_memory_command_line(ray_local, tmp_path, capsys):
    from lifelong.cli import main

    base = ["memory", "--storage", str(tmp_path)]
    assert main(base + ["create", "cli-mem", "--slots", "100", "--key-dim", "8", "--values",
                        "10", "--shards", "2", "--num-cpus", "0.5"]) == 0
    assert "0 of 100 slots filled" in capsys.readouterr().out
    attach("cli-mem", str(tmp_path)).query(torch.randn(3, 8), torch.tensor([1, 2, 3]))
    assert main(base + ["list"]) == 0
    assert capsys.readouterr().out.split() == ["cli-mem"]
    assert main(base + ["status", "cli-mem", "--json"]) == 0
    import json

    status = json.loads(capsys.readouterr().out)
    assert [s["shard"] for s in status] == [0, 1]
    assert sum(s["occupied"] for s in status) == 3 and sum(s["inserts"] for s in status) == 3
    assert main(base + ["snapshot", "cli-mem"]) == 0
    assert "generations [1, 1]" in capsys.readouterr().out
    assert main(base + ["status", "no-such"]) == 2
    assert "MemoryNotFoundError" in capsys.readouterr().err
    assert main(base + ["delete", "cli-mem", "--yes"]) == 0
    assert main(base + ["list"]) == 0
    assert capsys.readouterr().out.split() == ["deleted", "cli-mem"]
