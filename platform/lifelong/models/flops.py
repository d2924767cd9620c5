"""FLOPs per image of an encoder, forward and backward, counted from its layer shapes.

``torch.utils.flop_counter.FlopCounterMode`` counts the convolution and matmul multiply-adds
(2 FLOPs each) of the operators actually run: the forward pass, and the backward pass's
gradients of the inputs and of the weights (the first convolution needs no input gradient, so
the backward is a little under the usual 2x forward estimate). Pooling, ReLU, batch norm and
the optimizer are not counted: they are memory-bound and small next to the convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class EncoderFlops:
    """FLOPs per image (multiply-adds x 2)."""

    forward: float
    backward: float

    @property
    def total(self) -> float:
        """Forward + backward: what one training image costs."""
        return self.forward + self.backward


def encoder_flops(encoder: torch.nn.Module, image_size: int = 28,
                  batch: int = 2) -> EncoderFlops:
    """Counts an encoder's FLOPs per image for one training step.

    Args:
        encoder: Maps [N, 1, H, W] float32 images to [N, key_dim]; run here in training mode
            on ``batch`` zero images (its parameters receive gradients, which are cleared).
        image_size: Side H = W of the input images.
        batch: Images per counted pass (the count is divided by it).

    Returns:
        Forward and backward FLOPs per image.
    """
    was_training = encoder.training
    encoder.train()
    x = torch.zeros(batch, 1, image_size, image_size)
    try:
        with FlopCounterMode(display=False) as fwd:
            out = encoder(x)
        with FlopCounterMode(display=False) as bwd:
            out.float().sum().backward()
    finally:
        encoder.zero_grad(set_to_none=True)
        encoder.train(was_training)
    return EncoderFlops(forward=fwd.get_total_flops() / batch,
                        backward=bwd.get_total_flops() / batch)
