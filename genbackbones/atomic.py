"""Atomic writes: a file or folder either appears complete or not at all.

Everything is written to a temporary sibling first and moved into place with
`os.replace`, which is atomic on one filesystem. An interrupted write leaves at
most a hidden `.tmp-*` sibling, never a half-written target.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; published ones get the usual mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _publish_tree(root: Path) -> None:
    """Give every entry of a folder about to be published the mode the umask gives (0644 / 0755 under 022).

    Writers that go through their own private temporary file (safetensors' `save_file`
    among them) leave 0600 files, which another user of a shared machine cannot read;
    executable bits a writer set on purpose are kept.
    """
    mask = _umask()
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o777 if executable else 0o666) & ~mask)
        for name in dirs:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), 0o777 & ~mask)
    os.chmod(root, 0o777 & ~mask)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot.

    Python's os has no renameat2; with two renames a process killed between them
    would leave no folder at the target (the old one parked under a hidden name).
    """
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with file_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def file_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; it becomes `path` only if the block succeeds.

    With overwrite=True an existing `path` is replaced (the old one is removed only
    after the new one is complete).
    """
    path = Path(os.path.abspath(path))  # `.` or `..` have no name to build the siblings from
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    old = path.with_name(f".old-{path.name}-{os.getpid()}")
    try:
        yield tmp
        _publish_tree(tmp)
        if path.is_dir() and not path.is_symlink() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        elif path.exists():
            # no atomic exchange here (macOS, some network filesystems): two renames, and a failure between
            # them puts the old folder back below
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
