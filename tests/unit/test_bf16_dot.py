"""The bfloat16 dot-product kernel (``ExactSearch(kernel="bf16")``, memory/bf16_kernel.py):
bit for bit its emulation (queries rounded to bfloat16, per pair the higher element's product
added first, then the lower's, float32 sums: ``vdpbf16ps``), the top-k exactly that of the
emulated similarities, within bfloat16 rounding of float32, and a typed error for what it
cannot search. Runs only on CPUs with AVX512-BF16."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lifelong.memory import Memory
from lifelong.memory import bf16_kernel
from lifelong.memory import search as search_module
from lifelong.memory.fused_kernel import LANES
from lifelong.memory.search import ExactSearch

needs_bf16 = pytest.mark.skipif(not bf16_kernel.has_bfloat16_dot(),
                                reason="this CPU has no AVX512-BF16 (vdpbf16ps)")


def widened(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def emulated(keys_bf16: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """[N, B] similarities as the instruction computes them, in numpy float32."""
    k = widened(keys_bf16.view(torch.int16).numpy().view(np.uint16))
    qb = widened(bf16_kernel.bfloat16_pairs(q.numpy()).view(np.uint16).reshape(q.shape))
    out = np.zeros((k.shape[0], q.shape[0]), dtype=np.float32)
    for j in range(0, k.shape[1], 2):
        out = out + np.outer(k[:, j + 1], qb[:, j + 1]).astype(np.float32)
        out = out + np.outer(k[:, j], qb[:, j]).astype(np.float32)
    return out


def unit(rows, d, seed):
    return F.normalize(torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@needs_bf16
@pytest.mark.parametrize("rows,d,batch", [(1003, 128, 16), (61, 8, 5), (7, 2, 33)])
def test_the_kernel_equals_its_emulation_bit_for_bit(rows, d, batch):
    keys = unit(rows, d, 0).to(torch.bfloat16)
    q = unit(batch, d, 1)
    pairs = keys.view(torch.int16).numpy().view(np.uint16).view(np.uint32)
    padded = -(-batch // LANES) * LANES
    qp = bf16_kernel.bfloat16_pairs(torch.cat([q, q[-1:].expand(padded - batch, -1)]).numpy())
    out = np.empty((rows, padded), dtype=np.float32)
    maxima = np.empty((-(-rows // 16), padded), dtype=np.float32)
    bf16_kernel.bf16_dot_similarities(pairs, np.ascontiguousarray(qp.T), np.arange(rows),
                                       0, rows, out, maxima)
    assert np.array_equal(out[:, :batch], emulated(keys, q))


@needs_bf16
@pytest.mark.parametrize("batch", [1, 16, 40])
def test_the_top_k_is_that_of_the_emulated_similarities(batch):
    n, d, k = 700, 32, 50
    keys = unit(n, d, 2).to(torch.bfloat16)
    keys[::97] = keys[3]  # exact ties: equal keys must come by lowest slot id
    values = torch.randint(0, 9, (n,), generator=torch.Generator().manual_seed(4))
    values[::5] = -1  # empty slots are never returned
    q = unit(batch, d, 3)
    sims, slots = ExactSearch(kernel="bf16").search(q, keys, values, k)
    ref = emulated(keys, q)
    ref[values.numpy() < 0] = -np.inf
    for b in range(batch):
        order = np.lexsort((np.arange(n), -ref[:, b]))[:k]
        assert slots[b].tolist() == order.tolist()
        assert np.array_equal(sims[b].numpy(), ref[order, b])


@needs_bf16
def test_bf16_similarities_lie_within_bfloat16_rounding_of_float32():
    keys32 = unit(4096, 128, 5)
    q = unit(16, 128, 6)
    memory = Memory(key_dim=128, num_slots=4096, num_values=4096, key_dtype="bfloat16",
                    search=ExactSearch(kernel="bf16"))
    with torch.no_grad():
        memory.keys.copy_(keys32.to(torch.bfloat16))
        memory.values.copy_(torch.arange(4096))
    out = memory.query(q)
    exact = (q @ keys32.T).gather(1, out.slots)
    # each factor rounded to bfloat16 (relative 2^-9), unit vectors: |error| <= 2 * 2^-9
    assert (out.similarities - exact).abs().max() < 2 * 2.0 ** -9
    nearest = (q @ keys32.T).argmax(dim=1)
    assert (out.slots[:, 0] == nearest).float().mean() >= 0.9


def test_what_the_bf16_kernel_cannot_search_is_a_typed_error(monkeypatch):
    if bf16_kernel.has_bfloat16_dot():
        q = unit(4, 8, 0)
        with pytest.raises(ValueError, match="bfloat16 keys"):
            ExactSearch(kernel="bf16").search(q, unit(20, 8, 1), torch.arange(20), 5)
        with pytest.raises(ValueError, match="even size"):
            ExactSearch(kernel="bf16").search(unit(4, 7, 0), unit(20, 7, 1).to(torch.bfloat16),
                                              torch.arange(20), 5)
    monkeypatch.setattr(search_module, "has_bfloat16_dot", lambda: False)
    with pytest.raises(ValueError, match="AVX512-BF16"):
        ExactSearch(kernel="bf16")
