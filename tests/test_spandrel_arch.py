"""spandrel integration: checkpoints in every form traiNNer-redux writes load back through
``spandrel.ModelLoader`` with identical outputs and hyperparameters, detection neither steals
nor is stolen by spandrel's built-in architectures, and unreadable files fail clearly.

Conventions follow spandrel's own test suite where they fit: RNGs seeded to 2812 per test, a
hyperparameter diff with list/tuple normalization (``assert_same_hyperparameters``), a
``KeyCondition``-based detection check and a size-requirement probe through the descriptor.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import spandrel
import spandrel.architectures
import torch
from spandrel import ImageModelDescriptor, ModelLoader, ModelTiling
from tiny_options import TINY, legacy_meta

import hybridmoe_arch as A
from hybridmoe import checkpoint as C
from hybridmoe import meta as M
from hybridmoe.models import perturb
from hybridmoe.spandrel_arch import DETECT_KEYS, register_spandrel

register_spandrel()

ARCH_ID = "HybridMoE"


OPTIONS: dict[str, dict[str, Any]] = {
    "x1": {"scale": 1},
    "x2": {"scale": 2},
    "x3": {"scale": 3},
    "x4": {"scale": 4},
    "x8": {"scale": 8},
    "fft": {"freq_split": "fft"},
    "ssm": {"global_mixer": "ssm"},
    "mixer-none": {"global_mixer": "none"},
    "fft-ssm": {"freq_split": "fft", "global_mixer": "ssm"},
    "moe-off": {"use_moe": False},
    "refine-moe": {"refine_moe": True},
    "refine-only-moe": {"use_moe": False, "refine_moe": True},
    "hf-off": {"use_hf": False},
    "hf-off-fft": {"use_hf": False, "freq_split": "fft"},
    "attn-off": {"use_attn": False},
    "noise": {"noise": True},
    "stem-lk": {"stem_lk": True},
    "dysample-x2": {"upsampler": "dysample", "scale": 2},
    "dysample-x1": {"upsampler": "dysample", "scale": 1},
    "base-bicubic": {"base": "bicubic"},
    "base-none": {"base": "none"},
    "base-none-x1": {"base": "none", "scale": 1},
    "in-ch-1": {"in_ch": 1},
    "in-ch-1-x1": {"in_ch": 1, "scale": 1},
    "window-8": {"window_size": 8},
    "window-2": {"window_size": 2},
    "mlp-1.5": {"mlp_ratio": 1.5},
    "mlp-3": {"mlp_ratio": 3.0},
    "mlp-2.66": {"mlp_ratio": 2.66},
    "kernel-3": {"kernel_size": 3},
    "kernel-9-stem": {"kernel_size": 9, "stem_lk": True},
    "experts-5-top3": {"num_experts": 5, "top_k": 3},
    "experts-1": {"num_experts": 1, "top_k": 1},
    "deeper": {"enc_blocks": (2, 1, 2), "hf_blocks": (1, 2, 0), "mid_blocks": 2},
    # no bottleneck blocks: use_moe=True without MoE layers (hmoe_meta keeps the expert
    # count; the model has none, so no "…e-top…" tag)
    "no-mid-no-dec2": {"mid_blocks": 0, "dec_blocks": (1, 0), "num_experts": 5},
    "moe-off-6e-top1": {"use_moe": False, "num_experts": 6, "top_k": 1},
    "rep3res": {"conv_block": "rep3res"},
    "rep3res-trunk": {
        "levels": 1,
        "use_hf": False,
        "conv_block": "rep3res",
        "enc_blocks": (2, 0, 0),
        "hf_blocks": (0, 0, 0),
        "mid_blocks": 0,
        "dec_blocks": (2, 0),
        "global_mixer": "none",
        "scale": 2,
    },
    "everything": {
        "freq_split": "fft",
        "global_mixer": "ssm",
        "refine_moe": True,
        "stem_lk": True,
        "noise": True,
        "upsampler": "dysample",
        "base": "bicubic",
        "scale": 3,
    },
}
"""Every option that changes state-dict keys or outputs (scale 4 unless given)."""

FILE_FORMS = ("safetensors-meta", "pth-meta-params", "pth-params+ema", "pth-bare")
"""How traiNNer-redux writes checkpoints: flat safetensors with a JSON ``metadata`` header
(its default), ``{"metadata", "params"}``, ``{"params", "params_ema"}`` (EMA nets) and a bare
state dict (what other tools write)."""


# ------------------------------------------------------------------------------ helpers


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed_2812() -> None:
    random.seed(2812)
    np.random.seed(2812)
    torch.manual_seed(2812)


def build(**options: Any) -> A.HybridMoE:
    """A perturbed (every parameter off its init) tiny model in eval mode."""
    model = A.HybridMoE(**{**TINY, **options})
    perturb(model)
    return model.eval()


def image(model: A.HybridMoE, h: int = 13, w: int = 17, n: int = 1) -> torch.Tensor:
    """(n, in_ch, h, w) in [0, 1]; 13×17 is neither a window nor a padding multiple."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, model.in_ch, h, w, generator=g)


@torch.no_grad()
def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval forward: (N,C,H,W) -> (N,C,sH,sW)."""
    return model.eval()(x)


def save(model: A.HybridMoE, path: Path, form: str, ema: A.HybridMoE | None = None) -> Path:
    """Write ``model`` the way traiNNer-redux (or another tool) would; returns the file."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = dict(model.hyperparameters)
    if form == "safetensors-meta":
        path = path.with_suffix(".safetensors")
        safetensors.torch.save_file(sd, str(path), metadata={"metadata": json.dumps(meta)})
    elif form == "pth-meta-params":
        path = path.with_suffix(".pth")
        torch.save({"metadata": json.loads(json.dumps(meta)), "params": sd}, path)
    elif form == "pth-params+ema":
        path = path.with_suffix(".pth")
        assert ema is not None
        # spandrel must pick params_ema over params
        torch.save({"params": ema.state_dict(), "params_ema": sd}, path)
    elif form == "pth-bare":
        path = path.with_suffix(".pth")
        torch.save(sd, path)
    else:  # pragma: no cover
        raise ValueError(form)
    return path


def load(path: Path) -> ImageModelDescriptor[Any]:
    """Load through spandrel's public file API (HybridMoE registered)."""
    desc = ModelLoader().load_from_file(path)
    assert isinstance(desc, ImageModelDescriptor)
    return desc


def has_moe_layers(hp: dict[str, Any]) -> bool:
    """Whether a configuration builds any MoE layer (bottleneck or refinement blocks with
    use_moe; without it both are dense FFNs)."""
    return bool(hp["use_moe"] and (hp["mid_blocks"] or hp["refine_moe"]))


def normalize(hp: dict[str, Any], *, effective: bool = False) -> dict[str, Any]:
    """Lists for tuples; with ``effective``, drop options that have no effect on the model
    (HF block counts without the HF path, expert counts without any MoE layer: what an
    ``hmoe_meta`` version 1 checkpoint could not record)."""
    out = {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in hp.items()}
    if effective:
        if not out["use_hf"]:
            out.pop("hf_blocks")
        if not has_moe_layers(out):
            out.pop("num_experts")
            out.pop("top_k")
    return out


def assert_same_hyperparameters(a: A.HybridMoE, b: A.HybridMoE, effective: bool = False) -> None:
    """spandrel's ``assert_loads_correctly`` comparison (``_get_diff``), as a readable diff;
    exact unless ``effective`` (see :func:`normalize`)."""
    ha, hb = (
        normalize(a.hyperparameters, effective=effective),
        normalize(b.hyperparameters, effective=effective),
    )
    diff = {k: (ha.get(k, "<missing>"), hb.get(k, "<missing>")) for k in ha.keys() | hb.keys()}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    assert not diff, f"hyperparameters differ (original, loaded): {diff}"


def expected_tags(model: A.HybridMoE, variant: str | None = None) -> list[str]:
    hp = model.hyperparameters
    tags = [variant] if variant else []
    tags.append(f"{hp['dim']}dim")
    if has_moe_layers(hp):  # a model without MoE layers has no expert tag
        tags.append(f"{hp['num_experts']}e-top{model.top_k}")
    tags.append(hp["global_mixer"])
    if hp.get("noise"):
        tags.append("noise")
    if hp["deploy"]:
        tags.append("fused")
    return tags


def assert_descriptor(
    desc: ImageModelDescriptor[Any], model: A.HybridMoE, variant: str | None = None
) -> None:
    """Descriptor fields match the original module's configuration."""
    hp = model.hyperparameters
    assert desc.architecture.id == ARCH_ID
    assert isinstance(desc.model, A.HybridMoE)
    assert desc.scale == hp["scale"]
    assert desc.purpose == ("Restoration" if hp["scale"] == 1 else "SR")
    assert desc.input_channels == desc.output_channels == hp["in_ch"]
    assert desc.tags == expected_tags(model, variant)
    global_ops = hp["global_mixer"] != "none" or (hp["use_hf"] and hp["freq_split"] == "fft")
    assert desc.tiling == (ModelTiling.DISCOURAGED if global_ops else ModelTiling.SUPPORTED)
    # the network pads internally: any size works
    assert desc.size_requirements.none
    assert desc.supports_half and desc.supports_bfloat16


def assert_same_outputs(
    desc: ImageModelDescriptor[Any],
    model: A.HybridMoE,
    x: torch.Tensor,
    *,
    ref: torch.Tensor | None = None,
    via_descriptor: bool = True,
    atol: float = 1e-6,
) -> None:
    """The loaded module reproduces ``model`` on x (N,C,H,W); ``ref`` = model(x) if known."""
    ref = run(model, x) if ref is None else ref
    got = run(desc.model, x)
    assert (
        got.shape == ref.shape == (*x.shape[:2], x.shape[2] * desc.scale, x.shape[3] * desc.scale)
    )
    diff = (got - ref).abs().max().item()
    assert diff <= atol, f"loaded model differs from the original by {diff:.3g}"
    if via_descriptor:  # the descriptor's own call (inference mode, clamp) agrees too
        assert torch.allclose(desc(x[:1]), ref[:1].clamp(0, 1), atol=atol, rtol=0)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("option", list(OPTIONS))
def test_round_trip_options(option: str, tmp_path: Path) -> None:
    """Every option, training and fused form, each through traiNNer's default flat
    safetensors and through one of the .pth forms (cycled over the options)."""
    model = build(**OPTIONS[option])
    ema = build(**OPTIONS[option])
    perturb(ema, seed=99)
    x = image(model)
    idx = list(OPTIONS).index(option)
    pth_train, pth_fused = FILE_FORMS[1 + idx % 3], FILE_FORMS[1 + (idx + 1) % 3]
    plan = [
        (False, "safetensors-meta"),
        (False, pth_train),
        (True, "safetensors-meta"),
        (True, pth_fused),
    ]
    for fused, form in plan:
        if fused and not model.deploy:
            model.fuse()
            ema.fuse()
            assert model.hyperparameters["deploy"] is True
        desc = load(save(model, tmp_path / f"{option}-{fused}", form, ema=ema))
        assert desc.model.hyperparameters["deploy"] is fused
        assert_same_hyperparameters(model, desc.model)
        assert_descriptor(desc, model)
        assert_same_outputs(desc, model, x, via_descriptor=form.startswith("safetensors"))


@pytest.mark.parametrize("form", [*FILE_FORMS, "fused-safetensors", "fused-pth"])
def test_round_trip_file_forms(form: str, tmp_path: Path) -> None:
    """Each checkpoint form, at batch 2 and a non-square size."""
    model = build(scale=2, refine_moe=True, stem_lk=True)
    ema = build(scale=2, refine_moe=True, stem_lk=True)
    perturb(ema, seed=5)
    if form.startswith("fused"):
        model.fuse()
        form = "safetensors-meta" if form.endswith("safetensors") else "pth-meta-params"
    path = save(model, tmp_path / "net", form, ema=ema)
    desc = load(path)
    assert_same_hyperparameters(model, desc.model)
    assert_descriptor(desc, model)
    x = image(model, 19, 11, n=2)
    assert_same_outputs(desc, model, x)
    if form == "pth-params+ema":  # the training weights must not have been chosen
        assert (run(desc.model, x) - run(ema, x)).abs().max() > 1e-4
    if form == "safetensors-meta":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            header = json.loads(f.metadata()["metadata"])
        assert normalize(header) == normalize(desc.model.hyperparameters)


@pytest.mark.parametrize("variant", ["hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l"])
def test_round_trip_variants(variant: str, tmp_path: Path) -> None:
    """The named sizes with their defaults at ×2 (one round trip each: the large ones are slow)."""
    model = A.FACTORIES[variant](scale=2)
    perturb(model, std=0.01)
    model.eval()
    form = "safetensors-meta" if variant in ("hybridmoe_nano", "hybridmoe_l") else "pth-meta-params"
    desc = load(save(model, tmp_path / variant, form))
    assert_same_hyperparameters(model, desc.model)
    assert_descriptor(desc, model, variant=variant.split("_", 1)[1])
    assert_same_outputs(desc, model, image(model, 12, 10))


def test_round_trip_set_top_k(tmp_path: Path) -> None:
    """``set_top_k`` is stored (meta buffer): the loaded model routes with the new k."""
    model = build(num_experts=4, top_k=1, refine_moe=True)
    x = image(model)
    before = run(model, x)
    model.set_top_k(3)
    after = run(model, x)
    assert (after - before).abs().max() > 1e-6  # k matters for this input
    for form in ("safetensors-meta", "pth-bare"):
        desc = load(save(model, tmp_path / f"k3-{form}", form))
        assert desc.model.hyperparameters["top_k"] == 3
        assert all(m.top_k == 3 for m in desc.model.moe_layers())
        assert "4e-top3" in desc.tags
        assert_same_hyperparameters(model, desc.model)
        assert_same_outputs(desc, model, x)
    # and after fusing
    model.fuse()
    desc = load(save(model, tmp_path / "k3-fused", "safetensors-meta"))
    assert desc.model.hyperparameters["top_k"] == 3
    assert_same_outputs(desc, model, x)


def test_fused_equals_training_form(tmp_path: Path) -> None:
    """The fused checkpoint computes what the training checkpoint computes (float rounding)."""
    model = build(scale=2, stem_lk=True, kernel_size=7)
    x = image(model)
    ref = run(model, x)
    train_desc = load(save(model, tmp_path / "train", "safetensors-meta"))
    fused_desc = load(save(model.fuse(), tmp_path / "fused", "safetensors-meta"))
    assert not any(".fused." in k for k in train_desc.model.state_dict())
    assert any(".fused." in k for k in fused_desc.model.state_dict())
    n_train = sum(p.numel() for p in train_desc.model.parameters())
    n_fused = sum(p.numel() for p in fused_desc.model.parameters())
    assert n_fused < n_train
    assert (run(fused_desc.model, x) - ref).abs().max() < 1e-5
    assert (run(train_desc.model, x) - ref).abs().max() == 0


def test_half_and_bf16_descriptor() -> None:
    """``supports_half``/``supports_bfloat16`` are claimed: the loaded model runs in both."""
    model = build(scale=2)
    desc = ModelLoader().load_from_state_dict(model.state_dict())
    x = image(model, 16, 12)
    ref = run(model, x).clamp(0, 1)
    for dtype, tol in ((torch.bfloat16, 0.1), (torch.float16, 0.02)):
        desc.to(dtype)
        out = desc(x.to(dtype)).float()
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() < tol, dtype
    desc.to(torch.float32)


def test_size_requirements_probe() -> None:
    """Square and non-square sizes from 1 px up through the descriptor (spandrel's probe)."""
    model = build(scale=2, window_size=8)
    desc = ModelLoader().load_from_state_dict(model.state_dict())
    for h, w in ((1, 1), (2, 3), (5, 4), (8, 8), (13, 17), (16, 33), (31, 9), (64, 40)):
        x = torch.rand(1, 3, h, w)
        assert desc(x).shape == (1, 3, 2 * h, 2 * w)


# ----------------------------------------------------------------- loader limitations


def _hp_exact_round_trip(**options: Any) -> None:
    model = build(**options)
    desc = ModelLoader().load_from_state_dict(model.state_dict())
    assert_same_hyperparameters(model, desc.model)
    assert_same_outputs(desc, model, image(model))


def test_hyperparameters_exact_without_hf_path() -> None:
    """hmoe_meta (version 2) records hf_blocks: recovered without any HF key, as spandrel's
    ``assert_loads_correctly`` (which compares every hyperparameter) requires."""
    _hp_exact_round_trip(use_hf=False, hf_blocks=(1, 1, 0))
    _hp_exact_round_trip(use_hf=False, hf_blocks=(3, 0, 2), freq_split="fft")


def test_hyperparameters_exact_without_moe() -> None:
    """hmoe_meta records num_experts and top_k: recovered without any MoE layer; such a model
    reports ``num_experts == 0`` and gets no expert tag."""
    _hp_exact_round_trip(use_moe=False, num_experts=6, top_k=1)
    model = build(use_moe=False, num_experts=6, top_k=1)
    desc = ModelLoader().load_from_state_dict(model.state_dict())
    assert desc.model.hyperparameters["num_experts"] == 6
    assert desc.model.hyperparameters["top_k"] == 1
    assert desc.model.num_experts == desc.model.top_k == 0 and not desc.model.moe_layers()
    assert not any("e-top" in t for t in desc.tags)
    with pytest.raises(ValueError, match="no MoE layers"):
        desc.model.set_top_k(1)


def _as_version(sd: dict[str, torch.Tensor], hp: dict[str, Any], version: int) -> dict:
    """The state dict as an hmoe_meta version 1 or 2 checkpoint wrote it."""
    meta = torch.tensor(legacy_meta(hp, version), dtype=torch.int32)
    return {**sd, "hmoe_meta": meta}


@pytest.mark.parametrize(
    "options",
    [{}, {"refine_moe": True, "num_experts": 5}, {"use_hf": False, "use_moe": False}],
    ids=["default", "refine-5e", "no-hf-no-moe"],
)
@pytest.mark.parametrize("version", [1, 2])
def test_legacy_checkpoints_still_load(
    options: dict[str, Any], version: int, tmp_path: Path
) -> None:
    """Checkpoints written with hmoe_meta versions 1 and 2 load with identical outputs. Version
    1 did not record hf_blocks and num_experts: they come from the keys (exact whenever the
    model has the HF path and MoE layers; otherwise they have no effect on the model)."""
    model = build(**options)
    hp = model.hyperparameters
    path = tmp_path / f"v{version}.safetensors"
    safetensors.torch.save_file(_as_version(model.state_dict(), hp, version), str(path))
    desc = load(path)
    saved = desc.model.state_dict()["hmoe_meta"]
    assert int(saved[0]) == A.META_VERSION  # saved again in the current layout
    exact = version == 2 or (hp["use_hf"] and has_moe_layers(hp))
    assert_same_hyperparameters(model, desc.model, effective=not exact)
    assert desc.tags == expected_tags(model)
    assert_same_outputs(desc, model, image(model))
    # and a damaged version 1 buffer is still refused
    bad = _as_version(model.state_dict(), hp, version)
    bad["hmoe_meta"] = bad["hmoe_meta"][:12]
    with pytest.raises(C.CheckpointError, match="malformed"):
        M.model_from_state_dict(bad)


def test_non_exact_mlp_ratio_loads() -> None:
    """mlp_ratio is stored in hmoe_meta: a ratio whose hidden widths round differently per
    level still rebuilds every level's width."""
    _hp_exact_round_trip(mlp_ratio=2.66, refine_moe=True)


def test_mlp_ratio_without_level2_blocks_loads() -> None:
    _hp_exact_round_trip(
        mlp_ratio=3.0,
        use_moe=False,
        num_experts=5,  # recorded in hmoe_meta although the model has no MoE layer
        top_k=3,
        enc_blocks=(1, 0, 1),
        dec_blocks=(1, 0),
        mid_blocks=1,
    )


# ---------------------------------------------------------------------------- detection


def our_state_dicts() -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """State dicts of every option (training and fused form) and every variant."""
    for name, opts in OPTIONS.items():
        model = A.HybridMoE(**{**TINY, **opts})
        yield name, model.state_dict()
        yield f"{name}-fused", model.fuse().state_dict()
    for variant in ("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m"):
        yield variant, A.FACTORIES[variant](scale=2).state_dict()
    with torch.device("meta"):
        yield "hybridmoe_l", A.hybridmoe_l(scale=4).state_dict()


def test_builtin_detectors_reject_our_state_dicts() -> None:
    builtins = [s for s in spandrel.MAIN_REGISTRY if s.architecture.id != ARCH_ID]
    assert len(builtins) >= 40
    ours = spandrel.MAIN_REGISTRY[ARCH_ID]
    for name, sd in our_state_dicts():
        stolen = [s.architecture.id for s in builtins if s.detect(sd)]
        assert not stolen, f"{name}: detected as {stolen}"
        assert ours.detect(sd), f"{name}: not detected as HybridMoE"
        first = next(
            s.architecture.id
            for s in spandrel.MAIN_REGISTRY.architectures("detection")
            if s.detect(sd)
        )
        assert first == ARCH_ID


SKIP_BUILTIN = {
    "AuraSR": "GigaGAN upsampler: needs explicit sizes and is ~600M parameters",
    "DRCT": "default configuration takes >4 s to construct on CPU",
    "GRL": "default configuration takes >3 s to construct on CPU",
    "IPT": "115M parameters; its constructor cannot run on the meta device",
}
BUILTIN_ARGS: dict[str, dict[str, Any]] = {
    "MMRealSR": {"num_in_ch": 3, "num_out_ch": 3},
    "SAFMN": {"dim": 36},
    "SAFMNBCIE": {"dim": 36},
    "SPAN": {"num_in_ch": 3, "num_out_ch": 3},
    "Swin2SR": {"window_size": 8},  # the defaults (64 px, window 7) do not construct
    "SwinIR": {"window_size": 8},
}
"""Required arguments / fixes for built-in classes whose bare defaults do not construct."""


def builtin_state_dicts() -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Keys of spandrel's own architecture classes built with their defaults (weights on the
    meta device where the constructor allows it: only keys matter to detection)."""
    for info in pkgutil.iter_modules(spandrel.architectures.__path__):
        if info.name in SKIP_BUILTIN:
            continue
        mod = importlib.import_module(f"spandrel.architectures.{info.name}")
        for cls_name in getattr(mod, "__all__", []):
            cls = getattr(mod, cls_name)
            if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)):
                continue
            kwargs = BUILTIN_ARGS.get(info.name, {})
            try:
                with torch.device("meta"):
                    net = cls(**kwargs)
            except (RuntimeError, NotImplementedError):
                net = cls(**kwargs)  # constructors that compute masks with .item()
            yield f"{info.name}.{cls_name}", net.state_dict()


@pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")
def test_our_detector_rejects_builtin_state_dicts() -> None:
    ours = spandrel.MAIN_REGISTRY[ARCH_ID]
    seen = []
    for name, sd in builtin_state_dicts():
        seen.append(name)
        assert not ours.detect(sd), f"HybridMoE detector accepts {name}"
    assert len(seen) >= 40, seen


def test_registration_idempotent_and_last() -> None:
    assert register_spandrel() is False  # already registered at import of this module
    assert register_spandrel() is False
    ids = [s.architecture.id for s in spandrel.MAIN_REGISTRY]
    assert ids.count(ARCH_ID) == 1
    order = [s.architecture.id for s in spandrel.MAIN_REGISTRY.architectures("detection")]
    builtins = {info.name for info in pkgutil.iter_modules(spandrel.architectures.__path__)}
    ours = order.index(ARCH_ID)
    assert all(order.index(b) < ours for b in builtins if b in order)
    assert spandrel.MAIN_REGISTRY[ARCH_ID].before == ()
    # a registry copy without HybridMoE does not load our checkpoints
    reg = spandrel.MAIN_REGISTRY.copy()
    assert ARCH_ID in reg
    fresh = spandrel.ArchRegistry()
    fresh.add(*[s for s in spandrel.MAIN_REGISTRY if s.architecture.id != ARCH_ID])
    with pytest.raises(spandrel.UnsupportedModelError):
        ModelLoader(registry=fresh).load_from_state_dict(build().state_dict())


def test_detect_keys_are_a_key_condition() -> None:
    """spandrel's test helper explains detection failures only for a ``KeyCondition``."""
    from spandrel.util import KeyCondition

    arch = spandrel.MAIN_REGISTRY[ARCH_ID].architecture
    assert isinstance(arch._detect, KeyCondition)  # type: ignore[attr-defined]
    sd = build().state_dict()
    for key in DETECT_KEYS:
        assert key in sd
        assert not arch.detect({k: v for k, v in sd.items() if k != key})


# ------------------------------------------------------------------------- bad files


@pytest.fixture
def good_files(tmp_path: Path) -> dict[str, Path]:
    model = build(scale=2)
    return {
        "safetensors": save(model, tmp_path / "good", "safetensors-meta"),
        "pth": save(model, tmp_path / "good", "pth-meta-params"),
    }


def _error(path: Path) -> str:
    with pytest.raises(C.CheckpointError) as info:
        C.load_checkpoint(path)
    return str(info.value)


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_truncated_file(ext: str, good_files: dict[str, Path], tmp_path: Path) -> None:
    data = good_files[ext].read_bytes()
    bad = tmp_path / f"truncated.{ext}"
    bad.write_bytes(data[: len(data) // 2])
    msg = _error(bad)
    assert "cannot read the checkpoint" in msg and "truncated" in msg and bad.name in msg


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_corrupt_file(ext: str, good_files: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(good_files[ext].read_bytes())
    for i in range(64, len(data), 61):
        data[i] ^= 0xA5
    bad = tmp_path / f"corrupt.{ext}"
    bad.write_bytes(bytes(data))
    msg = _error(bad)
    assert "cannot read the checkpoint" in msg and "corrupt" in msg


@pytest.mark.parametrize("ext", ["safetensors", "pth", "ckpt"])
def test_random_bytes(ext: str, tmp_path: Path) -> None:
    bad = tmp_path / f"random.{ext}"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    assert "cannot read the checkpoint" in _error(bad)


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_empty_file(ext: str, tmp_path: Path) -> None:
    bad = tmp_path / f"empty.{ext}"
    bad.write_bytes(b"")
    msg = _error(bad)
    assert "empty" in msg and "0 bytes" in msg


@pytest.mark.parametrize("name", ["model.onnx", "model.txt", "model"])
def test_wrong_extension(name: str, good_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / name
    bad.write_bytes(good_files["pth"].read_bytes())
    msg = _error(bad)
    assert "unsupported model file type" in msg and ".safetensors" in msg


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nothing.pth")


def test_foreign_state_dict(tmp_path: Path) -> None:
    sd = {"encoder.weight": torch.randn(4, 3), "decoder.bias": torch.randn(4)}
    for path in (tmp_path / "foreign.pth", tmp_path / "foreign.safetensors"):
        if path.suffix == ".pth":
            torch.save(sd, path)
        else:
            safetensors.torch.save_file(sd, str(path))
        msg = _error(path)
        assert "no known architecture" in msg and "encoder.weight" in msg


def test_a_prefixed_training_checkpoint_is_named(tmp_path: Path) -> None:
    """A Lightning-style file (``state_dict`` of ``model.``-prefixed keys) that no architecture
    matches says that every key carries the prefix and what to save instead; a foreign state
    dict without one common prefix gets no such hint."""
    net = build(scale=2)
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    msg = _error(path)
    assert "every key starts with 'model.'" in msg and "state_dict() instead" in msg, msg
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.randn(4, 3), "decoder.bias": torch.randn(4)}, foreign)
    assert "every key starts with" not in _error(foreign)


def test_damaged_hybridmoe_state_dict(good_files: dict[str, Path], tmp_path: Path) -> None:
    sd = safetensors.torch.load_file(str(good_files["safetensors"]))
    key = next(k for k in sorted(sd) if k.startswith("head.") and k not in DETECT_KEYS)
    sd.pop(key)
    path = tmp_path / "damaged.safetensors"
    safetensors.torch.save_file(sd, str(path))
    msg = _error(path)
    assert "HybridMoE" in msg and key in msg and "damaged" in msg


def test_newer_layout_version(good_files: dict[str, Path], tmp_path: Path) -> None:
    sd = safetensors.torch.load_file(str(good_files["safetensors"]))
    sd["hmoe_meta"] = sd["hmoe_meta"].clone()
    sd["hmoe_meta"][0] = A.META_VERSION + 1
    path = tmp_path / "future.safetensors"
    safetensors.torch.save_file(sd, str(path))
    assert "version" in _error(path)


def test_compact_is_not_an_error(tmp_path: Path) -> None:
    from spandrel.architectures.Compact import Compact

    path = tmp_path / "compact.pth"
    torch.save(
        Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(), path
    )
    desc = C.load_checkpoint(path)
    assert desc.architecture.id == "Compact" and desc.scale == 2
    assert not desc.model.training
