"""Temporaries beside an output and the step that puts a finished one in its place.

A temporary is named ``.NAME.iounet-HOST-PID-START-RANDOM.tmp`` beside the output ``NAME``:
HOST is a hash of the machine's name, PID and START the writing process and its start time.
A temporary whose process is gone (a crashed or killed run on this machine) is stale: the next
writer into the same folder removes it; a live process's temporary, or another machine's (a
shared file system), is never touched.

``publish`` moves a finished temporary to its output so that nothing it did not expect is lost:
onto an absent path only if that path is still absent (``renameat2(RENAME_NOREPLACE)``), over an
existing one only if it is still exactly what was checked before the work started (swapped in
with ``renameat2(RENAME_EXCHANGE)``, checked, swapped back if it changed). Otherwise the target
stays as it is and the result is kept under a printed name. Where the system lacks ``renameat2``
the same checks run just before a plain rename (a short window instead of none).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

#: What an output held when it was checked: its entries' identities, sizes and times.
Fingerprint = tuple[tuple[str, int, int, int], ...]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_NAME = re.compile(
    r"^\..+\.iounet-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+\.tmp$"
)


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (None where unknown)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def temporary_name(target: Path) -> Path:
    """A new temporary path beside `target`, named after it and this process."""
    pid = os.getpid()
    start = _start_time(pid) or 0
    return target.with_name(
        f".{target.name}.iounet-{_host()}-{pid}-{start}-{secrets.token_hex(4)}.tmp"
    )


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return now is None or start == 0 or now == start


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this package's temporaries."""
    return _NAME.match(name) is not None


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temporaries of dead iounet processes of this machine in `folder`; return
    what was removed."""
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or match["host"] != host:
            continue
        if _alive(int(match["pid"]), int(match["start"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            remove(path)
            removed.append(path)
    return removed


def remove(path: Path) -> None:
    """Remove a file, link or folder tree (links are not followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fingerprint(path: Path) -> Fingerprint:
    """Identity, size and modification time of `path` and of everything below it."""
    top = path.lstat()
    entries = [("", top.st_ino, top.st_size, 0 if stat.S_ISDIR(top.st_mode) else top.st_mtime_ns)]
    if stat.S_ISDIR(top.st_mode):
        for root, folders, files in os.walk(path):
            for name in folders + files:
                entry = Path(root, name)
                info = entry.lstat()
                relative = str(entry.relative_to(path))
                entries.append((relative, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


class OutputConflict(FileExistsError):
    """The output changed while the command ran: it was left alone, the result kept aside."""


@contextlib.contextmanager
def staging(target: Path, folder: bool = False) -> Iterator[Path]:
    """A new temporary file (or folder) beside `target`, removed when the block ends unless it
    was moved away."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = temporary_name(target)
    umask = os.umask(0)
    os.umask(umask)
    if folder:
        path.mkdir(mode=0o777 & ~umask)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~umask))
    try:
        yield path
    finally:
        if os.path.lexists(path):
            remove(path)


def publish(staged: Path, target: Path, replaces: Fingerprint | None) -> None:
    """Move the finished temporary `staged` to `target`.

    `replaces` is the fingerprint of what `target` held when it was checked (None: nothing):
    only that is replaced. If `target` appeared or changed meanwhile, it is left as it is and
    ``OutputConflict`` names where the result was kept.
    """
    if replaces is not None and os.path.lexists(target):
        try:
            exchanged = _exchange(staged, target)
        except FileNotFoundError:  # removed meanwhile: nothing to replace
            exchanged = None
        if exchanged:
            if _unchanged(staged, replaces):
                remove(staged)
                return
            _exchange(staged, target)
            raise _conflict(staged, target)
        if exchanged is not None:
            _replace_checked(staged, target, replaces)
            return
    try:
        move_no_replace(staged, target)
    except FileExistsError:
        raise _conflict(staged, target) from None


def _unchanged(path: Path, replaces: Fingerprint) -> bool:
    try:
        return fingerprint(path) == replaces
    except OSError:
        return False


def _replace_checked(staged: Path, target: Path, replaces: Fingerprint) -> None:
    """Where ``renameat2`` is missing: check, then replace (a folder through a hidden name)."""
    if not _unchanged(target, replaces):
        raise _conflict(staged, target)
    if not staged.is_dir():
        os.replace(staged, target)
        return
    retired = temporary_name(target)
    os.rename(target, retired)
    if not _unchanged(retired, replaces):
        move_no_replace(retired, target)
        raise _conflict(staged, target)
    try:
        move_no_replace(staged, target)
    except BaseException:
        move_no_replace(retired, target)
        raise
    remove(retired)


def _conflict(staged: Path, target: Path) -> OutputConflict:
    """Keep `staged` beside `target` under a visible free name; the error that says where."""
    for number in range(1, 1000):
        kept = target.with_name(f"{target.name}.new" + (f"{number}" if number > 1 else ""))
        try:
            move_no_replace(staged, kept)
        except FileExistsError:
            continue
        return OutputConflict(
            f"{target} appeared or changed while this command ran: it was left as it is; the "
            f"result is in {kept}"
        )
    return OutputConflict(f"{target} appeared or changed while this command ran: no result kept")


def move_no_replace(source: Path, target: Path) -> None:
    """Rename `source` to `target`; FileExistsError if `target` exists (atomic where the system
    has ``renameat2``)."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "exists", str(target))
    if source.is_dir() and not source.is_symlink():
        os.rename(source, target)
    else:
        os.link(source, target, follow_symlinks=False)
        source.unlink()


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    return _renameat2(first, second, _RENAME_EXCHANGE)


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """``renameat2``; False where the C library, kernel or file system lacks it or the flag."""
    function = _renameat2_function()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


@functools.cache
def _renameat2_function() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    function.restype = ctypes.c_int
    return function
