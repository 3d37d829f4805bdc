"""Compare the pure-PyTorch selective scan with mamba-ssm's fused kernel (CUDA).

The ``ssm`` global mixer of HybridMoE uses mamba-ssm's chunked-scan kernel when the optional
package is importable on CUDA, and :func:`hybridmoe_arch.ssd_scan` otherwise. Both compute the
same function with the same parameters; this script measures how closely (max abs / relative
error) and how fast each is, on the scan alone and on the whole mixer module::

    python scripts/check_ssm_kernel.py [--length 8100] [--heads 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

import hybridmoe_arch as arch


def timed(fn, repeat: int = 20) -> float:
    """Median milliseconds of ``fn()`` on CUDA (CUDA events, after warm-up)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--length", type=int, default=8100, help="sequence length (tokens)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to compare (the pure path is used on CPU).")
        return 2
    kernel = arch._mamba_kernel()
    if kernel is None:
        print("mamba-ssm is not importable: only the pure-PyTorch scan is available.")
        return 2
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (1, args.length, args.heads, args.head_dim)
    x = torch.randn(shape, device=dev, generator=g)
    dt = F.softplus(torch.randn(1, args.length, args.heads, device=dev, generator=g) - 3)
    a = -torch.rand(args.heads, device=dev, generator=g) * 4
    b = torch.randn(1, args.length, args.state, device=dev, generator=g)
    c = torch.randn(1, args.length, args.state, device=dev, generator=g)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pure = arch.ssd_scan(x, dt, a, b, c)
    fused = kernel(
        x, dt, a, b.unsqueeze(2).contiguous(), c.unsqueeze(2).contiguous(), chunk_size=64
    )
    ref64 = arch.ssd_scan(x.double(), dt.double(), a.double(), b.double(), c.double()).float()
    res: dict[str, float] = {
        "scan_max_abs_pure_vs_kernel": (pure - fused).abs().max().item(),
        "scan_rel_pure_vs_kernel": ((pure - fused).norm() / fused.norm()).item(),
        "scan_rel_pure_vs_fp64": ((pure - ref64).norm() / ref64.norm()).item(),
        "scan_rel_kernel_vs_fp64": ((fused - ref64).norm() / ref64.norm()).item(),
        "scan_ms_pure": timed(lambda: arch.ssd_scan(x, dt, a, b, c)),
        "scan_ms_kernel": timed(
            lambda: kernel(
                x, dt, a, b.unsqueeze(2).contiguous(), c.unsqueeze(2).contiguous(), chunk_size=64
            )
        ),
    }
    side = int(args.length**0.5)
    mixer = arch.SelectiveScan2D(args.heads * args.head_dim).to(dev).eval()
    img = torch.randn(1, args.heads * args.head_dim, side, side, device=dev, generator=g)
    with torch.inference_mode():
        mixer.use_kernel = True
        y_k = mixer(img)
        t_k = timed(lambda: mixer(img))
        mixer.use_kernel = False
        y_p = mixer(img)
        t_p = timed(lambda: mixer(img))
    res.update(
        {
            "mixer_max_abs_pure_vs_kernel": (y_k - y_p).abs().max().item(),
            "mixer_rel_pure_vs_kernel": ((y_k - y_p).norm() / y_p.norm()).item(),
            "mixer_ms_kernel": t_k,
            "mixer_ms_pure": t_p,
        }
    )
    for k, v in res.items():
        print(f"{k:32s} {v:.3e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **res},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
