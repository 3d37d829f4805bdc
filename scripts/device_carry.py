"""Prepare what a GPU device call carries: the working tree travels with every call, beside the
ignored folders a call names, within one limit per call (64 MiB for the lent machines here).

    device_carry.py size [--carry PATH ...] [--limit-mib 64]
        bytes that would travel: the tracked and untracked-not-ignored files of the checkout
        (as git lists them; files missing from the tree count nothing) plus the carried paths;
        exit 1 when over the limit.
    device_carry.py val-parts --data DIR --out PREFIX [--sets ...] [--mib 56] [--first-mib M]
        the HR images of the benchmark sets split into folders PREFIX0, PREFIX1, ... of at most
        --mib MiB each (the first at most --first-mib), laid out as <Set>/HR/<image>, in name
        order; on the device ``cp -r PREFIXn/. /tmp/val/`` merges the parts into one benchmark
        folder (``sweep.py eval --data /tmp/val``). Refused if a PREFIXn folder exists.
    device_carry.py stash --to HOLD [PATH ...]
        move large tracked folders (default: experiments/pretrained_models docs/plots
        tests/data) out of the checkout into HOLD (created; refused if it exists), with
        HOLD/stash.json naming them; the checkout then travels without them.
    device_carry.py unstash --from HOLD
        move them back (refused, moving nothing, if any of them exists in the checkout again).

Run from the repository root. The photo-tile slices come from ``make_photo_tiles.py`` (one
slice per call, ``scripts/gpu_bg.sh pairs-bg``); TRAINING.md §5b has the whole routine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

MIB = 2**20
SETS = ("Set5", "Set14", "B100", "Urban100")
STASHED = ("experiments/pretrained_models", "docs/plots", "tests/data")
MANIFEST = "stash.json"


class UsageError(SystemExit):
    """A refused command: the message names the problem and the fix (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"device_carry: {message}")
        self.code = 2


def tree_size(root: Path) -> int:
    """Bytes of the files git would send from ``root``: tracked plus untracked-not-ignored."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise UsageError(
            f"{root} is not a git checkout ({e}); run from the repository root"
        ) from None
    names = {n for n in out.decode("utf-8", "surrogateescape").split("\0") if n}
    return sum((root / n).stat().st_size for n in names if (root / n).is_file())


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cmd_size(args: argparse.Namespace) -> int:
    root = Path.cwd()
    total = tree_size(root)
    print(f"working tree: {total / MIB:.1f} MiB")
    for name in args.carry:
        path = root / name
        if not path.exists():
            raise UsageError(f"--carry {name}: no such file or folder under {root}")
        size = path_size(path)
        total += size
        print(f"carry {name}: {size / MIB:.1f} MiB")
    over = total > args.limit_mib * MIB
    verdict = "over" if over else "within"
    print(f"total: {total / MIB:.1f} MiB, {verdict} the {args.limit_mib} MiB a call")
    return 1 if over else 0


def split_parts(files: Sequence[tuple[str, int]], limit: int, first_limit: int) -> list[list[str]]:
    """``(name, size)`` in order, cut into consecutive parts of at most ``limit`` bytes (the
    first at most ``first_limit``); a file larger than its part's limit is refused."""
    parts: list[list[str]] = [[]]
    used = 0
    for name, size in files:
        cap = first_limit if len(parts) == 1 else limit
        if used + size > cap and parts[-1]:
            parts.append([])
            used, cap = 0, limit
        if size > cap:
            raise UsageError(
                f"{name} ({size / MIB:.1f} MiB) does not fit in a part of {cap / MIB:.1f} MiB; "
                "raise --mib (or --first-mib)"
            )
        parts[-1].append(name)
        used += size
    return parts


def cmd_val_parts(args: argparse.Namespace) -> int:
    data = Path(args.data)
    files: list[tuple[str, int]] = []
    for name in args.sets:
        hr = data / name / "HR"
        if not hr.is_dir():
            raise UsageError(f"{hr}: no such folder; --data holds the sets as <Set>/HR/*.png")
        images = sorted(p for p in hr.iterdir() if p.is_file() and not p.name.startswith("."))
        if not images:
            raise UsageError(f"{hr}: no images")
        files += [(f"{name}/HR/{p.name}", p.stat().st_size) for p in images]
    first = args.mib if args.first_mib is None else args.first_mib
    parts = split_parts(files, args.mib * MIB, first * MIB)
    outs = [Path(f"{args.out}{i}") for i in range(len(parts))]
    taken = [str(o) for o in outs if o.exists()]
    if taken:
        raise UsageError(f"{', '.join(taken)} exist(s); remove them or choose another --out")
    for out, part in zip(outs, parts, strict=True):
        tmp = out.with_name(out.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel in part:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data / rel, tmp / rel)
        tmp.rename(out)
        print(f"{out}: {len(part)} images, {path_size(out) / MIB:.1f} MiB")
    return 0


def cmd_stash(args: argparse.Namespace) -> int:
    root, hold = Path.cwd(), Path(args.to)
    if hold.exists():
        raise UsageError(f"{hold} exists; unstash from it first, or choose another --to")
    paths = args.paths or list(STASHED)
    missing = [p for p in paths if not (root / p).exists()]
    if missing:
        raise UsageError(f"not in the checkout: {', '.join(missing)} (already stashed?)")
    hold.mkdir(parents=True)
    (hold / MANIFEST).write_text(json.dumps({"root": str(root), "paths": paths}, indent=1))
    for i, rel in enumerate(paths):
        shutil.move(root / rel, hold / str(i))
        print(f"stashed {rel}")
    return 0


def cmd_unstash(args: argparse.Namespace) -> int:
    root, hold = Path.cwd(), Path(args.source)
    manifest = hold / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{manifest}: no such file; give the folder that stash wrote")
    stashed = json.loads(manifest.read_text())
    if Path(stashed["root"]).resolve() != root.resolve():
        raise UsageError(f"{hold} holds folders of {stashed['root']}; run unstash from there")
    paths = stashed["paths"]
    back = [p for p in paths if (root / p).exists()]
    if back:
        raise UsageError(f"in the checkout again: {', '.join(back)}; move them aside first")
    for i, rel in enumerate(paths):
        if not (hold / str(i)).exists():
            raise UsageError(f"{hold / str(i)} ({rel}) is missing from the stash")
    for i, rel in enumerate(paths):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(hold / str(i), root / rel)
        print(f"restored {rel}")
    manifest.unlink()
    hold.rmdir()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="device_carry.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("size", help="what a call would send")
    s.add_argument("--carry", nargs="*", default=[], help="carried paths (relative to the root)")
    s.add_argument("--limit-mib", type=int, default=64)
    s.set_defaults(fn=cmd_size)
    v = sub.add_parser("val-parts", help="benchmark HR images in carry-sized parts")
    v.add_argument("--data", required=True, help="folder holding <Set>/HR/*.png")
    v.add_argument("--out", required=True, help="prefix of the part folders, e.g. .ref/v")
    v.add_argument("--sets", nargs="+", default=list(SETS))
    v.add_argument("--mib", type=int, default=56, help="largest part (default: 56)")
    v.add_argument("--first-mib", type=int, help="largest first part (default: --mib)")
    v.set_defaults(fn=cmd_val_parts)
    st = sub.add_parser("stash", help="move large tracked folders out of the checkout")
    st.add_argument("--to", required=True)
    st.add_argument("paths", nargs="*", help=f"default: {' '.join(STASHED)}")
    st.set_defaults(fn=cmd_stash)
    un = sub.add_parser("unstash", help="move them back")
    un.add_argument("--from", dest="source", required=True)
    un.set_defaults(fn=cmd_unstash)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
