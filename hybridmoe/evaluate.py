"""Evaluate a super-resolution model on the standard benchmarks (PSNR / SSIM on Y).

Usage::

    hybridmoe evaluate MODEL [--data DIR] [--sets Set5 Set14 B100 Urban100]
        [--device auto|cpu|cuda] [--dtype fp32|fp16|bf16] [--tile N] [--json OUT.json [--overwrite]]
        [--limit N]
    hybridmoe evaluate --bicubic-only --scale 4 [--sets ...]
    hybridmoe evaluate --degraded DIR MODEL [--sets ...] [...]

MODEL is any checkpoint spandrel can load (HybridMoE included) or the name of a shipped model
(``2x_HybridMoE_S``; ``hybridmoe models`` lists them). For every HR image of every set
the protocol of the super-resolution literature is followed: mod-crop the HR image to a multiple
of the scale, make the LR image with MATLAB-compatible bicubic downscaling, super-resolve it,
round to 8 bits, and measure PSNR and SSIM on the BT.601 Y channel with ``scale`` border pixels
cropped (see ``srmetrics``). A "bicubic" row (MATLAB bicubic upscaling of the LR image) is
reported beside the model as a baseline.

Data layout: ``<data>/<Set>/HR/*.png`` (or ``<data>/benchmark/<Set>/HR/*.png``; the suffix in
any case, other files there are left out with a warning naming them); ``<data>`` is
``--data DIR``, by default ``$HYBRIDMOE_DATA`` when set, else ``./datasets``. The benchmark sets
are not shipped with the package. Only the HR images are needed: the LR images are made from
them. Where a set has its canonical LR files (``<Set>/LR_bicubic/X<s>/<name>x<s>.png``), the
generated LR images are checked against them bit for bit (a file that differs stops the run:
remove or replace it, or the whole ``LR_bicubic`` folder; the LR images are still made from HR).
Every HR image is checked before the model runs (from its header): one too small to be scored
is refused, named (mod-cropped to the scale, less ``scale`` border pixels on each side, it must
hold the 11x11 SSIM window: at least 16 px a side at x2, 18 at x3, 20 at x4).
``--tile N`` runs the model on LR tiles of N pixels (at least 16, the context run around each
tile); ``--tile 0`` (as without ``--tile``) on the whole image.

``--degraded DIR`` evaluates the model instead on the fixed-seed degraded sets that
``hybridmoe make-degraded`` wrote under DIR (``DIR/<Set>/{HR,LQ}``, every set there by default);
the model's scale must be the sets' (``scale`` in their manifests). Sets of scale 1 (preset
``restore``) take a restoration model: each LQ image is restored and scored against its HR image
(PSNR and SSIM on Y, no border cropped: the output has the input's size and the degradations
reach the image edges); the degraded input itself is scored as the baseline ("input" row). Sets
of a scale s > 1 (preset ``realworld4``: second-order "real-world" degradations, LQ images s
times smaller) are scored as super-resolution is above, with the LQ image in place of the
bicubic LR image: PSNR and SSIM on Y with s border pixels cropped, and MATLAB bicubic upscaling
of the LQ image as the baseline ("bicubic" row).

Greyscale images (Set14's ``bridge``) given to a 3-channel model are replicated to RGB, and the
RGB output is turned back to grey with BT.601 luma weights, so that its Y is exactly the Y of the
RGB output. Its Y is therefore 16 + 219·g/255 of its grey value g, and Y is not rounded to 8
bits before PSNR/SSIM: scripts that score a one-channel image on its raw grey values and round Y
give other numbers for ``bridge`` (for every method alike), so Set14 means here differ from such
published tables while comparisons within one convention are unaffected. A 1-channel model
processes each colour channel separately. Images of any bit
depth and Pillow mode are read at their own white level and rounded to 8 bits (16-bit PNGs
included; see :func:`read_image`); images with transparent pixels are refused.

``--lpips FILE`` adds LPIPS (v0.1, AlexNet; lower is better) to every row: the ``lpips`` package's
metric with the backbone of ``FILE`` (``lpips_alex.safetensors`` of ``hybridmoe
perceptual-weights``), on the RGB images with the same border cropped (greyscale images
replicated to three channels).

A model output holding NaN or Inf stops the run with an error naming the image and dtype (exit
status 2). ``--json`` is checked before the run (it must not be the model file, nor an existing
file unless ``--overwrite``) and written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from hybridmoe import imageio, metrics
from hybridmoe.checkpoint import CheckpointError, load_checkpoint
from hybridmoe.cliargs import add_device_argument, parse_number
from hybridmoe.models import enable_noise, resolve_model
from hybridmoe.provenance import record_header

DEFAULT_SETS = ("Set5", "Set14", "B100", "Urban100")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TILE_CONTEXT = 16  # LR pixels of context added around each tile, cropped from its output
MIN_TILE = TILE_CONTEXT
"""The smallest tile (``--tile``; 0: the whole image): as wide as the context around it (a
smaller one spends most of each forward on context, a 1-pixel tile one per LR pixel)."""
TILE_RULE = (
    f"0 (the whole image) or at least {MIN_TILE} (each tile runs with {TILE_CONTEXT} pixels of "
    "context on each side)"
)
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # BT.601, = (65.481, 128.553, 24.966) / 219


class EvaluationError(Exception):
    """A user-facing problem (missing file, unusable model, bad data); the message says why."""


Perceptual = Callable[[np.ndarray, np.ndarray, int], float]
"""A perceptual distance of two uint8 images with a border cropped: ``(sr, hr, border)``."""


def lpips_scorer(weights: Path, device: str = "cpu") -> Perceptual:
    """LPIPS-Alex (:func:`hybridmoe.perceptual.lpips_metric`) of two uint8 images (HxW or
    HxWx3), ``border`` pixels cropped, greyscale replicated to RGB; float32."""
    from hybridmoe.perceptual import PerceptualWeightsError, lpips_metric

    if not Path(weights).is_file():
        raise EvaluationError(
            f"--lpips: no such file {weights}; write it with hybridmoe perceptual-weights "
            "--out DIR and pass DIR/lpips_alex.safetensors"
        )
    try:
        metric = lpips_metric(Path(weights), "alex").to(device)
    except PerceptualWeightsError as exc:  # its messages name the file
        raise EvaluationError(f"--lpips: {exc}") from exc

    def to_tensor(img: np.ndarray, border: int) -> torch.Tensor:
        if border:
            img = img[border:-border, border:-border]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        return t.to(device=device, dtype=torch.float32) / 255

    def score(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
        with torch.no_grad():
            return float(metric(to_tensor(sr, border), to_tensor(hr, border), normalize=True))

    return score


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
DATA_ENV = "HYBRIDMOE_DATA"
"""Environment variable naming the default ``--data`` folder."""
DEFAULT_DATA = Path("datasets")
"""The default ``--data`` folder when :data:`DATA_ENV` is not set (relative: the current
directory's ``datasets``)."""
DATA_HELP = (
    f"folder holding the benchmark sets as <Set>/HR/*.png or benchmark/<Set>/HR/*.png "
    f"(default: ${DATA_ENV}, else ./{DEFAULT_DATA}; the sets are not shipped)"
)


DATA_EPILOG = (
    f"The benchmark sets (Set5, Set14, B100, Urban100) are not shipped: put their HR images in "
    f"DIR/<Set>/HR/*.png (or DIR/benchmark/<Set>/HR/*.png) and pass --data DIR or set "
    f"{DATA_ENV}=DIR; --sets picks the sets to use."
)


def default_data_dir() -> Path:
    """The default ``--data`` folder: ``$HYBRIDMOE_DATA`` when set, else ``./datasets``."""
    env = os.environ.get(DATA_ENV, "")
    return Path(env) if env else DEFAULT_DATA


def _set_candidates(data_dir: Path, name: str) -> list[Path]:
    return [data_dir / "benchmark" / name, data_dir / name]


def hr_images(set_dir: Path) -> tuple[list[Path], list[Path]]:
    """The HR images of a set, ``set_dir/HR/*.png`` (the suffix in any case), and the other
    files there (hidden ones aside), each sorted by name; both empty without ``HR/``."""
    hr = set_dir / "HR"
    images: list[Path] = []
    others: list[Path] = []
    for path in imageio.visible_files(hr) if hr.is_dir() else []:
        (images if path.suffix.lower() == ".png" else others).append(path)
    return images, others


def _has_hr_images(set_dir: Path) -> bool:
    return bool(hr_images(set_dir)[0])


def set_hr_paths(set_dir: Path, limit: int | None = None) -> list[Path]:
    """The first ``limit`` HR images of a set (:func:`hr_images`); the files of its ``HR``
    folder that are left out (not PNG) are named in a warning on stderr."""
    images, others = hr_images(set_dir)
    if others:
        note = imageio.left_out_note(others, set_dir / "HR", "PNG")
        print(f"warning: {set_dir / 'HR'}: {note}", file=sys.stderr)
    return images[:limit]


def available_sets(data_dir: Path) -> list[str]:
    """Names of the sets under ``data_dir`` (``<data>/benchmark/<Set>`` or ``<data>/<Set>``
    holding ``HR/*.png``), sorted; empty when ``data_dir`` is not a folder."""
    found: set[str] = set()
    for parent in (data_dir / "benchmark", data_dir):
        if parent.is_dir():
            found.update(d.name for d in parent.iterdir() if _has_hr_images(d))
    return sorted(found)


def find_set(data_dir: Path, name: str) -> Path:
    """The folder of set ``name`` (holding ``HR/``) under ``data_dir``.

    Looks for ``<data>/benchmark/<name>/HR`` then ``<data>/<name>/HR``.
    """
    return find_sets(data_dir, [name])[name]


def find_sets(data_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    """The folders of the sets ``names`` under ``data_dir`` (as :func:`find_set`). Raises
    :class:`EvaluationError` naming every missing set, the folders looked in, the sets that are
    there and how to point at the benchmark sets."""
    found: dict[str, Path] = {}
    missing = []
    for name in names:
        cand = next((c for c in _set_candidates(data_dir, name) if _has_hr_images(c)), None)
        if cand is None:
            missing.append(name)
        else:
            found[name] = cand
    if missing:
        raise EvaluationError(_missing_sets_message(data_dir, missing))
    return found


def _missing_sets_message(data_dir: Path, missing: Sequence[str]) -> str:
    quoted = ", ".join(repr(n) for n in missing)
    head = f"set {quoted} not found" if len(missing) == 1 else f"sets {quoted} not found"
    have = available_sets(data_dir)
    if not data_dir.is_dir():
        where = f"there is no folder {data_dir}"
    else:
        name = missing[0] if len(missing) == 1 else "<Set>"
        looked = " or ".join(str(c / "HR") for c in _set_candidates(data_dir, name))
        there = f"sets there: {', '.join(have)}" if have else "no set there"
        where = f"no PNG images in {looked} ({there})"
    return (
        f"{head}: {where}. The benchmark sets ({', '.join(DEFAULT_SETS)}) are not shipped with "
        f"hybridmoe: pass the folder holding them as <Set>/HR/*.png with --data DIR (default: "
        f"${DATA_ENV}, else ./{DEFAULT_DATA}), or choose the sets you have with --sets "
        + (" ".join(have) if have else "NAME ...")
    )


GREY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "F"})
"""Pillow modes read as one greyscale channel (palette images are read as colour)."""
COLOUR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
"""Pillow modes read as RGB (converted by Pillow: palette looked up, CMYK/YCbCr/LAB/HSV)."""
UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def read_image(path: Path, *, allow_transparency: bool = False) -> np.ndarray:
    """An image file as uint8 ``(H, W)`` (greyscale) or ``(H, W, 3)`` (colour, RGB).

    Every Pillow mode is read at its own white level and rounded to 8 bits (the evaluation
    protocol works on 8-bit images): 8-bit modes as stored; 16-bit PNGs (grey, grey+alpha,
    RGB, RGBA) and the 16-bit greyscale modes ``I;16*`` as ``round(v · 255 / 65535)``; ``1`` as
    0/255; ``F`` (32-bit float) must hold values in [0, 1]; palette (``P``, ``PA``) images are
    looked up and read as RGB; ``CMYK``, ``YCbCr``, ``LAB`` and ``HSV`` are converted to RGB by
    Pillow. ``I`` (32-bit integer) images have no defined white level and are refused.

    Alpha (an alpha channel, a palette or colour-key transparency): a fully opaque alpha is
    dropped; an image with transparent pixels is refused, since scores of pixels whose colour
    is hidden mean nothing, unless ``allow_transparency`` (then the colour is used as stored
    and alpha ignored).

    Animated images (animated WebP, APNG) are refused (:func:`hybridmoe.imageio.check_still`;
    a JPEG MPO is read as its first frame, the photo).

    Raises :class:`EvaluationError` naming the file for unreadable or unsupported images.
    """
    with _reading(path):
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            imageio.check_still(im)
            im.load()
            imageio.scale_grey_png_key(im, data)
            colour, alpha, white = _decode(im, data)
    if alpha is not None and not allow_transparency:
        transparent = int(np.count_nonzero(alpha < white))
        if transparent:
            raise EvaluationError(
                f"image {path} has {transparent} transparent pixel(s); scores are only defined "
                f"for opaque images. Flatten it onto a background (or remove the alpha channel) "
                f"first"
            )
    if colour.dtype == np.uint8:
        return colour
    return metrics.to_uint8(colour.astype(np.float64) * (255.0 / white))


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Raise the errors of reading image ``path`` as :class:`EvaluationError` naming it."""
    try:
        yield
    except (EvaluationError, imageio.ImageReadError) as e:
        raise EvaluationError(f"cannot read image {path}: {e}") from None
    except Image.UnidentifiedImageError:
        raise EvaluationError(
            f"cannot read image {path}: not an image file Pillow can read"
        ) from None
    except (OSError, ValueError, SyntaxError, zlib.error, Image.DecompressionBombError) as e:
        raise EvaluationError(f"cannot read image {path}: {e}") from e


def min_hr_side(scale: int, border: int) -> int:
    """The shortest HR side that can be scored at ``scale`` with ``border`` pixels cropped on
    each side: mod-cropped to a multiple of ``scale``, less the border, it must hold the SSIM
    window (:data:`hybridmoe.metrics.SSIM_WINDOW`)."""
    return -(-(metrics.SSIM_WINDOW + 2 * border) // scale) * scale


def check_hr_sizes(paths: Iterable[Path], scale: int, border: int) -> None:
    """Refuse, before any work, an HR image too small to be scored (:func:`min_hr_side`) or
    animated, from its header (Pillow gives the size without decoding the pixels); raises
    :class:`EvaluationError` naming the file, its size, the minimum and the fix."""
    need = min_hr_side(scale, border)
    for path in paths:
        with _reading(path), Image.open(path) as im:
            imageio.check_still(im)
            width, height = im.size
        if min(width, height) < need:
            window = metrics.SSIM_WINDOW
            steps = [f"mod-cropped to a multiple of {scale}"] if scale > 1 else []
            steps += [f"less {border} px on each side"] if border else []
            raise EvaluationError(
                f"HR image {path} ({width}x{height}) is too small to score at x{scale}: both "
                f"sides must be at least {need} px ({', '.join([*steps, 'it'])} must hold the "
                f"{window}x{window} SSIM window). Remove it from the set or use a larger image"
            )


def _decode(im: Image.Image, data: bytes) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Pixels of an opened image: colour ``(H, W)`` or ``(H, W, 3)``, alpha ``(H, W)`` or
    None, and the white level of both (255, 65535 or 1.0)."""
    if im.format == "PNG" and imageio.is_png16(data):
        arr = imageio.decode_png(data)  # Pillow narrows 16-bit colour PNGs to 8 bits
        colour, alpha = (arr[..., :-1], arr[..., -1]) if arr.shape[2] in (2, 4) else (arr, None)
        key = im.info.get("transparency")
        if alpha is None and key is not None:  # tRNS colour key
            hidden = (colour == np.atleast_1d(np.asarray(key, dtype=np.uint16))).all(axis=-1)
            alpha = np.where(hidden, 0, 65535).astype(np.uint16)
        return (colour[..., 0] if colour.shape[2] == 1 else colour), alpha, 65535.0
    mode = im.mode
    if mode in UINT16_MODES:
        return np.asarray(im).astype(np.uint16), None, 65535.0
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min(initial=0.0) < 0.0 or arr.max(initial=0.0) > 1.0:
            raise EvaluationError(
                "32-bit float pixels (mode F) must be finite and within [0, 1]; found values "
                f"in [{np.nanmin(arr):g}, {np.nanmax(arr):g}]. Save the image with 8 or 16 bits"
            )
        return arr, None, 1.0
    if mode == "I":
        raise EvaluationError(
            "32-bit integer pixels (mode I) have no defined white level; save the image as an "
            "8- or 16-bit PNG"
        )
    if mode not in GREY_MODES and mode not in COLOUR_MODES:
        raise EvaluationError(
            f"unsupported pixel format (Pillow mode {mode}); save the image as an 8- or 16-bit "
            f"greyscale or RGB(A) PNG"
        )
    grey = mode in GREY_MODES
    if im.has_transparency_data:
        arr = np.asarray(im.convert("LA" if grey else "RGBA"), dtype=np.uint8)
        colour, alpha = arr[..., :-1], arr[..., -1]
        return (colour[..., 0] if grey else colour), alpha, 255.0
    return np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8), None, 255.0


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic downscaling: mod-cropped uint8 HR ``(s·h, s·w[, C])`` → ``(h, w[, C])``."""
    return metrics.imresize_matlab_uint8(hr, 1.0 / scale)


def check_shipped_lr(set_dir: Path, hr_path: Path, scale: int, lr: np.ndarray) -> None:
    """Compare a generated LR image with the set's canonical LR file, where one exists.

    The LR images are always made from the HR images; the canonical files only check them, and
    without them (no ``LR_bicubic`` folder) nothing is checked. A greyscale image and its copy
    in three equal RGB channels are the same image (as ``make-pairs --check-against`` reads
    them)."""
    shipped = set_dir / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
    if shipped.is_file() and not np.array_equal(_as_rgb(read_image(shipped)), _as_rgb(lr)):
        raise EvaluationError(
            f"generated LR image differs from the canonical {shipped}: that file is not the "
            f"MATLAB-bicubic x{scale} downscale of {hr_path}. The LR images are made from HR and "
            f"the LR_bicubic files only check them: remove or replace that file (or the whole "
            f"{shipped.parent.parent} folder), or restore {hr_path.name} if the HR image is what "
            f"changed"
        )


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """A uint8 ``(H, W)`` greyscale image as ``(H, W, 3)``; a colour image as it is."""
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def load_descriptor(
    path: Path,
    device: str,
    dtype: str,
    *,
    restoration: bool = False,
    degraded_scale: int | None = None,
) -> Any:
    """Load an SR checkpoint as a spandrel ``ImageModelDescriptor`` on ``device`` / ``dtype``.

    Any checkpoint spandrel supports loads, HybridMoE included (through the project loader).
    Super-resolution evaluation needs scale >= 2; degraded sets of scale ``degraded_scale``
    need a model of that scale (``restoration=True`` is ``degraded_scale=1``).
    """
    import spandrel

    if restoration:
        if degraded_scale not in (None, 1):
            raise ValueError(f"restoration=True means degraded_scale=1, got {degraded_scale}")
        degraded_scale = 1

    try:
        path = resolve_model(path)
    except CheckpointError as exc:
        raise EvaluationError(str(exc)) from None
    if not path.is_file():
        raise EvaluationError(f"model file not found: {path}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError("--device cuda requested but CUDA is not available")
    try:
        descriptor = load_checkpoint(path, device)
    except (spandrel.UnsupportedModelError, ValueError, RuntimeError, OSError) as exc:
        msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        raise EvaluationError(f"cannot load the model: {msg}") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise EvaluationError(
            f"{path} is not an image-to-image model ({type(descriptor).__name__})"
        )
    if degraded_scale is not None and descriptor.scale != degraded_scale:
        raise EvaluationError(_scale_mismatch(path, descriptor.scale, degraded_scale))
    if degraded_scale is None and descriptor.scale == 1:
        raise EvaluationError(
            f"{path} is a scale-1 ({descriptor.purpose}) model. This evaluation measures "
            "super-resolution of bicubic-downscaled images and needs a model with scale >= 2; "
            "running a scale-1 model on undegraded HR images measures nothing. Evaluate a "
            "restoration model on degraded sets (hybridmoe make-degraded) with --degraded DIR."
        )
    try:
        descriptor.to(device, DTYPES[dtype])
    except spandrel.UnsupportedDtypeError as exc:
        raise EvaluationError(f"{path}: {exc}; use --dtype fp32") from exc
    descriptor.eval()
    return descriptor


def _scale_mismatch(path: Path, model_scale: int, set_scale: int) -> str:
    """Why a x``model_scale`` model cannot be scored on degraded sets of ``set_scale``, and
    what to do instead."""
    from hybridmoe.degrade import PRESETS

    task = "x1 restoration" if set_scale == 1 else f"x{set_scale} super-resolution"
    fixes = [f"evaluate a x{set_scale} model on them"]
    presets = [name for name, cfg in sorted(PRESETS.items()) if cfg.scale == model_scale]
    if presets:
        fixes.append(
            f"make x{model_scale} sets for this model with hybridmoe make-degraded --preset "
            + " or --preset ".join(presets)
        )
    if model_scale > 1:
        fixes.append("evaluate bicubic super-resolution without --degraded")
    return (
        f"{path} is a x{model_scale} model, but the degraded sets (--degraded) are x{set_scale} "
        f"(scale {set_scale} in their manifests): they measure {task} and need a "
        f"scale-{set_scale} model. Fix: {'; or '.join(fixes)}"
    )


def model_info(descriptor: Any, path: Path, device: str, dtype: str) -> dict[str, Any]:
    """Architecture name/id, scale, channels and parameter count of a loaded descriptor."""
    return {
        "path": str(path),
        "arch": descriptor.architecture.name,
        "arch_id": str(descriptor.architecture.id),
        "scale": descriptor.scale,
        "params": sum(p.numel() for p in descriptor.model.parameters()),
        "input_channels": descriptor.input_channels,
        "output_channels": descriptor.output_channels,
        "device": device,
        "dtype": dtype,
    }


def _tile_problem(tile: int) -> str | None:
    """What is wrong with ``tile`` (:data:`TILE_RULE`), None if nothing."""
    return f"must be {TILE_RULE}, got {tile}" if tile != 0 and tile < MIN_TILE else None


def tile_side(text: str) -> int:
    """argparse type of ``--tile``: :data:`TILE_RULE`."""
    tile = parse_number(int, text, TILE_RULE)
    if problem := _tile_problem(tile):
        raise argparse.ArgumentTypeError(problem)
    return tile


def _tile_or_whole(tile: int | None) -> int | None:
    """``tile`` checked (:data:`TILE_RULE`), None for the whole image (None or 0)."""
    if tile is not None and (problem := _tile_problem(tile)):
        raise EvaluationError(f"tile {problem}")
    return tile or None  # 0: the whole image, as upscale's --tile 0


def forward(descriptor: Any, x: torch.Tensor, tile: int | None) -> torch.Tensor:
    """Run the model on ``x`` ``(1, C, h, w)`` in [0, 1] → ``(1, C_out, s·h, s·w)`` in [0, 1].

    With ``tile`` (``None`` or 0: the whole image at once), the image is processed in
    ``tile × tile`` LR tiles, each padded with ``TILE_CONTEXT`` pixels of surrounding image that
    are cropped from its output.
    """
    _, _, h, w = x.shape
    if not tile or (h <= tile and w <= tile):
        return descriptor(x)
    s, m = descriptor.scale, TILE_CONTEXT
    out = x.new_zeros((1, descriptor.output_channels, h * s, w * s))
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - m, 0), max(x0 - m, 0)
            patch = descriptor(x[..., py0 : min(y1 + m, h), px0 : min(x1 + m, w)])
            oy, ox = (y0 - py0) * s, (x0 - px0) * s
            out[..., y0 * s : y1 * s, x0 * s : x1 * s] = patch[
                ..., oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s
            ]
    return out


class NonFiniteOutputError(EvaluationError):
    """The model produced NaN or Inf values."""


def super_resolve(
    descriptor: Any, lr: np.ndarray, tile: int | None, name: str = "the image"
) -> np.ndarray:
    """Upscale a uint8 LR image ``(h, w[, C])`` → uint8 ``(s·h, s·w[, C])`` with the model.

    Greyscale input to a 3-channel model is replicated to RGB and the output reduced to grey by
    BT.601 luma; a 1-channel model is applied to each channel separately. NaN or Inf in the
    model output raise :class:`NonFiniteOutputError` naming ``name`` (they have no score).
    """
    img = lr[:, :, None] if lr.ndim == 2 else lr
    channels, in_ch = img.shape[2], descriptor.input_channels
    if in_ch == channels:
        groups = [img]
    elif in_ch == 3 and channels == 1:
        groups = [np.repeat(img, 3, axis=2)]
    elif in_ch == 1:
        groups = [img[:, :, c : c + 1] for c in range(channels)]
    else:
        raise EvaluationError(f"cannot feed a {channels}-channel image to a {in_ch}-channel model")
    outs = []
    with torch.inference_mode():
        for g in groups:
            x = torch.from_numpy(np.ascontiguousarray(g.transpose(2, 0, 1))).float() / 255.0
            x = x[None].to(descriptor.device, descriptor.dtype)
            y = forward(descriptor, x, tile)[0].float().cpu()
            _check_finite(y, descriptor, name)
            y = y.numpy()
            outs.append(y.transpose(1, 2, 0).astype(np.float64))
    out = np.concatenate(outs, axis=2)
    if channels == 1 and out.shape[2] == 3:
        out = out @ LUMA_WEIGHTS[:, None]
    elif out.shape[2] != channels:
        raise EvaluationError(f"model returned {out.shape[2]} channels for {channels}")
    out = metrics.to_uint8(out * 255.0)
    return out[:, :, 0] if lr.ndim == 2 else out


def _check_finite(y: torch.Tensor, descriptor: Any, name: str) -> None:
    """Raise :class:`NonFiniteOutputError` if the model output ``y`` holds NaN or Inf."""
    bad = int((~torch.isfinite(y)).sum())
    if bad:
        dtype = str(descriptor.dtype).removeprefix("torch.")
        raise NonFiniteOutputError(
            f"the model output for {name} has {bad} NaN/Inf value(s) of {y.numel()} "
            f"({dtype} on {descriptor.device}); no score can be computed. The weights may hold "
            f"NaN/Inf values, or the model overflows in {dtype} (try --dtype fp32)"
        )


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def score_pair(
    sr: np.ndarray,
    hr: np.ndarray,
    scale: int,
    perceptual: Perceptual | None = None,
    *,
    name: str = "the image",
) -> dict[str, float]:
    """PSNR (dB) and SSIM on Y, border ``scale``, of uint8 ``sr`` against ``hr`` (same shape),
    and ``"lpips"`` with a ``perceptual`` scorer. An image the metrics cannot score (too small:
    :func:`check_hr_sizes` refuses those before any work) is an :class:`EvaluationError`
    naming ``name``."""
    try:
        row = {
            "psnr": metrics.calculate_psnr(sr, hr, scale),
            "ssim": metrics.calculate_ssim(sr, hr, scale),
        }
    except ValueError as e:
        raise EvaluationError(f"cannot score {name}: {e}") from e
    if perceptual is not None:
        row["lpips"] = perceptual(sr, hr, scale)
    return row


def _mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average of per-image score dicts (``psnr``, ``ssim``, and ``lpips`` where scored)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def score_sr(
    lr: np.ndarray,
    hr: np.ndarray,
    scale: int,
    descriptor: Any | None,
    *,
    tile: int | None = None,
    name: str = "the image",
    perceptual: Perceptual | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of super-resolving the uint8 ``lr`` to ``hr`` (``scale`` times its size), border
    ``scale``: ``{"bicubic": ..., "model": ...}`` (MATLAB bicubic upscaling, and the model
    unless ``descriptor`` is None)."""
    bicubic = metrics.imresize_matlab_uint8(lr, scale)
    row = {"bicubic": score_pair(bicubic, hr, scale, perceptual, name=name)}
    if descriptor is not None:
        sr = super_resolve(descriptor, lr, tile, name=name)
        row["model"] = score_pair(sr, hr, scale, perceptual, name=name)
    return row


def evaluate_set(
    set_dir: Path,
    scale: int,
    descriptor: Any | None,
    tile: int | None = None,
    limit: int | None = None,
    *,
    perceptual: Perceptual | None = None,
    noise_seed: int | None = None,
) -> dict[str, Any]:
    """Bicubic (and model, unless ``descriptor`` is None) scores on one set; ``noise_seed``:
    torch's generator is seeded with it first (a model with its noise switched on).

    Returns ``{"images": n, "bicubic": {"psnr", "ssim"}, "model": {...}, "per_image":
    {name: {"bicubic": {...}, "model": {...}}}}`` (``model`` keys only with a descriptor).
    """
    paths = hr_images(set_dir)[0][:limit]
    _seed_noise(noise_seed)
    per_image: dict[str, dict[str, dict[str, float]]] = {}
    for path in tqdm(paths, desc=f"{set_dir.name} x{scale}", unit="img", file=sys.stderr):
        hr = metrics.mod_crop(read_image(path), scale)
        lr = make_lr(hr, scale)
        check_shipped_lr(set_dir, path, scale, lr)
        name = f"{set_dir.name}/{path.name}"
        per_image[path.stem] = score_sr(
            lr, hr, scale, descriptor, tile=tile, name=name, perceptual=perceptual
        )
    result: dict[str, Any] = {"images": len(paths)}
    for method in ("bicubic", "model") if descriptor is not None else ("bicubic",):
        result[method] = _mean_scores([r[method] for r in per_image.values()])
    result["per_image"] = per_image
    return result


def evaluate(
    model: Path | None,
    data_dir: Path,
    sets: Sequence[str] = DEFAULT_SETS,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    tile: int | None = None,
    limit: int | None = None,
    bicubic_only: bool = False,
    scale: int | None = None,
    lpips: Path | None = None,
    noise_seed: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and the bicubic baseline) on ``sets`` under ``data_dir``.

    ``scale`` is taken from the model; it is needed (and only allowed) for a bicubic-only run
    without a model. All sets are located before any work starts. ``noise_seed``: the model's
    learned noise injection on (:func:`hybridmoe.models.enable_noise`), drawn from this seed
    at the start of every set.

    Returns ``{"model": info or None, "scale": s, "data": str, "sets": {name: evaluate_set(...)}}``.
    """
    if model is None and not bicubic_only:
        raise EvaluationError("a model is required unless bicubic_only is set")
    if model is not None and scale is not None:
        raise EvaluationError("the scale comes from the model; do not pass a scale with a model")
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be >= 1, got {limit}")
    if noise_seed is not None and bicubic_only:  # no model runs, with or without MODEL
        raise EvaluationError("a noise seed needs a model (drop --noise with --bicubic-only)")
    tile = _tile_or_whole(tile)
    set_dirs = find_sets(data_dir, sets)
    hr_paths = [p for d in set_dirs.values() for p in set_hr_paths(d, limit)]
    descriptor, info = None, None
    if model is not None:
        descriptor = load_descriptor(model, device, dtype)
        _with_noise(descriptor, noise_seed)
        info = model_info(descriptor, model, device, dtype)
        scale = descriptor.scale
    if scale is None or scale < 2:
        raise EvaluationError(f"a bicubic-only run needs a scale >= 2, got {scale}")
    check_hr_sizes(hr_paths, scale, scale)  # before the model runs
    run_model = None if bicubic_only else descriptor
    perceptual = lpips_scorer(lpips, device) if lpips is not None else None
    return {
        "model": info,
        "scale": scale,
        "data": str(data_dir),
        **_lpips_info(lpips),
        **_noise_info(noise_seed),
        "sets": {
            name: evaluate_set(
                d,
                scale,
                run_model,
                tile=tile,
                limit=limit,
                perceptual=perceptual,
                noise_seed=noise_seed,
            )
            for name, d in set_dirs.items()
        },
    }


def _with_noise(descriptor: Any, noise_seed: int | None) -> None:
    """Switch ``descriptor``'s noise injection on when a seed is given."""
    if noise_seed is None:
        return
    try:
        enable_noise(descriptor.model)
    except ValueError as e:
        raise EvaluationError(str(e)) from None


def _seed_noise(noise_seed: int | None) -> None:
    if noise_seed is not None:
        torch.manual_seed(noise_seed)


def _noise_info(noise_seed: int | None) -> dict[str, Any]:
    return {} if noise_seed is None else {"noise_seed": noise_seed}


def _lpips_info(lpips: Path | None) -> dict[str, Any]:
    if lpips is None:
        return {}
    from hybridmoe.install import sha256_of

    return {
        "lpips": {
            "metric": "LPIPS v0.1, AlexNet",
            "weights": str(lpips),
            "sha256": sha256_of(lpips),
        }
    }


RESTORE_BORDER = 0
"""Border (pixels) cropped before scoring x1 restoration: none."""


def score_restored(
    out: np.ndarray,
    hr: np.ndarray,
    perceptual: Perceptual | None = None,
    *,
    name: str = "the image",
) -> dict[str, float]:
    """PSNR (dB) and SSIM on Y, border :data:`RESTORE_BORDER`, of uint8 ``out`` against ``hr``
    (:func:`score_pair`)."""
    return score_pair(out, hr, RESTORE_BORDER, perceptual, name=name)


def degraded_images(set_dir: Path, limit: int | None = None) -> Iterator[tuple[str, Any, Any]]:
    """``(name, hr, lq)`` uint8 images of a degraded set (:mod:`hybridmoe.degraded_sets`),
    checked: ``hr`` is the set's scale times ``lq``'s size (the same size for x1 sets)."""
    manifest = read_degraded_manifest(set_dir)
    s = degraded_scale(manifest)
    for stem in degraded_stems(manifest, limit):
        hr = read_image(set_dir / "HR" / f"{stem}.png")
        lq = read_image(set_dir / "LQ" / f"{stem}.png")
        if hr.shape != (lq.shape[0] * s, lq.shape[1] * s, *lq.shape[2:]):
            expected = "the same" if s == 1 else f"{s} times LQ's"
            raise EvaluationError(
                f"{set_dir.name}/{stem}: LQ {lq.shape} and HR {hr.shape} do not fit a x{s} "
                f"set (HR size must be {expected}); remake the set"
            )
        yield stem, hr, lq


def degraded_stems(manifest: dict[str, Any], limit: int | None = None) -> list[str]:
    """The names of the first ``limit`` images of a degraded set, sorted."""
    return sorted(manifest["images"])[:limit]


def degraded_scale(manifest: dict[str, Any]) -> int:
    """The scale of a degraded set from its manifest (1 for sets made before x4 presets)."""
    from hybridmoe.degraded_sets import DegradedSetError, manifest_scale

    try:
        return manifest_scale(manifest)
    except DegradedSetError as exc:
        raise EvaluationError(str(exc)) from None


def degraded_border(scale: int) -> int:
    """Border cropped before scoring degraded sets of ``scale``: :data:`RESTORE_BORDER` for x1
    restoration, ``scale`` for super-resolution (as :func:`evaluate_set`)."""
    return RESTORE_BORDER if scale == 1 else scale


def degraded_baseline(scale: int) -> str:
    """The baseline row of degraded sets: the degraded ``"input"`` (x1) or ``"bicubic"``."""
    return "input" if scale == 1 else "bicubic"


def read_degraded_manifest(set_dir: Path) -> dict[str, Any]:
    from hybridmoe.degraded_sets import DegradedSetError, read_manifest

    try:
        return read_manifest(set_dir)
    except DegradedSetError as exc:
        raise EvaluationError(str(exc)) from None


def degraded_set_names(root: Path, sets: Sequence[str] | None) -> list[str]:
    """``sets`` (each must be a complete degraded set under ``root``), or every set there."""
    from hybridmoe.degraded_sets import DegradedSetError, find_degraded_sets

    try:
        found = find_degraded_sets(root)
    except DegradedSetError as exc:
        raise EvaluationError(str(exc)) from None
    if not found:
        raise EvaluationError(
            f"no degraded sets (<Set>/manifest.json) in {root}; make them with "
            f"hybridmoe make-degraded --out {root}"
        )
    names = (
        list(sets)
        if sets
        else [n for n in DEFAULT_SETS if n in found] + [n for n in found if n not in DEFAULT_SETS]
    )
    missing = [n for n in names if n not in found]
    if missing:
        raise EvaluationError(
            f"degraded set(s) {', '.join(missing)} not in {root} (found: {', '.join(found)})"
        )
    return names


def evaluate_degraded_set(
    set_dir: Path,
    descriptor: Any,
    tile: int | None = None,
    limit: int | None = None,
    *,
    perceptual: Perceptual | None = None,
    noise_seed: int | None = None,
) -> dict[str, Any]:
    """Baseline and model scores on one degraded set (``noise_seed`` as in
    :func:`evaluate_set`). x1 sets: as :func:`evaluate_set` with an
    ``"input"`` baseline (the degraded image itself) instead of ``"bicubic"``, border 0; sets of
    a scale s > 1: :func:`score_sr` of the LQ image (``"bicubic"`` baseline, border s)."""
    manifest = read_degraded_manifest(set_dir)
    scale = degraded_scale(manifest)
    per_image: dict[str, dict[str, dict[str, float]]] = {}
    rows = list(degraded_images(set_dir, limit))
    _seed_noise(noise_seed)
    desc = f"{set_dir.name} x{scale}"
    for stem, hr, lq in tqdm(rows, desc=desc, unit="img", file=sys.stderr):
        name = f"{set_dir.name}/{stem}"
        if scale > 1:
            per_image[stem] = score_sr(
                lq, hr, scale, descriptor, tile=tile, name=name, perceptual=perceptual
            )
            continue
        out = super_resolve(descriptor, lq, tile, name=name)
        per_image[stem] = {
            "input": score_restored(lq, hr, perceptual, name=name),
            "model": score_restored(out, hr, perceptual, name=name),
        }
    result: dict[str, Any] = {"images": len(per_image)}
    for method in (degraded_baseline(scale), "model"):
        result[method] = _mean_scores([r[method] for r in per_image.values()])
    result.update(
        preset=manifest["preset"], degradation=manifest["degradation"], seed=manifest["seed"]
    )
    result["per_image"] = per_image
    return result


def evaluate_degraded(
    model: Path,
    degraded_dir: Path,
    sets: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    tile: int | None = None,
    limit: int | None = None,
    lpips: Path | None = None,
    noise_seed: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the degraded sets under ``degraded_dir`` (all of one scale, the
    model's); ``noise_seed`` as in :func:`evaluate`.

    Returns ``{"model": info, "scale": s, "task": "restoration" (x1) or "degraded-sr",
    "border": 0 (x1) or s, "data": str, "sets": {name: evaluate_degraded_set(...)}}``.
    """
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be >= 1, got {limit}")
    tile = _tile_or_whole(tile)
    names = degraded_set_names(degraded_dir, sets)
    manifests = {name: read_degraded_manifest(degraded_dir / name) for name in names}
    scales = {name: degraded_scale(m) for name, m in manifests.items()}  # all, before any work
    if len(set(scales.values())) > 1:
        found = ", ".join(f"{name} x{s}" for name, s in scales.items())
        raise EvaluationError(
            f"the degraded sets under {degraded_dir} have different scales ({found}); a model "
            "has one scale: choose the sets of its scale with --sets"
        )
    scale = scales[names[0]]
    check_hr_sizes(
        [
            degraded_dir / name / "HR" / f"{stem}.png"
            for name, manifest in manifests.items()
            for stem in degraded_stems(manifest, limit)
        ],
        scale,
        degraded_border(scale),
    )
    descriptor = load_descriptor(model, device, dtype, degraded_scale=scale)
    _with_noise(descriptor, noise_seed)
    perceptual = lpips_scorer(lpips, device) if lpips is not None else None
    return {
        "model": model_info(descriptor, model, device, dtype),
        "scale": scale,
        "task": "restoration" if scale == 1 else "degraded-sr",
        "border": degraded_border(scale),
        "data": str(degraded_dir),
        **_lpips_info(lpips),
        **_noise_info(noise_seed),
        "sets": {
            name: evaluate_degraded_set(
                degraded_dir / name,
                descriptor,
                tile=tile,
                limit=limit,
                perceptual=perceptual,
                noise_seed=noise_seed,
            )
            for name in names
        },
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: one bicubic row and one model row per set."""
    info = results["model"]
    name = info["arch"] if info else "-"
    lines = []
    if info:
        lines.append(
            f"model: {info['path']} ({info['arch']}, x{info['scale']}, "
            f"{info['params']:,} params, {info['device']}/{info['dtype']})"
        )
    base = "input" if results.get("task") == "restoration" else "bicubic"
    border = results.get("border", results["scale"])
    task = {
        "restoration": "x1 restoration of degraded sets",
        "degraded-sr": f"scale x{results['scale']}, super-resolution of degraded sets",
    }.get(results.get("task", ""), f"scale x{results['scale']}")
    lp = "lpips" in results
    lines.append(f"{task}, PSNR/SSIM on Y, border {border}" + (", LPIPS-Alex on RGB" if lp else ""))
    head = f"{'set':<10} {'images':>6}  {'method':<24} {'PSNR':>8} {'SSIM':>7}"
    lines.append(head + (f" {'LPIPS':>7}" if lp else ""))
    for set_name, r in results["sets"].items():
        rows = [(base, r[base])] + ([(name, r["model"])] if "model" in r else [])
        for method, s in rows:
            lines.append(
                f"{set_name:<10} {r['images']:>6}  {method:<24} {s['psnr']:>8.3f} {s['ssim']:>7.4f}"
                + (f" {s['lpips']:>7.4f}" if lp else "")
            )
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (PSNR of identical images is inf) by None, recursively."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(results: dict[str, Any], path: Path, *, overwrite: bool = False) -> None:
    """Write ``results`` as JSON (non-finite numbers as null), atomically; an existing file is
    replaced only with ``overwrite``. Raises ``imageio.OutputError``."""
    text = json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n"
    imageio.write_text_atomic(path, text, overwrite=overwrite, what="JSON report")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(
        prog="hybridmoe evaluate", description=__doc__.split("\n\n")[0], epilog=DATA_EPILOG
    )
    p.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="SR checkpoint file spandrel loads (HybridMoE or another architecture), or a "
        "shipped model name such as 2x_HybridMoE_S (hybridmoe models lists them)",
    )
    p.add_argument("--data", type=Path, default=None, metavar="DIR", help=DATA_HELP)
    p.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help="sets to evaluate (default: Set5 Set14 B100 Urban100; with --degraded, every set "
        "in DIR)",
    )
    add_device_argument(p, "the model")
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="fp32",
        help="precision of the model's weights and input (default: fp32)",
    )
    p.add_argument(
        "--tile",
        type=tile_side,
        default=None,
        metavar="N",
        help=f"LR tile side in pixels, at least {MIN_TILE}; 0 = whole image (default: whole image)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all numbers to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--limit", type=int, default=None, help="first N images of each set only")
    p.add_argument("--bicubic-only", action="store_true", help="skip the model")
    p.add_argument("--scale", type=int, default=None, help="scale of a --bicubic-only run")
    p.add_argument(
        "--degraded",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate MODEL on the sets of hybridmoe make-degraded (of the model's scale)",
    )
    p.add_argument(
        "--lpips",
        type=Path,
        default=None,
        metavar="FILE",
        help="also LPIPS-Alex with these weights (lpips_alex.safetensors of perceptual-weights)",
    )
    p.add_argument(
        "--noise",
        type=int,
        default=None,
        metavar="SEED",
        help="switch on the model's learned noise injection (HybridMoE models built with "
        "noise=True), drawn from SEED at the start of every set",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None and not args.bicubic_only:
        parser.error("MODEL is required (or use --bicubic-only --scale S)")
    if args.model is None and args.scale is None:
        parser.error("--bicubic-only without MODEL needs --scale S")
    if args.model is not None and args.scale is not None:
        parser.error("--scale is read from MODEL; drop --scale")
    if args.degraded is not None and (args.bicubic_only or args.data is not None):
        parser.error("--degraded DIR holds the HR and LQ images; drop --bicubic-only and --data")
    try:
        if args.json is not None:  # before minutes of work
            inputs = [args.model] if args.model is not None else []
            imageio.check_output(
                args.json, overwrite=args.overwrite, inputs=inputs, what="JSON report"
            )
        if args.degraded is not None:
            results = evaluate_degraded(
                args.model,
                args.degraded,
                args.sets,
                device=args.device,
                dtype=args.dtype,
                tile=args.tile,
                limit=args.limit,
                lpips=args.lpips,
                noise_seed=args.noise,
            )
        else:
            results = evaluate(
                args.model,
                args.data if args.data is not None else default_data_dir(),
                args.sets or DEFAULT_SETS,
                device=args.device,
                dtype=args.dtype,
                tile=args.tile,
                limit=args.limit,
                bicubic_only=args.bicubic_only,
                scale=args.scale,
                lpips=args.lpips,
                noise_seed=args.noise,
            )
    except (EvaluationError, imageio.OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json is not None:
        try:
            words = ["hybridmoe", "evaluate", *(sys.argv[1:] if argv is None else argv)]
            record = {**record_header(words, args.device), **results}
            write_json(record, args.json, overwrite=args.overwrite)
        except imageio.OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
