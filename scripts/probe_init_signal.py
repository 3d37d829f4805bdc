"""The forward signal of a freshly initialized x1 trunk, block by block.

For each configuration of ``scripts/sweep.py`` that is an x1 trunk, build it with a fixed seed,
run a batch of random images through it (eval mode, float32, CPU) and record the standard
deviation and mean of every trunk block's output, in order. It shows whether the signal that
reaches the later blocks shrinks or keeps its size at initialization. Usage::

    python scripts/probe_init_signal.py CONFIG [CONFIG ...] --json OUT.json [--scale 4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import sweep
import torch
from torch import nn

BLOCKS = ("RepConvBlock", "RepConvResBlock")


def block_stats(model: nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """(std, mean) of every trunk block's output for input ``x`` (N,3,H,W), in forward order."""
    stats: list[dict[str, float]] = []

    def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        stats.append({"std": round(out.std().item(), 5), "mean": round(out.mean().item(), 5)})

    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m).__name__ in BLOCKS]
    if not hooks:
        raise SystemExit("the model has no re-param trunk blocks (RepConvBlock / RepConvResBlock)")
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return stats


def probe(config: str, scale: int, seed: int = 0, size: int = 48) -> dict[str, object]:
    torch.manual_seed(seed)
    model = sweep.build(config, scale).eval()
    if getattr(model, "levels", None) != 1:
        raise SystemExit(f"{config}: not an x1 trunk (levels=1)")
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    stats = block_stats(model, x)
    return {
        "config": config,
        "scale": scale,
        "blocks": len(stats),
        "std": [s["std"] for s in stats],
        "mean": [s["mean"] for s in stats],
        "last_over_first_std": round(stats[-1]["std"] / stats[0]["std"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="+", help="configurations of scripts/sweep.py (x1 trunks)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--json", required=True, help="record to write (refused if it exists)")
    args = p.parse_args(argv)
    out = Path(args.json)
    if out.exists():
        raise SystemExit(f"{out} exists; give another --json path")
    unknown = [c for c in args.configs if c not in sweep.known_names()]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; see scripts/sweep.py")
    rows = [probe(c, args.scale) for c in args.configs]
    for r in rows:
        print(f"{r['config']:>18}: " + " ".join(f"{s:.3f}" for s in r["std"]))  # type: ignore[union-attr]
    given = sys.argv[1:] if argv is None else argv
    record = {
        "command": "scripts/probe_init_signal.py " + " ".join(given),
        "device": "cpu",
        "commit": sweep.git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "input": "2 random images (uniform 0..1), 48x48, seed 0; eval mode, float32",
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
