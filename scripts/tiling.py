"""Tiled inference for image-to-image models with seamless, feathered blending.

Layout along each axis (LR pixels, ``o`` = overlap):

* windows of ``tile`` pixels (rounded up to satisfy the model's size requirements) cover the
  image; consecutive windows overlap by at least ``3·o``;
* with ``align > 1`` every window starts at a multiple of ``align`` (the last one may then end
  at the image border before reaching ``tile`` pixels), so that a network with an internal
  grid (strided downsampling, attention windows) sees the same grid in every window as on
  the whole image;
* on each side that borders another window, the outer ``o`` pixels of a window's output are
  context only (weight 0) and the next ``o`` pixels fade in linearly; sides on the image border
  keep full weight;
* the output is the weight-normalised sum of all windows.

Every output pixel with non-zero weight lies at least ``o`` LR pixels inside its window, so for a
model whose receptive field reaches ``r`` pixels, the tiled result equals the whole-image result
(up to float rounding) whenever ``overlap >= r``; for models with a larger reach, the linear
feathering hides the seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from spandrel import SizeRequirements

ModelFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a (1, C, h, w) tile to its (1, C_out, h·scale, w·scale) upscaled tile."""


def effective_tile(tile: int, size_requirements: SizeRequirements | None) -> int:
    """``tile`` rounded up so that a ``tile × tile`` window needs no padding."""
    if size_requirements is None:
        return tile
    pad_w, _ = size_requirements.get_padding(tile, tile)
    return tile + pad_w


def fitted_align(align: int, tile: int, overlap: int) -> int:
    """The alignment :func:`window_starts` uses: ``align`` itself if a step of ``align`` fits
    in ``tile - 3·overlap``, otherwise its largest divisor that does (at least 1)."""
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    stride = tile - 3 * overlap
    if stride >= align:
        return align
    return max((d for d in range(1, max(stride, 1) + 1) if align % d == 0), default=1)


def window_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of the windows covering ``[0, length)``; window ``i`` spans
    ``[start_i, min(start_i + tile, length))``.

    Starts are spread evenly, with a step of at most ``tile - 3·overlap``. With ``align > 1``
    they are multiples of :func:`fitted_align` (``align`` unless the step is too short for
    it): every window but the last is ``tile`` pixels long, the last one starts at the first
    aligned offset from which it reaches the end, so it may be shorter. ``align=1`` gives
    windows of ``tile`` pixels, the last one ending at ``length``.
    """
    if length <= tile:
        return [0]
    stride = tile - 3 * overlap
    if stride < 1:
        raise ValueError(f"tile ({tile}) must be larger than 3 × overlap ({overlap})")
    a = fitted_align(align, tile, overlap)
    units = -(-(length - tile) // a)  # last start, in units of a: the first one reaching the end
    count = math.ceil((length - tile) / (stride // a * a)) + 1
    return [i * units // (count - 1) * a for i in range(count)]


def count_tiles(
    height: int,
    width: int,
    tile: int,
    overlap: int,
    size_requirements: SizeRequirements | None = None,
    *,
    align: int = 1,
) -> int:
    """Number of model calls :func:`upscale_tiled` makes for an ``height × width`` image."""
    if tile <= 0:
        return 1
    t = effective_tile(tile, size_requirements)
    rows, cols = window_starts(height, t, overlap, align), window_starts(width, t, overlap, align)
    return len(rows) * len(cols)


def axis_weights(
    start: int, size: int, length: int, overlap: int, scale: int, *, device: torch.device
) -> torch.Tensor:
    """Blending weights, shape (size·scale,), of a window ``[start, start + size)`` on one axis.

    Sides touching the image border keep weight 1; an inner side has ``overlap·scale`` output
    pixels of weight 0, then a linear ramp of the same width up to 1.
    """
    n = size * scale
    w = torch.ones(n, device=device)
    band = overlap * scale
    if band == 0:
        return w
    pos = torch.arange(n, device=device, dtype=torch.float32)
    ramp_in = ((pos - band + 0.5) / band).clamp(0.0, 1.0)
    if start > 0:
        w = torch.minimum(w, ramp_in)
    if start + size < length:
        w = torch.minimum(w, ramp_in.flip(0))
    return w


def pad_to_requirements(
    x: torch.Tensor, size_requirements: SizeRequirements | None
) -> torch.Tensor:
    """Pad (1, C, h, w) at the bottom/right to satisfy ``size_requirements``.

    Reflection is used as far as the tile allows (``size - 1`` pixels), replication beyond.
    """
    if size_requirements is None:
        return x
    h, w = x.shape[-2:]
    pad_w, pad_h = size_requirements.get_padding(w, h)
    if pad_w == 0 and pad_h == 0:
        return x
    refl_w, refl_h = min(pad_w, w - 1), min(pad_h, h - 1)
    if refl_w or refl_h:
        x = F.pad(x, (0, refl_w, 0, refl_h), mode="reflect")
    if pad_w > refl_w or pad_h > refl_h:
        x = F.pad(x, (0, pad_w - refl_w, 0, pad_h - refl_h), mode="replicate")
    return x


def run_padded(
    model_fn: ModelFn,
    x: torch.Tensor,
    scale: int,
    size_requirements: SizeRequirements | None,
) -> torch.Tensor:
    """Run ``model_fn`` on (1, C, h, w) padded as required; return (1, C_out, h·scale, w·scale)."""
    h, w = x.shape[-2:]
    xp = pad_to_requirements(x, size_requirements)
    y = model_fn(xp)
    hp, wp = xp.shape[-2:]
    if y.dim() != 4 or y.shape[0] != 1 or tuple(y.shape[-2:]) != (hp * scale, wp * scale):
        raise ValueError(
            f"model output shape {tuple(y.shape)} does not match a ×{scale} upscale "
            f"of the {hp}×{wp} input"
        )
    return y[..., : h * scale, : w * scale]


def upscale_tiled(  # noqa: PLR0917 (the positional signature is shared with other scripts)
    model_fn: ModelFn,
    image: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    size_requirements: SizeRequirements | None = None,
    *,
    align: int = 1,
    on_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Upscale (1, C, H, W) float ``image`` window by window; return (1, C_out, H·scale, W·scale).

    ``tile`` is the window side in input pixels (0: the whole image in one call); it is rounded up
    to satisfy ``size_requirements`` and must exceed ``3·overlap`` when the image is larger.
    ``align`` > 1 starts every window at a multiple of ``align`` input pixels (see
    :func:`window_starts`; e.g. ``4·window_size`` for HybridMoE, whose ×¼ attention windows
    then fall on the same pixels as on the whole image).
    Each window is padded (bottom/right) to ``size_requirements`` before ``model_fn`` and the
    padding is cropped from its output. Blending is accumulated in float32 on ``image.device``;
    ``on_tile`` is called after each model call.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected an image of shape (1, C, H, W), got {tuple(image.shape)}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    H, W = image.shape[-2:]
    t = effective_tile(tile, size_requirements) if tile > 0 else max(H, W)
    ys, xs = window_starts(H, t, overlap, align), window_starts(W, t, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        out = run_padded(model_fn, image, scale, size_requirements)
        if on_tile is not None:
            on_tile()
        return out.to(device=image.device, dtype=torch.float32)

    acc: torch.Tensor | None = None
    wsum = torch.zeros(1, 1, H * scale, W * scale, device=image.device)
    for y0 in ys:
        th = min(t, H - y0)
        wy = axis_weights(y0, th, H, overlap, scale, device=image.device)
        for x0 in xs:
            tw = min(t, W - x0)
            wx = axis_weights(x0, tw, W, overlap, scale, device=image.device)
            out = run_padded(
                model_fn, image[..., y0 : y0 + th, x0 : x0 + tw], scale, size_requirements
            )
            out = out.to(device=image.device, dtype=torch.float32)
            if acc is None:
                acc = torch.zeros(1, out.shape[1], H * scale, W * scale, device=image.device)
            weight = wy[:, None] * wx[None, :]
            ry, rx = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            acc[..., ry, rx] += out * weight
            wsum[..., ry, rx] += weight
            if on_tile is not None:
                on_tile()
    assert acc is not None
    return acc / wsum
