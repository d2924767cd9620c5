"""The trained models as MLflow logs and serves them: a module with one tensor in and one
tensor out, and an input example that fixes the signature.

- The encoder is itself such a module: images [B, 1, 28, 28] float32 in [0, 1] -> keys
  [B, key_dim]; its example is two blank images (a batch of 2 keeps the batch size dynamic
  when ``torch.export`` traces it).
- The translator is wrapped (``GreedyTranslator``): source subword ids [B, S] int64 ->
  greedy target ids [B, L] int64, PAD after EOS, consulting the checkpoint's memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lifelong.memory import Memory
from lifelong.models.translator import Translator
from lifelong.models.vocab import PAD

IMAGE_SIZE = 28


def encoder_input_example() -> np.ndarray:
    """Two blank 28x28 images, [2, 1, 28, 28] float32."""
    return np.zeros((2, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


class GreedyTranslator(nn.Module):
    """A translator and its memory as one module: ``forward(src)`` decodes greedily.

    Args:
        translator: The trained network.
        memory: The checkpoint's memory (None: a model trained without one); read, never
            written.
        max_len: Longest translation in subwords.
    """

    def __init__(self, translator: Translator, memory: Memory | None, max_len: int = 80):
        super().__init__()
        self.translator = translator
        self.memory = memory
        self.max_len = max_len

    @torch.no_grad()
    def forward(self, src: torch.Tensor) -> torch.Tensor:
        rows = self.translator.greedy(src.long(), self.memory, max_len=self.max_len)
        out = torch.full((len(rows), max(1, max(map(len, rows), default=1))), PAD,
                         dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out


def translator_input_example(source_ids: list[list[int]]) -> np.ndarray:
    """Source sentences as subword ids (``SubwordVocab.encode``), PAD-padded [B, S] int64."""
    width = max(map(len, source_ids))
    return np.array([row + [PAD] * (width - len(row)) for row in source_ids], dtype=np.int64)
