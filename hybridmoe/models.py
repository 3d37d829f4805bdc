"""Models by name: the shipped pretrained checkpoints and the variants with random weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import hybridmoe_arch as arch
from hybridmoe.meta import CheckpointError
from hybridmoe.paths import pretrained_dir

__all__ = ["enable_noise", "perturb", "resolve_model", "shipped_models", "variant"]


def shipped_models() -> dict[str, Path]:
    """Name (file stem, e.g. ``2x_HybridMoE_S``) -> path of every shipped checkpoint."""
    folder = pretrained_dir()
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}


def resolve_model(spec: str | Path) -> Path:
    """The checkpoint file ``spec`` names: an existing path, or a shipped model's name
    (case-insensitive, with or without ``.safetensors``). :class:`CheckpointError` otherwise."""
    path = Path(spec)
    if path.exists() or path.is_symlink():  # a dangling link: named by the loader
        return path
    shipped = {name.lower(): p for name, p in shipped_models().items()}
    key = path.name.lower().removesuffix(".safetensors")
    if len(path.parts) == 1 and key in shipped:
        return shipped[key]
    if len(path.parts) == 1 and not path.suffix:
        names = ", ".join(shipped_models()) or "none found"
        raise CheckpointError(
            f"model file not found: {str(spec)!r} is neither a file nor a shipped model name "
            f"(shipped: {names}; `hybridmoe models` lists them)"
        )
    raise CheckpointError(f"model file not found: {path}")


def variant(name: str, scale: int) -> arch.HybridMoE:
    """A variant (``hybridmoe_s``, …) with freshly initialized weights."""
    if name not in arch.FACTORIES:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(arch.FACTORIES)}")
    return arch.FACTORIES[name](scale=scale)


def enable_noise(model: nn.Module) -> None:
    """Inject ``model``'s learned noise (the texture head of a HybridMoE built with
    ``noise=True``) in inference too; it is drawn from torch's default generator, so seed it
    (``torch.manual_seed``) for a reproducible output. ``ValueError`` for a model without it."""
    if not isinstance(model, arch.HybridMoE) or not model.hyperparameters["noise"]:
        raise ValueError(
            f"this {type(model).__name__} model has no learned noise injection (only HybridMoE "
            "models built with noise=True have it, e.g. 4x_HybridMoE_S_RealWorld); drop --noise"
        )
    model.set_noise_in_eval(True)


@torch.no_grad()
def perturb(model: nn.Module, std: float = 0.05, seed: int = 1) -> nn.Module:
    """Add N(0, ``std``²) noise (fixed ``seed``) to every floating parameter, in place, and
    return ``model``: freshly initialized layers (zero biases, near-zero output convs, unit
    norms) then carry non-trivial values, so comparisons between forms or precisions see every
    component."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g).to(p) * std)
    return model
