"""Encoder checkpoints: a state_dict plus the config that builds the encoder again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.models import build_encoder

FORMAT_VERSION = 1


def save_encoder(path: str | os.PathLike, encoder: nn.Module, *, encoder_name: str,
                 key_dim: int, dropout: float, extra: dict[str, Any] | None = None) -> Path:
    """Writes an encoder checkpoint atomically (a partly written file never replaces a good one).

    Args:
        path: Target file (``.pt``).
        encoder: The module whose state_dict is saved.
        encoder_name, key_dim, dropout: What ``build_encoder`` needs to rebuild it.
        extra: More JSON-like metadata (training step, full config, ...).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "encoder": encoder_name, "key_dim": key_dim,
               "dropout": dropout, "state_dict": encoder.state_dict(), "extra": extra or {}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_encoder(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds an encoder from a checkpoint written by ``save_encoder``.

    Returns:
        (encoder in eval mode on CPU, the checkpoint's metadata without the state_dict).

    Raises:
        ConfigError: The file is missing or not an encoder checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} is not an encoder checkpoint (format {FORMAT_VERSION})")
    encoder = build_encoder(payload["encoder"], payload["key_dim"], payload["dropout"])
    encoder.load_state_dict(payload["state_dict"])
    encoder.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return encoder, meta
