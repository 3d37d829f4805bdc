"""``scripts/spandrel_upstream.py``: HybridMoE written into a spandrel checkout in spandrel's
layout. A minimal fake checkout checks the layout, idempotency and refusals; the generated
network and loader are imported and compared with the project's own; with ``SPANDREL_SRC_DIR``
pointing at a real spandrel checkout, the generated spandrel test runs there too."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import spandrel_upstream as U
import torch
from tiny_options import TINY

import hybridmoe_arch as A
from hybridmoe.models import perturb
from hybridmoe.spandrel_arch import DETECT_KEYS, register_spandrel

ROOT = Path(__file__).resolve().parent.parent

REGISTRY_STUB = """from __future__ import annotations

from ..architectures import (
    ATD,
    HAT,
    AuraSR,
    Compact,
    HVICIDNet,
    KBNet,
)
from .registry import ArchRegistry, ArchSupport

MAIN_REGISTRY = ArchRegistry()

MAIN_REGISTRY.add(
    ArchSupport.from_architecture(Compact.CompactArch()),
    ArchSupport.from_architecture(AuraSR.AuraSRArch()),
)
"""

CONFIGS: list[dict[str, Any]] = [
    {},
    {"scale": 1, "in_ch": 1},
    {"scale": 3, "freq_split": "fft", "global_mixer": "ssm"},
    {"global_mixer": "none", "use_attn": False, "use_hf": False, "hf_blocks": (1, 0, 2)},
    {"use_moe": False, "num_experts": 6, "top_k": 1},
    {"refine_moe": True, "stem_lk": True, "noise": True, "upsampler": "dysample"},
    {"base": "bicubic", "mlp_ratio": 2.66, "kernel_size": 7},
    {"deploy": True, "stem_lk": True},
]


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_checkout(root: Path) -> Path:
    """The files that make a directory a spandrel checkout, with a stub registry."""
    (root / "libs/spandrel/spandrel/architectures").mkdir(parents=True)
    (root / "libs/spandrel/spandrel/util").mkdir(parents=True)
    (root / "libs/spandrel/spandrel/__helpers").mkdir(parents=True)
    (root / "libs/spandrel/spandrel/util/__init__.py").write_text("")
    (root / "libs/spandrel/spandrel/__helpers/main_registry.py").write_text(REGISTRY_STUB)
    (root / "tests").mkdir()
    (root / "tests/util.py").write_text("")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = fake_checkout(tmp_path_factory.mktemp("spandrel"))
    report = U.export(root, fmt=False)
    assert len(report.written) == 6 and not report.unchanged
    return root


def test_layout(exported: Path) -> None:
    arch = exported / U.ARCH_REL
    assert (arch / "__arch" / "hybridmoe.py").is_file()
    assert (arch / "__arch" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert "MIT License" in (arch / "__arch" / "LICENSE").read_text()
    init = (arch / "__init__.py").read_text()
    assert "class HybridMoEArch(Architecture[HybridMoE]):" in init
    assert "from ...__helpers.model_descriptor import (" in init
    assert "from .__arch.hybridmoe import VARIANTS, HybridMoE" in init
    assert "import hybridmoe" not in init and "from hybridmoe" not in init
    for key in DETECT_KEYS:
        assert f'"{key}"' in init
    test = (exported / U.TEST_REL).read_text()
    assert "assert_loads_correctly(" in test and "assert_size_requirements(" in test
    assert "No pretrained HybridMoE model is published" in test
    assert "TODO" not in test


def test_registry_entry(exported: Path) -> None:
    text = (exported / U.REGISTRY_REL).read_text()
    assert text.count("ArchSupport.from_architecture(HybridMoE.HybridMoEArch()),") == 1
    names = text.split("from ..architectures import (\n")[1].split(")")[0].split()
    assert names.count("HybridMoE,") == 1
    # the existing order is kept: all-caps names, then the others case-insensitively
    assert names == ["ATD,", "HAT,", "AuraSR,", "Compact,", "HVICIDNet,", "HybridMoE,", "KBNet,"]
    # detected after every built-in: the entry is the last one, without `before=`
    entries = [ln.strip() for ln in text.splitlines() if "from_architecture" in ln]
    assert entries[-1] == "ArchSupport.from_architecture(HybridMoE.HybridMoEArch()),"


def test_idempotent(exported: Path) -> None:
    before = {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    report = U.export(exported, fmt=False)
    assert not report.written and len(report.unchanged) == 6
    assert {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()} == before


def test_refuses_non_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert U.main([str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "util.py").write_text("")
    assert U.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a spandrel checkout" in err and "main_registry.py" in err
    assert not (tmp_path / "libs").exists()


def _plant_ruff(root: Path, marker: Path) -> None:
    """A ``ruff.py`` module and a ``ruff`` executable in ``root`` that would create ``marker``."""
    (root / "ruff.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (root / "ruff").write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    (root / "ruff").chmod(0o755)


def test_ruff_from_the_checkout_is_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Formatting runs this environment's ruff, not a ``ruff.py`` (``python -m ruff`` with the
    checkout as current folder) or a ``ruff`` executable (``PATH`` with ``.``) planted there."""
    root = fake_checkout(tmp_path / "spandrel")
    marker = tmp_path / "planted_ruff_ran"
    _plant_ruff(root, marker)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", os.pathsep.join([str(root), ".", os.environ.get("PATH", "")]))
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed in this environment")
    report = U.export(root)
    assert not marker.exists()
    assert len(report.written) == 6 and not report.notes  # formatted by our ruff
    assert U.find_ruff(root) == U._own_ruff()
    meta = (root / U.ARCH_REL / "__arch" / "meta.py").read_text()
    plain = U.retarget_imports(U.META_FILE.read_text(), U.IMPORTS["meta"], "meta.py")
    assert meta != plain  # reflowed to spandrel's 88 columns


def test_without_ruff_outside_the_checkout_files_are_written_unformatted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_checkout(tmp_path / "spandrel")
    marker = tmp_path / "planted_ruff_ran"
    _plant_ruff(root, marker)
    monkeypatch.chdir(root)
    monkeypatch.setattr(U, "_own_ruff", lambda: None)
    monkeypatch.setenv("PATH", os.pathsep.join([str(root), ".", ""]))
    assert U.find_ruff(root) is None
    assert U.main([str(root)]) == 0
    assert not marker.exists()
    assert "warning: ruff not found: Python files written unformatted" in capsys.readouterr().err
    assert (root / U.TEST_REL).read_text() == U.TEST_TEMPLATE
    # a ruff on PATH outside the checkout is used (here one that echoes its input)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ruff").write_text("#!/bin/sh\nexec /bin/cat\n")
    (tmp_path / "bin" / "ruff").chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(root), str(tmp_path / "bin")]))
    assert U.find_ruff(root) == tmp_path / "bin" / "ruff"
    assert not U.export(root).notes


def test_never_writes_through_a_folder_linked_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_checkout(tmp_path / "spandrel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / U.ARCH_REL).symlink_to(elsewhere, target_is_directory=True)
    registry = (root / U.REGISTRY_REL).read_text()
    assert U.main([str(root), "--no-format"]) == 2
    err = capsys.readouterr().err
    assert "leads outside the checkout" in err and "nothing was written" in err
    assert list(elsewhere.iterdir()) == []
    assert (root / U.REGISTRY_REL).read_text() == registry
    assert not (root / U.TEST_REL).exists()


def test_network_is_copied_as_is(exported: Path) -> None:
    """The network file is what spandrel vendors; the other two files differ from the
    package's modules in their import lines only."""
    arch = exported / U.ARCH_REL
    assert (arch / "__arch" / "hybridmoe.py").read_text() == U.ARCH_FILE.read_text()
    for copied, source in (
        (arch / "__arch" / "meta.py", U.META_FILE),
        (arch / "__init__.py", U.DESCRIPTOR_FILE),
    ):
        theirs = copied.read_text().splitlines()
        ours = source.read_text().splitlines()
        assert [
            ln
            for ln in theirs
            if "import" not in ln
            and ln.strip()
            not in ("Architecture,", "ImageModelDescriptor,", "ModelTiling,", "StateDict,", ")")
        ] == [ln for ln in ours if "import" not in ln and ln.strip() != ")"]


def test_retarget_imports_refuses_a_missing_line() -> None:
    with pytest.raises(ValueError, match="expected one line starting with"):
        U.retarget_imports("import os\n", {"import hybridmoe_arch as arch\n": "x"}, "meta.py")


def _import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(exported: Path) -> ModuleType:
    return _import_file(exported / U.ARCH_REL / "__arch" / "hybridmoe.py", "_gen_hybridmoe")


@pytest.mark.parametrize("options", CONFIGS, ids=range(len(CONFIGS)))
def test_generated_network_matches(options: dict[str, Any], generated: ModuleType) -> None:
    """Same keys, shapes, hyperparameters and outputs as the project's network."""
    ours = A.HybridMoE(**{**TINY, **options})
    perturb(ours, 0.03, seed=0)
    theirs = generated.HybridMoE(**{**TINY, **options})
    sd = ours.state_dict()
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {
        k: v.shape for k, v in sd.items()
    }
    theirs.load_state_dict(sd)
    assert theirs.hyperparameters == ours.hyperparameters
    x = torch.rand(2, ours.in_ch, 13, 18)
    with torch.no_grad():
        assert torch.equal(theirs.eval()(x), ours.eval()(x))


@pytest.fixture(scope="module")
def generated_arch(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The generated ``HybridMoEArch`` imported inside a stand-in package whose
    ``__helpers.model_descriptor`` is the installed spandrel's."""
    pkg = tmp_path_factory.mktemp("pkg") / "spandrel_standin"
    (pkg / "__helpers").mkdir(parents=True)
    (pkg / "architectures").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "architectures" / "__init__.py").write_text("")
    (pkg / "__helpers" / "__init__.py").write_text("")
    (pkg / "__helpers" / "model_descriptor.py").write_text(
        "from spandrel.__helpers.model_descriptor import (  # noqa: F401\n"
        "    Architecture, ImageModelDescriptor, ModelTiling, StateDict,\n)\n"
    )
    shutil.copytree(exported / U.ARCH_REL, pkg / "architectures" / "HybridMoE")
    sys.path.insert(0, str(pkg.parent))
    try:
        module = importlib.import_module("spandrel_standin.architectures.HybridMoE")
    finally:
        sys.path.remove(str(pkg.parent))
    return module.HybridMoEArch()


@pytest.mark.parametrize("options", CONFIGS, ids=range(len(CONFIGS)))
def test_generated_loader_matches(options: dict[str, Any], generated_arch: Any) -> None:
    """The generated loader detects and rebuilds what the project's loader rebuilds: every
    hyperparameter of the original model (hf_blocks without the HF path and the expert count
    without MoE layers too)."""
    import spandrel

    register_spandrel()
    ours_arch = spandrel.MAIN_REGISTRY["HybridMoE"].architecture
    model = A.HybridMoE(**{**TINY, **options})
    sd = model.state_dict()
    assert generated_arch.id == "HybridMoE" and generated_arch.detect(sd)
    theirs = generated_arch.load(sd)
    ours = ours_arch.load(sd)
    assert type(theirs.model).__name__ == "HybridMoE"
    assert theirs.model.hyperparameters == ours.model.hyperparameters == model.hyperparameters
    for attr in ("scale", "purpose", "tags", "tiling", "input_channels", "output_channels"):
        assert getattr(theirs, attr) == getattr(ours, attr), attr
    assert theirs.supports_half == ours.supports_half


@pytest.mark.skipif(
    not os.environ.get("SPANDREL_SRC_DIR"),
    reason="set SPANDREL_SRC_DIR to a spandrel checkout to run the generated spandrel test",
)
def test_generated_spandrel_test_passes_in_a_checkout(tmp_path: Path) -> None:
    """Export into a copy of the checkout and run its ``tests/test_HybridMoE.py`` there (with
    spandrel's own helpers, which need syrupy, opencv, requests and beautifulsoup4)."""
    src = Path(os.environ["SPANDREL_SRC_DIR"])
    dst = tmp_path / "spandrel"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "models", "__pycache__"))
    assert U.main([str(dst)]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(U.TEST_REL)],
        cwd=dst,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
