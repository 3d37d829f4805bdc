"""What sparse top-k routing costs and saves: one MoE FFN layer against its dense twin.

For each token map (H×W) times, in one dtype, the layer's routing alone, the layer with the
sparse dispatch (only the selected experts), the layer with the dense dispatch (every expert,
mixed by the sparse gates) and the dense gated FFN of the same active width
(``GatedFFN(C, top_k · hidden)``: what ``use_moe=False`` builds); prints one row per map and,
with ``--json``, writes them with the command, device and commit. ``--train`` times forward +
backward instead (float32 parameters, autocast to ``--dtype`` on the GPU, as in training);
``--profile`` lists the kernels of one sparse forward of the last map::

    python scripts/bench_moe.py --channels 384 --experts 4 --top-k 1 --sizes 960x540 \\
        --device cuda --dtype fp16 [--train] [--json OUT.json] [--profile]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import hybridmoe_arch as arch
from hybridmoe.bench import time_loop
from hybridmoe.cliargs import parse_size, positive_int
from hybridmoe.imageio import OutputError, check_output, write_text_atomic
from hybridmoe.provenance import record_header

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls of ``fn()`` after two warm-up calls (the
    package's timing loop: CUDA events on the GPU)."""
    return statistics.median(time_loop(fn, device, 2, repeat, 0.0).times_ms)


def step(module: nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype) -> torch.Tensor:
    """One inference forward, or (``train``) forward + backward under autocast on the GPU."""
    if not train:
        with torch.inference_mode():
            return module(x)
    with torch.autocast(x.device.type, dtype, enabled=x.is_cuda):
        out = module(x)
    out.float().square().mean().backward()
    arch.MOE_AUX.begin_forward()  # drop the balance terms the forward published
    return out.detach()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[(64, 64), (256, 256)])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32")
    ap.add_argument("--repeat", type=positive_int, default=10)
    ap.add_argument("--train", action="store_true", help="forward + backward (autocast on GPU)")
    ap.add_argument("--json", type=Path, help="write the rows and their context here")
    ap.add_argument("--profile", action="store_true", help="kernels of one sparse forward")
    args = ap.parse_args(argv)
    if not 1 <= args.top_k <= args.experts:
        ap.error(f"--top-k {args.top_k} must be between 1 and --experts {args.experts}")
    if args.json and args.json.exists():
        ap.error(f"{args.json} exists; remove it first or choose another name")
    if args.json:  # before the measuring, which can take minutes
        try:
            check_output(args.json, overwrite=False, what="record")
        except OutputError as e:
            ap.error(str(e))
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    hidden = round(args.channels * args.mlp_ratio)
    torch.manual_seed(0)
    routing = arch.MoERouting(args.top_k, dispatch="sparse")
    layer = arch.MoEFFN(args.channels, hidden, args.experts, routing)
    twin = arch.GatedFFN(args.channels, args.top_k * hidden)
    weights = torch.float32 if args.train else dtype  # training: float32 master weights
    layer, twin = (m.to(dev, weights).train(args.train) for m in (layer, twin))
    per_token = 2 * 3 * args.channels * hidden  # FLOPs of one expert's two matmuls
    mode = "forward + backward" if args.train else "inference"
    print(
        f"MoE FFN C={args.channels} hidden={hidden} E={args.experts} top-{args.top_k}, "
        f"{args.dtype} on {dev}, {mode}; twin: GatedFFN of width {args.top_k * hidden}"
    )
    print(f"{'map':>10s} {'route':>8s} {'sparse':>8s} {'dense':>8s} {'twin':>8s}  ms")
    rows = []
    x = torch.empty(0)
    for w, h in args.sizes:
        x = torch.randn(1, args.channels, h, w, device=dev, dtype=weights)
        x = x.contiguous(memory_format=torch.channels_last)
        run = functools.partial(step, x=x, train=args.train, dtype=dtype)
        with torch.inference_mode():
            route = timed(lambda x=x: layer.route_image(x)[2], dev, args.repeat)
        routing.dispatch = "sparse"
        sparse = timed(lambda run=run: run(layer), dev, args.repeat)
        routing.dispatch = "dense"
        dense = timed(lambda run=run: run(layer), dev, args.repeat)
        routing.dispatch = "sparse"
        dense_twin = timed(lambda run=run: run(twin), dev, args.repeat)
        tokens = w * h
        rows.append(
            {
                "tokens": tokens,
                "map": f"{w}x{h}",
                "route_ms": route,
                "sparse_ms": sparse,
                "dense_dispatch_ms": dense,
                "dense_twin_ms": dense_twin,
                "expert_gflop_active": tokens * args.top_k * per_token / 1e9,
                "expert_gflop_all": tokens * args.experts * per_token / 1e9,
            }
        )
        print(f"{w}x{h:<5d} {route:8.2f} {sparse:8.2f} {dense:8.2f} {dense_twin:8.2f}")
    if args.profile:
        print(profile_table(layer, x, dev))
    if args.json:
        record = {
            **record_header(["python", *sys.argv]),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "layer": {
                "channels": args.channels,
                "hidden": hidden,
                "experts": args.experts,
                "top_k": args.top_k,
                "dtype": args.dtype,
                "memory_format": "channels_last",
                "mode": mode,
            },
            "rows": rows,
        }
        write_text_atomic(args.json, json.dumps(record, indent=1) + "\n", what="record")
        print(f"wrote {args.json}")
    return 0


def profile_table(layer: nn.Module, x: torch.Tensor, dev: torch.device) -> str:
    """The kernels (CUDA) or operators (CPU) of one forward of ``layer``, by total time."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), torch.profiler.profile(activities=acts) as prof:
        layer(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=50)


if __name__ == "__main__":
    sys.exit(main())
