"""Make paired HR/LR training or validation data with MATLAB-compatible bicubic downscaling.

Every image of the HR folders (PNG, JPEG, WebP, BMP, TIFF) is mod-cropped to a multiple of the
scale and written as ``OUT/hr/<name>.png``; its bicubic-downscaled version (antialiased,
a = -0.5, as MATLAB's ``imresize``) goes to ``OUT/lr/<name>.png`` — the layout traiNNer-redux's
``pairedimagedataset`` reads::

    hybridmoe make-pairs ../shared/data/train/T91 ../shared/data/train/BSDS200 \\
        --out datasets/train_x4 --scale 4
    hybridmoe make-pairs ../shared/data/benchmark/Set5/HR --out datasets/val_x2 \\
        --scale 2 --check-against ../shared/data/benchmark/Set5/LR_bicubic/X2

``--check-against DIR`` compares each LR with ``DIR/<name>x<scale>.png`` (the benchmark
convention) or ``DIR/<name>.png`` and fails on any difference. A ``DIR`` that holds the reference
of none of the images (the folder of another scale, say ``X2`` with ``--scale 3``) is an error
that says what it holds, before any work.

By default an image whose LR side would be shorter than the ``lq_size`` of the option templates
at that scale is skipped, with a warning: traiNNer-redux's training crop cannot be taken from it
(its data loader worker dies on ``empty range for randrange()``). ``--min-lr-size 1`` keeps every
image (validation sets, which are not cropped). When no image is large enough, nothing is
written and the command fails.

Every input is checked before any work: a file of an image suffix that is not a readable image,
or is an animated one (animated WebP, APNG), is an error naming it. The pairs are made in a
temporary folder inside ``OUT`` that replaces ``OUT/hr`` and ``OUT/lr`` only once every pair is
written (and matches ``--check-against``); on any failure it is removed and ``OUT`` is left as
it was. An ``OUT`` that already holds pairs is refused unless ``--overwrite`` is given, which
replaces its ``hr/`` and ``lr/`` as a whole. An ``OUT`` that is an input folder or lies inside
one (symlinks resolved) is always refused: the tools never write into their input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hybridmoe.imageio import (
    ImageReadError,
    check_still,
    folder_problem,
    left_out_note,
    visible_files,
)
from hybridmoe.metrics import imresize_matlab_uint8, mod_crop
from hybridmoe.options import MEASURED_LQ

EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
SUBDIRS = ("hr", "lr")

# make_pair's result kinds
OK, SKIP, UNREADABLE, MISMATCH, WRITE_FAILED = "", "skip", "unreadable", "mismatch", "write"


class PairsError(Exception):
    """Bad input or output, or pairs that cannot be made; the message names the problem and
    the fix (one line per problem). ``status``: the exit status (2: bad input)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def template_lq_size(scale: int) -> int:
    """The ``lq_size`` (LR training crop) of the option templates at ``scale``."""
    return MEASURED_LQ.get(scale, max(MEASURED_LQ.values()))


def _reason(error: BaseException) -> str:
    """Why an image could not be read, in a few words."""
    if isinstance(error, UnidentifiedImageError):
        return "unrecognised content"
    if isinstance(error, Image.DecompressionBombError):
        return "larger than Pillow's decompression-bomb limit"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    return f"corrupt or truncated: {text or type(error).__name__}"


def unreadable(path: Path, error: BaseException) -> str:
    """The error message for an input image that cannot be read."""
    return unreadable_because(path, _reason(error))


def unreadable_because(path: Path, reason: str) -> str:
    """The error message for an input image that cannot be read, for ``reason``."""
    return f"{path} is not a readable image ({reason}); remove it or move it out of the folder"


def read_rgb(path: Path) -> np.ndarray:
    """``path`` as uint8 ``(H, W, 3)``, read as the evaluator reads it
    (:func:`hybridmoe.evaluate.read_image`: 16-bit and float images at their own white level,
    transparent pixels refused), greyscale copied into three channels; so the pairs' LR is the
    evaluator's LR of the same file. Raises :class:`PairsError` with the file and the fix."""
    from hybridmoe.evaluate import EvaluationError, read_image

    try:
        img = read_image(path)
    except EvaluationError as e:
        text = str(e)
        prefix = f"cannot read image {path}: "
        if text.startswith(prefix):
            raise PairsError(unreadable_because(path, text.removeprefix(prefix))) from None
        raise PairsError(f"{text}, or move it out of the folder") from None
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header; :class:`PairsError` if it is not an image or
    is animated (:func:`hybridmoe.imageio.check_still`)."""
    try:
        with Image.open(path) as im:
            check_still(im)
            return im.size
    except ImageReadError as e:
        raise PairsError(unreadable_because(path, str(e))) from None
    except Exception as e:  # Pillow raises many kinds of exception on bad files
        raise PairsError(unreadable(path, e)) from e


def make_pair(
    src: Path, out: Path, scale: int, check: Path | None, min_lr: int = 1
) -> tuple[str, str]:
    """Write the HR/LR pair of one image into ``out/hr`` and ``out/lr``.

    Returns ``(kind, message)``: kind ``OK`` (written), ``SKIP`` (too small for ``min_lr``),
    ``UNREADABLE``, ``WRITE_FAILED`` or ``MISMATCH`` (differs from ``--check-against``).
    """
    try:
        rgb = read_rgb(src)
    except PairsError as e:
        return UNREADABLE, str(e)
    hr = mod_crop(rgb, scale)
    if min(hr.shape[:2]) < scale * max(1, min_lr):
        return SKIP, ""
    lr = imresize_matlab_uint8(hr, 1.0 / scale)
    try:
        Image.fromarray(hr).save(out / "hr" / f"{src.stem}.png")
        Image.fromarray(lr).save(out / "lr" / f"{src.stem}.png")
    except OSError as e:
        return WRITE_FAILED, f"cannot write the pair of {src}: {e}"
    if check is not None:
        problem = compare_lr(src, lr, scale, check)
        if problem:
            return MISMATCH, problem
    return OK, ""


def compare_lr(src: Path, lr: np.ndarray, scale: int, check: Path) -> str:
    """'' if ``lr`` equals the reference LR of ``src`` in ``check``, else what is wrong."""
    ref_path = reference_path(src, scale, check)
    if ref_path is None:
        return f"{src.stem}: no reference LR in {check}"
    try:
        ref = read_rgb(ref_path)
    except PairsError as e:
        return f"{src.stem}: reference LR unreadable: {e}"
    if ref.shape != lr.shape or not np.array_equal(ref, lr):
        return f"{src.stem}: LR differs from {ref_path}"
    return ""


def reference_path(src: Path, scale: int, check: Path) -> Path | None:
    """The reference LR of ``src`` in ``check`` (``<name>x<scale>.png`` or ``<name>.png``)."""
    return next(
        (p for p in (check / f"{src.stem}x{scale}.png", check / f"{src.stem}.png") if p.is_file()),
        None,
    )


def check_folder_problem(files: list[Path], scale: int, check: Path) -> str | None:
    """The error message when ``check`` holds a reference LR for none of ``files`` (the folder
    of another scale, or of another set), else None: then a missing reference is reported per
    image."""
    if not files or any(reference_path(f, scale, check) for f in files):
        return None
    first = files[0].stem
    expected = f"expected names like {first}x{scale}.png or {first}.png"
    try:
        held = sorted(p.name for p in check.iterdir() if p.is_file())
    except OSError as e:
        return f"cannot read --check-against {check}: {e.strerror or e}"
    stems = {f.stem for f in files}
    named = [  # (file name, scale) of the files named <input name>x<N>.png
        (name, int(digits))
        for name in held
        for stem, sep, digits in [Path(name).stem.rpartition("x")]
        if name.endswith(".png") and sep and stem in stems and digits.isdigit()
    ]
    if named:
        like, other = named[0]
        what = (
            f"it holds files named like {like}, so it looks like the x{other} folder: pass the "
            f"folder of the x{scale} LR images (e.g. LR_bicubic/X{scale}), or --scale {other}"
        )
    elif held:
        what = (
            f"it holds {len(held)} file(s) (e.g. {held[0]}), none named after an input image: "
            f"pass the folder of the x{scale} LR images of these HR images"
        )
    else:
        what = f"it holds no files: pass the folder of the x{scale} LR images of these HR images"
    return (
        f"--check-against {check} has no reference LR for any of the {len(files)} image(s) at "
        f"x{scale} ({expected}); {what}"
    )


def input_files(hr_dirs: list[Path]) -> tuple[list[Path], list[str]]:
    """The image files of the HR folders (by suffix), each folder sorted by name, and a note
    per folder on the other files it holds (hidden ones aside), which are left out."""
    files: list[Path] = []
    notes: list[str] = []
    for d in hr_dirs:
        if d.is_file():
            raise PairsError(
                f"{d} is a file, not a folder of images; pass the folder that holds the HR images"
            )
        if not d.is_dir():
            raise PairsError(f"HR folder not found: {d}")
        entries = visible_files(d)
        files += [p for p in entries if p.suffix.lower() in EXTS]
        others = [p for p in entries if p.suffix.lower() not in EXTS]
        if others:
            kinds = ", ".join(x.lstrip(".").upper() for x in sorted(EXTS))
            notes.append(f"{d}: " + left_out_note(others, d, f"images ({kinds})"))
    if not files:
        raise PairsError(
            "no images found in "
            + ", ".join(map(str, hr_dirs))
            + f" (suffixes: {', '.join(sorted(EXTS))})"
        )
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})[0]
        raise PairsError(
            f"two input images share the file name {dup!r}; their pairs would overwrite each "
            f"other. Rename one"
        )
    return files, notes


def _inside(path: Path, folder: Path) -> bool:
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


def check_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot or must not be written, before any work."""
    for src in inputs:
        if _inside(out, src):
            where = "is" if out.resolve() == src.resolve() else "lies inside"
            raise PairsError(
                f"--out {out} {where} the input folder {src}; the pairs would be written among "
                f"the input images (the tools never write into their input). Choose an --out "
                f"outside it"
            )
    for src in inputs:
        for sub in SUBDIRS:
            if _inside(src, out / sub):
                raise PairsError(
                    f"the input folder {src} would be replaced by the pairs written to "
                    f"{out / sub}; choose another --out"
                )
    if out.exists() and not out.is_dir():
        raise PairsError(f"--out {out} is a file, not a folder; choose another --out")
    problem = folder_problem(out)
    if problem is not None:
        raise PairsError(f"cannot write --out {out}: {problem}; choose another --out")
    for sub in SUBDIRS:
        p = out / sub
        if (p.exists() or p.is_symlink()) and not p.is_dir():
            raise PairsError(
                f"{p} is a file, not a folder of pairs; remove it or choose another --out"
            )
        if p.is_dir() and any(p.iterdir()) and not overwrite:
            raise PairsError(
                f"{out} already holds pairs ({out / 'hr'}, {out / 'lr'}); pass --overwrite to "
                f"replace them, or choose another --out"
            )


def too_small(sizes: dict[Path, tuple[int, int]], scale: int, min_lr: int, flag: bool) -> str:
    """The error message when every image is too small for ``scale`` and ``min_lr``."""
    shortest = max(min(s) for s in sizes.values())
    need = scale * min_lr
    why = f"--min-lr-size {min_lr}" + ("" if flag else f", the default at x{scale}")
    if min_lr > 1 and shortest >= scale:
        fix = "pass --min-lr-size 1 to keep small images (validation sets), use a smaller "
        fix += "--scale, or larger images"
    else:
        fix = "use a smaller --scale or larger images"
    return (
        f"no pair could be made: at x{scale} an LR side of at least {min_lr} px ({why}) needs "
        f"HR sides of at least {need} px, and the largest shorter side among the "
        f"{len(sizes)} image(s) is {shortest} px; {fix}"
    )


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    p = path.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _commit(staging: Path, out: Path) -> None:
    """Move ``staging/hr`` and ``staging/lr`` to ``out``; the old ones (if any) go into
    ``staging`` (removed with it). On a failure the old ones are put back."""
    moved: list[tuple[Path, Path]] = []
    try:
        for sub in SUBDIRS:
            if (out / sub).is_dir():
                os.rename(out / sub, staging / f"old-{sub}")
                moved.append((out / sub, staging / f"old-{sub}"))
        for sub in SUBDIRS:
            os.rename(staging / sub, out / sub)
            moved.append((staging / sub, out / sub))
    except OSError as e:
        for src, dst in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(dst, src)
        raise PairsError(f"cannot move the new pairs into {out}: {e}", status=1) from e


def write_pairs(
    files: list[Path], out: Path, *, scale: int, check: Path | None, min_lr: int, workers: int
) -> tuple[int, int]:
    """Make the pairs of ``files`` in a temporary folder inside ``out`` and move them into
    place; returns ``(written, skipped)``. Raises :class:`PairsError` (nothing changed in
    ``out``; folders this call created are removed) on an unreadable input, a write failure or
    a ``--check-against`` difference; the message holds one line per problem."""
    created = _missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".make-pairs.", suffix=".partial", dir=out))
    except OSError as e:
        raise PairsError(f"cannot create --out {out}: {e}") from e
    done = False
    try:
        for sub in SUBDIRS:
            (staging / sub).mkdir()
        n = len(files)
        try:
            with ProcessPoolExecutor(max_workers=workers or None) as pool:
                results = list(
                    pool.map(
                        make_pair, files, [staging] * n, [scale] * n, [check] * n, [min_lr] * n
                    )
                )
        except BrokenProcessPool as e:
            raise PairsError(
                f"a worker process died while making the pairs ({e}); the machine may be out of "
                f"memory: try fewer --workers",
                status=1,
            ) from e
        problems = [msg for kind, msg in results if kind not in (OK, SKIP)]
        if problems:  # bad input: 2; a write failure or a check difference: 1
            bad_input = any(kind == UNREADABLE for kind, _ in results)
            problems.append(f"no pairs written to {out}")
            raise PairsError("\n".join(problems), status=2 if bad_input else 1)
        _commit(staging, out)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break
    kinds = [kind for kind, _ in results]
    return kinds.count(OK), kinds.count(SKIP)


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
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the hr/ and lr/ of an --out that already holds pairs",
    )
    args = ap.parse_args(argv)
    if args.scale < 2:
        ap.error(f"--scale must be an integer >= 2, got {args.scale}")
    if args.min_lr_size is not None and args.min_lr_size < 1:
        ap.error(f"--min-lr-size must be >= 1 (1 keeps every image), got {args.min_lr_size}")
    if args.workers < 0:
        ap.error(f"--workers must be >= 0 (0: all cores), got {args.workers}")
    min_lr = template_lq_size(args.scale) if args.min_lr_size is None else args.min_lr_size
    check = args.check_against
    try:
        files, notes = input_files(args.hr_dirs)
        for note in notes:
            print("warning:", note, file=sys.stderr)
        if check is not None and not check.is_dir():
            raise PairsError(f"--check-against {check} is not a folder of LR images")
        check_output(args.out, [*args.hr_dirs, *([check] if check else [])], args.overwrite)
        sizes: dict[Path, tuple[int, int]] = {}
        bad: list[str] = []
        for f in files:
            try:
                sizes[f] = image_size(f)
            except PairsError as e:
                bad.append(str(e))
        if bad:
            raise PairsError("\n".join(bad))
        # mod-cropping keeps a side >= scale * min_lr (a multiple of scale) at that length
        keep = [f for f in files if min(sizes[f]) >= args.scale * min_lr]
        if not keep:
            raise PairsError(too_small(sizes, args.scale, min_lr, args.min_lr_size is not None))
        problem = None if check is None else check_folder_problem(keep, args.scale, check)
        if problem is not None:
            raise PairsError(problem)
        written, skipped = write_pairs(
            keep, args.out, scale=args.scale, check=check, min_lr=min_lr, workers=args.workers
        )
    except PairsError as e:
        for line in str(e).splitlines():
            print("error:", line, file=sys.stderr)
        return e.status
    skipped += len(files) - len(keep)
    print(f"{written} pairs written to {args.out} (x{args.scale})")
    if skipped:
        print(
            f"warning: {skipped} image(s) skipped: their LR side would be shorter than {min_lr} px "
            f"(the training crop lq_size); pass --min-lr-size 1 to keep them (validation sets)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
