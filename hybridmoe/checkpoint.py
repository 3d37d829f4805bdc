"""The one way this project reads model files: safely, with errors that name the fix.

:func:`read_state_dict` deserializes only tensors and plain containers (TorchScript archives and
pickles of other objects are refused before any of their content is loaded: nothing in a file
runs); :func:`load_checkpoint` hands the result to spandrel with HybridMoE registered and returns
an ``ImageModelDescriptor`` in eval mode.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridmoe.meta import CheckpointError, unbacked
from hybridmoe.models import resolve_model
from hybridmoe.spandrel_arch import register_spandrel

__all__ = ["TRAINING_STATE_KEYS", "CheckpointError", "load_checkpoint", "read_state_dict"]

_CHECKPOINT_EXTS = (".pth", ".pt", ".ckpt", ".safetensors")

TRAINING_STATE_KEYS = ("iter", "optimizers", "schedulers")
"""Top-level keys of a traiNNer-redux training state (``training_states/<iter>.state``)."""

_TORCHSCRIPT_RECORDS = ("constants.pkl", "bytecode.pkl")
_TORCHSCRIPT_FOLDERS = ("code/", ".data/ts_code/")


_NON_WEIGHT_DTYPES = tuple(
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
)
"""Dtypes a state dict of a supported model never holds (besides complex ones)."""

_BOILERPLATE = (
    "Weights only load failed",
    "Please file an issue",
    "Check the documentation",
    "Error(s) in loading state_dict",
)


def _error_detail(e: BaseException) -> str:
    """The informative line of an exception message (torch's weights-only errors wrap it in
    paragraphs of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_BOILERPLATE)]
    return (useful or lines or [""])[0][:300]


def _unreadable(p: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{p}: cannot read the checkpoint ({type(e).__name__}: {_error_detail(e)}); the file is "
        f"corrupt, truncated or not a PyTorch/safetensors model"
    )


def _training_state_error(p: Path) -> CheckpointError:
    """Name what a traiNNer-redux ``.state`` file is and the model file to load instead."""
    models = p.parent.parent / "models"
    found = sorted(
        str(f)
        for f in models.glob(f"net_g*_{p.stem}.*")
        if p.parent.name == "training_states" and f.suffix.lower() in _CHECKPOINT_EXTS
    )
    instead = (
        " or ".join(found[:2])
        if found
        else "the network checkpoint of the same run, experiments/<name>/models/"
        "net_g_ema_<iter>.safetensors (or net_g_<iter>.safetensors / .pth)"
    )
    return CheckpointError(
        f"{p}: this is a traiNNer-redux training state (iteration counter, optimizer and "
        f"scheduler state for resuming training), not a model: it holds no network weights. "
        f"Load {instead} instead"
    )


def _checked_path(path: str | os.PathLike[str]) -> Path:
    p = resolve_model(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a model file; give the checkpoint file")
    if not p.is_file():
        if p.is_symlink():  # is_file follows the link: a loop or a missing target
            raise CheckpointError(
                f"{p} is a symbolic link that leads to no file (a loop, or its target is "
                "gone); give the checkpoint file itself"
            )
        raise CheckpointError(f"model file not found: {p}")
    if p.suffix.lower() == ".state":
        raise _training_state_error(p)
    if p.suffix.lower() not in _CHECKPOINT_EXTS:
        raise CheckpointError(
            f"{p.name}: unsupported model file type {p.suffix!r}; expected one of "
            + ", ".join(_CHECKPOINT_EXTS)
        )
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty (0 bytes); re-download or re-export it")
    return p


MAX_SAFETENSORS_HEADER = 16 * 2**20
"""Largest safetensors JSON header read (bytes): about 150,000 tensor entries; a network's
header is a few hundred KB at most, and a header of millions of empty entries would take
gigabytes of memory to parse before anything could be refused."""


def _file_kind(p: Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save, or TorchScript) or ``"pickle"``, by content."""
    try:
        with p.open("rb") as f:
            head = f.read(9)
    except OSError as e:  # no permission, an I/O error: the file may be fine
        raise CheckpointError(
            f"{p}: cannot open it ({e.strerror or e}); check that it is readable by this user"
        ) from e
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte header length, then the JSON header
        header = int.from_bytes(head[:8], "little")
        if header > MAX_SAFETENSORS_HEADER:
            raise CheckpointError(
                f"{p}: its safetensors header declares {header:,} bytes, more than the "
                f"{MAX_SAFETENSORS_HEADER // 2**20} MiB a network's header needs (a few hundred "
                "KB); the file is damaged or not a model, so it is not parsed"
            )
        return "safetensors"
    if head[:2] == b"PK":  # a zip's byte 8 is its compression method (0), never "{"
        return "zip"
    return "pickle"


def _refuse_torchscript(p: Path) -> None:
    """Look at the member list of a zip checkpoint (no member is read) and refuse TorchScript
    archives, whose loading runs code stored in the file, and compressed members, which
    torch.save never writes and whose loading would inflate them in memory."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
    except Exception as e:  # BadZipFile, truncated directories, bad offsets
        raise _unreadable(p, e) from e
    names = [i.filename for i in infos]
    records = {n.split("/", 1)[1] if "/" in n else n for n in names}
    script = sorted(
        r for r in records if r in _TORCHSCRIPT_RECORDS or r.startswith(_TORCHSCRIPT_FOLDERS)
    )
    if script:
        raise CheckpointError(
            f"{p}: this is a TorchScript archive (it holds {', '.join(script[:3])}); loading one "
            f"runs code stored in the file, so it is refused. Use the model's state dict instead: "
            f"a .safetensors file, or a .pth/.ckpt written with torch.save(model.state_dict())"
        )
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed or sum(i.file_size for i in infos) > p.stat().st_size:
        what = ", ".join(packed[:2]) or "sizes beyond the file's"
        raise CheckpointError(
            f"{p}: the zip archive holds compressed members ({what}); torch.save writes none, "
            f"and loading would inflate them in memory (a zip bomb), so it is refused. Save the "
            f"weights with torch.save or as .safetensors"
        )
    if "data.pkl" not in records:
        raise CheckpointError(
            f"{p}: a zip archive without data.pkl is not a torch.save checkpoint; the file is "
            f"corrupt or not a PyTorch/safetensors model"
        )


def _deserialize(p: Path) -> object:
    """The file's content as tensors and plain containers only (safetensors, or ``torch.load``
    with ``weights_only=True`` after the TorchScript check): no code from the file runs."""
    import pickle

    kind = _file_kind(p)
    if kind == "zip":
        _refuse_torchscript(p)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        with p.open("rb") as f:  # by content: torch.load reads a '.safetensors' path as one
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{p}: the file holds Python objects other than tensors and plain containers "
                f"(it refers to {found.group(1)}); loading them could run code from the file, so "
                f"it is refused. Save the weights with torch.save(model.state_dict()) or as "
                f".safetensors"
            ) from e
        raise _unreadable(p, e) from e
    except Exception as e:  # zip, pickle, safetensors and storage errors: an unreadable file
        raise _unreadable(p, e) from e


MAX_WRAPPERS = 4
"""How many nested wrapper dicts (``params_ema``, ``state_dict``, a single key, ...) are
unwrapped around the weights."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read the state dict of a ``.safetensors``, ``.pth``, ``.pt`` or ``.ckpt`` file safely.

    Only tensors and plain containers are deserialized: TorchScript archives and pickles of
    other Python objects are refused before any of their content is loaded, so nothing in the
    file runs. Wrappers are unwrapped as spandrel does (``params_ema`` before ``params``, a
    ``module.`` prefix, …). Hand the result to ``spandrel.ModelLoader().load_from_state_dict``
    or :func:`hybridmoe.meta.model_from_state_dict`.

    Raises :class:`CheckpointError` with the reason and a fix for missing, empty, truncated,
    corrupt, unsafe or unsupported files and for traiNNer-redux training states.
    """
    from spandrel import canonicalize_state_dict

    p = _checked_path(path)
    data = _deserialize(p)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{p}: the file holds a {type(data).__name__}, not a state dict (names -> tensors)"
        )
    if all(k in data for k in TRAINING_STATE_KEYS):
        raise _training_state_error(p)
    try:  # wrappers may nest ({"net_g": {"params_ema": ...}}): unwrap until nothing changes
        sd = data
        for _ in range(MAX_WRAPPERS):
            inner = canonicalize_state_dict(sd)
            if inner is sd or not isinstance(inner, dict):
                break
            sd = inner
    except (AttributeError, TypeError) as e:  # e.g. keys that are not names
        raise CheckpointError(
            f"{p}: the file is not a model state dict (names -> tensors): {_error_detail(e)}"
        ) from None
    if not isinstance(sd, dict) or not any(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: the checkpoint holds no tensors (no model weights)")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise CheckpointError(
                f"{p}: entry {k!r} of the state dict is a {type(v).__name__}, not a tensor; "
                f"the file is not a model state dict"
            )
        if problem := unbacked(v):
            raise CheckpointError(
                f"{p}: '{k}' is {problem}; a model built from its shape would allocate "
                f"memory the file does not hold, so the file is refused. Save the weights "
                f"themselves as dense tensors: {{k: v.to_dense().contiguous() for k, v in "
                f"state_dict.items()}}"
            )
        if v.is_complex() or v.dtype in _NON_WEIGHT_DTYPES:
            raise CheckpointError(
                f"{p}: '{k}' has dtype {v.dtype}, which no supported model stores; the file is "
                f"damaged or not a model state dict"
            )
        if v.numel() == 0 and v.dim() > 1:
            raise CheckpointError(
                f"{p}: '{k}' has shape {tuple(v.shape)} and holds no values; a model read from "
                f"its shape would be built without weights for it, so the file is refused"
            )
    return sd


def _checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that can hold the model, or :class:`CheckpointError`
    naming the problem (not a device name, a backend this machine lacks, a GPU index beyond
    the visible ones)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(
            f"device {str(device)!r} is not a PyTorch device name; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(
                f"device {str(device)!r} requested but CUDA is not available; use 'cpu'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CheckpointError(
                f"device {str(device)!r} requested but only {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1})"
            )
    elif dev.type == "meta":
        raise CheckpointError("device 'meta' holds no weights; use 'cpu' or 'cuda'")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except RuntimeError as e:
            raise CheckpointError(
                f"device {str(device)!r} is not available on this machine ({_error_detail(e)}); "
                f"use 'cpu' or 'cuda'"
            ) from None
    return dev


def _dry_run(p: Path, sd: dict[str, Tensor]) -> None:
    """Build the model spandrel detects on the meta device (no memory) and load ``sd`` into it:
    spandrel sizes a network from a few tensor shapes before it compares the rest, so a small
    file could make it allocate gigabytes; a size mismatch found here refuses the file first.
    HybridMoE checks its own layout before allocating, and any other failure here is left to
    the real load."""
    from spandrel import ModelLoader

    if "hmoe_meta" in sd:
        return
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op"
            ModelLoader(device="meta").load_from_state_dict(sd)
    except RuntimeError as e:
        mismatch = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        if mismatch:
            raise CheckpointError(
                f"{p}: the tensor shapes imply another network than the file holds "
                f"({mismatch[0][:300]}); the file is damaged or was edited"
            ) from None
    except Exception:  # the real load reports what is wrong
        pass


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """Load any spandrel-supported checkpoint (HybridMoE included), given as a path or as the
    name of a shipped model (``2x_HybridMoE_S``), as an ``ImageModelDescriptor`` in eval mode.

    The file is read by :func:`read_state_dict` (tensors only; TorchScript archives and other
    pickled objects are refused unread), then detected and built by spandrel's ``ModelLoader``.
    Raises :class:`CheckpointError` with the reason and a fix for missing, empty, truncated,
    corrupt, unsafe or unsupported files.
    """
    from spandrel import ModelLoader, UnsupportedModelError

    p = _checked_path(path)
    dev = _checked_device(device)
    sd = read_state_dict(p)
    register_spandrel()
    _dry_run(p, sd)
    try:
        desc = ModelLoader(device=dev).load_from_state_dict(sd)
    except UnsupportedModelError as e:
        keys = ", ".join(list(sd)[:5])
        firsts = {k.split(".", 1)[0] for k in sd if "." in k}
        prefix = next(iter(firsts)) + "." if len(firsts) == 1 and len(sd) > 1 else None
        hint = (
            f"; every key starts with '{prefix}', as in a training framework's checkpoint "
            f"(e.g. Lightning): save the network's own state_dict() instead"
            if prefix and all(k.startswith(prefix) for k in sd)
            else ""
        )
        raise CheckpointError(
            f"{p}: no known architecture matches this state dict (first keys: {keys}); it is "
            f"neither a HybridMoE checkpoint nor a model spandrel supports{hint}"
        ) from e
    except CheckpointError as e:
        raise CheckpointError(f"{p}: {e}") from e
    except (RuntimeError, KeyError, IndexError, ValueError) as e:
        kind = "a HybridMoE" if "hmoe_meta" in sd else "a known"
        raise CheckpointError(
            f"{p}: the state dict looks like {kind} model but does not load "
            f"({_error_detail(e)}); the file is damaged or was edited"
        ) from e
    desc.model.eval()
    return desc
