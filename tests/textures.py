"""Adversarial test textures: one-pixel patterns at full contrast, where a network's
activations grow the most (quadratic gates, re-param sums, reduced precision)."""

from __future__ import annotations

import torch


def checkerboard(size: int = 32) -> torch.Tensor:
    """(1, 3, size, size) alternating 0/1 pixels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy + xx) % 2).float().expand(1, 3, size, size).clone()


def dithered(size: int = 32, seed: int = 0) -> torch.Tensor:
    """(1, 3, size, size) 1-bit random dither of a smooth ramp (what a dithered GIF looks like)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size).expand(size, size)
    return (torch.rand(size, size, generator=g) < ramp).float().expand(1, 3, size, size).clone()
