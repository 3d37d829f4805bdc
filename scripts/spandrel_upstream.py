"""Write HybridMoE into a spandrel source checkout, in spandrel's own layout.

    python scripts/spandrel_upstream.py SPANDREL_CHECKOUT

Creates or refreshes (idempotent: a second run changes nothing):

* ``libs/spandrel/spandrel/architectures/HybridMoE/__arch/hybridmoe.py``: the network file
  ``traiNNer/archs/hybridmoe_arch.py``, as it is;
* ``.../HybridMoE/__arch/meta.py``: ``hybridmoe/meta.py`` (reading ``hmoe_meta`` and the shapes
  back into options), its imports pointed at the file beside it;
* ``.../HybridMoE/__arch/LICENSE``: the project's MIT license;
* ``.../HybridMoE/__init__.py``: the descriptor ``hybridmoe/spandrel_arch.py``, its imports
  pointed at spandrel's internals and at ``__arch``;
* the import and the ``ArchSupport.from_architecture(HybridMoE.HybridMoEArch())`` entry in
  ``libs/spandrel/spandrel/__helpers/main_registry.py`` (detected after every built-in
  architecture; its keys collide with none of them);
* ``tests/test_HybridMoE.py`` in spandrel's test conventions.

Only whole import lines change (:data:`IMPORTS`; a missing one is an error, not a silent
skip). Python files are formatted by the ``ruff`` executable of this Python environment (or the
first one on ``PATH``), never by anything inside the checkout. Every file is written atomically.
Refuses (exit status 2) a path that is not a spandrel checkout, and one where a target folder
leads outside the checkout through a symbolic link (nothing is written then).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hybridmoe import meta, spandrel_arch
from hybridmoe.imageio import atomic_output
from hybridmoe.paths import ARCH_FILE, REPO_ROOT

LICENSE_FILE = REPO_ROOT / "LICENSE"
META_FILE = Path(meta.__file__)
DESCRIPTOR_FILE = Path(spandrel_arch.__file__)

ARCH_REL = Path("libs/spandrel/spandrel/architectures/HybridMoE")
REGISTRY_REL = Path("libs/spandrel/spandrel/__helpers/main_registry.py")
TEST_REL = Path("tests/test_HybridMoE.py")
MARKERS = (
    REGISTRY_REL,
    Path("libs/spandrel/spandrel/architectures"),
    Path("libs/spandrel/spandrel/util/__init__.py"),
    Path("tests/util.py"),
)
"""Paths that make a directory a spandrel checkout."""

IMPORTS: dict[str, dict[str, str]] = {
    "meta": {
        "import hybridmoe_arch as arch\n": "from . import hybridmoe as arch\n",
        "from hybridmoe_arch import ": "from .hybridmoe import ",
    },
    "descriptor": {
        "from spandrel import Architecture, ImageModelDescriptor, ModelTiling, StateDict\n": (
            "from ...__helpers.model_descriptor import (\n"
            "    Architecture,\n    ImageModelDescriptor,\n    ModelTiling,\n    StateDict,\n)\n"
        ),
        "from hybridmoe.meta import ": "from .__arch.meta import ",
        "from hybridmoe_arch import ": "from .__arch.hybridmoe import ",
    },
}
"""Per copied module: import line (start) -> its form inside spandrel."""


class NotACheckoutError(Exception):
    """The target is not a spandrel checkout (or a target folder leads outside it)."""


def retarget_imports(text: str, imports: dict[str, str], name: str) -> str:
    """``text`` with each import line that starts with a key of ``imports`` rewritten; every
    key must start exactly one line."""
    lines = text.splitlines(keepends=True)
    for old, new in imports.items():
        hits = [i for i, line in enumerate(lines) if line.startswith(old)]
        if len(hits) != 1:
            raise ValueError(f"{name}: expected one line starting with {old.strip()!r}")
        lines[hits[0]] = new + lines[hits[0]][len(old) :]
    return "".join(lines)


# ---------------------------------------------------------------------------------------------
# spandrel files
# ---------------------------------------------------------------------------------------------

TEST_TEMPLATE = '''"""HybridMoE-FreqNet.

No pretrained HybridMoE model is published at a public URL yet, so this file has no
model-file tests (snapshot and image inference); those come with the first public model.
"""

from spandrel.architectures.HybridMoE import HybridMoE, HybridMoEArch

from .util import assert_loads_correctly, assert_size_requirements


def _small(**kwargs) -> HybridMoE:
    base = {
        "dim": 8,
        "enc_blocks": (1, 1, 1),
        "hf_blocks": (1, 1, 1),
        "mid_blocks": 1,
        "dec_blocks": (1, 1),
        "window_size": 4,
        "kernel_size": 5,
    }
    base.update(kwargs)
    return HybridMoE(**base)


def test_load():
    assert_loads_correctly(
        HybridMoEArch(),
        lambda: HybridMoE(),
        lambda: HybridMoE(scale=2),
        lambda: HybridMoE(deploy=True),
        lambda: _small(scale=1),
        lambda: _small(scale=2),
        lambda: _small(scale=3),
        lambda: _small(scale=8),
        lambda: _small(in_ch=1),
        lambda: _small(in_ch=1, scale=1),
        lambda: _small(dim=12),
        lambda: _small(enc_blocks=(2, 1, 3), hf_blocks=(1, 2, 0), dec_blocks=(2, 0)),
        lambda: _small(mid_blocks=3),
        lambda: _small(window_size=8),
        lambda: _small(mlp_ratio=1.5),
        lambda: _small(mlp_ratio=3.0),
        lambda: _small(mlp_ratio=2.66),
        lambda: _small(kernel_size=3),
        lambda: _small(kernel_size=9),
        lambda: _small(use_moe=False),
        lambda: _small(num_experts=6, top_k=3),
        lambda: _small(num_experts=1, top_k=1),
        lambda: _small(refine_moe=True),
        lambda: _small(use_moe=False, refine_moe=True, num_experts=3, top_k=1),
        lambda: _small(use_hf=False, hf_blocks=(2, 1, 1)),
        lambda: _small(use_attn=False),
        lambda: _small(freq_split="fft"),
        lambda: _small(global_mixer="ssm"),
        lambda: _small(global_mixer="none"),
        lambda: _small(freq_split="fft", global_mixer="ssm"),
        lambda: _small(stem_lk=True),
        lambda: _small(noise=True),
        lambda: _small(upsampler="dysample"),
        lambda: _small(upsampler="dysample", scale=3),
        lambda: _small(base="bicubic"),
        lambda: _small(base="none"),
        lambda: _small(deploy=True, stem_lk=True),
        lambda: _small(scale=2, top_k=1).set_top_k(2),
        lambda: _small(scale=2).fuse(),
    )


def test_size_requirements():
    for model in (_small(scale=2), _small(scale=1, window_size=8, global_mixer="ssm")):
        assert_size_requirements(HybridMoEArch().load(model.state_dict()))
'''


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def check_checkout(root: Path) -> None:
    """Raise :class:`NotACheckoutError` unless ``root`` looks like a spandrel source checkout."""
    if not root.is_dir():
        raise NotACheckoutError(f"{root}: not a directory")
    missing = [str(m) for m in MARKERS if not (root / m).exists()]
    if missing:
        raise NotACheckoutError(
            f"{root}: not a spandrel checkout (missing {', '.join(missing)}); pass the root of "
            f"a clone of the spandrel repository"
        )
    registry = (root / REGISTRY_REL).read_text(encoding="utf-8")
    if "MAIN_REGISTRY.add(" not in registry or "from ..architectures import (" not in registry:
        raise NotACheckoutError(f"{root / REGISTRY_REL}: unexpected layout of the main registry")


def patch_registry(text: str) -> str:
    """Add the HybridMoE import and registry entry to ``main_registry.py`` (idempotent)."""
    if "HybridMoE.HybridMoEArch()" in text:
        return text
    head, sep, rest = text.partition("from ..architectures import (\n")
    block, close, tail = rest.partition(")\n")
    names = [n.strip().rstrip(",") for n in block.splitlines() if n.strip()]
    if "HybridMoE" not in names:
        # keep the existing order (all-caps names, then mixed case, case-insensitively)
        upper = [n for n in names if n.isupper()]
        mixed = sorted([n for n in names if not n.isupper()] + ["HybridMoE"], key=str.lower)
        if upper + [n for n in mixed if n != "HybridMoE"] != names:
            mixed_old = [n for n in names if not n.isupper()]
            mixed = [*mixed_old, "HybridMoE"]  # unknown order: append
        block = "".join(f"    {n},\n" for n in upper + mixed)
    text = head + sep + block + close + tail
    entry = "    ArchSupport.from_architecture(HybridMoE.HybridMoEArch()),\n"
    start = text.index("MAIN_REGISTRY.add(\n")
    end = text.index("\n)", start)
    return text[: end + 1] + entry + text[end + 1 :]


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things the user should know (ruff missing or failing: files written unformatted)."""


def _is_inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _own_ruff() -> Path | None:
    """The ``ruff`` executable installed into this Python environment's scripts folder."""
    scripts = sysconfig.get_path("scripts")
    exe = Path(scripts) / ("ruff" + (sysconfig.get_config_var("EXE") or "")) if scripts else None
    return exe if exe is not None and exe.is_file() else None


def find_ruff(checkout: Path) -> Path | None:
    """An absolute ``ruff`` executable outside ``checkout``: this environment's, else the first
    on ``PATH`` (relative ``PATH`` entries are taken from the current folder); ``None`` if
    there is none. Nothing inside the checkout is ever chosen."""
    candidates = [_own_ruff()]
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("ruff", path=entry or os.curdir)
        candidates.append(Path(os.path.abspath(found)) if found else None)
    for exe in candidates:
        if exe is not None and exe.is_absolute() and not _is_inside(exe, checkout):
            return exe
    return None


def ruff_format(text: str, path: Path, checkout: Path, report: Report | None = None) -> str:
    """``text`` formatted by ``ruff format`` with the checkout's configuration (spandrel's
    pre-commit hook), or unchanged (with a note in ``report``) when ruff is missing or fails.
    The ruff executable comes from :func:`find_ruff`: nothing in the checkout is imported or
    run (``python -m ruff`` there would import a ``ruff.py`` lying in the checkout)."""
    notes = report.notes if report is not None else []
    exe = find_ruff(checkout)
    if exe is None:
        note = "ruff not found: Python files written unformatted (pip install ruff)"
        if note not in notes:
            notes.append(note)
        return text
    try:
        proc = subprocess.run(
            [str(exe), "format", "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=checkout,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        notes.append(f"{exe} format failed ({e}): {path} written unformatted")
        return text
    if proc.returncode != 0 or not proc.stdout:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        notes.append(f"{exe} format failed ({why}): {path} written unformatted")
        return text
    return proc.stdout


def check_targets(checkout: Path, paths: Sequence[Path]) -> None:
    """Raise :class:`NotACheckoutError` when the folder of a path to write resolves (through a
    symbolic link) outside ``checkout``."""
    for path in paths:
        if not _is_inside(path.parent, checkout):  # resolve() follows every link on the way
            raise NotACheckoutError(
                f"{path.parent} leads outside the checkout {checkout} (to "
                f"{path.parent.resolve()}) "
                "through a symbolic link; nothing was written. Replace the link with a real "
                "folder."
            )


def _write(path: Path, text: str, report: Report) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        report.unchanged.append(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True, what="file") as tmp:
        tmp.write_text(text, encoding="utf-8")
    report.written.append(path)


def export(checkout: Path, *, fmt: bool = True) -> Report:
    """Write every file into ``checkout``; returns what was written and what was unchanged.
    With ``fmt``, Python files are formatted with ruff under the checkout's configuration."""
    checkout = checkout.resolve()
    check_checkout(checkout)
    report = Report()
    arch_dir = checkout / ARCH_REL
    targets = [
        arch_dir / "__arch" / "hybridmoe.py",
        arch_dir / "__arch" / "meta.py",
        arch_dir / "__arch" / "LICENSE",
        arch_dir / "__init__.py",
        checkout / REGISTRY_REL,
        checkout / TEST_REL,
    ]
    check_targets(checkout, targets)

    def py(path: Path, text: str) -> None:
        _write(path, ruff_format(text, path, checkout, report) if fmt else text, report)

    def read(path: Path) -> str:
        return path.read_text(encoding="utf-8")

    _write(arch_dir / "__arch" / "hybridmoe.py", read(ARCH_FILE), report)
    meta_text = retarget_imports(read(META_FILE), IMPORTS["meta"], "meta.py")
    py(arch_dir / "__arch" / "meta.py", meta_text)
    _write(arch_dir / "__arch" / "LICENSE", read(LICENSE_FILE), report)
    descriptor = retarget_imports(read(DESCRIPTOR_FILE), IMPORTS["descriptor"], "spandrel_arch")
    py(arch_dir / "__init__.py", descriptor)
    registry = checkout / REGISTRY_REL
    _write(registry, patch_registry(registry.read_text(encoding="utf-8")), report)
    py(checkout / TEST_REL, TEST_TEMPLATE)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("checkout", type=Path, help="root of a spandrel source checkout")
    p.add_argument(
        "--no-format", action="store_true", help="do not run ruff format on the written files"
    )
    args = p.parse_args(argv)
    try:
        report = export(args.checkout, fmt=not args.no_format)
    except NotACheckoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in report.written:
        print(f"wrote     {path}")
    for path in report.unchanged:
        print(f"unchanged {path}")
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
