"""hybridmoe make-degraded (fixed-seed degraded sets) and hybridmoe evaluate --degraded (x1
restoration scored against HR, with the degraded input as the baseline)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from hybridmoe import cli, evaluate, metrics
from hybridmoe.degraded_sets import image_seed

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

pytestmark = pytest.mark.usefixtures("one_thread")


def _hr_folder(
    root: Path, names: tuple[str, ...] = ("grey", "rgb"), size: tuple[int, int] = (40, 48)
) -> Path:
    """A folder ``root/mine/HR`` with a greyscale and an RGB image (small crops of Set5)."""
    folder = root / "mine" / "HR"
    folder.mkdir(parents=True)
    src = np.asarray(Image.open(DATA / "Set5" / "HR" / "bird.png").convert("RGB"))
    src = src[: size[0], : size[1]]
    for name in names:
        img = Image.fromarray(src).convert("L") if name == "grey" else Image.fromarray(src)
        img.save(folder / f"{name}.png")
    return folder


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _make(*argv: str) -> int:
    return cli.main(["make-degraded", *argv])


def test_make_degraded_writes_seeded_sets_with_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr = _hr_folder(tmp_path)
    out = tmp_path / "out"
    assert _make(str(hr), "--out", str(out), "--seed", "3") == 0
    set_dir = out / "mine"  # named after the folder holding HR/
    manifest = json.loads((set_dir / "manifest.json").read_text())
    assert manifest["preset"] == "restore" and manifest["seed"] == 3
    assert manifest["degradation"]["jpeg_quality"] == [40, 95]
    assert set(manifest["images"]) == {"grey", "rgb"}
    row = manifest["images"]["grey"]
    assert row["grey"] and row["size"] == [40, 48] and row["seed"] == image_seed(3, "mine", "grey")
    assert set(row) >= {"blur", "noise", "jpeg"}
    grey_lq = _png(set_dir / "LQ" / "grey.png")
    assert grey_lq.shape == (40, 48)  # greyscale stays greyscale
    assert np.array_equal(_png(set_dir / "HR" / "grey.png"), _png(hr / "grey.png"))
    rgb_lq = _png(set_dir / "LQ" / "rgb.png")
    assert rgb_lq.shape == (40, 48, 3) and not np.array_equal(rgb_lq, _png(hr / "rgb.png"))

    # an existing set is refused before any work, nothing is touched
    before = (set_dir / "manifest.json").read_bytes()
    assert _make(str(hr), "--out", str(out), "--seed", "4") == 2
    assert "already exists" in capsys.readouterr().err
    assert (set_dir / "manifest.json").read_bytes() == before

    # one image's copy does not depend on the others; another seed gives another copy
    alone = _hr_folder(tmp_path / "alone", ("rgb",))
    assert _make(str(alone), "--out", str(tmp_path / "o2"), "--seed", "3") == 0
    assert np.array_equal(_png(tmp_path / "o2" / "mine" / "LQ" / "rgb.png"), rgb_lq)
    assert _make(str(alone), "--out", str(tmp_path / "o3"), "--seed", "4") == 0
    assert not np.array_equal(_png(tmp_path / "o3" / "mine" / "LQ" / "rgb.png"), rgb_lq)


def test_a_made_set_has_the_permissions_of_a_new_folder(tmp_path: Path) -> None:
    """The set folder was moved into place from a private (0700) temporary folder: other
    users of a shared dataset folder could not read the set, its HR/LQ folders 0755 inside."""
    hr = _hr_folder(tmp_path, ("rgb",))
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert _make(str(hr), "--out", str(out)) == 0
    finally:
        os.umask(old)
    set_dir = out / "mine"
    assert (set_dir.stat().st_mode & 0o777) == 0o755
    assert ((set_dir / "LQ").stat().st_mode & 0o777) == 0o755


def test_make_degraded_finds_benchmark_sets_and_reports_missing_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    assert _make("--out", str(out), "--data", str(DATA), "--sets", "Set5", "--limit", "1") == 0
    assert sorted(p.name for p in (out / "Set5" / "LQ").iterdir()) == ["baby.png"]
    assert _make("--out", str(tmp_path / "x"), "--data", str(DATA), "--sets", "Urban100") == 2
    assert "set 'Urban100' not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # --name names an HR folder; with the benchmark sets it was ignored (the set kept its name
    # and its seeds)
    argv = ["--out", str(tmp_path / "y"), "--data", str(DATA), "--sets", "Set5", "--name", "mine"]
    assert _make(*argv) == 2
    err = capsys.readouterr().err
    assert "--name mine names a single HR folder" in err and "(Set5) keep their names" in err
    assert not (tmp_path / "y").exists()


def test_make_degraded_names_a_file_given_as_the_hr_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image file where an HR folder is expected is named as a file, not "not found"."""
    image = _hr_folder(tmp_path) / "rgb.png"
    assert _make(str(image), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{image} is a file, not a folder of images" in err and "not found" not in err
    assert not (tmp_path / "x").exists()
    assert _make(str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")) == 2
    assert "HR folder not found" in capsys.readouterr().err


def test_make_degraded_never_writes_into_its_hr_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr = _hr_folder(tmp_path)
    before = sorted(p.name for p in hr.rglob("*"))
    for out in (hr, hr / "deg"):
        assert _make(str(hr), "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert f"inside its HR folder {hr}" in err and "choose an --out outside it" in err
    assert sorted(p.name for p in hr.rglob("*")) == before


def test_make_degraded_names_dot_folders_by_what_they_stand_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HR folder given as "." or ".." named the set "" or "..": the set went into --out
    itself, or (for "..") into the folder above --out."""
    hr = _hr_folder(tmp_path, ("rgb",))
    monkeypatch.chdir(hr)
    assert _make(".", "--out", str(tmp_path / "o1")) == 0
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["mine"]
    sub = hr.parent / "sub"
    sub.mkdir()
    (hr / "rgb.png").rename(sub / "rgb.png")
    monkeypatch.chdir(sub / ".." / "sub")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _make(".", "--out", str(tmp_path / "o2")) == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["sub"]
    monkeypatch.chdir(hr)
    assert _make("../sub/..", "--out", str(tmp_path / "o3")) == 2  # mine/ holds no images
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "o2"])
    capsys.readouterr()
    assert _make("/", "--out", str(tmp_path / "o4")) == 2
    err = capsys.readouterr().err
    assert "cannot name a set after /" in err and "--name NAME" in err
    assert _make(str(sub), "--name", "../up", "--out", str(tmp_path / "o5")) == 2
    assert "give --name NAME" in capsys.readouterr().err
    assert not (tmp_path / "up").exists() and not (tmp_path / "o5").exists()


def test_a_failed_set_leaves_nothing_and_can_be_made_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image too small for the scale, found after others were written, left a partial set
    (no manifest) that then blocked the rerun the error message asked for."""
    hr = _hr_folder(tmp_path, ("a", "b"))
    Image.fromarray(np.zeros((2, 8, 3), np.uint8)).save(hr / "m.png")  # sorted between a, b
    out = tmp_path / "out"
    argv = [str(hr), "--out", str(out), "--preset", "realworld4"]
    assert _make(*argv) == 2
    err = capsys.readouterr().err
    assert "m.png (2x8) is smaller than the scale 4" in err and f"remove it from {hr}" in err
    assert not out.exists()  # created by this call, removed again with the partial set
    deep = tmp_path / "new" / "deeper" / "out"  # and so are the folders above it it created
    assert _make(str(hr), "--out", str(deep), "--preset", "realworld4") == 2
    assert not (tmp_path / "new").exists()
    out.mkdir()
    assert _make(*argv) == 2
    assert list(out.iterdir()) == []  # an --out that existed stays, empty
    (hr / "m.png").unlink()
    assert _make(*argv) == 0
    manifest = json.loads((out / "mine" / "manifest.json").read_text())
    assert sorted(manifest["images"]) == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == ["mine"]


def test_a_full_disk_is_one_error_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pillow's OSError (a full disk) on the third PNG was a traceback."""
    hr = _hr_folder(tmp_path)
    out = tmp_path / "out"
    real, calls = Image.Image.save, []

    def save(img: Image.Image, fp: Path, *args: object, **kwargs: object) -> None:
        calls.append(fp)
        if len(calls) < 3:
            return real(img, fp, *args, **kwargs)
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", save)
    assert _make(str(hr), "--out", str(out)) == 2
    staged = Path(calls[2]).parent.parent  # the set is made there, then moved into place
    expected = f"error: cannot write {staged / 'HR' / 'rgb.png'}: No space left on device\n"
    assert capsys.readouterr().err == expected
    assert not out.exists()  # created by this call, removed again with the partial set
    deep = tmp_path / "new" / "deeper" / "out"  # and so are the folders above it it created
    assert _make(str(hr), "--out", str(deep), "--preset", "realworld4") == 2
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    assert _make(str(hr), "--out", str(out)) == 0


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-image degraded Set5 (``DIR/Set5``)."""
    out = tmp_path_factory.mktemp("degraded")
    assert _make("--out", str(out), "--data", str(DATA), "--sets", "Set5", "--limit", "1") == 0
    return out


def _compact(tmp: Path, scale: int) -> Path:
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    path = tmp / f"compact_x{scale}.safetensors"
    save_file(net.state_dict(), str(path))
    return path


def test_evaluate_degraded_scores_model_and_input(degraded: Path, tmp_path: Path) -> None:
    model = _compact(tmp_path, 1)
    report = tmp_path / "r.json"
    assert evaluate.main([str(model), "--degraded", str(degraded), "--json", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["scale"] == 1 and res["task"] == "restoration" and res["border"] == 0
    s = res["sets"]["Set5"]
    assert s["images"] == 1 and s["preset"] == "restore" and s["seed"] == 0
    hr = _png(degraded / "Set5" / "HR" / "baby.png")
    lq = _png(degraded / "Set5" / "LQ" / "baby.png")
    assert s["input"]["psnr"] == pytest.approx(metrics.calculate_psnr(lq, hr, 0))
    assert 10 < s["model"]["psnr"] < 60 and s["model"]["psnr"] != s["input"]["psnr"]
    assert set(s["per_image"]["baby"]) == {"input", "model"}


def test_evaluate_degraded_refusals(
    degraded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x2 = _compact(tmp_path, 2)
    assert evaluate.main([str(x2), "--degraded", str(degraded)]) == 2
    assert "need a scale-1 model" in capsys.readouterr().err
    x1 = _compact(tmp_path, 1)
    assert evaluate.main([str(x1), "--data", str(DATA), "--sets", "Set5"]) == 2
    assert "--degraded DIR" in capsys.readouterr().err  # bicubic SR still refuses x1
    assert evaluate.main([str(x1), "--degraded", str(degraded), "--sets", "Set14"]) == 2
    assert "Set14 not in" in capsys.readouterr().err
    assert evaluate.main([str(x1), "--degraded", str(tmp_path)]) == 2
    assert "no degraded sets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([str(x1), "--degraded", str(degraded), "--bicubic-only"])


def test_every_evaluation_image_gets_at_least_one_stage() -> None:
    """A draw with every stage off is drawn again (a clean copy would score an infinite input
    PSNR and make the set's mean meaningless); a first draw with a stage is kept as it was."""
    from hybridmoe import degrade
    from hybridmoe.degraded_sets import degrade_image

    img = np.asarray(Image.open(DATA / "Set5" / "HR" / "bird.png").convert("RGB"))[:24, :24]
    rare = degrade.Degradation(
        blur_prob=0.05, blur_sigma=(0.5, 1.0), noise_prob=0.05, noise_sigma=(5.0, 10.0),
        noise_gray_prob=0.0, jpeg_prob=0.05, jpeg_quality=(50, 60),
    )  # fmt: skip
    redrawn = 0
    for seed in range(40):
        lq, params = degrade_image(img, rare, seed)
        assert any(params[k] is not None for k in ("blur", "noise", "jpeg")), params
        assert not np.array_equal(lq, img)
        redrawn += params["redraws"] > 0
    assert redrawn > 30  # with 5 % per stage, most first draws have no stage
    for seed in range(20):  # the shipped preset: images whose first draw has a stage keep it
        _, params = degrade_image(img, degrade.RESTORE, seed)
        first = degrade.sample_params(1, degrade.RESTORE, torch.Generator().manual_seed(seed))
        if params["redraws"] == 0:
            assert params == {**first.describe(0), "redraws": 0}


# ------------------------------------------------------------------ x4 real-world degraded sets


@pytest.fixture(scope="module")
def degraded4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DIR/mine``: a greyscale and an RGB image of 41x50 degraded with realworld4."""
    root = tmp_path_factory.mktemp("degraded4")
    hr = _hr_folder(root / "src", size=(41, 50))
    assert _make(str(hr), "--out", str(root / "out"), "--preset", "realworld4") == 0
    return root / "out"


def test_make_degraded_x4_mod_crops_and_writes_quarter_size_lq(degraded4: Path) -> None:
    set_dir = degraded4 / "mine"
    manifest = json.loads((set_dir / "manifest.json").read_text())
    assert manifest["preset"] == "realworld4" and manifest["scale"] == 4
    assert manifest["degradation"]["scale"] == 4 and "stage 2" in manifest["order"]
    src = _png(set_dir.parent.parent / "src" / "mine" / "HR" / "rgb.png")
    assert src.shape == (41, 50, 3)
    for name, grey in (("grey", True), ("rgb", False)):
        row = manifest["images"][name]
        assert row["size"] == [40, 48] and row["source_size"] == [41, 50]
        assert row["lq_size"] == [10, 12] and row["grey"] is grey and row["redraws"] == 0
        assert set(row) >= {"blur", "resize", "noise", "jpeg", "second", "final"}
        hr, lq = _png(set_dir / "HR" / f"{name}.png"), _png(set_dir / "LQ" / f"{name}.png")
        assert hr.shape[:2] == (40, 48) and lq.shape[:2] == (10, 12)
        assert (hr.ndim, lq.ndim) == ((2, 2) if grey else (3, 3))  # greyscale stays grey
    assert np.array_equal(_png(set_dir / "HR" / "rgb.png"), src[:40, :48])  # top-left crop


def test_evaluate_degraded_x4_scores_bicubic_and_model(degraded4: Path, tmp_path: Path) -> None:
    report = tmp_path / "r4.json"
    model = _compact(tmp_path, 4)
    assert evaluate.main([str(model), "--degraded", str(degraded4), "--json", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["scale"] == 4 and res["task"] == "degraded-sr" and res["border"] == 4
    s = res["sets"]["mine"]
    assert s["images"] == 2 and s["preset"] == "realworld4"
    assert set(s["per_image"]["rgb"]) == {"bicubic", "model"}
    hr = _png(degraded4 / "mine" / "HR" / "rgb.png")
    lq = _png(degraded4 / "mine" / "LQ" / "rgb.png")
    bicubic = metrics.calculate_psnr(metrics.imresize_matlab_uint8(lq, 4), hr, 4)
    assert s["per_image"]["rgb"]["bicubic"]["psnr"] == pytest.approx(bicubic)
    assert 5 < s["model"]["psnr"] < 60 and s["model"]["psnr"] != s["bicubic"]["psnr"]
    table = evaluate.format_table(res)
    assert "super-resolution of degraded sets" in table and "border 4" in table


def test_evaluate_degraded_x4_refuses_other_scales(
    degraded4: Path, degraded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x1 = _compact(tmp_path, 1)
    assert evaluate.main([str(x1), "--degraded", str(degraded4)]) == 2
    err = capsys.readouterr().err
    assert "is a x1 model, but the degraded sets (--degraded) are x4" in err
    assert "need a scale-4 model" in err and "--preset restore" in err
    mixed = tmp_path / "mixed"
    for src in (degraded4 / "mine", degraded / "Set5"):
        shutil.copytree(src, mixed / src.name)
    assert evaluate.main([str(x1), "--degraded", str(mixed)]) == 2
    assert "different scales (Set5 x1, mine x4)" in capsys.readouterr().err


def test_evaluate_adds_lpips_to_every_row(degraded4: Path, tmp_path: Path) -> None:
    """--lpips FILE scores every row with the lpips package's metric and the file's backbone;
    an identical pair scores 0 and the record names the weights."""
    lpips = pytest.importorskip("lpips")
    from torchvision.models import alexnet

    from hybridmoe.install import sha256_of

    torch.manual_seed(0)
    sd = {f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}
    package = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).state_dict()
    sd |= {f"lin.{n}": package[f"lin{n}.model.1.weight"].clone() for n in range(5)}
    weights = tmp_path / "lpips_alex.safetensors"
    save_file(sd, str(weights))
    report = tmp_path / "r.json"
    model = _compact(tmp_path, 4)
    argv = [str(model), "--degraded", str(degraded4), "--json", str(report)]
    assert evaluate.main([*argv, "--lpips", str(weights)]) == 0
    res = json.loads(report.read_text())
    assert res["lpips"]["sha256"] == sha256_of(weights)
    s = res["sets"]["mine"]
    for row in (s["bicubic"], s["model"], *s["per_image"]["rgb"].values()):
        assert 0 < row["lpips"] < 2
    assert s["bicubic"]["lpips"] != s["model"]["lpips"]
    score = evaluate.lpips_scorer(weights)
    hr = _png(degraded4 / "mine" / "HR" / "grey.png")
    assert score(hr, hr, 4) == 0.0
    assert evaluate.main([*argv, "--overwrite", "--lpips", str(tmp_path / "none")]) == 2


def test_sweep_and_precision_refuse_x4_sets_for_x1_restoration(degraded4: Path) -> None:
    import sweep

    from hybridmoe import precision

    with pytest.raises(SystemExit, match=r"x4 degraded set.*hybridmoe evaluate --degraded"):
        sweep.score_degraded([], degraded4, None, None)
    with pytest.raises(precision.PrecisionError, match="x4 degraded set"):
        precision.load_degraded_images(degraded4, ["mine"], None, None)


def test_side_by_side_sheet_has_a_column_per_method(
    degraded4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import side_by_side

    model = _compact(tmp_path, 4)
    out = tmp_path / "sheet.png"
    argv = ["--set", str(degraded4 / "mine"), "--crop", "rgb:8,4,16", "--crop", "grey:0,0,32"]
    argv += ["--model", f"C={model}", "--out", str(out), "--cell", "40"]
    assert side_by_side.main(argv) == 0
    sheet = Image.open(out)
    assert sheet.size == (40 * 4, side_by_side.LABEL_H + 40 * 2)  # input, bicubic, C, HR
    hr = _png(degraded4 / "mine" / "HR" / "rgb.png")
    cell = np.asarray(sheet)[side_by_side.LABEL_H : side_by_side.LABEL_H + 40, 120:160]
    assert np.array_equal(cell[:: 40 // 16 + 0, :: 40 // 16 + 0][:1, :1], hr[4:5, 8:9])
    capsys.readouterr()
    for crop, message in (("rgb:1,0,16", "multiples of x4"), ("rgb:40,0,16", "outside")):
        bad = tmp_path / "bad.png"
        assert side_by_side.main([*argv[:2], "--crop", crop, "--out", str(bad)]) == 2
        assert message in capsys.readouterr().err and not bad.exists()


def test_side_by_side_refuses_bad_input_in_one_line(
    degraded4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model of another scale than the set's wrote a sheet whose column showed another part
    of the image; an existing --out, a missing set, image or model file were tracebacks."""
    import side_by_side

    set_dir = degraded4 / "mine"
    out = tmp_path / "sheet.png"
    base = ["--crop", "rgb:8,4,16", "--cell", "16"]
    x2, x1 = _compact(tmp_path, 2), _compact(tmp_path, 1)
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"keep")
    cases = [
        (
            ["--set", str(set_dir), "--model", f"Two={x2}"],
            f"Two: {x2} is a x2 model, but the set {set_dir} is x4",
        ),
        (["--set", str(set_dir), "--model", f"One={x1}"], f"{x1} is a x1 model"),
        (["--set", str(tmp_path / "nosuch")], "is not a complete degraded set"),
        (["--set", str(set_dir), "--crop", "nosuch:0,0,16"], "no image 'nosuch' in the set"),
        (["--set", str(set_dir), "--model", f"M={tmp_path / 'none.pth'}"], "none.pth"),
    ]
    for args, message in cases:
        assert side_by_side.main([*base, *args, "--out", str(out)]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err and "Traceback" not in err
        assert not out.exists()
    model = _compact(tmp_path, 4)
    argv = [*base, "--set", str(set_dir), "--model", f"C={model}", "--out", str(existing)]
    assert side_by_side.main(argv) == 2
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == b"keep"
    assert side_by_side.main([*argv, "--overwrite"]) == 0


def test_two_images_with_one_stem_are_named(tmp_path: Path) -> None:
    from hybridmoe.degraded_sets import DegradedSetError, set_images

    for name in ("x.png", "x.jpg"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(DegradedSetError, match=r"x\.jpg and x\.png in .* share a file name"):
        set_images(tmp_path)


def test_evaluate_degraded_refuses_an_hr_image_too_small_to_score_before_the_model_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A degraded set with an 8x8 image ended in a traceback ("smaller than the 11x11 SSIM
    window") without the file name, after scoring the images before it."""
    hr = _hr_folder(tmp_path / "src", names=("rgb",))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 90).save(hr / "small.png")
    out = tmp_path / "out"
    assert _make(str(hr), "--out", str(out)) == 0
    report = tmp_path / "r.json"
    model = _compact(tmp_path, 1)
    assert evaluate.main([str(model), "--degraded", str(out), "--json", str(report)]) == 2
    err = capsys.readouterr().err
    small = out / "mine" / "HR" / "small.png"
    assert err == (
        f"error: HR image {small} (8x8) is too small to score at x1: both sides must be at "
        "least 11 px (it must hold the 11x11 SSIM window). Remove it from the set or use a "
        "larger image\n"
    )
    assert not report.exists()


def test_each_image_of_a_set_gets_its_own_draw(tmp_path: Path) -> None:
    """The seed of an image mixes in its name: two images with the same pixels in one set get
    different parameters and different degraded copies, and the set name changes them too."""
    hr = _hr_folder(tmp_path, ("a", "b"))
    assert _make(str(hr), "--out", str(tmp_path / "o")) == 0
    assert _make(str(hr), "--out", str(tmp_path / "p"), "--name", "other") == 0
    images = json.loads((tmp_path / "o" / "mine" / "manifest.json").read_text())["images"]
    assert images["a"]["seed"] != images["b"]["seed"]
    a, b = (_png(tmp_path / "o" / "mine" / "LQ" / f"{n}.png") for n in "ab")
    assert np.array_equal(_png(hr / "a.png"), _png(hr / "b.png")) and not np.array_equal(a, b)
    assert not np.array_equal(a, _png(tmp_path / "p" / "other" / "LQ" / "a.png"))


def test_degraded_copies_are_the_pipelines_levels_and_grey_is_bt601_luma() -> None:
    """An RGB image's copy holds exactly the 8-bit levels of the tensor pipeline; a greyscale
    one is degraded as three equal channels (colour noise makes them differ; no JPEG, whose
    4:2:0 chroma coding removes most of that difference) and turned back with the BT.601 luma
    weights 0.299, 0.587, 0.114, rounded to the nearest level."""
    from hybridmoe import degrade
    from hybridmoe.degraded_sets import degrade_image

    grey = np.asarray(Image.open(DATA / "Set5" / "HR" / "bird.png").convert("L"))[:32, :32]
    cfg = degrade.Degradation(blur_prob=1.0, noise_prob=1.0, noise_gray_prob=0.0, jpeg_prob=0.0)
    g = torch.Generator().manual_seed(5)
    x = torch.from_numpy(grey.copy()).float().expand(1, 3, 32, 32) / 255
    rgb = degrade.apply_params(x, degrade.sample_params(1, cfg, g), g)[0]
    levels = rgb.permute(1, 2, 0).double().numpy() * 255
    assert not np.array_equal(levels[..., 0], levels[..., 1])  # colour noise
    lq_rgb, params = degrade_image(np.repeat(grey[:, :, None], 3, axis=2), cfg, 5)
    assert params["redraws"] == 0 and lq_rgb.dtype == np.uint8
    assert np.array_equal(lq_rgb, np.round(levels))
    lq_grey, _ = degrade_image(grey, cfg, 5)
    luma = levels @ np.array([0.299, 0.587, 0.114])
    assert lq_grey.shape == (32, 32) and np.array_equal(lq_grey, np.round(luma))
    assert np.abs(luma - np.round(luma)).max() > 0.3  # rounding, not truncation, is checked
