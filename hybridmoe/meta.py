"""Reading a HybridMoE state dict back into constructor options, with every value checked.

The network writes its ``hmoe_meta`` buffer from :data:`hybridmoe_arch.META_FIELDS`; this module
decodes it with the same table (layout versions 3 and 4) or with the positional layouts of
versions 1 and 2, completes the options from tensor shapes and key names, and checks the result
against the tensors before anything is allocated (:func:`model_from_state_dict`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import hybridmoe_arch as arch
from hybridmoe_arch import META_FIELD, META_FIELDS, META_VERSION, HybridMoE

__all__ = [
    "MAX_ABS_WEIGHT",
    "CheckpointError",
    "decode_meta",
    "model_from_state_dict",
    "options_from_state_dict",
    "unbacked",
]


class CheckpointError(ValueError):
    """A file or state dict that is not a loadable model, with the reason and the fix."""


META_LENGTHS = {
    1: 13,
    2: 17,
    **{v: 1 + sum(f.size for f in META_FIELDS if f.since <= v) for v in range(3, META_VERSION + 1)},
}
"""Number of values of each ``hmoe_meta`` layout version."""

MAX_ABS_WEIGHT = 1e4
"""Largest magnitude a HybridMoE tensor may hold: trained weights stay near 1, so a value far
beyond this (or NaN/Inf) means bytes of the file were damaged."""

_META_MAX_VALUES = 64  # a real hmoe_meta buffer has 13, 17, 22 or 29 values
_NEWEST_PLAUSIBLE_VERSION = 255  # a version field beyond this is damage, not a newer layout
_LEGACY_FLAGS = ("use_moe", "refine_moe", "use_hf", "use_attn")  # bits of value 9 (v1, v2)
_LEGACY_FLAGS2 = ("noise", "stem_lk")  # bits of value 10 (v1, v2)


def damaged(what: str) -> CheckpointError:
    """The error for a checkpoint whose content contradicts itself."""
    return CheckpointError(
        f"damaged HybridMoE checkpoint: {what}; the file is damaged or was edited"
    )


def unbacked(v: Tensor) -> str | None:
    """Why ``v`` is not a dense tensor whose values a file holds in full (None if it is): a
    nested, meta-device or sparse tensor, or an expanded view, would size a model by a shape
    the file holds no values for."""
    if v.is_nested:
        return "a nested tensor"
    shape = tuple(v.shape)
    if v.is_meta:
        return f"a meta-device tensor of shape {shape} (a shape without values)"
    if v.layout != torch.strided:
        return f"a {str(v.layout).removeprefix('torch.')} tensor of shape {shape}"
    stored = v.untyped_storage().nbytes() // v.element_size()
    if v.numel() > stored:
        return f"an expanded or overlapping view of shape {shape} ({stored} value(s) stored)"
    return None


def meta_values(meta: object) -> list[int]:
    """The integers of an ``hmoe_meta`` buffer (integral float buffers are accepted too)."""
    if not isinstance(meta, Tensor) or meta.dtype == torch.bool or meta.is_complex():
        kind = meta.dtype if isinstance(meta, Tensor) else type(meta).__name__
        raise damaged(f"'hmoe_meta' must be an integer tensor, got {kind}")
    if meta.numel() > _META_MAX_VALUES:
        real = ", ".join(str(n) for n in sorted(set(META_LENGTHS.values())))
        raise damaged(f"'hmoe_meta' holds {meta.numel()} values (a real one holds {real})")
    flat = meta.detach().reshape(-1).cpu()
    if flat.is_floating_point():
        flat = flat.double()
        if not bool(torch.isfinite(flat).all()) or not bool((flat == flat.round()).all()):
            raise damaged("'hmoe_meta' holds values that are not integers")
    return [int(v) for v in flat.tolist()]


def _bits(name: str, value: int, names: Sequence[str]) -> dict[str, int]:
    if value & ~((1 << len(names)) - 1):
        raise damaged(f"hmoe_meta flags field {name}={value:#x} has unknown bits set")
    return {n: (value >> i) & 1 for i, n in enumerate(names)}


def _legacy_raw(meta: list[int]) -> dict[str, Any]:
    """Stored values by field name from a version 1 or 2 buffer (positional, packed flags)."""
    raw: dict[str, Any] = dict(
        zip(
            ("scale", "in_ch", "top_k", "base", "freq_split", "global_mixer", "upsampler"),
            meta[1:8],
            strict=True,
        )
    )
    raw |= {"window_size": meta[8], "kernel_size": meta[11], "mlp_ratio": meta[12]}
    raw |= _bits("flags", meta[9], _LEGACY_FLAGS) | _bits("flags2", meta[10], _LEGACY_FLAGS2)
    raw["shift"] = 0  # "stage", the only schedule before version 3
    if meta[0] >= 2:
        raw["hf_blocks"], raw["num_experts"] = tuple(meta[13:16]), meta[16]
    return raw


def _raw(meta: list[int]) -> dict[str, Any]:
    """Stored values by field name (versions 3 and 4: read through :data:`META_FIELDS`)."""
    if meta[0] < 3:
        return _legacy_raw(meta)
    return {
        f.name: tuple(meta[f.position : f.position + f.size]) if f.size > 1 else meta[f.position]
        for f in META_FIELDS
        if f.since <= meta[0]
    }


def _value(name: str, stored: int) -> Any:
    """One stored value as the option it encodes, checked against its table range."""
    f = META_FIELD[name]
    if not f.low <= stored <= f.high:
        if f.choices:
            allowed = ", ".join(f"{i}={c}" for i, c in enumerate(f.choices))
            raise damaged(f"hmoe_meta field {name}={stored} is not one of {allowed}")
        raise damaged(f"hmoe_meta field {name}={stored} is outside its range {f.low}..{f.high}")
    if f.choices:
        return f.choices[stored]
    if (f.low, f.high) == (0, 1):
        return bool(stored)
    return stored / f.unit if f.unit != 1 else stored


def decode_meta(values: list[int]) -> dict[str, Any]:
    """The options an ``hmoe_meta`` buffer records (any layout version), each checked against
    its range; ``in_ch`` too for versions 1 and 2, which stored it."""
    version = values[0] if values else 0
    if META_VERSION < version <= _NEWEST_PLAUSIBLE_VERSION:
        raise CheckpointError(
            f"HybridMoE checkpoint layout version {version} is newer than this hybridmoe_arch.py "
            f"understands (up to {META_VERSION}); update the hybridmoe package"
        )
    if version not in META_LENGTHS or len(values) != META_LENGTHS[version]:
        shown = version if abs(version) < 10**9 else f"{version:.3g}"  # a float buffer's 1e300
        raise CheckpointError(
            f"malformed HybridMoE 'hmoe_meta' buffer (version {shown}, {len(values)} values); "
            f"the checkpoint is damaged"
        )
    options: dict[str, Any] = {}
    for name, stored in _raw(values).items():
        if name == "in_ch":
            options[name] = stored
        elif isinstance(stored, tuple):  # the block counts per level
            options[name] = tuple(_value(name, b) for b in stored)
        else:
            options[name] = _value(name, stored)
    if options["kernel_size"] % 2 == 0:
        raise damaged(
            f"hmoe_meta field kernel_size={options['kernel_size']} is even (it must be odd)"
        )
    return options


def _is_index(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` accepts superscripts, which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def _seq_len(sd: dict[str, Tensor], prefix: str) -> int:
    """Number of blocks stored under ``prefix`` (``lf1.0.…``, ``lf1.1.…``); they must be
    numbered 0..n-1, so the count is bounded by the number of keys."""
    idx = {
        int(k[len(prefix) :].split(".", 1)[0])
        for k in sd
        if k.startswith(prefix) and _is_index(k[len(prefix) :].split(".", 1)[0])
    }
    if idx != set(range(len(idx))):
        shown = ", ".join(str(i) for i in sorted(idx)[:6])
        raise damaged(f"the blocks under '{prefix}' are numbered {shown}…, not 0..{len(idx) - 1}")
    return len(idx)


def _stem(sd: dict[str, Tensor]) -> tuple[int, int]:
    """``(dim, in_ch)`` from the stem convolution."""
    stem = sd["stem.weight"]
    if not isinstance(stem, Tensor) or stem.ndim != 4 or tuple(stem.shape[2:]) != (3, 3):
        shape = tuple(stem.shape) if isinstance(stem, Tensor) else type(stem).__name__
        raise damaged(f"'stem.weight' has shape {shape}, expected (dim, in_ch, 3, 3)")
    dim, in_ch = int(stem.shape[0]), int(stem.shape[1])
    if dim < 4:
        raise damaged(f"'stem.weight' gives dim={dim} (at least 4)")
    return dim, in_ch


def _experts(sd: dict[str, Tensor], recorded: int | None) -> int:
    """The expert count: recorded in the meta (versions 2, 3) or read from the routers."""
    routers = {int(v.shape[0]) for k, v in sd.items() if k.endswith(".router") and v.ndim}
    if len(routers) > 1:
        raise damaged(f"the MoE routers disagree on the expert count ({sorted(routers)})")
    experts = recorded if recorded is not None else next(iter(routers), 4)
    f = META_FIELD["num_experts"]
    if not f.low <= experts <= f.high:
        raise damaged(f"num_experts={experts} is outside its range {f.low}..{f.high}")
    if routers and routers != {experts}:
        raise CheckpointError(
            f"inconsistent HybridMoE checkpoint: meta says {experts} experts, the router "
            f"has {next(iter(routers))}"
        )
    return experts


def _from_keys(sd: dict[str, Tensor]) -> dict[str, Any]:
    """The options that key names and block counts tell."""

    def any_key(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in sd)

    gated_norm = any_key(r"^((lf1|dec1)\.\d+\.norm1|hf\d\.\d+\.norm)\.weight$")
    gated_any = any_key(r"^((lf1|dec1)\.\d+\.pw1|hf\d\.\d+\.mix)\.weight$")
    return {
        "levels": 1 + int("lf_down1.weight" in sd) + int("lf_down2.weight" in sd),
        "conv_block": "rep3"
        if any_key(r"^(lf1|dec1)\.\d+\.conv\.")
        else "rep3res"
        if any_key(r"^(lf1|dec1)\.\d+\.branch\.")
        else "gated",
        "hf_block": "rep3" if any_key(r"^hf\d\.\d+\.conv\.") else "plk",
        "gate_norm": gated_norm or not gated_any,  # versions 1, 2 (version 3 records it)
        "enc_blocks": (_seq_len(sd, "lf1."), _seq_len(sd, "lf2."), _seq_len(sd, "lf3.")),
        "hf_blocks": (_seq_len(sd, "hf1."), _seq_len(sd, "hf2."), _seq_len(sd, "hf3.")),
        "mid_blocks": _seq_len(sd, "mid."),
        "dec_blocks": (_seq_len(sd, "dec1."), _seq_len(sd, "dec2.")),
        "texture_head": "head.pw.weight" in sd,
        "deploy": any(k.endswith(".fused.weight") for k in sd),
    }


def options_from_state_dict(sd: dict[str, Tensor]) -> dict[str, Any]:
    """Every constructor option of the model ``sd`` belongs to, from ``hmoe_meta``, tensor
    shapes and key names, each checked against its range and the tensors."""
    recorded = decode_meta(meta_values(sd["hmoe_meta"]))
    dim, in_ch = _stem(sd)
    recorded_in_ch = recorded.pop("in_ch", in_ch)  # versions 1 and 2 stored it
    if recorded_in_ch != in_ch:
        raise CheckpointError(
            f"inconsistent HybridMoE checkpoint: meta says in_ch={recorded_in_ch}, stem has {in_ch}"
        )
    keys = _from_keys(sd)
    levels = keys["levels"]  # counts of levels not built: 0 in the keys, as given in older meta
    if (
        "hf_blocks" in recorded
        and recorded["use_hf"]
        and recorded["hf_blocks"][:levels] != keys["hf_blocks"][:levels]
    ):
        raise damaged(
            f"hmoe_meta says hf_blocks={recorded['hf_blocks']}, the keys hold {keys['hf_blocks']}"
        )
    for name in ("levels", "enc_blocks", "mid_blocks", "dec_blocks"):  # version 4 on
        if name in recorded and recorded[name] != keys[name]:
            raise damaged(
                f"hmoe_meta says {name}={recorded[name]}, the keys hold {keys[name]} "
                f"(a group of blocks is missing or was added)"
            )
    options = {**keys, **recorded, "dim": dim, "in_ch": in_ch}
    options["num_experts"] = _experts(sd, recorded.get("num_experts"))
    if not 1 <= options["top_k"] <= options["num_experts"]:
        raise damaged(
            f"hmoe_meta field top_k={options['top_k']} is outside its range "
            f"1..{options['num_experts']}"
        )
    return options


def _shape_fits(stored: torch.Size, expected: torch.Size) -> bool:
    """Equal shapes, or a per-channel parameter stored as (1, C, 1, 1) where the model holds
    (C, 1, 1) (the network loads it reshaped)."""
    return stored == expected or (
        len(stored) == len(expected) + 1 and stored[0] == 1 and stored[1:] == expected
    )


def check_layout(options: dict[str, Any], sd: dict[str, Tensor]) -> None:
    """Build the configured model on the ``meta`` device (no memory) and require the state
    dict to hold exactly its tensors, with their shapes."""
    try:
        with torch.device("meta"):
            expected = HybridMoE(**options).state_dict()
    except ValueError as e:
        raise damaged(f"its options do not form a valid model ({e})") from e
    current = {k: arch.current_key(k) for k in sd}
    twice = [f"{k} and {new}" for k, new in current.items() if new != k and new in sd]
    if twice:
        raise damaged(f"it holds tensors under an old and the current name: {', '.join(twice)}")
    sd = {current[k]: v for k, v in sd.items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and k != "hmoe_meta" and not _shape_fits(sd[k].shape, v.shape)
    ]
    problems = [
        f"{label}: {', '.join(items[:4])}{' …' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if items
    ]
    if problems:
        raise damaged(
            "the tensors do not fit the model its hmoe_meta describes (" + "; ".join(problems) + ")"
        )


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a HybridMoE weight may be stored in."""


def check_values(sd: dict[str, Tensor]) -> None:
    """Every floating tensor finite and within :data:`MAX_ABS_WEIGHT`."""
    for k, v in sd.items():
        if not v.is_floating_point() or not v.numel():
            continue
        if not bool(torch.isfinite(v).all()):
            raise damaged(f"'{k}' holds NaN or infinite values")
        peak = float(v.detach().abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise damaged(f"'{k}' holds a value of magnitude {peak:.3g} (above {MAX_ABS_WEIGHT:g})")


def model_from_state_dict(state_dict: dict[str, Tensor]) -> HybridMoE:
    """Build the :class:`HybridMoE` that ``state_dict`` belongs to (weights not loaded).

    Every option is recovered from tensor shapes, key names and the versioned ``hmoe_meta``
    buffer, checked against its range and the tensors, and the tensors must be finite and of
    plausible magnitude, before the model is allocated; anything else raises
    :class:`CheckpointError`.
    """
    sd = state_dict
    if "hmoe_meta" not in sd or "stem.weight" not in sd:
        raise CheckpointError("not a HybridMoE state dict (no 'hmoe_meta' / 'stem.weight' keys)")
    if not all(isinstance(v, Tensor) for v in sd.values()):
        raise damaged("it holds entries that are not tensors")
    for k, v in sd.items():  # a cast on loading would hide NaN in a complex or huge integers
        if problem := unbacked(v):  # a tiny file would size a huge model
            raise damaged(f"'{k}' is {problem}")
        if k != "hmoe_meta" and v.dtype not in WEIGHT_DTYPES:
            raise damaged(
                f"'{k}' has dtype {v.dtype}; the weights must be float16/32/64 or bfloat16"
            )
    options = options_from_state_dict(sd)
    check_layout(options, sd)
    check_values(sd)
    return HybridMoE(**options)
