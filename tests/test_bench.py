"""CPU checks of ``hybridmoe bench``: JSON layout, reference ratios and error handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hybridmoe import bench, provenance

CPU_ARGS = [
    "--device", "cpu", "--out-size", "64x48", "--scales", "2", "--dtypes", "fp32",
    "--repeat", "2", "--warmup", "1", "--flops-size", "32",
]  # fmt: skip


def rows_of(result: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """Inference rows of one model."""
    return [r for r in result["rows"] if r["model"] == model]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small CPU run of three models, read back from the JSON file."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    models = ["compact", "span", "hybridmoe_nano"]
    train = ["--train-batch", "2", "--train-size", "16"]
    returned = bench.main([*CPU_ARGS, "--models", *models, *train, "--json", str(path)])
    on_disk = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    assert on_disk == json.loads(json.dumps(returned))
    return on_disk


def test_environment_and_config(run: dict[str, Any]) -> None:
    env = run["environment"]
    for key in ("torch", "cuda", "device", "date", "command"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert "bench.py" in env["command"]
    assert "--models compact span hybridmoe_nano" in env["command"]
    assert run["config"]["reference"] == {"model": "span", "variant": "eager"}
    assert run["config"]["out_size"] == [64, 48]


@pytest.mark.parametrize("model", ["compact", "span"])
def test_peer_rows(run: dict[str, Any], model: str) -> None:
    rows = rows_of(run, model)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row["error"]
    assert (row["variant"], row["dtype"], row["precision"]) == ("eager", "fp32", "fp32")
    # named fields: the old lr_size list was [W, H], the degraded-set manifests' sizes [H, W]
    assert (row["lr_width"], row["lr_height"]) == (32, 24)
    assert "lr_size" not in row
    assert row["params"] > 0
    assert row["latency_median_ms"] > 0
    assert row["iterations"] == 2
    assert row["latency_iqr_ms"] >= 0
    assert row["gflops_per_out_mp"] > 0
    assert row["nonfinite"] is False
    assert row["peak_mem_mib"] is None  # CPU


def test_ratio_to_reference(run: dict[str, Any]) -> None:
    (ref,) = rows_of(run, "span")
    assert ref["ratio_to_ref"] == pytest.approx(1.0)
    for row in run["rows"]:
        if row["status"] == "ok":
            expected = row["latency_median_ms"] / ref["latency_median_ms"]
            assert row["ratio_to_ref"] == pytest.approx(expected)


def test_hybridmoe_rows(run: dict[str, Any]) -> None:
    rows = {r["variant"]: r for r in rows_of(run, "hybridmoe_nano")}
    assert set(rows) == {"eager", "fused"}
    for row in rows.values():
        assert row["status"] == "ok", row["error"]
        assert row["params"] > 0
        assert row["latency_median_ms"] > 0
    assert rows["fused"]["params"] < rows["eager"]["params"]


def test_train_steps(run: dict[str, Any]) -> None:
    steps = {t["model"]: t for t in run["train_steps"]}
    assert set(steps) == {"compact", "span", "hybridmoe_nano"}
    for step in steps.values():
        assert step["status"] == "ok", step["error"]
        assert (step["scale"], step["batch"], step["lr_size"]) == (2, 2, 16)
        assert step["step_median_ms"] > 0
        assert step["iterations"] == 2
        assert step["params"] > 0
        assert step["loss_finite"] is True
    assert steps["span"]["ratio_to_ref"] == pytest.approx(1.0)


def test_unknown_model_lists_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--models", "compact", "no_such_net"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_net" in err
    for name in ("hybridmoe_s", "span", "plksr_tiny", "hat_s", "compact"):
        assert name in err


def test_an_output_smaller_than_one_lr_pixel_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """3x3 at x4 timed a 1x1 -> 4x4 frame, larger than the size asked for."""
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--out-size", "3x3", "--scales", "2", "4"])
    assert exc.value.code == 2
    assert "--out-size 3x3 is smaller than one LR pixel at x4" in capsys.readouterr().err


def test_an_existing_report_is_kept_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.json"
    path.write_text("{}")
    with pytest.raises(SystemExit) as exc:  # refused before anything is timed
        bench.main([*CPU_ARGS, "--models", "compact", "--json", str(path)])
    assert exc.value.code == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert path.read_text() == "{}"
    args = [*CPU_ARGS, "--models", "compact", "--ref", "compact", "--no-train-step"]
    bench.main([*args, "--json", str(path), "--overwrite"])
    assert rows_of(json.loads(path.read_text()), "compact")


class Broken(nn.Module):
    """A network whose forward always fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("simulated failure")


def cannot_build(scale: int) -> nn.Module:
    """A builder that rejects every scale."""
    raise ValueError(f"scale {scale} unsupported")


def test_failures_become_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        bench.MODELS, "broken", bench.ModelSpec("broken", lambda s: Broken(), False, "")
    )
    monkeypatch.setitem(
        bench.MODELS, "unbuildable", bench.ModelSpec("unbuildable", cannot_build, False, "")
    )
    path = tmp_path / "out.json"
    models = ["broken", "unbuildable", "compact"]
    args = [*CPU_ARGS, "--models", *models, "--ref", "compact", "--json", str(path)]
    result = bench.main([*args, "--no-train-step"])

    (broken,) = rows_of(result, "broken")
    assert broken["status"] == "error"
    assert "simulated failure" in broken["error"]
    assert broken["params"] > 0  # measured before the failing forward
    (unbuildable,) = rows_of(result, "unbuildable")
    assert unbuildable["status"] == "skipped"
    assert "unsupported" in unbuildable["error"]
    (compact,) = rows_of(result, "compact")
    assert compact["status"] == "ok"
    assert compact["ratio_to_ref"] == pytest.approx(1.0)
    assert result["train_steps"] == []
    assert json.loads(path.read_text())["rows"][0]["status"] == "error"


def test_records_name_the_commit_from_the_environment_over_git(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkout copied to a GPU machine can carry stale git metadata: $HYBRIDMOE_COMMIT, when
    set, is the commit every measurement record names (the sweep's records included). An
    installed package names none: a git repository around its install folder is another
    project's."""
    import sweep

    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    head = provenance.git_commit()
    assert head is not None and len(head) == 40  # the tests run in a checkout
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abc")
    assert provenance.git_commit() == sweep.provenance()["commit"] == "0123abc"
    assert bench.environment(torch.device("cpu"), [])["git_commit"] == "0123abc"
    monkeypatch.setenv(provenance.COMMIT_ENV, "")
    assert provenance.git_commit() == head
    monkeypatch.setattr(provenance, "IN_CHECKOUT", False)
    assert provenance.git_commit() is None


def test_record_header_quotes_the_command_and_dates_it_in_utc() -> None:
    header = provenance.record_header(["hybridmoe", "evaluate", "my model.pth", "--sets", "Set5"])
    assert header["command"] == "hybridmoe evaluate 'my model.pth' --sets Set5"
    assert header["date"].endswith("+00:00") and len(header["date"]) == 25
    assert set(header) == {"command", "commit", "date"}


def test_a_cpu_run_at_the_default_size_says_how_to_be_quick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.parse_args(["--device", "cpu", "--models", "compact", "--json", str(tmp_path / "a")])
    assert "--out-size 256x256 --dtypes fp32" in capsys.readouterr().out
    bench.parse_args([*CPU_ARGS, "--models", "compact", "--json", str(tmp_path / "b")])
    assert "many minutes" not in capsys.readouterr().out


def test_repeated_scales_and_dtypes_run_once_and_out_size_equals_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scales 2 2 ran everything twice (the reference's ratio to itself was not 1.00);
    --out-size=WxH still printed the slow-CPU note; --moe-sweep did nothing (no variant has
    MoE layers) and is gone."""
    args = bench.parse_args(
        [*CPU_ARGS, "--scales", "2", "2", "--dtypes", "fp32", "fp32", "--json", str(tmp_path / "a")]
    )
    assert args.scales == [2] and args.dtypes == ["fp32"]
    argv = ["--device", "cpu", "--out-size=64x48", "--models", "compact"]
    bench.parse_args([*argv, "--json", str(tmp_path / "b")])
    assert "many minutes" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.parse_args([*CPU_ARGS, "--moe-sweep", "--json", str(tmp_path / "c")])


class _SpectralBlur(nn.Module):
    """rfft2 -> scale -> irfft2, as the fourier mixer does (no convolution or matmul)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft2(x, norm="ortho")
        spec = torch.fft.ifft(torch.fft.fft(spec, dim=-2), dim=-2)  # a complex pair too
        return torch.fft.irfft2(spec * 0.5, s=x.shape[-2:], norm="ortho")


def test_count_flops_counts_the_ffts_flop_counter_mode_leaves_out() -> None:
    """(2, 3, 8, 16): 6 signals of N = 128 points; real FFT 2.5·N·log2 N each way, the
    complex FFT pair along H (8 points, 6·9 columns) 5·n·log2 n each."""
    x = torch.rand(2, 3, 8, 16)
    flops, out = bench.count_flops(_SpectralBlur(), x)
    real = 6 * 2.5 * 128 * 7
    complex_pair = 2 * (6 * 9) * 5 * 8 * 3
    assert flops == pytest.approx(2 * real + complex_pair, abs=2)
    assert out.shape == x.shape
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert bench.count_flops(conv, x)[0] == 2 * 2 * 4 * 3 * 9 * 8 * 16  # convolutions unchanged
