"""The small HybridMoE configuration the tests share: every component present, few channels."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "dim": 8,
    "enc_blocks": (1, 1, 1),
    "hf_blocks": (1, 1, 1),
    "mid_blocks": 1,
    "dec_blocks": (1, 1),
    "window_size": 4,
    "kernel_size": 5,
    "num_experts": 3,
    "top_k": 2,
}
"""Keyword arguments of :class:`hybridmoe_arch.HybridMoE`; tests apply their options on top."""
