"""Side-by-side crops of degraded-set results: input, bicubic, models, HR (one row per crop).

Usage::

    python scripts/side_by_side.py --set DIR/Urban100 --out crops.png \\
        --crop img_004:120,80,96 --crop img_092:40,200,96 \\
        --model Compact=compact_gan.safetensors --model Ours=4x_HybridMoE_S_RealWorld.safetensors

``--set`` is one set of ``hybridmoe make-degraded`` (HR/, LQ/, manifest.json). A crop is
``IMAGE:X,Y,SIZE`` in HR pixels (multiples of the set's scale); the LQ column shows the input
crop enlarged with nearest neighbour, the bicubic column MATLAB bicubic, each model its output
(CPU, fp32, 8-bit), the last column the HR crop. Every model must have the set's scale. Columns
are labelled; the PNG is written atomically and an existing file is refused unless
``--overwrite``. Bad input (a missing set, image or model file, a model of another scale, a
crop outside its image) is one ``error:`` line and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from hybridmoe import evaluate as ev
from hybridmoe import imageio, metrics
from hybridmoe.checkpoint import load_checkpoint
from hybridmoe.cliargs import positive_int
from hybridmoe.meta import CheckpointError

LABEL_H = 18


class UsageError(Exception):
    """Bad input to the script; the message says what is wrong and how to fix it."""


def parse_crop(text: str, scale: int) -> tuple[str, int, int, int]:
    """``IMAGE:X,Y,SIZE`` -> (image, x, y, size), checked against the scale."""
    try:
        name, box = text.split(":")
        x, y, size = (int(v) for v in box.split(","))
    except ValueError:
        raise UsageError(f"--crop {text!r}: expected IMAGE:X,Y,SIZE (HR pixels)") from None
    if min(x, y) < 0 or size < scale or any(v % scale for v in (x, y, size)):
        raise UsageError(f"--crop {text!r}: X, Y, SIZE must be >= 0 and multiples of x{scale}")
    return name, x, y, size


def load_model(spec: str, set_dir: Path, scale: int) -> tuple[str, Any]:
    """``LABEL=FILE`` -> (label, descriptor), refused unless the model has the set's scale."""
    label, _, path = spec.partition("=")
    if not label or not path:
        raise UsageError(f"--model {spec!r}: expected LABEL=FILE")
    desc = load_checkpoint(Path(path), device="cpu")
    if desc.scale != scale:
        from hybridmoe.degrade import PRESETS

        fix = f"give a x{scale} model"
        presets = [name for name, cfg in sorted(PRESETS.items()) if cfg.scale == desc.scale]
        if presets:
            fix += f", or make x{desc.scale} sets for this model with hybridmoe make-degraded "
            fix += "--preset " + " or --preset ".join(presets)
        raise UsageError(
            f"--model {label}: {path} is a x{desc.scale} model, but the set {set_dir} is "
            f"x{scale} (scale {scale} in its manifest) and needs a scale-{scale} model; {fix}"
        )
    return label, desc


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", type=Path, required=True, help="a degraded set folder")
    ap.add_argument("--crop", action="append", required=True, help="IMAGE:X,Y,SIZE (HR px)")
    ap.add_argument("--model", action="append", default=[], help="LABEL=FILE (any number)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--cell", type=positive_int, default=192, help="side of each shown crop in pixels"
    )
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (UsageError, ev.EvaluationError, CheckpointError, imageio.OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Check every input, then draw and write the sheet."""
    imageio.check_output(args.out, overwrite=args.overwrite, what="PNG")
    manifest = ev.read_degraded_manifest(args.set)
    scale = ev.degraded_scale(manifest)
    crops = [parse_crop(c, scale) for c in args.crop]
    images = sorted(manifest.get("images") or {})
    for name, *_ in crops:
        if name not in images:
            shown = ", ".join(images[:10]) + (" ..." if len(images) > 10 else "")
            raise UsageError(
                f"--crop {name}: no image {name!r} in the set {args.set}; name one of its "
                f"images ({shown})"
            )
    models = [load_model(spec, args.set, scale) for spec in args.model]
    labels = ["input (nearest)", "bicubic", *(label for label, _ in models), "HR"]
    cell = args.cell
    sheet = Image.new("RGB", (cell * len(labels), LABEL_H + cell * len(crops)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, label in enumerate(labels):
        draw.text((col * cell + 4, 3), label, fill="black")
    for row, (name, x, y, size) in enumerate(crops):
        hr = ev.read_image(args.set / "HR" / f"{name}.png")
        lq = ev.read_image(args.set / "LQ" / f"{name}.png")
        if y + size > hr.shape[0] or x + size > hr.shape[1]:
            raise UsageError(f"--crop {name}: box outside the {hr.shape[1]}x{hr.shape[0]} image")
        box = (slice(y, y + size), slice(x, x + size))
        lbox = (slice(y // scale, (y + size) // scale), slice(x // scale, (x + size) // scale))
        tiles = [np.repeat(np.repeat(lq[lbox], scale, 0), scale, 1)]
        tiles.append(metrics.imresize_matlab_uint8(lq, scale)[box])
        for _, desc in models:
            tiles.append(ev.super_resolve(desc, lq, None, name=name)[box])
        tiles.append(hr[box])
        for col, tile in enumerate(tiles):
            im = Image.fromarray(_rgb(tile)).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(im, (col * cell, LABEL_H + row * cell))
    with imageio.atomic_output(args.out, overwrite=args.overwrite, what="PNG") as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.out} ({len(crops)} crops x {len(labels)} columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
