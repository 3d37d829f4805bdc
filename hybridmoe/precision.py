"""Check a model's outputs in reduced precision against fp32 on real benchmark images.

Usage::

    hybridmoe check-precision MODEL_OR_VARIANT [...] [--data DIR] [--sets Set5 Set14]
        [--device auto|cpu|cuda] [--scale 4] [--limit N] [--crop N] [--precisions ...]
        [--tol-db 0.05] [--json OUT.json [--overwrite]]
    hybridmoe check-precision .work/ckpt/*.safetensors hybridmoe_m hybridmoe_l \\
        --device cuda --json precision.json
    hybridmoe check-precision 1x_model.safetensors --degraded datasets/restore_eval

Each MODEL_OR_VARIANT is a checkpoint spandrel loads (HybridMoE or any other architecture), the
name of a shipped model (``2x_HybridMoE_S``; ``hybridmoe models`` lists them) or a HybridMoE
variant name (``hybridmoe_nano``, ``hybridmoe_s``, ``hybridmoe_m``, ``hybridmoe_l``): random
weights at ``--scale``, every parameter moved off its initialization by N(0, 0.01²)
(``--perturb``) so that the detail path, near zero at initialization, contributes.

Every image of the sets is prepared as ``hybridmoe evaluate`` does (HR from
``<data>/<Set>/HR`` or ``<data>/benchmark/<Set>/HR``, mod-cropped, LR by MATLAB-exact bicubic
downscaling, checked against a set's canonical LR files where it has them) and super-resolved in
each precision. ``<data>`` is ``--data DIR``, by default ``$HYBRIDMOE_DATA`` when set, else
``./datasets``; the benchmark sets are not shipped with the package. The precisions:

* ``fp32``: the reference;
* ``fp16-autocast`` / ``bf16-autocast``: fp32 weights under ``torch.autocast``;
* ``fp16-cast`` / ``bf16-cast``: weights and input cast (``.half()`` / ``.bfloat16()``).

``--degraded DIR`` checks scale-1 (restoration) models instead, on the degraded sets of
``hybridmoe make-degraded`` (the LQ images in, scored against HR on Y with no border cropped, as
``hybridmoe evaluate --degraded`` does); a variant name is then built at scale 1.

Reported per precision: whether any output had NaN/Inf (raw model output, before spandrel's
clamp to [0, 1]), Y-PSNR/SSIM against HR (mean over all images), the PSNR difference to fp32
(mean and worst image), the max abs difference of the [0, 1] output to fp32, and the run time.
A precision is OK when every output is finite and every image's PSNR is within ``--tol-db``
(0.05 dB) of its fp32 PSNR. A precision the device cannot run (autocast not available for
the dtype, no kernels for it) or the model declares unsupported (spandrel's
``supports_half`` / ``supports_bfloat16`` for the casts) is skipped with the reason.

``--json`` is checked before any work (it must not be one of the model files, nor an existing
file unless ``--overwrite``) and written atomically. Images are read as ``evaluate.read_image``
reads them (every bit depth and Pillow mode at its own white level).

Exit status: 0 when every precision that ran is OK, 1 when one is not, 2 for a usage or
loading error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hybridmoe_arch as arch
from hybridmoe import evaluate as ev
from hybridmoe import imageio, metrics, models
from hybridmoe.cliargs import (
    add_device_argument,
    finite_non_negative,
    non_negative_int,
    positive_int,
)
from hybridmoe.meta import CheckpointError
from hybridmoe.provenance import record_header
from hybridmoe.spandrel_arch import register_spandrel

PRECISIONS = ("fp32", "fp16-autocast", "fp16-cast", "bf16-autocast", "bf16-cast")
DTYPE_OF = {"fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_SETS = ("Set5", "Set14")
DEFAULT_TOL_DB = 0.05
DEFAULT_PERTURB = 0.01


class PrecisionError(Exception):
    """A usage or loading problem, reported as one line and exit status 2."""


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def variant_names() -> list[str]:
    """HybridMoE variant names accepted instead of a checkpoint path."""
    return sorted(arch.FACTORIES)


def model_path(spec: str) -> Path:
    """The checkpoint file ``spec`` names: a path or a shipped model's name
    (:func:`hybridmoe.models.resolve_model`); :class:`PrecisionError` naming the shipped models
    and the variants when it is neither."""
    try:
        return models.resolve_model(spec)
    except CheckpointError as e:
        path = Path(spec)
        if len(path.parts) == 1 and not path.suffix:  # a bare name: not a file, not shipped
            shipped = ", ".join(models.shipped_models()) or "none found"
            raise PrecisionError(
                f"{spec!r} is neither a file, a shipped model ({shipped}; hybridmoe models "
                f"lists them) nor a variant ({', '.join(variant_names())})"
            ) from None
        raise PrecisionError(str(e)) from None


def load_model(
    spec: str,
    scale: int,
    device: str,
    perturb: float = DEFAULT_PERTURB,
    seed: int = 0,
    *,
    restoration: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """A spandrel ``ImageModelDescriptor`` (fp32, eval, on ``device``) and a description.

    ``spec`` is a checkpoint path or a shipped model's name, or a variant name (random weights
    at ``scale``, every
    parameter perturbed by N(0, ``perturb``²) with a fixed ``seed``). ``restoration``: the
    checkpoint must be a scale-1 model (degraded sets), otherwise one of scale >= 2.
    """
    if spec in arch.FACTORIES and not Path(spec).exists():
        from spandrel import ModelLoader

        model = models.perturb(arch.FACTORIES[spec](scale=scale), perturb, seed)
        register_spandrel()
        desc = ModelLoader(device="cpu").load_from_state_dict(model.state_dict())
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PrecisionError("--device cuda requested but CUDA is not available")
        desc.to(device).eval()
        source = f"{spec} x{scale}, random weights (perturbed {perturb:g})"
    else:
        path = model_path(spec)
        try:
            desc = ev.load_descriptor(path, device, "fp32", restoration=restoration)
        except ev.EvaluationError as e:
            raise PrecisionError(str(e)) from e
        source = str(path)
    info = {
        "model": spec,
        "source": source,
        "arch": desc.architecture.name,
        "scale": desc.scale,
        "params": sum(p.numel() for p in desc.model.parameters()),
        "supports_half": bool(desc.supports_half),
        "supports_bfloat16": bool(desc.supports_bfloat16),
        "tags": list(getattr(desc, "tags", [])),
    }
    return desc, info


# --------------------------------------------------------------------------------------------
# Precision contexts
# --------------------------------------------------------------------------------------------


def autocast_supported(device: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast`` really computes in ``dtype`` on ``device`` (it may disable
    itself with a warning instead): probed with a matmul and a convolution."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(torch.device(device).type, dtype=dtype), torch.no_grad():
                a = torch.ones(4, 4, device=device)
                conv = torch.nn.functional.conv2d(
                    torch.ones(1, 2, 5, 5, device=device), torch.ones(2, 2, 3, 3, device=device)
                )
                return (a @ a).dtype == dtype and conv.dtype == dtype
    except (RuntimeError, ValueError):
        return False


def precision_setup(desc: Any, precision: str, device: str) -> tuple[Any | None, str | None]:
    """The descriptor to run ``precision`` with (a cast copy for ``*-cast``), or None and the
    reason it is skipped."""
    if precision == "fp32":
        return desc, None
    kind, mode = precision.split("-")
    dtype = DTYPE_OF[kind]
    if mode == "autocast":
        if not autocast_supported(device, dtype):
            return None, f"torch.autocast({device!r}, {kind}) is not supported here"
        return desc, None
    supported = desc.supports_half if kind == "fp16" else desc.supports_bfloat16
    if not supported:
        return None, f"the model declares no {kind} support (spandrel)"
    return copy.deepcopy(desc).to(dtype), None


@contextlib.contextmanager
def precision_context(precision: str, device: str) -> Iterator[None]:
    """``torch.autocast`` for the ``*-autocast`` precisions, nothing otherwise."""
    if precision.endswith("-autocast"):
        dtype = DTYPE_OF[precision.split("-", maxsplit=1)[0]]
        with torch.autocast(torch.device(device).type, dtype=dtype):
            yield
    else:
        yield


class RecordingDescriptor:
    """Stands in for a spandrel descriptor in ``evaluate.super_resolve``: runs it under a
    precision context, counts non-finite values of the raw model output (before the clamp to
    [0, 1]) and keeps the [0, 1] outputs (N,C,sH,sW) as float32 on the CPU."""

    def __init__(self, desc: Any, precision: str, device: str) -> None:
        self.desc = desc
        self.precision = precision
        self.device_type = device
        self.input_channels = desc.input_channels
        self.output_channels = desc.output_channels
        self.scale = desc.scale
        self.device = desc.device
        self.dtype = desc.dtype
        self.nonfinite = 0
        self.outputs: list[torch.Tensor] = []

    def _hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.nonfinite += int((~torch.isfinite(output)).sum())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        handle = self.desc.model.register_forward_hook(self._hook)
        try:
            with precision_context(self.precision, self.device_type):
                y = self.desc(x)
        finally:
            handle.remove()
        y = y.float()
        self.outputs.append(y.cpu())
        return torch.nan_to_num(y, nan=0.0)  # metrics stay computable; flagged separately


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class Image:
    """One benchmark image: set, name, mod-cropped uint8 HR and its LR."""

    set_name: str
    name: str
    hr: np.ndarray
    lr: np.ndarray


def load_images(
    data_dir: Path, sets: Sequence[str], scale: int, limit: int | None, crop: int | None
) -> list[Image]:
    """The images of ``sets`` (``limit`` per set), prepared as ``evaluate.evaluate_set`` does;
    with ``crop``, the HR image is first centre-cropped to at most ``crop``·scale pixels a side
    (an LR of at most ``crop``), for quick runs."""
    images = []
    for set_name in sets:
        set_dir = ev.find_set(data_dir, set_name)
        for path in ev.set_hr_paths(set_dir, limit):
            hr = ev.read_image(path)
            if crop is not None:
                side = crop * scale
                top = max(0, (hr.shape[0] - side) // 2)
                left = max(0, (hr.shape[1] - side) // 2)
                hr = hr[top : top + side, left : left + side]
            hr = metrics.mod_crop(hr, scale)
            lr = ev.make_lr(hr, scale)
            if crop is None:
                ev.check_shipped_lr(set_dir, path, scale, lr)
            images.append(Image(set_name, path.stem, hr, lr))
    if not images:
        raise PrecisionError(f"no images found in the sets {', '.join(sets)} under {data_dir}")
    return images


def load_degraded_images(
    root: Path, sets: Sequence[str], limit: int | None, crop: int | None
) -> list[Image]:
    """The HR and degraded (LQ) images of the ``hybridmoe make-degraded`` sets under ``root``
    (``limit`` per set); with ``crop``, both centre-cropped to at most ``crop`` a side."""
    images = []
    for set_name in ev.degraded_set_names(root, sets):
        set_scale = ev.degraded_scale(ev.read_degraded_manifest(root / set_name))
        if set_scale != 1:
            raise PrecisionError(
                f"{root / set_name} is a x{set_scale} degraded set; --degraded checks x1 "
                "restoration models on x1 sets (make-degraded --preset restore)"
            )
        for name, hr, lq in ev.degraded_images(root / set_name, limit):
            if crop is None:
                images.append(Image(set_name, name, hr, lq))
                continue
            top = max(0, (hr.shape[0] - crop) // 2)
            left = max(0, (hr.shape[1] - crop) // 2)
            window = (slice(top, top + crop), slice(left, left + crop))
            images.append(Image(set_name, name, hr[window], lq[window]))
    return images


@dataclass
class PrecisionResult:
    """Outcome of one precision over all images (``per_image``: name -> psnr/ssim/delta)."""

    precision: str
    skipped: str | None = None
    nonfinite: int = 0
    psnr: float = math.nan
    ssim: float = math.nan
    delta_psnr_mean: float = math.nan
    delta_psnr_worst: float = math.nan
    max_abs_diff: float = math.nan
    seconds: float = math.nan
    ok: bool | None = None
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)


def run_precision(
    desc: Any,
    precision: str,
    images: Sequence[Image],
    device: str,
    *,
    reference: list[torch.Tensor] | None,
    ref_psnr: dict[str, float] | None,
    tol_db: float,
) -> tuple[PrecisionResult, list[torch.Tensor]]:
    """Super-resolve ``images`` in ``precision``; compare with the fp32 ``reference`` outputs
    and PSNRs (None for fp32 itself). Returns the result and the [0, 1] outputs."""
    runner_desc, reason = precision_setup(desc, precision, device)
    if runner_desc is None:
        return PrecisionResult(precision, skipped=reason), []
    rec = RecordingDescriptor(runner_desc, precision, device)
    res = PrecisionResult(precision)
    t0 = time.perf_counter()
    try:
        for img in images:
            sr = ev.super_resolve(rec, img.lr, None)
            scores = (
                ev.score_restored(sr, img.hr)  # x1: the degraded-set scores
                if desc.scale == 1
                else ev.score_pair(sr, img.hr, desc.scale)
            )
            key = f"{img.set_name}/{img.name}"
            res.per_image[key] = {"psnr": scores["psnr"], "ssim": scores["ssim"]}
            if ref_psnr is not None:
                res.per_image[key]["delta_psnr"] = scores["psnr"] - ref_psnr[key]
    except (RuntimeError, NotImplementedError) as e:  # no kernels for the dtype on the device
        if precision == "fp32":
            raise
        msg = str(e).strip().splitlines()[0][:160]
        return PrecisionResult(precision, skipped=f"{type(e).__name__}: {msg}"), []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    res.seconds = time.perf_counter() - t0
    res.nonfinite = rec.nonfinite
    rows = list(res.per_image.values())
    res.psnr = float(np.mean([r["psnr"] for r in rows]))
    res.ssim = float(np.mean([r["ssim"] for r in rows]))
    if reference is not None:
        deltas = [r["delta_psnr"] for r in rows]
        res.delta_psnr_mean = float(np.mean(deltas))
        res.delta_psnr_worst = float(max(deltas, key=abs))
        res.max_abs_diff = max(
            float((out - ref).abs().max()) for out, ref in zip(rec.outputs, reference, strict=True)
        )
        res.ok = res.nonfinite == 0 and all(abs(d) <= tol_db for d in deltas)
    else:
        res.delta_psnr_mean = res.delta_psnr_worst = res.max_abs_diff = 0.0
        res.ok = res.nonfinite == 0
    return res, rec.outputs


def check_model(
    desc: Any,
    images: Sequence[Image],
    device: str,
    precisions: Sequence[str] = PRECISIONS,
    tol_db: float = DEFAULT_TOL_DB,
) -> list[PrecisionResult]:
    """Every precision of ``precisions`` (fp32 first, always run) on ``images``."""
    with torch.inference_mode():
        ref, ref_out = run_precision(
            desc, "fp32", images, device, reference=None, ref_psnr=None, tol_db=tol_db
        )
        ref_psnr = {k: v["psnr"] for k, v in ref.per_image.items()}
        results = [ref]
        for precision in precisions:
            if precision == "fp32":
                continue
            res, _ = run_precision(
                desc, precision, images, device, reference=ref_out, ref_psnr=ref_psnr, tol_db=tol_db
            )
            results.append(res)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return results


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(v: float, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(report: dict[str, Any], tol_db: float) -> str:
    """One row per model × precision: status, non-finite count, PSNR/SSIM, ΔPSNR (mean and
    worst image), max abs diff to fp32 and time; skipped precisions with their reason."""
    head = (
        f"{'model':<34} {'precision':<13} {'status':<6} {'NaN/Inf':>7} {'PSNR':>7} {'SSIM':>6} "
        f"{'dPSNR':>8} {'worst':>8} {'maxdiff':>8} {'time':>7}"
    )
    lines = [head, "-" * len(head)]
    for entry in report["models"]:
        name = Path(entry["info"]["model"]).name
        name = name if len(name) <= 34 else "…" + name[-33:]
        for r in entry["results"]:
            if r["skipped"]:
                lines.append(f"{name:<34} {r['precision']:<13} {'skip':<6} {r['skipped']}")
                continue
            status = "ok" if r["ok"] else "FAIL"
            lines.append(
                f"{name:<34} {r['precision']:<13} {status:<6} {r['nonfinite']:>7} "
                f"{_fmt(r['psnr'], '.3f'):>7} {_fmt(r['ssim'], '.4f'):>6} "
                f"{_fmt(r['delta_psnr_mean'], '+.4f'):>8} {_fmt(r['delta_psnr_worst'], '+.4f'):>8} "
                f"{_fmt(r['max_abs_diff'], '.2e'):>8} {_fmt(r['seconds'], '.1f'):>6}s"
            )
    lines.append(
        f"ok: no NaN/Inf and every image within {tol_db:g} dB of fp32 (Y-PSNR); dPSNR: mean "
        f"difference to fp32, worst: the image furthest from fp32; maxdiff: max abs difference "
        f"of the [0, 1] output to fp32"
    )
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridmoe check-precision",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_OR_VARIANT",
        help="checkpoint files, shipped model names (hybridmoe models lists them) or HybridMoE "
        f"variant names ({', '.join(variant_names())})",
    )
    p.add_argument("--data", type=Path, default=None, metavar="DIR", help=ev.DATA_HELP)
    p.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help=f"benchmark sets (default: {' '.join(DEFAULT_SETS)}; with --degraded, every set "
        "in DIR)",
    )
    p.add_argument(
        "--degraded",
        type=Path,
        default=None,
        metavar="DIR",
        help="check scale-1 restoration models on the sets of hybridmoe make-degraded in DIR",
    )
    add_device_argument(p, "the models")
    p.add_argument(
        "--scale", type=int, default=None, help="variant models' scale (4; 1 with --degraded)"
    )
    p.add_argument("--limit", type=positive_int, default=None, help="at most N images per set")
    p.add_argument("--crop", type=int, default=None, help="centre-crop LR images to N×N")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="precisions to check (fp32 always runs as the reference)",
    )
    p.add_argument(
        "--tol-db", type=finite_non_negative, default=DEFAULT_TOL_DB, help="max |ΔPSNR| per image"
    )
    p.add_argument(
        "--perturb",
        type=finite_non_negative,
        default=DEFAULT_PERTURB,
        help="weight noise of variant models",
    )
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: default)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    try:
        return run(args, ["hybridmoe", "check-precision", *words])
    except (PrecisionError, ev.EvaluationError, imageio.OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _is_file_or_shipped(spec: str) -> bool:
    try:
        models.resolve_model(spec)
    except CheckpointError:
        return False
    return True


def run(args: argparse.Namespace, command: Sequence[str]) -> int:
    """Check every model of ``args``; ``command`` (the command line's words) goes into the
    JSON report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop is not None and args.crop < 8:
        raise PrecisionError(f"--crop must be >= 8, got {args.crop}")
    restoration = args.degraded is not None
    if args.scale is not None and all(_is_file_or_shipped(m) for m in args.models):
        raise PrecisionError(
            f"--scale {args.scale} sets the scale of variants (hybridmoe_s, ...); a checkpoint "
            f"carries its own: drop --scale"
        )
    if args.scale is None:
        args.scale = 1 if restoration else 4
    if restoration and args.scale != 1:
        raise PrecisionError(
            f"--degraded checks scale-1 restoration models; got --scale {args.scale}"
        )
    if not restoration and args.scale < 2:
        raise PrecisionError(
            f"--scale must be >= 2, got {args.scale} (scale-1 models: --degraded DIR)"
        )
    if args.json is not None:  # before minutes of work
        inputs = [models.resolve_model(m) for m in args.models if _is_file_or_shipped(m)]
        imageio.check_output(args.json, overwrite=args.overwrite, inputs=inputs, what="JSON report")
    if restoration:
        if args.data is not None:
            raise PrecisionError("--data and --degraded exclude each other (--degraded: the sets)")
        data_dir = args.degraded
        args.sets = ev.degraded_set_names(data_dir, args.sets)  # fail before any model work
    else:
        data_dir = args.data if args.data is not None else ev.default_data_dir()
        args.sets = args.sets or list(DEFAULT_SETS)
        ev.find_sets(data_dir, args.sets)  # every missing set named before any model work
    # load every model first: a bad path fails before minutes of work
    loaded = [
        load_model(spec, args.scale, args.device, args.perturb, restoration=restoration)
        for spec in args.models
    ]
    cache: dict[int, list[Image]] = {}
    report: dict[str, Any] = {
        **record_header(command),
        "device": args.device,
        "torch": torch.__version__,
        "data": str(data_dir),
        "degraded": restoration,
        "sets": list(args.sets),
        "limit": args.limit,
        "crop": args.crop,
        "tol_db": args.tol_db,
        "models": [],
    }
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(args.device)
    all_ok = True
    for desc, info in loaded:
        scale = desc.scale
        if scale not in cache:
            cache[scale] = (
                load_degraded_images(data_dir, args.sets, args.limit, args.crop)
                if restoration
                else load_images(data_dir, args.sets, scale, args.limit, args.crop)
            )
        images = cache[scale]
        print(
            f"{info['model']}: {info['arch']} x{scale}, {info['params']:,} parameters, "
            f"{len(images)} images",
            file=sys.stderr,
            flush=True,
        )
        results = check_model(desc, images, args.device, args.precisions, args.tol_db)
        all_ok &= all(r.ok for r in results if r.skipped is None)
        report["models"].append({"info": info, "results": [vars(r) for r in results]})
        desc.to("cpu")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(format_table(report, args.tol_db))
    if args.json is not None:
        text = json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"
        imageio.write_text_atomic(args.json, text, overwrite=args.overwrite, what="JSON report")
        print(f"wrote {args.json}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
