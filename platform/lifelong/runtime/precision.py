"""Training precision: which one this machine runs fast, and the autocast context for it.

``precision`` in a training config is "float32", "bfloat16" or "auto". "auto" picks bfloat16
only where the hardware has bf16 units: on a CPU whose flags (``/proc/cpuinfo``) name
``avx512_bf16`` or ``amx_bf16`` and whose torch has oneDNN (mkldnn), or on a CUDA device that
supports bf16; float32 otherwise. Only the encoder runs under bf16 autocast: the memory and its
loss stay float32 (the caller casts the embeddings before the memory query).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from lifelong.errors import ConfigError

PRECISIONS = ("float32", "bfloat16", "auto")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units torch can use (AVX512-BF16 or AMX, plus oneDNN)."""
    return torch.backends.mkldnn.is_available() and any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def cuda_has_bf16() -> bool:
    """Whether a CUDA device is present and supports bf16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """The precision to train in: "float32" or "bfloat16".

    Args:
        precision: "float32", "bfloat16" or "auto".
        device: "cpu" or "cuda": where the encoder runs.

    Returns:
        ``precision`` itself unless "auto"; for "auto", "bfloat16" where the device has bf16
        units (``cpu_has_bf16`` / ``cuda_has_bf16``), else "float32".

    Raises:
        ConfigError: ``precision`` is not one of ``PRECISIONS``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"must be one of {PRECISIONS}, got {precision!r}", key="precision")
    if precision != "auto":
        return precision
    fast = cuda_has_bf16() if device == "cuda" else cpu_has_bf16()
    return "bfloat16" if fast else "float32"


def autocast(precision: str, device: str = "cpu") -> contextlib.AbstractContextManager:
    """The context the encoder's forward pass runs in.

    Args:
        precision: A resolved precision ("float32" or "bfloat16").
        device: "cpu" or "cuda".

    Returns:
        ``torch.autocast(device, dtype=torch.bfloat16)`` for "bfloat16", else a no-op context.
    """
    if precision == "bfloat16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
