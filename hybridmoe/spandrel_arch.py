"""spandrel support for HybridMoE: the ``Architecture`` that detects and loads its checkpoints.

The descriptor reads the state dict alone (``hmoe_meta``, tensor shapes and key names, all
checked by :mod:`hybridmoe.meta`) and builds every variant, option and form (trained or fused).
:func:`register_spandrel` adds it to spandrel's ``MAIN_REGISTRY``.
"""

from __future__ import annotations

from typing import Any

from spandrel import Architecture, ImageModelDescriptor, ModelTiling, StateDict
from spandrel.util import KeyCondition

from hybridmoe.meta import model_from_state_dict
from hybridmoe_arch import VARIANTS, HybridMoE

__all__ = ["DETECT_KEYS", "HybridMoEArch", "register_spandrel", "variant_of"]

DETECT_KEYS = ("hmoe_meta", "stem.weight", "mid_in.weight")
"""Keys every HybridMoE state dict holds (and no other architecture's does, all together)."""


def variant_of(hyperparameters: dict[str, Any]) -> str | None:
    """The short name ("nano", "s", "m", "l") of the named size a model was built as, if any."""
    for name, sizes in VARIANTS.items():
        if all(
            hyperparameters.get(k) == (tuple(v) if isinstance(v, list) else v)
            for k, v in sizes.items()
        ):
            return name.split("_", 1)[1]
    return None


def _tags(model: HybridMoE) -> list[str]:
    hp = model.hyperparameters
    variant = variant_of(hp)
    tags = [variant] if variant else []
    tags.append(f"{hp['dim']}dim")
    if model.num_experts:
        tags.append(f"{model.num_experts}e-top{model.top_k}")
    tags.append(hp["global_mixer"])
    if hp.get("noise"):  # the texture head's learned noise injection (off in eval by default)
        tags.append("noise")
    if hp["deploy"]:
        tags.append("fused")
    return tags


class HybridMoEArch(Architecture[HybridMoE]):
    """spandrel support for every HybridMoE variant, option and form."""

    def __init__(self) -> None:
        super().__init__(
            id="HybridMoE",
            name="HybridMoE-FreqNet",
            detect=KeyCondition.has_all(*DETECT_KEYS),
        )

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[HybridMoE]:
        model = model_from_state_dict(state_dict)
        hp = model.hyperparameters
        # image-wide operations make tiled results differ from whole-image ones
        global_ops = hp["global_mixer"] != "none" or (hp["use_hf"] and hp["freq_split"] == "fft")
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration" if model.scale == 1 else "SR",
            tags=_tags(model),
            supports_half=True,
            supports_bfloat16=True,
            scale=model.scale,
            input_channels=model.in_ch,
            output_channels=model.in_ch,
            tiling=ModelTiling.DISCOURAGED if global_ops else ModelTiling.SUPPORTED,
        )


def register_spandrel() -> bool:
    """Make spandrel's ``ModelLoader`` recognize HybridMoE checkpoints. Idempotent.

    Returns True if this call added the architecture, False if it was already registered.
    """
    from spandrel import MAIN_REGISTRY, ArchSupport  # the registry imports every architecture

    if "HybridMoE" in MAIN_REGISTRY:
        return False
    added = MAIN_REGISTRY.add(
        ArchSupport.from_architecture(HybridMoEArch()), ignore_duplicates=True
    )
    return bool(added)
