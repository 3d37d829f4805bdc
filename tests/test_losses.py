"""Tests of traiNNer/losses/hybridmoe_loss.py: the frequency loss and the MoE balance loss."""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_options import SMALL_UNET

import hybridmoe_arch
import hybridmoe_loss
from hybridmoe_loss import HybridMoEBalanceLoss, HybridMoEFreqLoss

LOSS_FILE = Path(hybridmoe_loss.__file__)


# ---------------------------------------------------------------------------------------------
# A float64 numpy reference of the frequency loss, written from its definition
# ---------------------------------------------------------------------------------------------


def ref_freq_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    phase_weight: float = 0.0,
    hf_weight: float = 0.0,
    reduction: str = "mean",
) -> float:
    p = np.fft.rfft2(pred.double().numpy(), norm="ortho")
    t = np.fft.rfft2(target.double().numpy(), norm="ortho")
    amp = np.abs(np.abs(p) - np.abs(t))
    phase = np.abs(p - t) - amp
    h, w = pred.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    weight = 1 + hf_weight * np.sqrt(fy**2 + fx**2) / math.sqrt(0.5)
    per_bin = weight * (amp + phase_weight * phase)
    if reduction == "mean":
        return float(per_bin.mean())
    return float(per_bin.sum() / pred.shape[0])


# ---------------------------------------------------------------------------------------------
# Frequency loss: values
# ---------------------------------------------------------------------------------------------


def test_constant_images_touch_only_the_dc_bin() -> None:
    h, w = 6, 10
    pred = torch.full((1, 1, h, w), 0.75)
    target = torch.full((1, 1, h, w), 0.25)
    # orthonormal DFT of a constant c: DC = c·√(HW), every other bin 0
    dc = 0.5 * math.sqrt(h * w)
    bins = h * (w // 2 + 1)
    loss = HybridMoEFreqLoss(1.0)(pred, target)
    assert loss.item() == pytest.approx(dc / bins, rel=1e-6)
    # the DC bin has weight 1 for any hf_weight; a phase term is 0 (both phases are 0)
    loss_hf = HybridMoEFreqLoss(1.0, phase_weight=3.0, hf_weight=5.0)(pred, target)
    assert loss_hf.item() == pytest.approx(dc / bins, rel=1e-6)
    summed = HybridMoEFreqLoss(1.0, reduction="sum")(pred, target)
    assert summed.item() == pytest.approx(dc, rel=1e-6)


def test_impulse_has_a_flat_amplitude_spectrum() -> None:
    h, w = 8, 8
    a = torch.zeros(1, 1, h, w)
    b = torch.zeros(1, 1, h, w)
    a[..., 2, 3] = 1.0
    b[..., 5, 1] = 1.0
    # |DFT| of a unit impulse is 1/√(HW) in every bin, wherever the impulse is
    amp_only = HybridMoEFreqLoss(1.0)(a, b)
    assert amp_only.item() == pytest.approx(0.0, abs=1e-7)
    # against an empty image: every bin differs by 1/√(HW)
    empty = HybridMoEFreqLoss(1.0)(a, torch.zeros_like(a))
    assert empty.item() == pytest.approx(1 / math.sqrt(h * w), rel=1e-6)
    # the phases differ, so the phase term sees the shift
    with_phase = HybridMoEFreqLoss(1.0, phase_weight=1.0)(a, b)
    assert with_phase.item() > 0.05
    assert with_phase.item() == pytest.approx(ref_freq_loss(a, b, phase_weight=1.0), rel=1e-5)


def test_the_phase_term_never_lowers_the_loss() -> None:
    """A prediction that differs from the target in amplitude only has a phase term of 0; in
    float32 ``|p - t| - ||p| - |t||`` came out slightly negative in such bins, and a large
    phase weight then pulled the loss below its amplitude term."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = x * (1 + 1e-3)
    amp_only = HybridMoEFreqLoss(1.0)(y, x)
    with_phase = HybridMoEFreqLoss(1.0, phase_weight=100.0)(y, x)
    assert with_phase.item() >= amp_only.item() > 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("phase_weight", "hf_weight"), [(0.0, 0.0), (0.5, 0.0), (0.0, 2.0), (1.0, 1.0)]
)
@pytest.mark.parametrize("size", [(16, 16), (15, 21), (9, 7)])
def test_matches_numpy_reference(
    reduction: str, phase_weight: float, hf_weight: float, size: tuple[int, int]
) -> None:
    pred = torch.rand(2, 3, *size)
    target = torch.rand(2, 3, *size)
    loss = HybridMoEFreqLoss(1.0, phase_weight, hf_weight, reduction)(pred, target)
    assert loss.dtype == torch.float32
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(
        ref_freq_loss(pred, target, phase_weight, hf_weight, reduction), rel=1e-5
    )


def test_phase_weight_one_gives_the_complex_l1() -> None:
    pred, target = torch.rand(2, 3, 12, 9), torch.rand(2, 3, 12, 9)
    p = np.fft.rfft2(pred.double().numpy(), norm="ortho")
    t = np.fft.rfft2(target.double().numpy(), norm="ortho")
    loss = HybridMoEFreqLoss(1.0, phase_weight=1.0)(pred, target)
    assert loss.item() == pytest.approx(float(np.abs(p - t).mean()), rel=1e-5)


@pytest.mark.parametrize(("phase_weight", "hf_weight"), [(0.0, 0.0), (1.0, 3.0)])
def test_identical_inputs_give_zero(phase_weight: float, hf_weight: float) -> None:
    x = torch.rand(3, 3, 17, 13)
    assert HybridMoEFreqLoss(1.0, phase_weight, hf_weight)(x, x.clone()).item() == 0.0
    zeros = torch.zeros(1, 3, 8, 8)
    assert HybridMoEFreqLoss(1.0, phase_weight, hf_weight)(zeros, zeros).item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Frequency loss: options
# ---------------------------------------------------------------------------------------------


def test_phase_term_sees_a_circular_shift_that_amplitude_misses() -> None:
    target = torch.rand(1, 3, 16, 16)
    shifted = torch.roll(target, shifts=(3, 5), dims=(-2, -1))
    amp = HybridMoEFreqLoss(1.0)(shifted, target).item()
    both = HybridMoEFreqLoss(1.0, phase_weight=1.0)(shifted, target).item()
    assert amp == pytest.approx(0.0, abs=1e-6)  # a circular shift keeps every |DFT| bin
    assert both > 0.01
    # the phase term is never negative and scales linearly with phase_weight
    noisy = target + 0.1 * torch.randn_like(target)
    base = HybridMoEFreqLoss(1.0)(noisy, target).item()
    p1 = HybridMoEFreqLoss(1.0, phase_weight=1.0)(noisy, target).item()
    p2 = HybridMoEFreqLoss(1.0, phase_weight=2.0)(noisy, target).item()
    assert base < p1 < p2
    assert p2 - base == pytest.approx(2 * (p1 - base), rel=1e-4)


def test_hf_weight_emphasizes_high_frequencies_only() -> None:
    h = w = 8
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, h, w)  # energy at DC and (½, ½) only
    flat = torch.full((1, 3, h, w), 0.5)
    # the checkerboard minus its mean lives entirely in the corner bin: weight 1 + hf_weight
    base = HybridMoEFreqLoss(1.0)(checker, flat).item()
    hf = HybridMoEFreqLoss(1.0, hf_weight=3.0)(checker, flat).item()
    assert base > 0
    assert hf == pytest.approx(4.0 * base, rel=1e-6)
    # a pure brightness change (DC only) is unaffected
    dc_a, dc_b = torch.full((1, 3, h, w), 0.2), torch.full((1, 3, h, w), 0.6)
    assert HybridMoEFreqLoss(1.0, hf_weight=3.0)(dc_a, dc_b).item() == pytest.approx(
        HybridMoEFreqLoss(1.0)(dc_a, dc_b).item(), rel=1e-6
    )


def test_frequency_weight_grid() -> None:
    wgt = hybridmoe_loss.frequency_weight(7, 9, 2.0)
    assert wgt.shape == (7, 5)
    assert wgt.dtype == torch.float32
    assert wgt[0, 0].item() == 1.0
    assert wgt.min().item() == 1.0
    assert wgt.max().item() <= 3.0 + 1e-6
    assert torch.equal(hybridmoe_loss.frequency_weight(7, 9, 0.0), torch.ones(7, 5))


# ---------------------------------------------------------------------------------------------
# Frequency loss: robustness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batch_size_invariance(reduction: str) -> None:
    pred, target = torch.rand(2, 3, 11, 14), torch.rand(2, 3, 11, 14)
    loss = HybridMoEFreqLoss(1.0, 0.5, 1.0, reduction)
    one = loss(pred, target)
    two = loss(torch.cat([pred, pred]), torch.cat([target, target]))
    assert torch.allclose(one, two, atol=1e-6)


@pytest.mark.parametrize(("phase_weight", "hf_weight"), [(0.0, 0.0), (1.0, 2.0)])
def test_gradient_flows_and_is_finite(phase_weight: float, hf_weight: float) -> None:
    loss = HybridMoEFreqLoss(1.0, phase_weight, hf_weight)
    pred = torch.rand(2, 3, 9, 12, requires_grad=True)
    loss(pred, torch.rand(2, 3, 9, 12)).backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    # identical inputs, and all-zero spectra, must not give NaN gradients
    for start in (pred.detach(), torch.zeros(2, 3, 9, 12)):
        x = start.clone().requires_grad_(True)
        loss(x, start.clone()).backward()
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    pred, target = torch.rand(2, 3, 15, 15), torch.rand(2, 3, 15, 15)
    pred_h, target_h = pred.to(dtype), target.to(dtype)
    loss = HybridMoEFreqLoss(1.0, phase_weight=0.5, hf_weight=1.0)
    value = loss(pred_h, target_h)
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    # exactly the float32 computation on the (rounded) half inputs
    assert value.item() == pytest.approx(loss(pred_h.float(), target_h.float()).item(), rel=1e-6)
    assert value.item() == pytest.approx(
        ref_freq_loss(pred_h.float(), target_h.float(), 0.5, 1.0), rel=1e-5
    )
    # large values that overflow fp16 spectra stay finite (sums are done in float32)
    big = torch.full((1, 3, 64, 64), 60000.0, dtype=torch.float16)
    assert torch.isfinite(loss(big, torch.zeros_like(big)))


def test_under_autocast_and_channels_last() -> None:
    pred = torch.rand(2, 3, 12, 18, requires_grad=True)
    target = torch.rand(2, 3, 12, 18)
    loss = HybridMoEFreqLoss(1.0, phase_weight=1.0)
    expected = loss(pred, target).item()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.conv2d(pred, torch.eye(3).reshape(3, 3, 1, 1))
        assert out.dtype == torch.bfloat16
        value = loss(out, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ref_freq_loss(out.detach().float(), target, 1.0), rel=1e-5)
    value.backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    cl = loss(
        pred.detach().to(memory_format=torch.channels_last),
        target.to(memory_format=torch.channels_last),
    )
    assert cl.item() == pytest.approx(expected, rel=1e-6)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"reduction.*'mean', 'sum'"):
        HybridMoEFreqLoss(1.0, reduction="none")
    with pytest.raises(ValueError, match=r"phase_weight.*>= 0"):
        HybridMoEFreqLoss(1.0, phase_weight=-1.0)
    with pytest.raises(ValueError, match=r"hf_weight.*>= 0"):
        HybridMoEFreqLoss(1.0, hf_weight=float("nan"))
    with pytest.raises(ValueError, match="loss_weight"):
        HybridMoEFreqLoss("1.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_weight"):
        HybridMoEBalanceLoss(float("inf"))
    with pytest.raises(ValueError, match="same shape"):
        HybridMoEFreqLoss(1.0)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    # a negative loss_weight is meaningful to traiNNer-redux (it swaps the target)
    assert HybridMoEFreqLoss(-0.5).loss_weight == -0.5
    assert HybridMoEBalanceLoss(0.01).loss_weight == 0.01


# ---------------------------------------------------------------------------------------------
# Balance loss
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nano() -> torch.nn.Module:
    """One small MoE network for the balance tests (built once: CPU forwards are slow)."""
    torch.manual_seed(0)
    return hybridmoe_arch.hybridmoe(scale=2, **SMALL_UNET)


@pytest.fixture
def clean_channel() -> None:
    """Start and end every balance test with an empty side channel."""
    hybridmoe_arch.MOE_AUX.take_balance_loss()
    yield
    hybridmoe_arch.MOE_AUX.take_balance_loss()


def test_loss_reads_the_network_module_side_channel() -> None:
    assert hybridmoe_loss.arch_module() is hybridmoe_arch
    assert hybridmoe_loss.arch_module().MOE_AUX is hybridmoe_arch.MOE_AUX


@pytest.mark.usefixtures("clean_channel")
def test_balance_loss_alone_reaches_the_router(nano: torch.nn.Module) -> None:
    net = nano.train()
    net.zero_grad(set_to_none=True)
    out = net(torch.rand(2, 3, 8, 8))
    loss = HybridMoEBalanceLoss(0.01)(out, torch.rand_like(out))
    assert loss.ndim == 0
    assert loss.requires_grad
    assert math.isfinite(loss.item())
    assert loss.item() > 0
    loss.backward()
    routers = [p for n, p in net.named_parameters() if n.endswith("router")]
    assert routers
    for p in routers:
        assert p.grad is not None
        assert p.grad.abs().sum() > 0
    # the experts' weights get nothing from the balance loss alone
    for n, p in net.named_parameters():
        if n.endswith(("w_out", "b_out")):
            assert p.grad is None or p.grad.abs().sum() == 0


@pytest.mark.usefixtures("clean_channel")
def test_balance_value_is_one_for_uniform_routing() -> None:
    e = 4
    routing = hybridmoe_arch.MoERouting(top_k=1)
    moe = hybridmoe_arch.MoEFFN(channels=e, hidden=8, num_experts=e, routing=routing).train()
    # tokens one-hot on channel i go to expert i with a sharp router: every expert gets 1/E
    # of the tokens and the mean router probability is ≈1/E for every expert
    with torch.no_grad():
        moe.router.copy_(torch.eye(e) * 20.0)
    x = torch.eye(e).repeat(1, 8).reshape(1, e, 4, 8)  # (N, C, H, W): 32 tokens, 8 per expert
    out = moe(x)
    usage = hybridmoe_arch.MOE_AUX.usage[-1]
    assert torch.allclose(usage, torch.full((e,), 1 / e))
    value = HybridMoEBalanceLoss(1.0)(out, out)
    assert value.item() == pytest.approx(1.0, abs=1e-6)
    # a zero router (uniform probabilities) gives exactly 1 whatever top-k picks
    with torch.no_grad():
        moe.router.zero_()
    moe(torch.rand(1, e, 4, 8))
    assert HybridMoEBalanceLoss(1.0)(out, out).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.usefixtures("clean_channel")
def test_balance_fractions_count_every_top_k_slot() -> None:
    """At top-2 each token fills two slots: the fractions ``f_e`` are over the 2·T slots (they
    sum to 1), so uniform router probabilities still give E · Σ f_e / E = 1 exactly."""
    e = 4
    moe = hybridmoe_arch.MoEFFN(
        channels=e, hidden=8, num_experts=e, routing=hybridmoe_arch.MoERouting(top_k=2)
    ).train()
    with torch.no_grad():
        moe.router.zero_()
    out = moe(torch.rand(1, e, 4, 8))
    usage = hybridmoe_arch.MOE_AUX.usage[-1]
    assert usage.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(usage, torch.tensor([0.5, 0.5, 0.0, 0.0]))  # ties: lowest indices
    assert HybridMoEBalanceLoss(1.0)(out, out).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.usefixtures("clean_channel")
def test_balance_loss_is_the_mean_over_moe_layers() -> None:
    """Several MoE layers in one forward: the loss is the mean of their terms, with gradient."""
    channel = hybridmoe_arch.MOE_AUX
    channel.begin_forward()
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(4.0, requires_grad=True)  # a collapsed layer with E = 4 experts
    channel.record(a * 1.0, torch.full((4,), 0.25))
    channel.record(b * 1.0, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    pred = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    value = HybridMoEBalanceLoss(0.01)(pred, pred)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(2.5)
    value.backward()
    assert a.grad is not None
    assert b.grad is not None
    assert a.grad.item() == pytest.approx(0.5)
    assert b.grad.item() == pytest.approx(0.5)


@pytest.mark.usefixtures("clean_channel")
def test_balance_loss_without_training_forward_raises() -> None:
    pred = torch.rand(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"no router statistics.*use_moe=False"):
        HybridMoEBalanceLoss(0.01)(pred, pred)


@pytest.mark.usefixtures("clean_channel")
def test_balance_loss_of_an_empty_batch_is_zero(nano: torch.nn.Module) -> None:
    """A batch of no images routes no token: the term is 0 (it raised "no router statistics
    ... the network is not a HybridMoE model")."""
    out = nano.train()(torch.rand(0, 3, 4, 4))
    value = HybridMoEBalanceLoss(0.01)(out, out)
    assert value.shape == () and value.item() == 0.0


@pytest.mark.usefixtures("clean_channel")
def test_balance_loss_is_consumed_once(nano: torch.nn.Module) -> None:
    net = nano.train()
    out = net(torch.rand(1, 3, 4, 4))
    loss = HybridMoEBalanceLoss(0.01)
    loss(out, out)
    assert not hybridmoe_arch.MOE_AUX.has_terms()
    with pytest.raises(RuntimeError, match="no router statistics"):
        loss(out, out)


@pytest.mark.usefixtures("clean_channel")
def test_eval_and_no_grad_forwards_never_publish(nano: torch.nn.Module) -> None:
    net = nano
    x = torch.rand(1, 3, 4, 4)
    before = hybridmoe_arch.MOE_AUX.training_forwards
    net.eval()
    net(x)
    with torch.inference_mode():
        net(x)
    net.train()
    with torch.no_grad():
        net(x)
    assert not hybridmoe_arch.MOE_AUX.has_terms()
    assert hybridmoe_arch.MOE_AUX.training_forwards == before
    with pytest.raises(RuntimeError, match="no router statistics"):
        HybridMoEBalanceLoss(0.01)(x, x)
    # a dense network (no MoE layers) never writes either
    dense = hybridmoe_arch.hybridmoe(scale=2, **{**SMALL_UNET, "use_moe": False}).train()
    dense(x)
    assert not hybridmoe_arch.MOE_AUX.has_terms()


@pytest.mark.usefixtures("clean_channel")
def test_balance_loss_follows_pred_dtype_and_keeps_the_graph(nano: torch.nn.Module) -> None:
    net = nano.train()
    net.zero_grad(set_to_none=True)
    out = net(torch.rand(1, 3, 8, 8))
    value = HybridMoEBalanceLoss(0.01)(out.to(torch.bfloat16), out.to(torch.bfloat16))
    assert value.dtype == torch.bfloat16
    value.float().backward()
    router = next(p for n, p in net.named_parameters() if n.endswith("router"))
    assert router.grad is not None
    assert router.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def test_standalone_import_registers_nothing() -> None:
    assert hybridmoe_loss.__name__ == "hybridmoe_loss"
    assert hybridmoe_loss._arch_module_name() == "hybridmoe_arch"


def test_registers_under_trainner_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported as traiNNer.losses.hybridmoe_loss, the classes go into LOSS_REGISTRY under
    names that traiNNer-redux does not use, and the arch module is traiNNer's."""

    class Registry:
        def __init__(self) -> None:
            self.names: dict[str, object] = {}

        def register(self) -> object:
            def deco(obj: type) -> type:
                name = obj.__name__.lower()
                assert name not in self.names
                self.names[name] = obj
                return obj

            return deco

    registry = Registry()
    pkg_registry = types.ModuleType("traiNNer.utils.registry")
    pkg_registry.LOSS_REGISTRY = registry  # type: ignore[attr-defined]
    for name in ("traiNNer", "traiNNer.utils", "traiNNer.losses"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "traiNNer.utils.registry", pkg_registry)
    monkeypatch.setitem(sys.modules, "traiNNer.archs.hybridmoe_arch", hybridmoe_arch)
    spec = importlib.util.spec_from_file_location("traiNNer.losses.hybridmoe_loss", LOSS_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "traiNNer.losses.hybridmoe_loss", module)
    spec.loader.exec_module(module)
    assert set(registry.names) == {
        "hybridmoefreqloss",
        "hybridmoebalanceloss",
        "hybridmoelpipsloss",
    }
    taken = {"fftloss", "ffloss", "freqloss", "moeloss", "l1loss", "charbonnierloss"}
    assert not set(registry.names) & taken
    assert module._arch_module_name() == "traiNNer.archs.hybridmoe_arch"
    assert module.arch_module() is hybridmoe_arch
    # traiNNer labels a loss "l_g_" + type without "loss"
    labels = {"l_g_" + n.replace("loss", "") for n in registry.names}
    assert labels == {"l_g_hybridmoefreq", "l_g_hybridmoebalance", "l_g_hybridmoelpips"}


def test_training_doc_lists_every_loss_with_its_arguments() -> None:
    """docs/TRAINING.md §3 is the reference of the YAML losses: it left out
    hybridmoelpipsloss (the real-world template's perceptual loss) and its arguments."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "TRAINING.md").read_text()
    rows = {
        name: (label, args)
        for name, label, args in re.findall(
            r"^\| `(hybridmoe\w+)` \| `(\w+)` \| (.+) \|$", doc, flags=re.MULTILINE
        )
    }
    classes = (HybridMoEFreqLoss, HybridMoEBalanceLoss, hybridmoe_loss.HybridMoELPIPSLoss)
    assert sorted(rows) == sorted(cls.__name__.lower() for cls in classes)
    for cls in classes:
        label, args = rows[cls.__name__.lower()]
        assert label == "l_g_" + cls.__name__.lower().replace("loss", "")
        params = inspect.signature(cls.__init__).parameters
        documented = re.findall(r"`(\w+)(?:=[^`]*)?`", args)
        assert documented == [p for p in params if p != "self"], cls.__name__
        for p in params.values():
            if p.default is not inspect.Parameter.empty:
                assert f"`{p.name}={p.default!r}`".replace("'", '"') in args
