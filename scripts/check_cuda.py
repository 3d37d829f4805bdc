"""Checks that only a CUDA device can answer (the test suite runs on the CPU).

    python scripts/check_cuda.py --json OUT.json [--windows-side 2064]

- ``empty_batch``: every variant (and the full design, the SSM mixer and the ×½ context MoE)
  maps a (0, 3, H, W) batch to (0, 3, sH, sW) in fp32, fp16 and bf16.
- ``scan``: the chunked selective scan (``ssd_scan``) and the whole SSM network on CUDA
  against the CPU, float32 with TF32 off (relative to the output's peak).
- ``moe_batch``: an MoE network's output for each image alone against the same image in a
  batch of four, in fp32 / fp16 / bf16, and sparse against dense dispatch.
- ``textures``: a full-contrast checkerboard and a 1-bit dither through every network in
  fp32 / fp16 / bf16: finite, and the difference to fp32 relative to the output's peak.
- ``sdpa_windows``: window attention over more than 65,536 windows in one call (where some
  CUDA SDPA kernels have failed) against the same map attended in two halves.

Networks are randomly initialised (seeded); parameters the network starts at zero (the detail
output, layer scales) are given small random values so that every branch reaches the output.
The record is written with the command, device, commit and date. Nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "traiNNer" / "archs"), str(ROOT / "scripts")]

import sweep  # noqa: E402

import hybridmoe_arch as arch  # noqa: E402
from hybridmoe import imageio  # noqa: E402
from hybridmoe.provenance import record_header  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _wake(model: nn.Module, seed: int) -> nn.Module:
    """Give the parameters that start at zero small random values (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def networks(scale: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    nets: dict[str, nn.Module] = {
        name: arch.FACTORIES[name](scale)
        for name in ("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l", "hybridmoe")
    }
    nets["hybridmoe_ssm"] = arch.hybridmoe(scale, global_mixer="ssm")
    nets["trunk192x12_ctx"] = sweep.build("trunk192x12_ctx", scale)
    return {name: _wake(net, i) for i, (name, net) in enumerate(nets.items())}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def _textures(size: int) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, size, size)
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size).expand(size, size)
    dither = (torch.rand(size, size, generator=g) < ramp).float().expand(1, 3, size, size)
    return {"checkerboard": checker.contiguous(), "dithered": dither.contiguous()}


def _photo_like(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size): smooth colour fields with edges and grain, different per image."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 1)


@torch.no_grad()
def check_empty_batch(nets: dict[str, nn.Module], scale: int, dev: str) -> list[dict[str, Any]]:
    rows = []
    for name, net in nets.items():
        for label, dtype in DTYPES.items():
            net.to(dev, dtype)
            x = torch.zeros(0, 3, 24, 24, device=dev, dtype=dtype)
            try:
                y = net(x)
                shape, error = list(y.shape), None
            except Exception as e:  # recorded, not raised: every row is reported
                shape, error = None, f"{type(e).__name__}: {e}"[:300]
            ok = shape == [0, 3, 24 * scale, 24 * scale]
            rows.append({"model": name, "dtype": label, "shape": shape, "error": error, "ok": ok})
        net.to("cpu", torch.float32)
    return rows


@torch.no_grad()
def check_scan(nets: dict[str, nn.Module], dev: str) -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(2)
    bsz, length, heads, p, n_state = 2, 8100, 8, 16, 16
    x = torch.randn(bsz, length, heads, p, generator=g)
    dt = nn.functional.softplus(torch.randn(bsz, length, heads, generator=g))
    a = -torch.rand(heads, generator=g) - 0.1
    b = torch.randn(bsz, length, n_state, generator=g)
    c = torch.randn(bsz, length, n_state, generator=g)
    ref = arch.ssd_scan(x, dt, a, b, c)
    got = arch.ssd_scan(*(t.to(dev) for t in (x, dt, a, b, c))).cpu()
    net = nets["hybridmoe_ssm"]
    img = _photo_like(1, 48)
    ref_net = net(img)
    got_net = net.to(dev)(img.to(dev)).cpu()
    net.cpu()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return {
        "ssd_scan": {"shape": [bsz, length, heads, p], "rel_max_diff": _rel(got, ref)},
        "ssm_network_48px": {"rel_max_diff": _rel(got_net, ref_net)},
        "finite": bool(torch.isfinite(got).all() and torch.isfinite(got_net).all()),
    }


@torch.no_grad()
def check_moe_batch(nets: dict[str, nn.Module], dev: str) -> list[dict[str, Any]]:
    rows = []
    imgs = _photo_like(4, 64)
    for name in ("hybridmoe", "trunk192x12_ctx"):
        net = nets[name]
        for label, dtype in DTYPES.items():
            net.to(dev, dtype)
            x = imgs.to(dev, dtype)
            batched = net(x)
            alone = torch.cat([net(x[i : i + 1]) for i in range(len(x))])
            routing = next(m.routing for m in net.modules() if isinstance(m, arch.MoEFFN))
            saved = routing.dispatch
            outs = {}
            for dispatch in ("sparse", "dense"):
                routing.dispatch = dispatch
                outs[dispatch] = net(x)
            routing.dispatch = saved
            rows.append({
                "model": name, "dtype": label,
                "alone_vs_batched_rel": _rel(alone, batched),
                "sparse_vs_dense_rel": _rel(outs["sparse"], outs["dense"]),
                "finite": bool(torch.isfinite(batched).all() and torch.isfinite(alone).all()),
            })  # fmt: skip
        net.to("cpu", torch.float32)
    return rows


@torch.no_grad()
def check_textures(nets: dict[str, nn.Module], dev: str) -> list[dict[str, Any]]:
    rows = []
    for tex_name, tex in _textures(64).items():
        for name, net in nets.items():
            net.to(dev, torch.float32)
            ref = net(tex.to(dev))
            row: dict[str, Any] = {"texture": tex_name, "model": name,
                                   "fp32_finite": bool(torch.isfinite(ref).all())}  # fmt: skip
            for label in ("fp16", "bf16"):
                y = net.to(dtype=DTYPES[label])(tex.to(dev, DTYPES[label]))
                row[f"{label}_finite"] = bool(torch.isfinite(y).all())
                row[f"{label}_rel"] = _rel(y, ref)
                net.float()
            rows.append(row)
            net.cpu()
    return rows


@torch.no_grad()
def check_sdpa_windows(side: int, dev: str) -> list[dict[str, Any]]:
    torch.manual_seed(3)
    attn = arch.WindowAttention(64, 8, shift=False).to(dev).eval()
    half = side // 2
    if side % 16:
        raise SystemExit(f"--windows-side {side}: give a multiple of 16 (whole windows per half)")
    rows = []
    for label, dtype in DTYPES.items():
        attn.to(dtype=dtype)
        x = torch.randn(1, 64, side, side, device=dev, dtype=dtype)
        try:
            full = attn(x)
            halves = torch.cat([attn(x[..., :half]), attn(x[..., half:])], dim=-1)
            row = {"rel_max_diff": _rel(full, halves), "finite": bool(torch.isfinite(full).all())}
        except Exception as e:  # recorded, not raised
            row = {"error": f"{type(e).__name__}: {e}"[:300]}
        rows.append({"dtype": label, "windows": (side // 8) ** 2, **row})
        del x
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", required=True, help="record to write (refused if it exists)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--windows-side", type=int, default=2064, help="side of the attention map")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args(argv)
    out = Path(args.json)
    if out.exists():
        raise SystemExit(f"{out} exists: give another --json path")
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: --device cpu runs the same checks as a dry run")
    nets = networks(args.scale)
    values = {
        "empty_batch": check_empty_batch(nets, args.scale, dev),
        "scan": check_scan(nets, dev),
        "moe_batch": check_moe_batch(nets, dev),
        "textures": check_textures(nets, dev),
        "sdpa_windows": check_sdpa_windows(args.windows_side, dev),
    }
    command = ["python", "scripts/check_cuda.py", *(sys.argv[1:] if argv is None else argv)]
    record = {**record_header(command, dev), "values": values}
    imageio.write_text_atomic(out, json.dumps(record, indent=1) + "\n", what="record")
    print(json.dumps(values)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
