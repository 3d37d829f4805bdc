"""Tests of the upscale CLI, its tiling and its image I/O (CPU, tiny random Compact ×2 models)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from safetensors.torch import save_file
from spandrel import ImageModelDescriptor, ModelLoader, ModelTiling, SizeRequirements
from spandrel.architectures.Compact import Compact

from hybridmoe import imageio, tiling, upscale
from hybridmoe.spandrel_arch import register_spandrel

RECEPTIVE_RADIUS = 4  # Compact with num_conv=2: four 3×3 convolutions in LR space


def compact(identity: bool = False, channels: int = 3) -> Compact:
    """A tiny Compact ×2; ``identity``: zero last conv, so the output is the nearest upsample."""
    net = Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=2, upscale=2)
    if identity:
        with torch.no_grad():
            net.body[-1].weight.zero_()
            net.body[-1].bias.zero_()
    return net


def save_model(net: torch.nn.Module, path: Path) -> Path:
    """Save ``net``'s weights (.safetensors or .pth by suffix) and return ``path``."""
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def descriptor_of(net: torch.nn.Module, tmp_path: Path) -> ImageModelDescriptor:
    """Round-trip ``net`` through spandrel's loader, as the CLI does."""
    d = ModelLoader().load_from_file(save_model(net, tmp_path / "m.safetensors"))
    assert isinstance(d, ImageModelDescriptor)
    return d.eval()


@pytest.fixture(autouse=True)
def spandrel_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load checkpoints with spandrel's built-in architectures (independent of HybridMoE)."""
    monkeypatch.setattr(
        upscale, "load_checkpoint", lambda p, d="cpu": ModelLoader(d).load_from_file(p)
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """Random Compact ×2 checkpoint."""
    return save_model(compact(), tmp_path / "compact.safetensors")


@pytest.fixture
def identity_model(tmp_path: Path) -> Path:
    """Compact ×2 checkpoint computing exactly the nearest-neighbour upsample."""
    return save_model(compact(identity=True), tmp_path / "identity.pth")


def rand_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random float image (H, W, C) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return rng.random((h, w, c)).astype(np.float32)


def nearest2(a: np.ndarray) -> np.ndarray:
    """(H, W, C) → (2H, 2W, C) nearest-neighbour upsample."""
    return a.repeat(2, axis=0).repeat(2, axis=1)


def save_png(path: Path, arr: np.ndarray) -> Path:
    """Save uint8 (H, W, C) with Pillow."""
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path


# ---------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize(("tile", "overlap"), [(24, RECEPTIVE_RADIUS), (20, 5), (32, 8)])
def test_tiled_equals_untiled_when_overlap_covers_receptive_field(
    tmp_path: Path, tile: int, overlap: int
) -> None:
    d = descriptor_of(compact(), tmp_path)
    x = torch.rand(1, 3, 45, 37)
    ref = d(x)
    calls = []
    out = tiling.upscale_tiled(
        d, x, 2, tile, overlap, d.size_requirements, on_tile=lambda: calls.append(1)
    )
    assert len(calls) == tiling.count_tiles(45, 37, tile, overlap) > 1
    assert out.shape == ref.shape == (1, 3, 90, 74)
    assert (out - ref).abs().max().item() < 1e-5


def test_too_small_overlap_shows_seams(tmp_path: Path) -> None:
    """Sanity check of the test above: with overlap < receptive field, tiles differ."""
    d = descriptor_of(compact(), tmp_path)
    x = torch.rand(1, 3, 45, 37)
    out = tiling.upscale_tiled(d, x, 2, 24, 1, d.size_requirements)
    assert (out - d(x)).abs().max().item() > 1e-4


def test_feathered_blending_on_constant_image() -> None:
    x = torch.full((1, 3, 50, 41), 0.3)

    def nearest(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="nearest")

    out = tiling.upscale_tiled(nearest, x, 2, 20, 4)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)

    # Every tile outputs its own constant: the result stays within the tile values and
    # cross-fades monotonically and linearly across the seam of two side-by-side tiles.
    values = iter([0.0, 1.0])

    def constant(t: torch.Tensor) -> torch.Tensor:
        v = next(values)
        return torch.full((1, 1, t.shape[2] * 2, t.shape[3] * 2), v)

    row = tiling.upscale_tiled(constant, torch.zeros(1, 3, 8, 28), 2, 20, 4)[0, 0, 0]
    assert row.shape == (56,)
    assert torch.all(row[1:] >= row[:-1])
    ramp = row[(row > 0) & (row < 1)]
    assert len(ramp) == 8  # overlap × scale output pixels
    steps = ramp[1:] - ramp[:-1]
    assert torch.allclose(steps, steps.mean().expand_as(steps), atol=1e-6)


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [(31, 17, 16, 4), (33, 50, 23, 5), (7, 9, 16, 2), (64, 21, 17, 0), (40, 40, 0, 8)],
)
def test_output_size_exact_with_size_requirements(h: int, w: int, tile: int, overlap: int) -> None:
    req = SizeRequirements(minimum=8, multiple_of=4)
    seen: list[tuple[int, int]] = []

    def model_fn(t: torch.Tensor) -> torch.Tensor:
        th, tw = t.shape[-2:]
        assert req.check(tw, th), (th, tw)
        seen.append((th, tw))
        return torch.ones(1, 3, th * 3, tw * 3)

    out = tiling.upscale_tiled(model_fn, torch.rand(1, 3, h, w), 3, tile, overlap, req)
    assert out.shape == (1, 3, h * 3, w * 3)
    assert torch.allclose(out, torch.ones_like(out))  # full weight coverage, no holes
    assert len(seen) == tiling.count_tiles(h, w, tile, overlap, req)


def test_padding_reflects_as_far_as_the_window_allows_then_repeats_the_edge() -> None:
    """Bottom/right padding to a multiple of 8: a 3-pixel row [1, 2, 3] is mirrored by its
    2 inner pixels (3, 2, 1 read backwards from the edge) and then the last value repeats;
    a single pixel can only be repeated."""
    req = SizeRequirements(multiple_of=8)
    row = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    padded = tiling.pad_to_requirements(row, req)
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, 0].tolist() == [1, 2, 3, 2, 1, 1, 1, 1]
    assert (padded == padded[:, :, :1]).all()  # the one row repeated downwards
    one = tiling.pad_to_requirements(torch.full((1, 1, 1, 1), 5.0), req)
    assert one.shape == (1, 1, 8, 8) and (one == 5).all()


def test_too_small_tile_is_rejected() -> None:
    with pytest.raises(ValueError, match="3 × overlap"):
        tiling.upscale_tiled(lambda t: t, torch.rand(1, 3, 40, 40), 1, 12, 4)


@pytest.mark.parametrize("align", [1, 4, 16, 32])
@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(96, 48, 4), (96, 48, 8), (192, 64, 12), (192, 64, 8), (1080, 512, 16), (97, 16, 2)],
)
def test_aligned_window_starts(length: int, tile: int, overlap: int, align: int) -> None:
    """Aligned starts are multiples of the fitted alignment, cover the line with at least
    3·overlap shared between neighbours, and all windows but the last are ``tile`` long."""
    a = tiling.fitted_align(align, tile, overlap)
    assert align % a == 0 and a <= max(1, tile - 3 * overlap)
    starts = tiling.window_starts(length, tile, overlap, align)
    ends = [min(s + tile, length) for s in starts]
    assert starts[0] == 0 and ends[-1] == length
    assert all(s % a == 0 for s in starts)
    assert all(e - s == tile for s, e in zip(starts[:-1], ends[:-1], strict=True))
    assert all(ends[i] - starts[i + 1] >= 3 * overlap for i in range(len(starts) - 1))
    if align == 1:  # unchanged: evenly spread, the last window ends at the border
        count = len(starts)
        assert starts == [i * (length - tile) // (count - 1) for i in range(count)]


def test_fitted_align() -> None:
    assert tiling.fitted_align(32, 512, 16) == 32
    assert tiling.fitted_align(32, 64, 8) == 32  # step 40
    assert tiling.fitted_align(32, 64, 16) == 16  # step 16: the largest divisor that fits
    assert tiling.fitted_align(32, 48, 8) == 16  # step 24
    assert tiling.fitted_align(12, 20, 4) == 6  # step 8
    with pytest.raises(ValueError, match="align"):
        tiling.fitted_align(0, 64, 8)


@pytest.mark.parametrize(("tile", "overlap", "align"), [(24, RECEPTIVE_RADIUS, 8), (20, 4, 16)])
def test_aligned_tiling_is_still_exact(tmp_path: Path, tile: int, overlap: int, align: int) -> None:
    """Alignment moves the windows (the last one may be shorter), nothing else: with an
    overlap covering the receptive field the result is still the untiled one, and the output
    size is exact under size requirements."""
    d = descriptor_of(compact(), tmp_path)
    x = torch.rand(1, 3, 45, 37)
    calls: list[int] = []
    out = tiling.upscale_tiled(
        d, x, 2, tile, overlap, d.size_requirements, align=align, on_tile=lambda: calls.append(1)
    )
    assert len(calls) == tiling.count_tiles(45, 37, tile, overlap, align=align) > 1
    assert (out - d(x)).abs().max().item() < 1e-5
    req = SizeRequirements(minimum=8, multiple_of=4)

    def ones(t: torch.Tensor) -> torch.Tensor:
        assert req.check(t.shape[-1], t.shape[-2])
        return torch.ones(1, 3, t.shape[-2] * 3, t.shape[-1] * 3)

    out = tiling.upscale_tiled(ones, torch.rand(1, 3, 50, 29), 3, 23, 5, req, align=align)
    assert out.shape == (1, 3, 150, 87) and torch.allclose(out, torch.ones_like(out))


def test_tile_alignment_follows_hybridmoe_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """HybridMoE: windows start at multiples of 2^(levels-1)·window_size where it has window
    attention below x1, else 1 (the x1 trunks); other architectures: 1. The CLI passes it on
    to the tiler."""
    import hybridmoe_arch as A

    assert upscale.tile_alignment(descriptor_of(compact(), tmp_path)) == 1
    register_spandrel()
    common = {"scale": 2, "dim": 8, "mid_blocks": 1, "dec_blocks": (1, 1), "window_size": 4}
    net = A.HybridMoE(enc_blocks=(1, 1, 1), hf_blocks=(1, 1, 1), global_mixer="none", **common)
    path = save_model(net, tmp_path / "hybridmoe.safetensors")
    assert upscale.tile_alignment(upscale.load_descriptor(path)) == 16
    # the x1 trunk of the shipped variants has no downsampling and no attention grid
    trunk = save_model(A.FACTORIES["hybridmoe_nano"](scale=2), tmp_path / "trunk.safetensors")
    assert upscale.tile_alignment(upscale.load_descriptor(trunk)) == 1
    # two levels with attention below x1: windows of 4 tokens at x1/2 -> 8 input pixels
    two = A.HybridMoE(
        levels=2, enc_blocks=(1, 1, 0), hf_blocks=(1, 1, 0), global_mixer="none", **common
    )
    two_path = save_model(two, tmp_path / "two.safetensors")
    assert upscale.tile_alignment(upscale.load_descriptor(two_path)) == 8
    # a model that pads to a multiple: windows start at multiples of it (with align 1 the last
    # window of a row was padded differently from the whole image)
    padded = descriptor_of(compact(), tmp_path)
    padded.size_requirements = SizeRequirements(multiple_of=6)
    assert upscale.tile_alignment(padded) == 6
    two_desc = upscale.load_descriptor(two_path)
    two_desc.size_requirements = SizeRequirements(multiple_of=12)
    assert upscale.tile_alignment(two_desc) == 24  # with the attention grid: lcm(8, 12)

    seen: list[int] = []
    real = tiling.upscale_tiled

    def spy(*args: object, align: int = 1, **kwargs: object) -> torch.Tensor:
        seen.append(align)
        return real(*args, align=align, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(upscale, "upscale_tiled", spy)
    src = save_png(tmp_path / "in.png", (rand_image(40, 36, 3) * 255).astype(np.uint8))
    code, err = run_cli(
        capsys, path, src, tmp_path / "out.png", "--tile", "24", "--tile-overlap", "4"
    )
    assert code == 0, err
    assert seen == [16]
    assert Image.open(tmp_path / "out.png").size == (72, 80)


# ------------------------------------------------------------------------------- image I/O


def png16_bytes(arr: np.ndarray, trns: bytes = b"") -> bytes:
    """Minimal 16-bit PNG of uint16 (H, W, 3), unfiltered rows (independent of the encoder).

    ``trns``: payload of an optional tRNS (colour key) chunk.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + (chunk(b"tRNS", trns) if trns else b"")
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_read_16bit_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")  # Pillow writes mode I;16 as 16-bit
    img = imageio.read_image(tmp_path / "g16.png")
    assert img.bit_depth == 16 and img.pixels.shape == (9, 7, 1)
    assert np.array_equal(imageio.quantize(img.pixels, 16)[..., 0], grey)

    rgb = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    (tmp_path / "c16.png").write_bytes(png16_bytes(rgb))
    img = imageio.read_image(tmp_path / "c16.png")
    assert img.bit_depth == 16 and np.array_equal(imageio.quantize(img.pixels, 16), rgb)


def test_16bit_colour_key_becomes_alpha(tmp_path: Path) -> None:
    arr = np.full((3, 4, 3), 1000, np.uint16)
    arr[1, 2] = (7, 8, 9)
    arr[0, 1] = (7, 8, 1000)  # the key in two channels only: an opaque pixel
    arr[2, 0] = (9, 8, 7)
    (tmp_path / "k.png").write_bytes(png16_bytes(arr, trns=struct.pack(">3H", 7, 8, 9)))
    img = imageio.read_image(tmp_path / "k.png")
    assert img.pixels.shape == (3, 4, 4)
    expected = np.ones((3, 4), np.float32)
    expected[1, 2] = 0.0
    assert np.array_equal(img.pixels[..., 3], expected)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_encoder_round_trip(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (70, 13, channels), dtype=np.uint16)
    arr[40:] = arr[40:41]  # flat rows exercise the other filter types
    path = tmp_path / "x.png"
    path.write_bytes(imageio.encode_png16(arr))
    assert np.array_equal(imageio.quantize(imageio.read_image(path).pixels, 16), arr)
    if channels == 1:  # cross-check with Pillow's own 16-bit greyscale decoder
        assert np.array_equal(np.asarray(Image.open(path)), arr[..., 0])


def adam7_png16(arr: np.ndarray) -> bytes:
    """Interlaced (Adam7) 16-bit RGB PNG of uint16 (H, W, 3), unfiltered rows."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
    rows = b""
    for x0, y0, dx, dy in (*passes, (0, 1, 1, 2)):
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            rows += b"".join(b"\x00" + r.astype(">u2").tobytes() for r in sub)
    plain = png16_bytes(arr)
    h, w, _ = arr.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 1)
    start = plain.index(b"IHDR") - 4
    head = plain[:start] + struct.pack(">I", 13) + b"IHDR" + ihdr
    head += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    idat = zlib.compress(rows)
    idat_chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat
    idat_chunk += struct.pack(">I", zlib.crc32(b"IDAT" + idat) & 0xFFFFFFFF)
    return head + idat_chunk + plain[plain.index(b"IEND") - 4 :]


def test_read_interlaced_16bit_png(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).integers(0, 65536, (11, 13, 3), dtype=np.uint16)
    (tmp_path / "i16.png").write_bytes(adam7_png16(arr))
    img = imageio.read_image(tmp_path / "i16.png")
    assert np.array_equal(imageio.quantize(img.pixels, 16), arr)


def test_png_decoder_matches_pillow_on_filtered_images(set5_dir: Path) -> None:
    """Pillow's adaptively filtered 8-bit PNGs exercise all five row filters."""
    for path in sorted((set5_dir / "LR_bicubic" / "X4").glob("*.png")):
        ours = imageio.decode_png(path.read_bytes())
        assert np.array_equal(ours, np.asarray(Image.open(path)))


def test_corrupt_png_is_a_read_error(tmp_path: Path) -> None:
    data = bytearray(png16_bytes(np.zeros((4, 4, 3), np.uint16)))
    data[-20] ^= 0xFF  # inside IDAT: CRC mismatch
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(imageio.ImageReadError, match=r"bad\.png"):
        imageio.read_image(tmp_path / "bad.png")


def test_written_values_are_rounded_to_nearest_and_clamped(tmp_path: Path) -> None:
    """Float pixels become the nearest 8- or 16-bit level (not the one below); values just
    outside [0, 1] are clamped to black and white instead of wrapping around."""
    for depth, top, level, want in (
        (8, 255, [0.0, 0.3, 0.7, 100.4, 100.6, 254.7], [0, 0, 1, 100, 101, 255]),
        (16, 65535, [0.0, 0.3, 0.7, 40000.4, 40000.6, 65534.7], [0, 0, 1, 40000, 40001, 65535]),
    ):
        floats = np.concatenate([np.array(level) / top, [-0.02, 1.02]]).astype(np.float32)
        path = tmp_path / f"v{depth}.png"
        imageio.write_image(path, np.tile(floats[None, :, None], (2, 1, 1)), "png", bit_depth=depth)
        with Image.open(path) as im:
            assert im.mode == ("L" if depth == 8 else "I;16")
            assert np.asarray(im).tolist() == [[*want, 0, top]] * 2


def test_palette_transparency_becomes_alpha(tmp_path: Path) -> None:
    """A palette PNG's tRNS entries give the alpha of the pixels using them."""
    idx = np.array([[0, 1, 2, 1], [2, 2, 0, 1]], np.uint8)
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], np.uint8)
    im = Image.new("P", (4, 2))
    im.putdata(idx.ravel().tolist())
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "p.png", transparency=bytes([0, 128, 255]))
    img = imageio.read_image(tmp_path / "p.png")
    assert img.pixels.shape == (2, 4, 4)
    assert np.array_equal(imageio.quantize(img.pixels[..., :3], 8), palette[idx])
    assert np.array_equal(imageio.quantize(img.pixels[..., 3], 8), np.array([0, 128, 255])[idx])


def test_the_pixel_limit_admits_an_image_of_exactly_that_many_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    save_png(tmp_path / "at.png", np.zeros((4, 5, 3), np.uint8))
    (tmp_path / "at16.png").write_bytes(png16_bytes(np.zeros((5, 4, 3), np.uint16)))
    assert imageio.read_image(tmp_path / "at.png").pixels.shape == (4, 5, 3)
    assert imageio.read_image(tmp_path / "at16.png").pixels.shape == (5, 4, 3)
    save_png(tmp_path / "over.png", np.zeros((3, 7, 3), np.uint8))
    (tmp_path / "over16.png").write_bytes(png16_bytes(np.zeros((7, 3, 3), np.uint16)))
    for name, size in (("over.png", "7x3"), ("over16.png", "3x7")):
        with pytest.raises(
            imageio.ImageReadError,
            match=rf"{name}: declared size {size} \(21 pixels\) exceeds the "
            r"decompression-bomb limit of 20 pixels",
        ):
            imageio.read_image(tmp_path / name)


# ------------------------------------------------------------------------------------- CLI


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Run ``upscale.main`` with string arguments; return (exit status, stderr)."""
    code = upscale.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_png_8bit_round_trip(tmp_path: Path, identity_model: Path, capsys) -> None:
    src = save_png(tmp_path / "a.png", (rand_image(13, 11, 3) * 255).astype(np.uint8))
    code, err = run_cli(capsys, identity_model, src, tmp_path / "out.png")
    assert code == 0, err
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGB" and out.size == (22, 26)
    assert np.array_equal(np.asarray(out), nearest2(np.asarray(Image.open(src))))


def test_png_16bit_round_trip(tmp_path: Path, identity_model: Path, capsys) -> None:
    arr = np.random.default_rng(2).integers(0, 65536, (12, 9, 3), dtype=np.uint16)
    src = tmp_path / "a16.png"
    src.write_bytes(png16_bytes(arr))
    code, err = run_cli(capsys, identity_model, src, tmp_path / "out.png", "--tile", "0")
    assert code == 0, err
    data = (tmp_path / "out.png").read_bytes()
    assert imageio.is_png16(data)
    out = imageio.quantize(imageio.read_image(tmp_path / "out.png").pixels, 16)
    assert np.array_equal(out, nearest2(arr))  # full 16-bit precision survives


def test_rgba_keeps_alpha(tmp_path: Path, model: Path, identity_model: Path, capsys) -> None:
    arr = (rand_image(10, 14, 4) * 255).astype(np.uint8)
    arr[..., 3] = 128
    src = save_png(tmp_path / "const.png", arr)
    code, err = run_cli(capsys, model, src, tmp_path / "const_out.png")
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "const_out.png"))
    assert out.shape == (20, 28, 4) and np.all(out[..., 3] == 128)

    arr[:, 7:, 3] = 255  # a step: goes through the (identity) model like a grey image
    src = save_png(tmp_path / "step.png", arr)
    code, err = run_cli(capsys, identity_model, src, tmp_path / "step_out.png")
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "step_out.png"))
    assert np.abs(out[..., 3].astype(int) - nearest2(arr)[..., 3]).max() <= 1


def test_extend_colour_fills_transparent_pixels_from_the_visible_ones_only() -> None:
    rng = np.random.default_rng(5)
    colour = rng.random((4, 4, 3)).astype(np.float32)
    alpha = np.ones((4, 4, 1), np.float32)
    alpha[1, 1] = 0.0  # a hole: its 2×2 block holds three visible pixels
    alpha[0, 0] = 0.5  # which count by their alpha
    out = upscale.extend_colour(colour, alpha)
    hidden = alpha[..., 0] == 0
    assert np.array_equal(out[~hidden], colour[~hidden])  # visible pixels untouched
    w = np.array([0.5, 1.0, 1.0])[:, None]
    want = (colour[[0, 0, 1], [0, 1, 0]] * w).sum(0) / w.sum()
    np.testing.assert_allclose(out[1, 1], want, rtol=1e-6)
    assert not np.allclose(out[1, 1], colour[1, 1])

    # a large transparent area far from a single visible colour takes that colour everywhere
    colour = np.zeros((9, 13, 1), np.float32)
    alpha = np.zeros((9, 13, 1), np.float32)
    colour[2:4, 1:3], alpha[2:4, 1:3] = 0.7, 1.0
    np.testing.assert_allclose(upscale.extend_colour(colour, alpha), 0.7, rtol=1e-6)

    # nothing transparent, or nothing visible: the colour as it is
    part = colour[:5, :3]
    for a in (np.ones((5, 3, 1), np.float32), np.zeros((5, 3, 1), np.float32)):
        assert upscale.extend_colour(part, a) is part


def test_odd_sizes_keep_the_fill_within_the_visible_colours() -> None:
    rng = np.random.default_rng(6)
    colour = rng.random((7, 5, 3)).astype(np.float32)
    alpha = (rng.random((7, 5, 1)) > 0.7).astype(np.float32)
    out = upscale.extend_colour(colour, alpha)
    seen = colour[alpha[..., 0] > 0]
    assert out.shape == colour.shape and out.dtype == np.float32
    assert np.all(out >= seen.min(0) - 1e-6) and np.all(out <= seen.max(0) + 1e-6)


def test_transparent_colour_does_not_bleed_into_visible_edges(
    tmp_path: Path, model: Path, capsys
) -> None:
    """A red square on transparent black: by default its visible pixels upscale exactly as
    those of an all-red image (the model never sees the black); with ``keep`` the black
    under the transparent pixels reaches the visible edge pixels."""
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[3:9, 3:9] = (200, 30, 30, 255)
    src = save_png(tmp_path / "sprite.png", rgba)
    red = save_png(tmp_path / "red.png", np.broadcast_to(rgba[5:6, 5:6, :3], (12, 12, 3)).copy())
    for name, args in (("ext.png", ()), ("keep.png", ("--transparent-colour", "keep"))):
        code, err = run_cli(capsys, model, src, tmp_path / name, *args)
        assert code == 0, err
    code, err = run_cli(capsys, model, red, tmp_path / "red_out.png")
    assert code == 0, err
    ext, keep, ref = (
        np.asarray(Image.open(tmp_path / n)).astype(int)
        for n in ("ext.png", "keep.png", "red_out.png")
    )
    visible = ext[..., 3] > 0
    assert visible[6:18, 6:18].all() and np.array_equal(ext[..., 3], keep[..., 3])
    assert np.array_equal(ext[..., :3][visible], ref[visible])
    assert np.abs(keep[..., :3][visible] - ref[visible]).max() > 10


def test_webp_lossless(tmp_path: Path, identity_model: Path, capsys) -> None:
    arr = (rand_image(16, 12, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "a.png", arr)
    code, err = run_cli(capsys, identity_model, src, tmp_path / "l.webp", "--lossless")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.webp")), nearest2(arr))
    code, err = run_cli(capsys, identity_model, src, tmp_path / "q.webp")
    assert code == 0, err
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "q.webp")), nearest2(arr))


def test_lossless_jpeg_is_refused_before_the_model_runs(
    tmp_path: Path, model: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upscale, "load_descriptor", lambda p: pytest.fail("model loaded"))
    src = save_png(tmp_path / "a.png", (rand_image(8, 8, 3) * 255).astype(np.uint8))
    code, err = run_cli(capsys, model, src, tmp_path / "o.jpg", "--lossless")
    assert code == 2 and "JPEG, which has no lossless mode" in err and "o.jpg" in err
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((rand_image(8, 8, 3) * 255).astype(np.uint8)).save(folder / "b.jpg")
    code, err = run_cli(capsys, model, folder, tmp_path / "out", "--lossless")
    assert code == 2 and "1 output(s) would be JPEG" in err and "--format png" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(imageio.OutputError, match="JPEG has no lossless mode"):
        imageio.write_image(tmp_path / "x.jpg", np.zeros((4, 4, 3)), "jpg", lossless=True)
    assert not (tmp_path / "x.jpg").exists()


def test_greyscale_in_greyscale_out(tmp_path: Path, identity_model: Path, capsys) -> None:
    src = save_png(tmp_path / "g.png", (rand_image(9, 12, 1) * 255).astype(np.uint8))
    code, err = run_cli(capsys, identity_model, src, tmp_path / "g_out.png")
    assert code == 0, err
    out = Image.open(tmp_path / "g_out.png")
    assert out.mode == "L" and out.size == (24, 18)
    expected = nearest2(np.asarray(Image.open(src))[..., None])[..., 0]
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 1


def test_rgb_through_one_channel_model(tmp_path: Path, capsys) -> None:
    grey_model = save_model(compact(identity=True, channels=1), tmp_path / "grey.safetensors")
    arr = (rand_image(7, 10, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "c.png", arr)
    code, err = run_cli(capsys, grey_model, src, tmp_path / "c_out.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c_out.png")), nearest2(arr))


def test_grey_planes_go_through_an_rgb_model_and_back_with_bt601_weights() -> None:
    """A grey image, and the alpha plane of any image, go through a 3-channel model as
    R = G = B, and the model's three output channels are combined with the BT.601 luma
    weights (0.299, 0.587, 0.114)."""
    gains = np.array([0.2, 0.5, 1.0], np.float32)

    def run(a: np.ndarray) -> np.ndarray:  # nearest ×2 treating the channels differently
        assert a.shape[-1] == 3
        return nearest2(a * gains)

    luma = 0.299 * 0.2 + 0.587 * 0.5 + 0.114 * 1.0
    grey = rand_image(5, 4, 1)
    la = np.concatenate([grey, rand_image(5, 4, 1, seed=1)], axis=-1)
    rgba = np.concatenate([rand_image(5, 4, 3, seed=2), la[..., 1:]], axis=-1)
    np.testing.assert_allclose(upscale.upscale_pixels(grey, run, 3), nearest2(grey) * luma, 1e-6)
    np.testing.assert_allclose(upscale.upscale_pixels(la, run, 3), nearest2(la) * luma, 1e-6)
    out = upscale.upscale_pixels(rgba, run, 3)
    np.testing.assert_allclose(out[..., :3], nearest2(rgba[..., :3]) * gains, 1e-6)
    np.testing.assert_allclose(out[..., 3:], nearest2(rgba[..., 3:]) * luma, 1e-6)


@pytest.mark.parametrize(("suffix", "pil_format"), [(".jpg", "JPEG"), (".webp", "WEBP")])
def test_lossy_formats_keep_format(
    tmp_path: Path, model: Path, capsys, suffix: str, pil_format: str
) -> None:
    src = tmp_path / f"a{suffix}"
    Image.fromarray((rand_image(16, 12, 3) * 255).astype(np.uint8)).save(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, err = run_cli(capsys, model, src, out_dir, "--quality", "80")
    assert code == 0, err
    out = Image.open(out_dir / f"a{suffix}")
    assert out.format == pil_format and out.size == (24, 32)


@pytest.mark.parametrize(("suffix", "pil_format"), [(".jpg", "JPEG"), (".webp", "WEBP")])
def test_quality_reaches_the_encoder(
    tmp_path: Path, identity_model: Path, capsys, suffix: str, pil_format: str
) -> None:
    """The output decodes to what Pillow makes of the expected image (nearest ×2) at the
    --quality given, not at the default 95."""
    arr = (rand_image(16, 12, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "a.png", arr)

    def encoded(quality: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(nearest2(arr)).save(buf, format=pil_format, quality=quality)
        return np.asarray(Image.open(buf))

    code, err = run_cli(capsys, identity_model, src, tmp_path / f"o{suffix}", "--quality", "10")
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / f"o{suffix}"))
    assert np.array_equal(out, encoded(10))
    assert not np.array_equal(out, encoded(95))


def test_icc_profile_is_carried_over(tmp_path: Path, identity_model: Path, capsys) -> None:
    """The input's ICC profile is embedded in the output: RGB (8- and 16-bit PNG) and grey
    with alpha, whose profile is a greyscale one."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray = bytes(16) + b"GRAY" + bytes(108)
    rgb8 = tmp_path / "rgb8.png"
    Image.fromarray((rand_image(6, 5, 3) * 255).astype(np.uint8)).save(rgb8, icc_profile=srgb)
    la = tmp_path / "la.png"
    Image.fromarray((rand_image(6, 5, 2) * 255).astype(np.uint8)).save(la, icc_profile=gray)
    rgb16 = tmp_path / "rgb16.png"
    arr16 = np.random.default_rng(4).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    rgb16.write_bytes(imageio.encode_png16(arr16, srgb))
    for src, profile, mode in ((rgb8, srgb, "RGB"), (la, gray, "LA"), (rgb16, srgb, None)):
        out = tmp_path / f"out_{src.name}"
        code, err = run_cli(capsys, identity_model, src, out)
        assert code == 0, err
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == profile, src.name
            assert mode is None or im.mode == mode
    assert imageio.is_png16((tmp_path / "out_rgb16.png").read_bytes())


def test_format_override_and_jpeg_drops_alpha(tmp_path: Path, model: Path, capsys) -> None:
    src = save_png(tmp_path / "a.png", (rand_image(8, 8, 4) * 255).astype(np.uint8))
    code, err = run_cli(capsys, model, src, tmp_path / "o", "--format", "jpg")
    assert code == 0, err
    assert "alpha dropped" in err
    assert Image.open(tmp_path / "o").format == "JPEG"
    la = save_png(tmp_path / "la.png", (rand_image(8, 8, 2) * 255).astype(np.uint8))
    code, err = run_cli(capsys, model, la, tmp_path / "la.jpg")
    assert code == 0, err
    assert "la.png: JPEG has no alpha channel; alpha dropped" in err
    assert Image.open(tmp_path / "la.jpg").mode == "L"
    code, err = run_cli(capsys, model, src, tmp_path / "o.png", "--format", "webp")
    assert code == 2 and "conflicts" in err


def test_folder_mode(tmp_path: Path, model: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        save_png(src / name, (rand_image(8, 10, 3) * 255).astype(np.uint8))
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(src / "d.jpg")
    (src / "broken.png").write_bytes(b"not an image")
    (src / "notes.txt").write_text("ignored")

    code, err = run_cli(capsys, model, src, tmp_path / "out")
    assert code == 0, err
    assert "broken.png" in err and "skipped" in err
    assert "left out 1 files that are not PNG, JPEG or WebP: notes.txt" in err
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
    )
    assert written == ["a.png", "b.png", "d.jpg"]
    assert Image.open(tmp_path / "out" / "a.png").size == (20, 16)

    code, err = run_cli(capsys, model, src, tmp_path / "out2", "--recursive", "--format", "webp")
    assert code == 0, err
    assert (tmp_path / "out2" / "sub" / "c.webp").is_file()
    assert Image.open(tmp_path / "out2" / "d.webp").format == "WEBP"


def test_folder_mode_leaves_hidden_files_out(tmp_path: Path, model: Path, capsys) -> None:
    """Hidden files are not inputs: the temporary file an interrupted run leaves in an output
    folder that is also the input (a real PNG) was upscaled by the next run, and macOS ``._``
    companions were read and reported as broken; a hidden folder is not searched either."""
    src = tmp_path / "in"
    (src / ".cache").mkdir(parents=True)
    save_png(src / "a.png", (rand_image(6, 6, 3) * 255).astype(np.uint8))
    save_png(src / ".a.x1y2.partial.png", (rand_image(6, 6, 3) * 255).astype(np.uint8))
    save_png(src / ".cache" / "b.png", (rand_image(6, 6, 3) * 255).astype(np.uint8))
    (src / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    code, err = run_cli(capsys, model, src, tmp_path / "out", "--recursive")
    assert code == 0, err
    assert "skipped" not in err and "left out" not in err
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
    )
    assert written == ["a.png"]


def test_folder_mode_takes_upper_case_suffixes_and_keeps_them(
    tmp_path: Path, model: Path, capsys
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    save_png(src / "A.PNG", (rand_image(6, 6, 3) * 255).astype(np.uint8))
    Image.fromarray((rand_image(6, 6, 3) * 255).astype(np.uint8)).save(src / "b.JPEG")
    code, err = run_cli(capsys, model, src, tmp_path / "out")
    assert code == 0, err
    assert "left out" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["A.PNG", "b.JPEG"]
    assert Image.open(tmp_path / "out" / "A.PNG").format == "PNG"
    # --format jpg changes the PNG's suffix and keeps the JPEG's own
    code, err = run_cli(capsys, model, src, tmp_path / "out2", "--format", "jpg")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["A.jpg", "b.JPEG"]


def test_a_finished_run_says_what_it_wrote(tmp_path: Path, model: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        save_png(src / name, np.zeros((4, 4, 3), np.uint8))
    (src / "broken.png").write_bytes(b"not an image")
    assert upscale.main([str(model), str(src / "a.png"), str(tmp_path / "one.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'one.png'}\n"
    assert upscale.main([str(model), str(src), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == f"wrote 2 images to {tmp_path / 'out'}\n"


def test_a_single_output_needs_an_image_suffix_or_format(
    tmp_path: Path, model: Path, capsys
) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    for name in ("x.txt", "noext"):
        code, err = run_cli(capsys, model, src, tmp_path / name)
        assert code == 2 and "does not end in an image suffix (.png, .jpg, .jpeg, .webp)" in err
        assert not (tmp_path / name).exists()
    code, err = run_cli(capsys, model, src, tmp_path / "noext", "--format", "png")
    assert code == 0, err
    assert Image.open(tmp_path / "noext").format == "PNG"


def test_format_refuses_an_output_named_for_another_image_type(
    tmp_path: Path, model: Path, capsys
) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    for name in ("o.tif", "o.BMP"):
        code, err = run_cli(capsys, model, src, tmp_path / name, "--format", "png")
        assert code == 2, err
        assert f"ends in {Path(name).suffix}, an image type upscale does not write" in err
        assert "name it o.png" in err
        assert not (tmp_path / name).exists()


def test_a_folder_of_only_unreadable_images_fails(tmp_path: Path, model: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"not an image")
    code, err = run_cli(capsys, model, tmp_path / "in", tmp_path / "out")
    assert code == 2 and "none of the 1 images could be read; nothing was written" in err


def test_an_output_name_ending_in_a_slash_is_a_folder(tmp_path: Path, model: Path, capsys) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    code, err = run_cli(capsys, model, src, f"{tmp_path / 'new'}/")
    assert code == 0, err
    assert Image.open(tmp_path / "new" / "a.png").size == (8, 8)
    (tmp_path / "file").write_bytes(b"x")
    code, err = run_cli(capsys, model, src, f"{tmp_path / 'file'}/")
    assert code == 2 and "names a folder" in err


def test_folder_input_with_file_output(tmp_path: Path, model: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "out.png").write_bytes(b"x")
    code, err = run_cli(capsys, model, tmp_path / "in", tmp_path / "out.png")
    assert code == 2 and str(tmp_path / "out.png") in err and "is a file" in err


def test_missing_files(tmp_path: Path, model: Path, capsys) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    code, err = run_cli(capsys, model, tmp_path / "nope.png", tmp_path / "o.png")
    assert code == 2 and str(tmp_path / "nope.png") in err
    code, err = run_cli(capsys, tmp_path / "nope.pth", src, tmp_path / "o.png")
    assert code == 2 and str(tmp_path / "nope.pth") in err and "Traceback" not in err


def test_unreadable_single_image(tmp_path: Path, model: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, err = run_cli(capsys, model, bad, tmp_path / "o.png")
    assert code == 2 and str(bad) in err


def test_real_loader_rejects_junk_and_loads_compact(
    tmp_path: Path, model: Path, monkeypatch, capsys
) -> None:
    from hybridmoe.checkpoint import load_checkpoint

    monkeypatch.setattr(upscale, "load_checkpoint", load_checkpoint)
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    code, err = run_cli(capsys, junk, src, tmp_path / "o.png")
    assert code == 2 and "Traceback" not in err and str(junk) in err
    code, err = run_cli(capsys, model, src, tmp_path / "o.png")
    assert code == 0, err


def test_dtype_refusal(tmp_path: Path, model: Path, monkeypatch, capsys) -> None:
    d = descriptor_of(compact(), tmp_path)
    d.supports_half = False
    with pytest.raises(
        upscale.CliError, match=r"does not support --dtype fp16; supported: fp32, bf16"
    ):
        upscale.check_dtype(d, "fp16")
    assert upscale.check_dtype(d, "bf16") == torch.bfloat16

    monkeypatch.setattr(upscale, "load_checkpoint", lambda p, dev="cpu": d)
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    code, err = run_cli(capsys, model, src, tmp_path / "o.png", "--dtype", "fp16")
    assert code == 2 and "fp16" in err and "fp32, bf16" in err


@pytest.mark.parametrize(
    "error",
    [torch.cuda.OutOfMemoryError("CUDA out of memory."), RuntimeError("CUDA out of memory.")],
)
def test_out_of_memory_suggests_smaller_tile(
    tmp_path: Path, model: Path, monkeypatch, capsys, error: Exception
) -> None:
    d = descriptor_of(compact(), tmp_path)

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise error

    d.model.forward = boom
    monkeypatch.setattr(upscale, "load_checkpoint", lambda p, dev="cpu": d)
    src = save_png(tmp_path / "a.png", np.zeros((100, 90, 3), np.uint8))
    code, err = run_cli(capsys, model, src, tmp_path / "o.png", "--tile", "64")
    assert code == 2 and "out of memory" in err and "--tile 32" in err
    assert "Traceback" not in err
    wide = save_png(tmp_path / "w.png", np.zeros((4, 1200, 3), np.uint8))
    code, err = run_cli(capsys, model, wide, tmp_path / "o.png", "--tile", "0")
    assert code == 2 and "--tile 512" in err
    code, err = run_cli(capsys, model, src, tmp_path / "o.png", "--tile", "0")
    assert code == 2 and err.rstrip().endswith("e.g. --tile 50")
    code, err = run_cli(
        capsys, model, src, tmp_path / "o.png", "--tile", "64", "--tile-overlap", "20"
    )
    assert code == 2 and "--tile 32 --tile-overlap 8" in err  # 32 <= 3 × 20: overlap too


def test_tiling_policy(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    d = descriptor_of(compact(), tmp_path)
    monkeypatch.setattr(upscale, "available_memory", lambda dev: (2**40, "test"))

    def plan(tile: int | None, h: int, w: int) -> int:
        settings = upscale.Settings(d, torch.device("cpu"), torch.float32, tile, 16, 95)
        return upscale.plan_tile(settings, h, w, 3, tmp_path / "x.png")

    assert plan(None, 100, 100) == 0
    assert plan(None, 1000, 1000) == 0  # fits in memory: whole image
    assert plan(128, 100, 100) == 128
    d.tiling = ModelTiling.DISCOURAGED
    assert plan(None, 1000, 1000) == 0
    assert plan(128, 1000, 1000) == 128
    upscale.check_tiling(d, 128, 16)
    assert "discourages tiling" in capsys.readouterr().err
    d.tiling = ModelTiling.INTERNAL
    assert plan(128, 1000, 1000) == 0
    with pytest.raises(upscale.CliError, match="larger than 3 x --tile-overlap"):
        d.tiling = ModelTiling.SUPPORTED
        upscale.check_tiling(d, 40, 16)
    upscale.check_tiling(d, None, 200)  # auto tiling picks tiles larger than 3 x overlap
    upscale.check_tiling(d, 0, 200)


def test_a_tiled_run_matches_the_whole_image_run(tmp_path: Path, model: Path, capsys) -> None:
    """With --tile-overlap covering the model's receptive field, the tiles of a run join into
    the whole-image result (16-bit output, in which a seam of 1e-4 shows)."""
    arr = np.random.default_rng(5).integers(0, 65536, (45, 37, 3), dtype=np.uint16)
    src = tmp_path / "a.png"
    src.write_bytes(png16_bytes(arr))
    outs = []
    for tile in (0, 24):
        out = tmp_path / f"t{tile}.png"
        code, err = run_cli(
            capsys, model, src, out, "--tile", tile, "--tile-overlap", RECEPTIVE_RADIUS
        )
        assert code == 0, err
        outs.append(imageio.quantize(imageio.read_image(out).pixels, 16).astype(np.int64))
    assert np.abs(outs[0] - outs[1]).max() <= 1


def test_a_tile_of_three_overlaps_is_refused(tmp_path: Path, model: Path, capsys) -> None:
    """Windows of 3 x --tile-overlap pixels leave nothing between their cross-fades: such a
    --tile is refused with the fix named; one pixel more runs."""
    src = save_png(tmp_path / "a.png", (rand_image(60, 60, 3) * 255).astype(np.uint8))
    args = ("--tile-overlap", 16, "--tile")
    code, err = run_cli(capsys, model, src, tmp_path / "o.png", *args, 48)
    assert code == 2
    assert "tile 48 must be larger than 3 x --tile-overlap (48)" in err
    assert "use a larger --tile or a smaller --tile-overlap" in err
    assert not (tmp_path / "o.png").exists()
    code, err = run_cli(capsys, model, src, tmp_path / "o.png", *args, 49)
    assert code == 0, err


def test_a_wide_overlap_without_tile_runs_the_whole_image(
    tmp_path: Path, identity_model: Path, capsys
) -> None:
    """Auto tiling does not reject --tile-overlap 200 for a tile the user never gave."""
    src = save_png(tmp_path / "a.png", (rand_image(20, 30, 3) * 255).astype(np.uint8))
    code, err = run_cli(capsys, identity_model, src, tmp_path / "o.png", "--tile-overlap", "200")
    assert code == 0, err


def test_help_documents_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        upscale.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--tile", "--tile-overlap", "--dtype", "--device", "--format", "--quality"):
        assert option in text
    assert "alpha" in text and "--overwrite" in text and "MemAvailable" in text
    assert "CMYK profile is neither applied nor kept" in text  # not "the profile is carried over"


def test_quality_errors_name_the_range(capsys) -> None:
    """--quality that is not a number said "invalid _quality value" (the function's name)."""
    for value, message in (
        ("high", "must be an integer from 1 to 100, got 'high'"),
        ("0", "got 0"),
    ):
        with pytest.raises(SystemExit) as exc:
            upscale.main(["m.safetensors", "in.png", "out.png", "--quality", value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "_quality" not in err, err


def _noise_model(tmp_path: Path) -> Path:
    """A HybridMoE nano x2 with the texture head's noise injection (weights perturbed so that
    every layer passes the noise on; its strength raised from 0)."""
    import hybridmoe_arch as A
    from hybridmoe.models import perturb

    net = perturb(A.hybridmoe_nano(scale=2, texture_head=True, noise=True))
    with torch.no_grad():
        net.head.noise_strength.fill_(0.5)
    return save_model(net, tmp_path / "noise.safetensors")


def test_noise_flag_switches_on_the_learned_noise_reproducibly(tmp_path: Path, capsys) -> None:
    """--noise SEED: the output changes, the same seed gives the same file, another seed
    another file; a model without noise injection is refused with the fix named."""
    register_spandrel()  # this module loads through spandrel's own registry
    model = _noise_model(tmp_path)
    src = save_png(tmp_path / "a.png", (rand_image(16, 12, 3) * 255).astype(np.uint8))
    outs = {}
    for name, extra in {
        "off": [],
        "s1": ["--noise", 1],
        "s1b": ["--noise", 1],
        "s2": ["--noise", 2],
    }.items():
        code, err = run_cli(capsys, model, src, tmp_path / f"{name}.png", *extra)
        assert code == 0, err
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(outs["s1"], outs["s1b"])
    assert not np.array_equal(outs["s1"], outs["off"])
    assert not np.array_equal(outs["s1"], outs["s2"])
    plain = save_model(compact(), tmp_path / "plain.safetensors")
    code, err = run_cli(capsys, plain, src, tmp_path / "plain.png", "--noise", 1)
    assert code == 2 and "no learned noise injection" in err and "drop --noise" in err
    assert not (tmp_path / "plain.png").exists()


def test_float16_on_the_cpu_is_flagged_as_slow(tmp_path: Path, model: Path, capsys) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    code, err = run_cli(
        capsys, model, src, tmp_path / "o.png", "--dtype", "fp16", "--device", "cpu"
    )
    assert code == 0, err
    assert "float16 is slow on a CPU" in err
    code, err = run_cli(capsys, model, src, tmp_path / "o32.png", "--device", "cpu")
    assert code == 0 and "slow" not in err


@pytest.mark.parametrize("name", ["anim.webp", "anim.png"])
def test_an_animated_image_is_refused_not_cut_to_its_first_frame(
    tmp_path: Path, model: Path, capsys, name: str
) -> None:
    """Animated WebP and APNG inputs were upscaled as their first frame without a word."""
    first = Image.fromarray((rand_image(8, 8, 3) * 255).astype(np.uint8))
    second = Image.fromarray((rand_image(8, 8, 3, seed=1) * 255).astype(np.uint8))
    src = tmp_path / name
    first.save(src, save_all=True, append_images=[second], duration=100)
    code, err = run_cli(capsys, model, src, tmp_path / "out.png")
    assert code == 2, err
    assert f"{src}: animated image (2 frames): only still images are supported" in err
    assert "extract a frame first" in err
    assert not (tmp_path / "out.png").exists()
