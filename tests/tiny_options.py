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


def legacy_meta(hp: dict[str, Any], version: int) -> list[int]:
    """The ``hmoe_meta`` values a model with hyperparameters ``hp`` had in layout version 1
    (13 values) or 2 (17: + hf_blocks, num_experts): positional, flags packed into bits."""
    import hybridmoe_arch as A

    def index(name: str) -> int:
        return A.META_FIELD[name].choices.index(hp[name])

    flags = int(hp["use_moe"]) | hp["refine_moe"] << 1 | hp["use_hf"] << 2 | hp["use_attn"] << 3
    values = [
        version,
        hp["scale"],
        hp["in_ch"],
        hp["top_k"],
        index("base"),
        index("freq_split"),
        index("global_mixer"),
        index("upsampler"),
        hp["window_size"],
        flags,
        int(hp["noise"]) | hp["stem_lk"] << 1,
        hp["kernel_size"],
        round(hp["mlp_ratio"] * 1000),
    ]
    return values + ([*hp["hf_blocks"], hp["num_experts"]] if version >= 2 else [])


SMALL_UNET: dict[str, Any] = {
    "dim": 16,
    "enc_blocks": (1, 1, 1),
    "hf_blocks": (1, 0, 0),
    "mid_blocks": 1,
    "dec_blocks": (1, 1),
    "num_experts": 4,
    "top_k": 1,
}
"""A small network with every part of the three-level design (top-1 MoE bottleneck, window
attention, Fourier mixer, HF path); ``hybridmoe(**SMALL_UNET)`` builds it."""
