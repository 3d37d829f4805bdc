"""Small command-line tools: expert-usage histogram, dataset pairs, comparison configs."""

from __future__ import annotations

import json
from pathlib import Path

import bench_moe
import compare_training
import numpy as np
import pytest
import torch
import yaml
from conftest import TEST_DATA
from PIL import Image
from safetensors.torch import save_file

import hybridmoe_arch as A
from hybridmoe import moe_usage, pairs

OPTIONS = TEST_DATA.parent.parent / "options" / "train" / "HybridMoE"


def tiny_model(scale: int = 2) -> A.HybridMoE:
    return A.HybridMoE(
        scale=scale,
        dim=8,
        enc_blocks=(1, 1, 1),
        hf_blocks=(1, 0, 0),
        mid_blocks=1,
        dec_blocks=(1, 1),
        window_size=4,
        kernel_size=5,
        num_experts=4,
        top_k=1,
    )


@pytest.mark.usefixtures("one_thread")
def test_moe_usage_histogram_sums_to_one(set5_dir: Path) -> None:
    model = tiny_model().eval()
    img = np.asarray(Image.open(set5_dir / "HR" / "bird.png").convert("RGB"))[:48, :48]
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    hist = moe_usage.usage_histograms(model, [x])
    assert list(hist) == ["mid.0.ffn"]
    assert len(hist["mid.0.ffn"]) == 4
    assert abs(sum(hist["mid.0.ffn"]) - 1.0) < 1e-6


def _distinct_experts(top_k: int = 1) -> A.HybridMoE:
    """:func:`tiny_model` with experts far apart and a sharp router: a changed expert choice
    shows in the output."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    model.set_top_k(top_k)
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.w_in.normal_(0, 1.0)
            layer.w_out.normal_(0, 1.0)
            layer.router.normal_(0, 3.0)
    return model


@pytest.mark.usefixtures("one_thread")
def test_moe_routing_drift_separates_rerouting_from_rounding() -> None:
    """A bf16 cast reroutes some tokens of a bar's edges; held to float32's experts, the cast
    model is closer to float32 than with its own choices; the model itself is left as it
    was."""
    model = _distinct_experts()
    bar = torch.full((1, 3, 32, 32), 0.2)
    bar[:, :, 12:20, :] = 0.8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drift = moe_usage.routing_drift(model, [bar], torch.bfloat16)
    assert list(drift["rerouted"]) == ["mid.0.ffn"]
    assert 0 < drift["rerouted"]["mid.0.ffn"] < 0.1
    assert drift["max_abs_diff"] > 1.5 * drift["max_abs_diff_fp32_experts"] > 0
    after = model.state_dict()
    assert all(v.dtype == after[k].dtype and torch.equal(v, after[k]) for k, v in before.items())
    assert next(model.parameters()).dtype == torch.float32
    assert all("route_image" not in vars(layer) for layer in model.moe_layers())


@pytest.mark.usefixtures("one_thread")
def test_moe_routing_drift_compares_expert_sets() -> None:
    """With every expert selected (top_k = E) no token can change its set of experts, however
    the cast reorders them by probability."""
    model = _distinct_experts(top_k=4)
    bar = torch.full((1, 3, 32, 32), 0.2)
    bar[:, :, 12:20, :] = 0.8
    for dtype in (torch.bfloat16, torch.float16):
        assert moe_usage.routing_drift(model, [bar], dtype)["rerouted"] == {"mid.0.ffn": 0.0}


def test_moe_usage_compare_cli(
    tmp_path: Path, set5_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.safetensors"
    save_file(tiny_model().state_dict(), str(path))
    out = tmp_path / "u.json"
    img = str(set5_dir / "HR" / "bird.png")
    assert moe_usage.main([str(path), img, "--compare", "bf16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cast to bf16: share of tokens whose experts differ" in text
    assert "with float32's experts" in text
    record = json.loads(out.read_text())["compare"]
    assert record["dtype"] == "bf16" and list(record["rerouted"]) == ["mid.0.ffn"]
    assert record["max_abs_diff"] > 0 and record["max_abs_diff_fp32_experts"] > 0
    with pytest.raises(SystemExit):
        moe_usage.main([str(path), img, "--compare", "fp64"])
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def test_moe_usage_cli(
    tmp_path: Path,
    set5_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "m.safetensors"
    save_file(tiny_model().state_dict(), str(path))
    assert moe_usage.main([str(path), str(set5_dir / "HR" / "bird.png")]) == 0
    assert "mid.0.ffn" in capsys.readouterr().out
    no_moe = A.HybridMoE(scale=2, dim=8, use_moe=False, window_size=4)
    save_file(no_moe.state_dict(), str(tmp_path / "d.safetensors"))
    read = []
    monkeypatch.setattr(moe_usage, "load_tensor", lambda *a: read.append(a))
    assert moe_usage.main([str(tmp_path / "d.safetensors"), str(set5_dir / "HR")]) == 2
    assert "no MoE layers" in capsys.readouterr().err
    assert not read  # refused before any image was read


def test_make_pairs_defaults_fit_the_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the defaults, every LR written can give the templates' training crop (lq_size);
    the images too small for it are skipped with a warning."""
    src = TEST_DATA / "T91_sample"
    assert (
        pairs.main([str(src), "--out", str(tmp_path / "p"), "--scale", "4", "--workers", "1"]) == 0
    )
    lq = yaml.safe_load((OPTIONS / "4x_HybridMoE_S_fidelity.yml").read_text())["datasets"]["train"]
    lrs = sorted((tmp_path / "p" / "lr").glob("*.png"))
    assert lrs and len(lrs) < len(list(src.glob("*.png")))
    for lr in lrs:
        assert min(Image.open(lr).size) >= lq["lq_size"], lr
    assert "skipped" in capsys.readouterr().err


def test_make_pairs_reproduces_set5_lr(tmp_path: Path, set5_dir: Path) -> None:
    rc = pairs.main(
        [
            str(set5_dir / "HR"),
            "--out",
            str(tmp_path / "p"),
            "--scale",
            "4",
            "--check-against",
            str(set5_dir / "LR_bicubic" / "X4"),
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    assert len(list((tmp_path / "p" / "lr").glob("*.png"))) == 5
    assert (
        pairs.main(
            [
                str(set5_dir / "HR"),
                "--out",
                str(tmp_path / "q"),
                "--scale",
                "2",
                "--min-lr-size",
                "200",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    # only baby (512x512 -> 256) has an LR side >= 200
    assert [p.name for p in (tmp_path / "q" / "lr").glob("*.png")] == ["baby.png"]


def test_comparison_configs_differ_only_in_network(tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "cfg"
    compare_training.main(
        [
            "configs",
            "--models",
            "span",
            "hybridmoe_s",
            "hybridmoe",
            "--scales",
            "4",
            "--iters",
            "100",
            "--out",
            str(out),
        ]
    )
    a = yaml.safe_load((out / "cmp_span_x4.yml").read_text())
    b = yaml.safe_load((out / "cmp_hybridmoe_s_x4.yml").read_text())
    assert a["network_g"] == {"type": "span"} and b["network_g"] == {"type": "hybridmoe_s"}
    # the balance loss only where there are MoE layers: train.py stops at iteration 1 when it
    # has no router statistics (hybridmoe_s has no MoE; the three-level hybridmoe has)
    assert a["train"]["losses"] == b["train"]["losses"]
    moe = yaml.safe_load((out / "cmp_hybridmoe_x4.yml").read_text())["train"]["losses"]
    assert moe[:1] == a["train"]["losses"] and moe[1]["type"] == "hybridmoebalanceloss"
    for key in ("datasets", "val", "logger", "scale"):
        assert a[key] == b[key]
    assert a["train"]["scheduler"]["milestones"] == [50, 75]
    assert a["datasets"]["train"]["lq_size"] == compare_training.LQ_SIZE[4]


def test_comparison_configs_refuse_edited_files_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """configs silently replaced a config edited by hand; make-options refuses that case."""
    out = tmp_path / "cfg"
    argv = ["configs", "--models", "span", "--scales", "2", "--iters", "100", "--out", str(out)]
    assert compare_training.main(argv) == 0
    edited = out / "cmp_span_x2.yml"
    text = edited.read_text() + "# tuned by hand\n"
    edited.write_text(text)
    more = [*argv[:4], "2", "4", *argv[5:]]  # a new scale beside the edited file
    assert compare_training.main(more) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 config(s) under") and "cmp_span_x2.yml" in err
    assert "--overwrite" in err and err.count("\n") == 1
    assert edited.read_text() == text and not (out / "cmp_span_x4.yml").exists()
    assert compare_training.main([*more, "--overwrite"]) == 0
    assert "# tuned by hand" not in edited.read_text() and (out / "cmp_span_x4.yml").is_file()
    assert compare_training.main(more) == 0  # unchanged files are fine


def test_comparison_configs_refuse_bad_input_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown model or --iters 0 were accepted; --scales 5 was a KeyError after creating
    --out; collect of a missing folder a traceback."""
    out = tmp_path / "cfg"
    base = ["configs", "--models", "span", "--iters", "100", "--out", str(out)]
    for extra, message in (
        (["--models", "hybridmoe_nnano"], "unknown model 'hybridmoe_nnano'; known: compact,"),
        (["--iters", "0"], "--iters: must be >= 1, got 0"),
        (["--scales", "5"], "invalid choice: 5 (choose from 1, 2, 3, 4)"),
    ):
        with pytest.raises(SystemExit) as done:
            compare_training.main([*base, *extra])
        err = capsys.readouterr().err
        assert done.value.code == 2 and message in err and "Traceback" not in err
        assert not out.exists()
    assert compare_training.main(["collect", str(tmp_path / "nosuch")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no folder {tmp_path / 'nosuch'}") and err.count("\n") == 1


def test_comparison_collect_keeps_an_existing_json_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """collect --json replaced an existing file silently; now it needs --overwrite, and a
    folder given as --json is named."""
    run = tmp_path / "runs" / "cmp_span_x2"
    run.mkdir(parents=True)
    summary = {"iterations": 10, "total_iter": 10, "final_val": {"PSNR": 30.5, "SSIM": 0.9}}
    (run / "summary.json").write_text(json.dumps(summary))
    target = tmp_path / "compare.json"
    argv = ["collect", str(tmp_path / "runs"), "--json", str(target)]
    assert compare_training.main(argv) == 0
    written = json.loads(target.read_text())
    assert [r["run"] for r in written["runs"]] == ["cmp_span_x2"]
    assert written["runs"][0]["psnr"] == 30.5
    target.write_text("kept")
    capsys.readouterr()
    assert compare_training.main(argv) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and err.count("\n") == 1
    assert target.read_text() == "kept"
    assert compare_training.main([*argv, "--overwrite"]) == 0
    assert json.loads(target.read_text()) == written
    assert compare_training.main(["collect", str(tmp_path / "runs"), "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """README's first command: train briefly, save, load through spandrel, upscale, score."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "demo.py"),
            "--iters",
            "2",
            "--batch",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo model (   2 steps)" in proc.stdout
    assert (out / "net_g_ema_latest.safetensors").is_file()
    assert (out / "butterfly_x2_demo.png").is_file()


STUB_PYTHON = """#!/bin/sh
# stands in for a Python: logs its arguments; `-m venv ... DIR` makes DIR/bin/python a copy
echo "$0 $*" >> "{log}"
if [ "$1 $2" = "-m venv" ]; then
  for last; do :; done
  mkdir -p "$last/bin" && cp "$0" "$last/bin/python"
fi
"""


def test_setup_env_recreates_a_venv_left_without_pip(tmp_path: Path) -> None:
    """An interrupted first run can leave .venv/bin/python without pip; every later run then
    failed with 'No module named pip' instead of making the environment again."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(root / "scripts" / "setup_env.sh", repo / "scripts")
    log = tmp_path / "log.txt"
    python = tmp_path / "python3"
    python.write_text(STUB_PYTHON.format(log=log))
    python.chmod(0o755)
    (repo / ".venv" / "bin").mkdir(parents=True)
    broken = repo / ".venv" / "bin" / "python"
    broken.write_text('#!/bin/sh\necho "$0: No module named pip" >&2\nexit 1\n')
    broken.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(python)}

    def setup() -> subprocess.CompletedProcess[str]:
        script = repo / "scripts" / "setup_env.sh"
        return subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, check=False
        )

    proc = setup()
    assert proc.returncode == 0, proc.stderr
    assert ".venv is incomplete (no working pip); recreating it" in proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"{python} -m venv --clear .venv"
    assert any("pip install -q torch==" in c for c in calls[1:])
    log.unlink()
    assert setup().returncode == 0  # a working .venv is kept
    assert not any(" -m venv" in c for c in log.read_text().splitlines())


def test_demo_refuses_a_crop_larger_than_every_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --crop no training photo can give was an IndexError from random.choice; a zero
    --batch or --iters a traceback or an untrained model."""
    import demo

    photos = tmp_path / "repo" / "tests" / "data" / "T91_sample"
    photos.mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(photos / "a.png")
    monkeypatch.setattr(demo, "REPO_ROOT", tmp_path / "repo")
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as done:
        demo.main(["--crop", "41", "--out", str(out)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert f"no training photo in {photos} is large enough for --crop 41" in err
    assert "an HR side of at least 82 pixels" in err and "lower --crop" in err
    assert not out.exists()
    for option in ("--batch", "--iters", "--crop"):
        with pytest.raises(SystemExit) as done:
            demo.main([option, "0", "--out", str(out)])
        assert done.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_bench_moe_writes_one_row_per_map_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "moe.json"
    argv = ["--channels", "8", "--experts", "4", "--top-k", "1", "--sizes", "6x5", "9x4"]
    monkeypatch.setenv("HYBRIDMOE_COMMIT", "abc")
    assert bench_moe.main([*argv, "--repeat", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["map"] for r in rec["rows"]] == ["6x5", "9x4"]
    assert rec["rows"][0]["tokens"] == 30 and rec["commit"] == "abc" and rec["date"]
    assert rec["layer"] == {
        "channels": 8,
        "hidden": 16,
        "experts": 4,
        "top_k": 1,
        "dtype": "fp32",
        "memory_format": "channels_last",
        "mode": "inference",
    }
    assert all(r["sparse_ms"] > 0 and r["dense_twin_ms"] > 0 for r in rec["rows"])
    trained = tmp_path / "moe_train.json"
    assert bench_moe.main([*argv, "--repeat", "1", "--train", "--json", str(trained)]) == 0
    rec = json.loads(trained.read_text())
    assert rec["layer"]["mode"] == "forward + backward" and len(rec["rows"]) == 2
    assert not A.MOE_AUX.has_terms()  # the timed training forwards leave no balance terms
    before = out.read_text()
    with pytest.raises(SystemExit):
        bench_moe.main([*argv, "--json", str(out)])
    assert "exists" in capsys.readouterr().err and out.read_text() == before
    with pytest.raises(SystemExit):
        bench_moe.main([*argv[:-2], "9y4"])
    assert "expected WxH, e.g. 1920x1080, got '9y4'" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_bench_moe_writes_its_record_into_a_new_folder_and_checks_it_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json in a folder that did not exist yet was a FileNotFoundError after all the
    measuring; one under a file is refused before it."""
    argv = ["--channels", "8", "--experts", "2", "--top-k", "1", "--sizes", "4x4", "--repeat", "1"]
    out = tmp_path / "new" / "moe.json"
    assert bench_moe.main([*argv, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["map"] == "4x4"
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        bench_moe.main([*argv, "--json", str(tmp_path / "file" / "moe.json")])
    captured = capsys.readouterr()
    assert done.value.code == 2 and "is a file, not a folder" in captured.err
    assert "map" not in captured.out  # refused before measuring


def test_measure_tiling_takes_images_from_outside_the_checkout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data outside the checkout crashed after all the measuring, before writing the record;
    a missing image, an unknown model or a crop smaller than the reach probe are usage errors."""
    import measure_tiling

    (tmp_path / "hr").mkdir()
    Image.open(TEST_DATA / "Set5" / "HR" / "bird.png").save(tmp_path / "hr" / "bird.png")
    base = ["--models", "2x_HybridMoE_Nano", "--images", "bird", "--data", str(tmp_path / "hr")]
    out = tmp_path / "r.json"
    quick = ["--crop", "49", "--tiles", "24", "--overlaps", "4"]
    assert measure_tiling.main([*base, *quick, "--json", str(out)]) == 0
    inputs = json.loads(out.read_text())["values"]["inputs"]
    assert f"({tmp_path / 'hr'})" in inputs
    for extra, message in (
        (["--images", "nope"], "cannot read image"),
        (["--models", "nope"], "not shipped models: nope"),
        (["--crop", "48"], "--crop must be 0 (whole images) or at least 49"),
    ):
        with pytest.raises(SystemExit) as done:
            measure_tiling.main([*base, *quick, *extra, "--json", str(tmp_path / "x.json")])
        assert done.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_measure_tiling_runs_in_a_copy_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a copy of the checkout without its .git, listing the changed files was a
    CalledProcessError before anything was measured; the record says null instead."""
    import measure_tiling

    copy = tmp_path / "copy"
    copy.mkdir()
    monkeypatch.setattr(measure_tiling, "ROOT", copy)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("HYBRIDMOE_COMMIT", raising=False)
    assert measure_tiling.code_changes() is None
    out = tmp_path / "r.json"
    argv = [
        "--models",
        "2x_HybridMoE_Nano",
        "--images",
        "bird",
        "--data",
        str(TEST_DATA / "Set5" / "HR"),
    ]
    argv += ["--crop", "49", "--tiles", "24", "--overlaps", "4", "--json", str(out)]
    assert measure_tiling.main(argv) == 0
    assert json.loads(out.read_text())["code_changes_vs_commit"] is None


def test_check_cuda_checks_run_and_report_on_the_cpu(tmp_path: Path) -> None:
    """scripts/check_cuda.py's checks, run on the CPU with tiny inputs: every row says what it
    compared, the window-attention halves equal the whole map, an empty batch keeps its shape,
    and a record that exists is refused before anything runs."""
    import check_cuda

    torch.manual_seed(0)
    nets = {"tiny": check_cuda._wake(tiny_model(2), 0)}
    assert all(p.abs().max() > 0 for p in nets["tiny"].parameters())  # every branch reaches out
    rows = check_cuda.check_empty_batch(nets, 2, "cpu")
    assert [r["dtype"] for r in rows] == ["fp32", "fp16", "bf16"]
    assert all(r["ok"] and r["shape"] == [0, 3, 48, 48] for r in rows), rows
    windows = check_cuda.check_sdpa_windows(32, "cpu")
    assert [r["windows"] for r in windows] == [16, 16, 16]
    assert all(r["finite"] and r["rel_max_diff"] < 1e-2 for r in windows), windows
    with pytest.raises(SystemExit, match="multiple of 16"):
        check_cuda.check_sdpa_windows(40, "cpu")
    out = tmp_path / "r.json"
    out.write_text("{}")
    with pytest.raises(SystemExit, match="exists"):
        check_cuda.main(["--json", str(out), "--device", "cpu"])
    assert out.read_text() == "{}"
