"""Losses for HybridMoE-FreqNet: a float32 frequency loss, the MoE load-balance loss and LPIPS.

All three are ``nn.Module`` losses with the traiNNer-redux call convention ``loss(pred, target)``
returning a 0-dim tensor, and all store ``self.loss_weight``. Imported as
``traiNNer.losses.hybridmoe_loss`` (i.e. from ``traiNNer/losses/`` of a traiNNer-redux
checkout) they register into ``LOSS_REGISTRY`` as

=========================  ===========================  ========================
class                      YAML ``type``                log label
=========================  ===========================  ========================
:class:`HybridMoEFreqLoss`     ``hybridmoefreqloss``        ``l_g_hybridmoefreq``
:class:`HybridMoEBalanceLoss`  ``hybridmoebalanceloss``     ``l_g_hybridmoebalance``
:class:`HybridMoELPIPSLoss`    ``hybridmoelpipsloss``       ``l_g_hybridmoelpips``
=========================  ===========================  ========================

Outside traiNNer-redux the file imports with PyTorch alone (the LPIPS loss also needs
torchvision and safetensors, both traiNNer-redux dependencies) (for example as the top-level
module ``hybridmoe_loss`` next to ``hybridmoe_arch``).
"""

from __future__ import annotations

import importlib
import math
import numbers
from types import ModuleType

import torch
from torch import Tensor, nn

__all__ = [
    "BALANCE_LOSS_NAME",
    "FREQ_LOSS_NAME",
    "REDUCTIONS",
    "HybridMoEBalanceLoss",
    "HybridMoEFreqLoss",
    "HybridMoELPIPSLoss",
    "arch_module",
    "frequency_weight",
]

REDUCTIONS = ("mean", "sum")
"""Allowed ``reduction`` values of :class:`HybridMoEFreqLoss`."""

FREQ_LOSS_NAME = "hybridmoefreqloss"
BALANCE_LOSS_NAME = "hybridmoebalanceloss"
LPIPS_LOSS_NAME = "hybridmoelpipsloss"

_F_MAX = math.sqrt(0.5)
"""Largest radial frequency of a sampled image (cycles/pixel): the spectrum corner (½, ½)."""


# ---------------------------------------------------------------------------------------------
# Where the network lives (the side channel must be the network's own object)
# ---------------------------------------------------------------------------------------------


def _arch_module_name() -> str:
    if __name__.startswith("traiNNer.losses."):
        return "traiNNer.archs.hybridmoe_arch"
    return "hybridmoe_arch"


def arch_module() -> ModuleType:
    """The network module whose ``MOE_AUX`` side channel the balance loss reads.

    ``traiNNer.archs.hybridmoe_arch`` when this file is imported as
    ``traiNNer.losses.hybridmoe_loss``, else the top-level module ``hybridmoe_arch``. It is
    resolved lazily (at the first balance-loss call) through ``importlib``, so it is the very
    module object the network was built from and import order does not matter.
    """
    return importlib.import_module(_arch_module_name())


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check_real(cls: str, name: str, value: object, minimum: float | None = None) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and not math.isfinite(float(value)):  # type: ignore[arg-type]
        ok = False
    if ok and minimum is not None and float(value) < minimum:  # type: ignore[arg-type]
        ok = False
    if not ok:
        allowed = "a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
        raise ValueError(f"{cls}: {name} must be {allowed}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_pair(cls: str, pred: Tensor, target: Tensor) -> None:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{cls}: pred and target must be tensors")
    if pred.ndim < 2 or pred.shape != target.shape:
        raise ValueError(
            f"{cls}: pred and target must be image tensors (..., H, W) of the same shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Frequency loss
# ---------------------------------------------------------------------------------------------


def frequency_weight(
    h: int, w: int, hf_weight: float, device: torch.device | None = None
) -> Tensor:
    """Per-bin weights of the half spectrum ``rfft2`` returns for an ``h × w`` image.

    ``weight(u, v) = 1 + hf_weight · |f(u, v)| / f_max`` where ``f = (fy, fx)`` is the bin's
    frequency in cycles per pixel (``fy`` from ``fftfreq(h)`` in [-½, ½), ``fx`` from
    ``rfftfreq(w)`` in [0, ½]) and ``f_max = √½`` is the spectrum corner. The weight is 1 at
    DC and ``1 + hf_weight`` at the highest frequency, independent of the image size.

    Returns:
        float32 tensor of shape (h, w // 2 + 1).
    """
    fy = torch.fft.fftfreq(h, device=device, dtype=torch.float32)
    fx = torch.fft.rfftfreq(w, device=device, dtype=torch.float32)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return 1.0 + hf_weight * radius / _F_MAX


class HybridMoEFreqLoss(nn.Module):
    """L1 distance of 2-D Fourier spectra, computed in float32.

    With ``P = rfft2(pred, norm="ortho")`` and ``T = rfft2(target, norm="ortho")`` over the
    last two dimensions (shape (N, C, H, W//2+1), complex) and the per-bin weight ``w`` of
    :func:`frequency_weight`::

        amplitude = w · | |P| − |T| |
        phase     = w · ( |P − T| − | |P| − |T| | )          (≥ 0 by the triangle inequality)
        loss      = reduce(amplitude + phase_weight · phase)

    The phase term is the part of the complex difference that the amplitude difference does
    not explain: ``|P − T|² − (|P| − |T|)² = 4 |P| |T| sin²(Δφ / 2)``, so it is zero when the
    phases agree, grows monotonically with the wrapped phase difference ``Δφ ∈ [0, π]``, is
    scaled by the amplitudes (phases of near-empty bins, which are noise, hardly count), and is
    continuous everywhere with finite gradients. With ``phase_weight = 1`` the loss is the
    complex L1 distance ``w · |P − T|``.

    Inputs of any floating dtype (fp16/bf16 under AMP included) are cast to float32 and the
    computation runs with autocast disabled, so the value equals the float32 computation on the
    same (rounded) inputs; the result is a float32 0-dim tensor. Odd sizes (×3 crops) are fine.

    Args:
        loss_weight: weight traiNNer-redux multiplies the value by (stored, not applied here).
        phase_weight: weight of the phase term (≥ 0; 0 disables it).
        hf_weight: high-frequency emphasis (≥ 0; 0 weighs every bin equally).
        reduction: ``"mean"`` — mean over bins, channels and batch; ``"sum"`` — sum over the
            bins and channels of each image, mean over the batch. Both are independent of the
            batch size.

    Shapes:
        pred, target: (N, C, H, W) (any leading dimensions; the batch is the first one).
        output: () float32.
    """

    def __init__(
        self,
        loss_weight: float,
        phase_weight: float = 0.0,
        hf_weight: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.loss_weight = _check_real(name, "loss_weight", loss_weight)
        self.phase_weight = _check_real(name, "phase_weight", phase_weight, 0.0)
        self.hf_weight = _check_real(name, "hf_weight", hf_weight, 0.0)
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"{name}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                f"got {reduction!r}"
            )
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (
            f"loss_weight={self.loss_weight:g}, phase_weight={self.phase_weight:g}, "
            f"hf_weight={self.hf_weight:g}, reduction={self.reduction!r}"
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target (N, C, H, W) -> 0-dim float32 loss."""
        _check_pair(type(self).__name__, pred, target)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            p = torch.fft.rfft2(pred.float(), norm="ortho")
            t = torch.fft.rfft2(target.float(), norm="ortho")
            amp_diff = (p.abs() - t.abs()).abs()
            per_bin = amp_diff
            if self.phase_weight > 0:  # >= 0 exactly; clamped against float rounding
                phase = ((p - t).abs() - amp_diff).clamp_min(0)
                per_bin = per_bin + self.phase_weight * phase
            if self.hf_weight > 0:
                h, w = pred.shape[-2:]
                per_bin = per_bin * frequency_weight(h, w, self.hf_weight, pred.device)
            if self.reduction == "mean":
                return per_bin.mean()
            batch = per_bin.shape[0] if per_bin.ndim > 2 else 1
            return per_bin.sum() / batch


# ---------------------------------------------------------------------------------------------
# MoE load-balance loss
# ---------------------------------------------------------------------------------------------


class HybridMoEBalanceLoss(nn.Module):
    """Switch-style load-balance loss of HybridMoE's mixture-of-experts layers.

    The MoE layers of a HybridMoE network publish ``E · Σ_e f_e · P_e`` (``f_e``: fraction of
    routed token slots expert ``e`` received, ``P_e``: its mean router probability) to the
    network module's ``MOE_AUX`` side channel during every training forward with autograd
    enabled. This loss returns their mean over the layers of the latest such forward and
    consumes it, so the term is used once per forward. Uniform routing gives 1.0 (the value
    the Switch Transformer's loss aims at; a batch can land a little below it); gradients
    reach the routers through ``P_e``.

    ``pred`` and ``target`` are not used beyond giving the dtype and device of the result (the
    value is a tensor of the forward's graph, cast to ``pred.dtype`` on ``pred.device``).

    Args:
        loss_weight: weight traiNNer-redux multiplies the value by (stored, not applied
            here); 0.01 is the usual Switch Transformer choice.

    Shapes:
        pred, target: (N, C, H, W). output: () in ``pred.dtype``.

    Raises:
        RuntimeError: when no HybridMoE training forward with MoE layers ran since the last
            call (see :meth:`forward`).
    """

    def __init__(self, loss_weight: float) -> None:
        super().__init__()
        self.loss_weight = _check_real(type(self).__name__, "loss_weight", loss_weight)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight:g}"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target (N, C, H, W) -> 0-dim balance term of the latest training forward."""
        _check_pair(type(self).__name__, pred, target)
        arch = arch_module()
        term = arch.MOE_AUX.take_balance_loss()
        if term is None and pred.shape[0] == 0:  # a batch of no images routes no token
            return pred.new_zeros(())
        if term is None:
            raise RuntimeError(
                f"{BALANCE_LOSS_NAME}: no router statistics were recorded. The load-balance "
                "loss needs a HybridMoE training forward with mixture-of-experts layers right "
                f"before it (module {arch.__name__}), and none ran since the last call: the "
                "network is not a HybridMoE model, or it was built with use_moe=False (and no "
                "refine_moe), or the forward ran in eval mode or without autograd. Remove "
                f"'{BALANCE_LOSS_NAME}' from the loss list (or set its loss_weight to 0) for "
                "such networks."
            )
        return term.to(device=pred.device, dtype=pred.dtype)


# ---------------------------------------------------------------------------------------------
# LPIPS perceptual loss
# ---------------------------------------------------------------------------------------------

LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
"""torchvision ``features`` index of the ReLU after which each of the five layers is compared."""
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16}
"""Smallest image side each backbone's layers up to the last tap accept (strides and pools)."""

_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class HybridMoELPIPSLoss(nn.Module):
    """LPIPS v0.1 distance as a loss, from a local weights file (no download).

    ``d(x, y) = Σ_l mean_hw( w_l · (φ̂_l(x) − φ̂_l(y))² )``: ``φ_l`` are the activations of five
    ReLU layers of an ImageNet AlexNet or VGG16 (inputs mapped to ``[-1, 1]`` and shifted and
    scaled per channel as LPIPS does), ``φ̂`` their unit-length normalisation over channels,
    ``w_l`` the learned non-negative 1x1 heads. Computed in float32 (under autocast too); the
    network is frozen. The result is the batch mean.

    Args:
        loss_weight: weight traiNNer-redux multiplies the value by (stored, not applied here).
        weights: a ``.safetensors`` file written by ``hybridmoe perceptual-weights``
            (``lpips_vgg.safetensors`` or ``lpips_alex.safetensors``).
        net: ``"vgg"`` (the usual choice for training) or ``"alex"``; must match the file.

    Shapes:
        pred, target: (N, 3, H, W) in [0, 1], H and W at least LPIPS_MIN_SIZE[net]. output: ()
            float32.
    """

    def __init__(self, loss_weight: float, weights: str, net: str = "vgg") -> None:
        super().__init__()
        from safetensors.torch import load_file
        from torchvision.models import alexnet, vgg16

        cls = type(self).__name__
        self.loss_weight = _check_real(cls, "loss_weight", loss_weight)
        if net not in LPIPS_TAPS:
            raise ValueError(f"{cls}: net must be one of {sorted(LPIPS_TAPS)}, got {net!r}")
        try:
            sd = load_file(str(weights))
        except Exception as exc:  # OSError, and SafetensorError (an Exception) for bad bytes
            raise ValueError(
                f"{cls}: cannot read the LPIPS weights {weights!r} ({exc}); write them with "
                "'hybridmoe perceptual-weights --out DIR' and point 'weights' at "
                f"DIR/lpips_{net}.safetensors"
            ) from exc
        taps = LPIPS_TAPS[net]
        features = (vgg16 if net == "vgg" else alexnet)(weights=None).features[: taps[-1] + 1]
        want = {k for k in features.state_dict()}
        got = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
        if set(got) != want:
            raise ValueError(
                f"{cls}: {weights!r} does not hold the {net} backbone (net={net!r}); use "
                f"lpips_{net}.safetensors from 'hybridmoe perceptual-weights'"
            )
        heads_wanted = {
            f"lin.{k}": (1, features[t - 1].out_channels, 1, 1) for k, t in enumerate(taps)
        }
        bad = [k for k, shape in heads_wanted.items() if k not in sd or sd[k].shape != shape]
        if bad:
            raise ValueError(
                f"{cls}: {weights!r} lacks the LPIPS heads {', '.join(bad)} (or holds them in "
                f"another shape); write the file again with 'hybridmoe perceptual-weights'"
            )
        features.load_state_dict(got)
        self.features = features
        self.net = net
        self.taps = taps
        heads = [sd[k].float() for k in heads_wanted]
        for k, head in enumerate(heads):
            self.register_buffer(f"lin{k}", head)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> HybridMoELPIPSLoss:
        """The backbone always stays in eval mode."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight:g}, net={self.net!r}"

    def _layers(self, x: Tensor) -> list[Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10))
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target (N, 3, H, W) in [0, 1] -> 0-dim mean LPIPS distance (float32)."""
        cls = type(self).__name__
        _check_pair(cls, pred, target)
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"{cls}: LPIPS compares batches of RGB images (N, 3, H, W), got shape "
                f"{tuple(pred.shape)}"
            )
        side = LPIPS_MIN_SIZE[self.net]
        if min(pred.shape[-2:]) < side:
            raise ValueError(
                f"{cls}: the {self.net} network needs images of at least {side}x{side} px, got "
                f"{pred.shape[-2]}x{pred.shape[-1]}; train on larger crops (gt_size)"
            )
        with torch.autocast(device_type=pred.device.type, enabled=False):
            a = self._layers(pred.float())
            b = self._layers(target.float())
            total = pred.new_zeros((), dtype=torch.float32)
            for k, (fa, fb) in enumerate(zip(a, b, strict=True)):
                head = getattr(self, f"lin{k}")
                total = total + nn.functional.conv2d((fa - fb) ** 2, head).mean()
        return total


# ---------------------------------------------------------------------------------------------
# traiNNer-redux registration (only when imported as traiNNer.losses.hybridmoe_loss)
# ---------------------------------------------------------------------------------------------

if __name__ == "traiNNer.losses.hybridmoe_loss":
    from traiNNer.utils.registry import LOSS_REGISTRY

    for _cls in (HybridMoEFreqLoss, HybridMoEBalanceLoss, HybridMoELPIPSLoss):
        LOSS_REGISTRY.register()(_cls)
