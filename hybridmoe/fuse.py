"""Fuse a HybridMoE checkpoint into its deploy form (re-parameterized convolutions).

    hybridmoe fuse CHECKPOINT OUTPUT [--overwrite] [--image FILE] [--time] [--device auto|cpu|cuda]
        [--size H W]

CHECKPOINT is any HybridMoE file spandrel loads (``.safetensors``, ``.pth`` with or without the
traiNNer-redux ``params`` / ``params_ema`` wrappers, ``.ckpt``) or the name of a shipped model
(``2x_HybridMoE_S``; ``hybridmoe models`` lists them); OUTPUT's extension picks the
format: ``.safetensors`` (flat, with the hyperparameters as JSON in the ``metadata`` header
field, as traiNNer-redux writes it) or ``.pth`` (``{"metadata": ..., "params": ...}``).

OUTPUT must not be CHECKPOINT itself (same path, or the same file through a link): the
training form would be lost. An existing OUTPUT is replaced only with ``--overwrite``. A
checkpoint whose weights hold NaN or Inf is refused.

Before writing, the fused network is checked against the original on a random image and, with
``--image FILE``, on a real one too (FILE downscaled by the model's scale, centre 96x96): every
output must be finite and the maximum absolute difference must stay within ``--tol`` (1e-4,
fp32). The checkpoint is written to a temporary file beside OUTPUT, loaded back and compared
once more, and only then renamed to OUTPUT; on any failure OUTPUT is left as it was.
Exit status: 0 on success, 1 when the fused outputs differ, 2 for a usage, loading or
writing error (a full disk).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import hybridmoe_arch as arch
from hybridmoe import evaluate as ev
from hybridmoe import imageio
from hybridmoe.checkpoint import CheckpointError, load_checkpoint
from hybridmoe.cliargs import (
    add_device_argument,
    finite_non_negative,
    non_negative_int,
    positive_int,
)
from hybridmoe.models import resolve_model

OUTPUT_EXTS = (".safetensors", ".pth")


class FuseError(Exception):
    """A usage or loading problem, reported as one line and exit status 2."""


class VerificationError(Exception):
    """The fused model or the written file does not match the original (exit status 1)."""


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def load_hybridmoe(path: str | Path, device: str = "cpu") -> Any:
    """Load ``path`` through spandrel and return the descriptor; refuse other architectures."""
    try:
        desc = load_checkpoint(path, device=device)
    except CheckpointError as e:
        raise FuseError(str(e)) from e
    if not isinstance(desc.model, arch.HybridMoE):
        raise FuseError(
            f"{path}: this is a {desc.architecture.name} model, not HybridMoE; only HybridMoE "
            f"checkpoints can be fused by this script"
        )
    desc.model.eval()
    return desc


def real_image(
    path: Path, scale: int, channels: int, max_side: int = 96, device: str = "cpu"
) -> torch.Tensor:
    """The image at ``path`` downscaled by ``scale`` (bicubic) and centre-cropped to at most
    ``max_side`` pixels per side: (1, channels, h, w) float32 in [0, 1]."""
    try:  # run() has checked that the file exists, before the model was loaded
        pixels = ev.read_image(path, allow_transparency=True)  # uint8 grey or RGB
    except ev.EvaluationError as e:
        raise FuseError(f"{e} (the --image for the verification)") from e
    img = Image.fromarray(pixels).convert("L" if channels == 1 else "RGB")
    if img.width < scale or img.height < scale:
        raise FuseError(
            f"--image {path}: {img.width}x{img.height} pixels is too small to downscale by "
            f"{scale}; pass a larger image"
        )
    if scale > 1:
        img = img.resize((img.width // scale, img.height // scale), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w = arr.shape[:2]
    top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    arr = arr[top : top + max_side, left : left + max_side]
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    if x.shape[1] != channels:  # e.g. a 2-channel model: repeat grey
        x = x[:, :1].repeat(1, channels, 1, 1)
    return x.to(device)


@torch.no_grad()
def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    """max |a(x) - b(x)| for x (N,C,H,W); NaN when either output holds NaN or Inf (compare
    with ``not (d <= tol)`` so that this fails)."""
    ya, yb = a(x).float(), b(x).float()
    if not (torch.isfinite(ya).all() and torch.isfinite(yb).all()):
        return math.nan
    return (ya - yb).abs().max().item()


@torch.no_grad()
def median_latency(
    model: torch.nn.Module, x: torch.Tensor, repeats: int = 5, warmup: int = 1
) -> float:
    """Median wall time in seconds of ``model(x)`` over ``repeats`` runs (after ``warmup``)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Write ``model``'s state dict as traiNNer-redux does, format by ``path``'s suffix.

    The file is serialized in memory and written by Python, so that a failed write (a full
    disk) is an ``OSError`` with the OS's reason; the libraries' own file writers lose it
    (safetensors raises a ``SafetensorError``, torch.save an "unexpected pos" ``RuntimeError``).
    """
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = json.loads(json.dumps(getattr(model, "hyperparameters", {})))  # tuples -> lists
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        data = save(sd, metadata={"metadata": json.dumps(meta)})
    else:
        buffer = io.BytesIO()
        torch.save({"metadata": meta, "params": sd}, buffer)
        data = buffer.getvalue()
    path.write_bytes(data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridmoe fuse",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="HybridMoE checkpoint file (any spandrel form) or a shipped model name "
        "(hybridmoe models lists them)",
    )
    p.add_argument("output", type=Path, help="fused checkpoint to write (.safetensors or .pth)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    add_device_argument(p, "the verification and timing")
    p.add_argument(
        "--tol", type=finite_non_negative, default=1e-4, help="max abs diff allowed (fp32)"
    )
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        metavar="FILE",
        help="also verify on this real image, downscaled by the model's scale (default: a "
        "random image only)",
    )
    p.add_argument("--time", action="store_true", help="measure latency before/after fusing")
    p.add_argument(
        "--size",
        type=positive_int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input size for --time (default 128 128)",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=None, help="timed runs for --time (median; 5)"
    )
    p.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: default)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FuseError, imageio.OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    out: Path = args.output
    if not args.time and (args.size is not None or args.repeats is not None):
        raise FuseError("--size and --repeats set up --time; add --time or drop them")
    if out.is_dir():
        raise FuseError(f"OUTPUT {out} is a folder; give the fused checkpoint's file name")
    if out.suffix.lower() not in OUTPUT_EXTS:
        raise FuseError(f"{out}: unsupported output type {out.suffix!r}; use .safetensors or .pth")
    try:  # a shipped model's name stands for its file, which OUTPUT must not replace
        source = resolve_model(args.checkpoint)
    except CheckpointError:
        source = args.checkpoint  # loading names the problem
    imageio.check_output(out, overwrite=args.overwrite, inputs=[source], what="fused checkpoint")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image is not None and not args.image.is_file():  # before loading the model
        problem = "is a folder" if args.image.is_dir() else "no such file"
        raise FuseError(f"--image {args.image}: {problem}; pass an image file (PNG, JPEG, WebP)")
    desc = load_hybridmoe(args.checkpoint, args.device)
    original = desc.model
    # NaN/Inf weights never get here: the loader refuses them, naming the tensor
    if original.deploy:
        print("note: the checkpoint is already fused; writing it again in the deploy form")
    fused = copy.deepcopy(original).fuse().eval()
    if not fused.deploy:
        print("note: this network has no re-param convolutions; its deploy form is itself")
    n_before, n_after = count_params(original), count_params(fused)

    scale, ch = original.scale, original.in_ch
    g = torch.Generator().manual_seed(0)
    checks: list[tuple[str, torch.Tensor]] = [
        (f"random 1x{ch}x37x29", torch.rand(1, ch, 37, 29, generator=g).to(args.device))
    ]
    if args.image is not None:
        img = real_image(args.image, scale, ch, device=args.device)
        checks.append((f"{args.image.name} /{scale} {tuple(img.shape[-2:])}", img))
    else:
        print("note: verifying on a random image; --image FILE also verifies on a real one")

    print(f"model: {desc.architecture.name} x{scale}, tags {', '.join(desc.tags)}")
    print(f"parameters: {n_before:,} -> {n_after:,} ({n_after - n_before:+,})")
    failed = []
    for name, x in checks:
        d = max_abs_diff(original, fused, x)
        print(f"max abs diff fused vs original, {name}: {d:.3e}")
        if not d <= args.tol:  # NaN (non-finite outputs) fails too
            failed.append(f"{name}: {'NaN/Inf output' if math.isnan(d) else f'{d:.3e}'}")
    if failed:
        raise VerificationError(
            f"fused outputs differ from the original beyond {args.tol:g} ({'; '.join(failed)}); "
            f"nothing was written"
        )

    if args.time:
        h, w = args.size or (128, 128)
        repeats = args.repeats or 5
        x = torch.rand(1, ch, h, w, generator=g).to(args.device)
        t0 = median_latency(original, x, repeats)
        t1 = median_latency(fused, x, repeats)
        print(
            f"latency {args.device} 1x{ch}x{h}x{w} (median of {repeats}): "
            f"{t0 * 1e3:.1f} ms -> {t1 * 1e3:.1f} ms ({t0 / t1:.2f}x)"
        )

    with imageio.atomic_output(
        out, overwrite=args.overwrite, what="fused checkpoint"
    ) as tmp:  # renamed to OUTPUT only once it reloads as the fused model
        try:
            save_checkpoint(fused, tmp)
        except OSError as e:
            raise imageio.write_error(out, e) from e
        reloaded = load_hybridmoe(tmp, args.device).model
        d = max_abs_diff(fused, reloaded, checks[0][1])
        if reloaded.deploy != fused.deploy or d != 0.0:  # NaN != 0.0 too
            raise VerificationError(
                f"{out} would not reload as the fused model (diff {d:.3e}); nothing was written"
            )
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, deploy form)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
