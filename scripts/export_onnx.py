"""Export a HybridMoE checkpoint to ONNX with dynamic batch, height and width.

    python scripts/export_onnx.py CHECKPOINT OUTPUT.onnx [--fp16] [--opset N] [--export-safe]
                                  [--dynamo | --no-dynamo] [--verify] [--no-fuse]

The checkpoint is loaded through spandrel (any form: ``.safetensors``, ``.pth`` with the
traiNNer-redux wrappers, ...), fused into its deploy form (``--no-fuse`` keeps the training
form) and exported with the input ``input`` (N, C, H, W) and the output ``output``
(N, C, H·scale, W·scale), all of N, H, W dynamic.

While exporting, the network switches by itself to export-friendly code paths: FFTs become DFT
matmuls, the MoE layers compute every expert densely (same output) and the selective scan is
plain torch ops. Both exporters give graphs with dynamic N, H, W: the TorchScript-based one
(default, ``--no-dynamo``; fast) and the ``torch.export``-based one (``--dynamo``; slower). The
network pads to multiples of 4 and of the attention window under Python ``if``s on the
shape; an exporter records only the branch the dummy input takes, so the dummy size is chosen
to take every padding branch (:func:`dummy_size`; zero pads are valid, so that branch is right
at every size), and its batch is 2 (torch.export would specialize a batch of 1). Should an
exporter still fix a dim to the dummy's value, the script stops with an error instead of
writing a fixed-size graph (``--allow-static`` writes it anyway).

``--export-safe`` replaces the chunk loop of the selective scan (``ssm`` global mixer), which
both exporters unroll for the dummy's number of 64-token chunks, with a loop-free equivalent
(:func:`ssd_scan_loop_free`, same function); it is on by default for models with an ``ssm``
mixer (``--no-export-safe`` shows what breaks without it).

``--verify`` runs the graph in onnxruntime on CPU at a size that is not a multiple of the
window, at another size and at batch 2, and prints the max abs difference to PyTorch (fp32).
Exit status: 0 on success, 1 when verification fails, 2 for a usage or loading error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _bootstrap import import_arch
from torch import Tensor

DEFAULT_OPSET = 18
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
FP32_TOL = 1e-4
"""Max abs difference allowed between onnxruntime (fp32 graph) and PyTorch."""
FP16_TOL = 5e-2
"""Max abs difference allowed between an fp16 graph and PyTorch fp32 (outputs in [0, 1])."""


class ExportError(Exception):
    """A usage, loading or export problem, reported as one line and exit status 2."""


# ---------------------------------------------------------------------------------------------
# Export-friendly replacements
# ---------------------------------------------------------------------------------------------


def ssd_scan_loop_free(  # noqa: PLR0917 (same operands as the network's scan)
    x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int = 64
) -> Tensor:
    """Selective scan without a Python loop over chunks (same function as the network's).

    Shapes: x (B,L,H,P), dt (B,L,H), a (H,), b and c (B,L,S) -> y (B,L,H,P), float32.

    Within a chunk the scan is a masked matmul. The state entering chunk ``i`` is
    ``Σ_{j<i} exp(Σ_{j<k<i} ℓ_k) · state_j`` with ``ℓ_k`` the log-decay of chunk ``k``: the
    segment sums come from a reversed cumulative sum over a masked (chunks × chunks) matrix
    (each entry sums only its own terms, no differences of large prefix sums), so the number
    of chunks is a graph dimension instead of an unrolled loop count. The padding to a chunk
    multiple is unconditional (a zero-width pad is valid), so no branch depends on the size.
    """
    bsz, length, heads, p = x.shape
    pad = (-length) % chunk
    x = F.pad(x, (0, 0, 0, 0, 0, pad))
    dt = F.pad(dt, (0, 0, 0, pad))
    b = F.pad(b, (0, 0, 0, pad))
    c = F.pad(c, (0, 0, 0, pad))
    nc = x.shape[1] // chunk
    xs = (x * dt.unsqueeze(-1)).reshape(bsz, nc, chunk, heads, p)
    la = (dt * a).reshape(bsz, nc, chunk, heads).permute(0, 3, 1, 2)  # (B,H,nc,T)
    bs = b.reshape(bsz, nc, chunk, -1)
    cs = c.reshape(bsz, nc, chunk, -1)
    cum = torch.cumsum(la, dim=-1)
    seg = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # (B,H,nc,T,T)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
    scores = torch.einsum("bnts,bnus->bntu", cs, bs)
    y = torch.einsum("bntu,bhntu,bnuhp->bnthp", scores, decay, xs)
    tail = torch.exp(cum[..., -1:] - cum)
    states = torch.einsum("bnts,bhnt,bnthp->bnhps", bs, tail, xs)  # (B,nc,H,P,S)
    # state passing: weights W[i, j] = exp(Σ_{j<k<i} ℓ_k) for j < i, else 0
    lc = cum[..., -1]  # (B,H,nc) log-decay of each chunk
    idx = torch.arange(nc, device=x.device)
    before = idx.view(1, -1) < idx.view(-1, 1)  # [i, k]: k < i
    rows = torch.where(before, lc.unsqueeze(-2), torch.zeros_like(lc).unsqueeze(-2))
    rev = rows.flip(-1).cumsum(-1).flip(-1)  # [i, j] = Σ_{j<=k<i} ℓ_k
    rev = torch.cat([rev[..., 1:], torch.zeros_like(rev[..., :1])], dim=-1)  # Σ_{j<k<i}
    weights = torch.where(before, torch.exp(rev), torch.zeros_like(rev))  # (B,H,nc,nc)
    prev = torch.einsum("bhij,bjhps->bihps", weights, states)
    y = y + torch.einsum("bnts,bnhps,bhnt->bnthp", cs, prev, torch.exp(cum))
    return y.reshape(bsz, nc * chunk, heads, p)[:, :length]


@contextlib.contextmanager
def export_safe_patches(arch: Any, enabled: bool) -> Iterator[None]:
    """Swap the network's chunk-loop scan for :func:`ssd_scan_loop_free` while exporting."""
    if not enabled:
        yield
        return
    original = arch.ssd_scan
    arch.ssd_scan = ssd_scan_loop_free
    try:
        yield
    finally:
        arch.ssd_scan = original


def _rms_norm_symbolic(g: Any, x: Any, normalized_shape: Any, weight: Any, eps: Any) -> Any:
    """TorchScript-exporter symbolic for ``aten::rms_norm`` (the ONNX op exists only from
    opset 23): ``x / sqrt(mean(x², last dims) + eps) · weight``, accumulated in float32."""
    from torch.onnx import symbolic_helper as sh

    node = normalized_shape.node()
    if node.kind() == "prim::ListConstruct":  # traced sizes, e.g. (x.shape[1],)
        n_dims = len(list(node.inputs()))
    else:
        n_dims = len(sh._get_const(normalized_shape, "is", "normalized_shape"))
    axes = list(range(-n_dims, 0))
    eps_v = sh._maybe_get_const(eps, "f")
    if eps_v is None or sh._is_value(eps_v):
        eps_v = float(torch.finfo(torch.float32).eps)
    xf = g.op("Cast", x, to_i=1)  # FLOAT
    sq = g.op("Mul", xf, xf)
    if g.opset >= 18:
        axes_c = g.op("Constant", value_t=torch.tensor(axes, dtype=torch.long))
        ms = g.op("ReduceMean", sq, axes_c, keepdims_i=1)
    else:
        ms = g.op("ReduceMean", sq, axes_i=axes, keepdims_i=1)
    denom = g.op("Sqrt", g.op("Add", ms, g.op("Constant", value_t=torch.tensor(float(eps_v)))))
    y = g.op("Div", xf, denom)
    y = g.op("CastLike", y, x)  # back to the input's type (opset >= 15)
    if not sh._is_none(weight):
        y = g.op("Mul", y, weight)
    return y


def _addcmul_symbolic(g: Any, x: Any, t1: Any, t2: Any, value: Any) -> Any:
    """``aten::addcmul`` as ``x + t1·t2·value`` in the input's type. The built-in symbolic
    turns the scalar ``value`` into a float32 constant, which promotes half graphs to float."""
    from torch.onnx import symbolic_helper as sh

    prod = g.op("Mul", t1, t2)
    v = sh._maybe_get_const(value, "f")
    if sh._is_value(v) or float(v) != 1.0:
        scalar = value if sh._is_value(v) else g.op("Constant", value_t=torch.tensor(float(v)))
        prod = g.op("Mul", prod, g.op("CastLike", scalar, prod))
    return g.op("Add", x, prod)


def register_torchscript_symbolics(opset: int) -> None:
    """Teach the TorchScript exporter the ops it lacks at ``opset`` (idempotent)."""
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("aten::addcmul", _addcmul_symbolic, opset)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def _window_sizes(model: torch.nn.Module) -> set[int]:
    return {m.window for m in model.modules() if hasattr(m, "window") and hasattr(m, "shift")}


def is_generic_size(h: int, w: int, windows: set[int], pad_multiple: int = 4) -> bool:
    """True if an (h, w) input takes every shape-dependent padding branch of the network.

    Each branch pads when H *or* W needs it, and the pad amounts are traced as graph values,
    so a taken branch stays correct at every size (a zero pad is valid), while a skipped one
    is baked out of the graph. Branches: the stem pads to a multiple of ``pad_multiple``; at
    the ×½ and ×¼ levels every window attention pads to a window multiple (blocks shifted by
    half a window always pad, so only the unshifted ones constrain the size).
    """
    if h % pad_multiple == 0 and w % pad_multiple == 0:
        return False
    ph, pw = -(-h // pad_multiple) * pad_multiple, -(-w // pad_multiple) * pad_multiple
    for div in (2, 4):
        step = pad_multiple // div  # level sides are multiples of this
        for ws in windows:
            # shifted blocks always pad; unshifted ones never can when ws divides the step
            if step % ws == 0:
                continue
            if (ph // div) % ws == 0 and (pw // div) % ws == 0:
                return False
    return True


def dummy_size(model: torch.nn.Module, start: int = 40) -> tuple[int, int]:
    """The smallest generic (H, W), H < W (see :func:`is_generic_size`), whose selective-scan
    sequence length (H/4·W/4 after padding) is also not a multiple of the 64-token chunk."""
    windows = _window_sizes(model)
    for h in range(start, start + 200):
        for w in range(h + 1, h + 200):
            if is_generic_size(h, w, windows) and (-(-h // 4) * -(-w // 4)) % 64:
                return h, w
    raise ExportError(f"no generic dummy size found for windows {sorted(windows)}")


def verify_sizes(model: torch.nn.Module, dummy: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(N, H, W) checks: a non-window-multiple size other than the dummy, a size that is a
    multiple of every window (the padding-free path) and batch 2 at a third size."""
    windows = [w for w in _window_sizes(model) if w > 1] or [1]
    mult = 4 * math.lcm(*windows)
    generic = (dummy[0] + 7, dummy[1] - 5) if dummy[1] > 20 else (dummy[0] + 7, dummy[1] + 9)
    return [(1, *generic), (1, 2 * mult, mult), (2, dummy[0] // 2 + 3, dummy[1] + 13)]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    path: Path
    exporter: str
    opset: int
    dtype: str
    dummy: tuple[int, int]
    seconds: float
    dynamic_dims: bool


def has_ssm(model: torch.nn.Module) -> bool:
    """Whether the model contains a selective-scan mixer."""
    return any(type(m).__name__ == "SelectiveScan2D" for m in model.modules())


def onnx_dims(path: Path) -> tuple[list[str | int], list[str | int]]:
    """Input and output dims of the graph: names for dynamic dims, ints for fixed ones."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(v: Any) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return dims(m.graph.input[0]), dims(m.graph.output[0])


def export(
    model: torch.nn.Module,
    path: Path,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    export_safe: bool = True,
    allow_static: bool = False,
) -> ExportResult:
    """Export ``model`` (eval, CPU) to ``path`` with dynamic N, H, W.

    fp16 graphs are traced from a half-precision copy of the model (the network keeps its FFT
    / scan / router math in float32 internally, so those parts stay float32 in the graph).
    """
    arch = import_arch()
    net = copy.deepcopy(model).eval().cpu()
    net = net.half() if fp16 else net.float()
    dtype = torch.float16 if fp16 else torch.float32
    h, w = dummy_size(net)
    # batch 2: a batch of 1 lets torch.export specialize N to 1 (its 0/1 specialization)
    x = torch.rand(2, net.in_ch, h, w, generator=torch.Generator().manual_seed(0)).to(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with export_safe_patches(arch, export_safe), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim

            dyn = {"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
            torch.onnx.export(
                net,
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dyn,
                external_data=False,
                verbose=False,
            )
        else:
            register_torchscript_symbolics(opset)
            torch.onnx.export(
                net,
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
                },
            )
    seconds = time.perf_counter() - t0
    in_dims, _ = onnx_dims(path)
    dynamic = all(isinstance(d, str) for d in (in_dims[0], in_dims[2], in_dims[3]))
    if not dynamic and not allow_static:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the {'dynamo' if dynamo else 'TorchScript'} exporter fixed the input dims to "
            f"{in_dims} (the dummy size): the graph would only accept that size. HybridMoE "
            f"branches on H/W in Python (padding to multiples of 4 and of the window), which "
            f"torch.export specializes; use the TorchScript exporter (--no-dynamo) or "
            f"--allow-static for a fixed-size graph"
        )
    return ExportResult(
        path,
        "dynamo" if dynamo else "torchscript",
        opset,
        "fp16" if fp16 else "fp32",
        (h, w),
        seconds,
        dynamic,
    )


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def verify(
    model: torch.nn.Module,
    result: ExportResult,
    sizes: Sequence[tuple[int, int, int]] | None = None,
    log: Callable[[str], None] = print,
) -> float:
    """Max abs difference between onnxruntime (CPU) and the fp32 PyTorch model over
    ``sizes`` ((N, H, W); default :func:`verify_sizes`)."""
    sess = ort_session(result.path)
    ref_model = copy.deepcopy(model).float().eval().cpu()
    sizes = list(sizes) if sizes is not None else verify_sizes(ref_model, result.dummy)
    np_dtype = np.float16 if result.dtype == "fp16" else np.float32
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for n, h, w in sizes:
        x = torch.rand(n, ref_model.in_ch, h, w, generator=g)
        ref = ref_model(x).numpy()
        out = sess.run(None, {INPUT_NAME: x.numpy().astype(np_dtype)})[0]
        if out.shape != ref.shape:
            raise AssertionError(f"onnxruntime output {out.shape} != PyTorch {ref.shape}")
        d = float(np.abs(out.astype(np.float32) - ref).max())
        worst = max(worst, d)
        log(f"  onnxruntime vs PyTorch fp32, {n}x{ref_model.in_ch}x{h}x{w}: max abs diff {d:.3e}")
    return worst


# ---------------------------------------------------------------------------------------------
# Matrix run (every variant × scale × mixer / split option, random weights)
# ---------------------------------------------------------------------------------------------


def matrix(out_dir: Path, dynamo: bool = False, fp16: bool = True) -> int:
    """Export and verify fresh (perturbed) models of every variant at ×2 and ×4, every
    ``global_mixer`` × ``freq_split`` combination at ×2, and a few extra options on nano.
    Prints one line per export; returns the number of failures."""
    arch = import_arch()
    cases: list[tuple[str, str, int, dict[str, Any]]] = []
    for variant in ("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l"):
        for scale in (2, 4):
            cases.append((f"{variant} x{scale}", variant, scale, {}))
        for mixer in ("fourier", "ssm", "none"):
            for split in ("laplacian", "fft"):
                if (mixer, split) != ("fourier", "laplacian"):
                    opts = {"global_mixer": mixer, "freq_split": split}
                    cases.append((f"{variant} x2 {mixer}/{split}", variant, 2, opts))
    extras: list[dict[str, Any]] = [
        {"use_attn": False},
        {"use_hf": False},
        {"upsampler": "dysample"},
        {"base": "bicubic"},
        {"base": "none", "refine_moe": True, "stem_lk": True, "noise": True},
        {"in_ch": 1},
    ]
    for opts in extras:
        cases.append((f"hybridmoe_nano x2 {opts}", "hybridmoe_nano", 2, opts))
    cases.append(("hybridmoe_nano x1", "hybridmoe_nano", 1, {}))
    cases.append(("hybridmoe_nano x3", "hybridmoe_nano", 3, {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    g = torch.Generator().manual_seed(0)
    for i, (name, variant, scale, opts) in enumerate(cases):
        model = arch.FACTORIES[variant](scale=scale, **opts)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        model.eval()
        fused = copy.deepcopy(model).fuse().eval()
        for half in (False, True) if fp16 and not opts else (False,):
            path = out_dir / f"case{i:02d}{'_fp16' if half else ''}.onnx"
            label = f"{name} {'fp16' if half else 'fp32'}"
            try:
                res = export(fused, path, fp16=half, dynamo=dynamo, export_safe=has_ssm(fused))
                lines: list[str] = []
                worst = verify(model, res, log=lines.append)
                tol = FP16_TOL if half else FP32_TOL
                ok = math.isfinite(worst) and worst <= tol
                failures += not ok
                print(
                    f"{'ok  ' if ok else 'FAIL'} {label}: {res.exporter}, dummy {res.dummy}, "
                    f"export {res.seconds:.1f} s, max abs diff {worst:.2e}"
                    + ("" if ok else "\n" + "\n".join(lines)),
                    flush=True,
                )
            except Exception as e:  # report and go on with the next case
                failures += 1
                print(f"FAIL {label}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            path.unlink(missing_ok=True)
    print(f"{len(cases)} configurations, {failures} failure(s)")
    return failures


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def load_hybridmoe(path: Path) -> Any:
    """Load ``path`` through spandrel; refuse other architectures."""
    arch = import_arch()
    try:
        desc = arch.load_checkpoint(path, device="cpu")
    except arch.CheckpointError as e:
        raise ExportError(str(e)) from e
    if not isinstance(desc.model, arch.HybridMoE):
        raise ExportError(
            f"{path}: this is a {desc.architecture.name} model, not HybridMoE; this script "
            f"exports HybridMoE checkpoints only"
        )
    return desc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint", type=Path, nargs="?", help="HybridMoE checkpoint (any spandrel form)"
    )
    p.add_argument("output", type=Path, nargs="?", help="ONNX file to write")
    p.add_argument(
        "--matrix",
        type=Path,
        metavar="DIR",
        help="instead: export + verify random models of every variant/scale/option in DIR",
    )
    p.add_argument("--fp16", action="store_true", help="export a float16 graph")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument(
        "--export-safe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="loop-free selective scan (default: on for models with an ssm mixer)",
    )
    p.add_argument(
        "--dynamo",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="use the torch.export-based exporter (default: TorchScript-based)",
    )
    p.add_argument(
        "--allow-static", action="store_true", help="write a graph even if H/W got fixed"
    )
    p.add_argument("--no-fuse", action="store_true", help="export the training form")
    p.add_argument("--verify", action="store_true", help="compare with PyTorch in onnxruntime")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matrix is not None:
        return int(matrix(args.matrix, dynamo=args.dynamo) > 0)
    if args.checkpoint is None or args.output is None:
        raise ExportError("CHECKPOINT and OUTPUT are required (or --matrix DIR)")
    if args.output.suffix.lower() != ".onnx":
        raise ExportError(f"{args.output}: the output must end in .onnx")
    if args.opset < MIN_OPSET:
        raise ExportError(f"--opset {args.opset}: opset {MIN_OPSET} or newer is required")
    if not args.dynamo and args.opset > 20:
        raise ExportError(
            f"--opset {args.opset}: the TorchScript exporter supports opsets up to 20; "
            f"use --dynamo for newer opsets"
        )
    desc = load_hybridmoe(args.checkpoint)
    model = desc.model.eval()
    if not args.no_fuse:
        model = copy.deepcopy(model).fuse().eval()
    export_safe = has_ssm(model) if args.export_safe is None else args.export_safe
    print(f"model: {desc.architecture.name} x{desc.scale}, tags {', '.join(desc.tags)}")
    result = export(
        model,
        args.output,
        fp16=args.fp16,
        opset=args.opset,
        dynamo=args.dynamo,
        export_safe=export_safe,
        allow_static=args.allow_static,
    )
    print(
        f"exported {result.path} ({result.dtype}, opset {result.opset}, {result.exporter} "
        f"exporter{', export-safe' if export_safe else ''}, dummy {result.dummy[0]}x"
        f"{result.dummy[1]}, {result.seconds:.1f} s, "
        f"{result.path.stat().st_size / 2**20:.2f} MiB); "
        f"dims {onnx_dims(result.path)[0]} -> {onnx_dims(result.path)[1]}"
    )
    if args.verify:
        tol = FP16_TOL if args.fp16 else FP32_TOL
        worst = verify(desc.model, result)
        if not math.isfinite(worst) or worst > tol:
            print(f"error: max abs diff {worst:.3e} > {tol:g}", file=sys.stderr)
            return 1
        print(f"verified: max abs diff {worst:.3e} <= {tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
