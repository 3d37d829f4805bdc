"""End-to-end demo on a CPU: train briefly, save like traiNNer-redux, load through spandrel,
upscale an image, and compare with a shipped pretrained model.

1. trains ``hybridmoe_nano`` ×2 for ``--iters`` steps on real photos (``../shared/data/train``
   if present, else the bundled ``tests/data/T91_sample``) with the project's losses
   (Charbonnier + FFT frequency loss, + MoE load balance for networks with MoE layers),
   AdamW and an EMA copy;
2. saves the EMA weights as traiNNer-redux does (flat ``.safetensors``, hyperparameters as
   JSON in the header) to ``--out/net_g_ema_latest.safetensors``;
3. loads that file with spandrel's ``ModelLoader`` (HybridMoE registered) and upscales a
   Set5 image with ``hybridmoe.upscale`` (tiled), then measures Y-PSNR on Set5 for bicubic,
   the demo model and the shipped pretrained ``2x_HybridMoE_Nano``::

    python scripts/demo.py [--iters 200] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import hybridmoe_arch as arch
import hybridmoe_loss as losses
from hybridmoe import upscale
from hybridmoe.checkpoint import load_checkpoint
from hybridmoe.cliargs import positive_int
from hybridmoe.metrics import imresize_matlab_uint8, mod_crop
from hybridmoe.paths import REPO_ROOT

EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def training_images(scale: int, crop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) uint8 HWC pairs of every training photo large enough for a ``crop`` LR patch."""
    shared = REPO_ROOT.parent / "shared" / "data" / "train"
    folders = [shared / "T91", shared / "BSDS200"] if shared.is_dir() else []
    folders = [f for f in folders if f.is_dir()] or [REPO_ROOT / "tests" / "data" / "T91_sample"]
    pairs = []
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in EXTS:
                continue
            with Image.open(f) as im:
                hr = mod_crop(np.asarray(im.convert("RGB")), scale)
            if min(hr.shape[:2]) >= crop * scale:
                pairs.append((hr, imresize_matlab_uint8(hr, 1 / scale)))
    shown = ", ".join(str(f) for f in folders)
    if not pairs:
        print(
            f"error: no training photo in {shown} is large enough for --crop {crop} "
            f"(an HR side of at least {crop * scale} pixels is needed); lower --crop",
            file=sys.stderr,
        )
        raise SystemExit(2)
    print(f"training photos: {len(pairs)} from {shown}")
    return pairs


def batch(
    pairs: list[tuple[np.ndarray, np.ndarray]], n: int, crop: int, scale: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned crops with flips/rotations: LR (n,3,crop,crop), HR (n,3,crop·s,crop·s)."""
    lrs, hrs = [], []
    for _ in range(n):
        hr, lr = random.choice(pairs)
        y, x = random.randrange(lr.shape[0] - crop + 1), random.randrange(lr.shape[1] - crop + 1)
        a = lr[y : y + crop, x : x + crop]
        b = hr[y * scale : (y + crop) * scale, x * scale : (x + crop) * scale]
        k = random.randrange(4)
        a, b = np.rot90(a, k), np.rot90(b, k)
        if random.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        lrs.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
        hrs.append(torch.from_numpy(b.copy()).permute(2, 0, 1))
    return torch.stack(lrs).float() / 255, torch.stack(hrs).float() / 255


def train(args: argparse.Namespace) -> Path:
    """Train ``hybridmoe_nano`` ×2 and save the EMA weights in traiNNer's format."""
    torch.manual_seed(0)
    random.seed(0)
    pairs = training_images(2, args.crop)
    model = arch.hybridmoe_nano(scale=2).train()
    ema = copy.deepcopy(model).eval()
    freq = losses.HybridMoEFreqLoss(loss_weight=0.05)
    balance = losses.HybridMoEBalanceLoss(loss_weight=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [args.iters // 2, args.iters * 3 // 4], 0.5)
    t0 = time.time()
    for it in range(1, args.iters + 1):
        lr_img, hr_img = batch(pairs, args.batch, args.crop, 2)
        out = model(lr_img)
        pix = torch.sqrt((out - hr_img) ** 2 + 1e-6).mean()  # Charbonnier
        loss = pix + freq.loss_weight * freq(out, hr_img)
        if model.num_experts:  # the balance loss needs router statistics
            loss = loss + balance.loss_weight * balance(out, hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (1 + it) / (10 + it))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        if it % max(1, args.iters // 10) == 0 or it == args.iters:
            print(
                f"iter {it:5d}  loss {loss.item():.4f}  charbonnier {pix.item():.4f}  "
                f"{time.time() - t0:6.1f}s"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "net_g_ema_latest.safetensors"
    sd = {k: v.contiguous() for k, v in ema.state_dict().items()}
    save_file(sd, str(path), metadata={"metadata": json.dumps(ema.hyperparameters)})
    print(f"saved {path} (traiNNer-redux format: flat safetensors, hyperparameters in the header)")
    return path


def set5_scores(desc: object) -> dict[str, float]:
    """Mean Y-PSNR on Set5 (×2, MATLAB-bicubic LR, border 2) of bicubic and of the model."""
    from hybridmoe.evaluate import evaluate_set

    res = evaluate_set(REPO_ROOT / "tests" / "data" / "Set5", 2, desc)
    return {"bicubic": res["bicubic"]["psnr"], "model": res["model"]["psnr"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iters", type=positive_int, default=200, help="training steps (default 200)")
    ap.add_argument("--batch", type=positive_int, default=8)
    ap.add_argument("--crop", type=positive_int, default=48, help="LR crop size")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "demo")
    args = ap.parse_args(argv)

    ckpt = train(args)
    desc = load_checkpoint(ckpt)
    print(f"spandrel loaded: {desc.architecture.name}, x{desc.scale}, tags {desc.tags}")

    src = REPO_ROOT / "tests" / "data" / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png"
    dst = args.out / "butterfly_x2_demo.png"
    rc = upscale.main([str(ckpt), str(src), str(dst), "--overwrite"])  # rerun: replace
    if rc != 0:
        return rc
    with Image.open(dst) as im:
        print(f"upscaled {src.name} -> {dst} {im.size}")

    pretrained = REPO_ROOT / "experiments" / "pretrained_models" / "2x_HybridMoE_Nano.safetensors"
    demo = set5_scores(desc)
    print("Set5 x2 Y-PSNR:")
    print(f"  bicubic                     {demo['bicubic']:.3f} dB")
    print(f"  demo model ({args.iters:4d} steps)    {demo['model']:.3f} dB")
    if pretrained.is_file():
        score = set5_scores(load_checkpoint(pretrained))["model"]
        print(f"  shipped 2x_HybridMoE_Nano   {score:.3f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
