"""Augmentations of Omniglot drawings shared by streams and the retention evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def rotated_classes(images: np.ndarray) -> np.ndarray:
    """[C, n, H, W] -> [4C, n, H, W]: each class at 0, 90, 180 and 270 degrees (class-major)."""
    return np.concatenate([np.rot90(images, r, axes=(2, 3)) for r in range(4)])


def distort(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Small random affine distortions of a batch [n, 1, H, W] (a new drawing of each)."""
    if strength == 0:
        return x
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(10) * strength
    scale = 1 + u[:, 1] * 0.1 * strength
    shift = u[:, 2:] * (2 * 2 / x.shape[-1]) * strength  # 2 pixels in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
