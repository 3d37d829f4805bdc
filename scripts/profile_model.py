"""Profile one HybridMoE variant's inference on the GPU: where the time goes.

Prints the CUDA kernels that take the most time, how many kernels one forward launches, and
host (CPU) time vs. device time per forward — a forward whose host time exceeds its device time
is launch-bound (too many small kernels) rather than compute-bound::

    python scripts/profile_model.py hybridmoe_s --scale 4 --dtype fp16 [--out-size 1920x1080]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import hybridmoe_arch as arch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variant", help="hybridmoe_nano | hybridmoe_s | hybridmoe_m | hybridmoe_l")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp16")
    ap.add_argument("--out-size", default="1920x1080", help="output WxH (input = out / scale)")
    ap.add_argument("--unfused", action="store_true", help="profile the training form")
    ap.add_argument("--rows", type=int, default=25, help="kernels to list")
    args = ap.parse_args(argv)
    if args.variant not in arch.FACTORIES:
        ap.error(f"unknown variant {args.variant!r}; choose from {', '.join(arch.FACTORIES)}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = arch.FACTORIES[args.variant](scale=args.scale).to(dev).eval()
    if not args.unfused:
        model.fuse()
    w, h = (int(v) for v in args.out_size.lower().split("x"))
    x = torch.rand(1, 3, h // args.scale, w // args.scale, device=dev)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.backends.cudnn.benchmark = True

    def run() -> torch.Tensor:
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x)

    with torch.inference_mode():
        for _ in range(5):
            run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            run()
        host_ms = (time.perf_counter() - t0) / 10 * 1e3  # launch time (async)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) / 10 * 1e3
        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            run()
            if dev.type == "cuda":
                torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    dev_us = sum(e.device_time for e in kernels) if kernels else 0.0
    print(f"{args.variant} x{args.scale} {args.dtype} input {tuple(x.shape)} on {dev}")
    print(f"host time per forward (launching) {host_ms:.2f} ms; wall per forward {wall_ms:.2f} ms")
    print(f"kernels per forward {len(kernels)}; summed kernel time {dev_us / 1e3:.2f} ms")
    sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
