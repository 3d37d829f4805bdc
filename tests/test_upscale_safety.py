"""Safety of the upscale CLI and its image I/O: atomic writes, no overwriting of inputs or
existing outputs, NaN/Inf detection, memory-driven tiling and clear errors on bad files
(a bounded fuzz test). CPU, tiny random Compact ×2 models, in-process ``upscale.main``."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from spandrel import ModelLoader, ModelTiling
from test_upscale import compact, descriptor_of, nearest2, rand_image, save_model, save_png

from hybridmoe import imageio, tiling, upscale

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def spandrel_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load checkpoints with spandrel's built-in architectures (independent of HybridMoE)."""
    monkeypatch.setattr(
        upscale, "load_checkpoint", lambda p, d="cpu": ModelLoader(d).load_from_file(p)
    )


@pytest.fixture
def identity_model(tmp_path: Path) -> Path:
    """Compact ×2 checkpoint computing exactly the nearest-neighbour upsample."""
    return save_model(compact(identity=True), tmp_path / "identity.safetensors")


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Run ``upscale.main`` with string arguments; return (exit status, stderr without the
    progress bars)."""
    code = upscale.main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.replace("\r", "\n").splitlines()
    return code, "\n".join(line for line in lines if not _is_progress(line))


def _is_progress(line: str) -> bool:
    """Whether ``line`` is (part of) a tqdm progress bar or empty."""
    return not line.strip() or "\x1b" in line or "|" in line


def listing(folder: Path) -> list[str]:
    """Names in ``folder`` (temporary files included), sorted."""
    return sorted(p.name for p in folder.iterdir())


def image_bytes(fmt: str, seed: int = 0, size: tuple[int, int] = (12, 10)) -> bytes:
    """A small RGB image encoded by Pillow as ``fmt`` ("PNG" or "JPEG")."""
    buf = io.BytesIO()
    Image.fromarray((rand_image(size[1], size[0], 3, seed) * 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int, depth: int = 8, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width × height`` RGB with little or bogus data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


# ------------------------------------------------------------------------ atomic writes


def test_atomic_output_failure_leaves_nothing_or_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"

    def write(content: bytes, error: BaseException | None = None, **kw: bool) -> None:
        with imageio.atomic_output(target, **kw) as tmp:
            tmp.write_bytes(content)
            if error is not None:
                raise error

    for error in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            write(b"\x89PNG half", error)
        assert listing(tmp_path) == []
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        write(b"\x89PNG half", KeyboardInterrupt(), overwrite=True)
    assert listing(tmp_path) == ["out.png"] and target.read_bytes() == b"old"

    with pytest.raises(imageio.OutputError, match="appeared"):
        write(b"new")
    assert listing(tmp_path) == ["out.png"] and target.read_bytes() == b"old"
    write(b"new", overwrite=True)
    assert listing(tmp_path) == ["out.png"] and target.read_bytes() == b"new"
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_interrupted_save_leaves_no_partial_png(
    tmp_path: Path, identity_model: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """An interrupt in the middle of encoding: no truncated PNG under the output name."""
    src = save_png(tmp_path / "a.png", (rand_image(9, 8, 3) * 255).astype(np.uint8))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_save = Image.Image.save

    def interrupted(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        buf = io.BytesIO()
        real_save(self, buf, *args, **kwargs)
        Path(str(fp)).write_bytes(buf.getvalue()[:40])  # half written ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setattr(Image.Image, "save", interrupted)
    code, err = run_cli(capsys, identity_model, src, out_dir / "a.png")
    assert code == 130 and "interrupted" in err
    assert listing(out_dir) == []


# --------------------------------------------------------------------- overwriting


def test_hard_link_to_input_is_refused(tmp_path: Path, identity_model: Path, capsys) -> None:
    arr = (rand_image(8, 8, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "a.png", arr)
    before = src.read_bytes()
    os.link(src, tmp_path / "b.png")
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(capsys, identity_model, src, tmp_path / "b.png", *extra)
        assert code == 2 and "same file as input" in err and str(src) in err
        assert src.read_bytes() == before
    # folder mode: an output that is a hard link of another input
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "x.png", arr)
    save_png(tmp_path / "in" / "y.png", arr)
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "y.png", tmp_path / "out" / "x.png")
    code, err = run_cli(capsys, identity_model, tmp_path / "in", tmp_path / "out", "--overwrite")
    assert code == 2 and "same file as input" in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "in" / "y.png")), arr)


def test_existing_output_needs_overwrite(tmp_path: Path, identity_model: Path, capsys) -> None:
    arr = (rand_image(8, 6, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "a.png", arr)
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    code, err = run_cli(capsys, identity_model, src, out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    code, err = run_cli(capsys, identity_model, src, out, "--overwrite")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), nearest2(arr))

    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", arr)
    save_png(tmp_path / "in" / "b.png", arr)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").write_bytes(b"precious")
    code, err = run_cli(capsys, identity_model, tmp_path / "in", tmp_path / "out")
    assert code == 2 and "b.png already exists" in err
    assert listing(tmp_path / "out") == ["b.png"]  # checked before anything is written


def test_a_dangling_link_at_the_output_counts_as_existing(
    tmp_path: Path, identity_model: Path, capsys
) -> None:
    """A symbolic link to nothing passed the up-front check (stat follows links); the model
    ran, and the write failed with "appeared while it was being written"."""
    arr = (rand_image(8, 6, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "a.png", arr)
    out = tmp_path / "o.png"
    out.symlink_to(tmp_path / "nowhere.png")
    code, err = run_cli(capsys, identity_model, src, out)
    assert code == 2 and f"output {out} already exists" in err and "appeared" not in err
    assert out.is_symlink() and not out.exists()


def test_an_output_too_large_for_its_format_is_refused_before_the_model_runs(
    tmp_path: Path, identity_model: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WebP stores at most 16383 px per side, JPEG 65500: the encoder failed after the
    whole model run (a traceback for WebP, "broken data stream" for JPEG)."""
    src = save_png(tmp_path / "wide.png", (rand_image(2, 8200, 3) * 255).astype(np.uint8))

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the model ran")

    monkeypatch.setattr(upscale, "upscale_pixels", never)
    code, err = run_cli(capsys, identity_model, src, tmp_path / "wide.webp")
    assert code == 2
    assert "16400x4 is larger than WebP stores (16383 px per side); write PNG" in err
    assert listing(tmp_path) == ["identity.safetensors", "wide.png"]
    assert imageio.size_problem("jpg", 4, 65500) is None
    assert "JPEG stores (65500" in str(imageio.size_problem("jpg", 4, 65501))
    with pytest.raises(imageio.OutputError, match="larger than WebP stores"):
        imageio.write_image(tmp_path / "x.webp", np.zeros((2, 16384, 3), np.float32), "webp")
    assert listing(tmp_path) == ["identity.safetensors", "wide.png"]


def test_icc_profiles_are_kept_only_where_they_fit_the_channels_written(tmp_path: Path) -> None:
    """A CMYK input's profile was embedded in its RGB output, a grey one in RGB WebP output:
    colour-managed viewers misread such files (and a PNG's iCCP must match its colour type)."""

    def profile(space: bytes) -> bytes:
        return bytes(16) + space + bytes(108)

    rgb, gray, cmyk = profile(b"RGB "), profile(b"GRAY"), profile(b"CMYK")
    assert imageio.profile_for(rgb, 3) == rgb and imageio.profile_for(rgb, 4) == rgb
    assert imageio.profile_for(gray, 1) == gray and imageio.profile_for(gray, 3) is None
    assert imageio.profile_for(cmyk, 3) is None and imageio.profile_for(b"short", 3) is None
    grey = np.full((6, 5, 1), 0.5, np.float32)
    imageio.write_image(tmp_path / "g.webp", grey, "webp", icc_profile=gray)  # stored as RGB
    imageio.write_image(tmp_path / "g.png", grey, "png", icc_profile=gray)
    imageio.write_image(tmp_path / "c.png", np.repeat(grey, 3, -1), "png", icc_profile=cmyk)
    with Image.open(tmp_path / "g.webp") as im:
        assert "icc_profile" not in im.info
    with Image.open(tmp_path / "g.png") as im:
        assert im.info.get("icc_profile") == gray
    with Image.open(tmp_path / "c.png") as im:
        assert "icc_profile" not in im.info


def test_output_appearing_during_the_run_is_kept(
    tmp_path: Path, identity_model: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((6, 6, 3), np.uint8))
    out = tmp_path / "o.png"
    real = upscale.upscale_pixels

    def racing(*args: object, **kwargs: object) -> np.ndarray:
        out.write_bytes(b"someone else's")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(upscale, "upscale_pixels", racing)
    code, err = run_cli(capsys, identity_model, src, out)
    assert code == 2 and "appeared" in err
    assert out.read_bytes() == b"someone else's" and listing(tmp_path)[0] == "a.png"


# -------------------------------------------------------------------------- NaN / Inf


def test_nan_weights_fail_and_write_nothing(tmp_path: Path, capsys) -> None:
    net = compact()
    with torch.no_grad():
        net.body[0].weight[0, 0, 0, 0] = float("nan")
    model = save_model(net, tmp_path / "nan.safetensors")
    src = save_png(tmp_path / "a.png", (rand_image(10, 9, 3) * 255).astype(np.uint8))
    code, err = run_cli(capsys, model, src, tmp_path / "o.png")
    assert code == 2 and "NaN/Inf" in err and str(src) in err and "--dtype fp32" in err
    assert "check the model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_inf_is_detected_before_clamping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """spandrel clamps outputs to [0, 1], which turns Inf into 1: the raw output is checked."""
    d = descriptor_of(compact(identity=True), tmp_path)
    forward = d.model.forward

    def overflowing(x: torch.Tensor) -> torch.Tensor:
        y = forward(x)
        y[..., 3, 5] = float("inf")
        return y

    d.model.forward = overflowing
    monkeypatch.setattr(upscale, "load_checkpoint", lambda p, dev="cpu": d)
    src = save_png(tmp_path / "a.png", np.full((8, 8, 3), 100, np.uint8))
    code, err = run_cli(capsys, tmp_path / "m.safetensors", src, tmp_path / "o.png")
    assert code == 2 and "3 NaN/Inf values" in err and "fp32" in err
    assert not (tmp_path / "o.png").exists()
    code, err = run_cli(
        capsys, tmp_path / "m.safetensors", src, tmp_path / "o.png", "--dtype", "bf16"
    )
    assert code == 2 and "--dtype bf16" in err and "try --dtype fp32" in err


# ------------------------------------------------------------------------ memory


def test_meminfo_and_fallback(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16000000 kB\nMemAvailable:    1234567 kB\n")
    assert tiling.host_memory_available(info) == 1234567 * 1024
    assert tiling.host_memory_available(tmp_path / "missing") is None
    available, source = tiling.available_memory(torch.device("cpu"))
    assert available > 0 and source in ("MemAvailable", "fixed budget (available memory unknown)")


def test_probe_measures_peak_tensor_memory() -> None:
    """Two 4 MB buffers alive at once, then one: the peak is about 8 MB (per input pixel)."""

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        a = torch.zeros(1 << 20) + x.mean()
        b = a * 2
        del a
        c = b + 1
        return c[:4]

    per_pixel = tiling.forward_bytes_per_pixel(model_fn, torch.rand(1, 1, 4, 4))
    assert 8 << 20 <= per_pixel * 16 < 9 << 20
    assert tiling.largest_fitting_tile(100.0, 1e6, 50, 60, overlap=16) == 0
    assert tiling.largest_fitting_tile(100.0, 1e6, 500, 600, overlap=16) == 96
    assert tiling.largest_fitting_tile(100.0, 1e6, 500, 600, overlap=16, step=32) == 96
    assert tiling.largest_fitting_tile(100.0, 1e5, 500, 600, overlap=16) is None


def test_memory_decides_tiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Without --tile, an image whose forward does not fit in memory is tiled by itself (also
    for a model that discourages tiling), the result matching the whole-image one; with too
    little memory even for tiles, a clear error."""
    net = compact()
    model = save_model(net, tmp_path / "m.safetensors")
    arr = (rand_image(150, 140, 3) * 255).astype(np.uint8)
    src = save_png(tmp_path / "a.png", arr)
    code, err = run_cli(capsys, model, src, tmp_path / "whole.png", "--tile", "0")
    assert code == 0, err
    whole = np.asarray(Image.open(tmp_path / "whole.png")).astype(int)

    d = descriptor_of(net, tmp_path)
    x = torch.rand(1, 3, upscale.PROBE_SIDE, upscale.PROBE_SIDE)
    per_pixel = tiling.forward_bytes_per_pixel(d, x) * upscale.MEMORY_HEADROOM
    budget = per_pixel * 100 * 100  # room for tiles of 96, not for 150 × 140
    host = upscale.HOST_COPIES * 300 * 280 * 3 * 4
    monkeypatch.setattr(
        upscale, "available_memory", lambda dev: ((budget + host) / upscale.MEMORY_SHARE, "test")
    )
    seen: list[int] = []
    real = upscale.upscale_tiled
    monkeypatch.setattr(
        upscale, "upscale_tiled", lambda *a, **k: seen.append(a[3]) or real(*a, **k)
    )
    code, err = run_cli(capsys, model, src, tmp_path / "auto.png")
    assert code == 0, err
    assert seen == [96] and "tiling with --tile 96" in err
    assert np.abs(np.asarray(Image.open(tmp_path / "auto.png")).astype(int) - whole).max() <= 1

    d.tiling = ModelTiling.DISCOURAGED
    monkeypatch.setattr(upscale, "load_checkpoint", lambda p, dev="cpu": d)
    code, err = run_cli(capsys, model, src, tmp_path / "disc.png")
    assert code == 0 and "discourages tiling" in err and seen[-1] == 96

    budget = per_pixel * 40 * 40
    code, err = run_cli(capsys, model, src, tmp_path / "none.png")
    assert code == 2 and "not enough memory" in err and str(src) in err
    assert not (tmp_path / "none.png").exists()

    monkeypatch.setattr(upscale, "host_memory_available", lambda: 1000)
    code, err = run_cli(capsys, model, src, tmp_path / "none.png")
    assert code == 2 and "output alone needs" in err
    # more than the need, less than the need over the share upscale uses: the message said
    # "needs about 1.00 GiB, 1.11 GiB available", which reads as if it fitted
    monkeypatch.setattr(upscale, "host_memory_available", lambda: host / 0.9)
    monkeypatch.setattr(upscale, "available_memory", lambda dev: (host / 0.9, "test"))
    code, err = run_cli(capsys, model, src, tmp_path / "none.png")
    assert code == 2 and "output alone needs" in err
    assert f"more than the {int(upscale.MEMORY_SHARE * 100)}% of the" in err
    assert "tiling does not shrink the output" in err


def _refused_then_run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model: Path,
    src: Path,
    out: Path,
    *,
    need: float,
    too_little: float,
    enough: float,
) -> None:
    """With plenty of device memory: host memory for ``too_little``·``need`` bytes of output
    copies is refused up front (nothing written), for ``enough``·``need`` the run succeeds."""
    monkeypatch.setattr(upscale, "available_memory", lambda dev: (2**34, "test"))
    for factor, refused in ((too_little, True), (enough, False)):
        host = factor * need / upscale.MEMORY_SHARE
        monkeypatch.setattr(upscale, "host_memory_available", lambda host=host: host)
        code, err = run_cli(capsys, model, src, out)
        if refused:
            assert code == 2 and "output alone needs" in err, err
            assert not out.exists()
        else:
            assert code == 0, err


def test_a_grey_image_is_planned_with_the_models_channels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A grey image runs through a 3-channel model as RGB, so its output copies have three
    channels: host memory for the 1-channel output only (not for three) is refused up front
    instead of being planned as enough."""
    model = save_model(compact(), tmp_path / "m.safetensors")
    arr = (rand_image(150, 140, 1)[..., 0] * 255).astype(np.uint8)
    src = tmp_path / "g.png"
    Image.fromarray(arr, mode="L").save(src)
    grey_need = upscale.HOST_COPIES * 300 * 280 * 1 * 4
    out = tmp_path / "out.png"
    _refused_then_run(monkeypatch, capsys, model, src, out, need=grey_need, too_little=2, enough=4)
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (300, 280)


def test_an_rgba_image_is_planned_with_its_alpha_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The output copies of an RGBA image hold four channels: host memory for three (the
    colour alone) is refused up front; memory for four is enough."""
    model = save_model(compact(), tmp_path / "m.safetensors")
    src = save_png(tmp_path / "a.png", (rand_image(150, 140, 4) * 255).astype(np.uint8))
    rgb_need = upscale.HOST_COPIES * 300 * 280 * 3 * 4
    out = tmp_path / "out.png"
    _refused_then_run(
        monkeypatch, capsys, model, src, out, need=rgb_need, too_little=1.2, enough=1.5
    )
    settings = upscale.Settings(
        descriptor_of(compact(), tmp_path), torch.device("cpu"), torch.float32, None, 16, 95
    )
    assert upscale.plan_tile(settings, 150, 140, 4, src) == 0


def test_a_small_image_is_never_tiled_automatically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to PROBE_SIDE² pixels the whole image runs at once, whatever memory reports."""
    settings = upscale.Settings(
        descriptor_of(compact(), tmp_path), torch.device("cpu"), torch.float32, None, 16, 95
    )
    monkeypatch.setattr(upscale, "available_memory", lambda dev: (1, "test"))
    monkeypatch.setattr(upscale, "host_memory_available", lambda: 1)
    side = upscale.PROBE_SIDE
    assert upscale.plan_tile(settings, side, side, 3, tmp_path / "x.png") == 0
    assert upscale.plan_tile(settings, 1, side * side, 3, tmp_path / "x.png") == 0
    with pytest.raises(upscale.CliError, match="not enough memory"):
        upscale.plan_tile(settings, side, side + 1, 3, tmp_path / "x.png")


def test_unknown_host_memory_refuses_a_huge_image_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc/meminfo (macOS, Windows) the CPU's fixed budget also bounds the output
    copies: a huge image is refused with a message, not a ``math domain error``."""
    d = descriptor_of(compact(), tmp_path)
    monkeypatch.setattr(upscale, "host_memory_available", lambda: None)
    monkeypatch.setattr(tiling, "host_memory_available", lambda: None)
    settings = upscale.Settings(d, torch.device("cpu"), torch.float32, None, 16, 95)
    with pytest.raises(upscale.CliError, match=r"output alone needs .* 4\.00 GiB available"):
        upscale.plan_tile(settings, 12000, 12000, 3, tmp_path / "big.png")


# ------------------------------------------------------------------- clear errors


def test_output_parent_is_a_file(tmp_path: Path, identity_model: Path, capsys) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "f").write_text("x")
    code, err = run_cli(capsys, identity_model, src, tmp_path / "f" / "sub" / "o.png")
    assert code == 2 and err.startswith("error: cannot write to the output folder")
    assert f"{tmp_path / 'f'} is a file" in err and "Traceback" not in err


def test_unwritable_output_folder(
    tmp_path: Path, identity_model: Path, unwritable_folder: Path, capsys
) -> None:
    src = save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    folder = unwritable_folder
    code, err = run_cli(capsys, identity_model, src, folder / "upscale-test-out.png")
    assert code == 2 and f"output folder {folder}: {folder} is not writable" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_decode_errors_name_file_and_cause(tmp_path: Path) -> None:
    cases = {
        "text.png": (b"hello, this is text", "not a PNG, JPEG or WebP image"),
        "empty.png": (b"", "the file is empty"),
        "cut.png": (image_bytes("PNG")[:60], "truncated"),
        "bomb.png": (png_declaring(20000, 20000), "decompression-bomb limit"),
        "bomb16.png": (png_declaring(20000, 20000, 16), "decompression-bomb limit"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(imageio.ImageReadError) as info:
            imageio.read_image(tmp_path / name)
        message = str(info.value)
        assert str(tmp_path / name) in message and reason in message, message
        assert "BytesIO" not in message and "\n" not in message


def test_16bit_png_zlib_bomb_is_not_inflated() -> None:
    """IDAT data inflating far beyond the declared size is read only up to that size."""
    rows = b"".join(b"\0" + bytes(6 * 4) for _ in range(4))
    data = png_declaring(4, 4, 16, idat=zlib.compress(rows + bytes(32 << 20), 1))
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        assert imageio.decode_png(data).shape == (4, 4, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    with pytest.raises(ValueError, match="truncated"):
        imageio.decode_png(png_declaring(4, 4, 16, idat=zlib.compress(rows[:-5])))


def fuzz_cases() -> list[tuple[str, bytes]]:
    """About 40 malformed or odd files from a fixed seed."""
    rng = np.random.default_rng(1234)
    png, jpeg = image_bytes("PNG", 1), image_bytes("JPEG", 2)
    png16 = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16)).save(png16, "PNG")
    sources = {"png": png, "jpg": jpeg, "png16": png16.getvalue()}
    cases = [("empty.png", b""), ("text.png", b"just some text\n" * 5)]
    cases += [("bomb.png", png_declaring(30000, 30000)), ("bomb.jpg", _jpeg_declaring(60000))]
    for key, data in sources.items():
        suffix = ".jpg" if key == "jpg" else ".png"
        for i, cut in enumerate(rng.integers(1, len(data), 5)):
            cases.append((f"{key}_cut{i}{suffix}", data[:cut]))
        for i in range(7):
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), 1 + i % 4):
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            cases.append((f"{key}_flip{i}{suffix}", bytes(flipped)))
    return cases


def _jpeg_declaring(side: int) -> bytes:
    """A JPEG whose SOF header is patched to declare ``side × side`` pixels."""
    data = bytearray(image_bytes("JPEG", 3))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def test_fuzzed_inputs_upscale_or_fail_cleanly(
    tmp_path: Path, identity_model: Path, capsys
) -> None:
    """Each malformed input either upscales (an output of twice its size that decodes) or
    fails with one clear line and exit status 2: never a traceback, never a partial file."""
    cases = fuzz_cases()
    assert len(cases) >= 40
    outcomes = {"ok": 0, "error": 0}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, data in cases:
        src = tmp_path / name
        src.write_bytes(data)
        dst = out_dir / name
        code, err = run_cli(capsys, identity_model, src, dst)
        if code == 0:
            with Image.open(src) as img_in, Image.open(dst) as img_out:
                assert img_out.size == (2 * img_in.size[0], 2 * img_in.size[1]), name
            assert listing(out_dir) == [name], name
            dst.unlink()
            outcomes["ok"] += 1
        else:
            lines = err.strip().splitlines()
            assert code == 2, (name, err)
            assert len(lines) == 1 and lines[0].startswith("error: cannot read image"), err
            assert str(src) in lines[0] and "Traceback" not in err and "BytesIO" not in err
            assert listing(out_dir) == [], name
            outcomes["error"] += 1
    assert outcomes["error"] >= 20 and outcomes["ok"] >= 1, outcomes
