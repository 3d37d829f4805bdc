"""Seeded, batched image degradations for x1 restoration (blur, noise, JPEG) in PyTorch.

Every function takes float RGB batches ``(N, 3, H, W)`` with values in ``[0, 1]`` on any device
and works per image: each image has its own blur kernel, noise level and JPEG quality.
:func:`degrade_batch` draws those per-image parameters from a ``torch.Generator`` (on the
generator's device) and applies, in this order:

1. anisotropic Gaussian blur (with probability ``blur_prob``),
2. Gaussian noise, colour or the same on all channels (with probability ``noise_prob``),
3. clamping and rounding to 8-bit levels,
4. a JPEG round trip (with probability ``jpeg_prob``).

The same generator state gives the same batch; every parameter is drawn for every image
whether its stage is switched on or not, so switching one stage off leaves the others as they
were. :data:`RESTORE` is the preset the x1 restoration recipe trains and is evaluated with.

:func:`jpeg` is a JPEG baseline encode/decode written with tensor operations (so it runs on the
GPU): JFIF YCbCr, 4:2:0 chroma, 8x8 orthonormal DCT, the standard (Annex K) quantisation tables
scaled by quality as libjpeg scales them, and the triangle-filter chroma upsampling that
libjpeg's decoder uses by default. Its output is close to a Pillow (libjpeg) round trip at the
same quality with ``subsampling=2``; the tests measure how close.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "RESTORE",
    "Degradation",
    "DegradeParams",
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


def _per_image(value: Any, n: int, device: torch.device, what: str) -> torch.Tensor:
    """A scalar or an ``(N,)`` sequence/tensor as a float64 ``(N,)`` tensor on ``device``."""
    t = torch.as_tensor(value, dtype=torch.float64).to(device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(
            f"{what} must be a number or have one value per image ({n}), got {t.shape}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} must be finite, got {t.tolist()}")
    return t


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

    ``sigma_x``, ``sigma_y`` (pixels, > 0) and ``theta`` (radians) are numbers or one value per
    image. The kernel side is :func:`kernel_size` of the largest sigma of the batch; borders are
    reflected (the image must be larger than half the kernel on each side).
    """
    _check_batch(x)
    return _blur(x, sigma_x, sigma_y, theta)


def _blur(x: torch.Tensor, sigma_x: Any, sigma_y: Any, theta: Any) -> torch.Tensor:
    """:func:`gaussian_blur` without the scan of ``x``'s values (the pipeline checks once)."""
    n, ch, h, w = x.shape
    sx = _per_image(sigma_x, n, x.device, "sigma_x")
    sy = _per_image(sigma_y, n, x.device, "sigma_y")
    th = _per_image(theta, n, x.device, "theta")
    if n == 0:
        return x.clone()
    if (sx <= 0).any() or (sy <= 0).any():
        raise ValueError(
            f"blur sigmas must be > 0, got sigma_x={sx.tolist()}, sigma_y={sy.tolist()}; "
            "leave an image out of the blur instead of passing 0"
        )
    size = kernel_size(float(torch.maximum(sx, sy).max()))
    pad = size // 2
    if min(h, w) <= pad:
        raise ValueError(
            f"images of {h}x{w} are too small for a {size}x{size} blur kernel (reflect padding "
            f"needs more than {pad} pixels per side); use smaller sigmas or larger images"
        )
    k = gaussian_kernels(sx, sy, th, size).to(x.dtype)
    weight = k.repeat_interleave(ch, dim=0)[:, None]  # (N*3, 1, size, size)
    padded = F.pad(x.reshape(1, n * ch, h, w), (pad, pad, pad, pad), mode="reflect")
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
    s = _per_image(sigma, n, x.device, "sigma")
    if (s < 0).any():
        raise ValueError(f"noise sigma must be >= 0 (0..255 scale), got {s.tolist()}")
    if not 0.0 <= gray_prob <= 1.0:
        raise ValueError(f"gray_prob must be in [0, 1], got {gray_prob}")
    dev = _gen_device(generator, x.device)
    if gray is None:
        gray = torch.rand(n, generator=generator, device=dev) < gray_prob
    mono = torch.as_tensor(gray, dtype=torch.bool).to(x.device).reshape(-1)
    if mono.shape != (n,):
        raise ValueError(f"gray must have one value per image ({n}), got {tuple(mono.shape)}")
    noise = torch.randn(x.shape, generator=generator, device=dev).to(x.device, x.dtype)
    noise = torch.where(mono[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    return x + noise * (s / 255.0).to(x.dtype)[:, None, None, None]


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


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``D @ v`` transforms a column ``v``)."""
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
    tables = quant_tables(quality, x.device)
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
    """

    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    noise_prob: float = 0.7
    noise_sigma: tuple[float, float] = (1.0, 20.0)
    noise_gray_prob: float = 0.3
    jpeg_prob: float = 0.7
    jpeg_quality: tuple[int, int] = (40, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "noise_prob", "noise_gray_prob", "jpeg_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        _check_range("blur_sigma", self.blur_sigma, 1e-3, (MAX_KERNEL - 1) / 6)
        _check_range("noise_sigma", self.noise_sigma, 0.0, 255.0)
        _check_range("jpeg_quality", self.jpeg_quality, 1, 100)
        if not all(isinstance(q, int) for q in self.jpeg_quality):
            raise ValueError(f"jpeg_quality must be two ints, got {self.jpeg_quality}")

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

PRESETS = {"restore": RESTORE}
"""Named presets (``--degrade NAME``)."""


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

    def describe(self, i: int) -> dict[str, Any]:
        """Image ``i``'s stages as JSON-ready values (``None`` for a stage not applied)."""
        return {
            "blur": {
                "sigma_x": round(float(self.sigma_x[i]), 6),
                "sigma_y": round(float(self.sigma_y[i]), 6),
                "theta": round(float(self.theta[i]), 6),
            }
            if self.blur[i]
            else None,
            "noise": {"sigma": round(float(self.noise_sigma[i]), 6), "gray": bool(self.gray[i])}
            if self.noise[i]
            else None,
            "jpeg": {"quality": int(self.quality[i])} if self.jpeg[i] else None,
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
    whatever the probabilities)."""
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


def apply_params(
    hr: torch.Tensor, p: DegradeParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blur -> noise -> clamp and round to 8 bits -> JPEG with the drawn parameters ``p``.

    The noise field is drawn from ``generator`` for every image (zero-weighted where noise is
    off). Returns a new tensor of ``hr``'s shape and dtype holding 8-bit levels ``k / 255``.
    """
    _check_batch(hr, "hr")
    dev = hr.device
    x = hr.clone()
    idx = p.blur.to(dev).nonzero().flatten()
    if idx.numel():
        sx, sy, th = (t.to(dev)[idx] for t in (p.sigma_x, p.sigma_y, p.theta))
        x[idx] = _blur(x[idx], sx, sy, th)
    sigma = torch.where(p.noise, p.noise_sigma, torch.zeros_like(p.noise_sigma))
    x = _noise(x, sigma, 0.0, generator, p.gray)
    x = (x.clamp(0, 1) * 255).round() / 255
    idx = p.jpeg.to(dev).nonzero().flatten()
    if idx.numel():
        x[idx] = _jpeg(x[idx], p.quality.to(dev)[idx])
    return x


def degrade_batch(
    hr: torch.Tensor, cfg: Degradation = RESTORE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The degraded (LQ) version of ``hr`` ``(N, 3, H, W)`` in [0, 1], same size (x1).

    Parameters and noise come from ``generator`` (CPU or on the images' device); the same
    generator state reproduces the batch exactly on the same device. ``hr`` is checked once
    (shape, dtype, finite values in [0, 1]), by :func:`apply_params`.
    """
    return apply_params(hr, sample_params(hr.shape[0], cfg, generator), generator)
