"""How the gradient reaches the blocks of a freshly initialized x1 trunk.

One batch of Set5 crops (HR 192 px, LR by MATLAB bicubic), the recipe's Charbonnier loss, one
backward pass: per re-param block, the gradient norm of its parameters and the spread of its
output. In a plain stack (``rep3``: SiLU after every block, no skip around it) the gradient
shrinks block by block on its way down; residual blocks (``rep3res``) pass it on. Usage::

    python scripts/probe_init_gradients.py CONFIG [CONFIG ...] --json OUT.json [--scale 4]

CONFIG: a configuration of ``scripts/sweep.py`` that is an x1 trunk (``levels=1``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import sweep
import torch

import hybridmoe_arch as A
from hybridmoe import evaluate as ev
from hybridmoe import metrics
from hybridmoe.provenance import record_header

HR_CROP = 192


def batch(data: Path, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) of the centre crops of Set5, float in [0, 1]."""
    lrs, hrs = [], []
    for path in sorted((ev.find_set(data, "Set5") / "HR").glob("*.png")):
        hr = ev.read_image(path)
        top, left = (hr.shape[0] - HR_CROP) // 2, (hr.shape[1] - HR_CROP) // 2
        hr = np.ascontiguousarray(hr[top : top + HR_CROP, left : left + HR_CROP])
        lr = metrics.imresize_matlab_uint8(hr, 1 / scale)
        hrs.append(torch.from_numpy(hr.transpose(2, 0, 1)).float() / 255)
        lrs.append(torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float() / 255)
    return torch.stack(lrs), torch.stack(hrs)


def probe(config: str, scale: int, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, object]:
    torch.manual_seed(0)
    model = sweep.build(config, scale)
    if getattr(model, "levels", None) != 1:
        raise SystemExit(f"{config}: not an x1 trunk (levels=1)")
    blocks = [m for m in model.modules() if isinstance(m, A.RepConvBlock | A.RepConvResBlock)]
    spread: list[float] = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: spread.append(float(out.detach().std())))
        for b in blocks
    ]
    out = model(lr)
    loss = torch.sqrt((out - hr) ** 2 + 1e-12).mean()  # Charbonnier, as the recipe
    loss.backward()
    for h in hooks:
        h.remove()
    grads = [
        float(torch.sqrt(sum((p.grad**2).sum() for p in b.parameters() if p.grad is not None)))
        for b in blocks
    ]
    return {
        "config": config,
        "scale": scale,
        "blocks": len(blocks),
        "block_grad_norm": grads,
        "first_over_last": grads[0] / grads[-1],
        "block_output_std": spread,
        "stem_output_std": float(model.stem(lr).detach().std()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--json", required=True, type=Path, help="record to write (must not exist)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--data", type=Path, help="benchmark folder (default: the evaluator's)")
    args = p.parse_args(argv)
    if args.json.exists():
        raise SystemExit(f"{args.json} exists; choose another name (records are not overwritten)")
    lr, hr = batch(args.data or ev.default_data_dir(), args.scale)
    rows = []
    for config in args.configs:
        rows.append(probe(config, args.scale, lr, hr))
        r = rows[-1]
        print(f"{config}: first/last block gradient {r['first_over_last']:.2e}", flush=True)
    record = {
        **record_header(["scripts/probe_init_gradients.py", *(argv or sys.argv[1:])]),
        "device": "cpu",
        "batch": f"Set5 centre crops, HR {HR_CROP} px, seed 0 initialization",
        "rows": rows,
    }
    args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
