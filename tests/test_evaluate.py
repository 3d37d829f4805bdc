"""SR evaluation tooling: MATLAB-exact bicubic resizing, PSNR/SSIM, and hybridmoe evaluate."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from hybridmoe import evaluate, metrics

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SET5 = DATA / "Set5"
SET5_NAMES = ("baby", "bird", "butterfly", "head", "woman")


def _png(path: Path) -> np.ndarray:
    """A PNG as a uint8 array ``(H, W[, C])``."""
    with Image.open(path) as im:
        return np.asarray(im)


def _compact(tmp: Path, scale: int, name: str) -> Path:
    """A tiny random-weight Compact (SRVGGNetCompact) checkpoint saved as .safetensors."""
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    path = tmp / name
    save_file(net.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def compact_x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _compact(tmp_path_factory.mktemp("models"), 2, "compact_x2.safetensors")


# --------------------------------------------------------------------------------------------
# imresize
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", SET5_NAMES)
def test_imresize_reproduces_matlab_bicubic_lr(name: str, scale: int) -> None:
    hr = metrics.mod_crop(_png(SET5 / "HR" / f"{name}.png"), scale)
    expected = _png(SET5 / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png")
    lr = metrics.imresize_matlab_uint8(hr, 1 / scale)
    assert lr.dtype == np.uint8
    assert lr.shape == expected.shape
    np.testing.assert_array_equal(lr, expected)


def test_imresize_shapes_and_constant_image() -> None:
    img = np.full((10, 7, 3), 0.25)
    assert metrics.imresize_matlab(img, 0.5).shape == (5, 4, 3)  # ceil(7 / 2) = 4
    assert metrics.imresize_matlab(img[..., 0], 3).shape == (30, 21)
    out = metrics.imresize_matlab(img, output_shape=(4, 13))
    assert out.shape == (4, 13, 3)
    np.testing.assert_allclose(out, 0.25, atol=1e-12)  # weights sum to one
    with pytest.raises(ValueError):
        metrics.imresize_matlab(img)
    with pytest.raises(ValueError):
        metrics.imresize_matlab(img, 2, output_shape=(20, 14))


def test_imresize_float_is_linear_and_upscale_interpolates() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((12, 9))
    a = metrics.imresize_matlab(img, 1 / 3)
    np.testing.assert_allclose(metrics.imresize_matlab(img * 255, 1 / 3), a * 255, rtol=1e-12)
    # Keys' cubic interpolates: every ×3 output pixel centred on an input pixel reproduces it.
    up = metrics.imresize_matlab(img, 3)
    np.testing.assert_allclose(up[1::3, 1::3], img, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "smaller", "larger"), [((6, 20), (6, 10), (12, 20)), ((24, 5), (12, 5), (24, 10))]
)
def test_uint8_resize_does_the_axis_of_the_smaller_scale_first(
    shape: tuple[int, int], smaller: tuple[int, int], larger: tuple[int, int]
) -> None:
    """On uint8 images each 1-D pass is rounded to 8 bits, so the order of the passes shows:
    as MATLAB, the dimension with the smaller scale factor is resized first. ``smaller`` and
    ``larger`` are the sizes after resizing only the axis of the smaller or larger scale."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = metrics.imresize_matlab_uint8(img, output_shape=shape)

    def two_passes(between: tuple[int, int]) -> np.ndarray:
        once = metrics.imresize_matlab_uint8(img, output_shape=between)
        return metrics.imresize_matlab_uint8(once, output_shape=shape)

    np.testing.assert_array_equal(out, two_passes(smaller))
    assert not np.array_equal(out, two_passes(larger))  # the order matters for this image


def test_matlab_round_and_to_uint8() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999999999999994, 254.5, 300.0, -3.0])
    np.testing.assert_array_equal(metrics.matlab_round(x), [1, 2, 3, -1, -2, 0, 255, 300, -3])
    np.testing.assert_array_equal(metrics.to_uint8(x), [1, 2, 3, 0, 0, 0, 255, 255, 0])


def test_mod_crop() -> None:
    assert metrics.mod_crop(np.zeros((11, 10, 3)), 3).shape == (9, 9, 3)
    assert metrics.mod_crop(np.zeros((11, 10)), 2).shape == (10, 10)
    img = np.arange(35).reshape(5, 7)
    np.testing.assert_array_equal(metrics.mod_crop(img, 4), img[:4, :4])  # top-left kept


# --------------------------------------------------------------------------------------------
# Colour and metrics
# --------------------------------------------------------------------------------------------
def test_rgb_to_y_known_colours() -> None:
    colours = np.array(
        [[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8
    )
    y = metrics.rgb_to_y(colours)
    np.testing.assert_allclose(y[0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    expected = 16 + 219 * grey.astype(np.float64) / 255  # greyscale is treated as R = G = B
    np.testing.assert_allclose(metrics.rgb_to_y(grey), expected)
    np.testing.assert_allclose(metrics.rgb_to_y(grey[..., None]), expected)
    np.testing.assert_allclose(metrics.rgb_to_y(np.repeat(grey[..., None], 3, 2)), expected)


def test_psnr_hand_computed() -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    b = a.copy()
    b[1, 2] = 10  # MSE = 100 / 16
    expected = 10 * math.log10(255**2 / 6.25)
    assert metrics.calculate_psnr(a, b, 0, y_channel=False) == pytest.approx(expected)
    # on Y the difference is scaled by 219 / 255
    expected_y = 10 * math.log10(255**2 / (6.25 * (219 / 255) ** 2))
    assert metrics.calculate_psnr(a, b, 0) == pytest.approx(expected_y)
    assert metrics.calculate_psnr(a, a, 0) == math.inf
    c = a.copy()
    c[0, 0] = 200  # only in the cropped border
    assert metrics.calculate_psnr(a, c, 1) == math.inf


def test_psnr_on_all_channels_is_one_mse_over_every_channel() -> None:
    """Without Y, PSNR comes from the MSE over all pixels of all channels (not the mean of
    per-channel PSNRs)."""
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0] = (10, 20, 40)  # squared errors 100, 400, 1600 over 48 values
    expected = 10 * math.log10(255**2 / (2100 / 48))
    assert metrics.calculate_psnr(a, b, 0, y_channel=False) == pytest.approx(expected, abs=1e-12)


def test_the_border_cropped_is_exactly_crop_border_on_every_side() -> None:
    """Differences in the outer ``scale`` rows and columns of any side do not count; one
    pixel further in, on any side, they do."""
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (24, 26, 3), dtype=np.uint8)
    for scale in (2, 3, 4):
        ring = hr.copy()
        ring[:scale] = ring[-scale:] = 0
        ring[:, :scale] = ring[:, -scale:] = 255
        row = evaluate.score_pair(ring, hr, scale)
        assert row["psnr"] == math.inf
        assert row["ssim"] == pytest.approx(1.0, abs=1e-12)
        for inside in ((scale, 12), (-scale - 1, 12), (12, scale), (12, -scale - 1)):
            one = hr.copy()
            one[inside] = 255 - one[inside]
            assert evaluate.score_pair(one, hr, scale)["psnr"] < math.inf, (scale, inside)


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM with an explicit 11×11 window (no separable filtering), for cross-checking."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    win_a = np.lib.stride_tricks.sliding_window_view(a, (11, 11))
    win_b = np.lib.stride_tricks.sliding_window_view(b, (11, 11))
    mu_a, mu_b = (win_a * w).sum((-2, -1)), (win_b * w).sum((-2, -1))
    var_a = (win_a**2 * w).sum((-2, -1)) - mu_a**2
    var_b = (win_b**2 * w).sum((-2, -1)) - mu_b**2
    cov = (win_a * win_b * w).sum((-2, -1)) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


def test_ssim_identical_perturbed_and_reference() -> None:
    hr = _png(SET5 / "HR" / "butterfly.png")[:64, :64]
    assert metrics.calculate_ssim(hr, hr, 2) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(hr + rng.normal(0, 10, hr.shape), 0, 255).astype(np.uint8)
    s = metrics.calculate_ssim(hr, noisy, 2)
    assert 0.3 < s < 0.99
    assert metrics.calculate_ssim(noisy, hr, 2) == pytest.approx(s)
    ya, yb = metrics.rgb_to_y(hr)[2:-2, 2:-2], metrics.rgb_to_y(noisy)[2:-2, 2:-2]
    assert s == pytest.approx(_ssim_direct(ya, yb), abs=1e-12)


def test_ssim_on_all_channels_is_the_mean_of_each_channel() -> None:
    """Without Y, SSIM is the mean of the SSIM of every channel."""
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (16, 18, 3), dtype=np.uint8)
    noise = rng.normal(0, (5, 20, 60), a.shape)  # a different SSIM for each channel
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    per_channel = [_ssim_direct(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert len({round(v, 3) for v in per_channel}) == 3
    s = metrics.calculate_ssim(a, b, 0, y_channel=False)
    assert s == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_metrics_on_greyscale() -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    other = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb, other_rgb = np.repeat(grey[..., None], 3, 2), np.repeat(other[..., None], 3, 2)
    assert metrics.calculate_psnr(grey, other, 2) == pytest.approx(
        metrics.calculate_psnr(rgb, other_rgb, 2)
    )
    assert metrics.calculate_ssim(grey, other, 2) == pytest.approx(
        metrics.calculate_ssim(rgb, other_rgb, 2)
    )


# --------------------------------------------------------------------------------------------
# hybridmoe evaluate
# --------------------------------------------------------------------------------------------
def test_bicubic_baseline_set5_x2_matches_literature() -> None:
    results = evaluate.evaluate(None, DATA, ["Set5"], bicubic_only=True, scale=2)
    r = results["sets"]["Set5"]
    assert r["images"] == 5
    assert "model" not in r
    assert abs(r["bicubic"]["psnr"] - 33.66) < 0.05
    assert abs(r["bicubic"]["ssim"] - 0.930) < 0.002


def test_evaluate_compact_json(compact_x2: Path, tmp_path: Path) -> None:
    results = evaluate.evaluate(compact_x2, DATA, ["Set5"], limit=2)
    out = tmp_path / "res.json"
    evaluate.write_json(results, out)
    data = json.loads(out.read_text())
    assert data["model"]["arch_id"] == "Compact"
    assert data["model"]["scale"] == data["scale"] == 2
    assert data["model"]["params"] == sum(
        p.numel() for p in Compact(num_feat=8, num_conv=2, upscale=2).parameters()
    )
    s5 = data["sets"]["Set5"]
    assert s5["images"] == 2
    assert list(s5["per_image"]) == ["baby", "bird"]
    for method in ("bicubic", "model"):
        assert set(s5[method]) == {"psnr", "ssim"}
        psnrs = [img[method]["psnr"] for img in s5["per_image"].values()]
        assert s5[method]["psnr"] == pytest.approx(np.mean(psnrs))
    assert s5["bicubic"]["psnr"] > s5["model"]["psnr"]  # random weights lose to bicubic
    table = evaluate.format_table(results)
    assert "bicubic" in table
    assert "RealESRGAN Compact" in table


def test_super_resolve_greyscale_and_tiles(compact_x2: Path) -> None:
    model = evaluate.load_descriptor(compact_x2, "cpu", "fp32")
    lr = _png(SET5 / "LR_bicubic" / "X2" / "birdx2.png")[:40, :50]
    whole = evaluate.super_resolve(model, lr, None)
    assert whole.shape == (80, 100, 3)
    assert whole.dtype == np.uint8
    # Compact's receptive field is far smaller than the tile context: tiling changes nothing.
    np.testing.assert_array_equal(evaluate.super_resolve(model, lr, 16), whole)
    grey = lr[..., 1]
    out = evaluate.super_resolve(model, grey, None)
    assert out.shape == (80, 100)
    rgb = evaluate.super_resolve(model, np.repeat(grey[..., None], 3, 2), None)
    luma = rgb.astype(np.float64) @ evaluate.LUMA_WEIGHTS
    assert np.abs(out.astype(np.float64) - luma).max() <= 1.0


def test_cli_runs_and_prints_table(compact_x2: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    cmd = [sys.executable, "-m", "hybridmoe", "evaluate", str(compact_x2)]
    cmd += ["--data", str(DATA), "--sets", "Set5", "--limit", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Set5" in proc.stdout
    assert "bicubic" in proc.stdout
    assert "PSNR" in proc.stdout
    record = json.loads(out.read_text())
    assert record["sets"]["Set5"]["images"] == 1
    assert record["command"] == shlex.join(["hybridmoe", *cmd[3:]])  # the record says how
    assert record["date"] and "commit" in record
    assert record["device"].endswith(f", torch {torch.__version__}")  # and where it ran
    assert "cores" in record["device"] or torch.cuda.is_available()


def test_cli_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_model.pth"
    assert evaluate.main([str(missing), "--data", str(DATA), "--sets", "Set5"]) != 0
    assert str(missing) in capsys.readouterr().err


def test_cli_corrupt_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    assert evaluate.main([str(bad), "--data", str(DATA), "--sets", "Set5"]) != 0
    assert str(bad) in capsys.readouterr().err


def test_cli_missing_set(compact_x2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main([str(compact_x2), "--data", str(DATA), "--sets", "Urban100"]) != 0
    err = capsys.readouterr().err
    assert str(DATA / "benchmark" / "Urban100" / "HR") in err
    assert "--data" in err


def test_default_data_is_hybridmoe_data_else_datasets_in_the_current_directory(
    compact_x2: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --data the sets are read from $HYBRIDMOE_DATA, else ./datasets; never from a
    folder beside the package (tests/data, ../shared/data), which a pip install lacks. A
    missing folder is named, with how to point at the sets (they are not shipped)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYBRIDMOE_DATA", raising=False)
    argv = [str(compact_x2), "--sets", "Set5", "--limit", "1"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: set 'Set5' not found: there is no folder datasets.")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for hint in ("not shipped", "--data DIR", "$HYBRIDMOE_DATA", "./datasets", "--sets"):
        assert hint in err
    assert str(ROOT) not in err and "shared" not in err
    monkeypatch.setenv("HYBRIDMOE_DATA", str(DATA))
    assert evaluate.default_data_dir() == DATA
    assert evaluate.main(argv) == 0
    monkeypatch.delenv("HYBRIDMOE_DATA")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "Set5").symlink_to(SET5)  # <data>/<Set>/HR
    assert evaluate.main(argv) == 0


def test_missing_sets_are_named_together_with_the_sets_there(
    compact_x2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default sets on a folder holding only Set5: one error naming every missing set, the
    layout looked for and the sets that are there (to pass with --sets)."""
    assert evaluate.main([str(compact_x2), "--data", str(DATA)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sets 'Set14', 'B100', 'Urban100' not found: no PNG images in")
    assert str(DATA / "benchmark" / "<Set>" / "HR") in err and str(DATA / "<Set>" / "HR") in err
    assert "(sets there: Set5)" in err and err.rstrip().endswith("--sets Set5")
    assert len(err.strip().splitlines()) == 1


def test_help_names_shipped_models_and_the_data_default() -> None:
    """MODEL may be a shipped model's name; --data's default is one a user can have; every
    option has a help text."""
    parser = evaluate.build_parser()
    text = " ".join(parser.format_help().split())
    assert "shipped model name" in text and "hybridmoe models" in text
    assert "$HYBRIDMOE_DATA, else ./datasets" in text and "not shipped" in text
    assert "shared" not in text and "tests/data" not in text
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]


def test_scale_one_model_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _compact(tmp_path, 1, "compact_x1.safetensors")
    assert evaluate.main([str(path), "--data", str(DATA), "--sets", "Set5"]) != 0
    assert "scale-1" in capsys.readouterr().err


def test_cli_usage_errors() -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(DATA)])  # neither MODEL nor --bicubic-only
    with pytest.raises(SystemExit):
        evaluate.main(["--bicubic-only"])  # no scale


def test_noise_seed_switches_on_the_learned_noise_reproducibly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--noise SEED: the model's noise injection changes the scores, the same seed gives the
    same scores (seeded per set), the seed is in the report; models without noise injection
    and bicubic-only runs are refused with the fix named."""
    import hybridmoe_arch as A
    from hybridmoe.models import perturb

    net = perturb(A.hybridmoe_nano(scale=2, dim=16, texture_head=True, noise=True))
    with torch.no_grad():
        net.head.noise_strength.fill_(0.5)
    path = tmp_path / "noise.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))

    def psnr(**kw: object) -> tuple[float, dict]:
        res = evaluate.evaluate(path, DATA, ["Set5"], limit=1, **kw)  # type: ignore[arg-type]
        return res["sets"]["Set5"]["model"]["psnr"], res

    off, res_off = psnr()
    on, res_on = psnr(noise_seed=3)
    assert on != off and "noise_seed" not in res_off and res_on["noise_seed"] == 3
    assert psnr(noise_seed=3)[0] == on and psnr(noise_seed=4)[0] != on
    assert evaluate.main([str(path), "--data", str(DATA), "--sets", "Set5", "--limit", "1"]) == 0
    plain = _compact(tmp_path, 2, "plain.safetensors")
    argv = ["--data", str(DATA), "--sets", "Set5", "--noise", "1"]
    assert evaluate.main([str(plain), *argv]) == 2
    assert "no learned noise injection" in capsys.readouterr().err
    assert evaluate.main(["--bicubic-only", "--scale", "2", *argv]) == 2
    assert "drop --noise" in capsys.readouterr().err
    # with MODEL too: bicubic-only runs no model, so no seed is taken (it was recorded)
    assert evaluate.main([str(path), "--bicubic-only", *argv]) == 2
    assert "drop --noise" in capsys.readouterr().err


def test_tile_zero_means_the_whole_image_as_without_tile(
    compact_x2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tile 0 is the whole image (as upscale's --tile 0 and as no --tile), not an error; a
    negative tile is a usage error."""
    argv = [str(compact_x2), "--data", str(DATA), "--sets", "Set5", "--limit", "1"]
    assert evaluate.main(argv) == 0
    whole = capsys.readouterr().out
    assert evaluate.main([*argv, "--tile", "0"]) == 0
    assert capsys.readouterr().out == whole
    plain = evaluate.evaluate(compact_x2, DATA, ["Set5"], limit=1)
    assert evaluate.evaluate(compact_x2, DATA, ["Set5"], limit=1, tile=0) == plain
    with pytest.raises(SystemExit) as exc:
        evaluate.main([*argv, "--tile", "-1"])
    assert exc.value.code == 2
    assert "argument --tile: must be 0 (the whole image) or at least 16" in capsys.readouterr().err
    assert "0 = whole image" in " ".join(evaluate.build_parser().format_help().split())


def test_a_changed_canonical_lr_file_is_named_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A modified LR_bicubic file stops the run with an error that says what the file must be
    and how to fix it; once it is removed the LR is made from HR and the run succeeds."""
    shutil.copytree(SET5, tmp_path / "Set5")
    lr_file = tmp_path / "Set5" / "LR_bicubic" / "X2" / "babyx2.png"
    lr = _png(lr_file).copy()
    lr[0, 0, 0] ^= 1
    Image.fromarray(lr).save(lr_file)
    argv = ["--bicubic-only", "--scale", "2", "--data", str(tmp_path), "--sets", "Set5"]
    assert evaluate.main([*argv, "--limit", "1"]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"differs from the canonical {lr_file}" in line
    assert f"MATLAB-bicubic x2 downscale of {tmp_path / 'Set5' / 'HR' / 'baby.png'}" in line
    assert "remove or replace that file" in line and str(lr_file.parent.parent) in line
    assert "Traceback" not in err
    lr_file.unlink()
    assert evaluate.main([*argv, "--limit", "1"]) == 0
    assert lr_file.parent.is_dir() and not lr_file.exists()  # nothing written back


def test_a_canonical_lr_file_of_a_greyscale_image_may_hold_it_as_rgb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The LR file of a greyscale HR image saved with three equal channels (or the reverse) is
    the same image: it stopped the run as "not the MATLAB-bicubic downscale" (make-pairs
    --check-against took it)."""
    grey = _png(SET5 / "HR" / "baby.png")[:64, :64, 1]
    lr = metrics.imresize_matlab_uint8(grey, 0.5)
    hr_dir, lr_dir = tmp_path / "Grey" / "HR", tmp_path / "Grey" / "LR_bicubic" / "X2"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    Image.fromarray(grey).save(hr_dir / "g.png")
    Image.fromarray(np.repeat(grey[..., None], 3, 2)).save(hr_dir / "rgb.png")
    Image.fromarray(np.repeat(lr[..., None], 3, 2)).save(lr_dir / "gx2.png")
    Image.fromarray(lr).save(lr_dir / "rgbx2.png")
    argv = ["--bicubic-only", "--scale", "2", "--data", str(tmp_path), "--sets", "Grey"]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    changed = lr.copy()
    changed[0, 0] ^= 1
    Image.fromarray(changed).save(lr_dir / "rgbx2.png")
    assert evaluate.main(argv) == 2
    assert f"differs from the canonical {lr_dir / 'rgbx2.png'}" in capsys.readouterr().err


def _tiny_set(root: Path, sizes: dict[str, int]) -> Path:
    """``root/Tiny/HR`` holding a square crop of Set5 ``baby`` of each side in ``sizes``."""
    folder = root / "Tiny" / "HR"
    folder.mkdir(parents=True)
    baby = _png(SET5 / "HR" / "baby.png")
    for name, side in sizes.items():
        Image.fromarray(baby[:side, :side]).save(folder / name)
    return folder


def test_an_animated_hr_image_is_refused_not_scored_as_its_first_frame(
    compact_x2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An APNG HR image was scored as its first frame without a word."""
    hr = _tiny_set(tmp_path, {"a.png": 32})
    frame = _png(SET5 / "HR" / "bird.png")[:32, :32]
    Image.fromarray(frame).save(
        hr / "b.png", save_all=True, append_images=[Image.fromarray(frame[::-1])]
    )
    report = tmp_path / "r.json"
    argv = [str(compact_x2), "--data", str(tmp_path), "--sets", "Tiny", "--device", "cpu"]
    assert evaluate.main([*argv, "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: cannot read image {hr / 'b.png'}: animated image (2 frames): only still "
        "images are supported; extract a frame first"
    ) in err
    assert "Traceback" not in err
    assert not report.exists()


def test_hr_suffixes_match_in_any_case_and_files_left_out_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``b.PNG`` was skipped without a word (the set scored on fewer images) and a set of
    ``.PNG`` files only was "not found"; files that are not PNG are named in a warning."""
    hr = _tiny_set(tmp_path, {"a.png": 32, "b.PNG": 32})
    (hr / "notes.txt").write_text("not an image")
    (hr / ".hidden").write_text("")
    report = tmp_path / "r.json"
    argv = ["--bicubic-only", "--scale", "2", "--data", str(tmp_path), "--sets", "Tiny"]
    assert evaluate.main([*argv, "--json", str(report)]) == 0
    tiny = json.loads(report.read_text())["sets"]["Tiny"]
    assert tiny["images"] == 2 and sorted(tiny["per_image"]) == ["a", "b"]
    err = capsys.readouterr().err
    assert f"warning: {hr}: left out 1 files that are not PNG: notes.txt\n" in err
    assert ".hidden" not in err
    (hr / "a.png").unlink()
    assert evaluate.available_sets(tmp_path) == ["Tiny"]
    assert evaluate.main(argv) == 0
    assert "Tiny            1" in capsys.readouterr().out


@pytest.mark.parametrize("side", [5, 8, 12, 15])
def test_an_hr_image_too_small_to_score_is_refused_before_the_model_runs(
    side: int, compact_x2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 5x5 HR image ended in a traceback ("too small for crop_border=2"), an 8x8 or 12x12
    one in "smaller than the 11x11 SSIM window", without the file name and only after every
    image before it was scored. At x2 a side needs 16 px: mod-cropped, less 2 px each side, 12
    (15 px: 14 - 4 = 10 < 11)."""
    hr = _tiny_set(tmp_path, {"a.png": 32, "b.png": side})
    report = tmp_path / "r.json"
    argv = [str(compact_x2), "--data", str(tmp_path), "--sets", "Tiny", "--device", "cpu"]
    assert evaluate.main([*argv, "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: HR image {hr / 'b.png'} ({side}x{side}) is too small to score at x2: both sides "
        "must be at least 16 px (mod-cropped to a multiple of 2, less 2 px on each side, it must "
        "hold the 11x11 SSIM window). Remove it from the set or use a larger image\n"
    )  # one line: no traceback, and no image scored (no progress bar)
    assert not report.exists()
    assert evaluate.min_hr_side(2, 2) == 16
    assert [evaluate.min_hr_side(s, s) for s in (3, 4)] == [18, 20]


def test_the_smallest_scorable_hr_image_is_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiny_set(tmp_path, {"a.png": 16})
    argv = ["--bicubic-only", "--scale", "2", "--data", str(tmp_path), "--sets", "Tiny"]
    assert evaluate.main(argv) == 0
    assert "error" not in capsys.readouterr().err
    _tiny_set(tmp_path / "x4", {"a.png": 20})
    assert evaluate.main([*argv[:2], "4", "--data", str(tmp_path / "x4"), "--sets", "Tiny"]) == 0


def test_metrics_errors_name_the_image_as_a_last_resort() -> None:
    """Images that reach the metrics too small (the up-front check refuses them in a run)
    are an EvaluationError naming the image, not a bare ValueError."""
    small = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(evaluate.EvaluationError, match=r"cannot score Tiny/b\.png: .*SSIM window"):
        evaluate.score_pair(small, small, 0, name="Tiny/b.png")
    with pytest.raises(evaluate.EvaluationError, match=r"cannot score Tiny/b\.png: .*too small"):
        evaluate.score_sr(small[:2, :2], small, 4, None, name="Tiny/b.png")
    with pytest.raises(evaluate.EvaluationError, match=r"Tiny/b\.png"):
        evaluate.score_restored(small, small, name="Tiny/b.png")


@pytest.mark.parametrize("tile", [1, 15])
def test_a_tile_smaller_than_its_context_is_a_usage_error(
    tile: int, compact_x2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tile 1 was accepted and ran one forward per LR pixel (each with 16 pixels of context
    on every side); a tile must be 0 (the whole image) or at least the context, 16."""
    _tiny_set(tmp_path, {"a.png": 64})
    report = tmp_path / "r.json"
    argv = [str(compact_x2), "--data", str(tmp_path), "--sets", "Tiny"]
    with pytest.raises(SystemExit) as exc:
        evaluate.main([*argv, "--tile", str(tile), "--json", str(report)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"argument --tile: must be 0 (the whole image) or at least 16 (each tile runs with 16 "
        f"pixels of context on each side), got {tile}"
    ) in err
    assert "Tiny x2" not in err and not report.exists()  # nothing ran
    with pytest.raises(evaluate.EvaluationError, match=f"at least 16 .*got {tile}"):
        evaluate.evaluate(compact_x2, tmp_path, ["Tiny"], tile=tile)
    assert evaluate.main([*argv, "--tile", "16"]) == 0
    assert "Tiny" in capsys.readouterr().out


def test_hr_images_are_mod_cropped_before_the_lr_is_made(tmp_path: Path) -> None:
    """An HR image whose sides are not multiples of the scale is cropped to its top-left
    multiple first; its scores are those of that crop (bicubic baseline, by hand)."""
    folder = tmp_path / "Odd" / "HR"
    folder.mkdir(parents=True)
    hr = _png(SET5 / "HR" / "bird.png")[:27, :30]  # x4: cropped to 24 x 28
    Image.fromarray(hr).save(folder / "a.png")
    result = evaluate.evaluate(None, tmp_path, ["Odd"], bicubic_only=True, scale=4)
    cropped = hr[:24, :28]
    lr = metrics.imresize_matlab_uint8(cropped, 1 / 4)
    assert lr.shape == (6, 7, 3)
    up = metrics.imresize_matlab_uint8(lr, 4)
    expected = metrics.calculate_psnr(up, cropped, 4)
    assert result["sets"]["Odd"]["bicubic"]["psnr"] == pytest.approx(expected, abs=1e-12)


class _FakeModel:
    """A descriptor-like callable for :func:`evaluate.super_resolve`: ``fn`` maps
    (1, C, h, w) in [0, 1] to (1, C_out, s·h, s·w)."""

    def __init__(self, fn: Any, in_ch: int, out_ch: int, scale: int) -> None:
        self.fn, self.input_channels, self.output_channels, self.scale = fn, in_ch, out_ch, scale
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@pytest.mark.parametrize(("colour", "grey"), [((1, 0, 0), 76), ((0, 1, 0), 150), ((0, 0, 1), 29)])
def test_greyscale_output_of_an_rgb_model_is_its_bt601_luma(
    colour: tuple[int, int, int], grey: int
) -> None:
    """A 3-channel model's output for a greyscale image is reduced to grey with the BT.601
    weights 0.299 R + 0.587 G + 0.114 B (pure red -> 76.2, green -> 149.7, blue -> 29.1)."""
    rgb = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1)
    model = _FakeModel(lambda x: rgb.expand(1, 3, *x.shape[-2:]).clone(), 3, 3, 1)
    out = evaluate.super_resolve(model, np.full((5, 6), 128, np.uint8), None)
    assert out.shape == (5, 6)
    assert (out == grey).all()


@pytest.mark.parametrize("tile", [None, 16])
def test_a_one_channel_model_upscales_each_colour_channel_on_its_own(tile: int | None) -> None:
    """A 1-channel model (here nearest x2, which tiles exactly) runs on R, G and B separately."""
    nearest = _FakeModel(
        lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), 1, 1, 2
    )
    lr = _png(SET5 / "LR_bicubic" / "X2" / "birdx2.png")[:37, :41]
    out = evaluate.super_resolve(nearest, lr, tile)
    np.testing.assert_array_equal(out, lr.repeat(2, 0).repeat(2, 1))


def test_hidden_files_of_a_set_are_not_its_images(tmp_path: Path) -> None:
    """A macOS ``._baby.png`` companion beside the HR images was taken for an image of the set
    (and failed to read); hidden files are no part of a set, like the other commands."""
    hr = tmp_path / "Set" / "HR"
    hr.mkdir(parents=True)
    shutil.copy(DATA / "Set5" / "HR" / "baby.png", hr / "baby.png")
    (hr / "._baby.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (hr / ".DS_Store").write_bytes(b"\x00")
    assert evaluate.hr_images(tmp_path / "Set") == ([hr / "baby.png"], [])
