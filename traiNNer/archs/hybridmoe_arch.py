"""HybridMoE-FreqNet: an efficient super-resolution / restoration network.

The whole network lives in this one file: blocks, then the two paths, then the network, its
variants and their registration. It imports with nothing but PyTorch and registers its factories
into traiNNer-redux's ``ARCH_REGISTRY`` when it sits at ``traiNNer/archs/hybridmoe_arch.py``
inside a traiNNer-redux checkout. Every state dict carries an ``hmoe_meta`` int32 buffer with the
options tensor shapes cannot tell (:data:`META_FIELDS`); the ``hybridmoe`` package reads it to
load checkpoints (``hybridmoe.checkpoint``) and to register the network with spandrel.

Data flow (``s`` = scale, ``c1 = dim``, ``c2 = 2·dim``, ``c3 = 4·dim``)::

    x ─┬─ base: fixed upsampler (Magic Kernel Sharp 2021 | bicubic | none) ───────────┐
       └─ detail: pad → stem → frequency split (LF, HF)                              (+) → SR
           level 1 (×1): LF gated-conv blocks  | HF partial-large-kernel blocks → fusion
           level 2 (×½): LF window attention   | HF blocks → fusion
           level 3 (×¼): LF attention + global mixer (fourier | ssm) | HF blocks → fusion
           bottleneck (×¼): window attention + MoE FFN (token-wise top-k)
           decoder ×½ → ×1 fed by the skips of both paths
           (+ stem) → detail MoE (optional) → texture head → upsampler → crop

    x: (N, C, H, W) in [0, 1]; SR: (N, C, s·H, s·W).

``levels=1`` keeps level 1 alone: with ``use_hf=False`` and ``conv_block="rep3"`` the detail
path is a ×1 trunk of re-param 3×3 blocks (the ``nano``, ``s``, ``m`` and ``l`` variants).

Training form vs deploy form: re-parameterizable convolutions (:class:`RepConv`) train as several
parallel branches and :meth:`HybridMoE.fuse` folds them into one convolution each.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FACTORIES",
    "META_FIELDS",
    "META_VERSION",
    "MOE_AUX",
    "VARIANTS",
    "HybridMoE",
    "MetaField",
    "MoEAuxChannel",
    "encode_meta",
    "hybridmoe",
    "hybridmoe_l",
    "hybridmoe_m",
    "hybridmoe_nano",
    "hybridmoe_s",
]

META_VERSION = 4
"""Layout version of the ``hmoe_meta`` int32 buffer written into every state dict: value 0 is
the version, then one value per :data:`META_FIELDS` entry at its position. Version 3 is the
same table without the fields added in 4; versions 1 and 2 (positional, flags packed into
bits) are still read by the ``hybridmoe`` package."""

BASE_CHOICES = ("mks2021", "bicubic", "none")
SPLIT_CHOICES = ("laplacian", "fft")
MIXER_CHOICES = ("fourier", "ssm", "none")
UPSAMPLER_CHOICES = ("pixelshuffle", "dysample")
CONV_BLOCK_CHOICES = ("gated", "rep3", "rep3res")
HF_BLOCK_CHOICES = ("plk", "rep3")
SHIFT_CHOICES = ("stage", "alternate", "none")


class MetaField(NamedTuple):
    """One constructor option recorded in ``hmoe_meta``: ``size`` int32 values from
    ``position``. Stored as the index in ``choices``, 0/1 for a flag, or ``round(value·unit)``,
    each within ``low..high`` (checked before anything is built when a checkpoint is read);
    recorded from layout version ``since`` on."""

    name: str
    position: int
    low: int
    high: int
    choices: tuple[str, ...] = ()
    unit: int = 1
    size: int = 1
    since: int = 3


def _flag(name: str, position: int) -> MetaField:
    return MetaField(name, position, 0, 1)


META_FIELDS: tuple[MetaField, ...] = (
    MetaField("scale", 1, 1, 16),
    MetaField("top_k", 2, 1, 256),
    MetaField("num_experts", 3, 1, 256),
    MetaField("base", 4, 0, len(BASE_CHOICES) - 1, BASE_CHOICES),
    MetaField("freq_split", 5, 0, len(SPLIT_CHOICES) - 1, SPLIT_CHOICES),
    MetaField("global_mixer", 6, 0, len(MIXER_CHOICES) - 1, MIXER_CHOICES),
    MetaField("upsampler", 7, 0, len(UPSAMPLER_CHOICES) - 1, UPSAMPLER_CHOICES),
    MetaField("shift", 8, 0, len(SHIFT_CHOICES) - 1, SHIFT_CHOICES),
    MetaField("window_size", 9, 1, 64),
    MetaField("kernel_size", 10, 3, 63),
    MetaField("mlp_ratio", 11, 1, 16000, unit=1000),
    MetaField("hf_blocks", 12, 0, 256, size=3),
    _flag("use_moe", 15),
    _flag("refine_moe", 16),
    _flag("use_hf", 17),
    _flag("use_attn", 18),
    _flag("stem_lk", 19),
    _flag("noise", 20),
    _flag("gate_norm", 21),
    MetaField("levels", 22, 1, 3, since=4),
    MetaField("enc_blocks", 23, 0, 256, size=3, since=4),
    MetaField("mid_blocks", 26, 0, 256, since=4),
    MetaField("dec_blocks", 27, 0, 256, size=2, since=4),
)
"""The options tensor shapes cannot tell (dim, in_ch and block kinds are read from the
tensors; ``hf_blocks`` and ``num_experts`` are kept for models without HF or MoE layers), and
the level and block counts, which the keys also tell: a file that lost a whole group of
blocks would otherwise load as a smaller network. The ``hybridmoe`` package decodes and
validates with this same table."""
META_LENGTH = 1 + sum(f.size for f in META_FIELDS)


def encode_meta(options: dict[str, Any]) -> list[int]:
    """The ``hmoe_meta`` values (current layout) of a model built with ``options``."""
    values = [0] * META_LENGTH
    values[0] = META_VERSION
    for f in META_FIELDS:
        raw = options[f.name]
        items = list(raw) if f.size > 1 else [raw]
        for i, item in enumerate(items):
            v = f.choices.index(item) if f.choices else item
            values[f.position + i] = round(float(v) * f.unit) if f.unit != 1 else int(v)
    return values


META_FIELD = {f.name: f for f in META_FIELDS}
"""The :data:`META_FIELDS` entries by option name."""
MLP_RATIO_MAX = META_FIELD["mlp_ratio"].high / META_FIELD["mlp_ratio"].unit
"""Largest ``mlp_ratio`` the meta can record (the constructor refuses larger ones)."""
RENAMED_PREFIXES = {"lf3_global.": "global_block.", "refine_moe.moe.": "refine_moe.ffn."}
"""Module paths renamed since earlier checkpoints (old prefix -> new); loading maps them."""
RES_INIT_STD = 1e-3  # initial weights of the residual re-param blocks (near-identity start)
HEAD_KERNEL = 5  # depthwise re-param kernel of the texture head (fast path in cuDNN)
# "auto" MoE dispatch: dense below tokens × experts = 65536 (small, launch-bound maps); the
# sparse dispatch is measured 2.2× / 3.6× faster than dense from 129,600 / 259,200 slots
DENSE_MOE_MAX_SLOTS = 1 << 16
SSM_STATE, SSM_HEAD_DIM = 16, 16  # selective scan: state size, channels per head
DISPATCH_CHOICES = ("auto", "sparse", "dense")


# ---------------------------------------------------------------------------------------------
# Hyper-parameter bookkeeping (same contract as spandrel.util.store_hyperparameters)
# ---------------------------------------------------------------------------------------------

_C = TypeVar("_C", bound=type)


def store_hyperparameters(cls: _C) -> _C:
    """Record every keyword argument (defaults included) of ``cls.__init__`` in
    ``self.hyperparameters``. traiNNer-redux writes this dict into checkpoint metadata."""
    old_init = cls.__init__
    spec = inspect.getfullargspec(old_init)
    if spec.args != ["self"] or spec.varargs or spec.varkw:
        raise TypeError(f"{cls.__name__}.__init__ must take keyword-only arguments")
    defaults = dict(spec.kwonlydefaults or {})

    @functools.wraps(old_init)
    def new_init(self: Any, **kwargs: Any) -> None:
        self.hyperparameters = {**defaults, **kwargs}
        old_init(self, **kwargs)

    cls.__init__ = new_init  # type: ignore[method-assign]
    return cls


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(
            f"HybridMoE: {name}={value!r} is not supported; allowed values: "
            + ", ".join(repr(a) for a in allowed)
        )
    return value.lower()


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"HybridMoE: {name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"HybridMoE: {name} must be an integer >= {minimum}, got {value!r}")
    ivalue = int(value)
    if ivalue < minimum:
        raise ValueError(f"HybridMoE: {name} must be an integer >= {minimum}, got {value!r}")
    return ivalue


def _built_blocks(counts: tuple[int, ...], levels: int) -> tuple[int, ...]:
    """Block counts per level with the levels past ``levels`` set to 0. The decoder's counts
    (×1, ×½) follow the same rule: its ×½ blocks exist only with three levels, where the ×½
    level is not the bottleneck."""
    built = levels if len(counts) == 3 else (1 if levels < 3 else 2)
    return tuple(n if i < built else 0 for i, n in enumerate(counts))


def _check_flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(
        f"HybridMoE: {name} must be true or false, got {value!r} (in YAML write it unquoted)"
    )


def _check_range(options: dict[str, Any]) -> None:
    """Refuse integer options outside what ``hmoe_meta`` records (the checkpoint could be saved
    but not loaded again)."""
    for f in META_FIELDS:
        if f.choices or f.unit != 1 or (f.low, f.high) == (0, 1):
            continue  # choices, flags and mlp_ratio are checked where they are read
        values = options[f.name] if f.size > 1 else (options[f.name],)
        for i, v in enumerate(values):
            if not f.low <= v <= f.high:
                where = f"{f.name}[{i}]" if f.size > 1 else f.name
                raise ValueError(
                    f"HybridMoE: {where}={v} is outside {f.low}..{f.high}, the range a checkpoint "
                    f"records; choose a value in it"
                )


def _check_blocks(name: str, value: object, levels: int = 3) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != levels:
        where = ("x1", "x1/2", "x1/4")[:levels]
        raise ValueError(
            f"HybridMoE: {name} must list {levels} block counts (levels {', '.join(where)}), "
            f"got {value!r}"
        )
    return tuple(_check_int(f"{name}[{i}]", v, 0) for i, v in enumerate(value))


def _heads_for(channels: int, head_dim: int = 16) -> int:
    """Largest head count <= channels // head_dim that divides ``channels`` (at least 1)."""
    for heads in range(max(1, channels // head_dim), 0, -1):
        if channels % heads == 0:
            return heads
    return 1


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, returning ``t`` itself when the dtype already matches (no kernel, and
    no Cast node in traced/exported graphs, which fp16 ONNX converters mishandle)."""
    return t if t.dtype == dtype else t.to(dtype)


def _f32(t: Tensor) -> Tensor:
    """``t`` in float32 (see :func:`_cast`)."""
    return _cast(t, torch.float32)


def _onnx_export() -> bool:
    """True while exporting to ONNX: size-dependent branches must then take the general path
    (a graph traced at a size that needs no padding would fail at sizes that do), and ops the
    exporter renders badly take a plain-op form with the same math."""
    return torch.onnx.is_in_onnx_export()


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad (N,C,H,W) on the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    # (h + m - 1) // m · m - h rather than (-h) % m: the same amounts, but torch.compile's
    # dynamic-shape graphs fail on a modulo in a size that reaches float arithmetic (the
    # DySample upsampler's sampling grid: "no attribute 'python_mod'")
    ph = (h + multiple - 1) // multiple * multiple - h
    pw = (w + multiple - 1) // multiple * multiple - w
    if ph or pw or _onnx_export():  # traced graphs keep the pad for sizes that need one
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def _export_mode() -> bool:
    """True while tracing for ONNX or compiling with dynamo: use static-shape code paths."""
    if _onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


# ---------------------------------------------------------------------------------------------
# Side channel for the MoE load-balance loss
# ---------------------------------------------------------------------------------------------


class MoEAuxChannel:
    """Carries router statistics of the latest *training* forward to the balance loss.

    traiNNer-redux calls losses as ``loss(output, target)`` only, so the MoE layers publish
    their load-balance terms here during ``net.train()`` forwards with autograd enabled; the
    ``hybridmoebalanceloss`` consumes them once. Evaluation, validation, EMA and inference
    forwards never write to it.
    """

    def __init__(self) -> None:
        self._terms: list[Tensor] = []
        self.usage: list[Tensor] = []
        """Per MoE layer: fraction of routed token slots each expert received, shape (E,),
        detached, from the latest training forward."""
        self.training_forwards = 0
        """Training forwards begun, counted in eager forwards (torch.compile guards on a
        Python int it reads, so counting in a compiled forward recompiled it every step)."""

    def begin_forward(self) -> None:
        """Start a new training forward: drop terms a previous forward left unconsumed."""
        self._terms = []
        self.usage = []
        if not _export_mode():
            self.training_forwards += 1

    def record(self, balance: Tensor, usage: Tensor) -> None:
        """Store one layer's balance term (0-dim, in the graph) and its usage (E,)."""
        self._terms.append(balance)
        self.usage.append(usage.detach())

    def has_terms(self) -> bool:
        """Whether a training forward recorded terms that were not consumed yet."""
        return bool(self._terms)

    def take_balance_loss(self) -> Tensor | None:
        """Mean balance term over the MoE layers of the latest training forward, consumed
        once; ``None`` when no MoE training forward ran since the last call."""
        if not self._terms:
            return None
        terms, self._terms = self._terms, []
        return torch.stack([t.float() for t in terms]).mean()


MOE_AUX = MoEAuxChannel()


# ---------------------------------------------------------------------------------------------
# Base path: fixed (non-learned) upsamplers
# ---------------------------------------------------------------------------------------------


def _separable_blur(x: Tensor, taps: Tensor) -> Tensor:
    """Depthwise separable filter of (N,C,H,W) with a 1-D odd-length kernel, replicate padding."""
    n, c, h, w = x.shape
    k = taps.numel()
    y = x.reshape(n * c, 1, h, w)
    y = F.pad(y, (k // 2, k // 2, k // 2, k // 2), mode="replicate")
    t = taps.to(dtype=x.dtype, device=x.device)
    y = F.conv2d(y, t.view(1, 1, 1, k))
    y = F.conv2d(y, t.view(1, 1, k, 1))
    return y.reshape(n, c, h, w)


class MagicKernelSharpUpsample(nn.Module):
    """Magic Kernel Sharp 2021 upsampler: (N,C,H,W) -> (N,C,sH,sW), identity at s = 1.

    Sharpen at the low resolution with the 7-tap MKS2021 filter
    ``[-1, 6, -35, 204, -35, 6, -1] / 144``, replicate every pixel ``s × s`` times (nearest),
    then blur with the ``2s-1``-tap triangle (two box filters of width ``s``); nearest + triangle
    is the quadratic B-spline "magic kernel" at factor ``s``.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        sharp = torch.tensor([-1.0, 6.0, -35.0, 204.0, -35.0, 6.0, -1.0]) / 144.0
        tri = torch.cat([torch.arange(1, scale + 1), torch.arange(scale - 1, 0, -1)]).float()
        self.register_buffer("sharp", sharp, persistent=False)
        self.register_buffer("blur", tri / tri.sum(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 1:
            return x
        y = _separable_blur(x, self.sharp)
        y = F.interpolate(y, scale_factor=self.scale, mode="nearest")
        return _separable_blur(y, self.blur)


class BicubicUpsample(nn.Module):
    """Bicubic interpolation (N,C,H,W) -> (N,C,sH,sW); identity at s = 1."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 1:
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


# ---------------------------------------------------------------------------------------------
# Small building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm2d(nn.Module):
    """RMS normalization over channels: (N,C,H,W) -> (N,C,H,W).

    One fused ``F.rms_norm`` over the channel axis (accumulated in float32 for half inputs);
    the output is a channels-last view, which the following 1×1 convolutions consume as is.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if _onnx_export():  # ONNX has RMSNormalization only from opset 23
            xf = _f32(x)
            y = xf * torch.rsqrt(xf.square().mean(1, keepdim=True) + self.eps)
            return _cast(y * _f32(self.weight).view(1, -1, 1, 1), x.dtype)
        w = _cast(self.weight, x.dtype)
        y = F.rms_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, self.eps)
        return y.permute(0, 3, 1, 2)


def _channel_param(channels: int, value: float) -> nn.Parameter:
    """A per-channel (C,1,1) parameter that broadcasts over (N,C,H,W).

    3-D on purpose: ``model.to(memory_format=torch.channels_last)`` restrides only 4-D tensors,
    so the gradient keeps the parameter's strides and DDP's gradient buckets match (a (1,C,1,1)
    parameter makes DDP warn "Grad strides do not match bucket view strides").
    """
    return nn.Parameter(torch.full((channels, 1, 1), value))


class _ChannelParamModule(nn.Module):
    """Base of modules with :func:`_channel_param` parameters (named in ``channel_params``):
    checkpoints that stored one as (1,C,1,1) load unchanged (same values, reshaped)."""

    channel_params: tuple[str, ...] = ()

    def _load_from_state_dict(  # noqa: PLR0917 (signature fixed by nn.Module)
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self.channel_params:
            stored = state_dict.get(prefix + name)
            if isinstance(stored, Tensor) and stored.ndim == 4 and stored.shape[0] == 1:
                state_dict = {**state_dict, prefix + name: stored.reshape(stored.shape[1:])}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class LayerScale(_ChannelParamModule):
    """Per-channel residual scale: ``x + gamma * y`` for (N,C,H,W) tensors; ``gamma`` (C,1,1)."""

    channel_params = ("gamma",)

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.gamma = _channel_param(channels, init)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        g = _cast(self.gamma, y.dtype)
        if _onnx_export():  # addcmul exports with mixed types; same math
            return x + y * g
        return torch.addcmul(x, y, g)


class RepConv(nn.Module):
    """Re-parameterizable ``k×k`` convolution without bias: (N,Cin,H,W) -> (N,Cout,H,W).

    Training form: ``k×k`` + ``3×3`` (when ``k > 3``) + ``1×1`` branches, plus identity when
    ``Cin == Cout`` and ``identity`` is set. ``init_std``: every branch's weights drawn with this
    std and the bias zeroed (default: the ``k×k`` weights at std 0.02, the others PyTorch's).
    Deploy form (:meth:`fuse`): one ``k×k`` convolution with the summed kernel, which gives the
    same output up to float rounding.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        *,
        groups: int = 1,
        bias: bool = False,
        identity: bool = True,
        init_std: float | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.groups = cin, cout, kernel_size, groups
        self.identity = identity and cin == cout
        self.bias = bias
        pad = kernel_size // 2
        if deploy:
            self.fused: nn.Conv2d | None = nn.Conv2d(
                cin, cout, kernel_size, 1, pad, groups=groups, bias=bias
            )
            self.lk = self.sk = self.pw = None
        else:
            self.fused = None
            self.lk = nn.Conv2d(cin, cout, kernel_size, 1, pad, groups=groups, bias=bias)
            self.sk = (
                nn.Conv2d(cin, cout, 3, 1, 1, groups=groups, bias=False)
                if kernel_size > 3
                else None
            )
            self.pw = nn.Conv2d(cin, cout, 1, 1, 0, groups=groups, bias=False)
            nn.init.trunc_normal_(self.lk.weight, std=0.02)
            if init_std is not None:
                for conv in (self.lk, self.sk, self.pw):
                    if conv is not None:
                        nn.init.trunc_normal_(conv.weight, std=init_std)
                if self.lk.bias is not None:
                    nn.init.zeros_(self.lk.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.fused(x)
        assert self.lk is not None and self.pw is not None
        y = self.lk(x) + self.pw(x)
        if self.sk is not None:
            y = y + self.sk(x)
        if self.identity:
            y = y + x
        return y

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold all branches into ``self.fused`` (in place)."""
        if self.fused is not None:
            return
        assert self.lk is not None and self.pw is not None
        k = self.k
        weight = self.lk.weight.detach().clone()
        c = k // 2
        weight[:, :, c : c + 1, c : c + 1] += self.pw.weight
        if self.sk is not None:
            weight[:, :, c - 1 : c + 2, c - 1 : c + 2] += self.sk.weight
        if self.identity:
            per_group = self.cin // self.groups
            for o in range(self.cout):
                weight[o, o % per_group, c, c] += 1.0
        fused = nn.Conv2d(self.cin, self.cout, k, 1, k // 2, groups=self.groups, bias=self.bias)
        fused = fused.to(device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        if self.lk.bias is not None:
            fused.bias.copy_(self.lk.bias)  # type: ignore[union-attr]
        self.fused = fused
        self.lk = self.sk = self.pw = None


class GatedFFN(nn.Module):
    """Gated feed-forward with a depthwise 3×3 (GDFN-style): (N,C,H,W) -> (N,C,H,W)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        g, v = self.dw(self.fc1(x)).chunk(2, dim=1)
        return self.fc2(F.gelu(g) * v)


# ---------------------------------------------------------------------------------------------
# Frequency split
# ---------------------------------------------------------------------------------------------


def _dft_mats(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal DFT factors for length ``n``, frequencies ``0..m-1``.

    Returns cos and sin matrices (n, m) of the angle 2π·i·j/n, both scaled by 1/√n, and the
    frequency index row (1, m). Built with tensor ops only, so traced graphs stay dynamic.
    The index product is reduced modulo n first (exact in float32 while n² < 2²⁴): angles
    stay in [0, 2π), where every runtime's cos/sin is accurate (onnxruntime's are not at the
    hundreds of radians that i·j·2π/n reaches at n = 128).
    """
    i = torch.arange(n, device=device, dtype=torch.float32)
    j = torch.arange(m, device=device, dtype=torch.float32)
    nt = i.amax(0, keepdim=True) + 1.0  # n as a (1,) tensor
    ang = torch.remainder(torch.outer(i, j), nt) * (2.0 * math.pi) / nt
    s = torch.rsqrt(nt)
    return torch.cos(ang) * s, torch.sin(ang) * s, j.view(1, -1) / nt


def rfft2_real(x: Tensor, use_matmul: bool = False) -> tuple[Tensor, Tensor]:
    """Orthonormal 2-D real FFT of float32 (N,C,H,W) -> real, imag parts (N,C,H,W//2+1).

    ``use_matmul`` evaluates the same transform with DFT matrices (plain matmuls; exportable
    to ONNX and traceable with dynamic shapes)."""
    if not use_matmul:
        spec = torch.fft.rfft2(x, norm="ortho")
        return spec.real, spec.imag
    h, w = x.shape[-2:]
    cw, sw, _ = _dft_mats(w, w // 2 + 1, x.device)  # (W, Wf)
    ch, sh, _ = _dft_mats(h, h, x.device)  # (H, H), symmetric
    r1, i1 = x @ cw, -(x @ sw)  # along W: x · (cos - i sin)
    return ch @ r1 + sh @ i1, ch @ i1 - sh @ r1  # along H: (cos - i sin) · X1


def irfft2_real(re: Tensor, im: Tensor, size: tuple[int, int], use_matmul: bool = False) -> Tensor:
    """Inverse of :func:`rfft2_real`: (N,C,H,W//2+1) x2 -> float32 (N,C,H,W)."""
    h, w = size
    if not use_matmul:
        return torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")
    ch, sh, _ = _dft_mats(h, h, re.device)
    r1, i1 = ch @ re - sh @ im, ch @ im + sh @ re  # inverse along H: (cos + i sin) · X
    cw, sw, fw = _dft_mats(w, re.shape[-1], re.device)  # (W, Wf)
    # Hermitian weights: the DC and (even W) Nyquist bins count once, the others twice
    wts = torch.where((fw == 0) | (fw * 2 == 1), 1.0, 2.0)
    return r1 @ (cw * wts).t() - i1 @ (sw * wts).t()


class FrequencySplit(nn.Module):
    """Split features into low and high frequencies: (N,C,H,W) -> LF, HF with LF + HF = x.

    ``laplacian``: LF is a fixed separable 5×5 binomial blur (zero padding; the split stays
    exact, LF + HF = x, at the borders too). ``fft``: LF keeps the spectrum under a
    Gaussian low-pass with a learned per-channel cut-off (FFT in float32 under autocast).
    """

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "fft":
            # σ in cycles/pixel; 0.1 ≈ a spatial Gaussian blur of std 1.6 px
            self.log_sigma = nn.Parameter(torch.full((channels,), math.log(0.1)))
        else:
            taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
            self.register_buffer("taps_h", taps.view(1, 1, 1, 5).repeat(channels, 1, 1, 1), False)
            self.register_buffer("taps_v", taps.view(1, 1, 5, 1).repeat(channels, 1, 1, 1), False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "laplacian":
            c = x.shape[1]
            lf = F.conv2d(x, _cast(self.taps_h, x.dtype), padding=(0, 2), groups=c)
            lf = F.conv2d(lf, _cast(self.taps_v, x.dtype), padding=(2, 0), groups=c)
            return lf, x - lf
        h, w = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = _f32(x)
            matmul = _export_mode()
            re, im = rfft2_real(xf, matmul)
            fy = _fftfreq(h, x.device)
            fx = _dft_mats(w, re.shape[-1], x.device)[2].view(-1)  # (Wf,) cycles/pixel
            f2 = fy.square().view(-1, 1) + fx.square().view(1, -1)  # (H, Wf)
            sigma = _f32(self.log_sigma).exp().view(1, -1, 1, 1)
            mask = torch.exp(-f2.view(1, 1, h, -1) / (2 * sigma.square()))
            lf = _cast(irfft2_real(re * mask, im * mask, (h, w), matmul), x.dtype)
        return lf, x - lf


def _fftfreq(n: int, device: torch.device) -> Tensor:
    """|frequency| in cycles/pixel of the ``n`` FFT bins, as ``torch.fft.fftfreq`` (traceable)."""
    k = torch.arange(n, device=device, dtype=torch.float32)
    nt = k.amax(0, keepdim=True) + 1.0
    return torch.where(k * 2 < nt, k, nt - k) / nt


# ---------------------------------------------------------------------------------------------
# Convolutional blocks
# ---------------------------------------------------------------------------------------------


class GatedConvBlock(nn.Module):
    """NAF-style conv-gated block (no global pooling): (N,C,H,W) -> same.

    ``x += β·P2(SG(DW(P1 n(x))))`` then ``x += γ·P4(SG(P3 n(x)))`` with SimpleGate SG(a,b) = a·b
    and ``n`` an RMS norm (``gate_norm``). The gate multiplies two linear maps of its input, so
    without the norm a block squares the amplitude of what it is given: one-pixel patterns
    (checkerboards, dithering) grow to 1e12 over a few blocks and overflow fp16.
    """

    def __init__(self, channels: int, gate_norm: bool) -> None:
        super().__init__()
        hidden = channels * 2
        self.norm1: nn.Module = RMSNorm2d(channels) if gate_norm else nn.Identity()
        self.pw1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.pw2 = nn.Conv2d(hidden // 2, channels, 1, bias=False)
        self.ls1 = LayerScale(channels, 0.1)
        self.norm2: nn.Module = RMSNorm2d(channels) if gate_norm else nn.Identity()
        self.pw3 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.pw4 = nn.Conv2d(hidden // 2, channels, 1, bias=False)
        self.ls2 = LayerScale(channels, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.dw(self.pw1(self.norm1(x))).chunk(2, dim=1)
        x = self.ls1(x, self.pw2(a * b))
        a, b = self.pw3(self.norm2(x)).chunk(2, dim=1)
        return self.ls2(x, self.pw4(a * b))


class RepConvBlock(nn.Module):
    """Re-parameterizable dense 3×3 conv + SiLU (RepVGG-style): (N,C,H,W) -> same.

    Trains as 3×3 + 1×1 + identity branches; deploys as one 3×3 convolution with bias and one
    activation: two kernels, tensor-core friendly, as fast per layer as a plain conv stack.
    """

    def __init__(self, channels: int, deploy: bool) -> None:
        super().__init__()
        self.conv = RepConv(channels, channels, 3, bias=True, deploy=deploy)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.conv(x))


class RepConvResBlock(nn.Module):
    """Residual re-param block ``x + SiLU(3×3(x))``: (N,C,H,W) -> same.

    The convolution trains as 3×3 + 1×1 branches (no identity branch: the skip is outside the
    activation), both initialized small and without bias, so a deep stack starts near the
    identity. Deploys as one 3×3 convolution, one activation and one add.
    """

    def __init__(self, channels: int, deploy: bool) -> None:
        super().__init__()
        self.branch = RepConv(
            channels,
            channels,
            3,
            bias=True,
            identity=False,
            init_std=RES_INIT_STD,
            deploy=deploy,
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + F.silu(self.branch(x))


class PartialLargeKernel(nn.Module):
    """Re-parameterizable large-kernel conv on the first ``c_lk`` channels, identity on the
    rest: (N,C,H,W) -> (N,C,H,W)."""

    def __init__(self, channels: int, kernel_size: int, ratio: float, deploy: bool) -> None:
        super().__init__()
        self.c_lk = max(1, round(channels * ratio))
        self.conv = RepConv(self.c_lk, self.c_lk, kernel_size, deploy=deploy)

    def forward(self, x: Tensor) -> Tensor:
        if self.c_lk == x.shape[1]:
            return self.conv(x)
        a, b = x.split([self.c_lk, x.shape[1] - self.c_lk], dim=1)
        return torch.cat([self.conv(a), b], dim=1)


class HFBlock(nn.Module):
    """High-frequency block (conv only): re-param 3×3 → partial large kernel → gated 1×1 mix.
    (N,C,H,W) -> (N,C,H,W). ``gate_norm``: as in :class:`GatedConvBlock`."""

    def __init__(self, channels: int, kernel_size: int, deploy: bool, gate_norm: bool) -> None:
        super().__init__()
        self.local = RepConv(channels, channels, 3, deploy=deploy)
        self.plk = PartialLargeKernel(channels, kernel_size, 0.25, deploy)
        self.norm: nn.Module = RMSNorm2d(channels) if gate_norm else nn.Identity()
        self.mix = nn.Conv2d(channels, channels * 2, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.ls = LayerScale(channels, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.plk(self.local(x)))
        g, v = self.mix(y).chunk(2, dim=1)
        return self.ls(x, self.proj(F.gelu(g) * v))


class CrossFrequencyFusion(nn.Module):
    """Gated exchange between the paths: ``LF' = LF + σ(a)·b``, ``HF' = HF + σ(c)·d`` with
    ``[a, b, c, d] = W·[LF; HF]``. Two (N,C,H,W) tensors in, two out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * 4, 1)
        nn.init.trunc_normal_(self.conv.weight, std=0.02)
        nn.init.zeros_(self.conv.bias)

    def forward(self, lf: Tensor, hf: Tensor) -> tuple[Tensor, Tensor]:
        a, b, c, d = self.conv(torch.cat([lf, hf], dim=1)).chunk(4, dim=1)
        if _onnx_export():  # addcmul exports with mixed types; same math
            return lf + torch.sigmoid(a) * b, hf + torch.sigmoid(c) * d
        return torch.addcmul(lf, torch.sigmoid(a), b), torch.addcmul(hf, torch.sigmoid(c), d)


# ---------------------------------------------------------------------------------------------
# Attention and long-range mixers
# ---------------------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Multi-head self-attention in non-overlapping ``w×w`` windows: (N,C,H,W) -> same.

    Uses ``F.scaled_dot_product_attention``. Any H, W: the q/k/v maps are replicate-padded to a
    window multiple; a shifted block offsets the window grid by ``w/2`` through asymmetric
    padding (no roll, so nothing wraps around the image). Position information comes from the
    convolutions around it (the dense FFN's depthwise 3×3; the MoE FFN has none, so a
    bottleneck block takes it from the convolutions before it).
    """

    def __init__(self, channels: int, window: int, shift: bool) -> None:
        super().__init__()
        self.heads = _heads_for(channels)
        self.window = window
        self.shift = window // 2 if shift else 0
        self.scale = (channels // self.heads) ** -0.5
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        ws, s = self.window, self.shift
        qkv = self.qkv(x)
        ph, pw = (-(h + s)) % ws, (-(w + s)) % ws
        if s or ph or pw or _onnx_export():
            qkv = F.pad(qkv, (s, pw, s, ph), mode="replicate")
        hp, wp = qkv.shape[-2:]
        nh, nw = hp // ws, wp // ws
        d = c // self.heads
        t = qkv.reshape(n, 3, self.heads, d, nh, ws, nw, ws)
        t = t.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, n * nh * nw, self.heads, ws * ws, d)
        q, k, v = t.unbind(0)
        if _onnx_export():  # plain ops: the exporter's SDPA adds Cast nodes
            o = torch.softmax((q * self.scale) @ k.transpose(-1, -2), dim=-1) @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        o = o.reshape(n, nh, nw, self.heads, ws, ws, d).permute(0, 3, 6, 1, 4, 2, 5)
        o = o.reshape(n, c, hp, wp)
        if s or ph or pw or _onnx_export():
            o = o[:, :, s : s + h, s : s + w]
        return self.proj(o)


class DepthwiseMixer(nn.Module):
    """Attention-free token mixer (ablation ``use_attn=False``): depthwise 7×7 + 1×1.
    (N,C,H,W) -> (N,C,H,W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, 1, 3, groups=channels, bias=False)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class FourierMixer(nn.Module):
    """Global mixing in the Fourier domain (float32): (N,C,H,W) -> (N,C,H,W).

    ``rfft2`` → 1×1 conv over [Re; Im] → GELU → 1×1 conv → ``irfft2``. O(HW log HW).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels * 2, channels * 2, 1)
        self.fc2 = nn.Conv2d(channels * 2, channels * 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        c = x.shape[1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            matmul = _export_mode()
            re, im = rfft2_real(_f32(x), matmul)
            z = torch.cat([re, im], dim=1)
            z = F.conv2d(z, _f32(self.fc1.weight), _f32(self.fc1.bias))  # type: ignore[union-attr]
            z = F.conv2d(F.gelu(z), _f32(self.fc2.weight), _f32(self.fc2.bias))  # type: ignore[union-attr]
            y = irfft2_real(z[:, :c], z[:, c:], (h, w), matmul)
        return _cast(y, x.dtype)


def _segsum(la: Tensor) -> Tensor:
    """Segment sums of log-decays: (..., T) -> (..., T, T) with ``[i, j] = Σ_{j<k<=i} la_k``
    for ``j <= i`` and ``-inf`` above the diagonal (so ``exp`` gives a causal decay matrix).

    Each entry is a masked cumulative sum of its own terms (no difference of two large prefix
    sums), which keeps long sequences accurate in float32.
    """
    t = la.shape[-1]
    idx = torch.arange(t, device=la.device)
    strictly_below = idx.view(-1, 1) > idx.view(1, -1)  # [i, j]: i > j
    rows = la.unsqueeze(-1).expand(*la.shape, t)  # [i, j] = la_i
    seg = torch.cumsum(rows.masked_fill(~strictly_below, 0.0), dim=-2)
    return seg.masked_fill(idx.view(-1, 1) < idx.view(1, -1), float("-inf"))


def _states_entering(states: Tensor, chunk_la: Tensor, block: int) -> Tensor:
    """The state entering each chunk: ``Σ_{j<i} exp(Σ_{j<k<i} L_k) states_j`` for chunk ``i``,
    ``L_k`` the total log-decay of chunk ``k`` (the recurrence ``h_i = exp(L_i)·h_{i-1} +
    states_i``, shifted by one chunk).

    Two levels, so memory stays linear in the chunk count: a causal decay matrix within
    blocks of ``block`` chunks, and one over the blocks for the state entering each block
    ((chunks / block)² entries). Shapes: states (B,nc,H,P,S), chunk_la (B,H,nc) -> (B,nc,H,P,S).
    """
    bsz, nc, heads, p, s = states.shape
    pad = (-nc) % block
    nb = (nc + pad) // block
    st = F.pad(states, (0, 0, 0, 0, 0, 0, 0, pad)).reshape(bsz, nb, block, heads, p, s)
    lb = F.pad(chunk_la, (0, pad)).reshape(bsz, heads, nb, block)  # padding: no decay, no input
    # within each block: h at chunk r from the chunks q <= r of the same block
    local = torch.einsum("bhmrq,bmqhps->bmrhps", torch.exp(_segsum(lb)), st)
    cum = torch.cumsum(lb, dim=-1)  # (B,H,nb,K)
    # the state entering block m: a causal decay matrix over [zero state, block 0, ..., nb-1]
    block_la = F.pad(cum[..., -1], (1, 0))  # (B,H,nb+1)
    start = F.pad(local[:, :, -1], (0, 0, 0, 0, 0, 0, 1, 0))  # (B,nb+1,H,P,S)
    enter = torch.einsum("bhij,bjhps->bihps", torch.exp(_segsum(block_la)), start)[:, :nb]
    h = local + torch.einsum("bhmr,bmhps->bmrhps", torch.exp(cum), enter)
    h = h.reshape(bsz, nb * block, heads, p, s)[:, :nc]
    return F.pad(h, (0, 0, 0, 0, 0, 0, 1, 0))[:, :nc]  # entering chunk i: h after chunk i-1


def ssd_scan(  # noqa: PLR0917 (the scan's operands)
    x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int = 64, block: int = 64
) -> Tensor:
    """Selective state-space scan with a scalar decay per head (Mamba-2 "SSD"), chunked.

    Computes, for every sequence and head, ``h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t ⊗ b_t`` and
    ``y_t = h_t · c_t``: masked matmuls within chunks of ``chunk`` tokens, and the states
    passed between chunks by :func:`_states_entering` (blocks of ``block`` chunks). No Python
    loop and no size-dependent branch, so traced graphs (ONNX, torch.compile) keep dynamic
    lengths. The largest intermediates hold L·chunk entries per head (linear in L); the
    decay matrix over blocks adds (L / (chunk·block))², which passes L·chunk only beyond
    L ≈ chunk³·block² (10⁹ tokens at the defaults).

    Shapes: x (B,L,H,P), dt (B,L,H) (positive), a (H,) (negative), b and c (B,L,S).
    Returns y (B,L,H,P). All float32.
    """
    bsz, length, heads, p = x.shape
    n_state = b.shape[-1]
    pad = (-length) % chunk
    x = F.pad(x, (0, 0, 0, 0, 0, pad))
    dt = F.pad(dt, (0, 0, 0, pad))
    b = F.pad(b, (0, 0, 0, pad))
    c = F.pad(c, (0, 0, 0, pad))
    nc = x.shape[1] // chunk
    xs = (x * dt.unsqueeze(-1)).reshape(bsz, nc, chunk, heads, p)
    la = (dt * a).reshape(bsz, nc, chunk, heads).permute(0, 3, 1, 2)  # (B,H,nc,T) log-decay
    bs = b.reshape(bsz, nc, chunk, n_state)
    cs = c.reshape(bsz, nc, chunk, n_state)
    cum = torch.cumsum(la, dim=-1)  # (B,H,nc,T)
    # 1) within each chunk: y_t = Σ_{s<=t} (c_t·b_s) exp(Σ_{s<k<=t} la_k) x_s
    decay = torch.exp(_segsum(la))  # (B,H,nc,T,T) [t, s]
    scores = torch.einsum("bnts,bnus->bntu", cs, bs)  # (B,nc,T,T)
    y = torch.einsum("bntu,bhntu,bnuhp->bnthp", scores, decay, xs)
    # 2) state at the end of each chunk: Σ_s exp(Σ_{s<k<=T} la_k) b_s ⊗ x_s
    tail = torch.exp(cum[..., -1:] - cum)  # (B,H,nc,T)
    states = torch.einsum("bnts,bhnt,bnthp->bnhps", bs, tail, xs)  # (B,nc,H,P,S)
    # 3) the state entering each chunk
    prev = _states_entering(states, cum[..., -1], block)  # (B,nc,H,P,S)
    # 4) contribution of the carried state: exp(cum_t) c_t · prev
    y = y + torch.einsum("bnts,bnhps,bhnt->bnthp", cs, prev, torch.exp(cum))
    return y.reshape(bsz, nc * chunk, heads, p)[:, :length]


_MAMBA_SCAN: Callable[..., Tensor] | bool | None = False  # False: not probed yet


def _mamba_kernel() -> Callable[..., Tensor] | None:
    """mamba-ssm's fused chunked scan, if the optional package is importable."""
    global _MAMBA_SCAN  # noqa: PLW0603
    if _MAMBA_SCAN is False:
        try:
            from mamba_ssm.ops.triton.ssd_combined import (  # type: ignore[import-not-found]
                mamba_chunk_scan_combined,
            )

            _MAMBA_SCAN = mamba_chunk_scan_combined
        except Exception:
            _MAMBA_SCAN = None
    return _MAMBA_SCAN  # type: ignore[return-value]


class SelectiveScan2D(nn.Module):
    """2-D Mamba-style selective-scan mixer: (N,C,H,W) -> (N,C,H,W).

    in-proj → depthwise 3×3 + SiLU → input-dependent (dt, B, C) → selective scan along the
    raster order in both directions → gate with SiLU(z) → out-proj. The scan uses mamba-ssm's
    kernel when importable on CUDA, else :func:`ssd_scan` (pure PyTorch, same parameters, same
    function). Runs in float32 under autocast; memory linear in HW (see :func:`ssd_scan`).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // SSM_HEAD_DIM)
        self.head_dim = channels // self.heads
        if self.heads * self.head_dim != channels:
            self.heads, self.head_dim = 1, channels
        self.state = state = SSM_STATE
        self.in_proj = nn.Conv2d(channels, channels * 2, 1)
        self.dw = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.x_proj = nn.Conv2d(channels, self.heads + 2 * state, 1)
        dt = torch.exp(torch.empty(self.heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.a_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1.0, 16.0)))
        self.d_skip = nn.Parameter(torch.ones(self.heads))
        self.out_proj = nn.Conv2d(channels, channels, 1)
        self.use_kernel = True  # see HybridMoE.set_ssm_kernel

    def _scan(self, x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        kernel = _mamba_kernel() if (self.use_kernel and x.is_cuda) else None
        if kernel is not None and not _export_mode():
            b, c = b.unsqueeze(2).contiguous(), c.unsqueeze(2).contiguous()
            return kernel(x.contiguous(), dt.contiguous(), a, b, c, chunk_size=64)
        return ssd_scan(x, dt, a, b, c)

    def forward(self, x: Tensor) -> Tensor:
        n, ch, h, w = x.shape
        xs, z = self.in_proj(x).chunk(2, dim=1)
        xs = F.silu(self.dw(xs))
        with torch.autocast(device_type=x.device.type, enabled=False):
            xs = _f32(xs)
            p = F.conv2d(xs, _f32(self.x_proj.weight), _f32(self.x_proj.bias))  # type: ignore[union-attr]
            dt_raw, b, c = p.split([self.heads, self.state, self.state], dim=1)
            length = h * w
            dt = F.softplus(dt_raw + _f32(self.dt_bias).view(1, -1, 1, 1))
            dt = dt.reshape(n, self.heads, length).transpose(1, 2)  # (N,L,H)
            b = b.reshape(n, self.state, length).transpose(1, 2)  # (N,L,S)
            c = c.reshape(n, self.state, length).transpose(1, 2)
            seq = xs.reshape(n, self.heads, self.head_dim, length).permute(0, 3, 1, 2)  # (N,L,H,P)
            a = -torch.exp(_f32(self.a_log))
            fwd = self._scan(seq, dt, a, b, c)
            bwd = self._scan(seq.flip(1), dt.flip(1), a, b.flip(1), c.flip(1)).flip(1)
            y = fwd + bwd + seq * _f32(self.d_skip).view(1, 1, -1, 1)
            y = y.permute(0, 2, 3, 1).reshape(n, ch, h, w)
        y = _cast(y, x.dtype) * F.silu(z)
        return self.out_proj(y)


# ---------------------------------------------------------------------------------------------
# Mixture of experts
# ---------------------------------------------------------------------------------------------


class MoERouting:
    """Routing settings shared by every MoE layer of one network (each is kept in one place):

    ``top_k``: experts per token. ``dispatch``: "sparse" (sorted per-expert dispatch, computes
    only the selected experts), "dense" (every expert on every token, mixed by the sparse gates:
    static shapes, used for ONNX export and torch.compile) or "auto" (dense for small CUDA
    workloads, where one matmul chain per expert costs more than the skipped arithmetic, sparse
    otherwise). All dispatches compute the same function.
    """

    def __init__(self, top_k: int, dispatch: str = "auto") -> None:
        self.top_k = top_k
        self.dispatch = dispatch

    def __repr__(self) -> str:
        return f"MoERouting(top_k={self.top_k}, dispatch={self.dispatch!r})"


ROUTER_TIE_MARGIN = 1e-3
"""Router logits (float32) that differ by less than this per expert index count as tied:
:meth:`MoEFFN.gate` subtracts ``margin · e`` from expert ``e``'s logit before the top-k, so a
token of a flat area picks the same experts alone or in a batch, fused or not."""


class MoEFFN(nn.Module):
    """Token-wise top-k mixture of gated-MLP experts: (N,C,H,W) -> (N,C,H,W).

    Every pixel is a token. A linear router (float32) on the token's local contrast (feature
    minus its 7×7 mean) picks ``top_k`` of ``E`` experts; their outputs are mixed with the
    renormalized router probabilities (:meth:`gate`). Dispatch is vectorized: the token slots
    are sorted by expert, each expert runs one matmul chain on its contiguous slice (a loop
    over experts, never over tokens) and writes its rows back to their slots (a copy, no
    atomic adds); see :class:`MoERouting` for the dense static-shape path used for export,
    compile and small GPU workloads. Deterministic in eval; ``top_k`` may be changed at
    inference through the shared ``routing``. In training forwards with autograd the
    Switch-style balance term ``E · Σ_e f_e P_e`` is published to :data:`MOE_AUX`.
    """

    def __init__(self, channels: int, hidden: int, num_experts: int, routing: MoERouting) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.routing = routing
        self.router = nn.Parameter(torch.randn(num_experts, channels) * 0.02)
        self.w_in = nn.Parameter(torch.randn(num_experts, channels, hidden * 2) * 0.02)
        self.b_in = nn.Parameter(torch.zeros(num_experts, hidden * 2))
        self.w_out = nn.Parameter(torch.randn(num_experts, hidden, channels) * 0.02)
        self.b_out = nn.Parameter(torch.zeros(num_experts, channels))

    @property
    def top_k(self) -> int:
        """Experts per token (from the shared :class:`MoERouting`)."""
        return self.routing.top_k

    @property
    def dispatch(self) -> str:
        """Dispatch mode (from the shared :class:`MoERouting`)."""
        return self.routing.dispatch

    def gate(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router logits (T,E) -> probs (T,E) float32, top-k indices (T,k), gates (T,k) float32.

        The experts are those of the largest logits, where logits within
        :data:`ROUTER_TIE_MARGIN` of each other count as tied and go to the lower expert index
        (a flat area's logits differ by rounding only). The gates are the selected
        probabilities renormalized to sum to one. At top-1 that
        is the constant 1, which would leave the router without a gradient from the task
        loss (only the balance term would train it); there the gate is ``1 + p - sg(p)``:
        the value 1, the router gradient of the Switch Transformer's gate ``p``.
        """
        logits = _f32(logits)
        probs = torch.softmax(logits, dim=-1)
        # selection with a fixed order for (near-)ties: in a flat area every centred logit is
        # 0 up to rounding, which differs with the batch, fuse() and the kernels, so the
        # rounding picked the experts; now ties go to the lower expert index
        order = torch.arange(self.num_experts, device=logits.device, dtype=logits.dtype)
        top_i = (logits - ROUTER_TIE_MARGIN * order).topk(self.top_k, dim=-1).indices
        top_p = probs.gather(-1, top_i)
        if self.top_k == 1:
            gates = top_p - top_p.detach() + 1.0
        else:
            gates = top_p / top_p.sum(dim=-1, keepdim=True)
        return probs, top_i, gates

    def route(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router input (T,C) -> :meth:`gate` of its float32 logits (float32 under autocast
        too, so that AMP and float32 forwards pick the same experts)."""
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return self.gate(F.linear(_f32(feats), _f32(self.router)))

    def route_image(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Route every pixel of (N,C,H,W) on its features minus their 7×7 (replicate-padded)
        neighbourhood mean; token order (n, h, w).

        Without the centering, all tokens of an image share one dominant direction and pick
        the same experts (routing collapse); with it, routing follows local structure
        (edges, texture, flat areas). The router is linear, so the centering is applied to
        the E logit maps rather than the C feature maps (the same function, E/C the work).
        """
        with torch.autocast(device_type=x.device.type, enabled=False):  # float32, as route()
            logits = F.conv2d(_f32(x), _f32(self.router)[:, :, None, None])
            logits = logits - F.avg_pool2d(F.pad(logits, (3, 3, 3, 3), mode="replicate"), 7, 1)
            return self.gate(logits.permute(0, 2, 3, 1).reshape(-1, self.num_experts))

    def _sparse(self, tokens: Tensor, top_i: Tensor, gates: Tensor) -> Tensor:
        dt, k = tokens.dtype, self.top_k
        w_in, b_in = _cast(self.w_in, dt), _cast(self.b_in, dt)
        w_out, b_out = _cast(self.w_out, dt), _cast(self.b_out, dt)
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)  # token slots grouped by expert
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = tokens.index_select(0, order // k)
        slots = torch.empty_like(xs)  # expert outputs in (token, k) slot order
        start = 0
        for e, cnt in enumerate(counts):
            if cnt:
                end = start + cnt
                g, v = torch.addmm(b_in[e], xs[start:end], w_in[e]).chunk(2, -1)
                y = torch.addmm(b_out[e], F.gelu(g) * v, w_out[e])
                slots.index_copy_(0, order[start:end], _cast(y, slots.dtype))
                start = end
        if k == 1 and not gates.requires_grad:  # the top-1 gate's value is 1: nothing to mix
            return slots
        mixed = slots.view(-1, k, tokens.shape[1]) * _cast(gates, dt).unsqueeze(-1)
        return mixed.sum(1) if k > 1 else mixed.view_as(tokens)

    def _dense(self, tokens: Tensor, top_i: Tensor, gates: Tensor) -> Tensor:
        dt = tokens.dtype
        h = (
            torch.einsum("tc,ecd->etd", tokens, _cast(self.w_in, dt))
            + _cast(self.b_in, dt)[:, None]
        )
        g, v = h.chunk(2, dim=-1)
        y = torch.bmm(F.gelu(g) * v, _cast(self.w_out, dt)) + _cast(self.b_out, dt)[:, None]
        comb = torch.zeros(tokens.shape[0], self.num_experts, device=tokens.device)
        comb = _cast(comb.scatter(1, top_i, gates), dt)
        return torch.einsum("etc,te->tc", y, comb)

    def _use_dense(self, tokens: Tensor) -> bool:
        if self.dispatch == "dense" or _export_mode():
            return True
        if self.dispatch == "sparse":
            return False
        return tokens.is_cuda and tokens.shape[0] * self.num_experts < DENSE_MOE_MAX_SLOTS

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(-1, c)
        probs, top_i, gates = self.route_image(x)
        if self.training and torch.is_grad_enabled():
            flat = top_i.reshape(-1)  # counted by a scatter, not bincount: a static shape
            ones = probs.new_ones(flat.shape)  # for torch.compile
            counts = probs.new_zeros(self.num_experts).index_add_(0, flat, ones)
            frac = counts / counts.sum()
            MOE_AUX.record(self.num_experts * (frac * probs.mean(0)).sum(), frac)
        if self._use_dense(tokens):
            y = self._dense(tokens, top_i, gates)
        else:
            y = self._sparse(tokens, top_i, gates)
        return y.reshape(n, h, w, c).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Transformer-style blocks
# ---------------------------------------------------------------------------------------------


class AttnBlock(nn.Module):
    """Pre-norm window attention (or depthwise mixer) + gated FFN or MoE FFN.
    (N,C,H,W) -> (N,C,H,W).

    ``hidden`` is the FFN width, per expert with ``moe = (experts, routing)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        window: int,
        shift: bool,
        hidden: int,
        use_attn: bool,
        moe: tuple[int, MoERouting] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm2d(channels)
        self.attn: nn.Module = (
            WindowAttention(channels, window, shift) if use_attn else DepthwiseMixer(channels)
        )
        self.ls1 = LayerScale(channels, 0.1)
        self.norm2 = RMSNorm2d(channels)
        self.ffn: nn.Module = (
            MoEFFN(channels, hidden, moe[0], moe[1]) if moe else GatedFFN(channels, hidden)
        )
        self.ls2 = LayerScale(channels, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.ls1(x, self.attn(self.norm1(x)))
        return self.ls2(x, self.ffn(self.norm2(x)))


class GlobalBlock(nn.Module):
    """Pre-norm residual long-range mixer (Fourier or selective scan): (N,C,H,W) -> same."""

    def __init__(self, channels: int, mixer: str) -> None:
        super().__init__()
        self.norm = RMSNorm2d(channels)
        self.mixer = FourierMixer(channels) if mixer == "fourier" else SelectiveScan2D(channels)
        self.ls = LayerScale(channels, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.ls(x, self.mixer(self.norm(x)))


class RefineBlock(nn.Module):
    """Full-resolution detail refinement, pre-norm residual FFN: (N,C,H,W) -> same.

    A token-wise MoE (``moe = (experts, routing)``, ``hidden`` per expert) or, without ``moe``,
    a dense gated FFN of width ``hidden``.
    """

    def __init__(self, channels: int, hidden: int, moe: tuple[int, MoERouting] | None) -> None:
        super().__init__()
        self.norm = RMSNorm2d(channels)
        self.ffn: nn.Module = (
            MoEFFN(channels, hidden, moe[0], moe[1]) if moe else GatedFFN(channels, hidden)
        )
        self.ls = LayerScale(channels, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.ls(x, self.ffn(self.norm(x)))


# ---------------------------------------------------------------------------------------------
# Head and upsamplers
# ---------------------------------------------------------------------------------------------


class TextureHead(_ChannelParamModule):
    """Re-param depthwise ``k×k`` conv (``HEAD_KERNEL``) + pointwise refinement, with optional noise
    injection (StyleGAN2-style, learned per-channel strength). (N,C,H,W) -> same.

    Noise is added in training; in eval only after ``HybridMoE.set_noise_in_eval(True)``.
    """

    channel_params = ("noise_strength",)

    def __init__(self, channels: int, kernel_size: int, noise: bool, deploy: bool) -> None:
        super().__init__()
        self.lk = RepConv(channels, channels, kernel_size, groups=channels, deploy=deploy)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.ls = LayerScale(channels, 0.1)
        self.noise_strength = _channel_param(channels, 0.0) if noise else None
        self.inject_noise_in_eval = False  # see HybridMoE.set_noise_in_eval

    def forward(self, x: Tensor) -> Tensor:
        y = self.ls(x, self.pw(F.gelu(self.lk(x))))
        if self.noise_strength is not None and (self.training or self.inject_noise_in_eval):
            n, _, h, w = y.shape
            noise = torch.randn(n, 1, h, w, device=y.device, dtype=y.dtype)
            y = y + _cast(self.noise_strength, y.dtype) * noise
        return y


def _init_detail_output(conv: nn.Conv2d) -> None:
    """Near-zero init of the image-producing conv: training starts from the base upsampler's
    output (the detail path learns the residual) while gradients still reach every layer."""
    nn.init.trunc_normal_(conv.weight, std=1e-3)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]


class PixelShuffleUpsampler(nn.Module):
    """3×3 conv to ``out·s²`` channels + PixelShuffle: (N,C,H,W) -> (N,out,sH,sW)."""

    def __init__(self, channels: int, out_ch: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_ch * scale * scale, 3, 1, 1)
        _init_detail_output(self.conv)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return F.pixel_shuffle(y, self.scale) if self.scale > 1 else y


class DySampleUpsampler(nn.Module):
    """Dynamic point-sampling upsampler: (N,C,H,W) -> (N,out,sH,sW).

    A 3×3 conv predicts the image at low resolution; content-dependent sub-pixel offsets
    (bounded by a learned dynamic scope) move each output pixel's sampling
    point, and the prediction is sampled bilinearly there. With zero offsets this is bilinear
    upsampling (the offsets start near zero).
    """

    def __init__(self, channels: int, out_ch: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, out_ch, 3, 1, 1)
        _init_detail_output(self.conv)
        self.offset = nn.Conv2d(channels, 2 * scale * scale, 1)
        self.scope = nn.Conv2d(channels, 2 * scale * scale, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)  # near-zero offsets at init
        nn.init.zeros_(self.offset.bias)
        nn.init.zeros_(self.scope.weight)
        nn.init.zeros_(self.scope.bias)

    def forward(self, x: Tensor) -> Tensor:
        s = self.scale
        h, w = x.shape[-2:]
        img = self.conv(x)
        off = self.offset(x) * torch.sigmoid(self.scope(x)) * 0.5
        off = _f32(F.pixel_shuffle(off, s))  # (N,2,sH,sW) in low-res pixel units
        ys = (torch.arange(h * s, device=x.device, dtype=torch.float32) + 0.5) / s
        xs = (torch.arange(w * s, device=x.device, dtype=torch.float32) + 0.5) / s
        gx = (xs.view(1, 1, -1) + off[:, 0]) * (2.0 / w) - 1.0
        gy = (ys.view(1, -1, 1) + off[:, 1]) * (2.0 / h) - 1.0
        grid = torch.stack([gx, gy], dim=-1)  # float32: fp16 / bf16 move a 1920-px grid by ~0.2 px
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.grid_sample(
                _f32(img), grid, mode="bilinear", padding_mode="border", align_corners=False
            )
        return _cast(out, img.dtype)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def current_key(key: str) -> str:
    """``key`` with a module path of an earlier checkpoint (:data:`RENAMED_PREFIXES`) mapped."""
    for old, new in RENAMED_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


@store_hyperparameters
class HybridMoE(nn.Module):
    """HybridMoE-FreqNet super-resolution / restoration network.

    Input (N, in_ch, H, W) in [0, 1] (any N ≥ 0, H, W ≥ 1); output (N, in_ch, H·scale, W·scale).
    The defaults are the full three-level design at dim 32 (the ``hybridmoe`` arch name);
    :data:`VARIANTS` holds the named sizes.

    Args (keyword only):
        scale: integer upscaling factor (1 = restoration).
        in_ch: image channels (1 or 3 typically); the output has the same channels.
        dim: width of level 1; levels 2 and 3 use 2·dim and 4·dim.
        levels: encoder/decoder levels (1: ×1 only; 2: ×1, ×½; 3: ×1, ×½, ×¼). The deepest level
            ends with the long-range mixer and holds the bottleneck.
        enc_blocks: LF-path blocks per level (``conv_block`` at ×1, attention below).
        hf_blocks: HF-path blocks per level (``hf_block``).
        mid_blocks: bottleneck attention + MoE blocks (at the deepest level).
        dec_blocks: decoder blocks at ×1 (``conv_block``) and ×½ (attention; with levels=3
            only: at levels=2 the ×½ level is the deepest and holds the bottleneck).
            Block counts of levels the network does not build (``levels`` < 3) are not used
            (they keep the defaults' entries valid for every ``levels``) and are recorded as 0.
        window_size: attention window (tokens per side).
        mlp_ratio: FFN hidden width / channels (per MoE expert).
        kernel_size: large-kernel size of the ``plk`` HF blocks and the optional stem block.
        use_moe: MoE FFNs (False: dense gated FFNs of the same *active* width, top_k experts).
        num_experts, top_k: MoE size and routing (top_k may be changed later with set_top_k).
            Without MoE (use_moe=False) a dense FFN is top_k experts wide.
        refine_moe: add a full-resolution refinement FFN (MoE or dense, see use_moe) before
            the head.
        use_hf: keep the high-frequency path (False: single LF stream, no split).
        use_attn: window attention (False: depthwise-conv token mixer).
        conv_block: ×1 blocks of the LF path and decoder: "gated" (NAF-style), "rep3"
            (re-param dense 3×3 + SiLU, fastest per FLOP) or "rep3res" (the same with a residual
            skip around each block: one add more per block, for deep trunks).
        hf_block: HF-path blocks: "plk" (re-param partial large kernel + gated mix) or "rep3".
        gate_norm: RMS-normalize the input of multiplicative gates (keeps one-pixel patterns
            bounded; False only for checkpoints made before it existed).
        shift: shifted attention windows: "stage" (odd blocks of each stage; none where a
            stage has one attention block, as in the defaults), "alternate" (every other
            attention block of the whole network) or "none".
        freq_split: "laplacian" or "fft".
        global_mixer: "fourier", "ssm" or "none" (long-range branch of the deepest level).
        stem_lk: add a re-param large-kernel conv to the stem.
        texture_head: the re-param depthwise texture head before the upsampler (False:
            the features go to the upsampler directly; no noise injection then).
        noise: learned noise injection in the texture head.
        upsampler: "pixelshuffle" or "dysample" (a plain conv at scale 1).
        base: fixed base upsampler "mks2021", "bicubic" or "none".
        deploy: build the fused (re-parameterized) form, as produced by fuse().
    """

    def __init__(
        self,
        *,
        scale: int = 4,
        in_ch: int = 3,
        dim: int = 32,
        levels: int = 3,
        enc_blocks: Sequence[int] = (2, 1, 1),
        hf_blocks: Sequence[int] = (2, 1, 0),
        mid_blocks: int = 1,
        dec_blocks: Sequence[int] = (1, 1),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        kernel_size: int = 13,
        use_moe: bool = True,
        num_experts: int = 4,
        top_k: int = 2,
        refine_moe: bool = False,
        use_hf: bool = True,
        use_attn: bool = True,
        conv_block: str = "gated",
        hf_block: str = "plk",
        gate_norm: bool = True,
        shift: str = "stage",
        freq_split: str = "laplacian",
        global_mixer: str = "fourier",
        stem_lk: bool = False,
        texture_head: bool = True,
        noise: bool = False,
        upsampler: str = "pixelshuffle",
        base: str = "mks2021",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        scale = _check_int("scale", scale, 1)
        in_ch = _check_int("in_ch", in_ch, 1)
        dim = _check_int("dim", dim, 4)
        levels = _check_int("levels", levels, 1)
        if levels > 3:
            raise ValueError(f"HybridMoE: levels must be 1, 2 or 3, got {levels}")
        # counts of levels the network does not build are recorded as 0, so that the options
        # (and the checkpoint's meta) describe the network that is built
        enc = _built_blocks(_check_blocks("enc_blocks", enc_blocks), levels)
        hfb = _built_blocks(_check_blocks("hf_blocks", hf_blocks), levels)
        dec = _built_blocks(_check_blocks("dec_blocks", dec_blocks, levels=2), levels)
        mid_blocks = _check_int("mid_blocks", mid_blocks, 0)
        window_size = _check_int("window_size", window_size, 1)
        kernel_size = _check_int("kernel_size", kernel_size, 3)
        if kernel_size % 2 == 0:
            raise ValueError(f"HybridMoE: kernel_size must be odd, got {kernel_size}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, numbers.Real) or mlp_ratio <= 0:
            raise ValueError(f"HybridMoE: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if not mlp_ratio <= MLP_RATIO_MAX or abs(mlp_ratio * 1000 - round(mlp_ratio * 1000)) > 1e-6:
            msg = f"a multiple of 0.001 up to {MLP_RATIO_MAX:g} (stored as round(1000·mlp_ratio))"
            raise ValueError(f"HybridMoE: mlp_ratio must be {msg}, got {mlp_ratio!r}")
        freq_split = _check_choice("freq_split", freq_split, SPLIT_CHOICES)
        global_mixer = _check_choice("global_mixer", global_mixer, MIXER_CHOICES)
        upsampler = _check_choice("upsampler", upsampler, UPSAMPLER_CHOICES)
        base = _check_choice("base", base, BASE_CHOICES)
        conv_block = _check_choice("conv_block", conv_block, CONV_BLOCK_CHOICES)
        hf_block = _check_choice("hf_block", hf_block, HF_BLOCK_CHOICES)
        shift = _check_choice("shift", shift, SHIFT_CHOICES)
        num_experts = _check_int("num_experts", num_experts, 1)
        top_k = _check_int("top_k", top_k, 1)
        use_moe, refine_moe = _check_flag("use_moe", use_moe), _check_flag("refine_moe", refine_moe)
        use_hf, use_attn = _check_flag("use_hf", use_hf), _check_flag("use_attn", use_attn)
        gate_norm, stem_lk = _check_flag("gate_norm", gate_norm), _check_flag("stem_lk", stem_lk)
        texture_head, noise = _check_flag("texture_head", texture_head), _check_flag("noise", noise)
        deploy = _check_flag("deploy", deploy)
        if top_k > num_experts:
            raise ValueError(
                f"HybridMoE: top_k={top_k} exceeds num_experts={num_experts}; "
                f"choose 1 <= top_k <= num_experts (with use_moe=False, top_k sets the dense "
                f"FFN's width, top_k experts' worth: raise num_experts with it)"
            )
        if noise and not texture_head:
            raise ValueError(
                "HybridMoE: noise=True needs texture_head=True (the noise is injected there)"
            )
        checked = {
            "scale": scale, "in_ch": in_ch, "dim": dim, "levels": levels, "enc_blocks": enc,
            "hf_blocks": hfb, "mid_blocks": mid_blocks, "dec_blocks": dec,
            "window_size": window_size, "kernel_size": kernel_size, "use_moe": use_moe,
            "num_experts": num_experts, "top_k": top_k, "refine_moe": refine_moe,
            "use_hf": use_hf, "use_attn": use_attn, "conv_block": conv_block,
            "hf_block": hf_block, "gate_norm": gate_norm, "shift": shift,
            "freq_split": freq_split, "global_mixer": global_mixer, "stem_lk": stem_lk,
            "texture_head": texture_head, "noise": noise, "upsampler": upsampler, "base": base,
            "deploy": deploy,
        }  # fmt: skip
        _check_range(checked)

        self.scale, self.in_ch, self.levels = scale, in_ch, levels
        self.deploy = bool(deploy)
        has_moe = use_moe and (mid_blocks > 0 or refine_moe)
        self.num_experts = num_experts if has_moe else 0
        self.routing = MoERouting(top_k)
        # recorded as checked ("BICUBIC" -> "bicubic", lists -> tuples): the meta encodes these
        self.hyperparameters = {**self.hyperparameters, **checked}
        widths = [dim * 2**i for i in range(levels)]
        self.pad_multiple = 2 ** (levels - 1)

        self.base: nn.Module | None
        if base == "mks2021":
            self.base = MagicKernelSharpUpsample(scale)
        elif base == "bicubic":
            self.base = BicubicUpsample(scale)
        else:
            self.base = None

        c1 = widths[0]
        self.stem = nn.Conv2d(in_ch, c1, 3, 1, 1)
        self.stem_lk = RepConv(c1, c1, kernel_size, groups=c1, deploy=deploy) if stem_lk else None
        self.split = FrequencySplit(c1, freq_split) if use_hf else None

        hidden = [max(8, round(c * mlp_ratio)) for c in widths]
        moe_cfg = (num_experts, self.routing) if use_moe else None
        dense_k = 1 if use_moe else top_k  # a dense FFN gets the MoE's active width
        attn_count = 0

        def attn(c: int, i: int, level: int, moe: bool = False) -> nn.Module:
            nonlocal attn_count
            attn_count += 1
            shifted = {"stage": i % 2 == 1, "alternate": attn_count % 2 == 0, "none": False}
            return AttnBlock(
                c,
                window=window_size,
                shift=shifted[shift],
                hidden=hidden[level] * (dense_k if moe else 1),
                use_attn=use_attn,
                moe=moe_cfg if moe else None,
            )

        def conv_blocks(c: int, n: int) -> nn.Sequential:
            if conv_block == "rep3":
                return nn.Sequential(*[RepConvBlock(c, deploy) for _ in range(n)])
            if conv_block == "rep3res":
                return nn.Sequential(*[RepConvResBlock(c, deploy) for _ in range(n)])
            return nn.Sequential(*[GatedConvBlock(c, gate_norm) for _ in range(n)])

        def hf_blocks_(c: int, n: int) -> nn.Sequential:
            if hf_block == "rep3":
                return nn.Sequential(*[RepConvBlock(c, deploy) for _ in range(n)])
            return nn.Sequential(*[HFBlock(c, kernel_size, deploy, gate_norm) for _ in range(n)])

        def lf_blocks(level: int) -> nn.Sequential:
            c = widths[level]
            if level == 0:
                return conv_blocks(c, enc[0])
            return nn.Sequential(*[attn(c, i, level) for i in range(enc[level])])

        def opt(level: int, make: Callable[[], nn.Module]) -> nn.Module | None:
            return make() if level < levels else None

        # encoder (names follow the levels: 1 = ×1, 2 = ×½, 3 = ×¼)
        self.lf1 = lf_blocks(0)
        self.lf_down1 = opt(1, lambda: nn.Conv2d(widths[0], widths[1], 2, 2))
        self.lf2 = opt(1, lambda: lf_blocks(1))
        self.lf_down2 = opt(2, lambda: nn.Conv2d(widths[1], widths[2], 2, 2))
        self.lf3 = opt(2, lambda: lf_blocks(2))
        deep = widths[-1]
        self.global_block = GlobalBlock(deep, global_mixer) if global_mixer != "none" else None
        if use_hf:
            self.hf1 = hf_blocks_(widths[0], hfb[0])
            self.fuse1 = CrossFrequencyFusion(widths[0])
            self.hf_down1 = opt(1, lambda: nn.Conv2d(widths[0], widths[1], 2, 2))
            self.hf2 = opt(1, lambda: hf_blocks_(widths[1], hfb[1]))
            self.fuse2 = opt(1, lambda: CrossFrequencyFusion(widths[1]))
            self.hf_down2 = opt(2, lambda: nn.Conv2d(widths[1], widths[2], 2, 2))
            self.hf3 = opt(2, lambda: hf_blocks_(widths[2], hfb[2]))
            self.fuse3 = opt(2, lambda: CrossFrequencyFusion(widths[2]))
        paths = 2 if use_hf else 1
        # bottleneck at the deepest level
        self.mid_in = nn.Conv2d(deep * paths, deep, 1)
        self.mid = nn.Sequential(*[attn(deep, i, levels - 1, moe=True) for i in range(mid_blocks)])
        # decoder
        self.up2 = opt(2, lambda: nn.ConvTranspose2d(widths[2], widths[1], 2, 2))
        self.dec2_in = opt(2, lambda: nn.Conv2d(widths[1] * (1 + paths), widths[1], 1))
        self.dec2 = opt(2, lambda: nn.Sequential(*[attn(widths[1], i, 1) for i in range(dec[1])]))
        self.up1 = opt(1, lambda: nn.ConvTranspose2d(widths[1], widths[0], 2, 2))
        self.dec1_in = opt(1, lambda: nn.Conv2d(widths[0] * (1 + paths), widths[0], 1))
        self.dec1 = conv_blocks(widths[0], dec[0])
        # reconstruction
        self.refine_moe = RefineBlock(c1, hidden[0] * dense_k, moe_cfg) if refine_moe else None
        self.head = TextureHead(c1, HEAD_KERNEL, noise, deploy) if texture_head else None
        self.up: nn.Module = (
            DySampleUpsampler(c1, in_ch, scale)
            if upsampler == "dysample" and scale > 1
            else PixelShuffleUpsampler(c1, in_ch, scale)
        )
        if self.deploy and not self._fusable():  # no re-param conv: one form, the unfused one
            self.deploy = False
            self.hyperparameters = {**self.hyperparameters, "deploy": False}

    # -- configuration and runtime controls ----------------------------------------------------

    @property
    def hyperparameters(self) -> dict[str, Any]:  # type: ignore[override]
        """Every constructor option (traiNNer-redux writes this dict into checkpoint metadata);
        ``top_k`` is the current one (:meth:`set_top_k`)."""
        return {**self.__dict__["_options"], "top_k": self.routing.top_k}

    @hyperparameters.setter
    def hyperparameters(self, options: dict[str, Any]) -> None:
        self.__dict__["_options"] = dict(options)

    @property
    def top_k(self) -> int:
        """Experts per token of the MoE layers (0 without MoE layers)."""
        return self.routing.top_k if self.num_experts else 0

    def moe_layers(self) -> list[MoEFFN]:
        """All MoE layers of the network."""
        return [m for m in self.modules() if isinstance(m, MoEFFN)]

    def set_top_k(self, k: int) -> HybridMoE:
        """Change how many experts each token uses (speed/quality dial); returns self.
        Saved state dicts and :attr:`hyperparameters` record the new value."""
        if not self.num_experts:
            raise ValueError("HybridMoE.set_top_k: this model has no MoE layers")
        k = _check_int("top_k", k, 1)
        if k > self.num_experts:
            raise ValueError(
                f"HybridMoE.set_top_k: top_k={k} exceeds num_experts={self.num_experts}"
            )
        self.routing.top_k = k
        return self

    def set_moe_dispatch(self, mode: str) -> HybridMoE:
        """MoE dispatch of every layer: "sparse", "dense" or "auto" (see :class:`MoERouting`;
        all compute the same function); returns self."""
        self.routing.dispatch = _check_choice("dispatch", mode, DISPATCH_CHOICES)
        return self

    def set_ssm_kernel(self, enabled: bool) -> HybridMoE:
        """Let the ``ssm`` mixer use mamba-ssm's fused kernel on CUDA when it is importable
        (default) or force the pure-PyTorch scan (same weights, same function); returns self."""
        for m in self.modules():
            if isinstance(m, SelectiveScan2D):
                m.use_kernel = bool(enabled)
        return self

    def set_noise_in_eval(self, enabled: bool) -> HybridMoE:
        """Inject the texture head's learned noise in eval forwards too (models built with
        ``noise=True``; training forwards always inject it); returns self."""
        for m in self.modules():
            if isinstance(m, TextureHead):
                m.inject_noise_in_eval = bool(enabled)
        return self

    @torch.no_grad()
    def fuse(self) -> HybridMoE:
        """Re-parameterize every :class:`RepConv` into a single conv (deploy form), in place.

        Outputs are unchanged up to float rounding; the parameter count drops; the fused
        state dict loads into ``HybridMoE(deploy=True, ...)``. A network without re-param
        convolutions has one form only and keeps ``deploy=False`` (a checkpoint tells the
        form by its fused keys). Returns self.
        """
        for m in self.modules():
            if isinstance(m, RepConv):
                m.fuse()
        self.deploy = self._fusable()  # fused RepConvs stay RepConvs (in their deploy form)
        self.hyperparameters = {**self.hyperparameters, "deploy": self.deploy}
        return self

    def _fusable(self) -> bool:
        """Whether the network holds re-param convolutions (a deploy form differs from it)."""
        return any(isinstance(m, RepConv) for m in self.modules())

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        # hmoe_meta: written from the options at save time, so it cannot disagree with them
        super()._save_to_state_dict(destination, prefix, keep_vars)
        meta = encode_meta(self.hyperparameters)
        destination[prefix + "hmoe_meta"] = torch.tensor(meta, dtype=torch.int32)

    def _load_from_state_dict(  # noqa: PLR0917 (signature fixed by nn.Module)
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Module paths of earlier checkpoints: renamed in place, before the submodules (which
        # nn.Module.load_state_dict serves from this same dict afterwards) read their tensors.
        for old in [k for k in state_dict if k.startswith(prefix)]:
            new = prefix + current_key(old[len(prefix) :])
            if new == old:
                continue
            if new in state_dict:  # both spellings: which one holds the weights is unknown
                error_msgs.append(f"the checkpoint holds both {old} and its current name {new}")
                continue
            state_dict[new] = state_dict.pop(old)
        # hmoe_meta describes the configuration of the model that wrote it; this module keeps
        # its own (e.g. a pretrain of another scale loaded with strict_load_g: false).
        incoming = state_dict.pop(prefix + "hmoe_meta", None)
        if incoming is None:
            if strict:
                missing_keys.append(prefix + "hmoe_meta")
        elif incoming.numel() and int(incoming.reshape(-1)[0]) > META_VERSION:
            error_msgs.append(
                f"checkpoint was written by a newer HybridMoE (layout version "
                f"{int(incoming.reshape(-1)[0])} > {META_VERSION}); update hybridmoe_arch.py"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- forward -------------------------------------------------------------------------------

    def _encode_level(
        self, level: int, lf: Tensor, hf: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """One encoder level (1-based): LF blocks (and the long-range mixer at the deepest
        level), HF blocks, then the cross-frequency fusion."""
        lf = getattr(self, f"lf{level}")(lf)
        if level == self.levels and self.global_block is not None:
            lf = self.global_block(lf)
        if hf is None:
            return lf, None
        hf = getattr(self, f"hf{level}")(hf)
        return getattr(self, f"fuse{level}")(lf, hf)

    def forward(self, x: Tensor) -> Tensor:
        expected = f"HybridMoE expects an (N, {self.in_ch}, H, W) image tensor, got shape"
        if x.ndim != 4:
            fix = (
                "add the batch dimension of a single image: x.unsqueeze(0)"
                if x.ndim == 3
                else "pass a batch of images as (N, C, H, W)"
            )
            raise ValueError(f"{expected} {tuple(x.shape)}; {fix}")
        if x.shape[1] != self.in_ch:
            raise ValueError(
                f"{expected} {tuple(x.shape)}; convert the image to {self.in_ch} channel(s) or "
                f"use a model built with in_ch={x.shape[1]}"
            )
        if x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ValueError(
                f"HybridMoE needs an image of at least 1x1 pixels, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"HybridMoE expects a floating-point image in [0, 1], got {x.dtype}; for 8-bit "
                f"pixels use x.float() / 255"
            )
        if self.training and torch.is_grad_enabled() and self.num_experts:
            MOE_AUX.begin_forward()
        h, w = x.shape[-2:]
        if x.shape[0] == 0:  # an empty batch (the FFT and scan kernels refuse one)
            return x.new_zeros(0, self.in_ch, h * self.scale, w * self.scale)
        # a NaN/Inf pixel would spread over the receptive field (the whole image through the
        # global mixers): NaN and -inf become 0, +inf 1
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
        base = self.base(x) if self.base is not None else None

        f = self.stem(_pad_to_multiple(x, self.pad_multiple))
        if self.stem_lk is not None:
            f = self.stem_lk(f)

        # encoder: level 1 at ×1, each further level at half the resolution
        lf, hf = self.split(f) if self.split is not None else (f, None)
        skips: list[tuple[Tensor, ...]] = []
        for level in range(1, self.levels + 1):
            if level > 1:
                lf = getattr(self, f"lf_down{level - 1}")(lf)
                hf = getattr(self, f"hf_down{level - 1}")(hf) if hf is not None else None
            lf, hf = self._encode_level(level, lf, hf)
            skips.append((lf,) if hf is None else (lf, hf))

        # bottleneck, then the decoder back up to ×1, fed by the skips of both paths
        d = self.mid(self.mid_in(torch.cat(skips.pop(), dim=1)))
        for level in range(self.levels - 1, 0, -1):
            d = getattr(self, f"up{level}")(d)
            d = getattr(self, f"dec{level}_in")(torch.cat([d, *skips.pop()], dim=1))
            d = getattr(self, f"dec{level}")(d)
        if self.levels == 1:
            d = self.dec1(d)
        d = d + f
        if self.refine_moe is not None:
            d = self.refine_moe(d)
        if self.head is not None:
            d = self.head(d)
        out = self.up(d)
        out = out[..., : h * self.scale, : w * self.scale]
        if base is not None:
            out = out + base
        return out


# ---------------------------------------------------------------------------------------------
# Variants and factories (traiNNer-redux registers these names)
# ---------------------------------------------------------------------------------------------

# nano and s: all compute in a x1 trunk of re-param 3x3 blocks (fused: plain dense 3x3 convs,
# the most arithmetic per millisecond) over a fixed bicubic base, no texture head (fewest
# kernels); measured ahead of Compact at 0.6-0.7x its latency (nano) and ahead of every
# three-level layout per millisecond (docs/ABLATIONS.md). s and m are wide rather than deep: 12
# blocks of 96 beat 24 blocks of 64 at both scales and run faster (wide layers fill the tensor
# cores better); m's 192 channels train at a lower peak rate (2e-4; at 5e-4 they stall). l: the
# same trunk wider and deeper (16 blocks of 256, peak rate 2e-4): of the ways to spend more than
# m that were measured (this, a x1 large-kernel HF path, the three-level layouts), the one ahead
# of m on every set in every run on the whole photo set. The three-level design with every
# component is the general constructor's default.
_TRUNK: dict[str, Any] = {
    "levels": 1,
    "hf_blocks": (0, 0, 0),
    "mid_blocks": 0,
    "use_hf": False,
    "conv_block": "rep3",
    "global_mixer": "none",
    "texture_head": False,
    "base": "bicubic",
}

VARIANTS: dict[str, dict[str, Any]] = {
    "hybridmoe_nano": {**_TRUNK, "dim": 64, "enc_blocks": (5, 0, 0), "dec_blocks": (5, 0)},
    "hybridmoe_s": {**_TRUNK, "dim": 96, "enc_blocks": (6, 0, 0), "dec_blocks": (6, 0)},
    "hybridmoe_m": {**_TRUNK, "dim": 192, "enc_blocks": (6, 0, 0), "dec_blocks": (6, 0)},
    "hybridmoe_l": {**_TRUNK, "dim": 256, "enc_blocks": (8, 0, 0), "dec_blocks": (8, 0)},
}
"""Named configurations: each factory's defaults (the constructor's defaults are the three-level
design with every component, dim 32)."""


def _factory(name: str, doc: str) -> Callable[..., HybridMoE]:
    """The factory ``name``: ``scale`` (positional or keyword) and every constructor option as a
    keyword with the variant's default, all visible to :func:`inspect.signature`."""
    ctor = inspect.signature(HybridMoE.__init__)
    variant = VARIANTS.get(name, {})
    params = [p.replace(default=variant.get(p.name, p.default)) for p in ctor.parameters.values()]
    scale = params[1].replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([scale, *params[2:]], return_annotation="HybridMoE")

    def factory(*args: Any, **kwargs: Any) -> HybridMoE:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            options = ", ".join(p for p in signature.parameters if p != "scale")
            raise TypeError(f"{name}: {e}; valid options: {options}") from None
        bound.apply_defaults()
        return HybridMoE(**bound.arguments)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.__signature__ = signature  # type: ignore[attr-defined]
    return factory


hybridmoe = _factory(
    "hybridmoe", "General constructor: every option; defaults = the three-level design, dim 32."
)
hybridmoe_nano = _factory(
    "hybridmoe_nano", "Real-time size: a x1 trunk of 10 re-param 3x3 blocks (dim 64), no MoE."
)
hybridmoe_s = _factory(
    "hybridmoe_s", "Small size: a x1 trunk of 12 re-param 3x3 blocks (dim 96), no MoE."
)
hybridmoe_m = _factory(
    "hybridmoe_m", "Medium size: a x1 trunk of 12 re-param 3x3 blocks (dim 192), no MoE."
)
hybridmoe_l = _factory(
    "hybridmoe_l", "Large size: a x1 trunk of 16 re-param 3x3 blocks (dim 256), no MoE."
)

FACTORIES: dict[str, Callable[..., HybridMoE]] = {
    "hybridmoe": hybridmoe,
    "hybridmoe_nano": hybridmoe_nano,
    "hybridmoe_s": hybridmoe_s,
    "hybridmoe_m": hybridmoe_m,
    "hybridmoe_l": hybridmoe_l,
}


# ---------------------------------------------------------------------------------------------
# traiNNer-redux registration (only when imported as traiNNer.archs.hybridmoe_arch)
# ---------------------------------------------------------------------------------------------

if __name__ == "traiNNer.archs.hybridmoe_arch":
    from traiNNer.utils.registry import ARCH_REGISTRY

    for _fn in FACTORIES.values():
        ARCH_REGISTRY.register()(_fn)
