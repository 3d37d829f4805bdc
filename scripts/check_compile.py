"""Check that the eval forward of each HybridMoE variant compiles without graph breaks.

Runs ``torch._dynamo.explain`` on the fused eval model and prints, per variant, the number of
graphs and graph breaks with their reasons (one graph, zero breaks is the goal)::

    python scripts/check_compile.py [--variants hybridmoe_nano hybridmoe_s] [--scale 4]
"""

from __future__ import annotations

import argparse
import sys

import torch

import hybridmoe_arch as arch


def explain(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, list[str]]:
    """(graphs, graph breaks, break reasons) of ``model(x)`` under dynamo."""
    import torch._dynamo

    torch._dynamo.reset()
    out = torch._dynamo.explain(model)(x)
    reasons = [str(getattr(b, "reason", b)).splitlines()[0] for b in out.break_reasons]
    return out.graph_count, out.graph_break_count, reasons


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=None, help="default: all four")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="LR input side")
    ap.add_argument("--unfused", action="store_true", help="check the training form instead")
    args = ap.parse_args(argv)
    names = args.variants or [n for n in arch.FACTORIES if n != "hybridmoe"]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.rand(1, 3, args.size, args.size, device=dev)
    failed = False
    for name in names:
        model = arch.FACTORIES[name](scale=args.scale).to(dev).eval()
        if not args.unfused:
            model.fuse()
        with torch.inference_mode():
            graphs, breaks, reasons = explain(model, x)
        print(f"{name:16s} graphs={graphs} breaks={breaks}")
        for r in reasons:
            print(f"    break: {r}")
        failed |= breaks > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
