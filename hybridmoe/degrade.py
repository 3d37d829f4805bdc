"""Seeded, batched image degradations (blur, noise, resizing, JPEG) in PyTorch: x1 restoration
and a second-order "real-world" pipeline for x4 super-resolution.

Every function takes float RGB batches ``(N, 3, H, W)`` with values in ``[0, 1]`` on any device
and works per image: each image has its own blur kernel, noise level and JPEG quality.
:func:`degrade_batch` draws those per-image parameters from a ``torch.Generator`` (on the
generator's device). With ``scale == 1`` (x1 restoration, same size) it applies, in this order:

1. anisotropic Gaussian blur (with probability ``blur_prob``),
2. Gaussian noise, colour or the same on all channels (with probability ``noise_prob``),
3. clamping and rounding to 8-bit levels,
4. a JPEG round trip (with probability ``jpeg_prob``).

With ``scale > 1`` (a Real-ESRGAN-style second-order degradation; ``H`` and ``W`` must be
multiples of the scale) every image goes, one image at a time since its size changes between
stages, through:

1. stage 1: blur (``blur_prob``, ``blur_sigma``) -> resize by a factor drawn in
   ``resize_range`` (mode drawn among :data:`RESIZE_MODES`, antialiased when shrinking) ->
   noise (``noise_prob``, ``noise_sigma``, ``noise_gray_prob``) -> 8-bit -> JPEG
   (``jpeg_prob``, ``jpeg_quality``);
2. stage 2, with probability ``second_prob``: blur (``second_blur_prob``,
   ``second_blur_sigma``) -> resize (``second_resize_range``) -> noise (``second_noise_prob``,
   ``second_noise_sigma``, grey with ``noise_gray_prob``) -> 8-bit;
3. final: resize to exactly ``(H / scale, W / scale)`` (mode drawn) -> 8-bit -> JPEG
   (``final_jpeg_prob``, ``final_jpeg_quality``).

The same generator state gives the same batch on the same device; every parameter (and every
noise field) is drawn for every image whether its stage is switched on or not, so switching one
stage off leaves the others as they were. :data:`RESTORE` is the preset the x1 restoration
recipe trains and is evaluated with; :data:`REALWORLD4` is the x4 real-world preset.

:func:`jpeg` is a JPEG baseline encode/decode written with tensor operations (so it runs on the
GPU): JFIF YCbCr, 4:2:0 chroma, 8x8 orthonormal DCT, the standard (Annex K) quantisation tables
scaled by quality as libjpeg scales them, and the triangle-filter chroma upsampling that
libjpeg's decoder uses by default. Its output is close to a Pillow (libjpeg) round trip at the
same quality with ``subsampling=2``; the tests measure how close.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

__all__ = [
    "PRESETS",
    "REALWORLD4",
    "RESIZE_MODES",
    "RESTORE",
    "Degradation",
    "DegradeParams",
    "SecondOrderParams",
    "add_noise",
    "apply_params",
    "degrade_batch",
    "gaussian_blur",
    "jpeg",
    "quant_tables",
    "sample_params",
]

MAX_KERNEL = 21
"""Largest blur kernel side (odd)."""
MAX_SIGMA = (MAX_KERNEL - 1) / 6
"""Largest blur sigma (px): the largest kernel covers +-3 sigma of it."""
RESIZE_MODES = ("area", "bilinear", "bicubic")
"""Interpolation modes the x4 pipeline draws from (``torch.nn.functional.interpolate`` names)."""
RESIZE_LIMITS = (0.05, 4.0)
"""Smallest and largest resize factor a :class:`Degradation` range may hold."""

_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
"""Luminance quantisation table of the JPEG standard (Annex K.1), row-major."""
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
"""Chrominance quantisation table of the JPEG standard (Annex K.2), row-major."""


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def _check_batch(x: torch.Tensor, what: str = "x") -> None:
    """Refuse anything but a float ``(N, 3, H, W)`` batch with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{what} must be an RGB batch of shape (N, 3, H, W), got {tuple(x.shape)}; "
            "add a batch dimension with x[None] or replicate grey images to 3 channels"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{what} must be a float tensor with values in [0, 1], got {x.dtype}; "
            "convert 8-bit images with x.float() / 255"
        )
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{what} must hold finite values in [0, 1], found [{float(x.min()):g}, "
            f"{float(x.max()):g}]; scale 8-bit values by 1/255 and clamp first"
        )


def _per_image(value: Any, n: int, what: str) -> torch.Tensor:
    """A scalar or an ``(N,)`` sequence/tensor as a float64 ``(N,)`` tensor on the host.

    The checks and the small tensors built from these values (blur kernels, noise scales) are
    computed on the host and sent to the images' device without waiting for it: a per-image
    pipeline on a GPU then queues its work without a synchronisation per value."""
    t = torch.as_tensor(value, dtype=torch.float64).cpu()
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(
            f"{what} must be a number or have one value per image ({n}), got {t.shape}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} must be finite, got {t.tolist()}")
    return t


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor is sent without waiting for the device's queue."""
    return t.to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------
def kernel_size(max_sigma: float) -> int:
    """Odd kernel side covering +-3 sigma: ``2 * ceil(3 * max_sigma) + 1``, at most 21."""
    return min(2 * math.ceil(3 * max_sigma) + 1, MAX_KERNEL)


def gaussian_kernels(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int
) -> torch.Tensor:
    """Normalised anisotropic Gaussian kernels ``(N, size, size)`` (float64).

    Image ``i`` gets the Gaussian with standard deviations ``sigma_x[i]`` along the direction
    at angle ``theta[i]`` (radians, counter-clockwise from the x axis) and ``sigma_y[i]``
    across it.
    """
    r = torch.arange(size, dtype=torch.float64, device=sigma_x.device) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = c * xx + s * yy  # coordinates along / across the principal direction
    v = -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2))
    return k / k.sum(dim=(1, 2), keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma_x: Any, sigma_y: Any, theta: Any = 0.0) -> torch.Tensor:
    """Blur each image of ``x`` ``(N, 3, H, W)`` with its own anisotropic Gaussian kernel.

    ``sigma_x``, ``sigma_y`` (pixels, > 0 and at most ``MAX_SIGMA``, what the largest kernel
    covers to +-3 sigma) and ``theta`` (radians) are numbers or one value per image. The kernel
    side is :func:`kernel_size` of the largest sigma of the batch; borders are reflected (the
    image must be larger than half the kernel on each side).
    """
    _check_batch(x)
    return _blur(x, sigma_x, sigma_y, theta)


def _blur(
    x: torch.Tensor, sigma_x: Any, sigma_y: Any, theta: Any, *, small_ok: bool = False
) -> torch.Tensor:
    """:func:`gaussian_blur` without the scan of ``x``'s values (the pipeline checks once).

    ``small_ok``: pad an image too small for reflect padding by edge replication instead of
    refusing it (the x4 pipeline, whose random resizing can make images small)."""
    n, ch, h, w = x.shape
    sx = _per_image(sigma_x, n, "sigma_x")
    sy = _per_image(sigma_y, n, "sigma_y")
    th = _per_image(theta, n, "theta")
    if n == 0:
        return x.clone()
    if (sx <= 0).any() or (sy <= 0).any():
        raise ValueError(
            f"blur sigmas must be > 0, got sigma_x={sx.tolist()}, sigma_y={sy.tolist()}; "
            "leave an image out of the blur instead of passing 0"
        )
    if (torch.maximum(sx, sy) > MAX_SIGMA * (1 + 1e-6)).any():  # float32 draws of the limit
        raise ValueError(
            f"blur sigmas must be at most {MAX_SIGMA:g} px (a {MAX_KERNEL}x{MAX_KERNEL} kernel "
            f"covers +-3 sigma of it), got sigma_x={sx.tolist()}, sigma_y={sy.tolist()}; "
            "downscale the image first for a wider blur"
        )
    size = kernel_size(float(torch.maximum(sx, sy).max()))
    pad = size // 2
    pad_mode = "reflect"
    if min(h, w) <= pad and small_ok:
        pad_mode = "replicate"
    elif min(h, w) <= pad:
        raise ValueError(
            f"images of {h}x{w} are too small for a {size}x{size} blur kernel (reflect padding "
            f"needs more than {pad} pixels per side); use smaller sigmas or larger images"
        )
    k = _to_device(gaussian_kernels(sx, sy, th, size).to(x.dtype), x.device)
    weight = k.repeat_interleave(ch, dim=0)[:, None]  # (N*3, 1, size, size)
    padded = F.pad(x.reshape(1, n * ch, h, w), (pad, pad, pad, pad), mode=pad_mode)
    out = F.conv2d(padded, weight, groups=n * ch).reshape(n, ch, h, w)
    # a normalised non-negative kernel keeps [0, 1]; clamp only the float rounding (1 + 1e-7)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------
def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def add_noise(
    x: torch.Tensor,
    sigma: Any,
    gray_prob: float = 0.0,
    generator: torch.Generator | None = None,
    gray: Any = None,
) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``sigma[i] / 255`` per image (not clamped).

    A fraction ``gray_prob`` of the images (drawn from ``generator``), or exactly those where
    ``gray`` (a boolean per image) is true, get the same noise on all three channels. Random
    numbers are drawn on the generator's device and moved to ``x``'s.
    """
    _check_batch(x)
    return _noise(x, sigma, gray_prob, generator, gray)


def _noise(
    x: torch.Tensor,
    sigma: Any,
    gray_prob: float,
    generator: torch.Generator | None,
    gray: Any,
) -> torch.Tensor:
    """:func:`add_noise` without the scan of ``x``'s values (the pipeline checks once)."""
    n = x.shape[0]
    s = _per_image(sigma, n, "sigma")
    if (s < 0).any():
        raise ValueError(f"noise sigma must be >= 0 (0..255 scale), got {s.tolist()}")
    if not 0.0 <= gray_prob <= 1.0:
        raise ValueError(f"gray_prob must be in [0, 1], got {gray_prob}")
    dev = _gen_device(generator, x.device)
    if gray is None:
        gray = torch.rand(n, generator=generator, device=dev) < gray_prob
    mono = _to_device(torch.as_tensor(gray, dtype=torch.bool), x.device).reshape(-1)
    if mono.shape != (n,):
        raise ValueError(f"gray must have one value per image ({n}), got {tuple(mono.shape)}")
    noise = torch.randn(x.shape, generator=generator, device=dev).to(x.device, x.dtype)
    noise = torch.where(mono[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    return x + noise * _to_device((s / 255.0).to(x.dtype), x.device)[:, None, None, None]


# --------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------
def quality_scale(quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's quality -> table percentage: ``5000 // q`` below 50, else ``200 - 2 q``."""
    q = quality.clamp(1, 100)
    return torch.where(q < 50, 5000 // q, 200 - 2 * q)


def quant_tables(quality: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """Luminance and chrominance tables ``(N, 2, 8, 8)`` (int64) for qualities 1..100.

    Each entry is ``(t * scale + 50) // 100`` clamped to 1..255, as libjpeg computes baseline
    tables from the standard ones.
    """
    q = torch.as_tensor(quality, device=device)
    if q.is_floating_point() or q.dtype == torch.bool:
        raise ValueError(f"JPEG quality must be integers, got {q.dtype}")
    q = q.to(torch.int64).reshape(-1)
    if ((q < 1) | (q > 100)).any():
        raise ValueError(f"JPEG quality must be in 1..100, got {q.tolist()}")
    base = torch.tensor((_LUMA_TABLE, _CHROMA_TABLE), dtype=torch.int64, device=q.device)
    scale = quality_scale(q)[:, None, None, None]
    return ((base[None] * scale + 50) // 100).clamp(1, 255)


@functools.cache
def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``D @ v`` transforms a column ``v``), made
    once per device and dtype (callers must not modify it)."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device, dtype)


def _blocks(p: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` -> ``(N, H/8, W/8, 8, 8)``."""
    n, h, w = p.shape
    return p.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    """``(N, H/8, W/8, 8, 8)`` -> ``(N, H, W)``."""
    n, bh, bw = b.shape[:3]
    return b.transpose(2, 3).reshape(n, bh * 8, bw * 8)


def _code_plane(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Level shift, block DCT, quantise / dequantise with ``table`` ``(N, 8, 8)``, inverse DCT,
    and back to clamped 8-bit samples, for one component ``(N, H, W)`` of 8-bit samples."""
    b = _blocks(plane - 128.0)
    coef = d @ b @ d.T
    t = table[:, None, None].to(coef.dtype)
    coef = torch.round(coef / t) * t
    return (_unblocks(d.T @ coef @ d) + 128.0).round().clamp(0, 255)


def _upsample_chroma(c: torch.Tensor) -> torch.Tensor:
    """2x chroma upsampling with the triangle filter (weights 3/4, 1/4 per axis, edges
    replicated) that libjpeg's decoder applies by default, rounded to 8-bit samples."""
    up = F.interpolate(c[:, None], scale_factor=2, mode="bilinear", align_corners=False)
    return up[:, 0].round()


def jpeg(x: torch.Tensor, quality: Any) -> torch.Tensor:
    """JPEG-compress and decode each image of ``x`` ``(N, 3, H, W)`` at its own ``quality``.

    ``quality``: an int or one int per image, 1..100 (libjpeg's scale). The pixels are rounded
    to 8 bits, converted to JFIF YCbCr (full range), the chroma averaged over 2x2 (4:2:0),
    each component level-shifted and coded in 8x8 blocks (orthonormal DCT-II, rounding to
    multiples of the quality-scaled standard tables), decoded, the chroma upsampled, and the
    result converted back to RGB and rounded to 8-bit levels. The image is padded to a
    multiple of 16 by edge replication and cropped back. Returns float values ``k / 255``.
    """
    _check_batch(x)
    return _jpeg(x, quality)


def _jpeg(x: torch.Tensor, quality: Any) -> torch.Tensor:
    """:func:`jpeg` without the scan of ``x``'s values (the pipeline checks once)."""
    n, _, h, w = x.shape
    # the tables are built where the qualities are (on the host in the per-image pipeline)
    q_device = quality.device if isinstance(quality, torch.Tensor) else torch.device("cpu")
    tables = _to_device(quant_tables(quality, q_device), x.device)
    if tables.shape[0] == 1:
        tables = tables.expand(n, -1, -1, -1)
    if tables.shape[0] != n:
        raise ValueError(f"quality must be one int or one per image ({n}), got {tables.shape[0]}")
    if n == 0:
        return x.clone()
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = (x.to(work) * 255.0).round()
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        v = F.pad(v, (0, pw, 0, ph), mode="replicate")
    r, g, b = v.unbind(1)
    y = (0.299 * r + 0.587 * g + 0.114 * b).round()
    cb = (-0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0).round()
    cr = (0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0).round()
    cb, cr = (F.avg_pool2d(c[:, None], 2)[:, 0].round() for c in (cb, cr))
    d = _dct_matrix(x.device, work)
    y = _code_plane(y, tables[:, 0], d)
    cb = _upsample_chroma(_code_plane(cb, tables[:, 1], d)) - 128.0
    cr = _upsample_chroma(_code_plane(cr, tables[:, 1], d)) - 128.0
    rgb = torch.stack(
        (y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb), dim=1
    )
    rgb = rgb[:, :, :h, :w].round().clamp(0, 255) / 255.0
    return rgb.to(x.dtype)


# --------------------------------------------------------------------------------------------
# The degradation pipeline
# --------------------------------------------------------------------------------------------
def _check_range(name: str, lo_hi: tuple[float, float], low: float, high: float) -> None:
    lo, hi = lo_hi
    if not (low <= lo <= hi <= high):
        raise ValueError(
            f"{name} must be a range (low, high) with {low} <= low <= high <= {high}, got {lo_hi}"
        )


@dataclass(frozen=True)
class Degradation:
    """Probabilities and parameter ranges of :func:`degrade_batch` (ranges are uniform).

    Blur sigmas are in pixels (one per axis, drawn independently, at a uniform angle); noise
    sigma is on the 0..255 scale; JPEG quality is an integer range, both ends included.

    ``scale`` is the downscaling factor of the pipeline: 1 (x1 restoration, the default) uses
    only the blur / noise / JPEG fields; a larger scale runs the second-order pipeline of the
    module docstring, where the ``blur_*``, ``noise_*`` and ``jpeg_*`` fields are stage 1's,
    ``resize_range`` is stage 1's resize factor, the ``second_*`` fields stage 2's (whose noise
    is grey with ``noise_gray_prob`` too) and the ``final_*`` fields the last JPEG's. Their
    defaults (no resizing in stage 1, no stage 2, no final JPEG) apply nothing beyond the x1
    stages and the final downscale; :data:`REALWORLD4` sets them all.
    """

    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    noise_prob: float = 0.7
    noise_sigma: tuple[float, float] = (1.0, 20.0)
    noise_gray_prob: float = 0.3
    jpeg_prob: float = 0.7
    jpeg_quality: tuple[int, int] = (40, 95)
    scale: int = 1
    resize_range: tuple[float, float] = (1.0, 1.0)
    second_prob: float = 0.0
    second_blur_prob: float = 0.8
    second_blur_sigma: tuple[float, float] = (0.2, 1.5)
    second_resize_range: tuple[float, float] = (0.6, 1.2)
    second_noise_prob: float = 0.8
    second_noise_sigma: tuple[float, float] = (1.0, 15.0)
    final_jpeg_prob: float = 0.0
    final_jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in (
            "blur_prob",
            "noise_prob",
            "noise_gray_prob",
            "jpeg_prob",
            "second_prob",
            "second_blur_prob",
            "second_noise_prob",
            "final_jpeg_prob",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        _check_range("blur_sigma", self.blur_sigma, 1e-3, MAX_SIGMA)
        _check_range("second_blur_sigma", self.second_blur_sigma, 1e-3, MAX_SIGMA)
        _check_range("noise_sigma", self.noise_sigma, 0.0, 255.0)
        _check_range("second_noise_sigma", self.second_noise_sigma, 0.0, 255.0)
        for name in ("jpeg_quality", "final_jpeg_quality"):
            _check_range(name, getattr(self, name), 1, 100)
            if not all(isinstance(q, int) for q in getattr(self, name)):
                raise ValueError(f"{name} must be two ints, got {getattr(self, name)}")
        for name in ("resize_range", "second_resize_range"):
            _check_range(f"{name} (resize factors)", getattr(self, name), *RESIZE_LIMITS)
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(
                f"scale must be an int >= 1 (1: same-size restoration, e.g. 4: x4 "
                f"super-resolution), got {self.scale!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The values as JSON-ready lists and numbers."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


RESTORE = Degradation(
    blur_prob=0.5,
    blur_sigma=(0.2, 1.5),
    noise_prob=0.7,
    noise_sigma=(1.0, 20.0),
    noise_gray_prob=0.3,
    jpeg_prob=0.7,
    jpeg_quality=(40, 95),
)
"""The x1 restoration preset: mild blur, light to moderate noise, JPEG 40..95."""

REALWORLD4 = Degradation(
    scale=4,
    blur_prob=0.8,
    blur_sigma=(0.2, 3.0),
    resize_range=(0.3, 1.5),
    noise_prob=0.8,
    noise_sigma=(1.0, 25.0),
    noise_gray_prob=0.4,
    jpeg_prob=0.8,
    jpeg_quality=(30, 95),
    second_prob=0.5,
    second_blur_prob=0.8,
    second_blur_sigma=(0.2, 1.5),
    second_resize_range=(0.6, 1.2),
    second_noise_prob=0.8,
    second_noise_sigma=(1.0, 15.0),
    final_jpeg_prob=0.8,
    final_jpeg_quality=(30, 95),
)
"""The x4 "real-world" preset: a Real-ESRGAN-style second-order degradation with moderate
ranges. Stage 1: blur (p 0.8, sigma 0.2..3.0), resize x0.3..1.5, noise (p 0.8, sigma 1..25,
grey 0.4), JPEG (p 0.8, q 30..95); stage 2 (p 0.5): blur (p 0.8, sigma 0.2..1.5), resize
x0.6..1.2, noise (p 0.8, sigma 1..15); then a resize to 1/4 of the HR size and JPEG (p 0.8,
q 30..95). The LQ image is a quarter of the HR image's size on each axis."""

PRESETS = {"restore": RESTORE, "realworld4": REALWORLD4}
"""Named presets (``--degrade NAME``, ``--preset NAME``)."""


def _r6(v: torch.Tensor) -> float:
    return round(float(v), 6)


def _describe_blur(on: Any, sx: Any, sy: Any, th: Any) -> dict[str, float] | None:
    return {"sigma_x": _r6(sx), "sigma_y": _r6(sy), "theta": _r6(th)} if on else None


def _describe_noise(on: Any, sigma: Any, gray: Any) -> dict[str, Any] | None:
    return {"sigma": _r6(sigma), "gray": bool(gray)} if on else None


_Params = TypeVar("_Params", bound="DegradeParams")


@dataclass
class DegradeParams:
    """The per-image parameters drawn by :func:`sample_params` (tensors of length N, on the
    generator's device); the flags say which stages apply to which image."""

    blur: torch.Tensor
    sigma_x: torch.Tensor
    sigma_y: torch.Tensor
    theta: torch.Tensor
    noise: torch.Tensor
    noise_sigma: torch.Tensor
    gray: torch.Tensor
    jpeg: torch.Tensor
    quality: torch.Tensor

    def host(self: _Params) -> _Params:
        """The same parameters with every tensor on the host (one copy per field): reading
        them one value at a time then never waits for a device."""
        moved = {
            f.name: getattr(self, f.name).cpu()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def describe(self, i: int) -> dict[str, Any]:
        """Image ``i``'s stages as JSON-ready values (``None`` for a stage not applied)."""
        return {
            "blur": _describe_blur(self.blur[i], self.sigma_x[i], self.sigma_y[i], self.theta[i]),
            "noise": _describe_noise(self.noise[i], self.noise_sigma[i], self.gray[i]),
            "jpeg": {"quality": int(self.quality[i])} if self.jpeg[i] else None,
        }


@dataclass
class SecondOrderParams(DegradeParams):
    """The per-image parameters of the second-order pipeline (``scale > 1``): stage 1's in the
    :class:`DegradeParams` fields plus its resize (``resize`` factor, ``resize_mode`` index
    into :data:`RESIZE_MODES`), stage 2's (flag ``second``; fields ending in ``2``) and the
    final resize mode and JPEG."""

    resize: torch.Tensor
    resize_mode: torch.Tensor
    second: torch.Tensor
    blur2: torch.Tensor
    sigma_x2: torch.Tensor
    sigma_y2: torch.Tensor
    theta2: torch.Tensor
    resize2: torch.Tensor
    resize_mode2: torch.Tensor
    noise2: torch.Tensor
    noise_sigma2: torch.Tensor
    gray2: torch.Tensor
    final_mode: torch.Tensor
    final_jpeg: torch.Tensor
    final_quality: torch.Tensor
    scale: int = 4

    def describe(self, i: int) -> dict[str, Any]:
        """Image ``i``'s stages as JSON-ready values (``None`` for a stage not applied):
        ``blur``, ``resize``, ``noise``, ``jpeg`` (stage 1), ``second`` (``None`` or its
        ``blur``, ``resize``, ``noise``) and ``final`` (``resize`` mode, ``jpeg``)."""
        first = super().describe(i)
        return {
            "blur": first["blur"],
            "resize": {
                "factor": _r6(self.resize[i]),
                "mode": RESIZE_MODES[int(self.resize_mode[i])],
            },
            "noise": first["noise"],
            "jpeg": first["jpeg"],
            "second": {
                "blur": _describe_blur(
                    self.blur2[i], self.sigma_x2[i], self.sigma_y2[i], self.theta2[i]
                ),
                "resize": {
                    "factor": _r6(self.resize2[i]),
                    "mode": RESIZE_MODES[int(self.resize_mode2[i])],
                },
                "noise": _describe_noise(self.noise2[i], self.noise_sigma2[i], self.gray2[i]),
            }
            if self.second[i]
            else None,
            "final": {
                "resize": {"scale": self.scale, "mode": RESIZE_MODES[int(self.final_mode[i])]},
                "jpeg": {"quality": int(self.final_quality[i])} if self.final_jpeg[i] else None,
            },
        }


def _uniform(
    n: int, lo_hi: tuple[float, float], gen: torch.Generator | None, dev: torch.device
) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=dev, dtype=torch.float64)


def sample_params(
    n: int, cfg: Degradation, generator: torch.Generator | None = None
) -> DegradeParams:
    """Draw the parameters of ``n`` images from ``generator`` (all of them, in a fixed order,
    whatever the probabilities); a :class:`SecondOrderParams` when ``cfg.scale > 1``."""
    if cfg.scale > 1:
        return _sample_second_order(n, cfg, generator)
    dev = _gen_device(generator, torch.device("cpu"))
    flags = torch.rand(3, n, generator=generator, device=dev, dtype=torch.float64)
    lo, hi = cfg.jpeg_quality
    return DegradeParams(
        blur=flags[0] < cfg.blur_prob,
        sigma_x=_uniform(n, cfg.blur_sigma, generator, dev),
        sigma_y=_uniform(n, cfg.blur_sigma, generator, dev),
        theta=_uniform(n, (0.0, math.pi), generator, dev),
        noise=flags[1] < cfg.noise_prob,
        noise_sigma=_uniform(n, cfg.noise_sigma, generator, dev),
        gray=torch.rand(n, generator=generator, device=dev) < cfg.noise_gray_prob,
        jpeg=flags[2] < cfg.jpeg_prob,
        quality=torch.randint(lo, hi + 1, (n,), generator=generator, device=dev),
    )


def _sample_second_order(
    n: int, cfg: Degradation, gen: torch.Generator | None
) -> SecondOrderParams:
    """:func:`sample_params` of the second-order pipeline: the flags, then every stage's
    values in pipeline order."""
    dev = _gen_device(gen, torch.device("cpu"))
    flags = torch.rand(7, n, generator=gen, device=dev, dtype=torch.float64)

    def quality(lo_hi: tuple[int, int]) -> torch.Tensor:
        return torch.randint(lo_hi[0], lo_hi[1] + 1, (n,), generator=gen, device=dev)

    def mode() -> torch.Tensor:
        return torch.randint(0, len(RESIZE_MODES), (n,), generator=gen, device=dev)

    def gray() -> torch.Tensor:
        return torch.rand(n, generator=gen, device=dev) < cfg.noise_gray_prob

    def stage(
        blur_sigma: tuple[float, float],
        resize_range: tuple[float, float],
        noise_sigma: tuple[float, float],
    ) -> tuple[torch.Tensor, ...]:
        """One stage's values in draw order: sigma_x, sigma_y, theta, resize factor, resize
        mode, noise sigma, grey (a tuple is evaluated left to right)."""
        return (
            _uniform(n, blur_sigma, gen, dev),
            _uniform(n, blur_sigma, gen, dev),
            _uniform(n, (0.0, math.pi), gen, dev),
            _uniform(n, resize_range, gen, dev),
            mode(),
            _uniform(n, noise_sigma, gen, dev),
            gray(),
        )

    sx, sy, th, resize, resize_mode, sigma, grey = stage(
        cfg.blur_sigma, cfg.resize_range, cfg.noise_sigma
    )
    jpeg_quality = quality(cfg.jpeg_quality)
    sx2, sy2, th2, resize2, resize_mode2, sigma2, grey2 = stage(
        cfg.second_blur_sigma, cfg.second_resize_range, cfg.second_noise_sigma
    )
    return SecondOrderParams(
        blur=flags[0] < cfg.blur_prob,
        sigma_x=sx,
        sigma_y=sy,
        theta=th,
        resize=resize,
        resize_mode=resize_mode,
        noise=flags[1] < cfg.noise_prob,
        noise_sigma=sigma,
        gray=grey,
        jpeg=flags[2] < cfg.jpeg_prob,
        quality=jpeg_quality,
        second=flags[3] < cfg.second_prob,
        blur2=flags[4] < cfg.second_blur_prob,
        sigma_x2=sx2,
        sigma_y2=sy2,
        theta2=th2,
        resize2=resize2,
        resize_mode2=resize_mode2,
        noise2=flags[5] < cfg.second_noise_prob,
        noise_sigma2=sigma2,
        gray2=grey2,
        final_mode=mode(),
        final_jpeg=flags[6] < cfg.final_jpeg_prob,
        final_quality=quality(cfg.final_jpeg_quality),
        scale=cfg.scale,
    )


def apply_params(
    hr: torch.Tensor, p: DegradeParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blur -> noise -> clamp and round to 8 bits -> JPEG with the drawn parameters ``p``.

    The noise field is drawn from ``generator`` for every image (zero-weighted where noise is
    off). Returns a new tensor of ``hr``'s shape and dtype holding 8-bit levels ``k / 255``.
    For :class:`SecondOrderParams`, the second-order pipeline instead (see
    :func:`degrade_batch`), returning ``(N, 3, H / scale, W / scale)``.
    """
    _check_batch(hr, "hr")
    if p.blur.shape != (hr.shape[0],):
        raise ValueError(
            f"the parameters are drawn for {p.blur.shape[0]} images, hr has {hr.shape[0]}"
        )
    if isinstance(p, SecondOrderParams):
        return _apply_second_order(hr, p, generator)
    dev = hr.device
    x = hr.clone()
    idx = p.blur.to(dev).nonzero().flatten()
    if idx.numel():
        sx, sy, th = (t.to(dev)[idx] for t in (p.sigma_x, p.sigma_y, p.theta))
        x[idx] = _blur(x[idx], sx, sy, th, small_ok=True)  # any size, as in the x4 pipeline
    sigma = torch.where(p.noise, p.noise_sigma, torch.zeros_like(p.noise_sigma))
    x = _noise(x, sigma, 0.0, generator, p.gray)
    x = (x.clamp(0, 1) * 255).round() / 255
    idx = p.jpeg.to(dev).nonzero().flatten()
    if idx.numel():
        x[idx] = _jpeg(x[idx], p.quality.to(dev)[idx])
    return x


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def _resized(size: tuple[int, int], factor: torch.Tensor) -> tuple[int, int]:
    """``size`` times ``factor``, rounded, at least one pixel per axis."""
    f = float(factor)
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))


def _resize(x: torch.Tensor, size: tuple[int, int], mode: torch.Tensor) -> torch.Tensor:
    """``x`` ``(1, 3, h, w)`` resized to ``size`` with mode ``RESIZE_MODES[mode]``
    (antialiased when shrinking an axis), clamped to [0, 1]; unchanged at the same size."""
    if size == tuple(x.shape[-2:]):
        return x
    name = RESIZE_MODES[int(mode)]
    if name == "area":  # averages the covered pixels: antialiased by construction
        y = F.interpolate(x, size=size, mode="area")
    else:
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        y = F.interpolate(x, size=size, mode=name, align_corners=False, antialias=shrink)
    return y.clamp(0.0, 1.0)


def _stage(
    x: torch.Tensor,
    gen: torch.Generator | None,
    blur: tuple[Any, Any, Any, Any],
    resize: tuple[Any, Any],
    noise: tuple[Any, Any, Any],
) -> torch.Tensor:
    """One image through blur (``(on, sigma_x, sigma_y, theta)``) -> resize (``(factor,
    mode)``) -> noise (``(on, sigma, gray)``; its field always drawn) -> 8 bits."""
    on, sx, sy, th = blur
    if on:
        x = _blur(x, float(sx), float(sy), float(th), small_ok=True)
    x = _resize(x, _resized(tuple(x.shape[-2:]), resize[0]), resize[1])
    on, sigma, gray = noise
    x = _noise(x, float(sigma) if on else 0.0, 0.0, gen, gray.reshape(1))
    return _to_8bit(x)


def _apply_second_order(
    hr: torch.Tensor, p: SecondOrderParams, gen: torch.Generator | None
) -> torch.Tensor:
    """The second-order pipeline, image by image (sizes differ between stages), in float32."""
    n, _, h, w = hr.shape
    s = p.scale
    if h % s or w % s:
        raise ValueError(
            f"hr images of {h}x{w} are not divisible by the scale {s}; crop them to a multiple "
            f"of {s} first (top-left: hr[..., :{h - h % s}, :{w - w % s}])"
        )
    p = p.host()  # the loop reads the values one by one: from the host, without device waits
    outs = []
    for i in range(n):
        x = hr[i : i + 1].to(torch.float32)
        x = _stage(
            x,
            gen,
            (p.blur[i], p.sigma_x[i], p.sigma_y[i], p.theta[i]),
            (p.resize[i], p.resize_mode[i]),
            (p.noise[i], p.noise_sigma[i], p.gray[i]),
        )
        if p.jpeg[i]:
            x = _jpeg(x, p.quality[i : i + 1])
        second = (
            (p.blur2[i], p.sigma_x2[i], p.sigma_y2[i], p.theta2[i]),
            (p.resize2[i], p.resize_mode2[i]),
            (p.noise2[i], p.noise_sigma2[i], p.gray2[i]),
        )
        if p.second[i]:
            x = _stage(x, gen, *second)
        else:  # draw the stage's noise field all the same: later draws stay as they were
            size = _resized(tuple(x.shape[-2:]), p.resize2[i])
            _noise(x.new_zeros((1, 3, *size)), 0.0, 0.0, gen, p.gray2[i].reshape(1))
        x = _to_8bit(_resize(x, (h // s, w // s), p.final_mode[i]))
        if p.final_jpeg[i]:
            x = _jpeg(x, p.final_quality[i : i + 1])
        outs.append(x)
    if not outs:
        return hr.new_zeros((0, 3, h // s, w // s))
    return (torch.cat(outs).to(hr.dtype) * 255).round() / 255


def degrade_batch(
    hr: torch.Tensor, cfg: Degradation = RESTORE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The degraded (LQ) version of ``hr`` ``(N, 3, H, W)`` in [0, 1].

    ``cfg.scale == 1``: the same size, the whole batch at once (blur -> noise -> 8 bits ->
    JPEG). ``cfg.scale = s > 1``: ``H`` and ``W`` must be multiples of ``s`` (``ValueError``
    otherwise); each image goes, one at a time, through the second-order pipeline of the
    module docstring, and the result is ``(N, 3, H / s, W / s)`` in ``hr``'s dtype (computed in
    float32).

    Parameters and noise come from ``generator`` (CPU or on the images' device); the same
    generator state reproduces the batch exactly on the same device. ``hr`` is checked once
    (shape, dtype, finite values in [0, 1]), by :func:`apply_params`.
    """
    return apply_params(hr, sample_params(hr.shape[0], cfg, generator), generator)
