"""Faults on a multi-node local cluster: a shard's worker process killed, a whole node removed,
in the middle of a stream of update batches from two concurrent writers. Afterwards every
acknowledged update is present exactly once and queries keep being answered."""

import os
import signal
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from lifelong.distributed import MemorySpec, attach, create_memory

pytestmark = pytest.mark.ray

BATCHES, BATCH, D = 40, 8, 16


def writer(name, storage, index, acknowledged, errors, started, pipelined=False):
    """Writes BATCHES batches of never-seen labels (every query is an insert) and records what
    each acknowledged batch wrote (pipelined: batch b is acknowledged by the answer of b + 1,
    the last one by ``flush``)."""
    try:
        mem = attach(name, storage)
        mem.pipelined = pipelined
        gen = torch.Generator().manual_seed(index)
        sent = None
        for b in range(BATCHES):
            labels = torch.arange(BATCH) + (index * BATCHES + b) * BATCH
            q = torch.randn(BATCH, D, generator=gen)
            out = mem.query(q, labels)
            if pipelined:
                if sent is not None:
                    acknowledged.append((*sent, mem.last_written))
                sent = (F.normalize(q, dim=1), labels)
            else:
                acknowledged.append((F.normalize(q, dim=1), labels, out.written_slots))
            started.set()
        if pipelined:
            acknowledged.append((*sent, mem.flush()))
    except Exception as exc:  # reported by the test
        errors.append(exc)


def check_exactly_once(mem, acknowledged):
    state = mem.state_dict()
    inserts = sum(len(labels) for _, labels, _ in acknowledged)
    assert int((state["values"] >= 0).sum()) == inserts  # nothing twice, nothing lost
    for q, labels, slots in acknowledged:
        assert torch.equal(state["values"][slots], labels)
        torch.testing.assert_close(state["keys"][slots], q)
    clocks = [s["clock"] for s in mem.status()]
    assert clocks == [len(acknowledged)] * len(clocks)  # every batch applied once per shard


def run_with_fault(cluster_fault, tmp_path, cluster, pipelined=False):
    import ray

    spec = MemorySpec(name="faulty", key_dim=D, num_slots=8 * BATCHES * BATCH,
                      num_values=2 * BATCHES * BATCH, shards=2, choose_k=4, age_noise=8.0,
                      storage=str(tmp_path), snapshot_every=15, num_cpus=1)
    mem = create_memory(spec, timeout_s=120)
    acknowledged, errors, started = [], [], threading.Event()
    threads = [threading.Thread(target=writer, args=("faulty", str(tmp_path), i, acknowledged,
                                                     errors, started, pipelined))
               for i in range(2)]
    for t in threads:
        t.start()
    started.wait(60)
    while len(acknowledged) < 10:
        time.sleep(0.05)
    at_fault = len(acknowledged)
    fault_check = cluster_fault(mem)
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(acknowledged) == 2 * BATCHES
    assert at_fault < 2 * BATCHES - 5  # the fault came in the middle of the stream
    check_exactly_once(mem, acknowledged)
    fault_check(mem.status()[0])  # shard 0 really was restarted
    answer = mem.query(torch.randn(3, D))  # still answering
    assert answer.values.shape == (3,)
    ray.shutdown()


@pytest.fixture
def cluster(monkeypatch):
    import shutil
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    # Every node and the cluster's address file under a temp dir of our own (short: Ray's
    # socket paths live there), never the machine's shared /tmp/ray.
    temp = tempfile.mkdtemp(prefix="lifelong-ray-")
    os.makedirs(os.path.join(temp, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", temp)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    for _ in range(3):  # two for the shards, one spare to restart on
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="lifelong", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_killed_shard_process_loses_nothing(cluster, tmp_path):
    def kill_shard(mem):
        pid = mem.status()[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        return lambda status: status["pid"] != pid or pytest.fail("shard 0 was not restarted")

    run_with_fault(kill_shard, tmp_path, cluster)


def test_killed_shard_with_pipelined_batches_in_flight_loses_none_and_applies_none_twice(
        cluster, tmp_path):
    def kill_shard(mem):
        pid = mem.status()[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        return lambda status: status["pid"] != pid or pytest.fail("shard 0 was not restarted")

    run_with_fault(kill_shard, tmp_path, cluster, pipelined=True)


def test_removed_node_loses_nothing(cluster, tmp_path):
    def remove_node(mem):
        node_id = mem.status()[0]["node"]  # shard 0 takes the inserts (lowest empty slots)
        node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)
        return lambda status: status["node"] != node_id or pytest.fail("shard 0 did not move")

    run_with_fault(remove_node, tmp_path, cluster)
