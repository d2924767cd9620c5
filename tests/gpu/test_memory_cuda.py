"""The memory on CUDA gives the same answers as on CPU (skipped without a GPU)."""

import pytest
import torch

from lifelong.memory import Memory

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_memory_matches_cpu_memory():
    torch.manual_seed(0)
    cpu = Memory(key_dim=32, num_slots=4096, num_values=100, choose_k=64, age_noise=0)
    gpu = Memory(key_dim=32, num_slots=4096, num_values=100, choose_k=64, age_noise=0).cuda()
    for _ in range(20):
        q, y = torch.randn(64, 32), torch.randint(0, 100, (64,))
        a = cpu.query(q.clone().requires_grad_(True), y)
        qg = q.cuda().requires_grad_(True)
        b = gpu.query(qg, y.cuda())
        assert torch.equal(a.values, b.values.cpu())
        torch.testing.assert_close(a.loss, b.loss.cpu(), atol=1e-5, rtol=1e-4)
        b.loss.backward()
        assert qg.grad is not None
    assert torch.equal(cpu.values, gpu.values.cpu())
    torch.testing.assert_close(cpu.keys, gpu.keys.cpu(), atol=1e-5, rtol=0)
