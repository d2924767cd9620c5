"""One memory interface: Memory and ShardedMemory both satisfy KeyValueMemory, member by member
with equal results (age noise 0, exact search), and MemoryShard drives Memory through its public
operations only."""

import ast
import inspect
import re

import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed import shard as shard_module
from lifelong.errors import MemoryStateError, UnsupportedOperationError
from lifelong.memory import KeyValueMemory, LoadResult, Memory, WritePlan

D, N, V, K = 16, 61, 12, 7


def make_pair(shards=2, use_recent=True, choose_k=K):
    spec = MemorySpec(name="proto", key_dim=D, num_slots=N, num_values=V, shards=shards,
                      choose_k=choose_k, alpha=0.2, age_noise=0.0, storage="unused",
                      use_recent=use_recent)
    local = Memory(key_dim=D, num_slots=N, num_values=V, choose_k=choose_k, alpha=0.2,
                   age_noise=0.0, use_recent=use_recent)
    return local, ShardedMemory.local(spec)


def batches(steps, batch=8, seed=0, noise=0.7):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(V, D, generator=gen)
    for _ in range(steps):
        labels = torch.randint(0, V, (batch,), generator=gen)
        yield centres[labels] + noise * torch.randn(batch, D, generator=gen), labels


def run_both(local, sharded, steps=12, seed=0):
    """Equal steps on both: predictions, similarities, losses, gradients, written slots."""
    for step, (q, labels) in enumerate(batches(steps, seed=seed)):
        q1, q2 = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
        a, b = local.query(q1, labels), sharded.query(q2, labels)
        assert torch.equal(a.values, b.values), step
        assert torch.equal(a.slots, b.slots), step
        torch.testing.assert_close(a.similarities, b.similarities)
        torch.testing.assert_close(a.loss, b.loss)
        a.loss.backward()
        b.loss.backward()
        torch.testing.assert_close(q1.grad, q2.grad)
        assert torch.equal(a.written_slots, b.written_slots), step


def snapshot(memory):
    return {name: t.clone() for name, t in memory.state_dict().items()}


def assert_unchanged(memory, before):
    after = memory.state_dict()
    assert set(after) == set(before)
    for name in before:
        assert torch.equal(before[name], after[name]), name


# The members KeyValueMemory declares; the tests below exercise each on both memories.
MEMBERS = {"key_dim", "num_slots", "num_values", "choose_k", "alpha", "age_noise", "use_recent",
           "k", "temperature", "supports_grad_similarities", "query", "state_dict",
           "load_state_dict", "occupancy"}


def test_the_protocol_declares_the_members_exercised_here():
    declared = {name for name in vars(KeyValueMemory) if not name.startswith("_")}
    assert declared == MEMBERS


@pytest.mark.parametrize("shards", [2, 3])
def test_both_memories_are_instances_of_the_protocol(shards):
    local, sharded = make_pair(shards)
    assert isinstance(local, KeyValueMemory)
    assert isinstance(sharded, KeyValueMemory)

    class Partial:  # a memory without load_state_dict is not one
        key_dim = num_slots = num_values = choose_k = k = 1
        alpha = age_noise = temperature = 1.0
        use_recent = True
        query = state_dict = occupancy = staticmethod(lambda *a: None)

    assert not isinstance(Partial(), KeyValueMemory)


def test_query_signatures_agree():
    params = lambda f: list(inspect.signature(f).parameters.items())  # noqa: E731
    assert params(Memory.query) == params(ShardedMemory.query)
    names = lambda f: list(inspect.signature(f).parameters)[:3]  # noqa: E731
    assert names(Memory.load_state_dict) == names(ShardedMemory.load_state_dict)


@pytest.mark.parametrize("use_recent", [True, False])
def test_sizes_and_hyper_parameters_are_equal(use_recent):
    local, sharded = make_pair(3, use_recent=use_recent)
    for name in ("key_dim", "num_slots", "num_values", "choose_k", "alpha", "age_noise",
                 "use_recent", "k", "temperature"):
        assert getattr(local, name) == getattr(sharded, name), name
    assert sharded.use_recent is use_recent
    assert (sharded.key_dim, sharded.num_slots, sharded.num_values, sharded.choose_k) == \
        (D, N, V, K)
    assert (sharded.alpha, sharded.age_noise, sharded.k) == (0.2, 0.0, K)


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("use_recent", [True, False])
def test_queries_and_occupancy_are_equal_step_for_step(shards, use_recent):
    local, sharded = make_pair(shards, use_recent=use_recent)
    assert local.occupancy() == sharded.occupancy() == 0
    run_both(local, sharded, steps=12)
    assert local.occupancy() == sharded.occupancy() > 0
    a, b = local.state_dict(), sharded.state_dict()
    torch.testing.assert_close(a["keys"], b["keys"])
    for name in ("values", "ages", "recent_slots"):
        assert torch.equal(a[name], b[name]), name


def test_use_recent_changes_the_loss_of_both_alike():
    """The recent slot matters in this run, so skipping it must be implemented, not ignored."""
    losses = {}
    for use_recent in (True, False):
        local, sharded = make_pair(2, use_recent=use_recent, choose_k=2)
        total = [0.0, 0.0]
        for q, labels in batches(12, noise=2.0):  # positives often fall outside the top 2
            total[0] += float(local.query(q, labels).loss)
            total[1] += float(sharded.query(q, labels).loss)
        assert total[0] == pytest.approx(total[1], rel=1e-5)
        losses[use_recent] = total[0]
    assert losses[True] != pytest.approx(losses[False], rel=1e-5)


def test_prediction_only_queries_are_equal_and_change_nothing():
    local, sharded = make_pair(3)
    run_both(local, sharded, steps=4)
    before = (snapshot(local), snapshot(sharded))
    q = torch.randn(5, D)
    a, b = local.query(q), sharded.query(q)
    assert torch.equal(a.values, b.values) and torch.equal(a.neighbour_values,
                                                           b.neighbour_values)
    assert a.loss is None and b.loss is None and a.written_slots is b.written_slots is None
    assert_unchanged(local, before[0])
    assert_unchanged(sharded, before[1])


def test_grad_similarities_is_typed_unsupported_on_the_sharded_memory_and_changes_nothing():
    local, sharded = make_pair(2)
    run_both(local, sharded, steps=3)
    before = snapshot(sharded)
    queries = sum(s["queries"] for s in sharded.status())
    q, labels = next(batches(1, seed=5))
    with pytest.raises(UnsupportedOperationError, match="grad_similarities"):
        sharded.query(q.requires_grad_(True), labels, grad_similarities=True)
    assert_unchanged(sharded, before)
    assert sum(s["queries"] for s in sharded.status()) == queries  # nothing was sent
    out = local.query(q, grad_similarities=True)  # the local memory provides it
    assert out.similarities.requires_grad
    # and each says so, so a model asks for it only where it is available
    assert local.supports_grad_similarities and not sharded.supports_grad_similarities
    # without the option both still answer alike
    assert torch.equal(local.query(q).values, sharded.query(q, grad_similarities=False).values)


@pytest.mark.parametrize("shards", [2, 3])
def test_state_dict_round_trips(shards):
    local, sharded = make_pair(shards)
    run_both(local, sharded, steps=10)
    state = local.state_dict()
    assert set(state) == set(sharded.state_dict()) == {"keys", "values", "ages",
                                                        "recent_slots"}
    fresh_local, fresh_sharded = make_pair(shards)
    assert fresh_local.load_state_dict(state) == LoadResult([], [])
    assert fresh_sharded.load_state_dict(sharded.state_dict()) == LoadResult([], [])
    a, b = fresh_local.state_dict(), fresh_sharded.state_dict()
    for name in ("keys", "values", "ages"):
        assert torch.equal(a[name], state[name]), name
        assert torch.equal(b[name], state[name]), name
    assert torch.equal(a["recent_slots"], state["recent_slots"])
    # the sharded memory starts its recent-slot table afresh (see ShardedMemory.load_state_dict)
    assert (b["recent_slots"] == -1).all()
    assert fresh_local.occupancy() == fresh_sharded.occupancy() == local.occupancy()


def test_loaded_memories_go_on_alike():
    local, sharded = make_pair(3)
    run_both(local, sharded, steps=6)
    state = local.state_dict()
    state["recent_slots"] = torch.full((V,), -1, dtype=torch.int64)
    a, b = make_pair(3)
    a.load_state_dict(state)
    b.load_state_dict(state)
    run_both(a, b, steps=6, seed=1)


@pytest.mark.parametrize("which", ["local", "sharded"])
def test_strict_load_refuses_an_unexpected_key_and_changes_nothing(which):
    memory = dict(zip(("local", "sharded"), make_pair(3)))[which]
    for q, labels in batches(5):
        memory.query(q, labels)
    before = snapshot(memory)
    fresh = make_pair(3)[0]
    for _ in range(2):
        fresh.query(torch.randn(8, D), torch.randint(0, V, (8,)))
    bad = {**fresh.state_dict(), "extra": torch.zeros(3)}
    with pytest.raises(MemoryStateError, match="extra"):
        memory.load_state_dict(bad)
    with pytest.raises(MemoryStateError, match="extra"):
        memory.load_state_dict(bad, strict=True)
    assert_unchanged(memory, before)
    missing = {k: v for k, v in fresh.state_dict().items() if k != "ages"}
    for strict in (True, False):
        with pytest.raises(MemoryStateError, match="ages"):
            memory.load_state_dict(missing, strict=strict)
    assert_unchanged(memory, before)


def test_non_strict_load_ignores_unexpected_keys_on_both_alike():
    local, sharded = make_pair(2)
    run_both(local, sharded, steps=4)
    bad = {**local.state_dict(), "extra": torch.zeros(3)}
    a, b = make_pair(2)
    assert a.load_state_dict(bad, strict=False) == b.load_state_dict(bad, strict=False) == \
        LoadResult(missing_keys=[], unexpected_keys=["extra"])
    for name in ("keys", "values", "ages"):
        assert torch.equal(a.state_dict()[name], b.state_dict()[name]), name


@pytest.mark.parametrize("field, index", [("values", -1), ("ages", -1), ("keys", -1),
                                          ("recent_slots", 0)])
def test_a_bad_entry_in_the_last_shard_changes_no_shard(field, index):
    local, sharded = make_pair(3)
    run_both(local, sharded, steps=5)
    before = (snapshot(local), snapshot(sharded))
    bad = {name: t.clone() for name, t in local.state_dict().items()}
    bad[field][index] = {"values": V, "ages": -1, "keys": float("nan"),
                         "recent_slots": N}[field]
    for memory, kept in zip((local, sharded), before):
        with pytest.raises(MemoryStateError, match=field):
            memory.load_state_dict(bad)
        assert_unchanged(memory, kept)


# ----------------------------------------------------------------- public write operations
@pytest.mark.parametrize("age_noise", [0.0, 8.0])
def test_plan_then_apply_is_write(age_noise):
    """plan_write changes no slot, age or clock; plan_write + apply_write equals write, RNG
    draws included."""
    a = Memory(key_dim=D, num_slots=N, num_values=V, choose_k=K, age_noise=age_noise, seed=4)
    b = Memory(key_dim=D, num_slots=N, num_values=V, choose_k=K, age_noise=age_noise, seed=4)
    for q, labels in batches(15, seed=2):
        out = a.query(q, labels, update=False)
        qn = torch.nn.functional.normalize(q, dim=1)
        nearest = out.slots[:, 0]
        written = a.write(qn, labels, nearest, out.correct)
        before = (snapshot(b), b.write_time.clone(), b.clock.clone())
        plan = b.plan_write(nearest[out.correct], qn[out.correct], qn[~out.correct],
                            labels[~out.correct])
        assert isinstance(plan, WritePlan)
        assert_unchanged(b, before[0])
        assert torch.equal(b.write_time, before[1]) and torch.equal(b.clock, before[2])
        assert torch.equal(plan.inserted, written[~out.correct])
        assert len(set(plan.slots.tolist())) == len(plan.slots)
        b.apply_write(plan.slots, plan.keys, plan.values)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert torch.equal(a.ages, b.ages) and torch.equal(a.clock, b.clock)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_apply_write_with_a_clock_and_load_slots():
    mem = Memory(key_dim=4, num_slots=6, num_values=3, choose_k=2, age_noise=0.0)
    mem.apply_write(torch.tensor([1, 4]), torch.eye(4)[:2], torch.tensor([2, 0]), clock=5)
    assert int(mem.clock) == 5 and mem.ages.tolist() == [5, 0, 5, 5, 0, 5]
    assert mem.values.tolist() == [-1, 2, -1, -1, 0, -1] and mem.occupancy() == 2
    other = Memory(key_dim=4, num_slots=6, num_values=3, choose_k=2, age_noise=0.0)
    other.load_slots(mem.keys.clone(), mem.values.clone(), mem.write_time.clone(), 7)
    assert torch.equal(other.keys, mem.keys) and other.ages.tolist() == [7, 2, 7, 7, 2, 7]
    with pytest.raises(MemoryStateError):
        other.load_slots(mem.keys, mem.values, mem.write_time, 4)  # a write after the clock
    with pytest.raises(MemoryStateError):
        other.load_slots(mem.keys[:5], mem.values, mem.write_time, 9)
    assert other.ages.tolist() == [7, 2, 7, 7, 2, 7]


def _memory_expressions(tree):
    """Names bound to ``self.memory`` in a module, plus ``self.memory`` itself."""
    names = {"memory"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign,)):
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) \
                else [node.targets[0]]
            for target, value in zip(targets, values):
                if isinstance(value, ast.Attribute) and value.attr == "memory" and \
                        isinstance(target, ast.Name):
                    names.add(target.id)
    return names


def private_uses(source: str) -> list[str]:
    """Accesses of a private attribute of the shard's Memory, and in-place changes of its
    buffers, in ``source``."""
    tree = ast.parse(source)
    aliases = _memory_expressions(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        is_memory = (isinstance(base, ast.Name) and base.id in aliases) or \
            (isinstance(base, ast.Attribute) and base.attr == "memory")
        if is_memory and node.attr.startswith("_"):
            found.append(f"line {node.lineno}: .{node.attr}")
    pattern = r"\b(mem|memory)\.(keys|values|write_time|clock|recent_slots)\s*(\[[^\]]*\]\s*=[^=]|" \
              r"\.\w+_\(|\s*[+\-*/]?=[^=])"
    found += [f"line {source[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
              for m in re.finditer(pattern, source)]
    found += re.findall(r"\b(?:mem|memory)\._\w+", source)
    return found


def test_memory_shard_uses_only_public_operations_of_memory():
    assert private_uses(inspect.getsource(shard_module)) == []


def test_the_private_use_check_finds_private_uses():
    bad = ("class S:\n    def f(self):\n        mem, dev = self.memory, 1\n"
           "        mem._tick(1)\n        self.memory._insert(2)\n"
           "        mem.clock.fill_(3)\n        mem.write_time[0] = 1\n")
    assert len(private_uses(bad)) >= 4
    assert private_uses("x = self.memory.apply_write(a, b, c)\ny = mem.keys[s].cpu()\n") == []
