"""The network's components against independent references, its ablation switches (each must
change the module graph or the output), and its numerics on adversarial textures."""

from __future__ import annotations

import copy
import math
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from textures import checkerboard, dithered
from tiny_options import TINY

import hybridmoe_arch as A
from hybridmoe.models import perturb as perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**options: object) -> A.HybridMoE:
    torch.manual_seed(0)
    return A.HybridMoE(**{**TINY, "scale": 2, **options}).eval()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- MoE routing


def test_flat_areas_route_alike_alone_in_a_batch_and_fused() -> None:
    """In a flat area every centred router logit is 0 up to rounding, and the rounding
    differs with the batch and with fuse(): the experts a token got (and so its output)
    depended on the other images of the batch and on the deploy form. Near-ties now go to the
    lower expert index."""
    torch.manual_seed(0)
    net = A.HybridMoE(
        **{**TINY, "scale": 2, "base": "none", "num_experts": 4, "top_k": 2},
        refine_moe=True,
        global_mixer="none",
    )
    net = perturbed(net, std=0.05, seed=0).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in net.moe_layers():  # experts as different as trained ones
            for p in (m.w_in, m.w_out):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    g = torch.Generator().manual_seed(1)
    frame = torch.zeros(1, 3, 160, 160)  # a black bar above a textured band
    frame[:, :, 120:] = torch.rand(1, 3, 40, 160, generator=g)
    others = torch.rand(3, 3, 160, 160, generator=g)
    with torch.no_grad():
        alone = net(frame)
        batched = net(torch.cat([frame, others]))[:1]
        fused = copy.deepcopy(net).fuse()(frame)
    bar = (slice(None), slice(None), slice(0, 200))  # output rows inside the black bar
    assert (alone - batched)[bar].abs().max() < 1e-5
    assert (alone - fused)[bar].abs().max() < 1e-5
    # the order only breaks ties: a clear preference wins whatever the expert index
    moe = A.MoEFFN(4, 8, num_experts=3, routing=A.MoERouting(top_k=1))
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0005, 0.0], [0.0, 0.0, 0.5]])
    assert moe.gate(logits)[1][:, 0].tolist() == [0, 0, 2]


def test_topk_gates_are_renormalised_and_mix_the_selected_experts() -> None:
    moe = perturbed(A.MoEFFN(8, 12, num_experts=4, routing=A.MoERouting(top_k=2)), std=0.3)
    x = torch.randn(50, 8)
    probs, top_i, gates = moe.route(x)
    assert torch.allclose(gates.sum(-1), torch.ones(50), atol=1e-6)
    assert not torch.allclose(probs.gather(1, top_i).sum(-1), torch.ones(50), atol=1e-3)
    # the layer output is the gate-weighted sum of the selected experts, computed by hand
    dense = []
    for e in range(4):
        g, v = (x @ moe.w_in[e] + moe.b_in[e]).chunk(2, -1)
        dense.append((F.gelu(g) * v) @ moe.w_out[e] + moe.b_out[e])
    expert_out = torch.stack(dense, 1)  # (T, E, C)
    expected = (expert_out.gather(1, top_i[..., None].expand(-1, -1, 8)) * gates[..., None]).sum(1)
    for path in (moe._sparse, moe._dense):
        assert torch.allclose(path(x, top_i, gates), expected, atol=1e-5)


def test_a_top1_router_learns_from_the_task_loss_with_the_output_unchanged() -> None:
    """At top-1 the renormalized gate is the constant 1: its value stays 1, but the router must
    still receive the task loss's gradient (the Switch gate's), on either dispatch path."""
    x = torch.randn(2, 8, 9, 11)
    grads, outs = [], []
    for dispatch in ("sparse", "dense"):
        torch.manual_seed(0)
        moe = perturbed(A.MoEFFN(8, 12, 4, A.MoERouting(top_k=1, dispatch=dispatch)), std=0.3)
        gates = moe.route_image(x)[2]
        assert torch.equal(gates.detach(), torch.ones_like(gates))
        with torch.no_grad():
            outs.append(moe(x))  # inference skips the mixing by the unit gate
        moe(x).square().mean().backward()
        grads.append(moe.router.grad)
        assert grads[-1].abs().max() > 1e-4, f"{dispatch}: the router gets no task gradient"
    assert torch.allclose(grads[0], grads[1], atol=1e-6), "sparse and dense disagree"
    assert torch.allclose(outs[0], outs[1], atol=1e-5), "top-1 inference outputs disagree"


def test_routing_the_image_centres_the_router_input_on_its_7x7_mean() -> None:
    """route_image (centering done on the logit maps) equals route on the centred features."""
    moe = perturbed(A.MoEFFN(8, 12, num_experts=4, routing=A.MoERouting(top_k=2)), std=0.3)
    x = torch.randn(2, 8, 10, 13)
    local = F.avg_pool2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), 7, 1)
    probs, top_i, gates = moe.route((x - local).permute(0, 2, 3, 1).reshape(-1, 8))
    probs2, top_i2, gates2 = moe.route_image(x)
    assert torch.allclose(probs, probs2, atol=1e-6)
    assert torch.equal(top_i, top_i2)
    assert torch.allclose(gates, gates2, atol=1e-6)


def test_router_and_sparse_dispatch_under_autocast() -> None:
    """Under autocast the router still computes in float32 (AMP and float32 forwards pick the
    same experts), and the sparse dispatch takes float32 tokens (CUDA autocast gives the norm
    float32) while its matmuls run in bfloat16."""
    torch.manual_seed(0)
    moe = perturbed(A.MoEFFN(8, 12, 4, A.MoERouting(top_k=2, dispatch="sparse")), std=0.3)
    x = torch.randn(2, 8, 32, 32)
    _, top_i, _ = moe.route_image(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs_amp, top_i_amp, _ = moe.route_image(x)
        y_amp = moe(x)
    assert probs_amp.dtype == torch.float32
    assert torch.equal(top_i, top_i_amp)
    assert y_amp.dtype == torch.float32 and torch.isfinite(y_amp).all()
    assert (y_amp - moe(x)).abs().max() < 0.05 * moe(x).abs().max()


def test_balance_term_and_usage_count_every_routed_slot() -> None:
    """A training forward publishes the usage f_e (fraction of the N·H·W·top_k routed slots
    that went to expert e, second choices included) and the balance term E·Σ f_e P_e (P_e the
    mean router probability over the tokens), which trains the router."""
    moe = perturbed(A.MoEFFN(8, 12, 4, A.MoERouting(top_k=2)), std=0.3).train()
    x = torch.randn(2, 8, 6, 7)
    A.MOE_AUX.begin_forward()
    moe(x)
    usage = A.MOE_AUX.usage[0]
    balance = A.MOE_AUX.take_balance_loss()
    assert balance is not None
    with torch.no_grad():
        probs, top_i, _ = moe.route_image(x)
    frac = torch.bincount(top_i.reshape(-1), minlength=4).float() / top_i.numel()
    assert torch.allclose(usage, frac)
    assert torch.allclose(balance, 4 * (frac * probs.mean(0)).sum(), atol=1e-6)
    balance.backward()
    assert moe.router.grad is not None and moe.router.grad.abs().max() > 1e-4


# --------------------------------------------------------------------------- long-range mixers
# (ssd_scan alone against a sequential reference: tests/test_arch.py)


def test_selective_scan_2d_sees_both_directions() -> None:
    """The first raster position depends on the last one (the backward scan) and vice versa."""
    mixer = perturbed(A.SelectiveScan2D(8), std=0.2).eval()
    x = torch.randn(1, 8, 2, 3)  # short: the learned decay fades distant positions
    y = mixer(x)
    for src, dst in (((1, 2), (0, 0)), ((0, 0), (1, 2))):
        x2 = x.clone()
        x2[..., src[0], src[1]] += 3.0
        diff = (mixer(x2) - y)[..., dst[0], dst[1]].abs().max()
        assert diff > 1e-4, f"position {dst} does not see position {src}"


def sequential_scan(x, dt, a, b, c):
    """h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t ⊗ b_t, y_t = h_t · c_t, one token at a time.
    x (L,H,P), dt (L,H), a (H,), b and c (L,S) -> (L,H,P)."""
    h = torch.zeros(x.shape[1], x.shape[2], b.shape[-1], dtype=torch.float64)
    ys = []
    for t in range(x.shape[0]):
        h = h * torch.exp(dt[t] * a)[:, None, None] + (dt[t, :, None] * x[t])[..., None] * b[t]
        ys.append((h * c[t]).sum(-1))
    return torch.stack(ys)


def test_selective_scan_2d_matches_a_sequential_reference() -> None:
    """Forward scan over the raster order, backward scan over the reversed order (with the same
    B, C of each token, flipped back into place), skip ``D·x``, gate ``SiLU(z)``."""
    mixer = perturbed(A.SelectiveScan2D(32), std=0.2).eval()  # 2 heads of 16 channels
    x = torch.randn(1, 32, 2, 3)
    with torch.no_grad():
        xs, z = mixer.in_proj(x).chunk(2, dim=1)
        xs = F.silu(mixer.dw(xs))
        dt_raw, b, c = mixer.x_proj(xs).split([2, 16, 16], dim=1)
        seq = xs.reshape(2, 16, 6).permute(2, 0, 1).double()  # (L,H,P), raster order
        dt = F.softplus(dt_raw + mixer.dt_bias.view(1, -1, 1, 1)).reshape(2, 6).t().double()
        b, c = (m.reshape(16, 6).t().double() for m in (b, c))
        a = -mixer.a_log.exp().double()
        fwd = sequential_scan(seq, dt, a, b, c)
        bwd = sequential_scan(seq.flip(0), dt.flip(0), a, b.flip(0), c.flip(0)).flip(0)
        y = fwd + bwd + seq * mixer.d_skip.double().view(1, -1, 1)
        y = y.permute(1, 2, 0).reshape(1, 32, 2, 3).float() * F.silu(z)
        assert torch.allclose(mixer(x), mixer.out_proj(y), atol=1e-5)


def test_fourier_mixer_matches_a_reference() -> None:
    """Orthonormal rfft2 -> 1×1 conv over [Re; Im] -> GELU -> 1×1 conv -> orthonormal irfft2."""
    mixer = perturbed(A.FourierMixer(4), std=0.3).eval()
    x = torch.randn(2, 4, 6, 7)
    with torch.no_grad():
        spec = torch.fft.rfft2(x, norm="ortho")
        z = mixer.fc2(F.gelu(mixer.fc1(torch.cat([spec.real, spec.imag], dim=1))))
        ref = torch.fft.irfft2(torch.complex(z[:, :4], z[:, 4:]), s=(6, 7), norm="ortho")
        assert torch.allclose(mixer(x), ref, atol=1e-5)


# --------------------------------------------------------------------------- fusion, upsampler


def test_cross_frequency_fusion_exchanges_both_ways() -> None:
    fuse = perturbed(A.CrossFrequencyFusion(8), std=0.3)
    lf, hf = torch.randn(1, 8, 5, 5), torch.randn(1, 8, 5, 5)
    lf1, hf1 = fuse(lf, hf)
    lf2, _ = fuse(lf, hf + 1.0)  # only HF changes: LF' must follow (HF -> LF)
    assert (lf2 - lf1).abs().max() > 1e-3
    _, hf3 = fuse(lf + 1.0, hf)  # only LF changes: HF' must follow (LF -> HF)
    assert (hf3 - hf1).abs().max() > 1e-3


def test_dysample_moves_the_sampling_point_vertically_and_horizontally() -> None:
    """A constant offset (dx, dy) in LR pixels equals bilinear sampling at the shifted grid."""
    up = A.DySampleUpsampler(4, 1, 2)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.weight[0, 0, 1, 1] = 1.0  # the image is channel 0 of the features
        up.conv.bias.zero_()
        up.offset.weight.zero_()
        up.scope.weight.zero_()
        up.scope.bias.fill_(50.0)  # sigmoid -> 1: offset = bias * 0.5
        up.offset.bias.zero_()
        up.offset.bias[4:] = 0.6  # channels s*s.. are the y offsets of the s*s sub-pixels
    feats = torch.zeros(1, 4, 6, 6)
    feats[0, 0] = torch.arange(36.0).view(6, 6)  # a vertical ramp of slope 6, horizontal 1
    out = up(feats)
    base = up.__class__(4, 1, 2)
    with torch.no_grad():
        base.load_state_dict(up.state_dict())
        base.offset.bias.zero_()
    ref = base(feats)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    shift = out[inner] - ref[inner]
    assert torch.allclose(shift, torch.full_like(shift, 0.3 * 6.0), atol=1e-3), "vertical"
    with torch.no_grad():
        up.offset.bias.zero_()
        up.offset.bias[:4] = 0.6  # x offsets
    shift = up(feats)[inner] - ref[inner]
    assert torch.allclose(shift, torch.full_like(shift, 0.3), atol=1e-3), "horizontal"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dysample_samples_a_wide_image_in_float32(dtype: torch.dtype) -> None:
    """A half-precision model keeps the sampling grid in float32: in float16 a 1920-px grid is
    off by up to 0.2 LR pixels, in bfloat16 a 256-px grid already by more."""
    up = A.DySampleUpsampler(3, 3, 2)
    with torch.no_grad():
        up.conv.weight.zero_()
        for c in range(3):
            up.conv.weight[c, c, 1, 1] = 1.0  # the prediction is the input: plain bilinear ×2
        up.conv.bias.zero_()
        up.offset.weight.zero_()
    width = 1920 if dtype == torch.float16 else 256
    x = torch.rand(1, 3, 4, width, generator=torch.Generator().manual_seed(0))
    ref = up(x)
    got = up.to(dtype)(x.to(dtype)).float()
    assert (got - ref).abs().max() < 0.02


# --------------------------------------------------------------------------- frequency split
# (LF + HF = x: tests/test_arch.py)


def test_laplacian_split_low_pass_is_the_normalised_binomial_5x5() -> None:
    split = A.FrequencySplit(2, "laplacian")
    x = torch.zeros(1, 2, 11, 11)
    x[..., 5, 5] = 1.0
    lf, hf = split(x)
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    expected = torch.zeros(1, 2, 11, 11)
    expected[..., 3:8, 3:8] = torch.outer(taps, taps)
    assert torch.allclose(lf, expected, atol=1e-7)
    assert torch.allclose(hf, x - expected, atol=1e-7)
    flat = split(torch.full((1, 2, 9, 9), 0.7))[1]
    assert flat[..., 2:-2, 2:-2].abs().max() < 1e-6  # a constant has no HF inside the borders


def test_fft_split_scales_each_frequency_by_the_gaussian_low_pass() -> None:
    """A cosine of frequency (fy, fx) cycles/pixel keeps exp(-(fy² + fx²) / 2σ²) of its
    amplitude in LF; σ is per channel. Vertical frequencies above half the height (here bin 7
    of 8 for fy = 1/8) fold back like the horizontal ones."""
    split = A.FrequencySplit(3, "fft")
    sigma = torch.tensor([0.1, 0.15, 0.2])
    with torch.no_grad():
        split.log_sigma.copy_(sigma.log())
    h, w = 8, 10
    i = torch.arange(h, dtype=torch.float32).view(-1, 1)
    j = torch.arange(w, dtype=torch.float32).view(1, -1)
    for fy, fx in ((1 / 8, 0.0), (0.0, 2 / 10), (3 / 8, 1 / 10)):
        wave = torch.cos(2 * math.pi * (fy * i + fx * j)).expand(1, 3, h, w)
        lf, hf = split(wave)
        keep = torch.exp(-(fy**2 + fx**2) / (2 * sigma**2)).view(1, 3, 1, 1)
        assert torch.allclose(lf, keep * wave, atol=1e-5), (fy, fx)
        assert torch.allclose(hf, (1 - keep) * wave, atol=1e-5), (fy, fx)


# --------------------------------------------------------------------------- window attention


def naive_window_attention(attn: A.WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Loop-per-window reference: replicate-pad by the shift on top/left and to a window
    multiple on bottom/right, attend inside each window, crop the shift back off."""
    n, c, h, w = x.shape
    ws, s, heads = attn.window, attn.shift, attn.heads
    qkv = attn.qkv(x)
    ph, pw = (-(h + s)) % ws, (-(w + s)) % ws
    qkv = F.pad(qkv, (s, pw, s, ph), mode="replicate")
    out = torch.zeros(n, c, qkv.shape[2], qkv.shape[3])
    d = c // heads
    for i in range(0, qkv.shape[2], ws):
        for j in range(0, qkv.shape[3], ws):
            win = qkv[:, :, i : i + ws, j : j + ws].reshape(n, 3, heads, d, ws * ws)
            q, k, v = (win[:, t].transpose(-1, -2) for t in range(3))  # (n, heads, T, d)
            o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
            out[:, :, i : i + ws, j : j + ws] = o.transpose(-1, -2).reshape(n, c, ws, ws)
    return attn.proj(out[:, :, s : s + h, s : s + w])


@pytest.mark.parametrize("export", [False, True], ids=["sdpa", "export-ops"])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_window_attention_matches_a_per_window_reference(
    shift: bool, size: tuple, export: bool
) -> None:
    """Both forms: F.scaled_dot_product_attention, and the plain-op softmax with its own
    scale that ONNX export traces."""
    attn = perturbed(A.WindowAttention(32, 4, shift), std=0.2).eval()  # 2 heads of 16
    x = torch.randn(1, 32, *size)
    with torch.no_grad(), patch.object(A, "_onnx_export", lambda: export):
        assert torch.allclose(attn(x), naive_window_attention(attn, x), atol=1e-5)


# --------------------------------------------------------------------------- ablation switches

SWITCHES = [
    {"use_moe": False},
    {"use_hf": False},
    {"use_attn": False},
    {"global_mixer": "none"},
    {"global_mixer": "ssm"},
    {"freq_split": "fft"},
    {"base": "none"},
    {"base": "bicubic"},
    {"conv_block": "rep3"},
    {"conv_block": "rep3res"},
    {"hf_block": "rep3"},
    {"levels": 2},
    {"levels": 1},
    {"refine_moe": True},
    {"stem_lk": True},
    {"upsampler": "dysample"},
    {"texture_head": False},
    {"gate_norm": False},
    {"shift": "alternate"},
    {"shift": "none"},
]


def graph(model: torch.nn.Module) -> tuple[list[tuple[str, str]], list[tuple[str, tuple]]]:
    """Module types by path, and parameter shapes by name."""
    return (
        [(name, type(mod).__name__) for name, mod in model.named_modules()],
        [(name, tuple(p.shape)) for name, p in model.named_parameters()],
    )


@pytest.mark.parametrize(
    "switch", SWITCHES, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items())
)
def test_every_ablation_switch_changes_the_network(switch: dict) -> None:
    two_attn = {"enc_blocks": (1, 2, 1)}  # so that the "stage" schedule shifts one block
    ref, alt = build(**two_attn), build(**two_attn, **switch)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        y_ref = perturbed(ref)(x)
        y_alt = perturbed(alt)(x)
    if next(iter(switch)) not in ("shift", "gate_norm"):  # these keep the modules
        assert graph(ref) != graph(alt)
    assert y_ref.shape == y_alt.shape
    assert (y_ref - y_alt).abs().max() > 1e-4


def test_shift_schedules_place_shifted_windows_where_documented() -> None:
    def shifts(model: A.HybridMoE) -> list[int]:
        return [m.shift for m in model.modules() if isinstance(m, A.WindowAttention)]

    opts = {"enc_blocks": (1, 2, 1), "mid_blocks": 1, "dec_blocks": (1, 1)}
    assert shifts(build(**opts, shift="stage")) == [0, 2, 0, 0, 0]  # odd index in a stage
    assert shifts(build(**opts, shift="alternate")) == [0, 2, 0, 2, 0]  # every other block
    assert shifts(build(**opts, shift="none")) == [0] * 5


def test_dense_ablation_ffn_has_the_moe_active_width() -> None:
    moe, dense = build(top_k=2), build(use_moe=False, top_k=2)
    expert_hidden = moe.mid[0].ffn.w_out.shape[1]  # (E, hidden, C)
    assert dense.mid[0].ffn.fc2.weight.shape[1] == 2 * expert_hidden
    assert dense.num_experts == 0 and moe.num_experts == TINY["num_experts"]


# --------------------------------------------------------------------------- numerics


def max_activation(model: torch.nn.Module, x: torch.Tensor) -> float:
    peak = [0.0]

    def hook(_m: object, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            peak[0] = max(peak[0], float(out.detach().abs().float().max()))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return peak[0]


@pytest.mark.parametrize("image", [checkerboard, dithered])
def test_gate_norm_keeps_one_pixel_patterns_bounded(image: object) -> None:
    """Gated blocks multiply two linear maps of their input; with trained-size weights a
    one-pixel pattern grows quadratically per block unless the gate input is normalised."""
    opts = {"dim": 16, "enc_blocks": (3, 1, 1), "hf_blocks": (3, 1, 1), "dec_blocks": (3, 1)}
    x = image()  # type: ignore[operator]
    bounded = perturbed(build(**opts), std=0.25)
    unbounded = perturbed(build(**opts, gate_norm=False), std=0.25)
    assert max_activation(unbounded, x) > 1e6  # the failure the norm prevents
    assert max_activation(bounded, x) < 1e4
    for dtype in (torch.bfloat16, torch.float16):
        with torch.no_grad():
            y = bounded.to(dtype)(x.to(dtype))
        assert torch.isfinite(y).all(), dtype
        bounded.float()


@pytest.mark.parametrize("mixer", ["fourier", "none"])
def test_a_nonfinite_input_pixel_stays_local(mixer: str) -> None:
    """Without a global mixer the pixel was not replaced: NaN spread over the receptive field
    (every output pixel of a small image)."""
    model = perturbed(build(global_mixer=mixer))
    x = torch.rand(1, 3, 24, 24)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x2 = x.clone()
        x2[0, :, 3, 3] = bad
        with torch.no_grad():
            y, y2 = model(x), model(x2)
        assert torch.isfinite(y2).all()
        far = (slice(None), slice(None), slice(30, None), slice(30, None))
        assert (y2 - y)[far].abs().max() < 0.5  # the rest of the image is still an image


def test_residual_rep_blocks_start_near_the_identity_and_fuse() -> None:
    """A deep stack of residual re-param blocks passes its input through nearly unchanged at
    initialization (the plain blocks of the same depth do not), and fuses exactly."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, 16, 16)
    plain = torch.nn.Sequential(*[A.RepConvBlock(32, False) for _ in range(24)])
    residual = torch.nn.Sequential(*[A.RepConvResBlock(32, False) for _ in range(24)])
    with torch.no_grad():
        rel_plain = ((plain(x) - x).norm() / x.norm()).item()
        y = residual(x)
        rel_res = ((y - x).norm() / x.norm()).item()
        for m in residual.modules():
            if isinstance(m, A.RepConv):
                m.fuse()
        assert torch.allclose(residual(x), y, atol=1e-5)
    assert rel_res < 0.5 < rel_plain
