"""No data loss and no silent garbage in fuse.py, export.py, evaluate.py,
precision.py and moe_usage.py: outputs never replace an input, existing files are kept
unless ``--overwrite``, files are written atomically, unusable output folders are reported,
and NaN/Inf weights or outputs fail loudly."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_options import TINY

import hybridmoe_arch as A
from hybridmoe import checkpoint as C
from hybridmoe import cli, evaluate, export, fuse, imageio, moe_usage
from hybridmoe import precision as cp
from hybridmoe.models import perturb

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SET5_HR = DATA / "Set5" / "HR"
QUICK = ["--data", str(DATA), "--sets", "Set5", "--limit", "1", "--crop", "16", "--threads", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**options: Any) -> A.HybridMoE:
    """A tiny HybridMoE ×2 with every parameter moved off its initialization."""
    model = A.HybridMoE(**{**TINY, "scale": 2, **options})
    perturb(model, 0.02, seed=1)
    return model.eval()


def save_pth(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"metadata": dict(model.hyperparameters), "params": model.state_dict()}, path)
    return path


def with_nan_weight(model: A.HybridMoE) -> A.HybridMoE:
    """``model`` with one weight of its output convolution set to NaN."""
    last = [p for p in model.parameters() if p.ndim == 4][-1]
    with torch.no_grad():
        last.view(-1)[0] = float("nan")
    return model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pth(tiny(), tmp_path_factory.mktemp("ckpt") / "net_g.pth")


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HybridMoE checkpoint whose state dict holds one NaN weight."""
    sd = tiny().state_dict()
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 4)
    sd[key].view(-1)[0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.safetensors"
    save_file(sd, str(path), metadata={"metadata": json.dumps(dict(tiny().hyperparameters))})
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


# -------------------------------------------------------------------------- cli_safety


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), imageio.atomic_output(out, overwrite=True) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != out
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert out.read_text() == "old" and leftovers(tmp_path) == []
    with imageio.atomic_output(out, overwrite=True) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and leftovers(tmp_path) == []
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()  # not mkstemp's 0600
    with imageio.atomic_output(out, overwrite=True) as tmp:  # a writer that recreates the file
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"new")
        os.close(fd)
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()
    # without overwrite, a file that appeared meanwhile is not replaced
    with (
        pytest.raises(imageio.OutputError, match="appeared"),
        imageio.atomic_output(out) as tmp,
    ):
        tmp.write_text("newer")
    assert out.read_text() == "new" and leftovers(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_check_output(tmp_path: Path) -> None:
    src = tmp_path / "in.pth"
    src.write_bytes(b"x")
    link = tmp_path / "hard.pth"
    os.link(src, link)
    for same in (src, link, tmp_path / "." / "in.pth"):
        with pytest.raises(imageio.OutputError, match="same file as the input"):
            imageio.check_output(same, overwrite=True, inputs=[src])
    with pytest.raises(imageio.OutputError, match="--overwrite"):
        imageio.check_output(link, overwrite=False)
    imageio.check_output(link, overwrite=True)
    imageio.check_output(tmp_path / "new" / "dir" / "o.pth", overwrite=False, inputs=[src])
    with pytest.raises(imageio.OutputError, match=r"in\.pth is a file, not a folder") as info:
        imageio.check_output(src / "sub" / "o.json", overwrite=False)
    assert str(info.value).endswith("choose another output path")  # not about permissions
    with pytest.raises(imageio.OutputError, match="is a folder"):
        imageio.check_output(tmp_path, overwrite=True)


def test_check_output_unwritable_folder(unwritable_folder: Path) -> None:
    with pytest.raises(imageio.OutputError, match=f"{unwritable_folder} is not writable"):
        imageio.check_output(unwritable_folder / "o.json", overwrite=False)
    with pytest.raises(imageio.OutputError, match=f"{unwritable_folder} is not writable"):
        imageio.check_output(unwritable_folder / "new" / "o.json", overwrite=False)


def test_unwritable_output_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder that refuses the file (permissions, read-only file system) at writing time:
    one error line, no traceback (simulated: this test may run as root)."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imageio.tempfile, "mkstemp", refuse)
    with pytest.raises(imageio.OutputError, match=r"cannot write the report .*Permission"):
        imageio.write_text_atomic(tmp_path / "r.json", "{}")
    results = evaluate.evaluate(None, DATA, ["Set5"], bicubic_only=True, scale=4, limit=1)
    with pytest.raises(imageio.OutputError, match="Permission denied"):
        evaluate.write_json(results, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------ fuse.py


def test_fuse_refuses_to_replace_its_input(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tiny_ckpt.read_bytes()
    link = tmp_path / "link.pth"
    os.link(tiny_ckpt, link)
    for out in (tiny_ckpt, link):
        for extra in ([], ["--overwrite"]):
            assert fuse.main([str(tiny_ckpt), str(out), *extra]) == 2
            assert "same file as the input" in capsys.readouterr().err
    assert tiny_ckpt.read_bytes() == before


def test_fuse_keeps_an_existing_output_unless_overwrite(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fused.safetensors"
    out.write_bytes(b"precious")
    assert fuse.main([str(tiny_ckpt), str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert fuse.main([str(tiny_ckpt), str(out), "--overwrite"]) == 0
    assert C.load_checkpoint(out).model.deploy and leftovers(tmp_path) == []


def test_fuse_failed_write_leaves_nothing(
    tiny_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "fused.pth"
    out.write_bytes(b"previous")

    def half_write(_model: torch.nn.Module, path: Path) -> None:
        path.write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fuse, "save_checkpoint", half_write)
    assert fuse.main([str(tiny_ckpt), str(out), "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_fuse_output_under_a_file(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert fuse.main([str(tiny_ckpt), str(blocker / "fused.pth")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["fuse", "export-onnx", "evaluate", "check-precision"])
def test_nan_weights_are_refused_at_load(
    tool: str, nan_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every tool refuses a checkpoint with NaN weights before using it, naming the tensor
    (NaN weights used to score about 5.5 dB: NaN cast to 0, a black image)."""
    out = {"fuse": ["out.safetensors"], "export-onnx": ["out.onnx"]}.get(tool, [])
    data = ["--data", str(DATA), "--sets", "Set5", "--limit", "1"]
    args = [str(nan_ckpt), *(str(tmp_path / o) for o in out), *([] if out else data)]
    assert cli.main([tool, *args]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "weight" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_fuse_verification_fails_on_nonfinite_outputs(
    tiny_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fusion that yields NaN must fail the check (``nan > tol`` is False)."""
    real_fuse = A.HybridMoE.fuse

    def broken_fuse(self: A.HybridMoE) -> A.HybridMoE:
        return with_nan_weight(real_fuse(self))

    monkeypatch.setattr(A.HybridMoE, "fuse", broken_fuse)
    out = tmp_path / "fused.safetensors"
    assert fuse.main([str(tiny_ckpt), str(out)]) == 1
    assert "NaN/Inf output" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []
    x = torch.rand(1, 3, 12, 12)
    good = tiny()
    assert np.isnan(fuse.max_abs_diff(good, with_nan_weight(tiny()), x))
    assert fuse.max_abs_diff(good, good, x) == 0.0


def test_fuse_verification_measures_the_largest_difference() -> None:
    """The fused network is checked on its worst pixel: one output value off by 0.01 in a
    12x12 image gives 0.01 (its mean over all values would be 0.01 / 432, under the 1e-4
    tolerance)."""

    class OnePixelOff(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            y[0, 1, 5, 7] += 0.01
            return y

    x = torch.rand(1, 3, 12, 12)
    d = fuse.max_abs_diff(torch.nn.Identity(), OnePixelOff(), x)
    assert d == pytest.approx(0.01, abs=1e-6)


# ----------------------------------------------------------------------- export.py


def test_onnx_output_checks_and_nan_weights(
    tiny_ckpt: Path, nan_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous graph")
    assert export.main([str(tiny_ckpt), str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    link = tmp_path / "ckpt.onnx"
    os.link(tiny_ckpt, link)
    assert export.main([str(tiny_ckpt), str(link), "--overwrite"]) == 2
    assert "same file as the input" in capsys.readouterr().err
    assert out.read_bytes() == b"previous graph"
    assert export.main([str(tiny_ckpt), str(out), "--overwrite"]) == 0
    assert export.onnx_dims(out)[0][1] == 3 and leftovers(tmp_path) == []


def test_onnx_verify_catches_nonfinite_outputs(tmp_path: Path) -> None:
    model = tiny().fuse().eval()
    res = export.export(model, tmp_path / "m.onnx")
    sizes = [(1, 13, 11), (1, 12, 17)]
    assert export.verify(model, res, sizes, log=lambda _: None) < 1e-4
    lines: list[str] = []
    worst = export.verify(with_nan_weight(tiny()), res, sizes, log=lines.append)
    assert worst == float("inf") and "NaN/Inf" in lines[0]


# --------------------------------------------------------------------------- evaluate.py


def test_super_resolve_nonfinite_output(tiny_ckpt: Path) -> None:
    desc = evaluate.load_descriptor(tiny_ckpt, "cpu", "fp32")
    with_nan_weight(desc.model)
    lr = np.zeros((12, 10, 3), np.uint8)
    with pytest.raises(evaluate.NonFiniteOutputError, match=r"img\.png.*float32 on cpu"):
        evaluate.super_resolve(desc, lr, None, name="img.png")
    with pytest.raises(evaluate.NonFiniteOutputError):
        evaluate.super_resolve(desc, lr, 4)  # tiled


def test_evaluate_json_output_checks(
    nan_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --json file is checked before the run: never the model file, never an existing
    file without --overwrite, never under a file."""
    bicubic = ["--bicubic-only", "--scale", "4", "--data", str(DATA), "--sets", "Set5"]
    bicubic += ["--limit", "1", "--json"]
    before = nan_ckpt.read_bytes()
    assert evaluate.main([str(nan_ckpt), "--sets", "Set5", "--json", str(nan_ckpt)]) == 2
    assert "same file as the input" in capsys.readouterr().err
    assert nan_ckpt.read_bytes() == before
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert evaluate.main([*bicubic, str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "{}"
    assert evaluate.main([*bicubic, str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["scale"] == 4
    assert evaluate.main([*bicubic, str(out / "x.json")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------- precision.py


def test_check_precision_output_checks(
    nan_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.json"
    out.write_text("{}")
    assert cp.main([str(nan_ckpt), *QUICK, "--precisions", "fp32", "--json", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cp.main([str(nan_ckpt), *QUICK, "--json", str(nan_ckpt)]) == 2
    assert "same file as the input" in capsys.readouterr().err


# -------------------------------------------------------------------------- moe_usage.py


def test_moe_usage_input_errors(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert moe_usage.main([str(tiny_ckpt), str(empty)]) == 2
    assert f"no images in the folder {empty}" in capsys.readouterr().err
    assert moe_usage.main([str(tiny_ckpt), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert moe_usage.main([str(tiny_ckpt), str(tmp_path / "bad.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_moe_usage_json(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = str(SET5_HR / "bird.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert moe_usage.main([str(tiny_ckpt), img, "--json", str(blocker / "u.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    out = tmp_path / "u.json"
    out.write_text("keep")
    assert moe_usage.main([str(tiny_ckpt), img, "--json", str(out)]) == 2
    assert out.read_text() == "keep"
    assert moe_usage.main([str(tiny_ckpt), img, "--json", str(out), "--overwrite"]) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 1
    words = ["hybridmoe", "moe-usage", str(tiny_ckpt), img, "--json", str(out), "--overwrite"]
    assert record["command"] == shlex.join(words) and record["date"] and "commit" in record


def test_moe_usage_reads_16bit_greyscale(
    tmp_path: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 16-bit greyscale image routes like its 8-bit version (it used to read as white)."""
    from PIL import Image

    with Image.open(SET5_HR / "bird.png") as im:
        grey = np.asarray(im.convert("L"))[:64, :64]
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    hists = []
    Image.fromarray(np.full_like(grey, 255)).save(tmp_path / "white.png")
    for name in ("g8.png", "g16.png", "white.png"):
        assert moe_usage.main([str(tiny_ckpt), str(tmp_path / name)]) == 0
        hists.append([ln for ln in capsys.readouterr().out.splitlines() if "ffn" in ln])
    assert hists[0] and hists[0] == hists[1]
    assert hists[2] != hists[0]  # the routing does see the image


def test_an_output_name_at_the_file_system_limit_is_written(tmp_path: Path) -> None:
    """The temporary file was named after the whole output name plus about 18 characters, so
    an output name the file system takes (up to 255 bytes, e.g. 80 CJK characters) failed
    with 'File name too long', in upscale after the model had run."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    stem = "あ" * ((limit - 4) // 3)  # 3 bytes each in UTF-8
    out = tmp_path / f"{stem}{'x' * (limit - 4 - len(stem.encode()))}.png"
    assert len(out.name.encode()) == limit
    imageio.write_image(out, np.zeros((2, 3, 3), np.float32), "png", overwrite=False)
    with Image.open(out) as im:
        assert im.size == (3, 2)
    assert leftovers(tmp_path) == []
    with imageio.atomic_output(out, overwrite=True) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"
        tmp.write_bytes(b"x")
    assert out.read_bytes() == b"x" and leftovers(tmp_path) == []
