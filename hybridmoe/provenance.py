"""What a measurement record says about how it was made: the command, the commit, the date.

Every JSON report of the package (``bench``, ``evaluate``, ``check-precision``,
``moe-usage``) and of the measuring scripts carries these three fields, so that a number in
the docs can be traced to the code and the command line that made it."""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
from collections.abc import Sequence

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


def record_header(command: Sequence[str]) -> dict[str, str | None]:
    """``command`` (the words of the command line, shell-quoted when joined), ``commit`` and
    ``date``: the fields a measurement record begins with."""
    return {"command": shlex.join(command), "commit": git_commit(), "date": utc_now()}
