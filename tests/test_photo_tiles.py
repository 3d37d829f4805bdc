"""Tiles from the free photo set (scripts/make_photo_tiles.py), on small synthetic and bundled
images: sizes, flat-tile skipping, determinism, JPEG settings, manifest checks and slicing."""

from __future__ import annotations

import io
import re
from pathlib import Path

import make_photo_tiles as mpt
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

T91 = Path(__file__).resolve().parent / "data" / "T91_sample"


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random texture (far from flat)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grid_is_centred_and_non_overlapping() -> None:
    cells = mpt.grid(100, 70, 32)  # 3 x 2 cells, margins 2 and 3
    assert cells == [(2, 3), (2, 35), (34, 3), (34, 35), (66, 3), (66, 35)]
    assert mpt.grid(31, 500, 32) == []


def test_downscale_half_crops_odd_sides_and_antialiases() -> None:
    out = mpt.downscale_half(Image.fromarray(textured(9, 11)))
    assert out.size == (5, 4)
    noise = textured(64, 64)
    small = np.asarray(mpt.downscale_half(Image.fromarray(noise)), np.float64)
    # a low-pass filter removes most of white noise; plain subsampling would keep all of it
    assert small.std() < 0.6 * noise.std()


def test_load_clean_applies_exif_orientation_and_converts_modes() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    Image.fromarray(textured(40, 100)).save(buf, format="JPEG", exif=exif.tobytes())
    assert mpt.load_clean(buf.getvalue()).size == (20, 50)
    for mode in ("CMYK", "L", "P", "I;16"):
        im = Image.new(mode, (30, 20))
        buf = io.BytesIO()
        im.save(buf, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
        out = mpt.load_clean(buf.getvalue())
        assert (out.mode, out.size) == ("RGB", (15, 10)), mode


def test_to_rgb_rescales_16_bit_grey() -> None:
    im = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(mpt.to_rgb(im)).min() == 255


def test_to_rgb_reads_a_dark_16_bit_grey_photo_at_its_white_level() -> None:
    """16-bit grey whose values all lie under 256 (a dark photo) was read as 8-bit values,
    about 257 times too bright."""
    dark = np.array([[0, 128, 200, 255]], np.uint16)
    for mode in ("I;16", "I;16B"):
        im = Image.fromarray(dark) if mode == "I;16" else Image.fromarray(dark).convert(mode)
        assert im.mode == mode
        assert np.asarray(mpt.to_rgb(im))[0, :, 0].tolist() == [0, 0, 1, 1], mode


def test_flat_cells_are_skipped() -> None:
    """Left half texture, right half a smooth gradient (sky-like) and a flat band."""
    a = np.zeros((64, 128, 3), np.uint8)
    a[:, :64] = textured(64, 64)
    a[:, 64:] = np.linspace(90, 170, 64, dtype=np.uint8)[None, :, None]
    p = mpt.TileParams(tile=32, max_per_photo=10)
    assert mpt.select_tiles(Image.fromarray(a), "k", p) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    std, grad = mpt.flatness(a[:, 64:])
    assert std >= p.min_std and grad < p.min_grad  # the gradient passes std, fails gradient


def test_tile_choice_is_capped_seeded_and_deterministic() -> None:
    img = Image.fromarray(textured(256, 256))  # 8 x 8 = 64 candidate cells
    p = mpt.TileParams(tile=32, max_per_photo=5)
    first = mpt.select_tiles(img, "abc", p)
    assert len(first) == 5 and first == sorted(first)
    assert mpt.select_tiles(img, "abc", p) == first
    assert mpt.select_tiles(img, "xyz", p) != first
    assert mpt.select_tiles(img, "abc", mpt.TileParams(tile=32, max_per_photo=5, seed=1)) != first


def test_encode_tile_is_quality_95_with_444_chroma() -> None:
    jpg = mpt.encode_tile(Image.fromarray(textured(48, 48)))
    with Image.open(io.BytesIO(jpg)) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (48, 48), "RGB")
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
        luma = im.quantization[0]
        assert max(luma) == 12  # the standard table scaled for quality 95 (90 gives 24)
        assert "icc_profile" not in im.info and "exif" not in im.info


def test_pack_slices_limit_shuffle_and_determinism() -> None:
    tiles = [(f"t{i:03d}.jpg", 100 + i) for i in range(60)]

    def row(name: str, idx: int) -> int:
        return 20 + idx  # a row may take more bytes in a later slice (slice_100 ...)

    slices = mpt.pack_slices(tiles, 1000, seed=0, row_bytes=row)
    names = [n for s in slices for n in s]
    assert sorted(names) == [n for n, _ in tiles]
    size = dict(tiles)
    assert all(sum(size[n] + row(n, i) for n in s) <= 1000 for i, s in enumerate(slices))
    assert mpt.pack_slices(tiles[::-1], 1000, seed=0, row_bytes=row) == slices
    assert names != sorted(names)  # shuffled
    assert mpt.pack_slices(tiles, 1000, seed=1, row_bytes=row) != slices
    with pytest.raises(ValueError, match="exceeds the slice limit"):
        mpt.pack_slices([("big.jpg", 2000)], 1000, seed=0)
    with pytest.raises(ValueError, match="exceeds the slice limit"):
        mpt.pack_slices([("t.jpg", 990)], 1000, seed=0, row_bytes=row)


def test_tsv_row_bytes_are_the_bytes_written() -> None:
    row = ["own+repo_0123456789ab_0000_0016.jpg", "own/repo", "ab" * 20, "Fotos/Überblick.png"]
    row += ["CC-BY-SA-4.0 © Jürgen Müller", mpt.slice_name(3)]
    assert row[-1] == "slice_03" and mpt.slice_name(100) == "slice_100"
    written = mpt._tsv_bytes([row, row])
    assert len(written) == mpt.tsv_row_bytes(mpt.TSV_HEADER) + 2 * mpt.tsv_row_bytes(row)
    assert mpt.tsv_row_bytes(row) == len("\t".join(row)) + 1 + 4  # Ü, ©, ü, ü: 2 bytes each


def write_photo_set(tmp_path: Path, files: list[Path]) -> tuple[Path, Path]:
    """A manifest and extraction folder for real small images (plus one Debian row and one
    missing photo), as extract.sh lays them out."""
    raw = tmp_path / "raw"
    lines = ["\t".join(mpt.MANIFEST_COLUMNS)]
    for f in files:
        data = f.read_bytes()
        blob = mpt.git_blob_sha(data)
        w, h = Image.open(f).size
        (raw / "own+repo").mkdir(parents=True, exist_ok=True)
        (raw / "own+repo" / f"{blob[:12]}.png").write_bytes(data)
        lines.append(f"git\town/repo\t{blob}\tpics/{f.name}\t{w}\t{h}\t{len(data)}\tCC-BY-4.0")
    (raw / "deb+pkg").mkdir()
    deb = files[0].read_bytes()
    (raw / "deb+pkg" / "d.png").write_bytes(deb)
    w, h = Image.open(files[0]).size
    lines.append(f"deb\tpkg\t/usr/share/d.png\t\t{w}\t{h}\t{len(deb)}\tDebian copyright")
    lines.append("git\town/repo\t" + "0" * 40 + "\tpics/gone.png\t10\t10\t5\tCC0")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, raw


def test_end_to_end_slices_attribution_and_skips(tmp_path: Path, capsys) -> None:
    files = sorted(T91.glob("*.png"))[:5]
    manifest, raw = write_photo_set(tmp_path, files)
    # one photo differs from its manifest row: reported and skipped, not used
    bad = raw / "own+repo" / f"{mpt.git_blob_sha(files[3].read_bytes())[:12]}.png"
    bad.write_bytes(bad.read_bytes() + b"x")
    # another has the right size but other content
    bad = raw / "own+repo" / f"{mpt.git_blob_sha(files[4].read_bytes())[:12]}.png"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    out = tmp_path / "tiles"
    argv = [str(manifest), str(raw), "--out", str(out), "--tile", "32", "--workers", "1"]
    assert (
        mpt.main(
            [*argv, "--max-per-photo", "3", "--slice-mib", "1", "--min-std", "0", "--min-grad", "0"]
        )
        == 0
    )
    rows = [r.split("\t") for r in (out / "tiles.tsv").read_text().splitlines()]
    assert tuple(rows[0]) == mpt.TSV_HEADER and len(rows) == 1 + 4 * 3
    assert {r[1] for r in rows[1:]} == {"own/repo", "pkg"}
    assert "/usr/share/d.png" in {r[3] for r in rows[1:]}
    skipped = (out / "skipped.tsv").read_text()
    assert "bytes, manifest says" in skipped and "missing file" in skipped
    assert "git blob hash differs" in skipped
    assert (out / "SLICE0_READY").read_text() == "12\n"
    tiles = sorted((out / "slice_00").glob("*.jpg"))
    assert len(tiles) == 12 and not (out / "_staging").exists()
    with Image.open(tiles[0]) as im:
        assert im.size == (32, 32)
    assert tiles[0].name.startswith(("own+repo_", "deb+pkg_"))
    assert "photos: 4 used of 7 (3 skipped)" in capsys.readouterr().out
    before = sorted(out.rglob("*"))
    assert mpt.main(argv) == 2
    assert "earlier run" in capsys.readouterr().err and sorted(out.rglob("*")) == before


def test_only_packs_the_listed_subset_and_refuses_a_tile_it_did_not_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--only LIST: the slices hold exactly the listed tiles (a training subset, e.g. the
    3,234-tile list); a listed tile these photos and options do not give is refused by name."""
    manifest, raw = write_photo_set(tmp_path, sorted(T91.glob("*.png"))[:3])
    opts = ["--tile", "32", "--workers", "1", "--max-per-photo", "3", "--slice-mib", "1"]
    opts += ["--min-std", "0", "--min-grad", "0"]
    full = tmp_path / "full"
    assert mpt.main([str(manifest), str(raw), "--out", str(full), *opts]) == 0
    lines = (full / "tiles.tsv").read_text().splitlines()
    subset = tmp_path / "subset.tsv"
    subset.write_text("\n".join([lines[0], *lines[1::2]]) + "\n")  # every other tile
    wanted = {line.split("\t")[0] for line in lines[1::2]}
    assert 0 < len(wanted) < len(lines) - 1
    out = tmp_path / "sub"
    assert mpt.main([str(manifest), str(raw), "--out", str(out), *opts, "--only", str(subset)]) == 0
    assert {p.name for p in out.glob("slice_*/*.jpg")} == wanted
    assert {line.split("\t")[0] for line in (out / "tiles.tsv").read_text().splitlines()[1:]} == (
        wanted
    )
    for name in wanted:  # the same bytes as in the full run
        assert (
            next(out.glob(f"slice_*/{name}")).read_bytes()
            == next(full.glob(f"slice_*/{name}")).read_bytes()
        )

    capsys.readouterr()
    subset.write_text(lines[0] + "\nown+repo_000000000000_0000_0000.jpg\tx\tx\tx\tx\tx\n")
    argv = [str(manifest), str(raw), "--out", str(tmp_path / "o2"), *opts, "--only", str(subset)]
    assert mpt.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: 1 tile.*own\+repo_000000000000_0000_0000\.jpg.*--tile", err)
    assert not (tmp_path / "o2").exists()
    subset.write_text("name\nx\n")
    argv = [str(manifest), str(raw), "--out", str(tmp_path / "o3"), *opts, "--only", str(subset)]
    assert mpt.main(argv) == 2
    assert "no 'tile' column" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_slices_stay_within_the_limit_with_long_non_ascii_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each tile's tiles.tsv row was counted in characters, not UTF-8 bytes, and with a
    2-character slice column: with many tiny tiles, non-ASCII paths and long licence notes a
    slice went over --slice-mib and the run stopped ("over the limit (a bug)")."""
    raw = tmp_path / "raw"
    (raw / "own+repo").mkdir(parents=True)
    lines = ["\t".join(mpt.MANIFEST_COLUMNS)]
    licence = "CC-BY-SA-4.0 © " + "Jürgen Müller, " * 20
    for i in range(10):
        buf = io.BytesIO()
        Image.fromarray(textured(256, 256, seed=i)).save(buf, format="PNG")
        data = buf.getvalue()
        blob = mpt.git_blob_sha(data)
        (raw / "own+repo" / f"{blob[:12]}.png").write_bytes(data)
        path = f"Fotos/Überblick_{'ä' * 300}_{i}.png"
        lines.append(f"git\town/repo\t{blob}\t{path}\t256\t256\t{len(data)}\t{licence}")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "tiles"
    argv = [str(manifest), str(raw), "--out", str(out), "--tile", "16", "--workers", "1"]
    argv += ["--max-per-photo", "64", "--slice-mib", "1", "--min-std", "0", "--min-grad", "0"]
    assert mpt.main(argv) == 0
    assert "tiles: 640 in " in capsys.readouterr().out
    folders = sorted(out.glob("slice_*"))
    assert len(folders) >= 2  # about 1.3 MiB in all: the first slice is full
    for folder in folders:
        rows = (folder / "tiles.tsv").read_text(encoding="utf-8").splitlines()[1:]
        assert rows and all("Überblick_ää" in r and r.endswith(f"\t{folder.name}") for r in rows)
        assert sum(f.stat().st_size for f in folder.iterdir()) <= mpt.MIB


def test_bad_manifest_is_refused(tmp_path: Path) -> None:
    m = tmp_path / "m.tsv"
    m.write_text("kind\tsource\n")
    with pytest.raises(mpt.TilesError, match="expected the header"):
        mpt.read_manifest(m)


def _one_error_line(capsys: pytest.CaptureFixture[str], message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_unreadable_manifest_or_list_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing manifest, a PNG given as the manifest and a missing --only list were
    tracebacks."""
    manifest, raw = write_photo_set(tmp_path, sorted(T91.glob("*.png"))[:1])
    png = next(T91.glob("*.png"))
    out = tmp_path / "out"
    opts = ["--out", str(out), "--tile", "32", "--workers", "1"]
    for argv, message in (
        ([str(tmp_path / "nosuch.tsv"), str(raw)], "cannot read the manifest"),
        ([str(png), str(raw)], f"{png} is not a manifest (not UTF-8 text)"),
        (
            [str(manifest), str(raw), "--only", str(tmp_path / "nosuch.tsv")],
            "cannot read the tile list (--only)",
        ),
    ):
        assert mpt.main([*argv, *opts]) == 2
        _one_error_line(capsys, message)
        assert not out.exists()


def test_a_run_that_cuts_no_tile_fails_and_leaves_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A RAW folder without the manifest's photos, or photos smaller than --tile, exited 0 with
    0 tiles (and an output folder)."""
    manifest, raw = write_photo_set(tmp_path, sorted(T91.glob("*.png"))[:2])
    out = tmp_path / "new" / "out"
    empty = tmp_path / "empty_raw"
    empty.mkdir()
    assert mpt.main([str(manifest), str(empty), "--out", str(out), "--workers", "1"]) == 2
    _one_error_line(capsys, f"none of the 4 photos of {manifest} is in {empty}")
    assert not (tmp_path / "new").exists()
    # T91 images are at most ~250 px: ~125 px after the 0.5x downscale, under the default 384
    assert mpt.main([str(manifest), str(raw), "--out", str(out), "--workers", "1"]) == 2
    _one_error_line(capsys, "every photo is smaller than --tile 384 px after the 0.5x downscale")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"  # an empty --out given is kept, and stays empty
    existing.mkdir()
    assert mpt.main([str(manifest), str(raw), "--out", str(existing), "--workers", "1"]) == 2
    assert "smaller than --tile" in capsys.readouterr().err
    assert existing.is_dir() and not any(existing.iterdir())
    small = ["--tile", "32", "--workers", "1"]
    assert mpt.main([str(manifest), str(raw), "--out", str(out), *small, "--min-std", "999"]) == 2
    _one_error_line(capsys, "usable photo(s) is near-flat; lower --min-std (999)")
    for photo in raw.rglob("*.png"):  # present, but none matches its manifest row
        photo.write_bytes(photo.read_bytes() + b"x")
    assert mpt.main([str(manifest), str(raw), "--out", str(out), *small]) == 2
    _one_error_line(capsys, f"no photo of {manifest} could be used: all 4 were skipped")
    assert not (tmp_path / "new").exists()
