"""scripts/sweep.py, the side-by-side training / timing / evaluation driver of the ablations:
training resumes from its saved state, seeds get their own runs, several data folders are
pooled, the evaluator writes one record per trained model, and the tables read the records."""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import sweep
import torch
from conftest import ROOT as REPO
from conftest import TEST_DATA
from PIL import Image

from hybridmoe import checkpoint as C
from hybridmoe import provenance

HR = TEST_DATA / "Set5" / "HR"


def _train(out: Path, iters: int, seed: int, data: list[Path]) -> None:
    args = ["train-one", "--config", "trunk64x10_lean", "--scale", "4", "--iters", str(iters)]
    args += ["--seed", str(seed), "--data", *map(str, data), "--out", str(out)]
    assert sweep.main(args) == 0


def _iters(run: Path) -> list[int]:
    return [json.loads(line)["iter"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("one_thread")
def test_train_resumes_seeds_get_own_runs_and_eval_writes_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "RECIPE", {**sweep.RECIPE, "batch": 2})
    monkeypatch.setattr(sweep, "SAVE_EVERY", 1)
    runs = tmp_path / "runs"
    _train(runs, 2, 1, [HR, HR])
    run = runs / "trunk64x10_lean_x4_seed1"
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["iterations"], meta["finished"], meta["seed"]) == (2, True, 1)
    assert meta["pairs"] == 10  # both folders pooled
    first = torch.load(run / "ema.pt", weights_only=True)
    _train(runs, 3, 1, [HR, HR])  # a larger budget continues the run
    assert json.loads((run / "meta.json").read_text())["iterations"] == 3
    assert not torch.equal(
        first["stem.weight"], torch.load(run / "ema.pt", weights_only=True)["stem.weight"]
    )
    _train(runs, 1, 0, [HR])
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [
        "trunk64x10_lean_x4",
        "trunk64x10_lean_x4_seed1",
    ]

    records = tmp_path / "records"
    argv = ["eval", "--runs", str(runs), "--records", str(records), "--recipe", "t"]
    assert sweep.main([*argv, "--data", str(TEST_DATA), "--sets", "Set5", "--limit", "1"]) == 0
    recs = {p.name: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert set(recs) == {"t_trunk64x10_lean_x4_1.json", "t_trunk64x10_lean_x4_seed1_3.json"}
    rec = recs["t_trunk64x10_lean_x4_seed1_3.json"]
    assert rec["model"] == "hybridmoe_nano" and rec["config"] == "trunk64x10_lean"
    assert rec["seed"] == 1 and rec["iterations"] == 3 and rec["images"] == {"Set5": 1}
    assert rec["train_data"]["pairs"] == 10 and 10 < rec["psnr"]["Set5"] < 60
    # the record names the machine it was scored on (CPU model and cores here), not only "cpu"
    assert rec["eval_device"] == "cpu" and rec["device"] == provenance.machine("cpu")
    # a set asked for by name that a record lacks is added to it; its other numbers stay
    data = tmp_path / "sets"
    (data / "Set14" / "HR").mkdir(parents=True)
    (data / "Set5").symlink_to(TEST_DATA / "Set5")
    (data / "Set14" / "HR" / "bird.png").write_bytes((HR / "bird.png").read_bytes())
    path = records / "t_trunk64x10_lean_x4_seed1_3.json"
    assert sweep.main([*argv, "--data", str(data), "--sets", "Set5", "Set14", "--limit", "1"]) == 0
    grown = json.loads(path.read_text())
    assert grown["psnr"]["Set5"] == rec["psnr"]["Set5"] and 10 < grown["psnr"]["Set14"] < 60
    assert grown["psnr"]["Set14"] != rec["psnr"]["Set5"]  # bird, not baby
    assert grown["images"] == {"Set5": 1, "Set14": 1}
    assert [a["sets"] for a in grown["added"]] == [["Set14"]]
    assert grown["added"][0]["device"] == provenance.machine("cpu")
    unchanged = {k: v for k, v in rec.items() if k not in ("psnr", "ssim", "images")}
    assert {k: grown[k] for k in unchanged} == unchanged
    before = path.read_text()
    assert sweep.main([*argv, "--data", str(data), "--sets", "Set14", "--limit", "1"]) == 0
    assert path.read_text() == before  # nothing missing: nothing evaluated, nothing rewritten
    # a record of another network under the same name is not extended
    other = {**grown, "params": grown["params"] + 1, "psnr": {"Set5": grown["psnr"]["Set5"]}}
    path.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="another network"):
        sweep.main([*argv, "--data", str(data), "--sets", "Set5", "Set14", "--limit", "1"])
    assert json.loads(path.read_text()) == other
    # nor one of another run of the same network (a set scored on other weights was added)
    path.write_text(json.dumps({**grown, "seed": 7, "psnr": {"Set5": grown["psnr"]["Set5"]}}))
    with pytest.raises(SystemExit, match=r"the record is of another run \(seed differ"):
        sweep.main([*argv, "--data", str(data), "--sets", "Set5", "Set14", "--limit", "1"])
    path.write_text(json.dumps(grown))

    # a finished run as a traiNNer-redux checkpoint that loads as the variant it is
    ckpt = tmp_path / "nano.safetensors"
    assert sweep.main(["export", "--run", str(run), "--out", str(ckpt)]) == 0
    desc = C.load_checkpoint(ckpt)
    assert "nano" in desc.tags and desc.scale == 4
    last = torch.load(run / "ema.pt", weights_only=True)["stem.weight"]
    assert torch.equal(desc.model.state_dict()["stem.weight"], last)
    with pytest.raises(SystemExit, match="exists"):
        sweep.main(["export", "--run", str(run), "--out", str(ckpt)])

    assert sweep.main(["pack", "--runs", str(runs), "--out", str(tmp_path / "pack")]) == 0
    with tarfile.open(tmp_path / "pack" / "runs_00.tar") as tf:
        names = tf.getnames()
    assert "runs/trunk64x10_lean_x4_seed1/ema16.pt" in names
    assert "runs/trunk64x10_lean_x4/meta.json" in names
    assert not any(n.endswith("state.pt") for n in names)

    # packed with its state, a run unpacked elsewhere continues where it stopped; with parts of
    # 256 KiB the state (~7 MB) travels in chunks, each in a tar of its own
    monkeypatch.setattr(sweep, "PACK_PART_BYTES", 256 * 1024)
    argv = ["pack", "--runs", str(runs), "--out", str(tmp_path / "full"), "--with-state"]
    assert sweep.main(argv) == 0
    parts = sorted((tmp_path / "full").glob("*.tar"))
    assert all(p.stat().st_size <= 256 * 1024 + 4096 for p in parts)
    names_of = {p: _tar_names(p) for p in parts}
    chunked = [n for p in parts for n in names_of[p] if ".chunk" in n]
    last = max(n for n in chunked if n.startswith("runs/trunk64x10_lean_x4_seed1/state.pt"))
    count = int(last.rpartition("of")[2])
    assert count > 2 and last.endswith(f".chunk{count - 1:02d}of{count:02d}")
    moved = tmp_path / "moved"
    missing = [p for p in parts if last in names_of[p]]
    rest = [str(p) for p in parts if p not in missing]
    with pytest.raises(SystemExit, match=r"part\(s\) \d+ of \d+ missing"):
        sweep.main(["unpack", "--tars", *rest, "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="given twice"):
        sweep.main(["unpack", "--tars", *map(str, parts), str(parts[0]), "--out", str(moved)])
    # the parts of two packs of different states are refused (they joined into a state that
    # never existed), and so is a damaged part; nothing is written before the checks
    _train(tmp_path / "later", 2, 1, [HR, HR])
    later = tmp_path / "later" / "trunk64x10_lean_x4_seed1"
    other_pack = tmp_path / "other"
    assert sweep.main(["pack", "--runs", str(later.parent), "--out", str(other_pack)]) == 0
    mixed = [*map(str, parts[:-1]), str(sorted(other_pack.glob("*.tar"))[-1])]
    with pytest.raises(SystemExit, match="the parts come from 2 packs"):
        sweep.main(["unpack", "--tars", *mixed, "--out", str(tmp_path / "x")])
    damaged = tmp_path / "damaged.tar"
    raw = bytearray(parts[1].read_bytes())
    raw[-20000] ^= 0xFF  # a byte inside the data of its last member
    damaged.write_bytes(bytes(raw))
    with pytest.raises(SystemExit, match="differ from the pack's manifest"):
        tars = [str(parts[0]), str(damaged), *map(str, parts[2:])]
        sweep.main(["unpack", "--tars", *tars, "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    assert sweep.main(["unpack", "--tars", *map(str, parts), "--out", str(moved)]) == 0
    state = "runs/trunk64x10_lean_x4_seed1/state.pt"
    assert (moved / state).read_bytes() == (tmp_path / state).read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        sweep.main(["unpack", "--tars", *map(str, parts), "--out", str(moved)])
    run2 = moved / "runs" / "trunk64x10_lean_x4_seed1"
    # an unpacked run (fp16 weights only) packs again; "." names the folder it stands for
    monkeypatch.chdir(moved / "runs")
    assert sweep.main(["pack", "--runs", ".", "--out", str(tmp_path / "again")]) == 0
    again = [n for p in (tmp_path / "again").glob("*.tar") for n in _tar_names(p)]
    assert any(n.startswith("runs/trunk64x10_lean_x4_seed1/ema16.pt") for n in again)
    _train(moved / "runs", 4, 1, [HR, HR])
    assert _iters(run2) == [*_iters(run), 4]


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


def _record(path: Path, config: str, psnr: float, **extra: object) -> None:
    rec = {
        "model": "hybridmoe",
        "config": config,
        "scale": 4,
        "iterations": 8000,
        "recipe": "r",
        "psnr": dict.fromkeys(("Set5", "Set14", "B100"), psnr),
        **extra,
    }
    name = config.replace("@", "_") + "_" + str(extra.get("seed", 0))
    (path / f"{name}.json").write_text(json.dumps(rec))


def _speed(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    cols = [
        {"model": m, "scale": sc, "ms": ms, "ms_graph": ms * 0.9, "gflops": 10.0, "params": 1000}
        for m, sc, ms in rows
    ]
    path.write_text(json.dumps({"rows": cols}))
    return path


def test_tables_read_the_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = tmp_path / "q"
    recs.mkdir()
    _record(recs, "compact", 30.0)
    _record(recs, "trunk64x10_lean", 30.2)
    _record(recs, "trunk64x10_lean", 30.3, seed=1)
    _record(recs, "s", 30.5)
    _record(recs, "s@k1", 30.4, top_k=1)
    a = _speed(tmp_path / "a.json", [("compact", 4, 2.0), ("trunk64x10_lean", 4, 1.0)])
    b = _speed(tmp_path / "b.json", [("compact", 4, 4.0), ("s", 4, 6.0), ("s_k1", 4, 5.0)])

    argv = ["table", "--records", str(recs), "--speed", str(a), str(b), "--baseline", "compact"]
    assert sweep.main([*argv, "--configs", "compact", "trunk64x10_lean"]) == 0
    out = capsys.readouterr().out
    assert "| trunk64x10_lean (seed 1) | +0.30 | +0.30 | +0.30 | +0.300 | 1.00 | 10 |" in out
    assert "| compact | +0.00 | +0.00 | +0.00 | +0.000 | 3.00 (2.00–4.00) | 3 |" in out
    assert "| s |" not in out  # filtered out

    assert sweep.main(["speed", "--speed", str(a), str(b), "--configs", "trunk64x10_lean"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("| trunk64x10_lean | 0.00 M | 1.00 | 0.90 | 0.33 | 10 | –")

    # records of two recipes in one table: every row names its recipe, the baseline must too
    other = json.loads((recs / "compact_0.json").read_text())
    other.update(recipe="lr", psnr=dict.fromkeys(("Set5", "Set14", "B100"), 29.5))
    (recs / "compact_lr.json").write_text(json.dumps(other))
    argv = ["table", "--records", str(recs), "--configs", "compact", "trunk64x10_lean"]
    with pytest.raises(SystemExit, match="--baseline compact@RECIPE"):
        sweep.main([*argv, "--baseline", "compact"])
    assert sweep.main([*argv, "--baseline", "compact@lr"]) == 0
    out = capsys.readouterr().out
    assert "| compact [lr] | +0.00 | +0.00 | +0.00 | +0.000 | – | – |" in out
    assert "| compact [r] | +0.50 | +0.50 | +0.50 | +0.500 | – | – |" in out
    assert "| trunk64x10_lean (seed 1) [r] | +0.80 |" in out

    argv = ["dial", "--records", str(recs), "--recipe", "r", "--config", "s", "--speed", str(b)]
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| 1 | 30.400 | 30.400 | 30.400 | 30.400 | 5.00 |")
    assert lines[3].startswith("| 2 | 30.500 | 30.500 | 30.500 | 30.500 | 6.00 |")


@pytest.mark.usefixtures("one_thread")
def test_restoration_runs_degrade_on_the_fly_resume_exactly_and_eval_on_degraded_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridmoe import degrade, degraded_sets

    monkeypatch.setattr(sweep, "RECIPE", {**sweep.RECIPE, "batch": 2})
    monkeypatch.setattr(sweep, "SAVE_EVERY", 1)
    batches: list[torch.Tensor] = []
    real = degrade.degrade_batch
    monkeypatch.setattr(
        degrade, "degrade_batch", lambda *a: batches.append(real(*a)) or batches[-1]
    )

    def train(out: Path, iters: int) -> None:
        args = ["train-one", "--config", "trunk64x10_lean", "--scale", "1", "--iters", str(iters)]
        assert (
            sweep.main([*args, "--degrade", "restore", "--data", str(HR), "--out", str(out)]) == 0
        )

    train(tmp_path / "a", 2)  # two runs: one straight to 3, one 2 then resumed to 3
    train(tmp_path / "a", 3)
    train(tmp_path / "b", 3)
    assert len(batches) == 6
    for a, b in zip(batches[:3], batches[3:], strict=True):
        assert torch.equal(a, b)  # the resumed run drew the same degraded batches
    assert not torch.equal(batches[0], batches[1])
    run = tmp_path / "a" / "trunk64x10_lean_x1_restore"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["degradation"] == {"preset": "restore", **degrade.RESTORE.to_dict()}
    assert meta["scale"] == 1 and meta["recipe"]["lr_size"] == 64 and meta["pairs"] == 5
    with pytest.raises(SystemExit, match="use --scale 1"):
        sweep.main(
            [
                "train-one",
                "--config",
                "s",
                "--scale",
                "2",
                "--iters",
                "1",
                "--degrade",
                "restore",
                "--data",
                str(HR),
                "--out",
                str(tmp_path / "c"),
            ]
        )

    small = tmp_path / "small"  # a small set keeps the x1 forward passes cheap
    small.mkdir()
    for name in ("bird", "head"):
        Image.open(HR / f"{name}.png").crop((0, 0, 48, 40)).save(small / f"{name}.png")
    sets = tmp_path / "sets"
    assert degraded_sets.main([str(small), "--out", str(sets), "--name", "tiny"]) == 0
    records = tmp_path / "records"
    argv = ["eval", "--runs", str(tmp_path / "a"), "--records", str(records), "--recipe", "r"]
    assert sweep.main([*argv, "--degraded", str(sets)]) == 0
    rec = json.loads((records / "r_trunk64x10_lean_x1_restore_3.json").read_text())
    assert rec["recipe"] == "r" and rec["scale"] == 1 and rec["images"] == {"tiny": 2}
    assert set(rec["psnr"]) == set(rec["psnr_input"]) == set(rec["ssim_input"]) == {"tiny"}
    assert 10 < rec["psnr"]["tiny"] < 60 and rec["psnr"]["tiny"] != rec["psnr_input"]["tiny"]
    assert rec["degradation"]["preset"] == "restore" and rec["degraded_sets"]["dir"] == str(sets)
    # the bicubic SR evaluation leaves restoration runs alone
    assert sweep.main([*argv[:-1], "r2", "--data", str(TEST_DATA), "--sets", "Set5"]) == 0
    assert not list(records.glob("r2_*"))


@pytest.mark.usefixtures("one_thread")
def test_warmup_ramps_the_rate_val_logs_a_curve_and_resume_keeps_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "SAVE_EVERY", 2)
    monkeypatch.setattr(sweep, "LOG_EVERY", 1)
    runs = tmp_path / "runs"
    argv = ["train-one", "--config", "trunk64x10_lean", "--scale", "4", "--data", str(HR)]
    argv += ["--batch", "2", "--out", str(runs), "--warmup", "4", "--val", str(HR)]
    assert sweep.main([*argv, "--iters", "4"]) == 0
    run = runs / "trunk64x10_lean_x4"
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # the rate rises linearly over the warm-up (budget 4: the milestones at 2 and 3 halve it)
    peak = sweep.RECIPE["lr"]
    assert [r["lr"] for r in lines if "lr" in r] == pytest.approx(
        [peak / 4, peak * 2 / 4, peak / 2 * 3 / 4, peak / 4]
    )
    curve = [(r["iter"], r["val"]["Set5"]) for r in lines if "val" in r]
    assert [i for i, _ in curve] == [2, 4] and all(10 < p < 60 for _, p in curve)
    assert json.loads((run / "meta.json").read_text())["recipe"]["warmup"] == 4
    # the validation PSNR is the evaluator's score of the EMA weights
    desc = sweep.ModuleDescriptor(sweep.load_run(run)[1], 4, torch.device("cpu"))
    scores = sweep.score_sr([desc], TEST_DATA, ["Set5"], 4, None)
    assert curve[-1][1] == pytest.approx(sweep._means(scores[0])[0]["Set5"], abs=1e-3)
    # resuming under another warm-up or peak rate is another recipe: refused, naming the fix
    with pytest.raises(SystemExit, match="--warmup 4"):
        sweep.main([*argv[:-4], "--iters", "6"])
    with pytest.raises(SystemExit, match=r"--lr 0\.0005"):
        sweep.main([*argv, "--iters", "6", "--lr", "2e-4"])
    # a run of its own at another peak rate follows that rate
    other = tmp_path / "lr2"
    assert (
        sweep.main(
            [*argv[:-5], str(other), "--iters", "4", "--lr", "2e-4", "--batch", "1", "--crop", "24"]
        )
        == 0
    )
    lines = (other / "trunk64x10_lean_x4" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["lr"] for line in lines] == pytest.approx([2e-4, 2e-4, 1e-4, 5e-5])
    recipe = json.loads((other / "trunk64x10_lean_x4" / "meta.json").read_text())["recipe"]
    assert (recipe["lr"], recipe["batch"], recipe["lr_size"]) == (2e-4, 1, 24)
    with pytest.raises(SystemExit, match="--crop 24"):
        sweep.main([*argv[:-5], str(other), "--iters", "6", "--lr", "2e-4", "--batch", "1"])

    # the curves plot reads the logged validation; a folder without any is refused by name
    assert sweep.read_curve(run) == {"Set5": curve}
    assert sweep.read_curve(other / "trunk64x10_lean_x4") == {}
    png = tmp_path / "curves.png"
    with pytest.raises(SystemExit, match=r"no run under .*lr2 has a Set5 validation curve"):
        sweep.main(["curves", "--runs", str(other), "--out", str(png)])


def test_front_plot_gives_every_recipe_its_own_panel(tmp_path: Path) -> None:
    """Runs of two recipes at the same scale and budget (other data or rate) never share a
    panel of the PSNR-vs-latency plot."""
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (not a dependency)")
    recs = tmp_path / "q"
    recs.mkdir()
    _record(recs, "compact", 30.0)
    _record(recs, "trunk64x10_lean", 30.2)
    other = json.loads((recs / "compact_0.json").read_text())
    other.update(recipe="lr", psnr=dict.fromkeys(("Set5", "Set14", "B100"), 29.5))
    (recs / "compact_lr.json").write_text(json.dumps(other))
    speed = _speed(tmp_path / "s.json", [("compact", 4, 2.0), ("trunk64x10_lean", 4, 1.0)])
    png = tmp_path / "front.png"
    argv = ["table", "--records", str(recs), "--speed", str(speed), "--plot", str(png)]
    assert sweep.main(argv) == 0
    one_panel = 5.5 * 110  # figure inches per panel x dpi
    assert Image.open(png).size[0] == pytest.approx(2 * one_panel, abs=2)


def test_front_plot_joins_recipes_that_differ_only_in_the_rate(tmp_path: Path) -> None:
    """--join-rates: each network at its own peak rate in one panel; recipes that differ in
    anything else (here the batch) are refused by name."""
    recs = tmp_path / "q"
    recs.mkdir()
    data = {"pairs": 3234, "data_megapixels": 476.9}
    for config, recipe, lr, machine in (("compact", "fast", 5e-4, "/a"), ("s", "slow", 2e-4, "/b")):
        training = {"batch": 16, "lr": lr, "lr_size": 48}
        _record(recs, config, 30.0, recipe=recipe, training=training,
                train_data={**data, "data": [machine]})  # fmt: skip
    loaded = sweep.load_records(str(recs), None)
    assert [(p[2], len(p[3])) for p in sweep.front_panels(loaded)] == [("slow", 1), ("fast", 1)]
    assert [(p[2], len(p[3])) for p in sweep.front_panels(loaded, join_rates=True)] == [
        ("fast + slow", 2)
    ]
    _record(recs, "trunk64x10_lean", 30.1, recipe="big", training={"batch": 32, "lr": 5e-4,
            "lr_size": 48}, train_data=data)  # fmt: skip
    loaded = sweep.load_records(str(recs), None)
    assert len(sweep.front_panels(loaded)) == 3
    # a value added to the recipe later joins the earlier records at its default, not beside it
    later = [{**r, "training": {**r["training"], "router_lr_mult": 1.0, "warmup": 0}}
             if r["config"] == "s" else r for r in loaded if r["recipe"] != "big"]  # fmt: skip
    assert [len(p[3]) for p in sweep.front_panels(later, join_rates=True)] == [2]
    later[0]["training"]["router_lr_mult"] = 10.0
    with pytest.raises(SystemExit, match=r"recipes fast \+ slow .* differ in more than"):
        sweep.front_panels(later, join_rates=True)
    # without the flag a panel is one recipe, whatever its records hold (older records of a
    # recipe may lack fields that later ones carry)
    mixed = [{**r, "training": {}} if r["config"] == "s" else r for r in loaded]
    mixed += [{**r, "config": "t"} for r in loaded if r["config"] == "s"]
    assert [len(p[3]) for p in sweep.front_panels(mixed)] == [2, 1, 1]
    with pytest.raises(SystemExit, match=r"recipes big \+ fast \+ slow .* differ in more than"):
        sweep.front_panels(loaded, join_rates=True)
    # a record without its rate cannot be labelled by it
    bare = [{**r, "training": {}} if r["recipe"] == "big" else r for r in loaded]
    with pytest.raises(SystemExit, match=r"a record of big \+ fast \+ slow has no peak rate"):
        sweep.front_panels(bare, join_rates=True)


def test_front_points_average_the_seeds_of_one_configuration(tmp_path: Path) -> None:
    """Two seeds of a configuration in one recipe are one point (their mean, labelled with the
    count); the same configuration in another recipe of a joined panel stays its own point."""
    recs = tmp_path / "q"
    recs.mkdir()
    for seed, psnr in ((0, 30.0), (1, 30.2)):
        _record(recs, "m", psnr, recipe="slow", seed=seed, training={"lr": 2e-4})
    _record(recs, "m@fast", 29.0, recipe="fast", training={"lr": 5e-4})
    loaded = sweep.load_records(str(recs), None)
    for r in loaded:
        r["config"] = "m"  # the fast record was named apart only to get its own file
    sets = ["Set5", "Set14", "B100"]
    points = sorted(sweep.front_points(loaded, sets, join_rates=True))
    assert [(n, label) for n, label, _ in points] == [
        ("m", "m @ 0.0002 (2 seeds)"),
        ("m", "m @ 0.0005"),
    ]
    assert [mean for *_, mean in points] == pytest.approx([30.1, 29.0])
    assert [label for _, label, _ in sweep.front_points(loaded[:1], sets)] == ["m"]


def test_front_plot_draws_recipes_joined_by_rate_in_one_panel(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (not a dependency)")
    recs = tmp_path / "q"
    recs.mkdir()
    for config, recipe, lr in (("compact", "fast", 5e-4), ("s", "slow", 2e-4)):
        _record(recs, config, 30.0, recipe=recipe, training={"batch": 16, "lr": lr})
    speed = _speed(tmp_path / "s.json", [("compact", 4, 2.0), ("s", 4, 3.0)])
    png = tmp_path / "front.png"
    argv = ["table", "--records", str(recs), "--speed", str(speed), "--plot", str(png)]
    assert sweep.main([*argv, "--recipe", "fast", "slow", "--join-rates"]) == 0
    assert Image.open(png).size[0] == pytest.approx(5.5 * 110, abs=2)  # one panel


def test_curves_plot_draws_the_logged_validation(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (not a dependency)")
    run = tmp_path / "g" / "a_x4"
    run.mkdir(parents=True)
    lines = [{"iter": 100, "loss": 0.1, "lr": 5e-4}, {"iter": 500, "val": {"Set5": 28.5}}]
    lines.append({"iter": 1000, "val": {"Set5": 29.0}})
    (run / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    png = tmp_path / "c.png"
    assert sweep.main(["curves", "--runs", str(tmp_path / "g"), "--out", str(png)]) == 0
    assert Image.open(png).size[0] > 100
    with pytest.raises(SystemExit, match="Set14 validation curve"):
        sweep.main(["curves", "--runs", str(tmp_path / "g"), "--out", str(png), "--set", "Set14"])


def _log(run: Path, rows: list[dict[str, float]]) -> Path:
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_training_time_sums_the_segments_of_a_resumed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # elapsed_s restarts with a resumed process: both segments count
    resumed = _log(
        tmp_path / "g" / "a_x4",
        [
            {"iter": 100, "it_s": 10.0, "elapsed_s": 10.0},
            {"iter": 200, "it_s": 10.0, "elapsed_s": 20.0},
            {"iter": 200, "val": {"Set5": 30.0}},
            {"iter": 300, "it_s": 10.0, "elapsed_s": 10.0},
            {"iter": 400, "it_s": 5.0, "elapsed_s": 40.0},
        ],
    )
    assert sweep.train_seconds(resumed) == pytest.approx(60.0)
    # a short first process: the resumed one's first line shows more seconds, still its own
    short = _log(
        tmp_path / "h2" / "s_x4",
        [
            {"iter": 100, "it_s": 10.0, "elapsed_s": 10.0},
            {"iter": 200, "it_s": 5.0, "elapsed_s": 20.0},
            {"iter": 300, "it_s": 5.0, "elapsed_s": 40.0},
        ],
    )
    assert sweep.train_seconds(short) == pytest.approx(50.0)
    # an older log: iter / it_s of the last line (it_s averages over the whole process),
    # not the sum over lines of 100 / it_s (which counts the slow start again in every line)
    old = _log(tmp_path / "g" / "b_x4", [{"iter": 100, "it_s": 4.0}, {"iter": 200, "it_s": 8.0}])
    assert sweep.train_seconds(old) == pytest.approx(25.0)
    assert sweep.main(["times", "--runs", str(tmp_path / "g")]) == 0
    assert capsys.readouterr().out.splitlines() == ["g/a_x4\t400\t1.0 min", "g/b_x4\t200\t0.4 min"]
    # an older log with a resume in it cannot be timed: refused by name
    bad = _log(tmp_path / "h" / "c_x4", [{"iter": 400, "it_s": 4.0}, {"iter": 500, "it_s": 50.0}])
    with pytest.raises(SystemExit, match=r"c_x4: resumed, and its log predates elapsed_s"):
        sweep.train_seconds(bad)


def test_training_logs_carry_the_elapsed_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "LOG_EVERY", 1)
    argv = ["train-one", "--config", "trunk64x10_lean", "--scale", "4", "--data", str(HR)]
    assert (
        sweep.main([*argv, "--batch", "1", "--crop", "16", "--iters", "2", "--out", str(tmp_path)])
        == 0
    )
    run = tmp_path / "trunk64x10_lean_x4"
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in lines if "it_s" in r]
    assert len(elapsed) == 2 and 0 < elapsed[0] <= elapsed[1]
    assert sweep.train_seconds(run) == pytest.approx(elapsed[-1])


def test_trunk_names_say_their_width_and_depth() -> None:
    """A ``trunk<dim>x<blocks>`` configuration has that level-1 width and that many x1 blocks."""
    for name, options in sweep.CONFIGS.items():
        m = re.match(r"trunk(\d+)x(\d+)_", name)
        if m:
            assert options["dim"] == int(m[1]), name
            assert options["enc_blocks"][0] + options["dec_blocks"][0] == int(m[2]), name


@pytest.mark.parametrize(
    "name", ["trunk192x12_hfplk", "trunk192x12_ctx", "trunk192x12_stemlk", "trunk256x16_lean"]
)
def test_l_candidates_build_and_use_their_extra_parts(name: str) -> None:
    """Each l candidate maps an odd-sized image to twice its size, and holds the part that sets
    it apart from m's trunk (HF path, x1/2 attention + mixer + MoE, large-kernel stem)."""
    from hybridmoe_arch import FourierMixer, HFBlock, MoEFFN, RepConv

    model = sweep.build(name, 2).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 9, 7))
    assert y.shape == (1, 3, 18, 14)
    assert torch.isfinite(y).all()
    kinds = {type(m) for m in model.modules()}
    extra = {
        "trunk192x12_hfplk": HFBlock in kinds,
        "trunk192x12_ctx": FourierMixer in kinds and MoEFFN in kinds,
        "trunk192x12_stemlk": isinstance(model.stem_lk, RepConv),
        "trunk256x16_lean": len(model.lf1) + len(model.dec1) == 16,
    }
    assert extra[name]


def test_the_context_moe_twins_differ_only_in_the_bottleneck_ffn() -> None:
    """trunk192x12_ctx (4 experts, top-1), _ctx8 (8 experts, top-1) and _ctx_dense (a dense
    gated FFN) share every module but the x1/2 bottleneck's FFN; each expert is as wide as the
    dense FFN (equal active width at top-1), the expert count is what the name says, and the
    FFN changes the output of the same weights elsewhere."""
    from hybridmoe_arch import GatedFFN, MoEFFN

    nets = {
        n: sweep.build(n, 2).eval()
        for n in ("trunk192x12_ctx", "trunk192x12_ctx8", "trunk192x12_ctx_dense")
    }
    names = {
        n: {k for k, _ in m.named_modules() if not k.startswith("mid.0.ffn")}
        for n, m in nets.items()
    }
    assert names["trunk192x12_ctx"] == names["trunk192x12_ctx8"] == names["trunk192x12_ctx_dense"]
    moe4, moe8 = nets["trunk192x12_ctx"].mid[0].ffn, nets["trunk192x12_ctx8"].mid[0].ffn
    dense = nets["trunk192x12_ctx_dense"].mid[0].ffn
    assert isinstance(moe4, MoEFFN) and isinstance(moe8, MoEFFN) and isinstance(dense, GatedFFN)
    assert (moe4.num_experts, moe8.num_experts, moe4.top_k, moe8.top_k) == (4, 8, 1, 1)
    assert moe4.w_out.shape[1] == moe8.w_out.shape[1] == dense.fc2.in_channels
    shared = {k: v for k, v in nets["trunk192x12_ctx"].state_dict().items() if ".ffn." not in k}
    missing, _ = nets["trunk192x12_ctx_dense"].load_state_dict(shared, strict=False)
    assert all(".ffn." in k for k in missing)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(nets["trunk192x12_ctx"](x), nets["trunk192x12_ctx_dense"](x))


def test_a_fine_tune_may_add_the_noise_head_and_starts_at_its_source_output() -> None:
    """trunk96x12_lean_noise loads trunk96x12_lean's weights, its new texture head is the
    identity at the start (the outputs are equal, in training mode too, where the noise is
    drawn), its noise strength still gets a gradient, and weights of another layout are
    refused with the keys named."""
    torch.manual_seed(0)
    source = sweep.build("trunk96x12_lean", 4)
    for p in source.parameters():
        p.data.normal_(0, 0.02)
    init = source.state_dict()
    model = sweep.build("trunk96x12_lean_noise", 4)
    added = sweep.start_from(model, init, "trunk96x12_lean")
    assert added and all(k.startswith("head.") for k in added)
    assert "head.noise_strength" in added
    x = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x), rtol=0, atol=1e-6)
    model.train()
    out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(out, source.eval()(x), rtol=0, atol=1e-6)
    out.square().mean().backward()
    assert model.head.noise_strength.grad.abs().sum() > 0
    assert model.head.ls.gamma.grad.abs().sum() > 0
    with pytest.raises(SystemExit, match="do not fit"):
        sweep.start_from(
            sweep.build("trunk96x12_lean_noise", 4),
            sweep.build("trunk64x10_lean", 4).state_dict(),
            "trunk64x10_lean",
        )
    with pytest.raises(SystemExit, match="unexpected: \\['head"):  # a fine-tune may not drop it
        sweep.start_from(sweep.build("trunk96x12_lean", 4), model.state_dict(), "noise")
    with pytest.raises(SystemExit, match="--init-config names"):
        sweep.main(
            [
                "train-one",
                "--config",
                "trunk96x12_lean_noise",
                "--scale",
                "4",
                "--data",
                str(HR),
                "--iters",
                "1",
                "--out",
                "unused",
                "--init-config",
                "trunk96x12_lean",
            ]
        )


def _lpips_file(path: Path) -> Path:
    """An LPIPS-VGG weights file of the real layout (random values)."""
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(0)
    feats = {f"features.{k}": v for k, v in vgg16(weights=None).features[:30].state_dict().items()}
    heads = {f"lin.{n}": torch.rand(1, c, 1, 1) for n, c in enumerate((64, 128, 256, 512, 512))}
    save_file({**feats, **heads}, str(path))
    return path


def test_gan_fine_tuning_starts_from_a_run_trains_a_discriminator_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "RECIPE", {**sweep.RECIPE, "batch": 2})
    monkeypatch.setattr(sweep, "GAN_RECIPE", {**sweep.GAN_RECIPE, "d_width": 8})
    monkeypatch.setattr(sweep, "SAVE_EVERY", 1)
    lp = _lpips_file(tmp_path / "lpips_vgg.safetensors")
    base = ["train-one", "--config", "compact", "--scale", "4", "--data", str(HR), "--crop", "8"]
    assert sweep.main([*base, "--iters", "2", "--out", str(tmp_path / "fid")]) == 0
    start = torch.load(tmp_path / "fid" / "compact_x4" / "ema.pt", weights_only=True)

    gan = [*base, "--out", str(tmp_path / "gan"), "--init", str(tmp_path / "fid")]
    with pytest.raises(SystemExit, match="--init"):
        sweep.main([*base, "--iters", "1", "--out", str(tmp_path / "x"), "--gan", str(lp)])
    # HR crops the discriminator (multiples of 8) or LPIPS-VGG (16 px) cannot take: refused
    # before anything is built, with the nearest crops that work
    with pytest.raises(SystemExit, match=r"--crop 5: .*here 20 px.*; give --crop 4 or 6$"):
        sweep.main([*gan, "--iters", "1", "--gan", str(lp), "--crop", "5"])
    with pytest.raises(SystemExit, match=r"--crop 3: .*; give --crop 4$"):
        sweep.main([*gan, "--iters", "1", "--gan", str(lp), "--crop", "3"])
    assert not (tmp_path / "gan").exists()
    lr0 = {**sweep.GAN_RECIPE, "lr": 1e-12, "lr_d": 1e-12}  # a step that moves nothing
    monkeypatch.setattr(sweep, "GAN_RECIPE", lr0)
    assert sweep.main([*gan, "--iters", "1", "--gan", str(lp)]) == 0
    run = tmp_path / "gan" / "compact_x4_gan"
    after = torch.load(run / "ema.pt", weights_only=True)
    for k, v in start.items():  # the fine-tune started from the fidelity run's EMA weights
        torch.testing.assert_close(after[k], v, rtol=0, atol=1e-6)
    assert sweep.main([*gan, "--iters", "3", "--gan", str(lp)]) == 0  # resumed
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 3]
    assert {"pixel", "lpips", "adv", "d"} <= set(log[-1])
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["iter"] == 3 and "disc" in state and "opt_d" in state
    meta = json.loads((run / "meta.json").read_text())
    assert meta["gan"]["init"] == str(tmp_path / "fid") and meta["recipe"]["lr"] == 1e-12
    # a resume keeps its LPIPS weights (by contents: a moved copy is the same) and its start
    moved = tmp_path / "moved.safetensors"
    shutil.copyfile(lp, moved)
    assert sweep.main([*gan, "--iters", "3", "--gan", str(moved)]) == 0
    other = tmp_path / "other.safetensors"  # the same layout, one value changed
    data = bytearray(lp.read_bytes())
    data[-1] ^= 1
    other.write_bytes(data)
    with pytest.raises(SystemExit, match=r"--gan \S*lpips_vgg.safetensors; resume it with the"):
        sweep.main([*gan, "--iters", "4", "--gan", str(other)])
    shutil.copytree(tmp_path / "fid", tmp_path / "fid2")
    with pytest.raises(SystemExit, match=r"--init \S*fid; .* its own --out"):
        sweep.main([*gan[:-1], str(tmp_path / "fid2"), "--iters", "4", "--gan", str(lp)])
    with pytest.raises(SystemExit, match=r"--init-config compact; .* its own --out"):
        sweep.main([*gan, "--iters", "4", "--gan", str(lp), "--init-config", "trunk64x10_lean"])
    # a run from before the sha256 was kept resumes with the file at its path
    old = {**meta, "gan": {k: v for k, v in meta["gan"].items() if k != "lpips_sha256"}}
    (run / "meta.json").write_text(json.dumps(old))
    assert sweep.main([*gan, "--iters", "3", "--gan", str(lp)]) == 0
    with pytest.raises(SystemExit, match=r"another path\), or give the new recipe its own"):
        sweep.main([*gan, "--iters", "4", "--gan", str(moved)])
    assert json.loads((run / "meta.json").read_text()) == old
    # a run stopped before its budget (a device session ended) exports only when asked to
    (run / "meta.json").write_text(json.dumps({**meta, "finished": False}))
    ckpt = tmp_path / "gan.safetensors"
    with pytest.raises(SystemExit, match="--unfinished"):
        sweep.main(["export", "--run", str(run), "--out", str(ckpt)])
    assert sweep.main(["export", "--run", str(run), "--out", str(ckpt), "--unfinished"]) == 0
    assert C.load_checkpoint(ckpt).scale == 4
    with pytest.raises(SystemExit, match="no run"):
        sweep.main(
            [
                *base,
                "--out",
                str(tmp_path / "y"),
                "--init",
                str(tmp_path),
                "--iters",
                "1",
                "--gan",
                str(lp),
            ]
        )


def test_any_fine_tune_records_its_start_and_keeps_it_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tune without --gan recorded nothing of its start, so its resume took another
    --init without a word; meta.json now names the folder, the configuration and the run used
    (here the bicubic x4 run: there is no realworld4 one)."""
    monkeypatch.setattr(sweep, "RECIPE", {**sweep.RECIPE, "batch": 2})
    monkeypatch.setattr(sweep, "SAVE_EVERY", 1)
    base = ["train-one", "--config", "compact", "--scale", "4", "--data", str(HR), "--crop", "8"]
    assert sweep.main([*base, "--iters", "1", "--out", str(tmp_path / "fid")]) == 0
    tune = [*base, "--degrade", "realworld4", "--out", str(tmp_path / "rw")]
    assert sweep.main([*tune, "--iters", "1", "--init", str(tmp_path / "fid")]) == 0
    run = next((tmp_path / "rw").iterdir())
    meta = json.loads((run / "meta.json").read_text())
    assert meta["init"] == {
        "dir": str(tmp_path / "fid"),
        "config": "compact",
        "run": str(tmp_path / "fid" / "compact_x4"),
    }
    shutil.copytree(tmp_path / "fid", tmp_path / "fid2")
    with pytest.raises(SystemExit, match=r"--init \S*fid; resume it with the same value"):
        sweep.main([*tune, "--iters", "2", "--init", str(tmp_path / "fid2")])
    with pytest.raises(SystemExit, match=r"\(got --init None\)"):
        sweep.main([*tune, "--iters", "2"])
    shutil.rmtree(tmp_path / "fid2")
    assert sweep.main([*tune, "--iters", "2", "--init", str(tmp_path / "fid")]) == 0
    assert json.loads((run / "meta.json").read_text())["init"] == meta["init"]


def test_an_x1_gan_fine_tune_starts_from_the_restoration_run_and_never_from_an_unfinished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --degrade the start is the run of the same preset; at x1 only that one (a plain x1
    run learns the identity), at x4 the bicubic run where there is none (docs/TRAINING.md
    §5e). A start that did not finish is refused, named."""
    monkeypatch.setattr(sweep, "RECIPE", {**sweep.RECIPE, "batch": 2})
    monkeypatch.setattr(sweep, "GAN_RECIPE", {**sweep.GAN_RECIPE, "d_width": 8})
    lp = _lpips_file(tmp_path / "lpips_vgg.safetensors")
    fid = tmp_path / "fid"
    base = ["train-one", "--config", "compact", "--scale", "1", "--data", str(HR), "--crop", "16"]
    base += ["--iters", "1"]
    assert sweep.main([*base, "--out", str(fid)]) == 0  # compact_x1: not a start
    gan = [*base, "--degrade", "restore", "--init", str(fid), "--gan", str(lp)]
    with pytest.raises(SystemExit, match=r"no run \S*compact_x1_restore \(meta.json\)"):
        sweep.main([*gan, "--out", str(tmp_path / "gan")])
    with pytest.raises(SystemExit, match=r"--crop 20: .*; give --crop 16 or 24$"):
        sweep.main([*gan, "--out", str(tmp_path / "gan"), "--crop", "20"])
    assert not (tmp_path / "gan").exists()
    assert sweep.main([*base, "--degrade", "restore", "--out", str(fid)]) == 0
    start = torch.load(fid / "compact_x1_restore" / "ema.pt", weights_only=True)
    lr0 = {**sweep.GAN_RECIPE, "lr": 1e-12, "lr_d": 1e-12}  # a step that moves nothing
    monkeypatch.setattr(sweep, "GAN_RECIPE", lr0)
    assert sweep.main([*gan, "--out", str(tmp_path / "gan")]) == 0
    after = torch.load(tmp_path / "gan" / "compact_x1_restore_gan" / "ema.pt", weights_only=True)
    for k, v in start.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=1e-6)
    # a start stopped before its budget is refused, named, before anything is made
    meta_path = fid / "compact_x1_restore" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "finished": False}))
    with pytest.raises(SystemExit, match=r"compact_x1_restore did not finish"):
        sweep.main([*gan, "--out", str(tmp_path / "gan2")])
    assert not (tmp_path / "gan2").exists()

    # at x4 the run of the preset comes first, the bicubic (fidelity) run else
    def make(name: str) -> Path:
        (tmp_path / "x4" / name).mkdir(parents=True)
        meta = {"config": "compact", "scale": 4, "finished": True}
        (tmp_path / "x4" / name / "meta.json").write_text(json.dumps(meta))
        return tmp_path / "x4" / name

    with pytest.raises(SystemExit, match=r"compact_x4_realworld4 or \S*compact_x4 \(meta"):
        sweep.init_run(tmp_path / "x4", "compact", 4, "realworld4")
    plain = make("compact_x4")
    assert sweep.init_run(tmp_path / "x4", "compact", 4, "realworld4") == plain
    assert sweep.init_run(tmp_path / "x4", "compact", 4) == plain
    degraded = make("compact_x4_realworld4")
    assert sweep.init_run(tmp_path / "x4", "compact", 4, "realworld4") == degraded


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "setsid", "pgrep")),
    reason="gpu_bg.sh needs bash, setsid and pgrep",
)
def _checkout_copy(tmp_path: Path) -> Path:
    """The parts of the checkout that gpu_bg.sh's background jobs run (a device call's tree)."""
    tree = tmp_path / "tree"
    for part in ("hybridmoe", "traiNNer", "scripts"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _gpu_bg_env(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {**os.environ, "WHEELS": "none", "PATH": path, **extra}


def test_gpu_bg_makes_pairs_in_the_background_from_a_copy(tmp_path: Path) -> None:
    """pairs-bg copies the (carried) folder and the code, makes the pairs in its own session
    and marks them done; wait-pairs blocks until then, and names a folder that nothing is
    making. The job outlives the tree it was started from (the next device call re-sends it:
    a worker importing from the old tree failed with ModuleNotFoundError), and a relative OUT
    is the tree's."""
    src = tmp_path / "carried"
    shutil.copytree(HR, src)
    (src / "tiles.tsv").write_text("name\tsource\n")  # a slice's list: not an image
    tree = _checkout_copy(tmp_path)
    script = str(tree / "scripts" / "gpu_bg.sh")
    out = tree / "q4"
    run = functools.partial(
        subprocess.run, cwd=tree, env=_gpu_bg_env(), capture_output=True, text=True
    )
    started = run(["bash", script, "pairs-bg", "4", "q4", str(src)])
    assert started.returncode == 0 and "pairs-bg: 5 images of" in started.stdout, started.stdout
    shutil.rmtree(src)  # the next device call no longer has the carried folder
    shutil.rmtree(tree / "hybridmoe")  # ... and is replacing the code (a broken package
    (tree / "hybridmoe").mkdir()  # here: the tree comes before any installed copy)
    (tree / "hybridmoe" / "__init__.py").write_text("raise ImportError('replaced tree')\n")
    done = run(["bash", script, "wait-pairs", "q4"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 pairs written" in done.stdout
    assert sorted(p.name for p in (out / "lr").iterdir()) == sorted(p.name for p in HR.iterdir())
    missing = run(["bash", script, "wait-pairs", str(tmp_path / "none")], timeout=60)
    assert missing.returncode == 2 and "is not being made" in missing.stderr
    bad = run(["bash", script, "pairs-bg", "4", str(tmp_path / "x"), str(tmp_path / "nope")])
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "setsid", "pgrep")),
    reason="gpu_bg.sh needs bash, setsid and pgrep",
)
def test_gpu_bg_start_runs_the_sweep_from_a_copy_of_the_code(tmp_path: Path) -> None:
    """start's sweep runs from a copy of the code, with its folders made absolute: a tree
    replaced right after the start does not stop it (here the sweep's own refusal of an
    unknown configuration reaches the group's train.log, not a missing sweep.py)."""
    tree = _checkout_copy(tmp_path)
    (tree / "data").mkdir()
    env = _gpu_bg_env(RUNS="runs", HYBRIDMOE_COMMIT="c0ffee")
    started = subprocess.run(
        ["bash", "scripts/gpu_bg.sh", "start", "g", "4", "10", "0", "data", "no_such_config"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0 and "started g" in started.stdout, started.stderr
    shutil.rmtree(tree / "scripts")
    shutil.rmtree(tree / "hybridmoe")
    log = tree / "runs" / "g" / "train.log"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "no_such_config" not in (
        log.read_text() if log.exists() else ""
    ):
        time.sleep(0.5)
    text = log.read_text()
    assert "no_such_config" in text and "sweep.py train" in text, text
    assert "No such file" not in text and "ModuleNotFoundError" not in text, text


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "setsid", "pgrep")),
    reason="gpu_bg.sh needs bash, setsid and pgrep",
)
def test_gpu_bg_wait_ends_with_the_sweep_not_at_its_deadline(tmp_path: Path) -> None:
    """wait blocks while a sweep process lives and returns soon after it ends, also when the
    command line that calls it names the sweep (a `bash -c` line of a device call)."""
    env = {**os.environ, "WHEELS": "none", "RUNS": str(tmp_path)}
    sweep_proc = subprocess.Popen(
        ["bash", "-c", 'exec -a "python3 scripts/sweep.py train --configs fake" sleep 4']
    )
    try:
        waited = subprocess.run(
            # two commands keep this shell alive with "sweep.py train" in its command line
            [
                "bash",
                "-c",
                f"bash {REPO / 'scripts' / 'gpu_bg.sh'} wait 600 && echo ok # sweep.py train",
            ],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,  # far below the 600 s deadline: only an early return gets here
        )
        assert waited.returncode == 0 and waited.stdout.endswith("ok\n"), waited.stderr
        assert sweep_proc.poll() is not None  # it waited for the sweep to end
    finally:
        sweep_proc.kill()
        sweep_proc.wait()


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "pgrep")), reason="gpu_bg.sh needs bash and pgrep"
)
def test_gpu_bg_wait_ends_with_where_the_runs_stand_and_why_they_stopped(tmp_path: Path) -> None:
    """The runs of start train in the background, their exits and refusals go to the group's
    train.log: wait ends with every run's last log line and those lines, and says when there
    are no runs at all (a fresh machine)."""
    env = {**os.environ, "WHEELS": "none", "RUNS": str(tmp_path / "runs")}
    run = tmp_path / "runs" / "g" / "compact_x4"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text('{"iter": 500, "loss": 0.03}\n')
    refusal = "compact: exit 2: sweep.py train-one: error: ... trained on other images"
    (run.parent / "train.log").write_text(f"{refusal}\n")
    script = str(REPO / "scripts" / "gpu_bg.sh")
    run_wait = functools.partial(
        subprocess.run, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    waited = run_wait(["bash", script, "wait", "600"], env=env)
    assert waited.returncode == 0, waited.stderr
    assert 'g/compact_x4 {"iter": 500, "loss": 0.03}' in waited.stdout
    assert f"g: {refusal}" in waited.stdout
    fresh = run_wait(["bash", script, "wait", "600"], env={**env, "RUNS": str(tmp_path / "no")})
    assert "no runs under" in fresh.stdout


@pytest.mark.usefixtures("one_thread")
def test_router_drift_measures_the_move_from_the_seeded_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(3)
    start = sweep.build("trunkctx48", 4).state_dict()
    key = next(k for k in start if k.endswith(".router"))
    delta = torch.zeros_like(start[key])
    delta[0, :4] = 0.5  # norm 1.0
    run = tmp_path / "trunkctx48_x4_seed3"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"config": "trunkctx48", "scale": 4, "seed": 3}))
    torch.save({**start, key: start[key] + delta}, run / "ema.pt")
    out = tmp_path / "drift.json"
    assert sweep.main(["router-drift", "--runs", str(run), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["router"] == key and row["seed"] == 3
    assert row["run"] == f"{tmp_path.name}/trunkctx48_x4_seed3"  # the group names the run
    assert row["moved"] == pytest.approx(1.0, abs=1e-5)
    init = start[key]
    cos = float((init * (init + delta)).sum() / (init.norm() * (init + delta).norm()))
    assert row["cos_with_init"] == pytest.approx(cos, abs=1e-5)
    with pytest.raises(SystemExit, match="exists"):
        sweep.main(["router-drift", "--runs", str(run), "--json", str(out)])
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "meta.json").write_text(
        json.dumps({"config": "trunk64x10_lean", "scale": 4, "seed": 0})
    )
    torch.manual_seed(0)
    torch.save(sweep.build("trunk64x10_lean", 4).state_dict(), dense / "ema.pt")
    with pytest.raises(SystemExit, match="has no MoE router"):
        sweep.main(["router-drift", "--runs", str(dense)])


@pytest.mark.usefixtures("one_thread")
def test_router_rate_multiplier_moves_only_the_routers_faster_and_is_kept_on_resume(
    tmp_path: Path,
) -> None:
    """--router-lr-mult M puts the MoE routers in an optimizer group of their own at M times
    the rate: Adam's first step moves every weight by the rate (sign of its gradient), so after
    one iteration the routers have moved M times as far as the rest; the multiple is part of
    the recipe (resuming with another is refused), and a network without a router refuses it."""
    from hybridmoe_arch import MoEFFN

    argv = ["train-one", "--config", "trunkctx48", "--scale", "4", "--data", str(HR)]
    argv += ["--batch", "1", "--crop", "16", "--out", str(tmp_path), "--iters", "1"]
    assert sweep.main([*argv, "--router-lr-mult", "10"]) == 0
    run = tmp_path / "trunkctx48_x4"
    trained = torch.load(run / "state.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the run's seed: its initial weights
    net = sweep.build("trunkctx48", 4)
    init = net.state_dict()
    routers = {f"{n}.router" for n, m in net.named_modules() if isinstance(m, MoEFFN)}
    assert routers
    lr = json.loads((run / "log.jsonl").read_text().splitlines()[0])["lr"]
    moved = {k: (trained[k] - init[k]).abs().max().item() for k in init if k in trained}
    assert all(moved[k] == pytest.approx(10 * lr, rel=1e-3) for k in routers)
    others = [v for k, v in moved.items() if k not in routers and init[k].is_floating_point()]
    assert max(others) == pytest.approx(lr, rel=1e-3)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["recipe"]["router_lr_mult"] == 10
    with pytest.raises(SystemExit, match=r"--router-lr-mult 10"):
        sweep.main([*argv[:-1], "2"])
    with pytest.raises(SystemExit, match="has no MoE router"):
        other = ["--out", str(tmp_path / "x"), "--router-lr-mult", "3", "--iters", "1"]
        sweep.main(["train-one", "--config", "trunk64x10_lean", "--data", str(HR), *other])


def _dial_records(tmp_path: Path) -> tuple[Path, list[str]]:
    """Records of ``s`` at top-1 and top-2 and of ``s_dense``, seeds 0 and 1, a speed file,
    and the ``dial`` arguments over both seeds with the dense twin as the reference."""
    recs = tmp_path / "q"
    recs.mkdir()
    for seed, base in ((0, 30.5), (1, 30.7)):
        _record(recs, "s", base, seed=seed)
        _record(recs, "s@k1", base - 0.1, top_k=1, seed=seed)
        _record(recs, "s_dense", base - 0.4, seed=seed)
    _record(recs, "s", 99.0, seed=2)  # a seed not asked for is left out
    speed = _speed(tmp_path / "b.json", [("s", 4, 6.0), ("s_k1", 4, 5.0), ("s_dense", 4, 4.0)])
    argv = ["dial", "--records", str(recs), "--recipe", "r", "--config", "s", "--speed"]
    return recs, [*argv, str(speed), "--seeds", "0", "1", "--ref", "s_dense"]


def test_dial_averages_seeds_adds_the_twin_and_names_a_missing_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs, argv = _dial_records(tmp_path)
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| 1 | 30.500 | 30.500 | 30.500 | 30.500 | 5.00 |")
    assert lines[3].startswith("| 2 | 30.600 | 30.600 | 30.600 | 30.600 | 6.00 |")
    assert lines[4].startswith("| s_dense | 30.200 | 30.200 | 30.200 | 30.200 | 4.00 |")
    (recs / "s_k1_1.json").unlink()
    with pytest.raises(SystemExit, match=r"s at top-1 .* no record of seed \[1\]"):
        sweep.main(argv)


def test_dial_plot_draws_the_dial_and_the_twin(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (not a dependency)")
    _, argv = _dial_records(tmp_path)
    png = tmp_path / "dial.png"
    assert sweep.main([*argv, "--plot", str(png), "--plot-scale", "4"]) == 0
    assert png.stat().st_size > 1000


def test_margin_rows_split_the_margin_by_what_the_reference_recovers() -> None:
    """A run whose margin is a tenth of the reference's gain over bicubic on every image: the
    ratio is 0.1 in every third, the correlation 1, the run ahead everywhere; the thirds are
    ranked by the reference's gain, not by image order."""
    gain = [6.0, 1.0, 4.0, 2.0, 5.0, 3.0]
    bicubic = [20.0 + i for i in range(6)]
    psnr = {
        "bicubic": bicubic,
        "ref": [b + g for b, g in zip(bicubic, gain, strict=True)],
        "run": [b + 1.1 * g for b, g in zip(bicubic, gain, strict=True)],
    }
    (row,) = sweep.margin_rows(["ref", "run"], {"B100": psnr})
    assert (row["set"], row["run"], row["ref"], row["images"]) == ("B100", "run", "ref", 6)
    assert row["margin_db"] == pytest.approx(0.35) and row["ahead"] == 1.0
    assert row["corr_with_ref_gain"] == pytest.approx(1.0)
    assert [t["ref_gain_db"] for t in row["thirds"]] == pytest.approx([1.5, 3.5, 5.5])
    assert [t["ratio"] for t in row["thirds"]] == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.usefixtures("one_thread")
def test_margin_scores_runs_per_image_against_the_first(tmp_path: Path) -> None:
    """sweep.py margin: per-image PSNRs of bicubic and every run (the evaluator's steps), one row
    per other run and set; an existing JSON is refused, runs of two scales are refused."""
    runs = []
    for seed, scale in ((0, 2), (1, 2), (2, 4)):
        run = tmp_path / "g" / f"trunk64x10_lean_x{scale}_seed{seed}"
        run.mkdir(parents=True)
        meta = {"config": "trunk64x10_lean", "scale": scale, "seed": seed}
        (run / "meta.json").write_text(json.dumps(meta))
        torch.manual_seed(seed)
        model = sweep.build("trunk64x10_lean", scale)
        with torch.no_grad():
            for q in model.parameters():
                q.add_(torch.randn_like(q) * 0.01)
        torch.save(model.state_dict(), run / "ema.pt")
        runs.append(str(run))
    out = tmp_path / "margin.json"
    argv = ["margin", "--runs", *runs[:2], "--data", str(TEST_DATA), "--sets", "Set5"]
    assert sweep.main([*argv, "--limit", "2", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["scale"] == 2 and rec["runs"] == [
        "g/trunk64x10_lean_x2_seed0",
        "g/trunk64x10_lean_x2_seed1",
    ]
    psnr = rec["psnr"]["Set5"]
    assert len(rec["images"]["Set5"]) == 2 and all(len(v) == 2 for v in psnr.values())
    (row,) = rec["rows"]
    d = [a - b for a, b in zip(psnr[rec["runs"][1]], psnr[rec["runs"][0]], strict=True)]
    assert row["margin_db"] == pytest.approx(sum(d) / 2)
    assert psnr["bicubic"] != psnr[rec["runs"][0]] != psnr[rec["runs"][1]]
    with pytest.raises(SystemExit, match="exists"):
        sweep.main([*argv, "--json", str(out)])
    with pytest.raises(SystemExit, match="at least one run to compare"):
        sweep.main(["margin", "--runs", runs[0], "--data", str(TEST_DATA)])
    with pytest.raises(SystemExit, match=r"mixes scales \[2, 4\]"):
        sweep.main(["margin", "--runs", runs[0], runs[2], "--data", str(TEST_DATA)])


def _pairs(folder: Path, factor: int) -> Path:
    """A make_pairs.py folder of one pair whose HR image is ``factor`` times its LR image."""
    (folder / "hr").mkdir(parents=True)
    (folder / "lr").mkdir()
    hr = Image.open(HR / "bird.png").crop((0, 0, 96, 96))
    hr.save(folder / "hr" / "bird.png")
    hr.resize((96 // factor, 96 // factor), Image.Resampling.BICUBIC).save(
        folder / "lr" / "bird.png"
    )
    return folder


def test_train_checks_every_configuration_before_starting_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad input to `train` is one error line and exit 2 before any run starts: nothing is
    created (no --out, no run folder, no .stdout); a resume keeps its recipe and its data."""
    out = tmp_path / "runs"
    base = ["train", "--scale", "4", "--iters", "1", "--out", str(out)]
    cases = [
        (["--configs", "nosuch", "--data", str(HR)], "unknown configuration 'nosuch'"),
        (["--configs", "compact", "compact", "--data", str(HR)], "compact more than once"),
        (["--configs", "compact", "--data", str(tmp_path / "none")], "none: no such folder"),
        (["--configs", "compact", "--data", str(HR), "--val", str(tmp_path / "v")], "--val"),
        (
            ["--configs", "compact", "--data", str(_pairs(tmp_path / "p2", 2))],
            r"its pairs are not x4 \(hr/bird.png 96x96, LR 48x48: x2\)",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            sweep.main([*base, *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and re.search(message, err), err
        assert len(err.splitlines()) == 1 and err.startswith("sweep.py train: error: ")
        assert not out.exists()
    # a run with a state: resuming it under another batch or on other data is refused by name
    run = out / "compact_x4"
    run.mkdir(parents=True)
    (run / "state.pt").write_bytes(b"")
    recipe = {**sweep.RECIPE, "batch": 1, "lr_size": 16}
    (run / "meta.json").write_text(json.dumps({"recipe": recipe, "data": [str(HR)]}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "bird.png").write_bytes((HR / "bird.png").read_bytes())
    argv = [*base[:-2], "--iters", "2", "--out", str(out), "--configs", "compact", "--crop", "16"]
    for extra, message in (
        (["--data", str(HR), "--batch", "2"], "with --batch 1; resume it with the same value"),
        (["--data", str(other), "--batch", "1"], "on --data .*HR; resume it with the same folders"),
    ):
        with pytest.raises(SystemExit) as exc:
            sweep.main([*argv, *extra])
        assert exc.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["compact_x4"]  # no run was started


def test_a_failed_run_says_why_and_leaves_no_empty_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that fails once started (here: no image as large as the crop) prints the last line
    of its output beside its exit status and names the file that holds the rest; the run folder
    is made only by a run that trains, so the failed start leaves none."""
    out = tmp_path / "runs"
    argv = ["--scale", "4", "--iters", "1", "--data", str(HR), "--crop", "999", "--batch", "1"]
    with pytest.raises(SystemExit, match="no LR image is at least 999 px"):
        sweep.main(["train-one", "--config", "compact", *argv, "--out", str(out)])
    assert not out.exists()
    capsys.readouterr()
    assert sweep.main(["train", "--configs", "compact", *argv, "--out", str(out)]) == 2
    stdout = out / "compact_x4.stdout"
    assert capsys.readouterr().out == (
        "compact: exit 2: sweep.py train-one: error: no LR image is at least 999 px on each "
        f"side (see {stdout})\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["compact_x4.stdout"]


def test_a_run_without_its_state_is_not_trained_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run unpacked without --with-state has weights, meta and log but no state.pt: training
    into its folder is refused (it would start from scratch and overwrite them)."""
    run = tmp_path / "runs" / "compact_x4"
    run.mkdir(parents=True)
    files = {"meta.json": json.dumps({"iterations": 30, "finished": True}), "log.jsonl": "{}\n"}
    for name, text in files.items():
        (run / name).write_text(text)
    argv = ["--scale", "4", "--iters", "40", "--data", str(HR), "--out", str(run.parent)]
    for cmd in (["train-one", "--config", "compact"], ["train", "--configs", "compact"]):
        with pytest.raises(SystemExit) as exc:
            sweep.main([*cmd, *argv, "--batch", "1", "--crop", "16"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "no training state (state.pt)" in err, err
        assert "(30 iterations)" in err and "--with-state" in err
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "meta.json"]
    assert {n: (run / n).read_text() for n in files} == files


def test_a_run_that_another_process_trains_is_not_started_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start given twice (a device call issued again while its runs train) does not train
    the same run folder beside the first process: the second is refused, naming the run."""
    out = tmp_path / "runs"
    argv = ["train-one", "--config", "compact", "--scale", "4", "--iters", "1", "--batch", "1"]
    argv += ["--crop", "16", "--data", str(HR), "--out", str(out)]
    first = sweep.hold_run(out / "compact_x4")  # the process that trains it
    try:
        with pytest.raises(SystemExit) as exc:
            sweep.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, err
        assert f"{out / 'compact_x4'} is being trained by another process now" in err
        assert not out.exists()
    finally:
        first.close()
    assert sweep.hold_run(out / "compact_x4_seed1") is not None  # other runs are free


@pytest.mark.usefixtures("one_thread")
def test_resuming_on_other_data_is_refused_and_keeps_the_runs_data(tmp_path: Path) -> None:
    """A resume is checked against the digest of the images its run read, not the folder's
    path: other images under the same name are refused (the run untouched), the same images in
    a moved folder are taken."""
    argv = ["train-one", "--config", "compact", "--scale", "4", "--batch", "1", "--crop", "16"]
    argv += ["--out", str(tmp_path / "runs")]
    data = tmp_path / "data"
    data.mkdir()
    (data / "bird.png").write_bytes((HR / "bird.png").read_bytes())
    assert sweep.main([*argv, "--iters", "1", "--data", str(data)]) == 0
    run = tmp_path / "runs" / "compact_x4"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["data"] == [str(data)] and len(meta["data_sha256"]) == 64
    state = (run / "state.pt").read_bytes()
    # the same folder, one pixel changed: refused, nothing of the run rewritten
    pixels = np.array(Image.open(data / "bird.png").convert("RGB"))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(data / "bird.png")
    with pytest.raises(SystemExit, match=r"trained on other images than those now under"):
        sweep.main([*argv, "--iters", "2", "--data", str(data)])
    assert json.loads((run / "meta.json").read_text()) == meta
    assert (run / "state.pt").read_bytes() == state
    # the run's images, moved to another folder: resumed
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "bird.png").write_bytes((HR / "bird.png").read_bytes())
    assert sweep.main([*argv, "--iters", "2", "--data", str(moved)]) == 0
    meta2 = json.loads((run / "meta.json").read_text())
    assert meta2["iterations"] == 2 and meta2["data_sha256"] == meta["data_sha256"]
    assert meta2["data"] == [str(moved)]


def _fake_run(runs: Path) -> Path:
    run = runs / "trunk64x10_lean_x4"
    run.mkdir(parents=True)
    meta = {"config": "trunk64x10_lean", "scale": 4, "seed": 0, "iterations": 1}
    (run / "meta.json").write_text(json.dumps(meta))
    torch.save(sweep.build("trunk64x10_lean", 4).state_dict(), run / "ema.pt")
    return run


def test_eval_names_a_bad_runs_folder_or_data_and_says_which_records_it_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    run = _fake_run(runs)

    def refused(runs_arg: Path, *extra: str) -> str:
        argv = ["eval", "--runs", str(runs_arg), "--records", str(records), "--recipe", "t"]
        with pytest.raises(SystemExit) as exc:
            sweep.main([*argv, *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert not records.exists()  # nothing made
        return err

    assert f"--runs {tmp_path / 'nosuch'}: no such folder" in refused(tmp_path / "nosuch")
    assert f"is one run; give the folder that holds it (--runs {runs})" in refused(run)
    assert "no runs there" in refused(tmp_path)
    err = refused(runs, "--data", str(tmp_path / "none"), "--sets", "Set5")
    assert err.startswith("sweep.py eval: error: set 'Set5' not found: there is no folder")
    # a set not yet all copied is not scored under its name (a record is never rewritten)
    part = tmp_path / "part" / "Urban100" / "HR"
    part.mkdir(parents=True)
    (part / "img_001.png").write_bytes((HR / "bird.png").read_bytes())
    (tmp_path / "part" / "Set5").symlink_to(TEST_DATA / "Set5")  # whole: scored as it is
    err = refused(runs, "--data", str(tmp_path / "part"), "--sets", "Set5", "Urban100")
    assert "Urban100: 1 HR images in " in err and "the set has 100; complete the folder" in err
    # an existing record is kept, and said to be
    records.mkdir()
    rec = records / "t_trunk64x10_lean_x4_1.json"
    rec.write_text(json.dumps({"psnr": {"Set5": 30.0}}))
    argv = ["eval", "--runs", str(runs), "--records", str(records), "--recipe", "t"]
    assert sweep.main([*argv, "--data", str(TEST_DATA), "--sets", "Set5"]) == 0
    assert f"{rec}: kept, it exists (sets Set5); remove it" in capsys.readouterr().out
    assert json.loads(rec.read_text()) == {"psnr": {"Set5": 30.0}}


def test_plots_name_their_missing_dependency_and_table_plot_needs_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = tmp_path / "q"
    recs.mkdir()
    _record(recs, "compact", 30.0)
    png = tmp_path / "front.png"
    with pytest.raises(SystemExit) as exc:
        sweep.main(["table", "--records", str(recs), "--plot", str(png)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and not out and not png.exists()
    assert "--plot draws PSNR against latency; give the bench JSON files with --speed" in err

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    speed = _speed(tmp_path / "s.json", [("compact", 4, 2.0)])
    need = "the plot needs matplotlib, which is not installed: pip install matplotlib"
    with pytest.raises(SystemExit, match=need):
        sweep.main(["table", "--records", str(recs), "--speed", str(speed), "--plot", str(png)])
    assert not capsys.readouterr().out  # refused before the table
    _log(tmp_path / "g" / "a_x4", [{"iter": 500, "val": {"Set5": 28.5}}])
    with pytest.raises(SystemExit, match=need):
        sweep.main(["curves", "--runs", str(tmp_path / "g"), "--out", str(png)])
    argv = ["dial", "--records", str(recs), "--recipe", "r", "--config", "s"]
    with pytest.raises(SystemExit, match=need):
        sweep.main([*argv, "--speed", str(speed), "--plot", str(png)])
    assert not png.exists()


def test_bench_needs_a_cuda_gpu_and_names_each_configuration_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kept = tmp_path / "speed.json"
    kept.write_text("{}")
    with pytest.raises(SystemExit, match=r"speed\.json exists; remove it first"):
        sweep.main(["bench", "--configs", "compact", "--json", str(kept)])  # before any timing
    assert kept.read_text() == "{}"
    with pytest.raises(SystemExit, match="times the networks on a CUDA GPU, and there is none"):
        sweep.main(["bench", "--configs", "compact"])
    with pytest.raises(SystemExit) as exc:
        sweep.main(["bench", "--configs", "nosuch"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as built:
        sweep.build("nosuch", 4)  # the list of an unknown name, everywhere
    for message in (capsys.readouterr().err, str(built.value)):
        names = message.split("known: ")[1].strip().split(", ")
        assert "hybridmoe_nano" in names and len(names) == len(set(names))


@pytest.mark.usefixtures("one_thread")
def test_noise_runs_resume_exactly_and_unfinished_or_lagging_runs_are_handled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The texture head's noise draws from the global generator, which the state did not keep:
    a resumed noise run drew other noise than one run straight through. eval recorded a run
    stopped before its budget as if it were done. A stop inside the final save (the state
    written, the weights and meta not) left a run that 'already at N' never repaired."""
    base = ["train-one", "--config", "trunk96x12_lean_noise", "--scale", "4", "--iters", "3"]
    base += ["--batch", "1", "--crop", "16", "--data", str(HR)]
    name = "trunk96x12_lean_noise_x4"
    assert sweep.main([*base, "--out", str(tmp_path / "one")]) == 0
    split = tmp_path / "split"
    assert sweep.main([*base, "--out", str(split), "--deadline-s", "1e-9"]) == 0
    meta = json.loads((split / name / "meta.json").read_text())
    assert (meta["iterations"], meta["finished"]) == (1, False)
    records = tmp_path / "records"
    evaluate = ["eval", "--runs", str(split), "--records", str(records), "--recipe", "t"]
    evaluate += ["--data", str(TEST_DATA), "--sets", "Set5", "--limit", "1"]
    capsys.readouterr()
    assert sweep.main(evaluate) == 0
    assert "stopped at 1 iterations, before its budget" in capsys.readouterr().err
    assert not records.exists()
    assert sweep.main([*base, "--out", str(split)]) == 0  # resumes to the end
    one = torch.load(tmp_path / "one" / name / "ema.pt", weights_only=True)
    resumed = torch.load(split / name / "ema.pt", weights_only=True)
    assert all(torch.equal(one[k], resumed[k]) for k in one)

    run = tmp_path / "one" / name  # as a stop between the state and the weights left it
    (run / "meta.json").write_text(json.dumps({**meta, "iterations": 2}))
    torch.save({k: torch.zeros_like(v) for k, v in one.items()}, run / "ema.pt")
    assert sweep.main([*base, "--out", str(tmp_path / "one")]) == 0
    assert "written again from the state" in capsys.readouterr().out
    repaired = json.loads((run / "meta.json").read_text())
    assert (repaired["iterations"], repaired["finished"]) == (3, True)
    again = torch.load(run / "ema.pt", weights_only=True)
    assert all(torch.equal(one[k], again[k]) for k in one)
    # the same repair asked with a smaller budget: the run reached the one it trained for
    (run / "meta.json").write_text(json.dumps({**meta, "iterations": 2}))
    small = [*base[: base.index("--iters") + 1], "2", *base[base.index("--iters") + 2 :]]
    assert sweep.main([*small, "--out", str(tmp_path / "one")]) == 0
    assert "written again from the state" in capsys.readouterr().out
    repaired = json.loads((run / "meta.json").read_text())
    assert (repaired["iterations"], repaired["finished"]) == (3, True)


def _tiny(out: Path, *extra: str) -> list[str]:
    """train-one of the smallest network on one image, batch 1, crops of 16."""
    argv = ["train-one", "--config", "compact", "--scale", "4", "--batch", "1", "--crop", "16"]
    return [*argv, "--out", str(out), *extra]


@pytest.mark.usefixtures("one_thread")
def test_the_warmup_ends_at_the_peak_rate_and_the_schedule_takes_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--warmup N scales the first N iterations by (it + 1) / N; from iteration N on the rate
    is the schedule's (budget 4: halved at 2 and at 3)."""
    monkeypatch.setattr(sweep, "LOG_EVERY", 1)
    argv = _tiny(tmp_path / "runs", "--data", str(HR), "--warmup", "2", "--iters", "4")
    assert sweep.main(argv) == 0
    log = tmp_path / "runs" / "compact_x4" / "log.jsonl"
    peak = sweep.RECIPE["lr"]
    rates = [json.loads(line)["lr"] for line in log.read_text().splitlines()]
    assert rates == pytest.approx([peak / 2, peak, peak / 2, peak / 4])


@pytest.mark.usefixtures("one_thread")
def test_a_run_from_before_an_option_resumes_only_at_its_default(tmp_path: Path) -> None:
    """A run whose meta.json lacks a recipe value (trained before the option existed) was
    trained at the default: resuming it with another value is refused, with none it resumes."""
    runs = tmp_path / "runs"
    assert sweep.main(_tiny(runs, "--data", str(HR), "--iters", "1")) == 0
    meta_path = runs / "compact_x4" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["recipe"]["warmup"], meta["recipe"]["router_lr_mult"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match=r"trained with --warmup 0; resume it with the same"):
        sweep.main(_tiny(runs, "--data", str(HR), "--iters", "2", "--warmup", "3"))
    assert json.loads(meta_path.read_text())["iterations"] == 1
    assert sweep.main(_tiny(runs, "--data", str(HR), "--iters", "2")) == 0
    assert json.loads(meta_path.read_text())["iterations"] == 2


@pytest.mark.usefixtures("one_thread")
def test_a_resume_refuses_a_renamed_image(tmp_path: Path) -> None:
    """The data digest covers the images' names as well as their pixels: the same pixels under
    another name are other data (pairs are matched by name)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "bird.png").write_bytes((HR / "bird.png").read_bytes())
    runs = tmp_path / "runs"
    assert sweep.main(_tiny(runs, "--data", str(data), "--iters", "1")) == 0
    (data / "bird.png").rename(data / "bird2.png")
    with pytest.raises(SystemExit, match="trained on other images than those now under"):
        sweep.main(_tiny(runs, "--data", str(data), "--iters", "2"))
    assert json.loads((runs / "compact_x4" / "meta.json").read_text())["iterations"] == 1


def test_a_run_is_locked_by_its_folder_however_the_path_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts that name one run folder by a relative and by an absolute path are the same
    run: the second is refused."""
    monkeypatch.chdir(tmp_path)
    first = sweep.hold_run(Path("runs") / "compact_x4")
    try:
        with pytest.raises(SystemExit, match="is being trained by another process now"):
            sweep.hold_run(tmp_path / "runs" / "compact_x4")
    finally:
        first.close()


@pytest.mark.usefixtures("one_thread")
def test_train_passes_the_recipe_options_to_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train starts one train-one per configuration; each run keeps the recipe options given
    to train (here run in this process instead of a subprocess)."""

    class InProcess:
        def __init__(self, cmd: list[str], **_: object) -> None:
            assert cmd[1] == sweep.__file__
            self.code = sweep.main(cmd[2:])

        def wait(self) -> int:
            return self.code

    monkeypatch.setattr(sweep.subprocess, "Popen", InProcess)
    runs = tmp_path / "runs"
    argv = ["train", "--configs", "compact", "--scale", "4", "--iters", "1", "--data", str(HR)]
    argv += ["--out", str(runs), "--batch", "1", "--crop", "16", "--warmup", "3", "--lr", "2e-4"]
    assert sweep.main(argv) == 0
    recipe = json.loads((runs / "compact_x4" / "meta.json").read_text())["recipe"]
    assert (recipe["batch"], recipe["lr_size"], recipe["warmup"], recipe["lr"]) == (1, 16, 3, 2e-4)


def _packed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes, list[Path]]:
    """A run with a 100 kB state packed --with-state in parts of 32 KiB (the state in chunks,
    one a part)."""
    runs = tmp_path / "runs"
    run = _fake_run(runs)
    (run / "log.jsonl").write_text('{"iter": 1}\n')
    state = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (run / "state.pt").write_bytes(state)
    monkeypatch.setattr(sweep, "PACK_PART_BYTES", 32 * 1024)
    argv = ["pack", "--runs", str(runs), "--out", str(tmp_path / "pack"), "--with-state"]
    assert sweep.main(argv) == 0
    return run, state, sorted((tmp_path / "pack").glob("*.tar"))


def test_unpack_joins_chunks_in_their_order_whatever_the_order_of_the_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, state, parts = _packed_run(tmp_path, monkeypatch)
    chunks = [n for p in parts for n in _tar_names(p) if n.startswith(f"runs/{run.name}/state.pt")]
    assert len(chunks) == 4
    out = tmp_path / "out"
    assert sweep.main(["unpack", "--tars", *map(str, reversed(parts)), "--out", str(out)]) == 0
    assert (out / "runs" / run.name / "state.pt").read_bytes() == state


def test_unpack_refuses_a_part_that_lost_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part whose chunk is gone (its manifest still there) is refused by name, nothing
    written."""
    _, _, parts = _packed_run(tmp_path, monkeypatch)
    part = next(p for p in parts if any(n.endswith("state.pt.chunk01of04") for n in _tar_names(p)))
    with tarfile.open(part) as tf:
        kept = [
            (m, tf.extractfile(m).read())
            for m in tf.getmembers()
            if "state.pt.chunk01" not in m.name
        ]
    with tarfile.open(part, "w") as tf:
        for info, data in kept:
            tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"state\.pt: 3 of its 4 chunks found; unpack every"):
        sweep.main(["unpack", "--tars", *map(str, parts), "--out", str(out)])
    assert not out.exists()


def test_unpack_over_an_existing_file_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file of the pack already there (the last one unpacked, in name order): refused
    before any other file is written."""
    run, _, parts = _packed_run(tmp_path, monkeypatch)
    there = tmp_path / "out" / "runs" / run.name
    there.mkdir(parents=True)
    (there / "state.pt").write_bytes(b"mine")
    with pytest.raises(SystemExit, match=r"state\.pt exists; unpack into an empty folder"):
        sweep.main(["unpack", "--tars", *map(str, parts), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in there.iterdir()) == ["state.pt"]
    assert (there / "state.pt").read_bytes() == b"mine"


def test_pack_refuses_two_runs_that_would_unpack_to_one_folder(tmp_path: Path) -> None:
    """Runs are packed as <folder name>/<run>: two --runs folders of one name holding a run of
    one name (or one folder given twice) would make a pack that no unpack takes; refused when
    packing, nothing written."""
    for side in ("a", "b"):
        run = _fake_run(tmp_path / side / "runs")
        (run / "log.jsonl").write_text('{"iter": 1}\n')
    out = tmp_path / "pack"
    for runs in ([tmp_path / "a" / "runs", tmp_path / "b" / "runs"], [tmp_path / "a" / "runs"] * 2):
        with pytest.raises(SystemExit, match=r"runs/trunk64x10_lean_x4 twice"):
            sweep.main(["pack", "--runs", *map(str, runs), "--out", str(out)])
        assert not out.exists()


@pytest.mark.usefixtures("one_thread")
def test_the_ema_moves_one_minus_the_decay_of_the_way_to_the_weights(tmp_path: Path) -> None:
    """One step from the seeded start: the EMA weights (ema.pt, and the state's copy) are the
    start moved 1 - decay of the way to the trained weights."""
    assert sweep.main(_tiny(tmp_path, "--data", str(HR), "--iters", "1")) == 0
    run = tmp_path / "compact_x4"
    torch.manual_seed(0)
    start = sweep.build("compact", 4).state_dict()
    state = torch.load(run / "state.pt", weights_only=True)
    ema = torch.load(run / "ema.pt", weights_only=True)
    step = 1 - sweep.RECIPE["ema_decay"]
    moved = 0
    for (key, before), trained, kept in zip(
        start.items(), state["model"].values(), state["ema"], strict=True
    ):
        assert torch.equal(ema[key], kept), key
        assert torch.allclose(ema[key], before + step * (trained - before), atol=1e-7), key
        moved += not torch.equal(trained, before)
    assert moved > 0


def test_a_quality_record_says_which_run_and_recipe_it_scores(tmp_path: Path) -> None:
    """A run stopped at an iteration between saves (1 of SAVE_EVERY 500) is recorded at that
    iteration: in the record's name and in its fields, beside the recipe name given to eval."""
    run = _fake_run(tmp_path / "runs")
    meta = {**json.loads((run / "meta.json").read_text()), "seed": 2, "finished": True}
    (run / "meta.json").write_text(json.dumps(meta))
    small = tmp_path / "sets" / "Set5" / "HR"  # one small image keeps the forward pass cheap
    small.mkdir(parents=True)
    Image.open(HR / "bird.png").crop((0, 0, 48, 48)).save(small / "bird.png")
    records = tmp_path / "records"
    argv = ["eval", "--runs", str(run.parent), "--records", str(records), "--recipe", "tiny"]
    assert (
        sweep.main([*argv, "--data", str(small.parent.parent), "--sets", "Set5", "--limit", "1"])
        == 0
    )
    (path,) = records.glob("*.json")
    rec = json.loads(path.read_text())
    assert path.name == "tiny_trunk64x10_lean_x4_1.json"
    assert (rec["config"], rec["scale"], rec["iterations"]) == ("trunk64x10_lean", 4, 1)
    assert (rec["recipe"], rec["seed"], rec["images"]) == ("tiny", 2, {"Set5": 1})
    assert rec["model"] == sweep.registered_name("trunk64x10_lean")


def test_unpack_refuses_a_file_that_comes_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file held twice by the parts given (here a part with a second meta.json appended) is
    refused by name, whichever copy the manifest matches."""
    run, _, parts = _packed_run(tmp_path, monkeypatch)
    meta = f"runs/{run.name}/meta.json"
    part = next(p for p in parts if meta in _tar_names(p))
    with tarfile.open(part, "a") as tf:
        info = tarfile.TarInfo(meta)
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"{meta} is in two of the parts given"):
        sweep.main(["unpack", "--tars", *map(str, parts), "--out", str(out)])
    assert not out.exists()
