"""Super-resolution evaluation primitives: MATLAB-compatible bicubic resizing, PSNR and SSIM.

Only numpy is needed. Conventions follow the super-resolution literature, so that numbers are
comparable with published tables:

* LR images are made with :func:`imresize_matlab_uint8` (MATLAB ``imresize(img, 1/s, 'bicubic')``
  on an 8-bit image), after :func:`mod_crop` of the HR image to a multiple of the scale.
* PSNR and SSIM are computed on 8-bit images, on the luminance Y of ITU-R BT.601 in studio range
  (16..235, see :func:`rgb_to_y`), with ``crop_border`` (= the scale) pixels removed on every side.

Image arrays are ``(H, W)`` (greyscale) or ``(H, W, C)`` (C = 1 or 3, RGB order).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "calculate_psnr",
    "calculate_ssim",
    "imresize_matlab",
    "imresize_matlab_uint8",
    "matlab_round",
    "mod_crop",
    "rgb_to_y",
    "to_uint8",
]

_CUBIC_A = -0.5  # MATLAB's bicubic kernel parameter
_CUBIC_SUPPORT = 4.0  # kernel width in input pixels when upscaling
SSIM_WINDOW = 11
"""Side of the SSIM Gaussian window: images scored need both sides at least this long."""


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------
def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, evaluated element-wise (any shape)."""
    a = _CUBIC_A
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = ((a + 2.0) * ax3 - (a + 3.0) * ax2 + 1.0) * (ax <= 1.0)
    outer = (a * ax3 - 5.0 * a * ax2 + 8.0 * a * ax - 4.0 * a) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices that map ``in_len`` samples to ``out_len`` samples.

    Output sample ``i`` is ``sum_k weights[i, k] * input[indices[i, k]]``. When downscaling
    (``scale < 1``) the kernel is stretched by ``1/scale`` (antialiasing). Indices that fall outside
    the input are mirrored (``..., 2, 1, 1, 2, ...``, i.e. the edge sample is repeated), and
    columns whose weights are all zero are dropped.

    Returns:
        ``weights``: float64 ``(out_len, P)``, each row summing to 1;
        ``indices``: int64 ``(out_len, P)``, 0-based, in ``[0, in_len)``.
    """
    shrink = min(scale, 1.0)  # the kernel is widened by 1 / scale when downscaling
    width = _CUBIC_SUPPORT / shrink
    # 1-based output coordinates mapped to 1-based input coordinates (pixel centres aligned).
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    distance = u[:, None] - indices
    weights = shrink * _cubic(shrink * distance)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Symmetric boundary: 1..n followed by n..1, repeated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]

    keep = np.any(weights != 0.0, axis=0)
    return weights[:, keep], idx[:, keep]


def _resize_axis(
    img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    """Resample ``img`` (float64, any rank) along ``axis`` with a contributions table.

    The taps are accumulated one after another, left to right, in double precision (the order
    MATLAB uses), so that results match it to the last bit in practice.
    """
    moved = np.moveaxis(img, axis, 0)
    out = np.zeros((weights.shape[0], *moved.shape[1:]), dtype=np.float64)
    extra = (slice(None),) + (None,) * (moved.ndim - 1)
    for k in range(weights.shape[1]):
        out += weights[:, k][extra] * moved[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def _resize_plan(
    in_hw: tuple[int, int],
    scale: float | None,
    output_shape: tuple[int, int] | None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The per-axis passes ``(axis, weights, indices)`` of a resize, in MATLAB's order.

    MATLAB resizes the dimension with the smaller scale factor first; on a tie, rows (axis 0)
    come before columns (axis 1).
    """
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        out_hw = (math.ceil(scale * in_hw[0]), math.ceil(scale * in_hw[1]))
    else:
        assert output_shape is not None
        out_hw = (int(output_shape[0]), int(output_shape[1]))
        if min(out_hw) < 1:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    order = sorted(range(2), key=lambda ax: scales[ax])  # stable: ties keep rows first
    plan = []
    for ax in order:
        weights, indices = _contributions(in_hw[ax], out_hw[ax], scales[ax])
        plan.append((ax, weights, indices))
    return plan


def imresize_matlab(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` on a floating-point image.

    Bicubic kernel with a = -0.5, antialiased when downscaling, symmetric (mirrored) borders,
    computed in float64. The operation is linear, so any value range works (e.g. [0, 1] or
    [0, 255]); the output is not clipped.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` array, converted to float64.
        scale: resize factor (``0.5`` halves, ``3`` triples); output size ``ceil(scale * H)``,
            ``ceil(scale * W)``.
        output_shape: ``(H_out, W_out)`` instead of ``scale``.

    Returns:
        float64 ``(H_out, W_out)`` or ``(H_out, W_out, C)``.
    """
    out = np.asarray(img, dtype=np.float64)
    for axis, weights, indices in _resize_plan(out.shape[:2], scale, output_shape):
        out = _resize_axis(out, axis, weights, indices)
    return out


def imresize_matlab_uint8(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` on an 8-bit image, bit-exact.

    Like MATLAB on ``uint8`` input, each of the two 1-D passes is computed in float64 and
    stored back as 8-bit (rounded half away from zero, saturated to 0..255) before the next one.

    Args:
        img: uint8 ``(H, W)`` or ``(H, W, C)``.
        scale, output_shape: as in :func:`imresize_matlab`.

    Returns:
        uint8 ``(H_out, W_out)`` or ``(H_out, W_out, C)``.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {img.dtype}")
    out = img
    for axis, weights, indices in _resize_plan(img.shape[:2], scale, output_shape):
        out = to_uint8(_resize_axis(out.astype(np.float64), axis, weights, indices))
    return out


# --------------------------------------------------------------------------------------------
# Rounding, cropping, colour
# --------------------------------------------------------------------------------------------
def matlab_round(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (MATLAB's ``round``), exactly, for float arrays of any shape."""
    x = np.asarray(x, dtype=np.float64)
    rounded = np.round(x)  # half to even, exact
    frac = x - np.trunc(x)  # exact in floating point
    tie = np.abs(frac) == 0.5
    return np.where(tie, np.trunc(x) + np.sign(x), rounded)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float values on the 0..255 scale to uint8 as MATLAB stores them (round, saturate).

    Raises ``ValueError`` for NaN or Inf values, which have no 8-bit value (a cast would turn
    them into arbitrary numbers silently).
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"{bad} of {x.size} values are NaN or Inf; they have no 8-bit value")
    return np.clip(matlab_round(x), 0, 255).astype(np.uint8)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop ``(H, W[, C])`` to the top-left ``(H - H % scale, W - W % scale[, C])`` region."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


def _as_hwc(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` as ``(H, W, C)`` (a view)."""
    if img.ndim == 2:
        return img[:, :, None]
    if img.ndim == 3:
        return img
    raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luminance Y of ITU-R BT.601, studio range, as the super-resolution literature uses it.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` for R, G, B in [0, 1]; here the input is on the
    0..255 scale, so ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, giving 16..235.

    Greyscale convention: a greyscale image (``(H, W)`` or one channel) is treated as the RGB
    image with R = G = B = grey, which is how it reads when loaded as RGB; its Y is then
    ``16 + 219 * grey / 255``.

    Args:
        img: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB, uint8 or float on the 0..255 scale.

    Returns:
        float64 ``(H, W)``, values in [16, 235] for inputs in [0, 255] (not rounded).
    """
    hwc = _as_hwc(np.asarray(img)).astype(np.float64)
    if hwc.shape[2] == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    elif hwc.shape[2] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {hwc.shape[2]}")
    r, g, b = hwc[..., 0], hwc[..., 1], hwc[..., 2]
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _prepare_pair(
    img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Two images as float64 ``(H', W', C')`` after optional Y conversion and border crop."""
    if img1.shape[:2] != img2.shape[:2]:
        raise ValueError(f"image sizes differ: {img1.shape} vs {img2.shape}")
    if y_channel:
        a, b = rgb_to_y(img1)[..., None], rgb_to_y(img2)[..., None]
    else:
        a = _as_hwc(np.asarray(img1)).astype(np.float64)
        b = _as_hwc(np.asarray(img2)).astype(np.float64)
        if a.shape != b.shape:
            raise ValueError(f"image shapes differ: {img1.shape} vs {img2.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(a.shape[:2]) <= 2 * crop_border:
            raise ValueError(f"image {a.shape[:2]} too small for crop_border={crop_border}")
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def calculate_psnr(
    img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool = True
) -> float:
    """PSNR in dB between two 8-bit images (peak 255).

    Args:
        img1, img2: ``(H, W)`` or ``(H, W, C)`` uint8 (or float already rounded to 0..255).
        crop_border: pixels removed on every side before measuring (usually the scale).
        y_channel: measure on BT.601 Y (:func:`rgb_to_y`) instead of all channels.

    Returns:
        PSNR in dB; ``inf`` for identical images.
    """
    a, b = _prepare_pair(img1, img2, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = 1.5) -> np.ndarray:
    """Normalized 1-D Gaussian ``(size,)``; its outer product is the 2-D SSIM window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``(H, W)`` with ``kernel`` ``(K,)`` → ``(H-K+1, W-K+1)``."""
    k = kernel.shape[0]
    h, w = img.shape
    rows = sum(kernel[i] * img[i : h - k + 1 + i, :] for i in range(k))
    return sum(kernel[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two float64 ``(H, W)`` images on the 0..255 scale."""
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    g = _gaussian_1d()
    if min(a.shape) < g.shape[0]:
        raise ValueError(f"image {a.shape} smaller than the {g.size}x{g.size} SSIM window")
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def calculate_ssim(
    img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool = True
) -> float:
    """SSIM between two 8-bit images: 11x11 Gaussian window (sigma 1.5), 'valid' filtering.

    ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``; computed in float64 on the 0..255 scale.

    Args:
        img1, img2: ``(H, W)`` or ``(H, W, C)`` uint8 (or float already rounded to 0..255).
        crop_border: pixels removed on every side before measuring (usually the scale).
        y_channel: measure on BT.601 Y (:func:`rgb_to_y`); otherwise the mean over channels.

    Returns:
        Mean SSIM, 1.0 for identical images.
    """
    a, b = _prepare_pair(img1, img2, crop_border, y_channel)
    return float(np.mean([_ssim_single(a[..., c], b[..., c]) for c in range(a.shape[2])]))
