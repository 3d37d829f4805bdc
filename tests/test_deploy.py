"""Deployment tools: ``hybridmoe fuse`` (re-parameterized checkpoints) and
``hybridmoe export-onnx`` (ONNX with dynamic batch / height / width, fp32 and fp16)."""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tiny_options import SMALL_UNET, TINY

import hybridmoe_arch as A
from hybridmoe import checkpoint as C
from hybridmoe import cli, export, fuse
from hybridmoe.models import perturb

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(model: A.HybridMoE, std: float = 0.03) -> A.HybridMoE:
    """Move every parameter off its init (zero-initialised branches then matter); eval."""
    perturb(model, std, seed=3)
    return model.eval()


def tiny(**options: Any) -> A.HybridMoE:
    return perturbed(A.HybridMoE(**{**TINY, **options}))


def save_trainer_pth(model: A.HybridMoE, path: Path) -> Path:
    """traiNNer-redux's EMA checkpoint form: ``{"metadata", "params_ema"}``."""
    torch.save({"metadata": dict(model.hyperparameters), "params_ema": model.state_dict()}, path)
    return path


@torch.no_grad()
def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


# ------------------------------------------------------------------------------- fuse.py


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
def test_fuse_writes_deploy_form(
    ext: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny(scale=2, stem_lk=True, refine_moe=True)
    ckpt = save_trainer_pth(model, tmp_path / "net_g_ema.pth")
    out = tmp_path / f"fused{ext}"
    butterfly = ROOT / "tests" / "data" / "Set5" / "HR" / "butterfly.png"
    assert fuse.main([str(ckpt), str(out), "--image", str(butterfly)]) == 0
    log = capsys.readouterr().out
    assert "parameters:" in log and "max abs diff fused vs original" in log
    assert "butterfly.png /2 (96, 96)" in log  # the real-image check ran
    assert "note:" not in log
    n_before, n_after = (
        int(v.replace(",", "")) for v in log.split("parameters: ")[1].split(" (")[0].split(" -> ")
    )
    assert n_after < n_before

    desc = C.load_checkpoint(out)
    assert desc.model.deploy and desc.model.hyperparameters["deploy"] is True
    assert any(".fused." in k for k in desc.model.state_dict())
    x = torch.rand(1, 3, 21, 18)
    assert (run(desc.model, x) - run(model, x)).abs().max() < 1e-4
    if ext == ".safetensors":
        with safe_open(str(out), "pt") as f:
            meta = json.loads(f.metadata()["metadata"])
        assert meta["deploy"] is True and meta["scale"] == 2 and meta["enc_blocks"] == [1, 1, 1]
    else:
        raw = torch.load(out, weights_only=True)
        assert set(raw) == {"metadata", "params"} and raw["metadata"]["deploy"] is True


def test_fuse_already_fused_and_timing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny(scale=3, in_ch=1).fuse()
    ckpt = tmp_path / "fused_in.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "again.safetensors"
    args = [str(ckpt), str(out), "--time", "--size", "24", "20", "--repeats", "2"]
    assert fuse.main(args) == 0
    log = capsys.readouterr().out
    assert "already fused" in log
    assert "latency cpu 1x1x24x20" in log and "ms ->" in log
    assert C.load_checkpoint(out).model.deploy


def test_fuse_a_network_without_reparam_convs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fuse() set deploy=True although nothing was fused; the file (no fused keys) reloaded as
    deploy=False, so the fuse command refused to write it ("would not reload as the fused
    model") and the options did not round-trip."""
    options = {"scale": 2, "use_hf": False, "texture_head": False}
    model = tiny(**options)
    assert not model._fusable()
    assert not A.HybridMoE(**{**TINY, **options, "deploy": True}).deploy
    ckpt = save_trainer_pth(model, tmp_path / "net.pth")
    assert fuse.main([str(ckpt), str(tmp_path / "f.safetensors")]) == 0
    assert "no re-param convolutions; its deploy form is itself" in capsys.readouterr().out
    loaded = C.load_checkpoint(tmp_path / "f.safetensors").model
    assert loaded.hyperparameters == copy.deepcopy(model).fuse().hyperparameters
    assert not loaded.deploy


def test_fuse_verifies_on_a_random_image_unless_given_a_real_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --image the check runs on a random image and says so (no image path that a
    pip install lacks); a missing (before the model is loaded) or too small --image is refused,
    and nothing is written."""
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    out = tmp_path / "fused.safetensors"
    assert fuse.main([str(ckpt), str(out)]) == 0
    log = capsys.readouterr().out
    assert "note: verifying on a random image; --image FILE also verifies on a real one" in log
    assert "random 1x3x37x29" in log and "not found" not in log and str(ROOT) not in log
    missing = tmp_path / "no_such.png"
    assert fuse.main([str(ckpt), str(tmp_path / "a.pth"), "--image", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --image {missing}: no such file; pass an image file (PNG, JPEG, WebP)\n"
    assert fuse.main([str(ckpt), str(tmp_path / "a.pth"), "--image", str(tmp_path)]) == 2
    assert f"--image {tmp_path}: is a folder; pass an image file" in capsys.readouterr().err
    assert fuse.main([str(ckpt), str(tmp_path)]) == 2
    assert f"OUTPUT {tmp_path} is a folder; give the fused" in capsys.readouterr().err
    from PIL import Image

    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    assert (
        fuse.main([str(ckpt), str(tmp_path / "a.pth"), "--image", str(tmp_path / "dot.png")]) == 2
    )
    assert "too small to downscale by 2" in capsys.readouterr().err
    assert not (tmp_path / "a.pth").exists()
    # --size / --repeats only set up --time: alone they were ignored without a word
    for extra in (["--size", "7", "7"], ["--repeats", "3"]):
        assert fuse.main([str(ckpt), str(tmp_path / "a.pth"), *extra]) == 2
        assert "--size and --repeats set up --time" in capsys.readouterr().err
    assert not (tmp_path / "a.pth").exists()
    assert fuse.main([str(ckpt), str(tmp_path / "a.pth"), "--time", "--size", "9", "11"]) == 0
    assert "1x3x9x11 (median of 5)" in capsys.readouterr().out


def test_fuse_refuses_other_architectures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spandrel.architectures.Compact import Compact

    ckpt = tmp_path / "compact.pth"
    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), ckpt)
    assert fuse.main([str(ckpt), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "Compact" in err and "not HybridMoE" in err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"", "empty.pth", "empty"),
        (b"\x00garbage" * 50, "junk.safetensors", "cannot read the checkpoint"),
        (None, "missing.pth", "not found"),
    ],
)
def test_fuse_bad_inputs(
    content: bytes | None,
    name: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt = tmp_path / name
    if content is not None:
        ckpt.write_bytes(content)
    assert fuse.main([str(ckpt), str(tmp_path / "out.pth")]) == 2
    assert expected in capsys.readouterr().err


def test_fuse_bad_output_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_trainer_pth(tiny(), tmp_path / "net.pth")
    assert fuse.main([str(ckpt), str(tmp_path / "out.onnx")]) == 2
    assert "unsupported output type" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option",
    [
        ["--threads", "-1"],
        ["--repeats", "0", "--time"],
        ["--size", "0", "8", "--time"],
        ["--size", "-4", "8", "--time"],
        ["--tol", "nan"],
        ["--tol", "-1"],
    ],
)
def test_fuse_numeric_options_are_checked_when_parsed(
    option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Out-of-range numbers were tracebacks from torch or statistics after the work was done
    (--tol nan failed every verification); now argparse names the option, exit status 2."""
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    with pytest.raises(SystemExit) as done:
        fuse.main([str(ckpt), str(tmp_path / "out.pth"), *option])
    assert done.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_fuse_never_replaces_a_shipped_model_named_as_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CHECKPOINT given as a shipped model's name and OUTPUT its file: even with --overwrite
    the training form must not be replaced (it was: the name was compared as a path)."""
    import hybridmoe.models

    shipped = tmp_path / "pretrained"
    shipped.mkdir()
    ckpt = tiny(scale=2)
    fuse.save_checkpoint(ckpt, shipped / "2x_Tiny.safetensors")
    before = (shipped / "2x_Tiny.safetensors").read_bytes()
    monkeypatch.setattr(hybridmoe.models, "pretrained_dir", lambda: shipped)
    target = str(shipped / "2x_Tiny.safetensors")
    assert fuse.main(["2x_Tiny", target, "--overwrite"]) == 2
    assert "is the same file as the input" in capsys.readouterr().err
    assert (shipped / "2x_Tiny.safetensors").read_bytes() == before
    assert fuse.main(["2x_tiny", str(tmp_path / "fused.safetensors")]) == 0  # names still work


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
def test_fuse_on_a_full_disk_is_a_write_error(
    ext: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk while writing OUTPUT was a traceback: safetensors raised a SafetensorError,
    torch.save an "unexpected pos" RuntimeError, neither naming the reason (and exit status 1
    would have said that the fused outputs differ)."""
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    out = tmp_path / f"fused{ext}"
    real = Path.write_bytes

    def write_bytes(path: Path, data: bytes) -> int:
        if ".partial" not in path.name:
            return real(path, data)
        real(path, data[:100])
        raise full_disk()

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert cli.main(["fuse", str(ckpt), str(out)]) == 2
    assert capsys.readouterr().err == f"error: cannot write {out}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pth"]


def test_fuse_cli(tmp_path: Path) -> None:
    """The script runs as a program (imports resolve from a plain checkout)."""
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    out = tmp_path / "cli.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "hybridmoe", "fuse", str(ckpt), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.is_file()


# ------------------------------------------------------------------------- export.py


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    return export.ort_session(path).run(None, {export.INPUT_NAME: x})[0]


@pytest.fixture(scope="module")
def nano_x2(tmp_path_factory: pytest.TempPathFactory) -> tuple[A.HybridMoE, Path]:
    """hybridmoe_nano ×2 (perturbed) as a traiNNer checkpoint."""
    torch.manual_seed(0)
    model = perturbed(A.hybridmoe_nano(scale=2), std=0.01)
    path = tmp_path_factory.mktemp("nano") / "nano_x2.pth"
    return model, save_trainer_pth(model, path)


@pytest.fixture(scope="module")
def nano_onnx(nano_x2: tuple[A.HybridMoE, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "nano_x2.onnx"
    assert export.main([str(nano_x2[1]), str(out)]) == 0
    return out


def test_onnx_dynamic_dims(nano_onnx: Path) -> None:
    ins, outs = export.onnx_dims(nano_onnx)
    assert ins == ["batch", 3, "height", "width"]
    assert outs == ["batch", 3, "out_height", "out_width"]
    import onnx

    model = onnx.load(str(nano_onnx))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    onnx.checker.check_model(model)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 19, 27),  # not a multiple of the window (8) nor of 4
        (1, 3, 32, 32),  # a window multiple: the padding-free path
        (2, 3, 40, 24),  # batch 2, non-square
        (1, 3, 5, 70),  # tiny height, a different number of windows
    ],
)
def test_onnx_fp32_matches_pytorch_at_new_sizes(
    shape: tuple[int, ...], nano_x2: tuple[A.HybridMoE, Path], nano_onnx: Path
) -> None:
    """Sizes other than the dummy's: a traced shape baked into the graph would fail here."""
    model = nano_x2[0]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    out = ort_run(nano_onnx, x.numpy())
    ref = run(model, x).numpy()
    assert out.shape == ref.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
    assert np.abs(out - ref).max() < 1e-4


def test_onnx_verify_flag(
    nano_x2: tuple[A.HybridMoE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.onnx"
    assert export.main([str(nano_x2[1]), str(out), "--verify", "--opset", "17"]) == 0
    log = capsys.readouterr().out
    assert log.count("onnxruntime vs PyTorch fp32") == 3 and "verified: max abs diff" in log


def test_onnx_fp16(nano_x2: tuple[A.HybridMoE, Path], tmp_path: Path) -> None:
    out = tmp_path / "nano_fp16.onnx"
    assert export.main([str(nano_x2[1]), str(out), "--fp16"]) == 0
    import onnx

    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    x = torch.rand(1, 3, 23, 30, generator=torch.Generator().manual_seed(4))
    got = ort_run(out, x.numpy().astype(np.float16))
    assert got.dtype == np.float16
    ref = run(nano_x2[0], x).numpy()
    diff = np.abs(got.astype(np.float32) - ref).max()
    assert np.isfinite(diff) and diff < export.FP16_TOL


def test_fp16_verification_fails_a_graph_off_by_two_percent(
    nano_x2: tuple[A.HybridMoE, Path], tmp_path: Path
) -> None:
    """The fp16 check passes the graph of the model and fails it against the same model with
    0.02 added to its output (within the old 5e-2 tolerance: such a graph was 'verified')."""
    model = nano_x2[0]
    res = export.export(model, tmp_path / "nano_fp16.onnx", fp16=True)
    assert export.verify(model, res, log=lambda _: None) <= export.FP16_TOL
    shifted = copy.deepcopy(model)
    shifted.register_forward_hook(lambda _m, _x, out: out + 0.02)
    assert export.verify(shifted, res, log=lambda _: None) > export.FP16_TOL


@pytest.mark.parametrize(
    "options",
    [
        {"global_mixer": "ssm"},
        {"freq_split": "fft", "global_mixer": "fourier"},
        {"global_mixer": "none", "use_attn": False, "upsampler": "dysample", "base": "bicubic"},
    ],
    ids=["ssm", "fft-fourier", "plain-dysample"],
)
def test_onnx_options_tiny(options: dict[str, Any], tmp_path: Path) -> None:
    """Mixers and splits export with dynamic shapes; the ssm scan is checked at a size whose
    chunk count differs from the dummy's (the network's scan has no loop over chunks)."""
    model = tiny(scale=2, **options)
    ckpt = save_trainer_pth(model, tmp_path / "net.pth")
    out = tmp_path / "net.onnx"
    assert export.main([str(ckpt), str(out)]) == 0
    for shape in ((1, 3, 13, 22), (1, 3, 72, 64)):  # 72x64: 18x16 = 288 tokens, 5 chunks
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        assert np.abs(ort_run(out, x.numpy()) - run(model, x).numpy()).max() < 1e-4


def test_onnx_graph_is_plain_onnx(nano_onnx: Path) -> None:
    """No custom-domain op, no ATen fallback: the graph runs on any ONNX runtime."""
    import onnx

    model = onnx.load(str(nano_onnx))
    assert export.foreign_ops(model) == []
    assert not export.fixed_io_dims(model)
    assert {n.op_type for n in model.graph.node}.isdisjoint({"ATen", "RMSNormalization", "DFT"})


FLOAT32_ISLANDS = (
    A.RMSNorm2d,
    A.FrequencySplit,
    A.FourierMixer,
    A.SelectiveScan2D,
    A.MoEFFN,
    A.DySampleUpsampler,
)
"""Modules that compute in float32 inside an fp16 model (norm statistics, FFT / DFT, the
selective scan, the MoE router, the DySample sampling grid): the only places where an fp16
graph may convert to float32."""


def module_path(node_name: str) -> str:
    """The dotted module name of a TorchScript-exported node: ``/lf2/lf2.0/norm1/Cast`` ->
    ``lf2.0.norm1`` (a scope level names the module relative to its parent, children of a
    ``Sequential`` with the parent's prefix)."""
    return ".".join(part.rsplit(".", 1)[-1] for part in node_name.split("/")[1:-1])


@pytest.mark.parametrize(
    "options",
    [
        {"freq_split": "fft", "refine_moe": True},
        {"global_mixer": "ssm", "upsampler": "dysample", "base": "bicubic"},
    ],
    ids=["fourier-fft-moe", "ssm-dysample"],
)
def test_fp16_export_without_symbolics(
    options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TorchScript exporter turns a ``.half()`` model into a valid fp16 graph with no
    custom symbolic (registering one fails this test): float16 input and output, no Cast that
    converts a float tensor to its own type, every Cast to float32 inside a float32 island
    module (:data:`FLOAT32_ISLANDS`), and onnxruntime runs it within the fp16 tolerance of
    PyTorch fp32 at a size other than the dummy's."""
    import onnx

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"export_onnx registers a custom symbolic: {args[:1]}")

    monkeypatch.setattr(torch.onnx, "register_custom_op_symbolic", refuse)
    model = tiny(scale=2, **options).fuse().eval()
    res = export.export(model, tmp_path / "fp16.onnx", fp16=True)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(res.path))).graph
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == fp16
    assert graph.output[0].type.tensor_type.elem_type == fp16
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    islands = [name for name, m in model.named_modules() if isinstance(m, FLOAT32_ISLANDS)]
    to_fp32 = []
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        if to in {fp16, fp32}:
            assert types.get(node.input[0]) != to, f"no-op Cast {node.name}"
        if to == fp32:
            to_fp32.append(node.name)
            scope = module_path(node.name)
            inside = any(scope == m or scope.startswith(m + ".") for m in islands)
            assert inside, f"{node.name}: float32 outside the islands"
    assert to_fp32  # the islands are there (the check above is not vacuous)
    x = torch.rand(1, 3, 23, 30, generator=torch.Generator().manual_seed(4))
    got = ort_run(res.path, x.numpy().astype(np.float16))
    diff = np.abs(got.astype(np.float32) - run(model, x).numpy()).max()
    assert np.isfinite(diff) and diff < export.FP16_TOL


def test_export_leaves_the_noise_out(tmp_path: Path) -> None:
    """A model with its noise switched on in eval (as upscale --noise does) was exported with
    RandomNormalLike nodes: a graph whose output changed from run to run."""
    import onnx

    model = tiny(scale=2, texture_head=True, noise=True).set_noise_in_eval(True)
    res = export.export(model, tmp_path / "noise.onnx")
    ops = {node.op_type for node in onnx.load(str(res.path)).graph.node}
    assert not any(op.startswith("Random") for op in ops), sorted(ops)
    assert model.head.inject_noise_in_eval  # the caller's model is left as it was
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(ort_run(res.path, x.numpy()), ort_run(res.path, x.numpy()))


# ---------------------------------------------------------------------- --export-safe


def test_export_safe_passes_fp32_and_fp16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The network exports without dummy-dependent values: ssm scan, fft split, MoE."""
    model = tiny(scale=2, global_mixer="ssm", freq_split="fft", refine_moe=True)
    ckpt = save_trainer_pth(model, tmp_path / "net.pth")
    for extra in ([], ["--fp16"]):
        out = tmp_path / f"safe{len(extra)}.onnx"
        assert export.main([str(ckpt), str(out), "--export-safe", *extra]) == 0
        log = capsys.readouterr().out
        assert "export-safe: default ONNX domain only, dims symbolic, graph identical" in log


def _baked_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``_pad_to_multiple`` with the pad amounts turned into Python ints (constants when
    traced): the kind of size dependence --export-safe has to catch."""
    h, w = x.shape[-2:]
    ph, pw = int((-h) % multiple), int((-w) % multiple)
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


_NETWORK_SCAN = A.ssd_scan


def _chunk_loop_scan(  # noqa: PLR0917 (same operands as the network's scan)
    x: torch.Tensor,
    dt: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The selective scan with its state carried across chunks by a Python loop (exporters
    unroll it for the dummy's chunk count). Shapes as ``ssd_scan``: x (B,L,H,P), dt (B,L,H),
    a (H,), b and c (B,L,S) -> (B,L,H,P)."""
    bsz, length, heads, p = x.shape
    state = x.new_zeros(bsz, heads, p, b.shape[-1])
    outs = []
    for i in range(0, length, chunk):
        xs, dts, bs, cs = (t[:, i : i + chunk] for t in (x, dt, b, c))
        y = _NETWORK_SCAN(xs, dts, a, bs, cs, chunk)  # zero initial state within the chunk
        cum = torch.cumsum(dts * a, dim=1)  # (B,T,H)
        y = y + torch.einsum("bts,bhps,bth->bthp", cs, state, torch.exp(cum))
        tail = torch.exp(cum[:, -1:] - cum)
        upd = torch.einsum("bts,bth,bthp->bhps", bs, tail, xs * dts.unsqueeze(-1))
        state = state * torch.exp(cum[:, -1]).unsqueeze(-1).unsqueeze(-1) + upd
        outs.append(y)
    return torch.cat(outs, dim=1)


def test_chunk_loop_scan_is_the_scan() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 150, 3, 4, generator=g)
    dt = torch.rand(2, 150, 3, generator=g) * 0.05
    a = -torch.rand(3, generator=g) * 8 - 1
    b, c = torch.randn(2, 2, 150, 16, generator=g).unbind(0)
    ref = A.ssd_scan(x, dt, a, b, c)
    assert (_chunk_loop_scan(x, dt, a, b, c) - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("case", ["baked-pad", "unrolled-scan"])
def test_export_safe_catches_dummy_dependence(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value fixed at the dummy's size makes the graph wrong at other sizes although the
    export itself succeeds; --export-safe finds it by tracing at a second size (exit 1; the
    graph is kept for inspection)."""
    model = tiny(scale=2, global_mixer="ssm")
    ckpt = save_trainer_pth(model, tmp_path / "net.pth")
    if case == "baked-pad":
        monkeypatch.setattr(A, "_pad_to_multiple", _baked_pad)
    else:
        monkeypatch.setattr(A, "ssd_scan", _chunk_loop_scan)
    out = tmp_path / "net.onnx"
    assert export.main([str(ckpt), str(out), "--export-safe"]) == 1
    err = capsys.readouterr().err
    assert "export-safe: the graph depends on the dummy size" in err
    if case == "baked-pad":  # the stem's pad amounts are shown by value
        assert "[0, 3, 0, 0]" in err
    # and indeed: the graph is wrong (or rejected) at a size of another padding / chunk count
    # (73x62: pads 3 and 2, 19x16 = 304 tokens, 5 chunks); the unpatched model is the reference
    assert out.is_file()
    monkeypatch.undo()
    x = torch.rand(1, 3, 73, 62, generator=torch.Generator().manual_seed(5))
    try:
        diff = float(np.abs(ort_run(out, x.numpy()) - run(model, x).numpy()).max())
    except Exception:  # onnxruntime rejects the shapes
        diff = float("inf")
    assert not diff < 1e-4


def test_export_safe_helpers_on_handmade_graphs() -> None:
    """Custom-domain nodes (also in subgraphs and local functions) and fixed dims are found."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", 40])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 80, "w"])
    sub = helper.make_graph(
        [helper.make_node("Gelu", ["t"], ["u"], domain="com.microsoft")],
        "sub",
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Relu", ["input"], ["r"]),
        helper.make_node("ATen", ["r"], ["s"], domain="org.pytorch.aten", operator="rms_norm"),
        helper.make_node("Loop", ["", "", "s"], ["output"], body=sub),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [inp], [out]))
    assert export.foreign_ops(model) == ["com.microsoft::Gelu", "org.pytorch.aten::ATen"]
    assert export.fixed_io_dims(model) == [
        "input input dim 0 = 1",
        "input input dim 3 = 40",
        "output output dim 2 = 80",
    ]
    fn = helper.make_function("custom", "Fn", ["a"], ["b"], [nodes[0]], [])
    model.functions.append(fn)
    assert "custom::Fn (local function)" in export.foreign_ops(model)
    # signatures ignore value names but see constants
    same = onnx.ModelProto()
    same.CopyFrom(model)
    same.graph.node[0].output[0] = "renamed"
    same.graph.node[1].input[0] = "renamed"
    assert export.graph_signature(same) == export.graph_signature(model)
    same.graph.node[0].op_type = "Sigmoid"
    assert export.graph_signature(same) != export.graph_signature(model)


def test_dummy_sizes() -> None:
    """The dummy takes every padding branch; the export-safe re-trace size is generic too and
    spans another number of scan chunks; a verification size has more than four chunks."""
    for window in (1, 2, 4, 8, 16):
        model = A.hybridmoe(scale=2, **{**SMALL_UNET, "window_size": window})
        h, w = export.dummy_size(model)
        assert h != w and (h % 4 or w % 4)
        assert export.is_generic_size(h, w, {window})
        assert (-(-h // 4) * -(-w // 4)) % 64
        h2, w2 = export.second_dummy(model, (h, w))
        assert export.is_generic_size(h2, w2, {window}) and (h2, w2) != (h, w)
        assert export._chunks(h2, w2) != export._chunks(h, w)
        sizes = export.verify_sizes(model, (h, w))
        assert all((sh, sw) != (h, w) for _, sh, sw in sizes)
        _, ph, pw = sizes[1]  # the padding-free size
        assert ph % (4 * window) == 0 and pw % (4 * window) == 0
        assert export._chunks(ph, pw) > 4
    assert not export.is_generic_size(64, 48, {8})  # no padding at all
    # 45x61 -> 48x64: levels 24x32 and 12x16, all window multiples: unshifted blocks skip
    assert not export.is_generic_size(45, 61, {8})
    assert export.is_generic_size(41, 42, {8})  # 44x44: levels 22x22 and 11x11


# ------------------------------------------------------------------------- dynamo exporter


def test_onnx_dynamo_fft_split_and_fourier_mixer(tmp_path: Path) -> None:
    """The torch.export-based exporter keeps N/H/W dynamic with the generic dummy (batch 2,
    every padding branch taken), through the DFT matmuls of the fft split and of the Fourier
    mixer (their lengths are traced, ``_fftfreq`` / ``_dft_mats``); checked at batch 1 and at
    sizes other than the dummy's, and the graph holds default-domain ops only."""
    import onnx

    model = tiny(scale=2, freq_split="fft", global_mixer="fourier")
    ckpt = save_trainer_pth(model, tmp_path / "net.pth")
    out = tmp_path / "dyn.onnx"
    assert export.main([str(ckpt), str(out), "--dynamo"]) == 0
    ins, _ = export.onnx_dims(out)
    assert isinstance(ins[0], str) and isinstance(ins[2], str) and isinstance(ins[3], str)
    assert export.foreign_ops(onnx.load(str(out))) == []
    for shape in ((1, 3, 13, 22), (1, 3, 32, 32), (2, 3, 20, 9)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
        assert np.abs(ort_run(out, x.numpy()) - run(model, x).numpy()).max() < 1e-4


def test_onnx_usage_errors(
    nano_x2: tuple[A.HybridMoE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(nano_x2[1])
    assert export.main([ckpt, str(tmp_path / "a.onnx"), "--opset", "16"]) == 2
    assert "opset 17 or newer" in capsys.readouterr().err
    assert export.main([ckpt, str(tmp_path / "a.onnx"), "--opset", "21"]) == 2
    assert "up to 20" in capsys.readouterr().err
    assert export.main([ckpt, str(tmp_path / "a.pth")]) == 2
    assert ".onnx" in capsys.readouterr().err
    from spandrel.architectures.Compact import Compact

    compact = tmp_path / "compact.pth"
    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), compact)
    assert export.main([str(compact), str(tmp_path / "c.onnx")]) == 2
    assert "not HybridMoE" in capsys.readouterr().err


def test_onnx_export_on_a_full_disk_is_a_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exporter's OSError (a full disk) was a traceback."""
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    out = tmp_path / "m.onnx"

    def export_to_full_disk(_net: torch.nn.Module, _args: Any, f: str, **_kw: Any) -> None:
        Path(f).write_bytes(b"half a graph")
        raise full_disk()

    monkeypatch.setattr(torch.onnx, "export", export_to_full_disk)
    assert cli.main(["export-onnx", str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {out}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pth"]


def test_graph_traced_without_padding_runs_at_sizes_that_need_it(tmp_path: Path) -> None:
    """traiNNer-redux traces ``shape: 1x3xHxW`` at 16×16, where no padding is needed; the
    exported graph must still pad at sizes that do (the network keeps the padding path
    while exporting)."""
    import onnxruntime as ort

    model = A.HybridMoE(
        scale=2,
        dim=8,
        enc_blocks=(1, 1, 1),
        hf_blocks=(1, 0, 0),
        mid_blocks=1,
        dec_blocks=(1, 1),
        window_size=8,
        kernel_size=5,
    ).eval()
    path = tmp_path / "m.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            model,
            torch.rand(1, 3, 16, 16),
            str(path),
            opset_version=18,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h2", 3: "w2"}},
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in ((19, 27), (33, 17)):
        x = torch.rand(1, 3, h, w)
        with torch.inference_mode():
            ref = model(x).numpy()
        out = sess.run(None, {"input": x.numpy()})[0]
        assert out.shape == ref.shape
        assert float(abs(out - ref).max()) < 1e-4


def test_every_matrix_case_builds() -> None:
    # `export-onnx --matrix` walks these cases; one that the network refuses to build (an
    # option combination that became invalid) used to crash the whole run
    built = []
    for name, variant, scale, opts in export.matrix_cases():
        model = A.FACTORIES[variant](scale=scale, **opts)
        assert model.scale == scale, name
        built.append(model)
    # the named sizes are x1 trunks: the matrix must still export the three-level design with
    # every component (attention, MoE, the image-wide mixers and the FFT split)
    deep = [m for m in built if m.hyperparameters["levels"] == 3 and m.num_experts > 0]
    assert {m.hyperparameters["global_mixer"] for m in deep} == {"fourier", "ssm", "none"}
    assert {m.hyperparameters["freq_split"] for m in deep} == {"laplacian", "fft"}


def test_matrix_counts_an_unbuildable_case_as_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ("bad case", "hybridmoe_nano", 2, {"noise": True})  # noise needs texture_head
    good = ("good case", "hybridmoe_nano", 2, {})
    monkeypatch.setattr(export, "matrix_cases", lambda: [bad, good])
    assert export.matrix(tmp_path / "mx", fp16="none") == 1
    out = capsys.readouterr().out
    assert "FAIL bad case: cannot build: ValueError" in out and "texture_head" in out
    assert "ok   good case fp32" in out and "2 configurations, 1 failure(s)" in out


def test_matrix_leaves_files_already_in_its_folder_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The matrix wrote caseNN.onnx straight into DIR and deleted it after each case: a file
    of that name already there was replaced, then removed."""
    good = ("good case", "hybridmoe_nano", 2, {"use_attn": False})
    monkeypatch.setattr(export, "matrix_cases", lambda: [good])
    folder = tmp_path / "mx"
    folder.mkdir()
    (folder / "case00.onnx").write_text("precious\n")
    assert export.matrix(folder, fp16="none") == 0
    assert "ok   good case fp32" in capsys.readouterr().out
    assert (folder / "case00.onnx").read_text() == "precious\n"
    assert sorted(p.name for p in folder.iterdir()) == ["case00.onnx"]  # work folder removed


def test_only_must_select_matrix_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--only that matches nothing ran zero cases and exited 0; --only without --matrix was
    ignored while a checkpoint was exported."""
    assert export.main(["--matrix", str(tmp_path / "mx"), "--only", "nosuchcase"]) == 2
    assert "--only 'nosuchcase' matches no matrix case" in capsys.readouterr().err
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    assert export.main([str(ckpt), str(tmp_path / "a.onnx"), "--only", "nano"]) == 2
    assert "--only is an option of --matrix DIR" in capsys.readouterr().err
    assert export.main([str(ckpt), str(tmp_path / "a.onnx"), "--matrix-fp16", "none"]) == 2
    assert "--matrix-fp16 is an option of --matrix DIR" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


def test_matrix_refuses_the_options_of_a_single_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They were dropped without a word while every case ran (minutes), OUTPUT never written."""
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    mx = str(tmp_path / "mx")
    cases = {
        (str(ckpt), str(tmp_path / "a.onnx")): "CHECKPOINT/OUTPUT",
        ("--fp16",): "--fp16 (use --matrix-fp16)",
        ("--opset", "17"): "--opset",
        ("--no-fuse",): "--no-fuse",
        ("--allow-static",): "--allow-static",
        ("--verify",): "--verify (the matrix always verifies)",
        ("--overwrite",): "--overwrite (it writes into a new DIR)",
    }
    for extra, named in cases.items():
        assert export.main([*extra, "--matrix", mx]) == 2
        err = capsys.readouterr().err
        assert f"it does not take {named}: drop them" in err, err
    assert not (tmp_path / "mx").exists() and not (tmp_path / "a.onnx").exists()


def test_export_threads_must_not_be_negative(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = save_trainer_pth(tiny(scale=2), tmp_path / "net.pth")
    with pytest.raises(SystemExit) as done:
        export.main([str(ckpt), str(tmp_path / "a.onnx"), "--threads", "-1"])
    assert done.value.code == 2 and "argument --threads" in capsys.readouterr().err


def test_dynamo_export_writes_the_requested_opset_or_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dynamo exporter falls back to opset 18 when asked for 17 (or for an opset above
    what it implements); the file was still written and reported as the requested opset. 17
    is refused before the export (which ran for minutes and printed the converter's
    traceback); an exporter that writes another opset than asked is refused after it."""
    ckpt = save_trainer_pth(tiny(scale=2, use_attn=False), tmp_path / "net.pth")
    out = tmp_path / "a.onnx"
    assert export.main([str(ckpt), str(out), "--dynamo", "--opset", "17"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --opset 17: the dynamo exporter writes opset 18 or newer; pass --opset 18, or "
        "drop --dynamo for the TorchScript exporter\n"
    )
    assert not out.exists() and list(tmp_path.glob("*partial*")) == []
    real = export._trace

    def trace_writing_18(net: object, x: object, path: Path, opset: int, dynamo: bool) -> None:
        real(net, x, path, 18, dynamo)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "_trace", trace_writing_18)
    assert export.main([str(ckpt), str(out), "--opset", "19"]) == 2
    err = capsys.readouterr().err
    assert "the TorchScript exporter wrote an opset 18 graph, not the requested opset 19" in err
    assert not out.exists() and list(tmp_path.glob("*partial*")) == []
    monkeypatch.undo()
    assert export.main([str(ckpt), str(out), "--dynamo", "--opset", "18"]) == 0
    assert export.onnx_opset(out) == 18
