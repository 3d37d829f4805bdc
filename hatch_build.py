"""Wheel build hook: files outside the package that a regular wheel carries.

A regular wheel gets the single-file network and losses as top-level modules, the shipped models
and the traiNNer-redux files (for ``hybridmoe install-trainner``). An editable install
(``pip install -e .``) gets none of these copies: it puts the checkout, ``traiNNer/archs`` and
``traiNNer/losses`` on ``sys.path`` (``dev-mode-dirs``), so the checkout's files are what runs.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

WHEEL_FILES = {
    "traiNNer/archs/hybridmoe_arch.py": "hybridmoe_arch.py",
    "traiNNer/losses/hybridmoe_loss.py": "hybridmoe_loss.py",
    "experiments/pretrained_models": "hybridmoe/pretrained",
    "traiNNer": "hybridmoe/_tree/traiNNer",
    "options/train/HybridMoE": "hybridmoe/_tree/options/train/HybridMoE",
    "options/test/HybridMoE": "hybridmoe/_tree/options/test/HybridMoE",
    "options/onnx/HybridMoE": "hybridmoe/_tree/options/onnx/HybridMoE",
}
"""Source path (relative to the project) -> path inside the wheel."""


class WheelFilesHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds :data:`WHEEL_FILES` to regular (not editable) wheels."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "standard":
            build_data["force_include"].update(WHEEL_FILES)
