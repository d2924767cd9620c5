"""What turns a segment's payloads into memory keys, chosen by the stream's payload format.

- ``uint8[H,W]`` images: a trained conv encoder (a checkpoint path or an MLflow run's encoder);
- ``float32[D]`` vectors: used as keys as they are (features computed upstream);
- ``utf-8`` text: the translator's encoder (issue 6); not yet available here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.streaming.segments import check_format


class ImageEncoder:
    """A conv encoder over uint8 images [R, H, W] -> keys [R, key_dim] float32.

    Images are scaled to [0, 1] as in training, encoded in chunks without gradient, in eval
    mode (so the same images always give the same keys).
    """

    def __init__(self, encoder: nn.Module, key_dim: int, chunk: int = 512):
        self.encoder = encoder.eval()
        self.key_dim = key_dim
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, payloads: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(payloads)).unsqueeze(1)
        return torch.cat([self.encoder(x[i:i + self.chunk].to(torch.float32).div_(255.0))
                          for i in range(0, len(x), self.chunk)])


class VectorEncoder:
    """float32 vectors [R, D] used as keys as they are."""

    def __init__(self, key_dim: int):
        self.key_dim = key_dim

    def __call__(self, payloads: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(payloads, dtype=np.float32))


def payload_encoder(payload_format: str,
                    load_checkpoint: Callable[[], tuple[nn.Module, dict]] | None):
    """The encoder for a payload format.

    Args:
        payload_format: e.g. ``uint8[28,28]`` or ``float32[64]``.
        load_checkpoint: Returns (encoder, metadata with ``key_dim``) for image streams; None
            when no encoder was named.

    Raises:
        ConfigError: no encoder fits the format.
    """
    dtype, shape = check_format(payload_format)
    if dtype == "float32" and len(shape) == 1:
        if load_checkpoint is not None:
            raise ConfigError(f"a {payload_format} stream is used as keys directly: give no "
                              "encoder checkpoint or run id")
        return VectorEncoder(shape[0])
    if dtype == "uint8" and len(shape) == 2:
        if load_checkpoint is None:
            raise ConfigError(f"a {payload_format} image stream needs an encoder: "
                              "encoder.checkpoint=PATH or encoder.run_id=ID")
        encoder, meta = load_checkpoint()
        return ImageEncoder(encoder, int(meta["key_dim"]))
    raise ConfigError(f"no stream encoder for payload format {payload_format!r} yet "
                      "(images uint8[H,W] and vectors float32[D] are supported)")
