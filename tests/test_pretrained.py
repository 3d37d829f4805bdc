"""The shipped pretrained weights load through spandrel and restore real images.

The whole-image evaluations run with PyTorch's default thread count (real models on full
benchmark images use every core); the small ONNX comparison runs on one thread."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from textures import checkerboard, dithered

from hybridmoe import checkpoint as C
from hybridmoe.evaluate import evaluate_set
from hybridmoe.spandrel_arch import variant_of

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = sorted((ROOT / "experiments" / "pretrained_models").glob("*.safetensors"))
# super-resolution of bicubic inputs (fidelity models)
SR_WEIGHTS = [p for p in WEIGHTS if not p.stem.startswith("1x_") and "RealWorld" not in p.stem]
REALWORLD_WEIGHTS = [p for p in WEIGHTS if "RealWorld" in p.stem]  # x4 degraded inputs, GAN
RESTORE_WEIGHTS = [p for p in WEIGHTS if p.stem.startswith("1x_")]  # x1 restoration
# Set5 Y-PSNR gain over MATLAB bicubic measured with hybridmoe evaluate (docs/BENCHMARKS.md);
# the assertion keeps a margin below it
MIN_GAIN_DB = {2: 2.0, 4: 1.0}


def test_all_models_are_shipped() -> None:
    names = {p.stem for p in WEIGHTS}
    assert names == {
        "2x_HybridMoE_Nano",
        "4x_HybridMoE_Nano",
        "2x_HybridMoE_S",
        "4x_HybridMoE_S",
        "2x_HybridMoE_M",
        "4x_HybridMoE_M",
        "2x_HybridMoE_L",
        "4x_HybridMoE_L",
        "1x_HybridMoE_Nano_Restore",
        "1x_HybridMoE_S_Restore",
        "4x_HybridMoE_S_RealWorld",
    }
    for p in WEIGHTS:
        assert (p.parent / f"{p.stem}.md").is_file(), f"model card missing for {p.name}"


@pytest.mark.parametrize("path", SR_WEIGHTS, ids=lambda p: p.stem)
def test_pretrained_matches_its_model_card(path: Path, set5_dir: Path) -> None:
    """Every shipped SR model loads as its named variant, is well ahead of bicubic on Set5, and
    its Set5 Y-PSNR equals its card's number (±0.01 dB, the card rounds to 0.01): a network
    change that alters a shipped model's output cannot pass unnoticed."""
    desc = C.load_checkpoint(path)
    scale = int(path.stem[0])
    assert desc.architecture.id == "HybridMoE"
    assert desc.scale == scale and desc.purpose == "SR"
    size = path.stem.split("_")[2].lower()  # Nano, S, M, L
    assert size in desc.tags  # the options in the file are exactly the variant's
    assert desc.model.hyperparameters["levels"] == 1 and desc.model.num_experts == 0
    card = (path.parent / f"{path.stem}.md").read_text(encoding="utf-8")
    row = next(line for line in card.splitlines() if line.startswith("| Set5 |"))
    expected = float(row.split("|")[-2].strip().strip("*").split("/")[0])  # last column
    res = evaluate_set(set5_dir, scale, desc)
    gain = res["model"]["psnr"] - res["bicubic"]["psnr"]
    assert gain > MIN_GAIN_DB[scale], (path.name, res["model"], res["bicubic"])
    assert abs(res["model"]["psnr"] - expected) <= 0.01, (path.name, res["model"], expected)


# Largest output difference to fp32, relative to the output's peak magnitude: a few units in
# the last place of each format (fp16 keeps 11 significant bits, bf16 8) after a dozen layers.
REDUCED_PRECISION_TOL = {torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


@pytest.mark.parametrize("texture", [checkerboard, dithered], ids=["checkerboard", "dithered"])
@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
def test_pretrained_is_finite_and_close_in_fp16_bf16_on_adversarial_textures(
    path: Path, texture: object
) -> None:
    """One-pixel patterns at full contrast drive the trained weights hardest: every shipped
    model stays finite in fp32, fp16 and bf16 on them, and close to its fp32 output."""
    model = C.load_checkpoint(path).model.eval()
    x = texture()  # type: ignore[operator]
    with torch.no_grad():
        ref = model(x)
        assert torch.isfinite(ref).all()
        for dtype, tol in REDUCED_PRECISION_TOL.items():
            y = model.to(dtype)(x.to(dtype)).float()
            model.float()
            assert torch.isfinite(y).all(), (path.stem, dtype)
            err = (y - ref).abs().max().item()
            assert err <= tol * ref.abs().max().item(), (path.stem, dtype, err)


CARD_FIELDS = (
    "name", "author", "license", "tags", "description", "architecture", "size", "scale",
    "input / output channels", "dataset", "dataset size", "iterations", "batch size", "HR size",
    "OTF degradations", "pretrained from", "SHA-256", "ONNX",
)  # fmt: skip


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
def test_model_card_fields_and_checksums(path: Path) -> None:
    """Every card carries OpenModelDB's fields, and its checksums are those of the files."""
    card = (path.parent / f"{path.stem}.md").read_text(encoding="utf-8")
    fields = {
        cells[1].strip(): cells[2].strip()
        for cells in (line.split("|") for line in card.splitlines())
        if len(cells) > 3
    }
    assert [f for f in CARD_FIELDS if f not in fields] == []
    assert fields["name"] == path.stem and fields["scale"] == path.stem[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() in fields["SHA-256"]
    onnx = path.with_name(f"{path.stem}_fp16.onnx")
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() in fields["ONNX"]


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
@pytest.mark.usefixtures("one_thread")
def test_shipped_onnx_matches_the_checkpoint(path: Path) -> None:
    """The shipped fp16 ONNX graph gives the checkpoint's output (onnxruntime vs PyTorch fp32,
    a real image crop at a size the export never saw)."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    from PIL import Image

    img = Image.open(ROOT / "tests" / "data" / "Set5" / "HR" / "butterfly.png").convert("RGB")
    x = torch.from_numpy(np.asarray(img)[:37, :45].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = C.load_checkpoint(path).model.eval()(x).numpy()
    sess = ort.InferenceSession(
        str(path.with_name(f"{path.stem}_fp16.onnx")), providers=["CPUExecutionProvider"]
    )
    out = sess.run(None, {"input": x.numpy().astype(np.float16)})[0].astype(np.float32)
    assert out.shape == ref.shape == (1, 3, 37 * int(path.stem[0]), 45 * int(path.stem[0]))
    assert float(np.abs(out - ref).max()) < 0.02


def _card_set5(path: Path) -> float:
    """The card's Set5 PSNR in the first column headed "this model" (its default output)."""
    lines = (path.parent / f"{path.stem}.md").read_text(encoding="utf-8").splitlines()
    header = [c.strip() for c in next(ln for ln in lines if ln.startswith("| set |")).split("|")]
    column = next(i for i, c in enumerate(header) if c.startswith("this model"))
    row = next(line for line in lines if line.startswith("| Set5 |")).split("|")
    return float(row[column].strip().strip("*").split("/")[0])


def _on_degraded_set5(desc: object, preset: str, tmp_path: Path) -> dict:
    """Scores of ``desc`` on Set5 degraded with ``preset`` and seed 0 (hybridmoe make-degraded),
    as ``evaluate --degraded`` gives them."""
    from hybridmoe import degrade
    from hybridmoe.degraded_sets import make_set
    from hybridmoe.evaluate import evaluate_degraded_set

    set5 = ROOT / "tests" / "data" / "Set5" / "HR"
    make_set("Set5", set5, tmp_path, cfg=degrade.PRESETS[preset], preset=preset, seed=0)
    res = evaluate_degraded_set(tmp_path / "Set5", desc)
    assert res["images"] == 5
    return res


@pytest.mark.parametrize("path", RESTORE_WEIGHTS, ids=lambda p: p.stem)
def test_restoration_model_matches_its_card_on_degraded_set5(path: Path, tmp_path: Path) -> None:
    """The x1 restoration model, on Set5 degraded with the card's preset and seed (hybridmoe
    make-degraded, seed 0), gives the card's Y-PSNR (±0.02 dB) and is well above the degraded
    input: a change to the network or to the degradations cannot pass unnoticed."""
    desc = C.load_checkpoint(path)
    assert desc.scale == 1 and desc.purpose == "Restoration"
    assert ("nano" if "Nano" in path.stem else "s") in desc.tags
    res = _on_degraded_set5(desc, "restore", tmp_path)
    assert abs(res["model"]["psnr"] - _card_set5(path)) <= 0.02, (res["model"], _card_set5(path))
    assert res["model"]["psnr"] - res["input"]["psnr"] > 2.0, res


@pytest.mark.parametrize("path", REALWORLD_WEIGHTS, ids=lambda p: p.stem)
def test_realworld_model_matches_its_card_on_degraded_set5(path: Path, tmp_path: Path) -> None:
    """The x4 real-world model, on Set5 degraded with the realworld4 preset and seed 0 (hybridmoe
    make-degraded), gives its card's Y-PSNR (±0.02 dB) and is above MATLAB bicubic of the same
    input: a change to the network or to the degradations cannot pass unnoticed."""
    desc = C.load_checkpoint(path)
    assert desc.scale == 4 and desc.purpose == "SR" and "noise" in desc.tags
    # the s layout plus the texture head with its noise injection
    assert variant_of({**desc.model.hyperparameters, "texture_head": False}) == "s"
    assert desc.model.head.noise_strength is not None
    res = _on_degraded_set5(desc, "realworld4", tmp_path)
    card = _card_set5(path)
    assert abs(res["model"]["psnr"] - card) <= 0.02, (res["model"], card)
    assert res["model"]["psnr"] > res["bicubic"]["psnr"], res
