"""HybridMoE inside a real traiNNer-redux checkout (CPU).

Skipped unless ``TRAINNER_REDUX_DIR`` points at a traiNNer-redux checkout whose Python
dependencies are installed in this interpreter. The checkout is never modified: it is copied
to a temporary folder and our files are installed there with hybridmoe install-trainner.

(a) traiNNer-redux's own ``tests/test_archs/test_archs.py`` for every registered HybridMoE
    name (scales 1-4, inference + one training step), one subprocess per name.
(b) traiNNer-redux's real ``train.py`` / ``test.py`` on a tiny data set: hybridmoe_nano ×2
    from our fidelity template (Charbonnier + frequency losses, EMA, tiled
    validation on Set5 ``bird``), then resuming from the training state, then ``test.py`` on
    the produced checkpoint. The CPU runs go through ``train_shim.py`` of the traiNNer-redux
    run tools (folder ``TRAINNER_TOOLS``, default ``.ref/tools``; it lets train.py run without
    CUDA and turns a crash inside the training loop, which train.py exits 0 from, into exit 3);
    the data set is built with that folder's ``make_tiny_dataset.py`` from tests/data.
(c) ``train.py`` on our ×1 restoration template ``1x_HybridMoE_Nano_restore.yml`` made
    CPU-sized: traiNNer-redux's on-the-fly degradations (RealESRGANDataset + RealESRGANModel)
    make the LQ from HR-only crops, validation on a ``hybridmoe make-degraded`` copy of two Set5
    images. RealESRGANModel is CUDA-only as written, so the run goes through
    ``tests/trainner_cpu_otf.py`` (its docstring names the two CUDA dependencies and the CPU
    stand-ins) in front of ``train_shim.py``.
(d) ``train.py`` on our ×4 real-world GAN template ``4x_HybridMoE_S_realworld.yml`` made
    CPU-sized the same way: second-order on-the-fly degradations, ``hybridmoe_s`` started from
    the shipped ``4x_HybridMoE_S``, ``unetdiscriminatorsn``, Charbonnier + ``hybridmoelpipsloss``
    (a weights file of the real layout with random values) + GAN loss.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = ROOT / "tests" / "data"
TRAINNER = os.environ.get("TRAINNER_REDUX_DIR", "")
TIMEOUT = 170  # seconds per subprocess: every test stays under 3 minutes on 2 cores

pytestmark = pytest.mark.skipif(
    not TRAINNER,
    reason="TRAINNER_REDUX_DIR is not set: no traiNNer-redux checkout to integrate with",
)

ARCH_NAMES = ("hybridmoe", "hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l")
SMOKE_NAME = "hmoe_nano_x2_cpu_smoke"
FIRST_ITERS = 4
RESUMED_ITERS = 6


def tools_dir() -> Path | None:
    """The folder with train_shim.py and make_tiny_dataset.py, if available."""
    env = os.environ.get("TRAINNER_TOOLS")
    cand = Path(env) if env else ROOT / ".ref" / "tools"
    if (cand / "train_shim.py").is_file() and (cand / "make_tiny_dataset.py").is_file():
        return cand.resolve()
    return None


def need_tools() -> Path:
    tools = tools_dir()
    if tools is None:
        pytest.skip(
            "train_shim.py / make_tiny_dataset.py not found: set TRAINNER_TOOLS to the "
            "traiNNer-redux run tools folder (default .ref/tools)"
        )
    return tools


def sh(
    cmd: list[str], cwd: Path, timeout: int = TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, return it (output captured)."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def tail(proc: subprocess.CompletedProcess[str], n: int = 4000) -> str:
    return (proc.stdout + "\n" + proc.stderr)[-n:]


# ---------------------------------------------------------------------------------------------
# Fixtures: a temporary traiNNer-redux copy with HybridMoE installed, and a tiny data set
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workcopy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = Path(TRAINNER).resolve()
    assert (src / "train.py").is_file(), f"{src} is not a traiNNer-redux checkout"
    dst = tmp_path_factory.mktemp("trainner") / "trainner"
    shutil.copytree(
        src,
        dst,
        ignore=shutil.ignore_patterns(
            ".git", "datasets", "docs", "experiments", "results", "tb_logger", "__pycache__"
        ),
    )
    proc = sh([sys.executable, "-m", "hybridmoe", "install-trainner", "install", str(dst)], ROOT)
    assert proc.returncode == 0, tail(proc)
    return dst


@pytest.fixture(scope="module")
def smoke_data(workcopy: Path) -> Path:
    tools = need_tools()
    out = workcopy / "datasets" / "data"
    proc = sh(
        [
            sys.executable,
            str(tools / "make_tiny_dataset.py"),
            str(out),
            "--train-hr-dir", str(TEST_DATA / "T91_sample"),
            "--n-train", "16",
            "--crop", "96",
            "--val-hr-dir", str(TEST_DATA / "Set5" / "HR"),
            "--val-names", "bird",
            "--scale", "2",
            "--check-against", str(TEST_DATA / "Set5" / "LR_bicubic" / "X2"),
        ],
        ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    assert "worst max abs diff = 0" in proc.stdout  # LR identical to Set5's canonical bicubic
    return out


def smoke_config(total_iter: int) -> dict[str, Any]:
    """Our ×2 nano fidelity template, made CPU-sized."""
    cfg = yaml.safe_load(
        (ROOT / "options/train/HybridMoE/2x_HybridMoE_Nano_fidelity.yml").read_text()
    )
    cfg.update(
        name=SMOKE_NAME,
        use_amp=False,
        amp_bf16=False,
        use_channels_last=False,
        manual_seed=1024,
    )
    cfg["datasets"]["train"].update(
        dataroot_gt=["datasets/data/train/hr"],
        dataroot_lq=["datasets/data/train/lr"],
        lq_size=32,
        batch_size_per_gpu=2,
        num_worker_per_gpu=0,
        pin_memory=False,
        persistent_workers=False,
        prefetch_factor=None,
    )
    cfg["datasets"]["val"].update(
        dataroot_gt=["datasets/data/val/hr"], dataroot_lq=["datasets/data/val/lr"], pin_memory=False
    )
    cfg["train"].update(total_iter=total_iter, warmup_iter=-1)
    cfg["train"]["scheduler"]["milestones"] = [1000]
    # validation: once, after training (val_freq beyond total_iter), tiled
    cfg["val"].update(val_freq=1000, tile_size=48, tile_overlap=8, save_img=False)
    cfg["logger"].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    return cfg


def write_config(workcopy: Path, cfg: dict[str, Any], name: str) -> str:
    rel = f"options/train/HybridMoE/{name}.yml"
    path = workcopy / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return rel


def run_shim(workcopy: Path, script: str, cfg_rel: str, *extra: str) -> tuple[Any, dict[str, Any]]:
    tools = need_tools()
    stats = workcopy / f"shim_{script}_{Path(cfg_rel).stem}.json"
    proc = sh(
        [sys.executable, str(tools / "train_shim.py"), script, "-opt", cfg_rel, *extra],
        workcopy,
        env={"TRAINNER_SHIM_STATS": str(stats)},
    )
    info = json.loads(stats.read_text()) if stats.is_file() else {}
    return proc, info


def newest(paths: list[Path]) -> Path:
    assert paths, "no file"
    return max(paths, key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def trained(workcopy: Path, smoke_data: Path) -> dict[str, Any]:
    """One real train.py run: FIRST_ITERS iterations, checkpoints every 2."""
    cfg_rel = write_config(workcopy, smoke_config(FIRST_ITERS), "cpu_smoke")
    proc, info = run_shim(workcopy, "train.py", cfg_rel)
    exp = workcopy / "experiments" / SMOKE_NAME
    logs = sorted(exp.glob("train_*.log"))
    return {"proc": proc, "info": info, "exp": exp, "log": logs[-1].read_text() if logs else ""}


# ---------------------------------------------------------------------------------------------
# (a) traiNNer-redux's own arch tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_trainner_arch_tests(workcopy: Path, name: str) -> None:
    # test ids look like test_<name>_<s>x_{} / train_<name>_<s>x_{}
    expr = " or ".join(f"{name}_{s}x" for s in (1, 2, 3, 4))
    proc = sh(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_archs/test_archs.py",
            "-k",
            expr,
        ],
        workcopy,
    )
    assert proc.returncode == 0, tail(proc)
    m = re.search(r"(\d+) passed", proc.stdout)
    assert m, tail(proc)
    assert int(m[1]) == 8, tail(proc)  # 4 scales × (inference, training)
    assert "failed" not in proc.stdout


# ---------------------------------------------------------------------------------------------
# (b) train.py, resume, test.py
# ---------------------------------------------------------------------------------------------


def test_train_py_cpu_smoke(trained: dict[str, Any]) -> None:
    proc, info, exp, log = trained["proc"], trained["info"], trained["exp"], trained["log"]
    assert proc.returncode == 0, tail(proc)
    assert info.get("exit_code") == 0, info
    assert info.get("exceptions_logged") == 0, info
    assert "End of training" in log
    assert "Network [bold]HybridMoE[/bold]" in log
    assert "Loss [bold]HybridMoEFreqLoss[/bold]" in log
    # nano (one level, no MoE layer): the template carries no balance loss
    assert "HybridMoEBalanceLoss" not in log
    # the per-iteration loss lines carry both labels, with finite values
    for label in ("l_g_hybridmoefreq", "l_g_charbonnier"):
        values = [float(v) for v in re.findall(rf"{label}: ([0-9.eE+-]+)", log)]
        assert len(values) >= FIRST_ITERS, label
        assert all(0 < v < 10 for v in values), (label, values)  # finite, positive
    psnr = re.findall(r"# psnr : ([0-9.]+)", log)
    assert psnr, "no validation PSNR in the log"
    assert 15.0 < float(psnr[-1]) < 50.0

    # checkpoints in traiNNer-redux's layout: EMA release model + online weights + states
    models = exp / "models"
    for it in (2, FIRST_ITERS):
        assert (models / f"net_g_ema_{it}.safetensors").is_file()
        assert (models / "resume_models" / f"net_g_{it}.safetensors").is_file()
        assert (exp / "training_states" / f"{it}.state").is_file()
    assert (models / "net_g_ema_latest.safetensors").is_file()


def test_checkpoint_is_safetensors_with_metadata(trained: dict[str, Any]) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    import hybridmoe_arch
    from hybridmoe.checkpoint import load_checkpoint

    path = trained["exp"] / "models" / "net_g_ema_latest.safetensors"
    assert path.is_file(), tail(trained["proc"])
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta is not None
    assert "metadata" in meta
    hp = json.loads(meta["metadata"])
    assert hp["scale"] == 2
    assert hp["dim"] == 64
    assert hp["levels"] == 1
    sd = load_file(str(path))
    net = hybridmoe_arch.hybridmoe_nano(scale=2)
    net.load_state_dict(sd, strict=True)
    desc = load_checkpoint(path)  # through spandrel
    assert desc.scale == 2
    with torch.no_grad():
        out = desc.model(torch.rand(1, 3, 12, 10))
    assert out.shape == (1, 3, 24, 20)


def test_resume_from_training_state(workcopy: Path, trained: dict[str, Any]) -> None:
    assert trained["proc"].returncode == 0, tail(trained["proc"])
    cfg_rel = write_config(workcopy, smoke_config(RESUMED_ITERS), "cpu_smoke_resume")
    proc, info = run_shim(workcopy, "train.py", cfg_rel, "--auto_resume")
    assert proc.returncode == 0, tail(proc)
    assert info.get("exceptions_logged") == 0, info
    exp = trained["exp"]
    log = newest(list(exp.glob("train_*.log"))).read_text()
    assert f"Resuming training from epoch: 0, iter: {FIRST_ITERS}" in log
    assert "End of training" in log
    iters = [int(v) for v in re.findall(r"iter:\s+(\d+),", log)]
    assert iters
    assert min(iters) > FIRST_ITERS
    assert max(iters) == RESUMED_ITERS
    assert "l_g_hybridmoefreq" in log
    assert (exp / "models" / f"net_g_ema_{RESUMED_ITERS}.safetensors").is_file()
    assert (exp / "training_states" / f"{RESUMED_ITERS}.state").is_file()


def test_test_py_on_the_checkpoint(workcopy: Path, trained: dict[str, Any]) -> None:
    assert trained["proc"].returncode == 0, tail(trained["proc"])
    cfg = yaml.safe_load((ROOT / "options/test/HybridMoE/2x_HybridMoE_Nano.yml").read_text())
    cfg.update(name="hmoe_nano_x2_cpu_test", use_amp=False, amp_bf16=False, use_channels_last=False)
    cfg["datasets"]["val"] = {
        "name": "bird",
        "type": "pairedimagedataset",
        "dataroot_gt": ["datasets/data/val/hr"],
        "dataroot_lq": ["datasets/data/val/lr"],
        "pin_memory": False,
    }
    cfg["path"]["pretrain_network_g"] = (
        f"experiments/{SMOKE_NAME}/models/net_g_ema_{FIRST_ITERS}.safetensors"
    )
    cfg["val"].update(tile_size=48, tile_overlap=8, save_img=True, metrics_enabled=True)
    rel = "options/test/HybridMoE/cpu_smoke_test.yml"
    (workcopy / rel).parent.mkdir(parents=True, exist_ok=True)
    (workcopy / rel).write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc, info = run_shim(workcopy, "test.py", rel)
    assert proc.returncode == 0, tail(proc)
    assert info.get("exceptions_logged") == 0, info
    results = workcopy / "results" / "hmoe_nano_x2_cpu_test"
    log = newest(list(results.glob("test_*.log"))).read_text()
    assert "Loading HybridMoE model from" in log
    assert f"net_g_ema_{FIRST_ITERS}.safetensors" in log
    psnr = re.findall(r"# psnr : ([0-9.]+)", log)
    assert psnr, log[-2000:]
    assert 15.0 < float(psnr[-1]) < 50.0
    assert list(results.rglob("*.png")), "test.py wrote no image"


# ---------------------------------------------------------------------------------------------
# (c) train.py on the x1 restoration template (traiNNer-redux's on-the-fly degradations)
# ---------------------------------------------------------------------------------------------

RESTORE_NAME = "hmoe_nano_x1_restore_cpu_smoke"
RESTORE_ITERS = 4
RESTORE_BATCH = 2
RESTORE_LQ = 32
RESTORE_TRAIN = ("t1.png", "t13.png", "t15.png", "t19.png")  # HR only: LQ is made on the fly
RESTORE_VAL = ("butterfly.png", "head.png")
CPU_OTF = ROOT / "tests" / "trainner_cpu_otf.py"


def otf_data(
    workcopy: Path, tmp_path_factory: pytest.TempPathFactory, sub: str, preset: str
) -> Path:
    """datasets/<sub>/train/hr (HR crops source) and val/set/{HR,LQ}: two Set5 images degraded
    with make-degraded's ``preset`` (seed 0)."""
    out = workcopy / "datasets" / sub
    hr = out / "train" / "hr"
    hr.mkdir(parents=True)
    for name in RESTORE_TRAIN:
        shutil.copy(TEST_DATA / "T91_sample" / name, hr / name)
    src = tmp_path_factory.mktemp(f"{sub}_val") / "HR"
    src.mkdir()
    for name in RESTORE_VAL:
        shutil.copy(TEST_DATA / "Set5" / "HR" / name, src / name)
    proc = sh(
        [sys.executable, "-m", "hybridmoe", "make-degraded", str(src), "--preset", preset,
         "--out", str(out / "val"), "--name", "set", "--seed", "0"],
        ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    for folder in ("HR", "LQ"):
        assert sorted(p.name for p in (out / "val" / "set" / folder).iterdir()) == list(RESTORE_VAL)
    return out


def cpu_sized_otf(
    cfg: dict[str, Any], name: str, sub: str, *, iters: int, batch: int, lq: int
) -> dict[str, Any]:
    """An on-the-fly degradation template made CPU-sized: datasets/<sub>, ``iters`` iterations
    of ``batch`` LR crops of ``lq``, every trained LQ/GT batch saved to debug/otf, one
    validation after training."""
    assert cfg["high_order_degradation"] is True, "the template no longer uses the OTF pipeline"
    cfg.update(
        name=name,
        num_gpu=0,
        use_amp=False,
        amp_bf16=False,
        use_channels_last=False,
        use_compile=False,
        manual_seed=1024,
        # the pool fills in 2 iterations, then iterations 3-4 swap batches with it
        queue_size=2 * batch,
        # traiNNer saves every LQ/GT batch it trains on to debug/otf
        high_order_degradations_debug=True,
        high_order_degradations_debug_limit=iters,
    )
    cfg["datasets"]["train"].update(
        dataroot_gt=[f"datasets/{sub}/train/hr"],
        lq_size=lq,
        batch_size_per_gpu=batch,
        num_worker_per_gpu=0,
        pin_memory=False,
        persistent_workers=False,
        prefetch_factor=None,
    )
    cfg["datasets"]["val"].update(
        dataroot_gt=[f"datasets/{sub}/val/set/HR"],
        dataroot_lq=[f"datasets/{sub}/val/set/LQ"],
        pin_memory=False,
    )
    cfg["train"].update(total_iter=iters, warmup_iter=-1)
    cfg["val"].update(val_freq=1000, save_img=False)  # once, after training
    cfg["logger"].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    return cfg


def run_otf(workcopy: Path, cfg: dict[str, Any], label: str) -> dict[str, Any]:
    """One real train.py run of ``cfg`` through the CPU OTF runner: the process, the shim's
    statistics, the experiment folder, its log and the debug/otf folder of its batches."""
    tools = need_tools()
    cfg_rel = write_config(workcopy, cfg, f"cpu_{label}_smoke")
    stats = workcopy / f"shim_train_{label}.json"
    otf = workcopy / "debug" / "otf"
    shutil.rmtree(otf, ignore_errors=True)  # another smoke's tiles
    proc = sh(
        [sys.executable, str(CPU_OTF), str(tools / "train_shim.py"), "train.py", "-opt", cfg_rel],
        workcopy,
        env={"TRAINNER_SHIM_STATS": str(stats)},
    )
    info = json.loads(stats.read_text()) if stats.is_file() else {}
    exp = workcopy / "experiments" / cfg["name"]
    logs = sorted(exp.glob("train_*.log"))
    return {
        "proc": proc,
        "info": info,
        "exp": exp,
        "log": logs[-1].read_text() if logs else "",
        "otf": otf,
    }


@pytest.fixture(scope="module")
def restore_data(workcopy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """datasets/restore: HR crops source and a restore-preset copy of two Set5 images."""
    return otf_data(workcopy, tmp_path_factory, "restore", "restore")


def restore_config() -> dict[str, Any]:
    """Our x1 nano restoration template, made CPU-sized (both pool branches run in 4 iterations)."""
    cfg = yaml.safe_load(
        (ROOT / "options/train/HybridMoE/1x_HybridMoE_Nano_restore.yml").read_text()
    )
    cfg = cpu_sized_otf(
        cfg, RESTORE_NAME, "restore", iters=RESTORE_ITERS, batch=RESTORE_BATCH, lq=RESTORE_LQ
    )
    cfg["train"]["scheduler"]["milestones"] = [1000]
    return cfg


@pytest.fixture(scope="module")
def restored(workcopy: Path, restore_data: Path) -> dict[str, Any]:
    """One real train.py run of the restoration template through the CPU OTF runner."""
    return run_otf(workcopy, restore_config(), "restore")


def psnr_u8(a: Any, b: Any) -> float:
    """PSNR in dB of two uint8 arrays (inf when identical)."""
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def test_restore_template_trains_with_otf_degradations(restored: dict[str, Any]) -> None:
    proc, info, log = restored["proc"], restored["info"], restored["log"]
    assert proc.returncode == 0, tail(proc)
    assert info.get("exit_code") == 0, info
    assert info.get("exceptions_logged") == 0, info
    assert "[cpu_otf]" in proc.stderr
    assert "End of training" in log
    # traiNNer's on-the-fly path: HR-only dataset, LQ synthesised by RealESRGANModel
    assert "Dataset [bold]RealESRGANDataset[/bold] - Train Dataset is built" in log
    assert "Model [bold]RealESRGANModel[/bold] is created" in log
    assert "Network [bold]HybridMoE[/bold]({'scale': 1})" in log
    assert re.search(rf"HR crop size:\s+{RESTORE_LQ}\s+LR crop size:\s+{RESTORE_LQ}\b", log), log
    loss = [float(v) for v in re.findall(r"l_g_charbonnier: ([0-9.eE+-]+)", log)]
    assert len(loss) == RESTORE_ITERS, loss
    assert all(0 < v < 1 for v in loss), loss
    psnr = re.findall(r"# psnr : ([0-9.]+)", log)
    assert psnr, "no validation PSNR in the log"
    assert 15.0 < float(psnr[-1]) < 50.0


def test_restore_training_pairs_are_degraded_at_scale_1(restored: dict[str, Any]) -> None:
    """The LQ/GT batches traiNNer trained on (its debug/otf tiles): same size, LQ degraded."""
    import numpy as np
    from PIL import Image

    assert restored["proc"].returncode == 0, tail(restored["proc"])
    otf = restored["otf"]
    values = []
    for i in range(1, RESTORE_ITERS + 1):
        lq = np.asarray(Image.open(otf / f"{i:06d}_otf_lq.png").convert("RGB"))
        gt = np.asarray(Image.open(otf / f"{i:06d}_otf_gt.png").convert("RGB"))
        # a batch is saved as one row of tiles: x1 means LQ and GT have the same size
        assert lq.shape == gt.shape == (RESTORE_LQ, RESTORE_BATCH * RESTORE_LQ, 3), i
        values.append(psnr_u8(lq, gt))
    # each stage is on or off per batch: a clean batch has p = 0.5 * 0.3 * 0.3 (no blur, noise,
    # JPEG); the degraded ones are far from GT but not garbage (RESTORE: ~22-40 dB)
    degraded = [v for v in values if v < 40.0]
    assert len(degraded) >= RESTORE_ITERS // 2, values
    assert all(v > 15.0 for v in values), values


def test_restore_checkpoint_is_a_scale1_hybridmoe(restored: dict[str, Any]) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    import hybridmoe_arch
    from hybridmoe.checkpoint import load_checkpoint

    models = restored["exp"] / "models"
    assert restored["proc"].returncode == 0, tail(restored["proc"])
    for it in (2, RESTORE_ITERS):
        assert (models / f"net_g_ema_{it}.safetensors").is_file()
        assert (restored["exp"] / "training_states" / f"{it}.state").is_file()
    path = models / "net_g_ema_latest.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    hp = json.loads(meta["metadata"])
    assert hp["scale"] == 1
    hybridmoe_arch.hybridmoe_nano(scale=1).load_state_dict(load_file(str(path)), strict=True)
    desc = load_checkpoint(path)  # through spandrel
    assert desc.architecture.id == "HybridMoE"
    assert desc.scale == 1
    x = torch.rand(1, 3, 20, 14)
    with torch.no_grad():
        out = desc.model(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# (d) train.py on the x4 real-world GAN template
# ---------------------------------------------------------------------------------------------

REALWORLD_NAME = "hmoe_s_x4_realworld_cpu_smoke"
REALWORLD_ITERS = 4
REALWORLD_BATCH = 2
REALWORLD_LQ = 16  # HR 64: the U-Net discriminator halves it three times


@pytest.fixture(scope="module")
def realworld_data(workcopy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HR crops source, a realworld4 copy of two Set5 images, the fidelity model and an
    LPIPS-VGG file of the real layout (random values: the smoke checks the wiring)."""
    import torch
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    out = otf_data(workcopy, tmp_path_factory, "realworld", "realworld4")
    models = workcopy / "experiments" / "pretrained_models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "experiments/pretrained_models/4x_HybridMoE_S.safetensors", models)
    torch.manual_seed(0)
    feats = vgg16(weights=None).features[:30].state_dict()
    sd = {f"features.{k}": v for k, v in feats.items()}
    sd |= {f"lin.{n}": torch.rand(1, c, 1, 1) for n, c in enumerate((64, 128, 256, 512, 512))}
    save_file(sd, str(models / "lpips_vgg.safetensors"))
    return out


def realworld_config() -> dict[str, Any]:
    """Our x4 real-world GAN template, made CPU-sized."""
    cfg = yaml.safe_load(
        (ROOT / "options/train/HybridMoE/4x_HybridMoE_S_realworld.yml").read_text()
    )
    losses = {loss["type"]: loss for loss in cfg["train"]["losses"]}
    assert losses["hybridmoelpipsloss"]["weights"] == (
        "experiments/pretrained_models/lpips_vgg.safetensors"
    )
    cfg = cpu_sized_otf(
        cfg,
        REALWORLD_NAME,
        "realworld",
        iters=REALWORLD_ITERS,
        batch=REALWORLD_BATCH,
        lq=REALWORLD_LQ,
    )
    cfg["path"]["pretrain_network_g"] = "experiments/pretrained_models/4x_HybridMoE_S.safetensors"
    return cfg


@pytest.fixture(scope="module")
def realworld_run(workcopy: Path, realworld_data: Path) -> dict[str, Any]:
    """One real train.py run of the real-world GAN template through the CPU OTF runner."""
    return run_otf(workcopy, realworld_config(), "realworld")


def test_realworld_template_fine_tunes_with_lpips_and_a_discriminator(
    realworld_run: dict[str, Any],
) -> None:
    import numpy as np
    from PIL import Image

    from hybridmoe.checkpoint import load_checkpoint

    proc, info, log = realworld_run["proc"], realworld_run["info"], realworld_run["log"]
    assert proc.returncode == 0, tail(proc)
    assert info.get("exit_code") == 0, info
    assert info.get("exceptions_logged") == 0, info
    assert "End of training" in log
    assert "Model [bold]RealESRGANModel[/bold] is created" in log
    assert re.search(rf"HR crop size:\s+{4 * REALWORLD_LQ}\s+LR crop size:\s+{REALWORLD_LQ}\b", log)
    for label in ("l_g_charbonnier", "l_g_hybridmoelpips", "l_g_gan"):
        values = [float(v) for v in re.findall(rf"{label}: ([0-9.eE+-]+)", log)]
        assert len(values) == REALWORLD_ITERS and all(v > 0 for v in values), (label, values)
    assert re.search(r"l_d_real: [0-9.eE+-]+", log) and re.search(r"l_d_fake: [0-9.eE+-]+", log)
    for i in range(1, REALWORLD_ITERS + 1):  # the pairs it trained on: LQ a quarter of GT
        lq = np.asarray(Image.open(realworld_run["otf"] / f"{i:06d}_otf_lq.png"))
        gt = np.asarray(Image.open(realworld_run["otf"] / f"{i:06d}_otf_gt.png"))
        assert gt.shape[:2] == (4 * lq.shape[0], 4 * lq.shape[1]) == (64, 64 * REALWORLD_BATCH)
    desc = load_checkpoint(realworld_run["exp"] / "models" / "net_g_ema_latest.safetensors")
    assert desc.scale == 4 and "noise" in desc.tags and "96dim" in desc.tags
    psnr = re.findall(r"# psnr : ([0-9.]+)", log)
    assert psnr and 10.0 < float(psnr[-1]) < 50.0
