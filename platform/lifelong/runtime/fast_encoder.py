"""The encoder as training runs it: bf16 autocast, channels_last, torch.compile (each optional).

The wrapper changes how the forward pass runs, never what the parameters are: it holds the
module (or its DDP wrapper) and shares its parameters, so the optimizer, checkpoints and
evaluation use the plain float32 encoder as before. The embeddings it returns are float32
whatever the precision, for the memory, which stays float32.
"""

from __future__ import annotations

import torch
from torch import nn

from lifelong.runtime.precision import autocast


class FastEncoder(nn.Module):
    """Runs ``module`` under the chosen precision and memory format.

    Args:
        module: [N, 1, H, W] -> [N, key_dim] (an encoder, or DDP around one).
        precision: A resolved precision, "float32" or "bfloat16" (``resolve_precision``).
        channels_last: Convert the module's weights and each input to channels_last.
        compile: Run the forward pass through ``torch.compile`` (compiled on the first call).
        device: "cpu" or "cuda", for autocast.
    """

    def __init__(self, module: nn.Module, precision: str = "float32",
                 channels_last: bool = False, compile: bool = False, device: str = "cpu"):
        super().__init__()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.precision, self.channels_last, self.device = precision, channels_last, device
        # Not a registered submodule: the parameters and state_dict stay those of ``module``.
        object.__setattr__(self, "_forward", torch.compile(module) if compile else module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds images. x: [N, 1, H, W] float32; returns [N, key_dim] float32."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            emb = self._forward(x)
        return emb.float()
