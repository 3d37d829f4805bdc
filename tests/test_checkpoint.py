"""Checkpoint files are read safely: nothing stored in a model file runs, damaged ``hmoe_meta``
buffers are refused before anything is allocated, training states are named as such, and
damaged files fail with :class:`CheckpointError` only.

The malicious file is a real TorchScript archive: a scripted module whose ``__setstate__``
calls ``torch.from_file(MARKER, shared=True, size=8)`` (which creates the marker file) and that
also carries the real weights of the pretrained 2x nano model, so that loaders which hand it to
``torch.jit.load`` run the payload and then upscale normally.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from tiny_options import TINY
from torch import nn

import hybridmoe_arch as A
from hybridmoe import checkpoint as C
from hybridmoe import cli
from hybridmoe import meta as M
from hybridmoe.models import perturb
from hybridmoe.spandrel_arch import register_spandrel

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = ROOT / "experiments" / "pretrained_models" / "2x_HybridMoE_Nano.safetensors"
SET5 = ROOT / "tests" / "data" / "Set5"
LR_IMAGE = SET5 / "LR_bicubic" / "X2" / "babyx2.png"


# ------------------------------------------------------------------ the malicious archive


class _Payload(nn.Module):
    """Runs ``torch.from_file(target, shared=True)`` when its archive is loaded."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.marker = torch.zeros(8)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.marker = torch.from_file(self.target, shared=True, size=8)  # creates the file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.marker.sum() * 0


class _Carrier(nn.Module):
    """A module tree whose state dict is exactly ``sd``, plus the payload (which adds no key)."""

    def __init__(self, sd: dict[str, torch.Tensor], target: str) -> None:
        super().__init__()
        self.payload = _Payload(target)
        for key, value in sd.items():
            *path, leaf = key.split(".")
            mod: nn.Module = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, nn.Module())
                mod = getattr(mod, part)
            if value.is_floating_point():
                mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
            else:
                mod.register_buffer(leaf, value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.payload(x)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The archive as ``.pt``, ``.pth`` and ``.ckpt``, and the marker path its payload creates."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "created_by_payload"
    sd = safetensors.torch.load_file(str(PRETRAINED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        scripted = torch.jit.script(_Carrier(sd, str(marker)))
    files = {"marker": marker, "pt": folder / "model.pt"}
    scripted.save(str(files["pt"]))
    for ext in ("pth", "ckpt"):
        files[ext] = folder / f"model.{ext}"
        shutil.copyfile(files["pt"], files[ext])
    assert not marker.exists()
    return files


@pytest.fixture
def marker(evil: dict[str, Path]) -> Iterator[Path]:
    """The payload's marker file, absent before and removed after each test."""
    evil["marker"].unlink(missing_ok=True)
    yield evil["marker"]
    evil["marker"].unlink(missing_ok=True)


def test_payload_is_real(evil: dict[str, Path], marker: Path) -> None:
    """The archive is a working exploit: ``torch.jit.load`` creates the marker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(evil["pt"]))
    assert marker.exists()


def test_spandrel_load_from_file_runs_the_payload(evil: dict[str, Path], marker: Path) -> None:
    """What the README warns about: spandrel's own ``ModelLoader.load_from_file`` hands a
    ``.pt`` file to ``torch.jit.load`` (payload runs) and then upscales normally."""
    from spandrel import ModelLoader

    register_spandrel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        desc = ModelLoader().load_from_file(evil["pt"])
    assert marker.exists()
    assert desc.architecture.id == "HybridMoE" and desc.scale == 2
    assert desc.model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)


def _entry_points(tmp: Path) -> dict[str, Callable[[Path], Any]]:
    """Every loader of the project, as ``f(model_path)``; each raises or returns an exit
    status."""
    out = tmp / "out"
    data = ["--data", str(ROOT / "tests" / "data"), "--sets", "Set5", "--limit", "1"]
    return {
        "read_state_dict": C.read_state_dict,
        "load_checkpoint": C.load_checkpoint,
        "upscale": lambda p: cli.main(["upscale", str(p), str(LR_IMAGE), str(out / "x.png")]),
        "evaluate": lambda p: cli.main(["evaluate", str(p), *data]),
        "fuse": lambda p: cli.main(["fuse", str(p), str(out / "fused.safetensors")]),
        "export-onnx": lambda p: cli.main(["export-onnx", str(p), str(out / "m.onnx")]),
        "check-precision": lambda p: cli.main(["check-precision", str(p), *data]),
        "moe-usage": lambda p: cli.main(["moe-usage", str(p), str(LR_IMAGE)]),
    }


ENTRY_POINTS = tuple(_entry_points(Path()).keys())


@pytest.mark.parametrize("ext", ["pt", "pth", "ckpt"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_refuses_torchscript(  # noqa: PLR0917 (fixtures)
    entry: str,
    ext: str,
    evil: dict[str, Path],
    marker: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The archive is refused, with a message naming TorchScript, before it is deserialized:
    the marker file is never created and no output is written."""
    load = _entry_points(tmp_path)[entry]
    try:
        status = load(evil[ext])
    except (C.CheckpointError, SystemExit) as e:
        message = str(e)
    else:
        assert isinstance(status, int) and status != 0, f"{entry} accepted the archive"
        message = capsys.readouterr().err
    assert "TorchScript" in message and "refused" in message, message
    assert not marker.exists(), f"{entry} ran code from the model file"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_weights_only_guards_behind_the_archive_check(
    evil: dict[str, Path], marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the member-name check, ``torch.load(weights_only=True)`` still refuses the
    archive unexecuted (two independent guards)."""
    monkeypatch.setattr(C, "_refuse_torchscript", lambda p: None)
    with (
        pytest.warns(UserWarning, match="TorchScript"),
        pytest.raises(C.CheckpointError, match="cannot read"),
    ):
        C.read_state_dict(evil["pth"])
    assert not marker.exists()


class _Touch:
    """A pickled object whose unpickling creates a file (``Path.touch``)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pickled_objects_are_refused_unexecuted(zipped: bool, tmp_path: Path) -> None:
    target = tmp_path / "touched"
    path = tmp_path / "model.pth"
    sd = {"w": torch.ones(2), "x": _Touch(target)}
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(C.CheckpointError, match="Python objects other than tensors") as info:
        C.load_checkpoint(path)
    assert "refused" in str(info.value) and path.name in str(info.value)
    assert "(it refers to getattr)" in str(info.value)  # Path.touch pickles as getattr
    assert "weights_only" not in str(info.value)  # not torch's advice to turn the check off
    assert not target.exists()


def test_a_whole_pickled_module_is_refused_by_its_class_name(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(C.CheckpointError, match=r"refers to torch\.nn\.modules\.linear\.Linear"):
        C.load_checkpoint(path)


# ------------------------------------------------------------ plain state dicts still load


def _tiny(**options: Any) -> A.HybridMoE:
    model = A.HybridMoE(**{**TINY, "scale": 2, **options})
    perturb(model, 0.05, seed=3)
    return model.eval()


def _save(sd: Any, path: Path, **kwargs: Any) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(sd, str(path), metadata=kwargs.get("metadata"))
    else:
        torch.save(sd, path, **kwargs)
    return path


@pytest.mark.parametrize(
    "form",
    [
        "safetensors-metadata",
        "pth-params-metadata",
        "pth-params-ema",
        "pth-bare",
        "pth-legacy",
        "ckpt",
        "pt-state-dict",
        "safetensors-named-pth",
    ],
)
def test_state_dict_forms_load(form: str, tmp_path: Path) -> None:
    """Every plain form loads with identical outputs (the format is told by content)."""
    model = _tiny()
    other = _tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    meta = json.dumps(model.hyperparameters)
    path = {
        "safetensors-metadata": lambda: _save(
            sd, tmp_path / "m.safetensors", metadata={"metadata": meta}
        ),
        "pth-params-metadata": lambda: _save(
            {"metadata": json.loads(meta), "params": sd}, tmp_path / "m.pth"
        ),
        "pth-params-ema": lambda: _save(
            {"params": other.state_dict(), "params_ema": sd}, tmp_path / "m.pth"
        ),
        "pth-bare": lambda: _save(sd, tmp_path / "m.pth"),
        "pth-legacy": lambda: _save(sd, tmp_path / "m.pth", _use_new_zipfile_serialization=False),
        "ckpt": lambda: _save({"state_dict": sd}, tmp_path / "m.ckpt"),
        "pt-state-dict": lambda: _save(sd, tmp_path / "m.pt"),
        "safetensors-named-pth": lambda: _save(sd, tmp_path / "m.safetensors").rename(
            tmp_path / "m.pth"
        ),
    }[form]()
    desc = C.load_checkpoint(path)
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(desc.model(x), model(x))
    assert C.read_state_dict(path).keys() == sd.keys()


# ------------------------------------------------------------------- the hmoe_meta buffer


def _with_meta(sd: dict[str, torch.Tensor], field: str, value: int) -> dict[str, torch.Tensor]:
    meta = sd["hmoe_meta"].clone()
    meta[A.META_FIELD[field].position] = value
    return {**sd, "hmoe_meta": meta}


BAD_META = [
    ("base", -1, "base=-1"),  # was silently read as BASE_CHOICES[-1] == "none"
    ("base", 3, "base=3"),
    ("freq_split", -1, "freq_split=-1"),
    ("global_mixer", -2, "global_mixer=-2"),
    ("upsampler", 2, "upsampler=2"),
    ("scale", 0, "scale=0"),
    ("scale", 1000, "scale=1000"),
    ("window_size", 0, "window_size=0"),
    ("window_size", 65, "window_size=65"),
    ("window_size", 100_000, "window_size=100000"),
    ("kernel_size", 10_001, "kernel_size=10001"),
    ("kernel_size", 6, "even"),
    ("kernel_size", 1, "kernel_size=1"),
    ("mlp_ratio", 0, "mlp_ratio=0"),
    ("mlp_ratio", 2_000_000, "mlp_ratio=2000000"),
    ("use_moe", 2, "use_moe=2"),
    ("gate_norm", -1, "gate_norm=-1"),
    ("shift", 3, "shift=3"),
    ("top_k", 0, "top_k=0"),
    ("top_k", 4, "top_k=4"),  # 3 experts
    ("num_experts", 0, "num_experts=0"),
    ("num_experts", 10**6, "num_experts=1000000"),
    ("num_experts", 5, "5 experts"),  # the routers hold 3
    ("hf_blocks", 10**6, "hf_blocks=1000000"),
    ("hf_blocks", 2, "hf_blocks=(2, 1, 1)"),  # the keys hold (1, 1, 1)
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_META)
def test_bad_meta_is_refused(field: str, value: int, words: str) -> None:
    sd = _with_meta(_tiny().state_dict(), field, value)
    with pytest.raises(C.CheckpointError, match="HybridMoE") as info:
        M.model_from_state_dict(sd)
    assert words in str(info.value), str(info.value)


def test_bad_meta_allocates_nothing() -> None:
    """Absurd sizes fail on their range check: no gigabyte allocation, no long build."""
    sd = _tiny().state_dict()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for field, value in [
        ("kernel_size", 10_001),
        ("window_size", 1 << 30),
        ("scale", 1 << 20),
        ("mlp_ratio", 1 << 30),
        ("num_experts", 1 << 20),
        ("hf_blocks", 1 << 30),
    ]:
        with pytest.raises(C.CheckpointError):
            M.model_from_state_dict(_with_meta(sd, field, value))
    assert time.perf_counter() - start < 5
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 200


def test_meta_limits_are_inclusive() -> None:
    """The largest window still loads (it changes no tensor shape)."""
    sd = _with_meta(_tiny().state_dict(), "window_size", A.META_FIELD["window_size"].high)
    assert M.model_from_state_dict(sd).hyperparameters["window_size"] == 64


def test_meta_must_match_the_tensors() -> None:
    """An in-range kernel size that the tensors do not have is refused with the keys named."""
    sd = _with_meta(_tiny().state_dict(), "kernel_size", 7)
    with pytest.raises(C.CheckpointError, match=r"shape: .*\(expected") as info:
        M.model_from_state_dict(sd)
    assert "hf1.0" in str(info.value) and "damaged" in str(info.value)


def test_a_tensor_stored_in_another_shape_of_the_same_size_is_refused() -> None:
    """Each tensor must have its own shape, not only its number of values: a weight stored
    transposed would otherwise pass the layout check and fail (or load scrambled) later."""
    sd = dict(_tiny().state_dict())
    name = "lf_down1.weight"
    w = sd[name]
    assert w.shape[0] != w.shape[1]
    sd[name] = w.transpose(0, 1).contiguous()
    with pytest.raises(C.CheckpointError, match=r"shape: lf_down1\.weight .*\(expected"):
        M.model_from_state_dict(sd)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_the_level_count_is_read_from_the_keys(levels: int) -> None:
    """``levels`` is not in hmoe_meta: the downsampling convolutions present tell it."""
    model = _tiny(levels=levels)
    assert M.options_from_state_dict(model.state_dict())["levels"] == levels
    rebuilt = M.model_from_state_dict(model.state_dict())
    assert rebuilt.hyperparameters == model.hyperparameters


def test_block_numbering_must_be_contiguous() -> None:
    """A stray block index cannot make the loader build thousands of blocks."""
    sd = dict(_tiny().state_dict())
    for k in [k for k in sd if k.startswith("lf1.0.")]:
        sd["lf1.100000." + k[len("lf1.0.") :]] = sd.pop(k)
    with pytest.raises(C.CheckpointError, match=r"'lf1\.' are numbered 100000"):
        M.model_from_state_dict(sd)


@pytest.mark.parametrize(
    ("dtype", "value", "ok"),
    [(torch.float16, None, True), (torch.float32, 2.5, False), (torch.bool, None, False)],
)
def test_meta_dtype(dtype: torch.dtype, value: float | None, ok: bool) -> None:
    """A meta buffer converted to float by a tool still loads while it holds integers."""
    sd = dict(_tiny().state_dict())
    meta = sd["hmoe_meta"].to(dtype)
    if value is not None:
        meta[A.META_FIELD["window_size"].position] = value
    sd["hmoe_meta"] = meta
    if ok:
        assert M.model_from_state_dict(sd).hyperparameters["window_size"] == 4
    else:
        with pytest.raises(C.CheckpointError, match="hmoe_meta"):
            M.model_from_state_dict(sd)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 3e7])
def test_implausible_weights_are_refused(bad: float) -> None:
    sd = {k: v.clone() for k, v in _tiny().state_dict().items()}
    sd["head.pw.weight"].view(-1)[0] = bad
    with pytest.raises(C.CheckpointError, match=r"'head\.pw\.weight'.*damaged"):
        M.model_from_state_dict(sd)


# -------------------------------------------------------------------------- mlp_ratio


@pytest.mark.parametrize("ratio", [2.0078, 1e-4, 17.0, float("nan"), float("inf")])
def test_unstorable_mlp_ratio_is_refused_at_construction(ratio: float) -> None:
    """A ratio that round(1000·x) does not preserve would train but never reload."""
    with pytest.raises(ValueError, match=r"multiple of 0\.001"):
        A.HybridMoE(**{**TINY, "mlp_ratio": ratio})


@pytest.mark.parametrize("ratio", [2.008, 2.66, 0.5, 1.001, 16.0])
def test_storable_mlp_ratio_round_trip(ratio: float, tmp_path: Path) -> None:
    model = _tiny(mlp_ratio=ratio)
    path = _save(model.state_dict(), tmp_path / "m.safetensors")
    desc = C.load_checkpoint(path)
    assert desc.model.hyperparameters == model.hyperparameters
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(desc.model(x), model(x))


# ------------------------------------------------------------- traiNNer training states


def _training_state(model: nn.Module) -> dict[str, Any]:
    """What traiNNer-redux's ``save_training_state`` writes."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8)).mean().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.5)
    return {
        "epoch": 0,
        "iter": 4,
        "optimizers": [opt.state_dict()],
        "schedulers": [sched.state_dict()],
        "scaler_g": {"scale": 65536.0, "growth_factor": 2.0},
    }


def test_training_state_is_named(tmp_path: Path) -> None:
    model = _tiny().train()
    exp = tmp_path / "experiments" / "run"
    (exp / "training_states").mkdir(parents=True)
    (exp / "models").mkdir()
    state = exp / "training_states" / "4.state"
    torch.save(_training_state(model), state)
    weights = _save(model.state_dict(), exp / "models" / "net_g_ema_4.safetensors")
    renamed = tmp_path / "4.pth"
    shutil.copyfile(state, renamed)
    for path in (state, renamed):
        with pytest.raises(C.CheckpointError) as info:
            C.load_checkpoint(path)
        msg = str(info.value)
        assert "training state" in msg and "no network weights" in msg, msg
        assert "corrupt" not in msg
        assert (str(weights) if path == state else "models/net_g_ema_<iter>") in msg
    assert C.load_checkpoint(weights).model.hyperparameters == model.hyperparameters


@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("gpu", "'gpu' is not a PyTorch device name"),
        ("mps", "'mps' is not available on this machine"),
        ("meta", "holds no weights"),
    ],
)
def test_an_unusable_device_is_named_not_blamed_on_the_file(device: str, words: str) -> None:
    """A device name torch does not know raised a bare RuntimeError, and a backend this machine
    lacks (mps on Linux) was reported as a damaged checkpoint."""
    with pytest.raises(C.CheckpointError, match=words) as info:
        C.load_checkpoint(PRETRAINED, device=device)
    assert "damaged" not in str(info.value)


def test_cuda_beyond_the_visible_devices_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(C.CheckpointError, match=r"only 1 CUDA device\(s\) are visible"):
        C.load_checkpoint(PRETRAINED, device="cuda:3")


def test_a_folder_is_not_reported_as_missing(tmp_path: Path) -> None:
    with pytest.raises(C.CheckpointError, match="is a folder, not a model file"):
        C.load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------ fuzzing

FUZZ_SEED = 20240601
FUZZ_CASES = 30  # per file form


def _fuzzed(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Truncations and 1-3 random byte flips (half of them in the first 4 KiB: headers)."""
    for i in range(FUZZ_CASES):
        if i % 3 == 0:
            cut = rng.randrange(1, len(data))
            yield f"truncated at {cut}", data[:cut]
            continue
        buf = bytearray(data)
        flips = []
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(min(4096, len(buf)) if rng.random() < 0.5 else len(buf))
            buf[pos] ^= rng.randrange(1, 256)
            flips.append(pos)
        yield f"bytes flipped at {flips}", bytes(buf)


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_fuzzed_checkpoints(ext: str, tmp_path: Path) -> None:
    """Every damaged file either loads (and upscales to finite values) or raises
    CheckpointError with a message: no other exception, no hang, no large allocation."""
    C.load_checkpoint(PRETRAINED)  # spandrel imported before timing
    source = PRETRAINED
    if ext == "pth":
        source = _save(safetensors.torch.load_file(str(PRETRAINED)), tmp_path / "good.pth")
    data = source.read_bytes()
    rng = random.Random(FUZZ_SEED + len(ext))
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"loaded": 0, "refused": 0}
    start = time.perf_counter()
    for what, blob in _fuzzed(data, rng):
        path = tmp_path / f"fuzz.{ext}"
        path.write_bytes(blob)
        t0 = time.perf_counter()
        try:
            desc = C.load_checkpoint(path)
        except C.CheckpointError as e:
            assert str(e).startswith(str(path)) and len(str(e)) > len(str(path)) + 20, what
            outcomes["refused"] += 1
        else:
            with torch.no_grad():
                y = desc.model(x)
            assert y.shape == (1, 3, 24, 20) and bool(torch.isfinite(y).all()), what
            outcomes["loaded"] += 1
        assert time.perf_counter() - t0 < 5, f"{what}: took {time.perf_counter() - t0:.1f} s"
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 300, f"peak memory grew by {grown_mib:.0f} MiB"
    assert outcomes["refused"] >= FUZZ_CASES // 3, outcomes  # the truncations at least
    assert elapsed < 20, f"{FUZZ_CASES} cases took {elapsed:.1f} s"


# ------------------------------------------------------- crafted files (a review's findings)


def test_a_compressed_zip_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """torch.save never compresses; a deflated member inflated in full when loaded (a 1 MB
    file took 1 GiB of memory)."""
    import zipfile

    plain = _save(_tiny().state_dict(), tmp_path / "plain.pth")
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert C.load_checkpoint(plain) is not None
    with pytest.raises(C.CheckpointError, match=r"compressed members .*zip bomb"):
        C.read_state_dict(packed)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda t: t.to(torch.complex64), "dtype torch.complex64, which no supported model"),
        (lambda t: t.to(torch.float8_e4m3fn), "dtype torch.float8_e4m3fn, which no supported"),
        (lambda t: torch.zeros(len(t), 3, 0, 0), "holds no values"),
    ],
)
def test_tensors_no_model_stores_are_refused(
    make: Callable[[torch.Tensor], torch.Tensor], words: str, tmp_path: Path
) -> None:
    """Complex weights hid a NaN behind the cast on loading; float8 ones reached torch's
    "not implemented for Float8"; a shape with no values made spandrel build a network of
    that size (gigabytes from an 800-byte file)."""
    sd = dict(_tiny().state_dict())
    sd["stem.bias"] = make(sd["stem.bias"])
    with pytest.raises(C.CheckpointError, match=words):
        C.read_state_dict(_save(sd, tmp_path / "m.safetensors"))


@pytest.mark.parametrize(
    ("form", "words"),
    [
        (lambda v: torch.zeros(1).expand(v.shape), "an expanded or overlapping view"),
        (lambda v: torch.empty(v.shape, device="meta"), "a meta-device tensor"),
        (lambda v: v.to_sparse(), "a sparse_coo tensor"),
    ],
    ids=["expanded", "meta", "sparse"],
)
def test_tensors_without_their_values_are_refused_before_a_model_is_built(
    form: Callable[[torch.Tensor], torch.Tensor], words: str, tmp_path: Path
) -> None:
    """torch.save keeps a view's strides, a meta tensor's shape and a sparse tensor's size:
    every tensor of a dim-2048 HybridMoE stored as one zero expanded to its shape was a 5 KB
    file that loaded as a model of 1.7 GB, and a 5 KB file of meta or sparse tensors made
    spandrel allocate 7 GB of a Compact network before the copy failed."""
    sd = _tiny(dim=64).state_dict()
    views = {k: v if k == "hmoe_meta" else form(v) for k, v in sd.items()}
    path = _save(views, tmp_path / "views.pth")
    with pytest.raises(C.CheckpointError, match=rf"'[\w.]+' is {words} .*refused"):
        C.load_checkpoint(path)
    with pytest.raises(C.CheckpointError, match=rf"'[\w.]+' is {words} of shape"):
        M.model_from_state_dict(views)  # spandrel's own load_from_file hands the dict over
    whole = _save({k: v.contiguous() for k, v in sd.items()}, tmp_path / "whole.pth")
    assert C.load_checkpoint(whole).model.hyperparameters["dim"] == 64


def test_integer_weights_of_a_hybridmoe_are_refused() -> None:
    sd = dict(_tiny().state_dict())
    sd["stem.bias"] = torch.full_like(sd["stem.bias"], 10**15, dtype=torch.int64)
    with pytest.raises(C.CheckpointError, match=r"'stem.bias' has dtype torch.int64"):
        M.model_from_state_dict(sd)


def test_a_state_dict_implying_a_far_larger_network_is_refused_unbuilt(tmp_path: Path) -> None:
    """spandrel sizes Compact from one tensor before it compares the others: a 72 KB file
    made it allocate a 6000-feature network (1.3 GB) before the shapes were found wrong. A
    meta-device dry run finds the mismatch first; a real Compact still loads, silently."""
    from spandrel.architectures.Compact import Compact

    sd = {"body.0.weight": torch.zeros(6000, 3, 1, 1), "body.0.bias": torch.zeros(1)}
    for i in range(1, 5):
        sd[f"body.{i}.weight"] = torch.zeros(1)
    sd["body.4.bias"] = torch.zeros(48)
    path = _save(sd, tmp_path / "small.safetensors")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(C.CheckpointError, match=r"imply another network .*size mismatch"):
        C.load_checkpoint(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB
    real = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    path = _save(real.state_dict(), tmp_path / "compact.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert C.load_checkpoint(path).scale == 2


def test_odd_keys_and_a_torch_save_file_named_safetensors(tmp_path: Path) -> None:
    """An integer key raised a bare AttributeError; a torch.save file named .safetensors was
    reported as corrupt (torch.load picks its reader by the suffix); a superscript block index
    raised int()'s ValueError."""
    sd = dict(_tiny().state_dict())
    with pytest.raises(C.CheckpointError, match="not a model state dict"):
        C.read_state_dict(_save({"params": {1: sd["stem.bias"], **sd}}, tmp_path / "k.pth"))
    named = tmp_path / "saved.safetensors"
    torch.save(sd, named)
    assert C.load_checkpoint(named).scale == 2
    for k in [k for k in sd if k.startswith("lf1.0.")]:
        sd["lf1.\u00b2." + k[len("lf1.0.") :]] = sd[k]
    with pytest.raises(C.CheckpointError):  # a key model_from_state_dict does not know
        M.model_from_state_dict(sd)


def test_renamed_modules_load_and_a_key_under_both_names_is_refused(tmp_path: Path) -> None:
    """Keys of earlier checkpoints (lf3_global., refine_moe.moe.) are mapped to the current
    names; a file holding a tensor under both names loaded with the old copy silently winning."""
    torch.manual_seed(0)
    model = A.HybridMoE(**{**TINY, "scale": 2, "refine_moe": True})
    perturb(model, 0.03, seed=1)
    model.eval()
    current = model.state_dict()
    old_style = {
        k.replace("global_block.", "lf3_global.").replace("refine_moe.ffn.", "refine_moe.moe."): v
        for k, v in current.items()
    }
    assert old_style.keys() != current.keys()
    path = tmp_path / "old.safetensors"
    safetensors.torch.save_file(old_style, path)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(C.load_checkpoint(path).model.eval()(x), model(x))
    for old, new in (("lf3_global.", "global_block."), ("refine_moe.moe.", "refine_moe.ffn.")):
        both = dict(current)
        key = next(k for k in current if k.startswith(new))
        both[old + key[len(new) :]] = torch.zeros_like(current[key])
        safetensors.torch.save_file(both, path)
        with pytest.raises(C.CheckpointError, match="under an old and the current name: " + old):
            C.load_checkpoint(path)
        fresh = A.HybridMoE(**{**TINY, "scale": 2, "refine_moe": True})
        with pytest.raises(RuntimeError, match=f"holds both {old}.* and its current name {new}"):
            fresh.load_state_dict(both)


def test_nested_wrappers_are_unwrapped(tmp_path: Path) -> None:
    """{"net_g": {"params_ema": ...}} was "the checkpoint holds no tensors" (one unwrap only)."""
    torch.manual_seed(0)
    model = A.HybridMoE(**{**TINY, "scale": 2}).eval()
    path = tmp_path / "nested.pth"
    torch.save({"net_g": {"params_ema": model.state_dict()}}, path)
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(C.load_checkpoint(path).model.eval()(x), model(x))


def test_links_headers_and_permissions_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symbolic-link loop was 'model file not found'; a safetensors header of millions of
    entries was parsed (seconds, gigabytes) before anything was refused; a file that cannot be
    opened raised a bare PermissionError."""
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(tmp_path / "loop.safetensors")
    with pytest.raises(C.CheckpointError, match="symbolic link that leads to no file"):
        C.read_state_dict(loop)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((2**40).to_bytes(8, "little") + b'{"a": {}}')
    start = time.perf_counter()
    with pytest.raises(C.CheckpointError, match=r"header declares 1,099,511,627,776 bytes"):
        C.read_state_dict(huge)
    assert time.perf_counter() - start < 5
    largest = C.MAX_SAFETENSORS_HEADER
    over = tmp_path / "over.safetensors"
    over.write_bytes((largest + 1).to_bytes(8, "little") + b'{"a": {}}')
    with pytest.raises(C.CheckpointError, match=rf"header declares {largest + 1:,} bytes"):
        C.read_state_dict(over)
    at_limit = tmp_path / "limit.safetensors"
    at_limit.write_bytes(largest.to_bytes(8, "little") + b'{"a": {}}')
    with pytest.raises(C.CheckpointError, match="cannot read the checkpoint"):
        C.read_state_dict(at_limit)  # truncated, but its header size is not refused
    fine = tmp_path / "fine.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(fine))
    real_open = Path.open

    def no_permission(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == fine:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", no_permission)
    with pytest.raises(C.CheckpointError, match="cannot open it \\(Permission denied\\); check"):
        C.read_state_dict(fine)
