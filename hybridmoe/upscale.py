"""Upscale an image or a folder of images with any spandrel-loadable model.

    hybridmoe upscale MODEL INPUT OUTPUT [options]

Run with ``--help`` for the options and for how alpha, greyscale images, bit depth and tiling
are handled. Exit status: 0 on success, 2 on a usage error, an unreadable model or input, an
unsupported ``--dtype``, an output that exists (without ``--overwrite``) or cannot be written, a
model output containing NaN/Inf, or running out of memory.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from spandrel import ImageModelDescriptor, ModelTiling, UnsupportedDtypeError
from tqdm import tqdm

from hybridmoe.checkpoint import CheckpointError, load_checkpoint
from hybridmoe.cliargs import add_device_argument, non_negative_int, parse_number
from hybridmoe.imageio import (
    FORMATS,
    ImageData,
    ImageReadError,
    OutputError,
    folder_problem,
    format_from_suffix,
    left_out_note,
    read_image,
    size_problem,
    split_alpha,
    visible_files,
    write_error,
    write_image,
)
from hybridmoe.models import enable_noise, resolve_model
from hybridmoe.tiling import (
    available_memory,
    count_tiles,
    effective_tile,
    forward_bytes_per_pixel,
    host_memory_available,
    largest_fitting_tile,
    upscale_tiled,
)

AUTO_TILE = 512
"""Largest tile suggested after running out of memory."""
PROBE_SIDE = 64
"""Auto tiling: side of the random probe whose forward memory is measured; images with at most
this many pixels squared are never tiled automatically."""
MEMORY_HEADROOM = 1.5
"""Auto tiling: measured tensor memory is multiplied by this (operator work buffers, allocator
fragmentation) before comparing with the memory budget."""
MEMORY_SHARE = 0.8
"""Auto tiling: share of the available memory that one image may use."""
HOST_COPIES = 5
"""Float32 copies of the output image held at once in host memory (tile accumulation,
normalisation, channel assembly, quantisation)."""
MIN_AUTO_TILE = 64
"""Auto tiling: smallest tile chosen; with less memory the image is refused."""
MIN_SUGGESTED_TILE = 16
"""Out of memory with tiles smaller than twice this: no smaller tile is suggested."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 weights used to turn an RGB model output back into one channel."""

ArrayFn = Callable[[np.ndarray], np.ndarray]
"""Maps float32 (H, W, M) to (H·scale, W·scale, M), M = the model's channel count."""

DESCRIPTION = f"""\
Upscale an image or a folder of images with a model checkpoint that spandrel can load
(HybridMoE-FreqNet included).

Formats: PNG (8/16-bit, grey, grey+alpha, RGB, RGBA), JPEG and WebP are read. A single file is
written in the format its OUTPUT name ends in (.png, .jpg/.jpeg, .webp) or --format; a folder
run keeps each input's format unless --format is given. A 16-bit PNG gives a 16-bit PNG;
JPEG and WebP are 8-bit. JPEG orientation (EXIF) is applied. The ICC profile is carried over
where it fits the channels written: a CMYK JPEG is converted to RGB by Pillow's plain formula
(its CMYK profile is neither applied nor kept), and WebP, which stores grey as RGB, gets no
greyscale profile.

Channels:
  * greyscale through an RGB model: the grey channel is replicated to RGB and the output is
    turned back to grey with BT.601 luma weights;
  * RGB through a 1-channel model: each of R, G, B is upscaled separately (3 model passes);
  * alpha is upscaled by the model as a greyscale image (same rule as above), so its edges
    follow the colour edges; a constant alpha (e.g. a fully opaque RGBA file) is simply kept
    constant without running the model. JPEG output drops alpha (with a warning).
  * the colour stored under fully transparent pixels (alpha 0) is arbitrary, often black; the
    model would carry it into the visible pixels at the edges (dark or stray fringes). By
    default (--transparent-colour extend) it is first replaced by the colour of the visible
    pixels around it, so visible pixels only ever see visible colour; `keep` upscales the
    file's colour as stored. Visible pixels are never changed before upscaling.

Tiling: the image is cut into overlapping windows of --tile pixels. Around each seam the
outer --tile-overlap pixels of a window's output are discarded and the next --tile-overlap
pixels are cross-faded linearly with the neighbour, so windows overlap by 3 x --tile-overlap
and --tile must be larger than that. For a model whose receptive field is at most
--tile-overlap pixels the result is identical to untiled inference. Windows are padded to the
model's size requirements and the output is cropped to exactly H*scale x W*scale. For
HybridMoE models with downsampling levels and window attention, windows start at multiples
of the network's internal grid (4 x window_size input pixels for the three-level network: 32
for windows of 8; a divisor of it when --tile minus 3 x --tile-overlap is shorter), which
keeps tiles much closer to the whole-image result; the x1 trunks (the shipped variants) have
no such grid.
Auto (default): the whole image in one pass when it fits in memory, else the largest tiles
that fit. The memory of one forward is measured on a {PROBE_SIDE} x {PROBE_SIDE} probe, scaled by
the pixel count (x {MEMORY_HEADROOM}) and compared with {int(MEMORY_SHARE * 100)}% of the free GPU
memory or, on the CPU, of MemAvailable (/proc/meminfo; 4 GiB assumed where unknown). Models
that tile internally are never tiled; models that discourage tiling are tiled only when --tile
is given or when the whole image does not fit (with a warning either way). An image that does not
fit even in tiles of {MIN_AUTO_TILE} is refused with a message.

Safety: outputs are written to a temporary file in the output folder and renamed into place, so
an interrupted run never leaves a partial image. An existing output is an error unless
--overwrite is given; an output that is the same file as an input (same path, symbolic or hard
link) is always refused. Images with more pixels than Pillow's decompression-bomb limit
(PIL.Image.MAX_IMAGE_PIXELS) are refused. A model output containing NaN or Inf is an error and
nothing is written for that image.

Exit status: 0 on success; 2 on a missing or unreadable model or input, an unsupported
--dtype or --device, an existing output without --overwrite, an output folder that cannot be
written, NaN/Inf in the model output, or out of memory (the message suggests a --tile). In
folder mode unreadable images are skipped with a warning.
"""


class CliError(Exception):
    """A user-facing error: printed as one line without traceback, exit status 2."""


class NonFiniteOutputError(Exception):
    """The model produced NaN or Inf values (``count`` of them) for the current input."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} NaN/Inf values in the model output")
        self.count = count


@dataclass
class Job:
    """One image to upscale: ``fmt`` None means "the format the input turns out to have"."""

    src: Path
    dst: Path
    fmt: str | None


@dataclass
class Settings:
    """Inference settings shared by all images of a run."""

    descriptor: ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype
    tile: int | None
    overlap: int
    quality: int
    align: int = 1
    """Window starts are multiples of this (see :func:`tile_alignment`)."""
    overwrite: bool = False
    bytes_per_pixel: float | None = None
    """Measured forward memory per input pixel (:func:`tiling.forward_bytes_per_pixel`)."""
    guard: NonFiniteGuard | None = None
    noise_seed: int | None = None
    """``--noise``: torch's generator is seeded with it before each image."""
    extend_colour: bool = True
    """``--transparent-colour extend``: see :func:`extend_colour`."""
    lossless: bool = False
    """``--lossless``: WebP output encoded losslessly."""


def warn(message: str) -> None:
    """Print a warning to stderr without breaking the progress bars."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _quality(text: str) -> int:
    """argparse type: an integer in [1, 100]."""
    value = parse_number(int, text, "an integer from 1 to 100")
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="hybridmoe upscale",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        type=Path,
        help="checkpoint file (.safetensors, .pth, .pt, .ckpt) or a shipped model's name "
        "(`hybridmoe models`)",
    )
    p.add_argument("input", type=Path, help="image file or folder of images")
    p.add_argument(
        "output",
        help="output file (single input; an existing folder, or a name ending in '/', "
        "receives INPUT's name) or folder (folder input; created if missing)",
    )
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also process sub-folders of a folder INPUT (hidden files and folders, names "
        "starting with '.', are never inputs)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (default: refuse to run)",
    )
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        help="output format (default: the suffix of a single OUTPUT file; in a folder run, "
        "each input's format)",
    )
    p.add_argument(
        "--quality",
        type=_quality,
        default=95,
        help="JPEG/WebP quality, 1-100 (default: 95)",
    )
    p.add_argument(
        "--lossless",
        action="store_true",
        help="WebP output: lossless encoding (--quality then sets the compression effort); "
        "PNG is always lossless, JPEG has no lossless mode (refused)",
    )
    p.add_argument(
        "--transparent-colour",
        choices=["extend", "keep"],
        default="extend",
        help="colour under fully transparent pixels before upscaling: extend the visible "
        "colour into it (default: no dark fringes at alpha edges) or keep the file's",
    )
    p.add_argument(
        "--tile",
        type=non_negative_int,
        default=None,
        help="tile side in input pixels, 0 = whole image (default: auto, the whole image when "
        "it fits in memory, else the largest tiles that fit)",
    )
    p.add_argument(
        "--tile-overlap",
        type=non_negative_int,
        default=16,
        help="context/cross-fade width in input pixels at each seam (default: 16)",
    )
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="fp32",
        help="inference precision; refused if the model does not support it (default: fp32)",
    )
    add_device_argument(p, "the model")
    p.add_argument(
        "--noise",
        type=int,
        default=None,
        metavar="SEED",
        help="switch on the model's learned noise injection (HybridMoE models built with "
        "noise=True, e.g. 4x_HybridMoE_S_RealWorld: a little generated texture), drawn from "
        "SEED for each image (default: off, the output is deterministic)",
    )
    return p


def load_descriptor(path: Path) -> ImageModelDescriptor:
    """Load ``path`` (a file, or a shipped model's name) on the CPU as an image-to-image model
    with 1 or 3 channels in and out."""
    try:
        path = resolve_model(path)
    except CheckpointError as e:
        raise CliError(str(e)) from None
    if not path.exists():
        raise CliError(f"model not found: {path}")
    if not path.is_file():
        raise CliError(f"model is not a file: {path}")
    try:
        descriptor = load_checkpoint(path, "cpu")
    except Exception as e:
        raise CliError(_name_path(str(e) or type(e).__name__, path)) from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise CliError(f"{path}: {type(descriptor).__name__} is not an image-to-image model")
    cin, cout = descriptor.input_channels, descriptor.output_channels
    if cin != cout or cin not in (1, 3):
        raise CliError(
            f"{path}: models with {cin} input / {cout} output channels are not supported "
            "(1 or 3 channels in and out expected)"
        )
    return descriptor


def _name_path(message: str, path: Path) -> str:
    """``message`` prefixed with the model path unless it already names it."""
    return message if str(path) in message else f"cannot load model {path}: {message}"


def supported_dtypes(descriptor: ImageModelDescriptor) -> list[str]:
    """The ``--dtype`` names the model supports."""
    names = ["fp32"]
    if descriptor.supports_half:
        names.append("fp16")
    if descriptor.supports_bfloat16:
        names.append("bf16")
    return names


def check_dtype(descriptor: ImageModelDescriptor, name: str) -> torch.dtype:
    """The torch dtype for ``name``; :class:`CliError` if the model does not support it."""
    supported = supported_dtypes(descriptor)
    if name not in supported:
        raise CliError(
            f"model {descriptor.architecture.name} does not support --dtype {name}; "
            f"supported: {', '.join(supported)}"
        )
    return DTYPES[name]


def check_tiling(descriptor: ImageModelDescriptor, tile: int | None, overlap: int) -> None:
    """Warn about tiling the model's descriptor advises against; reject too small tiles."""
    if descriptor.tiling is ModelTiling.INTERNAL:
        if tile:
            warn(f"model {descriptor.architecture.name} tiles internally; --tile ignored")
        return
    if descriptor.tiling is ModelTiling.DISCOURAGED:
        if not tile:
            return
        warn(f"model {descriptor.architecture.name} discourages tiling; seams may show")
    # auto tiling (tile None) only picks tiles larger than 3 x overlap: nothing to check
    if tile and effective_tile(tile, descriptor.size_requirements) <= 3 * overlap:
        raise CliError(
            f"tile {tile} must be larger than 3 x --tile-overlap ({3 * overlap}); "
            "use a larger --tile or a smaller --tile-overlap"
        )


def tile_alignment(descriptor: ImageModelDescriptor) -> int:
    """Window-start alignment in input pixels for tiling ``descriptor``'s model.

    A HybridMoE of ``levels`` levels downsamples ``levels − 1`` times by 2 and, where it has
    window attention (every block below ×1, and the bottleneck blocks), partitions the deepest
    level into windows of ``window_size`` tokens: tiles starting at multiples of
    ``2^(levels−1)·window_size`` see the same grid as the whole image (32 for the three-level
    network with windows of 8). A ×1 trunk without attention (the shipped variants) has no
    grid: 1. Any model that pads its input to a size multiple (spandrel's
    ``size_requirements.multiple_of``) also gets that multiple, so that the last window of a
    row is padded as the whole image is (its start is a multiple).
    """
    return math.lcm(_hybridmoe_grid(descriptor), descriptor.size_requirements.multiple_of)


def _hybridmoe_grid(descriptor: ImageModelDescriptor) -> int:
    """The attention grid of a HybridMoE in input pixels (see :func:`tile_alignment`); 1 for
    other architectures."""
    if descriptor.architecture.id != "HybridMoE":
        return 1
    hp = getattr(descriptor.model, "hyperparameters", None) or {}
    levels, window = hp.get("levels", 3), hp.get("window_size")
    if not isinstance(levels, int) or levels < 1:
        return 1
    grid = 2 ** (levels - 1)
    has_windows = hp.get("use_attn", True) and (levels > 1 or hp.get("mid_blocks", 0) > 0)
    if has_windows and isinstance(window, int) and window > 0:
        grid *= window
    return grid


def plan_tile(settings: Settings, height: int, width: int, channels: int, src: Path) -> int:
    """Tile side for an ``height × width`` image of ``channels`` channels, 0 = whole image.

    Without ``--tile``: the whole image if its forward fits in memory (see ``--help``), else
    the largest tile that fits; :class:`CliError` if not even :data:`MIN_AUTO_TILE` fits.
    """
    desc = settings.descriptor
    if desc.tiling is ModelTiling.INTERNAL:
        return 0
    if settings.tile is not None:
        return settings.tile
    if height * width <= PROBE_SIDE * PROBE_SIDE:
        return 0
    budget, source = memory_budget(settings, height, width, channels, src)
    per_pixel = probe_bytes_per_pixel(settings) * MEMORY_HEADROOM
    tile = largest_fitting_tile(
        per_pixel,
        budget,
        height,
        width,
        overlap=settings.overlap,
        size_requirements=desc.size_requirements,
        step=max(settings.align, 16),
        minimum=MIN_AUTO_TILE,
    )
    need = (
        f"about {_gib(per_pixel * height * width)} for one pass, {_gib(budget)} usable ({source})"
    )
    if tile is None:
        raise CliError(
            f"not enough memory to upscale {src} ({width}x{height}): {need}, and even tiles of "
            f"{max(MIN_AUTO_TILE, 3 * settings.overlap + 1)} do not fit; free memory, use "
            "another --device or --dtype, or try a small --tile"
        )
    if tile:
        note = " (the model discourages tiling; seams may show)" * (
            desc.tiling is ModelTiling.DISCOURAGED
        )
        warn(f"{src} ({width}x{height}): {need}; tiling with --tile {tile}{note}")
    return tile


def _gib(n: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / 2**30:.2f} GiB"


def probe_bytes_per_pixel(settings: Settings) -> float:
    """Forward memory per input pixel, measured once per run on a random probe."""
    if settings.bytes_per_pixel is None:
        desc = settings.descriptor
        side = effective_tile(PROBE_SIDE, desc.size_requirements)
        x = torch.rand(1, desc.input_channels, side, side, device=settings.device)
        guard = settings.guard
        if guard is not None:
            guard.armed = False
        try:
            settings.bytes_per_pixel = forward_bytes_per_pixel(desc, x.to(settings.dtype))
        finally:
            if guard is not None:
                guard.armed = True
    return settings.bytes_per_pixel


def memory_budget(
    settings: Settings, height: int, width: int, channels: int, src: Path
) -> tuple[float, str]:
    """Bytes one forward may use, and where the number comes from.

    Host memory must also hold :data:`HOST_COPIES` float32 copies of the output image
    (:class:`CliError` if it cannot); on the CPU they are taken from the forward's budget.
    """
    scale = settings.descriptor.scale
    host_need = HOST_COPIES * height * scale * width * scale * channels * 4
    host = host_memory_available()
    available, source = available_memory(settings.device)
    if settings.device.type == "cpu":  # the forward's memory (or the fixed budget) is the host's
        host = available if host is None else min(host, available)
    if host is not None and host_need > MEMORY_SHARE * host:
        raise CliError(
            f"not enough memory to upscale {src} ({width}x{height}): the "
            f"{width * scale}x{height * scale} output alone needs about {_gib(host_need)} "
            f"({HOST_COPIES} float32 copies), more than the {int(MEMORY_SHARE * 100)}% of the "
            f"{_gib(host)} available that upscale uses ({_gib(MEMORY_SHARE * host)}); tiling does "
            f"not shrink the output: free memory or upscale a smaller image (crop it into parts)"
        )
    budget = MEMORY_SHARE * available
    if settings.device.type == "cpu":
        budget -= host_need
    return budget, source


def _output_suffix(src: Path, src_fmt: str | None, fmt: str | None) -> str:
    """Suffix of the output file: the input's own suffix when the format is unchanged."""
    if fmt is None or fmt == src_fmt:
        return src.suffix
    return FORMATS[fmt][0]


def plan_single(src: Path, output: Path, fmt: str | None, as_folder: bool = False) -> Job:
    """The job for a single input file (see ``--help`` for how the format is chosen);
    ``as_folder``: OUTPUT was written as a folder (a trailing ``/``) and may not exist yet."""
    src_fmt = format_from_suffix(src)
    if output.exists() and not output.is_dir() and as_folder:
        raise CliError(f"output {output}/ names a folder, but {output} is a file")
    if output.is_dir() or as_folder:
        return Job(src, output / (src.stem + _output_suffix(src, src_fmt, fmt)), fmt or src_fmt)
    out_fmt = format_from_suffix(output)
    if fmt and out_fmt and fmt != out_fmt:
        raise CliError(f"--format {fmt} conflicts with the output name {output}")
    if fmt and not out_fmt and output.suffix.lower() in Image.registered_extensions():
        raise CliError(
            f"the output name {output} ends in {output.suffix}, an image type upscale does not "
            f"write, so --format {fmt} would put {fmt} bytes under it; name it "
            f"{output.with_suffix(FORMATS[fmt][0]).name}"
        )
    if not fmt and not out_fmt:
        suffixes = ", ".join(x for exts in FORMATS.values() for x in exts)
        raise CliError(
            f"the output name {output} does not end in an image suffix ({suffixes}); add one, "
            f"pass --format, or end the name with '/' to write into a folder"
        )
    return Job(src, output, fmt or out_fmt)


def _folder_files(folder: Path, recursive: bool, output: Path) -> tuple[list[Path], list[Path]]:
    """(image files by suffix, other files) in ``folder``, sorted, hidden ones aside
    (:func:`hybridmoe.imageio.visible_files`), skipping earlier results in ``output`` (only
    when it is a sub-folder of ``folder``)."""
    out = output.resolve()
    skip = out if out != folder.resolve() else None
    images: list[Path] = []
    others: list[Path] = []
    for path in visible_files(folder, recursive):
        if skip in path.resolve().parents:
            continue
        (images if format_from_suffix(path) else others).append(path)
    return images, others


def plan_folder(src: Path, output: Path, recursive: bool, fmt: str | None) -> list[Job]:
    """Jobs for every image of folder ``src``, mirrored under folder ``output``."""
    if output.exists() and not output.is_dir():
        raise CliError(f"output {output} is a file, but input {src} is a folder")
    jobs: list[Job] = []
    targets: dict[Path, Path] = {}
    images, others = _folder_files(src, recursive, output)
    if others:
        warn(left_out_note(others, src, "PNG, JPEG or WebP"))
    for path in images:
        src_fmt = format_from_suffix(path)
        rel = path.relative_to(src)
        dst = output / rel.parent / (rel.stem + _output_suffix(path, src_fmt, fmt))
        key = dst.resolve()
        if key == path.resolve():
            raise CliError(f"output {dst} would overwrite its input; choose another OUTPUT")
        if key in targets:
            raise CliError(f"{targets[key]} and {path} would both be written to {dst}")
        targets[key] = path
        jobs.append(Job(path, dst, fmt or src_fmt))
    if not jobs:
        raise CliError(f"no PNG, JPEG or WebP images in {src}")
    return jobs


def plan_jobs(src: Path, output: str, recursive: bool, fmt: str | None) -> list[Job]:
    """All jobs for INPUT ``src`` and OUTPUT as typed; :class:`CliError` if INPUT does not
    exist."""
    if not src.exists():
        raise CliError(f"input not found: {src}")
    if src.is_dir():
        return plan_folder(src, Path(output), recursive, fmt)
    as_folder = output.endswith(("/", os.sep))
    job = plan_single(src, Path(output), fmt, as_folder)
    if job.dst.resolve() == src.resolve():
        raise CliError(f"output {job.dst} would overwrite the input")
    return [job]


def check_lossless(jobs: list[Job]) -> None:
    """``--lossless`` with an output that would be JPEG is refused before any model runs."""
    jpeg = [job for job in jobs if job.fmt == "jpg"]
    if jpeg:
        raise CliError(
            f"--lossless: {len(jpeg)} output(s) would be JPEG, which has no lossless mode "
            f"(e.g. {jpeg[0].dst}); pass --format png or --format webp"
        )


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names (links followed; a dangling link: the
    link's own), None if nothing is there."""
    try:
        st = path.stat()
    except OSError:
        try:
            st = path.lstat()  # a link to nothing still takes the name
        except OSError:
            return None
    return st.st_dev, st.st_ino


def check_outputs(jobs: list[Job], overwrite: bool) -> None:
    """:class:`CliError` if an output is an input (same file: path, symbolic or hard link),
    a folder, or exists and ``overwrite`` is False; also if an output folder cannot be
    created or written."""
    inputs = {_file_id(job.src): job.src for job in jobs}
    existing = []
    for job in jobs:
        dst_id = _file_id(job.dst)
        if dst_id is None:
            continue
        if dst_id in inputs:
            raise CliError(
                f"output {job.dst} is the same file as input {inputs[dst_id]} "
                "(a link to it); choose another OUTPUT"
            )
        if job.dst.is_dir():
            raise CliError(f"output {job.dst} is a folder; choose a file name")
        existing.append(job.dst)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise CliError(f"output {existing[0]} already exists{more}; pass --overwrite to replace")
    for folder in sorted({job.dst.parent for job in jobs}):
        check_output_folder(folder)


def check_output_folder(folder: Path) -> None:
    """:class:`CliError` unless ``folder`` exists and takes new files, or can be created."""
    problem = folder_problem(folder)
    if problem is not None:
        raise CliError(f"cannot write to the output folder {folder}: {problem}")


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H, W, 1) with BT.601 luma weights."""
    return rgb @ LUMA[:, None]


def upscale_plane(plane: np.ndarray, run: ArrayFn, channels: int) -> np.ndarray:
    """Upscale one channel (H, W, 1) with a ``channels``-channel model → (sH, sW, 1)."""
    if channels == 1:
        return run(plane)
    return to_grey(run(np.repeat(plane, 3, axis=-1)))


def extend_colour(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``colour`` (H, W, C) with every fully transparent pixel (``alpha`` (H, W, 1) == 0)
    given the colour of the visible pixels around it; visible pixels are returned unchanged.

    A push-pull fill: the alpha-weighted mean colour of the 2×2, 4×4, ... blocks of the image,
    each transparent pixel taking that of the smallest block around it that holds a visible
    pixel. An image with no transparent pixel, or no visible one, is returned as it is.
    """
    visible = alpha > 0
    if visible.all() or not visible.any():
        return colour
    # per level: alpha-weighted colour sums and, last channel, the alpha sum
    levels = [np.concatenate([colour * alpha, alpha], axis=-1).astype(np.float32)]
    while max(levels[-1].shape[:2]) > 1:  # halve (zero-padded to even sides) down to 1×1
        a = levels[-1]
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)))
        levels.append(a[::2, ::2] + a[1::2, ::2] + a[::2, 1::2] + a[1::2, 1::2])
    tiny = np.float32(1e-12)
    filled = levels[-1][..., :-1] / np.maximum(levels[-1][..., -1:], tiny)  # holds a visible px
    for a in reversed(levels[:-1]):
        coarse = filled.repeat(2, axis=0).repeat(2, axis=1)[: a.shape[0], : a.shape[1]]
        w = a[..., -1:]
        filled = np.where(w > 0, a[..., :-1] / np.maximum(w, tiny), coarse)
    return np.where(visible, colour, filled).astype(colour.dtype)


def upscale_pixels(
    pixels: np.ndarray, run: ArrayFn, channels: int, *, extend: bool = True
) -> np.ndarray:
    """Upscale an image (H, W, C), C ∈ {1, 2, 3, 4}, with a 1- or 3-channel model.

    Returns (H·scale, W·scale, C). Grey goes through the model as replicated RGB (3-channel
    models); RGB goes through a 1-channel model channel by channel; alpha is upscaled like a
    grey image, unless it is constant. ``extend``: the colour under fully transparent pixels
    is replaced first (:func:`extend_colour`).
    """
    colour, alpha = split_alpha(pixels)
    if alpha is not None and extend:
        colour = extend_colour(colour, alpha)
    if colour.shape[-1] == 1:
        out = upscale_plane(colour, run, channels)
    elif channels == 3:
        out = run(colour)
    else:
        out = np.concatenate([upscale_plane(colour[..., i : i + 1], run, 1) for i in range(3)], -1)
    if alpha is None:
        return out
    if alpha.min() == alpha.max():
        alpha_out = np.full((*out.shape[:2], 1), alpha.flat[0], dtype=np.float32)
    else:
        alpha_out = upscale_plane(alpha, run, channels)
    return np.concatenate([out, alpha_out], axis=-1)


class NonFiniteGuard:
    """Forward hook on a model: raises :class:`NonFiniteOutputError` when its raw output
    (before spandrel clamps it to [0, 1], which would turn Inf into 0 or 1) holds NaN/Inf."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.armed = True
        self.handle = module.register_forward_hook(self._check)

    def _check(self, module: torch.nn.Module, inputs: object, output: object) -> None:
        if self.armed and isinstance(output, torch.Tensor):
            bad = int((~torch.isfinite(output)).sum())
            if bad:
                raise NonFiniteOutputError(bad)

    def remove(self) -> None:
        """Detach the hook from the model."""
        self.handle.remove()


def non_finite_message(settings: Settings, src: Path, count: int) -> str:
    """Explain NaN/Inf in the model output of ``src`` and what to try."""
    name = next(k for k, v in DTYPES.items() if v == settings.dtype)
    head = (
        f"model output for {src} contains {count} NaN/Inf values (--dtype {name}, "
        f"{settings.device}); nothing was written for it"
    )
    if name != "fp32":
        return f"{head}; {name} can overflow: try --dtype fp32, and check the model if it persists"
    return f"{head}; check the model file: its weights may hold NaN/Inf (damaged or diverged)"


def make_runner(settings: Settings, tile: int, bar: tqdm) -> ArrayFn:
    """An :data:`ArrayFn` running the model tile by tile, counting tiles on ``bar``."""
    desc = settings.descriptor

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        """(1, M, h, w) float32 CPU → (1, M, h·s, w·s) float32 CPU through the descriptor."""
        y = desc(x.to(device=settings.device, dtype=settings.dtype))
        return y.to(device="cpu", dtype=torch.float32)

    def run(arr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
        h, w = arr.shape[:2]
        bar.total = (bar.total or 0) + count_tiles(
            h, w, tile, settings.overlap, desc.size_requirements, align=settings.align
        )
        bar.refresh()
        y = upscale_tiled(
            model_fn,
            x,
            desc.scale,
            tile,
            settings.overlap,
            desc.size_requirements,
            align=settings.align,
            on_tile=lambda: bar.update(1),
        )
        return y[0].permute(1, 2, 0).numpy()

    return run


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` reports a failed GPU or CPU allocation."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def out_of_memory_message(settings: Settings, src: Path, tile: int, height: int, width: int) -> str:
    """Explain an out-of-memory failure and suggest a tile size that uses less memory."""
    where = f"with --tile {tile}" if tile else "on the whole image"
    head = f"out of memory upscaling {src} ({width}x{height}) {where} on {settings.device}"
    side = min(tile, max(height, width)) if tile else max(height, width)
    suggestion = min(AUTO_TILE, side // 2)
    if settings.descriptor.tiling is ModelTiling.INTERNAL or suggestion < MIN_SUGGESTED_TILE:
        return f"{head}; try another --dtype or --device"
    hint = f"--tile {suggestion}"
    if suggestion <= 3 * settings.overlap:
        hint += f" --tile-overlap {suggestion // 4}"
    return f"{head}; try a smaller tile, e.g. {hint}"


def process(job: Job, settings: Settings) -> None:
    """Read, upscale and write one image (:class:`ImageReadError` if it cannot be read)."""
    image = read_image(job.src)
    fmt = job.fmt or image.format
    pixels = image.pixels
    if fmt == "jpg" and pixels.shape[-1] in (2, 4):
        warn(f"{job.src}: JPEG has no alpha channel; alpha dropped")
        pixels = split_alpha(pixels)[0]
    h, w = pixels.shape[:2]
    desc = settings.descriptor
    problem = size_problem(fmt, h * desc.scale, w * desc.scale)
    if problem:  # before the model runs
        raise CliError(f"{job.dst}: {problem} (--format png, or a .png OUTPUT)")
    # grey goes through a 3-channel model as RGB: its output copies have the model's channels
    held = max(pixels.shape[-1], desc.input_channels)
    tile = plan_tile(settings, h, w, held, job.src)
    if settings.noise_seed is not None:  # after plan_tile's probe: the same noise per image
        torch.manual_seed(settings.noise_seed)
    with tqdm(total=0, desc=job.src.name, unit="tile", leave=False, file=sys.stderr) as bar:
        try:
            runner = make_runner(settings, tile, bar)
            out = upscale_pixels(pixels, runner, desc.input_channels, extend=settings.extend_colour)
        except NonFiniteOutputError as e:
            raise CliError(non_finite_message(settings, job.src, e.count)) from None
        except Exception as e:
            if is_out_of_memory(e):
                raise CliError(out_of_memory_message(settings, job.src, tile, h, w)) from None
            raise
    write_output(job, out, fmt, image, settings)


def write_output(job: Job, out: np.ndarray, fmt: str, image: ImageData, settings: Settings) -> None:
    """Write ``out`` to ``job.dst`` atomically, with ``image``'s bit depth (PNG) and ICC
    profile; :class:`CliError` on any failure."""
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create output folder {job.dst.parent}: {e.strerror or e}") from None
    try:
        write_image(
            job.dst,
            out,
            fmt,
            bit_depth=image.bit_depth if fmt == "png" else 8,
            quality=settings.quality,
            lossless=settings.lossless,
            icc_profile=image.icc_profile,
            overwrite=settings.overwrite,
        )
    except OutputError as e:  # e.g. the output appeared meanwhile (without --overwrite)
        raise CliError(str(e)) from None
    except (OSError, ValueError) as e:  # Pillow's encoders raise either
        raise CliError(str(write_error(job.dst, e))) from None


def prepare(args: argparse.Namespace) -> tuple[list[Job], Settings]:
    """Check the arguments, plan the jobs and load the model (:class:`CliError` on problems)."""
    jobs = plan_jobs(args.input, args.output, args.recursive, args.format)
    if args.lossless:
        check_lossless(jobs)
    check_outputs(jobs, args.overwrite)
    device = torch.device(args.device)
    descriptor = load_descriptor(args.model)
    if args.noise is not None:
        try:
            enable_noise(descriptor.model)
        except ValueError as e:
            raise CliError(f"{args.model}: {e}") from None
    dtype = check_dtype(descriptor, args.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        warn("float16 is slow on a CPU (emulated there): --dtype fp32 runs several times faster")
    check_tiling(descriptor, args.tile, args.tile_overlap)
    try:
        descriptor.to(device=device, dtype=dtype)
    except UnsupportedDtypeError as e:
        raise CliError(str(e)) from None
    descriptor.eval()
    settings = Settings(
        descriptor,
        device,
        dtype,
        args.tile,
        args.tile_overlap,
        args.quality,
        align=tile_alignment(descriptor),
        overwrite=args.overwrite,
        noise_seed=args.noise,
        extend_colour=args.transparent_colour == "extend",
        lossless=args.lossless,
    )
    return jobs, settings


def run_jobs(jobs: list[Job], settings: Settings, single: bool) -> int:
    """Process all jobs; unreadable images abort a single-file run and are skipped otherwise."""
    skipped = 0
    settings.guard = NonFiniteGuard(settings.descriptor.model)
    try:
        with torch.inference_mode():
            for job in tqdm(jobs, desc="images", unit="img", file=sys.stderr):
                try:
                    process(job, settings)
                except ImageReadError as e:
                    if single:
                        raise CliError(str(e)) from None
                    warn(f"{e}; skipped")
                    skipped += 1
    finally:
        settings.guard.remove()
        settings.guard = None
    if skipped == len(jobs):
        raise CliError(f"none of the {skipped} images could be read; nothing was written")
    if skipped:
        warn(f"{skipped} of {len(jobs)} images skipped")
    print(summary(jobs, len(jobs) - skipped, single))
    return 0


def summary(jobs: list[Job], written: int, single: bool) -> str:
    """The line a finished run prints: the output file, or how many images went where."""
    if single:
        return f"wrote {jobs[0].dst}"
    folder = Path(os.path.commonpath([job.dst.parent for job in jobs]))
    return f"wrote {written} image{'s' if written != 1 else ''} to {folder}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        jobs, settings = prepare(args)
        return run_jobs(jobs, settings, single=not args.input.is_dir())
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
