"""Convolutional encoders that turn an Omniglot image into a memory query.

``paper`` is the encoder of Kaiser et al. 2017: two blocks of two 3x3 'same' convolutions (64,
then 128 channels) with ReLU, each block 2x2 max-pooled, then a fully connected layer to the key
size. ``small`` is a cheaper one for quick runs on a CPU: four blocks of one 3x3 convolution
(64 channels) with batch norm, ReLU and 2x2 max-pooling (the "conv-4" of Matching / Prototypical
Networks), about 7x fewer multiply-adds than ``paper`` at 28x28. ``tiny`` (32 channels) is for
tests and smoke runs.

Dropout is applied to the embedding during training (the reference code keeps 0.3 of it).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lifelong.config import check_int
from lifelong.errors import ConfigError


def _same_conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


class PaperEncoder(nn.Module):
    """The paper's encoder: [conv64, conv64, pool], [conv128, conv128, pool], linear.

    Args:
        key_dim: Size of the output embedding (the memory's key size).
        image_size: Side of the square input images (28 for Omniglot).
        channels: Channels of the two blocks.
        dropout: Probability of zeroing an embedding unit during training.
    """

    def __init__(self, key_dim: int = 128, image_size: int = 28,
                 channels: tuple[int, int] = (64, 128), dropout: float = 0.7):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            _same_conv(1, c1), nn.ReLU(inplace=True), _same_conv(c1, c1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _same_conv(c1, c2), nn.ReLU(inplace=True), _same_conv(c2, c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.fc = nn.Linear(c2 * side * side, key_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds images.

        Args:
            x: [N, 1, H, W] float32 images in [0, 1].

        Returns:
            [N, key_dim] float32 embeddings (not normalised; the memory normalises).
        """
        return self.dropout(self.fc(self.features(x).flatten(1)))


class SmallEncoder(nn.Module):
    """Four blocks of [3x3 conv, batch norm, ReLU, 2x2 max-pool], then a linear layer.

    Args:
        key_dim: Size of the output embedding.
        image_size: Side of the square input images.
        channels: Channels of every block.
        blocks: Number of blocks (each halves the side, rounding down).
        dropout: Probability of zeroing an embedding unit during training.
    """

    def __init__(self, key_dim: int = 128, image_size: int = 28, channels: int = 64,
                 blocks: int = 4, dropout: float = 0.7):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = 1, image_size
        for _ in range(blocks):
            layers += [_same_conv(c_in, channels), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in, side = channels, side // 2
        if side < 1:
            raise ConfigError(f"{blocks} blocks shrink a {image_size}px image to nothing")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * side * side, key_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds images. x: [N, 1, H, W] float32 in [0, 1]; returns [N, key_dim] float32."""
        return self.dropout(self.fc(self.features(x).flatten(1)))


_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "paper": lambda key_dim, dropout: PaperEncoder(key_dim, dropout=dropout),
    "small": lambda key_dim, dropout: SmallEncoder(key_dim, channels=64, dropout=dropout),
    "tiny": lambda key_dim, dropout: SmallEncoder(key_dim, channels=32, dropout=dropout),
}

ENCODER_NAMES = tuple(_ENCODERS)


def build_encoder(name: str, key_dim: int = 128, dropout: float = 0.7) -> nn.Module:
    """Builds an encoder by name.

    Args:
        name: One of ``ENCODER_NAMES`` ("paper", "small", "tiny").
        key_dim: Size of the output embedding.
        dropout: Probability of zeroing an embedding unit during training (the paper's keep
            probability 0.3 is dropout 0.7).

    Returns:
        A module mapping [N, 1, 28, 28] float32 images to [N, key_dim] embeddings.

    Raises:
        ConfigError: Unknown name, or key_dim / dropout out of range.
    """
    if name not in _ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; expected one of {ENCODER_NAMES}")
    check_int("key_dim", key_dim)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
    return _ENCODERS[name](key_dim, dropout)
