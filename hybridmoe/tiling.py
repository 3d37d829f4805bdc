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
(up to float rounding) whenever ``overlap >= r`` — for a model that pads its input to a size
multiple, only when ``align`` is that multiple (otherwise the last ``r`` rows and columns at
the bottom and right border see other padding than on the whole image); for models with a
larger reach, the linear feathering hides the seams.

The end of the module plans tiles from memory: :func:`forward_bytes_per_pixel` measures the
peak tensor memory of a small probe forward, :func:`available_memory` reads what the device
has free and :func:`largest_fitting_tile` picks the tile.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from spandrel import SizeRequirements
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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


# ------------------------------------------------------------------------ memory planning

FALLBACK_MEMORY_BYTES = 4 * 2**30
"""Memory assumed available where it cannot be read (no /proc/meminfo)."""


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes available for new allocations on ``device`` and where the number comes from.

    CUDA: free device memory plus what PyTorch's allocator holds unused. CPU: ``MemAvailable``
    of ``/proc/meminfo`` (Linux), else :data:`FALLBACK_MEMORY_BYTES`.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, "free GPU memory"
    available = host_memory_available()
    if available is None:
        return FALLBACK_MEMORY_BYTES, "fixed budget (available memory unknown)"
    return available, "MemAvailable"


def host_memory_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes from ``meminfo``, None if it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakTensorMemory(TorchDispatchMode):
    """Records the peak of the bytes held by tensor storages created while active.

    Every operator output's storage is counted once from its creation until it is freed, so
    ``peak`` is the largest amount of tensor memory an operation sequence held at once (work
    buffers that operators allocate internally, e.g. by cuDNN or FFT plans, are not seen).
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._live:
                    self._live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def forward_bytes_per_pixel(model_fn: ModelFn, x: torch.Tensor) -> float:
    """Peak tensor memory of ``model_fn(x)`` divided by the input's pixel count.

    Fixed costs are counted as if they grew with the image, so multiplying by a larger
    image's pixel count overestimates rather than underestimates (for models whose memory
    grows linearly with the pixel count: convolutions, windowed attention, FFT mixers).
    """
    with PeakTensorMemory() as tracker:
        model_fn(x)
    return tracker.peak / (x.shape[-2] * x.shape[-1])


def largest_fitting_tile(
    bytes_per_pixel: float,
    budget: float,
    height: int,
    width: int,
    *,
    overlap: int,
    size_requirements: SizeRequirements | None = None,
    step: int = 16,
    minimum: int = 64,
) -> int | None:
    """Tile side for an ``height × width`` image whose forward needs ``bytes_per_pixel``
    per input pixel, within ``budget`` bytes: 0 if the whole image fits, else the largest
    multiple of ``step`` (at least ``minimum`` and larger than ``3·overlap``) whose padded
    window fits, None if none does."""
    padded = pad_size(height, width, size_requirements)
    if bytes_per_pixel * padded[0] * padded[1] <= budget:
        return 0
    side = int(math.sqrt(budget / bytes_per_pixel)) // step * step
    while side >= max(minimum, 3 * overlap + 1):
        t = effective_tile(side, size_requirements)
        if bytes_per_pixel * t * t <= budget:
            return side
        side -= step
    return None


def pad_size(
    height: int, width: int, size_requirements: SizeRequirements | None
) -> tuple[int, int]:
    """(height, width) after padding to ``size_requirements``."""
    if size_requirements is None:
        return height, width
    pad_w, pad_h = size_requirements.get_padding(width, height)
    return height + pad_h, width + pad_w
