"""Writing outputs: atomically (a reader sees the old file or the complete new one, never a
part), and only where the one overwrite rule allows (``check_output``); what appears or changes
at an output while a command runs is never replaced (``iounet.staging.publish``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from iounet.staging import Fingerprint, fingerprint, publish, remove_stale, staging


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` that replaces `path` when the block succeeds (for files
    this package owns, such as checkpoints; user-named outputs go through ``Output.staged``).

    On an exception (Ctrl-C included) the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    with staging(target) as temporary:
        yield temporary
        _sync(temporary)
        os.replace(temporary, target)


def _sync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb+") as file:
            os.fsync(file.fileno())


@dataclass(frozen=True)
class Output:
    """An output path that ``check_output`` allowed, with what it may replace there."""

    path: Path
    folder: bool = False
    #: What the path held when checked (None: nothing); only exactly that is replaced.
    replaces: Fingerprint | None = None

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """A temporary file (or folder) beside the output that takes its place when the block
        succeeds, unless the output appeared or changed meanwhile: then ``OutputConflict``
        (a FileExistsError) names where the result was kept, and the output is untouched.
        Temporaries that crashed runs left beside it are removed first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.path.parent)
        with staging(self.path, folder=self.folder) as temporary:
            yield temporary
            _sync(temporary)
            publish(temporary, self.path, self.replaces)


def check_writable(path: str | os.PathLike) -> None:
    """PermissionError/FileExistsError now, before any slow work, when `path` cannot be
    created: its nearest existing folder must be a folder this process may write into."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FileExistsError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {parent} is not writable")


def check_output(
    path: str | os.PathLike,
    force: bool,
    ours: Callable[[Path], bool],
    what: str,
    folder: bool = False,
) -> Output:
    """Check, before any slow work, that an output may be written at `path` (the one rule of
    every output option, docs/usage.md "Bad input"):

    - absent: it is written (its folders created), if its nearest existing folder is writable;
    - present, without `force`: FileExistsError;
    - present, with `force`: replaced only when it is what iounet writes there, `ours(path)`
      (a regular file, never a link or a device, for a file; a real folder, empty or
      recognised by `ours`, for a folder); anything else is refused even with `force`.

    `what` names the expected output in the message ("COCO results file", "model folder").
    The returned ``Output`` writes it (``Output.staged``).
    """
    path = Path(path)
    check_writable(path)
    if not os.path.lexists(path):
        return Output(path, folder)
    if not force:
        raise FileExistsError(f"{path} exists: pass --force to replace it")
    if folder:
        if path.is_symlink() or not path.is_dir():
            raise FileExistsError(
                f"{path} is not a folder: refusing to replace it, even with --force"
            )
        if not any(path.iterdir()) or _recognised(ours, path):
            return Output(path, folder, fingerprint(path))
    else:
        if path.is_symlink() or not stat.S_ISREG(path.lstat().st_mode):
            raise FileExistsError(
                f"{path} is not a regular file: refusing to replace it, even with --force"
            )
        if _recognised(ours, path):
            return Output(path, folder, fingerprint(path))
    raise FileExistsError(
        f"{path} is not a {what} written by iounet: refusing to replace it, even with --force"
    )


def _recognised(ours: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(ours(path))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False


def json_content(path: Path) -> object:
    """The JSON value in `path` (ValueError if it holds none)."""
    return json.loads(path.read_text())


def is_coco_results(path: Path) -> bool:
    """Whether `path` holds COCO results as iounet writes them (a list of detections)."""
    entries = json_content(path)
    keys = {"image_id", "category_id", "bbox", "score"}
    return isinstance(entries, list) and all(
        isinstance(entry, dict) and keys <= entry.keys() for entry in entries
    )


def is_json_object_with(*keys: str) -> Callable[[Path], bool]:
    """A recogniser of JSON objects that hold every one of `keys`."""

    def recognise(path: Path) -> bool:
        value = json_content(path)
        return isinstance(value, dict) and all(key in value for key in keys)

    return recognise


def holds_only(*suffixes: str) -> Callable[[Path], bool]:
    """A recogniser of folders whose entries are all regular files ending in one of
    `suffixes` (a plots folder: ".png")."""

    def recognise(path: Path) -> bool:
        return all(
            entry.is_file() and not entry.is_symlink() and entry.name.endswith(suffixes)
            for entry in path.iterdir()
        )

    return recognise


def write_json(path: str | os.PathLike | Output, value: object, indent: int | None = None) -> None:
    """Write `value` as strict JSON, atomically: NaN and infinities (not JSON) become null.

    An ``Output`` (from ``check_output``) is written by its rule, a plain path replaced."""
    text = json.dumps(json_safe(value), indent=indent, allow_nan=False)
    writing = path.staged() if isinstance(path, Output) else atomic_path(path)
    with writing as temporary:
        temporary.write_text(text + ("\n" if indent is not None else ""))


def json_safe(value: object) -> object:
    """`value` with every non-finite float (not JSON) replaced by None, tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def is_bench_table(path: Path) -> bool:
    """Whether `path` holds an `iounet bench --json` table (backend -> stage -> figures)."""
    table = json_content(path)
    return (
        isinstance(table, dict)
        and bool(table)
        and all(isinstance(stages, dict) and "total" in stages for stages in table.values())
    )
