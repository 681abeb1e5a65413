"""Claiming an output: a command writes only where nobody else is writing, and never destroys what it did not create.

Every command that writes a folder (a run, an export, an evaluation, a generator,
a synthesis) claims it first:

* **one writer**: an advisory lock (`fcntl.flock`) is held for the command's life.
  The lock file sits *beside* the output, `<parent>/.<name>.lock`, not inside it:
  exports and generator folders are built in a temporary sibling and swapped in
  (atomic.directory), which would swap a lock inside them away mid-command, and a
  lock inside an export would be uploaded by `push` or copied along by users. It
  holds the holder's pid, host and command, so the refusal names them. The kernel
  frees a flock when its process dies, so a crash never wedges a folder; the file
  it leaves is taken over with a note. The file is removed on release.
* **new or empty**: a non-empty folder is refused unless `overwrite=True`, and even
  then a run folder, a folder that holds one, the input being read, the current
  folder, or any of their parents is never replaced. The check runs under the lock,
  so two commands started together cannot both pass it.
* **unique default names**: `claim_new` tries `<stem>`, `<stem>-2`, ... and takes the
  first name whose lock it gets and that no folder holds yet, so commands started in
  the same second get different folders.

Bad input leaves nothing behind: a claim creates no output folder itself (the
command does, once its input is valid), and parent folders it had to create for the
lock file are removed again if they are still empty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from rich.console import Console

from .errors import UserError

_notes = Console(stderr=True)


def lock_path(output: Path) -> Path:
    """Where the lock of `output` lives: a hidden file beside it (see the module docstring for why not inside)."""
    output = Path(os.path.abspath(output))
    return output.with_name(f".{output.name}.lock")


def command_line() -> str:
    """The command this process runs, as the lock records it (`genbackbones pretrain ...`)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "genbackbones") or program.startswith("genbackbones"):
        program = "genbackbones"
    text = shlex.join([program, *sys.argv[1:]])
    return text if len(text) <= 120 else text[:117] + "..."


class _Lock:
    """An flock on `lock_path(output)`, with the holder's identity written into the file."""

    def __init__(self, output: Path, command: str | None):
        self.output, self.path = Path(output), lock_path(output)
        self.command = command or command_line()
        self.fd: int | None = None
        self.created_parents: list[Path] = []

    def acquire(self) -> bool:
        """Take the lock; False when another live process holds it (then `holder()` names it)."""
        self._make_parents()
        for _ in range(20):  # a holder may remove the file between our open and our flock: open it again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise UserError(f"cannot create the lock file {self.path} ({err.strerror}); "
                                f"the folder {self.path.parent} must be writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    # a filesystem without flock (some network mounts): refusing every write there would be
                    # worse than writing unlocked, so the command goes on and says so
                    _notes.print(f"[yellow]note:[/] {self.path.parent} cannot be locked ({err.strerror}); "
                                 f"nothing stops a second command from writing {self.output} at the same time",
                                 highlight=False, soft_wrap=True)
                    self.fd = fd
                    return True
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder had already removed
                os.close(fd)
                continue
            self.fd = fd
            self._note_stale(os.pread(fd, 4096, 0))
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode() + b"\n", 0)
            return True
        raise UserError(f"could not lock {self.path}: it is being removed and re-created continuously")

    def holder(self) -> str:
        record = _read_record(self.path)
        if not record:
            return "another process"
        return f"pid {record.get('pid', '?')} on {record.get('host', '?')} ({record.get('command', '?')})"

    def release(self) -> None:
        if self.fd is not None:
            # remove while still holding it: a process that opened the file meanwhile sees another inode and retries
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None
        self._remove_empty_parents()

    def _note_stale(self, content: bytes) -> None:
        try:
            record = json.loads(content.decode() or "null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict) and record.get("pid") != os.getpid():
            _notes.print(f"[yellow]note:[/] {self.output} was locked by pid {record.get('pid', '?')} on "
                         f"{record.get('host', '?')} ({record.get('command', '?')}), which is no longer running; "
                         "taking over its lock", highlight=False, soft_wrap=True)

    def _make_parents(self) -> None:
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
                self.created_parents.append(folder)

    def _remove_empty_parents(self) -> None:
        for folder in reversed(self.created_parents):
            with contextlib.suppress(OSError):  # not empty (the command wrote its output): keep it
                folder.rmdir()
        self.created_parents = []


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text() or "null")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def hold(output: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Lock `output` (a folder or a file, existing or not) for the block; a second holder gets one line, exit 2."""
    lock = _Lock(Path(output), command)
    if not lock.acquire():
        lock.release()
        raise UserError(f"{output} is in use by {lock.holder()}; wait for it or pick another folder")
    try:
        yield Path(output)
    finally:
        lock.release()


@contextlib.contextmanager
def waiting_for(path: str | os.PathLike) -> Iterator[Path]:
    """Wait for, then hold, the lock of a file that several commands update in turn (read, modify, write).

    Unlike `hold`, a second command waits instead of failing: the update takes
    milliseconds, and failing it would throw away the finished work that called it.
    The lock file is left in place (removing it would race with a waiting opener).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock: update unlocked, as `hold` does
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim(output: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (),
          flag: str = "--out", hint: str | None = None, command: str | None = None,
          in_place: bool = False) -> Iterator[Path]:
    """Lock the folder `output` and check, under the lock, that the command may write it.

    A new or empty folder is fine. A non-empty one is refused, or with `overwrite`
    allowed to be replaced unless it is protected (`why_protected`). `inputs` are
    the folders the command reads. `hint` replaces the default way out in the
    refusal of a non-empty folder. An output written `in_place` (a run folder) may
    be the current folder; one published by a swap (atomic.directory) may not.
    """
    output = Path(output)
    if not in_place:
        refuse_current_folder(output, flag)
    with hold(output, command):
        check_writable_folder(output, overwrite=overwrite, inputs=inputs, flag=flag, hint=hint)
        _remove_debris(output)
        yield output


def _remove_debris(output: Path) -> None:
    """What a writer of `output` killed mid-way left beside it: atomic.directory's `.tmp-<name>-<8 chars>` (a
    folder never published) and `.old-<name>-<pid>` (the replaced folder, parked during a swap).

    Only those exact shapes match (tempfile's 8-character suffixes hold no '-'), so the debris of `<name>-v2`,
    another output with its own lock, is never taken for ours. A parked old folder is put back when the swap
    died before the new one arrived (it is then the only copy), and deleted only when the output exists."""
    if not output.parent.is_dir():
        return
    name = re.escape(output.name)
    for debris in output.parent.iterdir():
        if not debris.is_dir() or debris.is_symlink():
            continue
        if re.fullmatch(rf"\.old-{name}-\d+", debris.name) and not output.exists():
            os.replace(debris, output)
        elif re.fullmatch(rf"\.tmp-{name}-[a-z0-9_]{{8}}|\.old-{name}-\d+", debris.name):
            shutil.rmtree(debris, ignore_errors=True)


def refuse_current_folder(output: Path, flag: str = "--out") -> None:
    """An output that is swapped into place (built beside it, then exchanged) cannot be the current folder or
    one holding it, even empty: the swap would move the folder the user stands in."""
    target, cwd = Path(os.path.realpath(output)), Path(os.path.realpath(os.getcwd()))
    if target == cwd or target in cwd.parents:
        label = f"{flag} {output}" if flag else str(output)
        raise UserError(f"{label} is the current folder or holds it; name a new folder, e.g. {flag or 'OUT'} "
                        f"{shlex.quote(str(Path(output) / 'out'))}")


def check_writable_folder(output: Path, *, overwrite: bool, inputs: Iterable[str | os.PathLike] = (),
                          flag: str = "--out", hint: str | None = None) -> None:
    """Raise a one-line UserError unless `output` is new, empty, or (with overwrite) replaceable."""
    output = Path(output)
    label = f"{flag} {output}" if flag else str(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"{label} is a file; pass a folder path (new or empty)")
    if not output.exists() or not any(output.iterdir()):
        return
    # what may never be replaced is named even without --overwrite, so the refusal does not suggest it; the
    # search for a run folder deeper inside (a walk of the whole tree) only when it would be replaced
    reason = why_protected(output, inputs, deep=overwrite)
    if reason is not None:
        raise UserError(f"{label} {reason}, which is never replaced; {hint or 'pick a new or empty folder'}")
    if not overwrite:
        names = sorted(p.name for p in output.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{label} already exists and is not empty ({shown}); "
                        f"{hint or 'pick a new or empty folder, or pass --overwrite to replace it'}")


def why_protected(output: Path, inputs: Iterable[str | os.PathLike] = (), deep: bool = True) -> str | None:
    """Why `output` may never be replaced, or None: runs, inputs, the current folder and what holds them.

    `deep` also searches the whole tree below `output` for a run folder."""
    target = Path(os.path.realpath(output))
    for item in inputs:
        source = Path(os.path.realpath(item))
        if source == target:
            return "is the input this command reads"
        if target in source.parents:
            return f"holds {item}, the input this command reads"
    cwd = Path(os.path.realpath(os.getcwd()))
    if target == cwd or target in cwd.parents:
        return "holds the current folder"
    if target == Path(os.path.realpath(Path.home())):
        return "is the home folder"
    if is_run_folder(target):
        return "is a run folder (checkpoints, metrics)"
    for parent in target.parents:
        if is_run_folder(parent) and target != parent / "export":
            return f"is inside the run folder {parent} (only its export/ may be replaced)"
    for folder, dirs, _ in os.walk(target) if deep else ():
        for name in dirs:
            if is_run_folder(Path(folder) / name):
                return f"holds the run folder {Path(folder) / name}"
    return None


def is_run_folder(folder: Path) -> bool:
    """A training run (engine/runs.py): run.json, or a recipe.yaml that is not an export's copy of it."""
    folder = Path(folder)
    return (folder / "run.json").is_file() or ((folder / "recipe.yaml").is_file()
                                                and not (folder / "config.json").is_file())


@contextlib.contextmanager
def claim_new(parent: str | os.PathLike, stem: str, command: str | None = None) -> Iterator[Path]:
    """A new folder name `<parent>/<stem>`, else `<stem>-2`, `<stem>-3`, ..., locked for the block (not created)."""
    parent = Path(parent)
    for index in range(1, 1000):
        candidate = parent / (stem if index == 1 else f"{stem}-{index}")
        lock = _Lock(candidate, command)
        if not lock.acquire():
            lock.release()
            continue
        if candidate.exists():  # an earlier command's output
            lock.release()
            continue
        try:
            yield candidate
        finally:
            lock.release()
        return
    raise UserError(f"no free name {parent / stem}-N among 999 tries; pass an explicit output folder")
