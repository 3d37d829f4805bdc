"""Tiled against whole-image inference (``hybridmoe.tiling``'s ``upscale_tiled``) for the
configurations spandrel is told tile well (``ModelTiling.SUPPORTED``: the x1 trunks of the
variants; three-level networks without a global mixer, Laplacian split) and for those with
image-wide operations (``DISCOURAGED``: Fourier mixer, fft split).

A real image is used (Set5 butterfly, MATLAB-bicubic ×2 downscaled, centre 96×96 LR crop)
and every weight is moved off its initialization (N(0, 0.02²) added: at initialization the
detail path is near zero and every model would tile perfectly). Two layouts: tile 48 /
overlap 8 (3×3 windows, 24 px shared) and tile 64 / overlap 16 (3×3 windows, 48 px shared).
"Interior" is the part of the output that a single window gives at full weight (no blending),
away from every seam. The tolerances are about 1.5-2× the values measured with these
perturbations; the shipped checkpoints are measured by scripts/measure_tiling.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sweep
import torch
from spandrel import ImageModelDescriptor, ModelLoader, ModelTiling
from tiny_options import SMALL_UNET

import hybridmoe_arch as A
from hybridmoe import metrics, tiling
from hybridmoe.evaluate import read_image
from hybridmoe.models import perturb
from hybridmoe.spandrel_arch import register_spandrel

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "tests" / "data" / "Set5" / "HR" / "butterfly.png"
SCALE = 2
CROP = 96
LAYOUTS = ((48, 8), (64, 16))
"""(tile, overlap) in LR pixels; ``upscale_tiled`` needs tile > 3·overlap."""

Tol = dict[tuple[int, int], tuple[float, float]]
"""(tile, overlap) -> (max, mean) abs-difference tolerance in 1/255, overall and interior."""

CASES: dict[str, tuple[str, dict[str, Any], ModelTiling, Tol]] = {
    "nano-none": (
        "hybridmoe",
        {**SMALL_UNET, "global_mixer": "none"},
        ModelTiling.SUPPORTED,
        {(48, 8): (0.3, 0.03), (64, 16): (0.04, 0.003)},
    ),
    "l3-none": (  # the three-level layout with window 16 (hybridmoe_l before)
        "hybridmoe",
        {**sweep.L3, "global_mixer": "none"},
        ModelTiling.SUPPORTED,
        {(64, 16): (0.9, 0.18)},
    ),
    "nano": (
        "hybridmoe",
        SMALL_UNET,
        ModelTiling.DISCOURAGED,
        {(48, 8): (0.6, 0.045), (64, 16): (0.12, 0.009)},
    ),
    "three-level": (
        "hybridmoe",
        {},
        ModelTiling.DISCOURAGED,
        {(48, 8): (0.6, 0.06), (64, 16): (0.25, 0.017)},
    ),
    "three-level-moe": (  # the three-level layout with MoE top-2 at 1/4 (hybridmoe_m before)
        "hybridmoe",
        sweep.M3,
        ModelTiling.DISCOURAGED,
        {(48, 8): (0.8, 0.11), (64, 16): (0.3, 0.033)},
    ),
    "l3": ("hybridmoe", sweep.L3, ModelTiling.DISCOURAGED, {(64, 16): (1.0, 0.22)}),
    "nano-fft-split": (
        "hybridmoe",
        {**SMALL_UNET, "global_mixer": "none", "freq_split": "fft"},
        ModelTiling.DISCOURAGED,
        {(48, 8): (10.0, 0.33), (64, 16): (8.0, 0.39)},
    ),
}
"""Case -> (variant, options, declared tiling, tolerances); the whole image is the reference.
``l3`` (window 16) runs one layout only, to keep the test short."""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lr_image() -> torch.Tensor:
    """(1, 3, 96, 96) in [0, 1]: the centre of butterfly.png after MATLAB bicubic ×½."""
    hr = metrics.mod_crop(read_image(IMAGE), SCALE)
    lr = metrics.imresize_matlab_uint8(hr, 1 / SCALE)
    top, left = (lr.shape[0] - CROP) // 2, (lr.shape[1] - CROP) // 2
    crop = lr[top : top + CROP, left : left + CROP]
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()[None] / 255


def perturbed_descriptor(variant: str, std: float = 0.02, **options: Any) -> Any:
    """A spandrel descriptor of ``variant`` ×2 with N(0, std²) added to every parameter."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the initialization too: results independent of test order
        model = A.FACTORIES[variant](scale=SCALE, **options)
    perturb(model, std, seed=0)
    register_spandrel()
    desc = ModelLoader().load_from_state_dict(model.state_dict())
    assert isinstance(desc, ImageModelDescriptor)
    return desc.eval()


def interior_mask(size: int, tile: int, overlap: int, scale: int) -> torch.Tensor:
    """(size·scale, size·scale) bool: output pixels covered by exactly one window, at full
    weight (no blending with a neighbour), for :func:`tiling.upscale_tiled`'s layout."""
    starts = tiling.window_starts(size, tile, overlap)
    side = min(tile, size)
    covered = torch.zeros(size * scale, size * scale)
    full = torch.zeros(size * scale, size * scale)
    cpu = torch.device("cpu")
    for y0 in starts:
        wy = tiling.axis_weights(y0, side, size, overlap, scale, device=cpu)
        for x0 in starts:
            wx = tiling.axis_weights(x0, side, size, overlap, scale, device=cpu)
            w = wy[:, None] * wx[None, :]
            ry = slice(y0 * scale, (y0 + side) * scale)
            rx = slice(x0 * scale, (x0 + side) * scale)
            covered[ry, rx] += (w > 0).float()
            full[ry, rx] += (w == 1).float()
    return (covered == 1) & (full == 1)


def tiling_differences(desc: Any, image: torch.Tensor, tile: int, overlap: int) -> dict[str, float]:
    """Max and mean abs difference (in 1/255, max over channels) between tiled and
    whole-image output (both clamped to [0, 1] by the descriptor), overall and interior."""
    with torch.inference_mode():
        whole = desc(image)
        tiled = tiling.upscale_tiled(desc, image, desc.scale, tile, overlap, desc.size_requirements)
    diff = (tiled - whole).abs()[0].amax(0) * 255
    inner = interior_mask(image.shape[-1], tile, overlap, desc.scale)
    return {
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "interior_max": float(diff[inner].max()),
        "interior_mean": float(diff[inner].mean()),
        "interior_share": float(inner.float().mean()),
    }


def test_interior_mask_layout() -> None:
    """Tile 48 / overlap 8 on 96 px: windows at 0, 24, 48; full weight on [0, 32), [40, 56)
    and [64, 96) LR px per axis; the seams are [32, 40) and [56, 64)."""
    assert tiling.window_starts(CROP, 48, 8) == [0, 24, 48]
    assert tiling.window_starts(CROP, 64, 16) == [0, 16, 32]
    mask = interior_mask(CROP, 48, 8, 1)
    row = mask[0].nonzero().flatten().tolist()
    assert row == [*range(32), *range(40, 56), *range(64, 96)]
    assert mask.float().mean() == pytest.approx((80 / 96) ** 2)


@pytest.fixture(scope="module")
def measured(lr_image: torch.Tensor) -> dict[str, tuple[ModelTiling, dict[tuple[int, int], Any]]]:
    """Case -> (declared tiling, {(tile, overlap): :func:`tiling_differences`}); every model
    is built and run once for the whole module."""
    out = {}
    for case, (variant, options, _, tolerances) in CASES.items():
        desc = perturbed_descriptor(variant, **options)
        assert desc.size_requirements.none  # any tile size works
        diffs = {layout: tiling_differences(desc, lr_image, *layout) for layout in tolerances}
        out[case] = (desc.tiling, diffs)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_tiled_matches_whole_image(
    case: str, measured: dict[str, tuple[ModelTiling, dict[tuple[int, int], Any]]]
) -> None:
    _, _, expected_tiling, tolerances = CASES[case]
    declared, diffs = measured[case]
    assert declared == expected_tiling
    for (tile, overlap), (max_tol, mean_tol) in tolerances.items():
        d = diffs[tile, overlap]
        where = f"{case}, tile {tile} / overlap {overlap}: {d}"
        assert d["max"] <= max_tol and d["interior_max"] <= max_tol, where
        assert d["mean"] <= mean_tol and d["interior_mean"] <= mean_tol, where
        assert d["max"] > 0, where  # tiles see less context: never bit-exact
        # the interior is as far off as the seams: context, not blending, makes the difference
        assert d["interior_max"] >= 0.5 * d["max"], where


def test_overlap_helps_only_without_global_ops(
    measured: dict[str, tuple[ModelTiling, dict[tuple[int, int], Any]]],
) -> None:
    """Sharing more context (tile 64 / overlap 16 instead of 48 / 8) shrinks the difference
    of a SUPPORTED model several times; the FFT frequency split, global over each tile, keeps
    a large one whatever the overlap. With 64 / 16 every configuration without a global split
    stays under 1/255."""
    few, many = (measured["nano-none"][1][layout]["max"] for layout in LAYOUTS)
    assert many < few / 5
    fft_few, fft_many = (measured["nano-fft-split"][1][layout]["max"] for layout in LAYOUTS)
    assert fft_many > fft_few / 2 and fft_many > 1.0
    for case, (_, diffs) in measured.items():
        if case != "nano-fft-split":
            assert diffs[64, 16]["max"] < 1.0, case


def test_aligned_tiles_match_better(lr_image: torch.Tensor) -> None:
    """Tiles starting at multiples of 4·window_size (``upscale.tile_alignment``: 32 for a
    window of 8) see the network's internal grid (two ×2 downsamplings, attention windows at
    ×½ and ×¼) as the whole image does. A perturbed tiny HybridMoE (dim 8, one block per
    level, window 8, no global mixer: SUPPORTED) on the 96×96 crop, tile 48: with overlap 4
    both layouts take 3×3 tiles (starts 0, 24, 48 against 0, 32, 64), with overlap 8 the
    aligned one takes 4×4 (0, 16, 32, 48: the step of 24 is too short for 32, so its divisor
    16 is used). Measured max / mean abs difference in 1/255: 0.106 / 0.013 -> 0.058 / 0.007
    (48/4) and 0.126 / 0.014 -> 0.060 / 0.0065 (48/8)."""
    from hybridmoe import upscale

    desc = perturbed_descriptor(
        "hybridmoe",
        std=0.03,
        dim=8,
        enc_blocks=(1, 1, 1),
        hf_blocks=(1, 1, 1),
        mid_blocks=1,
        dec_blocks=(1, 1),
        kernel_size=5,
        num_experts=3,
        top_k=2,
        global_mixer="none",
    )
    assert desc.tiling is ModelTiling.SUPPORTED
    align = upscale.tile_alignment(desc)
    assert align == 32
    assert tiling.window_starts(CROP, 48, 4, align) == [0, 32, 64]
    assert tiling.window_starts(CROP, 48, 8, align) == [0, 16, 32, 48]
    with torch.inference_mode():
        whole = desc(lr_image)
        for overlap in (4, 8):
            diffs = []
            for a in (1, align):
                tiled = tiling.upscale_tiled(
                    desc, lr_image, SCALE, 48, overlap, desc.size_requirements, align=a
                )
                diffs.append((tiled - whole).abs()[0].amax(0) * 255)
            plain, aligned = diffs
            where = f"overlap {overlap}: max {plain.max():.3f} -> {aligned.max():.3f}"
            assert aligned.max() < 0.7 * plain.max(), where
            assert aligned.mean() < 0.7 * plain.mean(), where


def test_a_padding_model_tiles_exactly_when_windows_start_at_its_multiple() -> None:
    """A model that pads its input to a multiple of 8 (here two 3x3 box blurs, reach 2):
    windows at multiples of 8 (what ``upscale.tile_alignment`` picks for it) give the
    whole-image result; at align 1 the last window of a row is padded otherwise."""
    import torch.nn.functional as F
    from spandrel import SizeRequirements

    torch.manual_seed(0)
    box = torch.full((3, 1, 3, 3), 1 / 9)

    def blur2(x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), box, groups=3)
        return x

    req = SizeRequirements(multiple_of=8)
    img = torch.rand(1, 3, 70, 20)
    whole = tiling.run_padded(blur2, img, 1, req)
    aligned = tiling.upscale_tiled(blur2, img, 1, 16, 2, req, align=8)
    assert (aligned - whole).abs().max() < 1e-5
    unaligned = tiling.upscale_tiled(blur2, img, 1, 16, 2, req, align=1)
    assert (unaligned - whole).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["hybridmoe_nano", "hybridmoe_s", "hybridmoe_m"])
def test_trunk_variants_tile_exactly_with_enough_overlap(
    variant: str, lr_image: torch.Tensor
) -> None:
    """The x1 trunks see 2 + blocks pixels around each LR pixel (stem, blocks and the upsampler's
    convolution are 3x3; the bicubic base 2): an overlap wider than that gives the whole-image
    output up to the rounding of the float32 blend (under 1/1000 of an 8-bit step); a narrower
    one leaves seams of whole 8-bit steps. The weights are perturbed strongly (std 0.05) so that
    distant pixels matter, and the network runs in float64: at that amplitude float32 rounding
    alone moves a few outputs of the 192-channel m by up to two 8-bit steps, depending on the
    CPU's convolution kernels."""
    desc = perturbed_descriptor(variant, std=0.05)
    desc.model.double()
    image = lr_image.double()
    assert desc.tiling == ModelTiling.SUPPORTED
    radius = 2 + sum(A.VARIANTS[variant]["enc_blocks"]) + sum(A.VARIANTS[variant]["dec_blocks"])
    assert 8 < radius < 16  # between the two overlaps below
    wide = tiling_differences(desc, image, 64, 16)
    assert wide["max"] < 1e-3, wide
    narrow = tiling_differences(desc, image, 48, 8)
    assert narrow["max"] > 1.0, narrow
    assert narrow["interior_max"] < 1.0, narrow
