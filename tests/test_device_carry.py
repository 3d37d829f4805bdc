"""Tests of scripts/device_carry.py: the size a device call sends, benchmark sets in parts, and
moving large folders out of the checkout and back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import device_carry as D
import pytest


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(size))
    return path


def test_size_counts_tracked_and_unignored_files_and_the_carried_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _write(tmp_path / "a.py", 1000)
    _write(tmp_path / "big" / "w.bin", 3000)
    _write(tmp_path / ".ref" / "s0" / "t.jpg", 5000)  # ignored unless carried
    (tmp_path / ".gitignore").write_text(".ref/\n")
    monkeypatch.chdir(tmp_path)
    assert D.tree_size(tmp_path) == 1000 + 3000 + len(".ref/\n")
    assert D.main(["size", "--carry", ".ref/s0", "--limit-mib", "1"]) == 0
    assert "carry .ref/s0" in capsys.readouterr().out
    _write(tmp_path / ".ref" / "s0" / "u.jpg", 2**20)
    assert D.main(["size", "--carry", ".ref/s0", "--limit-mib", "1"]) == 1  # over
    with pytest.raises(SystemExit, match="no such file or folder"):
        D.main(["size", "--carry", ".ref/nothing"])


def test_split_parts_fills_in_order_and_refuses_a_file_too_large() -> None:
    files = [("a", 4), ("b", 4), ("c", 3), ("d", 6), ("e", 1)]
    assert D.split_parts(files, 8, 8) == [["a", "b"], ["c"], ["d", "e"]]
    assert D.split_parts(files, 8, 5) == [["a"], ["b", "c"], ["d", "e"]]
    with pytest.raises(SystemExit, match="raise --mib"):
        D.split_parts([("a", 9)], 8, 8)


def test_val_parts_lay_out_every_image_once_within_the_limit(tmp_path: Path) -> None:
    data = tmp_path / "bench"
    sizes = {"Set5": [300_000] * 5, "Urban100": [700_000] * 4}
    for name, each in sizes.items():
        for i, size in enumerate(each):
            _write(data / name / "HR" / f"img{i:03d}.png", size)
    _write(data / "Set5" / "HR" / ".hidden.png", 10)
    out = tmp_path / "v"
    argv = ["val-parts", "--data", str(data), "--out", str(out), "--sets", "Set5", "Urban100"]
    assert D.main([*argv, "--mib", "2", "--first-mib", "1"]) == 0
    parts = sorted(tmp_path.glob("v[0-9]*"))
    assert [p.name for p in parts] == ["v0", "v1", "v2"]
    assert all(D.path_size(p) <= (2 if p.name != "v0" else 1) * D.MIB for p in parts)
    laid = sorted(str(f.relative_to(p)) for p in parts for f in p.rglob("*.png"))
    assert laid == sorted(
        f"{name}/HR/img{i:03d}.png" for name, each in sizes.items() for i in range(len(each))
    )
    with pytest.raises(SystemExit, match="exist"):  # never written over
        D.main([*argv, "--mib", "2"])
    with pytest.raises(SystemExit, match="no such folder"):
        D.main(["val-parts", "--data", str(data), "--out", str(tmp_path / "w"), "--sets", "B100"])


def test_stash_and_unstash_round_trip_and_refuse_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "repo"
    _write(root / "experiments" / "pretrained_models" / "m.safetensors", 100)
    _write(root / "docs" / "plots" / "p.png", 50)
    monkeypatch.chdir(root)
    hold = tmp_path / "hold"
    assert D.main(["stash", "--to", str(hold), "experiments/pretrained_models", "docs/plots"]) == 0
    assert not (root / "docs" / "plots").exists()
    assert json.loads((hold / D.MANIFEST).read_text())["paths"] == [
        "experiments/pretrained_models",
        "docs/plots",
    ]
    with pytest.raises(SystemExit, match="exists"):
        D.main(["stash", "--to", str(hold), "docs"])
    _write(root / "docs" / "plots" / "new.png", 1)  # something took the place: nothing moves
    with pytest.raises(SystemExit, match="in the checkout again: docs/plots"):
        D.main(["unstash", "--from", str(hold)])
    assert not (root / "experiments" / "pretrained_models").exists()
    (root / "docs" / "plots" / "new.png").unlink()
    (root / "docs" / "plots").rmdir()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    with pytest.raises(SystemExit, match="run unstash from there"):
        D.main(["unstash", "--from", str(hold)])
    monkeypatch.chdir(root)
    assert D.main(["unstash", "--from", str(hold)]) == 0
    assert (root / "experiments" / "pretrained_models" / "m.safetensors").stat().st_size == 100
    assert (root / "docs" / "plots" / "p.png").is_file() and not hold.exists()
    with pytest.raises(SystemExit, match="not in the checkout"):
        D.main(["stash", "--to", str(hold), "tests/data"])
    assert not hold.exists()
