"""Compute saved by sparse top-k routing: one MoE FFN layer, top-k vs. every expert.

Times the layer's forward with sparse dispatch at ``top_k`` and with every expert active
(``top_k = E``), for several token counts, and prints the FLOPs of the expert matmuls of both::

    python scripts/bench_moe.py [--channels 64] [--experts 8] [--top-k 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

import hybridmoe_arch as arch


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median milliseconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--sides", type=int, nargs="+", default=[32, 64, 128, 256], help="H = W")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    hidden = round(args.channels * args.mlp_ratio)
    routing = arch.MoERouting(args.top_k, dispatch="sparse")
    layer = arch.MoEFFN(args.channels, hidden, args.experts, routing).to(dev).eval()
    per_token = 2 * (args.channels * 2 * hidden + hidden * args.channels)  # FLOPs per expert
    print(f"MoE FFN: C={args.channels}, hidden={hidden}, E={args.experts} on {dev}")
    print(
        f"{'tokens':>8s} {'top-' + str(args.top_k) + ' ms':>10s} {'all ms':>9s} {'saved':>7s}"
        f" {'GFLOP top-k':>12s} {'GFLOP all':>10s}"
    )
    for side in args.sides:
        x = torch.randn(1, args.channels, side, side, device=dev)
        with torch.inference_mode():
            routing.top_k = args.top_k
            t_k = timed(lambda x=x: layer(x), dev, args.repeat)
            routing.top_k = args.experts
            t_all = timed(lambda x=x: layer(x), dev, args.repeat)
        n = side * side
        print(
            f"{n:8d} {t_k:10.2f} {t_all:9.2f} {1 - t_k / t_all:6.0%} "
            f"{n * args.top_k * per_token / 1e9:12.2f} {n * args.experts * per_token / 1e9:10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
