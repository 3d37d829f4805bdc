"""Make paired HR/LR training or validation data with MATLAB-compatible bicubic downscaling.

Every image of the HR folders (PNG, JPEG, WebP, BMP) is mod-cropped to a multiple of the scale
and written as ``OUT/hr/<name>.png``; its bicubic-downscaled version (antialiased, a = -0.5,
as MATLAB's ``imresize``) goes to ``OUT/lr/<name>.png`` — the layout traiNNer-redux's
``pairedimagedataset`` reads::

    hybridmoe make-pairs ../shared/data/train/T91 ../shared/data/train/BSDS200 \\
        --out datasets/train_x4 --scale 4
    hybridmoe make-pairs ../shared/data/benchmark/Set5/HR --out datasets/val_x2 \\
        --scale 2 --check-against ../shared/data/benchmark/Set5/LR_bicubic/X2

``--check-against DIR`` compares each LR with ``DIR/<name>x<scale>.png`` (the benchmark
convention) or ``DIR/<name>.png`` and fails on any difference.

By default an image whose LR side would be shorter than the ``lq_size`` of the option templates
at that scale is skipped, with a warning: traiNNer-redux's training crop cannot be taken from it
(its data loader worker dies on ``empty range for randrange()``). ``--min-lr-size 1`` keeps every
image (validation sets, which are not cropped).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from hybridmoe.metrics import imresize_matlab_uint8, mod_crop
from hybridmoe.options import MEASURED_LQ

EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def template_lq_size(scale: int) -> int:
    """The ``lq_size`` (LR training crop) of the option templates at ``scale``."""
    return MEASURED_LQ.get(scale, max(MEASURED_LQ.values()))


def make_pair(src: Path, out: Path, scale: int, check: Path | None, min_lr: int = 1) -> str:
    """Write the HR/LR pair of one image; return "skip", an error message, or ''."""
    with Image.open(src) as im:
        rgb = np.asarray(im.convert("RGB"))
    hr = mod_crop(rgb, scale)
    if min(hr.shape[:2]) < scale * max(1, min_lr):
        return "skip"
    lr = imresize_matlab_uint8(hr, 1.0 / scale)
    Image.fromarray(hr).save(out / "hr" / f"{src.stem}.png")
    Image.fromarray(lr).save(out / "lr" / f"{src.stem}.png")
    if check is not None:
        ref_path = next(
            (
                p
                for p in (check / f"{src.stem}x{scale}.png", check / f"{src.stem}.png")
                if p.is_file()
            ),
            None,
        )
        if ref_path is None:
            return f"{src.stem}: no reference LR in {check}"
        with Image.open(ref_path) as im:
            ref = np.asarray(im.convert("RGB"))
        if ref.shape != lr.shape or not np.array_equal(ref, lr):
            return f"{src.stem}: LR differs from {ref_path}"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hybridmoe make-pairs",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("hr_dirs", nargs="+", type=Path, help="folders of HR images")
    ap.add_argument("--out", type=Path, required=True, help="output folder (hr/ and lr/)")
    ap.add_argument("--scale", type=int, required=True, help="integer scale >= 2")
    ap.add_argument("--check-against", type=Path, default=None, help="canonical LR folder")
    ap.add_argument(
        "--min-lr-size",
        type=int,
        default=None,
        help="skip images whose LR side would be shorter (default: the templates' lq_size at "
        "this scale, 64 at x2, 48 at x4; 1 keeps every image)",
    )
    ap.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    if args.scale < 2:
        ap.error(f"--scale must be an integer >= 2, got {args.scale}")
    min_lr = template_lq_size(args.scale) if args.min_lr_size is None else args.min_lr_size
    files: list[Path] = []
    for d in args.hr_dirs:
        if not d.is_dir():
            ap.error(f"HR folder not found: {d}")
        files += sorted(p for p in d.iterdir() if p.suffix.lower() in EXTS)
    if not files:
        ap.error("no images found in " + ", ".join(map(str, args.hr_dirs)))
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        ap.error("two input images share a file name; the pairs would overwrite each other")
    (args.out / "hr").mkdir(parents=True, exist_ok=True)
    (args.out / "lr").mkdir(parents=True, exist_ok=True)
    n = len(files)
    with ProcessPoolExecutor(max_workers=args.workers or None) as pool:
        results = pool.map(
            make_pair,
            files,
            [args.out] * n,
            [args.scale] * n,
            [args.check_against] * n,
            [min_lr] * n,
        )
        results = list(results)
    errors = [e for e in results if e and e != "skip"]
    skipped = results.count("skip")
    for e in errors:
        print("error:", e, file=sys.stderr)
    written = len(files) - len(errors) - skipped
    print(f"{written} pairs written to {args.out} (x{args.scale})")
    if skipped:
        print(
            f"warning: {skipped} image(s) skipped: their LR side would be shorter than {min_lr} px "
            f"(the training crop lq_size); pass --min-lr-size 1 to keep them (validation sets)",
            file=sys.stderr,
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
