"""Expert-usage histogram of a HybridMoE checkpoint on real images.

Routes every image of the given folders through the model (eval mode, deterministic routing)
and prints, per MoE layer, the share of token slots each expert receives — the check that
training did not collapse the routing onto a few experts::

    python scripts/moe_usage.py MODEL.safetensors ../shared/data/benchmark/Set14/HR
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _bootstrap import load_model
from PIL import Image

EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def usage_histograms(model: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per MoE layer name: fraction of routed token slots per expert, shape (E,), summing to 1.

    ``images``: (1,C,H,W) float tensors in [0,1] on the model's device and dtype.
    """
    counts: dict[str, torch.Tensor] = {}
    hooks = []
    layers = {n: m for n, m in model.named_modules() if type(m).__name__ == "MoEFFN"}
    if not layers:
        raise ValueError("the model has no MoE layers")

    def hook(name: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def fn(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            _, top_i, _ = mod.route_image(args[0])  # type: ignore[operator]
            hist = torch.bincount(top_i.reshape(-1), minlength=mod.num_experts).cpu()  # type: ignore[arg-type]
            counts[name] = counts.get(name, torch.zeros_like(hist)) + hist

        return fn

    for name, layer in layers.items():
        hooks.append(layer.register_forward_pre_hook(hook(name)))
    try:
        with torch.inference_mode():
            for img in images:
                model(img)
    finally:
        for h in hooks:
            h.remove()
    return {n: (c.float() / c.sum()).tolist() for n, c in counts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", help="HybridMoE checkpoint (any form spandrel loads)")
    ap.add_argument("images", nargs="+", type=Path, help="image files or folders")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        desc = load_model(args.model, args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files: list[Path] = []
    for p in args.images:
        files += sorted(f for f in p.iterdir() if f.suffix.lower() in EXTS) if p.is_dir() else [p]
    dev = torch.device(args.device)
    imgs = []
    for f in files:
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB" if desc.input_channels == 3 else "L"), np.float32)
        t = torch.from_numpy(arr / 255.0)
        t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
        imgs.append(t[None].to(dev))
    try:
        hist = usage_histograms(desc.model, imgs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uniform = 1 / len(next(iter(hist.values())))
    print(f"{len(imgs)} images; share of routed token slots per expert (uniform = {uniform:.3f})")
    for name, h in hist.items():
        print(f"{name:28s} " + " ".join(f"{v:6.3f}" for v in h))
    if args.json:
        args.json.write_text(json.dumps({"images": len(imgs), "usage": hist}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
