"""Checkpoints of the models: an encoder (a state_dict plus the config that builds it again)
and a translator (model, vocabularies and the memory's state). Both are written atomically and
read with ``weights_only=True`` (no code runs when a stored file is loaded)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.memory import Memory
from lifelong.memory.protocol import KeyValueMemory
from lifelong.models.conv import build_encoder
from lifelong.models.translator import Translator, TranslatorConfig
from lifelong.models.vocab import SubwordVocab

FORMAT_VERSION = 1
ENCODER_FILE = "encoder.pt"  # the file name jobs give a final encoder in their output_dir
TRANSLATOR_FILE = "translator.pt"


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


@dataclass
class TranslationModel:
    """A translator checkpoint (``translator.pt``): the model, both subword vocabularies,
    the memory's state (or None) and what training recorded (``meta``: steps, wall time,
    the held-out words; ``save``'s ``extra``)."""

    model: Translator
    source_vocab: SubwordVocab
    target_vocab: SubwordVocab
    memory: Memory | None
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        c = self.model.config
        payload = {"format_version": 1, "model_config": c.__dict__,
                   "source_vocab": self.source_vocab.model,
                   "target_vocab": self.target_vocab.model,
                   "state_dict": self.model.state_dict(),
                   "memory": self.memory.state_dict() if self.memory is not None else None,
                   "memory_config": _memory_args(self.memory), "extra": extra or {}}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TranslationModel":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"translator checkpoint {path} does not exist")
        p = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(p, dict) or p.get("format_version") != 1:
            raise ConfigError(f"{path} is not a translator checkpoint")
        sv, tv = SubwordVocab(p["source_vocab"]), SubwordVocab(p["target_vocab"])
        # checkpoints from before query_source / gate_on_memory had neither
        config = {"query_source": False, "gate_on_memory": False, **p["model_config"]}
        model = Translator(len(sv), len(tv), TranslatorConfig(**config))
        model.load_state_dict(p["state_dict"])
        model.eval()
        memory = None
        if p["memory"] is not None:
            memory = Memory(**p["memory_config"])
            memory.load_state_dict(p["memory"])
        return cls(model, sv, tv, memory, dict(p.get("extra") or {}))


def _memory_args(memory: KeyValueMemory | None) -> dict | None:
    """What rebuilds the memory (a local ``Memory``) from a checkpoint."""
    if memory is None:
        return None
    return {name: getattr(memory, name) for name in ("key_dim", "num_slots", "num_values",
                                                    "choose_k", "alpha", "age_noise", "use_recent")}
