"""Expert-usage histogram of a HybridMoE checkpoint on real images.

Routes every image of the given folders through the model (eval mode, deterministic routing)
and prints, per MoE layer, the share of token slots each expert receives — the check that
training did not collapse the routing onto a few experts::

    hybridmoe moe-usage MODEL.safetensors ../shared/data/benchmark/Set14/HR
        [--compare {bf16,fp16}] [--json out.json [--overwrite]]

``--compare`` runs the model cast to fp16 or bf16 beside float32 and reports, per layer, the
share of tokens routed to other experts than in float32 (their features reach the router
rounded; a token near a decision boundary changes experts), the largest output difference,
and the same difference with the cast model held to float32's experts (the rounding alone).

Images are read as hybridmoe evaluate reads them (every bit depth and Pillow mode at its own
white level; alpha ignored). A folder without images, a missing path or an unreadable image is
an error (exit status 2). --json is checked before the run (not an input, not an existing file
unless --overwrite) and written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridmoe import evaluate as ev
from hybridmoe import imageio
from hybridmoe.checkpoint import load_checkpoint
from hybridmoe.cliargs import add_device_argument
from hybridmoe.provenance import record_header

EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _moe_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    layers = {n: m for n, m in model.named_modules() if type(m).__name__ == "MoEFFN"}
    if not layers:
        raise ValueError("the model has no MoE layers")
    return layers


def routed(
    model: torch.nn.Module, layers: dict[str, torch.nn.Module], img: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model(img)`` and, per MoE layer of ``layers`` (name -> module), the experts (T,k)
    its tokens were routed to."""
    chosen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def fn(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            chosen[name] = mod.route_image(args[0])[1]  # type: ignore[operator]

        return fn

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        out = model(img)
    finally:
        for h in hooks:
            h.remove()
    return out, chosen


def usage_histograms(model: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per MoE layer name: fraction of routed token slots per expert, shape (E,), summing to 1.

    ``images``: (1,C,H,W) float tensors in [0,1] on the model's device and dtype.
    """
    layers = _moe_layers(model)
    counts: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for img in images:
            for name, top_i in routed(model, layers, img)[1].items():
                hist = torch.bincount(top_i.reshape(-1), minlength=layers[name].num_experts)  # type: ignore[arg-type]
                counts[name] = counts.get(name, torch.zeros_like(hist)) + hist.cpu()
    return {n: (c.float() / c.sum()).tolist() for n, c in counts.items()}


def _expert_sets(top_i: torch.Tensor) -> torch.Tensor:
    """(T,k) selected experts -> (T,k) sorted, so that equal sets compare equal."""
    return top_i.sort(dim=-1).values


def routing_drift(
    model: torch.nn.Module, images: list[torch.Tensor], dtype: torch.dtype
) -> dict[str, Any]:
    """What casting the whole model (weights and input) to ``dtype`` does to its routing.

    Returns ``rerouted``: per MoE layer, the share of tokens whose set of selected experts
    differs from float32's (features reach the router rounded, so a token near a decision
    boundary can change experts); ``max_abs_diff``: the largest output difference to float32;
    ``max_abs_diff_fp32_experts``: the same with every layer of the cast model held to
    float32's experts (gates from its own router probabilities), i.e. the rounding alone.
    The gap between the two is what the changed expert choices cost. ``images``: (1,C,H,W)
    float32 tensors in [0,1] on the model's device; ``model`` is left as it was.
    """
    import copy

    layers = _moe_layers(model)
    cast = copy.deepcopy(model).to(dtype)
    cast_layers = _moe_layers(cast)

    def forced(mod: Any, top_i: torch.Tensor) -> Callable[[torch.Tensor], tuple[Any, ...]]:
        def route_image(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            probs = type(mod).route_image(mod, x)[0]  # the cast model's own probabilities
            top_p = probs.gather(-1, top_i)
            return probs, top_i, top_p / top_p.sum(dim=-1, keepdim=True)

        return route_image

    worst = worst_forced = 0.0
    changed = dict.fromkeys(layers, 0)
    tokens = dict.fromkeys(layers, 0)
    with torch.inference_mode():
        for img in images:
            ref, ref_sets = routed(model, layers, img)
            out, now = routed(cast, cast_layers, img.to(dtype))
            for n in layers:
                diff = (_expert_sets(now[n]) != _expert_sets(ref_sets[n])).any(dim=-1)
                changed[n] += int(diff.sum())
                tokens[n] += diff.numel()
            worst = max(worst, float((out.float() - ref).abs().max()))
            for n, m in cast_layers.items():  # an instance attribute shadows the method
                m.route_image = forced(m, ref_sets[n])  # type: ignore[method-assign]
            try:
                out = cast(img.to(dtype)).float()
            finally:
                for m in cast_layers.values():
                    del m.route_image
            worst_forced = max(worst_forced, float((out - ref).abs().max()))
    return {
        "rerouted": {n: changed[n] / tokens[n] for n in layers},
        "max_abs_diff": worst,
        "max_abs_diff_fp32_experts": worst_forced,
    }


class UsageError(Exception):
    """A problem with the command-line inputs or outputs; the message says what to do."""


def image_files(paths: list[Path]) -> list[Path]:
    """The image files named by ``paths`` (files as given, folders: their files with a suffix of
    ``EXTS``, sorted). Raises :class:`UsageError` for a missing path, a folder without images
    or no image at all."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = [f for f in imageio.visible_files(p) if f.suffix.lower() in EXTS]
            if not found:
                raise UsageError(
                    f"no images in the folder {p} (looked for {', '.join(sorted(EXTS))})"
                )
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"image file or folder not found: {p}")
    if not files:
        raise UsageError("no images given")
    return files


def load_tensor(path: Path, channels: int, device: torch.device) -> torch.Tensor:
    """``path`` as a (1, channels, H, W) float tensor in [0, 1] on ``device``: grey is
    repeated for a 3-channel model, colour reduced to BT.601 luma for a 1-channel one."""
    try:
        arr = ev.read_image(path, allow_transparency=True).astype(np.float32) / 255.0
    except ev.EvaluationError as e:
        raise UsageError(str(e)) from e
    if arr.ndim == 3 and channels == 1:
        arr = (arr @ ev.LUMA_WEIGHTS.astype(np.float32))[..., None]
    elif arr.ndim == 2:
        arr = np.repeat(arr[..., None], channels, axis=2)
    if arr.shape[2] != channels:
        raise UsageError(f"cannot feed the {arr.shape[2]}-channel image {path} to the model")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].to(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hybridmoe moe-usage",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("model", help="HybridMoE checkpoint (any form spandrel loads)")
    ap.add_argument("images", nargs="+", type=Path, help="image files or folders")
    add_device_argument(ap, "the model")
    ap.add_argument(
        "--compare",
        choices=sorted(PRECISIONS),
        default=None,
        help="also run the model cast to fp16 or bf16 and report the share of tokens whose\n"
        "experts differ from float32's, and what that costs in the output",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    words = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(words)
    try:
        files = image_files(args.images)
        if args.json is not None:  # before any work
            inputs = [args.model, *files]
            imageio.check_output(
                args.json, overwrite=args.overwrite, inputs=inputs, what="JSON report"
            )
    except (UsageError, imageio.OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        desc = load_checkpoint(args.model, args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return report(desc, files, args, ["hybridmoe", "moe-usage", *words])
    except (UsageError, imageio.OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def report(desc: Any, files: list[Path], args: argparse.Namespace, command: list[str]) -> int:
    """Route ``files`` through the loaded model, print the histograms, write ``--json`` (with
    ``command``, the command line's words)."""
    try:
        _moe_layers(desc.model)  # before the images are read
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    imgs = [load_tensor(f, desc.input_channels, dev) for f in files]
    hist = usage_histograms(desc.model, imgs)
    uniform = 1 / len(next(iter(hist.values())))
    print(f"{len(imgs)} images; share of routed token slots per expert (uniform = {uniform:.3f})")
    for name, h in hist.items():
        print(f"{name:28s} " + " ".join(f"{v:6.3f}" for v in h))
    drift = None
    if args.compare:
        drift = routing_drift(desc.model, imgs, PRECISIONS[args.compare])
        print(f"cast to {args.compare}: share of tokens whose experts differ from float32's")
        for name, share in drift["rerouted"].items():
            print(f"{name:28s} {100 * share:6.2f} %")
        print(
            f"max abs output difference to float32: {drift['max_abs_diff']:.2e} "
            f"({drift['max_abs_diff_fp32_experts']:.2e} with float32's experts)"
        )
    if args.json:
        record = {**record_header(command, args.device), "images": len(imgs), "usage": hist}
        if drift is not None:
            record["compare"] = {"dtype": args.compare, **drift}
        text = json.dumps(record, indent=2) + "\n"
        imageio.write_text_atomic(args.json, text, overwrite=args.overwrite, what="JSON report")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
