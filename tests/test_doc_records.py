"""The numbers of the model cards, of docs/BENCHMARKS.md's tables and of docs/TRAINING.md's
shipped-models table are those of their raw records under docs/measurements/, and every record
that TRAINING.md and DEPLOY.md cite exists (JSON only: no model is run here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sweep

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "experiments" / "pretrained_models"
QUALITY = ROOT / "docs" / "measurements" / "quality"
SETS = ("Set5", "Set14", "B100", "Urban100")


def _record(name: str) -> dict:
    return json.loads((QUALITY / f"{name}.json").read_text())


def _num(cell: str) -> str:
    return cell.strip().strip("*").replace("−", "-")


# Per card: the record of each column of its results table, by the start of the column's
# header ("this" is the shipped file); ("name", "input") reads the record's degraded-input
# scores, ("name", "bicubic") its bicubic baseline.
R920_X2, R3234_X2 = "sweep-photo920-12k", "sweep-photo3234-12k-lr2e-4"
R3234_X4 = "sweep-photo3234-16k"
RESTORE = "sweep-restore-photo920-10k"
RW_NOISE = "realworld4-gan-3k_gan_trunk96x12_lean_noise"
CARD_COLUMNS: dict[str, dict[str, str | tuple[str, str]]] = {
    "2x_HybridMoE_Nano": {
        "Compact": f"{R920_X2}_compact_x2_12000",
        "this": f"{R920_X2}_trunk64x10_lean_x2_12000",
    },
    "2x_HybridMoE_S": {
        "Compact": f"{R920_X2}_compact_x2_12000",
        "this": f"{R920_X2}_trunk96x12_lean_x2_12000",
    },
    "2x_HybridMoE_M": {
        "Compact": f"{R920_X2}-lr2e-4_compact_x2_12000",
        "PLKSR": f"{R920_X2}-lr2e-4_plksr_x2_12000",
        "this": f"{R920_X2}-lr2e-4_trunk192x12_lean_x2_12000",
    },
    "2x_HybridMoE_L": {
        "Compact": f"{R3234_X2}_compact_x2_12000",
        "`hybridmoe_m`": f"{R3234_X2}_trunk192x12_lean_x2_12000",
        "this": f"{R3234_X2}_trunk256x16_lean_x2_12000",
    },
    "4x_HybridMoE_Nano": {
        "SPAN": f"{R3234_X4}_span_x4_16000",
        "Compact": f"{R3234_X4}_compact_x4_16000",
        "this": f"{R3234_X4}_trunk64x10_lean_x4_16000",
    },
    "4x_HybridMoE_S": {
        "SPAN": f"{R3234_X4}_span_x4_16000",
        "Compact": f"{R3234_X4}_compact_x4_16000",
        "this": f"{R3234_X4}_trunk96x12_lean_x4_16000",
    },
    "4x_HybridMoE_M": {
        "Compact": f"{R3234_X4}-lr2e-4_compact_x4_16000",
        "this": f"{R3234_X4}-lr2e-4_trunk192x12_lean_x4_16000",
    },
    "4x_HybridMoE_L": {
        "Compact": f"{R3234_X4}-lr2e-4_compact_x4_16000",
        "`hybridmoe_m`": f"{R3234_X4}-lr2e-4_trunk192x12_lean_x4_16000",
        "this": f"{R3234_X4}-lr2e-4_trunk256x16_lean_x4_16000",
    },
    "1x_HybridMoE_Nano_Restore": {
        "degraded input": (f"{RESTORE}_trunk64x10_lean_x1_restore_10000", "input"),
        "Compact": f"{RESTORE}_compact_x1_restore_10000",
        "SPAN": f"{RESTORE}_span_x1_restore_10000",
        "S_Restore": f"{RESTORE}_trunk96x12_lean_x1_restore_10000",
        "this": f"{RESTORE}_trunk64x10_lean_x1_restore_10000",
    },
    "1x_HybridMoE_S_Restore": {
        "degraded input": (f"{RESTORE}_trunk96x12_lean_x1_restore_10000", "input"),
        "Compact": f"{RESTORE}_compact_x1_restore_10000",
        "SPAN": f"{RESTORE}_span_x1_restore_10000",
        "Nano_Restore": f"{RESTORE}_trunk64x10_lean_x1_restore_10000",
        "this": f"{RESTORE}_trunk96x12_lean_x1_restore_10000",
    },
    "4x_HybridMoE_S_RealWorld": {
        "bicubic of the input": (RW_NOISE, "bicubic"),
        "Compact fidelity": "realworld4-eval-fidelity_fid_compact_x4",
        "`4x_HybridMoE_S` (fidelity)": "realworld4-eval-fidelity_fid_trunk96x12_lean_x4",
        "Compact GAN": "realworld4-gan-3k_gan_compact",
        "fine-tune without noise": "realworld4-gan-3k_gan_trunk96x12_lean",
        "this model, `--noise 0`": f"{RW_NOISE}_on",
        "this model": RW_NOISE,
    },
}


def _expected(column: str | tuple[str, str], s: str) -> list[float]:
    """The values of a cell from its record: PSNR / SSIM (/ LPIPS where the record has it)."""
    name, part = column if isinstance(column, tuple) else (column, "")
    rec = _record(name)
    if part == "bicubic":
        return [rec["bicubic"][s][k] for k in ("psnr", "ssim", "lpips")]
    suffix = f"_{part}" if part else ""
    vals = [rec[f"psnr{suffix}"][s], rec[f"ssim{suffix}"][s]]
    if "lpips" in rec:
        vals.append(rec["lpips"][s])
    return vals


def _rounds_from(printed: str, value: float) -> bool:
    """``printed`` is ``value`` rounded to the printed decimals; a record keeps a few decimals
    itself, so a value it holds on a rounding boundary (0.57345 printed to 4) may come from a
    measurement on either side of it and is taken both ways."""
    decimals = len(printed.partition(".")[2])
    kept = len(repr(value).partition(".")[2])
    slack = 0.5 * 10.0**-decimals + 0.5 * 10.0**-kept
    return abs(float(printed) - value) <= slack + 1e-12 and (
        kept > decimals or f"{value:.{decimals}f}" == printed
    )


def _cell_matches(cell: str, values: list[float]) -> bool:
    """A cell ``a / b / c`` holds the record's values at 2 / 4 / 3 decimals."""
    parts = [p.strip() for p in cell.split("/")]
    widths = (2, 4, 3)[: len(values)]
    return len(parts) == len(values) and all(
        len(p.partition(".")[2]) == w and _rounds_from(p, v)
        for p, v, w in zip(parts, values, widths, strict=False)
    )


def _results_table(card: str) -> tuple[list[str], list[list[str]]]:
    lines = (MODELS / f"{card}.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| set |"))
    header = [c.strip() for c in lines[start].split("|")[1:-1]]
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([_num(c) for c in ln.split("|")[1:-1]])
    return header, rows


def test_every_card_is_mapped() -> None:
    assert set(CARD_COLUMNS) == {p.stem for p in MODELS.glob("*.safetensors")}


@pytest.mark.parametrize("card", sorted(CARD_COLUMNS))
def test_card_results_table_is_its_records(card: str) -> None:
    """Every cell of a card's results table rounds from the record of its column (the bicubic
    column of the fidelity cards from the bicubic-only evaluation of its scale), and the card
    cites each of those records."""
    text = (MODELS / f"{card}.md").read_text(encoding="utf-8")
    columns = CARD_COLUMNS[card]
    header, rows = _results_table(card)
    checked = 0
    cites = {f"{c[0] if isinstance(c, tuple) else c}.json" for c in columns.values()}
    for row in rows:
        s = row[0]
        for title, cell in zip(header[2:], row[2:], strict=True):
            # the longest matching prefix: "this model, `--noise 0`" before "this model"
            keys = [k for k in columns if title.startswith(k)]
            if not keys:
                assert title.startswith("bicubic"), (card, title)
                bicubic = _bicubic(card)["sets"][s]["bicubic"]
                assert _cell_matches(cell, [bicubic["psnr"], bicubic["ssim"]]), (card, s, cell)
                cites.add(_BICUBIC.format(scale=card[0]))
                continue
            column = columns[max(keys, key=len)]
            assert _cell_matches(cell, _expected(column, s)), (card, s, title, cell)
            checked += 1
    assert checked == len(rows) * len(columns)
    for name in cites:
        assert name in text, (card, name)


_BICUBIC = "bicubic_x{scale}_2026-12-05.json"


def _bicubic(card: str) -> dict:
    """The bicubic baseline of a fidelity card's scale (``hybridmoe evaluate --bicubic-only``)."""
    path = ROOT / "docs" / "measurements" / _BICUBIC.format(scale=card[0])
    return json.loads(path.read_text())


@pytest.mark.parametrize("card", sorted(c for c in CARD_COLUMNS if "RealWorld" not in c))
def test_card_fields_are_its_record(card: str) -> None:
    """Iterations, data set size, batch, LR crop and deploy-form parameter count of a card are
    those of the record of the shipped run."""
    rec = _record(CARD_COLUMNS[card]["this"])  # type: ignore[arg-type]
    text = (MODELS / f"{card}.md").read_text(encoding="utf-8")
    fields = {
        cells[1].strip(): cells[2].strip()
        for cells in (line.split("|") for line in text.splitlines())
        if len(cells) > 3
    }
    assert fields["iterations"] == f"{rec['iterations']:,}"
    data = rec["train_data"]
    assert fields["dataset size"] == f"{data['pairs']:,} images, {data['data_megapixels']} MP"
    assert fields["batch size"] == str(rec["training"]["batch"])
    lr = rec["training"]["lr_size"]
    assert f"{lr}×{lr}" in fields["HR size"]
    assert fields["HR size"].startswith(str(lr * rec["scale"]))
    assert f"{rec['params']:,} after `hybridmoe fuse`" in fields["size"]


BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"


def test_benchmarks_speed_table_is_printed_from_its_records(capsys: pytest.CaptureFixture) -> None:
    """docs/BENCHMARKS.md's speed table is what its own command prints from the four records."""
    text = BENCHMARKS.read_text(encoding="utf-8")
    command = re.search(
        r"sweep\.py speed --speed (\S+) \\\n\s+--configs ([^\n]*)\\\n\s+([^\n]*)\n", text
    )
    assert command, "the speed command of BENCHMARKS.md"
    runs = re.fullmatch(r"docs/measurements/speed_2026-12-01_\{([a-z,]+)\}\.json", command[1])
    assert runs
    paths = [
        str(ROOT / "docs" / "measurements" / f"speed_2026-12-01_{r}.json")
        for r in runs[1].split(",")
    ]
    configs = (command[2] + " " + command[3]).split()
    assert sweep.main(["speed", "--speed", *paths, "--configs", *configs]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    start = text.index(printed[0])
    assert text[start:].splitlines()[: len(printed)] == printed


# BENCHMARKS.md's same-budget summary: row title -> configuration; the columns -> (recipe,
# iterations, scale), two per column; the difference of the mean Y-PSNR over the sets both
# records have to the seed-0 Compact record of the same recipe.
SUMMARY_ROWS = {
    "`hybridmoe_nano`": "trunk64x10_lean",
    "`hybridmoe_s` (12 blocks of 96)": "trunk96x12_lean",
    "`hybridmoe_s`": "trunk96x12_lean",
    "24 blocks of 64 (`hybridmoe_s` before)": "trunk64x24_lean",
    "16 blocks of 96": "trunk96x16_lean",
    "24 blocks of 128": "trunk128x24_lean",
    "three-level `s` (the `hybridmoe` defaults)": "s",
    "SPAN": "span",
    "PLKSR": "plksr",
    "12 blocks of 128": "trunk128x12_lean",
    "12 blocks of 192": "trunk192x12_lean",
    "`hybridmoe_m` (12 blocks of 192)": "trunk192x12_lean",
    "12 blocks of 96, residual (`rep3res`)": "trunk96x12_res",
    "24 blocks of 128, residual": "trunk128x24_res",
}
SUMMARY_TABLES = {
    "| | ×4 T291 2k / 8k |": [
        ("sweep-t291-2k", 2000, 4), ("sweep-t291-8k", 8000, 4),
        ("sweep-photo920-4k", 4000, 4), ("sweep-photo920-16k", 16000, 4),
        ("sweep-t291-2k", 2000, 2), ("sweep-t291-8k", 8000, 2),
        ("sweep-photo920-3k", 3000, 2), ("sweep-photo920-12k", 12000, 2),
    ],
    "| | ×4 photos 4k / 16k at 2e-4 |": [
        ("sweep-photo920-4k-lr2e-4", 4000, 4), ("sweep-photo920-16k-lr2e-4", 16000, 4),
    ],
    "| | ×2 photos 3k / 12k at 2e-4 |": [
        ("sweep-photo920-3k-lr2e-4", 3000, 2), ("sweep-photo920-12k-lr2e-4", 12000, 2),
    ],
}  # fmt: skip


def _to_compact(config: str, recipe: str, iters: int, scale: int) -> str:
    path = QUALITY / f"{recipe}_{config}_x{scale}_{iters}.json"
    if not path.is_file():
        return "–"
    a = json.loads(path.read_text())["psnr"]
    b = _record(f"{recipe}_compact_x{scale}_{iters}")["psnr"]
    sets = [s for s in SETS if s in a and s in b]
    return f"{sum(a[s] - b[s] for s in sets) / len(sets):+.2f}"


@pytest.mark.parametrize("header", list(SUMMARY_TABLES))
def test_benchmarks_summary_tables_are_their_records(header: str) -> None:
    """Every cell of BENCHMARKS.md's same-budget summaries rounds from the records ("–" where
    there is none)."""
    lines = BENCHMARKS.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    runs = SUMMARY_TABLES[header]
    n = 0
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        config = SUMMARY_ROWS[cells[0]]
        printed = []
        for cell in cells[1:]:
            parts = [_num(p) for p in cell.split("/")]
            printed += parts if len(parts) == 2 else parts * 2  # a lone "–" spans both
        expected = [_to_compact(config, *run) for run in runs]
        assert printed == expected, (cells[0], printed, expected)
        n += 1
    assert n >= 2


TRAINING = ROOT / "docs" / "TRAINING.md"
DEPLOY = ROOT / "docs" / "DEPLOY.md"
MEASUREMENTS = ROOT / "docs" / "measurements"


def _expand_braces(pattern: str) -> list[str]:
    """``a_{b,c}_d`` -> ``a_b_d``, ``a_c_d`` (one level, as the docs write them)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [
        p
        for alt in m[1].split(",")
        for p in _expand_braces(pattern[: m.start()] + alt + pattern[m.end() :])
    ]


def _cited(text: str) -> set[str]:
    """Paths under docs/measurements/ that a document names: ``measurements/...`` anywhere, and
    in backticks the training-log folders named relative to ``measurements/training/``."""
    paths = {m.rstrip(".,;:)") for m in re.findall(r"measurements/[\w./*{},+-]*", text)}
    paths |= {
        f"measurements/training/{m}"
        for m in re.findall(r"`((?:ph|t291|x[24]_|restore|rw4gan)[\w{},*+-]*/(?:[\w+-]+/)?)`", text)
    }
    return paths


@pytest.mark.parametrize("doc", [TRAINING, DEPLOY], ids=lambda p: p.name)
def test_cited_records_exist(doc: Path) -> None:
    """Every record, log folder or glob of them that TRAINING.md and DEPLOY.md cite names at
    least one file under docs/measurements/."""
    cited = _cited(doc.read_text(encoding="utf-8"))
    assert len(cited) > 10
    for path in sorted(cited):
        for rel in _expand_braces(path.removeprefix("measurements/")):
            assert not rel or any(MEASUREMENTS.glob(rel)), (doc.name, path, rel)


def test_training_shipped_models_table_is_its_logs() -> None:
    """TRAINING.md §5c: each shipped model's iterations and GPU time are those of the training
    log its row names (``sweep.py times``: the log's wall clock, minutes to one decimal)."""
    lines = TRAINING.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| model | configuration |"))
    header = [c.strip() for c in lines[start].split("|")[1:-1]]
    col = {name: header.index(name) for name in ("iterations", "GPU time (shared H200)")}
    n = 0
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        run = MEASUREMENTS / re.search(r"`measurements/(training/[^`]+)`", cells[-1])[1]  # type: ignore[index]
        meta = json.loads((run / "meta.json").read_text())
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        iters = int(cells[col["iterations"]].replace(",", ""))
        assert meta["finished"] and meta["iterations"] == iters, (cells[0], meta["iterations"])
        assert max(r["iter"] for r in log) == iters, cells[0]
        minutes = f"{sweep.train_seconds(run) / 60:.1f} min"
        assert cells[col["GPU time (shared H200)"]] == minutes, (cells[0], minutes)
        n += 1
    assert n == 10
