"""Files in and out: images (PNG 8/16-bit, JPEG, WebP) and safe, atomic output files.

Images are handled as float32 arrays of shape (H, W, C) in ``[0, 1]`` with ``C`` = 1 (grey),
2 (grey + alpha), 3 (RGB) or 4 (RGBA). Bit depth, format and ICC profile travel alongside so that
an image can be written back the way it came in.

Pillow narrows 16-bit colour PNGs to 8 bits, so 16-bit PNGs are decoded by :func:`decode_png` and
encoded by :func:`encode_png16` (numpy + zlib); everything else goes through Pillow.

Images declaring more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (decompression-bomb
limit) are refused.

Output files (images, checkpoints, ONNX graphs, JSON reports) are

* checked before any work starts (:func:`check_output`): an output that is one of the inputs
  (same path, or the same file through a link) is refused, an existing file is kept unless
  the tool's ``--overwrite`` is given, and a folder that cannot hold the file (a path component
  is a file, no write permission) is reported up front;
* written atomically (:func:`atomic_output`): the content goes to a temporary file in the
  destination folder, which replaces the output only once it is complete (and verified, where
  the tool verifies it); on any failure or interruption the temporary file is removed and an
  existing output is left as it was.

"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS: dict[str, tuple[str, ...]] = {
    "png": (".png",),
    "jpg": (".jpg", ".jpeg"),
    "webp": (".webp",),
}
"""Output formats and their file suffixes (the first one is used for new names)."""

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp"}
_PIL_SAVE_NAMES = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_GREY_MODES = ("1", "L", "LA", "La")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
_FILTER_BLOCK_ROWS = 64
_ORIENTATION = 0x0112  # EXIF tag
_ORIENT = {  # EXIF orientation -> the (H, W, C) array transform ImageOps.exif_transpose applies
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


class ImageReadError(Exception):
    """An image file could not be read (missing, corrupt or of an unsupported kind)."""


@dataclass
class ImageData:
    """A decoded image.

    ``pixels``: float32 (H, W, C) in [0, 1], C ∈ {1, 2, 3, 4} (L, LA, RGB, RGBA).
    ``format``: "png", "jpg" or "webp". ``bit_depth``: 8 or 16 (16 only for PNG).
    """

    pixels: np.ndarray
    format: str
    bit_depth: int = 8
    icc_profile: bytes | None = None


def format_from_suffix(path: Path) -> str | None:
    """The format key of ``FORMATS`` matching the file suffix of ``path``, if any."""
    suffix = path.suffix.lower()
    for fmt, suffixes in FORMATS.items():
        if suffix in suffixes:
            return fmt
    return None


def visible_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The files of ``folder`` (and, ``recursive``, of its sub-folders), sorted, leaving out
    hidden ones: a name starting with "." anywhere below ``folder`` (macOS ``._`` companions,
    the temporary ``.name.partial.png`` of an interrupted write, ``.git``)."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in entries
        if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()
    )


def left_out_note(files: Sequence[Path], folder: Path, kinds: str) -> str:
    """The note on ``files`` of ``folder`` that a run leaves out as not ``kinds`` (such as
    "PNG, JPEG or WebP"): how many, and the first three names relative to ``folder``."""
    names = ", ".join(str(p.relative_to(folder)) for p in files[:3])
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return f"left out {len(files)} files that are not {kinds}: {names}{more}"


def is_png16(data: bytes) -> bool:
    """Whether ``data`` is a PNG file whose header declares 16 bits per sample."""
    return data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24:25] == b"\x10"


def read_image(path: Path) -> ImageData:
    """Read a PNG, JPEG or WebP file; raise :class:`ImageReadError` naming the file and the
    reason on any failure (missing, empty, truncated, corrupt, unsupported, too large).

    The EXIF orientation is applied; palette images become RGB(A); transparency given as a
    colour key (tRNS) becomes an alpha channel; animated images are refused
    (:func:`check_still`).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from e
    try:
        return _decode(data)
    except ImageReadError as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    except MemoryError as e:
        raise ImageReadError(f"cannot read image {path}: not enough memory to decode it") from e
    except Exception as e:  # decoders raise many kinds of exception on corrupt data
        raise ImageReadError(f"cannot read image {path}: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """A one-line description of a decoder error (type name added when not self-explaining)."""
    text = " ".join(str(error).split())
    if isinstance(error, (OSError, ValueError, SyntaxError)) and text:
        return f"corrupt or truncated file ({text})"
    return f"corrupt or truncated file ({type(error).__name__}{': ' + text if text else ''})"


def _decode(data: bytes) -> ImageData:
    """Decode the bytes of an image file (errors carry no file name)."""
    if not data:
        raise ImageReadError("the file is empty")
    try:
        with warnings.catch_warnings():  # the size is checked below, with a clear error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError("not a PNG, JPEG or WebP image (unrecognised content)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(_too_large(e)) from None
    with img:
        check_pixel_limit(*img.size)
        fmt = _PIL_FORMATS.get(img.format or "")
        if fmt is None:
            raise ImageReadError(f"unsupported format {img.format} (PNG, JPEG or WebP expected)")
        check_still(img)
        scale_grey_png_key(img, data)
        icc = img.info.get("icc_profile") or None
        if is_png16(data):
            pixels = _orient(_decode_png16(data, img.info), img.getexif().get(_ORIENTATION))
            return ImageData(pixels, "png", 16, icc)
        return ImageData(_pil_to_array(img), fmt, 8, icc)


def scale_grey_png_key(img: Image.Image, data: bytes) -> None:
    """Give a 2- or 4-bit greyscale PNG's tRNS colour key the 8-bit value its pixels are
    decoded to (Pillow scales the pixels, 1 → 85 at 2 bits, but keeps the key as stored, so
    no pixel matched it and the transparency was lost). Other images are left as they are."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[25:26] != b"\x00":
        return
    top = (1 << data[24]) - 1 if data[24] in (2, 4) else 0
    key = img.info.get("transparency")
    if top and isinstance(key, int) and 0 <= key <= top:
        img.info["transparency"] = key * (255 // top)


def check_still(img: Image.Image) -> None:
    """:class:`ImageReadError` if ``img`` is animated (animated WebP, APNG: more than one
    frame), which would otherwise be read as its first frame. A JPEG MPO (phones store the
    photo with embedded previews as further frames) is a still image: its first frame is the
    photo."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format != "MPO":
        raise ImageReadError(
            f"animated image ({frames} frames): only still images are supported; extract a "
            "frame first"
        )


def check_pixel_limit(width: int, height: int) -> None:
    """:class:`ImageReadError` if ``width × height`` exceeds ``Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise ImageReadError(
            f"declared size {width}x{height} ({width * height} pixels) exceeds the "
            f"decompression-bomb limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        )


def _too_large(error: Exception) -> str:
    """Message for Pillow's DecompressionBombError."""
    return (
        "image too large for the decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS): "
        + " ".join(str(error).split())
    )


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Decode an 8-bit Pillow image into float32 (H, W, C) in [0, 1]."""
    img = ImageOps.exif_transpose(img)
    alpha = img.has_transparency_data
    if img.mode in _GREY_MODES:
        img = img.convert("LA" if alpha else "L")
    else:
        img = img.convert("RGBA" if alpha else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr.astype(np.float32) / 255.0


def _orient(pixels: np.ndarray, orientation: object) -> np.ndarray:
    """``pixels`` (H, W, C) turned upright for an EXIF ``orientation`` (1..8; others: as is)."""
    transform = _ORIENT.get(orientation) if isinstance(orientation, int) else None
    return pixels if transform is None else np.ascontiguousarray(transform(pixels))


def _decode_png16(data: bytes, info: dict) -> np.ndarray:
    """Decode a 16-bit PNG into float32 (H, W, C) in [0, 1]; a tRNS colour key becomes alpha."""
    arr = decode_png(data)
    pixels = arr.astype(np.float32) / 65535.0
    key = info.get("transparency")
    if key is not None and arr.shape[-1] in (1, 3):
        key_arr = np.atleast_1d(np.asarray(key, dtype=np.uint16))
        alpha = np.where((arr == key_arr).all(axis=-1, keepdims=True), 0.0, 1.0)
        pixels = np.concatenate([pixels, alpha.astype(np.float32)], axis=-1)
    return pixels


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of PNG file ``data``, CRC-checked, up to IEND."""
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            break
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : end - 4]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"corrupt PNG chunk {kind.decode('latin-1')!r}")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end
    raise ValueError("truncated PNG file")


def _unfilter(rows: np.ndarray, width: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters: uint8 (h, 1 + width·bpp) → uint8 (h, width, bpp).

    Pixel (r, j) depends on its left, upper and upper-left neighbours only, so all pixels of an
    anti-diagonal ``r + j = d`` are reconstructed at once (h + width - 1 vectorised steps).
    """
    h = rows.shape[0]
    kinds = rows[:, 0].astype(np.int16)
    if kinds.size and kinds.max() > 4:
        raise ValueError(f"invalid PNG filter type {kinds.max()}")
    filt = rows[:, 1:].reshape(h, width, bpp).astype(np.int16)
    out = np.zeros((h + 1, width + 1, bpp), dtype=np.int16)  # zero row above, column left
    for d in range(h + width - 1):
        r = np.arange(max(0, d - width + 1), min(h - 1, d) + 1)
        j = d - r
        a, b, c = out[r + 1, j], out[r, j + 1], out[r, j]
        k = kinds[r][:, None]
        pred = np.select([k == 1, k == 2, k == 3, k == 4], [a, b, (a + b) >> 1, _paeth(a, b, c)], 0)
        out[r + 1, j + 1] = (filt[r, j] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8- or 16-bit grey/grey+alpha/RGB/RGBA PNG (interlaced or not).

    Returns uint8 or uint16 (H, W, C), C ∈ {1, 2, 3, 4}. Palette and sub-byte PNGs are refused
    (Pillow reads those).
    """
    chunks = list(_png_chunks(data))
    if not chunks or chunks[0][0] != b"IHDR":
        raise ValueError("PNG file does not start with IHDR")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {v: k for k, v in _PNG_COLOUR_TYPES.items()}.get(colour)
    if channels is None or depth not in (8, 16):
        raise ValueError(f"unsupported PNG layout (bit depth {depth}, colour type {colour})")
    check_pixel_limit(width, height)
    bpp = channels * depth // 8
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = sum(
        -(-(height - y0) // dy) * (1 + -(-(width - x0) // dx) * bpp)
        for x0, y0, dx, dy in passes
        if width > x0 and height > y0
    )
    raw = _inflate(b"".join(p for k, p in chunks if k == b"IDAT"), expected)
    planes = np.zeros((height, width, bpp), dtype=np.uint8)
    pos = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w <= 0 or h <= 0:
            continue
        size = h * (1 + w * bpp)
        if pos + size > len(raw):
            raise ValueError("truncated PNG image data")
        rows = np.frombuffer(raw, dtype=np.uint8, count=size, offset=pos).reshape(h, -1)
        planes[y0::dy, x0::dx] = _unfilter(rows, w, bpp)
        pos += size
    if depth == 8:
        return planes
    return planes.view(">u2").astype(np.uint16)


def _inflate(data: bytes, expected: int) -> bytes:
    """zlib-decompress at most ``expected`` bytes (a stream inflating further is not read)."""
    out = zlib.decompressobj().decompress(data, expected)
    if len(out) < expected:
        raise ValueError("truncated PNG image data")
    return out


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split (H, W, C) into colour (H, W, 1 or 3) and alpha (H, W, 1), or None if C is 1 or 3."""
    if pixels.shape[-1] in (2, 4):
        return pixels[..., :-1], pixels[..., -1:]
    return pixels, None


def adapt_channels(pixels: np.ndarray, fmt: str) -> np.ndarray:
    """Make (H, W, C) storable in ``fmt``: JPEG drops alpha, WebP stores grey as RGB."""
    colour, alpha = split_alpha(pixels)
    if fmt == "jpg":
        return colour
    if fmt == "webp" and colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    return colour if alpha is None else np.concatenate([colour, alpha], axis=-1)


def quantize(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float (H, W, C) in [0, 1] to uint8 or uint16 (H, W, C), rounding to nearest."""
    top = (1 << bit_depth) - 1
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return np.clip(np.rint(pixels * top), 0, top).astype(dtype)


MAX_SIDE = {"jpg": 65500, "webp": 16383}
"""The largest image side each format stores (libjpeg, libwebp); PNG has no practical limit."""


def size_problem(fmt: str, height: int, width: int) -> str | None:
    """Why an ``height × width`` image cannot be stored as ``fmt`` (None if it can)."""
    limit = MAX_SIDE.get(fmt)
    if limit is None or max(height, width) <= limit:
        return None
    name = {"jpg": "JPEG", "webp": "WebP"}[fmt]
    return f"{width}x{height} is larger than {name} stores ({limit} px per side); write PNG"


def profile_for(icc_profile: bytes | None, channels: int) -> bytes | None:
    """``icc_profile`` if its colour space (header bytes 16–20) fits an image of ``channels``
    channels (GRAY for 1–2, RGB for 3–4), else None: a CMYK profile of an input converted to
    RGB, or a GRAY one of an input stored as RGB, would make viewers misread the output."""
    if not icc_profile or len(icc_profile) < 20:
        return None
    want = b"GRAY" if channels <= 2 else b"RGB "
    return icc_profile if icc_profile[16:20] == want else None


def write_image(
    path: Path,
    pixels: np.ndarray,
    fmt: str,
    *,
    bit_depth: int = 8,
    quality: int = 95,
    lossless: bool = False,
    icc_profile: bytes | None = None,
    overwrite: bool = True,
) -> None:
    """Write float (H, W, C) ``pixels`` in [0, 1] as ``fmt``, atomically (:func:`atomic_output`).

    16-bit output only exists for PNG; JPEG and WebP are always 8-bit. ``quality`` applies to
    JPEG and WebP; ``lossless`` makes WebP lossless (``quality`` is then its compression
    effort) and is refused for JPEG (:class:`OutputError`). ``icc_profile`` is embedded where
    its colour space fits the channels written (:func:`profile_for`). ``overwrite=False``:
    :class:`OutputError` if ``path`` exists; an image too large for ``fmt``
    (:data:`MAX_SIDE`) is an :class:`OutputError`.
    """
    problem = size_problem(fmt, *pixels.shape[:2])
    if problem:
        raise OutputError(f"cannot write {path}: {problem}")
    if lossless and fmt == "jpg":
        raise OutputError(
            f"cannot write {path} losslessly: JPEG has no lossless mode; write PNG or WebP"
        )
    pixels = adapt_channels(pixels, fmt)
    icc_profile = profile_for(icc_profile, pixels.shape[-1])
    if fmt == "png" and bit_depth == 16:
        encoded = encode_png16(quantize(pixels, 16), icc_profile)
        with atomic_output(path, overwrite=overwrite, what="image") as tmp:
            tmp.write_bytes(encoded)
        return
    arr = quantize(pixels, 8)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    options: dict[str, object] = {}
    if fmt in ("jpg", "webp"):
        options["quality"] = quality
    if fmt == "webp" and lossless:
        options["lossless"] = True
    if icc_profile:
        options["icc_profile"] = icc_profile
    with atomic_output(path, overwrite=overwrite, what="image") as tmp:
        img.save(tmp, format=_PIL_SAVE_NAMES[fmt], **options)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """PNG Paeth predictor of int16 arrays (left ``a``, up ``b``, up-left ``c``)."""
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG-filter uint8 rows (n, stride) given the row above them (stride,).

    Each row gets the filter type (0–4) with the smallest sum of absolute signed residuals.
    Returns uint8 (n, 1 + stride): filter byte then filtered row.
    """
    x = raw.astype(np.int16)
    up = np.vstack([prev[None].astype(np.int16), x[:-1]])
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up_left = np.zeros_like(x)
    up_left[:, bpp:] = up[:, :-bpp]
    preds = (left, up, (left + up) >> 1, _paeth(left, up, up_left))
    cands = np.stack([raw, *(raw - p.astype(np.uint8) for p in preds)])  # (5, n, stride)
    magnitude = np.minimum(cands, -cands)  # |residual| of the signed byte, wrapping in uint8
    cost = magnitude.sum(axis=-1, dtype=np.int64)  # (5, n)
    best = cost.argmin(axis=0)  # (n,)
    rows = cands[best, np.arange(x.shape[0])]
    return np.hstack([best.astype(np.uint8)[:, None], rows])


def encode_png16(arr: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """Encode uint16 (H, W, C), C ∈ {1, 2, 3, 4}, as a 16-bit PNG (adaptive row filters)."""
    h, w, c = arr.shape
    raw = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    compressor = zlib.compressobj(6)
    idat = []
    prev = np.zeros(raw.shape[1], dtype=np.uint8)
    for r0 in range(0, h, _FILTER_BLOCK_ROWS):
        block = raw[r0 : r0 + _FILTER_BLOCK_ROWS]
        idat.append(compressor.compress(_filter_rows(block, prev, 2 * c).tobytes()))
        prev = block[-1]
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", w, h, 16, _PNG_COLOUR_TYPES[c], 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    chunks += [_png_chunk(b"IDAT", b"".join(idat)), _png_chunk(b"IEND", b"")]
    return _PNG_SIGNATURE + b"".join(chunks)


# ---------------------------------------------------------------- output files


class OutputError(Exception):
    """An output file cannot or must not be written; the message says why and what to do."""


def write_error(path: Path, error: Exception) -> OutputError:
    """The :class:`OutputError` for ``error`` raised while writing ``path`` (or its temporary
    file): "cannot write PATH: REASON", REASON the OS's (``No space left on device``) without
    the temporary file's name, else the error's text."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    return OutputError(f"cannot write {path}: {reason}")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: equal resolved paths or, both existing,
    the same inode (hard or symbolic link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def folder_problem(folder: Path) -> str | None:
    """Why new files cannot be written in ``folder`` (created when missing), or None.

    The nearest existing one of ``folder`` and its ancestors must be a folder that takes a
    new file; that is tried by creating (and removing) an empty one, so that read-only file
    systems and permissions are both caught.
    """
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=existing)
    except OSError as e:
        return f"{existing} is not writable ({e.strerror or e})"
    os.close(fd)
    os.unlink(name)
    return None


def check_output(
    path: Path, *, overwrite: bool, inputs: Iterable[Path | str] = (), what: str = "output"
) -> None:
    """Refuse an output that cannot or must not be written, before any work is done.

    Raises :class:`OutputError` when ``path`` is one of ``inputs`` (same path or same file),
    is a folder, already exists and ``overwrite`` is False, or its folder cannot be created or
    written to (a path component is a file, no write permission).
    """
    for src in map(Path, inputs):
        if _same_file(path, src):
            raise OutputError(
                f"the {what} {path} is the same file as the input {src}; writing it would "
                f"replace the input. Choose another {what} file name"
            )
    if path.is_dir():
        raise OutputError(f"the {what} {path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(
            f"the {what} {path} already exists; pass --overwrite to replace it, or choose "
            f"another file name"
        )
    problem = folder_problem(path.parent)
    if problem is not None:
        fix = "" if problem.endswith("not a folder") else " or fix the folder's permissions"
        raise OutputError(
            f"cannot write the {what} {path}: {problem}; choose another {what} path{fix}"
        )


TEMP_STEM_CHARS = 32
"""Characters of the output's stem in the name of its temporary file (:func:`atomic_output`):
the temporary name adds about 18 characters, which must not push a name close to the file
system's limit (255 bytes) over it."""


def current_umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_folder(path: Path, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise OutputError(
            f"cannot write the {what} {path}: a component of {path.parent} is a file, not a "
            f"folder ({e.strerror})"
        ) from e
    except OSError as e:
        raise OutputError(f"cannot create the folder {path.parent} for the {what}: {e}") from e


def _commit(tmp: Path, path: Path, overwrite: bool, what: str) -> None:
    """Move the complete ``tmp`` to ``path``; without ``overwrite`` never replace a file that
    appeared at ``path`` meanwhile (hard link, which fails if the name exists)."""
    try:
        if not overwrite:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputError(
                    f"the {what} {path} appeared while it was being written; pass --overwrite "
                    f"to replace it"
                ) from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                if path.exists():  # no hard links here: check, then replace
                    raise OutputError(f"the {what} {path} already exists") from None
                os.replace(tmp, path)
            else:
                tmp.unlink()
            return
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write the {what} {path}: {e}") from e


@contextlib.contextmanager
def atomic_output(path: Path, *, overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on normal exit it
    becomes ``path`` (``os.replace``), on an exception it is removed and ``path`` is untouched.

    The temporary file is created empty with the permissions a new file gets (umask); its
    name holds at most the first :data:`TEMP_STEM_CHARS` characters of ``path``'s stem, so
    that it is no longer than a name the file system takes for ``path`` itself.
    Raises :class:`OutputError` when the folder or the file cannot be written.
    """
    path = Path(path)
    _make_folder(path, what)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.stem[:TEMP_STEM_CHARS]}.",
            suffix=f".partial{path.suffix}",
            dir=path.parent,
        )
    except OSError as e:
        raise OutputError(f"cannot write the {what} {path}: {e}") from e
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        # writers that recreate the file (safetensors) reset its mode
        os.chmod(tmp, 0o666 & ~current_umask())
        _commit(tmp, path, overwrite, what)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(
    path: Path, text: str, *, overwrite: bool = False, what: str = "report"
) -> None:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, overwrite=overwrite, what=what) as tmp:
        try:
            tmp.write_bytes(text.encode("utf-8"))
        except OSError as e:
            raise write_error(path, e) from e
