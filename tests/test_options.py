"""The traiNNer-redux option files under options/: generated, consistent, and loadable.

Always: every file parses with PyYAML, has the keys traiNNer-redux needs, uses our arch and
loss types with consistent scales, carries the measured recipe where it was measured (and says
which values are not measured), and equals what hybridmoe make-options generates. The
comparison configs of the GPU runs under docs/compare_configs equal what
scripts/compare_training.py generates.
With ``TRAINNER_REDUX_DIR`` set: every file also loads with traiNNer-redux's own strict
config loader (``traiNNer.utils.options.yaml_load``: msgspec, unknown keys are errors).
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import compare_training
import pytest
import sweep
import yaml

import hybridmoe_arch
import hybridmoe_loss
from hybridmoe import degrade, options

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ROOT / "options"
COMPARE_CONFIGS = ROOT / "docs" / "compare_configs"
# the command that wrote docs/compare_configs (the configs of the measured GPU runs)
COMPARE_ARGS = [
    "configs",
    "--models",
    *("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "span", "plksr_tiny", "plksr"),
    *("compact", "safmn"),
    "--scales",
    "2",
    "4",
    "--iters",
    "3000",
]
ALL_FILES = sorted(OPTIONS.rglob("*.yml"))
NAME_RE = re.compile(r"^(?P<scale>[1-4])x_HybridMoE_(?P<variant>Nano|S|M|L)(?P<rest>.*)\.yml$")
OUR_LOSSES = {
    hybridmoe_loss.FREQ_LOSS_NAME: hybridmoe_loss.HybridMoEFreqLoss,
    hybridmoe_loss.BALANCE_LOSS_NAME: hybridmoe_loss.HybridMoEBalanceLoss,
}


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), path
    return data


def _kind(path: Path) -> str:
    rel = path.relative_to(OPTIONS).parts
    if rel[0] == "train":
        if path.stem.endswith("_restore"):
            return "restore"
        if path.stem.endswith("_realworld"):
            return "realworld"
        return "gan" if path.stem.endswith("_gan") else "fidelity"
    return rel[0]  # test | onnx


def _id(path: Path) -> str:
    return path.relative_to(OPTIONS).as_posix()


def test_the_expected_files_exist() -> None:
    rel = {_id(p) for p in ALL_FILES}
    for v in ("Nano", "S", "M", "L"):
        for s in (1, 2, 3, 4):
            stem = f"{s}x_HybridMoE_{v}"
            assert f"train/HybridMoE/{stem}_fidelity.yml" in rel
            assert f"train/HybridMoE/{stem}_gan.yml" in rel
            assert f"test/HybridMoE/{stem}.yml" in rel
            assert f"onnx/HybridMoE/{stem}.yml" in rel
    for v in ("Nano", "S"):
        assert f"train/HybridMoE/1x_HybridMoE_{v}_restore.yml" in rel
    assert "train/HybridMoE/4x_HybridMoE_S_realworld.yml" in rel
    assert "test/HybridMoE/4x_HybridMoE_S_realworld.yml" in rel
    assert "onnx/HybridMoE/4x_HybridMoE_S_realworld.yml" in rel
    assert len(rel) == 16 * 4 + 2 + 3


@pytest.mark.parametrize("kind", ["test", "onnx"])
def test_the_realworld_test_and_onnx_configs_load_the_shipped_realworld_model(kind: str) -> None:
    """Only a training config existed for it; the plain 4x S test config cannot strict-load
    its weights (the texture head and its noise strengths are extra keys)."""
    from safetensors.torch import load_file

    cfg = _load(OPTIONS / kind / "HybridMoE" / "4x_HybridMoE_S_realworld.yml")
    assert cfg["name"] == "4x_HybridMoE_S_RealWorld" and cfg["scale"] == 4
    net = dict(cfg["network_g"])
    model = hybridmoe_arch.FACTORIES[net.pop("type")](scale=cfg["scale"], **net)
    shipped = ROOT / "experiments" / "pretrained_models" / "4x_HybridMoE_S_RealWorld.safetensors"
    model.load_state_dict(load_file(str(shipped)), strict=True)
    plain = _load(OPTIONS / kind / "HybridMoE" / "4x_HybridMoE_S.yml")["network_g"]
    with pytest.raises(RuntimeError, match="Unexpected key"):
        hybridmoe_arch.FACTORIES[plain["type"]](scale=4).load_state_dict(
            load_file(str(shipped)), strict=True
        )


def test_generator_output_equals_committed_files(tmp_path: Path) -> None:
    assert options.diff(OPTIONS) == []
    # and a fresh write produces exactly the committed bytes
    options.write(tmp_path)
    for p in ALL_FILES:
        assert (tmp_path / _id(p)).read_bytes() == p.read_bytes(), _id(p)


@pytest.mark.parametrize("path", ALL_FILES, ids=_id)
def test_option_file_is_consistent(path: Path) -> None:
    cfg = _load(path)
    kind = _kind(path)
    m = NAME_RE.match(path.name)
    assert m, f"unexpected file name {path.name}"
    scale = int(m["scale"])
    arch = f"hybridmoe_{m['variant'].lower()}"

    # first line: the schema comment traiNNer-redux templates carry
    assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=")
    assert cfg["scale"] == scale
    assert cfg["name"].startswith(f"{scale}x_HybridMoE_{m['variant']}")
    assert cfg["network_g"]["type"] == arch
    assert arch in hybridmoe_arch.FACTORIES
    # the variant's defaults (every variant builds with them); the real-world file adds the
    # texture head with its noise injection, as the shipped model
    realworld = path.stem.endswith("_realworld")  # its train, test and ONNX files
    extra = set(options.REALWORLD_OPTIONS) if realworld else set()
    assert set(cfg["network_g"]) == {"type", *extra}
    hybridmoe_arch.FACTORIES[arch](scale=scale, **{k: cfg["network_g"][k] for k in extra})
    assert "path" in cfg

    if kind in ("test", "onnx"):
        assert "train" not in cfg
        assert cfg["path"]["pretrain_network_g"].endswith(
            f"{cfg['name']}/models/net_g_ema_latest.safetensors"
        )
        if kind == "onnx":
            assert cfg["onnx"]["dtype"] in ("fp32", "fp16", "bf16")
        else:
            assert cfg["datasets"]["val"]["dataroot_lq"]
            assert cfg["val"]["val_enabled"] is True
        return

    # training configs
    # every parameter gets a gradient each step (stacked experts; tests/test_ddp.py)
    assert cfg["find_unused_parameters"] is False
    assert cfg["use_amp"] is True
    assert cfg["amp_bf16"] is True
    assert cfg["use_channels_last"] is True
    train_ds = cfg["datasets"]["train"]
    assert ("lq_size" in train_ds) != ("gt_size" in train_ds)  # train.py requires exactly one
    assert train_ds["lq_size"] % 8 == 0
    assert train_ds["batch_size_per_gpu"] > 0
    assert train_ds["dataroot_gt"]
    # on-the-fly degradations make the LQ from the HR images
    assert ("dataroot_lq" in train_ds) == (kind not in ("restore", "realworld"))
    assert cfg["datasets"]["val"]["type"] == "pairedimagedataset"
    assert cfg["val"]["val_enabled"] is True
    assert cfg["val"]["val_freq"] > 0
    metrics = cfg["val"]["metrics"]
    assert metrics["psnr"]["type"] == "calculate_psnr"
    assert metrics["ssim"]["type"] == "calculate_ssim"
    # restoration is scored with no border cropped, as hybridmoe evaluate --degraded does
    assert metrics["psnr"]["crop_border"] == (0 if kind == "restore" else scale)
    assert metrics["ssim"]["crop_border"] == metrics["psnr"]["crop_border"]
    assert cfg["logger"]["save_checkpoint_format"] == "safetensors"
    train = cfg["train"]
    assert train["ema_decay"] > 0
    assert train["optim_g"]["type"] == "AdamW"
    assert isinstance(train["optim_g"]["lr"], float)
    assert 0 < train["optim_g"]["lr"] < 1e-2
    assert train["scheduler"]["type"] == "MultiStepLR"
    assert all(0 < ms < train["total_iter"] for ms in train["scheduler"]["milestones"])

    losses = train["losses"]
    types = [entry["type"] for entry in losses]
    assert len(types) == len(set(types)), "a repeated loss type replaces the earlier entry"
    for entry in losses:
        assert "type" in entry
        assert "loss_weight" in entry
    active = {e["type"]: e for e in losses if float(e["loss_weight"]) != 0}
    # the measured restoration run and the real-world GAN run had no frequency loss
    assert (hybridmoe_loss.FREQ_LOSS_NAME in active) == (kind in ("fidelity", "gan"))
    # the balance loss exactly where the network has MoE layers (it refuses one without)
    has_moe = hybridmoe_arch.FACTORIES[arch](scale=2).num_experts > 0
    assert (hybridmoe_loss.BALANCE_LOSS_NAME in active) == has_moe
    assert "fftloss" not in types
    assert "ffloss" not in types
    # our entries construct with exactly these keyword arguments
    for name, cls in ((n, c) for n, c in OUR_LOSSES.items() if n in active):
        kwargs = {k: v for k, v in active[name].items() if k != "type"}
        assert set(kwargs) <= set(inspect.signature(cls.__init__).parameters)
        assert cls(**kwargs).loss_weight == kwargs["loss_weight"]

    if kind == "gan":
        assert cfg["name"].endswith("_GAN")  # never reuses (and archives) the pretrain's folder
        assert cfg["network_d"]["type"] == "dunet"
        assert "optim_d" in train
        assert "ganloss" in active
        assert "perceptualloss" in active
        pretrain = cfg["path"]["pretrain_network_g"]
        assert pretrain == (
            f"experiments/{scale}x_HybridMoE_{m['variant']}/models/net_g_ema_latest.safetensors"
        )
    elif kind == "realworld":
        assert cfg["name"] != f"{scale}x_HybridMoE_{m['variant']}"  # not the pretrain's folder
        assert cfg["network_d"]["type"] == "unetdiscriminatorsn"
        assert "optim_d" in train
        assert {"charbonnierloss", hybridmoe_loss.LPIPS_LOSS_NAME, "ganloss"} <= set(active)
        assert train["ema_power"] > 0
    else:
        assert "network_d" not in cfg
        assert "pretrain_network_g" not in cfg["path"]
        assert "charbonnierloss" in active
        assert train["ema_power"] > 0


MEASURED_LQ = {1: 64, 2: 64, 3: 48, 4: 48}


@pytest.mark.parametrize("path", [p for p in ALL_FILES if _kind(p) in ("fidelity", "gan")], ids=_id)
def test_training_file_says_what_is_measured(path: Path) -> None:
    """Every variant from scratch carries its measured GPU recipe; fine-tuning says it doesn't."""
    text = path.read_text(encoding="utf-8")
    header = text.split("#####", 1)[0]
    assert "starting values for lr, batch size and lq_size" not in text.lower()
    assert "placeholder" not in text.lower()
    m = NAME_RE.match(path.name)
    assert m
    scale, variant = int(m["scale"]), m["variant"]
    if _kind(path) == "gan":
        assert "NOT MEASURED YET" in header
        assert "MEASURED recipe" not in header
        return
    assert "MEASURED recipe" in header
    assert "NOT MEASURED" not in header
    assert ("This scale was not run" in header) == (scale not in (2, 4))
    cfg = _load(path)
    train_ds = cfg["datasets"]["train"]
    assert train_ds["batch_size_per_gpu"] == 16
    assert train_ds["accum_iter"] == 1
    assert train_ds["lq_size"] == MEASURED_LQ[scale]
    train = cfg["train"]
    assert train["optim_g"]["lr"] == (2e-4 if variant in ("M", "L") else 5e-4)
    assert train["optim_g"]["betas"] == [0.9, 0.99]
    assert train["optim_g"]["weight_decay"] == 0
    assert train["ema_decay"] == 0.999
    assert train["ema_power"] == 0.75
    assert train["warmup_iter"] == -1
    total = train["total_iter"]
    assert train["scheduler"]["milestones"] == [total // 2, total * 3 // 4]
    assert train["scheduler"]["gamma"] == 0.5
    weights = {e["type"]: e["loss_weight"] for e in train["losses"]}
    assert weights["charbonnierloss"] == 1.0
    if hybridmoe_arch.FACTORIES[cfg["network_g"]["type"]](scale=2).num_experts:
        assert weights[hybridmoe_loss.BALANCE_LOSS_NAME] == 0.01
    else:
        assert hybridmoe_loss.BALANCE_LOSS_NAME not in weights
    assert weights[hybridmoe_loss.FREQ_LOSS_NAME] == 0.05  # as in the fine-tuning check


def test_measured_recipe_matches_the_comparison_runs() -> None:
    """The recipe of the nano/s/m templates is the one compare_training.py trained with."""
    recipe = compare_training.RECIPE
    assert compare_training.LQ_SIZE == MEASURED_LQ == options.MEASURED_LQ
    for variant in ("nano", "s"):
        row = options.FROM_SCRATCH[variant]
        assert row["lr"] == recipe["lr"]
        assert row["batch"] == recipe["batch"]
        assert row["lq"] == compare_training.LQ_SIZE
    assert options.FROM_SCRATCH_SCHEDULE["ema_decay"] == recipe["ema_decay"]
    assert options.LOSS_WEIGHTS["balance"] == recipe["balance_weight"]


@pytest.mark.parametrize(
    ("variant", "config", "runs"),
    [
        ("m", "trunk192x12_lean", {(4, 4000), (4, 16000), (2, 3000), (2, 12000)}),
        ("l", "trunk256x16_lean", {(4, 16000), (2, 12000)}),
    ],
)
def test_low_rate_recipe_is_the_one_of_its_quality_records(
    variant: str, config: str, runs: set[tuple[int, int]]
) -> None:
    """m's and l's template rate and scales are those of the same-budget records of their
    networks (12 re-param blocks of 192 and 16 of 256; ``config`` in the records) at that rate,
    and the records name the registered variant."""
    row = options.FROM_SCRATCH[variant]
    assert row["lr"] != options.FROM_SCRATCH["s"]["lr"]
    arch, label = options.VARIANTS[variant]
    assert sweep.registered_name(config) == arch
    records = [
        json.loads(p.read_text())
        for p in (ROOT / "docs" / "measurements" / "quality").glob(f"*_{config}_x*.json")
    ]
    at_rate = [r for r in records if r["training"]["lr"] == row["lr"]]
    assert {(r["scale"], r["iterations"]) for r in at_rate} >= runs
    assert {r["scale"] for r in at_rate} == set(row["scales"])
    assert all(r["model"] == arch for r in at_rate)
    for scale in (4, 2):
        cfg = _load(OPTIONS / "train" / "HybridMoE" / f"{scale}x_HybridMoE_{label}_fidelity.yml")
        assert cfg["train"]["optim_g"]["lr"] == row["lr"]
    for scale, carried in ((2, False), (3, True)):
        path = OPTIONS / "train" / "HybridMoE" / f"{scale}x_HybridMoE_{label}_fidelity.yml"
        assert ("carried over from x2/x4" in path.read_text()) is carried, scale


RESTORE_FILES = [p for p in ALL_FILES if _kind(p) == "restore"]


@pytest.mark.parametrize("path", RESTORE_FILES, ids=_id)
def test_restore_file_is_x1_with_trainner_otf_degradations(path: Path) -> None:
    """scale 1, traiNNer's RealESRGANModel path (high_order_degradation) with the
    realesrgandataset, no resize anywhere, the second degradation and sinc filters off."""
    cfg = _load(path)
    assert cfg["scale"] == 1
    assert cfg["name"] == path.stem
    assert cfg["high_order_degradation"] is True  # build_model picks RealESRGANModel
    assert cfg.get("dataroot_lq_prob", 0) == 0  # (> 0 would pick RealESRGANPairedModel)
    train_ds = cfg["datasets"]["train"]
    assert train_ds["type"] == "realesrgandataset"
    assert train_ds["batch_size_per_gpu"] > 0
    assert cfg["queue_size"] % train_ds["batch_size_per_gpu"] == 0  # traiNNer asserts it
    assert cfg["queue_size"] > train_ds["batch_size_per_gpu"]  # the pool mixes batches
    for key in ("resize_prob", "resize_prob2"):
        assert cfg[key] == [0.0, 0.0, 1.0], key  # up, down, keep: always keep
    assert cfg["resize_mode_list3"] == ["bilinear"]  # same-size resize: an identity
    assert cfg["resize_mode_prob3"] == [1.0]
    assert cfg["lq_usm"] is False
    assert cfg["thicklines_prob"] == 0
    assert cfg["poisson_scale_range"] == [0.0, 0.0]  # the non-Gaussian noise branch is a no-op
    # the second degradation: nothing happens
    assert cfg["blur_prob2"] == 0
    assert cfg["gaussian_noise_prob2"] == 0
    assert cfg["noise_range2"] == [0.0, 0.0]
    assert cfg["poisson_scale_range2"] == [0.0, 0.0]
    assert cfg["jpeg_prob2"] == 0
    assert train_ds["sinc_prob"] == 0
    assert train_ds["final_sinc_prob"] == 0


@pytest.mark.parametrize("path", RESTORE_FILES, ids=_id)
def test_restore_file_degradations_equal_the_restore_preset(path: Path) -> None:
    """The committed values are those of hybridmoe.degrade.RESTORE (a changed preset without
    regenerated options fails here)."""
    cfg = _load(path)
    train_ds = cfg["datasets"]["train"]
    preset = degrade.RESTORE
    assert cfg["blur_prob"] == preset.blur_prob
    assert train_ds["kernel_list"] == ["aniso"]  # anisotropic Gaussian, any angle
    assert train_ds["kernel_prob"] == [1.0]
    assert train_ds["blur_sigma"] == list(preset.blur_sigma)
    side = degrade.kernel_size(preset.blur_sigma[1])
    assert train_ds["kernel_range"] == [side, side]
    assert cfg["gaussian_noise_prob"] == preset.noise_prob
    assert cfg["noise_range"] == list(preset.noise_sigma)  # both on the 0-255 scale
    assert cfg["gray_noise_prob"] == preset.noise_gray_prob
    assert cfg["jpeg_prob"] == preset.jpeg_prob
    assert cfg["jpeg_range"] == list(preset.jpeg_quality)


@pytest.mark.parametrize("path", RESTORE_FILES, ids=_id)
def test_restore_file_carries_the_measured_restoration_recipe(path: Path) -> None:
    """The training values are those of the measured x1 restoration run (sweep.py RECIPE,
    10,000 iterations, Charbonnier only), and the header says so."""
    text = path.read_text(encoding="utf-8")
    header = text.split("#####", 1)[0]
    assert "MEASURED recipe" in header
    assert "NOT MEASURED YET" not in text
    assert "Approximate:" in header  # names what traiNNer's options cannot match exactly
    cfg = _load(path)
    recipe = sweep.RECIPE
    assert cfg["use_amp"] is True
    assert cfg["amp_bf16"] is True
    train_ds = cfg["datasets"]["train"]
    assert train_ds["batch_size_per_gpu"] == recipe["batch"] == 16
    assert train_ds["accum_iter"] == 1
    assert train_ds["lq_size"] == 64
    assert train_ds["use_hflip"] is True
    assert train_ds["use_rot"] is True
    train = cfg["train"]
    assert train["optim_g"]["type"] == "AdamW"
    assert train["optim_g"]["lr"] == recipe["lr"] == 5e-4
    assert tuple(train["optim_g"]["betas"]) == recipe["betas"] == (0.9, 0.99)
    assert train["optim_g"]["weight_decay"] == 0
    assert train["ema_decay"] == recipe["ema_decay"] == 0.999
    assert train["warmup_iter"] == -1
    total = train["total_iter"]
    assert total == 10_000
    assert train["scheduler"]["milestones"] == [int(total * m) for m in recipe["milestones"]]
    assert train["scheduler"]["milestones"] == [5000, 7500]
    assert train["scheduler"]["gamma"] == recipe["gamma"]
    weights = {e["type"]: e["loss_weight"] for e in train["losses"]}
    expected = {"charbonnierloss": 1.0}
    if hybridmoe_arch.FACTORIES[cfg["network_g"]["type"]](scale=1).num_experts:
        expected[hybridmoe_loss.BALANCE_LOSS_NAME] = recipe["balance_weight"]
    assert weights == expected


def test_restore_template_follows_the_preset_it_is_generated_from() -> None:
    """make-options writes the preset's values, not copies of them."""
    changed = dataclasses.replace(
        degrade.RESTORE, blur_prob=0.25, noise_sigma=(2.0, 9.0), jpeg_quality=(50, 90)
    )
    cfg = yaml.safe_load(options.restore_config("s", changed))
    assert cfg["blur_prob"] == 0.25
    assert cfg["noise_range"] == [2.0, 9.0]
    assert cfg["jpeg_range"] == [50, 90]
    assert cfg["datasets"]["train"]["blur_sigma"] == list(changed.blur_sigma)
    default = yaml.safe_load(options.restore_config("s"))
    assert {k for k in cfg if cfg[k] != default[k]} == {"blur_prob", "noise_range", "jpeg_range"}


REALWORLD_FILE = OPTIONS / "train" / "HybridMoE" / "4x_HybridMoE_S_realworld.yml"


def test_realworld_file_is_x4_with_trainner_otf_degradations() -> None:
    """scale 4, traiNNer's RealESRGANModel path with the realesrgandataset, no sinc filters,
    Poisson noise, unsharp mask or thick lines; validation on the degraded Set14."""
    cfg = _load(REALWORLD_FILE)
    assert cfg["scale"] == degrade.REALWORLD4.scale == 4
    assert cfg["name"] == "4x_HybridMoE_S_RealWorld"
    assert cfg["high_order_degradation"] is True  # build_model picks RealESRGANModel
    assert cfg.get("dataroot_lq_prob", 0) == 0  # (> 0 would pick RealESRGANPairedModel)
    train_ds = cfg["datasets"]["train"]
    assert train_ds["type"] == "realesrgandataset"
    assert cfg["queue_size"] % train_ds["batch_size_per_gpu"] == 0  # traiNNer asserts it
    assert cfg["queue_size"] > train_ds["batch_size_per_gpu"]  # the pool mixes batches
    assert cfg["lq_usm"] is False
    assert cfg["thicklines_prob"] == 0
    assert cfg["poisson_scale_range"] == cfg["poisson_scale_range2"] == [0.0, 0.0]
    for key in ("sinc_prob", "sinc_prob2", "final_sinc_prob"):
        assert train_ds[key] == 0, key
    for key in ("resize_prob", "resize_prob2"):
        assert len(cfg[key]) == 3 and sum(cfg[key]) == pytest.approx(1.0, abs=1e-3), key
    for n in ("", "2", "3"):
        modes, probs = cfg[f"resize_mode_list{n}"], cfg[f"resize_mode_prob{n}"]
        assert modes == list(degrade.RESIZE_MODES)
        assert len(probs) == len(modes) and len(set(probs)) == 1  # equally likely
    val = cfg["datasets"]["val"]
    assert val["dataroot_gt"] == ["datasets/realworld4_eval/Set14/HR"]
    assert val["dataroot_lq"] == ["datasets/realworld4_eval/Set14/LQ"]
    for metric in ("psnr", "ssim"):
        assert cfg["val"]["metrics"][metric]["crop_border"] == 4
        assert cfg["val"]["metrics"][metric]["test_y_channel"] is True


def test_realworld_file_degradations_equal_the_realworld4_mapping() -> None:
    """The committed values are REALWORLD4's (a changed preset without regenerated options
    fails here): each traiNNer option against the preset field it stands for."""
    cfg = _load(REALWORLD_FILE)
    train_ds = cfg["datasets"]["train"]
    p = degrade.REALWORLD4
    # exactly what options.realworld_otf / realworld_kernels map REALWORLD4 to
    for key, value in options.realworld_otf(p).items():
        assert cfg[key] == value, key
    for key, value in options.realworld_kernels(p).items():
        assert train_ds[key] == value, key
    # stage 1
    assert cfg["blur_prob"] == p.blur_prob
    assert train_ds["kernel_list"] == ["aniso"] and train_ds["kernel_prob"] == [1.0]
    assert train_ds["blur_sigma"] == list(p.blur_sigma)
    assert train_ds["kernel_range"] == [degrade.kernel_size(p.blur_sigma[1])] * 2
    lo, hi = p.resize_range
    assert cfg["resize_range"] == [lo, hi]
    up, down, keep = cfg["resize_prob"]  # the factor uniform in (lo, hi), never kept
    assert up == pytest.approx((hi - 1) / (hi - lo), abs=1e-4)
    assert down == pytest.approx((1 - lo) / (hi - lo), abs=1e-4)
    assert keep == 0
    assert cfg["gaussian_noise_prob"] == p.noise_prob
    assert cfg["noise_range"] == list(p.noise_sigma)  # both on the 0-255 scale
    assert cfg["gray_noise_prob"] == p.noise_gray_prob
    assert cfg["jpeg_prob"] == p.jpeg_prob
    assert cfg["jpeg_range"] == list(p.jpeg_quality)
    # stage 2: its share of the images times each part's probability, no resize
    assert cfg["blur_prob2"] == pytest.approx(p.second_prob * p.second_blur_prob)
    assert train_ds["kernel_list2"] == ["aniso"] and train_ds["kernel_prob2"] == [1.0]
    assert train_ds["blur_sigma2"] == list(p.second_blur_sigma)
    assert train_ds["kernel_range2"] == [degrade.kernel_size(p.second_blur_sigma[1])] * 2
    assert cfg["resize_prob2"] == [0.0, 0.0, 1.0]
    assert cfg["gaussian_noise_prob2"] == pytest.approx(p.second_prob * p.second_noise_prob)
    assert cfg["noise_range2"] == list(p.second_noise_sigma)
    assert cfg["gray_noise_prob2"] == p.noise_gray_prob
    # final: resize to HR / scale (traiNNer's own), then JPEG
    assert cfg["jpeg_prob2"] == p.final_jpeg_prob
    assert cfg["jpeg_range2"] == list(p.final_jpeg_quality)


def test_realworld_file_carries_the_harness_gan_recipe() -> None:
    """The GAN weights and rates are sweep.GAN_RECIPE's, batch/betas/EMA sweep.RECIPE's, the
    rate constant, the length REALWORLD_RECIPE's; the header says what is approximate."""
    assert options.REALWORLD_GAN == sweep.GAN_RECIPE
    g, recipe, rw = sweep.GAN_RECIPE, sweep.RECIPE, options.REALWORLD_RECIPE
    text = REALWORLD_FILE.read_text(encoding="utf-8")
    header = text.split("#####", 1)[0]
    assert "Approximate:" in header
    assert "--degrade realworld4" in header and "--crop 64" in header
    cfg = _load(REALWORLD_FILE)
    assert cfg["use_amp"] is True and cfg["amp_bf16"] is True
    train_ds = cfg["datasets"]["train"]
    assert train_ds["batch_size_per_gpu"] == recipe["batch"] == rw["batch"] == 16
    assert train_ds["accum_iter"] == 1
    assert train_ds["lq_size"] == rw["lq"] == 64  # --crop 64: HR 256
    # s plus the texture head with its noise injection, as the shipped model
    assert cfg["network_g"] == {"type": "hybridmoe_s", "texture_head": True, "noise": True}
    assert {k: v for k, (v, _) in options.REALWORLD_OPTIONS.items()} == {
        k: v
        for k, v in sweep.CONFIGS["trunk96x12_lean_noise"].items()
        if k in ("texture_head", "noise")
    }
    assert cfg["network_d"] == {
        "type": "unetdiscriminatorsn",
        "num_feat": g["d_width"],
        "skip_connection": True,
    }
    assert cfg["path"]["pretrain_network_g"] == (
        "experiments/4x_HybridMoE_S/models/net_g_ema_latest.safetensors"
    )
    assert cfg["path"]["strict_load_g"] is False  # the fidelity model has no texture head
    train = cfg["train"]
    for opt, lr in (("optim_g", g["lr"]), ("optim_d", g["lr_d"])):
        assert train[opt]["type"] == "AdamW"
        assert train[opt]["lr"] == lr == 1e-4
        assert tuple(train[opt]["betas"]) == recipe["betas"] == rw["betas"]
        assert train[opt]["weight_decay"] == 0
    assert train["scheduler"]["type"] == "MultiStepLR"
    assert train["scheduler"]["milestones"] == []  # a constant rate
    assert train["warmup_iter"] == -1
    assert train["ema_decay"] == recipe["ema_decay"] == rw["ema_decay"]
    assert train["total_iter"] == rw["iterations"]
    losses = {e["type"]: e for e in train["losses"]}
    assert list(losses) == ["charbonnierloss", hybridmoe_loss.LPIPS_LOSS_NAME, "ganloss"]
    assert losses["charbonnierloss"]["loss_weight"] == g["pixel_weight"]
    lpips = losses[hybridmoe_loss.LPIPS_LOSS_NAME]
    assert lpips == {
        "type": hybridmoe_loss.LPIPS_LOSS_NAME,
        "loss_weight": g["lpips_weight"],
        "weights": "experiments/pretrained_models/lpips_vgg.safetensors",
        "net": "vgg",
    }
    params = inspect.signature(hybridmoe_loss.HybridMoELPIPSLoss.__init__).parameters
    assert set(lpips) - {"type"} <= set(params)
    assert losses["ganloss"] == {"type": "ganloss", "gan_type": "vanilla", "loss_weight": 0.1}
    assert losses["ganloss"]["loss_weight"] == g["gan_weight"]
    # hybridmoe_s has no MoE layers, so no balance loss (the harness adds it only with MoE)
    assert hybridmoe_arch.FACTORIES["hybridmoe_s"](scale=4).num_experts == 0


def test_realworld_template_follows_the_preset_it_is_generated_from() -> None:
    """make-options writes the preset's values, not copies of them."""
    changed = dataclasses.replace(
        degrade.REALWORLD4,
        blur_sigma=(0.5, 2.0),
        resize_range=(0.5, 1.0),
        second_prob=0.25,
        final_jpeg_quality=(50, 90),
    )
    cfg = yaml.safe_load(options.realworld_config(changed))
    default = yaml.safe_load(options.realworld_config())
    assert cfg["resize_range"] == [0.5, 1.0]
    assert cfg["resize_prob"] == [0.0, 1.0, 0.0]
    assert cfg["blur_prob2"] == pytest.approx(0.25 * 0.8)
    assert cfg["gaussian_noise_prob2"] == pytest.approx(0.25 * 0.8)
    assert cfg["jpeg_range2"] == [50, 90]
    assert cfg["datasets"]["train"]["blur_sigma"] == [0.5, 2.0]
    assert cfg["datasets"]["train"]["kernel_range"] == [13, 13]
    assert {k for k in cfg if cfg[k] != default[k]} == {
        "resize_range",
        "resize_prob",
        "blur_prob2",
        "gaussian_noise_prob2",
        "jpeg_range2",
        "datasets",
    }


def test_resize_probs_split_the_range_at_one() -> None:
    assert options.resize_probs((0.3, 1.5)) == [0.4167, 0.5833, 0.0]
    assert options.resize_probs((0.6, 1.2), 0.5) == [0.1667, 0.3333, 0.5]
    assert options.resize_probs((1.0, 1.0)) == [0.0, 0.0, 1.0]
    assert options.resize_probs((1.0, 2.0)) == [1.0, 0.0, 0.0]


def test_make_options_check_reports_a_stale_restore_template(tmp_path: Path) -> None:
    """--check exits 0 on a fresh copy and 1 naming the file once a restore file differs."""
    options.write(tmp_path)
    assert options.main(["--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / "train" / "HybridMoE" / "1x_HybridMoE_S_restore.yml"
    text = stale.read_text(encoding="utf-8")
    assert "\njpeg_prob: 0.7\n" in text
    stale.write_text(text.replace("\njpeg_prob: 0.7\n", "\njpeg_prob: 0.5\n"), encoding="utf-8")
    assert options.diff(tmp_path) == ["differs: train/HybridMoE/1x_HybridMoE_S_restore.yml"]
    assert options.main(["--check", "--out", str(tmp_path)]) == 1


def test_make_options_names_files_it_does_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file an older version wrote stayed without a word after a write ('wrote 0 files'),
    while --check kept failing on it and install-trainner would ship it."""
    options.write(tmp_path)
    old = tmp_path / "train" / "HybridMoE" / "1x_HybridMoE_M_restore.yml"
    old.write_text("name: old\n", encoding="utf-8")
    capsys.readouterr()
    assert options.main(["--out", str(tmp_path), "--overwrite"]) == 0
    out = capsys.readouterr()
    assert "wrote 0 file(s)" in out.out
    assert "note: 1 file(s) under" in out.err and "1x_HybridMoE_M_restore.yml" in out.err
    assert old.exists()  # never removed: it may be the user's own


def test_make_options_in_a_trainner_checkout_ignores_its_other_option_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in a traiNNer-redux checkout, every option file of the other architectures was
    called "not made by make-options (yours, or of an older version)" and --check failed."""
    for rel in ("_templates/train/ESRGAN/ESRGAN.yml", "train/SPAN/SPAN.yml", "test/x.yml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("name: theirs\n", encoding="utf-8")
    assert options.main(["--out", str(tmp_path)]) == 0
    assert "note:" not in capsys.readouterr().err
    assert options.diff(tmp_path) == []
    assert options.main(["--check", "--out", str(tmp_path)]) == 0
    mine = tmp_path / "train" / "HybridMoE" / "my_4x_s.yml"  # a copy in a folder it writes
    mine.write_text("name: mine\n", encoding="utf-8")
    assert options.diff(tmp_path) == ["not generated: train/HybridMoE/my_4x_s.yml"]


def test_make_options_writes_under_the_current_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not under the package (or the checkout) wherever it is run from."""
    monkeypatch.chdir(tmp_path)
    assert options.main([]) == 0
    assert "wrote 69 file(s) under options (0 unchanged)" in capsys.readouterr().out
    assert options.diff(tmp_path / "options") == []
    assert options.main(["--check"]) == 0
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    capsys.readouterr()
    assert options.main(["--check"]) == 2
    assert capsys.readouterr().err.startswith("error: no options folder at options;")


def test_make_options_keeps_edited_files_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "myopts"
    assert options.main(["--out", str(out)]) == 0
    edited = out / "onnx" / "HybridMoE" / "1x_HybridMoE_Nano.yml"
    edited.write_text(edited.read_text(encoding="utf-8") + "# my edit\n", encoding="utf-8")
    removed = out / "test" / "HybridMoE" / "2x_HybridMoE_S.yml"
    removed.unlink()
    capsys.readouterr()
    # refused: the edit is kept and nothing else is written either
    assert options.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 file(s) under") and err.count("\n") == 1
    assert "onnx/HybridMoE/1x_HybridMoE_Nano.yml" in err and "--overwrite" in err
    assert edited.read_text(encoding="utf-8").endswith("# my edit\n")
    assert not removed.exists()
    # files equal to the output are left alone: only the two others are written
    stamp = out / "test" / "HybridMoE" / "4x_HybridMoE_L.yml"
    os.utime(stamp, (0, 0))
    assert options.main(["--out", str(out), "--overwrite"]) == 0
    assert "wrote 2 file(s)" in capsys.readouterr().out
    assert options.diff(out) == []
    assert stamp.stat().st_mtime == 0
    assert sorted(p.name for p in out.rglob("*") if not p.name.endswith(".yml")) == [
        "HybridMoE",
        "HybridMoE",
        "HybridMoE",
        "onnx",
        "test",
        "train",
    ]  # no temporary file left


def test_make_options_says_how_many_files_a_failed_write_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk midway: the files written before it stayed, and the error did not say so.
    The same command run again writes the rest (the written ones are equal: left alone)."""
    out = tmp_path / "opts"
    real, calls = Path.write_bytes, []

    def write_bytes(path: Path, data: bytes) -> int:
        calls.append(path)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert options.main(["--out", str(out)]) == 2
    names = list(options.generate())  # in the order they are written
    assert capsys.readouterr().err == (
        f"error: cannot write {out / names[3]}: No space left on device; 3 of the "
        f"{len(names)} file(s) to write were written before this failure; re-running the same "
        f"command writes the rest\n"
    )
    assert sum(1 for p in out.rglob("*") if p.is_file()) == 3  # and no temporary file
    monkeypatch.undo()
    assert options.main(["--out", str(out)]) == 0
    assert f"wrote {len(names) - 3} file(s) under {out} (3 unchanged)" in capsys.readouterr().out
    assert options.diff(out) == []


def test_make_options_refuses_a_file_as_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "opts"
    out.write_text("not a folder")
    assert options.main(["--out", str(out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_make_options_refuses_an_unwritable_folder(
    unwritable_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert options.main(["--out", str(unwritable_folder / "opts")]) == 2
    assert f"{unwritable_folder} is not writable" in capsys.readouterr().err
    assert not (unwritable_folder / "opts").exists()


def test_committed_compare_configs_equal_generator_output(tmp_path: Path) -> None:
    """docs/compare_configs is the record of the GPU comparison runs: it cannot drift."""
    assert compare_training.main([*COMPARE_ARGS, "--out", str(tmp_path)]) == 0
    expected = {p.name: p.read_bytes() for p in tmp_path.glob("*.yml")}
    committed = {p.name: p.read_bytes() for p in COMPARE_CONFIGS.glob("*.yml")}
    assert len(expected) == 16
    assert sorted(committed) == sorted(expected)
    for name, data in expected.items():
        assert committed[name] == data, name


def test_yaml_float_formatting() -> None:
    assert options.yaml_float(5e-4) == "!!float 5e-4"
    assert options.yaml_float(2.5e-4) == "!!float 2.5e-4"
    assert options.yaml_float(1e-3) == "!!float 1e-3"
    assert yaml.safe_load(f"lr: {options.yaml_float(2.5e-4)}")["lr"] == 2.5e-4


STRICT_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from traiNNer.utils.options import yaml_load
    out = {}
    for path in sys.argv[2:]:
        try:
            opt, _ = yaml_load(path)
            out[path] = {"ok": True, "scale": opt.scale, "type": opt.network_g["type"]}
        except Exception as e:
            out[path] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    not os.environ.get("TRAINNER_REDUX_DIR"),
    reason="TRAINNER_REDUX_DIR is not set: traiNNer-redux's strict loader is not available",
)
def test_every_file_loads_with_trainner_strict_loader() -> None:
    trainner = Path(os.environ["TRAINNER_REDUX_DIR"]).resolve()
    assert (trainner / "traiNNer" / "utils" / "options.py").is_file(), trainner
    proc = subprocess.run(
        [sys.executable, "-c", STRICT_LOADER, str(trainner), *map(str, ALL_FILES)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=trainner,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = {_id(Path(p)): r["error"] for p, r in results.items() if not r["ok"]}
    assert not failures, json.dumps(failures, indent=1)
    for p, r in results.items():
        m = NAME_RE.match(Path(p).name)
        assert m
        assert r["scale"] == int(m["scale"])
        assert r["type"] == f"hybridmoe_{m['variant'].lower()}"
    assert len(results) == len(ALL_FILES)
