"""Behaviour of the network itself: shapes, gradients, numerics, fusion, routing, errors."""

from __future__ import annotations

import copy
import math
from unittest.mock import patch

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tiny_options import SMALL_UNET

import hybridmoe_arch as A
from hybridmoe import meta as M
from hybridmoe.models import perturb
from hybridmoe.spandrel_arch import DETECT_KEYS

# the named sizes (x1 trunks) and the general constructor, whose defaults are the three-level
# design with every component (frequency split, HF path, attention, Fourier mixer, MoE)
VARIANTS = ("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l", "hybridmoe")


def tiny(**kw: object) -> A.HybridMoE:
    """A small configuration that still has every component."""
    cfg: dict[str, object] = {
        "dim": 8,
        "enc_blocks": (1, 1, 1),
        "hf_blocks": (1, 1, 1),
        "mid_blocks": 2,
        "dec_blocks": (1, 1),
        "window_size": 4,
        "kernel_size": 7,
        "num_experts": 4,
        "top_k": 2,
    }
    cfg.update(kw)
    return A.HybridMoE(**cfg)  # type: ignore[arg-type]


def real_image(set5_dir, name: str = "butterfly", size: int = 40) -> torch.Tensor:
    """A crop of a real Set5 image as (1,3,size,size) float in [0,1]."""
    img = np.asarray(Image.open(set5_dir / "HR" / f"{name}.png").convert("RGB"))
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    crop = img[top : top + size, left : left + size]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_shapes_all_scales(name: str) -> None:
    for scale in (1, 2, 3, 4, 8):
        model = A.FACTORIES[name](scale=scale).eval()
        for h, w in ((1, 1), (7, 5)):
            with torch.inference_mode():
                y = model(torch.rand(1, 3, h, w))
            assert y.shape == (1, 3, h * scale, w * scale), (name, scale, h, w)


def test_batch_and_channels() -> None:
    model = tiny(scale=3).eval()
    with torch.inference_mode():
        assert model(torch.rand(4, 3, 9, 11)).shape == (4, 3, 27, 33)
    grey = tiny(scale=2, in_ch=1).eval()
    with torch.inference_mode():
        assert grey(torch.rand(2, 1, 10, 6)).shape == (2, 1, 20, 12)


def test_batch_items_independent() -> None:
    """Image i of a batch gives the same output as image i alone (no cross-image coupling)."""
    model = tiny(scale=2).eval()
    perturb(model)
    x = torch.rand(3, 3, 12, 10)
    with torch.inference_mode():
        both = model(x)
        single = model(x[1:2])
    assert torch.allclose(both[1:2], single, atol=1e-5)


@pytest.mark.parametrize(
    "opts",
    [
        {"freq_split": "fft"},
        {"global_mixer": "ssm"},
        {"global_mixer": "none"},
        {"use_moe": False},
        {"refine_moe": True},
        {"use_hf": False},
        {"use_attn": False},
        {"noise": True},
        {"stem_lk": True},
        {"upsampler": "dysample"},
        {"base": "bicubic"},
        {"base": "none"},
    ],
)
def test_ablation_switches_build_and_run(opts: dict[str, object]) -> None:
    for scale in (1, 3):
        model = tiny(scale=scale, **opts).eval()
        with torch.inference_mode():
            y = model(torch.rand(2, 3, 11, 9))
        assert y.shape == (2, 3, 11 * scale, 9 * scale)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [(7, 10), (8, 8), (9, 12)])
def test_padding_to_the_level_multiple_is_the_smallest(size: tuple[int, int]) -> None:
    """Three levels need H and W multiples of 4: the image is replicate-padded bottom/right to
    the next multiple (not at all when it is one) and the output cropped, so its output is
    that of the image padded by hand, cropped."""
    model = perturb(tiny(scale=2, base="none")).eval()
    h, w = size
    x = torch.rand(1, 3, h, w)
    padded = F.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
    with torch.no_grad():
        y, y_padded = model(x), model(padded)
    assert y.shape == (1, 3, 2 * h, 2 * w)
    assert torch.allclose(y, y_padded[..., : 2 * h, : 2 * w], atol=1e-6)


def test_stem_features_skip_to_the_head() -> None:
    """The decoder's output is added to the stem features before the head: with a decoder that
    outputs zeros the output is upsampler(head(stem features)) + base."""

    class Zero(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    model = perturb(tiny(scale=2)).eval()
    model.dec1 = Zero()
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        f = model.stem(A._pad_to_multiple(x, model.pad_multiple))
        expected = model.up(model.head(f))[..., :18, :20] + model.base(x)
        assert torch.allclose(model(x), expected, atol=1e-6)


# --------------------------------------------------------------------------- gradients


def test_gradient_reaches_every_parameter() -> None:
    model = tiny(
        scale=2,
        refine_moe=True,
        noise=True,
        stem_lk=True,
        freq_split="fft",
        upsampler="dysample",
    ).train()
    y = model(torch.rand(2, 3, 16, 12))
    balance = A.MOE_AUX.take_balance_loss()
    assert balance is not None
    (y.abs().mean() + 0.01 * balance).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing, missing
    assert not zero, zero
    routers = [n for n, _ in model.named_parameters() if n.endswith("router")]
    assert len(routers) == 3


def test_channels_last_gradients_keep_parameter_strides() -> None:
    """With ``model.to(memory_format=torch.channels_last)`` (traiNNer's use_channels_last) every
    gradient has its parameter's strides, which DDP's gradient buckets require."""
    model = tiny(scale=2, refine_moe=True, noise=True, stem_lk=True).train()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 16, 12).to(memory_format=torch.channels_last)
    model(x).abs().mean().backward()
    A.MOE_AUX.take_balance_loss()
    mismatched = [
        (n, p.stride(), p.grad.stride())
        for n, p in model.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    ]
    assert not mismatched, mismatched


def test_checkpoints_with_4d_channel_parameters_load() -> None:
    """Layer-scale and noise-strength parameters stored as (1,C,1,1) (the earlier layout) load
    into the (C,1,1) parameters with the same values and outputs."""
    model = tiny(scale=2, noise=True).eval()
    perturb(model)
    sd = model.state_dict()
    old = {
        k: v.unsqueeze(0)
        if k.endswith(("ls.gamma", "ls1.gamma", "ls2.gamma", "noise_strength"))
        else v
        for k, v in sd.items()
    }
    assert sum(v.ndim == 4 and v.shape[0] == 1 for v in old.values()) > 10
    fresh = tiny(scale=2, noise=True).eval()
    fresh.load_state_dict(old)
    x = torch.rand(1, 3, 20, 18)
    assert torch.equal(fresh(x), model(x))
    assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)


def test_every_parameter_gets_gradient_when_routing_collapses() -> None:
    """DDP needs a gradient for every parameter each step, even if one expert gets all tokens."""
    model = tiny(scale=2).train()
    for layer in model.moe_layers():
        with torch.no_grad():
            layer.router.zero_()
            layer.router[0] += 10.0  # expert 0 wins for positive features
    x = torch.rand(1, 3, 8, 8)
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_ssm_variant_gradients() -> None:
    model = tiny(scale=2, global_mixer="ssm").train()
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", VARIANTS)
def test_fp32_and_bf16_finite_on_real_images(name: str, set5_dir) -> None:
    model = A.FACTORIES[name](scale=2).eval()
    x = torch.cat([real_image(set5_dir, n, 16) for n in ("butterfly", "baby")])
    with torch.inference_mode():
        y32 = model(x)
        y16 = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert torch.isfinite(y32).all() and torch.isfinite(y16).all()
    # the untrained network's output is dominated by the fixed base upsampler
    assert (y32 - y16).abs().mean() < 0.05


def test_fft_runs_in_float32_under_autocast(set5_dir) -> None:
    model = tiny(scale=2, freq_split="fft").eval()
    x = real_image(set5_dir, size=20)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    with torch.inference_mode():
        ref = model(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.05


@pytest.mark.parametrize("size", [(7, 10), (8, 9), (5, 5), (1, 4)])
def test_matmul_dft_equals_fft(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    re, im = A.rfft2_real(x)
    re2, im2 = A.rfft2_real(x, use_matmul=True)
    assert torch.allclose(re, re2, atol=1e-5) and torch.allclose(im, im2, atol=1e-5)
    back = A.irfft2_real(re, im, size, use_matmul=True)
    assert torch.allclose(back, x, atol=1e-5)


@pytest.mark.parametrize("n", [128, 480])
def test_dft_matrices_match_float64_at_large_lengths(n: int) -> None:
    # the angle 2π·i·j/n reaches thousands of radians at these lengths; computed without
    # reducing i·j modulo n, its float32 rounding alone puts the matrices ~1e-5 off, and
    # onnxruntime's cos/sin lose more there (an exported FFT split was 1.6e-4 off at 128 px)
    cos, sin, _ = A._dft_mats(n, n // 2 + 1, torch.device("cpu"))
    i = torch.arange(n, dtype=torch.float64).view(-1, 1)
    j = torch.arange(n // 2 + 1, dtype=torch.float64).view(1, -1)
    ang = 2 * math.pi * (i * j) / n
    assert (cos.double() - ang.cos() / math.sqrt(n)).abs().max() < 2e-7
    assert (sin.double() - ang.sin() / math.sqrt(n)).abs().max() < 2e-7
    # the reduction happens in the traced graph too: angles stay below 2π
    x = torch.arange(n, dtype=torch.float32)
    assert (torch.remainder(torch.outer(x, x), float(n)) < n).all()


def test_frequency_split_sums_to_input() -> None:
    x = torch.randn(2, 4, 13, 10)
    for mode in A.SPLIT_CHOICES:
        split = A.FrequencySplit(4, mode)
        lf, hf = split(x)
        assert torch.allclose(lf + hf, x, atol=1e-5)
        # low-pass: LF has less high-frequency energy than the input
        assert lf.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()


# --------------------------------------------------------------------------- base upsampler


def test_mks2021_identity_and_constants() -> None:
    x = torch.rand(1, 3, 9, 7)
    assert torch.equal(A.MagicKernelSharpUpsample(1)(x), x)
    for s in (2, 3, 4, 8):
        const = torch.full((1, 2, 5, 6), 0.37)
        y = A.MagicKernelSharpUpsample(s)(const)
        assert y.shape == (1, 2, 5 * s, 6 * s)
        assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-6)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_mks2021_impulse_response(s: int) -> None:
    """Impulse response = Σ_j sharp[j] · (box_s ∗ triangle_{2s-1}) shifted by j·s (1-D)."""
    n = 15
    x = torch.zeros(1, 1, 1, n)
    x[..., n // 2] = 1.0
    # 1-D behaviour: use a tall image so the vertical filter sees constant columns
    y = A.MagicKernelSharpUpsample(s)(x.expand(1, 1, 9, n).contiguous())[0, 0, 4 * s]
    sharp = np.array([-1, 6, -35, 204, -35, 6, -1]) / 144
    box = np.ones(s)
    tri = np.convolve(np.ones(s), np.ones(s)) / (s * s)
    kernel = np.convolve(box, tri)  # continuous magic kernel sampled on the HR grid
    expected = np.zeros(n * s + 4 * s)
    off = 2 * s
    for j, t in enumerate(sharp):
        pos = (n // 2 + j - 3) * s  # first HR pixel of LR pixel (centre + j - 3)
        start = pos - (s - 1) + off
        expected[start : start + kernel.size] += t * kernel
    expected = expected[off : off + n * s]
    assert np.allclose(y.numpy(), expected, atol=1e-6)


def test_dysample_with_zero_offsets_is_bilinear() -> None:
    up = A.DySampleUpsampler(6, 3, 3)
    torch.nn.init.zeros_(up.offset.weight)
    x = torch.rand(1, 6, 7, 5)
    ref = F.interpolate(up.conv(x), scale_factor=3, mode="bilinear", align_corners=False)
    assert torch.allclose(up(x), ref, atol=1e-5)


# --------------------------------------------------------------------------- attention


def test_shifted_windows_carry_information_across_window_borders() -> None:
    torch.manual_seed(0)
    c = 8
    plain = torch.nn.Sequential(A.WindowAttention(c, 4, False), A.WindowAttention(c, 4, False))
    shifted = torch.nn.Sequential(A.WindowAttention(c, 4, False), A.WindowAttention(c, 4, True))
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(1, c, 8, 8)
    x2 = x.clone()
    x2[..., 3, 3] += 5.0  # last pixel of the top-left window
    with torch.no_grad():
        d_plain = (plain(x2) - plain(x)).abs()[0].sum(0)
        d_shift = (shifted(x2) - shifted(x)).abs()[0].sum(0)
    assert d_plain[4:, 4:].max() == 0  # unshifted windows never reach the next window
    assert d_shift[4, 4] > 0  # the shifted grid does


def test_window_attention_any_size() -> None:
    attn = A.WindowAttention(16, 8, True)
    for h, w in ((1, 1), (5, 13), (8, 8), (17, 9)):
        assert attn(torch.randn(2, 16, h, w)).shape == (2, 16, h, w)


# --------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_fuse_equivalence_and_deploy_load(scale: int, set5_dir) -> None:
    model = tiny(scale=scale, stem_lk=True, noise=True).eval()
    perturb(model)
    x = real_image(set5_dir, size=20)
    with torch.no_grad():
        ref = model(x)
        fused = copy.deepcopy(model).fuse()
        out = fused(x)
    assert (out - ref).abs().max() < 1e-4
    n_train = sum(p.numel() for p in model.parameters())
    n_fused = sum(p.numel() for p in fused.parameters())
    assert n_fused < n_train
    assert fused.hyperparameters["deploy"] is True
    deploy = A.HybridMoE(**fused.hyperparameters).eval()
    deploy.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert torch.equal(deploy(x), out)


def test_repconv_fuse_grouped_and_dense() -> None:
    for groups, cin, cout in ((1, 4, 4), (1, 4, 6), (4, 4, 4)):
        conv = A.RepConv(cin, cout, 5, groups=groups)
        perturb(conv)
        x = torch.randn(2, cin, 9, 7)
        ref = conv(x)
        conv.fuse()
        assert conv.lk is None and conv.fused is not None
        assert torch.allclose(conv(x), ref, atol=1e-5)


# --------------------------------------------------------------------------- MoE


def test_eval_is_deterministic() -> None:
    model = tiny(scale=2, noise=True).eval()
    perturb(model)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.set_noise_in_eval(True)
        assert not torch.equal(model(x), model(x))
        model.set_noise_in_eval(False)
        assert torch.equal(model(x), model(x))


def test_sparse_dispatch_equals_dense_and_topk_dial() -> None:
    model = tiny(scale=2, refine_moe=True).eval()
    perturb(model)
    x = torch.rand(2, 3, 12, 8)
    with torch.no_grad():
        sparse = model(x)
        model.set_moe_dispatch("dense")
        assert all(layer.dispatch == "dense" for layer in model.moe_layers())
        dense = model(x)
        assert torch.allclose(sparse, dense, atol=1e-5)
        model.set_moe_dispatch("sparse")
        model.set_top_k(1)
        k1 = model(x)
        model.set_top_k(4)
        k4 = model(x)
    assert not torch.allclose(k1, sparse)
    assert not torch.allclose(k4, sparse)
    assert model.hyperparameters["top_k"] == 4
    assert all(layer.top_k == 4 for layer in model.moe_layers())
    assert M.decode_meta(model.state_dict()["hmoe_meta"].tolist())["top_k"] == 4
    with pytest.raises(ValueError, match="top_k=5 exceeds num_experts=4"):
        model.set_top_k(5)
    with pytest.raises(ValueError, match="dispatch='fast'"):
        model.set_moe_dispatch("fast")


def test_moe_all_experts_equals_weighted_sum() -> None:
    """With top_k = E the layer is the probability-weighted sum of every expert."""
    moe = A.MoEFFN(6, 8, 3, A.MoERouting(3))
    perturb(moe)
    x = torch.randn(1, 6, 4, 5)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 6)
    local = F.avg_pool2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), 7, 1)
    contrast = (x - local).permute(0, 2, 3, 1).reshape(-1, 6)
    probs = torch.softmax(contrast @ moe.router.t(), -1)
    expected = torch.zeros_like(tokens)
    for e in range(3):
        g, v = (tokens @ moe.w_in[e] + moe.b_in[e]).chunk(2, -1)
        expected += probs[:, e : e + 1] * (F.gelu(g) * v @ moe.w_out[e] + moe.b_out[e])
    with torch.no_grad():
        out = moe(x).permute(0, 2, 3, 1).reshape(-1, 6)
    assert torch.allclose(out, expected, atol=1e-5)


def test_side_channel_only_in_training_forwards() -> None:
    model = tiny(scale=2)
    x = torch.rand(1, 3, 8, 8)
    A.MOE_AUX.take_balance_loss()
    model.eval()
    with torch.no_grad():
        model(x)
    model(x)  # eval with grad: still nothing
    assert not A.MOE_AUX.has_terms()
    model.train()
    with torch.no_grad():
        model(x)  # training mode without autograd (e.g. a no-grad probe)
    assert not A.MOE_AUX.has_terms()
    model(x)
    assert A.MOE_AUX.has_terms()
    loss = A.MOE_AUX.take_balance_loss()
    assert loss is not None and loss.requires_grad and loss.ndim == 0
    assert len(A.MOE_AUX.usage) == 2 and all(u.shape == (4,) for u in A.MOE_AUX.usage)
    assert A.MOE_AUX.take_balance_loss() is None  # consumed once


def test_no_routing_collapse_when_training_on_real_images(set5_dir) -> None:
    """A short training run on real crops keeps every expert of the top-1 bottleneck in use."""
    imgs = [real_image(set5_dir, n, 96) for n in ("baby", "bird", "butterfly", "head", "woman")]
    pool = torch.cat(imgs)
    g = torch.Generator().manual_seed(0)
    model = A.hybridmoe(scale=2, **SMALL_UNET).train()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    usage = []
    for _ in range(40):
        idx = torch.randint(0, 5, (8,), generator=g)
        t, left = torch.randint(0, 96 - 48, (2,), generator=g).tolist()
        hr = pool[idx, :, t : t + 48, left : left + 48]
        out = model(F.avg_pool2d(hr, 2))
        balance = A.MOE_AUX.take_balance_loss()
        assert balance is not None
        loss = F.l1_loss(out, hr) + 0.05 * balance
        opt.zero_grad()
        loss.backward()
        opt.step()
        usage.append(A.MOE_AUX.usage[0])
    recent = torch.stack(usage[-20:]).mean(0)
    assert (recent > 0.1).all(), recent


# --------------------------------------------------------------------------- SSM


def naive_scan(x, dt, a, b, c):
    """Sequential reference of the selective scan (float64)."""
    bsz, length, heads, p = x.shape
    h = torch.zeros(bsz, heads, p, b.shape[-1], dtype=torch.float64)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * a)  # (B,H)
        h = (
            h * decay[..., None, None]
            + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, None, None, :]
        )
        ys.append((h * c[:, t, None, None, :]).sum(-1))
    return torch.stack(ys, 1)


@pytest.mark.parametrize(
    "length,chunk,block", [(37, 8, 64), (64, 16, 64), (5, 64, 64), (203, 4, 3), (96, 4, 8)]
)
def test_ssd_scan_matches_sequential_reference(length: int, chunk: int, block: int) -> None:
    """Also across blocks of chunks (203 tokens in chunks of 4 and blocks of 3 chunks: 17
    blocks, the last one padded)."""
    g = torch.Generator().manual_seed(3)
    bsz, heads, p, s = 2, 3, 4, 5
    x = torch.randn(bsz, length, heads, p, generator=g)
    dt = F.softplus(torch.randn(bsz, length, heads, generator=g)) * 0.2
    a = -torch.rand(heads, generator=g) * 2
    b = torch.randn(bsz, length, s, generator=g)
    c = torch.randn(bsz, length, s, generator=g)
    y = A.ssd_scan(x, dt, a, b, c, chunk=chunk, block=block)
    ref = naive_scan(x.double(), dt.double(), a.double(), b.double(), c.double())
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4)


def test_ssd_scan_memory_is_linear_in_the_length() -> None:
    """The state passed between chunks was one causal decay matrix over all chunks:
    (L/64)² entries per head: 7.7 GB and 52 s for SelectiveScan2D on a 1024² map. Now the
    largest decay matrix grows with L, not L² (below chunk³·block² tokens)."""

    def peak_elements(length: int) -> int:
        sizes: list[int] = []
        real = A._segsum

        def spy(la: torch.Tensor) -> torch.Tensor:
            out = real(la)
            sizes.append(out.numel())
            return out

        with patch.object(A, "_segsum", spy):
            x = torch.zeros(1, length, 1, 1)
            ones = torch.ones(1, length, 1)
            A.ssd_scan(x, ones, -torch.ones(1), ones, ones, chunk=4, block=8)
        return max(sizes)

    assert peak_elements(256) == 4 * peak_elements(64)


def test_set_ssm_kernel_reaches_every_scan() -> None:
    model = tiny(scale=2, global_mixer="ssm")
    scans = [m for m in model.modules() if isinstance(m, A.SelectiveScan2D)]
    assert scans and all(m.use_kernel for m in scans)
    assert model.set_ssm_kernel(False) is model
    assert not any(m.use_kernel for m in scans)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"scale": 0}, "scale must be an integer >= 1"),
        ({"scale": -2}, "scale must be an integer >= 1"),
        ({"scale": 2.5}, "scale must be an integer >= 1, got 2.5"),
        ({"scale": "4"}, "scale must be an integer"),
        ({"freq_split": "wavelet"}, "freq_split='wavelet' is not supported; allowed values: "),
        ({"global_mixer": "attention"}, "'fourier', 'ssm', 'none'"),
        ({"upsampler": "nearest"}, "'pixelshuffle', 'dysample'"),
        ({"base": "lanczos"}, "'mks2021', 'bicubic', 'none'"),
        ({"top_k": 5, "num_experts": 4}, "top_k=5 exceeds num_experts=4"),
        ({"top_k": 8, "use_moe": False}, "with use_moe=False, top_k sets the dense FFN's width"),
        ({"mlp_ratio": True}, "mlp_ratio must be a positive number, got True"),
        ({"enc_blocks": (1, 1)}, "enc_blocks must list 3 block counts"),
        ({"dec_blocks": (1, 1, 1)}, r"dec_blocks must list 2 block counts \(levels x1, x1/2\)"),
        ({"kernel_size": 8}, "kernel_size must be odd"),
        ({"use_moe": "false"}, "use_moe must be true or false, got 'false'"),
        ({"noise": 2}, "noise must be true or false"),
        ({"scale": 17}, r"scale=17 is outside 1\.\.16, the range a checkpoint records"),
        ({"window_size": 80}, r"window_size=80 is outside 1\.\.64"),
        ({"kernel_size": 65}, r"kernel_size=65 is outside 3\.\.63"),
        ({"num_experts": 300}, r"num_experts=300 is outside 1\.\.256"),
        ({"hf_blocks": (2, 1, 257)}, r"hf_blocks\[2\]=257 is outside 0\.\.256"),
    ],
)
def test_configuration_errors(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        A.HybridMoE(**kwargs)  # type: ignore[arg-type]


def test_float_scale_that_is_integral_is_accepted() -> None:
    assert tiny(scale=2.0).scale == 2


def test_options_are_recorded_as_checked_and_the_checkpoint_round_trips() -> None:
    """Choices in any case, integral floats, 0/1 flags and lists (as YAML gives them) are
    recorded in their checked form, so that saving (the meta) and loading work."""
    model = tiny(scale=2.0, base="BICUBIC", shift="None", use_moe=1, enc_blocks=[1, 1, 1])
    hp = model.hyperparameters
    assert (hp["scale"], hp["base"], hp["shift"], hp["use_moe"]) == (2, "bicubic", "none", True)
    assert hp["enc_blocks"] == (1, 1, 1)
    loaded = M.model_from_state_dict(model.state_dict())
    assert {k: loaded.hyperparameters[k] for k in ("base", "shift", "use_moe", "scale")} == {
        "base": "bicubic",
        "shift": "none",
        "use_moe": True,
        "scale": 2,
    }


def test_unknown_option_names_are_listed() -> None:
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument .depth.*valid options: in_ch, dim"
    ):
        A.hybridmoe_s(scale=2, depth=3)


def test_channel_mismatch_at_forward() -> None:
    model = tiny(scale=2).eval()
    with pytest.raises(ValueError, match=r"expects an \(N, 3, H, W\).*got shape \(1, 4, 8, 8\)"):
        model(torch.rand(1, 4, 8, 8))
    # a single (C, H, W) image: the fix is the batch dimension, not other channels
    with pytest.raises(
        ValueError, match=r"got shape \(3, 8, 8\); add the batch dimension.*unsqueeze"
    ):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(8, 8\); pass a batch of images"):
        model(torch.rand(8, 8))


def test_empty_and_unusable_inputs() -> None:
    """A batch of no images gave an MKL error (Fourier mixer, FFT split) or a reshape error
    (SSM scan), and the MoE balance term of such a batch was 0/0 = NaN; an empty image and an
    8-bit tensor failed deep inside with torch's words."""
    for options in ({}, {"freq_split": "fft", "global_mixer": "none"}, {"global_mixer": "ssm"}):
        model = tiny(scale=2, **options).eval()
        with torch.no_grad():
            assert model(torch.rand(0, 3, 8, 9)).shape == (0, 3, 16, 18)
    model = tiny(scale=2, global_mixer="none").train()
    model(torch.rand(0, 3, 8, 8))
    balance = A.MOE_AUX.take_balance_loss()
    assert balance is None or torch.isfinite(balance)
    with pytest.raises(ValueError, match=r"at least 1x1 pixels, got \(1, 3, 0, 5\)"):
        model(torch.rand(1, 3, 0, 5))
    with pytest.raises(ValueError, match=r"floating-point image in \[0, 1\], got torch.uint8"):
        model(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


# --------------------------------------------------------------------------- state dict hygiene


def test_state_dict_is_clean_and_safetensors_compatible() -> None:
    model = tiny(scale=2, refine_moe=True, noise=True)
    sd = model.state_dict()
    ptrs = [t.data_ptr() for t in sd.values()]
    assert len(set(ptrs)) == len(ptrs), "aliased tensors in the state dict"
    params = {n for n, _ in model.named_parameters()}
    assert set(sd) - params == {"hmoe_meta"}, "only the meta record may be persistent"
    assert sd["hmoe_meta"].dtype == torch.int32
    loaded = st_load(st_save({k: v.contiguous() for k, v in sd.items()}))
    assert set(loaded) == set(sd)
    clone = copy.deepcopy(model)
    assert torch.equal(clone.state_dict()["stem.weight"], sd["stem.weight"])


def test_key_names_are_distinctive() -> None:
    sd = A.hybridmoe_s(scale=4).state_dict()
    generic = ("body.", "model.", "feats.", "layers.", "conv_first", "m_head", "head.0", "tail.")
    assert not [k for k in sd if k.startswith(generic)]
    for key in DETECT_KEYS:
        assert key in sd


def test_loading_keeps_own_meta() -> None:
    """Loading weights of another top_k keeps the module's own configuration record."""
    src = tiny(scale=2, top_k=1)
    dst = tiny(scale=2, top_k=2)
    dst.load_state_dict(src.state_dict())
    assert dst.top_k == 2 and dst.state_dict()["hmoe_meta"].tolist() == A.encode_meta(
        dst.hyperparameters
    )
    sd = src.state_dict()
    sd["hmoe_meta"] = sd["hmoe_meta"].clone()
    sd["hmoe_meta"][0] = A.META_VERSION + 1
    with pytest.raises(RuntimeError, match="newer HybridMoE"):
        dst.load_state_dict(sd)


def test_from_state_dict_recovers_every_option() -> None:
    model = tiny(
        scale=3,
        in_ch=1,
        freq_split="fft",
        global_mixer="ssm",
        refine_moe=True,
        noise=True,
        stem_lk=True,
        upsampler="dysample",
        base="bicubic",
        mlp_ratio=1.5,
        window_size=6,
        top_k=3,
    )
    rebuilt = M.model_from_state_dict(model.state_dict())
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in model.hyperparameters.items()}
    assert rebuilt.hyperparameters == expected


@pytest.mark.parametrize(("variant", "blocks"), [("hybridmoe_nano", 10), ("hybridmoe_s", 12)])
def test_trunk_variants_deploy_as_a_plain_conv_stack(variant: str, blocks: int) -> None:
    """nano and s spend their compute in dense 3x3 convolutions only: after fuse() the network
    is stem + ``blocks`` 3x3 convs + the 1x1 between encoder and decoder + the upsampler conv
    (no norm, attention, MoE or texture head), and the fused output equals the training form's."""
    torch.manual_seed(0)
    model = A.FACTORIES[variant](scale=2).eval()
    for p in model.parameters():  # leave the near-zero init of the output conv
        p.data.add_(torch.randn_like(p) * 0.01)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        ref = model(x)
        model.fuse()
        out = model(x)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-3)
    weighted = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    assert all(isinstance(m, torch.nn.Conv2d) for m in weighted), {type(m) for m in weighted}
    kernels = [m.kernel_size for m in weighted]
    assert kernels.count((3, 3)) == blocks + 2 and kernels.count((1, 1)) == 1
    assert len(kernels) == blocks + 3
    assert model.num_experts == 0 and model.head is None
