"""Generate the traiNNer-redux option files (YAML) of HybridMoE-FreqNet into ``./options``.

Usage::

    hybridmoe make-options              # write the files under options/ of the current folder
    hybridmoe make-options --out DIR    # write under DIR instead
    hybridmoe make-options --overwrite  # also replace files that differ (edited by hand)
    hybridmoe make-options --check      # exit 1 if ./options differs from the output

Run from the checkout's root, it (re)generates the committed ``options/``. A file already equal
to the output is left alone; a file that differs (edited by hand, or from another version of
the tables) is replaced only with ``--overwrite``: without it nothing is written and the command
fails naming those files. Each file is written atomically (a temporary file beside it replaces
it once complete).

Written files (``<x>`` = 1x..4x, ``<V>`` = Nano, S, M, L):

* ``train/HybridMoE/<x>_HybridMoE_<V>_fidelity.yml`` — training from scratch: Charbonnier +
  frequency loss (+ MoE balance loss for a network with MoE layers), AdamW, MultiStepLR, EMA,
  bf16 AMP, channels_last, PSNR/SSIM validation, safetensors checkpoints.
* ``train/HybridMoE/<x>_HybridMoE_<V>_gan.yml`` — fine-tuning a fidelity model with
  perceptual + GAN losses against a U-Net discriminator.
* ``train/HybridMoE/1x_HybridMoE_<V>_restore.yml`` (``<V>`` = Nano, S) — x1 restoration with
  traiNNer-redux's on-the-fly degradations (``high_order_degradation``, RealESRGANModel) set to
  reproduce :data:`hybridmoe.degrade.RESTORE`, with the recipe of the measured x1 restoration
  run (``scripts/sweep.py --scale 1 --degrade restore``, 10,000 iterations).
* ``train/HybridMoE/4x_HybridMoE_S_realworld.yml`` — x4 real-world GAN fine-tune of the ``s``
  fidelity model with the same on-the-fly pipeline set to :data:`hybridmoe.degrade.REALWORLD4`
  (second order), with the recipe of the harness run (``scripts/sweep.py --scale 4 --degrade
  realworld4 --init RUNS --gan lpips_vgg.safetensors --crop 64``: Charbonnier + LPIPS-VGG +
  vanilla GAN against a U-Net SN discriminator, constant rate; its length is
  ``REALWORLD_RECIPE["iterations"]``).
* ``test/HybridMoE/<x>_HybridMoE_<V>.yml`` — ``test.py`` on a folder of LR images.
* ``onnx/HybridMoE/<x>_HybridMoE_<V>.yml`` — ``convert_to_onnx.py``.

Which numbers are measured (``docs/TRAINING.md`` § "GPU runs" and ``docs/ABLATIONS.md``): the
from-scratch recipe of ``nano``, ``s``, ``m`` and ``l`` — AdamW lr 5e-4 (``m``, ``l``: 2e-4),
betas (0.9, 0.99), batch 16, lq_size 64 (×1/×2) and 48 (×3/×4), bf16 AMP, channels_last, EMA
0.999 (power 0.75), MultiStepLR halving at 1/2 and 3/4 of the run, Charbonnier 1.0 (+ balance
loss 0.01 for MoE networks) — from same-budget runs at ×2 and ×4, and the frequency loss 0.05
with the balance loss 0.01 in a fine-tuning check of the ×2 ``s`` model. Not measured: the
500k-iteration length of a full run, and every fine-tuning (GAN) value. The generated files
say which of their values are measured. Edit the tables, then re-run this script from the
checkout's root with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from string import Template
from typing import Any

from hybridmoe.degrade import REALWORLD4, RESIZE_MODES, RESTORE, Degradation, kernel_size
from hybridmoe.imageio import OutputError, folder_problem, write_text_atomic

DEFAULT_OUT = Path("options")
"""Where make-options writes by default: ``options/`` of the current folder."""

# ---------------------------------------------------------------------------------------------
# Settings tables (``measured``: the values come from the GPU runs; see the module docstring)
# ---------------------------------------------------------------------------------------------

SCALES = (1, 2, 3, 4)

# registered factory name, file-name label
VARIANTS: dict[str, tuple[str, str]] = {
    "nano": ("hybridmoe_nano", "Nano"),
    "s": ("hybridmoe_s", "S"),
    "m": ("hybridmoe_m", "M"),
    "l": ("hybridmoe_l", "L"),
}

# LR crop per scale of the measured recipe: 48 at ×3/×4 because the T91 images of the measured
# runs are small (HR sides of ~150-250 px); 64 is fine with larger images such as DIV2K.
MEASURED_LQ = {1: 64, 2: 64, 3: 48, 4: 48}
MEASURED_SCALES = (2, 4)  # the scales the recipe was run at (×1 and ×3 carry it over)

# from scratch (fidelity); milestones: MultiStepLR halvings (the measured recipe halves at 1/2
# and 3/4 of the run)
MEASURED_FROM_SCRATCH: dict[str, Any] = {
    "lr": 5e-4,
    "batch": 16,
    "lq": MEASURED_LQ,
    "warmup": -1,
    "milestones": [250_000, 375_000],
    "scales": MEASURED_SCALES,
}
FROM_SCRATCH: dict[str, dict[str, Any]] = {
    "nano": MEASURED_FROM_SCRATCH,
    "s": MEASURED_FROM_SCRATCH,
    # 192 channels: at 5e-4 the runs stall on the shallow path (and one collapsed); at 2e-4 the
    # photo runs train: x4 at 4,000 and 16,000 iterations, x2 at 3,000 and 12,000
    # (docs/ABLATIONS.md, the lower rate)
    "m": {**MEASURED_FROM_SCRATCH, "lr": 2e-4},
    # 256 channels, 16 blocks: m's rate (x4 16,000 and x2 12,000 iterations, on 919 and on all
    # 3,234 photo tiles; docs/ABLATIONS.md, "`l` candidates" and "`l` on the whole photo set")
    "l": {**MEASURED_FROM_SCRATCH, "lr": 2e-4},
}
FROM_SCRATCH_SCHEDULE = {
    "total_iter": 500_000,  # a full-length run; not measured (the GPU runs had 2,000-16,000)
    "gamma": 0.5,
    "ema_decay": 0.999,
    "ema_power": 0.75,
}

# fine-tuning with GAN losses (generator and discriminator share lr): not measured yet
FINETUNE: dict[str, dict[str, Any]] = {
    "nano": {"lr": 1e-4, "batch": 16, "lq": 64},
    "s": {"lr": 1e-4, "batch": 16, "lq": 64},
    "m": {"lr": 1e-4, "batch": 8, "lq": 64},
    "l": {"lr": 5e-5, "batch": 8, "lq": 64},
}
FINETUNE_SCHEDULE = {
    "total_iter": 200_000,
    "milestones": [100_000, 150_000],
    "gamma": 0.5,
    "ema_decay": 0.999,
}

# x1 restoration with on-the-fly degradations: the recipe of the measured x1 restoration run
# (scripts/sweep.py train --scale 1 --degrade restore: RECIPE there, 10,000 iterations, from
# scratch, Charbonnier, no frequency loss); the degradations come from RESTORE_PRESET
RESTORE_VARIANTS = ("nano", "s")
RESTORE_PRESET: Degradation = RESTORE
RESTORE_RECIPE: dict[str, Any] = {
    "lr": 5e-4,
    "betas": (0.9, 0.99),
    "batch": 16,
    "lq": 64,  # = the HR crop at x1
    "total_iter": 10_000,
    "milestones": (0.5, 0.75),  # fractions of total_iter where the rate is halved
    "gamma": 0.5,
    "ema_decay": 0.999,
    "queue_size": 160,  # traiNNer's training-pair pool; a multiple of the batch size
}

# x4 real-world GAN fine-tune (4x_HybridMoE_S_realworld.yml): the recipe of the harness run
# scripts/sweep.py train --scale 4 --degrade realworld4 --init RUNS --gan lpips_vgg.safetensors
# --crop 64 (sweep.RECIPE batch, betas and EMA; sweep.GAN_RECIPE rates and loss weights, which
# REALWORLD_GAN copies: tests/test_options.py checks they are equal). The degradations come from
# REALWORLD_PRESET through realworld_otf() and realworld_kernels().
REALWORLD_VARIANT = "s"
REALWORLD_PRESET: Degradation = REALWORLD4
REALWORLD_RECIPE: dict[str, Any] = {
    "iterations": 3000,  # total_iter: the length of the shipped run (4x_HybridMoE_S_RealWorld)
    "betas": (0.9, 0.99),
    "batch": 16,
    "lq": 64,  # --crop 64: HR crops of 256 at x4
    "ema_decay": 0.999,
    "queue_size": 160,  # traiNNer's training-pair pool; a multiple of the batch size
}
REALWORLD_OPTIONS: dict[str, tuple[bool, str]] = {
    "texture_head": (True, "The texture head (re-param 5x5 depthwise + 1x1) before the output."),
    "noise": (True, "Its learned per-channel noise injection (training; off in inference)."),
}
"""Options on top of the variant (value, comment): the shipped real-world model is ``s`` plus the
texture head with its noise injection (sweep.py configuration ``trunk96x12_lean_noise``)."""
REALWORLD_STRICT_LOAD = (
    "false  # The fidelity model has no texture head: its weights load, the head starts new."
)
REALWORLD_GAN: dict[str, Any] = {
    "lr": 1e-4,  # generator, constant
    "lr_d": 1e-4,  # discriminator, constant
    "pixel_weight": 1.0,  # Charbonnier
    "lpips_weight": 1.0,  # hybridmoelpipsloss (LPIPS-VGG)
    "gan_weight": 0.1,  # vanilla (non-saturating) GAN loss
    "d_width": 64,  # discriminator width (num_feat)
}
LPIPS_WEIGHTS = "experiments/pretrained_models/lpips_vgg.safetensors"
STRICT_LOAD = "true  # Disable strict loading to partially load a pretrain of another scale."
PROB_DIGITS = 4  # derived probabilities are rounded to this many decimals in the templates

LOSS_WEIGHTS = {
    "charbonnier": 1.0,
    "freq": 0.05,  # hybridmoefreqloss (amplitude L1 of the orthonormal FFT)
    "freq_phase": 0.0,  # its phase_weight
    "freq_hf": 0.0,  # its hf_weight
    "balance": 0.01,  # hybridmoebalanceloss (Switch-style, ≈1.0 when balanced)
    # fine-tuning
    "gan_mssim": 0.5,
    "gan_perceptual": 0.01,
    "gan_hsluv": 1.0,
    "gan_gan": 0.1,
    "gan_freq": 0.05,
}

SCHEMA_LINE = (
    "# yaml-language-server: $$schema=https://raw.githubusercontent.com/the-database/"
    "traiNNer-redux/refs/heads/master/schemas/redux-config.schema.json"
)
GENERATED_NOTE = (
    "# Generated by hybridmoe make-options: edit its tables and re-run it instead of this file."
)
MEASURED_NOTE = (
    "# MEASURED recipe: lr, betas, batch size, lq_size, bf16 AMP, channels_last, EMA and the\n"
    "# schedule shape (halve at 1/2 and 3/4) of this variant's same-budget runs\n"
    "# (docs/ABLATIONS.md: nano and s at x2 and x4, 2,000-16,000 iterations, lr 5e-4; m at x2\n"
    "# and x4, 3,000-16,000 iterations, and l at x2 and x4, 12,000-16,000 iterations, lr 2e-4;\n"
    "# from scratch, Charbonnier, plus the balance loss\n"
    "# where the network has MoE layers). Not measured from scratch: total_iter, and the\n"
    "# frequency loss (it ran in a fine-tuning check of an x2 model).\n"
)
CARRIED_SCALE_NOTE = (
    "# This scale was not run with this recipe: it is carried over from {measured}.\n"
)
FINETUNE_NOTE = "# NOT MEASURED YET: the fine-tuning (GAN) values are starting values.\n"
RESTORE_EMA_POWER = (
    "  ema_power: 10  # No warm-up (traiNNer's default): 0.999 from the start, as measured.\n"
)
REALWORLD_EMA_POWER = (
    "  ema_power: 10  # No warm-up (traiNNer's default): 0.999 from the start, as in the run.\n"
)
LQ_NOTE = "Square crop from the LR images. Multiple of 8 for AMP; any size works."
LQ_48_NOTE = "48 suits small training images (T91); 64 is fine with larger ones (DIV2K)."

# ---------------------------------------------------------------------------------------------
# Templates (string.Template: $name placeholders)
# ---------------------------------------------------------------------------------------------

GENERAL = """\
$schema
$note
#########################################################################################
# General Settings
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#top-level-options
#########################################################################################
name: $name
scale: $scale  # 1, 2, 3, 4 (also 8)
use_amp: true  # Speed up training and reduce VRAM usage. NVIDIA only.
amp_bf16: true  # HybridMoE is trained in bf16 (RTX 3000 series or newer); fp16 also works.
use_channels_last: true  # Channels last memory format while using AMP.
fast_matmul: false  # Trade precision for performance.
use_compile: false  # torch.compile for the generator (not tested with the MoE side channel).
compile_mode: default
num_gpu: auto
# Every parameter gets a gradient each step, also with several GPUs (DDP): the MoE experts are
# stacked parameters, so an expert no token is routed to still gets a zero gradient slice.
find_unused_parameters: false
$seed
"""

DATASETS_HEAD = """
########################################################################################################################
# Dataset and Dataloader Settings
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#dataset-options-datasets-train-and-datasets-val
########################################################################################################################
datasets:
  # Settings for the training dataset.
  train:
    name: Train Dataset
"""
"""The start of the ``datasets`` section, up to the training set's name."""

TRAIN_LOADER = """\
    use_hflip: true  # Randomly flip the images horizontally.
    use_rot: true  # Randomly rotate the images.

    num_worker_per_gpu: $workers
    batch_size_per_gpu: $batch_size  # Use multiple of 8 for best performance with AMP.
    accum_iter: 1  # Gradient accumulation: effective batch = accum_iter * batch_size_per_gpu.
"""
"""Flips, workers, batch size: the end of every training set."""

VAL_PAIRED = """\
  val:
    name: Val Dataset
    type: pairedimagedataset
    dataroot_gt: [
      $val_gt
    ]
    dataroot_lq: [
      $val_lq
    ]
"""
"""A validation set of HR/LQ pairs."""

TRAIN_DATASETS = (
    DATASETS_HEAD
    + """\
    type: pairedimagedataset
    # Path to the HR (high res) images in your training dataset. Specify one or multiple folders.
    dataroot_gt: [
      $train_gt
    ]
    # Path to the LR (low res) images in your training dataset. Specify one or multiple folders.
    dataroot_lq: [
      $train_lq
    ]

    lq_size: $lq_size  # $lq_note
"""
    + TRAIN_LOADER
    + "  # Settings for your validation dataset.\n"
    + VAL_PAIRED
)

NETWORK_G = """
#####################################################################
# Network Settings
# https://trainner-redux.readthedocs.io/en/latest/arch_reference.html
#####################################################################
# Generator model settings
network_g:
  type: $arch$arch_options
"""

NETWORK_D = """
# Discriminator model settings
network_d:
  type: dunet  # dunet, metagan2, unetdiscriminatorsn
"""

TRAIN_PATH = """
#########################################################################################
# Pretrain and Resume Paths
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#path-options-path
#########################################################################################
path:
  $pretrain
  param_key_g: ~
  strict_load_g: $strict_load
  resume_state: ~
"""

TRAIN_OPTIM = """
###########################################################################################
# Training Settings
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#train-options-train
###########################################################################################
train:
  ema_decay: $ema_decay
$ema_power  grad_clip: false  # Gradient clipping stabilizes training at higher learning rates.
  grad_clip_max_norm: 100  # Max norm of gradients for gradient clipping.
  # Optimizer for generator model
  optim_g:
    type: AdamW
    lr: $lr
    weight_decay: 0
    betas: [0.9, 0.99]
$optim_d
  scheduler:
    type: MultiStepLR
    milestones: $milestones
    gamma: $gamma

  total_iter: $total_iter  # Total number of iterations.
  warmup_iter: $warmup_iter  # Linear learning-rate warm-up; -1 disables it.

  # Losses - for any loss set the loss_weight to 0 to disable it.
  # https://trainner-redux.readthedocs.io/en/latest/loss_reference.html
  losses:
"""

OPTIM_D = """  # Optimizer for discriminator model
  optim_d:
    type: AdamW
    lr: $lr
    weight_decay: 0
    betas: [0.9, 0.99]
"""

LOSSES_FIDELITY = """\
    # Charbonnier loss
    - type: charbonnierloss
      loss_weight: $w_charbonnier
    # HybridMoE frequency loss: L1 of orthonormal 2-D FFT amplitudes (float32), optional
    # phase term (phase_weight) and high-frequency emphasis (hf_weight)
    - type: hybridmoefreqloss
      loss_weight: $w_freq
      phase_weight: $freq_phase
      hf_weight: $freq_hf
    # HybridMoE mixture-of-experts load-balance loss (Switch-style, ~1.0 when balanced).
    # Remove it for networks built with use_moe: false.
    - type: hybridmoebalanceloss
      loss_weight: $w_balance
"""

LOSSES_GAN = """\
    # MS-SSIM loss
    - type: mssimloss
      loss_weight: $w_mssim
    # Perceptual loss
    - type: perceptualloss
      criterion: charbonnier  # charbonnier, l1, pd+l1, fd+l1, pd, fd
      loss_weight: $w_perceptual
    # HSLuv loss (hue, saturation, lightness)
    - type: hsluvloss
      criterion: charbonnier
      loss_weight: $w_hsluv
    # GAN loss
    - type: ganloss
      gan_type: vanilla
      loss_weight: $w_gan
    # HybridMoE frequency loss (float32 FFT amplitudes)
    - type: hybridmoefreqloss
      loss_weight: $w_freq
      phase_weight: $freq_phase
      hf_weight: $freq_hf
    # HybridMoE mixture-of-experts load-balance loss
    - type: hybridmoebalanceloss
      loss_weight: $w_balance
    # Additional losses - disabled by default (recommended weight in the comment).
    # DISTS perceptual loss
    - type: distsloss
      loss_weight: 0  # 0.3
    # LDL loss
    - type: ldlloss
      loss_weight: 0  # 1.0
    # Sobel edge loss
    - type: sobeledgeloss
      loss_weight: 0  # 1.0

  # Mix of Augmentations (MoA)
  use_moa: false  # Mixture of augmentations, applied on the fly.
  moa_augs: ['none', 'mixup', 'cutmix', 'resizemix', 'cutblur']
  moa_probs: [0.4, 0.084, 0.084, 0.084, 0.348]
  moa_debug: false
  moa_debug_limit: 100
"""

TRAIN_VAL = """
##############################################################################################
# Validation
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#validation-options-val
##############################################################################################
val:
  val_enabled: true  # Whether to enable validations.
  val_freq: $val_freq  # How often to run validations, in iterations.
  save_img: $save_img  # Save the validation images in experiments/<name>/visualization.
  tile_size: $tile_size  # Tile size of the LR input (reduces VRAM on large images). 0 to disable.
  tile_overlap: 8  # Number of pixels to overlap tiles by.

  metrics_enabled: true  # Whether to run metrics calculations during validation.
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: $crop_border
      test_y_channel: true
    ssim:
      type: calculate_ssim
      crop_border: $crop_border
      test_y_channel: true
$extra_metrics
##############################################################################################
# Logging
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#logging-options-logger
##############################################################################################
logger:
  print_freq: $print_freq
  save_checkpoint_freq: $save_freq
  save_checkpoint_format: safetensors
  use_tb_logger: true
"""


def _otf_head(preset: str, scale: str) -> str:
    """The start of an on-the-fly degradation block: its banner and traiNNer's switches."""
    return f"""
#########################################################################################
# On-the-fly degradations (traiNNer-redux RealESRGANModel): the {preset} preset at {scale}
# https://trainner-redux.readthedocs.io/en/latest/config_reference.html#top-level-options
#########################################################################################
high_order_degradation: true  # LQ made on the GPU from the HR crops (RealESRGANModel).
high_order_degradations_debug: false  # Save LQ/HR tiles to debug/otf to inspect them.
high_order_degradations_debug_limit: 100  # The max number of iterations to save tiles for.
lq_usm: false  # No unsharp mask.
thicklines_prob: 0.0
"""


OTF_RESTORE = (
    _otf_head("RESTORE", "x1")
    + """
# The first degradation: blur, (no) resize, noise, JPEG.
blur_prob: $blur_prob  # Kernel from datasets.train (kernel_list, blur_sigma, kernel_range).
resize_prob: [0.0, 0.0, 1.0]  # up, down, keep: always keep (x1 restoration, no resize).
resize_mode_list: ['bilinear']
resize_mode_prob: [1.0]
resize_range: [1.0, 1.0]
gaussian_noise_prob: $noise_prob  # Otherwise the Poisson branch, of scale 0 below: no noise.
noise_range: [$noise_lo, $noise_hi]  # Gaussian sigma on the 0-255 scale.
poisson_scale_range: [0.0, 0.0]
gray_noise_prob: $gray_prob  # Same noise on all channels.
jpeg_prob: $jpeg_prob
jpeg_range: [$jpeg_lo, $jpeg_hi]  # JPEG quality.

# The second degradation: off (every stage has probability 0 or zero strength).
blur_prob2: 0.0
resize_prob2: [0.0, 0.0, 1.0]
resize_mode_list2: ['bilinear']
resize_mode_prob2: [1.0]
resize_range2: [1.0, 1.0]
gaussian_noise_prob2: 0.0
noise_range2: [0.0, 0.0]
poisson_scale_range2: [0.0, 0.0]
gray_noise_prob2: 0.0
jpeg_prob2: 0.0

# The final resize to the LQ size: at x1 the size the image already has (an identity).
resize_mode_list3: ['bilinear']
resize_mode_prob3: [1.0]

queue_size: $queue_size  # Pool of training pairs ($queue_batches batches); a multiple of the batch.
"""
)

RESTORE_DATASETS = (
    DATASETS_HEAD
    + """\
    type: realesrgandataset
    # Path to the HR (high res) images; the LQ images are made from them on the fly.
    dataroot_gt: [
      $train_gt
    ]

    # Blur kernel of the first degradation: anisotropic Gaussian, sigma_x and sigma_y drawn
    # independently from blur_sigma (pixels), angle from -pi to pi.
    kernel_list: ['aniso']
    kernel_prob: [1.0]
    kernel_range: [$kernel, $kernel]  # Kernel side, odd, inclusive range.
    blur_sigma: [$sigma_lo, $sigma_hi]
    sinc_prob: 0.0
    final_sinc_prob: 0.0

    lq_size: $lq_size  # Square crop; at x1 the LQ and HR crops are the same size.
"""
    + TRAIN_LOADER
    + """\
  # Validation: a fixed-seed degraded copy of Set14 (hybridmoe make-degraded --out
  # datasets/restore_eval --seed 0 writes <set>/HR and <set>/LQ).
"""
    + VAL_PAIRED
)

LOSSES_RESTORE = """\
    # Charbonnier loss (the loss of the measured run)
    - type: charbonnierloss
      loss_weight: $w_charbonnier
    # HybridMoE mixture-of-experts load-balance loss (Switch-style, ~1.0 when balanced).
    # Remove it for networks built with use_moe: false.
    - type: hybridmoebalanceloss
      loss_weight: $w_balance
"""

OTF_REALWORLD = (
    _otf_head("REALWORLD4", "x4")
    + """
# The first degradation: blur, resize, noise, JPEG.
blur_prob: $blur_prob  # Kernel from datasets.train (kernel_list, blur_sigma, kernel_range).
# up, down, keep: the factor is uniform in resize_range (up: 1-max, down: min-1, each in
# proportion to its part of the range), a factor of the HR size as in REALWORLD4.
resize_prob: $resize_prob
resize_mode_list: $resize_mode_list
resize_mode_prob: $resize_mode_prob  # Equal weights (traiNNer normalises them).
resize_range: $resize_range
gaussian_noise_prob: $gaussian_noise_prob  # Otherwise the Poisson branch, of scale 0: no noise.
noise_range: $noise_range  # Gaussian sigma on the 0-255 scale.
poisson_scale_range: $poisson_scale_range
gray_noise_prob: $gray_noise_prob  # Same noise on all channels.
jpeg_prob: $jpeg_prob
jpeg_range: $jpeg_range  # JPEG quality.

# The second degradation: REALWORLD4 runs it for a share of the images (second_prob); traiNNer
# has no switch for the whole stage, so each part gets that share times its own probability.
blur_prob2: $blur_prob2  # Kernel from datasets.train (kernel_list2, blur_sigma2, kernel_range2).
# Always keep: traiNNer resizes this stage to a factor of the LQ size (REALWORLD4: of the
# current size), so the stage runs at the first stage's size instead (see the header).
resize_prob2: $resize_prob2
resize_mode_list2: $resize_mode_list2
resize_mode_prob2: $resize_mode_prob2
resize_range2: $resize_range2
gaussian_noise_prob2: $gaussian_noise_prob2
noise_range2: $noise_range2  # Gaussian sigma on the 0-255 scale.
poisson_scale_range2: $poisson_scale_range2
gray_noise_prob2: $gray_noise_prob2  # REALWORLD4 uses one grey probability for both stages.

# The final resize to the LQ size (HR / scale), then JPEG (traiNNer: or JPEG, then resize).
resize_mode_list3: $resize_mode_list3
resize_mode_prob3: $resize_mode_prob3
jpeg_prob2: $jpeg_prob2  # The final JPEG.
jpeg_range2: $jpeg_range2

queue_size: $queue_size  # Pool of training pairs ($queue_batches batches); a multiple of the batch.
"""
)

REALWORLD_DATASETS = (
    DATASETS_HEAD
    + """\
    type: realesrgandataset
    # Path to the HR (high res) images; the LQ images are made from them on the fly.
    dataroot_gt: [
      $train_gt
    ]

    # Blur kernels: anisotropic Gaussian, sigma_x and sigma_y drawn independently from
    # blur_sigma (pixels), angle from -pi to pi; no sinc filters.
    kernel_list: $kernel_list  # The first degradation.
    kernel_prob: $kernel_prob
    kernel_range: $kernel_range  # Kernel side, odd, inclusive range.
    blur_sigma: $blur_sigma
    sinc_prob: $sinc_prob
    kernel_list2: $kernel_list2  # The second degradation.
    kernel_prob2: $kernel_prob2
    kernel_range2: $kernel_range2
    blur_sigma2: $blur_sigma2
    sinc_prob2: $sinc_prob2
    final_sinc_prob: $final_sinc_prob

    lq_size: $lq_size  # LR crop; the HR crop is lq_size * scale ($gt_size).
"""
    + TRAIN_LOADER
    + """\
  # Validation: a fixed-seed degraded copy of Set14 (hybridmoe make-degraded --preset realworld4
  # --out datasets/realworld4_eval --sets Set14 --seed 0 writes Set14/HR and Set14/LQ, the LQ a
  # quarter of the HR size).
"""
    + VAL_PAIRED
)

NETWORK_D_REALWORLD = """
# Discriminator model settings. The harness trained hybridmoe.gan.UNetDiscriminator (width
# $d_width), the same design: a U-Net of spectrally normalised convolutions (three stride-2
# downsamplings, bilinear upsamplings with skips) giving per-pixel real/fake logits. Its input
# is mapped to [-1, 1] there and taken as [0, 1] here.
network_d:
  type: unetdiscriminatorsn
  num_feat: $d_width
  skip_connection: true
"""

LOSSES_REALWORLD = """\
    # Charbonnier loss (the harness's pixel term)
    - type: charbonnierloss
      loss_weight: $w_pixel
    # LPIPS-VGG (HybridMoE's hybridmoelpipsloss, traiNNer/losses/hybridmoe_loss.py: float32,
    # frozen backbone). Write its weights first, no download during training:
    # hybridmoe perceptual-weights --out experiments/pretrained_models
    - type: hybridmoelpipsloss
      loss_weight: $w_lpips
      weights: $lpips_weights
      net: vgg
    # GAN loss: binary cross-entropy on the per-pixel logits (hybridmoe.gan g_loss / d_loss)
    - type: ganloss
      gan_type: vanilla
      loss_weight: $w_gan
    # HybridMoE mixture-of-experts load-balance loss
    - type: hybridmoebalanceloss
      loss_weight: $w_balance
"""

GAN_EXTRA_METRICS = """\
    #topiq:
      #type: calculate_topiq
    #lpips:
      #type: calculate_lpips
      #better: lower
"""

TEST = """\
$schema
$note
####################
# General Settings
####################
name: $name
scale: $scale  # 1, 2, 3, 4 (also 8)
use_amp: true  # Speed up inference and reduce VRAM usage. NVIDIA only.
amp_bf16: true  # HybridMoE runs in bf16 (RTX 3000 series or newer); fp16 also works.
num_gpu: auto
use_channels_last: true

#################################
# Dataset and Dataloader Settings
#################################
datasets:
  val:
    name: Val Dataset
    type: singleimagedataset
    # Path of the LR (low res) images to run the model on.
    dataroot_lq: [
      datasets/val/dataset1/lr
    ]
    io_backend:
      type: disk

#####################
# Network Settings
#####################
# Generator model settings
network_g:
  type: $arch$arch_options

############################
# Pretrain and Resume Paths
############################
path:
  # Path of the model to run on the images.
  pretrain_network_g: experiments/$name/models/net_g_ema_latest.safetensors

#############
# Validation
#############
val:
  val_enabled: true
  save_img: true  # Save the output images in results/<name>/visualization.
  tile_size: 0  # Tile size of the LR input (reduces VRAM on large images). 0 to disable.
  tile_overlap: 8  # Number of pixels to overlap tiles by.
  suffix: ~  # Add suffix to saved images, if None, use exp name.

  metrics_enabled: false  # Needs a paired dataset (pairedimagedataset with dataroot_gt).
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: $crop_border
      test_y_channel: true
    ssim:
      type: calculate_ssim
      crop_border: $crop_border
      test_y_channel: true
"""

ONNX = """\
$schema
$note
####################
# General Settings
####################
name: $name
scale: $scale  # 1, 2, 3, 4 (also 8)
num_gpu: auto

#####################
# Network Settings
#####################
# Generator model settings
network_g:
  type: $arch$arch_options

############################
# Pretrain and Resume Paths
############################
path:
  # Path of the model to convert to ONNX.
  pretrain_network_g: experiments/$name/models/net_g_ema_latest.safetensors

#########################
# ONNX conversion options
#########################
onnx:
  dynamo: false  # The classic exporter; HybridMoE uses static-shape paths while exporting.
  dtype: fp32  # fp32, fp16 or bf16 (convert after checking accuracy with verify).
  bf16_exclude_depthwise: true  # When converting to bf16, keep depthwise convs in fp32.
  opset: 20  # ONNX opset version.
  shape: 1x3xHxW  # NxCxHxW; letters are dynamic dimensions.
  wrap_5d_to_4d: true  # Only for video networks; no effect here.
  verify: true  # Verify the accuracy of the ONNX model after exporting it.
  optimize: false  # OnnxSlim; can cause issues with TensorRT.
"""


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def yaml_float(v: float) -> str:
    """A float in traiNNer's template style: ``!!float 5e-4`` for small values, else plain."""
    if v != 0 and abs(v) < 1e-2:
        mant, exp = f"{v:e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"!!float {mant}e{int(exp)}"
    return repr(float(v))


def yaml_number(v: float) -> str:
    """A loss weight or option value as plain YAML (0.05, 1.0, 0.0)."""
    return repr(float(v))


def _render(template: str, **values: object) -> str:
    return Template(template).substitute({k: str(v) for k, v in values.items()})


SEED_OFF = "# manual_seed: 1024  # Random seed for training, useful for comparing settings."


def _arch_options(options: dict[str, tuple[bool, str]]) -> str:
    """``network_g`` lines after ``type``: ``  name: value  # comment`` per option."""
    return "".join(f"\n  {k}: {_yaml(v)}  # {note}" for k, (v, note) in options.items())


def _header(note: str = GENERATED_NOTE) -> dict[str, str]:
    return {"schema": Template(SCHEMA_LINE).substitute(), "note": note, "seed": SEED_OFF}


def train_note(scale: int, variant: str, kind: str) -> str:
    """The comment block of a training file: which of its values are measured."""
    if kind == "gan":
        return FINETUNE_NOTE + GENERATED_NOTE
    measured = FROM_SCRATCH[variant]["scales"]
    carried = CARRIED_SCALE_NOTE.format(measured="/".join(f"x{m}" for m in measured))
    return MEASURED_NOTE + ("" if scale in measured else carried) + GENERATED_NOTE


def base_name(scale: int, variant: str) -> str:
    """``<x>_HybridMoE_<V>``, e.g. ``4x_HybridMoE_S``."""
    return f"{scale}x_HybridMoE_{VARIANTS[variant][1]}"


@functools.cache
def has_moe(arch: str) -> bool:
    """Whether the registered network ``arch`` builds any MoE layer (built once per name)."""
    import hybridmoe_arch

    return hybridmoe_arch.FACTORIES[arch](scale=2).num_experts > 0


def _losses(template: str, arch: str, prefix: str, values: dict[str, str] | None = None) -> str:
    """The loss block (filled with ``values``, by default the ``LOSS_WEIGHTS`` of ``prefix``);
    the MoE balance loss only for networks with MoE layers (it refuses a network without
    router statistics). Items are a ``- type:`` line with the comment lines before it and the
    deeper-indented lines after it."""
    text = _render(template, **(values if values is not None else _loss_values(prefix)))
    if has_moe(arch):
        return text
    items: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        starts_item = stripped.startswith("- type:")
        if stripped.startswith("#") and items[-1] and any("- type:" in x for x in items[-1]):
            items.append([])  # comments open the next item
        elif starts_item and any("- type:" in x for x in items[-1]):
            items.append([])
        items[-1].append(line)
    return "".join(
        "".join(item) for item in items if not any("hybridmoebalanceloss" in x for x in item)
    )


def _loss_values(prefix: str) -> dict[str, str]:
    lw = LOSS_WEIGHTS
    vals = {
        "w_freq": yaml_number(lw["gan_freq"] if prefix == "gan" else lw["freq"]),
        "freq_phase": yaml_number(lw["freq_phase"]),
        "freq_hf": yaml_number(lw["freq_hf"]),
        "w_balance": yaml_number(lw["balance"]),
    }
    if prefix == "gan":
        vals.update(
            w_mssim=yaml_number(lw["gan_mssim"]),
            w_perceptual=yaml_number(lw["gan_perceptual"]),
            w_hsluv=yaml_number(lw["gan_hsluv"]),
            w_gan=yaml_number(lw["gan_gan"]),
        )
    else:
        vals["w_charbonnier"] = yaml_number(lw["charbonnier"])
    return vals


def _list(items: list[int]) -> str:
    return "[" + ", ".join(str(i) for i in items) + "]"


def _paths(gt: list[str], lq: list[str]) -> dict[str, str]:
    sep = ",\n      "
    return {"gt": sep.join(gt), "lq": sep.join(lq)}


def train_config(scale: int, variant: str, kind: str) -> str:
    """A ``kind`` = ``fidelity`` (from scratch) or ``gan`` (fine-tune) training config."""
    arch = VARIANTS[variant][0]
    name = base_name(scale, variant)
    gan = kind == "gan"
    s = FINETUNE[variant] if gan else FROM_SCRATCH[variant]
    sched = FINETUNE_SCHEDULE if gan else FROM_SCRATCH_SCHEDULE
    train = _paths(
        ["datasets/train/dataset1/hr", "datasets/train/dataset1/hr2"],
        ["datasets/train/dataset1/lr", "datasets/train/dataset1/lr2"],
    )
    val = _paths(["datasets/val/dataset1/hr"], ["datasets/val/dataset1/lr"])
    lr = yaml_float(s["lr"])
    pretrain = (
        f"pretrain_network_g: experiments/{name}/models/net_g_ema_latest.safetensors"
        "  # the fidelity model"
        if gan
        else "# pretrain_network_g: experiments/pretrained_models/pretrain.safetensors"
    )
    lq = s["lq"] if gan else s["lq"][scale]
    parts = [
        _render(
            GENERAL,
            name=f"{name}_GAN" if gan else name,
            scale=scale,
            **_header(train_note(scale, variant, kind)),
        ),
        _render(
            TRAIN_DATASETS,
            train_gt=train["gt"],
            train_lq=train["lq"],
            val_gt=val["gt"],
            val_lq=val["lq"],
            lq_size=lq,
            lq_note=LQ_48_NOTE if lq == 48 else LQ_NOTE,
            workers=8,
            batch_size=s["batch"],
        ),
        _render(NETWORK_G, arch=arch, arch_options=""),
        NETWORK_D if gan else "",
        _render(TRAIN_PATH, pretrain=pretrain, strict_load=STRICT_LOAD),
        _render(
            TRAIN_OPTIM,
            ema_decay=sched["ema_decay"],
            ema_power=(
                ""
                if gan
                else f"  ema_power: {sched['ema_power']}  # Warm up the EMA decay from scratch.\n"
            ),
            lr=lr,
            optim_d=_render(OPTIM_D, lr=lr) if gan else "",
            milestones=_list(sched["milestones"] if gan else s["milestones"]),
            gamma=sched["gamma"],
            total_iter=sched["total_iter"],
            warmup_iter=-1 if gan else s["warmup"],
        ),
        _losses(LOSSES_GAN if gan else LOSSES_FIDELITY, arch, "gan" if gan else ""),
        _render(
            TRAIN_VAL,
            val_freq=1000 if gan else 5000,
            save_img=str(gan).lower(),
            tile_size=0,
            crop_border=scale,
            extra_metrics=GAN_EXTRA_METRICS if gan else "",
            print_freq=100,
            save_freq=1000 if gan else 5000,
        ),
    ]
    return "".join(parts)


def restore_kernel_size(preset: Degradation = RESTORE_PRESET) -> int:
    """The blur kernel side of the template: the one ``hybridmoe.degrade`` uses for a batch
    that holds the preset's largest sigma."""
    return kernel_size(preset.blur_sigma[1])


def restore_note(preset: Degradation = RESTORE_PRESET) -> str:
    """The comment block of a restoration file: what is measured, and how traiNNer's
    on-the-fly degradations match the preset (exactly or approximately)."""
    r = RESTORE_RECIPE
    (s0, s1), (n0, n1), (q0, q1) = preset.blur_sigma, preset.noise_sigma, preset.jpeg_quality
    pool = r["queue_size"] // r["batch"]
    lr = yaml_float(r["lr"]).removeprefix("!!float ")
    return (
        f"# MEASURED recipe: AdamW lr {lr}, betas {r['betas']}, no weight decay, batch "
        f"{r['batch']},\n"
        f"# {r['lq']}x{r['lq']} crops, bf16 AMP, EMA {r['ema_decay']}, Charbonnier loss, "
        f"{r['total_iter']:,} iterations with the\n"
        "# rate halved at 1/2 and 3/4: the values of the measured x1 restoration run\n"
        "# (scripts/sweep.py --scale 1 --degrade restore, photo tiles; docs/TRAINING.md 5d).\n"
        "# Degradations: traiNNer-redux's on-the-fly pipeline (high_order_degradation,\n"
        "# RealESRGANModel) set to the RESTORE preset of hybridmoe/degrade.py.\n"
        f"# Exact: blur probability {preset.blur_prob:g}, anisotropic Gaussian kernel, sigma_x and "
        f"sigma_y\n"
        f"# uniform {s0:g}-{s1:g} px, any angle; Gaussian noise probability {preset.noise_prob:g}, "
        f"sigma uniform {n0:g}-{n1:g}\n"
        "# on the 0-255 scale (traiNNer's noise_range uses that scale too), the same on all\n"
        f"# channels for {preset.noise_gray_prob:.0%} of the noisy images; JPEG probability "
        f"{preset.jpeg_prob:g}, quality {q0}-{q1};\n"
        "# no resize; the second degradation and the sinc filters are off.\n"
        "# Approximate: traiNNer switches blur, noise and JPEG on or off once per batch (RESTORE:\n"
        f"# per image); its pool of training pairs (queue_size) mixes {pool} batches, so each "
        "image\n"
        "# keeps the same probability. The kernel is always "
        f"{restore_kernel_size(preset)}x{restore_kernel_size(preset)} (RESTORE: 2*ceil(3*sigma)+1 "
        "for\n"
        "# the batch's largest sigma). Grey noise is one pattern per batch, scaled per image.\n"
        "# traiNNer's JPEG (DiffJPEG) takes a real-valued quality with unrounded quantisation\n"
        "# tables, repeats the chroma samples and pads with zeros (RESTORE: integer quality,\n"
        "# libjpeg tables, triangle-filter chroma, edge padding); the 8-bit rounding comes after\n"
        "# JPEG only (RESTORE: before and after it).\n"
    ) + GENERATED_NOTE


def restore_config(variant: str, preset: Degradation = RESTORE_PRESET) -> str:
    """The x1 restoration training config of ``variant`` with on-the-fly degradations."""
    arch = VARIANTS[variant][0]
    r = RESTORE_RECIPE
    total = r["total_iter"]
    train = _paths(["datasets/train/dataset1/hr"], [])
    val = _paths(["datasets/restore_eval/Set14/HR"], ["datasets/restore_eval/Set14/LQ"])
    (n0, n1), (q0, q1) = preset.noise_sigma, preset.jpeg_quality
    kernel = restore_kernel_size(preset)
    parts = [
        _render(GENERAL, name=restore_name(variant), scale=1, **_header(restore_note(preset))),
        _render(
            OTF_RESTORE,
            blur_prob=yaml_number(preset.blur_prob),
            noise_prob=yaml_number(preset.noise_prob),
            noise_lo=yaml_number(n0),
            noise_hi=yaml_number(n1),
            gray_prob=yaml_number(preset.noise_gray_prob),
            jpeg_prob=yaml_number(preset.jpeg_prob),
            jpeg_lo=q0,
            jpeg_hi=q1,
            queue_size=r["queue_size"],
            queue_batches=r["queue_size"] // r["batch"],
        ),
        _render(
            RESTORE_DATASETS,
            train_gt=train["gt"],
            val_gt=val["gt"],
            val_lq=val["lq"],
            kernel=kernel,
            sigma_lo=yaml_number(preset.blur_sigma[0]),
            sigma_hi=yaml_number(preset.blur_sigma[1]),
            lq_size=r["lq"],
            workers=8,
            batch_size=r["batch"],
        ),
        _render(NETWORK_G, arch=arch, arch_options=""),
        _render(
            TRAIN_PATH,
            pretrain="# pretrain_network_g: experiments/pretrained_models/pretrain.safetensors",
            strict_load=STRICT_LOAD,
        ),
        _render(
            TRAIN_OPTIM,
            ema_decay=r["ema_decay"],
            ema_power=RESTORE_EMA_POWER,
            lr=yaml_float(r["lr"]),
            optim_d="",
            milestones=_list([int(total * m) for m in r["milestones"]]),
            gamma=r["gamma"],
            total_iter=total,
            warmup_iter=-1,
        ),
        _losses(LOSSES_RESTORE, arch, ""),
        _render(
            TRAIN_VAL,
            val_freq=1000,
            save_img="false",
            tile_size=0,
            crop_border=0,  # as hybridmoe evaluate --degraded
            extra_metrics="",
            print_freq=100,
            save_freq=1000,
        ),
    ]
    return "".join(parts)


def restore_name(variant: str) -> str:
    """``1x_HybridMoE_<V>_restore``: experiment name and file stem."""
    return f"{base_name(1, variant)}_restore"


def _yaml(value: object) -> str:
    """A template value as flow-style YAML: lists in brackets, strings quoted, floats plain."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float):
        return yaml_number(value)
    return str(value)


def _prob(p: float) -> float:
    return round(p, PROB_DIGITS)


def resize_probs(factors: tuple[float, float], prob: float = 1.0) -> list[float]:
    """traiNNer's ``resize_prob`` (up, down, keep) for a factor uniform in ``factors``, drawn
    with probability ``prob``: traiNNer draws up in (1, max) and down in (min, 1), so each
    gets its part of the range."""
    lo, hi = factors
    if hi == lo:
        return [0.0, 0.0, 1.0]
    up = max(hi - 1.0, 0.0) / (hi - lo)
    down = max(1.0 - lo, 0.0) / (hi - lo)
    return [_prob(prob * up), _prob(prob * down), _prob(1.0 - prob * (up + down))]


def realworld_otf(preset: Degradation = REALWORLD_PRESET) -> dict[str, Any]:
    """The top-level traiNNer-redux options (RealESRGANModel) of the on-the-fly degradations
    that stand for ``preset`` (a second-order preset such as REALWORLD4), by option name.

    Exact in distribution (apart from traiNNer's per-batch switches): stage 1 (blur
    probability, resize factor and modes, Gaussian noise, grey share, JPEG), the final resize
    modes and JPEG. Stage 2's blur and noise get ``second_prob`` times their probability
    (traiNNer has no switch for the stage); its resize is left out (always keep), since
    traiNNer resizes that stage to a factor of the LQ size, not of the current size."""
    modes = list(RESIZE_MODES)
    mode_probs = [_prob(1.0 / len(modes))] * len(modes)
    return {
        "blur_prob": preset.blur_prob,
        "resize_prob": resize_probs(preset.resize_range),
        "resize_mode_list": modes,
        "resize_mode_prob": mode_probs,
        "resize_range": list(preset.resize_range),
        "gaussian_noise_prob": preset.noise_prob,
        "noise_range": list(preset.noise_sigma),
        "poisson_scale_range": [0.0, 0.0],
        "gray_noise_prob": preset.noise_gray_prob,
        "jpeg_prob": preset.jpeg_prob,
        "jpeg_range": list(preset.jpeg_quality),
        "blur_prob2": _prob(preset.second_prob * preset.second_blur_prob),
        "resize_prob2": [0.0, 0.0, 1.0],
        "resize_mode_list2": modes,
        "resize_mode_prob2": mode_probs,
        "resize_range2": [1.0, 1.0],
        "gaussian_noise_prob2": _prob(preset.second_prob * preset.second_noise_prob),
        "noise_range2": list(preset.second_noise_sigma),
        "poisson_scale_range2": [0.0, 0.0],
        "gray_noise_prob2": preset.noise_gray_prob,
        "resize_mode_list3": modes,
        "resize_mode_prob3": mode_probs,
        "jpeg_prob2": preset.final_jpeg_prob,
        "jpeg_range2": list(preset.final_jpeg_quality),
    }


def realworld_kernels(preset: Degradation = REALWORLD_PRESET) -> dict[str, Any]:
    """The blur-kernel options of traiNNer-redux's realesrgandataset for ``preset``: one
    anisotropic Gaussian per stage, the kernel side that hybridmoe.degrade uses for the
    stage's largest sigma, no sinc filters."""
    k1, k2 = kernel_size(preset.blur_sigma[1]), kernel_size(preset.second_blur_sigma[1])
    return {
        "kernel_list": ["aniso"],
        "kernel_prob": [1.0],
        "kernel_range": [k1, k1],
        "blur_sigma": list(preset.blur_sigma),
        "sinc_prob": 0.0,
        "kernel_list2": ["aniso"],
        "kernel_prob2": [1.0],
        "kernel_range2": [k2, k2],
        "blur_sigma2": list(preset.second_blur_sigma),
        "sinc_prob2": 0.0,
        "final_sinc_prob": 0.0,
    }


def realworld_name() -> str:
    """``4x_HybridMoE_S_RealWorld``: the experiment name (the file stem is lower-case)."""
    return f"{base_name(REALWORLD_PRESET.scale, REALWORLD_VARIANT)}_RealWorld"


def realworld_note(preset: Degradation = REALWORLD_PRESET) -> str:
    """The comment block of the real-world file: the recipe of the harness run, and how
    traiNNer's on-the-fly degradations match the preset (exactly or approximately)."""
    r, g = REALWORLD_RECIPE, REALWORLD_GAN
    otf = realworld_otf(preset)
    kernels = realworld_kernels(preset)
    scale, lq = preset.scale, r["lq"]
    k1, k2 = kernels["kernel_range"][0], kernels["kernel_range2"][0]
    lr = yaml_float(g["lr"]).removeprefix("!!float ")
    lr_d = yaml_float(g["lr_d"]).removeprefix("!!float ")
    pool = r["queue_size"] // r["batch"]
    (s0, s1), (n0, n1), (q0, q1) = preset.blur_sigma, preset.noise_sigma, preset.jpeg_quality
    (f0, f1), (t0, t1) = preset.resize_range, preset.second_resize_range
    return (
        "# RECIPE of the x4 real-world GAN fine-tune run with the project's harness:\n"
        "# scripts/sweep.py train --configs trunk96x12_lean_noise --scale "
        f"{scale} --degrade realworld4\n"
        "# --init RUNS --init-config trunk96x12_lean --gan lpips_vgg.safetensors --crop "
        f"{lq}.\n"
        f"# From the x{scale} {VARIANTS[REALWORLD_VARIANT][1]} fidelity model plus the texture "
        "head with its learned noise\n"
        "# injection (network_g below); the harness starts the new head as the identity "
        "(residual\n"
        "# scale 0), traiNNer from its default initialisation (strict_load_g false).\n"
        f"# AdamW G lr {lr}, D lr {lr_d}, "
        f"betas {r['betas']}, no weight decay, constant rate, batch {r['batch']},\n# "
        f"{lq}x{lq} LR crops ({lq * scale}x{lq * scale} HR),\n"
        f"# bf16 AMP, EMA {r['ema_decay']}; Charbonnier {g['pixel_weight']} + LPIPS-VGG "
        f"{g['lpips_weight']} + vanilla GAN {g['gan_weight']} against a\n"
        f"# U-Net SN discriminator of width {g['d_width']}; {r['iterations']:,} iterations "
        '(REALWORLD_RECIPE["iterations"]).\n'
        "# Degradations: traiNNer-redux's on-the-fly pipeline (high_order_degradation,\n"
        "# RealESRGANModel) set to the REALWORLD4 preset of hybridmoe/degrade.py.\n"
        f"# Exact: stage 1 blur probability {preset.blur_prob:g}, anisotropic Gaussian, sigma_x "
        "and sigma_y uniform\n"
        f"# {s0:g}-{s1:g} px, any angle; resize by a factor uniform in {f0:g}-{f1:g} of the "
        "HR size, modes\n"
        f"# {'/'.join(RESIZE_MODES)} equally likely (antialiased when shrinking); Gaussian "
        "noise\n"
        f"# probability {preset.noise_prob:g}, sigma {n0:g}-{n1:g} on the 0-255 scale, grey for "
        f"{preset.noise_gray_prob:.0%}; JPEG probability {preset.jpeg_prob:g},\n"
        f"# quality {q0}-{q1}. Stage 2: blur sigma {preset.second_blur_sigma[0]:g}-"
        f"{preset.second_blur_sigma[1]:g} px, noise sigma {preset.second_noise_sigma[0]:g}-"
        f"{preset.second_noise_sigma[1]:g}, no JPEG.\n"
        f"# Final: resize to 1/{scale} (same modes), JPEG probability "
        f"{preset.final_jpeg_prob:g}, quality "
        f"{preset.final_jpeg_quality[0]}-{preset.final_jpeg_quality[1]}.\n"
        "# Sinc filters, Poisson noise, unsharp mask: off.\n"
        "# Approximate: traiNNer switches blur, resize (with its factor and mode), noise and\n"
        f"# JPEG once per batch (REALWORLD4: per image); its pool of training pairs mixes {pool}\n"
        f"# batches. REALWORLD4 runs stage 2 for {preset.second_prob:.0%} of the images, then "
        f"its blur ({preset.second_blur_prob:g})\n"
        f"# and noise ({preset.second_noise_prob:g}); traiNNer has no stage switch: blur_prob2 "
        f"{otf['blur_prob2']:g} and gaussian_noise_prob2\n"
        f"# {otf['gaussian_noise_prob2']:g} (the same shares, drawn independently). REALWORLD4 "
        f"resizes stage 2 by {t0:g}-{t1:g} of\n"
        f"# its input; traiNNer resizes it to a factor of the LQ size (HR/{scale}), which would "
        "add its\n"
        "# noise at the LQ scale, so the template keeps stage 2 at the stage-1 size (no second\n"
        "# resize). traiNNer puts the final JPEG before the final resize for half of the batches\n"
        f"# (REALWORLD4: always after it). The kernels are always {k1}x{k1} and {k2}x{k2} "
        "(REALWORLD4:\n"
        "# 2*ceil(3*sigma)+1 for the image's largest sigma). Grey noise is one pattern per\n"
        "# batch, scaled per image. traiNNer's JPEG (DiffJPEG) takes a real-valued quality with\n"
        "# unrounded tables, repeats the chroma samples and pads with zeros (REALWORLD4: integer\n"
        "# quality, libjpeg tables and chroma filter, edge padding), and it rounds to 8 bits at\n"
        "# the end only (REALWORLD4: after every stage). It degrades a "
        f"{lq * scale + 32} px HR crop and cuts\n"
        f"# the {lq * scale}/{lq} pair from the result (REALWORLD4: the {lq * scale} px crop "
        "itself).\n"
    ) + GENERATED_NOTE


def realworld_config(preset: Degradation = REALWORLD_PRESET) -> str:
    """The x4 real-world GAN fine-tuning config with on-the-fly degradations of ``preset``."""
    variant = REALWORLD_VARIANT
    arch = VARIANTS[variant][0]
    scale = preset.scale
    r, g = REALWORLD_RECIPE, REALWORLD_GAN
    train = _paths(["datasets/train/dataset1/hr"], [])
    val = _paths(["datasets/realworld4_eval/Set14/HR"], ["datasets/realworld4_eval/Set14/LQ"])
    pretrain = (
        f"pretrain_network_g: experiments/{base_name(scale, variant)}/models/"
        "net_g_ema_latest.safetensors  # the fidelity model"
    )
    losses = {
        "w_pixel": yaml_number(g["pixel_weight"]),
        "w_lpips": yaml_number(g["lpips_weight"]),
        "lpips_weights": LPIPS_WEIGHTS,
        "w_gan": yaml_number(g["gan_weight"]),
        "w_balance": yaml_number(LOSS_WEIGHTS["balance"]),
    }
    parts = [
        _render(GENERAL, name=realworld_name(), scale=scale, **_header(realworld_note(preset))),
        _render(
            OTF_REALWORLD,
            **{k: _yaml(v) for k, v in realworld_otf(preset).items()},
            queue_size=r["queue_size"],
            queue_batches=r["queue_size"] // r["batch"],
        ),
        _render(
            REALWORLD_DATASETS,
            train_gt=train["gt"],
            val_gt=val["gt"],
            val_lq=val["lq"],
            **{k: _yaml(v) for k, v in realworld_kernels(preset).items()},
            lq_size=r["lq"],
            gt_size=r["lq"] * scale,
            workers=8,
            batch_size=r["batch"],
        ),
        _render(NETWORK_G, arch=arch, arch_options=_arch_options(REALWORLD_OPTIONS)),
        _render(NETWORK_D_REALWORLD, d_width=g["d_width"]),
        _render(TRAIN_PATH, pretrain=pretrain, strict_load=REALWORLD_STRICT_LOAD),
        _render(
            TRAIN_OPTIM,
            ema_decay=r["ema_decay"],
            ema_power=REALWORLD_EMA_POWER,
            lr=yaml_float(g["lr"]),
            optim_d=_render(OPTIM_D, lr=yaml_float(g["lr_d"])),
            milestones="[]  # No milestones: a constant rate, as in the harness.",
            gamma=0.5,
            total_iter=r["iterations"],
            warmup_iter=-1,
        ),
        _losses(LOSSES_REALWORLD, arch, "", losses),
        _render(
            TRAIN_VAL,
            val_freq=1000,
            save_img="true",
            tile_size=0,
            crop_border=scale,
            extra_metrics=GAN_EXTRA_METRICS,
            print_freq=100,
            save_freq=1000,
        ),
    ]
    return "".join(parts)


def test_config(scale: int, variant: str, name: str | None = None, arch_options: str = "") -> str:
    """``test.py`` config running the model on a folder of LR images (``name`` and
    ``arch_options``: of a model with options beyond its variant's, e.g. the real-world one)."""
    return _render(
        TEST,
        name=name or base_name(scale, variant),
        scale=scale,
        arch=VARIANTS[variant][0],
        arch_options=arch_options,
        crop_border=scale,
        **_header(),
    )


def onnx_config(scale: int, variant: str, name: str | None = None, arch_options: str = "") -> str:
    """``convert_to_onnx.py`` config (``name``, ``arch_options``: as :func:`test_config`)."""
    return _render(
        ONNX,
        name=name or base_name(scale, variant),
        scale=scale,
        arch=VARIANTS[variant][0],
        arch_options=arch_options,
        **_header(),
    )


def generate() -> dict[str, str]:
    """Every option file, as ``{path relative to options/: YAML text}``."""
    files: dict[str, str] = {}
    for variant in VARIANTS:
        for scale in SCALES:
            stem = base_name(scale, variant)
            files[f"train/HybridMoE/{stem}_fidelity.yml"] = train_config(scale, variant, "fidelity")
            files[f"train/HybridMoE/{stem}_gan.yml"] = train_config(scale, variant, "gan")
            files[f"test/HybridMoE/{stem}.yml"] = test_config(scale, variant)
            files[f"onnx/HybridMoE/{stem}.yml"] = onnx_config(scale, variant)
    for variant in RESTORE_VARIANTS:
        files[f"train/HybridMoE/{restore_name(variant)}.yml"] = restore_config(variant)
    stem = f"{base_name(REALWORLD_PRESET.scale, REALWORLD_VARIANT)}_realworld"
    files[f"train/HybridMoE/{stem}.yml"] = realworld_config()
    # the real-world model has the texture head and its noise: test and export it with them
    rw = {
        "name": realworld_name(),
        "arch_options": _arch_options(REALWORLD_OPTIONS),
    }
    files[f"test/HybridMoE/{stem}.yml"] = test_config(
        REALWORLD_PRESET.scale, REALWORLD_VARIANT, **rw
    )
    files[f"onnx/HybridMoE/{stem}.yml"] = onnx_config(
        REALWORLD_PRESET.scale, REALWORLD_VARIANT, **rw
    )
    return files


class OptionsError(Exception):
    """The option files cannot or must not be written; the message says why and what to do."""


def file_state(path: Path, text: str) -> str:
    """``"missing"``, ``"same"`` or ``"differs"``: ``path`` against the generated ``text``."""
    if not path.exists() and not path.is_symlink():
        return "missing"
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return "same"
    return "differs"


def _check_folder(folder: Path) -> None:
    """Refuse a folder that cannot be created or written to, before anything is written."""
    problem = folder_problem(folder)
    if problem is not None:
        raise OptionsError(f"cannot write under {folder}: {problem}; choose another --out")


def write(out: Path, *, overwrite: bool = False) -> list[Path]:
    """Write every generated file that is missing under ``out`` or differs from the output;
    returns the written paths (files already equal to the output are left alone).

    A file whose content differs (an edited or older copy) is replaced only with ``overwrite``:
    otherwise :class:`OptionsError` lists them and nothing is written. Each file is written
    atomically (a temporary file beside it replaces it once complete); a write failure
    midway (a full disk) is an :class:`OptionsError` saying how many were written before it.
    """
    if out.exists() and not out.is_dir():
        raise OptionsError(f"--out {out} is a file, not a folder; choose another --out")
    files = generate()
    states = {rel: file_state(out / rel, text) for rel, text in files.items()}
    for rel in states:
        if (out / rel).is_dir():
            raise OptionsError(f"{out / rel} is a folder; remove it or choose another --out")
    differ = [rel for rel, st in states.items() if st == "differs"]
    if differ and not overwrite:
        shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        raise OptionsError(
            f"{len(differ)} file(s) under {out} differ from what make-options writes (edited, "
            f"or from another version): {shown}; pass --overwrite to replace them, or choose "
            f"another --out (--check lists them)"
        )
    todo = [rel for rel, st in states.items() if st != "same"]
    for folder in sorted({(out / rel).parent for rel in todo}):
        _check_folder(folder)
    written = []
    for rel in todo:
        path = out / rel
        try:
            write_text_atomic(path, files[rel], overwrite=True, what="option file")
        except OutputError as e:  # the files written so far are complete: a re-run skips them
            raise OptionsError(
                f"{e}; {len(written)} of the {len(todo)} file(s) to write were written before "
                f"this failure; re-running the same command writes the rest"
            ) from e
        written.append(path)
    return written


def diff(out: Path) -> list[str]:
    """Paths (relative to ``out``) that are missing, differ, or are not generated; only the
    folders make-options writes (``{train,test,onnx}/HybridMoE``) are looked at, so the other
    option files of a traiNNer-redux checkout's ``options/`` are not reported."""
    files = generate()
    folders = sorted({(out / rel).parent for rel in files})
    present = {p.relative_to(out).as_posix() for d in folders for p in d.glob("*.yml")}
    problems: list[str] = []
    for rel in sorted(set(files) | present):
        if rel not in present:
            problems.append(f"missing: {rel}")
        elif rel not in files:
            problems.append(f"not generated: {rel}")
        elif file_state(out / rel, files[rel]) != "same":
            problems.append(f"differs: {rel}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hybridmoe make-options", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="options folder (default: ./options of the current folder)",
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only compare; exit 1 on differences")
    mode.add_argument(
        "--overwrite", action="store_true", help="replace files whose content differs (edited)"
    )
    args = ap.parse_args(argv)
    if args.check:
        if not args.out.is_dir():
            print(
                f"error: no options folder at {args.out}; run from the folder that holds "
                f"options/ (the checkout) or pass --out",
                file=sys.stderr,
            )
            return 2
        problems = diff(args.out)
        for p in problems:
            print(p)
        print("options are up to date" if not problems else f"{len(problems)} file(s) out of date")
        return 1 if problems else 0
    try:
        written = write(args.out, overwrite=args.overwrite)
    except OptionsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unchanged = len(generate()) - len(written)
    print(f"wrote {len(written)} file(s) under {args.out} ({unchanged} unchanged)")
    extra = [p.removeprefix("not generated: ") for p in diff(args.out) if p.startswith("not gen")]
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        print(
            f"note: {len(extra)} file(s) under {args.out} are not made by make-options (yours, or "
            f"of an older version): {shown}; they stay, --check lists them, and install-trainner "
            "installs every .yml of the HybridMoE folders",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
