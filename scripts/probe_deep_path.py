"""How much a trained x1 trunk owes to its blocks: Set5 Y-PSNR with and without them.

The x1 trunk computes ``up(blocks(stem(x)) + stem(x)) + bicubic(x)``; with the blocks' output
replaced by zeros only the shallow path ``up(stem(x)) + bicubic(x)`` (two convolutions over the
base) is left. A network whose score hardly drops has not put its blocks to use. Usage::

    python scripts/probe_deep_path.py RUN [RUN ...] --json OUT.json [--data DIR] [--set Set5]

RUN: a run folder of ``scripts/sweep.py train`` (meta.json + ema weights), any scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sweep
import torch
from torch import nn

from hybridmoe import evaluate as ev
from hybridmoe.provenance import record_header


class Zeros(nn.Module):
    """Stands in for the trunk's blocks: (N,C,H,W) -> zeros of the same shape."""

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(d)


def probe(run: Path, data: Path, set_name: str) -> dict[str, object]:
    meta, model = sweep.load_run(run)
    if getattr(model, "levels", None) != 1:
        raise SystemExit(f"{run}: not an x1 trunk (levels=1); the probe cuts the x1 trunk's blocks")
    scale, cpu = meta["scale"], torch.device("cpu")

    def score() -> float:
        desc = sweep.ModuleDescriptor(model, scale, cpu)
        return sweep._means(sweep.score_sr([desc], data, [set_name], scale, None)[0])[0][set_name]

    full = score()
    model.dec1 = Zeros()  # d = dec1(...) + stem  ->  stem alone
    cut = score()
    return {
        "run": run.name,
        "config": meta["config"],
        "scale": scale,
        "iterations": meta["iterations"],
        "recipe": meta["recipe"],
        "psnr_full": full,
        "psnr_blocks_zeroed": cut,
        "blocks_gain_db": round(full - cut, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", required=True, type=Path, help="record to write (must not exist)")
    p.add_argument("--data", type=Path, help="benchmark folder (default: the evaluator's)")
    p.add_argument("--set", default="Set5")
    args = p.parse_args(argv)
    if args.json.exists():
        raise SystemExit(f"{args.json} exists; choose another name (records are not overwritten)")
    data = args.data or ev.default_data_dir()
    rows = []
    for run in args.runs:
        rows.append(probe(run, data, args.set))
        print(json.dumps(rows[-1]), flush=True)
    record = {
        **record_header(["scripts/probe_deep_path.py", *(argv or sys.argv[1:])]),
        "device": "cpu",
        "set": args.set,
        "evaluator": "hybridmoe evaluate steps (Y, border=scale, MATLAB bicubic LR), float32",
        "rows": rows,
    }
    args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
