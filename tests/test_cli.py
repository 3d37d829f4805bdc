"""The ``hybridmoe`` command: subcommands, shipped models by name, missing optional extras."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridmoe import cli, cliargs, export, upscale
from hybridmoe.checkpoint import CheckpointError, load_checkpoint
from hybridmoe.cliargs import device_name
from hybridmoe.models import resolve_model, shipped_models

pytestmark = pytest.mark.usefixtures("one_thread")


def test_models_lists_the_shipped_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("2x_HybridMoE_Nano", "2x_HybridMoE_S", "4x_HybridMoE_Nano", "4x_HybridMoE_S"):
        assert name in out


def test_upscale_with_a_shipped_model_by_name(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)).save(src)
    assert cli.main(["upscale", "2x_HybridMoE_Nano", str(src), str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (20, 24)


def test_model_names_resolve_case_insensitively() -> None:
    assert resolve_model("2x_hybridmoe_s") == shipped_models()["2x_HybridMoE_S"]
    assert load_checkpoint("4x_HybridMoE_Nano.safetensors").scale == 4
    with pytest.raises(CheckpointError, match="neither a file nor a shipped model name"):
        resolve_model("3x_HybridMoE_XL")
    with pytest.raises(CheckpointError, match=r"not found: '3x_HybridMoE_XL' is neither"):
        resolve_model(Path("3x_HybridMoE_XL"))  # the name as typed, not PosixPath('...')


def test_export_without_the_onnx_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    code = cli.main(["export-onnx", "2x_HybridMoE_Nano", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "hybridmoe-freqnet[onnx]" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
    assert export.ONNX_PACKAGES == ("onnx", "onnxruntime")


def test_unknown_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "install-trainner" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_names_itself_in_its_usage(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: hybridmoe {name} ")


DEVICE_COMMANDS = ["upscale", "evaluate", "bench", "check-precision", "moe-usage", "fuse"]


@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_every_device_option_is_auto_cpu_or_cuda_checked_at_parse_time(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    assert "--device {auto,cpu,cuda}" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--device", "cuda"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: cuda: CUDA is not available here" in err
    assert "use --device cpu" in err


def test_device_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_name("auto") == "cpu" and device_name("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="'gpu' is not a device"):
        device_name("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_name("auto") == "cuda" and device_name("cuda:1") == "cuda:1"
    with pytest.raises(argparse.ArgumentTypeError, match="has 2 CUDA device"):
        device_name("cuda:2")


def test_a_reader_that_goes_away_is_not_a_traceback() -> None:
    """``hybridmoe models | head -1``: the pipe closes before the list is written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridmoe", "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the program has imported torch, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


INTERRUPTIBLE = {
    "evaluate": "evaluate",
    "make-pairs": "pairs",
    "make-degraded": "degraded_sets",
    "fuse": "fuse",
    "export-onnx": "export",
    "check-precision": "precision",
}
"""Subcommands that printed a traceback on Ctrl-C -> their module."""


def _interrupt(*_args: object) -> int:
    raise KeyboardInterrupt


@pytest.mark.parametrize("name", list(INTERRUPTIBLE))
def test_ctrl_c_is_one_line_and_exit_status_130(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        importlib.import_module(f"hybridmoe.{INTERRUPTIBLE[name]}"), "main", _interrupt
    )
    try:
        code = cli.main([name])
    except KeyboardInterrupt:
        pytest.fail(f"Ctrl-C in hybridmoe {name} ended in a traceback")
    assert code == 130 and capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_in_upscale_keeps_its_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(upscale, "prepare", _interrupt)
    code = cli.main(["upscale", "2x_HybridMoE_Nano", str(tmp_path / "a.png"), str(tmp_path)])
    assert code == 130
    assert capsys.readouterr().err == "interrupted; no partial output was left\n"


def test_numeric_options_name_what_they_want(capsys: pytest.CaptureFixture[str]) -> None:
    """A word where a number belongs is answered with what the option wants; argparse's own
    message named the type function ("invalid non_negative_int value: 'abc'")."""
    for fn, text, wanted in (
        (cliargs.positive_int, "x", "must be an integer >= 1, got 'x'"),
        (cliargs.non_negative_int, "1.5", "must be an integer >= 0, got '1.5'"),
        (cliargs.positive_float, "nan?", "must be a number > 0, got 'nan?'"),
        (cliargs.finite_non_negative, "", "must be a finite number >= 0, got ''"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(wanted)):
            fn(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["upscale", "m.safetensors", "in.png", "out.png", "--tile", "abc"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--tile: must be an integer >= 0, got 'abc'" in err, err
