"""hybridmoe install-trainner against a fake traiNNer-redux checkout (and, when
``TRAINNER_REDUX_DIR`` is set, against a temporary copy of a real one)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hybridmoe import install as it

ROOT = Path(__file__).resolve().parent.parent
ARCH = "traiNNer/archs/hybridmoe_arch.py"
LOSS = "traiNNer/losses/hybridmoe_loss.py"
TEMPLATE = "options/_templates/train/HybridMoE/2x_HybridMoE_Nano_fidelity.yml"


def make_checkout(path: Path) -> Path:
    """The smallest tree the installer accepts as a traiNNer-redux checkout."""
    for rel in it.CHECKOUT_MARKERS:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text("# traiNNer-redux stand-in\n")
    (path / "traiNNer" / "losses").mkdir(parents=True, exist_ok=True)
    return path


def make_source(path: Path, n_templates: int = 2) -> Path:
    """A small project tree: the two code files and a few templates of each kind."""
    for rel in it.CODE_FILES:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, path / rel)
    for kind in it.TEMPLATE_KINDS:
        src = sorted((ROOT / "options" / kind / "HybridMoE").glob("*.yml"))[:n_templates]
        dst = path / "options" / kind / "HybridMoE"
        dst.mkdir(parents=True, exist_ok=True)
        for f in src:
            shutil.copyfile(f, dst / f.name)
    return path


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path / "trainner")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path / "project")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridmoe", "install-trainner", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under root (symlinks as their target)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


# ---------------------------------------------------------------------------------------------
# Install / check / uninstall through the command line
# ---------------------------------------------------------------------------------------------


def test_install_check_uninstall_cycle(checkout: Path) -> None:
    before = snapshot(checkout)
    r = run("install", str(checkout))
    assert r.returncode == 0, r.stderr
    entries = it.plan()
    # code + train (fidelity, gan), test, onnx templates + the x1 restore templates (nano, s)
    # + the x4 real-world model's GAN training, test and ONNX templates (s)
    assert len(entries) == 2 + 16 * 4 + 2 + 3
    assert sum(e.dest.endswith("_restore.yml") for e in entries) == 2
    assert sum(e.dest.endswith("_realworld.yml") for e in entries) == 3
    for e in entries:
        dest = checkout / e.dest
        assert dest.is_file()
        assert not dest.is_symlink()
        assert dest.read_bytes() == e.source.read_bytes()
    assert (checkout / ARCH).is_file()
    assert (checkout / LOSS).is_file()
    assert (checkout / TEMPLATE).is_file()

    manifest = json.loads((checkout / it.MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {e.dest for e in entries}
    for e in entries:
        rec = manifest["files"][e.dest]
        assert rec["sha256"] == it.sha256_of(e.source)
        assert rec["mode"] == "copy"

    r = run("check", str(checkout))
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("matches") == len(entries)
    assert "all files match" in r.stdout

    r = run("uninstall", str(checkout))
    assert r.returncode == 0, r.stderr
    assert snapshot(checkout) == before  # every file and the manifest gone, nothing else touched
    assert not (checkout / "options" / "_templates" / "train" / "HybridMoE").exists()


def test_install_is_idempotent(checkout: Path, source: Path) -> None:
    first = it.install(checkout, source_root=source)
    assert all(line.startswith("installed") for line in first)
    snap = snapshot(checkout)
    second = it.install(checkout, source_root=source)
    assert all(line.startswith("unchanged") for line in second)
    assert len(second) == len(first)
    assert snapshot(checkout) == snap


def test_refuses_files_it_did_not_write(checkout: Path, source: Path) -> None:
    (checkout / ARCH).write_text("# somebody else's network\n")
    before = snapshot(checkout)
    with pytest.raises(
        it.InstallError, match=r"traiNNer/archs/hybridmoe_arch\.py: exists and was not written"
    ):
        it.install(checkout, source_root=source)
    assert snapshot(checkout) == before  # nothing written, no manifest
    r = run("install", str(checkout))
    assert r.returncode == 1
    assert "traiNNer/archs/hybridmoe_arch.py" in r.stderr
    assert "Nothing was changed" in r.stderr


def test_a_file_in_place_of_a_folder_is_refused_before_anything_is_written(
    checkout: Path, source: Path
) -> None:
    """A file named like a folder the templates go into: install wrote the code files, then
    died with a NotADirectoryError traceback half-way."""
    (checkout / "options").mkdir()
    (checkout / "options" / "_templates").write_text("not a folder\n")
    before = snapshot(checkout)
    with pytest.raises(it.InstallError, match=r"options/_templates is a file, not a folder"):
        it.install(checkout, source_root=source)
    assert snapshot(checkout) == before  # nothing written, no manifest
    r = run("install", str(checkout))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is a file, not a folder" in r.stderr and "Nothing was changed" in r.stderr


def test_a_link_made_by_hand_is_not_called_the_source_file(checkout: Path, source: Path) -> None:
    """A symbolic link to the project's own file, made by hand, was refused as 'the source
    file itself; install elsewhere' (exit 2), which names neither the link nor the fix."""
    (checkout / ARCH).symlink_to(source / ARCH)
    before = snapshot(checkout)
    with pytest.raises(it.InstallError, match=r"hybridmoe_arch\.py: is a symbolic link") as info:
        it.install(checkout, source_root=source)
    assert info.value.code == 1 and "Move them away (out of the checkout" in str(info.value)
    assert "registers the same names twice" in str(info.value)  # not "rename them"
    assert snapshot(checkout) == before


def test_check_reports_a_folder_or_fifo_in_place_of_a_file(checkout: Path, source: Path) -> None:
    """check hashed whatever was there: a folder gave an IsADirectoryError traceback, and a
    FIFO blocked forever."""
    (checkout / ARCH).mkdir()
    os.mkfifo(checkout / LOSS)
    lines, ok = it.check(checkout, source_root=source)
    assert not ok
    assert f"differs  {ARCH}  (a folder)  (not installed by us)" in lines
    assert f"differs  {LOSS}  (not a regular file)  (not installed by us)" in lines


def test_an_os_error_is_one_line_not_a_traceback(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Permission errors (not reproducible as root) and the like end in one line, exit 1."""

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(checkout / ARCH))

    monkeypatch.setattr(it, "write_bytes_atomic", denied)
    assert it.main(["install", str(checkout)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: install stopped: [Errno 13] Permission denied")
    assert "run the command again" in err and err.count("\n") == 1


def test_refuses_to_overwrite_an_edited_installed_file(checkout: Path, source: Path) -> None:
    it.install(checkout, source_root=source)
    tpl = next(e.dest for e in it.plan(source) if e.dest.startswith("options/_templates/test"))
    (checkout / tpl).write_text("edited by the user\n")
    (source / LOSS).write_text((source / LOSS).read_text() + "\n# newer version\n")
    before = snapshot(checkout)
    with pytest.raises(it.InstallError, match="edited since"):
        it.install(checkout, source_root=source)
    assert snapshot(checkout) == before

    report, warnings = it.uninstall(checkout)
    assert any(tpl in w and "edited" in w for w in warnings)
    assert (checkout / tpl).read_text() == "edited by the user\n"  # kept
    assert not (checkout / ARCH).exists()
    assert any(line.startswith("removed") for line in report)
    # the kept file stays recorded, so that --force can still remove it later
    manifest = json.loads((checkout / it.MANIFEST_NAME).read_text())
    assert list(manifest["files"]) == [tpl]
    report, warnings = it.uninstall(checkout, force=True)
    assert report == [f"removed    {tpl} (edited; --force)"] and not warnings
    assert not (checkout / tpl).exists()
    assert not (checkout / it.MANIFEST_NAME).exists()


def test_install_force_replaces_only_its_own_edited_files(checkout: Path, source: Path) -> None:
    it.install(checkout, source_root=source)
    (checkout / LOSS).write_text("edited by the user\n")
    with pytest.raises(it.InstallError, match=r"edited since \(install --force replaces it"):
        it.install(checkout, source_root=source)
    report = it.install(checkout, source_root=source, force=True)
    assert f"updated    {LOSS}" in report
    assert (checkout / LOSS).read_bytes() == (source / LOSS).read_bytes()
    # a file the installer did not write is refused even with --force
    it.uninstall(checkout)
    (checkout / ARCH).write_text("# somebody else's network\n")
    with pytest.raises(it.InstallError, match="was not written by this installer"):
        it.install(checkout, source_root=source, force=True)
    assert (checkout / ARCH).read_text() == "# somebody else's network\n"


def test_uninstall_warns_on_the_command_line(checkout: Path) -> None:
    assert run("install", str(checkout)).returncode == 0
    (checkout / LOSS).write_text("# edited\n")
    r = run("uninstall", str(checkout))
    assert r.returncode == 0
    assert f"WARNING: {LOSS} was edited after installation; kept" in r.stderr
    assert "uninstall --force" in r.stderr
    assert (checkout / LOSS).read_text() == "# edited\n"
    assert not (checkout / ARCH).exists()


def test_updates_unmodified_files_and_removes_stale_ones(checkout: Path, source: Path) -> None:
    it.install(checkout, source_root=source)
    (source / ARCH).write_text((source / ARCH).read_text() + "\n# newer version\n")
    dropped = next((source / "options" / "onnx" / "HybridMoE").glob("*.yml"))
    dropped.unlink()
    report = it.install(checkout, source_root=source)
    assert f"updated    {ARCH}" in report
    assert any(line.startswith("removed") and dropped.name in line for line in report)
    assert not (checkout / "options/_templates/onnx/HybridMoE" / dropped.name).exists()
    assert (checkout / ARCH).read_bytes() == (source / ARCH).read_bytes()
    lines, ok = it.check(checkout, source_root=source)
    assert ok, lines


def test_link_mode(checkout: Path, source: Path) -> None:
    it.install(checkout, link=True, source_root=source)
    manifest = json.loads((checkout / it.MANIFEST_NAME).read_text())
    for e in it.plan(source):
        dest = checkout / e.dest
        if e.dest in (ARCH, LOSS):
            assert dest.is_symlink()
            assert dest.resolve() == e.source.resolve()
            assert manifest["files"][e.dest]["mode"] == "link"
        else:  # templates are copies
            assert not dest.is_symlink() and dest.read_bytes() == e.source.read_bytes()
            assert manifest["files"][e.dest]["mode"] == "copy"
    # an edit of the project is seen through the link: still ours, still matching
    (source / LOSS).write_text((source / LOSS).read_text() + "\n# edit\n")
    lines, ok = it.check(checkout, source_root=source)
    assert ok, lines
    assert all(line.startswith("unchanged") for line in it.install(checkout, True, source))
    # switching to copies replaces the links
    report = it.install(checkout, link=False, source_root=source)
    assert [line for line in report if line.startswith("updated")] == [
        f"updated    {ARCH}",
        f"updated    {LOSS}",
    ]
    assert not (checkout / ARCH).is_symlink()
    it.install(checkout, link=True, source_root=source)
    it.uninstall(checkout)
    assert not (checkout / ARCH).exists()
    assert (source / ARCH).is_file()  # the project's files are never touched


def test_check_reports_missing_and_differing_files(checkout: Path, source: Path) -> None:
    lines, ok = it.check(checkout, source_root=source)
    assert not ok
    assert all(line.startswith("missing") for line in lines)
    it.install(checkout, source_root=source)
    first_tpl = next(e.dest for e in it.plan(source) if e.dest.endswith(".yml"))
    (checkout / first_tpl).write_text("different\n")
    (checkout / LOSS).unlink()
    lines, ok = it.check(checkout, source_root=source)
    assert not ok
    status = {line.split()[1]: line.split()[0] for line in lines}
    assert status[first_tpl] == "differs"
    assert status[LOSS] == "missing"
    assert status[ARCH] == "matches"
    r = run("check", str(checkout))  # against the real project: everything else is missing
    assert r.returncode == 1
    assert "missing" in r.stdout


def test_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    for cmd in ("install", "uninstall", "check"):
        r = run(cmd, str(tmp_path))
        assert r.returncode == 2
        assert "is not a traiNNer-redux checkout" in r.stderr
        assert "traiNNer/archs/__init__.py" in r.stderr
    r = run("install", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "no such directory" in r.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "train.py"]
    r = run("check", str(tmp_path), "--link")
    assert r.returncode == 2


def test_a_file_given_as_the_checkout_is_named_as_a_file(tmp_path: Path) -> None:
    """A file where the checkout folder is expected is called a file, not "no such directory";
    nothing is written beside it."""
    image = tmp_path / "some_file.png"
    image.write_bytes(b"not a checkout")
    for cmd in ("install", "check"):
        r = run(cmd, str(image))
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert f"{image} is a file, not a traiNNer-redux checkout folder" in r.stderr
        assert "no such directory" not in r.stderr
    assert list(tmp_path.iterdir()) == [image]
    assert image.read_bytes() == b"not a checkout"


def test_a_broken_manifest_is_reported(checkout: Path) -> None:
    (checkout / it.MANIFEST_NAME).write_text("{not json")
    r = run("install", str(checkout))
    assert r.returncode == 1
    assert "unreadable install manifest" in r.stderr


# ---------------------------------------------------------------------------------------------
# Only files inside the checkout, written by the installer, unmodified; atomic writes
# ---------------------------------------------------------------------------------------------


def _record(path: Path) -> dict[str, str]:
    """A manifest record that matches ``path`` (as a tampered manifest would forge it)."""
    return {"sha256": it.sha256_of(path), "mode": "copy", "source": str(path)}


def _link_folder_outside(checkout: Path, rel: str, outside: Path) -> None:
    """Move the installed folder ``rel`` to ``outside`` and leave a symlink to it in its place."""
    shutil.move(checkout / rel, outside)
    (checkout / rel).symlink_to(outside, target_is_directory=True)


def test_a_tampered_manifest_touches_nothing(tmp_path: Path, checkout: Path, source: Path) -> None:
    it.install(checkout, source_root=source)
    (checkout / LOSS).write_text("edited by the user\n")
    _link_folder_outside(checkout, "options/_templates/onnx/HybridMoE", tmp_path / "linked")
    (tmp_path / "outside.txt").write_text("not ours\n")
    (tmp_path / "abs.txt").write_text("not ours either\n")
    path = checkout / it.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"]["../outside.txt"] = _record(tmp_path / "outside.txt")
    manifest["files"][str(tmp_path / "abs.txt")] = _record(tmp_path / "abs.txt")
    manifest["files"]["/tmp/abs.txt"] = _record(tmp_path / "abs.txt")
    path.write_text(json.dumps(manifest))
    before = snapshot(tmp_path)
    for call in (
        lambda: it.uninstall(checkout),
        lambda: it.install(checkout, source_root=source),
        lambda: it.uninstall(checkout, force=True),
        lambda: it.install(checkout, source_root=source, force=True),
    ):
        with pytest.raises(it.InstallError, match="tampered install manifest") as err:
            call()
        for rel in ("'../outside.txt'", repr(str(tmp_path / "abs.txt")), "'/tmp/abs.txt'"):
            assert rel in str(err.value)
        assert "Nothing was changed" in str(err.value)
        assert snapshot(tmp_path) == before  # outside files, the edited file: all still there
    r = run("uninstall", str(checkout))
    assert r.returncode == 1 and "tampered install manifest" in r.stderr
    assert snapshot(tmp_path) == before


def test_a_folder_linked_outside_is_never_emptied(tmp_path: Path, checkout: Path) -> None:
    assert run("install", str(checkout)).returncode == 0
    _link_folder_outside(checkout, "options/_templates/test/HybridMoE", tmp_path / "linked")
    before = snapshot(tmp_path)
    for args in (("uninstall",), ("uninstall", "--force"), ("install",)):
        r = run(*args, str(checkout))
        assert r.returncode == 1, r.stdout
        assert "options/_templates/test/HybridMoE/" in r.stderr
        assert "leads outside the checkout" in r.stderr and "Nothing was changed" in r.stderr
        assert snapshot(tmp_path) == before
    r = run("check", str(checkout))
    assert r.returncode == 1
    assert "outside  options/_templates/test/HybridMoE/" in r.stdout


def test_install_never_writes_through_a_folder_linked_outside(
    tmp_path: Path, checkout: Path, source: Path
) -> None:
    shared = tmp_path / "shared_templates"
    shared.mkdir()
    (checkout / "options").mkdir()
    (checkout / "options" / "_templates").symlink_to(shared, target_is_directory=True)
    before = snapshot(tmp_path)
    with pytest.raises(it.InstallError, match="leads outside the checkout") as err:
        it.install(checkout, source_root=source)
    assert str(shared) in str(err.value)
    assert snapshot(tmp_path) == before  # no template in shared/, no code file, no manifest
    # a symlinked folder that stays inside the checkout is fine
    (checkout / "options" / "_templates").unlink()
    (checkout / "options" / "real_templates").mkdir()
    (checkout / "options" / "_templates").symlink_to("real_templates", target_is_directory=True)
    it.install(checkout, source_root=source)
    assert (checkout / "options" / "real_templates" / "train" / "HybridMoE").is_dir()
    it.uninstall(checkout)
    assert list((checkout / "options" / "real_templates").rglob("*.yml")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(version=7), "version 7 is not 1"),
        (lambda m: m.update(files=["traiNNer/archs/hybridmoe_arch.py"]), "not an install manif"),
        (lambda m: m["files"][ARCH].update(sha256="abc"), "no valid sha256"),
        (lambda m: m["files"][ARCH].update(mode="move"), "mode 'move' is neither"),
        (lambda m: m["files"][ARCH].update(source="rel/path"), "not an absolute path"),
        (
            lambda m: m["files"][ARCH].update(mode="link", source="/etc/passwd"),
            "not the project's traiNNer/archs/hybridmoe_arch.py",
        ),
        (lambda m: m["files"].update({"train.py": m["files"][ARCH]}), "'train.py': not a file"),
        (
            lambda m: m["files"].update({"traiNNer/archs/./hybridmoe_arch.py": m["files"][ARCH]}),
            "not a file this installer writes",
        ),
    ],
)
def test_a_damaged_manifest_is_refused(
    checkout: Path, source: Path, change: Any, message: str
) -> None:
    it.install(checkout, source_root=source)
    path = checkout / it.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    before = snapshot(checkout)
    for call in (it.uninstall, lambda c: it.install(c, source_root=source), it.check):
        with pytest.raises(it.InstallError, match=re.escape(message)):
            call(checkout)
        assert snapshot(checkout) == before


def test_the_manifest_is_written_through_a_fresh_temporary_file(
    tmp_path: Path, checkout: Path, source: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = checkout / (it.MANIFEST_NAME + ".tmp")
    planted.symlink_to(victim)
    it.install(checkout, source_root=source)
    assert victim.read_text() == "precious\n"
    assert not (checkout / it.MANIFEST_NAME).is_symlink()
    assert json.loads((checkout / it.MANIFEST_NAME).read_text())["files"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_an_interrupted_update_keeps_the_previous_file(
    checkout: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk half-way through writing the new network file: the installed one stays
    whole, no temporary file is left behind and the manifest still describes the checkout."""
    it.install(checkout, source_root=source)
    previous = (checkout / ARCH).read_bytes()
    (source / ARCH).write_text((source / ARCH).read_text() + "\n# newer version\n")
    real_write, real_sendfile = os.write, os.sendfile

    def is_arch(fd: int) -> bool:
        return "hybridmoe_arch.py" in os.readlink(f"/proc/self/fd/{fd}")

    def full_disk() -> OSError:
        return OSError(errno.ENOSPC, "No space left on device")

    def write(fd: int, data: Any) -> int:
        if is_arch(fd):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise full_disk()
        return real_write(fd, data)

    def sendfile(out_fd: int, in_fd: int, offset: Any, count: int) -> int:
        if is_arch(out_fd):
            real_sendfile(out_fd, in_fd, offset, min(count, os.fstat(in_fd).st_size) // 2)
            raise full_disk()
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "sendfile", sendfile)
    with pytest.raises(OSError, match="No space left"):
        it.install(checkout, source_root=source)
    monkeypatch.undo()
    assert (checkout / ARCH).read_bytes() == previous
    assert [p.name for p in checkout.rglob("*.tmp")] == []
    lines, _ = it.check(checkout, source_root=source)
    assert f"differs  {ARCH}" in lines
    assert f"updated    {ARCH}" in it.install(checkout, source_root=source)
    assert (checkout / ARCH).read_bytes() == (source / ARCH).read_bytes()


# ---------------------------------------------------------------------------------------------
# A real traiNNer-redux checkout (copied to a temporary folder)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("TRAINNER_REDUX_DIR"),
    reason="TRAINNER_REDUX_DIR is not set: no traiNNer-redux checkout to install into",
)
def test_real_checkout_copy(tmp_path: Path) -> None:
    src = Path(os.environ["TRAINNER_REDUX_DIR"]).resolve()
    dst = tmp_path / "trainner"
    shutil.copytree(
        src,
        dst,
        ignore=shutil.ignore_patterns(".git", "datasets", "experiments", "docs", "__pycache__"),
    )
    before = snapshot(dst)
    r = run("install", str(dst))
    assert r.returncode == 0, r.stderr
    r = run("check", str(dst))
    assert r.returncode == 0, r.stdout
    # traiNNer-redux itself imports the installed files and registers our names
    probe = (
        "import sys; sys.path.insert(0, '.');"
        "from traiNNer.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY;"
        "import traiNNer.archs, traiNNer.losses;"
        "from traiNNer.losses import build_loss;"
        "assert 'hybridmoe_nano' in ARCH_REGISTRY and 'hybridmoe_l' in ARCH_REGISTRY;"
        "l = build_loss({'type': 'hybridmoefreqloss', 'loss_weight': 0.05});"
        "b = build_loss({'type': 'HybridMoEBalanceLoss', 'loss_weight': 0.01});"
        "import traiNNer.archs.hybridmoe_arch as a, traiNNer.losses.hybridmoe_loss as m;"
        "assert m.arch_module() is a;"
        "print('OK', type(l).__name__, type(b).__name__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=dst,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK HybridMoEFreqLoss HybridMoEBalanceLoss" in proc.stdout
    r = run("uninstall", str(dst))
    assert r.returncode == 0, r.stderr
    after = {k: v for k, v in snapshot(dst).items() if "__pycache__" not in k}
    assert after == {k: v for k, v in before.items() if "__pycache__" not in k}


def test_check_fails_on_stale_unrecorded_and_dangling_files(checkout: Path, source: Path) -> None:
    """check said "all files match" with an outdated file still installed, and with no
    manifest at all (uninstall then removed nothing); a dangling link it did not make was a
    plain "missing", which install then refused."""
    it.install(checkout, source_root=source)
    dropped = next((source / "options" / "onnx" / "HybridMoE").glob("*.yml"))
    dropped.unlink()
    lines, ok = it.check(checkout, source_root=source)
    assert not ok and any(line.startswith("stale") and dropped.name in line for line in lines)
    it.install(checkout, source_root=source)  # removes it
    assert it.check(checkout, source_root=source)[1]
    (checkout / it.MANIFEST_NAME).unlink()
    lines, ok = it.check(checkout, source_root=source)
    assert not ok and any(line.startswith("unrecorded: the files match") for line in lines)
    it.install(checkout, source_root=source)  # identical files are recorded, not refused
    assert it.check(checkout, source_root=source)[1]
    (checkout / LOSS).unlink()
    (checkout / LOSS).symlink_to(checkout / "nowhere.py")
    lines, _ = it.check(checkout, source_root=source)
    assert f"missing  {LOSS}  (a symbolic link to nothing: {checkout / 'nowhere.py'})" in lines


def test_a_run_stopped_before_recording_a_file_can_be_run_again(
    checkout: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was written, the manifest not saved (a full disk, an interrupt): the rerun
    refused the file as "not written by this installer", with --force too."""
    real, calls = it.save_manifest, []

    def full_disk(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(it, "save_manifest", full_disk)
    with pytest.raises(OSError, match="No space left"):
        it.install(checkout, source_root=source)
    monkeypatch.setattr(it, "save_manifest", real)
    it.install(checkout, source_root=source)
    assert it.check(checkout, source_root=source)[1]
    # the same with --link: the link was made, the manifest not saved
    monkeypatch.setattr(it, "save_manifest", full_disk)
    calls.clear()
    (checkout / it.MANIFEST_NAME).unlink()
    with pytest.raises(OSError, match="No space left"):
        it.install(checkout, link=True, source_root=source)
    monkeypatch.setattr(it, "save_manifest", real)
    it.install(checkout, link=True, source_root=source)
    assert it.check(checkout, source_root=source)[1]
    assert (checkout / ARCH).is_symlink()
    # an unrecorded file that differs from the source is still refused
    (checkout / it.MANIFEST_NAME).unlink()
    (checkout / ARCH).unlink()  # the link: writing through it would edit the source
    (checkout / ARCH).write_text("# mine\n")
    with pytest.raises(it.InstallError, match="exists and was not written by this installer"):
        it.install(checkout, source_root=source)


def test_a_template_name_the_manifest_cannot_hold_is_refused_before_writing(
    checkout: Path, source: Path
) -> None:
    """It was installed and recorded, and the manifest was then refused as tampered by
    check, install and uninstall alike."""
    folder = source / "options" / "train" / "HybridMoE"
    (folder / "4x HybridMoE S copy.yml").write_text("name: x\n")
    with pytest.raises(it.InstallError, match="has a name the installer does not write"):
        it.install(checkout, source_root=source)
    assert not (checkout / it.MANIFEST_NAME).exists() and not (checkout / ARCH).exists()


def test_an_update_stopped_before_recording_it_is_not_an_edit(
    checkout: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new network file was in place, the manifest still recorded the old one: the rerun
    refused it as "edited since" (only --force went on) and uninstall kept it as edited."""
    before = snapshot(checkout)
    it.install(checkout, source_root=source)
    (source / ARCH).write_text((source / ARCH).read_text() + "\n# newer version\n")
    real = it.save_manifest

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(it, "save_manifest", stopped)
    with pytest.raises(KeyboardInterrupt):
        it.install(checkout, source_root=source)
    monkeypatch.setattr(it, "save_manifest", real)
    assert (checkout / ARCH).read_bytes() == (source / ARCH).read_bytes()  # not recorded yet
    # uninstall right away removes it like every other file of its own
    report, warnings = it.uninstall(checkout, source_root=source)
    assert warnings == [] and f"removed    {ARCH}" in report
    assert snapshot(checkout) == before
    # the same stop, then install again: it goes on without --force
    it.install(checkout, source_root=source)
    (source / ARCH).write_text((source / ARCH).read_text() + "# newer still\n")
    monkeypatch.setattr(it, "save_manifest", stopped)
    with pytest.raises(KeyboardInterrupt):
        it.install(checkout, source_root=source)
    monkeypatch.setattr(it, "save_manifest", real)
    assert f"unchanged  {ARCH}" in it.install(checkout, source_root=source)
    assert it.check(checkout, source_root=source)[1]
    # and from a copy to --link, stopped after making the link
    monkeypatch.setattr(it, "save_manifest", stopped)
    with pytest.raises(KeyboardInterrupt):
        it.install(checkout, link=True, source_root=source)
    monkeypatch.setattr(it, "save_manifest", real)
    assert (checkout / ARCH).is_symlink()
    it.install(checkout, link=True, source_root=source)  # records the links
    assert it.check(checkout, source_root=source)[1]
    assert json.loads((checkout / it.MANIFEST_NAME).read_text())["files"][ARCH]["mode"] == "link"
    # an edit is still an edit
    (checkout / ARCH).unlink()
    (checkout / ARCH).write_text("# mine\n")
    with pytest.raises(it.InstallError, match="edited since"):
        it.install(checkout, source_root=source)


def test_link_mode_copies_the_templates(checkout: Path, source: Path) -> None:
    """A linked template resolved to the project's file: traiNNer-redux's refusal to train from
    options/_templates (it follows links) let it through, and an edit there, seen through the
    link, changed the project's template while check still said it matched."""
    entry = next(e for e in it.plan(source) if e.dest.startswith("options/_templates/train/"))
    template = checkout / entry.dest
    it.install(checkout, link=True, source_root=source)
    assert (checkout / ARCH).is_symlink() and (checkout / LOSS).is_symlink()
    assert not template.is_symlink()
    assert template.resolve().is_relative_to(checkout.resolve())
    original = entry.source.read_bytes()
    template.write_text("name: edited in the checkout\n")
    assert entry.source.read_bytes() == original
    assert f"differs  {entry.dest}" in it.check(checkout, source_root=source)[0]
    template.unlink()
    # an older --link install linked the templates: install --link replaces them with copies
    template.symlink_to(entry.source.resolve())
    manifest = json.loads((checkout / it.MANIFEST_NAME).read_text())
    manifest["files"][entry.dest].update(mode="link", source=str(entry.source.resolve()))
    (checkout / it.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert f"updated    {entry.dest}" in it.install(checkout, link=True, source_root=source)
    assert not template.is_symlink() and template.read_bytes() == original
    assert it.check(checkout, source_root=source)[1]


def test_an_edited_file_no_longer_shipped_is_kept_unless_forced(
    checkout: Path, source: Path
) -> None:
    it.install(checkout, source_root=source)
    dropped = next((source / "options" / "onnx" / "HybridMoE").glob("*.yml"))
    rel = f"options/_templates/onnx/HybridMoE/{dropped.name}"
    (checkout / rel).write_text("edited by the user\n")
    dropped.unlink()
    report = it.install(checkout, source_root=source)
    assert any(line.startswith("WARNING") and rel in line and "kept" in line for line in report)
    assert (checkout / rel).read_text() == "edited by the user\n"
    assert rel in json.loads((checkout / it.MANIFEST_NAME).read_text())["files"]
    report = it.install(checkout, source_root=source, force=True)
    assert f"removed    {rel} (no longer part of the project)" in report
    assert not (checkout / rel).exists()
    assert rel not in json.loads((checkout / it.MANIFEST_NAME).read_text())["files"]


def test_uninstall_removes_only_the_folders_named_after_the_project(
    checkout: Path, source: Path
) -> None:
    """Empty folders that were there before install (and traiNNer/losses, emptied by removing
    the loss file) stay; only the HybridMoE template folders go. A recorded file that is
    already gone is reported, not an error."""
    kept = [checkout / "options" / "_templates" / kind for kind in it.TEMPLATE_KINDS]
    for folder in kept:
        folder.mkdir(parents=True)
    it.install(checkout, source_root=source)
    gone = next(e.dest for e in it.plan(source) if e.dest.startswith("options/_templates/test"))
    (checkout / gone).unlink()
    report, warnings = it.uninstall(checkout)
    assert f"missing    {gone} (already removed)" in report and not warnings
    assert all(folder.is_dir() and not (folder / "HybridMoE").exists() for folder in kept)
    assert (checkout / "traiNNer" / "losses").is_dir()
    assert not (checkout / it.MANIFEST_NAME).exists()


def test_the_manifest_records_the_bytes_an_update_wrote(checkout: Path, source: Path) -> None:
    it.install(checkout, source_root=source)
    (source / ARCH).write_text((source / ARCH).read_text() + "\n# newer version\n")
    assert f"updated    {ARCH}" in it.install(checkout, source_root=source)
    manifest = json.loads((checkout / it.MANIFEST_NAME).read_text())
    assert manifest["files"][ARCH]["sha256"] == it.sha256_of(checkout / ARCH)
    # so the updated file is not taken for an edit: unchanged on the next run, then removed
    assert all(line.startswith("unchanged") for line in it.install(checkout, source_root=source))
    report, warnings = it.uninstall(checkout)
    assert f"removed    {ARCH}" in report and not warnings
    assert not (checkout / ARCH).exists()


def test_a_copy_replaced_by_a_link_is_an_edit(checkout: Path, source: Path) -> None:
    """A copied file the user replaced by a symbolic link (even to the project's own file) is
    not what a copy install wrote: install refuses to replace it."""
    it.install(checkout, source_root=source)
    (checkout / LOSS).unlink()
    (checkout / LOSS).symlink_to(source / LOSS)
    with pytest.raises(it.InstallError, match=f"{LOSS}: was installed by this installer but"):
        it.install(checkout, source_root=source)
    assert (checkout / LOSS).is_symlink()
