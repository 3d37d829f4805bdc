"""Safety checks shared by the command-line tools: output files and non-finite numbers.

Output files (checkpoints, ONNX graphs, JSON reports) are

* checked before any work starts (:func:`check_output`): an output that is one of the inputs
  (same path, or the same file through a link) is refused, an existing file is kept unless
  the tool's ``--overwrite`` is given, and a folder that cannot hold the file (a path component
  is a file, no write permission) is reported up front;
* written atomically (:func:`atomic_output`): the content goes to a temporary file in the
  destination folder, which replaces the output only once it is complete (and verified, where
  the tool verifies it); on any failure the temporary file is removed and an existing output is
  left as it was.

:func:`nonfinite_tensors` names the tensors of a state dict that hold NaN or Inf.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "OutputError",
    "atomic_output",
    "check_output",
    "nonfinite_tensors",
    "write_text_atomic",
]


class OutputError(Exception):
    """An output file cannot or must not be written; the message says why and what to do."""


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: equal resolved paths or, both existing,
    the same inode (hard or symbolic link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (its folder, or the folder that will hold the
    folders still to be created)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output(
    path: Path, *, overwrite: bool, inputs: Iterable[Path | str] = (), what: str = "output"
) -> None:
    """Refuse an output that cannot or must not be written, before any work is done.

    Raises :class:`OutputError` when ``path`` is one of ``inputs`` (same path or same file),
    is a folder, already exists and ``overwrite`` is False, or its folder cannot be created or
    written to (a path component is a file, no write permission).
    """
    for src in map(Path, inputs):
        if _same_file(path, src):
            raise OutputError(
                f"the {what} {path} is the same file as the input {src}; writing it would "
                f"replace the input. Choose another {what} file name"
            )
    if path.is_dir():
        raise OutputError(f"the {what} {path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(
            f"the {what} {path} already exists; pass --overwrite to replace it, or choose "
            f"another file name"
        )
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise OutputError(
            f"cannot write the {what} {path}: {folder} is a file, not a folder; choose another "
            f"{what} path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write the {what} {path}: the folder {folder} is not writable; choose "
            f"another {what} path or fix the folder's permissions"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_folder(path: Path, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise OutputError(
            f"cannot write the {what} {path}: a component of {path.parent} is a file, not a "
            f"folder ({e.strerror})"
        ) from e
    except OSError as e:
        raise OutputError(f"cannot create the folder {path.parent} for the {what}: {e}") from e


def _commit(tmp: Path, path: Path, overwrite: bool, what: str) -> None:
    """Move the complete ``tmp`` to ``path``; without ``overwrite`` never replace a file that
    appeared at ``path`` meanwhile (hard link, which fails if the name exists)."""
    try:
        if not overwrite:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputError(
                    f"the {what} {path} appeared while it was being written; pass --overwrite "
                    f"to replace it"
                ) from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                if path.exists():  # no hard links here: check, then replace
                    raise OutputError(f"the {what} {path} already exists") from None
                os.replace(tmp, path)
            else:
                tmp.unlink()
            return
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write the {what} {path}: {e}") from e


@contextlib.contextmanager
def atomic_output(path: Path, *, overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on normal exit it
    becomes ``path`` (``os.replace``), on an exception it is removed and ``path`` is untouched.

    The temporary file is created empty with the permissions a new file gets (umask).
    Raises :class:`OutputError` when the folder or the file cannot be written.
    """
    path = Path(path)
    _make_folder(path, what)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent
        )
    except OSError as e:
        raise OutputError(f"cannot write the {what} {path}: {e}") from e
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        _commit(tmp, path, overwrite, what)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(
    path: Path, text: str, *, overwrite: bool = False, what: str = "report"
) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, overwrite=overwrite, what=what) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write the {what} {path}: {e}") from e


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """``"name (n of total)"`` for every floating-point tensor of ``tensors`` (a state dict)
    holding NaN or Inf values; empty when all are finite."""
    import torch

    bad = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append(f"{name} ({n} of {t.numel()})")
    return bad
