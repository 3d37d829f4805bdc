"""What a measurement record says about how it was made: the command, the commit, the date
and the device.

Every JSON report of the package (``bench``, ``evaluate``, ``check-precision``,
``moe-usage``) and of the measuring scripts carries these fields, so that a number in the docs
can be traced to the code, the command line and the machine that made it."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hybridmoe.paths import IN_CHECKOUT, REPO_ROOT

COMMIT_ENV = "HYBRIDMOE_COMMIT"


def git_commit() -> str | None:
    """The commit that measurement records name: ``$HYBRIDMOE_COMMIT`` when set (a checkout
    copied to another machine can carry stale git metadata), else the HEAD of the source
    checkout the package runs from; None for an installed package (the git repository around
    its install folder, if any, is not this project's) or when git cannot tell."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    if not IN_CHECKOUT:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def utc_now() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cpu_name() -> str:
    """CPU model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> str:
    """What runs on ``device`` (``cpu``, ``cuda``, ``cuda:N``): the GPU's name, or the CPU's
    model name and core count, with the PyTorch version."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{cpu_name()}, {os.cpu_count()} cores"
    return f"{what}, torch {torch.__version__}"


def record_header(command: Sequence[str], device: str | None = None) -> dict[str, str | None]:
    """``command`` (the words of the command line, shell-quoted when joined), ``commit``,
    ``date`` and, given the device the work ran on, ``device`` (:func:`machine`): the fields
    a measurement record begins with."""
    header = {"command": shlex.join(command), "commit": git_commit(), "date": utc_now()}
    if device is not None:
        header["device"] = machine(device)
    return header
