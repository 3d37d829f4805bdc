"""Fixed-seed degraded copies of image sets, for evaluating x1 restoration models and x4
"real-world" super-resolution models.

Usage::

    hybridmoe make-degraded --out datasets/restore_eval [--sets Set5 Set14 B100 Urban100]
        [--data DIR] [--seed 0] [--preset restore]
    hybridmoe make-degraded --out datasets/realworld4_eval --preset realworld4
    hybridmoe make-degraded my_photos/HR --out datasets/restore_mine [--name mine]

Every image of a set (the benchmark sets are found as ``hybridmoe evaluate`` finds them; an HR
folder given on the command line is a set named after it, or after its parent when it is
called ``HR``) is degraded with :func:`hybridmoe.degrade.degrade_batch` and the preset: with
``restore`` (scale 1) blur -> noise -> 8-bit rounding -> JPEG, same size; with ``realworld4``
(scale 4) the second-order pipeline of :mod:`hybridmoe.degrade` (blur, resize, noise, JPEG,
a second such stage, a resize to a quarter of the size and a last JPEG). For a scale ``s > 1``
the image is first cropped to a multiple of ``s`` (top-left, "mod-crop"), the LQ image is
``s`` times smaller on each axis. It is written as::

    OUT/<set>/HR/<name>.png      the image as read, mod-cropped (8-bit; greyscale stays grey)
    OUT/<set>/LQ/<name>.png      its degraded copy (1/scale of the HR size)
    OUT/<set>/manifest.json      scale, preset values, seeds and every image's drawn parameters

Each image has its own generator, seeded from ``--seed``, the set name and the image name, so
its degraded copy does not depend on which other images are in the folder. A greyscale image
is degraded as the RGB image with three equal channels and turned back to grey with BT.601
luma weights (the convention of ``hybridmoe evaluate`` for model outputs).

A set folder that already exists under OUT is refused before any work; every file is written
atomically, the manifest last (a set without a manifest is incomplete).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hybridmoe import degrade, imageio, metrics

FORMAT = "hybridmoe-degraded-set/1"
EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
LUMA = np.array([0.299, 0.587, 0.114])
ORDER = "blur, noise, clamp and round to 8 bits, JPEG"
ORDER_SECOND = (
    "stage 1: blur, resize, noise, 8 bits, JPEG; stage 2 (second_prob): blur, resize, noise, "
    "8 bits; final: resize to 1/scale, 8 bits, JPEG"
)


def order(cfg: degrade.Degradation) -> str:
    """The order of the stages of ``cfg``'s pipeline, in words (recorded in the manifest)."""
    return ORDER if cfg.scale == 1 else ORDER_SECOND


class DegradedSetError(Exception):
    """A user-facing problem with a degraded set (to make or to read); the message says why."""


def image_seed(seed: int, set_name: str, stem: str) -> int:
    """The generator seed of one image: a hash of the global seed, set and image name."""
    digest = hashlib.sha256(f"{seed}/{set_name}/{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def degrade_image(
    img: np.ndarray, cfg: degrade.Degradation, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade a uint8 ``(H, W)`` or ``(H, W, 3)`` image with a generator seeded by ``seed``;
    returns the uint8 result (same shape, or ``(H / s, W / s[, 3])`` for ``cfg.scale = s``;
    ``H`` and ``W`` must then be multiples of ``s``) and the parameters drawn.

    Unlike a training batch, an x1 evaluation image always gets at least one stage: a draw with
    every stage off is drawn again from the same generator (``redraws`` in the parameters),
    so an image whose first draw has a stage is degraded exactly as before. (A scale > 1 image
    is always degraded: it is downscaled; ``redraws`` is 0.)"""
    grey = img.ndim == 2
    rgb = np.repeat(img[:, :, None], 3, axis=2) if grey else img
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DegradedSetError(f"expected a greyscale or RGB image, got shape {img.shape}")
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None] / 255  # writable
    gen = torch.Generator().manual_seed(seed)
    params = degrade.sample_params(1, cfg, gen)
    redraws = 0
    while (
        cfg.scale == 1
        and not _any_stage(params)
        and _any_stage_possible(cfg)
        and redraws < MAX_REDRAWS
    ):
        # an evaluation image left clean would score an infinite input PSNR: draw again
        params = degrade.sample_params(1, cfg, gen)
        redraws += 1
    try:
        y = degrade.apply_params(x, params, gen)[0]
    except ValueError as exc:
        raise DegradedSetError(str(exc)) from exc
    out = y.permute(1, 2, 0).double().numpy() * 255.0
    if grey:
        out = out @ LUMA
    return np.clip(np.round(out), 0, 255).astype(np.uint8), {
        **params.describe(0),
        "redraws": redraws,
    }


MAX_REDRAWS = 1000
"""Draws allowed for an image to get at least one stage (any preset with a non-zero stage
probability gets one long before this)."""


def _any_stage(p: degrade.DegradeParams) -> bool:
    return bool(p.blur[0] or p.noise[0] or p.jpeg[0])


def _any_stage_possible(cfg: degrade.Degradation) -> bool:
    return cfg.blur_prob > 0 or cfg.noise_prob > 0 or cfg.jpeg_prob > 0


def _write_png(path: Path, img: np.ndarray) -> None:
    with imageio.atomic_output(path, what="image") as tmp:
        try:
            Image.fromarray(img).save(tmp, format="PNG")
        except OSError as e:  # a full disk
            raise imageio.write_error(path, e) from e


def set_images(folder: Path) -> list[Path]:
    """The images of an HR folder, sorted; file names (stems) must be unique."""
    files = [p for p in imageio.visible_files(folder) if p.suffix.lower() in EXTS]
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DegradedSetError(
                f"{seen[p.stem].name} and {p.name} in {folder} share a file name; rename one"
            )
        seen[p.stem] = p
    if not files:
        raise DegradedSetError(f"no images ({', '.join(sorted(EXTS))}) in {folder}")
    return files


def make_set(
    name: str,
    hr_dir: Path,
    out: Path,
    *,
    cfg: degrade.Degradation,
    preset: str,
    seed: int,
    limit: int | None = None,
) -> dict[str, Any]:
    """Write ``out/<name>/{HR,LQ}/*.png`` and ``manifest.json``; returns the manifest. The set
    is made in a temporary folder inside ``out`` and moved into place when complete: a
    failure (an unreadable or too small image, a full disk) leaves no partial set behind, and
    the folders of ``out``'s path that this call created are removed again."""
    created = []  # out and its ancestors that do not exist yet, deepest first
    folder = out.absolute()
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out))
    try:
        manifest = _write_set(name, hr_dir, staging, cfg=cfg, preset=preset, seed=seed, limit=limit)
        try:
            # mkdtemp makes the folder private (0700): give the set a new folder's permissions
            os.chmod(staging, 0o777 & ~imageio.current_umask())
            os.rename(staging, out / name)
        except OSError as e:
            raise DegradedSetError(f"cannot move the new set into {out / name}: {e}") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        raise
    return manifest


def _write_set(
    name: str,
    hr_dir: Path,
    set_dir: Path,
    *,
    cfg: degrade.Degradation,
    preset: str,
    seed: int,
    limit: int | None,
) -> dict[str, Any]:
    """The work of :func:`make_set`, written into ``set_dir``."""
    from hybridmoe.evaluate import EvaluationError, read_image

    images: dict[str, Any] = {}
    for path in set_images(hr_dir)[:limit]:
        try:
            source = read_image(path)
        except EvaluationError as exc:
            raise DegradedSetError(str(exc)) from exc
        hr = metrics.mod_crop(source, cfg.scale)
        if hr.shape[0] == 0 or hr.shape[1] == 0:
            raise DegradedSetError(
                f"{path} ({source.shape[0]}x{source.shape[1]}) is smaller than the scale "
                f"{cfg.scale} of preset {preset!r}; remove it from {hr_dir}"
            )
        s = image_seed(seed, name, path.stem)
        lq, params = degrade_image(hr, cfg, s)
        _write_png(set_dir / "HR" / f"{path.stem}.png", hr)
        _write_png(set_dir / "LQ" / f"{path.stem}.png", lq)
        sizes = {"size": list(hr.shape[:2])}
        if cfg.scale > 1:
            sizes.update(source_size=list(source.shape[:2]), lq_size=list(lq.shape[:2]))
        images[path.stem] = {
            "source": path.name,
            "seed": s,
            **sizes,
            "grey": hr.ndim == 2,
            **params,
        }
    manifest = {
        "format": FORMAT,
        "set": name,
        "source": str(hr_dir),
        "preset": preset,
        "scale": cfg.scale,
        "degradation": cfg.to_dict(),
        "order": order(cfg),
        "seed": seed,
        "images": images,
    }
    text = json.dumps(manifest, indent=1) + "\n"
    imageio.write_text_atomic(set_dir / "manifest.json", text, what="manifest")
    return manifest


def manifest_scale(manifest: dict[str, Any]) -> int:
    """The scale of a degraded set (HR size / LQ size): 1 for manifests written before scales
    were recorded."""
    scale = manifest.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DegradedSetError(f"the manifest of set {manifest.get('set')!r} has scale {scale!r}")
    return scale


def read_manifest(set_dir: Path) -> dict[str, Any]:
    """The manifest of a degraded set folder, checked: every image has its HR and LQ file."""
    path = set_dir / "manifest.json"
    if not path.is_file():
        raise DegradedSetError(
            f"{path} not found: {set_dir} is not a complete degraded set; make one with "
            f"hybridmoe make-degraded --out {set_dir.parent}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DegradedSetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DegradedSetError(f"{path} is not a degraded-set manifest (format {FORMAT})")
    manifest_scale(manifest)
    for stem in manifest["images"]:
        for sub in ("HR", "LQ"):
            if not (set_dir / sub / f"{stem}.png").is_file():
                raise DegradedSetError(f"{set_dir / sub / stem}.png is missing (see {path})")
    return manifest


def find_degraded_sets(root: Path) -> list[str]:
    """The names of the degraded sets under ``root`` (folders holding a manifest), sorted."""
    if not root.is_dir():
        raise DegradedSetError(
            f"degraded-set folder not found: {root}; make the sets with "
            f"hybridmoe make-degraded --out {root}"
        )
    return sorted(p.parent.name for p in root.glob("*/manifest.json"))


def _sources(args: argparse.Namespace) -> dict[str, Path]:
    """Set name -> HR folder, from the positional folders or the benchmark sets."""
    from hybridmoe import evaluate as ev

    if args.hr_dirs:
        if args.name and len(args.hr_dirs) > 1:
            raise DegradedSetError("--name names a single HR folder; give one folder")
        named = {}
        for d in args.hr_dirs:
            if d.is_file():
                raise DegradedSetError(
                    f"{d} is a file, not a folder of images; pass the folder that holds the HR "
                    f"images"
                )
            if not d.is_dir():
                raise DegradedSetError(f"HR folder not found: {d}")
            resolved = d.resolve()  # "." and ".." name the folder they stand for
            name = args.name or (resolved.parent.name if resolved.name == "HR" else resolved.name)
            if name in ("", ".", "..") or "/" in name or os.sep in name:
                raise DegradedSetError(
                    f"cannot name a set after {d} (set name {name!r}); give --name NAME"
                )
            if name in named:
                raise DegradedSetError(f"two HR folders give the set name {name!r}; use --name")
            named[name] = d
        return named
    if args.name:
        raise DegradedSetError(
            f"--name {args.name} names a single HR folder given on the command line; the "
            f"benchmark sets ({' '.join(args.sets)}) keep their names"
        )
    data = args.data if args.data is not None else ev.default_data_dir()
    try:
        return {name: ev.find_set(data, name) / "HR" for name in args.sets}
    except ev.EvaluationError as exc:
        raise DegradedSetError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    from hybridmoe.evaluate import DEFAULT_SETS

    ap = argparse.ArgumentParser(
        prog="hybridmoe make-degraded",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("hr_dirs", nargs="*", type=Path, help="HR folders (default: --sets)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (one per set)")
    ap.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), help="benchmark sets")
    from hybridmoe.evaluate import DATA_HELP

    ap.add_argument("--data", type=Path, default=None, metavar="DIR", help=DATA_HELP)
    ap.add_argument("--name", default=None, help="set name of a single HR folder")
    ap.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    ap.add_argument("--preset", choices=sorted(degrade.PRESETS), default="restore")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set only")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    cfg = degrade.PRESETS[args.preset]
    try:
        sources = _sources(args)
        for name, hr_dir in sources.items():  # before any work
            target = (args.out / name).resolve()
            if target == hr_dir.resolve() or hr_dir.resolve() in target.parents:
                raise DegradedSetError(
                    f"--out {args.out} would put the set {name} inside its HR folder {hr_dir} "
                    f"(the tools never write into their input); choose an --out outside it"
                )
            if (args.out / name).exists():
                raise DegradedSetError(
                    f"{args.out / name} already exists; choose another --out or remove it"
                )
            imageio.check_output(
                args.out / name / "manifest.json", overwrite=False, what="manifest"
            )
        for name, hr_dir in sources.items():
            manifest = make_set(
                name,
                hr_dir,
                args.out,
                cfg=cfg,
                preset=args.preset,
                seed=args.seed,
                limit=args.limit,
            )
            print(f"{name}: {len(manifest['images'])} images -> {args.out / name}")
    except (DegradedSetError, imageio.OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
