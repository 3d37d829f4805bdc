"""Cut clean high-resolution training tiles from the free photo set and pack them into slices.

Input: the photographs listed in a manifest (``manifest.tsv``: kind, source, blob_or_path,
orig_path, w, h, bytes, licence), extracted as ``RAW/<owner+name>/<blob12>.<ext>`` (git rows) or
``RAW/deb+<package>/<file name>`` (Debian rows). For every photo this script

1. checks the file against the manifest (byte count, pixel size before EXIF rotation and, for
   git rows, the git blob hash); a photo that is missing or differs is skipped and reported;
2. applies the EXIF orientation, converts to RGB (CMYK, L, P, 16-bit grey ...; ICC profiles are
   ignored) and downscales by exactly 0.5 with an antialiasing Lanczos filter, which removes
   the JPEG compression artefacts of the originals;
3. lays a centred, non-overlapping grid of ``--tile`` px squares over the result, drops near-flat
   cells (sky, smooth gradients, blur: low grey-level standard deviation or low mean absolute
   gradient) and keeps at most ``--max-per-photo`` of the rest, chosen by an RNG seeded with
   ``--seed`` and the photo's hash (so the choice does not depend on processing order);
4. writes each tile as JPEG quality 95 with 4:4:4 chroma, named
   ``<owner+name>_<blob12>_<y>_<x>.jpg`` (``y``/``x``: its corner in the downscaled photo).

All tiles are then shuffled with ``--seed`` and packed into folders ``slice_00/``,
``slice_01/``, ... of at most ``--slice-mib`` MiB each (tiles plus the slice's own
``tiles.tsv``), so every slice is a random sample of all sources and can be uploaded on its
own. With ``--only LIST`` (a ``tiles.tsv`` or a training subset of one) only the listed
tiles are packed, so the slices hold exactly that subset; a listed tile that is not cut (other
photos or options) stops the run with its name. ``OUT/tiles.tsv`` lists every tile with its
source, blob, original path, licence and slice
(the attribution record for CC-BY / CC-BY-SA photos); ``OUT/skipped.tsv`` lists photos that
could not be used. ``OUT/SLICE0_READY`` (the tile count of ``slice_00``) appears as soon as the
first slice is complete.

Bad input (a missing or malformed manifest or ``--only`` list, a RAW folder holding none of the
manifest's photos) and a run that cuts no tile (every photo skipped, smaller than ``--tile`` or
flat) are one ``error:`` line and exit status 2, and leave no output folder behind::

    MIRROR=/path/to/mirrors bash data/photos/extract.sh data/photos/manifest.tsv photos_raw
    python scripts/make_photo_tiles.py data/photos/manifest.tsv photos_raw --out photo_tiles
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MIB = 1 << 20
MANIFEST_COLUMNS = ("kind", "source", "blob_or_path", "orig_path", "w", "h", "bytes", "licence")
TSV_HEADER = ("tile", "source", "blob", "orig_path", "licence", "slice")


class TilesError(Exception):
    """Bad input, or no tile to write; the message says why and what to do."""


@dataclass(frozen=True)
class Photo:
    """One manifest row."""

    kind: str
    source: str
    blob_or_path: str
    orig_path: str
    width: int
    height: int
    nbytes: int
    licence: str

    @property
    def source_dir(self) -> str:
        """Folder name of the source under the extraction root (``owner+name`` / ``deb+pkg``)."""
        return self.source.replace("/", "+") if self.kind == "git" else f"deb+{self.source}"

    def raw_path(self, raw: Path) -> Path:
        """Where the extraction script put this photo."""
        if self.kind == "git":
            ext = self.orig_path.rsplit(".", 1)[-1].lower()
            return raw / self.source_dir / f"{self.blob_or_path[:12]}.{ext}"
        return raw / self.source_dir / Path(self.blob_or_path).name


@dataclass(frozen=True)
class TileParams:
    """How tiles are cut and which are kept."""

    tile: int = 384
    max_per_photo: int = 24
    min_std: float = 10.0
    min_grad: float = 1.5
    seed: int = 0
    quality: int = 95


def _read_tsv(path: Path, what: str, expected: str) -> str:
    """The text of a tab-separated file, or :class:`TilesError` saying why it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TilesError(f"cannot read the {what} {path}: {e.strerror or e}; {expected}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TilesError(f"{path} is not a {what} (not UTF-8 text); {expected}") from None
    if "\0" in text:
        raise TilesError(f"{path} is not a {what} (binary data); {expected}")
    return text


def read_manifest(path: Path) -> list[Photo]:
    """Parse the tab-separated manifest; empty fields (e.g. orig_path of Debian rows) are kept."""
    header = "/".join(MANIFEST_COLUMNS)
    give = f"give the manifest.tsv of the photo set (header {header})"
    text = _read_tsv(path, "manifest", give)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    if not rows or tuple(rows[0]) != MANIFEST_COLUMNS:
        raise TilesError(f"{path}: expected the header {header}; {give}")
    photos = []
    for i, r in enumerate(rows[1:], start=2):
        try:
            if len(r) != len(MANIFEST_COLUMNS) or r[0] not in ("git", "deb"):
                raise ValueError
            w, h, n = int(r[4]), int(r[5]), int(r[6])
        except ValueError:
            raise TilesError(
                f"{path}:{i}: malformed row (need 8 tab-separated fields, kind git|deb, "
                f"integer w, h, bytes)"
            ) from None
        photos.append(Photo(r[0], r[1], r[2], r[3], w, h, n, r[7]))
    if not photos:
        raise TilesError(f"{path} lists no photos; {give}")
    return photos


def git_blob_sha(data: bytes) -> str:
    """The git object id of ``data`` stored as a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB version of any Pillow image; ICC profiles are ignored, 16/32-bit grey is rescaled:
    16-bit grey (``I;16*``) from its white level 65535; 32-bit integer grey (``I``, which has
    none) from 65535 when a value exceeds 255, else from 255; float grey (``F``) from 255."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        sixteen = im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255)
        peak = 65535.0 if sixteen else 255.0
        a = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        im = Image.fromarray(a, "L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def downscale_half(im: Image.Image) -> Image.Image:
    """Crop to even sides and shrink by exactly 0.5 with an antialiased Lanczos filter."""
    w, h = im.size
    if w < 2 or h < 2:
        raise ValueError(f"image of {w}x{h} px is too small to downscale by 2")
    if w % 2 or h % 2:
        im = im.crop((0, 0, w - w % 2, h - h % 2))
    return im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)


def load_clean(data: bytes) -> Image.Image:
    """Decode a photo, apply its EXIF orientation, convert to RGB and downscale by 0.5."""
    with Image.open(io.BytesIO(data)) as im:
        return downscale_half(to_rgb(ImageOps.exif_transpose(im)))


def grid(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of a centred, non-overlapping grid of ``tile`` px squares."""
    ny, nx = height // tile, width // tile
    y0, x0 = (height - ny * tile) // 2, (width - nx * tile) // 2
    return [(y0 + i * tile, x0 + j * tile) for i in range(ny) for j in range(nx)]


def flatness(rgb: np.ndarray) -> tuple[float, float]:
    """Grey-level standard deviation and mean absolute gradient (0..255 scale) of a tile."""
    g = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grad = (np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()) / 2
    return float(g.std()), float(grad)


def select_tiles(img: Image.Image, key: str, p: TileParams) -> list[tuple[int, int]]:
    """Corners of the kept tiles: non-flat grid cells, at most ``p.max_per_photo``, chosen by an
    RNG seeded with ``p.seed`` and ``key``; returned in row-major order."""
    arr = np.asarray(img)
    keep = []
    for y, x in grid(arr.shape[0], arr.shape[1], p.tile):
        std, grad = flatness(arr[y : y + p.tile, x : x + p.tile])
        if std >= p.min_std and grad >= p.min_grad:
            keep.append((y, x))
    if len(keep) > p.max_per_photo:
        keep = sorted(random.Random(f"{p.seed}:{key}").sample(keep, p.max_per_photo))
    return keep


def encode_tile(tile: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of a tile: given quality, 4:4:4 chroma, no ICC/EXIF metadata."""
    buf = io.BytesIO()
    tile.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def tile_name(source_dir: str, blob: str, y: int, x: int) -> str:
    """File name of a tile."""
    return f"{source_dir}_{blob[:12]}_{y:04d}_{x:04d}.jpg"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, so no half-written file remains."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_photo(photo: Photo, data: bytes, size: tuple[int, int]) -> str:
    """Empty string if the file matches its manifest row, else what differs."""
    if len(data) != photo.nbytes:
        return f"{len(data)} bytes, manifest says {photo.nbytes}"
    if size != (photo.width, photo.height):
        return f"{size[0]}x{size[1]} px, manifest says {photo.width}x{photo.height}"
    if photo.kind == "git" and git_blob_sha(data) != photo.blob_or_path:
        return "git blob hash differs from the manifest"
    return ""


def process_photo(photo: Photo, raw: Path, staging: Path, p: TileParams) -> dict:
    """Verify, clean and tile one photo; tiles go to ``staging``. Returns a result record."""
    path = photo.raw_path(raw)
    if not path.is_file():
        return {"photo": photo, "error": f"missing file {path}"}
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            problem = check_photo(photo, data, im.size)
        if problem:
            return {"photo": photo, "error": f"{path}: {problem}"}
        img = load_clean(data)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return {"photo": photo, "error": f"{path}: cannot decode ({e})"}
    blob = photo.blob_or_path if photo.kind == "git" else git_blob_sha(data)
    tiles = []
    for y, x in select_tiles(img, blob, p):
        name = tile_name(photo.source_dir, blob, y, x)
        jpg = encode_tile(img.crop((x, y, x + p.tile, y + p.tile)), p.quality)
        write_atomic(staging / name, jpg)
        tiles.append((name, len(jpg)))
    return {
        "photo": photo,
        "blob": blob,
        "tiles": tiles,
        "size": img.size,
        "mpix": img.width * img.height / 1e6,
    }


def slice_name(idx: int) -> str:
    """Folder name of slice ``idx`` (also its column in ``tiles.tsv``)."""
    return f"slice_{idx:02d}"


def tsv_row_bytes(row: Sequence[str]) -> int:
    """UTF-8 bytes that ``row`` takes as one line of a ``tiles.tsv`` (tabs and newline included)."""
    return len(("\t".join(row) + "\n").encode("utf-8"))


def _tsv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    """Tab-separated text with the standard header."""
    lines = ["\t".join(TSV_HEADER)] + ["\t".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def pack_slices(
    tiles: Sequence[tuple[str, int]],
    limit: int,
    seed: int,
    row_bytes: Callable[[str, int], int] | None = None,
) -> list[list[str]]:
    """Shuffle ``(name, size)`` pairs with ``seed`` (independently of input order) and fill
    slices in turn, each holding at most ``limit`` bytes; ``row_bytes(name, idx)`` is what the
    tile's row takes in the index file of slice ``idx`` and counts too."""

    def cost(name: str, size: int, idx: int) -> int:
        return size + (row_bytes(name, idx) if row_bytes is not None else 0)

    order = sorted(tiles)
    random.Random(seed).shuffle(order)
    slices: list[list[str]] = []
    used = 0
    for name, size in order:
        if not slices or used + cost(name, size, len(slices) - 1) > limit:
            slices.append([])
            used = 0
        used += cost(name, size, len(slices) - 1)
        if used > limit:
            raise ValueError(f"tile {name} ({size} bytes) alone exceeds the slice limit {limit}")
        slices[-1].append(name)
    return slices


def _prepare_out(out: Path) -> Path:
    """Create OUT; refuse to mix with the results of an earlier run."""
    if out.exists() and any(
        (out / n).exists() for n in ("tiles.tsv", "SLICE0_READY", "slice_00", "slice_00.part")
    ):
        raise TilesError(f"{out} already holds tiles from an earlier run: remove it or use --out")
    staging = out / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _write_slice(out: Path, idx: int, names: list[str], staging: Path, rows: dict) -> int:
    """Move the slice's tiles from staging into ``slice_NN`` with its ``tiles.tsv``; return the
    slice's size in bytes."""
    part = out / f"{slice_name(idx)}.part"
    part.mkdir()
    for n in names:
        os.replace(staging / n, part / n)
    write_atomic(part / "tiles.tsv", _tsv_bytes(rows[n] for n in sorted(names)))
    size = sum(f.stat().st_size for f in part.iterdir())
    os.replace(part, out / slice_name(idx))
    return size


def read_tile_list(path: Path) -> set[str]:
    """The tile names of a tile list (a ``tiles.tsv`` or a training subset such as
    ``photo3234_tiles.tsv``: tab-separated, a ``tile`` column)."""
    give = "give a tiles.tsv written by this script"
    text = _read_tsv(path, "tile list (--only)", give)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    if "tile" not in (reader.fieldnames or []):
        raise TilesError(f"{path}: no 'tile' column; {give}")
    names = {row["tile"] for row in reader}
    if not names:
        raise TilesError(f"{path} lists no tiles; {give}")
    return names


def keep_listed(
    tiles: list[tuple[str, int]], only: set[str], staging: Path, list_path: Path
) -> list[tuple[str, int]]:
    """The tiles named in ``only``; the others are deleted from ``staging``. A listed tile that
    was not cut means other photos or options than the list was made with: refused by name."""
    missing = sorted(only - {name for name, _ in tiles})
    if missing:
        shutil.rmtree(staging)
        raise TilesError(
            f"{len(missing)} tile(s) of {list_path} were not cut from these photos (first: "
            f"{missing[0]}): use the manifest, photos and options (--tile, --max-per-photo, "
            "--min-std, --min-grad, --seed) the list was made with"
        )
    for name, _ in tiles:
        if name not in only:
            (staging / name).unlink()
    return [(name, size) for name, size in tiles if name in only]


def why_no_tiles(results: list[dict], p: TileParams, manifest: Path, raw: Path) -> str:
    """Why these photo results gave no tile, and what to do."""
    used = [r for r in results if "error" not in r]
    if not used:
        return (
            f"no photo of {manifest} could be used: all {len(results)} were skipped (first: "
            f"{results[0]['error']}); give the photos extract.sh extracted for this manifest"
        )
    if not any(grid(h, w, p.tile) for w, h in (r["size"] for r in used)):
        w, h = max((r["size"] for r in used), key=min)
        return (
            f"every photo is smaller than --tile {p.tile} px after the 0.5x downscale (the "
            f"largest: {w}x{h} px); give a --tile of at most {min(w, h)}"
        )
    return (
        f"every tile cell of the {len(used)} usable photo(s) is near-flat; lower --min-std "
        f"({p.min_std:g}) or --min-grad ({p.min_grad:g})"
    )


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its ancestors that does not exist yet (None: it exists)."""
    missing, p = None, path.absolute()
    while not p.exists() and p != p.parent:
        missing, p = p, p.parent
    return missing


def run(args: argparse.Namespace) -> int:
    """Build the tiles and slices; return the process exit code."""
    t0 = time.time()
    p = TileParams(args.tile, args.max_per_photo, args.min_std, args.min_grad, args.seed)
    photos = read_manifest(args.manifest)
    only = read_tile_list(args.only) if args.only else None
    if not any(ph.raw_path(args.raw).is_file() for ph in photos):
        raise TilesError(
            f"none of the {len(photos)} photos of {args.manifest} is in {args.raw} (e.g. no "
            f"{photos[0].raw_path(args.raw)}); give the folder extract.sh extracted them into"
        )
    created = _first_missing(args.out)
    staging = _prepare_out(args.out)
    try:  # until the first slice is written, a failure leaves nothing behind
        results = []
        with ProcessPoolExecutor(max_workers=max(1, min(2, args.workers))) as ex:
            futs = [ex.submit(process_photo, ph, args.raw, staging, p) for ph in photos]
            for i, f in enumerate(futs, start=1):
                results.append(f.result())
                if i % 50 == 0:
                    print(f"  {i}/{len(photos)} photos, {time.time() - t0:.0f} s", flush=True)
        used = [r for r in results if "error" not in r]
        skipped = [r for r in results if "error" in r]
        rows, tiles = {}, []
        for r in used:
            ph = r["photo"]
            for name, size in r["tiles"]:
                source = ph.orig_path or ph.blob_or_path
                rows[name] = [name, ph.source, r["blob"], source, ph.licence]
                tiles.append((name, size))
        if not tiles:
            raise TilesError(why_no_tiles(results, p, args.manifest, args.raw))
        if only is not None:
            tiles = keep_listed(tiles, only, staging, args.only)
            rows = {name: rows[name] for name, _ in tiles}
    except BaseException:
        shutil.rmtree(created if created is not None else staging, ignore_errors=True)
        raise
    # each slice: its tiles, and its tiles.tsv (the header, and a row per tile naming the slice)
    limit = args.slice_mib * MIB - tsv_row_bytes(TSV_HEADER)
    slices = pack_slices(
        tiles, limit, args.seed, lambda name, idx: tsv_row_bytes([*rows[name], slice_name(idx)])
    )
    sizes = []
    for idx, names in enumerate(slices):
        for n in names:
            rows[n].append(slice_name(idx))
        sizes.append(_write_slice(args.out, idx, names, staging, rows))
        if sizes[-1] > args.slice_mib * MIB:
            raise SystemExit(f"{slice_name(idx)} is {sizes[-1]} bytes, over the limit (a bug)")
        if idx == 0:
            write_atomic(args.out / "SLICE0_READY", f"{len(names)}\n".encode())
    write_atomic(args.out / "tiles.tsv", _tsv_bytes(rows[n] for n in sorted(rows)))
    skip_rows = [[r["photo"].source, r["photo"].blob_or_path, r["error"]] for r in skipped]
    write_atomic(
        args.out / "skipped.tsv",
        (
            "source\tblob_or_path\treason\n" + "".join("\t".join(s) + "\n" for s in skip_rows)
        ).encode(),
    )
    shutil.rmtree(staging)
    _report(results, skipped, slices, sizes, tile=p.tile, secs=time.time() - t0)
    return 0


def _report(
    results: list, skipped: list, slices: list, sizes: list, *, tile: int, secs: float
) -> None:
    """Print the summary."""
    used = len(results) - len(skipped)
    n_tiles = sum(len(s) for s in slices)
    print(f"photos: {used} used of {len(results)} ({len(skipped)} skipped)")
    for r in skipped:
        print(f"  SKIPPED {r['photo'].source} {r['photo'].blob_or_path}: {r['error']}")
    print(f"tiles: {n_tiles} in {len(slices)} slices; total {sum(sizes) / MIB:.1f} MiB")
    for i, (s, b) in enumerate(zip(slices, sizes, strict=True)):
        print(f"  slice_{i:02d}: {len(s)} tiles, {b / MIB:.1f} MiB")
    clean = sum(r["mpix"] for r in results if "error" not in r)
    print(f"clean HR pixels (photos after 0.5x downscale): {clean:.0f} MP")
    print(f"HR pixels in tiles: {n_tiles * tile * tile / 1e6:.0f} MP")
    print(f"time: {secs:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path, help="manifest.tsv of the photo set")
    ap.add_argument("raw", type=Path, help="folder the photos were extracted into")
    ap.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    ap.add_argument("--tile", type=int, default=384, help="tile side in px (default 384)")
    ap.add_argument("--max-per-photo", type=int, default=24, help="tiles kept per photo at most")
    ap.add_argument("--min-std", type=float, default=10.0, help="flat if grey std is lower")
    ap.add_argument("--min-grad", type=float, default=1.5, help="flat if mean |gradient| lower")
    ap.add_argument("--seed", type=int, default=0, help="seed of tile choice and shuffle")
    ap.add_argument("--slice-mib", type=int, default=56, help="slice size limit in MiB")
    ap.add_argument("--workers", type=int, default=2, help="processes (at most 2)")
    ap.add_argument(
        "--only",
        type=Path,
        help="pack only the tiles of this list (a tiles.tsv, e.g. a training subset such as "
        "photo3234_tiles.tsv) into the slices",
    )
    args = ap.parse_args(argv)
    if args.tile < 16 or args.max_per_photo < 1 or args.slice_mib < 1:
        ap.error("--tile must be >= 16, --max-per-photo and --slice-mib >= 1")
    if not args.raw.is_dir():
        ap.error(f"{args.raw} is not a folder: extract the photos first (extract.sh)")
    try:
        return run(args)
    except TilesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
