"""hybridmoe make-pairs on bad input and existing output: one-line errors, nothing half-written,
nothing replaced without --overwrite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TEST_DATA

from hybridmoe import pairs

T91 = TEST_DATA / "T91_sample"
NAMES = ("t1", "t2", "t13")  # HR sides >= 146 px: every one gives a x2 pair at the defaults


def photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in NAMES:
        shutil.copy(T91 / f"{name}.png", folder / f"{name}.png")
    return folder


def run(src: Path, out: Path, *extra: str, scale: int = 2) -> int:
    return pairs.main(
        [str(src), "--out", str(out), "--scale", str(scale), "--workers", "1", *extra]
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert lines, "no error message"
    assert all(line.startswith("error: ") for line in lines), err
    assert "Traceback" not in err
    return lines


def test_a_file_that_is_not_an_image_is_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = photos(tmp_path / "my_photos")
    (src / "notimg.png").write_text("hello")
    out = tmp_path / "datasets" / "train_x2"
    assert run(src, out) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(src / "notimg.png") in line
    assert "not a readable image" in line and "remove it" in line
    assert not (tmp_path / "datasets").exists()


def test_a_truncated_image_leaves_existing_pairs_as_they_were(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header reads but the pixels do not: found while the pairs are made, in a temporary
    folder that is removed; the pairs already there (--overwrite) are kept unchanged."""
    src = photos(tmp_path / "my_photos")
    out = tmp_path / "out"
    assert run(src, out) == 0
    before = snapshot(out)
    assert len(before) == 2 * len(NAMES)
    (src / "zz.png").write_bytes((T91 / "t44.png").read_bytes()[:3000])
    capsys.readouterr()
    assert run(src, out, "--overwrite") == 2
    lines = error_lines(capsys.readouterr().err)
    assert str(src / "zz.png") in lines[0] and "not a readable image" in lines[0]
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["hr", "lr"]  # no temporary folder left


def test_no_pair_possible_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = photos(tmp_path / "my_photos")
    out = tmp_path / "dd"
    assert run(src, out, scale=16) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "no pair could be made" in line
    assert "1024 px" in line and "--min-lr-size 1" in line  # what the scale needs; the fix
    assert not out.exists()
    # the same with --min-lr-size 1 on images smaller than the scale itself
    assert run(src, out, "--min-lr-size", "1", scale=400) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "no pair could be made" in line and "smaller --scale" in line
    assert not out.exists()


def test_existing_pairs_are_replaced_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = photos(tmp_path / "my_photos")
    out = tmp_path / "out"
    assert run(src, out) == 0
    stale = out / "hr" / "old.png"
    stale.write_bytes(b"a pair of an earlier run")
    before = snapshot(out)
    capsys.readouterr()
    assert run(src, out) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "already holds pairs" in line and "--overwrite" in line
    assert snapshot(out) == before
    assert run(src, out, "--overwrite") == 0
    assert f"{len(NAMES)} pairs written" in capsys.readouterr().out
    # hr/ and lr/ are replaced as a whole: no pair of the earlier run stays mixed in
    assert sorted(snapshot(out)) == sorted(f"{d}/{n}.png" for d in ("hr", "lr") for n in NAMES)


def test_empty_pair_folders_are_not_existing_pairs(tmp_path: Path) -> None:
    src = photos(tmp_path / "my_photos")
    out = tmp_path / "out"
    (out / "hr").mkdir(parents=True)
    (out / "lr").mkdir()
    assert run(src, out) == 0
    assert len(list((out / "lr").glob("*.png"))) == len(NAMES)


def test_an_input_inside_the_output_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = photos(tmp_path / "my_photos")
    out = tmp_path / "out"
    assert run(src, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run(out / "hr", out, "--overwrite") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(out / "hr") in line and "choose another --out" in line
    assert snapshot(out) == before


def test_a_file_given_as_the_hr_folder_is_named_as_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = photos(tmp_path / "my_photos")
    assert run(src / "t1.png", tmp_path / "datasets" / "t") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "is a file, not a folder of images" in line and str(src / "t1.png") in line
    assert not (tmp_path / "datasets").exists()
    assert run(tmp_path / "nowhere", tmp_path / "datasets" / "t") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "not found" in line


def test_pairs_that_differ_from_check_against_are_not_kept(
    tmp_path: Path, set5_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "val"
    ref = tmp_path / "ref"  # the x4 LR images under the names of x2 references: every one differs
    ref.mkdir()
    for p in (set5_dir / "LR_bicubic" / "X4").glob("*x4.png"):
        shutil.copy(p, ref / p.name.replace("x4.png", "x2.png"))
    rc = run(set5_dir / "HR", out, "--min-lr-size", "1", "--check-against", str(ref))
    assert rc == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 6 and "LR differs from" in lines[0] and "no pairs written" in lines[-1]
    assert not out.exists()
    assert run(set5_dir / "HR", out, "--check-against", str(tmp_path / "none")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "--check-against" in line and "not a folder" in line


def test_the_command_reports_a_bad_image_without_a_traceback(tmp_path: Path) -> None:
    src = photos(tmp_path / "my_photos")
    (src / "notimg.png").write_text("hello")
    out = tmp_path / "datasets" / "train_x2"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridmoe",
            "make-pairs",
            str(src),
            "--out",
            str(out),
            "--scale",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "notimg.png" in proc.stderr
    assert not out.exists()


def test_an_unwritable_output_folder_is_refused_before_work(
    tmp_path: Path, unwritable_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = photos(tmp_path / "hr")
    assert run(src, unwritable_folder / "pairs") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{unwritable_folder} is not writable" in line and "choose another --out" in line


@pytest.mark.parametrize("where", ["same", "inside", "symlink"])
def test_an_output_that_is_or_lies_inside_an_input_folder_is_refused(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tools never write into their input: --out equal to an input folder, inside one, or
    reaching it through a symlink is refused before anything is written."""
    src = photos(tmp_path / "my_photos")
    before = snapshot(src)
    if where == "symlink":
        (tmp_path / "link").symlink_to(src)
    out = {
        "same": src,
        "inside": src / "pairs" / "x2",
        "symlink": tmp_path / "link" / "x2",
    }[where]
    assert run(src, out, "--overwrite") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"--out {out}" in line and f"input folder {src}" in line
    assert "outside it" in line
    assert snapshot(src) == before
    assert sorted(p.name for p in src.iterdir()) == sorted(f"{n}.png" for n in NAMES)


def test_check_against_the_folder_of_another_scale_is_one_error_naming_it(
    tmp_path: Path, set5_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scale 3 with the X2 folder: one error saying it looks like the x2 folder, not one
    "no reference LR" line per image; exit 2 and nothing written."""
    out = tmp_path / "val"
    x2 = set5_dir / "LR_bicubic" / "X2"
    rc = run(set5_dir / "HR", out, "--min-lr-size", "1", "--check-against", str(x2), scale=3)
    assert rc == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"--check-against {x2}" in line and "x3" in line
    assert "babyx2.png" in line and "looks like the x2 folder" in line
    assert not out.exists()
    # only some references missing: still one line per image without its reference
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(set5_dir / "LR_bicubic" / "X3" / "babyx3.png", part)
    rc = run(set5_dir / "HR", out, "--min-lr-size", "1", "--check-against", str(part), scale=3)
    assert rc == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 5 and all("no reference LR" in line for line in lines[:4])
    assert not out.exists()


def test_pairs_read_every_image_as_the_evaluator_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """16-bit greyscale PNGs came out almost white (Pillow caps them at 255), float TIFFs
    black and 16-bit RGB a level off in a quarter of the samples: the pairs' HR and LR now
    equal the evaluator's for the same file; transparent pixels are refused as there."""
    import numpy as np
    from PIL import Image

    from hybridmoe import evaluate

    src = tmp_path / "src"
    src.mkdir()
    with Image.open(T91 / "t1.png") as im:
        rgb8 = np.asarray(im.convert("RGB"))[:96, :120].astype(np.float64)
    ramp = np.linspace(0, 1, rgb8.shape[1])[None, :]
    grey = np.clip(rgb8.mean(axis=2) / 255 * 0.9 + 0.1 * ramp, 0, 1)  # not 8-bit exact
    Image.fromarray((grey * 65535).round().astype(np.uint16)).save(src / "g16.png")
    Image.fromarray(grey.astype(np.float32), mode="F").save(src / "f32.tif")
    rgb16 = (np.clip(rgb8 / 255 * 0.97 + 0.01, 0, 1) * 65535).round().astype(">u2")
    head = b"\x89PNG\r\n\x1a\n"  # a 16-bit RGB PNG, written by hand (Pillow writes 8-bit RGB)
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w = rgb16.shape[:2]
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(h))
    png = head + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    (src / "c16.png").write_bytes(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = tmp_path / "pairs"
    assert run(src, out, "--min-lr-size", "1") == 0
    for name, suffix in (("g16", "png"), ("f32", "tif"), ("c16", "png")):
        want = evaluate.read_image(src / f"{name}.{suffix}")
        want = np.repeat(want[:, :, None], 3, axis=2) if want.ndim == 2 else want
        with Image.open(out / "hr" / f"{name}.png") as im:
            hr = np.asarray(im)
        with Image.open(out / "lr" / f"{name}.png") as im:
            lr = np.asarray(im)
        assert np.array_equal(hr, want), name
        assert np.array_equal(lr, evaluate.make_lr(want, 2)), name
        assert 40 < hr.mean() < 215, name  # neither white nor black
    rgba = np.dstack([rgb8.astype(np.uint8), np.full(rgb8.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(src / "holes.png")
    capsys.readouterr()
    assert run(src, tmp_path / "p2", "--min-lr-size", "1") == 2
    line, summary = error_lines(capsys.readouterr().err)
    assert summary.startswith("error: no pairs written to")
    assert "holes.png has 1 transparent pixel(s)" in line and "move it out of the folder" in line


@pytest.mark.parametrize("name", ["anim.webp", "anim.png"])
def test_an_animated_image_is_refused_before_work_and_nothing_is_written(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Animated WebP and APNG inputs were reduced to their first frame without a word."""
    from PIL import Image

    src = photos(tmp_path / "my_photos")
    with Image.open(T91 / "t1.png") as im:
        frame = im.convert("RGB")
    frame.save(src / name, save_all=True, append_images=[frame.rotate(180)])
    out = tmp_path / "datasets" / "train_x2"
    assert run(src, out) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(src / name) in line
    assert "animated image (2 frames): only still images are supported" in line
    assert "remove it" in line
    assert not (tmp_path / "datasets").exists()


def test_files_that_are_not_images_are_named_as_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They were skipped without a word (upscale and evaluate name theirs); hidden files such
    as macOS's ._t1.png are passed over."""
    src = photos(tmp_path / "my_photos")
    (src / "notes.txt").write_text("credits")
    (src / "._t1.png").write_bytes(b"\x00\x05\x16\x07")  # an AppleDouble file, not an image
    assert run(src, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert f"warning: {src}: left out 1 files that are not images (" in err
    assert err.rstrip().endswith(": notes.txt")
    assert sorted(p.name for p in (tmp_path / "out" / "hr").iterdir()) == sorted(
        f"{n}.png" for n in NAMES
    )


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pairs in threads of this process (no worker processes to start)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(pairs, "ProcessPoolExecutor", ThreadPoolExecutor)


def test_pairs_are_mod_cropped_and_min_lr_size_keeps_the_exact_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], in_process: None
) -> None:
    """At x2 with --min-lr-size 10: an HR of 20 rows (LR exactly 10) is kept, one of 19 rows
    (mod-cropped to 18, LR 9) skipped; one of 21x27 is mod-cropped to its top-left 20x26, so
    its pair is that of the 20x26 image with the same pixels."""
    import numpy as np
    from PIL import Image

    with Image.open(T91 / "t1.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    src = tmp_path / "src"
    src.mkdir()
    for name, (h, w) in {"edge": (20, 26), "odd": (21, 27), "small": (19, 40)}.items():
        Image.fromarray(rgb[:h, :w]).save(src / f"{name}.png")
    out = tmp_path / "pairs"
    assert run(src, out, "--min-lr-size", "10") == 0
    captured = capsys.readouterr()
    assert "2 pairs written" in captured.out and "1 image(s) skipped" in captured.err

    def read(sub: str, name: str) -> np.ndarray:
        with Image.open(out / sub / f"{name}.png") as im:
            return np.asarray(im)

    assert sorted(p.name for p in (out / "hr").iterdir()) == ["edge.png", "odd.png"]
    assert sorted(p.name for p in (out / "lr").iterdir()) == ["edge.png", "odd.png"]
    assert np.array_equal(read("hr", "odd"), rgb[:20, :26])
    assert np.array_equal(read("hr", "edge"), rgb[:20, :26])
    assert read("lr", "edge").shape == (10, 13, 3)
    assert np.array_equal(read("lr", "odd"), read("lr", "edge"))


def test_check_against_finds_a_one_level_difference_and_prefers_the_scale_name(
    tmp_path: Path, set5_dir: Path, capsys: pytest.CaptureFixture[str], in_process: None
) -> None:
    """A reference of the right size that differs in one sample is a difference; where both
    ``<name>x<scale>.png`` and ``<name>.png`` exist, the first is the reference."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "hr"
    src.mkdir()
    for name in ("bird", "butterfly"):
        shutil.copy(set5_dir / "HR" / f"{name}.png", src)
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("bird", "butterfly"):
        shutil.copy(set5_dir / "LR_bicubic" / "X4" / f"{name}x4.png", ref)
    with Image.open(ref / "birdx4.png") as im:
        wrong = np.asarray(im).copy()
    wrong[5, 7, 1] ^= 1
    Image.fromarray(wrong).save(ref / "bird.png")  # not used: birdx4.png is there
    args = ("--min-lr-size", "1", "--check-against", str(ref))
    assert run(src, tmp_path / "ok", *args, scale=4) == 0
    Image.fromarray(wrong).save(ref / "birdx4.png")
    capsys.readouterr()
    assert run(src, tmp_path / "bad", *args, scale=4) == 1
    line, summary = error_lines(capsys.readouterr().err)
    assert "bird: LR differs from" in line and str(ref / "birdx4.png") in line
    assert summary.startswith("error: no pairs written")
    assert not (tmp_path / "bad").exists()
