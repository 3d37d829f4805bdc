"""The ``hybridmoe`` command: one subcommand per tool of the package.

Each subcommand hands its arguments to the ``main`` of the module that implements it (its
options are in ``hybridmoe SUBCOMMAND --help``); ``hybridmoe models`` lists the shipped models.
Ctrl-C ends any subcommand with the line "interrupted" (``upscale``: its own) and exit status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]


def _models(argv: Sequence[str]) -> int:
    from hybridmoe.models import shipped_models

    ap = argparse.ArgumentParser(
        prog="hybridmoe models",
        description="List the shipped pretrained models; pass a name as MODEL to any command.",
    )
    ap.parse_args(list(argv))
    for name, path in shipped_models().items():
        card = path.with_suffix(".md")
        print(f"{name:24s} {path}" + (f"  (card: {card.name})" if card.is_file() else ""))
    return 0


def _status(result: object) -> int:
    return result if isinstance(result, int) else 0


def _upscale(argv: Sequence[str]) -> int:
    from hybridmoe import upscale

    return _status(upscale.main(list(argv)))


def _evaluate(argv: Sequence[str]) -> int:
    from hybridmoe import evaluate

    return _status(evaluate.main(list(argv)))


def _fuse(argv: Sequence[str]) -> int:
    from hybridmoe import fuse

    return _status(fuse.main(list(argv)))


def _export(argv: Sequence[str]) -> int:
    from hybridmoe import export

    return _status(export.main(list(argv)))


def _bench(argv: Sequence[str]) -> int:
    from hybridmoe import bench

    return _status(bench.main(list(argv)))


def _install(argv: Sequence[str]) -> int:
    from hybridmoe import install

    return _status(install.main(list(argv)))


def _pairs(argv: Sequence[str]) -> int:
    from hybridmoe import pairs

    return _status(pairs.main(list(argv)))


def _degraded(argv: Sequence[str]) -> int:
    from hybridmoe import degraded_sets

    return _status(degraded_sets.main(list(argv)))


def _options(argv: Sequence[str]) -> int:
    from hybridmoe import options

    return _status(options.main(list(argv)))


def _moe_usage(argv: Sequence[str]) -> int:
    from hybridmoe import moe_usage

    return _status(moe_usage.main(list(argv)))


def _precision(argv: Sequence[str]) -> int:
    from hybridmoe import precision

    return _status(precision.main(list(argv)))


def _perceptual(argv: Sequence[str]) -> int:
    from hybridmoe import perceptual

    return _status(perceptual.main(list(argv)))


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "upscale": (_upscale, "upscale images with a model file or a shipped model"),
    "evaluate": (_evaluate, "PSNR/SSIM (Y channel) on benchmark sets"),
    "fuse": (_fuse, "re-parameterize a checkpoint into its fused deploy form"),
    "export-onnx": (_export, "export a checkpoint to ONNX (needs the [onnx] extra)"),
    "bench": (_bench, "time the variants and their peers"),
    "install-trainner": (_install, "install into / remove from a traiNNer-redux checkout"),
    "make-pairs": (_pairs, "make HR/LR training pairs (MATLAB bicubic)"),
    "make-degraded": (_degraded, "fixed-seed degraded sets: x1 restoration or x4 real-world"),
    "make-options": (_options, "write the traiNNer-redux option templates"),
    "moe-usage": (_moe_usage, "how often each MoE expert is chosen on images"),
    "check-precision": (_precision, "compare fp32/fp16/bf16 outputs and scores"),
    "perceptual-weights": (
        _perceptual,
        "LPIPS weights as .safetensors (no download later)",
    ),
    "models": (_models, "list the shipped pretrained models"),
}
"""Subcommand -> (runner, one-line help)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = [f"  {name:18s} {text}" for name, (_, text) in COMMANDS.items()]
        usage = "usage: hybridmoe SUBCOMMAND [options]   (hybridmoe SUBCOMMAND --help)"
        print("\n".join([usage, "", "subcommands:", *lines]))
        if args and args[0] not in ("-h", "--help"):
            print(f"\nhybridmoe: unknown subcommand {args[0]!r}", file=sys.stderr)
            return 2
        return 0 if args else 2
    runner, _ = COMMANDS[args[0]]
    try:
        status = runner(args[1:])
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:  # the reader went away (`hybridmoe models | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # as a program stopped by SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("interrupted", file=sys.stderr)
        return 130  # as a program stopped by SIGINT
    return status


if __name__ == "__main__":
    raise SystemExit(main())
