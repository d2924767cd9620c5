"""The fused small-batch kernel of ExactSearch and compact (bfloat16 / float16) keys.

The fused kernel has an exact order of its own: s = fma(key[j], query[j], s) for j = 0 .. d - 1
from s = 0. It is checked bit for bit against an emulation of that order (then a full sort, ties
by slot id), for invariance to blocks, threads and batch, and against the BLAS path and a float64
full sort wherever two similarities are not within float32 rounding.
Compact keys are checked exactly against float32 searches of the same (widened) keys, and with
tolerances against the float32 keys they were rounded from (docs/design.md §1.2).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lifelong.errors import ConfigError
from lifelong.memory import ExactSearch, Memory
from lifelong.memory.config import MemoryConfig

NEAR_TIE = 1e-6  # float32 similarities of unit vectors: differences below this may reorder


def reference(q, keys, values, k):
    """float64 full sort: [B, k] similarities and slots, empty slots left out, ties by slot."""
    sims = (q.double() @ keys.double().T).masked_fill(values < 0, float("-inf"))
    order = sims.sort(dim=1, descending=True, stable=True).indices  # ties: lowest slot first
    return sims.gather(1, order)[:, :k], order[:, :k]


def fma_order(q, keys):
    """[B, N] similarities in the kernel's order: s = fma(k_j, q_j, s), j = 0 .. d - 1. A float32
    product is exact in float64 and the float64 sum is rounded once to float32, as an fma is
    (double rounding aside, which these seeded cases do not hit)."""
    qd, kd = q.double().numpy(), np.ascontiguousarray(keys.double().numpy().T)
    sims = np.zeros((q.shape[0], keys.shape[0]), dtype=np.float32)
    for j in range(q.shape[1]):
        sims = (qd[:, j:j + 1] * kd[j] + sims).astype(np.float32)
    return torch.from_numpy(sims)


def exact_topk(sims, values, k):
    """Full sort of float32 similarities, best first, ties by slot id; -inf for empty slots."""
    sims = sims.masked_fill(values < 0, float("-inf"))
    order = sims.sort(dim=1, descending=True, stable=True).indices  # ties: lowest slot first
    out = sims.gather(1, order)[:, :k]
    return out, order[:, :k].masked_fill(torch.isinf(out), 0)


def assert_matches_reference(sims, slots, q, keys, values, k):
    """Same slots as the float64 sort wherever the k-th boundary and neighbours are not near
    ties; similarities within float32 rounding."""
    ref_sims, ref_slots = reference(q, keys, values, k)
    filled = ~torch.isinf(ref_sims)
    assert torch.equal(filled, ~torch.isinf(sims))
    assert torch.allclose(sims[filled].double(), ref_sims[filled], atol=NEAR_TIE, rtol=0)
    gaps = torch.cat([ref_sims[:, 1:] - ref_sims[:, :-1], torch.full_like(ref_sims[:, :1],
                                                                          -1.0)], dim=1).abs()
    gaps = torch.minimum(gaps, torch.cat([torch.ones_like(gaps[:, :1]), gaps[:, :-1]], dim=1))
    clear = filled & (gaps > NEAR_TIE)
    assert torch.equal(slots[clear], ref_slots[clear])


def random_case(num_slots, dim, seed, empty_every=7):
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(num_slots, dim, generator=gen), dim=1)
    values = torch.randint(0, 5, (num_slots,), generator=gen)
    values[::empty_every] = -1
    return keys, values, gen


@pytest.mark.parametrize("batch", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("block_bytes,threads,serial_elements", [
    (2**20, None, 2**30), (4096, 2, 0), (1000, 3, 0)])
def test_fused_is_exact_in_its_order_and_matches_blas_and_the_reference(
        batch, k, block_bytes, threads, serial_elements):
    keys, values, gen = random_case(2003, 32, seed=batch * 100 + k)  # 2003: a tail of 3 rows
    q = F.normalize(torch.randn(batch, 32, generator=gen), dim=1)
    fused = ExactSearch(block_bytes, threads, serial_elements, kernel="fused").search(
        q, keys, values, k)
    expected = exact_topk(fma_order(q, keys), values, k)
    assert torch.equal(fused[0], expected[0]) and torch.equal(fused[1], expected[1])
    alone = ExactSearch(kernel="fused").search(q[-1:], keys, values, k)  # batch-independent
    assert torch.equal(alone[0], fused[0][-1:]) and torch.equal(alone[1], fused[1][-1:])
    blas = ExactSearch(block_bytes, threads, serial_elements, kernel="blas").search(
        q, keys, values, k)
    for sims, slots in (fused, blas):
        assert_matches_reference(sims, slots, q, keys, values, k)


@pytest.mark.parametrize("kernel", ["fused", "blas"])
def test_exact_ties_go_to_the_lowest_slot_and_empty_slots_never_match(kernel):
    keys, values, gen = random_case(600, 16, seed=3, empty_every=5)
    q = F.normalize(torch.randn(5, 16, generator=gen), dim=1)
    best = int((q[0] @ keys.T).masked_fill(values < 0, -2).argmax())
    copies = [c for c in (431, 17, 250, 599) if c != best]
    keys[copies] = keys[best].clone()  # copies of query 0's best key, one in an empty slot
    values[599] = -1
    values[[431, 17, 250]] = 1
    sims, slots = ExactSearch(block_bytes=512, threads=2, serial_elements=0,
                              kernel=kernel).search(q, keys, values, 6)
    tied = sorted({best, 17, 250, 431})
    assert slots[0, :len(tied)].tolist() == tied and len(set(sims[0, :len(tied)].tolist())) == 1
    assert not bool((values[slots] < 0).any())


def test_fewer_filled_slots_than_k_give_minus_inf_as_blas_does():
    keys, values, gen = random_case(50, 8, seed=4)
    values[:] = -1
    values[[3, 30, 41]] = 2
    q = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    fused = ExactSearch(kernel="fused").search(q, keys, values, 5)
    blas = ExactSearch(kernel="blas").search(q, keys, values, 5)
    assert torch.equal(fused[1], blas[1]) and torch.allclose(fused[0], blas[0])
    assert torch.isinf(fused[0][:, 3:]).all() and sorted(fused[1][0, :3].tolist()) == [3, 30, 41]


def test_kernel_choice():
    keys = torch.zeros(8, 4)
    assert ExactSearch().uses_fused(16, keys) and not ExactSearch().uses_fused(256, keys)
    assert not ExactSearch().uses_fused(4, keys)  # padded to 16 queries: BLAS is cheaper
    assert not ExactSearch(kernel="blas").uses_fused(1, keys)
    assert ExactSearch(kernel="fused").uses_fused(256, keys)
    assert not ExactSearch(kernel="fused").uses_fused(4, keys.double())  # float64: BLAS
    with pytest.raises(ValueError):
        ExactSearch(kernel="gpu")


@pytest.mark.parametrize("dtype,eps", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)])
@pytest.mark.parametrize("batch", [4, 16, 64])
def test_compact_keys(dtype, eps, batch):
    keys, values, gen = random_case(3001, 64, seed=batch)
    keys[5] = keys[5] * 1e-6  # tiny entries: float16 subnormals are widened exactly too
    q = F.normalize(torch.randn(batch, 64, generator=gen), dim=1)
    compact = keys.to(dtype)
    wide = compact.float()  # exact: every bfloat16 / float16 is a float32
    k = 10
    for kernel in ("fused", "blas"):
        search = ExactSearch(block_bytes=8192, threads=2, serial_elements=0, kernel=kernel)
        sims, slots = search.search(q, compact, values, k)
        expected = ExactSearch(block_bytes=8192, threads=2, serial_elements=0,
                               kernel=kernel).search(q, wide, values, k)
        assert torch.equal(sims, expected[0]) and torch.equal(slots, expected[1]), kernel
    f32_sims, f32_slots = ExactSearch().search(q, keys, values, k)
    # rounding each key element by at most eps moves q.k by at most eps * sum |q_j k_j| <= eps
    bound = eps * (q.abs() @ keys.abs().T)
    top1 = slots[:, 0]
    gap = f32_sims[:, 0] - f32_sims[:, 1]
    rows = torch.arange(batch)
    same = top1 == f32_slots[:, 0]
    assert bool((same | (gap <= 2 * bound[rows, f32_slots[:, 0]].max() + 1e-6)).all())
    exact_sims = (q @ keys.T)[rows, top1]
    assert bool(((sims[:, 0] - exact_sims).abs() <= bound[rows, top1] + 1e-6).all())
    assert bool(((sims[:, 0] - exact_sims).abs() <= 2.0**-7 * exact_sims.abs()).all())


@pytest.mark.parametrize("key_dtype", ["bfloat16", "float16"])
def test_a_compact_memory_learns_and_its_state_round_trips(key_dtype):
    torch.manual_seed(8)
    mem = MemoryConfig(choose_k=8, key_dtype=key_dtype).build(key_dim=16, num_slots=64,
                                                              num_values=10)
    assert mem.keys.dtype == getattr(torch, key_dtype) and mem.key_dtype == key_dtype
    for _ in range(5):
        q = torch.randn(6, 16, requires_grad=True)
        out = mem.query(q, torch.randint(0, 10, (6,)))
        out.loss.backward()
        assert out.similarities.dtype == torch.float32 and q.grad is not None
    filled = mem.values >= 0
    norms = mem.keys[filled].float().norm(dim=1)
    assert bool(((norms - 1).abs() < 16 * 2.0**-8).all())
    state = mem.state_dict()
    assert state["keys"].dtype == mem.keys.dtype
    other = MemoryConfig(choose_k=8, key_dtype=key_dtype).build(key_dim=16, num_slots=64,
                                                                num_values=10)
    other.load_state_dict(state)
    assert torch.equal(other.keys, mem.keys) and torch.equal(other.ages, mem.ages)
    q = torch.randn(3, 16)
    assert torch.equal(other.query(q).slots, mem.query(q).slots)
    assert MemoryConfig.of(mem).key_dtype == key_dtype
    wide = Memory(key_dim=16, num_slots=64, num_values=10, choose_k=8)
    wide.load_state_dict(state)  # a compact state loads into a float32 memory exactly
    assert torch.equal(wide.keys, mem.keys.float())


def test_key_dtype_is_validated():
    with pytest.raises(ConfigError):
        MemoryConfig(key_dtype="int8")
    with pytest.raises(ValueError):
        Memory(key_dim=4, num_slots=4, num_values=2, key_dtype="float64")


def test_a_sharded_memory_takes_compact_keys_and_its_spec_round_trips():
    from lifelong.distributed import MemorySpec

    base = dict(name="compact", key_dim=16, num_slots=32, num_values=10, storage="/unused")
    with pytest.raises(ConfigError):
        MemorySpec(**base, key_dtype="int8")
    for key_dtype in ("float32", "bfloat16", "float16"):
        spec = MemorySpec(**base, key_dtype=key_dtype)
        assert MemorySpec.from_json(spec.to_json()) == spec and spec.key_dtype == key_dtype
    assert MemorySpec(**base).key_dtype == "float32"


@pytest.mark.parametrize("dim", [5, 20, 130])
@pytest.mark.parametrize("num_slots", [7, 8, 301])
def test_fused_kernel_is_exact_at_any_key_size_and_row_tail(dim, num_slots):
    """Key sizes off the 16-lane widening and slot counts off the 8-row groups (tails) keep the
    kernel's fma order, for float32 keys and for compact keys widened."""
    keys, values, gen = random_case(num_slots, dim, seed=dim + num_slots, empty_every=3)
    q = F.normalize(torch.randn(17, dim, generator=gen), dim=1)
    k = min(5, num_slots)
    search = ExactSearch(block_bytes=4096, threads=2, serial_elements=0, kernel="fused")
    expected = exact_topk(fma_order(q, keys), values, k)
    got = search.search(q, keys, values, k)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for dtype in (torch.bfloat16, torch.float16):
        wide = keys.to(dtype).float()
        expected = exact_topk(fma_order(q, wide), values, k)
        got = search.search(q, keys.to(dtype), values, k)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), dtype


@pytest.mark.parametrize("kernel", ["fused", "blas"])
def test_keys_that_round_to_one_compact_key_tie_at_the_lowest_slot(kernel):
    """Two float32 keys closer than bfloat16's rounding become one bfloat16 key: a new exact
    tie, which goes to the lowest slot as every exact tie does (docs/design.md §1.2)."""
    keys, values, gen = random_case(400, 32, seed=11, empty_every=9)
    q = F.normalize(torch.randn(16, 32, generator=gen), dim=1)
    best = int((q[0] @ keys.T).masked_fill(values < 0, -2).argmax())
    twin = 397 if best != 397 else 398
    # one float32 ulp off the bfloat16 rounding of keys[best]: distinct in float32, equal in
    # bfloat16
    keys[twin] = torch.nextafter(keys[best].to(torch.bfloat16).float(), torch.tensor(2.0))
    values[twin] = 3
    assert not torch.equal(keys[twin], keys[best])
    compact = keys.to(torch.bfloat16)
    assert torch.equal(compact[twin], compact[best])
    search = ExactSearch(block_bytes=2048, threads=2, serial_elements=0, kernel=kernel)
    sims, slots = search.search(q, compact, values, 4)
    assert slots[0, :2].tolist() == sorted([best, twin]) and sims[0, 0] == sims[0, 1]
