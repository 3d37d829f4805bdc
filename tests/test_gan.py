"""The GAN fine-tuning parts: the U-Net discriminator and the adversarial losses."""

from __future__ import annotations

import pytest
import torch

from hybridmoe.gan import UNetDiscriminator, d_loss, g_loss


def test_discriminator_gives_a_logit_per_pixel_and_is_spectrally_normalised() -> None:
    torch.manual_seed(0)
    d = UNetDiscriminator(width=8)
    x = torch.rand(2, 3, 32, 40)
    y = d(x)
    assert y.shape == (2, 1, 32, 40) and torch.isfinite(y).all()
    normalised = [n for n, _ in d.named_parameters() if n.endswith("weight_orig")]
    assert len(normalised) == 8  # 3 down, 3 up, 2 tail; the stem and the head are plain
    # a pixel's logit depends on the image around it (the U-Net's reach), most on what is near
    x2 = x.clone()
    x2[:, :, 0, 0] += 0.5
    change = (d(x2) - y).abs()[0, 0]
    assert change[0, 0] > change[16, 20] > 0 and change[10, 10] > 0
    with pytest.raises(ValueError, match="multiples of 8"):
        d(torch.rand(1, 3, 30, 32))


def test_losses_reward_the_right_decisions() -> None:
    sure = torch.full((1, 1, 4, 4), 6.0)
    assert d_loss(sure, -sure) < 0.01 < d_loss(-sure, sure)
    assert g_loss(sure) < 0.01 < g_loss(-sure)
    half = torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16)
    assert g_loss(half).dtype == torch.float32
    torch.testing.assert_close(d_loss(half, half), torch.tensor(2 * 0.6931472))
