"""``evaluate.read_image``, the image reader of evaluate.py, precision.py, fuse.py and
moe_usage.py: every Pillow mode at its own white level, 16-bit PNGs exact, alpha refused or
ignored, unsupported modes refused with a clear error."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridmoe import evaluate, imageio, metrics
from hybridmoe import precision as cp

SET5 = Path(__file__).resolve().parent / "data" / "Set5"


def _rgb(h: int = 6, w: int = 7) -> np.ndarray:
    """A small deterministic uint8 RGB image."""
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _grey16_from_set5(tmp: Path, name: str = "butterfly") -> tuple[Path, Path]:
    """Two one-image sets under ``tmp``: ``G8/HR`` holds Set5 ``name`` as 8-bit greyscale,
    ``G16/HR`` the same image as a 16-bit greyscale PNG (``v * 257``)."""
    with Image.open(SET5 / "HR" / f"{name}.png") as im:
        grey = np.asarray(im.convert("L"))
    p8, p16 = tmp / "G8" / "HR" / f"{name}.png", tmp / "G16" / "HR" / f"{name}.png"
    for p in (p8, p16):
        p.parent.mkdir(parents=True)
    Image.fromarray(grey).save(p8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(p16)
    with Image.open(p16) as im:
        assert im.mode == "I;16"  # a real 16-bit greyscale PNG
    return p8, p16


def test_16bit_greyscale_png_scores_as_its_8bit_version(tmp_path: Path) -> None:
    """A 16-bit greyscale HR image was read as white (perfect scores); it must score as the
    8-bit image it was made from."""
    p8, p16 = _grey16_from_set5(tmp_path)
    np.testing.assert_array_equal(evaluate.read_image(p16), evaluate.read_image(p8))
    res = evaluate.evaluate(None, tmp_path, ["G8", "G16"], bicubic_only=True, scale=2)
    s8, s16 = res["sets"]["G8"]["bicubic"], res["sets"]["G16"]["bicubic"]
    assert 20 < s8["psnr"] < 40
    assert abs(s16["psnr"] - s8["psnr"]) <= 0.05
    assert abs(s16["ssim"] - s8["ssim"]) <= 1e-4
    # check_precision prepares its images with the same reader
    (img8,), (img16,) = (cp.load_images(tmp_path, [s], 2, None, 16) for s in ("G8", "G16"))
    np.testing.assert_array_equal(img16.hr, img8.hr)
    np.testing.assert_array_equal(img16.lr, img8.lr)


def test_16bit_pngs_are_rounded_not_truncated(tmp_path: Path) -> None:
    """Any 16-bit value maps to round(v · 255 / 65535); Pillow alone would drop the low byte
    of colour PNGs (450 → 1 instead of 2)."""
    values = np.array([0, 450, 383, 32767, 65000, 65535], dtype=np.uint16)
    expected = metrics.to_uint8(values / 257.0)
    assert list(expected) == [0, 2, 1, 127, 253, 255]
    grey = np.tile(values, (2, 1))
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(
        evaluate.read_image(tmp_path / "g.png"), np.tile(expected, (2, 1))
    )
    rgb = np.stack([grey, grey[:, ::-1], grey], axis=-1)
    (tmp_path / "c.png").write_bytes(imageio.encode_png16(rgb))
    out = evaluate.read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(out, metrics.to_uint8(rgb / 257.0))
    rgba = np.concatenate([rgb, np.full((2, 6, 1), 65535, np.uint16)], axis=-1)
    (tmp_path / "a.png").write_bytes(imageio.encode_png16(rgba))  # opaque alpha: dropped
    np.testing.assert_array_equal(evaluate.read_image(tmp_path / "a.png"), out)


def _expected_rgb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("mode", ["P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB"])
def test_colour_modes_read_as_rgb(mode: str, tmp_path: Path) -> None:
    src = Image.fromarray(_rgb())
    im = src.quantize(16) if mode in ("P", "PA") else src.convert(mode)
    if mode == "PA":
        im = im.convert("PA")
    path = tmp_path / "x.tiff"
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == mode
        expected = _expected_rgb(back)
    out = evaluate.read_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out, expected)


def test_grey_modes(tmp_path: Path) -> None:
    grey = _rgb()[..., 0]
    cases = {
        "1": (Image.fromarray(grey > 127), np.where(grey > 127, 255, 0)),
        "L": (Image.fromarray(grey), grey),
        "LA": (Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA"), grey),
        "I;16B": (Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2")), grey),
        "F": (Image.fromarray(grey.astype(np.float32) / 255), grey),
    }
    for mode, (im, expected) in cases.items():
        path = tmp_path / f"{mode.replace(';', '_')}.tiff"
        im.save(path)
        with Image.open(path) as back:
            assert back.mode == mode
        out = evaluate.read_image(path)
        assert out.dtype == np.uint8 and out.shape == grey.shape, mode
        np.testing.assert_array_equal(out, expected, err_msg=mode)


def test_transparency_refused_or_ignored(tmp_path: Path) -> None:
    """Scores of pixels hidden by alpha mean nothing: evaluation refuses them; tools that only
    need the pixels (fuse, moe_usage) ignore alpha."""
    rgba = np.concatenate([_rgb(), np.full((6, 7, 1), 255, np.uint8)], axis=-1)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "a.png")
    with pytest.raises(evaluate.EvaluationError, match=r"a\.png has 1 transparent pixel"):
        evaluate.read_image(tmp_path / "a.png")
    out = evaluate.read_image(tmp_path / "a.png", allow_transparency=True)
    np.testing.assert_array_equal(out, rgba[..., :3])
    # colour-key transparency (tRNS) of a palette and of a 16-bit greyscale PNG
    Image.fromarray(_rgb()).quantize(8).save(tmp_path / "p.png", transparency=0)
    with pytest.raises(evaluate.EvaluationError, match="transparent"):
        evaluate.read_image(tmp_path / "p.png")
    Image.fromarray(np.array([[0, 257]], np.uint16)).save(tmp_path / "k.png", transparency=257)
    with pytest.raises(evaluate.EvaluationError, match="1 transparent"):
        evaluate.read_image(tmp_path / "k.png")
    np.testing.assert_array_equal(
        evaluate.read_image(tmp_path / "k.png", allow_transparency=True), [[0, 1]]
    )


def test_unsupported_and_unreadable_images(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i.tiff")
    with pytest.raises(evaluate.EvaluationError, match=r"i\.tiff.*mode I\).*16-bit"):
        evaluate.read_image(tmp_path / "i.tiff")
    Image.fromarray(np.array([[0.0, 1.5]], np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(evaluate.EvaluationError, match=r"f\.tiff.*\[0, 1\]"):
        evaluate.read_image(tmp_path / "f.tiff")
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "n.tiff")
    with pytest.raises(evaluate.EvaluationError, match="finite"):
        evaluate.read_image(tmp_path / "n.tiff")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(evaluate.EvaluationError, match=r"cannot read image .*junk\.png"):
        evaluate.read_image(tmp_path / "junk.png")
    with pytest.raises(evaluate.EvaluationError, match="missing"):
        evaluate.read_image(tmp_path / "missing.png")


def test_to_uint8_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.to_uint8(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.to_uint8(np.array([np.inf]))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16bit_png_exif_orientation_is_applied_as_for_8bit(
    orientation: int, tmp_path: Path
) -> None:
    """``imageio.read_image`` turned 8-bit images upright but read 16-bit PNGs (decoded
    without Pillow) as stored, ignoring their EXIF orientation."""
    arr16 = _rgb(4, 6).astype(np.uint16) * 257
    exif = Image.Exif()
    exif[0x0112] = orientation
    encoded = imageio.encode_png16(arr16)
    at = encoded.index(b"IDAT") - 4  # eXIf goes before the image data
    chunk = imageio._png_chunk(b"eXIf", exif.tobytes()[6:])  # without the "Exif\0\0" header
    (tmp_path / "c16.png").write_bytes(encoded[:at] + chunk + encoded[at:])
    Image.fromarray(_rgb(4, 6)).save(tmp_path / "c8.png", exif=exif)
    img16, img8 = (imageio.read_image(tmp_path / f"c{d}.png") for d in (16, 8))
    assert img16.bit_depth == 16
    np.testing.assert_array_equal(imageio.quantize(img16.pixels, 8), img8.pixels * 255)


def _animation(path: Path) -> Path:
    """A two-frame animation (animated WebP or APNG, by the suffix of ``path``)."""
    first, second = Image.fromarray(_rgb(16, 16)), Image.fromarray(255 - _rgb(16, 16))
    first.save(path, save_all=True, append_images=[second], duration=100, lossless=True)
    with Image.open(path) as im:
        assert im.n_frames == 2
    return path


@pytest.mark.parametrize("name", ["anim.webp", "anim.png"])
def test_animated_images_are_refused_by_both_readers(name: str, tmp_path: Path) -> None:
    """Animated WebP and APNG were read as their first frame, the rest silently dropped, by
    ``upscale``, ``evaluate`` and ``make-pairs``."""
    path = _animation(tmp_path / name)
    why = r"animated image \(2 frames\): only still images are supported; extract a frame first"
    with pytest.raises(evaluate.EvaluationError, match=rf"cannot read image .*{name}: {why}"):
        evaluate.read_image(path)
    with pytest.raises(imageio.ImageReadError, match=rf"cannot read image .*{name}: {why}"):
        imageio.read_image(path)


def test_still_images_and_jpeg_mpo_are_read(tmp_path: Path) -> None:
    """Single-frame PNG (saved as an animation of one frame too), WebP and JPEG still read; a
    JPEG MPO (phone photos: Pillow reports the embedded preview as a second frame) reads as
    its first frame, the photo."""
    rgb = _rgb(16, 16)
    first = Image.fromarray(rgb)
    first.save(tmp_path / "one.png", save_all=True)
    first.save(tmp_path / "one.webp", lossless=True)
    first.save(tmp_path / "one.jpg", quality=95)
    preview = Image.new("RGB", (8, 8))
    first.save(tmp_path / "mpo.jpg", "MPO", quality=95, save_all=True, append_images=[preview])
    with Image.open(tmp_path / "mpo.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    for name in ("one.png", "one.webp", "one.jpg", "mpo.jpg"):
        with Image.open(tmp_path / name) as im:  # the first frame
            want = np.asarray(im.convert("RGB"))
        assert want.shape == rgb.shape
        np.testing.assert_array_equal(evaluate.read_image(tmp_path / name), want)
        img = imageio.read_image(tmp_path / name)
        np.testing.assert_array_equal(imageio.quantize(img.pixels, 8), want)
    np.testing.assert_array_equal(want, evaluate.read_image(tmp_path / "one.jpg"))  # the photo
    np.testing.assert_array_equal(evaluate.read_image(tmp_path / "one.png"), rgb)


def _grey_png(values: list[list[int]], depth: int, key: int) -> bytes:
    """A greyscale PNG of ``depth`` bits per pixel (1, 2 or 4) with a tRNS colour ``key``."""
    per_byte = 8 // depth
    rows = b""
    for row in values:
        padded = row + [0] * (-len(row) % per_byte)
        packed = bytes(
            sum(v << (8 - depth * (j + 1)) for j, v in enumerate(padded[i : i + per_byte]))
            for i in range(0, len(padded), per_byte)
        )
        rows += b"\x00" + packed  # filter type 0
    header = struct.pack(">IIBBBBB", len(values[0]), len(values), depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + imageio._png_chunk(b"IHDR", header)
        + imageio._png_chunk(b"tRNS", struct.pack(">H", key))
        + imageio._png_chunk(b"IDAT", zlib.compress(rows))
        + imageio._png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_depth_grey_png_keeps_its_colour_key_transparency(
    depth: int, tmp_path: Path
) -> None:
    """2- and 4-bit greyscale PNGs (as PNG optimisers write line art on a transparent
    background) lost their tRNS transparency: Pillow decodes the pixels to 8 bits but keeps
    the key as stored, so upscale wrote the hidden background opaque and evaluate scored it."""
    top = (1 << depth) - 1
    values = [[0, top, 0, top, 0], [top, top, 0, 0, top]]
    path = tmp_path / "key.png"
    path.write_bytes(_grey_png(values, depth, key=top))  # the white pixels are transparent
    grey = np.array(values, np.float32) / top
    img = imageio.read_image(path)
    assert img.pixels.shape == (2, 5, 2)
    np.testing.assert_array_equal(img.pixels[..., 0], grey)
    np.testing.assert_array_equal(img.pixels[..., 1], grey == 0)
    with pytest.raises(evaluate.EvaluationError, match="5 transparent pixel"):
        evaluate.read_image(path)
