"""Shared start-up helpers for the command-line scripts in this folder.

The scripts run from a source checkout (``python scripts/x.py``) or with the package installed
(``pip install .``). Either way they need the single-file network module ``hybridmoe_arch``;
:func:`import_arch` finds it and :func:`load_model` loads any spandrel-supported checkpoint
(HybridMoE included) into an ``ImageModelDescriptor``, reading the file safely.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH_DIR = REPO_ROOT / "traiNNer" / "archs"
LOSS_DIR = REPO_ROOT / "traiNNer" / "losses"


def import_arch() -> ModuleType:
    """Import ``hybridmoe_arch`` from the checkout if present, else from the installed wheel."""
    if (ARCH_DIR / "hybridmoe_arch.py").is_file() and str(ARCH_DIR) not in sys.path:
        sys.path.insert(0, str(ARCH_DIR))
    return importlib.import_module("hybridmoe_arch")


def import_loss() -> ModuleType:
    """Import ``hybridmoe_loss`` (standalone form, outside traiNNer-redux)."""
    import_arch()
    if (LOSS_DIR / "hybridmoe_loss.py").is_file() and str(LOSS_DIR) not in sys.path:
        sys.path.insert(0, str(LOSS_DIR))
    return importlib.import_module("hybridmoe_loss")


def load_model(path: str | Path, device: str = "cpu") -> Any:
    """Load a checkpoint with spandrel (HybridMoE registered) and return its descriptor.

    The file is read by ``hybridmoe_arch.read_state_dict`` (tensors only: TorchScript archives
    and other pickled objects are refused unread). Raises ``hybridmoe_arch.CheckpointError``
    (a ``ValueError``) with a readable message for missing, empty, corrupt, unsafe or
    unsupported files.
    """
    arch = import_arch()
    return arch.load_checkpoint(path, device=device)
