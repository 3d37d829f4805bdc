"""Argument types the commands share, checked when the arguments are parsed (exit 2 with the
option named): ``--device`` (``auto``: a CUDA GPU when there is one; ``cpu``; ``cuda``;
``cuda:N``), counts, tolerances and ``WxH`` sizes."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

import torch

__all__ = [
    "add_device_argument",
    "device_name",
    "finite_non_negative",
    "non_negative_int",
    "parse_size",
    "positive_float",
    "positive_int",
]

_CUDA = re.compile(r"cuda(:\d+)?")


def device_name(text: str) -> str:
    """argparse type: ``auto`` → ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda`` and
    ``cuda:N`` as given. Refuses a CUDA device this machine does not have, with the fix."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if not _CUDA.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text}: CUDA is not available here (no NVIDIA GPU, or a CPU-only PyTorch); "
            "use --device cpu"
        )
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return text


def add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--device`` (default ``auto``) to ``parser``; ``what`` runs there, e.g. "the model"."""
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        metavar="{auto,cpu,cuda}",
        help=f"where {what} runs: auto = a CUDA GPU when there is one, else the CPU; "
        "cpu; cuda or cuda:N (default: auto)",
    )


def parse_number(kind: type, text: str, wanted: str) -> Any:
    """``kind(text)``, or the argparse error that says what was wanted (argparse's own
    message names the type function: "invalid positive_int value")."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = parse_number(int, text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = parse_number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = parse_number(float, text, "a number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def finite_non_negative(text: str) -> float:
    """argparse type: a finite number >= 0 (a tolerance)."""
    value = parse_number(float, text, "a finite number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def parse_size(text: str) -> tuple[int, int]:
    """argparse type: ``WxH`` -> ``(width, height)``, both >= 1."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 1920x1080, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h
