"""Test configuration: the checkout's package, single-file modules and dev scripts first on
sys.path (as an editable install has them), and real images."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for sub in ("", "traiNNer/archs", "traiNNer/losses", "scripts"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

# programs the tests start (python -m hybridmoe ...) see the same modules
os.environ["PYTHONPATH"] = os.pathsep.join(
    [
        *(str(ROOT / sub) for sub in ("", "traiNNer/archs", "traiNNer/losses")),
        *filter(None, [os.environ.get("PYTHONPATH")]),
    ]
)

TEST_DATA = ROOT / "tests" / "data"


def shared_data_dir() -> Path | None:
    """The full image collection (``HYBRIDMOE_DATA`` or ``../shared/data``), if present."""
    env = os.environ.get("HYBRIDMOE_DATA")
    cands = [Path(env)] if env else []
    cands.append(ROOT.parent / "shared" / "data")
    for c in cands:
        if (c / "benchmark" / "Set5" / "HR").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def set5_dir() -> Path:
    """Set5 (HR + canonical MATLAB bicubic LR), always available: bundled with the tests."""
    return TEST_DATA / "Set5"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny CPU tensors run faster with one, timings jitter less, and a busy machine matters
    less. The previous thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder that cannot take new files: read-only for a normal user, ``/sys`` for root
    (who writes into read-only folders); skips where there is none."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    folder = Path("/sys")
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        yield folder
        return
    os.close(fd)
    os.unlink(name)
    pytest.skip("no unwritable folder available")
