"""Tiled against whole-image output of the shipped checkpoints, as ``hybridmoe upscale`` runs them.

For every shipped model (``experiments/pretrained_models/*.safetensors``, loaded with
:func:`hybridmoe.checkpoint.load_checkpoint`), CPU, float32, ``--threads`` threads (default 1):

* the tiling flag its spandrel descriptor declares and the window alignment that
  ``hybridmoe upscale`` passes (:func:`hybridmoe.upscale.tile_alignment`);
* the receptive-field reach in LR pixels: derived from the layers of an x1 trunk (stem, blocks
  and upsampler convolutions, bicubic base) and measured as the support of the gradient of one
  LR pixel's outputs with respect to the input (float64 copy of the network, raw output);
* the forward memory per LR pixel of the random probe ``hybridmoe upscale`` plans tiles with
  (:func:`hybridmoe.tiling.forward_bytes_per_pixel`, 64×64, seed 0);
* for Set5 HR images used as LR input (centre crop of ``--crop`` pixels), the output of
  :func:`hybridmoe.tiling.upscale_tiled` for every ``--tiles`` × ``--overlaps`` pair (plus, at the
  largest tile, overlaps of reach - 1 and reach) against the whole image (tile 0), both clamped
  to [0, 1] by the descriptor: max and mean abs difference in 1/255 over all values, and the
  share of 8-bit values that change after rounding.

Usage::

    python scripts/measure_tiling.py --json docs/measurements/tiling_YYYY-MM-DD.json
    python scripts/measure_tiling.py --json out.json --models 2x_HybridMoE_Nano --crop 0

PYTHONPATH must hold the checkout and ``traiNNer/archs`` (as for the tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import spandrel
import torch
from spandrel import ImageModelDescriptor

import hybridmoe_arch as arch
from hybridmoe import upscale
from hybridmoe.checkpoint import load_checkpoint
from hybridmoe.imageio import ImageReadError, read_image
from hybridmoe.install import sha256_of
from hybridmoe.models import shipped_models
from hybridmoe.provenance import git_commit, utc_now
from hybridmoe.tiling import (
    count_tiles,
    effective_tile,
    forward_bytes_per_pixel,
    upscale_tiled,
    window_starts,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ("baby", "bird", "butterfly")
REACH_SIDE = 49
"""Side of the input whose centre pixel's gradient support gives the measured reach."""
PLAN_SIZES = (
    (1080, 1920, 64, 4),
    (1080, 1920, 128, 16),
    (1080, 1920, 256, 16),
    (1080, 1920, 512, 16),
    (1000, 1000, 512, 4),
)
"""(height, width, tile, overlap) for which tile counts are listed with align 1 and the
alignment ``hybridmoe upscale`` uses."""


CODE_PATHS = ("hybridmoe", "traiNNer/archs", "scripts")
"""Folders whose files, if they differ from HEAD, are listed in the record."""


def code_changes() -> list[str] | None:
    """Files under :data:`CODE_PATHS` whose working-tree content differs from HEAD (or that
    are missing, or not in HEAD): the measured code is HEAD plus these. None when git cannot
    tell (a copy of the checkout without its ``.git``, or no git installed)."""
    try:
        return _code_changes()
    except (OSError, subprocess.SubprocessError):
        return None


def _code_changes() -> list[str]:
    """:func:`code_changes`, raising when a git command fails."""

    def git(*cmd: str, stdin: str | None = None) -> list[str]:
        out = subprocess.run(
            ["git", *cmd], cwd=ROOT, input=stdin, capture_output=True, text=True, check=True
        )
        return out.stdout.splitlines()

    head = {}
    for line in git("ls-tree", "-r", "HEAD", "--", *CODE_PATHS):
        meta, path = line.split("\t", 1)
        head[path] = meta.split()[2]
    present = [p for p in head if (ROOT / p).is_file()]
    blobs = git("hash-object", "--stdin-paths", stdin="\n".join(present))
    hashes = dict(zip(present, blobs, strict=True))
    changed = [p for p in head if hashes.get(p) != head[p]]
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS)
    return sorted(changed + [f"{p} (not in HEAD)" for p in untracked])


def file_provenance(path: Path) -> dict[str, Any]:
    """SHA-256 of ``path`` and whether its content is the blob HEAD holds at that path."""
    digest = sha256_of(path)
    rel = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else ""

    def run(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    in_head = run("rev-parse", f"HEAD:{rel}") if rel else ""
    same = bool(in_head) and run("hash-object", "--", rel) == in_head
    return {"sha256": digest, "same_as_head": same}


def shown_path(path: Path) -> str:
    """``path`` relative to the checkout when inside it, else absolute."""
    path = path.absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_lr(path: Path, crop: int) -> torch.Tensor:
    """(1, 3, h, w) float32 in [0, 1], read as ``hybridmoe upscale`` reads it; the centre
    ``crop × crop`` pixels when ``crop`` > 0 (and smaller than the image)."""
    pixels = read_image(path).pixels[..., :3]
    if crop > 0:
        h, w = pixels.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        pixels = pixels[top : top + crop, left : left + crop]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def derived_reach(model: torch.nn.Module) -> dict[str, int] | None:
    """Reach in LR pixels of an x1 trunk (``levels=1``, no HF path, mixer, head or bottleneck),
    from its layers: stem, blocks and upsampler convolution (k // 2 each, in sequence) and the
    bicubic base (2 pixels when scale > 1); None for other layouts."""
    if not isinstance(model, arch.HybridMoE) or getattr(model, "levels", None) != 1:
        return None
    if any(
        m is not None for m in (model.split, model.stem_lk, model.head, model.refine_moe)
    ) or len(model.mid):
        return None
    if not isinstance(model.up, arch.PixelShuffleUpsampler):
        return None
    blocks = [*model.lf1, *model.dec1]
    if not all(isinstance(b, arch.RepConvBlock) for b in blocks):
        return None
    trunk = (
        model.stem.kernel_size[0] // 2
        + sum(b.conv.k // 2 for b in blocks)
        + model.up.conv.kernel_size[0] // 2
    )
    base = 2 if isinstance(model.base, arch.BicubicUpsample) and model.scale > 1 else 0
    return {"trunk": trunk, "base": base, "total": max(trunk, base), "blocks": len(blocks)}


def measured_reach(model: torch.nn.Module, scale: int, image: torch.Tensor) -> int:
    """Largest distance (LR pixels, per axis) from the centre pixel of a ``REACH_SIDE`` crop of
    ``image`` to an input pixel with a non-zero gradient of that pixel's raw outputs."""
    net = copy.deepcopy(model).double().eval()
    h, w = image.shape[-2:]
    top, left = (h - REACH_SIDE) // 2, (w - REACH_SIDE) // 2
    x = image[..., top : top + REACH_SIDE, left : left + REACH_SIDE].double().clone()
    x.requires_grad_(True)
    c = REACH_SIDE // 2
    y = net(x)
    y[..., c * scale : (c + 1) * scale, c * scale : (c + 1) * scale].sum().backward()
    assert x.grad is not None
    support = x.grad.abs().sum(dim=(0, 1)).nonzero()
    reach = int((support - c).abs().max())
    if reach >= c:
        raise RuntimeError(f"reach {reach} not contained in the {REACH_SIDE}-pixel probe")
    return reach


def compare(
    desc: ImageModelDescriptor, x: torch.Tensor, whole: torch.Tensor, tile: int, overlap: int
) -> dict[str, Any]:
    """Tiled (as ``hybridmoe upscale``) against the whole-image output ``whole``."""
    align = upscale.tile_alignment(desc)
    t0 = time.perf_counter()
    tiled = upscale_tiled(
        lambda t: run_model(desc, t),
        x,
        desc.scale,
        tile,
        overlap,
        desc.size_requirements,
        align=align,
    )
    seconds = time.perf_counter() - t0
    diff = (tiled - whole).abs() * 255
    changed = torch.round(tiled * 255) != torch.round(whole * 255)
    h, w = x.shape[-2:]
    t = effective_tile(tile, desc.size_requirements)
    return {
        "tile": tile,
        "overlap": overlap,
        "align": align,
        "windows": count_tiles(h, w, tile, overlap, desc.size_requirements, align=align),
        "starts_x": window_starts(w, t, overlap, align),
        "max_abs_diff_255": float(diff.max()),
        "mean_abs_diff_255": float(diff.mean()),
        "share_8bit_changed": float(changed.float().mean()),
        "values": int(changed.numel()),
        "seconds": round(seconds, 2),
    }


def run_model(desc: ImageModelDescriptor, x: torch.Tensor) -> torch.Tensor:
    """``hybridmoe upscale``'s per-window call (CPU, float32): the descriptor, which clamps."""
    return desc(x.to(dtype=torch.float32)).to(device="cpu", dtype=torch.float32)


def probe_memory(desc: ImageModelDescriptor, side: int) -> float:
    """Bytes per LR pixel of one forward on a random ``side × side`` probe (seed 0), as
    ``hybridmoe upscale`` measures it before planning tiles."""
    s = effective_tile(side, desc.size_requirements)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, desc.input_channels, s, s, generator=gen)
    return forward_bytes_per_pixel(desc, x)


def layouts_for(
    tiles: Sequence[int], overlaps: Sequence[int], reach: int | None
) -> list[tuple[int, int]]:
    """(tile, overlap) pairs: the grid, plus reach - 1 and reach at the largest tile."""
    pairs = [(t, o) for t in tiles for o in overlaps if t > 3 * o]
    if reach is not None:
        big = max(tiles)
        pairs += [(big, o) for o in (reach - 1, reach) if big > 3 * o and (big, o) not in pairs]
    return pairs


def measure_model(
    name: str, path: Path, images: dict[str, torch.Tensor], args: argparse.Namespace
) -> dict[str, Any]:
    """Every measurement for one checkpoint."""
    t_start = time.perf_counter()
    desc = load_checkpoint(path, "cpu")
    assert isinstance(desc, ImageModelDescriptor)
    desc.eval()
    hp = getattr(desc.model, "hyperparameters", {}) or {}
    derived = derived_reach(desc.model)
    first = next(iter(images.values()))
    reach = measured_reach(desc.model, desc.scale, first)
    record: dict[str, Any] = {
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        **file_provenance(path),
        "scale": desc.scale,
        "tiling": desc.tiling.name,
        "tags": list(desc.tags),
        "deploy_form": bool(hp.get("deploy", False)),
        "align": upscale.tile_alignment(desc),
        "reach_derived": derived,
        "reach_measured": reach,
    }
    with torch.inference_mode():
        bpp = probe_memory(desc, args.probe_side)
        record["probe_bytes_per_pixel"] = round(bpp, 1)
        record["probe_side"] = args.probe_side
        record["estimate_gib_1000x1000"] = round(bpp * upscale.MEMORY_HEADROOM * 1e6 / 2**30, 3)
        record["images"] = {}
        for image_name, x in images.items():
            t0 = time.perf_counter()
            whole = upscale_tiled(
                lambda t: run_model(desc, t), x, desc.scale, 0, 16, desc.size_requirements
            )
            whole_s = time.perf_counter() - t0
            rows = [
                compare(desc, x, whole, tile, overlap)
                for tile, overlap in layouts_for(args.tiles, args.overlaps, reach)
            ]
            record["images"][image_name] = {
                "lr_size": list(x.shape[-2:]),
                "whole_seconds": round(whole_s, 2),
                "layouts": rows,
            }
            print(
                f"{name} {image_name}: "
                + ", ".join(
                    f"{r['tile']}/{r['overlap']} {r['max_abs_diff_255']:.3g}" for r in rows
                ),
                file=sys.stderr,
                flush=True,
            )
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    return record


def plan_counts(align: int) -> list[dict[str, int]]:
    """Window counts for a few large images with align 1 and ``align``."""
    return [
        {
            "height": h,
            "width": w,
            "tile": t,
            "overlap": o,
            "windows_align_1": count_tiles(h, w, t, o, align=1),
            f"windows_align_{align}": count_tiles(h, w, t, o, align=align),
        }
        for h, w, t, o in PLAN_SIZES
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, required=True, help="record to write")
    p.add_argument("--models", nargs="*", help="shipped model names (default: all)")
    p.add_argument("--images", nargs="+", default=list(DEFAULT_IMAGES), help="Set5 names")
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "tests" / "data" / "Set5" / "HR",
        help="folder of the --images PNGs (default: the Set5 HR images in tests/data)",
    )
    p.add_argument("--crop", type=int, default=192, help="centre crop side, 0 = whole image")
    p.add_argument("--tiles", type=int, nargs="+", default=[64, 128])
    p.add_argument("--overlaps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--probe-side", type=int, default=upscale.PROBE_SIDE)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if 0 < args.crop < REACH_SIDE:
        p.error(f"--crop must be 0 (whole images) or at least {REACH_SIDE}, the reach probe's side")
    if args.json.exists() and not args.overwrite:
        p.error(f"{args.json} exists; give another path or --overwrite")
    commit, changes = git_commit(), code_changes()  # the code that is measured, before the run

    torch.set_num_threads(args.threads)
    shipped = shipped_models()
    names = args.models or list(shipped)
    unknown = [n for n in names if n not in shipped]
    if unknown:
        p.error(f"not shipped models: {', '.join(unknown)}; shipped: {', '.join(shipped)}")
    try:
        images = {n: load_lr(args.data / f"{n}.png", args.crop) for n in args.images}
    except ImageReadError as e:
        p.error(f"{e} (--data is a folder holding {', '.join(args.images)} as NAME.png)")
    t0 = time.perf_counter()
    models = {n: measure_model(n, shipped[n], images, args) for n in names}
    align = next(iter(models.values()))["align"] if models else 1
    record = {
        "command": " ".join(["python", *sys.argv]),
        "device": f"CPU, {os.cpu_count()} cores",
        "threads": args.threads,
        "dtype": "float32",
        "torch": torch.__version__,
        "spandrel": spandrel.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "code_changes_vs_commit": changes,
        "date": utc_now(),
        "values": {
            "inputs": (
                f"Set5 HR {', '.join(args.images)} ({shown_path(args.data)}) used as LR "
                + (f"input, centre {args.crop}x{args.crop} crop" if args.crop else "input, whole")
            ),
            "reference": "upscale_tiled with tile 0 (one call on the whole image)",
            "diff_units": "1/255; max and mean over all output values (every channel); "
            "share_8bit_changed: share of values whose round(255*v) differs",
            "reach_measured_method": f"gradient support of one pixel's outputs, {REACH_SIDE}x"
            f"{REACH_SIDE} crop of {args.images[0]}, float64, raw network output",
            "memory_estimate": f"probe bytes per pixel x {upscale.MEMORY_HEADROOM} x 1e6 pixels",
            "tile_counts": plan_counts(align),
            "models": models,
            "total_seconds": round(time.perf_counter() - t0, 1),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
