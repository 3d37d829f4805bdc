"""Speed and memory benchmark of the HybridMoE-FreqNet variants beside peer SR networks.

Every selected model is built with random weights for each requested scale and measured in one
run: parameters, FLOPs, inference latency (median and interquartile range over the timed
iterations), peak memory, whether the output contains NaN/Inf, and one training step. Peers are
the spandrel implementations in the configurations the community trains (the traiNNer-redux
presets; listed below). Our networks get two rows: "eager" (as built) and "fused" (after
``model.fuse()``, the deploy form); ``--compile`` adds "compiled" (``torch.compile`` of the
fused model; the compile time is reported separately). The variants have no MoE layers; the
top-k dial of MoE networks is timed by ``scripts/sweep.py bench`` (configurations ``*_k2``,
``*_k4``). GFLOPs are counted at ``--flops-size``² LR (recorded in the config): a network with
a fixed cost per forward (SPAN rebuilds its weights in every eval forward) counts a little more
per megapixel there than on a large frame. Peer SPAN re-parameterizes inside every
eval forward in spandrel, so its parameter count includes its training branches.

Latency: batch 1, eval mode, ``torch.inference_mode()``; the input is the LR frame whose output
is ``--out-size`` (1920x1080 by default, rounded down to a multiple of the scale), so all scales
produce the same image. Precision column: "fp32" (no autocast), "autocast" (fp32 weights, autocast
to the dtype) and, with ``--cast-weights``, "cast" (weights and input in the dtype). GPU time is
measured with CUDA events (cuDNN autotuning on, done during warm-up), CPU time with
``time.perf_counter``. Unless ``--repeat`` is given, each row is timed for about
``--target-time`` seconds (at least 5, at most 200 iterations), so slow models such as HAT-S
stay cheap. The ratio column is latency / latency of the ``--ref`` model at the same scale, dtype
and precision (its fused row if it is one of ours).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, one
multiply-add = 2 FLOPs) plus the FFTs it does not count (:func:`count_flops`: a transform of N
points 5·N·log2 N when complex, half that when one side is real), over one fp32 forward of a
``--flops-size`` square LR input, reported as GFLOPs per megapixel of *output*. Records before
2026-12-05 left the FFTs out (only the ``fourier`` mixer and the ``fft`` split use them). Peak
memory: ``torch.cuda.max_memory_allocated`` over the timed iterations, in MiB (weights, input and
activations; null on CPU). Training step: train mode, unfused, bf16 autocast on CUDA, batch 8 of
64x64 LR patches by default, L1 loss against a random target, AdamW; median ms and peak memory.

Results are printed as tables grouped by scale and dtype and written to ``--json`` with the
environment (versions, device, date, exact command line) and every measured number. Each
inference row names its LR input by ``lr_width`` and ``lr_height``; ``config.out_size`` is
[width, height], as ``--out-size WxH`` is given. Older records give the LR input as
``lr_size`` = [width, height] instead: the reverse of the [height, width] sizes of the
degraded-set manifests, hence the two named fields. A training-step row's ``lr_size`` is the
side of its square LR patch. A model that
cannot be built for a scale is skipped with the reason; a model that fails while running (out of
memory, exception) gets an error entry and the run continues.

Full comparison on a GPU (a few minutes)::

    hybridmoe bench --json benchmark.json

``--compile`` autotunes every fused model for every scale and dtype (minutes each with the
max-autotune modes); give it a few models, e.g.
``--models hybridmoe_s hybridmoe_m --scales 4 --dtypes bf16 --compile --no-train-step``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hybridmoe_arch as arch
from hybridmoe import imageio
from hybridmoe.cliargs import add_device_argument, parse_size, positive_float, positive_int
from hybridmoe.provenance import cpu_name, git_commit, utc_now

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MIN_AUTO_REPEAT = 5
MAX_AUTO_REPEAT = 200
TRAIN_BATCH = 8
TRAIN_LR_SIZE = 64
TRAIN_LR = 1e-4


# ----------------------------------------------------------------------------- model registry


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarkable network: ``build(scale)`` returns it with random weights."""

    name: str
    build: Callable[[int], nn.Module]
    ours: bool
    config: str


def _ours(name: str) -> Callable[[int], nn.Module]:
    """Builder for one of our variants through the ``hybridmoe_arch`` factories."""

    def build(scale: int) -> nn.Module:
        return getattr(arch, name)(scale=scale)

    return build


def _span(scale: int) -> nn.Module:
    from spandrel.architectures.SPAN import SPAN

    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=52, upscale=scale, norm=False)


def _plksr_tiny(scale: int) -> nn.Module:
    from spandrel.architectures.PLKSR import PLKSR

    return PLKSR(
        dim=64,
        n_blocks=12,
        upscaling_factor=scale,
        ccm_type="DCCM",
        kernel_size=13,
        split_ratio=0.25,
        use_ea=False,
    )


def _plksr(scale: int) -> nn.Module:
    from spandrel.architectures.PLKSR import PLKSR

    return PLKSR(
        dim=64,
        n_blocks=28,
        upscaling_factor=scale,
        ccm_type="DCCM",
        kernel_size=17,
        split_ratio=0.25,
        use_ea=True,
    )


def _realplksr(scale: int) -> nn.Module:
    from spandrel.architectures.PLKSR import RealPLKSR

    return RealPLKSR(dim=64, n_blocks=28, upscaling_factor=scale, layer_norm=True)


def _omnisr(scale: int) -> nn.Module:
    from spandrel.architectures.OmniSR import OmniSR

    return OmniSR(num_feat=64, block_num=1, res_num=5, window_size=8, pe=True, up_scale=scale)


def _safmn(scale: int) -> nn.Module:
    from spandrel.architectures.SAFMN import SAFMN

    return SAFMN(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=scale)


def _compact(scale: int) -> nn.Module:
    from spandrel.architectures.Compact import Compact

    return Compact(num_feat=64, num_conv=16, upscale=scale, act_type="prelu")


def _hat_s(scale: int) -> nn.Module:
    from spandrel.architectures.HAT import HAT

    return HAT(
        upscale=scale,
        img_size=64,
        embed_dim=144,
        depths=(6,) * 6,
        num_heads=(6,) * 6,
        window_size=16,
        compress_ratio=24,
        squeeze_factor=24,
        mlp_ratio=2.0,
        upsampler="pixelshuffle",
        resi_connection="1conv",
    )


def _seemore_t(scale: int) -> nn.Module:
    from spandrel.architectures.SeemoRe import SeemoRe

    return SeemoRe(
        scale=scale,
        num_experts=3,
        num_layers=6,
        embedding_dim=36,
        global_kernel_size=11,
        recursive=2,
        lr_space="exp",
        topk=1,
    )


def _esrgan(scale: int) -> nn.Module:
    """RRDBNet; x1/x2 use pixel-unshuffle into the x4 body as the community models do."""
    from spandrel.architectures.ESRGAN import ESRGAN

    if scale in (1, 2):
        factor = 4 // scale
        return ESRGAN(in_nc=3 * factor**2, out_nc=3, scale=4, shuffle_factor=factor)
    return ESRGAN(in_nc=3, out_nc=3, scale=scale, num_filters=64, num_blocks=23)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *(
            ModelSpec(name, _ours(name), True, "hybridmoe_arch factory defaults")
            for name in ("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l")
        ),
        ModelSpec("span", _span, False, "SPAN 52 feats (traiNNer-redux default), no input norm"),
        ModelSpec("plksr_tiny", _plksr_tiny, False, "PLKSR dim 64, 12 blocks, k13, DCCM, no EA"),
        ModelSpec("plksr", _plksr, False, "PLKSR dim 64, 28 blocks, k17, DCCM, EA"),
        ModelSpec("realplksr", _realplksr, False, "RealPLKSR dim 64, 28 blocks, layer norm"),
        ModelSpec("omnisr", _omnisr, False, "OmniSR 64 feats, 5 residual groups"),
        ModelSpec("safmn", _safmn, False, "SAFMN dim 36, 8 blocks"),
        ModelSpec("compact", _compact, False, "SRVGGNetCompact 64 feats, 16 convs"),
        ModelSpec(
            "hat_s",
            _hat_s,
            False,
            "HAT-S embed 144, 6x6 depths/heads, window 16, compress/squeeze 24, mlp 2",
        ),
        ModelSpec("seemore_t", _seemore_t, False, "SeemoRe-T dim 36, 3 experts, top-1"),
        ModelSpec(
            "esrgan", _esrgan, False, "RRDBNet 64 filters, 23 blocks; x1/x2 by pixel-unshuffle"
        ),
    )
}


# ----------------------------------------------------------------------------- results


@dataclass
class Row:
    """One inference measurement (or the error/skip entry that replaces it)."""

    model: str
    scale: int
    variant: str | None = None
    dtype: str | None = None
    precision: str | None = None
    status: str = "ok"
    error: str | None = None
    lr_width: int | None = None
    lr_height: int | None = None
    params: int | None = None
    gflops_per_out_mp: float | None = None
    top_k: int | None = None
    num_experts: int | None = None
    iterations: int | None = None
    latency_median_ms: float | None = None
    latency_q1_ms: float | None = None
    latency_q3_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_min_ms: float | None = None
    peak_mem_mib: float | None = None
    nonfinite: bool | None = None
    compile_s: float | None = None
    ratio_to_ref: float | None = None


@dataclass
class TrainRow:
    """One training-step measurement (unfused model, train mode)."""

    model: str
    scale: int
    status: str = "ok"
    error: str | None = None
    batch: int | None = None
    lr_size: int | None = None
    params: int | None = None
    iterations: int | None = None
    step_median_ms: float | None = None
    step_iqr_ms: float | None = None
    peak_mem_mib: float | None = None
    loss_finite: bool | None = None
    ratio_to_ref: float | None = None


@dataclass
class Timing:
    """Per-iteration times, the memory peak and the output check of one timed loop."""

    times_ms: list[float]
    peak_mem_mib: float | None
    finite: bool

    def quartiles(self) -> tuple[float, float, float]:
        """First quartile, median and third quartile of the times in ms."""
        q1, med, q3 = np.percentile(self.times_ms, [25, 50, 75]).tolist()
        return q1, med, q3

    def fill(self, row: Row) -> None:
        """Write the statistics into an inference row."""
        q1, med, q3 = self.quartiles()
        row.iterations = len(self.times_ms)
        row.latency_median_ms = med
        row.latency_q1_ms = q1
        row.latency_q3_ms = q3
        row.latency_iqr_ms = q3 - q1
        row.latency_min_ms = min(self.times_ms)
        row.peak_mem_mib = self.peak_mem_mib
        row.nonfinite = not self.finite

    def fill_train(self, row: TrainRow) -> None:
        """Write the statistics into a training-step row."""
        q1, med, q3 = self.quartiles()
        row.iterations = len(self.times_ms)
        row.step_median_ms = med
        row.step_iqr_ms = q3 - q1
        row.peak_mem_mib = self.peak_mem_mib
        row.loss_finite = self.finite


# ----------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Collect garbage and return cached GPU blocks so the next model starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    """Reset the GPU memory high-water mark (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """GPU memory high-water mark since :func:`reset_peak` in MiB (None on CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``; a no-op for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def count_params(model: nn.Module) -> int:
    """Number of parameters of the module as it is measured."""
    return sum(p.numel() for p in model.parameters())


def describe_error(exc: BaseException) -> str:
    """Short one-line description of an exception for tables and JSON."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def auto_repeat(estimate_s: float, target_s: float) -> int:
    """Number of timed iterations so that timing lasts about ``target_s`` seconds."""
    if estimate_s <= 0:
        return MAX_AUTO_REPEAT
    return max(MIN_AUTO_REPEAT, min(MAX_AUTO_REPEAT, math.ceil(target_s / estimate_s)))


def time_loop(
    fn: Callable[[], torch.Tensor],
    device: torch.device,
    warmup: int,
    repeat: int | None,
    target_s: float,
) -> Timing:
    """Run ``fn`` ``warmup`` times, then time ``repeat`` (or an automatic number of) calls.

    GPU calls are timed with CUDA events, CPU calls with ``time.perf_counter``. The last warm-up
    output is checked for NaN/Inf (and released) before the timed calls.
    """
    warm_s = []
    finite = True
    for _ in range(warmup):
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        warm_s.append(time.perf_counter() - start)
        finite = bool(torch.isfinite(out).all())
        del out
    n = repeat if repeat is not None else auto_repeat(min(warm_s), target_s)
    reset_peak(device)
    if device.type == "cuda":
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(n)
        ]
        for start_ev, end_ev in events:
            start_ev.record()
            fn()
            end_ev.record()
        synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
    else:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return Timing(times, peak_mib(device), finite)


def to_memory_format(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Return ``t`` in channels_last layout when requested."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Settings:
    """Run-wide measurement settings taken from the command line."""

    device: torch.device
    dtypes: tuple[str, ...]
    out_size: tuple[int, int]
    warmup: int
    repeat: int | None
    target_s: float
    flops_size: int
    cast_weights: bool
    channels_last: bool
    compile_mode: str | None
    train_step: bool
    train_batch: int
    train_size: int

    def lr_size(self, scale: int) -> tuple[int, int]:
        """LR (width, height) whose upscaled output is ``out_size`` (rounded down)."""
        w, h = self.out_size
        return max(1, w // scale), max(1, h // scale)

    def precisions(self, dtype: str) -> list[str]:
        """Precision modes for a dtype: fp32, autocast, and cast weights when requested."""
        if dtype == "fp32":
            return ["fp32"]
        return ["autocast", "cast"] if self.cast_weights else ["autocast"]


def _fft_flops(signal: Sequence[int], dims: Sequence[int], complex_points: float) -> int:
    """FLOPs of FFTs over ``dims`` of a tensor of shape ``signal``: each transform of N points
    costs ``complex_points``·N·log2 N (5 for complex data, 2.5 when one side is real)."""
    n = math.prod(signal[d] for d in dims)
    if n <= 1:
        return 0
    return round(math.prod(signal) / n * complex_points * n * math.log2(n))


def _r2c_flops(x: Sequence[int], dim: Sequence[int], *_: Any, out_shape: Any = None) -> int:
    return _fft_flops(x, dim, 2.5)


def _c2r_flops(x: Sequence[int], dim: Sequence[int], *_: Any, out_shape: Any = None) -> int:
    return _fft_flops(out_shape, dim, 2.5)  # the real signal is the output


def _c2c_flops(x: Sequence[int], dim: Sequence[int], *_: Any, out_shape: Any = None) -> int:
    return _fft_flops(x, dim, 5.0)


def count_flops(model: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """FLOPs of one ``model(x)`` in inference mode (multiply-add = 2; the FFTs counted as
    :func:`_fft_flops` says, FlopCounterMode leaves them out) and the output."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    fft = {
        aten._fft_r2c: _r2c_flops,
        aten._fft_c2r: _c2r_flops,
        aten._fft_c2c: _c2c_flops,
    }
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=fft) as counter:
        out = model(x)
    return float(counter.get_total_flops()), out


def count_gflops(model: nn.Module, settings: Settings) -> float | None:
    """GFLOPs per output megapixel from one fp32 forward at ``flops_size``² LR (None on failure)."""
    size = settings.flops_size
    x = to_memory_format(
        torch.rand(1, 3, size, size, device=settings.device), settings.channels_last
    )
    try:
        flops, out = count_flops(model, x)
        out_mp = out.shape[-2] * out.shape[-1] / 1e6
        return flops / 1e9 / out_mp
    except Exception as exc:
        print(f"    FLOP count failed: {describe_error(exc)}")
        return None
    finally:
        del x
        free_memory(settings.device)


@contextmanager
def cast_copy(model: nn.Module, dtype: torch.dtype, device: torch.device) -> Iterator[nn.Module]:
    """A copy of ``model`` with its weights in ``dtype`` on ``device``.

    The fp32 original waits on the CPU meanwhile, so the peak memory counts the cast copy only.
    """
    model.cpu()
    try:
        yield copy.deepcopy(model).to(device=device, dtype=dtype)
    finally:
        model.to(device)


def run_latency(model: nn.Module, row: Row, settings: Settings, compile_model: bool) -> None:
    """Time ``model`` at ``row``'s scale/dtype/precision and fill ``row``; may raise."""
    device = settings.device
    dtype = DTYPES[row.dtype or "fp32"]
    w, h = settings.lr_size(row.scale)
    cast = row.precision == "cast"
    x = torch.rand(1, 3, h, w, device=device, dtype=dtype if cast else None)
    x = to_memory_format(x, settings.channels_last)
    if compile_model:
        model = torch.compile(model, mode=settings.compile_mode)
    ctx = autocast(device, dtype) if row.precision == "autocast" else nullcontext()
    with torch.inference_mode(), ctx:
        if compile_model:
            start = time.perf_counter()
            model(x)
            synchronize(device)
            row.compile_s = time.perf_counter() - start
        timing = time_loop(
            lambda: model(x), device, settings.warmup, settings.repeat, settings.target_s
        )
    timing.fill(row)


def measure_latency(model: nn.Module, row: Row, settings: Settings, compile_model: bool) -> None:
    """:func:`run_latency` (on a cast copy for cast weights); a failure becomes an error entry."""
    try:
        if row.precision == "cast":
            with cast_copy(model, DTYPES[row.dtype or "fp32"], settings.device) as copied:
                run_latency(copied, row, settings, compile_model)
            del copied
        else:
            run_latency(model, row, settings, compile_model)
    except Exception as exc:
        row.status = "error"
        row.error = describe_error(exc)
    free_memory(settings.device)


def measure_variant(
    model: nn.Module,
    spec: ModelSpec,
    scale: int,
    variant: str,
    settings: Settings,
    *,
    compile_model: bool = False,
) -> list[Row]:
    """All dtype/precision rows of one model variant, with its params and FLOPs."""
    params = count_params(model)
    gflops = count_gflops(model, settings)
    top_k = getattr(model, "top_k", None) if spec.ours else None
    experts = getattr(model, "num_experts", None) if spec.ours else None
    lr_w, lr_h = settings.lr_size(scale)
    rows = []
    for dtype in settings.dtypes:
        for precision in settings.precisions(dtype):
            row = Row(
                model=spec.name,
                scale=scale,
                variant=variant,
                dtype=dtype,
                precision=precision,
                lr_width=lr_w,
                lr_height=lr_h,
                params=params,
                gflops_per_out_mp=gflops,
                top_k=top_k,
                num_experts=experts,
            )
            measure_latency(model, row, settings, compile_model)
            print_row_progress(row)
            rows.append(row)
    return rows


def print_row_progress(row: Row) -> None:
    """One progress line per measured row."""
    label = f"  x{row.scale} {row.model:<15} {row.variant:<18} {row.dtype}/{row.precision:<8}"
    if row.status != "ok":
        print(f"{label} {row.status.upper()}: {row.error}")
    else:
        extra = f" (compile {row.compile_s:.1f} s)" if row.compile_s is not None else ""
        print(f"{label} {row.latency_median_ms:9.3f} ms  n={row.iterations}{extra}")


def benchmark_deploy_forms(
    model: nn.Module, spec: ModelSpec, scale: int, settings: Settings
) -> Iterator[list[Row]]:
    """Rows of our deploy forms: fused, optionally all experts active, optionally compiled.

    Yields one batch of rows per form so the caller keeps what was measured before a failure.
    """
    model.fuse()
    model.eval()
    if settings.channels_last:  # fused weights are new tensors
        model.to(memory_format=torch.channels_last)
    yield measure_variant(model, spec, scale, "fused", settings)
    if settings.compile_mode is not None:
        try:
            yield measure_variant(model, spec, scale, "compiled", settings, compile_model=True)
        finally:
            torch.compiler.reset()


def benchmark_inference(spec: ModelSpec, scale: int, settings: Settings) -> list[Row]:
    """Build one model for one scale and measure every inference variant of it."""
    device = settings.device
    torch.manual_seed(0)
    try:
        model = spec.build(scale)
    except Exception as exc:
        reason = f"cannot build at x{scale}: {describe_error(exc)}"
        print(f"  x{scale} {spec.name:<15} SKIPPED ({reason})")
        return [Row(model=spec.name, scale=scale, status="skipped", error=reason)]
    rows: list[Row] = []
    stage = "eager"
    try:
        model = model.to(device).eval()
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        rows += measure_variant(model, spec, scale, "eager", settings)
        if spec.ours:
            stage = "fused"
            for batch in benchmark_deploy_forms(model, spec, scale, settings):
                rows += batch
    except Exception as exc:
        error = describe_error(exc)
        print(f"  x{scale} {spec.name:<15} {stage}: ERROR {error}")
        rows.append(Row(model=spec.name, scale=scale, variant=stage, status="error", error=error))
    finally:
        del model
        free_memory(device)
    return rows


def time_train_step(model: nn.Module, scale: int, settings: Settings) -> Timing:
    """Time AdamW steps on random data (the finite check is on the loss)."""
    device = settings.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR)
    batch, size = settings.train_batch, settings.train_size
    lq = to_memory_format(torch.rand(batch, 3, size, size, device=device), settings.channels_last)
    gt = torch.rand(batch, 3, size * scale, size * scale, device=device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            loss = F.l1_loss(model(lq).float(), gt)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return time_loop(step, device, settings.warmup, settings.repeat, settings.target_s)


def benchmark_train_step(spec: ModelSpec, scale: int, settings: Settings) -> TrainRow:
    """Measure one training step (bf16 autocast on CUDA, L1 loss) of the unfused model."""
    device = settings.device
    row = TrainRow(
        model=spec.name, scale=scale, batch=settings.train_batch, lr_size=settings.train_size
    )
    torch.manual_seed(0)
    try:
        model = spec.build(scale)
    except Exception as exc:
        row.status, row.error = "skipped", f"cannot build at x{scale}: {describe_error(exc)}"
        return row
    try:
        model = model.to(device).train()
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        row.params = count_params(model)
        time_train_step(model, scale, settings).fill_train(row)
        print(
            f"  x{scale} {spec.name:<15} {'train step':<18} {row.step_median_ms:9.3f} ms  "
            f"n={row.iterations}"
        )
    except Exception as exc:
        row.status, row.error = "error", describe_error(exc)
        print(f"  x{scale} {spec.name:<15} train step ERROR {row.error}")
    finally:
        del model
        free_memory(device)
    return row


# ----------------------------------------------------------------------------- reference ratios


def reference_variant(ref: str) -> str:
    """The reference model's deploy row: fused for our networks, eager for peers."""
    return "fused" if MODELS[ref].ours else "eager"


def add_ratios(rows: Sequence[Row], train_rows: Sequence[TrainRow], ref: str) -> None:
    """Fill ``ratio_to_ref`` = latency / reference latency for the same scale/dtype/precision."""
    ref_variant = reference_variant(ref)
    ref_latency = {
        (r.scale, r.dtype, r.precision): r.latency_median_ms
        for r in rows
        if r.model == ref and r.variant == ref_variant and r.status == "ok"
    }
    for r in rows:
        base = ref_latency.get((r.scale, r.dtype, r.precision))
        if r.status == "ok" and base and r.latency_median_ms is not None:
            r.ratio_to_ref = r.latency_median_ms / base
    ref_train = {
        t.scale: t.step_median_ms for t in train_rows if t.model == ref and t.status == "ok"
    }
    for t in train_rows:
        base = ref_train.get(t.scale)
        if t.status == "ok" and base and t.step_median_ms is not None:
            t.ratio_to_ref = t.step_median_ms / base


# ----------------------------------------------------------------------------- reporting


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    """Format a possibly missing number."""
    return missing if value is None else format(value, spec)


def fmt_params(n: int | None) -> str:
    """Parameter count as ``123.4K`` / ``1.23M``."""
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def variant_label(row: Row) -> str:
    """Variant name for the table."""
    return row.variant or "-"


def format_table(rows: Sequence[Row], train_rows: Sequence[TrainRow], settings: Settings) -> str:
    """Readable tables grouped by scale and dtype, then the training-step table."""
    header = (
        f"{'model':<15} {'variant':<14} {'prec':<8} {'params':>8} {'GFLOP/MP':>9} "
        f"{'median ms':>10} {'IQR ms':>8} {'x ref':>7} {'peak MiB':>9} {'finite':>6}"
    )
    lines: list[str] = []
    scales = sorted({r.scale for r in rows} | {t.scale for t in train_rows})
    for scale in scales:
        w, h = settings.lr_size(scale)
        for dtype in settings.dtypes:
            lines += ["", f"== x{scale}  {dtype}  LR {w}x{h} -> {w * scale}x{h * scale} ==", header]
            for r in rows:
                if r.scale != scale or r.dtype not in (dtype, None):
                    continue
                if r.status != "ok":
                    lines.append(f"{r.model:<15} {variant_label(r):<14} {r.status}: {r.error}")
                    continue
                lines.append(
                    f"{r.model:<15} {variant_label(r):<14} {r.precision:<8} "
                    f"{fmt_params(r.params):>8} {fmt(r.gflops_per_out_mp, '.1f'):>9} "
                    f"{fmt(r.latency_median_ms, '.3f'):>10} {fmt(r.latency_iqr_ms, '.3f'):>8} "
                    f"{fmt(r.ratio_to_ref, '.2f'):>7} {fmt(r.peak_mem_mib, '.0f'):>9} "
                    f"{'NaN!' if r.nonfinite else 'yes':>6}"
                )
                if r.compile_s is not None:
                    lines[-1] += f"  (compile {r.compile_s:.1f} s)"
    if train_rows:
        lines += format_train_table(train_rows, settings)
    return "\n".join(lines)


def format_train_table(train_rows: Sequence[TrainRow], settings: Settings) -> list[str]:
    """Lines of the training-step table."""
    amp = "bf16 autocast" if settings.device.type == "cuda" else "fp32"
    lines = [
        "",
        f"== training step: {amp}, batch {settings.train_batch}, "
        f"LR {settings.train_size}x{settings.train_size}, "
        "L1, AdamW (unfused, train mode) ==",
        f"{'model':<15} {'scale':>5} {'params':>8} {'median ms':>10} {'IQR ms':>8} "
        f"{'x ref':>7} {'peak MiB':>9} {'finite':>6}",
    ]
    for t in train_rows:
        if t.status != "ok":
            lines.append(f"{t.model:<15} {'x' + str(t.scale):>5} {t.status}: {t.error}")
            continue
        lines.append(
            f"{t.model:<15} {'x' + str(t.scale):>5} {fmt_params(t.params):>8} "
            f"{fmt(t.step_median_ms, '.2f'):>10} {fmt(t.step_iqr_ms, '.2f'):>8} "
            f"{fmt(t.ratio_to_ref, '.2f'):>7} {fmt(t.peak_mem_mib, '.0f'):>9} "
            f"{'yes' if t.loss_finite else 'NaN!':>6}"
        )
    return lines


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(device: torch.device, argv: Sequence[str]) -> dict[str, Any]:
    """Versions, device, date and the exact command line of this run."""
    script = Path(__file__).resolve()
    try:
        script_arg = str(script.relative_to(Path.cwd()))
    except ValueError:
        script_arg = str(script)
    on_cuda = device.type == "cuda"
    return {
        "date": utc_now(),
        "command": shlex.join(["python", script_arg, *argv]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if on_cuda else None,
        "device": torch.cuda.get_device_name(device) if on_cuda else cpu_name(),
        "device_type": device.type,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "spandrel": package_version("spandrel"),
        "git_commit": git_commit(),
    }


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    configs = "\n".join(f"  {spec.name:<15} {spec.config}" for spec in MODELS.values())
    parser = argparse.ArgumentParser(
        prog="hybridmoe bench",
        description=__doc__,
        epilog=f"models (random weights):\n{configs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ", ".join(MODELS)
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), metavar="NAME",
        help=f"models to measure (default: all): {names}",
    )  # fmt: skip
    parser.add_argument(
        "--scales", nargs="+", type=positive_int, default=[2, 4], help="scales (default: 2 4)"
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"],
        help="inference dtypes; fp16/bf16 run under autocast, fp32 without (default: fp16 bf16)",
    )  # fmt: skip
    parser.add_argument(
        "--cast-weights", action="store_true",
        help="also time fp16/bf16 with weights and input cast to that dtype (no autocast)",
    )  # fmt: skip
    parser.add_argument(
        "--out-size", type=parse_size, default=(1920, 1080), metavar="WxH",
        help="output size of the timed frame; LR input = out-size / scale (default: 1920x1080)",
    )  # fmt: skip
    add_device_argument(parser, "the models")
    parser.add_argument(
        "--warmup", type=positive_int, default=3, help="untimed iterations per row (default: 3)"
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=None,
        help="timed iterations per row (default: automatic, about --target-time seconds, "
        f"between {MIN_AUTO_REPEAT} and {MAX_AUTO_REPEAT} iterations)",
    )  # fmt: skip
    parser.add_argument(
        "--target-time", type=positive_float, default=1.0, metavar="SECONDS",
        help="timing budget per row when --repeat is not given (default: 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--flops-size", type=positive_int, default=256, metavar="PX",
        help="side of the square LR input used to count FLOPs (default: 256)",
    )  # fmt: skip
    parser.add_argument(
        "--channels-last", action="store_true", help="convert models and inputs to channels_last"
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="also time torch.compile of our fused models (compile time reported separately)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", choices=COMPILE_MODES, default="max-autotune-no-cudagraphs",
        help="torch.compile mode for --compile (default: max-autotune-no-cudagraphs)",
    )  # fmt: skip
    parser.add_argument(
        "--train-step", action=argparse.BooleanOptionalAction, default=True,
        help="time one training step of the unfused model: bf16 autocast (CUDA), "
        "L1 loss, AdamW (default: on)",
    )  # fmt: skip
    parser.add_argument(
        "--train-batch", type=positive_int, default=TRAIN_BATCH,
        help=f"training-step batch size (default: {TRAIN_BATCH})",
    )  # fmt: skip
    parser.add_argument(
        "--train-size", type=positive_int, default=TRAIN_LR_SIZE, metavar="PX",
        help=f"training-step LR patch side (default: {TRAIN_LR_SIZE})",
    )  # fmt: skip
    parser.add_argument(
        "--ref", default="span", metavar="NAME",
        help="reference model for the latency ratio column (default: span)",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, default=Path("benchmark.json"), metavar="PATH",
        help="where to write all results (default: benchmark.json; an existing file is kept "
        "unless --overwrite)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate the command line (unknown model names list the valid ones)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    valid = ", ".join(MODELS)
    unknown = [m for m in [*args.models, args.ref] if m not in MODELS]
    if unknown:
        parser.error(f"unknown model name(s): {', '.join(unknown)}; valid names: {valid}")
    top = max(args.scales)
    if min(args.out_size) < top:
        parser.error(
            f"--out-size {args.out_size[0]}x{args.out_size[1]} is smaller than one LR pixel at "
            f"x{top}; give at least {top}x{top}"
        )
    args.scales = list(dict.fromkeys(args.scales))  # each once (a repeat ran twice)
    args.dtypes = list(dict.fromkeys(args.dtypes))
    if args.device == "cpu" and not any(a.startswith("--out-size") for a in argv):
        print(
            "note: on a CPU, 1920x1080 frames of every model take many minutes; "
            "--out-size 256x256 --dtypes fp32 --models NAME ... is quick"
        )
    try:  # before the run, not after it
        imageio.check_output(args.json, overwrite=args.overwrite, what="JSON report")
    except imageio.OutputError as e:
        parser.error(str(e))
    args.models = list(dict.fromkeys(args.models))
    if args.ref not in args.models:
        print(f"note: adding the reference model {args.ref!r} to the run")
        args.models.append(args.ref)
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    """Measurement settings from parsed arguments."""
    return Settings(
        device=torch.device(args.device),
        dtypes=tuple(args.dtypes),  # each once (parse_args)
        out_size=args.out_size,
        warmup=args.warmup,
        repeat=args.repeat,
        target_s=args.target_time,
        flops_size=args.flops_size,
        cast_weights=args.cast_weights,
        channels_last=args.channels_last,
        compile_mode=args.compile_mode if args.compile else None,
        train_step=args.train_step,
        train_batch=args.train_batch,
        train_size=args.train_size,
    )


@contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """Let cuDNN pick the fastest kernels (autotuned during warm-up) on CUDA."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write the JSON and return its content."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    settings = settings_from(args)
    rows: list[Row] = []
    train_rows: list[TrainRow] = []
    start = time.perf_counter()
    with cudnn_benchmark(settings.device):
        env = environment(settings.device, argv)
        print(f"{env['device']} | torch {env['torch']} | CUDA {env['cuda']}")
        for scale in args.scales:
            for name in args.models:
                spec = MODELS[name]
                rows += benchmark_inference(spec, scale, settings)
                if settings.train_step and rows[-1].status != "skipped":
                    train_rows.append(benchmark_train_step(spec, scale, settings))
    add_ratios(rows, train_rows, args.ref)
    print(format_table(rows, train_rows, settings))
    elapsed = time.perf_counter() - start
    ref_note = f"{args.ref} ({reference_variant(args.ref)})"
    print(f"\nratios are to {ref_note}; GFLOP/MP = GFLOPs per output megapixel; {elapsed:.0f} s")
    result = {
        "environment": env,
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("json", "out_size", "overwrite")},
            "out_size": list(args.out_size),
            "flops_unit": "GFLOPs per output megapixel (FlopCounterMode, multiply-add = 2; "
            "FFT of N points 5·N·log2 N, real 2.5·N·log2 N)",
            "reference": {"model": args.ref, "variant": reference_variant(args.ref)},
            "train_step_config": {
                "autocast": "bf16" if settings.device.type == "cuda" else None,
                "loss": "l1",
                "optimizer": f"AdamW lr={TRAIN_LR}",
            },
            "model_configs": {name: MODELS[name].config for name in args.models},
        },
        "elapsed_s": elapsed,
        "rows": [asdict(r) for r in rows],
        "train_steps": [asdict(t) for t in train_rows],
    }
    imageio.write_text_atomic(
        args.json, json_dumps(result), overwrite=args.overwrite, what="JSON report"
    )
    print(f"wrote {args.json}")
    return result


def json_dumps(data: dict[str, Any]) -> str:
    """JSON text with NaN/Inf written as null (strict JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=2) + "\n"


if __name__ == "__main__":
    main()
