"""scripts/probe_init_signal.py: per-block forward signal of a freshly built x1 trunk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import probe_init_signal as P
import pytest


def test_lean_trunk_signal_shrinks_and_residual_trunk_keeps_it() -> None:
    lean = P.probe("trunk64x10_lean", 4)
    res = P.probe("trunk96x12_res", 4)
    assert lean["blocks"] == 10 and len(lean["std"]) == 10
    assert res["blocks"] == 12 and len(res["std"]) == 12
    assert all(math.isfinite(s) and s > 0 for s in lean["std"] + res["std"])
    # silu(x + Wx) halves a small signal (slope 1/2 at 0): the lean stack fades block by block,
    # while x + silu(small Wx) carries its input through
    assert lean["last_over_first_std"] < 0.3
    assert res["last_over_first_std"] > 0.5


def test_record_written_and_bad_input_refused(tmp_path: Path) -> None:
    out = tmp_path / "signal.json"
    assert P.main(["trunk64x10_lean", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["config"] for r in rec["rows"]] == ["trunk64x10_lean"]
    assert rec["rows"][0]["std"] == P.probe("trunk64x10_lean", 4)["std"]  # seeded: repeatable
    with pytest.raises(SystemExit, match="exists"):
        P.main(["trunk64x10_lean", "--json", str(out)])
    with pytest.raises(SystemExit, match=r"unknown configuration.*nosuch"):
        P.main(["nosuch", "--json", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit, match="not an x1 trunk"):
        P.main(["s", "--json", str(tmp_path / "c.json")])
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "c.json").exists()
