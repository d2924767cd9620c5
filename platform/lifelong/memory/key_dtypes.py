"""How the memory may store its keys (``key_dtype``): float32, or the compact bfloat16 and float16
that halve the bytes an exact search streams (docs/design.md §1.2).

Compact keys are storage only: every bfloat16 or float16 number is exactly a float32, so keys
are widened without error and queries, similarities and the loss stay float32. A written key is
the float32 key (normalised) rounded to the dtype, so its norm is 1 within the dtype's rounding.
"""

from __future__ import annotations

import numpy as np
import torch

KEY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_key_dtype(key_dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a ``key_dtype`` name (or dtype); ValueError for any other."""
    dtype = KEY_DTYPES.get(key_dtype, key_dtype) if isinstance(key_dtype, str) else key_dtype
    if dtype not in KEY_DTYPES.values():
        raise ValueError(f"key_dtype must be one of {', '.join(KEY_DTYPES)}, got {key_dtype!r}")
    return dtype


def query_dtype_for(key_dtype: torch.dtype) -> torch.dtype:
    """The dtype of queries and similarities over keys of ``key_dtype``: the keys' own for
    float32 / float64 keys, float32 for compact ones."""
    return key_dtype if key_dtype in (torch.float32, torch.float64) else torch.float32


def zeros_keys(num_slots: int, key_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A zero [num_slots, key_dim] CPU key buffer of ``dtype`` in memory allocated by numpy.

    numpy asks the kernel for transparent huge pages (madvise) for large arrays before they are
    touched, torch's allocator does not: a search walks the keys eight rows (4 KiB of float32)
    at a time, a new 4 KiB page and TLB miss each, and on the 2-core Xeon huge pages took the
    1M x 128 float32 fused search at batch 16 from 64 to 55 ms (one thread). bfloat16, which
    numpy lacks, is allocated as uint16 and viewed.
    """
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.zeros((num_slots, key_dim), dtype=np.uint16)).view(dtype)
    return torch.from_numpy(np.zeros((num_slots, key_dim),
                                     dtype=torch.empty(0, dtype=dtype).numpy().dtype))
