"""Export a HybridMoE checkpoint to ONNX with dynamic batch, height and width.

    hybridmoe export-onnx CHECKPOINT OUTPUT.onnx [--fp16] [--opset N] [--dynamo]
                                  [--verify] [--export-safe] [--no-fuse] [--allow-static]
                                  [--overwrite]
    hybridmoe export-onnx --matrix DIR [--dynamo] [--export-safe] [--only TEXT]
                                  [--matrix-fp16 all|variants|none]

The checkpoint is loaded through spandrel (any form: ``.safetensors``, ``.pth`` with the
traiNNer-redux wrappers, ...), fused into its deploy form (``--no-fuse`` keeps the training
form) and exported with the input ``input`` (N, C, H, W) and the output ``output``
(N, C, H·scale, W·scale), all of N, H, W dynamic.

While exporting, the network switches by itself to static-shape code: FFTs become DFT
matmuls, the MoE layers compute every expert densely (same output), the selective scan is the
loop-free pure-PyTorch one, RMS norm, layer scale, the frequency fusion and the window
attention are written with plain ops, and dtype conversions that change nothing leave no
``Cast`` node. The script patches nothing and registers no custom symbolic: an fp16 graph,
traced from a half copy of the model, is float16 except for the float32 islands the network
computes in float32 (RMS-norm statistics, FFT, selective scan, MoE router, DySample grid).
Both exporters give graphs with dynamic N, H, W in the default ONNX domain: the
TorchScript-based one (default, ``--no-dynamo``; seconds) and the ``torch.export``-based one
(``--dynamo``; minutes). The network pads to multiples of 4 and of the attention window
under Python ``if``s on the shape; an exporter records only the branch the dummy input takes,
so the dummy size is chosen to take every padding branch (:func:`dummy_size`; zero pads are
valid, so that branch is right at every size), and its batch is 2 (torch.export would
specialize a batch of 1). Should an exporter
still fix an input dim to the dummy's value, the script stops with an error instead of writing
a fixed-size graph (``--allow-static`` writes it anyway).

``--export-safe`` checks that the written graph is portable and free of the dummy's size:
every node in the default ONNX domain (no contrib, ATen-fallback or custom-function ops), the
ONNX checker in full mode, symbolic N/H/W on the input and output, and the graph traced a
second time at another dummy size and batch identical to the first, node for node (any value
fixed to the dummy size, e.g. a baked-in pad amount or a loop unrolled for the dummy's chunk
count, makes them differ). It doubles the export time.

``--verify`` runs the graph in onnxruntime on CPU at sizes other than the dummy's (not a
multiple of the window; a window multiple with more scan chunks; batch 2) and prints the max
abs difference to PyTorch (fp32); NaN or Inf in either output fails it.

OUTPUT must not be CHECKPOINT (same path or same file through a link), and an existing OUTPUT
is replaced only with ``--overwrite``. A checkpoint whose weights hold NaN or Inf is refused.
The graph is written to a temporary file beside OUTPUT and renamed to OUTPUT once complete;
if the export fails, OUTPUT is left as it was. A graph that fails ``--export-safe`` or
``--verify`` is still written, for inspection, and the exit status says it failed.
Exit status: 0 on success, 1 when verification or the export-safe check fails, 2 for a usage,
loading or writing error (a full disk).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hybridmoe_arch as arch
from hybridmoe import imageio
from hybridmoe.checkpoint import CheckpointError, load_checkpoint
from hybridmoe.cliargs import non_negative_int
from hybridmoe.models import perturb

DEFAULT_OPSET = 18
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
FP32_TOL = 1e-4
"""Max abs difference allowed between onnxruntime (fp32 graph) and PyTorch."""
FP16_TOL = 1e-2
"""Max abs difference allowed between an fp16 graph and PyTorch fp32 (outputs in [0, 1]): about
7x the largest seen over the export matrix (1.47e-3, ``measurements/onnx_matrix_2026-12-03.json``),
tight enough that an output off by 2 % of the range fails."""
SCAN_CHUNK = 64
"""Tokens per chunk of the network's selective scan (``ssd_scan``)."""
DEFAULT_DOMAINS = ("", "ai.onnx")


class ExportError(Exception):
    """A usage, loading or export problem, reported as one line and exit status 2."""


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def _window_sizes(model: torch.nn.Module) -> set[int]:
    return {m.window for m in model.modules() if hasattr(m, "window") and hasattr(m, "shift")}


def _chunks(h: int, w: int) -> int:
    """Number of scan chunks at the ×¼ level for an (h, w) input (padded to multiples of 4)."""
    return -(-(-(-h // 4) * -(-w // 4)) // SCAN_CHUNK)


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


def dummy_size(model: torch.nn.Module, start: int = 40, avoid_chunks: int = 0) -> tuple[int, int]:
    """The smallest generic (H, W), H < W, from ``start`` on (see :func:`is_generic_size`)
    whose selective-scan sequence (H/4·W/4 tokens after padding) is not a multiple of the
    64-token chunk and, if ``avoid_chunks`` is set, spans a different number of chunks."""
    windows = _window_sizes(model)
    for h in range(start, start + 200):
        for w in range(h + 1, h + 200):
            tokens = -(-h // 4) * -(-w // 4)
            if (
                is_generic_size(h, w, windows)
                and tokens % SCAN_CHUNK
                and _chunks(h, w) != avoid_chunks
            ):
                return h, w
    raise ExportError(f"no generic dummy size found for windows {sorted(windows)}")


def second_dummy(model: torch.nn.Module, first: tuple[int, int]) -> tuple[int, int]:
    """Another generic dummy size for the export-safe re-trace: larger, other chunk count."""
    return dummy_size(model, start=first[0] + 13, avoid_chunks=_chunks(*first))


def verify_sizes(model: torch.nn.Module, dummy: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(N, H, W) checks, all other than the dummy: a size that is a multiple of neither 4 nor
    the window; a multiple of 4·every window (the padding-free path) with more than four
    64-token scan chunks (the dummy has two); batch 2 at a third size."""
    windows = [w for w in _window_sizes(model) if w > 1] or [1]
    mult = 4 * math.lcm(*windows)
    generic = (dummy[0] + 7, dummy[1] - 5) if dummy[1] > 20 else (dummy[0] + 7, dummy[1] + 9)
    a, b = 2, 1
    while (a * mult // 4) * (b * mult // 4) <= 4 * SCAN_CHUNK:
        a, b = (a + 1, b) if a <= b else (a, b + 1)
    return [(1, *generic), (1, a * mult, b * mult), (2, dummy[0] // 2 + 3, dummy[1] + 13)]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export` wrote: the file, how (exporter, opset, dtype), the dummy (H, W)
    it traced with, the export time and whether N/H/W of the input are dynamic."""

    path: Path
    exporter: str
    opset: int
    dtype: str
    dummy: tuple[int, int]
    seconds: float
    dynamic_dims: bool


def onnx_dims(path: Path) -> tuple[list[str | int], list[str | int]]:
    """Input and output dims of the graph: names for dynamic dims, ints for fixed ones."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(v: Any) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return dims(m.graph.input[0]), dims(m.graph.output[0])


def onnx_opset(path: Path) -> int:
    """The default-domain opset the graph at ``path`` declares (0 when it declares none)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def _trace(net: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool) -> None:
    """Write ``net`` traced on ``x`` (N,C,H,W) to ``path`` with N, H, W declared dynamic."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim

            torch.onnx.export(
                net,
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}},
                external_data=False,
                verbose=False,
            )
        else:
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


def _prepare(model: torch.nn.Module, fp16: bool) -> tuple[torch.nn.Module, torch.dtype]:
    net = copy.deepcopy(model).eval().cpu()
    if hasattr(net, "set_noise_in_eval"):  # a graph of random ops would not be the model's
        net.set_noise_in_eval(False)
    return (net.half(), torch.float16) if fp16 else (net.float(), torch.float32)


def _dummy_input(
    net: torch.nn.Module, size: tuple[int, int], batch: int, dtype: torch.dtype
) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, net.in_ch, *size, generator=g).to(dtype)


def export(
    model: torch.nn.Module,
    path: Path,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    allow_static: bool = False,
    dummy: tuple[int, int] | None = None,
    batch: int = 2,
) -> ExportResult:
    """Export ``model`` (eval, CPU) to ``path`` with dynamic N, H, W.

    ``dummy`` (H, W) defaults to :func:`dummy_size`; ``batch`` must be ≥ 2 (torch.export
    specializes a batch of 1). fp16 graphs are traced from a half-precision copy of the model
    (the network keeps its FFT / scan / router / norm math in float32 internally, so those
    parts stay float32 in the graph).
    """
    net, dtype = _prepare(model, fp16)
    h, w = dummy if dummy is not None else dummy_size(net)
    x = _dummy_input(net, (h, w), batch, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _trace(net, x, path, opset, dynamo)
    seconds = time.perf_counter() - t0
    written = onnx_opset(path)
    if written != opset:  # the dynamo exporter falls back to its own opset, with a log line
        path.unlink(missing_ok=True)
        other = (
            "; or use the TorchScript exporter (--no-dynamo), which writes opsets "
            f"{MIN_OPSET} to 20"
            if dynamo and opset <= 20
            else ""
        )
        raise ExportError(
            f"the {'dynamo' if dynamo else 'TorchScript'} exporter wrote an opset {written} "
            f"graph, not the requested opset {opset} (it cannot convert this model to it); "
            f"pass --opset {written}{other}"
        )
    in_dims, _ = onnx_dims(path)
    dynamic = all(isinstance(d, str) for d in (in_dims[0], in_dims[2], in_dims[3]))
    if not dynamic and not allow_static:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the {'dynamo' if dynamo else 'TorchScript'} exporter fixed the input dims to "
            f"{in_dims} (the dummy size): the graph would only accept that size. HybridMoE "
            f"branches on H/W in Python (padding to multiples of 4 and of the window); use "
            f"the other exporter or --allow-static for a fixed-size graph"
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
# Export-safe check
# ---------------------------------------------------------------------------------------------


def foreign_ops(model: Any) -> list[str]:
    """``domain::op`` of every node outside the default ONNX domain (subgraphs and local
    functions included), sorted and unique. ``model`` is an ``onnx.ModelProto``."""
    import onnx

    found: set[str] = set()

    def walk(nodes: Any) -> None:
        for node in nodes:
            if node.domain not in DEFAULT_DOMAINS:
                found.add(f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        walk(sub.node)

    walk(model.graph.node)
    for fn in model.functions:
        found.add(f"{fn.domain}::{fn.name} (local function)")
        walk(fn.node)
    return sorted(found)


def fixed_io_dims(model: Any) -> list[str]:
    """Input/output N, H, W dims that are fixed numbers instead of names
    (``onnx.ModelProto`` in; e.g. ``["input dim 2 = 40"]``)."""
    out = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            dims = v.type.tensor_type.shape.dim
            for i in (0, 2, 3):
                if i < len(dims) and not dims[i].dim_param:
                    out.append(f"{kind} {v.name} dim {i} = {dims[i].dim_value or '?'}")
    return out


def _type_str(value_info: Any) -> str:
    t = value_info.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim] if t.HasField("shape") else None
    return f"{t.elem_type}{dims}"


def graph_signature(model: Any) -> list[str]:
    """A name-free, line-per-item description of an ``onnx.ModelProto``'s graph: declared
    types and shapes, every node (domain, op, wiring, attributes) and a hash of every constant
    and initializer. Two exports of one model differ in it only where a value depended on the
    traced input."""
    import onnx
    from onnx import numpy_helper

    ids: dict[str, int] = {}

    def ref(name: str) -> str:
        return "-" if not name else f"%{ids.setdefault(name, len(ids))}"

    def tensor(t: Any) -> str:
        arr = numpy_helper.to_array(t)
        if arr.size <= 8:  # small constants (shapes, pads, axes) by value: readable diffs
            return f"tensor<{t.data_type}{list(t.dims)}:{arr.reshape(-1).tolist()}>"
        digest = hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
        return f"tensor<{t.data_type}{list(t.dims)}:{digest}>"

    def attr_str(a: Any) -> str:
        if a.type == onnx.AttributeProto.TENSOR:
            return tensor(a.t)
        if a.type == onnx.AttributeProto.GRAPH:
            return "{" + "; ".join(graph(a.g)) + "}"
        if a.type == onnx.AttributeProto.GRAPHS:
            return "[" + ", ".join("{" + "; ".join(graph(g)) + "}" for g in a.graphs) + "]"
        return repr(onnx.helper.get_attribute_value(a))

    def graph(g: Any) -> list[str]:
        lines = [f"input {ref(v.name)} {_type_str(v)}" for v in g.input]
        lines += [f"init {ref(t.name)} {tensor(t)}" for t in g.initializer]
        for node in g.node:
            ins = ",".join(ref(i) for i in node.input)
            outs = ",".join(ref(o) for o in node.output)
            attrs = " ".join(f"{a.name}={attr_str(a)}" for a in sorted(node.attribute, key=str))
            lines.append(f"{node.domain}::{node.op_type}({ins}) -> {outs} {attrs}".rstrip())
        lines += [f"shape {ref(v.name)} {_type_str(v)}" for v in g.value_info]
        lines += [f"output {ref(v.name)} {_type_str(v)}" for v in g.output]
        return lines

    return graph(model.graph)


def static_problems(model: Any) -> list[str]:
    """The checks of an ``onnx.ModelProto`` that need no second trace: ops outside the
    default domain, the ONNX checker (full mode: strict shape inference), fixed N/H/W."""
    import onnx

    problems: list[str] = []
    foreign = foreign_ops(model)
    if foreign:
        problems.append("ops outside the default ONNX domain: " + ", ".join(foreign))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # checker and strict shape inference errors alike
        problems.append(f"ONNX checker: {type(e).__name__}: {str(e).strip()[:300]}")
    fixed = fixed_io_dims(model)
    if fixed:
        problems.append("fixed input/output dims: " + ", ".join(fixed))
    return problems


@dataclass
class SafetyReport:
    """Outcome of :func:`check_export_safe`: problems found (empty: safe), the second dummy
    (N, H, W) and the time of the re-trace."""

    problems: list[str]
    second: tuple[int, int, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def check_export_safe(
    model: torch.nn.Module, result: ExportResult, max_diff_lines: int = 12
) -> SafetyReport:
    """Check the graph at ``result.path`` (see the module doc, ``--export-safe``): default-
    domain ops only, the full ONNX checker, symbolic I/O dims, and an identical graph when
    ``model`` (the module that was exported) is traced again at a second dummy size and batch.
    """
    import tempfile

    import onnx

    first = onnx.load(str(result.path))
    problems = static_problems(first)
    net, dtype = _prepare(model, result.dtype == "fp16")
    h2, w2 = second_dummy(net, result.dummy)
    second = (3, h2, w2)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path2 = Path(tmp) / "second.onnx"
        _trace(
            net,
            _dummy_input(net, (h2, w2), 3, dtype),
            path2,
            result.opset,
            result.exporter == "dynamo",
        )
        other = onnx.load(str(path2))
    seconds = time.perf_counter() - t0
    sig1, sig2 = graph_signature(first), graph_signature(other)
    if sig1 != sig2:
        diff = [
            line
            for line in difflib.unified_diff(sig1, sig2, "dummy", "second dummy", n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        problems.append(
            f"the graph depends on the dummy size: traced at 2x{result.dummy[0]}x"
            f"{result.dummy[1]} and at 3x{h2}x{w2}, {len(diff)} line(s) differ, e.g.\n    "
            + "\n    ".join(s[:200] for s in diff[:max_diff_lines])
        )
    return SafetyReport(problems, second, seconds)


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def ort_session(path: Path) -> Any:
    """An onnxruntime CPU session for the graph at ``path``."""
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
    ``sizes`` ((N, H, W); default :func:`verify_sizes`); ``inf`` when either output holds
    NaN or Inf at any size."""
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
        bad_out, bad_ref = int((~np.isfinite(out)).sum()), int((~np.isfinite(ref)).sum())
        if bad_out or bad_ref:
            log(
                f"  {n}x{ref_model.in_ch}x{h}x{w}: NaN/Inf values in the output: "
                f"{bad_out} from onnxruntime, {bad_ref} from PyTorch"
            )
            worst = math.inf
            continue
        d = float(np.abs(out.astype(np.float32) - ref).max())
        worst = max(worst, d)
        log(f"  onnxruntime vs PyTorch fp32, {n}x{ref_model.in_ch}x{h}x{w}: max abs diff {d:.3e}")
    return worst


# ---------------------------------------------------------------------------------------------
# Matrix run (every variant × scale × mixer / split option, random weights)
# ---------------------------------------------------------------------------------------------


def matrix_cases() -> list[tuple[str, str, int, dict[str, Any]]]:
    """(label, variant, scale, options) of the matrix: every variant and the three-level design
    (``hybridmoe``'s defaults: frequency split, HF path, window attention, Fourier mixer, MoE)
    at ×2 and ×4, every ``global_mixer`` × ``freq_split`` combination of each at ×2, extra
    options on nano, and nano at ×1 / ×3."""
    cases: list[tuple[str, str, int, dict[str, Any]]] = []
    for variant in ("hybridmoe_nano", "hybridmoe_s", "hybridmoe_m", "hybridmoe_l", "hybridmoe"):
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
        {"base": "none", "refine_moe": True, "stem_lk": True, "texture_head": True, "noise": True},
        {"in_ch": 1},
    ]
    for opts in extras:
        cases.append((f"hybridmoe_nano x2 {opts}", "hybridmoe_nano", 2, opts))
    cases.append(("hybridmoe_nano x1", "hybridmoe_nano", 1, {}))
    cases.append(("hybridmoe_nano x3", "hybridmoe_nano", 3, {}))
    return cases


def matrix(
    out_dir: Path,
    dynamo: bool = False,
    fp16: str = "all",
    export_safe: bool = False,
    only: str | None = None,
) -> int:
    """Export and verify fresh (perturbed) models of :func:`matrix_cases` (those whose label
    contains ``only``) as fp32 graphs, and as fp16 graphs too for ``fp16`` "all" cases or the
    plain "variants" (at ×2 and ×4; "none": no fp16). Every graph must hold default-domain
    ops only with symbolic N/H/W; with ``export_safe`` the full :func:`check_export_safe`
    (second trace) runs too. Prints one line per export; returns the number of failures.
    The graphs are written to a fresh folder inside ``out_dir``, removed at the end."""
    import shutil
    import tempfile

    cases = [c for c in matrix_cases() if only is None or only in c[0]]
    if not cases:
        raise ExportError(
            f"--only {only!r} matches no matrix case; labels look like 'hybridmoe_nano x2', "
            f"'hybridmoe_s x2 ssm/fft' or 'hybridmoe_nano x3'"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # a fresh folder of its own: files already in DIR are never replaced or deleted
        work = Path(tempfile.mkdtemp(prefix=".hybridmoe-matrix-", dir=out_dir))
    except OSError as e:
        raise ExportError(f"cannot create the --matrix folder {out_dir}: {e}") from e
    try:
        failures = _matrix_cases(cases, work, dynamo, fp16, export_safe)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(cases)} configurations, {failures} failure(s)")
    return failures


def _matrix_cases(
    cases: list[tuple[str, str, int, dict[str, Any]]],
    out_dir: Path,
    dynamo: bool,
    fp16: str,
    export_safe: bool,
) -> int:
    """Export and check every case of :func:`matrix` in ``out_dir``; the number of failures."""
    import onnx

    failures = 0
    for i, (name, variant, scale, opts) in enumerate(cases):
        try:
            model = perturb(arch.FACTORIES[variant](scale=scale, **opts), 0.01, seed=i).eval()
            fused = copy.deepcopy(model).fuse().eval()
        except Exception as e:  # a case that cannot be built counts as a failure, not a crash
            failures += 1
            print(f"FAIL {name}: cannot build: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        with_half = fp16 == "all" or (fp16 == "variants" and not opts and scale in (2, 4))
        for half in (False, True) if with_half else (False,):
            path = out_dir / f"case{i:02d}{'_fp16' if half else ''}.onnx"
            label = f"{name} {'fp16' if half else 'fp32'}"
            try:
                res = export(fused, path, fp16=half, dynamo=dynamo)
                lines: list[str] = []
                worst = verify(model, res, log=lines.append)
                tol = FP16_TOL if half else FP32_TOL
                ok = math.isfinite(worst) and worst <= tol
                if export_safe:
                    problems = check_export_safe(fused, res).problems
                    safe = ", export-safe " + ("FAILED" if problems else "ok")
                else:
                    problems = static_problems(onnx.load(str(path)))
                    safe = ", default domain " + ("FAILED" if problems else "ok")
                ok = ok and not problems
                lines += problems
                failures += not ok
                print(
                    f"{'ok  ' if ok else 'FAIL'} {label}: {res.exporter}, dummy {res.dummy}, "
                    f"export {res.seconds:.1f} s, max abs diff {worst:.2e}{safe}"
                    + ("" if ok else "\n" + "\n".join(lines)),
                    flush=True,
                )
            except Exception as e:  # report and go on with the next case
                failures += 1
                print(f"FAIL {label}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            path.unlink(missing_ok=True)
    return failures


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def load_hybridmoe(path: Path) -> Any:
    """Load ``path`` through spandrel; refuse other architectures."""
    try:
        desc = load_checkpoint(path, device="cpu")
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    if not isinstance(desc.model, arch.HybridMoE):
        raise ExportError(
            f"{path}: this is a {desc.architecture.name} model, not HybridMoE; this script "
            f"exports HybridMoE checkpoints only"
        )
    return desc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridmoe export-onnx",
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
    p.add_argument(
        "--only", metavar="TEXT", help="with --matrix: only the cases whose label contains TEXT"
    )
    p.add_argument(
        "--matrix-fp16",
        choices=("all", "variants", "none"),
        default=None,
        help="with --matrix: fp16 graphs for every case (default), the plain variants, none",
    )
    p.add_argument("--fp16", action="store_true", help="export a float16 graph")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset (>= {MIN_OPSET}; default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--export-safe",
        action="store_true",
        help="check the graph: default ONNX domain only, no value fixed to the dummy size "
        "(re-traced at a second size and compared); exit 1 if not",
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: default)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ExportError, imageio.OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


ONNX_PACKAGES = ("onnx", "onnxruntime")
"""What export and verification import; ``pip install 'hybridmoe-freqnet[onnx]'`` brings them."""


def require_onnx_packages() -> None:
    """:class:`ExportError` naming the extra to install when an ONNX package is missing."""
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {' and '.join(missing)}, which are not installed; install the "
            f"ONNX extra: pip install 'hybridmoe-freqnet[onnx]' (from a checkout: "
            f"pip install -e '.[onnx]')"
        )


def run(args: argparse.Namespace) -> int:
    require_onnx_packages()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matrix is not None:
        mixed = [
            text
            for text, given in (
                ("CHECKPOINT/OUTPUT", args.checkpoint is not None or args.output is not None),
                ("--fp16 (use --matrix-fp16)", args.fp16),
                ("--opset", args.opset is not None),
                ("--no-fuse", args.no_fuse),
                ("--allow-static", args.allow_static),
                ("--verify (the matrix always verifies)", args.verify),
                ("--overwrite (it writes into a new DIR)", args.overwrite),
            )
            if given
        ]
        if mixed:
            raise ExportError(
                f"--matrix DIR exports its own random models; it does not take "
                f"{', '.join(mixed)}: drop them, or drop --matrix to export one checkpoint"
            )
        failures = matrix(
            args.matrix,
            dynamo=args.dynamo,
            fp16=args.matrix_fp16 or "all",
            export_safe=args.export_safe,
            only=args.only,
        )
        return int(failures > 0)
    if args.only is not None or args.matrix_fp16 is not None:
        option = "--only" if args.only is not None else "--matrix-fp16"
        raise ExportError(f"{option} is an option of --matrix DIR; give --matrix or drop {option}")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if args.checkpoint is None or args.output is None:
        raise ExportError("CHECKPOINT and OUTPUT are required (or --matrix DIR)")
    if args.output.suffix.lower() != ".onnx":
        raise ExportError(f"{args.output}: the output must end in .onnx")
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: opset {MIN_OPSET} or newer is required")
    if args.dynamo and opset < 18:  # before minutes of export that cannot give it
        raise ExportError(
            f"--opset {opset}: the dynamo exporter writes opset 18 or newer; pass --opset 18, "
            f"or drop --dynamo for the TorchScript exporter"
        )
    if not args.dynamo and opset > 20:
        raise ExportError(
            f"--opset {opset}: the TorchScript exporter supports opsets up to 20; "
            f"use --dynamo for newer opsets"
        )
    imageio.check_output(
        args.output, overwrite=args.overwrite, inputs=[args.checkpoint], what="ONNX output"
    )
    desc = load_hybridmoe(args.checkpoint)
    # NaN/Inf weights never get here: the loader refuses them, naming the tensor
    model = desc.model.eval()
    if not args.no_fuse:
        model = copy.deepcopy(model).fuse().eval()
    print(f"model: {desc.architecture.name} x{desc.scale}, tags {', '.join(desc.tags)}")
    with imageio.atomic_output(
        args.output, overwrite=args.overwrite, what="ONNX output"
    ) as tmp:  # renamed to OUTPUT once complete
        try:
            result = export(
                model,
                tmp,
                fp16=args.fp16,
                opset=opset,
                dynamo=args.dynamo,
                allow_static=args.allow_static,
            )
        except OSError as e:  # the exporters raise the OS's error (a full disk)
            raise imageio.write_error(args.output, e) from e
        ins, outs = onnx_dims(result.path)
        print(
            f"exported {args.output} ({result.dtype}, opset {result.opset}, {result.exporter} "
            f"exporter, dummy {result.dummy[0]}x{result.dummy[1]}, {result.seconds:.1f} s, "
            f"{result.path.stat().st_size / 2**20:.2f} MiB); dims {ins} -> {outs}"
        )
        failed = check_written(args, desc.model, model, result)
    if failed:
        print(
            f"error: {' and '.join(failed)} failed; {args.output} was written for inspection "
            f"only: do not deploy it",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {args.output}")
    return 0


def check_written(
    args: argparse.Namespace, original: torch.nn.Module, exported: torch.nn.Module, result: Any
) -> list[str]:
    """Run the requested checks of the graph at ``result.path`` (``--export-safe``,
    ``--verify``); returns the names of those that failed."""
    failed = []
    if args.export_safe:
        rep = check_export_safe(exported, result)
        if rep.ok:
            print(
                f"export-safe: default ONNX domain only, dims symbolic, graph identical when "
                f"traced at {rep.second[0]}x{rep.second[1]}x{rep.second[2]} "
                f"({rep.seconds:.1f} s)"
            )
        else:
            for problem in rep.problems:
                print(f"error: export-safe: {problem}", file=sys.stderr)
            failed.append("the export-safe check")
    if args.verify:
        tol = FP16_TOL if args.fp16 else FP32_TOL
        worst = verify(original, result)
        if not worst <= tol:  # inf (NaN/Inf outputs) fails too
            print(f"error: max abs diff {worst:.3e} > {tol:g}", file=sys.stderr)
            failed.append("the onnxruntime verification")
        else:
            print(f"verified: max abs diff {worst:.3e} <= {tol:g}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
