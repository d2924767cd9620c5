"""The memory module against a brute-force reference (tests/unit/memory_reference.py)."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from lifelong.errors import InvalidLabelError, InvalidQueryError, MemoryStateError
from lifelong.memory import ExactSearch, Memory
from memory_reference import ReferenceMemory, temperature


def make_pair(num_slots=64, key_dim=16, num_values=10, choose_k=8, alpha=0.1, **kw):
    mem = Memory(key_dim=key_dim, num_slots=num_slots, num_values=num_values,
                 choose_k=choose_k, alpha=alpha, age_noise=0.0, **kw)
    ref = ReferenceMemory(key_dim, num_slots, num_values, choose_k, alpha)
    return mem, ref


def assert_same_state(mem, ref):
    assert torch.equal(mem.values, ref.values)
    assert torch.equal(mem.ages, ref.ages)
    assert torch.equal(mem.recent_slots, ref.recent)
    torch.testing.assert_close(mem.keys.double(), ref.keys, atol=1e-5, rtol=0)


def state_copy(mem):
    return {k: v.clone() for k, v in mem.state_dict().items()}


def assert_state_unchanged(mem, before):
    after = mem.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_scripted_run_matches_reference_predictions_losses_gradients_and_state():
    torch.manual_seed(0)
    mem, ref = make_pair()
    for step in range(40):
        q = torch.randn(6, 16, dtype=torch.float64)
        y = torch.randint(0, 10, (6,))
        if step % 3 == 0 and step:  # revisit earlier keys so refreshes happen too
            q[:3] = ref.keys[ref.values >= 0][:3] + 0.01 * q[:3]
            y[:3] = ref.values[ref.values >= 0][:3]
        q32 = q.float().requires_grad_(True)
        q64 = q.clone().requires_grad_(True)
        out = mem.query(q32, y)
        preds, loss = ref.query(q64, y)
        assert torch.equal(out.values, preds), step
        torch.testing.assert_close(out.loss.double(), loss.detach(), atol=1e-5, rtol=1e-4)
        out.loss.backward()
        loss.backward()
        torch.testing.assert_close(q32.grad.double(), q64.grad, atol=1e-5, rtol=1e-3)
        assert_same_state(mem, ref)


def test_prediction_only_query_changes_nothing():
    torch.manual_seed(1)
    mem, _ = make_pair()
    mem.query(torch.randn(8, 16), torch.arange(8))
    before = state_copy(mem)
    out = mem.query(torch.randn(8, 16))
    assert out.loss is None and out.written_slots is None
    assert_state_unchanged(mem, before)
    out = mem.query(torch.randn(8, 16), torch.arange(8), update=False)
    assert out.loss is not None
    assert_state_unchanged(mem, before)


def test_nearest_neighbour_and_topk_match_brute_force_on_partly_filled_memory():
    torch.manual_seed(2)
    mem, ref = make_pair(num_slots=500, choose_k=20)
    mem.query(torch.randn(300, 16), torch.randint(0, 10, (300,)))
    q = F.normalize(torch.randn(7, 16), dim=1)
    out = mem.query(q)
    ref.keys, ref.values = mem.keys.double(), mem.values.clone()
    for i in range(7):
        expected = ref.neighbours(q[i].double())
        assert out.slots[i].tolist() == expected
        assert out.values[i] == ref.values[expected[0]]
    sims = out.similarities.detach()
    expected_soft = torch.softmax(sims * temperature(20, 0.1), dim=1)
    torch.testing.assert_close(out.softmax.detach(), expected_soft)


def test_empty_slots_never_match():
    mem, _ = make_pair(num_slots=32, choose_k=8)
    out = mem.query(torch.randn(2, 16))
    assert out.values.tolist() == [-1, -1]
    assert torch.isinf(out.similarities).all()
    assert out.softmax.abs().sum() == 0
    # One filled slot whose similarity to q is negative still beats every empty slot (sim 0).
    q = F.normalize(torch.randn(1, 16), dim=1)
    mem.query(-q, torch.tensor([3]))
    out = mem.query(q)
    assert out.values.tolist() == [3]
    assert out.similarities[0, 0] < 0
    assert torch.isinf(out.similarities[0, 1:]).all()
    assert out.softmax[0].tolist() == [1.0] + [0.0] * 7


def test_positive_and_negative_choice_and_loss_value():
    mem = Memory(key_dim=2, num_slots=4, num_values=3, choose_k=4, alpha=0.1, age_noise=0)
    angles = torch.tensor([0.0, 0.3, 0.6, 2.0])
    keys = torch.stack([angles.cos(), angles.sin()], 1)
    mem.load_state_dict({"keys": keys, "values": torch.tensor([1, 2, 1, 2]),
                         "ages": torch.zeros(4, dtype=torch.int64),
                         "recent_slots": torch.full((3,), -1)})
    q = torch.tensor([[1.0, 0.05]], requires_grad=True)
    out = mem.query(q, torch.tensor([2]), update=False)
    qn = F.normalize(q.detach(), dim=1)[0]
    # positive: slot 1 (value 2, more similar than slot 3); negative: slot 0 (value 1, nearest)
    expected = 0.1 - qn @ keys[1] + qn @ keys[0]
    assert expected > 0
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert not mem.keys.requires_grad  # keys are constants: only the query gets gradient


def test_grad_similarities_are_the_searched_ones_with_gradient_from_before_the_update():
    torch.manual_seed(11)
    mem = Memory(key_dim=8, num_slots=32, num_values=5, choose_k=6, age_noise=0)
    mem.query(torch.randn(20, 8), torch.randint(0, 5, (20,)))
    keys_before = mem.keys.clone()
    q = torch.randn(3, 8, requires_grad=True)
    out = mem.query(q, torch.tensor([0, 1, 2]), grad_similarities=True)  # updates the memory
    plain = Memory(key_dim=8, num_slots=32, num_values=5, choose_k=6, age_noise=0)
    assert out.similarities.requires_grad
    assert not plain.query(torch.randn(2, 8)).similarities.requires_grad
    weights = torch.randn(3, 6)
    (out.softmax * weights).sum().backward()
    q_ref = q.detach().clone().requires_grad_(True)
    sims_ref = F.normalize(q_ref, dim=1) @ keys_before.T  # [3, 32], keys as searched
    expected = sims_ref.gather(1, out.slots)
    torch.testing.assert_close(out.similarities.detach(), expected.detach())
    (torch.softmax(expected * mem.temperature, dim=1) * weights).sum().backward()
    torch.testing.assert_close(q.grad, q_ref.grad)


def test_only_query_and_projection_receive_gradient():
    mem = Memory(key_dim=8, num_slots=16, num_values=4, choose_k=4, learn_query_proj=True)
    mem.query(torch.randn(4, 8), torch.arange(4))
    q = torch.randn(4, 8, requires_grad=True)
    out = mem.query(q, torch.tensor([1, 0, 3, 2]), update=False)
    out.loss.backward()
    assert q.grad.abs().sum() > 0
    assert mem.query_proj.grad.abs().sum() > 0
    assert [n for n, p in mem.named_parameters()] == ["query_proj"]


def test_refresh_on_correct_lookup_and_insert_otherwise():
    mem, ref = make_pair(num_slots=8, choose_k=4)
    base = F.normalize(torch.randn(2, 16), dim=1)
    mem.query(base, torch.tensor([5, 6]))
    ref.query(base.double(), torch.tensor([5, 6]))
    near = base + 0.05 * torch.randn(2, 16)
    out = mem.query(near, torch.tensor([5, 7]))  # first is recalled correctly, second is not
    ref.query(near.double(), torch.tensor([5, 7]))
    assert out.correct.tolist() == [True, False]
    slot0 = out.written_slots[0].item()
    assert slot0 == 0  # refreshed in place
    torch.testing.assert_close(mem.keys[0], F.normalize(base[0] + F.normalize(near[0], dim=0), dim=0))
    # empty slots in rank order: 0, 5, 2, ... (stride 5 of 8 slots, docs/design.md §1.5)
    assert out.written_slots[1].item() == 2  # inserted into the oldest (empty) slot
    assert mem.values[[0, 5, 2]].tolist() == [5, 6, 7]
    assert mem.ages[[0, 5, 2]].tolist() == [0, 1, 0]
    assert_same_state(mem, ref)


def test_oldest_slot_choice_matches_reference():
    torch.manual_seed(3)
    mem, ref = make_pair(num_slots=12, choose_k=4)
    for _ in range(6):  # fill and age the memory with distinct labels so everything inserts
        q = torch.randn(3, 16)
        y = torch.randint(0, 10, (3,))
        mem.query(q, y)
        ref.query(q.double(), y)
    for count in (1, 3, 7):
        exclude = torch.tensor([int(mem.ages.argmax())])
        got = mem.oldest_slots(count, exclude=exclude).tolist()
        assert got == ref.oldest(count, {int(exclude)})


def test_recent_slot_gives_a_positive_outside_the_top_k():
    mem = Memory(key_dim=2, num_slots=4, num_values=3, choose_k=1, alpha=0.1, age_noise=0)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    mem.load_state_dict({"keys": keys, "values": torch.tensor([1, 2, 0, 0]),
                         "ages": torch.zeros(4, dtype=torch.int64),
                         "recent_slots": torch.tensor([-1, -1, 1])})
    q = torch.tensor([[1.0, 0.2]], requires_grad=True)
    out = mem.query(q, torch.tensor([2]), update=False)
    assert out.slots.tolist() == [[0]] and out.values.tolist() == [1]  # recent slot not predicted
    qn = F.normalize(q.detach(), dim=1)[0]
    torch.testing.assert_close(out.loss, 0.1 - qn @ keys[1] + qn @ keys[0])
    no_recent = Memory(key_dim=2, num_slots=4, num_values=3, choose_k=1, alpha=0.1,
                       age_noise=0, use_recent=False)
    no_recent.load_state_dict(mem.state_dict())
    out = no_recent.query(q, torch.tensor([2]), update=False)
    torch.testing.assert_close(out.loss, 0.1 - 0 + qn @ keys[0])  # no positive: counts as 0


def test_recent_slots_track_last_write_per_label():
    mem, _ = make_pair(num_slots=16, choose_k=4)
    out = mem.query(torch.randn(4, 16), torch.tensor([1, 2, 1, 3]))
    assert mem.recent_slots[1] == out.written_slots[2]  # last query with label 1 wins
    assert mem.recent_slots[2] == out.written_slots[1]
    assert mem.recent_slots[0] == -1


def test_writers_in_one_batch_never_share_a_slot():
    torch.manual_seed(4)
    mem = Memory(key_dim=16, num_slots=256, num_values=1000, choose_k=16, age_noise=8.0)
    for _ in range(30):
        y = torch.randint(0, 1000, (64,))
        q = torch.randn(64, 16)
        out = mem.query(q, y)
        inserted = out.written_slots[~out.correct]
        refreshed = out.written_slots[out.correct]
        assert len(set(inserted.tolist())) == len(inserted)
        assert not set(inserted.tolist()) & set(refreshed.tolist())
    assert mem.occupancy() == 256


def test_age_noise_picks_among_oldest_only():
    mem = Memory(key_dim=4, num_slots=1000, num_values=5, choose_k=4, age_noise=2.0, seed=7)
    with torch.no_grad():
        mem.values.fill_(0)
        mem.clock.fill_(2000)
        mem.write_time.copy_(torch.arange(1000) * 2)  # slot s has age 2000 - 2s
    chosen = mem.oldest_slots(10)
    assert len(set(chosen.tolist())) == 10
    assert max(chosen.tolist()) <= 12  # noise of +-2 moves the choice by at most 2 ages


@pytest.mark.parametrize("block_bytes,threads,serial_elements", [
    (2**20, 2, 0), (4096, 2, 0), (512, 3, 0),  # worker threads, one or many blocks each
    (2**20, None, 2**30), (4096, None, 2**30),  # the calling thread alone
])
def test_exact_search_matches_full_sort(block_bytes, threads, serial_elements):
    torch.manual_seed(5)
    keys = F.normalize(torch.randn(3001, 32), dim=1)
    values = torch.randint(0, 5, (3001,))
    values[::7] = -1
    q = F.normalize(torch.randn(9, 32), dim=1)
    sims, slots = ExactSearch(block_bytes, threads, serial_elements).search(
        q, keys, values, 50)
    full = (q @ keys.T).masked_fill(values < 0, float("-inf"))
    expected_sims, expected_slots = full.topk(50, dim=1)
    assert torch.equal(slots, expected_slots)
    torch.testing.assert_close(sims, expected_sims)


def test_faiss_flat_matches_exact_and_follows_writes():
    torch.manual_seed(6)
    exact = Memory(key_dim=16, num_slots=300, num_values=50, choose_k=10, age_noise=0)
    from lifelong.memory import FaissSearch
    faiss_mem = Memory(key_dim=16, num_slots=300, num_values=50, choose_k=10, age_noise=0,
                       search=FaissSearch("flat"))
    for _ in range(20):
        q, y = torch.randn(16, 16), torch.randint(0, 50, (16,))
        a, b = exact.query(q, y), faiss_mem.query(q, y)
        filled = ~torch.isinf(a.similarities)  # slots of empty candidates are arbitrary
        assert torch.equal(filled, ~torch.isinf(b.similarities))
        assert torch.equal(a.slots[filled], b.slots[filled])
        assert torch.equal(a.values, b.values)
    assert torch.equal(exact.values, faiss_mem.values)


def test_faiss_ivf_recall_and_writes():
    from lifelong.memory import FaissSearch
    torch.manual_seed(7)
    ivf_mem = Memory(key_dim=16, num_slots=4000, num_values=4000, choose_k=1, age_noise=0,
                     search=FaissSearch("ivf", nlist=16, nprobe=8, train_size=1000))
    keys = F.normalize(torch.randn(3000, 16), dim=1)
    home = []  # the slot each key went to
    for start in range(0, 3000, 100):  # the index switches to a trained IVF on the way
        home.append(ivf_mem.query(keys[start:start + 100],
                                  torch.arange(start, start + 100)).written_slots)
    home = torch.cat(home)[:50]
    assert ivf_mem.occupancy() == 3000
    q = F.normalize(keys[:50] + 0.05 * torch.randn(50, 16), dim=1)
    out = ivf_mem.query(q)
    assert (out.slots[:, 0] == home).float().mean() > 0.9
    out = ivf_mem.query(q, torch.arange(50))  # refreshes rewrite vectors in the index
    assert out.correct.float().mean() > 0.9
    assert (ivf_mem.query(q).slots[:, 0] == home).float().mean() > 0.9


@pytest.mark.parametrize("bad,error", [
    (torch.randn(4, 15), InvalidQueryError),
    (torch.randn(4), InvalidQueryError),
    (torch.randn(4, 16, dtype=torch.float64), InvalidQueryError),
    (torch.tensor([[float("nan")] * 16] * 4), InvalidQueryError),
    (torch.tensor([[float("inf")] * 16] * 4), InvalidQueryError),
    (torch.randn(0, 16), InvalidQueryError),
    (torch.randn(65, 16), InvalidQueryError),
    ("not a tensor", InvalidQueryError),
])
def test_bad_queries_raise_and_change_nothing(bad, error):
    mem, _ = make_pair()
    mem.query(torch.randn(4, 16), torch.arange(4))
    before = state_copy(mem)
    labels = torch.arange(4)
    with pytest.raises(error):
        mem.query(bad, labels)
    assert_state_unchanged(mem, before)


@pytest.mark.parametrize("labels", [
    torch.tensor([0, 1, 2, 10]), torch.tensor([0, 1, 2, -1]), torch.tensor([0, 1, 2]),
    torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([[0, 1, 2, 3]]),
])
def test_bad_labels_raise_and_change_nothing(labels):
    mem, _ = make_pair()
    mem.query(torch.randn(4, 16), torch.arange(4))
    before = state_copy(mem)
    with pytest.raises(InvalidLabelError):
        mem.query(torch.randn(4, 16), labels)
    assert_state_unchanged(mem, before)


def test_state_dict_round_trip_carries_exact_contents_and_ages():
    torch.manual_seed(8)
    mem, _ = make_pair(num_slots=32)
    for _ in range(5):
        mem.query(torch.randn(4, 16), torch.randint(0, 10, (4,)))
    state = mem.state_dict()
    assert set(state) == {"keys", "values", "ages", "recent_slots"}
    assert state["ages"].tolist() == (mem.clock - mem.write_time).tolist()
    other, _ = make_pair(num_slots=32)
    other.load_state_dict(state)
    assert_state_unchanged(other, state)
    q, y = torch.randn(4, 16), torch.randint(0, 10, (4,))
    a, b = mem.query(q, y), other.query(q, y)
    assert torch.equal(a.written_slots, b.written_slots)
    assert_state_unchanged(other, mem.state_dict())


@pytest.mark.parametrize("field,value", [
    ("keys", torch.zeros(32, 15)),
    ("values", torch.full((32,), 10)),
    ("ages", -torch.ones(32, dtype=torch.int64)),
    ("keys", torch.full((32, 16), float("nan"))),
    ("recent_slots", torch.full((10,), 32)),
    ("values", torch.zeros(32)),
])
def test_bad_state_raises_and_changes_nothing(field, value):
    mem, _ = make_pair(num_slots=32)
    mem.query(torch.randn(4, 16), torch.arange(4))
    before = state_copy(mem)
    bad = copy.deepcopy(before)
    bad[field] = value
    with pytest.raises(MemoryStateError):
        mem.load_state_dict(bad)
    assert_state_unchanged(mem, before)


def test_clear_empties_every_slot():
    mem, _ = make_pair()
    mem.query(torch.randn(8, 16), torch.arange(8))
    mem.clear()
    assert mem.occupancy() == 0 and int(mem.ages.max()) == 0
    assert (mem.recent_slots == -1).all()


def test_errors_survive_pickling():
    err = pickle.loads(pickle.dumps(InvalidQueryError("query holds NaN or Inf")))
    assert isinstance(err, InvalidQueryError) and isinstance(err, ValueError)
    assert str(err) == "query holds NaN or Inf"
