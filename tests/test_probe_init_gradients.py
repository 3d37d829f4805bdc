"""scripts/probe_init_gradients.py: the gradient that reaches a fresh trunk's blocks."""

from __future__ import annotations

import json
from pathlib import Path

import probe_init_gradients as P
import pytest
from conftest import TEST_DATA


@pytest.mark.usefixtures("one_thread")
def test_deep_plain_stack_starves_its_first_blocks_residual_does_not(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    configs = ["trunk64x10_lean", "trunk64x24_lean", "trunk96x12_res"]
    assert P.main([*configs, "--json", str(out), "--data", str(TEST_DATA)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert [rows[c]["blocks"] for c in configs] == [10, 24, 12]
    shallow, deep, res = (rows[c]["first_over_last"] for c in configs)
    assert deep < shallow / 10  # 14 more SiLU-after-sum blocks: the gradient fades on the way
    assert res > 0.3  # the skips carry it
    assert all(len(r["block_output_std"]) == r["blocks"] for r in rows.values())
    # forward: silu(x + Wx) halves a small signal (slope 1/2 at 0), so a plain stack's output
    # fades block by block, while x + silu(small Wx) carries its input through
    lean_std, res_std = (rows[c]["block_output_std"] for c in ("trunk64x10_lean", "trunk96x12_res"))
    assert lean_std[-1] < 0.3 * lean_std[0]
    assert res_std[-1] > 0.5 * res_std[0]
    with pytest.raises(SystemExit, match="exists"):
        P.main(["trunk64x10_lean", "--json", str(out), "--data", str(TEST_DATA)])
    with pytest.raises(SystemExit, match="not an x1 trunk"):
        P.main(["s", "--json", str(tmp_path / "b.json"), "--data", str(TEST_DATA)])
