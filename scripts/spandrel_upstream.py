"""Write HybridMoE into a spandrel source checkout, in spandrel's own layout.

    python scripts/spandrel_upstream.py SPANDREL_CHECKOUT

Creates or refreshes (idempotent: a second run changes nothing):

* ``libs/spandrel/spandrel/architectures/HybridMoE/__arch/hybridmoe.py``: the network classes,
  generated from ``traiNNer/archs/hybridmoe_arch.py``: without the traiNNer-redux registration,
  the factories, the spandrel registration helpers and the file-loading code, without the
  optional mamba-ssm kernel probe, and with ``spandrel.util.store_hyperparameters``;
* ``.../HybridMoE/__arch/LICENSE``: the project's MIT license;
* ``.../HybridMoE/__init__.py``: ``HybridMoEArch`` (detection + hyperparameter inference) and
  ``__all__``;
* the import and the ``ArchSupport.from_architecture(HybridMoE.HybridMoEArch())`` entry in
  ``libs/spandrel/spandrel/__helpers/main_registry.py`` (detected after every built-in
  architecture; its keys collide with none of them);
* ``tests/test_HybridMoE.py`` in spandrel's test conventions.

Python files are formatted by the ``ruff`` executable of this Python environment (or the first
one on ``PATH``), never by anything inside the checkout: no ``python -m ruff`` there, so a
``ruff.py`` or ``ruff`` in the checkout is not run. Every file is written to a temporary file
beside it and renamed into place. Refuses (exit status 2) a path that is not a spandrel
checkout, and one where a target folder leads outside the checkout through a symbolic link
(nothing is written then).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH_FILE = REPO_ROOT / "traiNNer" / "archs" / "hybridmoe_arch.py"
LICENSE_FILE = REPO_ROOT / "LICENSE"

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

DROP_TOP_LEVEL = {
    "__all__",
    "store_hyperparameters",
    "_C",
    "_MAMBA_SCAN",
    "_mamba_kernel",
    "_OPTION_NAMES",
    "_build",
    "hybridmoe",
    "hybridmoe_nano",
    "hybridmoe_s",
    "hybridmoe_m",
    "hybridmoe_l",
    "FACTORIES",
    "SPANDREL_DETECT_KEYS",
    "_make_spandrel_arch",
    "register_spandrel",
    "_CHECKPOINT_EXTS",
    "TRAINING_STATE_KEYS",
    "_TORCHSCRIPT_RECORDS",
    "_TORCHSCRIPT_FOLDERS",
    "_BOILERPLATE",
    "_error_detail",
    "_unreadable",
    "_training_state_error",
    "_checked_path",
    "_file_kind",
    "_refuse_torchscript",
    "_deserialize",
    "read_state_dict",
    "load_checkpoint",
}
"""Top-level definitions of the network file that the spandrel copy leaves out: registration,
factories, file loading and the optional kernel probe. ``hybridmoe_from_state_dict`` (state
dict -> configured model) stays: spandrel's ``HybridMoEArch.load`` calls it, so the
hyperparameter inference has a single source."""

MAMBA_SCAN_BODY = (
    "    def _scan(self, x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:\n"
    "        return ssd_scan(x, dt, a, b, c)\n"
)


class NotACheckoutError(Exception):
    """The target directory is not a spandrel source checkout (or a target path in it leads
    outside it)."""


# ---------------------------------------------------------------------------------------------
# Network code
# ---------------------------------------------------------------------------------------------


def _defined_names(node: ast.stmt) -> set[str]:
    """Names a top-level statement defines (def/class/assignments)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def _is_trainner_block(node: ast.stmt) -> bool:
    """``if __name__ == "traiNNer.archs.hybridmoe_arch": ...`` (traiNNer registration)."""
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _node_span(node: ast.stmt) -> tuple[int, int]:
    """0-based [start, end) line span of a statement, decorators included."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    assert node.end_lineno is not None
    return start - 1, node.end_lineno


def _section_starts(lines: list[str]) -> list[int]:
    """Indices of the ``# ----`` / ``# Title`` / ``# ----`` section headers."""
    starts = []
    for i in range(len(lines) - 2):
        if (
            lines[i].startswith("# ---")
            and lines[i + 1].startswith("# ")
            and lines[i + 2].startswith("# ---")
        ):
            starts.append(i)
    return starts


def _used_names(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {
        n.value.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }
    return names


def generate_network(source: str) -> str:
    """The spandrel ``__arch/hybridmoe.py`` text for the network file's ``source``."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop = [False] * len(lines)

    first = tree.body[0] if tree.body else None
    for node in tree.body:
        if node is first and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            for i in range(_node_span(node)[1]):  # module docstring: replaced by our header
                drop[i] = True
            continue
        if _is_trainner_block(node) or (_defined_names(node) & DROP_TOP_LEVEL):
            a, b = _node_span(node)
            for i in range(a, b):
                drop[i] = True
            # the attribute docstring that follows an assignment
            nxt = tree.body[tree.body.index(node) + 1] if node is not tree.body[-1] else None
            if (
                isinstance(node, (ast.Assign, ast.AnnAssign))
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            ):
                a, b = _node_span(nxt)
                for i in range(a, b):
                    drop[i] = True

    # the selective scan calls ssd_scan directly (no optional kernel)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "SelectiveScan2D":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "_scan":
                    a, b = _node_span(item)
                    lines[a] = MAMBA_SCAN_BODY
                    for i in range(a + 1, b):
                        drop[i] = True

    # drop section headers whose sections became empty
    starts = _section_starts(lines)
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        if all(drop[i] or not lines[i].strip() for i in range(s + 3, end)):
            for i in range(s, end):
                drop[i] = True

    kept = "".join(line for i, line in enumerate(lines) if not drop[i])
    kept = re.sub(r"\n{4,}", "\n\n\n", kept)

    # store_hyperparameters from spandrel; mamba-ssm wording; unused imports
    kept = kept.replace("@store_hyperparameters\n", "@store_hyperparameters()\n")
    kept = re.sub(
        r"The scan uses mamba-ssm's\s+kernel.*?same\s+function\)\.",
        "The scan is :func:`ssd_scan` (pure PyTorch, chunked).",
        kept,
        flags=re.DOTALL,
    )
    kept = re.sub(
        r"\n[ \t]*self\.use_kernel = True\n[ \t]*\"\"\"[^\"]*\"\"\"\n", "\n", kept, flags=re.DOTALL
    )
    kept = re.sub(
        r"# Variants and factories[^\n]*",
        "# Named variants (size tags of the loaded models)",
        kept,
    )
    kept = kept.replace(
        '"""Named configurations; any constructor option can be overridden per factory call."""',
        '"""Named configurations (options that differ from the constructor defaults)."""',
    )
    kept = _prune_imports(kept)
    header = (
        '"""HybridMoE-FreqNet: an efficient super-resolution / restoration network.\n\n'
        "Network code of the HybridMoE-FreqNet project (MIT License, see LICENSE), generated\n"
        "from its single-file network module; spandrel's ``HybridMoEArch`` loads it.\n"
        '"""\n\n'
    )
    text = header + kept.lstrip("\n")
    text = re.sub(r"  # noqa: PLR\d+[^\n]*", "", text)  # rules spandrel does not select
    text = re.sub(r"(from spandrel\.util import store_hyperparameters\n)\n\n+", r"\1\n", text)
    return text.rstrip("\n") + "\n"


def _prune_imports(text: str) -> str:
    """Remove imported names the remaining code never uses; add spandrel's helper."""
    tree = ast.parse(text)
    code_names = _used_names(
        ast.Module(
            body=[n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))],
            type_ignores=[],
        )
    )
    lines = text.splitlines(keepends=True)
    out_lines = list(lines)
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        a, b = _node_span(node)
        keep = []
        for alias in node.names:
            if (alias.asname or alias.name).split(".")[0] in code_names:
                keep.append(alias)
        for i in range(a, b):
            out_lines[i] = ""
        if keep:
            names = ", ".join(f"{al.name} as {al.asname}" if al.asname else al.name for al in keep)
            if isinstance(node, ast.ImportFrom):
                out_lines[a] = f"from {node.module} import {names}\n"
            else:
                out_lines[a] = f"import {names}\n"
    text = "".join(out_lines)
    anchor = "from torch import Tensor, nn\n"
    helper = "\nfrom spandrel.util import store_hyperparameters\n"
    if anchor in text and helper not in text:
        text = text.replace(anchor, anchor + helper, 1)
    return text


# ---------------------------------------------------------------------------------------------
# spandrel files
# ---------------------------------------------------------------------------------------------

INIT_HEADER = """from __future__ import annotations

from typing_extensions import override

from spandrel.util import KeyCondition

from ...__helpers.model_descriptor import (
    Architecture,
    ImageModelDescriptor,
    ModelTiling,
    StateDict,
)
from .__arch.hybridmoe import __ARCH_NAMES__


"""

INIT_FOOTER = """

__all__ = ["HybridMoE", "HybridMoEArch"]
"""

SPANDREL_NAMES = {"Architecture", "ImageModelDescriptor", "ModelTiling", "KeyCondition"}
"""Names the loader class takes from spandrel rather than from the network module."""


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


def generate_init(source: str) -> str:
    """``architectures/HybridMoE/__init__.py``: the ``HybridMoEArch`` class defined inside the
    network file's ``_make_spandrel_arch``, at module level, with the detection keys written
    out, spandrel's typing (``StateDict``, ``ImageModelDescriptor[HybridMoE]``, ``@override``)
    and its imports."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    factory = next(
        (
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name == "_make_spandrel_arch"
        ),
        None,
    )
    cls = next((n for n in (factory.body if factory else []) if isinstance(n, ast.ClassDef)), None)
    if cls is None:
        raise ValueError("no HybridMoEArch class inside _make_spandrel_arch in the network file")
    a, b = _node_span(cls)
    text = textwrap.dedent("".join(lines[a:b]))
    keys = "\n".join(f'                "{k}",' for k in detect_keys_of(source))
    text, n_detect = re.subn(
        r"KeyCondition\.has_all\(\*SPANDREL_DETECT_KEYS\)",
        "KeyCondition.has_all(\n" + keys + "\n            )",
        text,
    )
    text, n_load = re.subn(
        r"( *)def load\(self, state_dict: [^)]*\) -> [^:]+:",
        r"\1@override\n\1def load(self, state_dict: StateDict) -> ImageModelDescriptor[HybridMoE]:",
        text,
    )
    if n_detect != 1 or n_load != 1:
        raise ValueError("unexpected HybridMoEArch layout in the network file")
    text = re.sub(r"  # type: ignore\[[^\]]*\]", "", text)
    module_names = set()
    for node in tree.body:
        module_names |= _defined_names(node)
    used = _used_names(ast.parse(text))
    arch_names = sorted(
        (used & module_names) - SPANDREL_NAMES, key=lambda n: (not n.isupper(), n.lower())
    )
    header = INIT_HEADER.replace("__ARCH_NAMES__", ", ".join(arch_names))
    return header + text.rstrip("\n") + "\n" + INIT_FOOTER


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a new temporary file beside ``path`` and rename it over ``path`` (a
    symlink at ``path`` is replaced, not followed); an existing file keeps its permissions."""
    mode = path.stat().st_mode & 0o7777 if path.is_file() and not path.is_symlink() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(path: Path, text: str, report: Report) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        report.unchanged.append(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    report.written.append(path)


def detect_keys_of(source: str) -> tuple[str, ...]:
    """The ``SPANDREL_DETECT_KEYS`` tuple of the network file, read without importing it."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "SPANDREL_DETECT_KEYS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return tuple(value)
    raise ValueError("SPANDREL_DETECT_KEYS not found in the network file")


def export(
    checkout: Path,
    arch_file: Path = ARCH_FILE,
    license_file: Path = LICENSE_FILE,
    *,
    fmt: bool = True,
) -> Report:
    """Write every file into ``checkout``; returns what was written and what was unchanged.
    With ``fmt``, Python files are formatted with ruff under the checkout's configuration."""
    checkout = checkout.resolve()
    check_checkout(checkout)
    source = arch_file.read_text(encoding="utf-8")
    report = Report()
    arch_dir = checkout / ARCH_REL
    targets = [
        arch_dir / "__arch" / "hybridmoe.py",
        arch_dir / "__arch" / "LICENSE",
        arch_dir / "__init__.py",
        checkout / REGISTRY_REL,
        checkout / TEST_REL,
    ]
    check_targets(checkout, targets)

    def py(path: Path, text: str) -> None:
        _write(path, ruff_format(text, path, checkout, report) if fmt else text, report)

    py(arch_dir / "__arch" / "hybridmoe.py", generate_network(source))
    _write(arch_dir / "__arch" / "LICENSE", license_file.read_text(encoding="utf-8"), report)
    py(arch_dir / "__init__.py", generate_init(source))
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
