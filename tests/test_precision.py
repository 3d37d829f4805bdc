"""``hybridmoe check-precision``: fp16/bf16 (autocast and cast) against fp32 on real images,
on CPU with tiny models, small crops and one or two images per set."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_options import TINY

import hybridmoe_arch as A
from hybridmoe import precision as cp
from hybridmoe.models import perturb

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

QUICK = ["--data", str(DATA), "--sets", "Set5", "--limit", "2", "--crop", "24", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny(path: Path, scale: int = 2, std: float = 0.01, **options: Any) -> Path:
    """A tiny HybridMoE (weights perturbed off their init) as traiNNer-redux's ``.pth``."""
    model = A.HybridMoE(**{**TINY, "scale": scale, **options})
    perturb(model, std, seed=0)
    torch.save({"metadata": dict(model.hyperparameters), "params": model.state_dict()}, path)
    return path


def save_overflowing_compact(path: Path) -> Path:
    """A spandrel Compact ×2 whose weights are so large that float16 overflows (Inf) while
    float32 and bfloat16 (float32's exponent range) stay finite."""
    from spandrel.architectures.Compact import Compact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(40.0)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("prec") / "tiny_x2.pth")


def rows(table: str) -> dict[str, list[str]]:
    """Precision -> the table columns of its row (one model)."""
    out = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] in cp.PRECISIONS:
            out[parts[1]] = parts
    return out


def test_every_precision_on_a_tiny_model(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.json"
    assert cp.main([str(tiny_ckpt), *QUICK, "--json", str(out)]) in (0, 1)
    table = rows(capsys.readouterr().out)
    assert set(table) == set(cp.PRECISIONS)  # fp16 and bf16 both run on this CPU
    report = json.loads(out.read_text())
    words = ["hybridmoe", "check-precision", str(tiny_ckpt), *QUICK, "--json", str(out)]
    assert report["command"] == shlex.join(words) and report["date"] and "commit" in report
    (entry,) = report["models"]
    assert entry["info"]["arch"] == "HybridMoE-FreqNet" and entry["info"]["scale"] == 2
    res = {r["precision"]: r for r in entry["results"]}
    ref = res["fp32"]
    assert ref["ok"] and ref["delta_psnr_mean"] == 0 and ref["max_abs_diff"] == 0
    assert len(ref["per_image"]) == 2 and all(k.startswith("Set5/") for k in ref["per_image"])
    assert 15 < ref["psnr"] < 50 and 0 < ref["ssim"] <= 1
    for name in cp.PRECISIONS[1:]:
        r = res[name]
        assert r["skipped"] is None and r["nonfinite"] == 0
        assert 0 < r["max_abs_diff"] < 0.1  # reduced precision, not another model
        assert abs(r["delta_psnr_mean"]) <= abs(r["delta_psnr_worst"]) + 1e-12
        assert r["ok"] == (abs(r["delta_psnr_worst"]) <= cp.DEFAULT_TOL_DB)
        assert table[name][2] == ("ok" if r["ok"] else "FAIL")
    # fp16 keeps 3 more mantissa bits than bf16: closer to fp32
    assert res["fp16-cast"]["max_abs_diff"] < res["bf16-cast"]["max_abs_diff"]


def test_infinite_outputs_are_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fp16 overflow (Inf before spandrel's clamp) fails the precision; exit 1. Other
    architectures than HybridMoE are checked too."""
    ckpt = save_overflowing_compact(tmp_path / "compact.pth")
    args = [str(ckpt), *QUICK, "--precisions", "fp16-cast", "bf16-cast"]
    assert cp.main(args) == 1
    table = rows(capsys.readouterr().out)
    assert set(table) == {"fp32", "fp16-cast", "bf16-cast"}
    assert table["fp16-cast"][2] == "FAIL" and int(table["fp16-cast"][3]) > 0
    assert int(table["fp32"][3]) == 0 and int(table["bf16-cast"][3]) == 0


def test_unsupported_precisions_are_skipped(
    tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the device has no fp16 autocast the precision is skipped with the reason, as is a
    cast the model declares unsupported."""
    real = cp.autocast_supported
    monkeypatch.setattr(cp, "autocast_supported", lambda d, t: t != torch.float16 and real(d, t))
    args = [str(tiny_ckpt), *QUICK, "--limit", "1", "--precisions", "fp16-autocast"]
    assert cp.main([*args, "bf16-autocast"]) in (0, 1)
    out = capsys.readouterr().out
    assert "fp16-autocast skip   torch.autocast('cpu', fp16) is not supported here" in out
    assert rows(out)["bf16-autocast"][2] in ("ok", "FAIL")

    class NoHalf:
        supports_half = False
        supports_bfloat16 = True

    assert cp.precision_setup(NoHalf(), "fp16-cast", "cpu") == (
        None,
        "the model declares no fp16 support (spandrel)",
    )


def test_autocast_probe() -> None:
    """The probe agrees with what autocast does to a matmul on this CPU."""
    assert cp.autocast_supported("cpu", torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.float16):
        fp16_works = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    assert cp.autocast_supported("cpu", torch.float16) == fp16_works


def test_full_images_and_shipped_lr(tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --crop the LR images are checked against Set5's shipped bicubic LR files (an
    uncropped ×4 image)."""
    ckpt = save_tiny(tiny_ckpt.parent / "tiny_x4.pth", scale=4)
    args = [str(ckpt), "--data", str(DATA), "--sets", "Set5", "--limit", "1", "--threads", "1"]
    assert cp.main([*args, "--precisions", "bf16-cast"]) in (0, 1)
    assert set(rows(capsys.readouterr().out)) == {"fp32", "bf16-cast"}


def test_usage_errors(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cp.main(["hybridmoe_xl", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "is neither a file, a shipped model (" in err and "nor a variant (" in err
    assert "2x_HybridMoE_Nano" in err and "hybridmoe_nano" in err
    assert cp.main([str(tmp_path / "missing.pth"), *QUICK]) == 2
    assert "not found" in capsys.readouterr().err
    assert cp.main([str(tiny_ckpt), *QUICK, "--sets", "Nope"]) == 2
    assert "set 'Nope' not found" in capsys.readouterr().err
    for flag, value, why in [
        ("--limit", "0", "must be >= 1"),
        ("--threads", "-2", "must be >= 0"),
        ("--tol-db", "-1", "must be a finite number >= 0"),
        ("--tol-db", "nan", "must be a finite number >= 0"),
        ("--perturb", "inf", "must be a finite number >= 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:  # refused by argparse, before any work
            cp.main([str(tiny_ckpt), *QUICK, flag, value])
        assert exit_info.value.code == 2
        assert f"argument {flag}: {why}" in capsys.readouterr().err
    assert cp.main([str(tiny_ckpt), *QUICK, "--scale", "4"]) == 2  # it ran at the file's scale
    assert "a checkpoint carries its own: drop --scale" in capsys.readouterr().err


def test_shipped_model_names_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    """A shipped model's name works as MODEL, as in every other command."""
    args = ["2x_HybridMoE_Nano", *QUICK, "--limit", "1", "--crop", "16", "--precisions", "fp32"]
    assert cp.main(args) == 0
    out = capsys.readouterr().out
    assert "2x_HybridMoE_Nano" in out and " fp32 " in out


def test_data_default_and_help(
    tiny_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --data the sets are looked for in $HYBRIDMOE_DATA, else ./datasets (never beside
    the package); the error names every missing set and how to point at them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYBRIDMOE_DATA", raising=False)
    quick = ["--limit", "1", "--crop", "16", "--threads", "1", "--precisions", "fp32"]
    assert cp.main([str(tiny_ckpt), *quick]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sets 'Set5', 'Set14' not found: there is no folder datasets.")
    assert "--data DIR" in err and "not shipped" in err and str(ROOT) not in err
    monkeypatch.setenv("HYBRIDMOE_DATA", str(DATA))
    assert cp.main([str(tiny_ckpt), *quick, "--sets", "Set5"]) == 0
    text = " ".join(cp.build_parser().format_help().split())
    assert "shipped model names" in text and "$HYBRIDMOE_DATA, else ./datasets" in text
    assert "CUDA GPU" in text  # --device has a help text


def test_cli_several_models_and_a_variant(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The command a GPU run uses (shell-expanded checkpoints, variant names, --json), here on
    CPU: one table for all models."""
    other = save_tiny(tmp_path / "other_x2.pth", std=0.02, global_mixer="ssm")
    out = tmp_path / "precision.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridmoe",
            "check-precision",
            str(tiny_ckpt),
            str(other),
            "hybridmoe_nano",
            "--scale",
            "2",
            *QUICK,
            "--limit",
            "1",
            "--crop",
            "16",
            "--precisions",
            "fp16-cast",
            "bf16-autocast",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    names = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.split()[1:2] == ["fp32"]]
    assert names == ["tiny_x2.pth", "other_x2.pth", "hybridmoe_nano"]
    report = json.loads(out.read_text())
    assert [m["info"]["model"] for m in report["models"]] == [
        str(tiny_ckpt),
        str(other),
        "hybridmoe_nano",
    ]
    assert report["models"][2]["info"]["source"].startswith("hybridmoe_nano x2, random weights")
    for m in report["models"]:
        assert [r["precision"] for r in m["results"]] == ["fp32", "fp16-cast", "bf16-autocast"]


@pytest.fixture(scope="module")
def degraded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Set5 degraded with the RESTORE preset (two images, seed 0), as make-degraded writes it."""
    from hybridmoe import degrade
    from hybridmoe.degraded_sets import make_set

    out = tmp_path_factory.mktemp("degraded")
    make_set(
        "Set5", DATA / "Set5" / "HR", out, cfg=degrade.RESTORE, preset="restore", seed=0, limit=2
    )
    return out


def test_degraded_sets_check_x1_models(
    degraded_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--degraded runs a scale-1 model on the LQ images and scores it as evaluate --degraded
    does (same fp32 PSNR per image); every precision is compared with fp32."""
    from hybridmoe import evaluate as ev

    ckpt = save_tiny(tmp_path / "tiny_x1.pth", scale=1)
    out = tmp_path / "x1.json"
    args = [str(ckpt), "--degraded", str(degraded_dir), "--limit", "1", "--threads", "1"]
    assert cp.main([*args, "--precisions", "fp16-cast", "bf16-cast", "--json", str(out)]) in (0, 1)
    assert set(rows(capsys.readouterr().out)) == {"fp32", "fp16-cast", "bf16-cast"}
    report = json.loads(out.read_text())
    assert report["degraded"] is True and report["sets"] == ["Set5"]
    (entry,) = report["models"]
    assert entry["info"]["scale"] == 1
    res = {r["precision"]: r for r in entry["results"]}
    (key,) = res["fp32"]["per_image"]
    desc = ev.load_descriptor(ckpt, "cpu", "fp32", restoration=True)
    expected = ev.evaluate_degraded_set(degraded_dir / "Set5", desc, limit=1)
    assert res["fp32"]["per_image"][key]["psnr"] == pytest.approx(
        expected["per_image"][key.split("/")[1]]["model"]["psnr"], abs=1e-6
    )
    for name in ("fp16-cast", "bf16-cast"):
        assert res[name]["nonfinite"] == 0 and 0 < res[name]["max_abs_diff"] < 0.1


def test_degraded_usage_errors(
    tiny_ckpt: Path, degraded_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An SR model on degraded sets, a scale-1 model without them and a scale other than 1
    with them are refused, each with the fix."""
    assert cp.main([str(tiny_ckpt), "--degraded", str(degraded_dir)]) == 2
    assert "need a scale-1 model" in capsys.readouterr().err
    x1 = save_tiny(tmp_path / "tiny_x1.pth", scale=1)
    assert cp.main([str(x1), *QUICK]) == 2
    assert "with --degraded DIR" in capsys.readouterr().err
    assert cp.main(["hybridmoe_nano", "--degraded", str(degraded_dir), "--scale", "2"]) == 2
    assert "--degraded checks scale-1" in capsys.readouterr().err
    assert cp.main(["hybridmoe_nano", "--scale", "1", *QUICK]) == 2
    assert "scale-1 models: --degraded DIR" in capsys.readouterr().err
    assert cp.main([str(x1), "--degraded", str(tmp_path / "none")]) == 2
    assert "make-degraded" in capsys.readouterr().err
