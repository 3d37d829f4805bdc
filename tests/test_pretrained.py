"""The shipped pretrained weights load through spandrel and restore real images."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridmoe import checkpoint as C
from hybridmoe.evaluate import evaluate_set

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = sorted((ROOT / "experiments" / "pretrained_models").glob("*.safetensors"))
# Set5 Y-PSNR gain over MATLAB bicubic measured with hybridmoe evaluate (docs/BENCHMARKS.md);
# the assertion keeps a margin below it
MIN_GAIN_DB = {2: 2.0, 4: 1.0}


def test_all_four_models_are_shipped() -> None:
    names = {p.stem for p in WEIGHTS}
    assert names == {
        "2x_HybridMoE_Nano",
        "4x_HybridMoE_Nano",
        "2x_HybridMoE_S",
        "4x_HybridMoE_S",
    }
    for p in WEIGHTS:
        assert (p.parent / f"{p.stem}.md").is_file(), f"model card missing for {p.name}"


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
@pytest.mark.usefixtures("one_thread")
def test_pretrained_loads_and_beats_bicubic(path: Path, set5_dir: Path) -> None:
    desc = C.load_checkpoint(path)
    scale = int(path.stem[0])
    assert desc.architecture.id == "HybridMoE"
    assert desc.scale == scale and desc.purpose == "SR"
    if "Nano" in path.stem:  # the earlier nano configuration: no variant tag claims it now
        assert "nano" not in desc.tags and "16dim" in desc.tags
        hp = desc.model.hyperparameters
        assert (hp["dim"], hp["levels"], hp["num_experts"], hp["top_k"]) == (16, 3, 4, 1)
    else:  # the earlier s configuration (three levels, dim 32): the constructor's defaults
        assert "s" not in desc.tags and "32dim" in desc.tags
        hp = desc.model.hyperparameters
        assert (hp["dim"], hp["levels"], hp["num_experts"], hp["top_k"]) == (32, 3, 4, 2)
    res = evaluate_set(set5_dir, scale, desc, limit=2)  # baby, bird
    gain = res["model"]["psnr"] - res["bicubic"]["psnr"]
    assert gain > MIN_GAIN_DB[scale], (path.name, res["model"], res["bicubic"])


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
@pytest.mark.usefixtures("one_thread")
def test_pretrained_matches_its_model_card(path: Path, set5_dir: Path) -> None:
    """Set5 Y-PSNR of every shipped model equals its card's number (±0.01 dB, the card rounds
    to 0.01): a network change that alters a shipped model's output cannot pass unnoticed."""
    card = (path.parent / f"{path.stem}.md").read_text(encoding="utf-8")
    row = next(line for line in card.splitlines() if line.startswith("| Set5 |"))
    expected = float(row.split("|")[4].strip().strip("*").split("/")[0])
    res = evaluate_set(set5_dir, int(path.stem[0]), C.load_checkpoint(path))
    assert abs(res["model"]["psnr"] - expected) <= 0.01, (path.name, res["model"], expected)
