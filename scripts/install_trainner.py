"""Install HybridMoE-FreqNet into a traiNNer-redux checkout (and remove it again).

Usage::

    python scripts/install_trainner.py install   TRAINNER_REDUX_DIR [--link]
    python scripts/install_trainner.py uninstall TRAINNER_REDUX_DIR
    python scripts/install_trainner.py check     TRAINNER_REDUX_DIR

``install`` places these files (copies, or symlinks to this checkout with ``--link``):

==========================================  =====================================================
from this project                           into the traiNNer-redux checkout
==========================================  =====================================================
``traiNNer/archs/hybridmoe_arch.py``        ``traiNNer/archs/hybridmoe_arch.py`` (the network)
``traiNNer/losses/hybridmoe_loss.py``       ``traiNNer/losses/hybridmoe_loss.py`` (the losses)
``options/{train,test,onnx}/HybridMoE/*``   ``options/_templates/{train,test,onnx}/HybridMoE/*``
==========================================  =====================================================

traiNNer-redux refuses to train from ``options/_templates``: copy a template to
``options/train/HybridMoE/`` first and edit the dataset paths there.

Everything written is recorded, with SHA-256 content hashes, in the manifest
``.hybridmoe-freqnet-install.json`` at the root of the checkout. The installer never
overwrites a file it did not write, nor one of its own files that was edited since (it refuses
with a message naming the file and changes nothing). Re-running ``install`` is idempotent and
updates unmodified files to the current version. ``uninstall`` removes only its own
unmodified files (edited ones are kept, with a warning). ``check`` reports every file as
``missing``, ``matches`` or ``differs`` and exits 0 only when all match.

Exit status: 0 success; 1 refused / files differ; 2 usage error or not a traiNNer-redux checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_NAME = ".hybridmoe-freqnet-install.json"
MANIFEST_VERSION = 1
CHECKOUT_MARKERS = ("train.py", "traiNNer/archs/__init__.py", "traiNNer/utils/registry.py")
CODE_FILES = ("traiNNer/archs/hybridmoe_arch.py", "traiNNer/losses/hybridmoe_loss.py")
TEMPLATE_KINDS = ("train", "test", "onnx")
TEMPLATE_FOLDER = "HybridMoE"


class InstallError(Exception):
    """A refusal with a message for the user (exit status ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Entry:
    """One file to install: ``source`` (absolute) -> ``dest`` (relative to the checkout)."""

    source: Path
    dest: str


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (a symlink is followed)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def check_checkout(path: Path) -> Path:
    """Return the resolved checkout, or raise :class:`InstallError` (code 2) if ``path`` is
    not a traiNNer-redux checkout."""
    if not path.is_dir():
        raise InstallError(f"{path}: no such directory (expected a traiNNer-redux checkout)", 2)
    missing = [m for m in CHECKOUT_MARKERS if not (path / m).is_file()]
    if missing:
        raise InstallError(
            f"{path} is not a traiNNer-redux checkout: missing {', '.join(missing)} "
            f"(a checkout has {', '.join(CHECKOUT_MARKERS)}). Give the root folder of a "
            "clone of https://github.com/the-database/traiNNer-redux.",
            2,
        )
    return path.resolve()


def plan(source_root: Path = REPO_ROOT) -> list[Entry]:
    """Every file ``install`` writes, in a stable order."""
    entries = []
    for rel in CODE_FILES:
        src = source_root / rel
        if not src.is_file():
            raise InstallError(f"source file missing: {src} (run from a HybridMoE-FreqNet tree)", 2)
        entries.append(Entry(src, rel))
    for kind in TEMPLATE_KINDS:
        folder = source_root / "options" / kind / TEMPLATE_FOLDER
        for src in sorted(folder.glob("*.yml")):
            entries.append(Entry(src, f"options/_templates/{kind}/{TEMPLATE_FOLDER}/{src.name}"))
    return entries


def load_manifest(checkout: Path) -> dict[str, Any]:
    """The manifest of a previous install, or an empty one."""
    path = checkout / MANIFEST_NAME
    if not path.exists():
        return {"version": MANIFEST_VERSION, "files": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InstallError(f"{path}: unreadable install manifest ({e}); fix or remove it") from e
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise InstallError(f"{path}: not an install manifest of this project; fix or remove it")
    return data


def save_manifest(checkout: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest (or delete it when it records no file)."""
    path = checkout / MANIFEST_NAME
    if not manifest["files"]:
        path.unlink(missing_ok=True)
        return
    data = {
        **manifest,
        "version": MANIFEST_VERSION,
        "tool": "HybridMoE-FreqNet scripts/install_trainner.py",
        "files": dict(sorted(manifest["files"].items())),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _is_link_to(path: Path, source: Path) -> bool:
    if not path.is_symlink():
        return False
    try:
        return path.resolve() == source.resolve()
    except OSError:
        return False


def _state(path: Path, record: dict[str, Any]) -> str:
    """``missing``, ``unmodified`` (as this installer left it) or ``modified``."""
    if not _exists(path):
        return "missing"
    if record.get("mode") == "link":
        target = Path(record.get("source", ""))
        if _is_link_to(path, target):
            return "unmodified"
        if path.is_symlink() or not path.is_file():
            return "modified"
    elif path.is_symlink() or not path.is_file():
        return "modified"
    try:
        return "unmodified" if sha256_of(path) == record.get("sha256") else "modified"
    except OSError:
        return "modified"


def _prune_dirs(checkout: Path, rel: str) -> None:
    """Remove the now empty ``HybridMoE`` template folders a file sat in."""
    parent = (checkout / rel).parent
    while parent != checkout and parent.name == TEMPLATE_FOLDER:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def install(checkout: Path, link: bool = False, source_root: Path = REPO_ROOT) -> list[str]:
    """Install (or update) every file; returns report lines. Raises :class:`InstallError`
    without touching anything when a file is in the way."""
    checkout = check_checkout(checkout)
    entries = plan(source_root)
    manifest = load_manifest(checkout)
    records: dict[str, Any] = manifest["files"]
    mode = "link" if link else "copy"

    conflicts = []
    for e in entries:
        dest = checkout / e.dest
        if not _exists(dest):
            continue
        if e.dest not in records:
            if dest.resolve() == e.source.resolve():
                raise InstallError(f"{dest} is the source file itself; install elsewhere", 2)
            conflicts.append(f"  {e.dest}: exists and was not written by this installer")
        elif _state(dest, records[e.dest]) == "modified":
            conflicts.append(f"  {e.dest}: was installed by this installer but edited since")
    if conflicts:
        raise InstallError(
            "refusing to overwrite files in "
            f"{checkout}:\n" + "\n".join(conflicts) + "\nMove them away (or rename them) and "
            "run install again. Nothing was changed."
        )

    report = []
    wanted = {e.dest for e in entries}
    for rel in sorted(set(records) - wanted):  # files of an older version, no longer shipped
        path = checkout / rel
        state = _state(path, records[rel])
        if state == "unmodified":
            path.unlink()
            _prune_dirs(checkout, rel)
            report.append(f"removed    {rel} (no longer part of the project)")
        elif state == "modified":
            report.append(f"WARNING    {rel}: no longer part of the project, edited: kept")
        del records[rel]

    for e in entries:
        dest = checkout / e.dest
        digest = sha256_of(e.source)
        record = {"sha256": digest, "mode": mode, "source": str(e.source.resolve())}
        old = records.get(e.dest)
        if _exists(dest) and old is not None:
            same_kind = old.get("mode") == mode
            same = (
                _is_link_to(dest, e.source)
                if link
                else (not dest.is_symlink() and sha256_of(dest) == digest)
            )
            if same and same_kind:
                records[e.dest] = record
                report.append(f"unchanged  {e.dest}")
                continue
            dest.unlink()
            action = "updated   "
        else:
            action = "linked    " if link else "installed "
        dest.parent.mkdir(parents=True, exist_ok=True)
        if link:
            dest.symlink_to(e.source.resolve())
        else:
            shutil.copyfile(e.source, dest)
        records[e.dest] = record
        report.append(f"{action} {e.dest}")
        save_manifest(checkout, manifest)  # record progress file by file
    save_manifest(checkout, manifest)
    return report


def uninstall(checkout: Path) -> tuple[list[str], list[str]]:
    """Remove this installer's unmodified files; returns (report lines, warnings)."""
    checkout = check_checkout(checkout)
    manifest = load_manifest(checkout)
    records: dict[str, Any] = manifest["files"]
    report, warnings = [], []
    if not records:
        return ["nothing to uninstall (no install manifest)"], []
    for rel in sorted(records):
        path = checkout / rel
        state = _state(path, records[rel])
        if state == "missing":
            report.append(f"missing    {rel} (already removed)")
        elif state == "unmodified":
            path.unlink()
            _prune_dirs(checkout, rel)
            report.append(f"removed    {rel}")
        else:
            warnings.append(f"WARNING: {rel} was edited after installation; kept")
        del records[rel]
    save_manifest(checkout, manifest)
    return report, warnings


def check(checkout: Path, source_root: Path = REPO_ROOT) -> tuple[list[str], bool]:
    """Compare the checkout with this project: (report lines, all files match)."""
    checkout = check_checkout(checkout)
    records = load_manifest(checkout)["files"]
    lines, ok = [], True
    for e in plan(source_root):
        dest = checkout / e.dest
        if not _exists(dest) or not dest.exists():
            status = "missing"
        elif _is_link_to(dest, e.source) or sha256_of(dest) == sha256_of(e.source):
            status = "matches"
        else:
            status = "differs"
        ok &= status == "matches"
        note = "" if e.dest in records or status == "missing" else "  (not installed by us)"
        lines.append(f"{status:<8} {e.dest}{note}")
    wanted = {e.dest for e in plan(source_root)}
    for rel in sorted(set(records) - wanted):
        lines.append(f"stale    {rel}  (installed earlier, no longer part of the project)")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Install HybridMoE-FreqNet into a traiNNer-redux checkout.",
        epilog="See the module docstring (or docs/TRAINING.md) for what goes where.",
    )
    ap.add_argument("command", choices=("install", "uninstall", "check"))
    ap.add_argument("trainner_dir", type=Path, metavar="TRAINNER_REDUX_DIR")
    ap.add_argument("--link", action="store_true", help="symlink instead of copying (install)")
    args = ap.parse_args(argv)
    if args.link and args.command != "install":
        ap.error("--link only applies to install")
    try:
        if args.command == "install":
            for line in install(args.trainner_dir, link=args.link):
                print(line)
            print(f"HybridMoE-FreqNet installed into {args.trainner_dir.resolve()}")
            return 0
        if args.command == "uninstall":
            report, warnings = uninstall(args.trainner_dir)
            for line in report:
                print(line)
            for line in warnings:
                print(line, file=sys.stderr)
            return 0
        lines, ok = check(args.trainner_dir)
        for line in lines:
            print(line)
        print("all files match" if ok else "some files are missing or differ")
        return 0 if ok else 1
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
