"""Where things are: the source checkout (when running from one) and the shipped models."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
"""The source checkout when the package runs from one (editable install or ``python -m``);
otherwise the folder the package is installed in, where the paths below do not exist."""
ARCH_FILE = REPO_ROOT / "traiNNer" / "archs" / "hybridmoe_arch.py"
IN_CHECKOUT = ARCH_FILE.is_file()


def pretrained_dir() -> Path:
    """The folder of the shipped models: ``hybridmoe/pretrained`` inside an installed wheel,
    ``experiments/pretrained_models`` in a checkout."""
    packaged = PACKAGE_DIR / "pretrained"
    return packaged if packaged.is_dir() else REPO_ROOT / "experiments" / "pretrained_models"


def source_root() -> Path:
    """The tree ``hybridmoe install-trainner`` copies from (``traiNNer/…`` and
    ``options/{train,test,onnx}/HybridMoE``): the checkout, or its copy inside a wheel."""
    return REPO_ROOT if IN_CHECKOUT else PACKAGE_DIR / "_tree"
