"""``hmoe_meta``: one table (``hybridmoe_arch.META_FIELDS``) encodes it; ``hybridmoe.meta`` decodes
every layout version with range checks; options the tensors cannot tell survive a round trip."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from tiny_options import TINY, legacy_meta

import hybridmoe_arch as A
from hybridmoe import meta as M


def tiny(**options: Any) -> A.HybridMoE:
    return A.HybridMoE(**{**TINY, "scale": 2, **options})


def test_table_positions_are_distinct_and_cover_the_buffer() -> None:
    taken = [f.position + i for f in A.META_FIELDS for i in range(f.size)]
    assert sorted(taken) == list(range(1, A.META_LENGTH))


@pytest.mark.parametrize("shift", ["stage", "alternate", "none"])
def test_options_keys_cannot_tell_round_trip(shift: str) -> None:
    """shift, gate_norm and the flags are read from the meta alone (no key tells them)."""
    model = tiny(shift=shift, gate_norm=False, use_attn=False, noise=True, mlp_ratio=1.25)
    rebuilt = M.model_from_state_dict(model.state_dict())
    for name in ("shift", "gate_norm", "use_attn", "noise", "mlp_ratio"):
        assert rebuilt.hyperparameters[name] == model.hyperparameters[name], name


def test_decode_v3_gives_every_table_field() -> None:
    hp = tiny(top_k=3, base="bicubic").hyperparameters
    decoded = M.decode_meta(A.encode_meta(hp))
    assert set(decoded) == {f.name for f in A.META_FIELDS}
    assert decoded["top_k"] == 3 and decoded["base"] == "bicubic"
    assert decoded["hf_blocks"] == tuple(hp["hf_blocks"])


@pytest.mark.parametrize("version", [1, 2])
def test_legacy_layouts_decode(version: int) -> None:
    hp = tiny(stem_lk=True, refine_moe=True).hyperparameters
    decoded = M.decode_meta(legacy_meta(hp, version))
    assert decoded["stem_lk"] and decoded["refine_moe"] and decoded["shift"] == "stage"
    assert ("num_experts" in decoded) == (version == 2)


def test_legacy_unknown_flag_bits_are_refused() -> None:
    values = legacy_meta(tiny().hyperparameters, 2)
    values[9] |= 16
    with pytest.raises(M.CheckpointError, match="unknown bits"):
        M.decode_meta(values)


def test_newer_layout_is_refused_with_the_fix() -> None:
    values = A.encode_meta(tiny().hyperparameters)
    values[0] = A.META_VERSION + 1
    with pytest.raises(M.CheckpointError, match="newer"):
        M.decode_meta(values)


@pytest.mark.parametrize(("version", "shown"), [(3 + 2**24, "16777219"), (3e300, r"3e\+300")])
def test_a_damaged_version_field_is_not_taken_for_a_newer_layout(
    version: float, shown: str
) -> None:
    """A flipped high bit of the version (or a float buffer of 3e300) was reported as a newer
    layout, telling the user to update the package, with all 301 digits of the number."""
    values = torch.tensor(A.encode_meta(tiny().hyperparameters), dtype=torch.float64)
    values[0] = version
    expected = rf"malformed .*\(version {shown}, {A.META_LENGTH} values\)"
    with pytest.raises(M.CheckpointError, match=expected):
        M.decode_meta(M.meta_values(values))


def _as_v3(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` with its meta in layout version 3 (no level and block counts)."""
    v3 = [f for f in A.META_FIELDS if f.since <= 3]
    values = sd["hmoe_meta"].tolist()[: 1 + sum(f.size for f in v3)]
    values[0] = 3
    return {**sd, "hmoe_meta": torch.tensor(values, dtype=torch.int32)}


def test_version_3_decodes_without_the_block_counts() -> None:
    hp = tiny(top_k=3).hyperparameters
    values = _as_v3({"hmoe_meta": torch.tensor(A.encode_meta(hp))})["hmoe_meta"].tolist()
    decoded = M.decode_meta(values)
    assert set(decoded) == {f.name for f in A.META_FIELDS if f.since <= 3}
    assert decoded["top_k"] == 3


@pytest.mark.parametrize(
    ("group", "name"),
    [("mid.", "mid_blocks"), ("dec1.", "dec_blocks"), ("lf2.", "enc_blocks")],
)
def test_a_file_without_a_group_of_blocks_is_refused(group: str, name: str) -> None:
    """Version 4 records the level and block counts: a state dict that lost every block of a
    group (which the keys alone cannot tell from a smaller network) is refused by name; a
    version-3 file has no record of them and loads as the smaller network it describes."""
    model = tiny(mid_blocks=1, enc_blocks=(1, 1, 1), dec_blocks=(1, 1))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(group)}
    with pytest.raises(M.CheckpointError, match=rf"hmoe_meta says {name}=.*group of blocks"):
        M.model_from_state_dict(sd)
    if name != "enc_blocks":  # an encoder level without blocks still has its fusion
        smaller = M.model_from_state_dict(_as_v3(sd))
        assert smaller.hyperparameters[name] != model.hyperparameters[name]


def test_the_level_count_is_recorded() -> None:
    model = tiny(levels=2)
    assert M.decode_meta(model.state_dict()["hmoe_meta"].tolist())["levels"] == 2
    sd = model.state_dict()
    sd["hmoe_meta"][A.META_FIELD["levels"].position] = 3
    with pytest.raises(M.CheckpointError, match="hmoe_meta says levels=3, the keys hold 2"):
        M.model_from_state_dict(sd)


def test_top_k_lives_in_one_place() -> None:
    """set_top_k changes the layers, the hyperparameters and the saved meta at once."""
    model = tiny(refine_moe=True)
    model.set_top_k(3)
    assert {m.top_k for m in model.moe_layers()} == {3} and model.hyperparameters["top_k"] == 3
    assert M.decode_meta(model.state_dict()["hmoe_meta"].tolist())["top_k"] == 3


def test_factories_show_every_option_with_the_variant_default() -> None:
    ctor = inspect.signature(A.HybridMoE.__init__).parameters
    for name, factory in A.FACTORIES.items():
        params = inspect.signature(factory).parameters
        assert list(params) == [p for p in ctor if p != "self"], name
        for option, value in A.VARIANTS.get(name, {}).items():
            assert params[option].default == value, (name, option)
    assert inspect.signature(A.hybridmoe_l).parameters["dim"].default == 256
    assert A.hybridmoe_nano(2, dim=8).hyperparameters["dim"] == 8
    with pytest.raises(TypeError, match="unknown_option"):
        A.hybridmoe_s(unknown_option=1)


def test_meta_tensor_is_int32_and_current() -> None:
    sd = tiny().state_dict()
    assert sd["hmoe_meta"].dtype == torch.int32 and int(sd["hmoe_meta"][0]) == A.META_VERSION


@pytest.mark.parametrize("version", [1, 2])
def test_legacy_in_ch_that_contradicts_the_stem_is_named(version: int) -> None:
    """Versions 1 and 2 stored in_ch; a value the stem contradicts is a CheckpointError that
    names both (it was a KeyError: the message read the value after removing it)."""
    model = tiny()
    values = legacy_meta(model.hyperparameters, version)
    values[2] = 1  # in_ch; the stem has 3
    sd = {**model.state_dict(), "hmoe_meta": torch.tensor(values, dtype=torch.int32)}
    with pytest.raises(M.CheckpointError, match="meta says in_ch=1, stem has 3"):
        M.model_from_state_dict(sd)


@pytest.mark.parametrize("levels", [1, 2])
def test_block_counts_of_unbuilt_levels_round_trip(levels: int) -> None:
    """The counts of levels not built were recorded as given, so with levels 1 or 2 and the
    default hf_blocks (2, 1, 0) the file was refused as damaged ("hmoe_meta says
    hf_blocks=(2, 1, 0), the keys hold (2, 0, 0)"). They are recorded as 0 now, and files
    written before that still load."""
    model = tiny(levels=levels, hf_blocks=(2, 1, 1), enc_blocks=(1, 1, 1), dec_blocks=(1, 1))
    hp = model.hyperparameters
    assert hp["hf_blocks"][levels:] == (0,) * (3 - levels) and hp["dec_blocks"][1] == 0
    assert M.model_from_state_dict(model.state_dict()).hyperparameters == hp
    sd = model.state_dict()  # as written before (layout 3): the unbuilt counts as given
    sd["hmoe_meta"] = torch.tensor(
        A.encode_meta({**hp, "hf_blocks": (2, 1, 1), "enc_blocks": (1, 1, 1)}), dtype=torch.int32
    )
    assert M.model_from_state_dict(_as_v3(sd)).hyperparameters == hp
