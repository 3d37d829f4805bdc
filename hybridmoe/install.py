"""Install HybridMoE-FreqNet into a traiNNer-redux checkout (and remove it again).

Usage::

    hybridmoe install-trainner install   TRAINNER_REDUX_DIR [--link] [--force]
    hybridmoe install-trainner uninstall TRAINNER_REDUX_DIR [--force]
    hybridmoe install-trainner check     TRAINNER_REDUX_DIR

``install`` places these files (copies; with ``--link`` the network and the losses are symbolic
links to this checkout instead, and the templates are still copied, so that traiNNer-redux
still refuses to train from them and an edit there never changes this project's files):

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
``.hybridmoe-freqnet-install.json`` at the root of the checkout. The installer only ever
writes or deletes files inside the checkout (a folder that leads outside it through a
symbolic link is refused), and only files it wrote itself whose content still matches the
manifest. It never overwrites a file it did not write, nor one of its own files that was edited
since (it refuses with a message naming the file and changes nothing; ``install --force``
replaces edited files of its own). Re-running ``install`` is idempotent and updates unmodified
files to the current version. ``uninstall`` removes only its own unmodified files: edited ones
are kept, stay in the manifest and are named in a warning (``uninstall --force`` removes them).
``check`` reports every file as ``missing``, ``matches`` or ``differs`` and exits 0 only when
all match. A manifest whose entries are not files this installer writes (absolute paths,
``..``, other names) or whose records are damaged is refused before anything is changed.
Files and the manifest are written to a temporary file in the same folder and renamed over
the target, so an interrupted run never leaves a half-written file.

Exit status: 0 success; 1 refused / files differ; 2 usage error or not a traiNNer-redux checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from hybridmoe.paths import source_root

REPO_ROOT = source_root()
MANIFEST_NAME = ".hybridmoe-freqnet-install.json"
MANIFEST_VERSION = 1
CHECKOUT_MARKERS = ("train.py", "traiNNer/archs/__init__.py", "traiNNer/utils/registry.py")
CODE_FILES = ("traiNNer/archs/hybridmoe_arch.py", "traiNNer/losses/hybridmoe_loss.py")
TEMPLATE_KINDS = ("train", "test", "onnx")
TEMPLATE_FOLDER = "HybridMoE"

CODE_DEST = re.compile(r"traiNNer/(archs|losses)/hybridmoe_[A-Za-z0-9_]+\.py")
TEMPLATE_DEST = re.compile(
    rf"options/_templates/({'|'.join(TEMPLATE_KINDS)})/{TEMPLATE_FOLDER}/"
    r"([A-Za-z0-9_][A-Za-z0-9_.-]*\.yml)"
)
"""The only file names this installer writes (and so the only ones a manifest may name)."""
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MODES = ("copy", "link")


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
    if path.exists() and not path.is_dir():
        raise InstallError(
            f"{path} is a file, not a traiNNer-redux checkout folder; give the root folder of the "
            f"checkout (the one that holds train.py and traiNNer/)",
            2,
        )
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
            dest = f"options/_templates/{kind}/{TEMPLATE_FOLDER}/{src.name}"
            if not TEMPLATE_DEST.fullmatch(dest):  # the manifest could not record it
                raise InstallError(
                    f"template {src} has a name the installer does not write (letters, digits, "
                    f"'_', '.' and '-' only); rename it",
                    2,
                )
            entries.append(Entry(src, dest))
    return entries


def source_rel_of(dest: str) -> str | None:
    """The project path a checkout path is installed from (``None`` for a path this installer
    never writes)."""
    if CODE_DEST.fullmatch(dest):
        return dest
    m = TEMPLATE_DEST.fullmatch(dest)
    if m:
        return f"options/{m.group(1)}/{TEMPLATE_FOLDER}/{m.group(2)}"
    return None


def _record_problem(rel: Any, record: Any) -> str | None:
    """Why a manifest entry cannot be one this installer wrote (``None`` when it can)."""
    if not isinstance(rel, str) or source_rel_of(rel) is None:
        return (
            "not a file this installer writes (only traiNNer/archs/hybridmoe_*.py, "
            "traiNNer/losses/hybridmoe_*.py and options/_templates/{train,test,onnx}/"
            f"{TEMPLATE_FOLDER}/*.yml, relative to the checkout)"
        )
    if not isinstance(record, dict):
        return "the record is not an object"
    return _fields_problem(rel, record)


def _fields_problem(rel: str, record: dict[str, Any]) -> str | None:
    """Why the fields of a manifest record are not ones this installer writes."""
    sha, mode, source = record.get("sha256"), record.get("mode"), record.get("source")
    if not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha):
        return "no valid sha256 (64 lower-case hex digits)"
    if mode not in MODES:
        return f"mode {mode!r} is neither {' nor '.join(map(repr, MODES))}"
    if not isinstance(source, str) or not Path(source).is_absolute():
        return "source is not an absolute path"
    wanted = PurePosixPath(source_rel_of(rel) or "").parts
    if mode == "link" and Path(source).parts[-len(wanted) :] != wanted:
        return f"a link to {source}, which is not the project's {'/'.join(wanted)}"
    return None


def validate_manifest(data: Any, path: Path) -> dict[str, Any]:
    """``data`` (the parsed manifest at ``path``) if it is a manifest this installer could have
    written; otherwise :class:`InstallError` naming every bad entry (nothing has been changed)."""
    fix = (
        f"Nothing was changed. Restore {MANIFEST_NAME} from a backup, or remove it and delete "
        "the installed HybridMoE files by hand."
    )
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise InstallError(f"{path}: not an install manifest of this project. {fix}")
    if data.get("version") != MANIFEST_VERSION:
        raise InstallError(
            f"{path}: install manifest version {data.get('version')!r} is not "
            f"{MANIFEST_VERSION} (written by another version of this installer?). {fix}"
        )
    problems = []
    for rel, record in data["files"].items():
        why = _record_problem(rel, record)
        if why:
            problems.append(f"  {rel!r}: {why}")
    if problems:
        raise InstallError(
            f"{path}: damaged or tampered install manifest:\n" + "\n".join(problems) + f"\n{fix}"
        )
    return data


def load_manifest(checkout: Path) -> dict[str, Any]:
    """The validated manifest of a previous install, or an empty one."""
    path = checkout / MANIFEST_NAME
    if not path.exists():
        return {"version": MANIFEST_VERSION, "files": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InstallError(
            f"{path}: unreadable install manifest ({e}); fix or remove it. Nothing was changed."
        ) from e
    return validate_manifest(data, path)


def inside(checkout: Path, rel: str) -> Path:
    """``checkout / rel`` with its folder resolved (symbolic links followed), or
    :class:`InstallError` when that folder is not inside the (resolved) ``checkout``. The last
    component is not followed: a symlink there is replaced or removed, never its target."""
    dest = checkout / rel
    folder = dest.parent.resolve()
    if not folder.is_relative_to(checkout):
        raise InstallError(
            f"{rel}: its folder {dest.parent} leads outside the checkout {checkout} (to "
            f"{folder}) through a symbolic link; this installer only writes and deletes inside "
            "the checkout. Replace the link with a real folder. Nothing was changed."
        )
    return folder / dest.name


def resolve_all(checkout: Path, rels: Iterable[str]) -> dict[str, Path]:
    """:func:`inside` for every path; one error naming all that lead outside."""
    out, errors = {}, []
    for rel in rels:
        try:
            out[rel] = inside(checkout, rel)
        except InstallError as e:
            errors.append(str(e).removesuffix(" Nothing was changed."))
    if errors:
        raise InstallError("\n".join(errors) + "\nNothing was changed.")
    return out


def _create_temp(dest: Path, create: Callable[[Path], None]) -> Path:
    """A fresh, unused temporary name beside ``dest``, made by ``create`` (which must fail
    with :class:`FileExistsError` if the name is taken)."""
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(8)}.tmp")
        try:
            create(tmp)
        except FileExistsError:
            continue
        return tmp
    raise InstallError(f"could not create a temporary file beside {dest}")


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file beside ``dest`` and rename it over ``dest`` (a
    symlink at ``dest`` is replaced, never followed); on failure the temporary file is removed
    and ``dest`` is as before."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fds: list[int] = []
    tmp = _create_temp(dest, lambda t: fds.append(os.open(t, flags, 0o666)))
    try:
        with os.fdopen(fds[0], "wb") as f:
            view = memoryview(data)
            while view:
                view = view[os.write(f.fileno(), view) :]
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def symlink_atomic(dest: Path, target: Path) -> None:
    """Point ``dest`` at ``target`` (a new symlink renamed over ``dest``)."""
    tmp = _create_temp(dest, lambda t: t.symlink_to(target))
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_manifest(checkout: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (or delete it when it records no file)."""
    path = checkout / MANIFEST_NAME
    if not manifest["files"]:
        path.unlink(missing_ok=True)
        return
    data = {
        **manifest,
        "version": MANIFEST_VERSION,
        "tool": "HybridMoE-FreqNet hybridmoe install-trainner",
        "files": dict(sorted(manifest["files"].items())),
    }
    write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


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
    """``missing``, ``unmodified`` (as this installer left it), ``modified`` (a file or link
    edited or replaced since) or ``not a file`` (a folder or other special file now)."""
    if not _exists(path):
        return "missing"
    if path.is_symlink():
        # a link is ours only in link mode, pointing at the recorded project file
        linked = record.get("mode") == "link" and _is_link_to(path, Path(record["source"]))
        return "unmodified" if linked else "modified"
    if not path.is_file():
        return "not a file"
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


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two regular files hold the same bytes (False when one cannot be read)."""
    try:
        return sha256_of(a) == sha256_of(b)
    except OSError:
        return False


def _is_what_install_writes(dest: Path, source: Path, link: bool) -> bool:
    """Whether ``dest`` already is what ``install`` (``link``: ``install --link``) puts there
    for ``source``: a regular file with its bytes, or (``link`` only) the very link to it. A
    run stopped between writing a file and recording it in the manifest leaves it so."""
    if not dest.is_symlink():
        return dest.is_file() and _same_bytes(dest, source)
    return link and os.readlink(dest) == str(source.resolve())


def links(dest: str, link: bool) -> bool:
    """Whether ``install`` (``link``: ``install --link``) makes ``dest`` a symbolic link. Only
    the network and loss files are linked; the templates are always copied: traiNNer-redux's
    refusal to train from ``options/_templates`` follows links, so it would not recognise a
    linked template, and editing one there would edit this project's file."""
    return link and CODE_DEST.fullmatch(dest) is not None


def _conflicts(
    entries: list[Entry], dests: dict[str, Path], records: dict[str, Any], force: bool, link: bool
) -> list[str]:
    """Why ``install`` (``link``: ``install --link``) may not write each planned file (empty
    when it may write them all)."""
    conflicts = []
    for e in entries:
        dest, linked = dests[e.dest], links(e.dest, link)
        if not _exists(dest):
            blocker = _file_in_the_way(dest)
            if blocker is not None:
                conflicts.append(f"  {e.dest}: {blocker} is a file, not a folder")
            continue
        if e.dest not in records:
            if _is_what_install_writes(dest, e.source, linked):
                continue  # written by a run stopped before recording it: adopted
            if dest.is_symlink():
                conflicts.append(
                    f"  {e.dest}: is a symbolic link (to {os.readlink(dest)}) that this "
                    "installer did not make (install --link makes and records its own)"
                )
            elif dest.resolve() == e.source.resolve():
                raise InstallError(f"{dest} is the source file itself; install elsewhere", 2)
            else:
                conflicts.append(f"  {e.dest}: exists and was not written by this installer")
            continue
        state = _state(dest, records[e.dest])
        if state == "modified" and _is_what_install_writes(dest, e.source, linked):
            continue  # an update stopped before recording it: not an edit
        if state == "not a file":
            conflicts.append(f"  {e.dest}: is not a file (a folder?)")
        elif state == "modified" and not force:
            conflicts.append(
                f"  {e.dest}: was installed by this installer but edited since "
                "(install --force replaces it, losing the edits)"
            )
    return conflicts


def _file_in_the_way(dest: Path) -> Path | None:
    """The nearest existing folder of ``dest`` when it is not a folder (a file where the
    installer must create or use a folder), else ``None``."""
    parent = dest.parent
    while not _exists(parent) and parent != parent.parent:
        parent = parent.parent
    return None if parent.is_dir() else parent


def _remove_stale(
    checkout: Path, dests: dict[str, Path], records: dict[str, Any], force: bool
) -> list[str]:
    """Delete the unmodified files of an older version that are no longer shipped (edited ones
    with ``force``); returns report lines. Edited files that are kept stay in the manifest."""
    report = []
    for rel in sorted(set(records) - set(dests)):
        path = inside(checkout, rel)
        state = _state(path, records[rel])
        if state == "unmodified" or (state == "modified" and force):
            path.unlink()
            _prune_dirs(checkout, rel)
            report.append(f"removed    {rel} (no longer part of the project)")
        elif state == "modified":
            report.append(
                f"WARNING    {rel}: no longer part of the project, edited: kept "
                "(install --force removes it)"
            )
            continue
        elif state == "not a file":
            report.append(f"WARNING    {rel}: no longer part of the project, not a file: kept")
        del records[rel]
    return report


def install(
    checkout: Path, link: bool = False, source_root: Path = REPO_ROOT, force: bool = False
) -> list[str]:
    """Install (or update) every file; returns report lines. Raises :class:`InstallError`
    without touching anything when a file is in the way or a path leads outside the checkout.
    ``force`` replaces (and removes, when no longer shipped) this installer's own files that
    were edited since; files it did not write are never touched."""
    checkout = check_checkout(checkout)
    entries = plan(source_root)
    manifest = load_manifest(checkout)
    records: dict[str, Any] = manifest["files"]
    dests = resolve_all(checkout, [e.dest for e in entries])
    resolve_all(checkout, records)

    conflicts = _conflicts(entries, dests, records, force, link)
    if conflicts:
        raise InstallError(
            "refusing to overwrite files in "
            f"{checkout}:\n" + "\n".join(conflicts) + "\nMove them away (out of the "
            "checkout: a renamed copy left in traiNNer/archs or traiNNer/losses is still "
            "imported by traiNNer-redux and registers the same names twice) and run install "
            "again. Nothing was changed."
        )

    report = _remove_stale(checkout, dests, records, force)
    for e in entries:
        dest, linked = dests[e.dest], links(e.dest, link)
        mode = "link" if linked else "copy"
        data = e.source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        record = {"sha256": digest, "mode": mode, "source": str(e.source.resolve())}
        old = records.get(e.dest)
        if _exists(dest) and old is not None:
            same = (
                _is_link_to(dest, e.source)
                if linked
                else (not dest.is_symlink() and sha256_of(dest) == digest)
            )
            if same and old.get("mode") == mode:
                records[e.dest] = record
                report.append(f"unchanged  {e.dest}")
                continue
            action = "updated   "
        else:
            action = "linked    " if linked else "installed "
        dest.parent.mkdir(parents=True, exist_ok=True)
        if linked:
            symlink_atomic(dest, e.source.resolve())
        else:
            write_bytes_atomic(dest, data)
        records[e.dest] = record
        report.append(f"{action} {e.dest}")
        save_manifest(checkout, manifest)  # record progress file by file
    save_manifest(checkout, manifest)
    return report


def uninstall(
    checkout: Path, force: bool = False, source_root: Path = REPO_ROOT
) -> tuple[list[str], list[str]]:
    """Remove this installer's unmodified files (edited ones too with ``force``); returns
    (report lines, warnings). Edited files that are kept stay in the manifest. A file that
    differs from its record but is what ``install`` writes from ``source_root`` now (an update
    stopped before recording it) is not an edit."""
    checkout = check_checkout(checkout)
    manifest = load_manifest(checkout)
    records: dict[str, Any] = manifest["files"]
    report, warnings = [], []
    if not records:
        return ["nothing to uninstall (no install manifest)"], []
    paths = resolve_all(checkout, records)
    for rel in sorted(records):
        path = paths[rel]
        state = _state(path, records[rel])
        source = source_root / (source_rel_of(rel) or rel)
        if state == "modified" and _is_what_install_writes(path, source, link=True):
            state = "unmodified"
        if state == "missing":
            report.append(f"missing    {rel} (already removed)")
        elif state == "unmodified" or (state == "modified" and force):
            path.unlink()
            _prune_dirs(checkout, rel)
            report.append(
                f"removed    {rel}" + (" (edited; --force)" if state != "unmodified" else "")
            )
        elif state == "modified":
            warnings.append(
                f"WARNING: {rel} was edited after installation; kept. Delete it by hand, or "
                "run uninstall --force to remove it anyway."
            )
            continue
        else:
            warnings.append(f"WARNING: {rel} is not a file any more; kept, no longer recorded")
        del records[rel]
    save_manifest(checkout, manifest)
    return report, warnings


def check(checkout: Path, source_root: Path = REPO_ROOT) -> tuple[list[str], bool]:
    """Compare the checkout with this project: (report lines, all files match)."""
    checkout = check_checkout(checkout)
    records = load_manifest(checkout)["files"]
    lines, ok = [], True
    for e in plan(source_root):
        kind = ""
        try:
            dest = inside(checkout, e.dest)
        except InstallError:
            status = "outside"
        else:
            if not _exists(dest) or not dest.exists():
                status = "missing"
                if dest.is_symlink():  # install refuses a link it did not make
                    kind = f"a symbolic link to nothing: {os.readlink(dest)}"
            elif _is_link_to(dest, e.source):
                status = "matches"
            elif not dest.is_file():  # a folder or a FIFO: never opened (a FIFO would block)
                status, kind = "differs", "a folder" if dest.is_dir() else "not a regular file"
            else:
                try:
                    same = sha256_of(dest) == sha256_of(e.source)
                except OSError as err:
                    status, kind = "differs", f"unreadable: {err.strerror or err}"
                else:
                    status = "matches" if same else "differs"
        ok &= status == "matches"
        note = "" if e.dest in records or status == "missing" else "  (not installed by us)"
        if status == "outside":
            note = "  (its folder is a symbolic link leading outside the checkout)"
        elif kind:
            note = f"  ({kind}){note}"
        lines.append(f"{status:<8} {e.dest}{note}")
    wanted = {e.dest for e in plan(source_root)}
    for rel in sorted(set(records) - wanted):
        lines.append(f"stale    {rel}  (installed earlier, no longer part of the project)")
        ok = False  # install (or uninstall) removes it
    if ok and not records:
        lines.append(
            f"unrecorded: the files match, but the checkout has no {MANIFEST_NAME} naming "
            "them (uninstall would not remove them); run install to record them"
        )
        ok = False
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hybridmoe install-trainner",
        description="Install HybridMoE-FreqNet into a traiNNer-redux checkout.",
        epilog="See the module docstring (or docs/TRAINING.md) for what goes where.",
    )
    ap.add_argument("command", choices=("install", "uninstall", "check"))
    ap.add_argument("trainner_dir", type=Path, metavar="TRAINNER_REDUX_DIR")
    ap.add_argument(
        "--link",
        action="store_true",
        help="symlink the network and loss files instead of copying them (install); the "
        "templates are always copied",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="also replace (install) or remove (uninstall) files this installer wrote that "
        "were edited since; files it did not write are never touched",
    )
    args = ap.parse_args(argv)
    if args.link and args.command != "install":
        ap.error("--link only applies to install")
    if args.force and args.command == "check":
        ap.error("--force only applies to install and uninstall")
    try:
        if args.command == "install":
            for line in install(args.trainner_dir, link=args.link, force=args.force):
                print(line)
            print(f"HybridMoE-FreqNet installed into {args.trainner_dir.resolve()}")
            return 0
        if args.command == "uninstall":
            report, warnings = uninstall(args.trainner_dir, force=args.force)
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
    except OSError as e:  # permissions, a full disk: a re-run picks up where this stopped
        print(
            f"error: {args.command} stopped: {e}; fix the cause and run the command again "
            "(files already handled are recognised from the install manifest)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
