"""What sparse top-k routing costs and saves: one MoE FFN layer against its dense twin.

For each token map (H×W) times, in one dtype, the layer's routing alone, the layer with the
sparse dispatch (only the selected experts; its expert kernel as the layer picks it, grouped
GEMM where available, and again with the per-expert loop), the layer with the dense dispatch
(every expert, mixed by the sparse gates) and the dense gated FFN of the same active width
(``GatedFFN(C, top_k · hidden)``: what ``use_moe=False`` builds); prints one row per map and,
with ``--json``, writes them with the command, device and commit. ``--train`` times forward +
backward instead (float32 parameters, autocast to ``--dtype`` on the GPU, as in training);
``--graph`` also replays the sparse inference forward from a CUDA graph (possible only without
a host synchronisation, i.e. with grouped GEMM); ``--profile`` lists the kernels of one
sparse forward of the last map::

    python scripts/bench_moe.py --channels 384 --experts 4 --top-k 1 --sizes 960x540 \\
        --device cuda --dtype bf16 [--train] [--graph] [--json OUT.json] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

import hybridmoe_arch as arch
from hybridmoe.bench import git_commit, time_loop

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALL_DEVICES = ("cpu", "cuda")


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls of ``fn()`` after two warm-up calls (the
    package's timing loop: CUDA events on the GPU)."""
    return statistics.median(time_loop(fn, device, 2, repeat, 0.0).times_ms)


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"{text!r}: give a token map as WxH, e.g. 960x540"
        raise argparse.ArgumentTypeError(msg) from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least 1")
    return w, h


@contextlib.contextmanager
def expert_kernel(devices: tuple[str, ...]) -> Iterator[None]:
    """The sparse dispatch with grouped GEMM allowed on these device types only: ``()`` is the
    per-expert loop everywhere, ``("cpu", "cuda")`` grouped GEMM wherever it can run."""
    saved = arch.GROUPED_GEMM_DEVICES
    arch.GROUPED_GEMM_DEVICES = devices
    try:
        yield
    finally:
        arch.GROUPED_GEMM_DEVICES = saved


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


def graph_ms(layer: nn.Module, x: torch.Tensor, repeat: int) -> float | None:
    """Median ms of the inference forward replayed from a CUDA graph; None if it cannot be
    captured (a host synchronisation inside it)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                layer(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            layer(x)
    except RuntimeError as exc:
        print(f"  (no CUDA graph: {str(exc)[:100]})")
        return None
    return timed(lambda: (graph.replay(), x)[1], x.device, repeat)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[(64, 64), (256, 256)])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--train", action="store_true", help="forward + backward (autocast on GPU)")
    ap.add_argument("--graph", action="store_true", help="also a CUDA-graph replay (inference)")
    ap.add_argument("--json", type=Path, help="write the rows and their context here")
    ap.add_argument(
        "--commit", help="the commit recorded (default: this checkout's HEAD, when it has one)"
    )
    ap.add_argument("--profile", action="store_true", help="kernels of one sparse forward")
    args = ap.parse_args(argv)
    if not 1 <= args.top_k <= args.experts:
        ap.error(f"--top-k {args.top_k} must be between 1 and --experts {args.experts}")
    if args.json and args.json.exists():
        ap.error(f"{args.json} exists; remove it first or choose another name")
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.graph and (dev.type != "cuda" or args.train):
        ap.error("--graph replays an inference forward on the GPU: use it with --device cuda")
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
    heads = ("route", "sparse", "grouped", "looped", "dense", "twin")
    print(f"{'map':>10s} " + " ".join(f"{h:>8s}" for h in heads) + "  ms (sparse: as picked)")
    rows = []
    x = torch.empty(0)
    for w, h in args.sizes:
        x = torch.randn(1, args.channels, h, w, device=dev, dtype=weights)
        x = x.contiguous(memory_format=torch.channels_last)
        run = functools.partial(step, x=x, train=args.train, dtype=dtype)
        with torch.inference_mode():
            route = timed(lambda x=x: layer.route_image(x)[2], dev, args.repeat)
        tokens = layer.route_image(x)[1].shape[0]
        rows_in = x.new_empty(0, args.channels, dtype=dtype if args.train and x.is_cuda else None)
        picked = "grouped" if arch._grouped_gemm_ok(rows_in, hidden) else "looped"
        sparse = timed(lambda run=run: run(layer), dev, args.repeat)
        with expert_kernel(ALL_DEVICES):
            runs = arch._grouped_gemm_ok(rows_in, hidden)
            grouped = timed(lambda run=run: run(layer), dev, args.repeat) if runs else None
            graph = graph_ms(layer, x, args.repeat) if args.graph and runs else None
        with expert_kernel(()):
            looped = timed(lambda run=run: run(layer), dev, args.repeat)
        routing.dispatch = "dense"
        dense = timed(lambda run=run: run(layer), dev, args.repeat)
        routing.dispatch = "sparse"
        dense_twin = timed(lambda run=run: run(twin), dev, args.repeat)
        rows.append(
            {
                "tokens": tokens,
                "map": f"{w}x{h}",
                "route_ms": route,
                "sparse_ms": sparse,
                "sparse_kernel": picked,
                "sparse_grouped_ms": grouped,
                "sparse_looped_ms": looped,
                "sparse_grouped_graph_ms": graph,
                "dense_dispatch_ms": dense,
                "dense_twin_ms": dense_twin,
                "expert_gflop_active": tokens * args.top_k * per_token / 1e9,
                "expert_gflop_all": tokens * args.experts * per_token / 1e9,
            }
        )
        cols = (route, sparse, grouped, looped, dense, dense_twin)
        print(
            f"{w}x{h:<5d} "
            + " ".join("       –" if v is None else f"{v:8.2f}" for v in cols)
            + f"  ({picked})"
            + ("" if graph is None else f"  grouped from a CUDA graph {graph:.2f}")
        )
    if args.profile:
        print(profile_table(layer, x, dev))
    if args.json:
        record = {
            "command": " ".join(["python", *sys.argv]),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "commit": args.commit or git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
        args.json.write_text(json.dumps(record, indent=1) + "\n")
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
