"""The discriminator and the adversarial terms of the GAN fine-tuning recipe (scripts/sweep.py).

:class:`UNetDiscriminator` is a U-Net of spectrally normalised 3x3 convolutions that gives a
real/fake logit per pixel (the design of Real-ESRGAN's discriminator: per-pixel decisions let it
judge local texture; spectral normalisation keeps it Lipschitz-bounded and the training stable).
The losses are the non-saturating ("vanilla") GAN loss on those logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

__all__ = ["UNetDiscriminator", "d_loss", "g_loss"]


def _sn_conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, 4 if stride == 2 else 3, stride, 1, bias=False))


class UNetDiscriminator(nn.Module):
    """Per-pixel real/fake logits of an RGB image.

    Encoder: a plain 3x3 stem, then three stride-2 4x4 convolutions (``w -> 2w -> 4w -> 8w``);
    decoder: three bilinear x2 upsamplings, each followed by a 3x3 convolution and the skip of the
    same resolution added; then two 3x3 convolutions and a 3x3 projection to one channel. Every
    inner convolution is spectrally normalised; LeakyReLU(0.2) between them.

    Shapes:
        x: (N, 3, H, W) in [0, 1], H and W multiples of 8. output: (N, 1, H, W) logits.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, 1, 1)
        self.down = nn.ModuleList([_sn_conv(w, 2 * w, 2), _sn_conv(2 * w, 4 * w, 2)])
        self.down.append(_sn_conv(4 * w, 8 * w, 2))
        self.up = nn.ModuleList([_sn_conv(8 * w, 4 * w), _sn_conv(4 * w, 2 * w)])
        self.up.append(_sn_conv(2 * w, w))
        self.tail = nn.Sequential(
            _sn_conv(w, w), nn.LeakyReLU(0.2, True), _sn_conv(w, w), nn.LeakyReLU(0.2, True)
        )
        self.head = nn.Conv2d(w, 1, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, 1, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError(
                f"UNetDiscriminator takes (N, 3, H, W) with H, W multiples of 8, got "
                f"{tuple(x.shape)}; crop the images to a multiple of 8"
            )
        skips = [F.leaky_relu(self.stem(2 * x - 1), 0.2)]
        for conv in self.down:
            skips.append(F.leaky_relu(conv(skips[-1]), 0.2))
        y = skips.pop()
        for conv in self.up:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = F.leaky_relu(conv(y), 0.2) + skips.pop()
        return self.head(self.tail(y))


def d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss: real -> 1, fake -> 0 (binary cross-entropy on logits, float32)."""
    real, fake = real_logits.float(), fake_logits.float()
    return F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def g_loss(fake_logits: Tensor) -> Tensor:
    """Generator's adversarial loss (non-saturating): the fake judged real."""
    logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
