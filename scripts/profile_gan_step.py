"""Where the time of one GAN fine-tuning step goes (scripts/sweep.py --gan, x4 realworld4).

Usage::

    python scripts/profile_gan_step.py --lpips lpips_vgg.safetensors [--config trunk96x12_lean]
        [--batch 16] [--crop 64] [--reps 20] [--json OUT]

Times, on the current device with CUDA synchronisation (median of ``--reps`` after 3 warm-up
repetitions), the parts of one step on random HR crops: the realworld4 degradations of the
batch, the generator's forward and backward with the pixel loss alone, the LPIPS-VGG term
(forward on output and target, backward), the generator's adversarial term and the
discriminator's update, and the whole step as sweep.py runs it; on a GPU also how many times
one batch of degradations waits for the device (``torch.cuda.set_sync_debug_mode``). Writes
JSON with the command, device, commit and date (an existing file is refused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import sweep
import torch

from hybridmoe import degrade
from hybridmoe.gan import UNetDiscriminator, d_loss, g_loss
from hybridmoe.provenance import record_header


def _time(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from hybridmoe_loss import HybridMoELPIPSLoss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lpips", required=True, help="lpips_vgg.safetensors")
    ap.add_argument("--config", default="trunk96x12_lean")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64, help="LR crop side (HR: 4x)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.json is not None and args.json.exists():
        raise SystemExit(f"{args.json} exists; choose another name")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cl = torch.channels_last
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model = sweep.build(args.config, 4).to(device).to(memory_format=cl).train()
    disc = UNetDiscriminator(sweep.GAN_RECIPE["d_width"]).to(device).to(memory_format=cl)
    lpips = HybridMoELPIPSLoss(1.0, args.lpips, net="vgg").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    side = args.crop * 4
    gt = torch.rand(args.batch, 3, side, side, device=device)
    lq = degrade.degrade_batch(gt, degrade.REALWORLD4, gen).contiguous(memory_format=cl)

    def degradations() -> object:
        return degrade.degrade_batch(gt, degrade.REALWORLD4, gen)

    def generator_pixel() -> object:
        with amp:
            out = model(lq)
        loss = sweep.charbonnier(out.float(), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    out_d = model(lq).detach().float().requires_grad_(True)

    def lpips_term() -> object:
        loss = lpips(out_d, gt)
        loss.backward()
        return loss

    def adversarial_term() -> object:
        disc.requires_grad_(False)
        with amp:
            loss = g_loss(disc(out_d.contiguous(memory_format=cl)))
        loss.backward()
        disc.requires_grad_(True)
        return loss

    def discriminator_update() -> object:
        with amp:
            loss = d_loss(disc(gt.contiguous(memory_format=cl)), disc(out_d.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        return loss

    def whole_step() -> object:
        lq2 = degradations().contiguous(memory_format=cl)  # type: ignore[union-attr]
        with amp:
            out = model(lq2)
        pixel = sweep.charbonnier(out.float(), gt)
        loss, _ = sweep.gan_generator_loss(out.float(), gt, pixel, lpips, disc, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return sweep.gan_discriminator_step(out.detach().float(), gt, disc, opt_d, amp)

    parts = {
        "degradations": degradations,
        "generator_pixel_fwd_bwd": generator_pixel,
        "lpips_vgg_fwd_bwd": lpips_term,
        "adversarial_term_fwd_bwd": adversarial_term,
        "discriminator_update": discriminator_update,
        "whole_step": whole_step,
    }
    ms = {name: round(_time(fn, args.reps, device), 3) for name, fn in parts.items()}
    syncs = None
    if device.type == "cuda":  # how often one batch of degradations waits for the device
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            degradations()
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    rec = {
        "what": "median ms of the parts of one GAN fine-tuning step (sweep.py --gan, realworld4)",
        **record_header(["python", "scripts/profile_gan_step.py", *(argv or sys.argv[1:])]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": args.config,
        "batch": args.batch,
        "hr_crop": side,
        "reps": args.reps,
        "ms": ms,
        "degradation_syncs": syncs,
    }
    print(json.dumps(rec, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
