"""Train, time and evaluate many network configurations under one recipe (GPU driver).

Every configuration of a comparison is trained with the same recipe, data and iteration budget:
random LR crops of pre-made HR/LR pairs (MATLAB bicubic, ``make_pairs.py``) held on the GPU,
batch 16, LR 48² at ×3/×4 and 64² at ×1/×2, random flips and 90° rotations, AdamW
(lr 5e-4, betas 0.9/0.99, no weight decay), the rate halved at 1/2 and 3/4 of the budget,
Charbonnier loss (plus the MoE balance loss, weight 0.01, for networks with MoE layers),
bf16 autocast, channels_last, EMA of the weights (decay 0.999); the EMA weights are what is
saved and evaluated. These are the values of the traiNNer-redux templates in ``options/``.

Commands::

    sweep.py train  --configs A B ... --scale 4 --iters 2000 --data DIR --out RUNS
                    [--deadline-s S]
        one process per configuration, side by side on the GPU; each saves its full training
        state every 500 iterations and when the deadline comes, and resumes from it when run
        again with the same --out and the same images under --data (so a budget can span several
        machine sessions; a resume checks the decoded images against the sha256 its run
        recorded, so the folders may move but not change; a run without its state, e.g.
        unpacked from a pack without --with-state, is refused, and so is a run that another
        process is training, e.g. a start given twice). The names, folders and a resume's
        recipe are checked before any run starts; a run that
        fails shows the last line of its output (all of it in RUNS/<run>.stdout). A larger
        --iters continues a finished run (the learning-rate schedule is that of the new budget).
        --warmup N: the rate rises linearly over the first N iterations; --lr X: another peak
        rate; --batch N, --crop N: another batch size, LR crop side (small CPU probes). All are
        recipe changes, kept with the run: give such runs their own --out and recipe name.
        --val DIR: the EMA weights' Y-PSNR on the HR images of DIR (the evaluator's steps) at
        every save, logged as the run's validation curve.
        --scale 1 --degrade restore: x1 restoration; the LQ batch is made on the device from
        the HR crops with hybridmoe.degrade's preset (blur, noise, JPEG), drawn from a
        generator seeded by --seed and saved with the training state (run <config>_x1_restore).
        --scale 4 --degrade realworld4: the same at x4 with the second-order preset.
        --init DIR --gan LPIPS: GAN fine-tuning (run <config>_x<s>[_<preset>]_gan): the weights
        start from DIR/<config>_x<s> (a run of this recipe; --init-config C: from DIR/C_x<s>,
        C's layout plus a texture head, which starts as the identity), and the loss is Charbonnier
        + LPIPS-VGG (weights of hybridmoe perceptual-weights) + the adversarial term of a
        U-Net discriminator (hybridmoe.gan) trained beside it; constant rate (GAN_RECIPE).
    sweep.py bench  --configs A B ... [--json OUT]
        fp16 weights, batch 1, fused forms: ×4 to 1920×1080 (480×270 in) and ×2 from 1920×1080;
        median latency (CUDA events), GFLOPs per forward and achieved TFLOP/s.
    sweep.py eval   --runs RUNS [--sets ...] [--records DIR] [--recipe NAME] [--degraded DIR]
        the project's evaluator (Y channel, border = scale, MATLAB bicubic LR) on every finished
        run; one JSON record per trained model. An existing record is kept (and named): sets
        named in --sets that it lacks are added to it (listed under "added"). A benchmark
        set with another number of images than it has (Set5 5, Set14 14, B100 and Urban100
        100; e.g. one not yet all copied) is refused unless --limit N is given. With
        --degraded DIR (sets of hybridmoe
        make-degraded): the restoration runs, PSNR/SSIM (Y, border 0) per set and the degraded
        input's as psnr_input/ssim_input.
    sweep.py table  --records DIR [--speed JSON] [--plot OUT.png] [--join-rates]
        one table of PSNR per set (and latency), and a PSNR-vs-latency plot (one panel per
        recipe; --join-rates: recipes that differ only in the peak rate share one).
    sweep.py pack --runs RUNS ... --out DIR [--with-state] / unpack --tars T ... --out DIR
        the runs as tar parts of at most 15 MiB (large files in chunks) and back.
    sweep.py curves --runs RUNS ... --out OUT.png [--set Set5]
        the validation curves (--val) of the runs in one plot.
    sweep.py times --runs RUNS ...
        iterations and wall-clock training minutes of every run (from its log).
    sweep.py router-drift --runs RUN ... [--json OUT]
        how far each MoE router moved from its initialization (rebuilt from the run's seed).
    sweep.py margin --runs REF RUN ... [--sets ...] [--json OUT]
        per-image margins of runs over the first (the evaluator's steps), set against how much
        the first gains over bicubic on each image: mean margin, share of images ahead, their
        correlation, and the margin per third of the images ranked by that gain.

Configurations are named in :data:`CONFIGS` (ours: ``HybridMoE`` keyword options; peers:
spandrel's implementations in the traiNNer-redux presets, see ``hybridmoe/bench.py``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hybridmoe_arch as A
from hybridmoe import bench as timing_tools
from hybridmoe import degrade, imageio, metrics
from hybridmoe import evaluate as ev
from hybridmoe.install import sha256_of
from hybridmoe.provenance import record_header

# The configurations the ablations start from, written out: the variants may change, these
# records may not. S: the three-level network (frequency split, HF path, window attention,
# Fourier mixer, MoE bottleneck) that was hybridmoe_s; NANO: the x1 re-param trunk of 16 blocks
# of 48 with the MKS2021 base and the texture head that was hybridmoe_nano.
S = {
    "dim": 32,
    "enc_blocks": (2, 1, 1),
    "hf_blocks": (2, 1, 0),
    "mid_blocks": 1,
    "dec_blocks": (1, 1),
    "num_experts": 4,
    "top_k": 2,
}
NANO = {
    "dim": 48,
    "levels": 1,
    "enc_blocks": (8, 0, 0),
    "hf_blocks": (0, 0, 0),
    "mid_blocks": 0,
    "dec_blocks": (8, 0),
    "use_hf": False,
    "conv_block": "rep3",
    "global_mixer": "none",
}


def _trunk(dim: int, blocks: int, **options: Any) -> dict[str, Any]:
    """A x1 trunk of ``blocks`` re-param 3x3 blocks (half encoder, half decoder)."""
    half = blocks // 2
    return {**NANO, "dim": dim, "enc_blocks": (half, 0, 0), "dec_blocks": (half, 0), **options}


def _lean(dim: int, blocks: int, **options: Any) -> dict[str, Any]:
    """A lean x1 trunk (bicubic base, no texture head: the fewest kernels), the form of the
    nano, s and m variants."""
    return _trunk(dim, blocks, base="bicubic", texture_head=False, **options)


# an 8 + 4 block x1 trunk as the HF path, the LF path at x1/2 and x1/4 with a top-1 MoE bottleneck
_TRUNKCTX = {
    "dim": 48,
    "levels": 3,
    "use_hf": True,
    "conv_block": "rep3",
    "hf_block": "rep3",
    "enc_blocks": (0, 1, 1),
    "hf_blocks": (8, 0, 0),
    "mid_blocks": 1,
    "dec_blocks": (4, 0),
    "num_experts": 4,
    "top_k": 1,
}
# the three-level network that was hybridmoe_m (MoE top-2 of 6 experts at 1/4)
M3 = {
    "dim": 48,
    "enc_blocks": (3, 2, 2),
    "hf_blocks": (3, 2, 1),
    "mid_blocks": 2,
    "dec_blocks": (2, 2),
    "num_experts": 6,
    "top_k": 2,
}
# the three-level network that was hybridmoe_l (never trained to the end: every part of the
# design, MoE top-2 of 8 at 1/4 and a full-resolution MoE refinement, window 16)
L3 = {
    "dim": 64,
    "enc_blocks": (4, 4, 4),
    "hf_blocks": (4, 3, 2),
    "mid_blocks": 4,
    "dec_blocks": (3, 3),
    "num_experts": 8,
    "top_k": 2,
    "window_size": 16,
    "refine_moe": True,
}
_REFINE = {"refine_moe": True, "num_experts": 4, "top_k": 1, "mlp_ratio": 2.0}

# m's trunk plus a x1/2 level: two window-attention blocks, the Fourier mixer and a bottleneck
# block whose FFN is a top-1 MoE of 4 experts (the l candidate and its twins below)
_CTX192: dict[str, Any] = {
    "levels": 2,
    "enc_blocks": (6, 2, 0),
    "mid_blocks": 1,
    "global_mixer": "fourier",
    "num_experts": 4,
    "top_k": 1,
}

CONFIGS: dict[str, dict[str, Any]] = {
    # ---- ablations around hybridmoe_s (one change each)
    "s": dict(S),
    "m3": dict(M3),
    "l3": dict(L3),
    "s_dense": {**S, "use_moe": False},
    "s_nohf": {**S, "use_hf": False},
    "s_noattn": {**S, "use_attn": False},
    "s_mixnone": {**S, "global_mixer": "none"},
    "s_ssm": {**S, "global_mixer": "ssm"},
    "s_fft": {**S, "freq_split": "fft"},
    "s_basenone": {**S, "base": "none"},
    "s_bicubic": {**S, "base": "bicubic"},
    "s_shiftalt": {**S, "shift": "alternate"},
    "s_rep3": {**S, "conv_block": "rep3", "hf_block": "rep3"},
    "s_refine": {**S, "refine_moe": True},
    "s_refine_dense": {**S, "refine_moe": True, "use_moe": False},
    **{f"s_k{k}": {**S, "top_k": k} for k in (1, 3, 4)},  # the top-k dial (latency only)
    # ---- compute placement: everything at x1 (conv trunk), or a trunk plus LF context below
    "trunk48x16": dict(NANO),
    "trunk64x12": _trunk(64, 12),
    "trunk48_refine": _trunk(48, 12, **_REFINE),
    "trunk48_refine_dense": _trunk(48, 12, **_REFINE, use_moe=False),
    "trunkctx48": dict(_TRUNKCTX),
    "trunkctx48_dense": {**_TRUNKCTX, "use_moe": False},
    **{f"trunkctx48_k{k}": {**_TRUNKCTX, "top_k": k} for k in (2, 3, 4)},
    # the x1/2 context's dial (latency only: trained at top-1)
    **{f"trunk192x12_ctx_k{k}": _lean(192, 12, **{**_CTX192, "top_k": k}) for k in (2, 4)},
    # ---- launch-bound speed candidates: fewer kernels (bicubic base, no texture head)
    "trunk48x16_bic": {**NANO, "base": "bicubic"},
    "trunk48x12_lean": _lean(48, 12),
    "trunk64x12_lean": _lean(64, 12),
    # ---- the x1 trunk at other widths and depths (lean: bicubic base, no texture head)
    "trunk64x10_lean": _lean(64, 10),
    "trunk64x24_lean": _lean(64, 24),
    "trunk96x12_lean": _lean(96, 12),
    "trunk96x16_lean": _lean(96, 16),
    "trunk128x24_lean": _lean(128, 24),
    # ---- wide and shallow: the width of an m-sized network at the depth that trains fast
    **{
        f"trunk{d}x{n}_lean": _lean(d, n)
        for d, n in ((128, 12), (160, 12), (192, 12), (256, 12), (160, 16))
    },
    # ---- l candidates: m's trunk plus what may pay at a 60 ms budget (more width and depth; a
    # x1 HF path of partial large kernels with the frequency split and fusion; window attention,
    # the Fourier mixer and a top-1 MoE at x1/2; a large-kernel stem)
    "trunk256x16_lean": _lean(256, 16),
    "trunk192x12_hfplk": _lean(
        192,
        12,
        use_hf=True,
        hf_block="plk",
        hf_blocks=(4, 0, 0),
        kernel_size=17,
    ),
    "trunk192x12_ctx": _lean(192, 12, **_CTX192),
    "trunk192x12_stemlk": _lean(192, 12, stem_lk=True, kernel_size=17),
    # the same context with eight experts (top-1: the same active compute, twice the experts)
    "trunk192x12_ctx8": _lean(192, 12, **{**_CTX192, "num_experts": 8}),
    # the same context with a dense gated FFN of the top-1 MoE's active width: does the routing
    # pay at m's scale?
    "trunk192x12_ctx_dense": _lean(192, 12, **_CTX192, use_moe=False),
    # ---- the s trunk with the texture head and its learned noise injection (generative
    # detail): GAN fine-tuning from trunk96x12_lean (--init-config), starting at its output
    "trunk96x12_lean_noise": {**_lean(96, 12), "texture_head": True, "noise": True},
    # ---- residual re-param blocks (x + SiLU(conv x)): do deep trunks start faster?
    **{
        f"trunk{d}x{n}_res": _lean(d, n, conv_block="rep3res")
        for d, n in ((96, 12), (96, 16), (128, 24), (192, 24))
    },
}
"""Our configurations (``HybridMoE`` options); the scale is given per run."""

PEERS = ("compact", "span", "plksr_tiny", "plksr", "safmn")

RECIPE = {
    "batch": 16,
    "lr": 5e-4,
    "betas": (0.9, 0.99),
    "ema_decay": 0.999,
    "balance_weight": 0.01,
    "milestones": (0.5, 0.75),
    "gamma": 0.5,
}
GAN_RECIPE = {
    "lr": 1e-4,
    "lr_d": 1e-4,
    "pixel_weight": 1.0,
    "lpips_weight": 1.0,
    "gan_weight": 0.1,
    "d_width": 64,
}
"""The GAN fine-tuning recipe (``--gan``): generator and discriminator rates (constant), the
weights of Charbonnier, LPIPS-VGG and the adversarial term, the discriminator's width."""
SAVE_EVERY = 500
PACK_PART_BYTES = 15 * 2**20  # tar parts and chunks of pack (the device returns files <= 16 MB)
LOG_EVERY = 100


class UsageError(SystemExit):
    """Bad input a command finds (arguments, folders, records, logs): :func:`main` prints
    the message as one line (``sweep.py CMD: error: ...``) and the process exits with 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 2


def run_name(
    config: str, scale: int, seed: int, degrade_preset: str | None = None, gan: bool = False
) -> str:
    """The run folder of a configuration: ``<config>_x<scale>``, then ``_<preset>`` for a
    degraded-input run (``--degrade``), ``_gan`` for GAN fine-tuning and ``_seed<N>`` for
    seeds other than 0."""
    tag = (f"_{degrade_preset}" if degrade_preset else "") + ("_gan" if gan else "")
    return f"{config}_x{scale}{tag}" + (f"_seed{seed}" if seed else "")


def init_run(init_dir: Path, config: str, scale: int, degrade_preset: str | None = None) -> Path:
    """The run under ``init_dir`` that a fine-tune of ``config`` x``scale`` starts from,
    checked against its meta.json. With ``--degrade``, the run made with the same preset
    (``<config>_x<scale>_<preset>``) first; above x1 the bicubic run (``<config>_x<scale>``)
    else, the start of the x4 real-world GAN fine-tune (docs/TRAINING.md §5e). At x1 only the
    restoration run: an x1 run without ``--degrade`` learns the identity. A run that did not
    finish is refused."""
    runs = [init_dir / run_name(config, scale, 0, degrade_preset)]
    if degrade_preset and scale > 1:
        runs.append(init_dir / run_name(config, scale, 0))
    run = next((r for r in runs if (r / "meta.json").is_file()), None)
    if run is None:
        tried = " or ".join(str(r) for r in runs)
        why = (
            "; at x1 it is the --degrade run (an x1 run without --degrade learns the identity)"
            if degrade_preset and scale == 1
            else ""
        )
        raise UsageError(f"--init: no run {tried} (meta.json) to start {config} x{scale} from{why}")
    meta = json.loads((run / "meta.json").read_text())
    if meta.get("config") != config or meta.get("scale") != scale:
        raise UsageError(
            f"--init: {run} is {meta.get('config')} x{meta.get('scale')}, not {config} x{scale}"
        )
    if meta.get("finished") is False:
        raise UsageError(
            f"--init: {run} did not finish (meta.json: finished false, at "
            f"{meta.get('iterations')} iterations); finish it before starting from it"
        )
    return run


def load_init(
    init_dir: Path, config: str, scale: int, degrade_preset: str | None = None
) -> dict[str, torch.Tensor]:
    """The EMA weights (float32) of the run a fine-tune starts from (:func:`init_run`)."""
    run = init_run(init_dir, config, scale, degrade_preset)
    for name in ("ema.pt", "ema16.pt"):
        if (run / name).is_file():
            sd = torch.load(run / name, map_location="cpu", weights_only=True)
            return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    raise UsageError(f"--init: {run} has no ema.pt / ema16.pt")


def start_from(model: nn.Module, init: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a fine-tune's starting weights ``init`` (the EMA weights of a run of configuration
    ``source``) into ``model``; returns the keys ``model`` has beyond them.

    ``model`` may add a texture head (``head.*``, e.g. the ``_noise`` configurations) to the
    source's layout, nothing else: that head's residual scale starts at 0 and its noise strength
    is 0, so the fine-tune starts at the source network's output exactly. Any other difference
    is refused with the keys named."""
    fix = "a fine-tune may only add the texture head to its source's layout"
    try:
        missing, unexpected = model.load_state_dict(init, strict=False)
    except RuntimeError as e:  # tensors of other shapes
        raise UsageError(f"--init-config {source}: its weights do not fit ({e}); {fix}") from None
    other = [k for k in missing if not k.startswith("head.")]
    if unexpected or other:
        raise UsageError(
            f"--init-config {source}: its weights do not fit this configuration (missing: "
            f"{other[:6] or 'none'}, unexpected: {unexpected[:6] or 'none'}); {fix}"
        )
    if missing:
        with torch.no_grad():
            model.head.ls.gamma.zero_()  # the new head starts as the identity
    return list(missing)


def lr_size(scale: int) -> int:
    """LR crop side of the recipe: 48 at ×3/×4, 64 at ×1/×2."""
    return 48 if scale >= 3 else 64


def build(name: str, scale: int) -> nn.Module:
    """A configuration by name at ``scale`` (random weights)."""
    if name in CONFIGS:
        return A.HybridMoE(scale=scale, **CONFIGS[name])
    if name in A.FACTORIES:
        return A.FACTORIES[name](scale=scale)
    if name in timing_tools.MODELS:
        return timing_tools.MODELS[name].build(scale)
    raise UsageError(f"unknown configuration {name!r}; known: {', '.join(known_names())}")


def known_names() -> list[str]:
    """Every configuration name, once (the package's variants are also timing models)."""
    return list(dict.fromkeys([*CONFIGS, *A.FACTORIES, *timing_tools.MODELS]))


def check_configs(configs: list[str]) -> None:
    """Every name in ``configs`` is a configuration (:class:`UsageError` naming the others)."""
    unknown = [c for c in configs if c not in known_names()]
    if unknown:
        raise UsageError(
            f"unknown configuration {', '.join(map(repr, unknown))}; known: "
            + ", ".join(known_names())
        )


def pyplot() -> Any:
    """matplotlib's pyplot (Agg backend), or one line saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "the plot needs matplotlib, which is not installed: pip install matplotlib"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def registered_name(config: str) -> str:
    """The name a configuration is registered under in traiNNer-redux: a variant when the
    options are exactly a variant's, ``hybridmoe`` (with options) for other configurations
    of ours, the peer's arch name otherwise."""
    if config in CONFIGS:
        for variant, options in A.VARIANTS.items():
            if CONFIGS[config] == options:
                return variant
        return "hybridmoe"
    return config


# ----------------------------------------------------------------------------- data


def digest_image(digest: Any, name: str, pixels: np.ndarray) -> None:
    """Adds one decoded image (its file name, shape and pixels) to a data digest."""
    digest.update(f"{name}:{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())


def load_pairs(
    data: Path, scale: int, device: torch.device, digest: Any
) -> list[tuple[torch.Tensor, ...]]:
    """All ``hr/*.png`` + ``lr/*.png`` pairs of a make_pairs.py folder as uint8 CHW tensors.

    A folder of HR images only (``*.jpg``/``*.png``, e.g. the photo tiles of
    make_photo_tiles.py) gets its LR images from PyTorch's antialiased bicubic (a = -0.5, the
    MATLAB kernel; borders and rounding differ slightly from MATLAB's ``imresize``).
    ``digest`` (a hashlib object) takes in every decoded image read (:func:`digest_image`)."""
    from PIL import Image

    pairs = []
    if not (data / "hr").is_dir():
        for path in sorted([*data.glob("*.jpg"), *data.glob("*.png")]):
            hr = np.asarray(Image.open(path).convert("RGB"))
            hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
            digest_image(digest, path.name, hr)
            t = torch.from_numpy(hr.copy()).permute(2, 0, 1).to(device)
            lr = F.interpolate(
                t[None].float(),
                scale_factor=1 / scale,
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
            pairs.append((t, lr[0].round().clamp(0, 255).to(torch.uint8)))
        if not pairs:
            raise UsageError(f"no images under {data}")
        return pairs
    for hr_path in sorted((data / "hr").glob("*.png")):
        hr = np.asarray(Image.open(hr_path).convert("RGB"))
        lr = np.asarray(Image.open(data / "lr" / hr_path.name).convert("RGB"))
        if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
            raise UsageError(f"{hr_path.name}: HR {hr.shape} is not x{scale} of LR {lr.shape}")
        digest_image(digest, f"hr/{hr_path.name}", hr)
        digest_image(digest, f"lr/{hr_path.name}", lr)
        to_t = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1).to(device)  # noqa: E731
        pairs.append((to_t(hr), to_t(lr)))
    if not pairs:
        raise UsageError(f"no hr/*.png + lr/*.png pairs under {data}")
    return pairs


def load_hr(data: Path, device: torch.device, digest: Any) -> list[torch.Tensor]:
    """The HR images of a data folder as uint8 CHW tensors: ``hr/*.png`` of a make_pairs.py
    folder, else the folder's ``*.jpg``/``*.png`` (the targets of x1 restoration).
    ``digest`` (a hashlib object) takes in every decoded image read (:func:`digest_image`)."""
    from PIL import Image

    folder = data / "hr" if (data / "hr").is_dir() else data
    paths = sorted([*folder.glob("*.jpg"), *folder.glob("*.png")])
    if not paths:
        raise UsageError(f"no HR images (*.jpg, *.png) under {folder}")
    images = []
    for path in paths:
        hr = np.asarray(Image.open(path).convert("RGB"))
        digest_image(digest, path.name, hr)
        images.append(torch.from_numpy(hr.copy()).permute(2, 0, 1).to(device))
    return images


class CropPool:
    """Random aligned crops of the pairs, drawn on the GPU: ``batch() -> (lq, gt)`` float in
    [0, 1], with one of the 8 flips/rotations per sample."""

    def __init__(
        self, pairs: list[tuple[torch.Tensor, ...]], scale: int, size: int, gen: torch.Generator
    ) -> None:
        self.pairs = [p for p in pairs if min(p[1].shape[1:]) >= size]
        if not self.pairs:
            raise UsageError(f"no LR image is at least {size} px on each side")
        self.scale, self.size, self.gen = scale, size, gen

    def _rand(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, k = self.scale, self.size
        lqs, gts = [], []
        for _ in range(n):
            hr, lr = self.pairs[self._rand(len(self.pairs))]
            y, x = self._rand(lr.shape[1] - k + 1), self._rand(lr.shape[2] - k + 1)
            lq = lr[:, y : y + k, x : x + k]
            gt = hr[:, y * s : (y + k) * s, x * s : (x + k) * s]
            t = self._rand(8)
            if t & 1:
                lq, gt = lq.flip(-1), gt.flip(-1)
            if t & 2:
                lq, gt = lq.flip(-2), gt.flip(-2)
            if t & 4:
                lq, gt = lq.transpose(-1, -2), gt.transpose(-1, -2)
            lqs.append(lq)
            gts.append(gt)
        lq = torch.stack(lqs).float().div_(255).contiguous(memory_format=torch.channels_last)
        return lq, torch.stack(gts).float().div_(255)


# ----------------------------------------------------------------------------- training


class Validator:
    """Y-PSNR (border = scale, MATLAB-bicubic LR, 8-bit output: the evaluator's steps) of a
    network's EMA weights on the HR images of one folder: the validation curve of a run."""

    def __init__(self, hr_dir: Path, scale: int, device: torch.device) -> None:
        paths = sorted(hr_dir.glob("*.png"))
        if not paths:
            raise UsageError(f"--val {hr_dir}: no .png images there (give a folder of HR images)")
        self.name = hr_dir.parent.name if hr_dir.name == "HR" else hr_dir.name
        self.scale, self.device = scale, device
        self.pairs = []
        for path in paths:
            hr = metrics.mod_crop(ev.read_image(path), scale)
            self.pairs.append((hr, ev.make_lr(hr, scale)))

    def __call__(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean Y-PSNR of ``model``'s architecture with ``weights`` (a copy; ``model`` is
        left as it is), in float32 without TF32."""
        import copy

        net = copy.deepcopy(model).float()
        net.load_state_dict(weights)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            desc = ModuleDescriptor(net, self.scale, self.device)
            scores = [
                ev.score_pair(ev.super_resolve(desc, lr, None), hr, self.scale)["psnr"]
                for hr, lr in self.pairs
            ]
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        return {self.name: round(float(np.mean(scores)), 4)}


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + eps).mean()


def gan_generator_loss(  # noqa: PLR0917 (the parts of one step)
    out: torch.Tensor,
    gt: torch.Tensor,
    pixel: torch.Tensor,
    lpips: nn.Module,
    disc: nn.Module,
    amp: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's GAN fine-tuning loss: weighted Charbonnier ``pixel`` + LPIPS-VGG + the
    adversarial term of the (frozen for this step) discriminator; returns it and its parts
    (detached 0-dim tensors: read them only when logging, a read waits for the device)."""
    from hybridmoe.gan import g_loss

    disc.requires_grad_(False)
    perceptual = lpips(out, gt)
    with amp:
        adv = g_loss(disc(out.contiguous(memory_format=torch.channels_last)))
    disc.requires_grad_(True)
    g = GAN_RECIPE
    loss = g["pixel_weight"] * pixel + g["lpips_weight"] * perceptual + g["gan_weight"] * adv
    parts = {"pixel": pixel.detach(), "lpips": perceptual.detach(), "adv": adv.detach()}
    return loss, parts


def gan_discriminator_step(
    fake: torch.Tensor, gt: torch.Tensor, disc: nn.Module, opt_d: Any, amp: Any
) -> torch.Tensor:
    """One discriminator update on the real ``gt`` and the generator's (detached) ``fake``;
    returns its loss (detached 0-dim tensor)."""
    from hybridmoe.gan import d_loss

    cl = torch.channels_last
    with amp:
        loss = d_loss(
            disc(gt.contiguous(memory_format=cl)), disc(fake.contiguous(memory_format=cl))
        )
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss.detach()


def param_groups(model: nn.Module, router_mult: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups, each with its ``lr_mult`` (the multiple of the
    scheduled rate it trains at): one group, or with ``router_mult`` != 1 the MoE routers
    (``MoEFFN.router``) in a second group of their own."""
    if not (router_mult > 0 and math.isfinite(router_mult)):
        raise UsageError(f"--router-lr-mult must be a positive number, got {router_mult}")
    if router_mult == 1.0:
        return [{"params": list(model.parameters()), "lr_mult": 1.0}]
    routers = [m.router for m in model.modules() if isinstance(m, A.MoEFFN)]
    if not routers:
        raise UsageError(
            f"--router-lr-mult {router_mult:g}: this configuration has no MoE router; "
            "leave the flag out or choose a configuration with an MoE"
        )
    rest = [p for p in model.parameters() if all(p is not r for r in routers)]
    return [{"params": rest, "lr_mult": 1.0}, {"params": routers, "lr_mult": router_mult}]


def train_values(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe values that a run keeps in its meta.json (``recipe``) as ``args`` give
    them, defaults filled in: warm-up, peak rate, batch, LR crop side, router rate multiple."""
    gan = bool(getattr(args, "gan", None))
    return {
        "warmup": getattr(args, "warmup", 0),
        "lr": getattr(args, "lr", None) or (GAN_RECIPE["lr"] if gan else RECIPE["lr"]),
        "batch": getattr(args, "batch", None) or RECIPE["batch"],
        "lr_size": getattr(args, "crop", None) or lr_size(args.scale),
        "router_lr_mult": getattr(args, "router_lr_mult", None) or 1.0,
    }


RESUME_FLAGS = {
    "warmup": "--warmup",
    "lr": "--lr",
    "batch": "--batch",
    "lr_size": "--crop",
    "router_lr_mult": "--router-lr-mult",
}
"""The recipe values a resume must keep, with the option that sets each."""


def same_path(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same file or folder."""
    return a == b or Path(a).resolve() == Path(b).resolve()


def check_resume(run: Path, args: argparse.Namespace) -> None:
    """A resume (``run`` holds its state and meta.json) keeps its recipe and its data: another
    value of a recipe option, other ``--data`` folders (runs from before the data digest; newer
    runs are checked by content in :func:`check_resumed_data`), or for a GAN fine-tune another
    ``--gan`` weights file (by content where the meta has its sha256, by path in older runs) or
    ``--init`` / ``--init-config`` start (any fine-tune; older runs recorded it for GAN
    fine-tunes only), are refused, naming what to give."""
    meta_path = run / "meta.json"
    if meta_path.is_file() and not (run / "state.pt").is_file():
        # a run unpacked without its state (or stopped in its first save): training it would
        # start from scratch and overwrite its weights, meta and log with another run's
        iters = json.loads(meta_path.read_text()).get("iterations")
        raise UsageError(
            f"{run} holds a run ({iters} iterations) but no training state (state.pt) to "
            "resume it from (packed without --with-state?); unpack a pack made with "
            "--with-state into its folder, or move the run away to train it from the start"
        )
    if not ((run / "state.pt").is_file() and meta_path.is_file()):
        return
    meta = json.loads(meta_path.read_text())
    before, now = meta["recipe"], train_values(args)
    # a value the run's meta lacks was trained at its default (the option came later)
    defaults = train_values(argparse.Namespace(scale=args.scale, gan=getattr(args, "gan", None)))
    for key, flag in RESUME_FLAGS.items():
        was = before.get(key, defaults[key])
        if was != now[key]:
            raise UsageError(
                f"{run} was trained with {flag} {was}; resume it with the same value "
                f"(got {flag} {now[key]}), or give the new recipe its own --out"
            )
    gan, gan_weights = meta.get("gan"), getattr(args, "gan", None)
    if gan and gan_weights:
        digest = gan.get("lpips_sha256")  # older runs kept the path only
        if digest:
            same, other = sha256_of(Path(gan_weights)) == digest, "other contents"
        else:
            same, other = same_path(gan["lpips_weights"], gan_weights), "another path"
        if not same:
            raise UsageError(
                f"{run} was trained with --gan {gan['lpips_weights']}; resume it with the same "
                f"weights (got --gan {gan_weights}, {other}), or give the new recipe its own --out"
            )
    start = meta.get("init") or (  # older GAN runs kept their start in meta["gan"]
        {"dir": gan["init"], "config": gan.get("init_config", meta["config"])} if gan else None
    )
    if start:
        init = getattr(args, "init", None)
        init_config = getattr(args, "init_config", None) or meta["config"]
        for flag, was, now, same in (
            ("--init", start["dir"], init, init is not None and same_path(start["dir"], init)),
            ("--init-config", start["config"], init_config, start["config"] == init_config),
        ):
            if not same:
                raise UsageError(
                    f"{run} was trained with {flag} {was}; resume it with the same value "
                    f"(got {flag} {now}), or give the new recipe its own --out"
                )
    # runs with a digest of their images are checked by content once the data is read
    # (check_resumed_data): their folders may have moved
    was_data, data = meta.get("data"), [str(d) for d in args.data]
    same = (
        was_data is None
        or "data_sha256" in meta
        or (
            len(was_data) == len(data)
            and all(same_path(a, b) for a, b in zip(was_data, data, strict=True))
        )
    )
    if not same:
        raise UsageError(
            f"{run} was trained on --data {' '.join(was_data)}; resume it with the same "
            f"folders (got --data {' '.join(data)}), or give the new data its own --out"
        )


def check_resumed_data(run: Path, data_sha256: str, data: list[str]) -> None:
    """A resume trains on the images its run started with: the sha256 of the decoded images
    read from ``--data`` (names, shapes, pixels) must be the one its meta.json recorded (runs
    from before the digest are checked by folder path in :func:`check_resume`)."""
    meta_path = run / "meta.json"
    if not ((run / "state.pt").is_file() and meta_path.is_file()):
        return
    meta = json.loads(meta_path.read_text())
    was = meta.get("data_sha256")
    if was is not None and was != data_sha256:
        raise UsageError(
            f"{run} was trained on other images than those now under --data {' '.join(data)} "
            f"(recorded folders: {' '.join(meta.get('data', []))}; the decoded images differ: "
            f"sha256 {was[:12]}… then, {data_sha256[:12]}… now); resume it with the same "
            "images, or give the new data its own --out"
        )


def check_data(folder: Path, scale: int, hr_only: bool) -> None:
    """A ``--data`` folder holds what training reads from it: make_pairs.py pairs (``hr/`` +
    ``lr/``, each HR image ``scale`` times its LR image; the first pair is measured) or HR
    images (``*.jpg``/``*.png``; with ``hr_only``, a pairs folder's ``hr/`` is read)."""
    from PIL import Image

    what = "make_pairs.py pairs (hr/ + lr/) or HR images (*.jpg, *.png)"
    if not folder.is_dir():
        raise UsageError(f"--data {folder}: no such folder; give folders of {what}")
    if (folder / "hr").is_dir():
        hrs = sorted((folder / "hr").glob("*.png"))
        if hr_only and (hrs or any((folder / "hr").glob("*.jpg"))):
            return
        if not hrs:
            raise UsageError(f"--data {folder}: no hr/*.png images there")
        lrs = {p.name for p in (folder / "lr").glob("*.png")}
        missing = [p.name for p in hrs if p.name not in lrs]
        if missing:
            raise UsageError(
                f"--data {folder}: {len(missing)} HR image(s) without their LR image in lr/ "
                f"(first: {missing[0]}); make the pairs again with make_pairs.py"
            )
        with Image.open(hrs[0]) as hr, Image.open(folder / "lr" / hrs[0].name) as lr:
            if hr.size != (lr.size[0] * scale, lr.size[1] * scale):
                made = hr.size[0] / lr.size[0]
                raise UsageError(
                    f"--data {folder}: its pairs are not x{scale} (hr/{hrs[0].name} "
                    f"{hr.size[0]}x{hr.size[1]}, LR {lr.size[0]}x{lr.size[1]}: x{made:g}); "
                    f"give pairs made at x{scale}, or --scale to match them"
                )
    elif not [*folder.glob("*.jpg"), *folder.glob("*.png")]:
        raise UsageError(f"--data {folder}: no images there; give folders of {what}")


def check_train_args(args: argparse.Namespace, configs: list[str]) -> None:
    """What a start of ``configs`` can check before it creates anything: the names, the
    options that go together, the folders and files it reads, a resume's recipe and data, a
    fine-tune's starting run. Raises :class:`UsageError` naming the problem and the fix."""
    check_configs(configs)
    twice = sorted({c for c in configs if configs.count(c) > 1})
    if twice:
        raise UsageError(f"--configs names {', '.join(twice)} more than once; name each once")
    scale = args.scale
    preset = getattr(args, "degrade", None)
    gan_weights = getattr(args, "gan", None)
    init_dir = getattr(args, "init", None)
    init_config = getattr(args, "init_config", None)
    val = getattr(args, "val", None)
    if init_config and not init_dir:
        raise UsageError("--init-config names the run to start from; give its folder with --init")
    if preset and scale != degrade.PRESETS[preset].scale:
        raise UsageError(
            f"--degrade {preset} makes x{degrade.PRESETS[preset].scale} inputs; use --scale "
            f"{degrade.PRESETS[preset].scale} (got --scale {scale})"
        )
    if preset and val:
        raise UsageError("--val scores bicubic inputs; a --degrade run has no validation set")
    if gan_weights and not init_dir:
        raise UsageError("--gan fine-tunes a trained network; give its run folder with --init")
    crop = train_values(args)["lr_size"]

    def gan_crop(c: int) -> bool:  # the discriminator halves it 3 times; LPIPS-VGG takes >= 16
        return c * scale % 8 == 0 and c * scale >= 16

    if gan_weights and not gan_crop(crop):
        below = [c for c in range(1, crop) if gan_crop(c)]
        above = next(c for c in itertools.count(crop + 1) if gan_crop(c))
        raise UsageError(
            f"--crop {crop}: --gan needs HR crops (--crop x --scale, here {crop * scale} px) "
            f"that are a multiple of 8 and at least 16; give --crop "
            + (f"{below[-1]} or {above}" if below else str(above))
        )
    for folder in args.data:
        check_data(Path(folder), scale, hr_only=bool(preset))
    if val and not Path(val).is_dir():
        raise UsageError(f"--val {val}: no such folder (give a folder of HR images, e.g. Set5/HR)")
    if val and not any(Path(val).glob("*.png")):
        raise UsageError(f"--val {val}: no .png images there (give a folder of HR images)")
    if gan_weights and not Path(gan_weights).is_file():
        raise UsageError(
            f"--gan {gan_weights}: no such file; give the LPIPS-VGG weights "
            "(hybridmoe perceptual-weights --out DIR: DIR/lpips_vgg.safetensors)"
        )
    for config in configs:
        run = Path(args.out) / run_name(config, scale, args.seed, preset, bool(gan_weights))
        check_resume(run, args)
        if init_dir and not (run / "state.pt").is_file():
            init_run(Path(init_dir), init_config or config, scale, preset)


def write_weights(run: Path, keys: list[str], ema: list[torch.Tensor], meta: dict) -> None:
    """A run's EMA weights (``ema.pt``) and then its ``meta.json``, each through a temporary
    file that replaces it when complete."""
    sd = {k: v.detach().clone() for k, v in zip(keys, ema, strict=True)}
    torch.save(sd, run / "ema.pt.tmp")
    os.replace(run / "ema.pt.tmp", run / "ema.pt")
    (run / "meta.json.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(run / "meta.json.tmp", run / "meta.json")


def hold_run(run: Path) -> Any:
    """An exclusive lock on ``run`` for as long as the returned file stays open (the process's
    life): a second process that would train the same run folder at the same time (a start
    given twice, e.g. a device call issued again while its runs still train) is refused
    instead of writing the same state and weights files beside the first. The lock file lies
    in the temporary folder (the run folder is made later). None where there is no ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    import tempfile

    key = hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:16]
    lock = (Path(tempfile.gettempdir()) / f"sweep_run_{key}.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UsageError(
            f"{run} is being trained by another process now; wait for it to end "
            "(gpu_bg.sh wait), or give this start another --out"
        ) from None
    return lock


def train_one(args: argparse.Namespace) -> int:
    """Train (or resume) one configuration; writes RUN/state.pt, RUN/ema.pt, RUN/log.jsonl.
    The run folder is made with the first line of its log or its first save: a start that
    fails before leaves nothing behind."""
    name, scale = args.config, args.scale
    check_train_args(args, [name])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = getattr(args, "degrade", None)
    gan_weights = getattr(args, "gan", None)
    init_dir = getattr(args, "init", None)
    init_config = getattr(args, "init_config", None) or name
    run = Path(args.out) / run_name(name, scale, args.seed, preset, bool(gan_weights))
    lock = hold_run(run)  # noqa: F841 (held until the process ends)
    deadline = time.time() + args.deadline_s if args.deadline_s else math.inf
    torch.manual_seed(args.seed)
    model = build(name, scale).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    ema = [p.detach().clone() for p in model.state_dict().values()]
    recipe = train_values(args)
    router_mult = recipe["router_lr_mult"]
    opt = torch.optim.AdamW(
        param_groups(model, router_mult), betas=RECIPE["betas"], weight_decay=0.0
    )
    gen = torch.Generator()  # CPU: crop positions are drawn on the host
    gen.manual_seed(args.seed)
    # restoration: the degradations are drawn on the device, from their own seeded generator
    dgen = torch.Generator(device=device).manual_seed(args.seed) if preset else None
    disc = opt_d = lpips = None
    if gan_weights:
        from hybridmoe.gan import UNetDiscriminator
        from hybridmoe_loss import HybridMoELPIPSLoss

        disc = UNetDiscriminator(GAN_RECIPE["d_width"]).to(device)
        disc = disc.to(memory_format=torch.channels_last).train()
        opt_d = torch.optim.AdamW(
            disc.parameters(), lr=GAN_RECIPE["lr_d"], betas=RECIPE["betas"], weight_decay=0.0
        )
        lpips = HybridMoELPIPSLoss(1.0, gan_weights, net="vgg").to(device)
    start, budget = 0, args.iters
    state_path = run / "state.pt"
    if init_dir and not state_path.is_file():
        init = load_init(Path(init_dir), init_config, scale, preset)
        added = start_from(model, init, init_config)
        if added:
            print(f"{name} x{scale}: from {init_config}, new (identity at the start): {added}")
        for e, v in zip(ema, model.state_dict().values(), strict=True):
            e.copy_(v)
    # a resume keeps its recipe and data (check_resume, in check_train_args)
    warmup, peak, batch, crop = (recipe[k] for k in ("warmup", "lr", "batch", "lr_size"))
    if state_path.is_file():
        st = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        if disc is not None:
            disc.load_state_dict(st["disc"])
            opt_d.load_state_dict(st["opt_d"])
        for e, v in zip(ema, st["ema"], strict=True):
            e.copy_(v)
        start, budget = int(st["iter"]), int(st.get("budget", args.iters))
        gen.set_state(st["gen"].cpu())
        if dgen is not None:
            dgen.set_state(st["degrade_gen"].cpu())
        if "torch_rng" in st:  # the global generators (noise injection draws from them)
            torch.set_rng_state(st["torch_rng"].cpu())
        if "cuda_rng" in st and device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"].cpu(), device)
    if start >= args.iters:
        meta_path = run / "meta.json"
        done = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if done.get("iterations") != start:
            # stopped between the final save's state and its weights: write them from the
            # state, finished if the state reached the budget it was saved under (states from
            # before the budget was kept: the budget asked for now)
            repaired = {**done, "iterations": start, "finished": start == budget}
            write_weights(run, list(model.state_dict()), ema, repaired)
            print(f"{name} x{scale}: ema.pt and meta.json written again from the state")
        print(f"{name} x{scale}: already at {start} >= {args.iters} iterations")
        return 0
    val = Validator(Path(args.val), scale, device) if getattr(args, "val", None) else None
    digest = hashlib.sha256()
    if preset:  # HR crops of crop * scale; the LQ is made from them
        pairs = [(hr, hr) for d in args.data for hr in load_hr(Path(d), device, digest)]
        pool = CropPool(pairs, 1, crop * scale, gen)
    else:
        pairs = [p for d in args.data for p in load_pairs(Path(d), scale, device, digest)]
        pool = CropPool(pairs, scale, crop, gen)
    check_resumed_data(run, digest.hexdigest(), args.data)
    # GAN fine-tuning keeps its rate constant
    milestones = [] if disc is not None else [int(args.iters * m) for m in RECIPE["milestones"]]
    moe = getattr(model, "num_experts", 0) > 0
    amp = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )
    keys = list(model.state_dict())
    log = None

    def log_line(rec: dict[str, Any]) -> None:
        nonlocal log
        if log is None:
            run.mkdir(parents=True, exist_ok=True)
            log = (run / "log.jsonl").open("a")
        log.write(json.dumps(rec) + "\n")
        log.flush()

    t0, it = time.time(), start
    meta = {
        "config": name,
        "scale": scale,
        "options": CONFIGS.get(name),
        "recipe": {
            **RECIPE,
            "lr": peak,
            "batch": batch,
            "lr_size": crop,
            "warmup": warmup,
            "router_lr_mult": router_mult,
        },
        "seed": args.seed,
        "data": [str(d) for d in args.data],
        "data_sha256": digest.hexdigest(),
        "pairs": len(pairs),
        "data_megapixels": round(sum(hr[0].numel() for hr, _ in pairs) / 1e6, 1),
    }
    if preset:
        meta["degradation"] = {"preset": preset, **degrade.PRESETS[preset].to_dict()}
    if init_dir:  # the start: the folder given, and the run in it that was used
        earlier = json.loads((run / "meta.json").read_text()) if state_path.is_file() else {}
        meta["init"] = earlier.get("init") or {"dir": str(init_dir), "config": init_config}
        if not state_path.is_file():
            meta["init"]["run"] = str(init_run(Path(init_dir), init_config, scale, preset))
    if disc is not None:
        meta["gan"] = {
            **GAN_RECIPE,
            "lpips_weights": str(gan_weights),
            "lpips_sha256": sha256_of(Path(gan_weights)),
            "init": str(init_dir),
            "init_config": init_config,
        }

    def save(final: bool) -> None:
        """Weights and meta first, the training state last: a stop between them leaves a
        state behind the weights (a resume redoes those iterations), never the reverse."""
        run.mkdir(parents=True, exist_ok=True)
        write_weights(run, keys, ema, {**meta, "iterations": it, "finished": final})
        tmp = run / "state.pt.tmp"
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "ema": ema,
                "iter": it,
                "budget": args.iters,  # what "finished" meant when this state was saved
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                **({"degrade_gen": dgen.get_state()} if dgen is not None else {}),
                **(
                    {"disc": disc.state_dict(), "opt_d": opt_d.state_dict()}
                    if disc is not None
                    else {}
                ),
            },
            tmp,
        )
        os.replace(tmp, state_path)

    while it < args.iters:
        lr = peak * RECIPE["gamma"] ** sum(it >= m for m in milestones)
        if it < warmup:
            lr *= (it + 1) / warmup
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)  # states saved before the groups had one
        lq, gt = pool.batch(batch)
        if dgen is not None:
            lq = degrade.degrade_batch(gt, degrade.PRESETS[preset], dgen)
            lq = lq.contiguous(memory_format=torch.channels_last)
        with amp:
            out = model(lq)
        out = out.float()
        loss = charbonnier(out, gt)
        parts: dict[str, torch.Tensor] = {}
        if disc is not None:
            loss, parts = gan_generator_loss(out, gt, loss, lpips, disc, amp)
        if moe:
            bal = A.MOE_AUX.take_balance_loss()
            if bal is not None:
                loss = loss + RECIPE["balance_weight"] * bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if disc is not None:
            parts["d"] = gan_discriminator_step(out.detach(), gt, disc, opt_d, amp)
        with torch.no_grad():
            cur = list(model.state_dict().values())
            floats = [(e, c) for e, c in zip(ema, cur, strict=True) if e.is_floating_point()]
            torch._foreach_lerp_(
                [e for e, _ in floats], [c for _, c in floats], 1 - RECIPE["ema_decay"]
            )
            for e, c in zip(ema, cur, strict=True):
                if not e.is_floating_point():
                    e.copy_(c)
        it += 1
        if it % LOG_EVERY == 0 or it == args.iters:
            elapsed = time.time() - t0  # since this process began (or resumed) the run
            rec = {
                "iter": it,
                "loss": loss.item(),
                **{k: round(v.item(), 6) for k, v in parts.items()},
                "lr": lr,
                "it_s": (it - start) / elapsed,
                "elapsed_s": elapsed,
            }
            log_line(rec)
            if not math.isfinite(rec["loss"]):
                print(f"{name} x{scale}: non-finite loss at {it}", file=sys.stderr)
                return 3
        if it % SAVE_EVERY == 0 or it == args.iters or time.time() > deadline:
            save(it == args.iters)
            if val is not None:
                log_line({"iter": it, "val": val(model, dict(zip(keys, ema, strict=True)))})
            if time.time() > deadline:
                break
    print(
        f"{name} x{scale}: {it}/{args.iters} iterations, "
        f"{(it - start) / (time.time() - t0):.1f} it/s"
    )
    return 0


def last_line(path: Path, offset: int) -> str:
    """The last non-blank line written to ``path`` after ``offset`` bytes (a failed run's
    reason: its error message, or the last line of its traceback)."""
    with path.open("rb") as f:
        f.seek(offset)
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "(no output)")


def train_many(args: argparse.Namespace) -> int:
    """One subprocess per configuration, side by side; waits for all. What can be checked
    before is checked for every configuration before any starts (:func:`check_train_args`);
    a run that fails shows the last line of its output, which is kept in OUT/<run>.stdout."""
    check_train_args(args, args.configs)
    procs = []
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.configs:
        cmd = [
            sys.executable,
            __file__,
            "train-one",
            "--config",
            name,
            "--scale",
            str(args.scale),
            "--iters",
            str(args.iters),
            "--data",
            *args.data,
            "--out",
            args.out,
            "--seed",
            str(args.seed),
        ]
        if args.deadline_s:
            cmd += ["--deadline-s", str(args.deadline_s)]
        if args.degrade:
            cmd += ["--degrade", args.degrade]
        for flag in (
            "warmup",
            "lr",
            "batch",
            "crop",
            "val",
            "init",
            "init_config",
            "gan",
            "router_lr_mult",
        ):  # recipe changes, validation
            if getattr(args, flag):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        run = run_name(name, args.scale, args.seed, args.degrade, bool(args.gan))
        stdout = Path(args.out) / f"{run}.stdout"
        offset = stdout.stat().st_size if stdout.is_file() else 0  # earlier calls' output
        with stdout.open("a") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        procs.append((name, stdout, offset, proc))
    rc = 0
    for name, stdout, offset, proc in procs:
        code = proc.wait()
        if code:
            print(f"{name}: exit {code}: {last_line(stdout, offset)} (see {stdout})", flush=True)
        else:
            print(f"{name}: exit {code}", flush=True)
        rc = rc or code
    return rc


PACK_MANIFEST = "PACK.json"
"""The member every part of one ``pack`` carries: the pack's id, the number of parts, this
part's index, and the size and sha256 of every file of the pack."""


def pack(args: argparse.Namespace) -> int:
    """EMA weights (fp16), meta and logs of every run of every ``--runs`` folder into tar files
    of at most 15 MiB (plus tar headers), as ``<folder>/<run>/...``; with ``--with-state`` also
    each run's full training state, so that the run, unpacked into a runs folder elsewhere
    (``sweep.py unpack``), resumes exactly. A file over 15 MiB is cut into chunks, each in a
    part of its own. Every part holds :data:`PACK_MANIFEST`, with which ``unpack`` refuses
    parts of two packs, a missing part and a file that does not come back intact. The id is a
    hash of the contents, so packing unchanged runs again gives the same parts."""
    import hashlib
    import io
    import tarfile

    out = Path(args.out)
    members: list[tuple[str, bytes]] = []
    for runs in map(Path, args.runs):
        folder = runs.resolve().name  # "." and ".." stand for the folder they name
        if not runs.is_dir() or not folder:
            raise UsageError(
                f"--runs {runs}: not a folder of runs; give the folder that holds them"
            )
        for run in sorted(p for p in runs.iterdir() if (p / "meta.json").is_file()):
            if (run / "ema.pt").is_file():
                sd = torch.load(run / "ema.pt", map_location="cpu", weights_only=True)
                buf = io.BytesIO()
                torch.save(
                    {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, buf
                )
                ema16 = buf.getvalue()
            elif (run / "ema16.pt").is_file():  # an unpacked run: its weights are fp16 already
                ema16 = (run / "ema16.pt").read_bytes()
            else:
                raise UsageError(f"{run}: no ema.pt or ema16.pt to pack")
            files = [
                ("ema16.pt", ema16),
                ("meta.json", (run / "meta.json").read_bytes()),
                ("log.jsonl", (run / "log.jsonl").read_bytes()),
            ]
            if args.with_state:  # the full training state: the run resumes where it stopped
                if not (run / "state.pt").is_file():
                    raise UsageError(f"{run}: no state.pt for --with-state")
                files.append(("state.pt", (run / "state.pt").read_bytes()))
            members += [(f"{folder}/{run.name}/{name}", data) for name, data in files]
    if not members:
        raise UsageError(f"--runs {' '.join(args.runs)}: no runs there (no <run>/meta.json)")
    counts = collections.Counter(name for name, _ in members)
    twice = next((name for name, n in counts.items() if n > 1), None)
    if twice:  # one path in the pack for two files: unpack would refuse the pack
        raise UsageError(
            f"--runs: two folders of one name would pack {twice.rpartition('/')[0]} twice; "
            "pack them separately, or rename one"
        )
    # a member over a part's size travels as NAME.chunkNN pieces (``sweep.py unpack`` joins them)
    pieces: list[tuple[str, bytes]] = []
    for name, data in members:
        if len(data) <= PACK_PART_BYTES:
            pieces.append((name, data))
            continue
        starts = range(0, len(data), PACK_PART_BYTES)
        for i, start in enumerate(starts):
            piece = data[start : start + PACK_PART_BYTES]
            pieces.append((f"{name}.chunk{i:02d}of{len(starts):02d}", piece))
    parts: list[list[tuple[str, bytes]]] = []
    size = 0
    for name, data in pieces:
        if not parts or size + len(data) > PACK_PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append((name, data))
        size += len(data) + 1024
    files_info = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in members
    }
    pack_id = hashlib.sha256(json.dumps(files_info, sort_keys=True).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    for index, part in enumerate(parts):
        manifest = {"pack": pack_id, "parts": len(parts), "part": index, "files": files_info}
        path = out / f"runs_{index:02d}.tar"
        with tarfile.open(path.with_suffix(".tar.tmp"), "w") as tf:
            for name, data in [(PACK_MANIFEST, json.dumps(manifest).encode()), *part]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        os.replace(path.with_suffix(".tar.tmp"), path)
    print(f"packed {len(members)} files in {len(parts)} part(s) into {out} (pack {pack_id})")
    return 0


def unpack(args: argparse.Namespace) -> int:
    """The tar files of ``pack`` into ``--out`` (``<folder>/<run>/...``), chunked files joined.
    Everything is checked before anything is written: members with absolute or
    parent-relative paths or links, parts of two packs (their :data:`PACK_MANIFEST` ids
    differ), a part missing or given twice, and files whose size or sha256 differ from the
    manifest are refused, as are files that exist already."""
    import hashlib
    import tarfile

    out = Path(args.out)
    manifests: list[tuple[Path, dict[str, Any]]] = []
    chunks: dict[str, dict[int, bytes]] = {}  # file -> chunk index -> bytes
    counts: dict[str, int] = {}  # file -> number of chunks it was cut into
    whole: dict[str, bytes] = {}
    for tar in map(Path, args.tars):
        manifest = None
        with tarfile.open(tar) as tf:
            for info in tf.getmembers():
                rel = Path(info.name)
                if not info.isfile() or rel.is_absolute() or ".." in rel.parts:
                    raise UsageError(f"{tar}: {info.name!r} is not a plain relative file")
                data = tf.extractfile(info).read()  # type: ignore[union-attr]
                if info.name == PACK_MANIFEST:
                    manifest = json.loads(data)
                    continue
                stem, dot, tail = info.name.rpartition(".chunk")
                index, of, count = tail.partition("of")
                if dot and of and index.isdigit() and count.isdigit() and Path(stem).name:
                    chunks.setdefault(stem, {})[int(index)] = data
                    counts[stem] = int(count)
                elif info.name in whole:
                    raise UsageError(f"{tar}: {info.name} is in two of the parts given")
                else:
                    whole[info.name] = data
        if manifest is None:
            raise UsageError(f"{tar}: no {PACK_MANIFEST}; not a part of sweep.py pack")
        manifests.append((tar, manifest))
    ids = sorted({m["pack"] for _, m in manifests})
    if len(ids) > 1:
        raise UsageError(
            f"the parts come from {len(ids)} packs ({', '.join(ids)}); unpack the parts of one"
        )
    seen: dict[int, Path] = {}
    for tar, m in manifests:
        if m["part"] in seen:
            raise UsageError(f"{tar}: part {m['part']} is given twice (also {seen[m['part']]})")
        seen[m["part"]] = tar
    first = manifests[0][1]
    missing = sorted(set(range(first["parts"])) - set(seen))
    if missing:
        raise UsageError(
            f"part(s) {', '.join(map(str, missing))} of {first['parts']} missing "
            f"(runs_NN.tar); unpack every part"
        )
    for name, parts in chunks.items():
        if sorted(parts) != list(range(counts[name])):
            raise UsageError(
                f"{name}: {len(parts)} of its {counts[name]} chunks found; unpack every part"
            )
        whole[name] = b"".join(parts[i] for i in range(counts[name]))
    expected = first["files"]
    if set(whole) != set(expected):
        raise UsageError(
            f"the parts hold other files than their manifest lists: "
            f"{sorted(set(whole) ^ set(expected))[:4]}"
        )
    for name, data in whole.items():
        if len(data) != expected[name]["size"] or (
            hashlib.sha256(data).hexdigest() != expected[name]["sha256"]
        ):
            raise UsageError(f"{name}: its bytes differ from the pack's manifest (damaged part)")
    existing = [name for name in whole if (out / name).exists()]
    if existing:
        raise UsageError(f"{out / existing[0]} exists; unpack into an empty folder")
    for name, data in sorted(whole.items()):
        _write_new(out / name, data)
    print(f"unpacked {len(args.tars)} part(s) into {out}")
    return 0


def _write_new(path: Path, data: bytes) -> None:
    if path.exists():
        raise UsageError(f"{path} exists; unpack into an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """A record to a new file, written whole or not at all (never over an existing file:
    the commands that write one check for it before their work)."""
    imageio.write_text_atomic(path, json.dumps(record, indent=1) + "\n", what="JSON record")


def provenance() -> dict[str, str]:
    """What every record carries about how it was made: the command, commit and date (UTC)."""
    return record_header(sys.argv)


def load_run(run: Path) -> tuple[dict[str, Any], nn.Module]:
    """A run's meta and its network with the EMA weights (``ema.pt``, or the fp16 copies of a
    packed run, ``ema16.pt``), in the training form."""
    meta = json.loads((run / "meta.json").read_text())
    model = build(meta["config"], meta["scale"])
    ema = run / "ema.pt" if (run / "ema.pt").is_file() else run / "ema16.pt"
    sd = torch.load(ema, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return meta, model


def export(args: argparse.Namespace) -> int:
    """The EMA weights of one finished run as a traiNNer-redux checkpoint (the package's
    writer: flat float32 safetensors, hyperparameters as JSON in the header); written
    atomically, an existing file is refused."""
    from hybridmoe.fuse import save_checkpoint
    from hybridmoe.imageio import atomic_output

    meta, model = load_run(Path(args.run))
    if not meta.get("finished") and not args.unfinished:
        raise UsageError(
            f"{args.run}: the run stopped at {meta['iterations']} iterations (of a longer "
            "budget); pass --unfinished to export the weights of that iteration"
        )
    if not hasattr(model, "hyperparameters"):
        raise UsageError(f"{meta['config']} is a peer network; export ours only")
    if Path(args.out).exists():
        raise UsageError(f"{args.out} exists; remove it first or choose another name")
    with atomic_output(Path(args.out), what="checkpoint") as tmp:
        save_checkpoint(model, tmp)
    print(f"{args.out}: {meta['config']} x{meta['scale']}, {meta['iterations']} iterations")
    return 0


# ----------------------------------------------------------------------------- speed


def flops_of(model: nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of one forward (FFTs included: :func:`hybridmoe.bench.count_flops`)."""
    return timing_tools.count_flops(model, x)[0] / 1e9


def graph_ms(model: nn.Module, x: torch.Tensor, target_s: float) -> float | None:
    """Median GPU time of one forward replayed from a CUDA graph (no CPU dispatch in the
    timing: what a deployment that captures the network, e.g. TensorRT, pays); None when the
    network cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            model(x)
    except Exception as exc:  # data-dependent control flow (MoE dispatch) cannot be captured
        print(f"  (no CUDA graph: {type(exc).__name__}: {str(exc)[:80]})")
        return None
    timing = timing_tools.time_loop(
        lambda: (graph.replay(), x)[1], torch.device("cuda"), 3, None, target_s
    )
    return float(np.median(timing.times_ms))


def bench(args: argparse.Namespace) -> int:
    """fp16 weights, batch 1, deploy forms; two cases; one JSON row per model, case and round.

    Rounds interleave the models (every model once per round), so slow drifts of the machine
    spread over all of them; ``ms`` is eager PyTorch (CPU dispatch included), ``ms_graph`` the
    same forward replayed from a CUDA graph."""
    check_configs(args.configs)
    if args.json and Path(args.json).exists():  # before minutes of timing
        raise UsageError(f"{args.json} exists; remove it first or choose another name")
    if not torch.cuda.is_available():
        raise UsageError(
            "sweep.py bench times the networks on a CUDA GPU, and there is none here "
            "(torch.cuda.is_available() is False); run it on a machine with one"
        )
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    cases = [(4, (480, 270)), (2, (1920, 1080))]
    rows = []
    for scale, (w, h) in cases:
        models = {}
        for name in args.configs:
            torch.manual_seed(0)
            model = build(name, scale).eval()
            if hasattr(model, "fuse"):
                model.fuse()
            model = model.to(device)
            x32 = torch.rand(1, 3, h, w, device=device)
            gflops = flops_of(model, x32)
            model = model.half().to(memory_format=torch.channels_last)
            x = x32.half().contiguous(memory_format=torch.channels_last)
            models[name] = (model, x, gflops)
        for rnd in range(args.rounds):
            for name, (model, x, gflops) in models.items():
                with torch.inference_mode():
                    timing = timing_tools.time_loop(
                        lambda m=model, x=x: m(x), device, 10, None, args.target_s
                    )
                ms = float(np.median(timing.times_ms))
                ms_graph = graph_ms(model, x, args.target_s) if args.graph else None
                row = {
                    "model": name,
                    "scale": scale,
                    "input": f"{w}x{h}",
                    "dtype": "fp16",
                    "round": rnd,
                    "ms": ms,
                    "ms_graph": ms_graph,
                    "gflops": gflops,
                    "tflops_s": gflops / ms,
                    "params": sum(p.numel() for p in model.parameters()),
                    "finite": timing.finite,
                }
                rows.append(row)
                print(
                    f"x{scale} {w}x{h} r{rnd} {name:<18} {ms:8.3f} ms "
                    + (f"(graph {ms_graph:7.3f}) " if ms_graph else "")
                    + f"{gflops:8.1f} GFLOP {gflops / ms:6.1f} TFLOP/s",
                    flush=True,
                )
        del models
        torch.cuda.empty_cache()
    record = {
        **provenance(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        write_json(Path(args.json), record)
    return 0


# ----------------------------------------------------------------------------- evaluation


class ModuleDescriptor:
    """The part of spandrel's descriptor interface the evaluator uses, around a module."""

    def __init__(self, model: nn.Module, scale: int, device: torch.device) -> None:
        self.model, self.scale, self.device = model.eval().to(device), scale, device
        self.dtype = torch.float32
        self.input_channels = self.output_channels = 3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp(0, 1)


def evaluate_runs(args: argparse.Namespace) -> int:
    """Every finished run of ``--runs`` (one scale) on every set, with the evaluator's own
    steps (mod-crop, MATLAB-bicubic LR, 8-bit output, Y PSNR/SSIM with border = scale); each
    LR image is made once and fed to all models. With ``--degraded DIR``, the x1 restoration
    runs (trained with ``--degrade``) instead, on the degraded sets of ``hybridmoe
    make-degraded`` (Y, border 0), the degraded input scored beside them. An existing record
    is kept (and named); the ``--records`` folder is made when the first record is written."""
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # float32 scores on the GPU too
    out = Path(args.records)
    runs = Path(args.runs)
    if not runs.is_dir():
        raise UsageError(f"--runs {runs}: no such folder; give the folder that holds the runs")
    if (runs / "meta.json").is_file():
        raise UsageError(
            f"--runs {runs} is one run; give the folder that holds it (--runs {runs.parent})"
        )
    metas = sorted(runs.glob("*/meta.json"))
    if not metas:
        raise UsageError(f"--runs {runs}: no runs there (no <run>/meta.json)")
    restoring = args.degraded is not None
    todo = []
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        if bool(meta.get("degradation")) != restoring:
            kind = "an x1 restoration run (evaluate it with --degraded DIR)"
            print(
                f"skipping {meta_path.parent.name}: "
                + (kind if not restoring else "not a restoration run (trained without --degrade)"),
                file=sys.stderr,
            )
            continue
        if not meta.get("finished", True):
            print(
                f"skipping {meta_path.parent.name}: stopped at {meta['iterations']} iterations, "
                "before its budget (resume it with sweep.py train)",
                file=sys.stderr,
            )
            continue
        k_tag = f"_k{args.top_k}" if args.top_k else ""
        rec_path = out / f"{args.recipe}_{meta_path.parent.name}_{meta['iterations']}{k_tag}.json"
        old = None
        if rec_path.exists():
            # a record is never rewritten; sets asked for by name that it lacks are added to it
            old = json.loads(rec_path.read_text())
            if restoring or not args.sets or set(args.sets) <= set(old["psnr"]):
                more = "" if restoring else "; --sets NAME adds a set it lacks"
                print(
                    f"{rec_path}: kept, it exists (sets {', '.join(old['psnr'])}); remove it "
                    f"to evaluate the run again{more}"
                )
                continue
        _, model = load_run(meta_path.parent)
        if args.top_k:
            if not getattr(model, "num_experts", 0):
                continue  # the dial applies to networks with MoE layers only
            model.set_top_k(args.top_k)
        if hasattr(model, "fuse"):
            model.fuse()
        params = sum(p.numel() for p in model.parameters())
        if old is not None and old.get("params") not in (None, params):
            raise UsageError(
                f"{rec_path.name}: the run has {params} parameters, the record {old['params']}: "
                "another network; give its evaluation another --recipe or --records folder"
            )
        if old is not None:
            differ = [key for key, value in _record_identity(meta).items() if old.get(key) != value]
            if differ:
                raise UsageError(
                    f"{rec_path.name}: the record is of another run ({', '.join(differ)} "
                    f"differ from {meta_path.parent}); give its evaluation another --recipe or "
                    "--records folder"
                )
        todo.append((meta, rec_path, ModuleDescriptor(model, meta["scale"], device), old))
    scales = {m["scale"] for m, _, _, _ in todo}
    if len(scales) > 1:
        raise UsageError(f"--runs mixes scales {sorted(scales)}; evaluate one scale at a time")
    if not todo:
        return 0
    descs = [d for _, _, d, _ in todo]
    if restoring:
        scores, inputs, about = score_degraded(descs, Path(args.degraded), args.sets, args.limit)
        evaluator = "hybridmoe evaluate --degraded steps (Y, border 0, x1 restoration)"
    else:
        data = Path(args.data) if args.data else ev.default_data_dir()
        sets = args.sets or list(SETS)
        if all(old is not None for *_, old in todo):  # only additions: just the missing sets
            sets = [s for s in sets if any(s not in old["psnr"] for *_, old in todo)]
        try:
            ev.find_sets(data, sets)  # before any scoring: one line naming what is missing
            if args.limit is None:
                check_set_sizes(data, sets)
            scores = score_sr(descs, data, sets, scales.pop(), args.limit)
        except ev.EvaluationError as exc:
            raise UsageError(str(exc)) from None
        inputs, about = None, None
        evaluator = "hybridmoe evaluate steps (Y, border=scale, MATLAB bicubic LR)"
    out.mkdir(parents=True, exist_ok=True)
    for i, (meta, rec_path, desc, old) in enumerate(todo):
        if old is not None:
            _add_sets(old, rec_path, scores[i], device)
            continue
        psnr, ssim = _means(scores[i])
        rec = {
            "model": registered_name(meta["config"]),
            "config": meta["config"] + (f"@k{args.top_k}" if args.top_k else ""),
            "top_k": args.top_k or None,
            "scale": meta["scale"],
            "iterations": meta["iterations"],
            "recipe": args.recipe,
            **_record_identity(meta),
            "psnr": psnr,
            "ssim": ssim,
            "images": {k: len(v) for k, v in scores[i].items()},
            "evaluator": evaluator,
            **record_header(sys.argv, str(device)),
            "eval_device": str(device),
            "params": sum(p.numel() for p in desc.model.parameters()),
        }
        if inputs is not None:
            rec["psnr_input"], rec["ssim_input"] = _means(inputs)
            rec["degradation"] = meta["degradation"]
            rec["degraded_sets"] = about
        rec_path.write_text(json.dumps(rec, indent=1))
        print(rec_path.name, psnr)
    return 0


Scores = dict[str, list[dict[str, float]]]
"""Per set, the per-image ``{"psnr", "ssim"}`` of one model."""


def _record_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a record says about the run it scores (seed, data, options, recipe): a set added
    to an existing record must come from a run that agrees on all of it."""
    return {
        "seed": meta.get("seed", 0),
        "train_data": {k: meta[k] for k in ("data", "pairs", "data_megapixels") if k in meta},
        "options": meta.get("options"),
        "training": meta.get("recipe"),
    }


def _add_sets(rec: dict[str, Any], rec_path: Path, scores: Scores, device: torch.device) -> None:
    """Add the sets a record lacks (its existing numbers stay), noting how they were made."""
    psnr, ssim = _means(scores)
    added = [s for s in psnr if s not in rec["psnr"]]
    for name in added:
        rec["psnr"][name], rec["ssim"][name] = psnr[name], ssim[name]
        rec["images"][name] = len(scores[name])
    rec.setdefault("added", []).append(
        {
            "sets": added,
            **record_header(sys.argv, str(device)),
            "eval_device": str(device),
        }
    )
    rec_path.write_text(json.dumps(rec, indent=1))
    print(rec_path.name, "added", {s: psnr[s] for s in added})


def _means(scores: Scores) -> tuple[dict[str, float], dict[str, float]]:
    """Mean PSNR (4 decimals) and SSIM (5 decimals) per set."""
    psnr = {k: round(float(np.mean([r["psnr"] for r in v])), 4) for k, v in scores.items()}
    ssim = {k: round(float(np.mean([r["ssim"] for r in v])), 5) for k, v in scores.items()}
    return psnr, ssim


SET_SIZES = {"Set5": 5, "Set14": 14, "B100": 100, "Urban100": 100}
"""The number of HR images of each benchmark set."""


def check_set_sizes(data: Path, sets: list[str]) -> None:
    """Every benchmark set of ``sets`` under ``data`` is whole (:data:`SET_SIZES`): a record
    is never rewritten, so a set scored on part of its images (one not yet all copied) would
    stay in it under the set's name."""
    for name in sets:
        found, want = len(set_images(data, name, None)), SET_SIZES.get(name)
        if want is not None and found != want:
            raise UsageError(
                f"{name}: {found} HR images in {ev.find_set(data, name) / 'HR'}, the set has "
                f"{want}; complete the folder, or pass --limit N to score the first N of it"
            )


def set_images(data: Path, set_name: str, limit: int | None) -> list[Path]:
    """The HR images of a benchmark set, in name order (the first ``limit``)."""
    return ev.hr_images(ev.find_set(data, set_name))[0][:limit]


def score_sr(
    descs: list[ModuleDescriptor],
    data: Path,
    sets: list[str],
    scale: int,
    limit: int | None,
    *,
    bicubic: Scores | None = None,
) -> list[Scores]:
    """Super-resolution scores of every model on every set (each LR image made once); with
    ``bicubic``, the MATLAB-bicubic upscale's scores are added to it as well."""
    scores: list[Scores] = [{} for _ in descs]
    for set_name in sets:
        paths = set_images(data, set_name, limit)
        for n, path in enumerate(paths):
            hr = metrics.mod_crop(ev.read_image(path), scale)
            lr = ev.make_lr(hr, scale)
            if bicubic is not None:
                row = ev.score_sr(lr, hr, scale, None)["bicubic"]
                bicubic.setdefault(set_name, []).append(row)
            for i, desc in enumerate(descs):
                sr = ev.super_resolve(desc, lr, None)
                scores[i].setdefault(set_name, []).append(ev.score_pair(sr, hr, scale))
            print(f"{set_name} {n + 1}/{len(paths)}", file=sys.stderr, flush=True)
    return scores


def score_degraded(
    descs: list[ModuleDescriptor], root: Path, sets: list[str] | None, limit: int | None
) -> tuple[list[Scores], Scores, dict[str, Any]]:
    """Restoration scores of every model on every degraded set under ``root``, the scores of
    the degraded inputs, and what the sets are (folder, preset, seed per set)."""
    from hybridmoe.degraded_sets import read_manifest

    try:
        names = ev.degraded_set_names(root, sets)
    except ev.EvaluationError as exc:
        raise UsageError(str(exc)) from None
    scores: list[Scores] = [{} for _ in descs]
    inputs: Scores = {}
    about: dict[str, Any] = {"dir": str(root), "sets": {}}
    for set_name in names:
        manifest = read_manifest(root / set_name)
        if ev.degraded_scale(manifest) != 1:
            raise UsageError(
                f"{root / set_name} is a x{ev.degraded_scale(manifest)} degraded set; sweep.py "
                "eval --degraded scores x1 restoration runs. Evaluate x4 real-world models with "
                "hybridmoe evaluate --degraded DIR MODEL (export a run with sweep.py export)"
            )
        about["sets"][set_name] = {k: manifest[k] for k in ("preset", "seed", "degradation")}
        for n, (_, hr, lq) in enumerate(ev.degraded_images(root / set_name, limit)):
            inputs.setdefault(set_name, []).append(ev.score_restored(lq, hr))
            for i, desc in enumerate(descs):
                restored = ev.super_resolve(desc, lq, None)
                scores[i].setdefault(set_name, []).append(ev.score_restored(restored, hr))
            print(f"{set_name} {n + 1}", file=sys.stderr, flush=True)
    return scores, inputs, about


# ----------------------------------------------------------------------------- tables


SETS = ("Set5", "Set14", "B100", "Urban100")
CASES = {4: "480x270", 2: "1920x1080"}


def load_speed(paths: list[str]) -> dict[tuple[str, int], dict[str, float]]:
    """Median, min and max latency (and TFLOP/s) per (model, scale) over several bench runs."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            runs.setdefault((row["model"], row["scale"]), []).append(row)
    out = {}
    for key, rows in runs.items():
        ms = [r["ms"] for r in rows]
        med = float(np.median(ms))
        graph = [r["ms_graph"] for r in rows if r.get("ms_graph")]
        out[key] = {
            "graph": float(np.median(graph)) if graph else None,
            "ms": med,
            "min": min(ms),
            "max": max(ms),
            "n": len(ms),
            "gflops": rows[0]["gflops"],
            "tflops_s": rows[0]["gflops"] / med,
            "params": rows[0]["params"],
        }
    return out


def speed_table(args: argparse.Namespace) -> int:
    """Markdown: per configuration and case, eager latency (median and range over all rows of
    the given bench JSON files), CUDA-graph latency, ratio to ``--ref`` and TFLOP/s."""
    speed = load_speed(args.speed)
    lines = [
        "| configuration | params | "
        + " | ".join(
            f"x{sc} ms ({CASES[sc]} in) | x{sc} graph ms | x{sc} / {args.ref} | x{sc} TFLOP/s"
            for sc in (4, 2)
        )
        + " | rows |",
        "|---|" + "---:|" * 10,
    ]
    names = [n for n in args.configs if (n, 4) in speed or (n, 2) in speed]
    for name in names:
        cells = []
        for sc in (4, 2):
            sp, ref = speed.get((name, sc)), speed.get((args.ref, sc))
            if sp is None:
                cells += ["–"] * 4
                continue
            cells += [
                fmt_ms(sp),
                f"{sp['graph']:.2f}" if sp["graph"] else "–",
                f"{sp['ms'] / ref['ms']:.2f}" if ref else "–",
                f"{sp['tflops_s']:.0f}",
            ]
        any_sp = speed.get((name, 4)) or speed[(name, 2)]
        params = f"{any_sp['params'] / 1e6:.2f} M"
        lines.append(f"| {name} | {params} | " + " | ".join(cells) + f" | {any_sp['n']} |")
    print("\n".join(lines))
    return 0


def dial(args: argparse.Namespace) -> int:
    """The MoE top-k dial of one trained configuration: mean PSNR over the sets evaluated at
    every k (records of ``eval --top-k``, and the configuration's own record at its trained k),
    averaged over ``--seeds`` (each k needs a record of every seed), against the latency of
    the same network at that k in both speed cases (bench rows ``<config>_k<k>``, or the
    configuration's own rows at its trained k); ``--ref`` adds another configuration of the
    same recipe and seeds (a dense twin) as one point. A table and optionally a plot against
    the ``--plot-scale`` case."""
    if args.plot:
        pyplot()  # the plot's dependency, before any output
    recs = [r for r in load_records(args.records, args.recipe) if r["scale"] == args.scale]
    speed = load_speed(args.speed)
    trained_k = CONFIGS[args.config]["top_k"]
    seeds = sorted(set(args.seeds))

    def of(config: str) -> dict[int, dict[int, dict[str, Any]]]:  # k -> seed -> record
        by_k: dict[int, dict[int, dict[str, Any]]] = {}
        for r in recs:
            seed = r.get("seed") or 0
            if r.get("config", "").split("@k")[0] == config and seed in seeds:
                by_k.setdefault(r.get("top_k") or CONFIGS[config].get("top_k"), {})[seed] = r
        for k, got in by_k.items():
            if sorted(got) != seeds:
                missing = sorted(set(seeds) - set(got))
                raise UsageError(
                    f"{config} at top-{k} ({args.recipe}, x{args.scale}) has no record of "
                    f"seed {missing}: evaluate it (eval --top-k {k}) or leave the seed out"
                )
        return by_k

    by_k = of(args.config)
    if not by_k:
        raise UsageError(f"no x{args.scale} record of {args.config} in {args.recipe}")
    sets = [s for s in SETS if all(s in r["psnr"] for g in by_k.values() for r in g.values())]

    def point(group: dict[int, dict[str, Any]]) -> tuple[dict[str, float], float]:
        per_set = {s: float(np.mean([r["psnr"][s] for r in group.values()])) for s in sets}
        return per_set, float(np.mean(list(per_set.values())))

    rows = []
    for k in sorted(by_k):
        name = args.config if k == trained_k else f"{args.config}_k{k}"
        rows.append((f"{k}", *point(by_k[k]), {sc: speed.get((name, sc)) for sc in CASES}))
    if args.ref:
        ref = of(args.ref)
        if len(ref) != 1:
            raise UsageError(f"--ref {args.ref}: no record of it in {args.recipe}")
        rows.append(
            (
                args.ref,
                *point(next(iter(ref.values()))),
                {sc: speed.get((args.ref, sc)) for sc in CASES},
            )
        )
    print(f"| top-k | {' | '.join(sets)} | mean | x4 ms ({CASES[4]} in) | x2 ms ({CASES[2]} in) |")
    print("|---:|" + "---:|" * (len(sets) + 3))
    for label, per_set, mean, sp in rows:
        vals = " | ".join(f"{per_set[s]:.3f}" for s in sets)
        print(f"| {label} | {vals} | {mean:.3f} | {fmt_ms(sp[4])} | {fmt_ms(sp[2])} |")
    if args.plot:
        plt = pyplot()
        sc = args.plot_scale
        pts = [(sp[sc]["ms"], mean, label) for label, _, mean, sp in rows if sp[sc]]
        dial_pts = [p for p in pts if p[2].isdigit()]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot([p[0] for p in dial_pts], [p[1] for p in dial_pts], "o-", label="top-k dial")
        for ms, psnr, label in pts:
            text = f"k={label}" if label.isdigit() else label
            ax.annotate(text, (ms, psnr), fontsize=8, xytext=(3, 3), textcoords="offset points")
        for ms, psnr, label in pts:
            if not label.isdigit():
                ax.plot([ms], [psnr], "s", color="tab:red", label=label)
        ys = [p[1] for p in pts]
        mid = float(np.mean(ys))
        ax.set_ylim(min(mid - 0.05, *ys) - 0.01, max(mid + 0.05, *ys) + 0.01)
        ax.ticklabel_format(axis="y", useOffset=False)  # at least 0.1 dB of range: no zoom-in
        ax.set_xlabel(f"latency, ms (x{sc}, {CASES[sc]} in, fp16, batch 1)")
        ax.set_ylabel(f"x{args.scale} mean Y-PSNR (dB)")
        seed_note = f", seeds {', '.join(map(str, seeds))}" if seeds != [0] else ""
        ax.set_title(
            f"top-k dial of {args.config}\n{args.recipe}{seed_note}\nmean of {', '.join(sets)}",
            fontsize=8,
        )
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return 0


def load_records(path: str, recipe: str | list[str] | None = None) -> list[dict[str, Any]]:
    """The quality records under ``path`` (of the given recipe or recipes)."""
    recipes = [recipe] if isinstance(recipe, str) else recipe
    recs = [json.loads(p.read_text()) for p in sorted(Path(path).glob("*.json"))]
    return [r for r in recs if "psnr" in r and (not recipes or r["recipe"] in recipes)]


def fmt_ms(sp: dict[str, float] | None) -> str:
    if sp is None:
        return "–"
    return f"{sp['ms']:.2f} ({sp['min']:.2f}–{sp['max']:.2f})" if sp["n"] > 1 else f"{sp['ms']:.2f}"


def table(args: argparse.Namespace) -> int:
    """Markdown: PSNR per set (or the difference to --baseline) and latency per configuration;
    ``--plot``: PSNR against the latency of ``--speed``."""
    if args.plot and not args.speed:
        raise UsageError(
            "--plot draws PSNR against latency; give the bench JSON files with --speed"
        )
    if args.plot:
        pyplot()  # the plot's dependency, before any output
    recs = load_records(args.records, args.recipe)
    if args.configs:
        recs = [r for r in recs if r.get("config", r["model"]) in args.configs]
    if args.scale:
        recs = [r for r in recs if r["scale"] == args.scale]
    speed = load_speed(args.speed) if args.speed else {}
    lines = []
    for scale in sorted({r["scale"] for r in recs}, reverse=True):
        for iters in sorted({r["iterations"] for r in recs if r["scale"] == scale}):
            rows = [r for r in recs if r["scale"] == scale and r["iterations"] == iters]
            sets = [s for s in SETS if all(s in r["psnr"] for r in rows)]  # shared by all
            mixed = len({r["recipe"] for r in rows}) > 1  # rows name their recipe then
            base_config, _, base_recipe = args.baseline.partition("@")
            if mixed and base_config and not base_recipe:
                raise UsageError(
                    f"these rows come from several recipes; name the baseline's as "
                    f"--baseline {base_config}@RECIPE"
                )
            base = next(
                (
                    r
                    for r in rows
                    if r.get("config", r["model"]) == base_config
                    and base_recipe in ("", r["recipe"])
                ),
                None,
            )
            delta = base is not None
            head = "Δ PSNR vs " + args.baseline if delta else "PSNR"
            lines += [
                "",
                f"**x{scale}, {iters} iterations** ({head}, dB; latency ms, fp16, "
                f"batch 1, {CASES.get(scale, '?')} input, median (min–max) of runs)",
                "",
                "| configuration | " + " | ".join(sets) + " | mean | ms | TFLOP/s |",
                "|---|" + "---:|" * (len(sets) + 3),
            ]
            for r in sorted(rows, key=lambda r: -float(np.mean([r["psnr"][s] for s in sets]))):
                vals = [r["psnr"][s] - (base["psnr"][s] if delta else 0) for s in sets]
                sp = speed.get((r.get("config", r["model"]), scale))
                mean = float(np.mean(vals))
                sign = "+" if delta else ""
                seed = f" (seed {r['seed']})" if r.get("seed") else ""
                seed += f" [{r['recipe']}]" if mixed else ""
                lines.append(
                    f"| {r.get('config', r['model'])}{seed} | "
                    + " | ".join(f"{v:{sign}.2f}" for v in vals)
                    + f" | {mean:{sign}.3f} | {fmt_ms(sp)} | "
                    + (f"{sp['tflops_s']:.0f}" if sp else "–")
                    + " |"
                )
    text = "\n".join(lines)
    print(text)
    if args.plot:
        plot(recs, speed, args.plot, join_rates=args.join_rates)
    return 0


def read_curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's validation curve from its log: per validation set, (iteration, Y-PSNR)."""
    curve: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for name, psnr in rec.get("val", {}).items():
            curve.setdefault(name, []).append((int(rec["iter"]), float(psnr)))
    return curve


def train_seconds(run: Path) -> float:
    """Wall-clock training time of a run from its log: the sum over its segments (each
    process that began or resumed the run) of the segment's last ``elapsed_s``. A line's
    segment is the iteration its process started from, ``iter - it_s * elapsed_s``. Logs
    written before ``elapsed_s`` existed give ``iter / it_s`` of their last line (``it_s`` is
    the average since the process began); a resume cannot be located in those, so a resumed
    one is refused."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "it_s" in r]
    if not rows:
        raise UsageError(f"{run}: the log has no training lines")
    if all("elapsed_s" in r for r in rows):
        segments: dict[int, float] = {}  # start iteration -> seconds
        for r in rows:
            segment = round(r["iter"] - r["it_s"] * r["elapsed_s"])
            segments[segment] = max(segments.get(segment, 0.0), r["elapsed_s"])
        return sum(segments.values())
    clock = [r["iter"] / r["it_s"] for r in rows]
    if any(b < a for a, b in itertools.pairwise(clock)):
        raise UsageError(
            f"{run}: resumed, and its log predates elapsed_s: its training time is unknown"
        )
    return clock[-1]


def times(args: argparse.Namespace) -> int:
    """Iterations and wall-clock training minutes of every run (shared GPU: the runs of one
    call overlap, so the minutes of a round do not add up)."""
    for folder in args.runs:
        for log in sorted(Path(folder).glob("*/log.jsonl")):
            iters = max(json.loads(line)["iter"] for line in log.read_text().splitlines())
            minutes = train_seconds(log.parent) / 60
            print(f"{Path(folder).name}/{log.parent.name}\t{iters}\t{minutes:.1f} min")
    return 0


def curves(args: argparse.Namespace) -> int:
    """Validation curves of runs (``--val``) in one plot; a run without one is named."""
    found = []
    for folder in args.runs:
        for log in sorted(Path(folder).glob("*/log.jsonl")):
            points = read_curve(log.parent).get(args.set)
            if not points:
                print(f"{log.parent}: no {args.set} validation curve", file=sys.stderr)
                continue
            found.append((f"{Path(folder).name}/{log.parent.name}", points))
    if not found:
        raise UsageError(f"no run under {' '.join(args.runs)} has a {args.set} validation curve")
    plt = pyplot()
    # one colour per run (configuration), one line style per folder (group)
    runs = sorted({label.split("/", 1)[1] for label, _ in found})
    colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10")
    styles = {Path(f).name: ("-", "--", ":", "-.")[i % 4] for i, f in enumerate(args.runs)}
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in found:
        group, run = label.split("/", 1)
        ax.plot(
            *zip(*points, strict=True),
            marker=".",
            label=label,
            color=colors(runs.index(run)),
            linestyle=styles[group],
        )
    if args.ymin is not None:
        ax.set_ylim(bottom=args.ymin)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{args.set} Y-PSNR of the EMA weights (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"{len(found)} curves -> {args.out}")
    return 0


# Recipe values that later records carry and earlier ones (trained before the option
# existed, i.e. at its default) lack.
RECIPE_ADDED_DEFAULTS: dict[str, Any] = {"warmup": 0, "router_lr_mult": 1.0}


def recipe_but_rate(rec: dict[str, Any]) -> str:
    """What a record's recipe is apart from its peak rate: the training values (a value
    added later counts at its default where a record lacks it) and the size of the data
    (not its paths, which differ between machines)."""
    training = {**RECIPE_ADDED_DEFAULTS, **rec.get("training", {})}
    training.pop("lr", None)
    data = {k: v for k, v in rec.get("train_data", {}).items() if k != "data"}
    return json.dumps([training, data], sort_keys=True)


def front_panels(
    recs: list[dict[str, Any]], join_rates: bool = False
) -> list[tuple[int, int, str, list[dict[str, Any]]]]:
    """The panels of the PSNR-vs-latency plot as (scale, iterations, recipe(s), records):
    one per (scale, iterations, recipe), or with ``join_rates`` one per (scale, iterations)
    for recipes that differ only in the peak rate; recipes that differ in more are refused."""

    def key(r: dict[str, Any]) -> tuple[int, int, str]:
        return r["scale"], r["iterations"], "" if join_rates else r["recipe"]

    panels = []
    for group in sorted({key(r) for r in recs}, reverse=True):
        scale, iters, _ = group
        panel = [r for r in recs if key(r) == group]
        recipe = " + ".join(sorted({r["recipe"] for r in panel}))
        if join_rates and any("lr" not in r.get("training", {}) for r in panel):
            raise UsageError(
                f"--join-rates: a record of {recipe} has no peak rate (training.lr) to label "
                "it with; plot these recipes apart"
            )
        if join_rates and len({recipe_but_rate(r) for r in panel}) > 1:
            raise UsageError(
                f"--join-rates: the recipes {recipe} (x{scale}, {iters} iterations) differ in "
                "more than the peak rate (data, batch, crop or schedule); plot them apart"
            )
        panels.append((scale, iters, recipe, panel))
    return panels


def front_points(
    panel: list[dict[str, Any]], sets: list[str], join_rates: bool = False
) -> list[tuple[str, str, float]]:
    """The points of one plot panel as (configuration, label, mean PSNR over ``sets``): the
    seeds of one configuration in one recipe are one point, the mean of their means, labelled
    with their number (two seeds would print two labels on top of each other); with
    ``join_rates`` each label also names the peak rate."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in panel:
        groups.setdefault((r.get("config", r["model"]), r["recipe"]), []).append(r)
    points = []
    for (name, _), runs in groups.items():
        first = runs[0]
        label = first["model"] if first["model"].startswith("hybridmoe_") else name
        if join_rates:
            label += f" @ {first['training']['lr']:g}"
        if len(runs) > 1:
            label += f" ({len(runs)} seeds)"
        mean = float(np.mean([np.mean([r["psnr"][s] for s in sets]) for r in runs]))
        points.append((name, label, mean))
    return points


def plot(
    recs: list[dict[str, Any]],
    speed: dict[tuple[str, int], dict[str, float]],
    path: str,
    join_rates: bool = False,
) -> None:
    """Mean PSNR over the sets against latency, one panel per :func:`front_panels` group and
    one point per :func:`front_points` entry (seeds averaged). Runs of different recipes (data,
    rate) never share a panel unless ``join_rates`` (then each point is labelled with its
    rate); a panel names its recipe(s)."""
    panels = front_panels(recs, join_rates)
    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (scale, iters, recipe, panel) in zip(axes[0], panels, strict=True):
        sets = [s for s in SETS if all(s in r["psnr"] for r in panel)]  # shared by the panel
        for name, label, mean in front_points(panel, sets, join_rates):
            sp = speed.get((name, scale))
            if sp is None:
                continue
            peer = name in PEERS
            ax.scatter(
                sp["ms"], mean, color="tab:red" if peer else "tab:blue", marker="s" if peer else "o"
            )
            ax.annotate(
                label, (sp["ms"], mean), fontsize=7, xytext=(3, 2), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        title = recipe.replace(" + ", " +\n")  # joined recipes: one per line
        ax.set_title(
            f"{title}: x{scale}, {iters} iterations ({CASES.get(scale, '')} input)", fontsize=9
        )
        ax.set_xlabel("latency, ms (fp16, batch 1; log scale)")
        ax.set_ylabel(f"mean Y-PSNR, {', '.join(sets)} (dB)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def router_drift(args: argparse.Namespace) -> int:
    """How far each MoE router of a trained run moved from its initialization: the network is
    rebuilt as ``train`` builds it (the run's seed, then its configuration) and its routers are
    compared with the run's EMA routers (norm of the difference, cosine similarity)."""
    if args.json and Path(args.json).exists():
        raise UsageError(f"{args.json} exists; remove it first or choose another name")
    rows = []
    for run in map(Path, args.runs):
        meta, model = load_run(run)
        torch.manual_seed(meta["seed"])
        start = build(meta["config"], meta["scale"]).state_dict()
        routers = {k: v for k, v in model.state_dict().items() if k.endswith(".router")}
        if not routers:
            raise UsageError(f"{run}: {meta['config']} has no MoE router")
        for key, trained in routers.items():
            init = start[key].float()
            row = {
                "run": f"{run.parent.name}/{run.name}",
                "config": meta["config"],
                "seed": meta["seed"],
                "router": key,
                "init_norm": init.norm().item(),
                "moved": (trained - init).norm().item(),
                "cos_with_init": F.cosine_similarity(trained.flatten(), init.flatten(), 0).item(),
            }
            rows.append(row)
            print(
                f"{row['run']:<60} {key:<16} |init| {row['init_norm']:.4f} moved "
                f"{row['moved']:.4f} cos {row['cos_with_init']:.4f}"
            )
    if args.json:
        record = {**provenance(), "rows": rows}
        write_json(Path(args.json), record)
    return 0


def margin_rows(
    names: list[str], per_image: dict[str, dict[str, list[float]]]
) -> list[dict[str, Any]]:
    """Where a run's margin over the reference (``names[0]``) comes from, per set: per_image
    holds, per set, the PSNR of every image for ``"bicubic"`` and for every name. For each other
    run: its mean margin, the fraction of images it is ahead on, the correlation of its margin
    with the reference's gain over bicubic, and the images split into thirds by that gain (mean
    gain, mean margin and their ratio in each third)."""
    ref = names[0]
    rows = []
    for set_name, psnr in per_image.items():
        gain = np.asarray(psnr[ref]) - np.asarray(psnr["bicubic"])
        thirds = np.array_split(np.argsort(gain, kind="stable"), 3)
        for name in names[1:]:
            d = np.asarray(psnr[name]) - np.asarray(psnr[ref])
            corr = float(np.corrcoef(d, gain)[0, 1]) if len(d) > 2 and d.std() > 0 else None
            rows.append(
                {
                    "set": set_name,
                    "run": name,
                    "ref": ref,
                    "images": len(d),
                    "margin_db": float(d.mean()),
                    "ahead": float((d > 0).mean()),
                    "corr_with_ref_gain": corr,
                    "thirds": [
                        {
                            "ref_gain_db": float(gain[t].mean()),
                            "margin_db": float(d[t].mean()),
                            "ratio": float(d[t].mean() / gain[t].mean()),
                        }
                        for t in thirds
                        if len(t)
                    ],
                }
            )
    return rows


def margin(args: argparse.Namespace) -> int:
    """Per-image margins of runs over a reference run (the first of ``--runs``) on benchmark
    sets, with the evaluator's steps, set against how much the reference gains over bicubic on
    each image (``margin_rows``); prints a table and writes per-image PSNRs and rows to
    ``--json``."""
    if args.json and Path(args.json).exists():
        raise UsageError(f"{args.json} exists; remove it first or choose another name")
    runs = [Path(r) for r in args.runs]
    if len(runs) < 2:
        raise UsageError("--runs: give the reference run and at least one run to compare with it")
    loaded = [load_run(r) for r in runs]
    scales = {meta["scale"] for meta, _ in loaded}
    if len(scales) != 1:
        raise UsageError(f"--runs mixes scales {sorted(scales)}: compare runs of one scale")
    (scale,) = scales
    names = [f"{r.parent.name}/{r.name}" for r in runs]
    if len(set(names)) != len(names):
        raise UsageError("--runs names one run twice")
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False
    descs = [ModuleDescriptor(model, scale, device) for _, model in loaded]
    data = Path(args.data) if args.data else ev.default_data_dir()
    bicubic: Scores = {}
    scores = score_sr(descs, data, args.sets, scale, args.limit, bicubic=bicubic)
    per_image = {
        s: {
            n: [row["psnr"] for row in sc[s]]
            for n, sc in zip(["bicubic", *names], [bicubic, *scores], strict=True)
        }
        for s in args.sets
    }
    images = {s: [p.stem for p in set_images(data, s, args.limit)] for s in args.sets}
    rows = margin_rows(names, per_image)
    for row in rows:
        thirds = "  ".join(
            f"{t['ref_gain_db']:.2f}:{t['margin_db']:+.3f} ({t['ratio']:.3f})"
            for t in row["thirds"]
        )
        corr = "–" if row["corr_with_ref_gain"] is None else f"{row['corr_with_ref_gain']:.2f}"
        print(
            f"{row['set']:<9} {row['run']:<48} {row['margin_db']:+.3f} dB, ahead on "
            f"{row['ahead']:.0%}, corr {corr}; thirds by the ref's gain: {thirds}"
        )
    if args.json:
        record = {
            **provenance(),
            "device": args.device,
            "scale": scale,
            "runs": names,
            "rows": rows,
            "images": images,
            "psnr": per_image,
        }
        write_json(Path(args.json), record)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("train", "train-one"):
        t = sub.add_parser(cmd)
        if cmd == "train":
            t.add_argument("--configs", nargs="+", required=True)
        else:
            t.add_argument("--config", required=True)
        t.add_argument("--scale", type=int, default=4)
        t.add_argument("--iters", type=int, required=True)
        t.add_argument("--data", nargs="+", required=True, help="pair folders (or HR folders)")
        t.add_argument("--out", required=True)
        t.add_argument("--deadline-s", type=float, default=0)
        t.add_argument("--seed", type=int, default=0)
        t.add_argument(
            "--degrade",
            choices=sorted(degrade.PRESETS),
            help="LQ made from the HR crops with this preset (x1 restore, x4 realworld4)",
        )
        t.add_argument("--init", help="fine-tune: start from the runs in this folder")
        t.add_argument(
            "--init-config",
            help="fine-tune from the run of this configuration in --init (default: the same); "
            "the configuration may add the texture head (e.g. trunk96x12_lean_noise)",
        )
        t.add_argument("--gan", help="GAN fine-tuning with these LPIPS-VGG weights (needs --init)")
        t.add_argument("--warmup", type=int, default=0, help="linear lr warm-up iterations")
        t.add_argument("--lr", type=float, help=f"peak learning rate (default {RECIPE['lr']})")
        t.add_argument("--batch", type=int, help=f"batch size (default {RECIPE['batch']})")
        t.add_argument("--crop", type=int, help="LR crop side (default 48 at x3/x4, 64 below)")
        t.add_argument("--val", help="HR folder (e.g. Set5/HR): validation PSNR at every save")
        t.add_argument(
            "--router-lr-mult",
            type=float,
            help="MoE routers train at this multiple of the rate (default 1)",
        )
    pk = sub.add_parser("pack")
    pk.add_argument("--runs", nargs="+", required=True, help="run folders (groups of runs)")
    pk.add_argument("--out", required=True)
    pk.add_argument("--with-state", action="store_true", help="include state.pt (resumable)")
    ex = sub.add_parser("export")
    ex.add_argument("--run", required=True, help="a run folder (meta.json + ema.pt/ema16.pt)")
    ex.add_argument("--out", required=True, help=".safetensors file to write")
    ex.add_argument(
        "--unfinished", action="store_true", help="export a run stopped before its budget"
    )
    b = sub.add_parser("bench")
    b.add_argument("--configs", nargs="+", required=True)
    b.add_argument("--json")
    b.add_argument("--target-s", type=float, default=0.5)
    b.add_argument("--rounds", type=int, default=1, help="times every model is timed, interleaved")
    b.add_argument("--graph", action="store_true", help="also time CUDA-graph replay")
    e = sub.add_parser("eval")
    e.add_argument("--runs", required=True)
    e.add_argument("--records", required=True)
    e.add_argument("--recipe", required=True)
    e.add_argument("--data")
    e.add_argument(
        "--sets",
        nargs="+",
        help="default: the four benchmarks, or every set of DIR; a set named here that an "
        "existing record lacks is evaluated and added to it",
    )
    e.add_argument(
        "--degraded",
        metavar="DIR",
        help="evaluate the x1 restoration runs (--degrade) on hybridmoe make-degraded sets",
    )
    e.add_argument("--device", default="cpu")
    e.add_argument("--limit", type=int)
    e.add_argument("--top-k", type=int, default=0, help="evaluate MoE networks at this top-k")
    tb = sub.add_parser("table")
    tb.add_argument("--records", required=True)
    tb.add_argument("--recipe", nargs="*", help="only records of these recipes")
    tb.add_argument("--speed", nargs="*", help="bench JSON files (median over them)")
    tb.add_argument(
        "--baseline",
        default="",
        help="report differences to this configuration (CONFIG@RECIPE when the records of "
        "several recipes are shown)",
    )
    tb.add_argument("--plot")
    tb.add_argument(
        "--join-rates",
        action="store_true",
        help="recipes that differ only in the peak rate share a panel of the plot (each "
        "network at the rate it was trained with, labelled by it)",
    )
    tb.add_argument("--configs", nargs="*", help="only these configurations")
    tb.add_argument("--scale", type=int, help="only this scale")
    sp = sub.add_parser("speed")
    sp.add_argument("--speed", nargs="+", required=True, help="bench JSON files")
    sp.add_argument("--configs", nargs="+", required=True)
    sp.add_argument("--ref", default="compact")
    up = sub.add_parser("unpack")
    up.add_argument("--tars", nargs="+", required=True, help="the tar files of pack")
    up.add_argument("--out", required=True, help="runs folder to unpack into")
    cv = sub.add_parser("curves")
    cv.add_argument("--runs", nargs="+", required=True, help="run folders (groups of runs)")
    cv.add_argument("--out", required=True, help="PNG to write")
    cv.add_argument("--set", default="Set5", help="validation set (the name given to --val)")
    cv.add_argument("--ymin", type=float, help="lower end of the PSNR axis")
    tm = sub.add_parser("times")
    tm.add_argument("--runs", nargs="+", required=True, help="run folders (groups of runs)")
    dl = sub.add_parser("dial")
    dl.add_argument("--records", required=True)
    dl.add_argument("--recipe", required=True)
    dl.add_argument("--config", required=True)
    dl.add_argument("--scale", type=int, default=4)
    dl.add_argument("--speed", nargs="+", required=True)
    dl.add_argument("--plot")
    dl.add_argument("--plot-scale", type=int, default=2, choices=sorted(CASES))
    dl.add_argument("--seeds", type=int, nargs="+", default=[0], help="mean over these seeds")
    dl.add_argument("--ref", help="another configuration as one point (e.g. the dense twin)")
    rd = sub.add_parser("router-drift")
    rd.add_argument("--runs", nargs="+", required=True, help="run folders (one run each)")
    rd.add_argument("--json", help="write the rows here (an existing file is refused)")
    mg = sub.add_parser("margin")
    mg.add_argument("--runs", nargs="+", required=True, help="run folders; the first is the ref")
    mg.add_argument("--data", help="benchmark folder (default: the evaluator's)")
    mg.add_argument("--sets", nargs="+", default=list(SETS))
    mg.add_argument("--limit", type=int)
    mg.add_argument("--device", default="cpu")
    mg.add_argument("--json", help="write per-image PSNRs and rows here (never overwritten)")
    args = p.parse_args(argv)
    cmd: Callable[[argparse.Namespace], int] = {
        "train": train_many,
        "train-one": train_one,
        "pack": pack,
        "unpack": unpack,
        "export": export,
        "bench": bench,
        "eval": evaluate_runs,
        "table": table,
        "speed": speed_table,
        "dial": dial,
        "curves": curves,
        "times": times,
        "router-drift": router_drift,
        "margin": margin,
    }[args.cmd]
    try:
        return cmd(args)
    except UsageError as e:
        print(f"sweep.py {args.cmd}: error: {e}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
