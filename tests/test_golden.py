"""Stored three-level networks and their outputs: a change to the network that gives stored
weights another meaning (two concatenated halves in the other order, the gate and value of
a gated FFN swapped, a renamed or re-ordered block) fails here although it trains and
tests as well as before. The shipped files are single-level trunks and cannot see it.

The files were written once with ``python tests/test_golden.py --write`` (fp16 weights,
the zero-started parameters given small values and the residual scales set to 1, so that
every branch reaches the output by far more than rounding);
they are never rewritten by a test. Rewriting them is a deliberate break of checkpoint
compatibility: say so in the change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"

# name: (constructor options, LR input side (H, W))
CASES: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    # the design's defaults: laplacian split, HF path of partial large kernels, window
    # attention, MoE FFNs (top-2 of 4), Fourier mixer, texture head, MKS2021 base
    "x2_design": ({"scale": 2, "dim": 16}, (20, 24)),
    # the other choice of every switch
    "x3_alternatives": (
        {
            "scale": 3,
            "dim": 16,
            "global_mixer": "ssm",
            "freq_split": "fft",
            "upsampler": "dysample",
            "refine_moe": True,
            "conv_block": "rep3res",
            "hf_block": "rep3",
            "shift": "alternate",
            "stem_lk": True,
            "base": "bicubic",
            "noise": True,
            "num_experts": 3,
            "top_k": 1,
        },
        (18, 22),
    ),
    # two levels, dense gated FFNs, no mixer, no shift, no base: the detail path is the output
    "x4_dense_two_levels": (
        {
            "scale": 4,
            "dim": 16,
            "levels": 2,
            "use_moe": False,
            "global_mixer": "none",
            "shift": "none",
            "gate_norm": False,
            "texture_head": False,
            "base": "none",
        },
        (12, 16),
    ),
}


def _input(size: tuple[int, int]) -> torch.Tensor:
    """A crop of Set5 ``baby`` as (1, 3, H, W) in [0, 1]: real image content."""
    from hybridmoe import imageio

    img = imageio.read_image(ROOT / "tests" / "data" / "Set5" / "HR" / "baby.png")
    h, w = size
    crop = np.ascontiguousarray(img.pixels[200 : 200 + h, 240 : 240 + w, :3])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float().contiguous()


def _write(overwrite: bool) -> None:
    sys.path[:0] = [str(ROOT / "traiNNer" / "archs")]
    import hybridmoe_arch as arch

    GOLDEN.mkdir(parents=True, exist_ok=True)
    for i, (name, (options, size)) in enumerate(CASES.items()):
        weights, io = GOLDEN / f"{name}.safetensors", GOLDEN / f"{name}_io.safetensors"
        if not overwrite and (weights.exists() or io.exists()):
            print(f"kept {weights.name}: rewriting breaks compatibility (--overwrite)")
            continue
        torch.manual_seed(i)
        net = arch.hybridmoe(**options).eval()
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for key, p in net.named_parameters():
                if key.endswith(".gamma"):  # residual scales at 1 (0.1 at the start)
                    p.fill_(1.0)
                elif ".ffn." in key:  # feed-forwards: products of two small maps otherwise
                    p.mul_(4.0)
                elif p.numel() and p.abs().max() == 0:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        sd = {
            k: (v.half() if v.is_floating_point() else v).contiguous()
            for k, v in net.state_dict().items()
        }
        save_file(sd, str(weights))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
        x = _input(size)
        with torch.inference_mode():
            y = net(x)
        save_file({"input": x, "output": y.contiguous()}, str(io))
        print(f"wrote {weights.name} ({weights.stat().st_size} bytes) and {io.name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_network_gives_its_stored_output(name: str) -> None:
    """Loaded through the package (spandrel detection from the state dict alone), each stored
    network maps its stored input to its stored output, unfused and fused."""
    from hybridmoe.checkpoint import load_checkpoint

    io = load_file(str(GOLDEN / f"{name}_io.safetensors"))
    desc = load_checkpoint(GOLDEN / f"{name}.safetensors")
    options, _ = CASES[name]
    assert desc.scale == options["scale"]
    net = desc.model.float().eval()
    with torch.inference_mode():
        out = net(io["input"])
        assert out.shape == io["output"].shape
        assert (out - io["output"]).abs().max() < 2e-4
        # the detail path carries a real share of the output (the check is not the base alone)
        base = net.base(io["input"]) if net.base is not None else 0.0
        assert (io["output"] - base).abs().mean() > 1e-3
        fused = net.fuse()(io["input"])
    assert (fused - io["output"]).abs().max() < 2e-4


def test_stored_inputs_are_the_image_crops() -> None:
    """The stored inputs are the documented crops (a changed reader fails here, not above)."""
    for name, (_, size) in CASES.items():
        io = load_file(str(GOLDEN / f"{name}_io.safetensors"))
        assert torch.equal(io["input"], _input(size)), name


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the stored networks")
    ap.add_argument("--overwrite", action="store_true", help="replace existing files")
    a = ap.parse_args()
    if not a.write:
        ap.error("nothing to do: --write")
    sys.path[:0] = [str(ROOT)]
    _write(a.overwrite)
